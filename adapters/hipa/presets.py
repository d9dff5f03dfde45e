"""Sampler presets for one-step / few-step LoRAs, so HiPA and its peers run side by side.

Each preset names the scheduler the LoRA was distilled for, the scheduler options, the default and allowed step
counts, the guidance scale and extra ``scheduler.step`` arguments:

=============  ==========================================================  =======  =========  ========
preset         scheduler (options)                                         steps    allowed    guidance
=============  ==========================================================  =======  =========  ========
``hipa``       one-step x0 prediction at ``t = T-1``; 2-4 steps: DDIM      1        1-4        1 (off)
               (``timestep_spacing="trailing"``, ``set_alpha_to_one``)
``lcm``        ``LCMScheduler`` (LCM-LoRA)                                 4        1-8        1 (off)
``tcd``        ``TCDScheduler`` (``eta``/gamma 0.3)                        4        1-8        1 (off)
``lightning``  ``EulerDiscreteScheduler(timestep_spacing="trailing")``     4        1-8        1 (off)
``hyper-sd``   ``DDIMScheduler(timestep_spacing="trailing")`` (the Hyper-  8        1-8        1 (off)
               SD README's sampler for its N-step LoRAs)
=============  ==========================================================  =======  =========  ========

Guidance ``<= 1`` means no classifier-free guidance (one UNet pass per step), which is how all these LoRAs are meant
to run by default; a larger ``guidance_scale`` passed to the pipeline turns CFG on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FewStepPreset", "PRESETS", "get_preset", "make_scheduler"]


@dataclass(frozen=True)
class FewStepPreset:
    """How to sample with one family of few-step LoRAs.

    Attributes:
        name: preset key.
        scheduler_class: diffusers scheduler class name.
        scheduler_kwargs: overrides applied with ``SchedulerCls.from_config(base_config, **scheduler_kwargs)``.
        num_inference_steps: default step count.
        min_steps, max_steps: allowed step counts (inclusive).
        guidance_scale: default guidance (``<= 1`` disables classifier-free guidance).
        eta: default ``eta`` passed to ``scheduler.step`` when it accepts one (TCD's gamma; DDIM's eta).
        one_step_x0: sample one step as a closed-form x0 prediction at the last training timestep (HiPA).
        description: one line for UIs.
    """

    name: str
    scheduler_class: str
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    num_inference_steps: int = 4
    min_steps: int = 1
    max_steps: int = 8
    guidance_scale: float = 1.0
    eta: float = 0.0
    one_step_x0: bool = False
    description: str = ""


PRESETS: dict[str, FewStepPreset] = {
    "hipa": FewStepPreset(
        name="hipa",
        scheduler_class="DDIMScheduler",
        scheduler_kwargs={"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False},
        num_inference_steps=1,
        min_steps=1,
        max_steps=4,
        one_step_x0=True,
        description="HiPA: one step, x0 predicted from pure noise at the last training timestep.",
    ),
    "lcm": FewStepPreset(
        name="lcm",
        scheduler_class="LCMScheduler",
        scheduler_kwargs={"timestep_spacing": "leading"},
        num_inference_steps=4,
        description="LCM-LoRA: LCMScheduler, 4 steps, no guidance.",
    ),
    "tcd": FewStepPreset(
        name="tcd",
        scheduler_class="TCDScheduler",
        num_inference_steps=4,
        eta=0.3,
        description="TCD LoRA: TCDScheduler, 4 steps, gamma (eta) 0.3, no guidance.",
    ),
    "lightning": FewStepPreset(
        name="lightning",
        scheduler_class="EulerDiscreteScheduler",
        scheduler_kwargs={"timestep_spacing": "trailing"},
        num_inference_steps=4,
        description="SDXL-Lightning LoRA: Euler with trailing timesteps, 1-8 steps (4 by default), no guidance.",
    ),
    "hyper-sd": FewStepPreset(
        name="hyper-sd",
        scheduler_class="DDIMScheduler",
        scheduler_kwargs={"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False},
        num_inference_steps=8,
        description="Hyper-SD N-step LoRA: DDIM with trailing timesteps, 1-8 steps (8 by default), no guidance.",
    ),
}


def get_preset(name: str) -> FewStepPreset:
    """The preset called ``name`` (case-insensitive; ``hyper_sd`` / ``hypersd`` accepted)."""
    key = name.lower().replace("_", "-")
    key = "hyper-sd" if key == "hypersd" else key
    if key not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {name!r}.")
    return PRESETS[key]


def make_scheduler(preset: FewStepPreset | str, base_config):
    """Build the preset's scheduler from a base scheduler config (keeps betas and ``prediction_type``)."""
    import diffusers

    preset = get_preset(preset) if isinstance(preset, str) else preset
    scheduler_cls = getattr(diffusers, preset.scheduler_class)
    return scheduler_cls.from_config(base_config, **preset.scheduler_kwargs)
