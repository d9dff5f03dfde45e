"""MV-Adapter training: the multi-view folder format, CFG drops, a short run that changes only the adapter, resume,
validation grids."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from adapters.mv_adapter import load_mv_adapter
from adapters.weights import load_weights
from training.core import main
from training.train_mv_adapter import MultiViewFolderDataset, MVAdapterTrainConfig, MVAdapterTrainer, drop_masks


@pytest.fixture(scope="module")
def mv_data(tmp_path_factory) -> Path:
    """Three mini-world objects (4 orthographic ring views, 16 px) in the multi-view folder format."""
    from training.miniworld.datasets import MultiViewDataset
    from training.miniworld.export import export_multiview

    out = tmp_path_factory.mktemp("mv") / "data"
    return export_multiview(out, 3, MultiViewDataset(4, "ortho_ring", 16, seed=0, supersample=1))


def _argv(base: Path, data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(base),
        "--train_data_dir", str(data),
        "--output_dir", str(out),
        "--max_train_steps", str(steps),
        "--num_views", "4",
        "--resolution", "16",
        "--train_batch_size", "1",
        "--learning_rate", "1e-3",
        "--report_to", "none",
        "--seed", "0",
        "--mixed_precision", "no",
        *extra,
    ]  # fmt: skip


def test_folder_dataset_and_drops(mv_data):
    ds = MultiViewFolderDataset(mv_data, num_views=4, size=(16, 16))
    item = ds[0]
    assert item["pixel_values"].shape == (4, 3, 16, 16) and item["condition"].shape == (4, 6, 16, 16)
    assert item["text"] and -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    geo = MultiViewFolderDataset(mv_data, num_views=4, size=(16, 16), geometry=True)[0]["condition"]
    assert geo.shape == (4, 6, 16, 16) and 0 <= geo.min() and geo.max() <= 1
    with pytest.raises(ValueError, match="views"):
        MultiViewFolderDataset(mv_data, num_views=8, size=(16, 16))[0]
    keep_text, keep_ref = drop_masks(20000, random.Random(0), 0.1, 0.1, 0.1)
    pairs = list(zip(keep_text, keep_ref))
    for pair, expected in [((False, True), 0.1), ((True, False), 0.1), ((False, False), 0.1), ((True, True), 0.7)]:
        assert abs(pairs.count(pair) / len(pairs) - expected) < 0.015
    with pytest.raises(ValueError, match="drop_text"):
        MVAdapterTrainConfig(train_data_dir="x", drop_text=0.6, drop_both=0.6)
    assert MVAdapterTrainConfig(train_data_dir="x").snr_gamma == 5.0
    with pytest.raises(ValueError, match="max_objects"):
        MVAdapterTrainConfig(dataset="miniworld", max_objects=0)


def test_miniworld_max_objects_narrows_the_scenes():
    from training.base_model import MINIWORLD_FRAMING

    trainer = MVAdapterTrainer.__new__(MVAdapterTrainer)
    trainer.seed = 0
    counts = {}
    for n in (None, 1):
        trainer.config = MVAdapterTrainConfig(dataset="miniworld", num_views=2, resolution=16, max_objects=n)
        data = trainer.build_dataset()
        counts[n] = max(len(data.base.sample(i)[0].objects) for i in range(24))
    assert counts[1] == 1 and counts[None] == MINIWORLD_FRAMING["max_objects"]


def test_short_i2mv_run_trains_only_the_adapter(tiny_sd15, mv_data, tmp_path):
    out = tmp_path / "run"
    argv = _argv(tiny_sd15, mv_data, out, 2, "--mode", "i2mv", "--validation_steps", "2")
    argv += ["--validation_prompts", "a red cube", "--validation_inference_steps", "1", "--checkpointing_steps", "1"]
    trainer = main(MVAdapterTrainer, argv)
    names = [n for n, _ in trainer._trainable]
    assert any("_ref." in n for n in names) and any(n.startswith("cond_encoder.") for n in names)
    original = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").state_dict()
    trained = trainer.unet.state_dict()
    adapter_keys = {k for k in trained if ".processor." in k}
    assert set(trained) - adapter_keys == set(original)
    for key, value in original.items():
        assert torch.equal(trained[key].cpu(), value), key
    outs = [p.to_out_mv[0].weight.abs().sum() for p in trainer.adapter.processors.values()]
    assert all(o > 0 for o in outs)  # the zero-initialised output projections moved

    sd, meta = load_weights(out / "adapter_model.safetensors")
    assert meta["diffusion_adapters.kind"] == "mv_adapter"
    assert set(sd) == set(trainer.adapter.state_dict())
    fresh = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    loaded = load_mv_adapter(fresh, out / "adapter_model.safetensors", vae_scale_factor=2)
    assert loaded.config.use_ref and loaded.config.num_views == 4
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())
    assert (out / "validation" / "step-2" / "grid-0.png").is_file()


def test_resume_matches_uninterrupted(tiny_sd15, mv_data, tmp_path):
    full = main(MVAdapterTrainer, _argv(tiny_sd15, mv_data, tmp_path / "full", 2))
    part = tmp_path / "part"
    main(MVAdapterTrainer, _argv(tiny_sd15, mv_data, part, 1, "--checkpointing_steps", "1"))
    resumed = main(MVAdapterTrainer, _argv(tiny_sd15, mv_data, part, 2, "--resume_from_checkpoint", "latest"))
    a, b = full.adapter.state_dict(), resumed.adapter.state_dict()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_sdxl_geometry_run_on_miniworld(tiny_sdxl, tmp_path):
    """tg2mv on the SDXL-like base with procedural objects (official 6-view layout, row_col attention)."""
    argv = [
        "--pretrained_model_name_or_path", str(tiny_sdxl),
        "--dataset", "miniworld", "--camera_mode", "mvadapter", "--num_samples", "2",
        "--mode", "tg2mv", "--num_views", "6", "--resolution", "16",
        "--output_dir", str(tmp_path / "xl"), "--max_train_steps", "1", "--learning_rate", "1e-3",
        "--report_to", "none", "--seed", "0", "--mixed_precision", "no",
    ]  # fmt: skip
    trainer = main(MVAdapterTrainer, argv)
    assert trainer.adapter.config.attention_mode == "row_col" and trainer.adapter.config.condition == "geometry"
    assert trainer.last_loss is not None and trainer.last_loss == trainer.last_loss
    assert not any("_ref." in n for n, _ in trainer._trainable)
