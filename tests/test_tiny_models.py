"""The offline tiny models load with ``from_pretrained`` and generate images of the requested size."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline


def test_sd15_txt2img(tiny_sd15):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red cube", num_inference_steps=2, height=32, width=48, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (48, 32)
