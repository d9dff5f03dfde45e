"""The clean first frame of I2V-Adapter (arXiv 2312.16693), shared by the pipeline and the trainer.

Frame 0 of every video is the input image's latent and is never noised: at inference it is written back into the
latents before every UNet call and after every scheduler step; in training it enters the UNet clean while the other
frames are noised, and the loss ignores it. Both sides encode it the same way, as the VAE posterior's mode (no
sampling), so the same image always gives the same frame 0.

Latent videos are ``(B, C, F, h, w)`` (diffusers' ``UNetMotionModel`` layout); single-image latents ``(B, C, h, w)``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "add_noise_keep_first_frame",
    "clip_latents",
    "first_frame_latents",
    "first_frame_loss_mask",
    "insert_first_frame",
]


def first_frame_latents(posterior: Any, scaling_factor: float) -> torch.Tensor:
    """The clean first-frame latent: the posterior's mode (= its mean) times the VAE's ``scaling_factor``.

    Args:
        posterior: the ``latent_dist`` of ``vae.encode(pixels)`` for images ``(B, 3, H, W)``.
        scaling_factor: ``vae.config.scaling_factor``.

    Returns:
        ``(B, C, H/f, W/f)``.
    """
    return posterior.mode() * scaling_factor


def clip_latents(
    posterior: Any, num_clips: int, scaling_factor: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training latents of ``num_clips`` clips encoded as one batch of frames: frame 0 as the pipeline encodes its
    input image (:func:`first_frame_latents`), frames 1.. sampled from the posterior.

    The sample is drawn for every frame (frame 0's draw is discarded), so the random numbers used are those of a
    plain ``posterior.sample(generator)``.

    Args:
        posterior: the ``latent_dist`` of ``vae.encode(frames)`` for frames ``(num_clips * F, 3, H, W)``, the frames
            of one clip contiguous.
        num_clips: ``B``.
        scaling_factor: ``vae.config.scaling_factor``.
        generator: for the posterior sample.

    Returns:
        ``(B, C, F, H/f, W/f)``.
    """
    if posterior.mean.shape[0] % num_clips:
        raise ValueError(f"`num_clips` = {num_clips} does not divide the {posterior.mean.shape[0]} encoded frames.")
    sampled = posterior.sample(generator) * scaling_factor
    clean = first_frame_latents(posterior, scaling_factor)
    latents = torch.cat([clean.unflatten(0, (num_clips, -1))[:, :1], sampled.unflatten(0, (num_clips, -1))[:, 1:]], 1)
    return latents.permute(0, 2, 1, 3, 4)


def insert_first_frame(latents: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
    """``latents`` with frame 0 replaced by the clean ``first_frame`` (cast to ``latents.dtype``).

    Args:
        latents: ``(k * B, C, F, h, w)``: ``k`` copies of a batch of ``B`` videos stacked along dim 0 (``k = 2`` for
            classifier-free guidance's ``[uncond; cond]`` input, else 1).
        first_frame: ``(B, C, h, w)`` or ``(B, C, 1, h, w)``, repeated ``k`` times.

    Returns:
        A new tensor ``(k * B, C, F, h, w)``; ``latents`` is not modified.
    """
    if first_frame.ndim == 4:
        first_frame = first_frame.unsqueeze(2)
    if first_frame.ndim != 5 or first_frame.shape[2] != 1:
        raise ValueError(f"`first_frame` must be (B, C, h, w) or (B, C, 1, h, w), got {tuple(first_frame.shape)}.")
    b, c, _, h, w = first_frame.shape
    if latents.ndim != 5 or latents.shape[0] % b or (latents.shape[1], *latents.shape[3:]) != (c, h, w):
        raise ValueError(
            f"`latents` must be (k * {b}, {c}, F, {h}, {w}) for this first frame, got {tuple(latents.shape)}."
        )
    reps = latents.shape[0] // first_frame.shape[0]
    return torch.cat([first_frame.repeat(reps, 1, 1, 1, 1).to(latents.dtype), latents[:, :, 1:]], dim=2)


def add_noise_keep_first_frame(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """``scheduler.add_noise`` on every frame but the first, which stays the clean latent.

    Args:
        scheduler: a diffusers scheduler with ``add_noise`` (DDPM family).
        latents: clean video latents ``(B, C, F, h, w)``.
        noise: ``(B, C, F, h, w)``.
        timesteps: ``(B,)``.

    Returns:
        ``(B, C, F, h, w)``.
    """
    return insert_first_frame(scheduler.add_noise(latents, noise, timesteps), latents[:, :, :1])


def first_frame_loss_mask(num_frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Loss mask ``(1, 1, F, 1, 1)``: 0 on the (clean) first frame, 1 on the others."""
    mask = torch.ones(1, 1, num_frames, 1, 1, device=device)
    mask[:, :, 0] = 0
    return mask
