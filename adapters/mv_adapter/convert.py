"""MV-Adapter weight layouts: the official single file and ours.

The official files (``mvadapter_{t2mv,i2mv,tg2mv,ig2mv}_{sdxl,sd21}.safetensors``) hold

* the attention branches under the UNet's processor paths, e.g.
  ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_mv.weight``
  (``to_{q,k,v}_{mv,ref}.weight`` and ``to_out_{mv,ref}.0.{weight,bias}``);
* the condition encoder (a ``T2IAdapter``) under ``adapter.*``.

Our files use the same keys and add safetensors metadata (``diffusion_adapters.kind = "mv_adapter"``, the base
family and ``diffusion_adapters.mv_config``, a JSON :class:`~adapters.mv_adapter.loader.MVAdapterConfig`), so the two
layouts convert by identity on the tensors; only the metadata differs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..weights import KIND_KEY, register_format

__all__ = ["KIND", "OFFICIAL_VARIANTS", "detect_variant", "is_official_layout", "variant_defaults"]

KIND = "mv_adapter"
OFFICIAL_VARIANTS = ("t2mv", "i2mv", "tg2mv", "ig2mv")
_VARIANT_RE = re.compile(r"(?<![a-z])(ig2mv|tg2mv|i2mv|t2mv)(?![a-z])")


def is_official_layout(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """A file in the official layout: processor keys with ``_mv``/``_ref`` branches and no kind metadata."""
    return KIND_KEY not in metadata and any(
        ".processor.to_q_mv." in k or ".processor.to_q_ref." in k for k in state_dict
    )


def _is_ours(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    return metadata.get(KIND_KEY) == KIND


def detect_variant(name: str | None) -> str | None:
    """``"t2mv"``, ``"i2mv"``, ``"tg2mv"`` or ``"ig2mv"`` when ``name`` (a file name) contains one, else None."""
    if not name:
        return None
    match = _VARIANT_RE.search(str(name).lower())
    return match.group(1) if match else None


def variant_defaults(variant: str | None) -> dict[str, Any]:
    """Config defaults the official inference code uses for each variant."""
    if variant is None:
        return {}
    if variant not in OFFICIAL_VARIANTS:
        raise ValueError(f"`variant` must be one of {OFFICIAL_VARIANTS}, got {variant!r}.")
    geometry = variant in ("tg2mv", "ig2mv")
    return {
        "use_ref": variant.startswith("i"),
        "condition": "geometry" if geometry else "camera",
        "attention_mode": "row_col" if geometry else "row",
    }


register_format(KIND, "ours", detect=_is_ours)
register_format(KIND, "official", detect=is_official_layout)
