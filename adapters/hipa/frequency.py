"""High-frequency filters and the HiPA adaptation loss.

HiPA (Zhang & Hooi, arXiv 2311.18158) observes that a one-step diffusion sample is mostly missing the *high
frequencies* of the multi-step sample (edges, textures), and trains its low-rank adaptors with a spatial loss plus a
loss on the high-frequency parts of the images.

The filter used here is a **radial Fourier high-pass**: the last two (spatial) dimensions of the input are
transformed with an orthonormal 2-D FFT, multiplied by a real, radially symmetric transfer function ``H(f)`` with
``H(0) = 0`` and transformed back. Frequencies ``f = (f_y, f_x)`` are in cycles per pixel, ``|f| in [0, sqrt(2)/2]``.

- ``kind="ideal"`` (default): ``H(f) = 1`` if ``|f| > cutoff`` else ``0`` (a brick wall; the cleanest split,
  exactly idempotent: filtering twice == filtering once).
- ``kind="gaussian"``: ``H(f) = 1 - exp(-|f|^2 / (2 cutoff^2))`` (smooth, no ringing).

Both remove the DC term exactly, so a constant image has no high frequencies, and both are linear, so
``high_pass(a) - high_pass(b) == high_pass(a - b)``. A unit impulse has a flat spectrum, so the fraction of its
energy kept is the mean of ``H(f)^2`` over the frequency grid (about ``1 - pi * cutoff^2`` for the ideal filter).

Optionally :func:`sobel_edges` gives an edge map (gradient magnitude), HiPA's second high-frequency cue.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

FilterKind = Literal["ideal", "gaussian"]

__all__ = ["FilterKind", "frequency_radius", "high_pass_transfer", "high_pass", "low_pass", "sobel_edges", "hipa_loss"]


def frequency_radius(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Radial frequency ``|f|`` (cycles per pixel) of each bin of an unshifted ``height x width`` FFT.

    Returns:
        Tensor of shape ``(height, width)`` with values in ``[0, sqrt(2)/2]``; ``[0, 0]`` is the DC bin.
    """
    fy = torch.fft.fftfreq(height, device=device, dtype=dtype)
    fx = torch.fft.fftfreq(width, device=device, dtype=dtype)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def high_pass_transfer(
    height: int, width: int, cutoff: float = 0.25, kind: FilterKind = "ideal", *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """The transfer function ``H(f)`` of :func:`high_pass` on an unshifted FFT grid, shape ``(height, width)``."""
    if not 0.0 < cutoff < math.sqrt(0.5):
        raise ValueError(f"`cutoff` must be in (0, {math.sqrt(0.5):.4f}) cycles/pixel, got {cutoff}.")
    radius = frequency_radius(height, width, device=device, dtype=dtype)
    if kind == "ideal":
        return (radius > cutoff).to(dtype)
    if kind == "gaussian":
        return 1.0 - torch.exp(-(radius**2) / (2.0 * cutoff**2))
    raise ValueError(f"`kind` must be 'ideal' or 'gaussian', got {kind!r}.")


def high_pass(x: torch.Tensor, cutoff: float = 0.25, kind: FilterKind = "ideal") -> torch.Tensor:
    """High-pass filter the last two dimensions of ``x`` in the Fourier domain.

    Args:
        x: ``(..., H, W)`` real tensor (e.g. latents ``(B, 4, h, w)`` or images ``(B, 3, H, W)``).
        cutoff: radial cutoff in cycles per pixel, in ``(0, 0.707)``; 0.5 is the Nyquist frequency along an axis.
        kind: ``"ideal"`` (brick wall) or ``"gaussian"`` (smooth); see the module docstring.

    Returns:
        ``(..., H, W)`` tensor, same dtype as ``x`` (computed in float32 for half-precision inputs).
    """
    if x.ndim < 2:
        raise ValueError(f"`x` must have at least 2 dimensions (..., H, W), got shape {tuple(x.shape)}.")
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    height, width = x.shape[-2:]
    transfer = high_pass_transfer(height, width, cutoff, kind, device=x.device, dtype=compute_dtype)
    spectrum = torch.fft.fft2(x.to(compute_dtype), norm="ortho")
    filtered = torch.fft.ifft2(spectrum * transfer, norm="ortho").real
    return filtered.to(x.dtype)


def low_pass(x: torch.Tensor, cutoff: float = 0.25, kind: FilterKind = "ideal") -> torch.Tensor:
    """The complement of :func:`high_pass`: ``x - high_pass(x)``, shape like ``x``."""
    return x - high_pass(x, cutoff, kind)


def sobel_edges(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude with replicate padding.

    Args:
        x: ``(B, C, H, W)`` tensor.

    Returns:
        ``(B, C, H, W)`` tensor, ``sqrt(gx^2 + gy^2 + eps) - sqrt(eps)`` (zero for a constant image, smooth at 0).
    """
    if x.ndim != 4:
        raise ValueError(f"`x` must be (B, C, H, W), got shape {tuple(x.shape)}.")
    channels = x.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype) / 8.0
    kernel = torch.stack([kx, kx.t()])[:, None].repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    grad = F.conv2d(padded, kernel, groups=channels).unflatten(1, (channels, 2))
    return torch.sqrt(grad.pow(2).sum(dim=2) + eps) - math.sqrt(eps)


def hipa_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    lambda_hf: float = 1.0,
    *,
    cutoff: float = 0.25,
    kind: FilterKind = "ideal",
    lambda_edge: float = 0.0,
    return_parts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HiPA adaptation loss: ``MSE(s, t) + lambda_hf * MSE(HP(s), HP(t)) [+ lambda_edge * MSE(E(s), E(t))]``.

    Args:
        student: ``(B, C, H, W)`` one-step prediction (latents or decoded images).
        teacher: ``(B, C, H, W)`` multi-step teacher target, same shape.
        lambda_hf: weight of the high-frequency term (``>= 0``).
        cutoff, kind: the :func:`high_pass` parameters.
        lambda_edge: weight of the Sobel edge-map term (``>= 0``, off by default).
        return_parts: also return ``{"spatial", "high_freq", "edge"}`` (detached).

    Returns:
        Scalar loss (and the parts); exactly zero when ``student == teacher``.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"`student` {tuple(student.shape)} and `teacher` {tuple(teacher.shape)} differ in shape.")
    if lambda_hf < 0 or lambda_edge < 0:
        raise ValueError(f"`lambda_hf` and `lambda_edge` must be >= 0, got {lambda_hf} and {lambda_edge}.")
    student = student.float()
    teacher = teacher.float()
    spatial = F.mse_loss(student, teacher)
    # The filter is linear: filtering the difference is filtering both and subtracting, with one FFT.
    high_freq = high_pass(student - teacher, cutoff, kind).pow(2).mean()
    loss = spatial + lambda_hf * high_freq
    edge = torch.zeros((), device=student.device)
    if lambda_edge > 0:
        edge = F.mse_loss(sobel_edges(student), sobel_edges(teacher))
        loss = loss + lambda_edge * edge
    if return_parts:
        return loss, {"spatial": spatial.detach(), "high_freq": high_freq.detach(), "edge": edge.detach()}
    return loss
