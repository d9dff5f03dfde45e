"""benchmarks.base_heldout: the probe that chooses the embedded base's checkpoint and guidance on held-out scenes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import base_heldout


def test_heldout_prompts_are_deterministic_and_not_the_evaluation_scenes():
    from benchmarks.quality import EVAL_DATA_SEED

    first = base_heldout.heldout_prompts(12, 32)
    assert first == base_heldout.heldout_prompts(12, 32)
    assert all(isinstance(p, str) and p for p in first)
    assert base_heldout.heldout_prompts(12, 32, data_seed=EVAL_DATA_SEED) != first


def test_same_base_twice_gives_zero_difference_and_guidance_changes_images(tiny_sd15, monkeypatch):
    from benchmarks import metrics

    seen = []

    def fake_accuracy(clf, images, prompts):  # the classifier is not what is tested here: record the images
        seen.append(np.asarray(images).copy())
        n = len(prompts)
        flip = (np.asarray(images).reshape(n, -1).mean(1) > np.median(np.asarray(images))).astype(float)
        return {k: flip for k in ("match", "objects_ok", "count_ok", "colors_ok", "shapes_ok")}

    monkeypatch.setattr(metrics, "prompt_accuracy", fake_accuracy)
    monkeypatch.setattr("benchmarks.quality._classifier", lambda path=None: object())
    out = base_heldout.evaluate([tiny_sd15, tiny_sd15], [7.5, 1.0], num_items=3, steps=2)
    rows = out["candidates"]
    assert [(r["base"], r["guidance"]) for r in rows] == [(str(tiny_sd15), g) for g in (7.5, 1.0)] * 2
    # the same base and guidance with the same noise: bit-identical images, zero paired difference
    np.testing.assert_array_equal(seen[0], seen[2])
    assert rows[2]["diff"]["match"]["mean"] == 0.0
    assert rows[0]["match"]["interval"] == "wilson" and rows[0]["match"]["n"] == 3
    assert len(out["prompts"]) == 3 and len(rows[1]["per_prompt"]["colors_ok"]) == 3
    # another guidance scale is another candidate: different images
    assert np.abs(seen[0] - seen[1]).max() > 1e-4


def test_cli_writes_json(tiny_sd15, tmp_path, monkeypatch):
    from benchmarks import metrics

    monkeypatch.setattr(
        metrics,
        "prompt_accuracy",
        lambda clf, images, prompts: {
            k: np.ones(len(prompts)) for k in ("match", "colors_ok", "shapes_ok", "count_ok")
        },
    )
    monkeypatch.setattr("benchmarks.quality._classifier", lambda path=None: object())
    out = tmp_path / "probe.json"
    res = base_heldout.main([str(tiny_sd15), "--num-items", "2", "--steps", "1", "--out", str(out)])
    assert out.is_file() and res["candidates"][0]["colors_ok"]["mean"] == pytest.approx(1.0)


def test_vae_ceiling_scores_real_renders_and_their_round_trip(tiny_sd15, monkeypatch):
    from benchmarks import metrics

    seen = []

    def fake_accuracy(clf, images, prompts):
        seen.append(np.asarray(images))
        return {k: np.ones(len(prompts)) for k in ("match", "colors_ok", "shapes_ok", "count_ok")}

    monkeypatch.setattr(metrics, "prompt_accuracy", fake_accuracy)
    monkeypatch.setattr("benchmarks.quality._classifier", lambda path=None: object())
    out = base_heldout.vae_ceiling([tiny_sd15 / "vae"], num_items=3)
    assert set(out) == {"real", str(tiny_sd15 / "vae"), "num_items", "data_seed"}
    assert seen[0].shape == seen[1].shape == (3, 32, 32, 3)
    assert np.abs(seen[0] - seen[1]).max() > 0.01  # an untrained VAE changes the renders
    with pytest.raises(SystemExit):
        base_heldout.main(["--num-items", "2"])  # neither bases nor --vae-ceiling
