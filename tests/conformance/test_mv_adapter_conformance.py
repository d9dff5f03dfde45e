"""diffusers' pipeline conventions on ``MVAdapterSDPipeline`` (SD 1.5-like tiny components, 2 views), without and
with an MV-Adapter (random attention branches and condition encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EDMEulerScheduler, PNDMScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor, SlicedAttnProcessor

from pipelines.pipeline_mv_adapter_sd import MVAdapterSDPipeline
from tests.tiny_models import build_sd15_components

from .common import SIZE, STEPS, PipelineConformance, max_diff, perturb_


class MVAdapterConformance(PipelineConformance):
    pipeline_class = MVAdapterSDPipeline
    adapter_files = ("mv_adapter/mv_adapter.safetensors",)

    def get_components(self):
        return {**build_sd15_components(), "requires_safety_checker": False}

    def load_adapter(self, pipe):
        adapter = pipe.init_mv_adapter()
        perturb_(adapter.trainable_parameters(), seed=1, std=0.1)

    def reload_kwargs(self):
        return {} if self.with_adapter else {"adapter": False}

    def get_inputs(self, seed=0):
        return {
            "prompt": "a red cube",
            "num_views": 2,
            "generator": torch.Generator().manual_seed(seed),
            "num_inference_steps": STEPS,
            "guidance_scale": 6.0,
            "height": SIZE,
            "width": SIZE,
            "output_type": "np",
        }


class TestMVAdapterSDPipeline(MVAdapterConformance):
    with_adapter = False


class TestMVAdapterSDPipelineWithAdapter(MVAdapterConformance):
    with_adapter = True


def test_save_load_exact_with_a_default_built_scheduler(tmp_path):
    """A pipeline built from a default-constructed scheduler (``steps_offset`` fixed to 1 by the pipeline's
    ``__init__``) gives the same output after save / reload: the shifted schedule keeps every config value."""
    conformance = TestMVAdapterSDPipelineWithAdapter()
    components = conformance.get_components()
    components["scheduler"] = PNDMScheduler(skip_prk_steps=True)
    pipe = conformance.make_pipe(components)
    expected = conformance.run(pipe)
    pipe.save_pretrained(tmp_path)
    loaded = MVAdapterSDPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(conformance.run(loaded), expected)


def test_without_adapter_equals_the_base_pipeline():
    """No adapter loaded: ``num_views`` views are the base pipeline's ``num_images_per_prompt`` images (same noise);
    inputs that need an adapter are refused by name."""
    conformance = TestMVAdapterSDPipeline()
    pipe = conformance.make_pipe()
    base = StableDiffusionPipeline(**conformance.get_components())
    base.set_progress_bar_config(disable=True)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_inference_steps": 2, "guidance_scale": 5.0, "negative_prompt": "blurry", "output_type": "np"}
    expected = base("a red cube", num_images_per_prompt=3, latents=latents, height=SIZE, width=SIZE, **kw).images
    out = pipe("a red cube", num_views=3, latents=latents, height=SIZE, width=SIZE, **kw).images
    assert out.shape == (1, 3, SIZE, SIZE, 3) and np.array_equal(out[0], expected)
    with pytest.raises(ValueError, match="`image` needs an MV-Adapter"):
        pipe("a red cube", image=np.zeros((SIZE, SIZE, 3), dtype=np.float32), num_views=2, height=SIZE, width=SIZE)


def test_generators_per_sample_or_per_view():
    """One generator per sample (diffusers) or per view (as before) are both accepted; other lengths are refused."""
    conformance = TestMVAdapterSDPipelineWithAdapter()
    pipe = conformance.make_pipe()
    per_view = [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)]
    out = conformance.run(pipe, prompt=["a", "b"], generator=per_view)
    assert out.shape[:2] == (2, 2) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="one per sample \\(2\\) or one per view \\(4"):
        conformance.run(pipe, prompt=["a", "b"], generator=per_view[:3])


def test_noise_shift_falls_back_for_schedulers_without_betas(monkeypatch):
    """A scheduler the SNR shift cannot rebuild (EDM: no ``alphas_cumprod``) runs unshifted with a warning; one it can
    shift is shifted for the call only (``pipe.scheduler`` unchanged)."""
    import pipelines.pipeline_mv_adapter as module

    conformance = TestMVAdapterSDPipelineWithAdapter()
    pipe = conformance.make_pipe()
    own = pipe.scheduler
    shifted = conformance.run(pipe, noise_shift=8.0)
    assert pipe.scheduler is own and max_diff(shifted, conformance.run(pipe, noise_shift=1.0)) > 1e-4
    warnings = []
    monkeypatch.setattr(module.logger, "warning", lambda msg, *a: warnings.append(str(msg)))
    pipe.scheduler = EDMEulerScheduler()
    a = conformance.run(pipe, noise_shift=8.0)
    assert np.isfinite(a).all() and any("not applied" in w for w in warnings)
    assert np.array_equal(a, conformance.run(pipe, noise_shift=1.0))


def test_attention_slicing_slices_inside_the_adapter_processors():
    """``enable_attention_slicing`` keeps the MV processors (now wrapping ``SlicedAttnProcessor`` and slicing their
    own branches); ``set_default_attn_processor`` keeps them on ``AttnProcessor``; unloading leaves the UNet with
    the processors set meanwhile and no per-instance methods."""
    conformance = TestMVAdapterSDPipelineWithAdapter()
    pipe = conformance.make_pipe()
    procs = dict(pipe.mv_adapter.processors)
    pipe.enable_attention_slicing(slice_size=1)
    for path, proc in procs.items():
        attn = pipe.unet.get_submodule(path)
        assert attn.processor is proc and isinstance(proc.base_processor, SlicedAttnProcessor)
    pipe.unet.set_default_attn_processor()
    assert all(type(p.base_processor) is AttnProcessor for p in procs.values())
    pipe.unload_mv_adapter()
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())
    assert "set_default_attn_processor" not in vars(pipe.unet)
