"""IP-Adapter inputs of our pipelines (``ip_adapter_image`` / ``ip_adapter_image_embeds``), written once.

diffusers' ``load_ip_adapter`` / ``set_ip_adapter_scale`` / ``unload_ip_adapter`` and the pipelines'
``prepare_ip_adapter_image_embeds`` are used as they are; this module adds what our pipelines need on top:

* :func:`check_ip_adapter_inputs` -- the checks of a call's IP-Adapter arguments, before any model runs, each error
  naming the argument and the accepted shapes;
* :func:`ip_adapter_embeds_per_sample` -- the embeddings laid out one row per sample (prompt x
  ``num_images_per_prompt``), negative and positive apart, so a pipeline can repeat them for its own batch layout
  (e.g. once per view for MV-Adapter, whose UNet batch is samples x views).

Accepted ``ip_adapter_image_embeds`` (as diffusers): a list with one tensor per loaded IP-Adapter, each
``(B, num_images, D)`` (an ``ImageProjection`` IP-Adapter: CLIP image embeddings, ``D`` the encoder's projection size)
or ``(B, num_images, tokens, D)`` (IP-Adapter Plus: CLIP hidden states). ``B`` is 1 (shared by every sample), the
number of prompts, or the number of samples (prompts x ``num_images_per_prompt``); with classifier-free guidance the
tensor holds ``2 * B`` rows, the negative embeddings first (what ``prepare_ip_adapter_image_embeds(...,
do_classifier_free_guidance=True)`` returns).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

from .checks import check_finite, check_image_input

__all__ = ["check_ip_adapter_inputs", "ip_adapter_embeds_per_sample", "loaded_ip_adapters"]


def loaded_ip_adapters(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The image projection layers of the IP-Adapters loaded into ``unet`` (empty when none is)."""
    proj = getattr(unet, "encoder_hid_proj", None)
    if isinstance(proj, MultiIPAdapterImageProjection):
        return list(proj.image_projection_layers)
    return []


def _rows_text(batch_size: int, samples: int) -> str:
    allowed = sorted({1, batch_size, samples})
    return " or ".join(str(n) for n in allowed)


def check_ip_adapter_inputs(
    pipe: Any,
    ip_adapter_image: Any,
    ip_adapter_image_embeds: Any,
    *,
    batch_size: int,
    num_images_per_prompt: int,
    do_classifier_free_guidance: bool,
) -> None:
    """Validate a call's IP-Adapter arguments against the IP-Adapters loaded into ``pipe.unet``.

    Args:
        pipe: the pipeline (its ``unet``, ``image_encoder``).
        ip_adapter_image: one image (or one per loaded IP-Adapter, in a list).
        ip_adapter_image_embeds: a list of one tensor per loaded IP-Adapter (see the module docstring for shapes).
        batch_size: number of prompts; num_images_per_prompt: samples per prompt.
        do_classifier_free_guidance: whether the call runs a negative branch (then embeddings hold ``2 * B`` rows).

    Raises:
        ValueError: both arguments given, no IP-Adapter loaded, no image encoder for ``ip_adapter_image``, a list of
            the wrong length, or embeddings of the wrong rank, rows or size.
        TypeError: ``ip_adapter_image_embeds`` not a list of tensors, ``ip_adapter_image`` not an image.
    """
    if ip_adapter_image is None and ip_adapter_image_embeds is None:
        return
    if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
        raise ValueError("Pass either `ip_adapter_image` or `ip_adapter_image_embeds`, not both.")
    name = "ip_adapter_image" if ip_adapter_image is not None else "ip_adapter_image_embeds"
    layers = loaded_ip_adapters(pipe.unet)
    if not layers:
        raise ValueError(f"`{name}` needs an IP-Adapter and none is loaded: call `pipe.load_ip_adapter(...)` first.")
    if ip_adapter_image is not None:
        if getattr(pipe, "image_encoder", None) is None:
            raise ValueError(
                "`ip_adapter_image` needs an image encoder and the pipeline has none: load the IP-Adapter with its "
                "`image_encoder_folder`, pass `image_encoder=` to the pipeline, or pass `ip_adapter_image_embeds`."
            )
        images = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
        if len(images) != len(layers):
            raise ValueError(
                f"`ip_adapter_image` has {len(images)} entries but {len(layers)} IP-Adapter(s) are loaded: pass one "
                "image per IP-Adapter (a list of images for one IP-Adapter goes in a nested list)."
            )
        for image in images:
            check_image_input("ip_adapter_image", image)
        return

    embeds = ip_adapter_image_embeds
    if not isinstance(embeds, list) or not all(isinstance(e, torch.Tensor) for e in embeds):
        raise TypeError(
            "`ip_adapter_image_embeds` must be a list of tensors (one per loaded IP-Adapter), got "
            f"{type(embeds).__name__}."
        )
    if len(embeds) != len(layers):
        raise ValueError(
            f"`ip_adapter_image_embeds` has {len(embeds)} tensors but {len(layers)} IP-Adapter(s) are loaded."
        )
    samples = batch_size * num_images_per_prompt
    allowed = {1, batch_size, samples}
    for i, (embed, layer) in enumerate(zip(embeds, layers)):
        arg = f"ip_adapter_image_embeds[{i}]"
        plain = isinstance(layer, ImageProjection)
        if plain and embed.ndim != 3:
            raise ValueError(
                f"`{arg}` must be (batch, num_images, embed_dim) for this IP-Adapter (CLIP image embeddings), got "
                f"shape {tuple(embed.shape)}."
            )
        if embed.ndim not in (3, 4):
            raise ValueError(
                f"`{arg}` must be a 3D (batch, num_images, embed_dim) or 4D (batch, num_images, tokens, dim) tensor, "
                f"got shape {tuple(embed.shape)}."
            )
        if plain and embed.shape[-1] != layer.image_embeds.in_features:
            raise ValueError(
                f"`{arg}` has embed_dim {embed.shape[-1]} but the loaded IP-Adapter takes "
                f"{layer.image_embeds.in_features} (the image encoder's projection size)."
            )
        rows = int(embed.shape[0])
        if do_classifier_free_guidance:
            if rows % 2 or rows // 2 not in allowed:
                raise ValueError(
                    f"`{arg}` has {rows} rows; with classifier-free guidance it holds the negative embeddings then the "
                    f"positive ones: 2 x ({_rows_text(batch_size, samples)}) rows (1, one per prompt or one per "
                    "sample), as `prepare_ip_adapter_image_embeds(..., do_classifier_free_guidance=True)` returns."
                )
        elif rows not in allowed:
            raise ValueError(
                f"`{arg}` has {rows} rows; without classifier-free guidance it holds "
                f"{_rows_text(batch_size, samples)} rows (1, one per prompt or one per sample)."
            )
        check_finite(arg, embed)


def _per_sample(embed: torch.Tensor, batch_size: int, num_images_per_prompt: int) -> torch.Tensor:
    """``(1 | batch_size | samples, ...)`` -> ``(samples, ...)``, samples prompt-major as ``encode_prompt`` lays them."""
    samples = batch_size * num_images_per_prompt
    rows = embed.shape[0]
    if rows == samples:
        return embed
    if rows == 1:
        return embed.expand(samples, *embed.shape[1:])
    return embed.repeat_interleave(num_images_per_prompt, dim=0)


def ip_adapter_embeds_per_sample(
    pipe: Any,
    ip_adapter_image: Any,
    ip_adapter_image_embeds: list[torch.Tensor] | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
    num_images_per_prompt: int,
    do_classifier_free_guidance: bool,
) -> tuple[list[torch.Tensor] | None, list[torch.Tensor]]:
    """``(negative, positive)``: per loaded IP-Adapter, ``(samples, num_images, ...)`` embeddings (``negative`` is
    ``None`` without guidance). Images are encoded with ``pipe.prepare_ip_adapter_image_embeds`` (diffusers: zero
    image embeddings, or the hidden states of a zero image, as the negative); given embeddings are split into
    negative and positive halves and expanded to one row per sample."""
    prepared = pipe.prepare_ip_adapter_image_embeds(
        ip_adapter_image, ip_adapter_image_embeds, device, 1, do_classifier_free_guidance
    )
    negative = [] if do_classifier_free_guidance else None
    positive = []
    for embed in prepared:
        embed = embed.to(device=device, dtype=dtype)
        if do_classifier_free_guidance:
            neg, embed = embed.chunk(2)
            negative.append(_per_sample(neg, batch_size, num_images_per_prompt))
        positive.append(_per_sample(embed, batch_size, num_images_per_prompt))
    return negative, positive
