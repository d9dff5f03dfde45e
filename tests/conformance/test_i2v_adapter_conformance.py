"""diffusers' pipeline conventions (the AnimateDiff set) on ``I2VAdapterPipeline`` (tiny SD 1.5 + MotionAdapter,
2 frames), without and with an I2V-Adapter (random first-frame attention)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline
from tests.tiny_models import build_animatediff_components

from .common import SIZE, STEPS, PipelineConformance, perturb_

IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))


class I2VAdapterConformance(PipelineConformance):
    pipeline_class = I2VAdapterPipeline
    batch_params = ("prompt", "image")
    adapter_files = ("i2v_adapter.safetensors",)

    def get_components(self):
        return build_animatediff_components()

    def load_adapter(self, pipe):
        adapter = pipe.init_i2v_adapter()
        perturb_(adapter.parameters(), seed=1, std=0.3)

    def get_inputs(self, seed=0):
        return {
            "image": IMAGE,
            "prompt": "a red cube",
            "num_frames": 2,
            "generator": torch.Generator().manual_seed(seed),
            "num_inference_steps": STEPS,
            "guidance_scale": 6.0,
            "height": SIZE,
            "width": SIZE,
            "output_type": "np",
        }


class TestI2VAdapterPipeline(I2VAdapterConformance):
    with_adapter = False


class TestI2VAdapterPipelineWithAdapter(I2VAdapterConformance):
    with_adapter = True


def test_processor_methods_keep_the_adapter_and_unload_cleanly():
    """``set_default_attn_processor`` / fused QKV / attention slicing on the UNet keep the I2V processors on top of
    the new base processors; unloading leaves those base processors and no per-instance methods on the UNet."""
    from diffusers.models.attention_processor import AttnProcessor, FusedAttnProcessor2_0

    from adapters.i2v_adapter.attention import I2VAdapterAttnProcessor

    conformance = TestI2VAdapterPipelineWithAdapter()
    pipe = conformance.make_pipe()
    paths = list(pipe.i2v_adapter.processors)
    pipe.unet.set_default_attn_processor()
    procs = [pipe.unet.get_submodule(p).processor for p in paths]
    assert all(isinstance(p, I2VAdapterAttnProcessor) and type(p.base_processor) is AttnProcessor for p in procs)
    pipe.fuse_qkv_projections()
    assert all(type(pipe.unet.get_submodule(p).processor.base_processor) is FusedAttnProcessor2_0 for p in paths)
    pipe.unfuse_qkv_projections()
    pipe.unload_i2v_adapter()
    assert all(type(pipe.unet.get_submodule(p).processor) is AttnProcessor for p in paths)
    assert not {"set_attn_processor", "set_default_attn_processor"} & set(vars(pipe.unet))


def test_callback_sets_the_final_first_frame():
    """What ``callback_on_step_end`` returns at the last step is the output, first frame included."""
    conformance = TestI2VAdapterPipelineWithAdapter()
    pipe = conformance.make_pipe()

    def mark(p, i, t, kwargs):
        latents = kwargs["latents"].clone()
        latents[:, :, 0] = 0.5
        return {"latents": latents}

    out = conformance.run(pipe, callback_on_step_end=mark, output_type="latent")
    assert (out[:, :, 0] == 0.5).all()
