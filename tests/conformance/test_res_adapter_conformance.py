"""diffusers' pipeline conventions on ``ResAdapterPipeline`` (SD 1.5-like tiny components), without and with a
ResAdapter (random sampler LoRA, perturbed GroupNorms)."""

from __future__ import annotations

import numpy as np
import torch

from adapters.res_adapter.loader import init_res_adapter
from pipelines.pipeline_res_adapter import ResAdapterPipeline
from tests.tiny_models import build_sd15_components

from .common import SIZE, STEPS, PipelineConformance, perturb_


class ResAdapterConformance(PipelineConformance):
    pipeline_class = ResAdapterPipeline
    adapter_files = ("res_adapter/res_adapter.safetensors",)

    def get_components(self):
        return {**build_sd15_components(), "requires_safety_checker": False}

    def load_adapter(self, pipe):
        state = init_res_adapter(pipe, rank=4)
        perturb_(state.trainable_parameters(), seed=1, std=0.2)

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


class TestResAdapterPipeline(ResAdapterConformance):
    with_adapter = False


class TestResAdapterPipelineWithAdapter(ResAdapterConformance):
    with_adapter = True


def test_save_pretrained_writes_the_base_unet_and_the_adapter_beside(tmp_path):
    """With a fused ResAdapter at non-default scales loaded, the saved UNet is the base bit for bit (no adapter norms
    in it) and ``from_pretrained`` of the folder loads the adapter back (same scales, fused): the same output."""
    from diffusers import UNet2DConditionModel

    conformance = ResAdapterConformance()
    components = conformance.get_components()
    base = {k: v.clone() for k, v in components["unet"].state_dict().items()}
    pipe = conformance.make_pipe(components, adapter=True)
    pipe.set_res_adapter_scale(lora_scale=0.7, norm_scale=0.5)
    pipe.fuse_res_adapter()
    expected = conformance.run(pipe)
    pipe.save_pretrained(tmp_path)
    saved = UNet2DConditionModel.from_pretrained(tmp_path / "unet").state_dict()
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base)
    assert np.array_equal(conformance.run(pipe), expected)  # the pipeline is as before saving
    loaded = ResAdapterPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    state = loaded.res_adapter
    assert state.fused and (state.lora_scale, state.norm_scale) == (0.7, 0.5)
    assert np.array_equal(conformance.run(loaded), expected)
    assert ResAdapterPipeline.from_pretrained(tmp_path, res_adapter=False).res_adapter is None
