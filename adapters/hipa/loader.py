"""Create, save, validate and load HiPA LoRAs (standard peft / diffusers LoRA files).

A HiPA LoRA is an ordinary diffusers LoRA: keys ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight`` (peft
layout) in ``pytorch_lora_weights.safetensors``, with diffusers' ``lora_adapter_metadata`` (the peft ``LoraConfig``,
so rank and alpha are restored exactly) and our ``diffusion_adapters.*`` keys (kind ``"hipa"``, base family, rank,
alpha, training settings) in the safetensors header. Stock ``pipe.load_lora_weights(folder)`` reads it, and
:func:`load_hipa_lora` reads any LoRA stock diffusers reads (peft, diffusers-old ``lora.down``/``lora.up`` and kohya
``lora_unet_*`` layouts), after validating every UNet key against the UNet so a bad file leaves the pipeline as it
was.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from diffusers.utils import logging

from ..deprecation import deprecated_name
from ..weights import (
    AdapterWeightsError,
    adapter_metadata,
    check_adapter_kind,
    check_base_family,
    check_dtypes,
    load_weights,
)
from .config import HiPAConfig

logger = logging.get_logger(__name__)

KIND = "hipa"
DEFAULT_ADAPTER_NAME = "hipa"
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
_LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY

__all__ = [
    "DEFAULT_ADAPTER_NAME",
    "KIND",
    "LORA_WEIGHT_NAME_SAFE",
    "add_hipa_lora",
    "hipa_lora_state_dict",
    "lora_parameter_names",
    "resolve_lora_file",
    "save_hipa_lora",
    "fuse_hipa_lora",
    "load_hipa_lora",
    "set_hipa_lora_scale",
    "set_hipa_scale",
    "unfuse_hipa_lora",
    "unload_hipa_lora",
    "validate_unet_lora",
]


# ----------------------------------------------------------------------------------------------------------------------
# creating and saving (training side)
# ----------------------------------------------------------------------------------------------------------------------


def add_hipa_lora(unet: torch.nn.Module, config: HiPAConfig, adapter_name: str = DEFAULT_ADAPTER_NAME) -> list[str]:
    """Add a fresh (zero-output) HiPA LoRA to ``unet`` with peft and make only its weights trainable.

    Returns:
        The names of the trainable parameters (all contain ``".lora_"``).
    """
    unet.add_adapter(config.to_lora_config(), adapter_name=adapter_name)
    unet.set_adapter(adapter_name)
    names = []
    for name, param in unet.named_parameters():
        is_lora = ".lora_" in name and f".{adapter_name}." in f"{name}."
        param.requires_grad_(is_lora)
        if is_lora:
            names.append(name)
    if not names:
        raise ValueError(
            f"No module of the UNet matched `target_modules`={config.target_modules}; nothing would be trained."
        )
    return names


def lora_parameter_names(unet: torch.nn.Module) -> list[str]:
    """Names of all LoRA parameters (``*.lora_A.*`` / ``*.lora_B.*``) in ``unet``."""
    return [name for name, _ in unet.named_parameters() if ".lora_" in name]


def hipa_lora_state_dict(unet: torch.nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft layout without the adapter name (``<path>.lora_A.weight``), detached on CPU."""
    from peft.utils import get_peft_model_state_dict

    state_dict = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}


def _lora_config_metadata(config: HiPAConfig) -> dict:
    meta = config.to_lora_config().to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}


def save_hipa_lora(
    save_directory: str | os.PathLike,
    unet_lora_state_dict: Mapping[str, torch.Tensor],
    config: HiPAConfig,
    *,
    family: str | None = None,
    extra_metadata: Mapping[str, object] | None = None,
    weight_name: str = LORA_WEIGHT_NAME_SAFE,
    is_main_process: bool = True,
) -> Path:
    """Save a UNet LoRA in diffusers' ``save_lora_weights`` format plus our metadata.

    Args:
        save_directory: folder to write ``weight_name`` into (created).
        unet_lora_state_dict: from :func:`hipa_lora_state_dict` (keys without the ``unet.`` prefix).
        config: the HiPA config (stored as diffusers' ``lora_adapter_metadata`` so rank/alpha load exactly).
        family: base family (``"sd1"``, ``"sd2"``, ``"sdxl"``) recorded in the header.
        extra_metadata: more ``diffusion_adapters.*`` entries (e.g. training steps, lambda_hf).

    Returns:
        The path of the written file.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.lora_base import _pack_dict_with_prefix

    header = {"format": "pt"}
    header[_LORA_ADAPTER_METADATA_KEY] = json.dumps(
        _pack_dict_with_prefix(_lora_config_metadata(config), "unet"), indent=2, sort_keys=True
    )
    header.update(
        adapter_metadata(
            KIND, family, rank=config.rank, alpha=config.lora_alpha, target_modules=",".join(config.target_modules)
        )
    )
    for key, value in (extra_metadata or {}).items():
        header.update(adapter_metadata(KIND, family, **{key: value}))

    def _save(weights: dict[str, torch.Tensor], filename: str) -> None:
        # Same content as diffusers' default safetensors writer, plus our keys; written atomically.
        tmp = f"{filename}.tmp-{os.getpid()}"
        try:
            safetensors.torch.save_file(weights, tmp, metadata=header)
            os.replace(tmp, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(save_directory),
        unet_lora_layers=dict(unet_lora_state_dict),
        is_main_process=is_main_process,
        weight_name=weight_name,
        save_function=_save,
        safe_serialization=True,
    )
    return Path(save_directory) / weight_name


# ----------------------------------------------------------------------------------------------------------------------
# validation and loading (pipeline side)
# ----------------------------------------------------------------------------------------------------------------------


def resolve_lora_file(path: str | os.PathLike, weight_name: str | None = None) -> Path:
    """The LoRA file for ``path``: the file itself, ``path/weight_name``, or the one ``.safetensors`` in ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"No LoRA file or folder at {str(path)!r}.")
    if weight_name is not None:
        return path / weight_name
    if (path / LORA_WEIGHT_NAME_SAFE).is_file():
        return path / LORA_WEIGHT_NAME_SAFE
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"Found {len(candidates)} .safetensors files in {str(path)!r}; pass `weight_name` to pick one."
        )
    return candidates[0]


_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.(?P<param>weight|bias)$")


def validate_unet_lora(
    unet: torch.nn.Module, unet_state_dict: Mapping[str, torch.Tensor], *, source: str | None = None
) -> int:
    """Check a UNet LoRA state dict (peft layout, no ``unet.`` prefix) against ``unet`` without changing it.

    Every ``<module>.lora_A.weight`` must name an existing ``nn.Linear`` / ``nn.Conv2d`` with ``in_features`` equal
    to its second dimension, every ``lora_B.weight`` one with matching ``out_features``, and A/B pairs must agree on
    the rank.

    Returns:
        The number of adapted modules.

    Raises:
        AdapterWeightsError: listing unknown modules (unexpected), unpaired A/B (missing) and shape mismatches.
    """
    check_dtypes(unet_state_dict, what="LoRA", source=source)
    non_finite = [k for k, v in unet_state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise AdapterWeightsError(
            f"Tensor(s) {non_finite[:5]} in {source!r} hold NaN or inf values ({len(non_finite)} in all); "
            "nothing was changed."
        )
    modules = dict(unet.named_modules())
    unexpected, missing, mismatched = [], [], []
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in unet_state_dict.items():
        match = _LORA_KEY.match(key)
        if match is None:
            if key.endswith(".alpha") or "lora_magnitude_vector" in key:
                continue  # consumed by diffusers (network alphas / DoRA), nothing to check here
            unexpected.append(key)
            continue
        if match["param"] != "weight":
            continue
        module_path = match["module"]
        module = modules.get(module_path)
        if module is not None and hasattr(module, "base_layer"):
            module = module.base_layer  # already wrapped by peft (another adapter on the same layer)
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            unexpected.append(key)
            continue
        pairs.setdefault(module_path, {})[match["part"]] = tensor
        if isinstance(module, torch.nn.Linear):
            in_dim, out_dim = module.in_features, module.out_features
        else:
            in_dim, out_dim = module.in_channels, module.out_channels
        if match["part"] == "lora_A" and tensor.shape[1] != in_dim:
            mismatched.append((key, tuple(tensor.shape), ("r", in_dim)))
        if match["part"] == "lora_B" and tensor.shape[0] != out_dim:
            mismatched.append((key, tuple(tensor.shape), (out_dim, "r")))
    for module_path, pair in pairs.items():
        if "lora_A" not in pair or "lora_B" not in pair:
            missing.append(f"{module_path}.{'lora_B' if 'lora_A' in pair else 'lora_A'}.weight")
        elif pair["lora_A"].shape[0] != pair["lora_B"].shape[1]:
            mismatched.append(
                (f"{module_path}.lora_B.weight", tuple(pair["lora_B"].shape), (pair["lora_B"].shape[0], "rank of A"))
            )
    if not pairs and not unexpected:
        raise AdapterWeightsError(f"The LoRA file{f' {source!r}' if source else ''} holds no UNet LoRA weights.")
    if unexpected or missing or mismatched:

        def listing(label, items):
            shown = ", ".join(str(i) for i in items[:5])
            return f"{len(items)} {label}: {shown}" + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")

        parts = [
            listing(label, items)
            for label, items in (
                ("keys naming no adaptable UNet module", unexpected),
                ("missing keys", missing),
                ("shape mismatches (file vs model)", mismatched),
            )
            if items
        ]
        origin = f" from {source!r}" if source else ""
        raise AdapterWeightsError(
            f"The LoRA weights{origin} do not fit this UNet; nothing was changed. " + "; ".join(parts) + ".",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    return len(pairs)


def _unet_part_in_peft_layout(pipe, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    prefix = f"{getattr(pipe, 'unet_name', 'unet')}."
    unet_sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if unet_sd and not any("lora_A" in k for k in unet_sd):
        unet_sd = convert_unet_state_dict_to_peft(unet_sd)
    return unet_sd


def load_hipa_lora(
    pipe,
    pretrained: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    scale: float = 1.0,
    weight_name: str | None = None,
    check_family: bool = True,
) -> str:
    """Validate a LoRA against ``pipe.unet`` and load it with the pipeline's stock ``load_lora_weights``.

    Works for HiPA files and other diffusers-readable LoRAs (LCM-LoRA, TCD, Hyper-SD, Lightning). The file is read
    and checked first (our kind / base family metadata if present, every UNet key against the UNet); only then is
    it handed to diffusers, so a failed load leaves the pipeline unchanged.

    Args:
        pipe: any diffusers pipeline with ``StableDiffusionLoraLoaderMixin`` / ``StableDiffusionXLLoraLoaderMixin``.
        pretrained: a ``.safetensors`` file, a folder holding one, or a state dict.
        adapter_name: peft adapter name (must not be in use yet).
        scale: adapter weight set with ``pipe.set_adapters`` (``0`` = off).
        weight_name: file name inside a folder.
        check_family: refuse files whose metadata names another base family.

    Returns:
        ``adapter_name``.
    """
    if adapter_name in getattr(pipe.unet, "peft_config", {}) or {}:
        raise ValueError(
            f"`adapter_name`={adapter_name!r} is already loaded; pick another name or call "
            "`pipe.delete_adapters(name)` first."
        )
    source = None
    metadata: dict[str, str]
    if isinstance(pretrained, Mapping):
        raw_state_dict, metadata = dict(pretrained), {}
        to_load: str | dict = dict(pretrained)
        kwargs: dict = {}
    else:
        file = resolve_lora_file(pretrained, weight_name)
        source = str(file)
        raw_state_dict, metadata = load_weights(file)
        to_load, kwargs = str(file.parent), {"weight_name": file.name}
    check_adapter_kind(metadata, KIND, source=source)
    if check_family:
        check_base_family(metadata, pipe.unet, what="HiPA LoRA", source=source)
    # Let diffusers normalise the layout (kohya / old diffusers -> diffusers keys), then check the UNet part.
    converted = pipe.lora_state_dict(dict(raw_state_dict))
    converted = converted[0] if isinstance(converted, tuple) else converted
    validate_unet_lora(pipe.unet, _unet_part_in_peft_layout(pipe, converted), source=source)

    pipe.load_lora_weights(to_load, adapter_name=adapter_name, **kwargs)
    set_hipa_lora_scale(pipe, scale, adapter_name=adapter_name)
    logger.info("Loaded LoRA %r from %s with scale %s.", adapter_name, source or "a state dict", scale)
    return adapter_name


def _require_loaded(pipe, adapter_name: str) -> None:
    loaded = list(getattr(pipe.unet, "peft_config", None) or {})
    if adapter_name not in loaded:
        raise ValueError(f"No LoRA named {adapter_name!r} is loaded (`adapter_name`); loaded: {loaded}.")


def set_hipa_lora_scale(pipe, scale: float, *, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
    """Set the weight of one loaded LoRA (``0`` = off), keeping the other active adapters and their weights."""
    _require_loaded(pipe, adapter_name)
    names = list(pipe.get_active_adapters())
    if adapter_name not in names:
        names.append(adapter_name)
    weights = [float(scale) if name == adapter_name else _current_weight(pipe.unet, name) for name in names]
    pipe.set_adapters(names, adapter_weights=weights)


def set_hipa_scale(pipe, scale: float, *, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
    """Deprecated: :func:`set_hipa_lora_scale`."""
    deprecated_name("set_hipa_scale", "set_hipa_lora_scale")
    set_hipa_lora_scale(pipe, scale, adapter_name=adapter_name)


def _merged_layers(model: torch.nn.Module, adapter_name: str | None = None) -> list[str]:
    """Paths of peft layers with ``adapter_name`` (any adapter when ``None``) merged into their weights."""
    return [
        name
        for name, module in model.named_modules()
        if (merged := getattr(module, "merged_adapters", None)) and (adapter_name is None or adapter_name in merged)
    ]


def fuse_hipa_lora(pipe, *, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
    """Merge one loaded UNet LoRA, at its current weight, into the UNet's weights (diffusers' ``fuse_lora``): no
    LoRA branch is left in the forward pass. :func:`unfuse_hipa_lora` undoes it (to float tolerance)."""
    _require_loaded(pipe, adapter_name)
    pipe.fuse_lora(components=[getattr(pipe, "unet_name", "unet")], adapter_names=[adapter_name])


def unfuse_hipa_lora(pipe) -> None:
    """Take every fused LoRA back out of the UNet's weights (diffusers' ``unfuse_lora``); the LoRAs stay loaded."""
    pipe.unfuse_lora(components=[getattr(pipe, "unet_name", "unet")])


def unload_hipa_lora(pipe, *, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
    """Remove one LoRA from the pipeline (UNet and text encoders); the other LoRAs keep their weights.

    When it was a component's last LoRA, peft's layers are removed too, so the component holds its original modules
    and weights again: bit for bit the pipeline before loading.

    Raises:
        ValueError: no LoRA named ``adapter_name``, or it is fused into the weights (call :func:`unfuse_hipa_lora`
            first: a fused LoRA would stay in the weights).
    """
    _require_loaded(pipe, adapter_name)
    fused = _merged_layers(pipe.unet, adapter_name)
    if fused:
        raise ValueError(
            f"The LoRA {adapter_name!r} is fused into {len(fused)} UNet layers (e.g. {fused[0]!r}): call "
            "`unfuse_hipa_lora()` before unloading it."
        )
    pipe.delete_adapters(adapter_name)
    for component in pipe._lora_loadable_modules:
        model = getattr(pipe, component, None)
        if model is None or getattr(model, "peft_config", None):
            continue
        if any(hasattr(module, "base_layer") for module in model.modules()):
            if hasattr(model, "unload_lora"):  # a diffusers model
                model.unload_lora()
            else:  # a transformers text encoder
                from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

                _remove_text_encoder_monkey_patch(model)
    logger.info("Unloaded LoRA %r.", adapter_name)


def _current_weight(unet: torch.nn.Module, adapter_name: str) -> float:
    """The weight last set for ``adapter_name`` (peft stores ``scaling = weight * lora_alpha / r``)."""
    for module in unet.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and adapter_name in scaling and adapter_name in getattr(module, "r", {}):
            rank = module.r[adapter_name]
            alpha = module.lora_alpha[adapter_name]
            use_rslora = getattr(module, "use_rslora", {}).get(adapter_name, False)
            base = alpha / (rank**0.5 if use_rslora else rank)
            return float(scaling[adapter_name] / base) if base else 1.0
    return 1.0
