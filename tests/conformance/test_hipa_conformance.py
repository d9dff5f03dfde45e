"""diffusers' pipeline conventions on ``HiPASDPipeline`` (SD 1.5-like tiny components), without and with a HiPA
LoRA (random ``lora_B``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from adapters.hipa.config import HiPAConfig
from adapters.hipa.loader import add_hipa_lora
from pipelines.pipeline_hipa import HiPASDPipeline
from tests.tiny_models import build_sd15_components

from .common import SIZE, STEPS, PipelineConformance, max_diff, perturb_


class HiPAConformance(PipelineConformance):
    pipeline_class = HiPASDPipeline
    adapter_files = ("hipa_lora/adapters.json", "hipa_lora/hipa/pytorch_lora_weights.safetensors")

    def get_components(self):
        return {**build_sd15_components(), "requires_safety_checker": False}

    def load_adapter(self, pipe):
        add_hipa_lora(pipe.unet, HiPAConfig(rank=4))
        perturb_([p for n, p in pipe.unet.named_parameters() if ".lora_" in n], seed=1, std=0.1)

    def get_inputs(self, seed=0):
        return {
            "prompt": "a red cube",
            "generator": torch.Generator().manual_seed(seed),
            "num_inference_steps": STEPS,
            "guidance_scale": 6.0,
            "height": SIZE,
            "width": SIZE,
            "output_type": "np",
        }


class TestHiPASDPipeline(HiPAConformance):
    with_adapter = False


class TestHiPASDPipelineWithAdapter(HiPAConformance):
    with_adapter = True
    fused_qkv_refused = "fuse_lora"  # the fused projection would drop the unmerged LoRA

    def test_fused_qkv_after_fuse_lora(self):
        """With the LoRA fused into the weights first, fused QKV keeps the output (1e-4)."""
        pipe = self.make_pipe()
        expected = self.run(pipe)
        pipe.fuse_lora()
        pipe.fuse_qkv_projections()
        assert max_diff(self.run(pipe), expected) < 1e-4


def test_step_range_follows_the_scheduler_and_calls_keep_it():
    """The preset's step range applies while its scheduler is ``pipe.scheduler``; a scheduler the user swaps in is
    used as given with any step count, and no call (with or without ``preset=``) replaces ``pipe.scheduler``."""
    conformance = HiPAConformance()
    pipe = conformance.make_pipe(adapter=False)
    own = pipe.scheduler
    conformance.run(pipe, num_inference_steps=1)
    conformance.run(pipe, preset="lcm", num_inference_steps=2)
    assert pipe.scheduler is own
    pipe.set_preset("hipa")
    with pytest.raises(ValueError, match="num_inference_steps.*hipa"):
        conformance.run(pipe, num_inference_steps=6)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = euler
    seen = []
    out = conformance.run(
        pipe, num_inference_steps=6, callback_on_step_end=lambda p, i, t, kw: seen.append(p.scheduler) or kw
    )
    assert np.isfinite(out).all() and len(seen) == 6 and all(s is euler for s in seen) and pipe.scheduler is euler
