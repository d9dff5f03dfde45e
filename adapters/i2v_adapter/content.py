"""Optional content adapter of I2V-Adapter: the input image's CLIP embedding through decoupled cross-attention.

This is IP-Adapter (arXiv 2308.06721) and is built from diffusers' own IP-Adapter machinery rather than rewritten:
an ``ImageProjection`` (CLIP image embedding -> ``num_tokens`` context tokens, held by the UNet as
``encoder_hid_proj``) and ``IPAdapterAttnProcessor2_0`` on every spatial cross-attention (``attn2``), loaded with
``UNet2DConditionLoadersMixin._load_ip_adapter_weights``. Our weights use the official IP-Adapter layout
(``image_proj.*`` + ``ip_adapter.<id>.to_{k,v}_ip.weight``) under the prefix ``content.``, so a pretrained SD 1.5
IP-Adapter file can be used as a starting point.

A fresh content adapter copies ``to_k_ip`` from the layer's ``to_k`` and zero-initialises ``to_v_ip``, so its
contribution is exactly zero until trained (the UNet output stays bit-identical to the base).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.models.attention_processor import (
    AttnProcessor2_0,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
)
from diffusers.models.embeddings import ImageProjection
from diffusers.utils import logging
from torch import nn

logger = logging.get_logger(__name__)

__all__ = ["CONTENT_PREFIX", "ContentAdapter", "content_expected_shapes", "fresh_content_state_dict"]

CONTENT_PREFIX = "content."
_IP_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)


def _cross_attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """``(processor_name, attn2 module, key_id)`` in diffusers' IP-Adapter numbering (1, 3, 5, ...)."""
    layers = []
    key_id = 1
    modules = dict(unet.named_modules())
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        layers.append((name, modules[name[: -len(".processor")]], key_id))
        key_id += 2
    return layers


def content_expected_shapes(unet: nn.Module, image_embed_dim: int, num_tokens: int = 4) -> dict[str, torch.Size]:
    """Keys (with the ``content.`` prefix) and shapes of a content adapter for ``unet``."""
    cross_dim = unet.config.cross_attention_dim
    shapes = {
        f"{CONTENT_PREFIX}image_proj.proj.weight": torch.Size([cross_dim * num_tokens, image_embed_dim]),
        f"{CONTENT_PREFIX}image_proj.proj.bias": torch.Size([cross_dim * num_tokens]),
        f"{CONTENT_PREFIX}image_proj.norm.weight": torch.Size([cross_dim]),
        f"{CONTENT_PREFIX}image_proj.norm.bias": torch.Size([cross_dim]),
    }
    for _, attn, key_id in _cross_attention_layers(unet):
        hidden = attn.to_q.out_features
        shapes[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_k_ip.weight"] = torch.Size([hidden, cross_dim])
        shapes[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_v_ip.weight"] = torch.Size([hidden, cross_dim])
    return shapes


def fresh_content_state_dict(
    unet: nn.Module, image_embed_dim: int, num_tokens: int = 4, *, seed: int | None = 0
) -> dict[str, torch.Tensor]:
    """A new content adapter: random image projection, ``to_k_ip`` = ``to_k``, ``to_v_ip`` = 0 (zero output)."""
    cross_dim = unet.config.cross_attention_dim
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        proj = ImageProjection(
            image_embed_dim=image_embed_dim, cross_attention_dim=cross_dim, num_image_text_embeds=num_tokens
        )
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
    sd = {
        f"{CONTENT_PREFIX}image_proj.proj.weight": proj.image_embeds.weight.detach(),
        f"{CONTENT_PREFIX}image_proj.proj.bias": proj.image_embeds.bias.detach(),
        f"{CONTENT_PREFIX}image_proj.norm.weight": proj.norm.weight.detach(),
        f"{CONTENT_PREFIX}image_proj.norm.bias": proj.norm.bias.detach(),
    }
    for _, attn, key_id in _cross_attention_layers(unet):
        sd[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_k_ip.weight"] = attn.to_k.weight.detach().float().clone()
        sd[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_v_ip.weight"] = torch.zeros_like(
            attn.to_v.weight, dtype=torch.float32
        )
    return sd


class ContentAdapter:
    """An IP-Adapter-style content adapter attached to a ``UNetMotionModel`` through diffusers' loader.

    Use :meth:`attach`; :meth:`unload` restores the previous cross-attention processors and removes the image
    projection. Self-attention processors (e.g. the I2V first-frame processors) are left as they were.

    Attributes:
        unet: the UNet.
        image_embed_dim: CLIP image embedding size (``image_encoder.config.projection_dim``).
        num_tokens: context tokens produced from one image embedding.
    """

    def __init__(self, unet: nn.Module, image_embed_dim: int, num_tokens: int, originals: dict[str, object]):
        self.unet = unet
        self.image_embed_dim = image_embed_dim
        self.num_tokens = num_tokens
        self._originals = originals
        self._scale = 1.0

    @classmethod
    def attach(
        cls,
        unet: nn.Module,
        image_embed_dim: int,
        *,
        num_tokens: int = 4,
        state_dict: dict[str, torch.Tensor] | None = None,
        scale: float = 1.0,
    ) -> ContentAdapter:
        """Attach a content adapter (fresh, or from a ``content.``-prefixed ``state_dict`` already validated)."""
        if getattr(unet, "encoder_hid_proj", None) is not None:
            raise ValueError(
                "This UNet already has an image projection (an IP-Adapter is loaded); unload it before attaching the "
                "I2V content adapter."
            )
        if state_dict is None:
            state_dict = fresh_content_state_dict(unet, image_embed_dim, num_tokens)
        nested = {"image_proj": {}, "ip_adapter": {}}
        for key, value in state_dict.items():
            if not key.startswith(CONTENT_PREFIX):
                continue
            group, _, rest = key[len(CONTENT_PREFIX) :].partition(".")
            nested[group][rest] = value
        before = dict(unet.attn_processors)
        # diffusers re-instantiates non-IP processors with no arguments; park adapter processors (modules with
        # constructor arguments, like the I2V first-frame ones) behind a plain processor meanwhile
        parked = {name: (AttnProcessor2_0() if isinstance(proc, nn.Module) else proc) for name, proc in before.items()}
        unet.set_attn_processor(dict(parked))
        try:
            unet._load_ip_adapter_weights([nested], low_cpu_mem_usage=False)
        except Exception:
            unet.set_attn_processor(dict(before))
            raise
        # diffusers re-creates every processor; put back the non-IP ones we had (attn1 adapters, motion modules)
        after = unet.attn_processors
        keep = {name: (proc if isinstance(proc, _IP_PROCESSORS) else before[name]) for name, proc in after.items()}
        unet.set_attn_processor(dict(keep))
        originals = {name: before[name] for name, proc in keep.items() if isinstance(proc, _IP_PROCESSORS)}
        adapter = cls(unet, image_embed_dim, num_tokens, originals)
        adapter.set_scale(scale)
        return adapter

    def processors(self) -> dict[str, nn.Module]:
        """The attached ``IPAdapterAttnProcessor2_0`` modules by processor name."""
        return {k: v for k, v in self.unet.attn_processors.items() if isinstance(v, _IP_PROCESSORS)}

    def set_scale(self, scale: float) -> None:
        """Weight of the image tokens' attention in every cross-attention layer (0 = off)."""
        self._scale = float(scale)
        for proc in self.processors().values():
            proc.scale = [self._scale] * len(proc.scale)

    @property
    def scale(self) -> float:
        return self._scale

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters: image projection + ``to_k_ip`` / ``to_v_ip`` of every cross-attention layer."""
        params = list(self.unet.encoder_hid_proj.parameters())
        for proc in self.processors().values():
            params += list(proc.parameters())
        return params

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Our ``content.``-prefixed keys in the official IP-Adapter layout."""
        proj = self.unet.encoder_hid_proj.image_projection_layers[0]
        sd = {
            f"{CONTENT_PREFIX}image_proj.proj.weight": proj.image_embeds.weight,
            f"{CONTENT_PREFIX}image_proj.proj.bias": proj.image_embeds.bias,
            f"{CONTENT_PREFIX}image_proj.norm.weight": proj.norm.weight,
            f"{CONTENT_PREFIX}image_proj.norm.bias": proj.norm.bias,
        }
        procs = self.processors()
        for name, _, key_id in _cross_attention_layers(self.unet):
            proc = procs[name]
            sd[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_k_ip.weight"] = proc.to_k_ip[0].weight
            sd[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_v_ip.weight"] = proc.to_v_ip[0].weight
        return {k: v.detach().clone() for k, v in sd.items()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy validated ``content.``-prefixed weights into the attached modules."""
        current = self.state_dict()
        proj = self.unet.encoder_hid_proj.image_projection_layers[0]
        procs = self.processors()
        targets = {
            f"{CONTENT_PREFIX}image_proj.proj.weight": proj.image_embeds.weight,
            f"{CONTENT_PREFIX}image_proj.proj.bias": proj.image_embeds.bias,
            f"{CONTENT_PREFIX}image_proj.norm.weight": proj.norm.weight,
            f"{CONTENT_PREFIX}image_proj.norm.bias": proj.norm.bias,
        }
        for name, _, key_id in _cross_attention_layers(self.unet):
            targets[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_k_ip.weight"] = procs[name].to_k_ip[0].weight
            targets[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_v_ip.weight"] = procs[name].to_v_ip[0].weight
        assert set(targets) == set(current)
        with torch.no_grad():
            for key, param in targets.items():
                param.copy_(state_dict[key])

    def _detach(self) -> None:
        """Put back the cross-attention processors from before :meth:`attach` and drop the image projection."""
        procs = self.unet.attn_processors
        for name, original in self._originals.items():
            procs[name] = original
        self.unet.set_attn_processor(procs)
        self.unet.encoder_hid_proj = None
        self.unet.config.encoder_hid_dim_type = None

    def unload(self) -> None:
        """Remove the image projection and put back the cross-attention processors from before :meth:`attach`."""
        self._detach()
        self._originals = {}

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Temporarily remove the content adapter (e.g. to save the plain UNet), then put the same modules back."""
        ip_procs = self.processors()
        projection = self.unet.encoder_hid_proj
        self._detach()
        try:
            yield
        finally:
            procs = self.unet.attn_processors
            procs.update(ip_procs)
            self.unet.set_attn_processor(procs)
            self.unet.encoder_hid_proj = projection
            self.unet.config.encoder_hid_dim_type = "ip_image_proj"
