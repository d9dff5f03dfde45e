"""The quality report's controls and verdicts: the new metrics (identity on frames 1..N, temporal
coherence, background stability and agreement, Wilson / ratio / gap-closed intervals), the pure verdict functions
(benchmarks/verdicts.py), the per-section targets (benchmarks/quality_targets.py), including the cases where a claim
must come out as not holding, and the I2V adapter-off arm on the tiny AnimateDiff model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks import metrics, quality_targets, verdicts

INF = math.inf


def _clip(frames=5, size=16, seed=0):
    """A clip ``(F, S, S, 3)``: a fixed background with a square that moves one pixel per frame."""
    rng = np.random.default_rng(seed)
    bg = np.full((size, size, 3), 0.5) + 0.05 * rng.standard_normal((1, 1, 3))
    out = []
    for k in range(frames):
        f = bg.copy()
        f[6:10, 4 + k : 8 + k] = [0.9, 0.1, 0.1]
        out.append(f)
    return np.clip(np.stack(out), 0, 1)


class _FakeClassifier(torch.nn.Module):
    """Features = per-channel mean and std; "red cube" seen when the red channel dominates."""

    def features(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1) + 2.0

    def predict(self, x):
        return [{"pairs": {("red", "cube")} if x[i, 0].mean() > x[i, 1].mean() else set()} for i in range(len(x))]


# ----------------------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------------------


def test_input_identity_counts_frames_1_to_n_only():
    clf = _FakeClassifier()
    image = _clip(1)[0]
    other = np.zeros_like(image)
    other[..., 1] = 0.8  # green, a different object for the fake classifier
    # Frame 0 is the input (pasted back), every generated frame is something else: identity must be low.
    pasted = np.stack([image, other, other, other])
    r = metrics.input_identity(clf, pasted, image)
    assert r["identity_frame0"] == pytest.approx(1.0) and r["psnr_frame0"] == 100.0 and r["ssim_frame0"] == 1.0
    assert r["identity"] < 0.99 and r["attribute_kept"] == 0.0
    # Frame 0 wrong, frames 1..N the input: full identity.
    r = metrics.input_identity(clf, np.stack([other, image, image]), image)
    assert r["identity"] == pytest.approx(1.0) and r["attribute_kept"] == 1.0 and r["identity_frame0"] < 0.99
    with pytest.raises(ValueError, match="2 frames"):
        metrics.input_identity(clf, image[None], image)


def test_temporal_coherence_and_background_change():
    still = np.repeat(_clip(1), 4, axis=0)
    c = metrics.temporal_coherence(still)
    assert c["ssim"] == pytest.approx(1.0) and c["psnr"] == 100.0
    assert metrics.background_change(still) == 0.0
    moving = _clip(5)
    cm = metrics.temporal_coherence(moving)
    assert cm["ssim"] < 1.0 and 5.0 < cm["psnr"] < 100.0
    # PSNR from the pooled MSE over the consecutive pairs.
    mse = ((moving[1:] - moving[:-1]) ** 2).mean()
    assert cm["psnr"] == pytest.approx(10 * math.log10(1 / mse))
    # The square moves inside the centre: the border ring does not change.
    assert metrics.background_change(moving) == 0.0
    flicker = moving.copy()
    flicker[2, :2] += 0.2  # the top rows of frame 2 change
    assert metrics.background_change(flicker) > 0.0
    noisy = np.clip(moving + 0.2 * np.random.default_rng(0).standard_normal(moving.shape), 0, 1)
    cn = metrics.temporal_coherence(noisy)
    assert cn["ssim"] < cm["ssim"] and cn["psnr"] < cm["psnr"]
    ring = metrics.border_ring(32, 32, 0.12)
    assert ring.dtype == bool and ring[0].all() and ring[:, -1].all() and not ring[16, 16]
    assert ring.sum() == 32 * 32 - (32 - 8) ** 2  # 4 px wide


def test_background_agreement_across_views():
    views = np.repeat(_clip(1), 4, axis=0)
    assert metrics.background_agreement(views) == 0.0
    views = views.copy()
    views[1] += 0.1  # one view with a brighter background: 3 of 6 pairs differ by 0.1
    assert metrics.background_agreement(np.clip(views, 0, 1)) == pytest.approx(0.05, abs=1e-9)
    with pytest.raises(ValueError, match="2 views"):
        metrics.background_agreement(views[:1])


def test_wilson_and_ratio_intervals():
    lo, hi = metrics.wilson_ci(12, 12)
    assert hi == 1.0 and 0.75 < lo < 0.76  # 12/12 is not [1, 1]
    lo, hi = metrics.wilson_ci(20, 40)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
    assert all(math.isnan(v) for v in metrics.wilson_ci(0, 0))
    gt = np.linspace(0.01, 0.03, 24)
    r = metrics.paired_ratio_bootstrap(2 * gt, gt)
    assert (
        r["ratio"] == pytest.approx(2.0) and r["ci_low"] == pytest.approx(2.0) and r["ci_high"] == pytest.approx(2.0)
    )
    noisy = gt * (1 + 0.3 * np.random.default_rng(0).standard_normal(24))
    r = metrics.paired_ratio_bootstrap(noisy, gt)
    assert r["ci_low"] < r["ratio"] < r["ci_high"]
    zeros = np.zeros(6)
    assert metrics.paired_ratio_bootstrap(zeros, zeros)["ratio"] == 1.0
    assert metrics.paired_ratio_bootstrap(zeros + 0.1, zeros)["ratio"] == INF
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.paired_ratio_bootstrap([1.0], [1.0, 2.0])


def test_gap_closed_jackknife():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((200, 4))
    base = rng.standard_normal((40, 4))
    start, goal = base + 2.0, base + 0.2
    none = metrics.gap_closed(start, start, goal, real)
    assert none["closed"] == pytest.approx(0.0, abs=1e-9) and none["ci_high"] < 0.5
    full = metrics.gap_closed(start, goal, goal, real)
    assert full["closed"] == pytest.approx(1.0) and full["ci_low"] > 0.5
    half = metrics.gap_closed(start, base + 1.0, goal, real)
    assert 0.0 < half["closed"] < 1.0 and half["ci_low"] < half["closed"] < half["ci_high"]
    no_gap = metrics.gap_closed(goal, start, start, real)  # the "teacher" is worse than the start: nothing to close
    assert math.isnan(no_gap["closed"]) and no_gap["gap"] < 0
    with pytest.raises(ValueError, match="N >= 3"):
        metrics.gap_closed(start[:2], start[:2], goal[:2], real)


# ----------------------------------------------------------------------------------------------------------------------
# verdicts
# ----------------------------------------------------------------------------------------------------------------------


def test_direction_and_threshold_verdicts():
    assert verdicts.direction_verdict(0.1, 0.3, "higher") == "holds"
    assert verdicts.direction_verdict(-0.3, -0.1, "higher") == "reversed"
    assert verdicts.direction_verdict(0.0, 0.0, "higher") == "within spread"  # identical arms
    assert verdicts.direction_verdict(math.nan, 1.0, "lower") == "undetermined"
    with pytest.raises(ValueError, match="want"):
        verdicts.direction_verdict(0.0, 1.0, "up")
    assert verdicts.ci_threshold_verdict(0.92, 0.99, 0.90) == "holds"
    assert verdicts.ci_threshold_verdict(0.60, 0.85, 0.90) == "does not hold"
    assert verdicts.ci_threshold_verdict(0.85, 0.95, 0.90) == "within spread"
    assert verdicts.ci_threshold_verdict(math.nan, 0.95, 0.90) == "undetermined"


def test_threshold_verdict_from_values():
    t = verdicts.threshold_verdict(np.ones(40), 0.90)
    assert t["verdict"] == "holds" and t["interval"] == "wilson" and t["ci_low"] > 0.9
    # 12 of 12 is not enough evidence for >= 0.90: the Wilson interval reaches down to 0.76.
    assert verdicts.threshold_verdict(np.ones(12), 0.90)["verdict"] == "within spread"
    t = verdicts.threshold_verdict(np.array([1.0] * 31 + [0.0] * 33), 0.90)  # colour accuracy like the first base
    assert t["verdict"] == "does not hold" and t["mean"] == pytest.approx(31 / 64)
    t = verdicts.threshold_verdict(np.full(30, 0.6) + np.linspace(-0.01, 0.01, 30), 0.5)
    assert t["interval"] == "bootstrap" and t["verdict"] == "holds"
    assert verdicts.threshold_verdict([], 0.5)["verdict"] == "undetermined"


def test_band_verdicts_fail_both_ways():
    assert verdicts.band_verdict(0.9, 1.2, 1 / 3, 3.0) == "holds"
    assert verdicts.band_verdict(4.0, 12.0, 1 / 3, 3.0) == "does not hold"  # flicker
    assert verdicts.band_verdict(0.0, 0.1, 1 / 3, 3.0) == "does not hold"  # a still image
    assert verdicts.band_verdict(2.0, 4.0, 1 / 3, 3.0) == "within spread"
    assert verdicts.band_verdict(0.95, INF, 0.9, INF) == "holds"
    assert verdicts.band_verdict(1.5, INF, 0.0, 1.1) == "does not hold"
    assert verdicts.band_verdict(1.0, INF, 0.0, 1.1) == "within spread"
    with pytest.raises(ValueError, match="low <= high"):
        verdicts.band_verdict(0.0, 1.0, 2.0, 1.0)
    gt = np.linspace(0.01, 0.03, 16)
    assert verdicts.ratio_band_verdict(10 * gt, gt, 1 / 3, 3.0)["verdict"] == "does not hold"  # motion 10x GT
    assert verdicts.ratio_band_verdict(1.5 * gt, gt, 1 / 3, 3.0)["verdict"] == "holds"
    assert verdicts.ratio_band_verdict(np.zeros(16), gt, 1 / 3, 3.0)["verdict"] == "does not hold"
    assert verdicts.all_hold([verdicts.target_row("a", "1", "holds")])
    assert not verdicts.all_hold([verdicts.target_row("a", "1", "holds"), verdicts.target_row("b", "2", "reversed")])
    assert not verdicts.all_hold([])


# ----------------------------------------------------------------------------------------------------------------------
# section targets
# ----------------------------------------------------------------------------------------------------------------------


def _i2v_per(n=16, seed=0, motion_factor=1.0, identity_gain=0.1):
    rng = np.random.default_rng(seed)
    gt = {
        "identity": rng.uniform(0.8, 0.9, n),
        "colour_kept": rng.uniform(0.8, 1.0, n),
        "shape_kept": rng.uniform(0.6, 0.9, n),
        "coherence_ssim": rng.uniform(0.85, 0.95, n),
        "coherence_psnr": rng.uniform(24.0, 30.0, n),
        "background_change": rng.uniform(0.0, 0.02, n),
        "motion": rng.uniform(0.005, 0.03, n),
    }
    off = {k: v.copy() for k, v in gt.items()}
    off["identity"] = rng.uniform(0.5, 0.7, n)
    on = {k: v.copy() for k, v in gt.items()}
    on["identity"] = off["identity"] + identity_gain * rng.uniform(0.5, 1.5, n)
    on["motion"] = gt["motion"] * motion_factor
    return {"i2v": on, "i2v_off": off, "ground_truth": gt}


def test_i2v_targets_hold_for_a_clip_like_the_ground_truth():
    rows, details = quality_targets.i2v_targets(_i2v_per())
    assert [r["verdict"] for r in rows] == ["holds"] * 7 and verdicts.all_hold(rows)
    assert details["motion"]["ratio"] == pytest.approx(1.0)
    assert rows[0]["target"].startswith("I2V: identity") and rows[-1]["target"].startswith("I2V: motion")


def test_i2v_motion_word_only_pair_adds_two_targets_that_can_fail():
    per = _i2v_per()
    per["i2v_motion_prompt"] = {k: v.copy() for k, v in per["i2v"].items()}
    per["i2v_off_motion_prompt"] = {k: v.copy() for k, v in per["i2v_off"].items()}
    rows, details = quality_targets.i2v_targets(per)
    assert len(rows) == 9 and verdicts.all_hold(rows)
    assert rows[7]["target"].startswith("I2V, motion word only as prompt: identity")
    # Without the caption the adapter keeps nothing of the subject: both new targets fail, the captioned ones hold.
    per["i2v_motion_prompt"] = {k: v.copy() for k, v in per["i2v_off_motion_prompt"].items()}
    per["i2v_motion_prompt"]["colour_kept"] = per["ground_truth"]["colour_kept"] * 0.5
    rows, details = quality_targets.i2v_targets(per)
    assert [r["verdict"] for r in rows[7:]] == ["within spread", "does not hold"]
    assert all(r["verdict"] == "holds" for r in rows[:7])
    assert details["identity_vs_off_motion_prompt"]["diff"] == 0.0


def test_i2v_targets_fail_without_the_adapter_effect_and_with_flicker():
    per = _i2v_per(identity_gain=0.0)  # adapter arm == adapter-off arm
    rows, details = quality_targets.i2v_targets(per)
    assert details["identity_vs_off"]["diff"] == 0.0 and rows[0]["verdict"] == "within spread"
    assert not verdicts.all_hold(rows)
    per = _i2v_per(motion_factor=10.0)  # motion 10x the ground truth's
    rows, _ = quality_targets.i2v_targets(per)
    motion = [r for r in rows if r["target"].startswith("I2V: motion")][0]
    assert motion["verdict"] == "does not hold"
    per = _i2v_per()
    per["i2v"]["background_change"] = per["ground_truth"]["background_change"] * 3 + 0.05  # background drifts
    per["i2v"]["coherence_ssim"] = per["ground_truth"]["coherence_ssim"] * 0.6  # flicker
    per["i2v"]["colour_kept"] = per["ground_truth"]["colour_kept"] * 0.5  # loses its colour
    rows, _ = quality_targets.i2v_targets(per)
    by = {r["target"].split(" (")[0]: r["verdict"] for r in rows}
    assert by["I2V: background change vs frame 0 within 10% of the ground-truth clips'"] == "does not hold"
    assert by["I2V: frame-to-frame SSIM within 10% of the ground-truth clips'"] == "does not hold"
    assert by["I2V: subject keeps its colour in every frame"] == "does not hold"


def _mv_per(n=12, seed=0, follow=0.1):
    rng = np.random.default_rng(seed)
    keys = ("psnr", "ssim", "consistency_features", "colour_agreement", "shape_agreement")
    mv = {k: rng.uniform(0.5, 0.9, n) for k in keys}
    worse = {k: v - rng.uniform(0.05, 0.15, n) for k, v in mv.items()}
    swapped = {k: v - follow * rng.uniform(0.5, 1.5, n) for k, v in mv.items()}
    image_only = {k: v - 0.2 for k, v in mv.items()}  # lower than the prompted arm: only the pairing matters
    swapped_image_only = {k: v - follow * rng.uniform(0.5, 1.5, n) for k, v in image_only.items()}
    return {
        "mv": mv, "independent": worse, "base_t2i": {k: v - 0.1 for k, v in mv.items()}, "swapped": swapped,
        "mv_image_only": image_only, "swapped_image_only": swapped_image_only,
    }  # fmt: skip


def test_mv_targets_follow_the_input_or_not():
    rows, diffs = quality_targets.mv_targets(_mv_per())
    assert len(rows) == 14 and verdicts.all_hold(rows)
    assert set(diffs) == {"independent", "base_t2i", "swapped", "swapped_image_only"}
    assert set(diffs["swapped"]) == {"psnr", "ssim", "colour_agreement", "shape_agreement"}
    # the image-only baseline is paired with the image-only MV arm (0.2 lower than the prompted one), not with "mv"
    per = _mv_per()
    expected = np.mean(per["mv_image_only"]["psnr"] - per["swapped_image_only"]["psnr"])
    assert diffs["swapped_image_only"]["psnr"]["diff"] == pytest.approx(expected)
    # A swapped reference that gives the same views as the true one: the views do not follow the input.
    rows, diffs = quality_targets.mv_targets(_mv_per(follow=0.0))
    follow = [r for r in rows if "follows the input" in r["target"]]
    assert len(follow) == 8 and all(r["verdict"] == "within spread" for r in follow)
    assert sum("with no prompt" in r["target"] for r in follow) == 4
    assert not verdicts.all_hold(rows)
    # Views that follow the prompt but not the image: the prompted pair holds, the image-only pair does not.
    per = _mv_per()
    per["swapped_image_only"] = {k: v + 0.1 for k, v in per["mv_image_only"].items()}
    rows, _ = quality_targets.mv_targets(per)
    no_prompt = [r for r in rows if "with no prompt" in r["target"]]
    assert no_prompt and all(r["verdict"] == "reversed" for r in no_prompt)
    assert all(r["verdict"] == "holds" for r in rows if r not in no_prompt)
    # A text-only adapter has no reference to swap: only the six comparisons with independent views.
    per = _mv_per()
    del per["swapped"], per["swapped_image_only"], per["mv_image_only"]
    rows, _ = quality_targets.mv_targets(per)
    assert len(rows) == 6 and not any("follows" in r["target"] for r in rows)
    assert quality_targets.swapped_index(0, 5) == 1 and quality_targets.swapped_index(4, 5) == 0
    with pytest.raises(ValueError, match="2 objects"):
        quality_targets.swapped_index(0, 1)


def test_hipa_gap_closed_verdict_from_its_ci():
    fd = {"diff": -400.0, "ci_low": -500.0, "ci_high": -300.0}
    acc = {"diff": 0.1, "ci_low": 0.0, "ci_high": 0.2, "verdict": "within spread"}
    # The shipped model's case: 56% closed, but the interval reaches from ~34% to ~78%.
    rows = quality_targets.hipa_targets(fd, acc, {"closed": 0.56, "ci_low": 0.34, "ci_high": 0.78})
    assert [r["verdict"] for r in rows] == ["holds", "holds", "within spread"] and not verdicts.all_hold(rows)
    assert rows[2]["figure"] == "56% [34%, 78%]"
    rows = quality_targets.hipa_targets(fd, acc, {"closed": 0.7, "ci_low": 0.55, "ci_high": 0.85})
    assert verdicts.all_hold(rows)
    rows = quality_targets.hipa_targets(fd, acc, {"closed": 0.2, "ci_low": 0.1, "ci_high": 0.3})
    assert rows[2]["verdict"] == "does not hold"
    nan = {"closed": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    assert quality_targets.hipa_targets(fd, acc, nan)[2]["verdict"] == "undetermined"
    worse = dict(acc, verdict="reversed")
    assert quality_targets.hipa_targets(fd, worse, {"closed": 0.7, "ci_low": 0.55, "ci_high": 0.85})[1]["verdict"] == (
        "does not hold"
    )


def test_base_targets():
    rows, details = quality_targets.base_targets({"colors_ok": np.ones(64), "match": np.r_[np.ones(48), np.zeros(16)]})
    assert [r["verdict"] for r in rows] == ["holds", "holds"]
    assert details["match"]["mean"] == 0.75 and details["colors_ok"]["interval"] == "wilson"
    rows, _ = quality_targets.base_targets({"colors_ok": np.r_[np.ones(40), np.zeros(24)], "match": np.zeros(64)})
    assert [r["verdict"] for r in rows] == ["does not hold", "does not hold"]


def test_res_adapter_targets_and_native_not_worse():
    from benchmarks import quality

    off = [("16x16", "holds", "within spread"), ("64x64", "within spread", "holds"), ("48x48", "holds", "reversed")]
    rows = quality_targets.res_adapter_targets(off, ("32x32", "within spread", "within spread"))
    assert [r["verdict"] for r in rows] == ["holds", "within spread", "does not hold", "holds"]
    rows = quality_targets.res_adapter_targets(off[:1], ("32x32", "reversed", "within spread"))
    assert rows[-1]["verdict"] == "does not hold"
    holds, summary = quality.res_adapter_verdict(off[:1], {}, native=("32x32", "reversed", "within spread"))
    assert not holds and summary.endswith("; at the native 32x32: FD higher with ResAdapter")
    assert quality.res_adapter_verdict(off[:1], {}, native=("32x32", "holds", "within spread"))[0]


# ----------------------------------------------------------------------------------------------------------------------
# the I2V adapter-off arm on the tiny AnimateDiff model
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def i2v_pipe(tiny_animatediff):
    from diffusers import MotionAdapter

    from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline

    motion = MotionAdapter.from_pretrained(tiny_animatediff / "motion_adapter")
    pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff, motion_adapter=motion)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_i2v_adapter_off_arm_on_tiny_model(i2v_pipe):
    from PIL import Image

    from benchmarks import quality
    from tests.tiny_models import randomise_
    from training.miniworld.classifier import AttributeClassifier

    pipe = i2v_pipe
    image = Image.fromarray((_clip(1)[0] * 255).round().astype(np.uint8))
    common = {"num_frames": 3, "height": 16, "width": 16, "num_inference_steps": 2, "output_type": "np"}
    with pytest.raises(quality.NotAvailable, match="no I2V-Adapter"):
        quality.i2v_clip_arms(pipe, image, "a red cube", 0, **common)
    adapter = pipe.init_i2v_adapter()  # zero-initialised: the adapter arm equals its off arm
    try:
        arms = [quality.i2v_clip_arms(pipe, image, "a red cube, sliding", s, **common) for s in range(3)]
        assert all(a["i2v"].shape == (3, 16, 16, 3) for a in arms)
        assert all(np.array_equal(a["i2v"], a["i2v_off"]) for a in arms)
        torch.manual_seed(0)
        clf = AttributeClassifier().eval()
        im = np.asarray(image, dtype=np.float64) / 255.0
        per = {arm: {} for arm in ("i2v", "i2v_off", "ground_truth")}
        for a in arms:
            for arm, clip in (("i2v", a["i2v"]), ("i2v_off", a["i2v_off"]), ("ground_truth", a["i2v"])):
                for k, v in quality.i2v_clip_scores(clf, clip, im, "a red cube").items():
                    per[arm].setdefault(k, []).append(v)
        assert {"identity", "identity_frame0", "colour_kept", "background_change", "motion"} <= set(per["i2v"])
        rows, _ = quality_targets.i2v_targets(per)
        assert rows[0]["verdict"] == "within spread"  # identical arms can never show an adapter effect
        # A non-zero adapter changes frames 1..N (and only those: frame 0 is the pasted input), and the call leaves
        # the adapter's own scale as it was.
        randomise_(adapter.parameters(), seed=1, std=0.3)
        arm = quality.i2v_clip_arms(pipe, image, "a red cube, sliding", 0, **common)
        assert not np.allclose(arm["i2v"][1:], arm["i2v_off"][1:])
        np.testing.assert_allclose(arm["i2v"][0], arm["i2v_off"][0], atol=1e-6)
        assert adapter.scale == 1.0
    finally:
        pipe.unload_i2v_adapter()


def test_call_setting_prefers_flag_then_stored_default_then_fallback():
    from types import SimpleNamespace

    from benchmarks import quality

    class Stored(dict):
        def for_call(self, given):
            out = dict(self)
            if "image" in given:
                out["guidance_scale"] = 3.0
            return out

    pipe = SimpleNamespace(call_defaults=Stored(num_inference_steps=20, guidance_scale=7.5))
    assert quality.call_setting(pipe, "num_inference_steps", 8, 25) == 8
    assert quality.call_setting(pipe, "num_inference_steps", None, 25) == 20
    assert quality.call_setting(pipe, "guidance_scale", None, 5.0, when=("image",)) == 3.0
    assert quality.call_setting(pipe, "noise_shift", None, 8.0) == 8.0
    assert quality.call_setting(SimpleNamespace(), "num_inference_steps", None, 25) == 25
    cfg = quality.build_parser().parse_args([])
    assert cfg.steps is None and cfg.guidance is None


def test_summary_table_lists_targets_and_keeps_older_sections():
    """New sections put one row per target in the summary; a section kept from an older quality.json (``--merge``,
    no ``targets``) keeps its one-line result; unavailable sections say why."""
    from benchmarks import quality

    rows = [verdicts.target_row("HiPA: gap closed", "56% [34%, 78%]", "within spread")]
    payload = {
        "command": "python -m benchmarks.quality",
        "date": "today",
        "wall_s": 1.0,
        "environment": {"processor": "cpu", "torch": "x", "diffusers": "y", "torch_threads": 1},
        "settings": {"seeds": 3, "section_seeds": None, "steps": None},
        "sections": {
            "hipa": {"status": "ok", "holds": False, "claim": "c", "summary": "s", "targets": rows, "lines": []},
            "res_adapter": {"status": "ok", "holds": True, "claim": "old claim", "summary": "old", "lines": []},
            "mv_adapter": {"status": "not available", "reason": "no model"},
        },
    }
    md = quality._markdown(payload)
    assert "| HiPA: one-step generation | HiPA: gap closed | 56% [34%, 78%] | **within spread** |" in md
    assert "| ResAdapter: off-native resolutions and aspect ratios | old claim | old | **holds** |" in md
    assert "| MV-Adapter: image to multi-view | - | not available: no model | - |" in md
    assert "sampler steps: the ones stored with each model" in md
