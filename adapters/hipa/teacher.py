"""The multi-step teacher HiPA is distilled from: the frozen base (every LoRA off) sampled with DDIM or DPM-Solver++
and classifier-free guidance.

Built here once for the three places that run it: the trainer distils the one-step LoRA from it
(``training.train_hipa``), the app shows it beside the one-step image (``pipelines.tasks.one_step``) and the quality
benchmark measures the gap to it (``benchmarks.quality.eval_hipa``). The trainer writes the teacher's settings into
the LoRA file's metadata (``diffusion_adapters.teacher_steps`` / ``teacher_guidance_scale`` / ``teacher_scheduler``);
:func:`read_teacher_settings` reads them back.

>>> teacher = teacher_pipeline(pipe, "ddim")  # diffusers' SD / SDXL pipeline over pipe's components
>>> image = run_teacher(teacher, prompt="a red cube", num_inference_steps=25, guidance_scale=7.5).images[0]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TEACHER_SAMPLERS",
    "TeacherSettings",
    "base_only",
    "read_teacher_settings",
    "run_teacher",
    "teacher_pipeline",
    "teacher_scheduler",
]

#: teacher samplers: ``"ddim"`` (``DDIMScheduler``, x0 never clipped) or ``"dpm"`` (``DPMSolverMultistepScheduler``)
TEACHER_SAMPLERS = ("ddim", "dpm")


@dataclass(frozen=True)
class TeacherSettings:
    """How the teacher samples: ``steps`` with ``guidance_scale`` on ``sampler`` (one of :data:`TEACHER_SAMPLERS`)."""

    steps: int = 25
    guidance_scale: float = 7.5
    sampler: str = "ddim"

    def metadata(self) -> dict[str, object]:
        """The ``teacher_*`` entries the trainer writes into the LoRA file (``extra_metadata`` of ``save_hipa_lora``)."""
        return {
            "teacher_steps": self.steps,
            "teacher_scheduler": self.sampler,
            "teacher_guidance_scale": self.guidance_scale,
        }


def read_teacher_settings(source: str | os.PathLike | None) -> TeacherSettings:
    """The teacher settings stored in a HiPA LoRA's metadata.

    Args:
        source: a ``.safetensors`` file or a folder searched for them (recursively); ``None``: no file.

    Returns:
        The stored ``teacher_steps`` / ``teacher_guidance_scale`` / ``teacher_scheduler`` (keys with or without the
        ``diffusion_adapters.`` prefix); defaults (:class:`TeacherSettings`) for what is missing or unreadable.
    """
    found: dict[str, str] = {}
    if source is not None:
        from safetensors import safe_open

        path = Path(source)
        files = [path] if path.is_file() else sorted(path.rglob("*.safetensors")) if path.is_dir() else []
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                meta = handle.metadata() or {}
            for key, value in meta.items():
                for name in ("teacher_steps", "teacher_guidance_scale", "teacher_scheduler"):
                    if key == name or key.endswith("." + name):
                        found[name] = str(value)
    default = TeacherSettings()
    try:
        steps = int(float(found.get("teacher_steps", default.steps)))
        guidance = float(found.get("teacher_guidance_scale", default.guidance_scale))
    except ValueError:
        steps, guidance = default.steps, default.guidance_scale
    sampler = "dpm" if found.get("teacher_scheduler", default.sampler).strip('"') == "dpm" else "ddim"
    return TeacherSettings(steps=steps, guidance_scale=guidance, sampler=sampler)


def teacher_scheduler(sampler: str, base_config: Mapping[str, Any]):
    """The teacher's scheduler from the base model's scheduler config (betas and ``prediction_type`` kept).

    ``"ddim"``: ``DDIMScheduler`` with ``clip_sample=False`` (a DDPM training config's ``clip_sample=True`` must not
    clip latents); ``"dpm"``: ``DPMSolverMultistepScheduler`` as configured.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler not in TEACHER_SAMPLERS:
        raise ValueError(f"`sampler` must be one of {list(TEACHER_SAMPLERS)}, got {sampler!r}.")
    if sampler == "dpm":
        return DPMSolverMultistepScheduler.from_config(base_config)
    return DDIMScheduler.from_config(base_config, clip_sample=False)


def teacher_pipeline(pipe: Any, sampler: str = "ddim", *, base_scheduler_config: Mapping[str, Any] | None = None):
    """diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` over ``pipe``'s components (shared, not
    copied; ``from_pipe``) with the teacher's scheduler. Run it with :func:`run_teacher` (every LoRA off).

    Args:
        pipe: an SD or SDXL pipeline (ours or diffusers'); ``pipe`` itself is left as it was.
        sampler: one of :data:`TEACHER_SAMPLERS`.
        base_scheduler_config: the base's scheduler config; default the one a HiPA pipeline kept before a preset
            replaced ``pipe.scheduler``, else ``pipe.scheduler.config``.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if base_scheduler_config is None:
        base_scheduler_config = getattr(pipe, "_hipa_base_scheduler_config", None) or pipe.scheduler.config
    scheduler = teacher_scheduler(sampler, base_scheduler_config)
    cls = StableDiffusionXLPipeline if isinstance(pipe, StableDiffusionXLPipeline) else StableDiffusionPipeline
    dtypes = {m.dtype for m in pipe.components.values() if isinstance(m, torch.nn.Module)}
    if len(dtypes) == 1:
        # from_pipe casts every shared module to its `dtype` (float32 by default): pass the one they have.
        teacher = cls.from_pipe(pipe, scheduler=scheduler, dtype=dtypes.pop())
    else:  # modules in several dtypes (e.g. an fp32 VAE beside an fp16 UNet): from_pipe would cast them to one
        expected = set(cls._get_signature_keys(cls)[0]) | set(cls._get_signature_keys(cls)[1])
        components = {k: v for k, v in pipe.components.items() if k in expected}
        if cls is StableDiffusionPipeline:
            components.setdefault("requires_safety_checker", False)
        teacher = cls(**{**components, "scheduler": scheduler})
    teacher.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return teacher


@contextlib.contextmanager
def base_only(unet: torch.nn.Module) -> Iterator[None]:
    """Every LoRA on ``unet`` switched off for the block (peft's ``disable_adapters``), back on afterwards; nothing
    happens to a UNet without LoRAs."""
    if not getattr(unet, "peft_config", None):
        yield
        return
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def run_teacher(teacher: Any, **kwargs: Any) -> Any:
    """``teacher(**kwargs)`` on the frozen base: every LoRA on its UNet off for the call (:func:`base_only`)."""
    with base_only(teacher.unet):
        return teacher(**kwargs)
