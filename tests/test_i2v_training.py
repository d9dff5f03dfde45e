"""I2V-Adapter training: video data, clean first frame + masked loss, a short run that changes only the adapter,
resume, validation videos, content adapter."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from PIL import Image

from adapters.i2v_adapter import load_i2v_adapter
from adapters.weights import load_weights
from pipelines.pipeline_i2v_adapter import export_to_gif
from training.core import main
from training.train_i2v_adapter import (
    I2VAdapterTrainConfig,
    I2VAdapterTrainer,
    VideoFolderDataset,
    collate,
    pick_captions,
    sample_frame_indices,
)


def _frames(n: int, h: int, w: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w, 3))
    return [Image.fromarray(np.roll(base, 2 * i, axis=1).astype(np.uint8)) for i in range(n)]


def _video_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    export_to_gif(_frames(7, 20, 28, 0), root / "a.gif")
    export_to_gif(_frames(3, 24, 24, 1), root / "b.gif")  # shorter than num_frames * stride
    frames_dir = root / "c"
    frames_dir.mkdir()
    for i, frame in enumerate(_frames(6, 16, 16, 2)):
        frame.save(frames_dir / f"{i:03d}.png")
    rows = [{"file_name": "a.gif", "text": "a red cube"}, {"video": "b.gif", "caption": "a blue ball"}]
    rows.append({"file_name": "c", "text": "a green cone"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def test_frame_indices_stride_and_short_videos():
    assert sample_frame_indices(20, 4, 3) == [0, 3, 6, 9]
    rng = random.Random(0)
    for _ in range(20):
        idx = sample_frame_indices(20, 4, 3, rng)
        assert np.diff(idx).tolist() == [3, 3, 3] and 0 <= idx[0] and idx[-1] < 20
    assert sample_frame_indices(7, 4, 4) == [0, 2, 4, 6]  # stride shrunk to fit
    assert sample_frame_indices(2, 4, 2) == [0, 1, 1, 1]  # too short: last frame repeated


def test_video_folder_dataset(tmp_path):
    root = _video_folder(tmp_path / "videos")
    ds = VideoFolderDataset(root, num_frames=3, frame_stride=2, size=(16, 24))
    assert len(ds) == 3
    texts = []
    for i in range(3):
        item = ds[i]
        assert item["pixel_values"].shape == (3, 3, 16, 24)
        assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
        texts.append(item["text"])
    assert texts == ["a red cube", "a blue ball", "a green cone"]
    # sidecar captions when there is no metadata.jsonl
    (root / "metadata.jsonl").unlink()
    (root / "a.txt").write_text("sidecar caption")
    ds = VideoFolderDataset(root, num_frames=2, frame_stride=1, size=(16, 16))
    assert [e[1] for e in ds.entries] == ["sidecar caption", "", ""]
    with pytest.raises(ValueError, match="No videos"):
        (tmp_path / "empty").mkdir()
        VideoFolderDataset(tmp_path / "empty", num_frames=2)


def test_pick_captions_mixes_full_motion_word_and_empty():
    texts, motions = ["a red cube, spinning"] * 2000, ["spinning"] * 2000
    picked = pick_captions(texts, motions, random.Random(0), dropout=0.1, motion_only=0.3)
    shares = {c: picked.count(c) / len(picked) for c in ("", "spinning", "a red cube, spinning")}
    assert abs(shares[""] - 0.1) < 0.03 and abs(shares["spinning"] - 0.3) < 0.03
    assert abs(shares["a red cube, spinning"] - 0.6) < 0.03
    # without motion words (folder data) only the dropout applies
    plain = pick_captions(texts, None, random.Random(0), dropout=0.0, motion_only=0.3)
    assert plain == texts


def test_miniworld_batches_carry_the_motion_word():
    from training.miniworld import VideoDataset
    from training.miniworld.scene import MOTIONS

    data = VideoDataset(2, 16, length=2, seed=0)
    batch = collate([data[0], data[1]])
    assert batch["motion_text"] == [MOTIONS[data[i]["motion"]] for i in range(2)]
    assert all(t.endswith(m) for t, m in zip(batch["text"], batch["motion_text"]))


def test_config_checks():
    with pytest.raises(ValueError, match="motion_caption"):
        I2VAdapterTrainConfig(pretrained_model_name_or_path="x", train_data_dir="d", motion_caption=0.5)
    with pytest.raises(ValueError, match="motion_caption"):
        I2VAdapterTrainConfig(pretrained_model_name_or_path="x", dataset="miniworld", motion_caption=1.5)
    with pytest.raises(ValueError, match="num_frames"):
        I2VAdapterTrainConfig(pretrained_model_name_or_path="x", train_data_dir="d", num_frames=1)
    with pytest.raises(ValueError, match="image_encoder_path"):
        I2VAdapterTrainConfig(pretrained_model_name_or_path="x", train_data_dir="d", content_adapter=True)


def _argv(base: Path, data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(base),
        "--train_data_dir", str(data),
        "--output_dir", str(out),
        "--max_train_steps", str(steps),
        "--num_frames", "3",
        "--frame_stride", "2",
        "--resolution", "16",
        "--train_batch_size", "1",
        "--learning_rate", "1e-2",
        "--report_to", "none",
        "--seed", "0",
        "--mixed_precision", "no",
        "--caption_dropout", "0",
        *extra,
    ]  # fmt: skip


def _base_unet(base: Path) -> UNetMotionModel:
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    return UNetMotionModel.from_unet2d(unet, MotionAdapter.from_pretrained(base / "motion_adapter"))


def test_short_run_trains_only_the_adapter(tiny_animatediff, tmp_path):
    data = _video_folder(tmp_path / "videos")
    out = tmp_path / "run"
    argv = _argv(tiny_animatediff, data, out, 2, "--validation_steps", "2", "--validation_prompts", "a red cube")
    argv += ["--validation_inference_steps", "2", "--checkpointing_steps", "1"]
    trainer = main(I2VAdapterTrainer, argv)

    # every trainable tensor is an adapter projection, and nothing else in the UNet changed
    names = [n for n, _ in trainer._trainable]
    assert names and all(".to_q_i2v." in n or ".to_out_i2v." in n for n in names)
    original = _base_unet(tiny_animatediff).state_dict()
    trained = trainer.unet.state_dict()
    adapter_keys = {k for k in trained if ".processor." in k}
    assert set(trained) - adapter_keys == set(original)
    for key, value in original.items():
        assert torch.equal(trained[key].cpu(), value), key
    assert all(
        trainer.unet.get_submodule(p).processor.to_out_i2v.weight.abs().sum() > 0 for p in trainer.adapter.processors
    )

    # the saved file holds only the adapter and loads into a pipeline's UNet
    sd, meta = load_weights(out / "adapter_model.safetensors")
    assert meta["diffusion_adapters.kind"] == "i2v_adapter" and meta["diffusion_adapters.trained_steps"] == "2"
    assert set(sd) == set(trainer.adapter.expected_shapes())
    fresh = _base_unet(tiny_animatediff)
    loaded = load_i2v_adapter(fresh, out / "adapter_model.safetensors")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, sd[key])

    # validation video written
    assert (out / "validation" / "step-2" / "video-0.gif").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_resume_matches_uninterrupted(tiny_animatediff, tmp_path):
    data = _video_folder(tmp_path / "videos")
    full = main(I2VAdapterTrainer, _argv(tiny_animatediff, data, tmp_path / "full", 2))
    part = tmp_path / "part"
    main(I2VAdapterTrainer, _argv(tiny_animatediff, data, part, 1, "--checkpointing_steps", "1"))
    resumed = main(I2VAdapterTrainer, _argv(tiny_animatediff, data, part, 2, "--resume_from_checkpoint", "latest"))
    a, b = full.adapter.state_dict(), resumed.adapter.state_dict()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_content_adapter_run(tiny_animatediff, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            projection_dim=24,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )
    )
    encoder.save_pretrained(tmp_path / "image_encoder")
    data = _video_folder(tmp_path / "videos")
    out = tmp_path / "run"
    argv = _argv(
        tiny_animatediff, data, out, 1, "--content_adapter", "--image_encoder_path", str(tmp_path / "image_encoder")
    )
    trainer = main(I2VAdapterTrainer, argv + ["--image_dropout", "0"])
    names = [n for n, _ in trainer._trainable]
    assert any(".to_k_ip." in n for n in names) and any(n.startswith("unet.encoder_hid_proj.") for n in names)
    assert not any(p.requires_grad for p in trainer.image_encoder.parameters())
    sd, meta = load_weights(out / "adapter_model.safetensors")
    assert meta["diffusion_adapters.content_image_embed_dim"] == "24"
    to_v = [v for k, v in sd.items() if k.endswith("to_v_ip.weight")]
    assert to_v and all(v.abs().sum() > 0 for v in to_v)  # trained away from the zero init
    loaded = load_i2v_adapter(_base_unet(tiny_animatediff), out / "adapter_model.safetensors")
    assert loaded.content is not None


def test_miniworld_clips(tiny_animatediff, tmp_path):
    out = tmp_path / "mw"
    argv = _argv(
        tiny_animatediff, tmp_path, out, 1, "--dataset", "miniworld", "--num_samples", "2", "--motion_caption", "0.5"
    )
    trainer = main(I2VAdapterTrainer, argv)
    assert trainer.global_step == 1 and (out / "adapter_model.safetensors").is_file()


def test_training_first_frame_is_the_pipeline_s_clean_latent(tiny_animatediff, tmp_path):
    """Frame 0 enters the UNet in training exactly as the pipeline encodes the input image (posterior mean)."""
    out = tmp_path / "ff"
    trainer = main(I2VAdapterTrainer, _argv(tiny_animatediff, tmp_path, out, 1, "--dataset", "miniworld"))
    batch = collate([trainer.train_dataloader.dataset[0]])
    seen = []
    handle = trainer.unet.register_forward_pre_hook(
        lambda m, a, k: seen.append(k.get("sample", a[0] if a else None)), with_kwargs=True
    )
    try:
        trainer.compute_loss(batch)
    finally:
        handle.remove()
    with torch.no_grad():
        first = batch["pixel_values"][:, 0].to(trainer.device)
        expected = trainer.vae.encode(first).latent_dist.mean * trainer.vae.config.scaling_factor
    torch.testing.assert_close(seen[0][:, :, 0], expected)
