"""One-step x0 prediction, shared by the HiPA pipeline and trainer.

The one-step student starts from pure noise ``x_T ~ N(0, I)`` at the last training timestep ``T - 1`` and reads the
clean sample off the UNet output in closed form (the DDIM x0 estimate):

- epsilon prediction: ``x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)``
- v prediction:       ``x0 = sqrt(a_t) * x_t - sqrt(1 - a_t) * v``
- sample prediction:  ``x0 = model_output``

where ``a_t`` is the scheduler's ``alphas_cumprod[t]``. The pipelines sample it with diffusers' own call on
:func:`one_step_scheduler`: one DDIM step on trailing timesteps (``t = T - 1``) to ``alpha = 1`` is this x0 estimate.
"""

from __future__ import annotations

import torch

__all__ = ["is_one_step_scheduler", "last_timestep", "one_step_scheduler", "predict_x0"]

#: DDIM options under which one step from pure noise returns the closed-form x0: the single trailing timestep is
#: ``T - 1``, the step goes to ``alpha = 1`` (so the ``sqrt(1 - alpha_prev) * eps`` term is zero) and x0 is neither
#: clipped nor thresholded.
_ONE_STEP_DDIM = {
    "timestep_spacing": "trailing",
    "set_alpha_to_one": True,
    "clip_sample": False,
    "thresholding": False,
}


def last_timestep(scheduler) -> int:
    """The last training timestep ``num_train_timesteps - 1`` of a diffusers scheduler (999 for SD)."""
    return int(scheduler.config.num_train_timesteps) - 1


def predict_x0(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timestep: int | torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Closed-form x0 estimate from a UNet output.

    Args:
        model_output: ``(B, C, h, w)`` UNet output.
        sample: ``(B, C, h, w)`` noisy latents ``x_t``.
        timestep: int or ``(B,)`` long tensor of training timesteps.
        alphas_cumprod: ``(T,)`` cumulative alphas of the noise schedule.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

    Returns:
        ``(B, C, h, w)`` x0 estimate in ``model_output``'s dtype (computed in float32).
    """
    timestep = torch.as_tensor(timestep, device=alphas_cumprod.device).long().reshape(-1)
    alpha = alphas_cumprod[timestep].to(device=sample.device, dtype=torch.float32)
    alpha = alpha.reshape(-1, *([1] * (sample.ndim - 1)))
    x_t = sample.float()
    out = model_output.float()
    if prediction_type == "epsilon":
        x0 = (x_t - (1.0 - alpha).sqrt() * out) / alpha.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha.sqrt() * x_t - (1.0 - alpha).sqrt() * out
    elif prediction_type == "sample":
        x0 = out
    else:
        raise ValueError(f"`prediction_type` must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}.")
    return x0.to(model_output.dtype)


def one_step_scheduler(base_config):
    """A ``DDIMScheduler`` from ``base_config`` (betas, ``prediction_type``, ``num_train_timesteps`` kept) whose one
    step (``set_timesteps(1)``: ``t = T - 1``) from pure noise returns :func:`predict_x0` of the model output."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(base_config, **_ONE_STEP_DDIM)


def is_one_step_scheduler(scheduler) -> bool:
    """Whether one step of ``scheduler`` is the closed-form x0 estimate (a DDIM with the options of
    :func:`one_step_scheduler`)."""
    from diffusers import DDIMScheduler

    config = scheduler.config
    return type(scheduler) is DDIMScheduler and all(config.get(k) == v for k, v in _ONE_STEP_DDIM.items())
