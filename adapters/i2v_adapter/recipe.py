"""The authors' I2V-Adapter inference recipe (KwaiVGI/I2V-Adapter ``inference.py`` + ``configs/inference/infer.yaml``).

What their script does, and the option of ours that does the same:

==========================================  ======================================================================
theirs                                      ours (``I2VAdapterPipeline.__call__`` / :data:`AUTHORS_RECIPE`)
==========================================  ======================================================================
``repeat_latents=True``: every frame         ``similarity_prior=SimilarityPrior(strength=1.0, start=0.0)``: frames
starts from the first frame's latent,        1.. start from the (degraded) first-frame latent noised to the first
noised to ``timesteps[0]``                   timestep, all steps run
``gaussian_blur=True``: 9x9 Gaussian,        ``blur_kernel_size=9, blur_sigma=18.0, mask_ratio=0.5`` (the
sigma 18, mixed with the unblurred latent    degradation ``D`` of :mod:`.prior`)
by a random mask (half blurred)
``noise_mode="iid"``                         i.i.d. Gaussian noise per frame (our only mode)
``DDIMScheduler(beta_start=0.00085,          :func:`authors_scheduler` (the other DDIM values are diffusers'
beta_end=0.012, beta_schedule="linear")``    defaults their script relied on: ``clip_sample=True``,
                                             ``set_alpha_to_one=True``, ``steps_offset=0``, ``"leading"`` spacing)
``--cfg 8`` (``infer.sh`` passes 7.5)        ``guidance_scale=8.0``
``num_inference_steps=25``                   ``num_inference_steps=25``
``-hs 256 -ws 256`` (``infer.sh``: 512)      ``height=256, width=256``
``-l 16``                                    ``num_frames=16``
LAB colour matching of frames 1.. to frame   ``color_match=True`` (:func:`color_match_video`)
0 (``color_match_frames``)
==========================================  ======================================================================

Relation to the paper's Frame Similarity Prior (Sec. 3.3): the paper starts the later frames from
``sqrt(a_t) * (s * D(z_1)) + sqrt(1 - a_t) * eps`` at an intermediate step ``t_s``, with two coefficients, the
strength ``s`` and the start ``t_s``. The released recipe is the special case ``s = 1`` and ``t_s = T`` (the first
timestep of the schedule: nothing skipped), with ``D`` = blur + random mask. Our :class:`.prior.SimilarityPrior`
exposes both coefficients (``strength``, ``start``) and the degradation (``mask_ratio``, ``blur_sigma``,
``blur_kernel_size``); :data:`AUTHORS_PRIOR` is the released setting.

Known differences: the authors encode the first frame with a *sample* of the VAE posterior (we use its mean, so a
given image always gives the same first frame), resize it with OpenCV so its short side is ``min(height, width)``
rounded to multiples of 64 (we resize to ``height`` x ``width`` with diffusers' image processor), and draw the prior's
noise from the global RNG (we use ``generator``). The colour matching converts with OpenCV's 8-bit formulas; ours
restates them in numpy (float arithmetic, so a value can differ from OpenCV's fixed-point tables by one level).
"""

from __future__ import annotations

import numpy as np

from .prior import SimilarityPrior

__all__ = [
    "AUTHORS_PRIOR",
    "AUTHORS_RECIPE",
    "AUTHORS_SCHEDULER_CONFIG",
    "authors_scheduler",
    "color_match_frames",
    "color_match_video",
    "match_histogram",
]

#: The released prior: ``repeat_latents=True, gaussian_blur=True`` (strength 1, all steps, 9x9 blur, sigma 18, half).
AUTHORS_PRIOR = SimilarityPrior(strength=1.0, start=0.0, blur_kernel_size=9, blur_sigma=18.0, mask_ratio=0.5)

#: ``DDIMScheduler`` of ``infer.yaml`` (``noise_scheduler_kwargs``) with the defaults their script relied on.
AUTHORS_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

#: ``I2VAdapterPipeline.__call__`` arguments of the authors' ``inference.py`` defaults.
AUTHORS_RECIPE = {
    "num_inference_steps": 25,
    "guidance_scale": 8.0,
    "height": 256,
    "width": 256,
    "num_frames": 16,
    "similarity_prior": AUTHORS_PRIOR,
    "color_match": True,
}


def authors_scheduler():
    """A ``DDIMScheduler`` as the authors build it (:data:`AUTHORS_SCHEDULER_CONFIG`)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**AUTHORS_SCHEDULER_CONFIG)


# ----------------------------------------------------------------------------------------------------------------------
# LAB colour matching (the authors' histogram-matching post-process)
# ----------------------------------------------------------------------------------------------------------------------

_RGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_XYZ_TO_RGB = np.array(
    [[3.240479, -1.53715, -0.498535], [-0.969256, 1.875991, 0.041556], [0.055648, -0.204043, 1.057311]]
)
_WHITE = np.array([0.950456, 1.0, 1.088754])
_EPS = 0.008856


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _rgb_to_lab8(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` sRGB -> uint8 LAB as OpenCV's 8-bit ``*2LAB`` (L * 255/100, a + 128, b + 128)."""
    x = rgb.astype(np.float64) / 255.0
    linear = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPS, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    y = xyz[..., 1]
    lightness = np.where(y > _EPS, 116.0 * np.cbrt(y) - 16.0, 903.3 * y)
    a = 500.0 * (f[..., 0] - f[..., 1]) + 128.0
    b = 200.0 * (f[..., 1] - f[..., 2]) + 128.0
    return _to_uint8(np.stack([lightness * 255.0 / 100.0, a, b], axis=-1))


def _lab8_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 LAB (OpenCV 8-bit scaling) -> uint8 sRGB, as OpenCV's ``LAB2*``."""
    lab = lab.astype(np.float64)
    lightness, a, b = lab[..., 0] * 100.0 / 255.0, lab[..., 1] - 128.0, lab[..., 2] - 128.0
    fy = (lightness + 16.0) / 116.0
    y = np.where(lightness > 903.3 * _EPS, fy**3, lightness / 903.3)
    fy = np.where(y > _EPS, fy, 7.787 * y + 16.0 / 116.0)
    fx, fz = fy + a / 500.0, fy - b / 200.0
    x = np.where(fx**3 > _EPS, fx**3, (fx - 16.0 / 116.0) / 7.787)
    z = np.where(fz**3 > _EPS, fz**3, (fz - 16.0 / 116.0) / 7.787)
    linear = np.clip(np.stack([x, y, z], axis=-1) * _WHITE @ _XYZ_TO_RGB.T, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1.0 / 2.4) - 0.055)
    return _to_uint8(srgb * 255.0)


def match_histogram(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Map ``source``'s values so its histogram matches ``template``'s (quantile interpolation over unique values).

    Returns:
        float64 array of ``source``'s shape.
    """
    values, inverse, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    t_values, t_counts = np.unique(template.ravel(), return_counts=True)
    quantiles = np.cumsum(counts, dtype=np.float64) / source.size
    t_quantiles = np.cumsum(t_counts, dtype=np.float64) / template.size
    return np.interp(quantiles, t_quantiles, t_values)[inverse].reshape(source.shape)


def color_match_frames(reference: np.ndarray, frame: np.ndarray, *, swap_rb: bool = True) -> np.ndarray:
    """The authors' ``color_match_frames``: match ``frame``'s a/b LAB histograms to ``reference``'s, keep its L.

    Args:
        reference, frame: ``(H, W, 3)`` float RGB in ``[0, 1]`` (truncated to uint8 as theirs).
        swap_rb: convert as the authors' code does, which hands RGB frames to OpenCV's *BGR* conversion (so the
            "LAB" is that of the colour with R and B swapped); ``False`` converts the RGB frames as RGB.

    Returns:
        ``(H, W, 3)`` float64 RGB in ``[0, 1]`` (multiples of 1/255).
    """
    order = slice(None, None, -1) if swap_rb else slice(None)
    ref = (np.asarray(reference, dtype=np.float64) * 255.0).astype(np.uint8)[..., order]
    sub = (np.asarray(frame, dtype=np.float64) * 255.0).astype(np.uint8)[..., order]
    ref_lab, sub_lab = _rgb_to_lab8(ref), _rgb_to_lab8(sub)
    matched = sub_lab.copy()
    for c in (1, 2):
        matched[..., c] = match_histogram(sub_lab[..., c], ref_lab[..., c]).astype(np.uint8)
    return _lab8_to_rgb(matched)[..., order] / 255.0


def color_match_video(frames: np.ndarray, *, swap_rb: bool = True) -> np.ndarray:
    """Colour-match frames ``1..F-1`` of one video to frame 0 (:func:`color_match_frames`); frame 0 is kept.

    Args:
        frames: ``(F, H, W, 3)`` float RGB in ``[0, 1]``.

    Returns:
        ``(F, H, W, 3)`` float64.
    """
    frames = np.asarray(frames, dtype=np.float64)
    out = frames.copy()
    for f in range(1, frames.shape[0]):
        out[f] = color_match_frames(frames[0], frames[f], swap_rb=swap_rb)
    return out
