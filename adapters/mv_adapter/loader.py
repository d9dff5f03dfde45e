"""Attach, scale, save, load and unload MV-Adapter on a diffusers UNet.

:class:`MVAdapter` owns the decoupled attention processors (one per ``attn1``), their shared call-time state and the
condition encoder. It never changes the UNet's own weights: attaching swaps ``attn1`` processors (the originals are
kept and restored by :meth:`MVAdapter.unload`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging
from torch import nn

from ..deprecation import deprecated_name
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
    convert_from_ours,
    convert_to_ours,
    load_weights,
    save_weights,
    validate_state_dict,
)
from .attention import ATTENTION_MODES, MVAdapterAttnProcessor, MVAttentionState
from .condition import build_condition_encoder, condition_encoder_config
from .convert import KIND, detect_variant, variant_defaults

logger = logging.get_logger(__name__)

__all__ = ["CONFIG_KEY", "MVAdapter", "MVAdapterConfig", "WEIGHT_NAME", "load_mv_adapter"]

CONFIG_KEY = "diffusion_adapters.mv_config"
WEIGHT_NAME = "mv_adapter.safetensors"
CONDITIONS = ("camera", "geometry")


@dataclass
class MVAdapterConfig:
    """What an MV-Adapter holds and how it is used.

    Attributes:
        use_mv, use_ref: which attention branches exist (``use_ref`` for image-to-multi-view).
        attention_mode: ``"row"`` (official text/image), ``"full"`` or ``"row_col"`` (official geometry, 6 views).
        condition: ``"camera"`` (camera maps) or ``"geometry"`` (position + normal maps): the default condition.
        camera_map: ``"ray"`` (official) or ``"plucker"``.
        num_views: default number of views.
        cond_encoder: T2IAdapter config (see :func:`condition_encoder_config`); ``None`` for a registered custom
            encoder or no encoder.
        variant: the official variant name when known (``t2mv``, ``i2mv``, ``tg2mv``, ``ig2mv``).
    """

    use_mv: bool = True
    use_ref: bool = False
    attention_mode: str = "row"
    condition: str = "camera"
    camera_map: str = "ray"
    num_views: int = 6
    cond_encoder: dict[str, Any] | None = None
    variant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"`attention_mode` must be one of {ATTENTION_MODES}, got {self.attention_mode!r}.")
        if self.condition not in CONDITIONS:
            raise ValueError(f"`condition` must be one of {CONDITIONS}, got {self.condition!r}.")
        if self.camera_map not in ("ray", "plucker"):
            raise ValueError(f"`camera_map` must be 'ray' or 'plucker', got {self.camera_map!r}.")
        if self.num_views < 1:
            raise ValueError(f"`num_views` must be >= 1, got {self.num_views}.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MVAdapterConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class MVAdapter:
    """MV-Adapter on one UNet.

    Args:
        unet: a ``UNet2DConditionModel``.
        config: the adapter config.
        cond_encoder: the condition encoder; built from ``config.cond_encoder`` when None (and that is set).
        init: ``"zero"`` (branches copy the base q/k/v, zero output projections: output == base) or ``"random"``
            (leave the fresh layers' default init; tests only).

    The adapter is not attached until :meth:`attach` is called (``from_unet``/:func:`load_mv_adapter` attach).
    """

    def __init__(
        self,
        unet: nn.Module,
        config: MVAdapterConfig,
        cond_encoder: nn.Module | None = None,
        *,
        init: str = "zero",
    ):
        self.unet = unet
        self.config = config
        self.state = MVAttentionState(num_views=config.num_views)
        self.processors: dict[str, MVAdapterAttnProcessor] = {}
        for path, attn in iter_self_attention(unet):
            proc = MVAdapterAttnProcessor(
                path,
                attn.to_q.in_features,
                attn.to_q.out_features,
                state=self.state,
                base_processor=None,
                use_mv=config.use_mv,
                use_ref=config.use_ref,
                mode=config.attention_mode,
            )
            if init == "zero":
                proc.init_from_base(attn, zero_out=True)
            elif init != "random":
                raise ValueError(f"`init` must be 'zero' or 'random', got {init!r}.")
            self.processors[path] = proc
        if not self.processors:
            raise ValueError("The UNet has no self-attention (attn1) layers to attach MV-Adapter to.")
        if cond_encoder is None and config.cond_encoder is not None:
            cond_encoder = build_condition_encoder(config.cond_encoder)
        self.cond_encoder = cond_encoder
        self._originals: dict[str, object] | None = None
        self._hook = None

    # ------------------------------------------------------------------------------------------------------------
    # construction
    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        config: MVAdapterConfig | None = None,
        *,
        vae_scale_factor: int = 8,
        cond_encoder: nn.Module | None = None,
        attach: bool = True,
        **config_kwargs: Any,
    ) -> MVAdapter:
        """A fresh (zero-initialised) adapter for ``unet``; ``config_kwargs`` fill a default config."""
        if config is None:
            defaults = variant_defaults(config_kwargs.get("variant"))
            defaults.update(config_kwargs)
            config = MVAdapterConfig(**defaults)
        if config.cond_encoder is None and cond_encoder is None:
            config = dataclasses.replace(
                config, cond_encoder=condition_encoder_config(unet, vae_scale_factor=vae_scale_factor)
            )
        adapter = cls(unet, config, cond_encoder)
        if attach:
            adapter.attach()
        return adapter

    # ------------------------------------------------------------------------------------------------------------
    # attach / unload
    @property
    def attached(self) -> bool:
        return self._originals is not None

    def attach(self) -> MVAdapter:
        """Swap the processors into the UNet (on the UNet's device and dtype) and hook the UNet's forward."""
        if self.attached:
            return self

        def make(path, attn):
            proc = self.processors[path]
            proc.__dict__["base_processor"] = attn.processor
            proc.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
            return proc

        self._originals = swap_attn_processors(self.unet, make)
        install_processor_guard(self.unet)
        state = self.state

        def record_size(module, args, kwargs):
            sample = args[0] if args else kwargs.get("sample")
            if sample is not None:
                state.latent_hw = tuple(int(s) for s in sample.shape[-2:])

        self._hook = self.unet.register_forward_pre_hook(record_size, with_kwargs=True)
        return self

    def unload(self) -> None:
        """Put back the processors the adapter wraps and remove the hook (the UNet is exactly as before attaching, or
        with the processors a later ``set_default_attn_processor`` / attention slicing / fused QKV put under it)."""
        if not self.attached:
            return
        restore_attn_processors(self.unet, {path: self.processors[path].base_processor for path in self._originals})
        remove_processor_guard(self.unet)
        self._originals = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Temporarily unload (e.g. to save the plain base UNet)."""
        was = self.attached
        self.unload()
        try:
            yield
        finally:
            if was:
                self.attach()

    def set_scale(self, scale: float | None = None, ref_scale: float | None = None) -> None:
        """Scale the multi-view (``scale``) and/or reference (``ref_scale``) branches; ``None`` keeps a branch's
        scale, 0 switches a branch off exactly."""
        if scale is not None:
            self.state.mv_scale = float(scale)
        if ref_scale is not None:
            self.state.ref_scale = float(ref_scale)

    def set_adapter_scale(self, mv: float | None = None, ref: float | None = None) -> None:
        """Deprecated: :meth:`set_scale` (``mv`` -> ``scale``, ``ref`` -> ``ref_scale``)."""
        deprecated_name("MVAdapter.set_adapter_scale", "MVAdapter.set_scale(scale=..., ref_scale=...)")
        self.set_scale(mv, ref)

    # ------------------------------------------------------------------------------------------------------------
    # parameters and state dicts (official key layout)
    def modules(self) -> dict[str, nn.Module]:
        """``{prefix: module}`` for every module whose parameters belong to the adapter."""
        out: dict[str, nn.Module] = {f"{path}.processor": proc for path, proc in self.processors.items()}
        if self.cond_encoder is not None:
            out[""] = self.cond_encoder
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """All adapter parameters: the attention branches and the condition encoder."""
        params = []
        for module in self.modules().values():
            params.extend(module.parameters())
        return params

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors in the official layout (``...attn1.processor.to_q_mv.weight``, ``adapter.*``)."""
        out = {}
        for prefix, module in self.modules().items():
            for key, value in module.state_dict().items():
                out[f"{prefix}.{key}" if prefix else key] = value
        return out

    def expected_shapes(self) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in self.state_dict().items()}

    @torch.no_grad()
    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str | None = None) -> None:
        """Load official-layout tensors; every key must be consumed and every tensor fit (validated first)."""
        validate_state_dict(state_dict, self.expected_shapes(), what="MV-Adapter", source=source)
        for prefix, module in self.modules().items():
            sub = {}
            for key in module.state_dict():
                full = f"{prefix}.{key}" if prefix else key
                sub[key] = state_dict[full]
            module.load_state_dict(sub, strict=True)

    def save(self, path: str | os.PathLike, *, format: str = "ours") -> Path:
        """Write the adapter to a safetensors file (``format="ours"`` with metadata, or ``"official"``)."""
        tensors = convert_from_ours(KIND, format, self.state_dict())
        metadata = None
        if format == "ours":
            metadata = adapter_metadata(KIND, base_family(self.unet))
            metadata[CONFIG_KEY] = self.config.to_json()
        return save_weights(tensors, path, metadata=metadata)


def _resolve_file(source: str | os.PathLike, weight_name: str | None) -> Path:
    path = Path(source)
    if not path.exists() and weight_name is not None and str(source).count("/") == 1:
        # a hub repository id, e.g. ("huanngzh/mv-adapter", "mvadapter_i2mv_sdxl.safetensors"); honours HF_HUB_OFFLINE
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(source), weight_name))
    if path.is_dir():
        if weight_name is not None:
            path = path / weight_name
        else:
            candidates = sorted(path.glob("*.safetensors"))
            if len(candidates) != 1:
                raise ValueError(
                    f"Found {len(candidates)} .safetensors files in {str(source)!r}; pass `weight_name` to pick one."
                )
            path = candidates[0]
    return path


def load_mv_adapter(
    unet: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    weight_name: str | None = None,
    vae_scale_factor: int = 8,
    allow_pickle: bool = False,
    cond_encoder: nn.Module | None = None,
    attach: bool = True,
    **config_overrides: Any,
) -> MVAdapter:
    """Load an MV-Adapter file (official or ours) for ``unet``.

    Args:
        unet: the UNet; it is only changed (processors swapped) after the whole file validated.
        source: a ``.safetensors`` file, a folder holding one (or ``weight_name``), or a state dict.
        weight_name: file name inside a folder (e.g. ``"mvadapter_i2mv_sdxl.safetensors"``).
        vae_scale_factor: the pipeline's VAE factor (sets the condition encoder's downscale).
        cond_encoder: a custom condition encoder; its state dict keys must be in the file.
        config_overrides: fields of :class:`MVAdapterConfig` (e.g. ``attention_mode="full"``, ``variant="ig2mv"``).

    Raises:
        AdapterWeightsError: missing/unexpected keys, shape mismatches or a different base family / adapter kind.
    """
    metadata: dict[str, str]
    if isinstance(source, Mapping):
        state_dict, metadata, name = dict(source), {}, None
    else:
        path = _resolve_file(source, weight_name)
        state_dict, metadata = load_weights(path, allow_pickle=allow_pickle)
        name = str(path)
    check_adapter_kind(metadata, KIND, source=name)
    check_base_family(metadata, unet, what="MV-Adapter", source=name)
    state_dict = convert_to_ours(KIND, state_dict, metadata)
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise AdapterWeightsError(
            f"Tensor(s) {non_finite[:5]} in {name!r} hold NaN or inf values ({len(non_finite)} in all); "
            "nothing was changed."
        )

    if CONFIG_KEY in metadata:
        base = dataclasses.asdict(MVAdapterConfig.from_json(metadata[CONFIG_KEY]))
    else:
        variant = config_overrides.get("variant") or detect_variant(Path(name).name if name else None)
        base = {"variant": variant, **variant_defaults(variant)}
        base["use_mv"] = any("_mv." in k for k in state_dict)
        base["use_ref"] = any("_ref." in k for k in state_dict)
        if cond_encoder is None and any(k.startswith("adapter.") for k in state_dict):
            in_ch = 6
            base["cond_encoder"] = condition_encoder_config(unet, vae_scale_factor=vae_scale_factor, in_channels=in_ch)
            weight = state_dict.get("adapter.conv_in.weight")
            if weight is not None:
                ds = base["cond_encoder"]["downscale_factor"]
                if weight.shape[1] % (ds * ds) == 0:
                    base["cond_encoder"]["in_channels"] = weight.shape[1] // (ds * ds)
    base.update(config_overrides)
    if cond_encoder is not None:
        base["cond_encoder"] = None
    config = MVAdapterConfig(**base)
    try:
        adapter = MVAdapter(unet, config, cond_encoder, init="random")
    except (KeyError, TypeError) as err:
        raise AdapterWeightsError(f"Invalid MV-Adapter config in {name!r}: {err}") from err
    adapter.load_state_dict(state_dict, source=name)
    if attach:
        adapter.attach()
    return adapter
