"""MV-Adapter's scheduler-step keywords are diffusers' ``prepare_extra_step_kwargs``.

The call steps its own scheduler (``_shifted_scheduler``: ``self.scheduler`` or a shifted-SNR copy of the same class),
while ``prepare_extra_step_kwargs`` reads ``self.scheduler``'s ``step``; ``_old_step_kwargs`` is the helper the MV
pipelines held before (kept here verbatim as the reference): both give the same keywords for every scheduler.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from pipelines import MVAdapterPipeline

SCHEDULERS = [
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
]


def _old_step_kwargs(scheduler, generator, eta):
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@pytest.fixture(scope="module")
def pipe(tiny_sd15):
    pipe = MVAdapterPipeline.from_pretrained(tiny_sd15)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def restore_scheduler(pipe):
    scheduler = pipe.scheduler
    yield
    pipe.scheduler = scheduler


@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("noise_shift", [1.0, 8.0])
def test_prepare_extra_step_kwargs_equals_the_old_helper(pipe, restore_scheduler, cls, noise_shift):
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    scheduler = pipe._shifted_scheduler(noise_shift)  # the scheduler the call steps
    assert pipe.prepare_extra_step_kwargs(generator, 0.3) == _old_step_kwargs(scheduler, generator, 0.3)


def test_eta_and_generator_reach_the_shifted_scheduler(pipe, restore_scheduler):
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = {"num_views": 2, "num_inference_steps": 3, "guidance_scale": 1.0, "output_type": "np", "latents": latents}

    def call(eta, seed):
        return pipe("a red cube", eta=eta, generator=torch.Generator().manual_seed(seed), noise_shift=8.0, **kw).images

    stochastic = call(1.0, 1)
    assert np.array_equal(call(1.0, 1), stochastic)  # the generator drives the DDIM noise
    assert not np.allclose(call(1.0, 2), stochastic, atol=1e-4)
    assert not np.allclose(call(0.0, 1), stochastic, atol=1e-4)  # eta is passed on
