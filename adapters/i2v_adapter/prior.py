"""Frame Similarity Prior of I2V-Adapter (inference only).

Consecutive frames of a video are similar, so instead of starting every later frame from pure noise at ``T`` the
denoising can start from a noised copy of the first frame's latent at an intermediate step ``t_s``:

    z^i_{t_s} = add_noise( strength * D(z^1_0), eps^i, t_s )      for i >= 2

``D`` is a degradation that removes high-frequency detail so the prior fixes layout and colour but not texture:
a Gaussian blur of the latent, mixed element-wise with the unblurred latent by a random mask (the authors' code
uses a 9x9 kernel, sigma 18, half of the elements blurred). The two control coefficients are

* ``strength`` (``[0, 1]``): how much of the first frame the later frames start from; higher = more stable, less
  motion. ``0`` turns the prior off.
* ``start`` (``[0, 1)``): where in the schedule the prior is applied, as the fraction of the inference steps that
  are skipped; denoising begins at ``timesteps[round(start * num_inference_steps)]``. Higher = closer to the
  first frame. ``0`` applies it at the first timestep (as the authors' code does).

The degradation itself is tunable too (``mask_ratio``: the share of blurred elements, ``blur_sigma``). Settings of
other implementations map as: the authors' code = ``strength=1, start=0, mask_ratio=0.5``; a "sample ratio" r (the
fraction of steps run) = ``start = 1 - r``; a "blurred strength" = ``mask_ratio``.

With ``strength == 0`` (the default) the prior is off and the initial latents and timesteps are exactly the plain
noise initialisation (``start`` is then ignored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SimilarityPrior", "apply_similarity_prior", "degrade_latents", "gaussian_blur"]


@dataclass(frozen=True)
class SimilarityPrior:
    """Coefficients of the Frame Similarity Prior.

    Args:
        strength: weight of the first frame's degraded latent in the later frames' starting point, in ``[0, 1]``.
        start: fraction of the inference steps skipped; the prior is noised to the first kept timestep, in
            ``[0, 1)``.
        blur_kernel_size: odd size of the Gaussian kernel applied to the latent.
        blur_sigma: standard deviation of the Gaussian kernel (latent pixels).
        mask_ratio: fraction of latent elements replaced by their blurred value, in ``[0, 1]``.
    """

    strength: float = 0.0
    start: float = 0.0
    blur_kernel_size: int = 9
    blur_sigma: float = 18.0
    mask_ratio: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"`similarity_prior.strength` must be in [0, 1], got {self.strength}.")
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"`similarity_prior.start` must be in [0, 1), got {self.start}.")
        if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
            raise ValueError(
                f"`similarity_prior.blur_kernel_size` must be a positive odd int, got {self.blur_kernel_size}."
            )
        if self.blur_sigma <= 0:
            raise ValueError(f"`similarity_prior.blur_sigma` must be > 0, got {self.blur_sigma}.")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"`similarity_prior.mask_ratio` must be in [0, 1], got {self.mask_ratio}.")

    @property
    def enabled(self) -> bool:
        """Whether the prior changes anything (``strength > 0``)."""
        return self.strength > 0.0

    @classmethod
    def coerce(cls, value: SimilarityPrior | tuple | list | dict | float | None) -> SimilarityPrior:
        """Build from ``None`` (off), a ``SimilarityPrior``, ``(strength, start)``, a dict, or a bare strength."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError(f"`similarity_prior` as a sequence must be (strength, start), got {value!r}.")
            return cls(strength=float(value[0]), start=float(value[1]))
        if isinstance(value, (int, float)):
            return cls(strength=float(value))
        raise ValueError(
            f"`similarity_prior` must be None, a SimilarityPrior, (strength, start), a dict or a float; got {value!r}."
        )


def gaussian_blur(x: torch.Tensor, kernel_size: int = 9, sigma: float = 18.0) -> torch.Tensor:
    """Separable Gaussian blur over the last two dims of ``x`` (``(..., H, W)``), reflect-padded (replicate when
    the map is smaller than the kernel)."""
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    half = kernel_size // 2
    coords = torch.arange(kernel_size, dtype=torch.float32, device=x.device) - half
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    mode = "reflect" if min(shape[-2], shape[-1]) > half else "replicate"
    flat = F.pad(flat, (half, half, half, half), mode=mode)
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(shape)


def _rand(shape: tuple[int, ...], generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(generator, list):
        generator = generator[0] if generator else None
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


def degrade_latents(
    latents: torch.Tensor,
    *,
    kernel_size: int = 9,
    sigma: float = 18.0,
    mask_ratio: float = 0.5,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """The degradation ``D``: blur, then keep each element unblurred with probability ``1 - mask_ratio``.

    Args:
        latents: ``(..., H, W)`` latents.

    Returns:
        Same shape as ``latents``.
    """
    blurred = gaussian_blur(latents, kernel_size, sigma)
    if mask_ratio >= 1.0:
        return blurred
    keep = (_rand(tuple(latents.shape), generator, latents.device, torch.float32) >= mask_ratio).to(latents.dtype)
    return latents * keep + blurred * (1 - keep)


def apply_similarity_prior(
    scheduler,
    noise_latents: torch.Tensor,
    first_frame_latents: torch.Tensor,
    timesteps: torch.Tensor,
    prior: SimilarityPrior,
    *,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial latents and timesteps with the Frame Similarity Prior.

    Args:
        scheduler: a diffusers scheduler whose ``set_timesteps`` has been called (uses ``add_noise``,
            ``init_noise_sigma`` and, when present, ``set_begin_index``).
        noise_latents: ``(B, C, F, H, W)`` the plain initial latents (``randn * scheduler.init_noise_sigma``).
        first_frame_latents: ``(B, C, H, W)`` clean latent of the input image.
        timesteps: the scheduler's full timesteps.
        prior: the coefficients.
        generator: for the random mask.

    Returns:
        ``(latents, timesteps)``: with the prior off, ``noise_latents`` and ``timesteps`` unchanged (the same
        objects); otherwise frames ``1..F-1`` start from the noised degraded first frame at ``timesteps[k]`` and
        ``timesteps[k:]`` is returned (frame 0 is left for the caller to set to the clean latent).
    """
    if not prior.enabled:
        return noise_latents, timesteps
    num_steps = len(timesteps)
    order = int(getattr(scheduler, "order", 1))
    k = min(int(math.floor(prior.start * num_steps + 0.5)), num_steps - 1)
    k = k - k % order  # keep multistep schedulers on a step boundary
    batch, channels, frames, height, width = noise_latents.shape
    sigma0 = scheduler.init_noise_sigma
    sigma0 = float(sigma0) if not isinstance(sigma0, torch.Tensor) else sigma0.to(noise_latents.device)
    noise = noise_latents / sigma0
    clean = first_frame_latents.to(noise_latents.dtype).unsqueeze(2).expand(-1, -1, frames, -1, -1)
    clean = degrade_latents(
        clean,
        kernel_size=prior.blur_kernel_size,
        sigma=prior.blur_sigma,
        mask_ratio=prior.mask_ratio,
        generator=generator,
    )
    clean = prior.strength * clean
    t_start = timesteps[k : k + 1]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(k)
    # add_noise broadcasts per-timestep coefficients over the trailing dims; run it per frame on 4-D tensors so
    # schedulers that index by step work the same as for images
    flat_clean = clean.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    flat_noise = noise.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    noisy = scheduler.add_noise(flat_clean, flat_noise, t_start.repeat(batch * frames))
    noisy = noisy.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
    return noisy.contiguous(), timesteps[k:]
