"""Load, scale, fuse, unload and save a ResAdapter on any SD-family UNet / pipeline.

Every function takes either a pipeline (anything with a ``.unet``) or the UNet itself. The adapter's state lives in
one :class:`ResAdapterState` object attached to the UNet as ``unet._res_adapter`` (a plain attribute, not a
submodule: the UNet's module tree and ``state_dict`` keys never change).

Loading is strict and transactional: every file is read, converted, checked against the UNet (kind and base-family
metadata, every key consumed, every shape matching, finite floating-point tensors) *before* any module is touched.
A failed load raises :class:`adapters.weights.AdapterWeightsError` and leaves the model exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import logging
from torch import nn

from ..weights import (
    AdapterWeightsError,
    StateDict,
    base_family,
    check_adapter_kind,
    check_base_family,
    load_weights,
    save_weights,
    validate_state_dict,
)
from .config import (
    DEFAULT_ALPHA,
    DEFAULT_RANK,
    KIND,
    LORA_WEIGHTS_NAME,
    LORA_WEIGHTS_NAMES_V1,
    NORM_WEIGHTS_NAME,
    NORM_WEIGHTS_NAMES_V1,
    SINGLE_FILE_NAME,
    ResAdapterConfig,
    base_conv,
    resnet_norm_paths,
    sampler_conv_paths,
)
from .convert import is_lora_key, kohya_module_name, split_state_dict, to_ours
from .layers import SamplerLoRA, build_sampler_lora, kohya_key
from .norms import GroupNormPatch

logger = logging.get_logger(__name__)

__all__ = [
    "ResAdapterState",
    "SAVE_FORMATS",
    "fuse_res_adapter",
    "get_res_adapter",
    "init_res_adapter",
    "load_res_adapter",
    "read_res_adapter",
    "res_adapter_detached",
    "res_adapter_state_dict",
    "save_res_adapter",
    "set_res_adapter_scale",
    "unfuse_res_adapter",
    "unload_res_adapter",
]

_STATE_ATTR = "_res_adapter"
SAVE_FORMATS = ("official", "diffusion-adapters")
# "diffusers-adapters" is how the issue spells our format; accepted as an alias.
_FORMAT_ALIASES = {
    "official": "official",
    "diffusion-adapters": "diffusion-adapters",
    "diffusers-adapters": "diffusion-adapters",
    "ours": "diffusion-adapters",
}


@dataclass
class ResAdapterState:
    """A ResAdapter attached to one UNet.

    Attributes:
        config: rank, alpha, family, trained resolution range of the loaded file(s).
        lora: the sampler LoRA (hooks or fused), ``None`` if the adapter has no LoRA part.
        norms: the GroupNorm patch, ``None`` if the adapter has no norm part.
        lora_scale: multiplier of the sampler LoRA (0 = off).
        norm_scale: blend of base (0) and ResAdapter (1) GroupNorm weights.
        source: where it was loaded from (for messages).
        training: the norm parameters are being trained in place; read them back before saving.
    """

    config: ResAdapterConfig
    lora: SamplerLoRA | None
    norms: GroupNormPatch | None
    lora_scale: float = 1.0
    norm_scale: float = 1.0
    source: str | None = None
    training: bool = False

    @property
    def fused(self) -> bool:
        return self.lora is not None and self.lora.fused

    @property
    def resolution_range(self) -> tuple[int, int] | None:
        return self.config.resolution_range

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Sampler LoRA parameters and the live ResNet GroupNorm parameters."""
        params: list[nn.Parameter] = []
        if self.lora is not None:
            params.extend(self.lora.trainable_parameters())
        if self.norms is not None:
            params.extend(self.norms.parameters())
        return params


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def _unet(pipe_or_unet: object) -> nn.Module:
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    unet = getattr(unet, "_orig_mod", unet)  # a torch.compile'd UNet: work on the original module
    if not isinstance(unet, nn.Module):
        raise TypeError(
            f"Expected a diffusers pipeline with a `unet` or a UNet module, got {type(pipe_or_unet).__name__}."
        )
    return unet


def get_res_adapter(pipe_or_unet: object) -> ResAdapterState | None:
    """The :class:`ResAdapterState` attached to the pipeline's UNet, or ``None``."""
    return getattr(_unet(pipe_or_unet), _STATE_ATTR, None)


def _require(pipe_or_unet: object) -> ResAdapterState:
    state = get_res_adapter(pipe_or_unet)
    if state is None:
        raise ValueError("No ResAdapter is loaded; call `load_res_adapter(...)` first.")
    return state


def _check_scale(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def _find_in_dir(folder: Path, names: tuple[str, ...], allow_pickle: bool) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
        if allow_pickle:
            for suffix in (".bin", ".pt", ".ckpt"):
                pickled = candidate.with_suffix(suffix)
                if pickled.is_file():
                    return pickled
    return None


def _files_for(path: Path, allow_pickle: bool) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"No ResAdapter file or folder at {str(path)!r}.")
    single = _find_in_dir(path, (SINGLE_FILE_NAME,), allow_pickle)
    lora = _find_in_dir(path, (LORA_WEIGHTS_NAME, *LORA_WEIGHTS_NAMES_V1), allow_pickle)
    norm = _find_in_dir(path, (NORM_WEIGHTS_NAME, *NORM_WEIGHTS_NAMES_V1), allow_pickle)
    if single is not None:
        if lora is not None or norm is not None:
            logger.info(f"{str(path)!r} holds both our single file and official files; reading {single.name}.")
        return [single]
    files = [f for f in (lora, norm) if f is not None]
    if not files:
        raise FileNotFoundError(
            f"{str(path)!r} holds no ResAdapter weights: expected {LORA_WEIGHTS_NAME} and/or {NORM_WEIGHTS_NAME} "
            f"(official layout) or {SINGLE_FILE_NAME}."
        )
    return files


def read_res_adapter(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[StateDict, dict[str, str], str]:
    """Read a ResAdapter from a folder (official two files, either alone, or our single file) or one file.

    Returns:
        ``(state_dict_in_our_layout, merged_metadata, source_description)``.

    Raises:
        FileNotFoundError: nothing to read at ``path``.
        AdapterWeightsError: a corrupt file, an unknown layout, another adapter kind, two files that disagree.
    """
    path = Path(path)
    files = _files_for(path, allow_pickle)
    state_dict: StateDict = {}
    metadata: dict[str, str] = {}
    for file in files:
        sd, meta = load_weights(file, allow_pickle=allow_pickle)
        check_adapter_kind(meta, KIND, source=str(file))
        if not sd:
            raise AdapterWeightsError(f"{str(file)!r} holds no tensors.")
        ours, _ = to_ours(sd, meta)
        clash = sorted(set(ours) & set(state_dict))
        if clash:
            raise AdapterWeightsError(f"Key(s) found in more than one file of {str(path)!r}: {clash[:5]}.")
        for key, value in meta.items():
            if key in metadata and metadata[key] != value and key.endswith(("base_family", "kind")):
                raise AdapterWeightsError(
                    f"The files of {str(path)!r} disagree on {key!r}: {metadata[key]!r} vs {value!r}."
                )
            metadata.setdefault(key, value)
        state_dict.update(ours)
    source = str(path) if len(files) == 1 else f"{path} ({', '.join(f.name for f in files)})"
    return state_dict, metadata, source


@dataclass
class _Plan:
    config: ResAdapterConfig
    lora_paths: list[str]
    ranks: dict[str, int]
    lora_sd: StateDict
    norm_sd: StateDict


def _plan(
    unet: nn.Module, state_dict: StateDict, metadata: Mapping[str, str], source: str, strict: bool = True
) -> _Plan:
    """Check a state dict in our layout against ``unet``; nothing is touched.

    ``strict``: every sampler conv needs its LoRA and every ResNet norm its weights (for the parts the file has).
    Otherwise only the convs / norms named in the file are adapted (each still complete, with matching shapes).
    Unexpected keys are always an error.
    """
    check_adapter_kind(metadata, KIND, source=source)
    check_base_family(metadata, unet, what="ResAdapter", source=source)
    for key, value in state_dict.items():
        if not torch.is_floating_point(value):
            raise AdapterWeightsError(
                f"Tensor {key!r} in {source!r} has dtype {value.dtype}; ResAdapter weights must be floating point. "
                "Nothing was changed."
            )
        if not torch.isfinite(value).all():
            raise AdapterWeightsError(f"Tensor {key!r} in {source!r} holds NaN or inf values; nothing was changed.")

    lora_sd, norm_sd = split_state_dict(state_dict)
    expected: dict[str, tuple[int, ...]] = {}
    ranks: dict[str, int] = {}
    paths = sampler_conv_paths(unet)
    if not strict:
        named = {kohya_module_name(k) for k in lora_sd}
        paths = [p for p in paths if kohya_key(p) in named]
    if lora_sd:
        found_ranks = {
            kohya_module_name(k): int(v.shape[0])
            for k, v in lora_sd.items()
            if k.endswith(".lora_down.weight") and v.dim() >= 1
        }
        common = Counter(found_ranks.values()).most_common(1)
        default_rank = common[0][0] if common else DEFAULT_RANK
        has_alpha = any(k.endswith(".alpha") for k in lora_sd)
        for path in paths:
            conv = base_conv(unet.get_submodule(path))
            name = kohya_key(path)
            rank = found_ranks.get(name, default_rank)
            ranks[path] = rank
            kh, kw = conv.kernel_size
            expected[f"{name}.lora_down.weight"] = (rank, conv.in_channels // conv.groups, kh, kw)
            expected[f"{name}.lora_up.weight"] = (conv.out_channels, rank, 1, 1)
            if has_alpha:
                expected[f"{name}.alpha"] = ()
    if norm_sd:
        norm_paths = resnet_norm_paths(unet)
        if not strict:
            named = {k.rsplit(".", 1)[0] for k in norm_sd}
            norm_paths = [p for p in norm_paths if p in named]
        for path in norm_paths:
            channels = unet.get_submodule(path).num_channels
            expected[f"{path}.weight"] = (channels,)
            expected[f"{path}.bias"] = (channels,)
    if not expected and not state_dict:
        raise AdapterWeightsError(f"{source!r} holds no ResAdapter weights.")
    try:
        validate_state_dict(state_dict, expected, what="ResAdapter", source=source)
    except AdapterWeightsError as err:
        hint = _family_hint(unet, lora_sd, paths)
        if not hint:
            raise
        raise AdapterWeightsError(
            f"{err} {hint}", missing=err.missing, unexpected=err.unexpected, mismatched=err.mismatched
        ) from None

    family = base_family(unet)
    config = ResAdapterConfig.from_metadata(metadata, family=family)
    config.family = config.family or family
    config.has_lora = bool(lora_sd)
    config.has_norms = bool(norm_sd)
    if lora_sd:
        rank_values = set(ranks.values())
        config.rank = rank_values.pop() if len(rank_values) == 1 else max(ranks.values())
        alphas = {float(v) for k, v in lora_sd.items() if k.endswith(".alpha")}
        config.alpha = alphas.pop() if len(alphas) == 1 else float(config.rank) if not alphas else DEFAULT_ALPHA
        if not any(k.endswith(".alpha") for k in lora_sd):  # kohya files without alpha: alpha = rank
            lora_sd = dict(lora_sd)
            for path in paths:
                lora_sd[f"{kohya_key(path)}.alpha"] = torch.tensor(float(ranks[path]))
    return _Plan(config, paths if lora_sd else [], ranks, lora_sd, norm_sd)


def _family_hint(unet: nn.Module, lora_sd: Mapping[str, torch.Tensor], paths: list[str]) -> str:
    modules = {kohya_module_name(k) for k in lora_sd if is_lora_key(k)}
    if not modules or len(modules) == len(paths):
        return ""
    guess = {4: "an SDXL", 6: "an SD 1.x/2.x"}.get(len(modules), "another")
    return (
        f"The file has sampler LoRAs for {len(modules)} convolutions but this {base_family(unet)!r} UNet has "
        f"{len(paths)}: it looks like {guess} ResAdapter."
    )


# ----------------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------------


def _attach(unet: nn.Module, plan: _Plan, lora_scale: float, norm_scale: float, source: str | None) -> ResAdapterState:
    lora = None
    norms = None
    try:
        if plan.lora_sd:
            lora = build_sampler_lora(unet, plan.lora_paths, plan.ranks, scale=lora_scale)
            lora.load_kohya_state_dict(plan.lora_sd, source=source)
            lora.attach()
        if plan.norm_sd:
            norms = GroupNormPatch(unet, plan.norm_sd)
            norms.apply(norm_scale)
    except BaseException:
        if lora is not None:
            lora.unload()
        if norms is not None:
            norms.restore()
        raise
    state = ResAdapterState(plan.config, lora, norms, lora_scale, norm_scale, source)
    setattr(unet, _STATE_ATTR, state)
    return state


def load_res_adapter(
    pipe_or_unet: object,
    pretrained_model_name_or_path: str | os.PathLike | Mapping[str, torch.Tensor],
    lora_scale: float = 1.0,
    norm_scale: float = 1.0,
    *,
    allow_pickle: bool = False,
    metadata: Mapping[str, str] | None = None,
    strict: bool = True,
) -> ResAdapterState:
    """Load a ResAdapter into a pipeline's UNet (replacing any ResAdapter already loaded).

    Args:
        pipe_or_unet: any SD-family pipeline (SD 1.5/2.1, SDXL; txt2img, img2img, inpaint, ControlNet, ...) or UNet.
        pretrained_model_name_or_path: a folder with the official ``pytorch_lora_weights.safetensors`` and/or
            ``diffusion_pytorch_model.safetensors`` (or the v1 names), our ``res_adapter.safetensors``, either file
            alone, or a state dict in our layout.
        lora_scale: multiplier of the sampler LoRA (0 = off, 1 = as trained).
        norm_scale: blend of the ResNet GroupNorms (0 = base, 1 = ResAdapter).
        allow_pickle: allow ``.bin``/``.pt``/``.ckpt`` files (read with ``torch.load(weights_only=True)``).
        metadata: metadata for a state dict passed directly.
        strict: require a LoRA for every sampler conv and weights for every ResNet norm (for each part the file
            has). ``False`` adapts only the convs / norms the file names (each complete, shapes checked); unexpected
            keys are refused either way.

    Returns:
        The attached :class:`ResAdapterState`.

    Raises:
        FileNotFoundError: nothing at the path.
        AdapterWeightsError: wrong kind or base family, missing / unexpected keys, shape mismatches, bad tensors;
            the pipeline is unchanged.
    """
    unet = _unet(pipe_or_unet)
    lora_scale = _check_scale("lora_scale", lora_scale)
    norm_scale = _check_scale("norm_scale", norm_scale)
    if isinstance(pretrained_model_name_or_path, Mapping):
        meta = dict(metadata or {})
        state_dict, _ = to_ours(dict(pretrained_model_name_or_path), meta)
        source = "<state dict>"
    else:
        state_dict, meta, source = read_res_adapter(pretrained_model_name_or_path, allow_pickle=allow_pickle)
    plan = _plan(unet, state_dict, meta, source, strict)
    previous = get_res_adapter(unet)
    if previous is not None:
        unload_res_adapter(unet)
    state = _attach(unet, plan, lora_scale, norm_scale, source)
    logger.info(
        f"Loaded ResAdapter from {source}: {len(plan.lora_paths)} sampler LoRAs (rank {plan.config.rank}), "
        f"{len(plan.norm_sd) // 2} GroupNorms."
    )
    return state


def init_res_adapter(
    pipe_or_unet: object,
    rank: int = DEFAULT_RANK,
    alpha: float = DEFAULT_ALPHA,
    *,
    min_resolution: int | None = None,
    max_resolution: int | None = None,
    lora: bool = True,
    norms: bool = True,
) -> ResAdapterState:
    """Attach a fresh, trainable ResAdapter that leaves the output bitwise unchanged (zero ``lora_up``, base norms).

    The GroupNorm parameters are then trained in place (``state.training`` is set); :func:`res_adapter_state_dict`
    and :func:`save_res_adapter` read them back.
    """
    unet = _unet(pipe_or_unet)
    if get_res_adapter(unet) is not None:
        raise ValueError("A ResAdapter is already loaded; unload it before initialising a new one.")
    family = base_family(unet)
    config = ResAdapterConfig(
        rank=rank,
        alpha=float(alpha),
        family=family,
        min_resolution=min_resolution,
        max_resolution=max_resolution,
        has_lora=lora,
        has_norms=norms,
    )
    paths = sampler_conv_paths(unet) if lora else []
    norm_sd = {}
    if norms:
        for path in resnet_norm_paths(unet):
            module = unet.get_submodule(path)
            norm_sd[f"{path}.weight"] = module.weight.detach()
            norm_sd[f"{path}.bias"] = module.bias.detach()
    lora_module = build_sampler_lora(unet, paths, rank, alpha) if paths else None
    lora_sd = lora_module.kohya_state_dict() if lora_module is not None else {}
    plan = _Plan(config, paths, dict.fromkeys(paths, rank), lora_sd, norm_sd)
    state = _attach(unet, plan, 1.0, 1.0, "<init>")  # copies the fresh (zero lora_up) weights
    state.training = norms
    return state


def set_res_adapter_scale(
    pipe_or_unet: object, lora_scale: float | None = None, norm_scale: float | None = None
) -> None:
    """Change the LoRA multiplier and/or the norm blend of the loaded ResAdapter (a fused LoRA is re-fused)."""
    state = _require(pipe_or_unet)
    if lora_scale is not None:
        lora_scale = _check_scale("lora_scale", lora_scale)
        if state.lora is not None:
            state.lora.set_scale(lora_scale)
        state.lora_scale = lora_scale
    if norm_scale is not None:
        norm_scale = _check_scale("norm_scale", norm_scale)
        if state.norms is not None:
            if state.training:
                state.norms.capture()
                state.training = False
            state.norms.apply(norm_scale)
        state.norm_scale = norm_scale


def fuse_res_adapter(pipe_or_unet: object) -> None:
    """Merge the sampler LoRA into the conv weights and drop its hooks (the norms are always applied in place)."""
    state = _require(pipe_or_unet)
    if state.lora is not None:
        state.lora.fuse()


def unfuse_res_adapter(pipe_or_unet: object) -> None:
    """Restore the conv weights saved by :func:`fuse_res_adapter` (bitwise) and re-attach the hooks."""
    state = _require(pipe_or_unet)
    if state.lora is not None:
        state.lora.unfuse()


def unload_res_adapter(pipe_or_unet: object) -> None:
    """Remove the ResAdapter: conv weights, GroupNorms and hooks are bit for bit as before loading."""
    unet = _unet(pipe_or_unet)
    state = get_res_adapter(unet)
    if state is None:
        logger.warning("No ResAdapter is loaded; nothing to unload.")
        return
    if state.lora is not None:
        state.lora.unload()
    if state.norms is not None:
        state.norms.restore()
    delattr(unet, _STATE_ATTR)


@contextlib.contextmanager
def res_adapter_detached(pipe_or_unet: object) -> Iterator[ResAdapterState | None]:
    """Temporarily give the UNet its base weights (a fused sampler LoRA unfused, the base GroupNorms back), e.g. so
    ``save_pretrained`` writes the plain base; on exit the adapter is as before (fused again, norms at its scale).

    The sampler LoRA's hooks are not part of the UNet's state dict and stay attached. Norms trained in place are read
    back first (as :func:`res_adapter_state_dict` does). Yields the adapter state (``None`` when none is loaded).
    """
    unet = _unet(pipe_or_unet)
    state = get_res_adapter(unet)
    if state is None:
        yield None
        return
    was_fused = state.fused
    if was_fused:
        state.lora.unfuse()
    norms = state.norms if state.norms is not None and state.norms.applied else None
    if norms is not None:
        if state.training:
            norms.capture()
        scale = norms.scale
        norms.restore()
    try:
        yield state
    finally:
        if norms is not None:
            norms.apply(scale)
        if was_fused:
            state.lora.fuse()


def res_adapter_state_dict(pipe_or_unet: object) -> tuple[StateDict, dict[str, str]]:
    """The loaded ResAdapter in our layout (LoRA at its trained values, norms at the ResAdapter values) + metadata."""
    unet = _unet(pipe_or_unet)
    state = _require(unet)
    if state.training and state.norms is not None:
        state.norms.capture()
    sd: StateDict = {}
    if state.lora is not None:
        sd.update({k: v.detach().to("cpu", torch.float32).clone() for k, v in state.lora.kohya_state_dict().items()})
    if state.norms is not None:
        sd.update(state.norms.state_dict())
    config = state.config
    config.family = config.family or base_family(unet)
    return sd, config.to_metadata()


def save_res_adapter(
    pipe_or_unet: object, save_directory: str | os.PathLike, format: str = "official", *, dtype=None
) -> list[Path]:
    """Save the loaded ResAdapter.

    Args:
        save_directory: a folder (created), or for ``format="diffusion-adapters"`` optionally a ``.safetensors`` path.
        format: ``"official"`` writes ``pytorch_lora_weights.safetensors`` (kohya LoRA) and
            ``diffusion_pytorch_model.safetensors`` (GroupNorms), readable by the official loader; our metadata
            (kind, base family, rank, alpha, resolution range) is stored in both headers.
            ``"diffusion-adapters"`` writes one ``res_adapter.safetensors`` holding both.
        dtype: cast the tensors (e.g. ``torch.float16``); default float32.

    Returns:
        The files written (each written atomically).
    """
    fmt = _FORMAT_ALIASES.get(format)
    if fmt is None:
        raise ValueError(f"`format` must be one of {list(SAVE_FORMATS)}, got {format!r}.")
    sd, metadata = res_adapter_state_dict(pipe_or_unet)
    if dtype is not None:
        sd = {k: v.to(dtype) if not k.endswith(".alpha") else v for k, v in sd.items()}
    target = Path(save_directory)
    if fmt == "diffusion-adapters":
        file = target if target.suffix == ".safetensors" else target / SINGLE_FILE_NAME
        return [save_weights(sd, file, metadata=metadata)]
    lora_sd, norm_sd = split_state_dict(sd)
    written = []
    if lora_sd:
        written.append(save_weights(lora_sd, target / LORA_WEIGHTS_NAME, metadata={**metadata, _parts(): "lora"}))
    if norm_sd:
        written.append(save_weights(norm_sd, target / NORM_WEIGHTS_NAME, metadata={**metadata, _parts(): "norms"}))
    return written


def _parts() -> str:
    from ..weights import METADATA_PREFIX

    return METADATA_PREFIX + "parts"
