"""``pipelines.embedded``: the registry of shipped models, its placeholders, asset discovery and examples."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import embedded


@pytest.fixture
def empty_assets(tmp_path, monkeypatch):
    folder = tmp_path / "assets"
    folder.mkdir()
    monkeypatch.setenv(embedded.ASSETS_ENV, str(folder))
    monkeypatch.delenv(embedded.PLACEHOLDER_ENV, raising=False)
    return folder


def test_missing_assets_are_reported_as_placeholders(empty_assets):
    for name in embedded.EMBEDDED_NAMES:
        info = embedded.embedded_info(name)
        assert info.is_placeholder and "base" in info.placeholders
        assert "untrained placeholder weights" in info.label
    assert embedded.embedded_info("i2v").placeholders == ["base", "motion_adapter", "i2v_adapter"]
    with pytest.raises(ValueError, match="`name` must be one of"):
        embedded.embedded_info("video")


def test_placeholder_base_is_deterministic_and_loads(tmp_path, monkeypatch):
    first = embedded.placeholder_base_path()
    assert first == embedded.placeholder_base_path()  # cached
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    second = embedded.placeholder_base_path()
    assert second != first
    from safetensors.torch import load_file

    for part in ("unet", "vae", "text_encoder"):
        (a,) = (first / part).glob("*.safetensors")
        (b,) = (second / part).glob("*.safetensors")
        sa, sb = load_file(a), load_file(b)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (second / "motion_adapter" / "config.json").is_file()


def test_load_embedded_base_runs_offline(empty_assets):
    pipe = embedded.load_embedded("base", device="cpu", progress_bar=False)
    assert pipe.embedded_info.is_placeholder
    image = pipe("a red cube", num_inference_steps=1, height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_trained_assets_are_used_when_present(empty_assets):
    """A base folder + a ResAdapter in assets/ are loaded instead of placeholders."""
    from diffusers import UNet2DConditionModel

    from adapters.res_adapter import get_res_adapter, init_res_adapter, save_res_adapter

    shutil.copytree(embedded.placeholder_base_path(), empty_assets / "base")
    unet = UNet2DConditionModel.from_pretrained(empty_assets / "base", subfolder="unet")
    state = init_res_adapter(unet)
    with torch.no_grad():
        for param in state.trainable_parameters():
            param.add_(0.01)
    save_res_adapter(unet, empty_assets / "res_adapter")

    info = embedded.embedded_info("res")
    assert not info.is_placeholder and info.parts["res_adapter"] == str(empty_assets / "res_adapter")
    assert "trained weights" in info.label
    pipe = embedded.load_embedded("res", device="cpu", progress_bar=False)
    assert get_res_adapter(pipe) is not None
    from pipelines import tasks

    (label_res, with_res), (label_base, base) = tasks.any_resolution(
        pipe, "a cube", height=64, width=128, num_inference_steps=2
    )
    assert with_res.size == base.size == (128, 64) and "ResAdapter" in label_res and "Base" in label_base
    assert not np.array_equal(np.asarray(with_res), np.asarray(base))  # the adapter acts; off == base
    (_, again), _ = tasks.any_resolution(pipe, "a cube", height=64, width=128, num_inference_steps=2)
    assert np.array_equal(np.asarray(with_res), np.asarray(again))  # scales restored after the base run
    assert embedded.embedded_info("mv").placeholders == ["mv_adapter"]

    # the placeholder switch ignores the assets
    import os

    os.environ[embedded.PLACEHOLDER_ENV] = "1"
    try:
        assert embedded.embedded_info("res").placeholders == ["base", "res_adapter"]
    finally:
        del os.environ[embedded.PLACEHOLDER_ENV]


def test_load_pipeline_with_user_base(empty_assets, tiny_sd15):
    pipe = embedded.load_pipeline("hipa", base=tiny_sd15, device="cpu", progress_bar=False)
    assert pipe.embedded_info.parts["base"] == str(tiny_sd15)
    assert pipe.embedded_info.placeholders == ["hipa"]
    assert pipe("a cube", height=32, width=32).images[0].size == (32, 32)


def test_examples_manifest_and_fallback(empty_assets):
    drawn = embedded.example_entries()
    assert len(drawn) == 3 and all(e["image"].is_file() and e["prompt"] for e in drawn)

    folder = empty_assets / "examples"
    (folder / "toy_mv").mkdir(parents=True)
    Image.new("RGB", (16, 16), "red").save(folder / "toy.png")
    Image.new("RGB", (16, 16), "blue").save(folder / "toy_front.png")
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(folder / "toy_mv" / f"position_{i:02d}.png")
        Image.new("RGB", (16, 16), (0, i * 80, 0)).save(folder / "toy_mv" / f"normal_{i:02d}.png")
    manifest = {
        "examples": [
            {"name": "toy", "caption": "a toy", "image": "toy.png", "front_view": "toy_front.png"},
            {"caption": "missing", "image": "nope.png"},
        ]
    }
    (folder / "examples.json").write_text(json.dumps(manifest))
    (entry,) = embedded.example_entries()
    assert entry["prompt"] == "a toy" and entry["front_view"].name == "toy_front.png"
    assert Image.open(entry["position_map"]).size == (48, 16)
    assert embedded.example_images() == [(folder / "toy.png", "a toy")]

    (folder / "examples.json").write_text(json.dumps([{"image": "toy.png", "prompt": "list form"}]))
    assert embedded.example_images() == [(folder / "toy.png", "list form")]


def test_device_and_dtype_resolution():
    device, dtype = embedded.resolve_device_dtype("cpu", None)
    assert device.type == "cpu" and dtype == torch.float32
    assert embedded.resolve_device_dtype("cpu", "fp16")[1] == torch.float16
    assert embedded.default_dtype("cuda") == torch.float16
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        embedded.resolve_device_dtype("cpu", "int8")


def _random_lora(folder, seed: int):
    from diffusers import UNet2DConditionModel

    from adapters.hipa.config import HiPAConfig
    from adapters.hipa.loader import add_hipa_lora, hipa_lora_state_dict, save_hipa_lora

    unet = UNet2DConditionModel.from_pretrained(embedded.placeholder_base_path(), subfolder="unet")
    config = HiPAConfig.attention_only(rank=4)
    add_hipa_lora(unet, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    save_hipa_lora(folder, hipa_lora_state_dict(unet), config)
    return folder


def test_one_step_tab_with_hipa_and_few_step_loras(empty_assets, tmp_path):
    """A HiPA LoRA changes the one-step image; an LCM LoRA given by flag is used for the LCM comparison only, and
    every LoRA weight is restored after each request."""
    import app

    hipa = _random_lora(tmp_path / "hipa", 0)
    lcm = _random_lora(tmp_path / "lcm", 1)
    args = app.parse_args(["--hipa-lora", str(hipa), "--few-step-lora", f"lcm={lcm}", "--output-dir", str(tmp_path)])
    demo_app = app.DemoApp(app.config_from_args(args))
    compare = ["Base, 1 step, no LoRA", "LCM sampler, 4 steps", "TCD sampler, 4 steps"]

    def run():
        gallery, _, _ = demo_app.one_step(
            prompt="a cube",
            negative_prompt="",
            seed=3,
            randomize=False,
            compare=compare,
            height=64,
            width=64,
            steps=1,
            guidance=1.0,
            lora_scale=1.0,
            teacher_steps=2,
            teacher_guidance=7.5,
            progress=None,
        )
        return [(caption, np.asarray(image)) for image, caption in gallery]

    first = run()
    captions = [c for c, _ in first]
    assert captions[0].startswith("HiPA, 1 step ·")  # a HiPA LoRA is loaded
    assert captions[2].startswith("LCM sampler, 4 steps ·") and "(sampler only)" in captions[3]
    assert not np.array_equal(first[0][1], first[1][1])  # HiPA LoRA on vs off
    second = run()
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, second))
    with pytest.raises(SystemExit, match="PRESET=PATH"):
        app.config_from_args(app.parse_args(["--few-step-lora", "lcm"]))
