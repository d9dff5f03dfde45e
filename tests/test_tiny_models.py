"""The offline tiny models load with ``from_pretrained``, are structurally faithful, and build deterministically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    ControlNetModel,
    MotionAdapter,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    T2IAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D
from PIL import Image
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from tests import tiny_models


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _load(cls, path, **kwargs):
    pipe = cls.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd15_pipe(tiny_sd15):
    return _load(StableDiffusionPipeline, tiny_sd15)


def test_sd15_layout_and_structure(tiny_sd15, sd15_pipe):
    index = json.loads((tiny_sd15 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for sub, files in {
        "unet": ["config.json", "diffusion_pytorch_model.safetensors"],
        "vae": ["config.json", "diffusion_pytorch_model.safetensors"],
        "text_encoder": ["config.json", "model.safetensors"],
        "tokenizer": ["vocab.json", "merges.txt", "tokenizer_config.json"],
        "scheduler": ["scheduler_config.json"],
    }.items():
        for f in files:
            assert (tiny_sd15 / sub / f).is_file(), f"{sub}/{f} missing"

    unet = sd15_pipe.unet
    assert sd15_pipe.vae_scale_factor == tiny_models.VAE_SCALE_FACTOR == 2
    assert unet.config.cross_attention_dim == sd15_pipe.text_encoder.config.hidden_size == 32
    assert not unet.config.use_linear_projection
    assert sd15_pipe.scheduler.config.prediction_type == "epsilon"
    n_down = sum(isinstance(m, Downsample2D) for m in unet.modules())
    n_up = sum(isinstance(m, Upsample2D) for m in unet.modules())
    assert n_down == n_up == 2 and 2**n_down == tiny_models.UNET_DOWNSAMPLE_FACTOR
    names = [n for n, _ in unet.named_modules()]
    assert any(n.endswith("attn1") for n in names) and any(n.endswith("attn2") for n in names)
    assert any(n.startswith("up_blocks.") and n.endswith("attn1") for n in names)


def test_sd15_txt2img_square_and_non_square(sd15_pipe):
    out = sd15_pipe("a red cube", num_inference_steps=2, height=32, width=32, generator=_gen(), output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
    again = sd15_pipe("a red cube", num_inference_steps=2, height=32, width=32, generator=_gen(), output_type="np")
    np.testing.assert_array_equal(out.images, again.images)
    image = sd15_pipe("a blue sphere", num_inference_steps=2, height=32, width=48, generator=_gen()).images[0]
    assert image.size == (48, 32)
    # The default resolution is unet.sample_size * vae_scale_factor = 32 px.
    assert sd15_pipe("a cube", num_inference_steps=1, generator=_gen()).images[0].size == (32, 32)


def test_tokenizer(tiny_sd15, sd15_pipe):
    tok = CLIPTokenizer.from_pretrained(tiny_sd15, subfolder="tokenizer")
    assert tok.model_max_length == tiny_models.TOKENIZER_MODEL_MAX_LENGTH == 77
    assert len(tok) == tiny_models.TOKENIZER_VOCAB_SIZE == sd15_pipe.text_encoder.config.vocab_size
    vocab = json.loads((tiny_sd15 / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == len(tok) and 256 * 2 < len(vocab) < 1000

    prompt = "a photo of a red cube and a blue sphere on the table"
    ids = tok(prompt).input_ids
    assert ids[0] == tok.bos_token_id == vocab["<|startoftext|>"]
    assert ids[-1] == tok.eos_token_id == vocab["<|endoftext|>"] == sd15_pipe.text_encoder.config.eos_token_id
    assert len(ids) == len(prompt.split()) + 2  # common words are single tokens
    assert tok.decode(ids, skip_special_tokens=True) == prompt

    # Arbitrary text never crashes and never needs the unknown token (byte-level fallback).
    odd = "Ünïcödé 日本語 🙂 tabs\tand\nnewlines, digits 12345 & symbols #@!"
    odd_ids = tok(odd).input_ids
    assert tok.unk_token_id not in odd_ids[1:-1]
    assert tok.decode(odd_ids, skip_special_tokens=True).replace(" ", "") == " ".join(odd.lower().split()).replace(
        " ", ""
    )

    padded = tok(["a cube", "word " * 200], padding="max_length", truncation=True, max_length=tok.model_max_length)
    assert all(len(x) == 77 for x in padded.input_ids)
    assert padded.input_ids[1][-1] == tok.eos_token_id


def test_sd21_v_prediction(tiny_sd21):
    pipe = _load(StableDiffusionPipeline, tiny_sd21)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.use_linear_projection
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 64
    assert pipe.unet.config.cross_attention_dim != tiny_models.SD15_UNET_CONFIG["cross_attention_dim"]
    assert pipe.tokenizer.pad_token == "!"
    image = pipe("a green cone", num_inference_steps=2, height=32, width=48, generator=_gen()).images[0]
    assert image.size == (48, 32)


def test_sdxl_pooled_and_time_ids(tiny_sdxl):
    pipe = _load(StableDiffusionXLPipeline, tiny_sdxl)
    unet, te, te2 = pipe.unet, pipe.text_encoder, pipe.text_encoder_2
    assert isinstance(te2, CLIPTextModelWithProjection)
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.cross_attention_dim == te.config.hidden_size + te2.config.hidden_size
    assert (
        unet.config.projection_class_embeddings_input_dim
        == 6 * unet.config.addition_time_embed_dim + te2.config.projection_dim
    )
    assert pipe.tokenizer_2 is not None and pipe.tokenizer_2.model_max_length == 77

    seen = {}

    def spy(module, args, kwargs):
        seen.update(kwargs["added_cond_kwargs"])

    handle = unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        image = pipe("a red cube", num_inference_steps=2, height=32, width=48, generator=_gen()).images[0]
    finally:
        handle.remove()
    assert image.size == (48, 32)
    assert seen["text_embeds"].shape[-1] == te2.config.projection_dim
    assert seen["time_ids"].shape[-1] == 6


def test_animatediff_four_frames(tiny_animatediff):
    adapter = MotionAdapter.from_pretrained(tiny_animatediff / "motion_adapter")
    assert tuple(adapter.config.block_out_channels) == tuple(tiny_models.SD15_UNET_CONFIG["block_out_channels"])
    pipe = _load(AnimateDiffPipeline, tiny_animatediff, motion_adapter=adapter)
    assert isinstance(pipe.unet, UNetMotionModel)
    frames = pipe("a red ball moving", num_frames=4, num_inference_steps=2, height=32, width=32, generator=_gen())
    assert len(frames.frames[0]) == 4 and frames.frames[0][0].size == (32, 32)
    assert isinstance(tiny_models.tiny_motion_unet(), UNetMotionModel)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "animatediff"])
def test_build_is_deterministic(tmp_path, name):
    before = torch.get_rng_state()
    a = tiny_models.save_tiny_model(tmp_path / "a", name)
    b = tiny_models.save_tiny_model(tmp_path / "b", name)
    assert torch.equal(torch.get_rng_state(), before), "building must not disturb the caller's RNG"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(f.suffix == ".safetensors" for f in files)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{f} differs between two builds"


def test_cache_and_in_memory_builders_match_disk(tmp_path):
    a = tiny_models.save_tiny_model(tmp_path / "a", "sd15")
    cached = tiny_models.tiny_sd15_path()
    assert tiny_models.tiny_sd15_path() == cached
    # The AnimateDiff base is the SD 1.5-like model (only the scheduler differs).
    name = "diffusion_pytorch_model.safetensors"
    assert (tiny_models.tiny_animatediff_path() / "unet" / name).read_bytes() == (a / "unet" / name).read_bytes()
    config = json.loads((cached / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and "local_files_only" not in config
    for sub in ("unet", "vae"):
        name = "diffusion_pytorch_model.safetensors"
        assert (cached / sub / name).read_bytes() == (a / sub / name).read_bytes()

    # In-memory builders equal the saved weights.
    unet = UNet2DConditionModel.from_pretrained(a, subfolder="unet")
    fresh = tiny_models.build_sd15_components()["unet"]
    for (k1, v1), (k2, v2) in zip(unet.state_dict().items(), fresh.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    vae = AutoencoderKL.from_pretrained(a, subfolder="vae")
    assert 2 ** (len(vae.config.block_out_channels) - 1) == tiny_models.VAE_SCALE_FACTOR


@pytest.mark.parametrize("kind", ["full_adapter", "full_adapter_xl"])
def test_t2i_adapter_residuals_match_unet(kind, tiny_sd15, tiny_sdxl):
    adapter = T2IAdapter.from_pretrained(tiny_models.tiny_t2i_adapter_path(kind))
    base = tiny_sdxl if kind.endswith("xl") else tiny_sd15
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    h, w = 32, 48
    latents = torch.randn(1, 4, h // 2, w // 2, generator=_gen())
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=_gen(1))
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled_dim, generator=_gen(2)),
            "time_ids": torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32),
        }
    with torch.no_grad():
        features = adapter(torch.rand(1, 3, h, w, generator=_gen(3)))
        assert len(features) == len(tiny_models.T2I_ADAPTER_CONFIGS[kind]["channels"])
        residuals = list(features)
        with_adapter = unet(latents, 10, text, down_intrablock_additional_residuals=residuals, **kwargs).sample
        assert residuals == [], f"{len(residuals)} adapter residuals were not consumed by the UNet"
        without = unet(latents, 10, text, **kwargs).sample
    assert with_adapter.shape == without.shape == latents.shape
    assert not torch.allclose(with_adapter, without)


def test_controlnet_pipeline(tiny_sd15, tiny_controlnet):
    controlnet = ControlNetModel.from_pretrained(tiny_controlnet)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    remade = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=tiny_models.CONTROLNET_CONDITIONING_EMBEDDING_CHANNELS
    )
    assert {k: v.shape for k, v in remade.state_dict().items()} == {
        k: v.shape for k, v in controlnet.state_dict().items()
    }
    pipe = _load(StableDiffusionControlNetPipeline, tiny_sd15, controlnet=controlnet)
    red = Image.new("RGB", (48, 32), (255, 0, 0))
    blue = Image.new("RGB", (48, 32), (0, 0, 255))
    common = {"num_inference_steps": 2, "height": 32, "width": 48, "output_type": "np"}
    out_red = pipe("a cube", image=red, generator=_gen(), **common).images
    out_blue = pipe("a cube", image=blue, generator=_gen(), **common).images
    assert out_red.shape == (1, 32, 48, 3)
    assert not np.allclose(out_red, out_blue), "the control image must change the output"


def test_make_pipeline_names():
    assert set(tiny_models.PIPELINE_NAMES) >= {"sd15", "sd21", "sdxl", "animatediff", "controlnet", "t2i_adapter"}
    pipe = tiny_models.make_pipeline("controlnet_xl")
    image = pipe("a cube", image=Image.new("RGB", (32, 32)), num_inference_steps=2, generator=_gen()).images[0]
    assert image.size == (32, 32)
    with pytest.raises(ValueError, match="name"):
        tiny_models.make_pipeline("sd3")


def test_ip_adapter_loads_into_tiny_pipelines(tiny_sd15, tiny_ip_adapter):
    pipe = _load(StableDiffusionPipeline, tiny_sd15)
    sub, weight_name = tiny_models.IP_ADAPTER_WEIGHTS["sd15"]
    pipe.load_ip_adapter(tiny_ip_adapter, subfolder=sub, weight_name=weight_name)
    assert pipe.image_encoder is not None
    image = Image.new("RGB", (64, 64), (255, 0, 0))
    common = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np", "ip_adapter_image": image}
    pipe.set_ip_adapter_scale(1.0)
    on = pipe("a cube", generator=_gen(), **common).images
    pipe.set_ip_adapter_scale(0.0)
    off = pipe("a cube", generator=_gen(), **common).images
    assert on.shape == (1, 32, 32, 3) and not np.allclose(on, off)
    for base in ("sd21", "sdxl"):
        state = tiny_models.build_ip_adapter_state_dict(base)
        cross = tiny_models.UNET_CONFIGS[base]["cross_attention_dim"]
        assert state["image_proj.proj.weight"].shape == (tiny_models.IP_ADAPTER_NUM_TOKENS * cross, 32)


def test_cache_is_atomic_and_reused(tmp_path):
    calls = []

    def failing(directory):
        (directory / "partial.json").write_text("{}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_models._cached_build("thing", {"v": 1}, failing, root=tmp_path)
    assert list(tmp_path.iterdir()) == [], "a failed build must leave nothing behind"

    def build(directory):
        calls.append(directory)
        (directory / "config.json").write_text("{}")

    first = tiny_models._cached_build("thing", {"v": 1}, build, root=tmp_path)
    second = tiny_models._cached_build("thing", {"v": 1}, build, root=tmp_path)
    other = tiny_models._cached_build("thing", {"v": 2}, build, root=tmp_path)
    assert first == second != other and len(calls) == 2
    assert (first / "config.json").is_file() and first.name.startswith("thing-")
