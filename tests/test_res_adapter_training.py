"""ResAdapter training: buckets, data, a short run that changes exactly the intended parameters, resume, mini-world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from adapters.res_adapter import LORA_WEIGHTS_NAME, NORM_WEIGHTS_NAME, load_res_adapter, unload_res_adapter
from adapters.weights import AdapterWeightsError, load_weights
from pipelines.pipeline_res_adapter import ResAdapterPipeline
from tests import tiny_models
from training.data import BucketBatchSampler, DataFileError, ImageCaptionDataset, make_buckets, resize_and_crop
from training.train_res_adapter import ResAdapterTrainConfig, ResAdapterTrainer


def _image_folder(root: Path, sizes: list[tuple[int, int]], *, jsonl: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (h, w) in enumerate(sizes):
        array = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(array).save(root / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", "text": f"a red cube {i}"})
        if not jsonl:
            (root / f"img{i}.txt").write_text(f"a blue sphere {i}")
    if jsonl:
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


SIZES = [(40, 40), (48, 24), (24, 48), (40, 56), (64, 32), (32, 32)]


def _argv(tiny_sd15: Path, data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--pretrained_model_name_or_path",
        str(tiny_sd15),
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--max_train_steps",
        str(steps),
        "--train_batch_size",
        "2",
        "--min_side",
        "16",
        "--max_side",
        "48",
        "--bucket_step",
        "8",
        "--rank",
        "4",
        "--alpha",
        "2",
        "--learning_rate",
        "1e-2",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--mixed_precision",
        "no",
        *extra,
    ]


def _train(argv: list[str]) -> ResAdapterTrainer:
    trainer = ResAdapterTrainer(ResAdapterTrainConfig.from_args(argv))
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------------------------------------------------


def test_buckets_and_sampler():
    buckets = make_buckets(16, 48, 8, max_aspect_ratio=2.0)
    assert (16, 32) in buckets and (16, 40) not in buckets and (48, 48) in buckets
    assert all(h % 8 == 0 and w % 8 == 0 and 16 <= min(h, w) and max(h, w) <= 48 for h, w in buckets)
    ratios = [w / h for h, w in SIZES]
    sampler = BucketBatchSampler(len(SIZES), buckets, 2, ratios, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i, _, _ in b) == list(range(len(SIZES)))
    for batch in batches:
        assert len({(h, w) for _, h, w in batch}) == 1  # one bucket per batch
        h, w = batch[0][1:]
        for i, _, _ in batch:  # the bucket's aspect ratio is the nearest to each image's
            nearest = min({round(bw / bh, 6) for bh, bw in buckets}, key=lambda r: abs(np.log(r / ratios[i])))
            assert abs(w / h - nearest) < 1e-5
    assert list(BucketBatchSampler(len(SIZES), buckets, 2, ratios, seed=3)) == batches  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != batches or len(batches) == 1
    free = BucketBatchSampler(10, buckets, 4, None, seed=0)
    assert sum(len(b) for b in free) == 10


def test_resize_and_crop_covers_the_bucket():
    image = Image.new("RGB", (30, 20))
    crop, (top, left) = resize_and_crop(image, 16, 40)
    assert crop.size == (40, 16) and top >= 0 and left >= 0


def test_dataset_sources_and_missing_files(tmp_path):
    folder = _image_folder(tmp_path / "jsonl", SIZES[:3])
    data = ImageCaptionDataset(folder)
    item = data[(1, 16, 24)]
    assert item["pixel_values"].shape == (3, 16, 24) and item["text"] == "a red cube 1"
    assert -1.0 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.0
    sidecar = _image_folder(tmp_path / "txt", SIZES[:2], jsonl=False)
    assert ImageCaptionDataset(sidecar).captions == ["a blue sphere 0", "a blue sphere 1"]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"image": "jsonl/img0.png", "caption": "x"}) + "\n")
    assert ImageCaptionDataset(manifest=manifest).captions == ["x"]
    (folder / "metadata.jsonl").write_text(
        (folder / "metadata.jsonl").read_text() + "\n" + json.dumps({"file_name": "gone.png", "text": "y"})
    )
    with pytest.raises(DataFileError, match="gone.png"):
        ImageCaptionDataset(folder)
    assert len(ImageCaptionDataset(folder, on_missing_file="skip")) == 3


def test_config_validation():
    with pytest.raises(ValueError, match="bucket_step"):
        ResAdapterTrainConfig(min_side=20, max_side=48, bucket_step=8)
    with pytest.raises(ValueError, match="validation_resolutions"):
        ResAdapterTrainConfig(validation_resolutions=["big"])


def test_short_run_changes_exactly_the_adapter_and_writes_official_files(tiny_sd15, tmp_path):
    data = _image_folder(tmp_path / "data", SIZES)
    out = tmp_path / "out"
    trainer = _train(
        _argv(tiny_sd15, data, out, 3, "--validation_steps", "3", "--validation_resolutions", "16", "24x40")
    )
    # only sampler LoRAs + ResNet norms changed in the UNet
    base = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").state_dict()
    trained = trainer.unet.state_dict()
    assert trained.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], trained[k].to(base[k].dtype))}
    norm_keys = {k[len("unet.") :] for k in trainer.norm_keys}
    assert changed and changed <= norm_keys
    assert all(float(d.up.weight.detach().abs().max()) > 0 for d in trainer.res_lora.deltas.values())
    # the official two-file layout, with our metadata, readable by our loader with every key consumed
    lora, meta = load_weights(out / LORA_WEIGHTS_NAME)
    norms, _ = load_weights(out / NORM_WEIGHTS_NAME)
    assert meta["diffusion_adapters.kind"] == "res_adapter"
    assert meta["diffusion_adapters.min_resolution"] == "16" and meta["diffusion_adapters.max_resolution"] == "48"
    assert meta["diffusion_adapters.trained_steps"] == "3"
    assert all(k.startswith("lora_unet_") for k in lora) and set(norms) == norm_keys
    pipe = tiny_models.make_pipeline("sd15", pipeline_cls=ResAdapterPipeline)
    state = load_res_adapter(pipe, out)
    assert state.resolution_range == (16, 48)
    for key in norm_keys:
        assert torch.equal(pipe.unet.state_dict()[key], trained[key].float())
    unload_res_adapter(pipe)
    # validation images at the requested sizes
    images = sorted((out / "validation" / "step-3").glob("*.png"))
    assert [Image.open(p).size for p in images] == [(16, 16), (40, 24)]


def test_resume_matches_uninterrupted_run(tiny_sd15, tmp_path):
    data = _image_folder(tmp_path / "data", SIZES)
    straight = _train(_argv(tiny_sd15, data, tmp_path / "a", 4, "--checkpointing_steps", "100"))
    _train(_argv(tiny_sd15, data, tmp_path / "b", 2, "--checkpointing_steps", "2"))
    resumed = _train(
        _argv(tiny_sd15, data, tmp_path / "b", 4, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
    )
    a, b = straight.adapter_state_dict(), resumed.adapter_state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_miniworld_dataset_run(tiny_sd15, tmp_path):
    out = tmp_path / "mw"
    argv = _argv(tiny_sd15, tmp_path, out, 2, "--dataset", "miniworld", "--num_samples", "8")
    argv[argv.index("--train_data_dir") : argv.index("--train_data_dir") + 2] = []
    trainer = _train(argv)
    assert (out / LORA_WEIGHTS_NAME).is_file() and (out / NORM_WEIGHTS_NAME).is_file()
    assert trainer.global_step == 2


def test_sdxl_short_run(tiny_sdxl, tmp_path):
    data = _image_folder(tmp_path / "data", SIZES[:4])
    out = tmp_path / "xl"
    trainer = _train(_argv(tiny_sdxl, data, out, 2, "--max_aspect_ratio", "1.5"))
    assert trainer.is_xl and trainer.global_step == 2
    _, meta = load_weights(out / LORA_WEIGHTS_NAME)
    assert meta["diffusion_adapters.base_family"] == "sdxl"
    pipe = tiny_models.make_pipeline("sdxl")
    state = load_res_adapter(pipe, out)
    assert len(state.lora.paths) == 4 and state.resolution_range == (16, 48)
    unload_res_adapter(pipe)


def test_init_adapter_starts_from_a_saved_adapter_and_refuses_another_rank(tiny_sd15, tmp_path):
    data = _image_folder(tmp_path / "data", SIZES)
    first = _train(_argv(tiny_sd15, data, tmp_path / "a", 2))
    argv = _argv(tiny_sd15, data, tmp_path / "b", 1, "--init_adapter", str(tmp_path / "a"))
    argv[argv.index("--learning_rate") + 1] = "1e-12"
    warm = _train(argv)
    a, b = first.adapter_state_dict(), warm.adapter_state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    other_rank = _argv(tiny_sd15, data, tmp_path / "c", 1, "--init_adapter", str(tmp_path / "a"))
    rank = other_rank.index("--rank") + 1
    other_rank[rank] = str(int(other_rank[rank]) * 2)
    with pytest.raises(AdapterWeightsError, match="shape"):
        _train(other_rank)
