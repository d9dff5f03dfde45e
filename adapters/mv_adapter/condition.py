"""The condition encoder of MV-Adapter: camera or geometry maps -> UNet down-block residuals.

The encoder is a diffusers :class:`~diffusers.T2IAdapter` (``full_adapter_xl``, downscale 16 for SDXL; ``full_adapter``,
downscale 8 for SD 1.x/2.x, with 6 input channels), whose features are added through the UNet's
``down_intrablock_additional_residuals``. Any ``nn.Module`` with the same contract can be used instead::

    features = encoder(cond)   # cond: (samples * views, in_channels, H, W) in [0, 1]
                               # features: list of (samples * views, C_i, h_i, w_i), one per UNet down block
                               # (an extra last feature of the mid-block's shape is added to the mid block)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import T2IAdapter
from torch import nn

__all__ = ["build_condition_encoder", "condition_encoder_config", "encode_condition", "vae_scale_factor_of"]


def vae_scale_factor_of(vae_config: Mapping[str, Any] | None) -> int:
    """The VAE's downscale factor (8 for SD/SDXL) from its config."""
    if vae_config is None:
        return 8
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def condition_encoder_config(
    unet: nn.Module, *, vae_scale_factor: int = 8, in_channels: int = 6, family: str | None = None
) -> dict[str, Any]:
    """The T2IAdapter config that matches ``unet`` (the official recipe, generalised to any channel counts).

    SDXL-like UNets (``addition_embed_type == "text_time"``, or 3 down blocks of which the first has no
    cross-attention) get ``full_adapter_xl`` with downscale
    ``2 * vae_scale_factor`` (16 for SDXL) and channels ``[c0, c1, c2, c2]`` (``(320, 640, 1280, 1280)`` for SDXL);
    others get ``full_adapter`` with the UNet's ``block_out_channels``, ``layers_per_block`` residual blocks and
    downscale ``vae_scale_factor`` (8).
    """
    cfg = unet.config
    channels = list(cfg.block_out_channels)
    layers = cfg.layers_per_block if isinstance(cfg.layers_per_block, int) else cfg.layers_per_block[0]
    is_xl = (family == "sdxl") if family is not None else cfg.get("addition_embed_type", None) == "text_time"
    # A non-SDXL UNet laid out like SDXL (3 down blocks, the first without cross-attention, e.g. the embedded
    # mini-world base) adds the first residual after that block's downsampler, so it needs the XL feature layout.
    down_types = list(cfg.get("down_block_types", None) or [])
    xl_layout = len(channels) == 3 and bool(down_types) and "CrossAttn" not in down_types[0]
    if is_xl or xl_layout:
        if len(channels) != 3:
            raise ValueError(f"An SDXL-like UNet needs 3 down blocks for full_adapter_xl, got {len(channels)}.")
        return {
            "in_channels": in_channels,
            "channels": [channels[0], channels[1], channels[2], channels[2]],
            "num_res_blocks": 2,
            "downscale_factor": 2 * vae_scale_factor,
            "adapter_type": "full_adapter_xl",
        }
    return {
        "in_channels": in_channels,
        "channels": channels,
        "num_res_blocks": layers,
        "downscale_factor": vae_scale_factor,
        "adapter_type": "full_adapter",
    }


def build_condition_encoder(config: Mapping[str, Any] | str) -> T2IAdapter:
    """A fresh :class:`T2IAdapter` from a config dict (or its JSON string)."""
    spec: Mapping[str, Any] = json.loads(config) if isinstance(config, str) else config
    return T2IAdapter(
        in_channels=int(spec["in_channels"]),
        channels=list(spec["channels"]),
        num_res_blocks=int(spec["num_res_blocks"]),
        downscale_factor=int(spec["downscale_factor"]),
        adapter_type=str(spec["adapter_type"]),
    )


def encode_condition(encoder: nn.Module, cond: torch.Tensor, *, scale: float = 1.0) -> list[torch.Tensor]:
    """Run the encoder on ``cond`` ``(B, C_in, H, W)`` on its own device/dtype; features scaled by ``scale``."""
    param = next(encoder.parameters(), None)
    if param is not None:
        cond = cond.to(device=param.device, dtype=param.dtype)
    features = encoder(cond)
    if isinstance(features, torch.Tensor):
        features = [features]
    return [f * scale for f in features]
