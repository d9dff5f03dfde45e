"""HiPAPipeline: one-step sampling, presets and diffusers-format LoRA loading on the tiny SD 1.5 / 2.1 / SDXL models."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers
from safetensors.torch import load_file, safe_open

from adapters.hipa import (
    HiPAConfig,
    add_hipa_lora,
    hipa_lora_state_dict,
    last_timestep,
    predict_x0,
    save_hipa_lora,
)
from adapters.weights import AdapterWeightsError, base_family
from pipelines.pipeline_hipa import HiPAPipeline, HiPASDPipeline, HiPAXLPipeline

SIZE = 32  # pixels; latents are 4 x 16 x 16 (tiny VAEs downsample by 2)


def _load(path, cls=HiPAPipeline, **kwargs):
    if cls is HiPAPipeline or cls is HiPASDPipeline or cls is StableDiffusionPipeline:
        if "xl" not in str(path).lower():
            kwargs.setdefault("safety_checker", None)
            kwargs.setdefault("requires_safety_checker", False)
    pipe = cls.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, seed=0, **kwargs):
    kwargs.setdefault("height", SIZE)
    kwargs.setdefault("width", SIZE)
    return pipe("a red cube", generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images


def _randomize_lora(unet, seed=0, std=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


@pytest.fixture(scope="module")
def bases(tiny_sd15, tiny_sd21, tiny_sdxl):
    return {"sd15": tiny_sd15, "sd21": tiny_sd21, "sdxl": tiny_sdxl}


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl"])
def test_one_step_shapes_ranges_and_closed_form(bases, name):
    pipe = _load(bases[name])
    assert isinstance(pipe, HiPAXLPipeline if name == "sdxl" else HiPASDPipeline)
    images = pipe(
        ["a red cube", "a blue ball"],
        height=SIZE,
        width=SIZE,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert images.shape == (4, 3, SIZE, SIZE)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1

    # The one-step sample is the closed-form x0 of one UNet call at t = T-1 on the same noise.
    steps = []
    latents = _latents(pipe, callback_on_step_end=lambda p, i, t, kw: steps.append(int(t)) or {})
    assert steps == [last_timestep(pipe.scheduler)] == [999]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    if name == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt("a red cube", do_classifier_free_guidance=False)
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=embeds.dtype)
        added = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    else:
        embeds, _ = pipe.encode_prompt("a red cube", "cpu", 1, False)
        added = {}
    t = torch.tensor(999)
    with torch.no_grad():
        out = pipe.unet(noise, t, encoder_hidden_states=embeds, return_dict=False, **added)[0]
    expected = predict_x0(out, noise, t, pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type)
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if name == "sd21" else "epsilon")
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_zero_lora_is_bitwise_base_and_scale(bases, name):
    pipe = _load(bases[name])
    base = _latents(pipe)
    trainable = add_hipa_lora(pipe.unet, HiPAConfig(rank=4))
    assert trainable and all(".lora_" in n for n in trainable)
    assert torch.equal(_latents(pipe), base)  # B is zero-initialised
    _randomize_lora(pipe.unet)
    adapted = _latents(pipe)
    assert not torch.allclose(adapted, base)
    pipe.set_hipa_lora_scale(0.0)
    assert torch.equal(_latents(pipe), base)
    pipe.set_hipa_lora_scale(1.0)
    assert torch.equal(_latents(pipe), adapted)


def test_trainer_lora_loads_in_stock_diffusers(bases, tmp_path):
    # What the trainer does: peft LoRA on the UNet, saved with our save_hipa_lora (diffusers format + metadata).
    pipe = _load(bases["sd15"])
    config = HiPAConfig(rank=4, alpha=2.0)  # alpha != rank: rank/alpha must come from the file's metadata
    add_hipa_lora(pipe.unet, config)
    _randomize_lora(pipe.unet, seed=1)
    expected = _latents(pipe)
    file = save_hipa_lora(tmp_path / "lora", hipa_lora_state_dict(pipe.unet), config, family="sd1")
    assert file.name == "pytorch_lora_weights.safetensors"
    with safe_open(str(file), "pt") as handle:
        header = handle.metadata()
    assert header["diffusion_adapters.kind"] == "hipa" and header["diffusion_adapters.base_family"] == "sd1"
    assert "lora_adapter_metadata" in header
    assert all(k.startswith("unet.") and ".lora_" in k for k in load_file(str(file)))

    stock = _load(bases["sd15"], cls=StableDiffusionPipeline)
    stock.load_lora_weights(tmp_path / "lora", adapter_name="hipa")
    peft_config = stock.unet.peft_config["hipa"]
    assert peft_config.r == 4 and peft_config.lora_alpha == 2.0
    stock_keys = {k for k in stock.unet.state_dict() if ".lora_" in k}
    ours_keys = {k for k in pipe.unet.state_dict() if ".lora_" in k}
    assert stock_keys == ours_keys  # every saved key consumed, same modules adapted
    wrapped = HiPAPipeline.from_pipe(stock)
    wrapped.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_latents(wrapped), expected, atol=1e-6, rtol=1e-6)


def test_stock_format_lora_loads_in_hipa_pipeline(bases, tmp_path):
    # A LoRA saved the way diffusers' train_text_to_image_lora.py does (old diffusers keys, no metadata).
    donor = _load(bases["sd15"], cls=StableDiffusionPipeline)
    add_hipa_lora(donor.unet, HiPAConfig.attention_only(rank=4))
    _randomize_lora(donor.unet, seed=2)
    state_dict = convert_state_dict_to_diffusers(hipa_lora_state_dict(donor.unet))
    assert any(".lora.down." in k for k in state_dict)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "stock", unet_lora_layers=state_dict)

    pipe = _load(bases["sd15"])
    base = _latents(pipe)
    pipe.load_hipa_lora(tmp_path / "stock", scale=1.0)
    adapted = _latents(pipe)
    assert not torch.allclose(adapted, base)
    pipe.set_hipa_lora_scale(0.5)
    half = _latents(pipe)
    assert not torch.allclose(half, adapted) and not torch.allclose(half, base)

    # HiPAPipeline.from_pretrained(..., hipa_lora=...) gives the same result.
    direct = _load(bases["sd15"], hipa_lora=tmp_path / "stock", hipa_lora_scale=0.5)
    torch.testing.assert_close(_latents(direct), half)
    with pytest.raises(ValueError, match="adapter_name"):
        direct.load_hipa_lora(tmp_path / "stock")  # "hipa" is taken
    with pytest.raises(FileNotFoundError):
        direct.load_hipa_lora(tmp_path / "missing", adapter_name="other")


def test_bad_lora_is_refused_and_pipeline_untouched(bases, tmp_path):
    # An SD 1.5 LoRA into the SDXL-like model: refused by family metadata and by shapes; nothing changes.
    sd = _load(bases["sd15"])
    config = HiPAConfig(rank=2)
    add_hipa_lora(sd.unet, config)
    _randomize_lora(sd.unet)
    save_hipa_lora(tmp_path / "sd1", hipa_lora_state_dict(sd.unet), config, family=base_family(sd.unet))

    xl = _load(bases["sdxl"])
    before = {k: v.clone() for k, v in xl.unet.state_dict().items()}
    with pytest.raises(AdapterWeightsError, match="sd1"):
        xl.load_hipa_lora(tmp_path / "sd1")
    # Same tensors without our metadata: caught by the shape / module validation.
    state_dict = load_file(str(tmp_path / "sd1" / "pytorch_lora_weights.safetensors"))
    with pytest.raises(AdapterWeightsError, match="do not fit"):
        xl.load_hipa_lora(state_dict)
    assert not getattr(xl.unet, "peft_config", None)
    after = xl.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _kohya_lora(unet, rank=4, seed=0, targets=("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")):
    """A random kohya-layout UNet LoRA (``lora_unet_<path>.lora_down/lora_up/alpha``), the layout of the published
    LCM-LoRA / TCD / Lightning / Hyper-SD files; includes the conv ``proj_in`` / ``proj_out`` when they are convs."""
    gen = torch.Generator().manual_seed(seed)
    state_dict = {}
    for path, module in unet.named_modules():
        is_target = any(path.endswith(t) for t in targets) or path.endswith(("proj_in", "proj_out"))
        if not is_target or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        if "transformer_blocks" not in path and not path.endswith(("proj_in", "proj_out")):
            continue
        key = "lora_unet_" + path.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        else:
            down, up = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        state_dict[f"{key}.lora_down.weight"] = torch.randn(down, generator=gen) * 0.05
        state_dict[f"{key}.lora_up.weight"] = torch.randn(up, generator=gen) * 0.05
        state_dict[f"{key}.alpha"] = torch.tensor(float(rank))
    return state_dict


@pytest.mark.parametrize(
    ("name", "preset", "steps"),
    [
        ("sd15", "lcm", 4),
        ("sd15", "tcd", 4),
        ("sd15", "lightning", 2),
        ("sdxl", "lightning", 4),
        ("sd15", "hyper-sd", 2),
    ],
)
def test_presets_run_with_a_random_lora(bases, tmp_path, name, preset, steps):
    pipe = _load(bases[name])
    base = _latents(pipe, preset=preset, num_inference_steps=steps)
    pipe.load_hipa_lora(_kohya_lora(pipe.unet), adapter_name=preset)
    expected_class = {
        "lcm": "LCMScheduler",
        "tcd": "TCDScheduler",
        "lightning": "EulerDiscreteScheduler",
        "hyper-sd": "DDIMScheduler",
    }[preset]
    own = pipe.scheduler
    timesteps, used = [], set()
    images = pipe(
        "a red cube",
        height=SIZE,
        width=SIZE,
        preset=preset,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback_on_step_end=lambda p, i, t, kw: (
            timesteps.append(int(t)) or used.add(type(p.scheduler).__name__) or {}
        ),
    ).images
    assert used == {expected_class} and pipe.scheduler is own  # the preset's scheduler for the call only
    assert len(timesteps) == steps
    if preset in ("lightning", "hyper-sd"):
        assert timesteps[0] == 999  # trailing spacing
    assert images.shape == (1, 3, SIZE, SIZE) and torch.isfinite(images).all()
    assert not torch.allclose(_latents(pipe, preset=preset, num_inference_steps=steps), base)


def test_fused_lora_equals_unfused(bases):
    pipe = _load(bases["sd15"])
    add_hipa_lora(pipe.unet, HiPAConfig(rank=4, alpha=8.0))
    _randomize_lora(pipe.unet, seed=3)
    unfused = _latents(pipe)
    pipe.fuse_lora(components=["unet"], lora_scale=1.0)
    torch.testing.assert_close(_latents(pipe), unfused, atol=1e-5, rtol=1e-5)
    pipe.unfuse_lora(components=["unet"])
    torch.testing.assert_close(_latents(pipe), unfused, atol=1e-5, rtol=1e-5)


def test_few_step_hipa_guidance_and_input_errors(bases):
    pipe = _load(bases["sd21"])
    timesteps = []
    latents = _latents(
        pipe, num_inference_steps=4, callback_on_step_end=lambda p, i, t, kw: timesteps.append(int(t)) or {}
    )
    assert timesteps == [999, 749, 499, 249] and torch.isfinite(latents).all()
    guided = _latents(pipe, guidance_scale=3.0, negative_prompt="blurry")
    assert not torch.allclose(guided, _latents(pipe))
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe("x", num_inference_steps=5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe("x", preset="lcm", num_inference_steps=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe("x", guidance_scale=-1.0)
    with pytest.raises(ValueError, match="eta"):
        pipe("x", preset="tcd", eta=1.5)
    with pytest.raises(ValueError, match="height"):
        pipe("x", height=30, width=32)
    with pytest.raises(ValueError, match="preset"):
        pipe("x", preset="turbo")
    with pytest.raises(OSError, match="from_pretrained"):
        HiPAPipeline()


def test_from_pipe_picks_the_family(bases):
    xl = _load(bases["sdxl"], cls=StableDiffusionXLPipeline)
    wrapped = HiPAPipeline.from_pipe(xl)
    assert isinstance(wrapped, HiPAXLPipeline) and wrapped.unet is xl.unet
    assert type(wrapped.scheduler).__name__ == "DDIMScheduler"
