"""benchmarks.i2v_defaults: the Frame Similarity Prior is chosen inside the quality bands, on held-out clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.i2v_defaults import choose, run, within_bands


def _row(strength, identity, background=1.0, ssim=1.0, motion=1.0):
    return {
        "strength": strength,
        "start": 0.0,
        "identity": identity,
        "ratio": {"background_change": background, "ssim": ssim, "motion": motion},
    }


def test_bands_and_choice():
    assert within_bands({"background_change": 1.05, "ssim": 0.95, "motion": 2.9})
    assert not within_bands({"background_change": 1.2, "ssim": 0.95, "motion": 1.0})
    assert not within_bands({"background_change": 1.0, "ssim": 0.95, "motion": 0.2})  # a still image fails
    rows = [_row(0.0, 0.9, background=3.0), _row(0.5, 0.7), _row(1.0, 0.8, motion=0.1)]
    assert choose(rows)["strength"] == 0.5  # the best identity inside the bands, not the best overall
    outside = [_row(0.0, 0.9, background=3.0), _row(1.0, 0.5, background=1.5)]
    assert choose(outside)["strength"] == 1.0  # none inside: the closest to the bands


class _Classifier:
    """Stands in for the attribute classifier: features are the mean colour."""

    def __call__(self, x):
        return {"features": x.mean(dim=(2, 3))}


def test_run_scores_every_setting_on_tiny_models(tiny_animatediff, monkeypatch):
    from benchmarks import metrics
    from pipelines import I2VAdapterPipeline

    monkeypatch.setattr(metrics, "input_identity", lambda clf, clip, image: {"identity": float(np.mean(clip[1:]))})
    monkeypatch.setattr(metrics, "prompt_accuracy", lambda clf, frames, text: {"colors_ok": np.ones(len(frames))})
    pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff)
    pipe.init_i2v_adapter()
    pipe.set_progress_bar_config(disable=True)
    grid = {"strength": (0.0, 1.0), "start": (0.0, 0.5)}
    result = run(pipe, _Classifier(), clips=2, grid=grid, num_frames=3, num_inference_steps=2)
    settings = [(r["strength"], r["start"]) for r in result["rows"]]
    assert settings == [(0.0, 0.0), (1.0, 0.0), (1.0, 0.5)]  # start is ignored with the prior off
    assert result["chosen"] in result["rows"] and result["data_seed"] == 12345
    assert all(np.isfinite(v) for r in result["rows"] for v in r["ratio"].values())


def test_adapter_off_arm_isolates_the_trained_branch(tiny_animatediff, monkeypatch):
    from benchmarks import metrics
    from pipelines import I2VAdapterPipeline

    monkeypatch.setattr(metrics, "input_identity", lambda clf, clip, image: {"identity": float(np.mean(clip[1:]))})
    monkeypatch.setattr(metrics, "prompt_accuracy", lambda clf, frames, text: {"colors_ok": np.ones(len(frames))})
    pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff)
    pipe.init_i2v_adapter()
    pipe.set_progress_bar_config(disable=True)
    grid = {"strength": (0.0,), "start": (0.0,)}
    kwargs = {"clips": 3, "grid": grid, "num_frames": 3, "num_inference_steps": 2, "adapter_off": True}
    (row,) = run(pipe, _Classifier(), **kwargs)["rows"]
    # a fresh adapter is zero-initialised: on and off are the same call, the gain is exactly zero
    assert row["identity_gain"] == 0.0 and row["identity_off"] == row["identity"]
    torch.manual_seed(0)
    for name, param in pipe.unet.named_parameters():
        if "to_out_i2v" in name:
            param.data.normal_(0, 0.5)
    (row,) = run(pipe, _Classifier(), **kwargs)["rows"]
    low, high = row["identity_gain_ci"]
    assert row["identity_gain"] != 0.0 and low <= row["identity_gain"] <= high
    assert row["identity"] - row["identity_off"] == pytest.approx(row["identity_gain"])


def test_guidance_axis_and_motion_word_prompt(tiny_animatediff, monkeypatch):
    from benchmarks import metrics
    from pipelines import I2VAdapterPipeline

    prompts = []
    monkeypatch.setattr(metrics, "input_identity", lambda clf, clip, image: {"identity": float(np.mean(clip[1:]))})
    monkeypatch.setattr(metrics, "prompt_accuracy", lambda clf, frames, text: {"colors_ok": np.ones(len(frames))})
    pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff)
    pipe.init_i2v_adapter()
    pipe.set_progress_bar_config(disable=True)
    call = pipe.__call__

    def spy(*args, **kwargs):
        prompts.append((kwargs["prompt"], kwargs.get("guidance_scale")))
        return call(*args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **k: spy(*a, **k))  # pipe(...) looks up the class
    grid = {"strength": (0.0,), "start": (0.0,)}
    kwargs = {"clips": 2, "grid": grid, "num_frames": 3, "num_inference_steps": 2}
    result = run(pipe, _Classifier(), guidance_scales=(1.0, 3.0), prompt="motion", **kwargs)
    assert [r["guidance_scale"] for r in result["rows"]] == [1.0, 3.0] and result["prompt"] == "motion"
    assert all(r["colour_kept"] == 1.0 for r in result["rows"])
    # the motion word alone: a single word, never the scene's caption
    assert all(len(text.split()) == 1 for text, _ in prompts) and {g for _, g in prompts} == {1.0, 3.0}
    with pytest.raises(ValueError, match="`prompt`"):
        run(pipe, _Classifier(), prompt="scene", **kwargs)
