"""Optional content adapter of I2V-Adapter: the input image's CLIP embedding through decoupled cross-attention.

This is IP-Adapter (arXiv 2308.06721) and is built from diffusers' own IP-Adapter machinery rather than rewritten:
an ``ImageProjection`` (CLIP image embedding -> ``num_tokens`` context tokens, held by the UNet as
``encoder_hid_proj``) and ``IPAdapterAttnProcessor2_0`` on every spatial cross-attention (``attn2``), loaded with
``UNet2DConditionLoadersMixin._load_ip_adapter_weights``. Our weights use the official IP-Adapter layout
(``image_proj.*`` + ``ip_adapter.<id>.to_{k,v}_ip.weight``) under the prefix ``content.``, so a pretrained SD 1.5
IP-Adapter file can be used as a starting point.

A fresh content adapter copies ``to_k_ip`` from the layer's ``to_k`` and zero-initialises ``to_v_ip``, so its
contribution is exactly zero until trained (the UNet output stays bit-identical to the base).

The image projection may also be IP-Adapter-Plus's resampler (``IPAdapterPlusImageProjection``: learned queries
attending to the CLIP encoder's penultimate hidden states, e.g. 16 tokens), which the authors' I2V-Adapter release uses
(``h94/IP-Adapter`` ``ip-adapter-plus_sd15``). Its weights are kept in the official IP-Adapter-Plus layout too
(``content.image_proj.latents``, ``proj_in``, ``proj_out``, ``norm_out``, ``layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out}``,
``layers.<i>.1.{0,1,3}``); the ``latents`` key marks a Plus projection.
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
from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
from diffusers.utils import logging
from torch import nn

from ..processors import processor_guard_paused

logger = logging.get_logger(__name__)

__all__ = [
    "CONTENT_PREFIX",
    "ContentAdapter",
    "content_expected_shapes",
    "fresh_content_state_dict",
    "plus_projection_shapes",
    "plus_projection_state",
]

CONTENT_PREFIX = "content."
_IP_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)


def _cross_attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """``(processor_name, attn2 module, key_id)`` in diffusers' IP-Adapter numbering (1, 3, 5, ...)."""
    layers = []
    key_id = 1
    modules = dict(unet.named_modules())
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor") or "motion_modules" in name or name.startswith("encoder_hid_proj."):
            continue
        layers.append((name, modules[name[: -len(".processor")]], key_id))
        key_id += 2
    return layers


def _plus_params(proj: IPAdapterPlusImageProjection) -> dict[str, list[torch.Tensor]]:
    """Official IP-Adapter-Plus key -> the projection's parameter(s) holding it (``to_kv`` = ``[to_k, to_v]`` stacked
    along dim 0; the inverse of diffusers' ``_convert_ip_adapter_image_proj_to_diffusers``)."""
    params: dict[str, list[torch.Tensor]] = {"latents": [proj.latents]}
    for name in ("proj_in", "proj_out", "norm_out"):
        module = getattr(proj, name)
        params[f"{name}.weight"] = [module.weight]
        params[f"{name}.bias"] = [module.bias]
    for i, layer in enumerate(proj.layers):
        for official, norm in (("0.norm1", layer.ln0), ("0.norm2", layer.ln1), ("1.0", layer.ff[0])):
            params[f"layers.{i}.{official}.weight"] = [norm.weight]
            params[f"layers.{i}.{official}.bias"] = [norm.bias]
        params[f"layers.{i}.0.to_q.weight"] = [layer.attn.to_q.weight]
        params[f"layers.{i}.0.to_kv.weight"] = [layer.attn.to_k.weight, layer.attn.to_v.weight]
        params[f"layers.{i}.0.to_out.weight"] = [layer.attn.to_out[0].weight]
        params[f"layers.{i}.1.1.weight"] = [layer.ff[1].net[0].proj.weight]
        params[f"layers.{i}.1.3.weight"] = [layer.ff[1].net[2].weight]
    return params


def plus_projection_state(proj: IPAdapterPlusImageProjection) -> dict[str, torch.Tensor]:
    """An ``IPAdapterPlusImageProjection``'s weights under the official IP-Adapter-Plus names (no prefix)."""
    return {key: torch.cat([p.detach() for p in ps], dim=0) for key, ps in _plus_params(proj).items()}


def plus_projection_shapes(image_embed_dim: int, cross_dim: int, hidden_dims: int, num_tokens: int) -> dict:
    """Official IP-Adapter-Plus key -> shape for a resampler from ``image_embed_dim`` (CLIP hidden size) to
    ``num_tokens`` tokens of ``cross_dim``, width ``hidden_dims`` (heads of 64, depth 4, as diffusers builds it)."""
    with torch.device("meta"):
        proj = IPAdapterPlusImageProjection(
            embed_dims=image_embed_dim,
            output_dims=cross_dim,
            hidden_dims=hidden_dims,
            heads=max(hidden_dims // 64, 1),
            num_queries=num_tokens,
        )
    return {key: torch.Size([sum(p.shape[0] for p in ps), *ps[0].shape[1:]]) for key, ps in _plus_params(proj).items()}


def content_expected_shapes(
    unet: nn.Module, image_embed_dim: int, num_tokens: int = 4, *, plus_hidden_dims: int | None = None
) -> dict[str, torch.Size]:
    """Keys (with the ``content.`` prefix) and shapes of a content adapter for ``unet``.

    Args:
        image_embed_dim: CLIP image embedding size (plain projection) or CLIP hidden size (Plus resampler).
        num_tokens: image tokens.
        plus_hidden_dims: width of an IP-Adapter-Plus resampler; ``None`` = the plain ``ImageProjection``.
    """
    cross_dim = unet.config.cross_attention_dim
    if plus_hidden_dims is not None:
        plus = plus_projection_shapes(image_embed_dim, cross_dim, plus_hidden_dims, num_tokens)
        shapes = {f"{CONTENT_PREFIX}image_proj.{k}": v for k, v in plus.items()}
    else:
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
        plus_hidden_dims: width of the IP-Adapter-Plus resampler, or ``None`` for the plain projection.
    """

    def __init__(
        self,
        unet: nn.Module,
        image_embed_dim: int,
        num_tokens: int,
        originals: dict[str, object],
        plus_hidden_dims: int | None = None,
    ):
        self.unet = unet
        self.image_embed_dim = image_embed_dim
        self.num_tokens = num_tokens
        self.plus_hidden_dims = plus_hidden_dims
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
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in state_dict.items():
            if not key.startswith(CONTENT_PREFIX):
                continue
            group, _, rest = key[len(CONTENT_PREFIX) :].partition(".")
            nested[group][rest] = value
        before = dict(unet.attn_processors)
        # diffusers re-instantiates non-IP processors with no arguments; park adapter processors (modules with
        # constructor arguments, like the I2V first-frame ones) behind a plain processor meanwhile
        parked = {name: (AttnProcessor2_0() if isinstance(proc, nn.Module) else proc) for name, proc in before.items()}
        with processor_guard_paused(unet):  # the parked processors really replace the adapter ones meanwhile
            unet.set_attn_processor(dict(parked))
            try:
                unet._load_ip_adapter_weights([nested], low_cpu_mem_usage=False)
            except Exception:
                unet.set_attn_processor(dict(before))
                raise
            # diffusers re-creates every processor; put back the non-IP ones we had (attn1 adapters, motion modules)
            after = unet.attn_processors
            # (an IP-Adapter-Plus resampler brings attention layers of its own: they keep their new processors)
            keep = {
                name: (proc if isinstance(proc, _IP_PROCESSORS) else before.get(name, proc))
                for name, proc in after.items()
            }
            unet.set_attn_processor(dict(keep))
        originals = {name: before[name] for name, proc in keep.items() if isinstance(proc, _IP_PROCESSORS)}
        plus = f"{CONTENT_PREFIX}image_proj.latents" in state_dict
        plus_hidden = int(state_dict[f"{CONTENT_PREFIX}image_proj.latents"].shape[-1]) if plus else None
        adapter = cls(unet, image_embed_dim, num_tokens, originals, plus_hidden)
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
        """Our ``content.``-prefixed keys in the official IP-Adapter (or IP-Adapter-Plus) layout."""
        proj = self.unet.encoder_hid_proj.image_projection_layers[0]
        if self.plus_hidden_dims is not None:
            sd = {f"{CONTENT_PREFIX}image_proj.{k}": v for k, v in plus_projection_state(proj).items()}
        else:
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
        if self.plus_hidden_dims is not None:
            targets = {f"{CONTENT_PREFIX}image_proj.{k}": ps for k, ps in _plus_params(proj).items()}
        else:
            targets = {
                f"{CONTENT_PREFIX}image_proj.proj.weight": [proj.image_embeds.weight],
                f"{CONTENT_PREFIX}image_proj.proj.bias": [proj.image_embeds.bias],
                f"{CONTENT_PREFIX}image_proj.norm.weight": [proj.norm.weight],
                f"{CONTENT_PREFIX}image_proj.norm.bias": [proj.norm.bias],
            }
        for name, _, key_id in _cross_attention_layers(self.unet):
            targets[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_k_ip.weight"] = [procs[name].to_k_ip[0].weight]
            targets[f"{CONTENT_PREFIX}ip_adapter.{key_id}.to_v_ip.weight"] = [procs[name].to_v_ip[0].weight]
        assert set(targets) == set(current)
        with torch.no_grad():
            for key, params in targets.items():
                parts = state_dict[key].split([p.shape[0] for p in params], dim=0)
                for param, part in zip(params, parts):
                    param.copy_(part)

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
