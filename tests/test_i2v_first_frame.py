"""adapters.i2v_adapter.first_frame: the clean first frame the I2V pipeline and trainer share.

The ``_old_*`` functions are the code the pipeline and the trainer held before (kept here verbatim as the reference):
the shared helpers must give bitwise the same tensors.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from adapters.i2v_adapter.first_frame import (
    add_noise_keep_first_frame,
    clip_latents,
    first_frame_latents,
    first_frame_loss_mask,
    insert_first_frame,
)


def _old_pipeline_start(latents, image_latents):
    first_frame = image_latents.unsqueeze(2)  # (B, C, 1, h, w)
    return torch.cat([first_frame, latents[:, :, 1:]], dim=2)


def _old_pipeline_unet_input(latent_model_input, image_latents):
    first_frame = image_latents.unsqueeze(2)
    reps = latent_model_input.shape[0] // first_frame.shape[0]
    return torch.cat(
        [first_frame.repeat(reps, 1, 1, 1, 1).to(latent_model_input.dtype), latent_model_input[:, :, 1:]], dim=2
    )


def _old_pipeline_after_step(latents, image_latents):
    first_frame = image_latents.unsqueeze(2)
    return torch.cat([first_frame.to(latents.dtype), latents[:, :, 1:]], dim=2)


def _old_noise_video_keep_first(scheduler, latents, noise, timesteps):
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return torch.cat([latents[:, :, :1], noisy[:, :, 1:]], dim=2)


def _old_trainer_latents(posterior, bsz, frames, scaling_factor):
    latents = torch.cat(
        [posterior.mean.unflatten(0, (bsz, frames))[:, :1], posterior.sample().unflatten(0, (bsz, frames))[:, 1:]],
        dim=1,
    )
    return latents.permute(0, 2, 1, 3, 4) * scaling_factor


def _posterior(n: int, seed: int = 0) -> DiagonalGaussianDistribution:
    gen = torch.Generator().manual_seed(seed)
    return DiagonalGaussianDistribution(torch.randn(n, 8, 4, 6, generator=gen))  # mean + logvar: 4 channels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pipeline_insertions_equal_the_old_code(dtype):
    gen = torch.Generator().manual_seed(0)
    image_latents = torch.randn(2, 4, 5, 6, generator=gen).to(dtype)
    latents = torch.randn(2, 4, 3, 5, 6, generator=gen).to(dtype)
    assert torch.equal(insert_first_frame(latents, image_latents), _old_pipeline_start(latents, image_latents))
    cfg_input = torch.cat([latents] * 2).float()  # [uncond; cond], a scheduler that scales in fp32
    new = insert_first_frame(cfg_input, image_latents)
    assert new.dtype == torch.float32
    assert torch.equal(new, _old_pipeline_unet_input(cfg_input, image_latents))
    assert torch.equal(new[:2, :, 0], image_latents.float()) and torch.equal(new[2:, :, 0], image_latents.float())
    assert torch.equal(new[:, :, 1:], cfg_input[:, :, 1:])
    stepped = latents * 0.5
    assert torch.equal(insert_first_frame(stepped, image_latents), _old_pipeline_after_step(stepped, image_latents))
    # a (B, C, 1, h, w) first frame is the same
    assert torch.equal(
        insert_first_frame(latents, image_latents.unsqueeze(2)), _old_pipeline_start(latents, image_latents)
    )


def test_trainer_pieces_equal_the_old_code():
    sched = DDPMScheduler()
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 3, 4, 4, generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.tensor([999, 500])
    noisy = add_noise_keep_first_frame(sched, latents, noise, t)
    assert torch.equal(noisy, _old_noise_video_keep_first(sched, latents, noise, t))
    assert torch.equal(noisy[:, :, 0], latents[:, :, 0])
    assert not torch.allclose(noisy[:, :, 1:], latents[:, :, 1:])
    assert first_frame_loss_mask(3).flatten().tolist() == [0.0, 1.0, 1.0]
    assert first_frame_loss_mask(3).shape == (1, 1, 3, 1, 1)

    posterior = _posterior(2 * 3)
    torch.manual_seed(7)
    old = _old_trainer_latents(posterior, 2, 3, 0.18215)
    torch.manual_seed(7)
    new = clip_latents(posterior, 2, 0.18215)
    assert new.shape == (2, 4, 3, 4, 6)
    assert torch.equal(new, old)
    # frame 0 is exactly what the pipeline encodes for its input image; frames 1.. are samples, not the mode
    assert torch.equal(new[:, :, 0], first_frame_latents(_posterior(6), 0.18215).unflatten(0, (2, 3))[:, 0])
    assert not torch.allclose(new[:, :, 1:], (posterior.mean * 0.18215).unflatten(0, (2, 3)).transpose(1, 2)[:, :, 1:])


def test_first_frame_latents_is_the_scaled_posterior_mean():
    posterior = _posterior(2)
    assert torch.equal(first_frame_latents(posterior, 0.5), posterior.mean * 0.5)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="`first_frame`"):
        insert_first_frame(torch.zeros(1, 4, 3, 5, 6), torch.zeros(1, 4, 2, 5, 6))
    with pytest.raises(ValueError, match="`latents`"):
        insert_first_frame(torch.zeros(3, 4, 3, 5, 6), torch.zeros(2, 4, 5, 6))  # 3 is not k * 2
    with pytest.raises(ValueError, match="`latents`"):
        insert_first_frame(torch.zeros(2, 4, 3, 5, 7), torch.zeros(2, 4, 5, 6))
    with pytest.raises(ValueError, match="`num_clips`"):
        clip_latents(_posterior(5), 2, 1.0)
