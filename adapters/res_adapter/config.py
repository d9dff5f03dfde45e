"""ResAdapter configuration and the UNet modules it targets.

ResAdapter (arXiv 2403.02084) is two things on an SD-family UNet:

* a kohya "LoCon" low-rank delta on every sampler convolution (the ``conv`` of each ``Downsample2D`` and
  ``Upsample2D``: 6 on SD 1.5/2.1, 4 on SDXL), and
* retrained weight and bias of the ``norm1`` / ``norm2`` GroupNorms of every ``ResnetBlock2D``.

This module names those targets from a UNet (any ``UNet2DConditionModel``-like model, including ``UNetMotionModel``)
and holds the per-file settings (rank, alpha, trained resolution range, base family) in :class:`ResAdapterConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ..weights import METADATA_PREFIX, adapter_metadata

__all__ = [
    "KIND",
    "DEFAULT_RANK",
    "DEFAULT_ALPHA",
    "DEFAULT_RESOLUTION_RANGE",
    "LORA_WEIGHTS_NAME",
    "NORM_WEIGHTS_NAME",
    "SINGLE_FILE_NAME",
    "ResAdapterConfig",
    "base_conv",
    "resnet_norm_paths",
    "sampler_conv_paths",
    "unet_downsample_factor",
]

KIND = "res_adapter"
DEFAULT_RANK = 16
DEFAULT_ALPHA = 8.0

# File names of the official release (v2) and of the v1 "-i" release, and of our single-file format.
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
NORM_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
LORA_WEIGHTS_NAMES_V1 = ("resolution_lora.safetensors",)
NORM_WEIGHTS_NAMES_V1 = ("resolution_normalization.safetensors",)
SINGLE_FILE_NAME = "res_adapter.safetensors"

# Trained resolution range (shortest..longest side, pixels) of the official v2 releases, used for official files that
# carry no metadata of ours. SD 2.x has no official release: no range is assumed (no warning is given).
DEFAULT_RESOLUTION_RANGE: dict[str, tuple[int, int] | None] = {
    "sd1": (128, 1024),
    "sd2": None,
    "sdxl": (256, 1536),
}

_META_RANK = METADATA_PREFIX + "rank"
_META_ALPHA = METADATA_PREFIX + "alpha"
_META_MIN = METADATA_PREFIX + "min_resolution"
_META_MAX = METADATA_PREFIX + "max_resolution"
_META_PARTS = METADATA_PREFIX + "parts"


@dataclass
class ResAdapterConfig:
    """Settings of one ResAdapter.

    Attributes:
        rank: rank of the sampler LoRAs (16 in the official v2 release, 32 in the extrapolation variants).
        alpha: kohya ``alpha`` of the sampler LoRAs (the delta is scaled by ``alpha / rank``).
        family: base family the adapter was made for (``"sd1"``, ``"sd2"``, ``"sdxl"``), ``None`` if unknown.
        min_resolution: shortest side (pixels) the adapter was trained at, ``None`` if unknown.
        max_resolution: longest side (pixels) the adapter was trained at, ``None`` if unknown.
        has_lora: the adapter holds sampler LoRAs.
        has_norms: the adapter holds ResNet GroupNorm weights.
        extra: other metadata found in the file (kept when re-saving).
    """

    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    family: str | None = None
    min_resolution: int | None = None
    max_resolution: int | None = None
    has_lora: bool = True
    has_norms: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def resolution_range(self) -> tuple[int, int] | None:
        if self.min_resolution is None or self.max_resolution is None:
            return None
        return (self.min_resolution, self.max_resolution)

    def to_metadata(self) -> dict[str, str]:
        """Safetensors metadata (str -> str) of our format for this config."""
        parts = ",".join(p for p, on in (("lora", self.has_lora), ("norms", self.has_norms)) if on)
        extra: dict[str, object] = {"rank": self.rank, "alpha": self.alpha, "parts": parts}
        if self.min_resolution is not None:
            extra["min_resolution"] = self.min_resolution
        if self.max_resolution is not None:
            extra["max_resolution"] = self.max_resolution
        meta = dict(self.extra)
        meta.update(adapter_metadata(KIND, self.family, **extra))
        return meta

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], *, family: str | None = None) -> ResAdapterConfig:
        """Read our metadata; missing values fall back to the official v2 defaults for ``family``.

        Args:
            metadata: the merged metadata of the adapter's file(s).
            family: the base family to assume when the metadata names none (the target UNet's).
        """
        from ..weights import FAMILY_KEY

        fam = metadata.get(FAMILY_KEY, family)
        default_range = DEFAULT_RESOLUTION_RANGE.get(fam or "", None)

        def _int(key: str, default: int | None) -> int | None:
            value = metadata.get(key)
            try:
                return int(value) if value is not None else default
            except ValueError:
                raise ValueError(f"Metadata {key!r} must be an integer, got {value!r}.") from None

        lo = _int(_META_MIN, default_range[0] if default_range else None)
        hi = _int(_META_MAX, default_range[1] if default_range else None)
        known = {_META_RANK, _META_ALPHA, _META_MIN, _META_MAX, _META_PARTS, FAMILY_KEY}
        extra = {k: v for k, v in metadata.items() if k not in known and not k.startswith(METADATA_PREFIX)}
        return cls(
            rank=_int(_META_RANK, DEFAULT_RANK) or DEFAULT_RANK,
            alpha=float(metadata.get(_META_ALPHA, DEFAULT_ALPHA)),
            family=fam,
            min_resolution=lo,
            max_resolution=hi,
            extra=extra,
        )


# ----------------------------------------------------------------------------------------------------------------------
# targets in a UNet
# ----------------------------------------------------------------------------------------------------------------------


def base_conv(module: nn.Module) -> nn.Module:
    """The plain ``nn.Conv2d`` under a (possibly peft-wrapped) conv: peft's LoRA layers expose ``get_base_layer()``."""
    while hasattr(module, "get_base_layer") and module.get_base_layer() is not module:
        module = module.get_base_layer()
    return module


def sampler_conv_paths(unet: nn.Module) -> list[str]:
    """Module paths of the convolutions of every ``Downsample2D`` / ``Upsample2D`` of ``unet``, in model order.

    e.g. ``["down_blocks.0.downsamplers.0.conv", ..., "up_blocks.2.upsamplers.0.conv"]`` (6 on SD 1.5, 4 on SDXL).
    Samplers without a convolution (average pooling, plain interpolation) are skipped.
    """
    paths = []
    for name, module in unet.named_modules():
        if not isinstance(module, (Downsample2D, Upsample2D)):
            continue
        conv = getattr(module, "conv", None)
        attr = "conv"
        if conv is None:
            conv, attr = getattr(module, "Conv2d_0", None), "Conv2d_0"
        if conv is not None and isinstance(base_conv(conv), nn.Conv2d):
            paths.append(f"{name}.{attr}" if name else attr)
    return paths


def resnet_norm_paths(unet: nn.Module) -> list[str]:
    """Module paths of the affine ``norm1`` / ``norm2`` GroupNorms of every ``ResnetBlock2D`` of ``unet``."""
    paths = []
    for name, module in unet.named_modules():
        if not isinstance(module, ResnetBlock2D):
            continue
        for attr in ("norm1", "norm2"):
            norm = getattr(module, attr, None)
            if isinstance(norm, nn.GroupNorm) and norm.affine:
                paths.append(f"{name}.{attr}" if name else attr)
    return paths


def unet_downsample_factor(unet: nn.Module) -> int:
    """Total spatial down-sampling of ``unet`` (2 ** number of down-samplers; 8 on SD 1.5, 4 on SDXL)."""
    count = sum(1 for _, m in unet.named_modules() if isinstance(m, Downsample2D))
    if count == 0:
        # Fall back to the config (a UNet without Downsample2D modules, e.g. pooled down-sampling).
        blocks = getattr(getattr(unet, "config", None), "down_block_types", None) or ()
        count = max(len(blocks) - 1, 0)
    return 2**count
