"""ResAdapter weight layouts and their conversion to ours.

Our in-memory layout ("ours") is one flat state dict that is also our single-file format:

* sampler LoRAs in kohya keys, exactly as in the official ``pytorch_lora_weights.safetensors``:
  ``lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight`` (``(rank, in, kh, kw)``),
  ``....lora_up.weight`` (``(out, rank, 1, 1)``) and ``....alpha`` (scalar);
* ResNet GroupNorms in diffusers keys, exactly as in the official ``diffusion_pytorch_model.safetensors``:
  ``down_blocks.0.resnets.0.norm1.weight`` / ``.bias`` (``(channels,)``).

The two families of keys never collide, so the official two files are simply the two halves of ours. Layouts
registered with :mod:`adapters.weights`:

``official``          kohya LoRA keys and/or diffusers norm keys (either official file, or our single file);
``diffusers-peft``    a sampler LoRA saved by diffusers/peft (``unet.<path>.lora_A.weight`` / ``lora_B``), e.g. after
                      ``pipe.load_lora_weights(official_file)`` + ``pipe.save_lora_weights(...)``; norm keys may
                      carry a ``unet.`` prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import torch

from ..weights import StateDict, convert_to_ours, detect_format, register_format
from .config import KIND

__all__ = [
    "LORA_PREFIX",
    "OFFICIAL",
    "DIFFUSERS_PEFT",
    "is_lora_key",
    "is_norm_key",
    "kohya_module_name",
    "peft_alphas",
    "split_state_dict",
    "to_ours",
]

LORA_PREFIX = "lora_unet_"
OFFICIAL = "official"
DIFFUSERS_PEFT = "diffusers-peft"

_NORM_RE = re.compile(r"^(unet\.)?(.+\.)?resnets\.\d+\.norm[12]\.(weight|bias)$")
_KOHYA_RE = re.compile(r"^lora_unet_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT_RE = re.compile(r"^(unet\.)?(.+)\.(lora_A|lora_B)(\.[A-Za-z0-9_]+)?\.weight$")


def is_lora_key(key: str) -> bool:
    """A kohya sampler-LoRA key (``lora_unet_...``)."""
    return key.startswith(LORA_PREFIX)


def is_norm_key(key: str) -> bool:
    """A ResNet GroupNorm key in diffusers names (optionally ``unet.``-prefixed)."""
    return bool(_NORM_RE.match(key))


def kohya_module_name(key: str) -> str:
    """``lora_unet_down_blocks_0_downsamplers_0_conv.lora_up.weight`` -> ``lora_unet_down_blocks_0_downsamplers_0_conv``."""
    return key.split(".", 1)[0]


def split_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """``(lora_part, norm_part)`` of a state dict in our layout (other keys go to neither)."""
    lora = {k: v for k, v in state_dict.items() if is_lora_key(k)}
    norms = {k: v for k, v in state_dict.items() if not is_lora_key(k) and is_norm_key(k)}
    return lora, norms


def _is_official(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    # Any recognisable key is enough: keys that fit nothing are then reported as unexpected by the validation.
    keys = list(state_dict)
    return any(_KOHYA_RE.match(k) or _NORM_RE.match(k) for k in keys) and not any(_PEFT_RE.match(k) for k in keys)


def _official_to_ours(state_dict: StateDict) -> StateDict:
    out = {}
    for key, value in state_dict.items():
        if key.startswith("unet.") and _NORM_RE.match(key):
            key = key[len("unet.") :]
        if key.endswith(".alpha") and value.dim() > 0 and value.numel() == 1:
            value = value.reshape(())
        out[key] = value
    return out


def _is_peft(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    return any(_PEFT_RE.match(k) for k in state_dict)


def _peft_to_ours(state_dict: StateDict) -> StateDict:
    out: StateDict = {}
    for key, value in state_dict.items():
        match = _PEFT_RE.match(key)
        if match is None:  # a norm key
            out[key[len("unet.") :] if key.startswith("unet.") else key] = value
            continue
        name = LORA_PREFIX + match.group(2).replace(".", "_")
        out[f"{name}.{'lora_down' if match.group(3) == 'lora_A' else 'lora_up'}.weight"] = value
    return out


def peft_alphas(metadata: Mapping[str, str], state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """kohya module name -> alpha read from diffusers' ``lora_adapter_metadata`` (peft ``lora_alpha`` and
    ``alpha_pattern``), for the modules of a ``diffusers-peft`` file; empty if the file carries none."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    if isinstance(info, dict) and "unet" in info and isinstance(info["unet"], dict):
        info = info["unet"]
    if not isinstance(info, dict) or "lora_alpha" not in info:
        return {}
    default = float(info["lora_alpha"])
    pattern = {k.removeprefix("unet."): float(v) for k, v in (info.get("alpha_pattern") or {}).items()}
    out = {}
    for key in state_dict:
        match = _PEFT_RE.match(key)
        if match is None:
            continue
        path = match.group(2)
        alpha = default
        for pat, value in pattern.items():
            if path == pat or path.endswith("." + pat):
                alpha = value
        out[LORA_PREFIX + path.replace(".", "_")] = alpha
    return out


register_format(KIND, OFFICIAL, detect=_is_official, to_ours=_official_to_ours, from_ours=dict)
register_format(KIND, DIFFUSERS_PEFT, detect=_is_peft, to_ours=_peft_to_ours, from_ours=dict)


def to_ours(state_dict: StateDict, metadata: Mapping[str, str]) -> tuple[StateDict, str]:
    """Detect the layout of one file and convert it to ours: ``(state_dict, format_name)``.

    For a ``diffusers-peft`` LoRA the alphas come from the file's ``lora_adapter_metadata`` (alpha = rank when the
    file has none, which is what diffusers does with such a file).
    """
    name = detect_format(KIND, state_dict, metadata)
    ours = convert_to_ours(KIND, state_dict, metadata)
    if name == DIFFUSERS_PEFT:
        alphas = peft_alphas(metadata, state_dict)
        for module in {kohya_module_name(k) for k in ours if is_lora_key(k)}:
            rank = ours[f"{module}.lora_down.weight"].shape[0] if f"{module}.lora_down.weight" in ours else None
            alpha = alphas.get(module, float(rank) if rank is not None else None)
            if alpha is not None:
                ours[f"{module}.alpha"] = torch.tensor(float(alpha))
    return ours, name
