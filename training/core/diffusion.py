"""Diffusion training helpers shared by the adapters: noise, timesteps, targets and the (Min-SNR weighted) loss.

Shapes: ``latents`` / ``noise`` / ``model_pred`` are ``(B, C, H, W)`` for images or ``(B, C, F, H, W)`` for video
(any ``(B, ...)`` works); ``timesteps`` is ``(B,)`` int64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

__all__ = ["sample_noise", "sample_timesteps", "get_target", "diffusion_loss", "compute_snr", "prediction_type"]


def sample_noise(
    latents: torch.Tensor, noise_offset: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian noise like ``latents``, plus ``noise_offset`` times a per-(sample, channel) constant.

    Args:
        latents: ``(B, C, ...)`` clean latents.
        noise_offset: strength of the offset noise (https://www.crosslabs.org/blog/diffusion-with-offset-noise).
        generator: optional generator (on ``latents.device``).

    Returns:
        ``(B, C, ...)`` noise in ``latents.dtype``.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        shape = latents.shape[:2] + (1,) * (latents.ndim - 2)
        noise = noise + noise_offset * torch.randn(
            shape, generator=generator, device=latents.device, dtype=latents.dtype
        )
    return noise


def sample_timesteps(
    bsz: int, scheduler, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform training timesteps in ``[0, num_train_timesteps)``, shape ``(bsz,)`` int64."""
    num = int(scheduler.config.num_train_timesteps)
    return torch.randint(0, num, (bsz,), device=device, generator=generator, dtype=torch.long)


def prediction_type(scheduler) -> str:
    """The scheduler's ``prediction_type`` (``epsilon`` if it has none)."""
    return getattr(scheduler.config, "prediction_type", None) or "epsilon"


def get_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the model should predict: ``noise`` (epsilon), the velocity (v_prediction) or ``latents`` (sample)."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"Unknown scheduler `prediction_type` {kind!r}; expected epsilon, v_prediction or sample.")


def min_snr_weights(scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-gamma weights (Hang et al. 2023), ``(B,)`` float32, diffusers' train-script semantics.

    ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v-prediction and ``min(SNR, gamma)``
    for sample prediction. A zero SNR (zero-terminal-SNR schedules) gets weight 1 for epsilon.
    """
    snr = compute_snr(scheduler, timesteps).float()
    weights = torch.clamp(snr, max=snr_gamma)
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        weights = torch.where(snr > 0, weights / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))
    elif kind == "v_prediction":
        weights = weights / (snr + 1)
    return weights


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor | None = None,
    scheduler=None,
    snr_gamma: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean-squared error between prediction and target, optionally Min-SNR weighted and masked.

    Args:
        model_pred: ``(B, ...)`` model output.
        target: ``(B, ...)`` from :func:`get_target`.
        timesteps: ``(B,)``; needed with ``snr_gamma``.
        scheduler: the training noise scheduler; needed with ``snr_gamma``.
        snr_gamma: Min-SNR-gamma; ``None`` for plain MSE.
        mask: broadcastable to ``model_pred`` (e.g. ``(B, 1, F, 1, 1)`` to drop the first video frame); elements
            where it is 0 do not count, and each sample's loss is the mean over its counted elements.

    Returns:
        Scalar float32 loss.
    """
    if model_pred.shape != target.shape:
        raise ValueError(f"`model_pred` {tuple(model_pred.shape)} and `target` {tuple(target.shape)} differ in shape.")
    err = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    dims = tuple(range(1, err.ndim))
    if mask is not None:
        mask = torch.broadcast_to(mask.to(err.device, torch.float32), err.shape)
        counted = mask.sum(dim=dims)
        if bool((counted <= 0).any()):
            raise ValueError("`mask` selects no element for at least one sample of the batch.")
        per_sample = (err * mask).sum(dim=dims) / counted
    else:
        per_sample = err.mean(dim=dims) if dims else err
    if snr_gamma is not None:
        if scheduler is None or timesteps is None:
            raise ValueError("`snr_gamma` needs `scheduler` and `timesteps`.")
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, snr_gamma).to(per_sample.device)
    return per_sample.mean()
