"""The shifted-SNR noise schedule MV-Adapter uses at high resolution.

The official ``ShiftSNRScheduler`` (mode ``"interpolated"``, shift 8) rebuilds the base scheduler with new betas: the
SNR of every training timestep is divided by ``shift`` in log space, increasingly with ``t``::

    snr_t   = alpha_bar_t / (1 - alpha_bar_t)
    w_t     = t / (T - 1)
    snr'_t  = exp((1 - w_t) * log snr_t + w_t * log(snr_t / shift))
    alpha_bar'_t = snr'_t / (1 + snr'_t);  beta'_t = 1 - alpha_bar'_t / alpha_bar'_{t-1}

Mode ``"default"`` divides every SNR by ``shift``. The computation follows the official float32 operation order.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["shifted_betas", "shifted_snr_scheduler"]


def _snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    alpha = (alphas_cumprod**0.5).float()
    sigma = ((1.0 - alphas_cumprod) ** 0.5).float()
    return (alpha / sigma) ** 2


def _snr_to_betas(snr: torch.Tensor) -> torch.Tensor:
    alpha_t = (snr / (1 + snr)) ** 0.5
    alphas_cumprod = alpha_t**2
    alphas = alphas_cumprod / torch.cat([torch.ones(1, device=snr.device), alphas_cumprod[:-1]])
    return 1 - alphas


def shifted_betas(alphas_cumprod: torch.Tensor, shift: float, mode: str = "interpolated") -> torch.Tensor:
    """Betas ``(T,)`` of the shifted schedule for a base ``alphas_cumprod`` ``(T,)``."""
    if shift <= 0:
        raise ValueError(f"`noise_shift` must be > 0, got {shift}.")
    if mode not in ("interpolated", "default"):
        raise ValueError(f"`mode` must be 'interpolated' or 'default', got {mode!r}.")
    snr = _snr(alphas_cumprod)
    shifted = snr / shift
    if mode == "default":
        return _snr_to_betas(shifted)
    t = torch.arange(0, alphas_cumprod.shape[0])
    weighting = t.float() / (alphas_cumprod.shape[0] - 1)
    interpolated = torch.exp(torch.log(snr) * (1 - weighting) + torch.log(shifted) * weighting)
    return _snr_to_betas(interpolated)


def shifted_snr_scheduler(
    scheduler: Any, shift: float = 8.0, *, mode: str = "interpolated", scheduler_class: type | None = None
) -> Any:
    """A new scheduler of the same class (or ``scheduler_class``) with the shifted betas; ``shift == 1`` returns the
    scheduler unchanged. The base ``scheduler`` must expose ``alphas_cumprod`` (all DDPM-family schedulers do)."""
    if shift == 1:
        return scheduler
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"{type(scheduler).__name__} has no `alphas_cumprod`; the SNR shift needs a DDPM-type schedule."
        )
    betas = shifted_betas(scheduler.alphas_cumprod.cpu(), shift, mode)
    cls: Any = scheduler_class or type(scheduler)
    # Every value of the current config is kept: `from_config` would otherwise reset the entries diffusers lists in
    # `_use_default_values` to the class defaults, undoing e.g. the `steps_offset = 1` fix a pipeline's __init__
    # writes into a default-built scheduler (so a fresh pipeline and its saved-and-reloaded copy would differ).
    config = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    return cls.from_config(config, trained_betas=betas.numpy())
