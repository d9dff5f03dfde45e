"""The HiPA teacher, built once (:mod:`adapters.hipa.teacher`) for the app (``pipelines.tasks``), the quality benchmark
and the trainer.

The reference is the teacher the shipped quality figures were computed with (``benchmarks/results/quality.md``: "base,
25 DDIM steps"): a stock ``StableDiffusionPipeline`` over the base's vae / text encoder / tokenizer / UNet with the LoRA
at scale 0 and ``DDIMScheduler.from_config(base config, clip_sample=False)`` (or ``DPMSolverMultistepScheduler``).
Comparisons are bitwise: the same stock call on the same modules and noise.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from adapters.hipa import HiPAConfig, add_hipa_lora, hipa_lora_state_dict, save_hipa_lora
from adapters.hipa.teacher import (
    TeacherSettings,
    base_only,
    read_teacher_settings,
    run_teacher,
    teacher_pipeline,
    teacher_scheduler,
)
from benchmarks.quality import _generators, _np_images
from pipelines import tasks
from pipelines.pipeline_hipa import HiPASDPipeline, HiPAXLPipeline
from pipelines.testing import build_sd15_components, build_sdxl_components, randomise_

SIZE = 16
STEPS = 3
GUIDANCE = 5.0


def _hipa(base: str = "sd15"):
    """A HiPA pipeline with a random LoRA at scale 1 and the hipa preset applied (``pipe.scheduler`` a trailing
    DDIM; the base's own scheduler config kept aside)."""
    components = build_sdxl_components() if base == "sdxl" else build_sd15_components()
    if base != "sdxl":
        components["requires_safety_checker"] = False
    pipe = (HiPAXLPipeline if base == "sdxl" else HiPASDPipeline)(**components)
    pipe.set_progress_bar_config(disable=True)
    add_hipa_lora(pipe.unet, HiPAConfig(rank=4))
    randomise_([p for n, p in pipe.unet.named_parameters() if ".lora_" in n], seed=1, std=0.1)
    pipe.set_preset("hipa")
    return pipe, components


def _reference(pipe, components, sampler: str, prompt: str, seed: int) -> np.ndarray:
    """The quality benchmark's teacher before this change, written out: LoRA at scale 0, a hand-built stock
    pipeline over the base modules, the sampler from the base's scheduler config."""
    base_config = components["scheduler"].config
    if sampler == "dpm":
        scheduler = DPMSolverMultistepScheduler.from_config(base_config)
    else:
        scheduler = DDIMScheduler.from_config(base_config, clip_sample=False)
    keep = ("vae", "text_encoder", "tokenizer", "unet", "text_encoder_2", "tokenizer_2")
    modules = {k: v for k, v in components.items() if k in keep}
    if "text_encoder_2" in modules:
        stock = StableDiffusionXLPipeline(**modules, scheduler=scheduler)
    else:
        stock = StableDiffusionPipeline(
            **modules, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    stock.unet = pipe.unet
    stock.set_progress_bar_config(disable=True)
    pipe.set_adapters(["hipa"], adapter_weights=[0.0])
    try:
        out = stock([prompt], height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=_generators([seed]), output_type="np")  # fmt: skip
    finally:
        pipe.set_adapters(["hipa"], adapter_weights=[1.0])
    return _np_images(out)


def _quality_teacher(pipe, prompt: str, seed: int) -> np.ndarray:
    """What ``benchmarks.quality.eval_hipa`` runs for the teacher arm."""
    settings = tasks.hipa_teacher_settings(pipe)
    teacher = teacher_pipeline(pipe, settings.sampler)
    teacher.set_progress_bar_config(disable=True)
    out = run_teacher(teacher, prompt=[prompt], height=SIZE, width=SIZE, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, generator=_generators([seed]), output_type="np")  # fmt: skip
    return _np_images(out)


def _embedded_with(pipe, tmp_path, settings: TeacherSettings) -> None:
    """Give ``pipe`` an ``embedded_info`` whose HiPA part is a LoRA file carrying ``settings``."""
    save_hipa_lora(
        tmp_path / "hipa", hipa_lora_state_dict(pipe.unet), HiPAConfig(rank=4), extra_metadata=settings.metadata()
    )
    pipe.embedded_info = SimpleNamespace(parts={"hipa": str(tmp_path / "hipa")})


@pytest.mark.parametrize(("base", "sampler"), [("sd15", "ddim"), ("sd15", "dpm"), ("sdxl", "ddim")])
def test_app_and_quality_teachers_are_the_shipped_teacher(base, sampler, tmp_path):
    """The app's teacher image and the quality benchmark's teacher arm are the same pixels for the same seed, and
    both are the shipped figures' teacher (LoRA off, the sampler the LoRA file names)."""
    pipe, components = _hipa(base)
    _embedded_with(pipe, tmp_path, TeacherSettings(steps=STEPS, guidance_scale=GUIDANCE, sampler=sampler))
    prompt, seed = "a red cube", 7
    reference = _reference(pipe, components, sampler, prompt, seed)
    quality = _quality_teacher(pipe, prompt, seed)
    app = tasks._teacher(pipe, {"prompt": prompt, "height": SIZE, "width": SIZE}, STEPS, GUIDANCE, seed)
    assert np.array_equal(quality, reference)
    assert np.array_equal(np.asarray(app), (reference[0] * 255).round().astype(np.uint8))


def test_teacher_is_the_base_and_leaves_the_pipeline_as_it_was():
    """The teacher runs with every LoRA off (== LoRA scale 0, bitwise); afterwards ``pipe`` has its scheduler, its
    modules (same objects, same dtypes), its LoRA on and its one-step output."""
    pipe, _ = _hipa()
    own_scheduler = pipe.scheduler
    kwargs = {"prompt": "a red cube", "height": SIZE, "width": SIZE, "output_type": "latent"}
    one_step = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    teacher = teacher_pipeline(pipe)
    assert teacher.unet is pipe.unet and teacher.vae is pipe.vae and teacher.text_encoder is pipe.text_encoder
    assert type(teacher) is StableDiffusionPipeline and isinstance(teacher.scheduler, DDIMScheduler)
    assert not teacher.scheduler.config.clip_sample and teacher.scheduler.config.timestep_spacing == "leading"
    teach = {**kwargs, "num_inference_steps": STEPS, "guidance_scale": GUIDANCE}
    off = run_teacher(teacher, **teach, generator=torch.Generator().manual_seed(0)).images
    pipe.set_adapters(["hipa"], adapter_weights=[0.0])
    scale_zero = teacher(**teach, generator=torch.Generator().manual_seed(0)).images
    pipe.set_adapters(["hipa"], adapter_weights=[1.0])
    lora_on = teacher(**teach, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(off, scale_zero) and not torch.allclose(off, lora_on)
    assert pipe.scheduler is own_scheduler
    assert torch.equal(pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images, one_step)


@pytest.mark.parametrize("mixed", [False, True], ids=["fp16", "fp16-unet-fp32-vae"])
def test_teacher_keeps_the_modules_dtypes(mixed):
    """diffusers' ``from_pipe`` casts every shared module to one dtype (float32 unless told): the teacher keeps what
    the pipeline has, one dtype or several."""
    pipe, _ = _hipa()
    pipe.to(dtype=torch.float16)
    if mixed:
        pipe.vae.to(dtype=torch.float32)
    before = {k: m.dtype for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    teacher = teacher_pipeline(pipe)
    after = {k: m.dtype for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert after == before and teacher.unet is pipe.unet and teacher.vae is pipe.vae


def test_settings_from_the_lora_metadata(tmp_path):
    """What the trainer writes (``TeacherSettings.metadata`` via ``save_hipa_lora``) is read back from the file or its
    folder; defaults for no file, a file without them, or an unknown sampler name."""
    pipe, _ = _hipa()
    settings = TeacherSettings(steps=12, guidance_scale=3.5, sampler="dpm")
    _embedded_with(pipe, tmp_path, settings)
    assert read_teacher_settings(tmp_path / "hipa") == settings
    assert read_teacher_settings(tmp_path / "hipa" / "pytorch_lora_weights.safetensors") == settings
    assert tasks.hipa_teacher_settings(pipe) == settings
    assert read_teacher_settings(None) == TeacherSettings() == TeacherSettings(25, 7.5, "ddim")
    save_hipa_lora(tmp_path / "plain", hipa_lora_state_dict(pipe.unet), HiPAConfig(rank=4))
    assert read_teacher_settings(tmp_path / "plain") == TeacherSettings()
    with pytest.raises(ValueError, match="sampler"):
        teacher_scheduler("euler", pipe.scheduler.config)


def test_base_only_without_lora_is_a_no_op():
    unet = build_sd15_components()["unet"]
    with base_only(unet):
        pass
    assert not getattr(unet, "peft_config", None)
