"""Attach, save, load and unload I2V-Adapter on a ``UNetMotionModel``.

File layout (safetensors, ``diffusion_adapters.kind = "i2v_adapter"``):

* ``<attn1 path>.to_q_i2v.weight`` ``(inner, dim)``, ``<attn1 path>.to_out_i2v.weight`` ``(dim, inner)`` and
  ``<attn1 path>.to_out_i2v.bias`` ``(dim,)`` for every spatial self-attention, e.g.
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q_i2v.weight``;
* optionally the content adapter, ``content.image_proj.*`` and ``content.ip_adapter.<id>.to_{k,v}_ip.weight``
  (official IP-Adapter layout, see :mod:`adapters.i2v_adapter.content`), flagged by the metadata
  ``diffusion_adapters.content_image_embed_dim``; an IP-Adapter-Plus resampler (``content.image_proj.latents``,
  ``proj_in``, ``layers.*`` ...) is recognised by its ``latents`` key.

The authors' whole-UNet release (``animatediff_v15_v1_ipplus.pth``) is read by :mod:`.release`.

The authors' checkpoints name the same projections ``to_q_ff`` / ``to_out_ff`` inside ``attn1``; that layout is
registered as the ``"official"`` format and converted on load.

Loading validates everything (kind, base family, every key consumed, every shape) before any module is touched, so
a failed load leaves the UNet exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

import torch
from diffusers.utils import logging
from torch import nn

from ..processors import (
    install_processor_guard,
    iter_self_attention,
    remove_processor_guard,
    restore_attn_processors,
    swap_attn_processors,
)
from ..weights import (
    AdapterWeightsError,
    adapter_metadata,
    base_family,
    check_adapter_kind,
    check_base_family,
    convert_to_ours,
    load_weights,
    register_format,
    save_weights,
    validate_state_dict,
)
from .attention import FrameContext, I2VAdapterAttnProcessor, install_num_frames_hook
from .content import CONTENT_PREFIX, ContentAdapter, content_expected_shapes

logger = logging.get_logger(__name__)

__all__ = [
    "KIND",
    "I2VAdapter",
    "get_i2v_adapter",
    "i2v_expected_shapes",
    "load_i2v_adapter",
    "save_i2v_adapter",
]

KIND = "i2v_adapter"
CONTENT_DIM_KEY = "diffusion_adapters.content_image_embed_dim"
CONTENT_TOKENS_KEY = "diffusion_adapters.content_num_tokens"
CONTENT_PLUS_KEY = "diffusion_adapters.content_plus_hidden_dims"
_HANDLE_ATTR = "_diffusion_adapters_i2v"


def _is_ours(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    return metadata.get("diffusion_adapters.kind") == KIND or any(".to_q_i2v." in k for k in sd)


def _is_official(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    return any(".to_q_ff." in k or ".to_out_ff." in k for k in sd)


def _official_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("unet.").removeprefix("module.")
        key = key.replace(".attn1.to_q_ff.", ".attn1.to_q_i2v.").replace(".attn1.to_out_ff.", ".attn1.to_out_i2v.")
        out[key] = value
    return out


def _ours_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k.replace(".to_q_i2v.", ".to_q_ff.").replace(".to_out_i2v.", ".to_out_ff."): v
        for k, v in sd.items()
        if not k.startswith(CONTENT_PREFIX)
    }


register_format(KIND, "diffusion_adapters", detect=_is_ours)
register_format(KIND, "official", detect=_is_official, to_ours=_official_to_ours, from_ours=_ours_to_official)


def _check_motion_unet(unet: nn.Module) -> None:
    from diffusers import UNetMotionModel

    if not isinstance(getattr(unet, "_orig_mod", unet), UNetMotionModel):
        raise ValueError(
            f"I2V-Adapter needs a `UNetMotionModel` (an SD 1.5 UNet plus a MotionAdapter), got {type(unet).__name__}."
        )


def i2v_expected_shapes(unet: nn.Module) -> dict[str, torch.Size]:
    """Keys and shapes of the first-frame attention projections for ``unet`` (content adapter not included)."""
    shapes = {}
    for path, attn in iter_self_attention(unet):
        dim, inner = attn.to_q.in_features, attn.to_q.out_features
        shapes[f"{path}.to_q_i2v.weight"] = torch.Size([inner, dim])
        shapes[f"{path}.to_out_i2v.weight"] = torch.Size([dim, inner])
        shapes[f"{path}.to_out_i2v.bias"] = torch.Size([dim])
    return shapes


def get_i2v_adapter(unet: nn.Module) -> I2VAdapter | None:
    """The :class:`I2VAdapter` attached to ``unet``, or ``None``."""
    return getattr(unet, _HANDLE_ATTR, None)


class I2VAdapter:
    """I2V-Adapter attached to a ``UNetMotionModel``: first-frame attention processors (+ optional content adapter).

    Create with :meth:`attach` (fresh, zero output) or :func:`load_i2v_adapter`. The processors are registered as
    submodules of their ``Attention`` layers (like diffusers' IP-Adapter), so they follow the UNet through ``.to()``
    and ``enable_model_cpu_offload``.

    Attributes:
        unet: the UNet.
        context: the shared :class:`FrameContext` (frame count of the current call).
        processors: ``{attn1 path: I2VAdapterAttnProcessor}``.
        content: the :class:`ContentAdapter`, or ``None``.
    """

    def __init__(self, unet: nn.Module, context: FrameContext, originals: dict[str, object], hook, scale: float):
        self.unet = unet
        self.context = context
        self._originals = originals
        self._hook = hook
        self._scale = float(scale)
        self.content: ContentAdapter | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def attach(
        cls,
        unet: nn.Module,
        *,
        scale: float = 1.0,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        content_image_embed_dim: int | None = None,
        content_num_tokens: int = 4,
        content_scale: float = 1.0,
    ) -> I2VAdapter:
        """Attach first-frame attention to every spatial ``attn1`` of ``unet``.

        Args:
            unet: a ``UNetMotionModel``.
            scale: adapter branch weight.
            state_dict: our keys (validated by the caller, e.g. :func:`load_i2v_adapter`); ``None`` = fresh adapter.
            content_image_embed_dim: attach a content adapter for CLIP image embeddings of this size.
            content_num_tokens: image tokens of the content adapter.
            content_scale: content adapter weight.
        """
        _check_motion_unet(unet)
        if get_i2v_adapter(unet) is not None:
            raise ValueError("An I2V-Adapter is already attached to this UNet; call `unload()` first.")
        context = FrameContext()

        def make(path: str, attn) -> I2VAdapterAttnProcessor:
            return I2VAdapterAttnProcessor.for_attention(attn, context, base_processor=attn.processor, scale=scale)

        originals = swap_attn_processors(unet, make)
        install_processor_guard(unet)
        hook = install_num_frames_hook(unet, context)
        adapter = cls(unet, context, originals, hook, scale)
        setattr(unet, _HANDLE_ATTR, adapter)
        try:
            if state_dict is not None:
                adapter._load_projections(state_dict)
            if content_image_embed_dim is not None:
                content_sd = None
                if state_dict is not None and any(k.startswith(CONTENT_PREFIX) for k in state_dict):
                    content_sd = {k: v for k, v in state_dict.items() if k.startswith(CONTENT_PREFIX)}
                adapter.content = ContentAdapter.attach(
                    unet,
                    content_image_embed_dim,
                    num_tokens=content_num_tokens,
                    state_dict=content_sd,
                    scale=content_scale,
                )
        except Exception:
            adapter.unload()
            raise
        return adapter

    def unload(self) -> None:
        """Remove the adapter: original processors back, hook removed, content adapter removed."""
        if self.content is not None:
            self.content.unload()
            self.content = None
        restore_attn_processors(self.unet, self._base_processors())
        remove_processor_guard(self.unet)
        self._originals = {}
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if getattr(self.unet, _HANDLE_ATTR, None) is self:
            delattr(self.unet, _HANDLE_ATTR)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Temporarily put the original ``attn1`` processors back (for diffusers code that rebuilds processors,
        e.g. ``load_ip_adapter``), then re-install ours on top of whatever is there afterwards."""
        procs = self.processors
        restore_attn_processors(self.unet, self._base_processors())
        try:
            yield
        finally:
            modules = dict(self.unet.named_modules())

            def make(path: str, attn):
                proc = procs.get(path)
                if proc is None:
                    return None
                object.__setattr__(proc, "base_processor", attn.processor)
                return proc

            self._originals = swap_attn_processors(self.unet, make, ((p, modules[p]) for p in procs))

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Temporarily remove the whole adapter (first-frame processors, hook, content adapter) so the UNet is the
        plain base (e.g. for ``save_pretrained``); the same modules are put back afterwards."""
        content = self.content.suspended() if self.content is not None else contextlib.nullcontext()
        with content, self.suspended():
            self._hook.remove()
            try:
                yield
            finally:
                self._hook = install_num_frames_hook(self.unet, self.context)

    # ------------------------------------------------------------------------------------------------ access
    def _base_processors(self) -> dict[str, object]:
        """``{path: processor under the adapter's}``: the one the adapter wrapped when attached, or the one a later
        ``set_default_attn_processor`` / attention slicing / fused QKV put under it."""
        out = {}
        for path, proc in self.processors.items():
            out[path] = proc.base_processor if isinstance(proc, I2VAdapterAttnProcessor) else self._originals[path]
        return out

    @property
    def processors(self) -> dict[str, I2VAdapterAttnProcessor]:
        modules = dict(self.unet.named_modules())
        return {path: modules[path].processor for path in self._originals}

    @property
    def scale(self) -> float:
        return self._scale

    def set_scale(self, scale: float) -> None:
        """Weight of the first-frame attention (0 = plain motion UNet)."""
        self._scale = float(scale)
        for proc in self.processors.values():
            proc.scale = self._scale

    def parameters(self, *, include_content: bool = True) -> list[nn.Parameter]:
        """The adapter's trainable parameters (``to_q_i2v``, ``to_out_i2v`` and the content adapter's)."""
        params = [p for proc in self.processors.values() for p in proc.parameters()]
        if include_content and self.content is not None:
            params += self.content.parameters()
        return params

    def expected_shapes(self) -> dict[str, torch.Size]:
        shapes = i2v_expected_shapes(self.unet)
        if self.content is not None:
            content = self.content
            shapes.update(
                content_expected_shapes(
                    self.unet, content.image_embed_dim, content.num_tokens, plus_hidden_dims=content.plus_hidden_dims
                )
            )
        return shapes

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Our file's tensors (detached copies)."""
        sd = {}
        for path, proc in self.processors.items():
            sd[f"{path}.to_q_i2v.weight"] = proc.to_q_i2v.weight.detach().clone()
            sd[f"{path}.to_out_i2v.weight"] = proc.to_out_i2v.weight.detach().clone()
            sd[f"{path}.to_out_i2v.bias"] = proc.to_out_i2v.bias.detach().clone()
        if self.content is not None:
            sd.update(self.content.state_dict())
        return sd

    def metadata(self) -> dict[str, str]:
        extra = {}
        if self.content is not None:
            extra = {CONTENT_DIM_KEY: self.content.image_embed_dim, CONTENT_TOKENS_KEY: self.content.num_tokens}
            if self.content.plus_hidden_dims is not None:
                extra[CONTENT_PLUS_KEY] = self.content.plus_hidden_dims
        return adapter_metadata(KIND, base_family(self.unet), **extra)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str | None = None) -> None:
        """Validate (all keys, shapes) then copy weights in; on error nothing changes."""
        validate_state_dict(state_dict, self.expected_shapes(), what="I2V-Adapter", source=source)
        self._load_projections(state_dict)
        if self.content is not None:
            self.content.load_state_dict({k: v for k, v in state_dict.items() if k.startswith(CONTENT_PREFIX)})

    def _load_projections(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for path, proc in self.processors.items():
                proc.to_q_i2v.weight.copy_(state_dict[f"{path}.to_q_i2v.weight"])
                proc.to_out_i2v.weight.copy_(state_dict[f"{path}.to_out_i2v.weight"])
                proc.to_out_i2v.bias.copy_(state_dict[f"{path}.to_out_i2v.bias"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the adapter (+ content adapter) to a safetensors file with our metadata."""
        save_weights(self.state_dict(), path, metadata=self.metadata())


def save_i2v_adapter(unet_or_adapter: nn.Module | I2VAdapter, path: str | os.PathLike) -> None:
    """Save the I2V-Adapter attached to a UNet (or the given handle) to ``path``."""
    adapter = unet_or_adapter if isinstance(unet_or_adapter, I2VAdapter) else get_i2v_adapter(unet_or_adapter)
    if adapter is None:
        raise ValueError("No I2V-Adapter is attached to this UNet.")
    adapter.save(path)


def load_i2v_adapter(
    unet: nn.Module,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    scale: float = 1.0,
    content_scale: float = 1.0,
    allow_pickle: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> I2VAdapter:
    """Validate a weight file (or state dict) against ``unet`` and attach it, replacing any attached I2V-Adapter.

    Args:
        unet: a ``UNetMotionModel``.
        weights: a ``.safetensors`` path (pickle formats need ``allow_pickle``) or a state dict in our layout or
            the official one.
        scale: first-frame attention weight.
        content_scale: content adapter weight (when the file holds one).
        allow_pickle: allow ``.bin``/``.ckpt``/``.pt``/``.pth`` files (read with ``weights_only=True``).
        metadata: metadata for a state dict given directly.

    Raises:
        AdapterWeightsError: wrong kind, base family, missing/unexpected keys or shapes; the UNet is unchanged.
    """
    _check_motion_unet(unet)
    source = None
    if isinstance(weights, Mapping):
        state_dict, meta = dict(weights), dict(metadata or {})
    else:
        source = str(weights)
        state_dict, meta = load_weights(weights, allow_pickle=allow_pickle)
    check_adapter_kind(meta, KIND, source=source)
    check_base_family(meta, unet, what="I2V-Adapter", source=source)
    state_dict = convert_to_ours(KIND, state_dict, meta)
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise AdapterWeightsError(
            f"Tensor(s) {non_finite[:5]} in {source!r} hold NaN or inf values ({len(non_finite)} in all); "
            "nothing was changed."
        )
    has_content = any(k.startswith(CONTENT_PREFIX) for k in state_dict)
    expected = i2v_expected_shapes(unet)
    content_dim = content_tokens = plus_hidden = None
    plus_latents = state_dict.get(f"{CONTENT_PREFIX}image_proj.latents")
    if has_content and plus_latents is not None and plus_latents.ndim == 3:
        # IP-Adapter-Plus resampler: (1, tokens, hidden) learned queries; CLIP hidden size from proj_in
        proj_in = state_dict.get(f"{CONTENT_PREFIX}image_proj.proj_in.weight")
        if proj_in is None or proj_in.ndim != 2:
            raise AdapterWeightsError(
                f"The IP-Adapter-Plus content adapter in {source or 'the state dict'} lacks a 2-D "
                f"{CONTENT_PREFIX}image_proj.proj_in.weight; nothing was changed.",
                missing=[f"{CONTENT_PREFIX}image_proj.proj_in.weight"],
            )
        content_dim, content_tokens, plus_hidden = (
            int(proj_in.shape[1]),
            int(plus_latents.shape[1]),
            int(plus_latents.shape[2]),
        )
        if getattr(unet, "encoder_hid_proj", None) is not None and get_i2v_adapter(unet) is None:
            raise AdapterWeightsError(
                "The file holds a content adapter but the UNet already has an IP-Adapter; unload it first. "
                "Nothing was changed."
            )
        expected.update(content_expected_shapes(unet, content_dim, content_tokens, plus_hidden_dims=plus_hidden))
    elif has_content:
        if CONTENT_DIM_KEY in meta:
            content_dim = int(meta[CONTENT_DIM_KEY])
            content_tokens = int(meta.get(CONTENT_TOKENS_KEY, 4))
        else:
            proj = state_dict.get(f"{CONTENT_PREFIX}image_proj.proj.weight")
            if proj is None:
                raise AdapterWeightsError(
                    f"The content adapter in {source or 'the state dict'} lacks "
                    f"{CONTENT_PREFIX}image_proj.proj.weight; nothing was changed.",
                    missing=[f"{CONTENT_PREFIX}image_proj.proj.weight"],
                )
            content_dim = proj.shape[1]
            content_tokens = proj.shape[0] // unet.config.cross_attention_dim
        if getattr(unet, "encoder_hid_proj", None) is not None and get_i2v_adapter(unet) is None:
            raise AdapterWeightsError(
                "The file holds a content adapter but the UNet already has an IP-Adapter; unload it first. "
                "Nothing was changed."
            )
        expected.update(content_expected_shapes(unet, content_dim, content_tokens))
    validate_state_dict(state_dict, expected, what="I2V-Adapter", source=source)
    previous = get_i2v_adapter(unet)
    if previous is not None:
        previous.unload()
    return I2VAdapter.attach(
        unet,
        scale=scale,
        state_dict=state_dict,
        content_image_embed_dim=content_dim,
        content_num_tokens=content_tokens or 4,
        content_scale=content_scale,
    )
