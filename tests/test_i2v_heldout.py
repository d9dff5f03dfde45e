"""benchmarks.i2v_heldout: the held-out probe behind the I2V-Adapter recipe measures the branch, not noise."""

from __future__ import annotations

import pytest
import torch

from benchmarks.i2v_heldout import clip_losses, encode_clips, evaluate, paired


@pytest.fixture(scope="module")
def pipe(tiny_animatediff):
    from pipelines import I2VAdapterPipeline

    pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff)
    pipe.init_i2v_adapter()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_clips_and_losses_are_deterministic(pipe):
    latents, texts = encode_clips(pipe, num_items=3, num_frames=3, size=16)
    assert latents.shape[:3] == (3, pipe.unet.config.in_channels, 3)
    assert texts["empty"] == ["", "", ""] and all(t in f for t, f in zip(texts["motion"], texts["full"]))
    a = clip_losses(pipe, latents, texts["full"], timesteps=(100, 900))
    b = clip_losses(pipe, latents, texts["full"], timesteps=(100, 900))
    assert a.shape == (3,) and torch.equal(a, b)


def test_zero_branch_measures_nothing_and_a_nonzero_one_does(pipe):
    kwargs = {"num_items": 3, "num_frames": 3, "size": 16}
    fresh = evaluate(pipe, [None], timesteps=(500,), **kwargs)["loaded"]
    for caption in ("full", "motion", "empty"):
        assert fresh[caption]["diff"]["mean"] == 0.0  # zero-init output projection: bit-identical to scale 0
    with torch.no_grad():
        for module in pipe.unet.modules():
            if hasattr(module, "to_out_i2v"):
                module.to_out_i2v.weight.normal_(0, 0.5)
    moved = evaluate(pipe, [None], timesteps=(500,), **kwargs)["loaded"]
    assert all(moved[c]["diff"]["mean"] != 0.0 for c in moved)


def test_paired_ci_contains_the_mean():
    d = paired(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert d["mean"] == pytest.approx(0.25)
    assert d["ci_low"] < d["mean"] < d["ci_high"]
