"""The sampler LoRA of ResAdapter: kohya LoCon deltas on the ``Downsample2D`` / ``Upsample2D`` convolutions.

Built on the shared hook-based :class:`adapters.lora.LowRankAdapter` (whose fusing removes the forward hooks, so a
fused ResAdapter leaves no extra module, hook or compute in the UNet's forward pass); the only addition is that the
convs are found under any peft wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..lora import LowRankAdapter, LowRankDelta, kohya_key
from .config import base_conv

__all__ = ["SamplerLoRA", "build_sampler_lora", "kohya_key"]


class SamplerLoRA(LowRankAdapter):
    """:class:`LowRankAdapter` over the sampler convs, found under any peft wrapper."""

    def base_module(self, path: str) -> nn.Module:
        """The plain conv at ``path``, under any peft wrapper (so hooks and fusing survive a user's LoRA being
        loaded or unloaded around ours)."""
        return base_conv(super().base_module(path))

    @property
    def active(self) -> bool:
        """Hooks attached or weights fused."""
        return self.attached or self.fused


def build_sampler_lora(
    unet: nn.Module,
    paths: list[str],
    ranks: Mapping[str, int] | int,
    alpha: float | Mapping[str, float] | None = None,
    scale: float = 1.0,
) -> SamplerLoRA:
    """Zero-initialised sampler LoRA (``lora_up`` = 0) on ``paths`` of ``unet``; not attached yet.

    Args:
        unet: the UNet.
        paths: sampler conv paths (see :func:`adapters.res_adapter.config.sampler_conv_paths`).
        ranks: one rank for every conv, or path -> rank.
        alpha: kohya alpha (one value or path -> value); ``None`` means alpha = rank (scaling 1).
        scale: the LoRA multiplier (0 = off).
    """
    deltas = {}
    for path in paths:
        rank = ranks if isinstance(ranks, int) else ranks[path]
        a = alpha.get(path) if isinstance(alpha, Mapping) else alpha
        conv = base_conv(unet.get_submodule(path))
        deltas[path] = LowRankDelta.for_module(conv, rank, a)
    return SamplerLoRA(unet, deltas, scale)
