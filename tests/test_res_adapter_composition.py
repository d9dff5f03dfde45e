"""ResAdapter beside other things users load: diffusers/peft LoRAs, ControlNet, IP-Adapter, LCM scheduler + LCM-LoRA,
and pipelines we did not subclass (img2img, function form)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from adapters.res_adapter import get_res_adapter, load_res_adapter, unload_res_adapter
from pipelines.pipeline_res_adapter import ResAdapterPipeline, ResAdapterXLPipeline
from tests import tiny_models
from tests.test_res_adapter import official_state_dicts, unet_out, write_official


def user_lora(config: dict, targets: list[str], seed: int = 3) -> dict[str, torch.Tensor]:
    """A random diffusers-format LoRA (``unet.<path>.lora_A/B.weight``) for a UNet of ``config``."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    sd = get_peft_model_state_dict(unet)
    return {f"unet.{k}": v for k, v in sd.items()}


ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
ATTN_AND_SAMPLERS = [*ATTN, "conv"]  # "conv" = the Downsample2D / Upsample2D convs, the same ones ResAdapter targets


@pytest.fixture(scope="module")
def sd15():
    return tiny_models.make_pipeline("sd15", pipeline_cls=ResAdapterPipeline)


@pytest.fixture(scope="module")
def folder15(sd15, tmp_path_factory):
    lora, norms = official_state_dicts(sd15.unet)
    return write_official(tmp_path_factory.mktemp("ra15"), lora, norms)


def generate(pipe, steps: int = 2, **kwargs) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    kwargs.setdefault("height", 32)
    kwargs.setdefault("width", 48)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return pipe("a red cube", num_inference_steps=steps, generator=gen, output_type="np", **kwargs).images


@pytest.mark.parametrize("targets", [ATTN, ATTN_AND_SAMPLERS], ids=["attn", "attn+samplers"])
@pytest.mark.parametrize("res_first", [True, False], ids=["res-first", "lora-first"])
def test_user_lora_composes(sd15, folder15, targets, res_first):
    unet = sd15.unet
    base = unet_out(sd15)
    lora = user_lora(tiny_models.SD15_UNET_CONFIG, targets)
    sd15.load_lora_weights(lora, adapter_name="user")
    user_only = unet_out(sd15)
    sd15.unload_lora_weights()
    assert torch.equal(unet_out(sd15), base)
    sd15.load_res_adapter(folder15)
    res_only = unet_out(sd15)
    if res_first:
        sd15.load_lora_weights(lora, adapter_name="user")
    else:
        sd15.unload_res_adapter()
        sd15.load_lora_weights(lora, adapter_name="user")
        sd15.load_res_adapter(folder15)
    both = unet_out(sd15)
    for other in (base, user_only, res_only):
        assert not torch.allclose(both, other, atol=1e-4)
    # fused ResAdapter beside an unfused user LoRA gives the same output
    sd15.fuse_res_adapter()
    torch.testing.assert_close(unet_out(sd15), both, atol=1e-5, rtol=1e-5)
    sd15.unfuse_res_adapter()
    # unloading the user's LoRA keeps ResAdapter
    sd15.unload_lora_weights()
    assert get_res_adapter(sd15) is not None
    torch.testing.assert_close(unet_out(sd15), res_only, atol=1e-6, rtol=0)
    # and unloading ResAdapter keeps the user's LoRA
    sd15.load_lora_weights(lora, adapter_name="user")
    sd15.unload_res_adapter()
    torch.testing.assert_close(unet_out(sd15), user_only, atol=1e-6, rtol=0)
    sd15.unload_lora_weights()
    assert torch.equal(unet_out(sd15), base)
    assert not any(type(m).__module__.startswith("peft") for m in unet.modules())


def test_lcm_scheduler_and_lcm_lora(folder15):
    pipe = tiny_models.make_pipeline("sd15", pipeline_cls=ResAdapterPipeline)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(user_lora(tiny_models.SD15_UNET_CONFIG, ATTN, seed=7), adapter_name="lcm")
    lcm_only = generate(pipe, guidance_scale=1.0)
    pipe.load_res_adapter(folder15)
    with_res = generate(pipe, guidance_scale=1.0)
    assert np.abs(with_res - lcm_only).max() > 1e-3
    pipe.set_adapters(["lcm"], adapter_weights=[0.0])  # the LCM-LoRA off, ResAdapter still on
    res_only = generate(pipe, guidance_scale=1.0)
    assert np.abs(res_only - with_res).max() > 1e-3
    pipe.set_adapters(["lcm"], adapter_weights=[1.0])
    pipe.unload_res_adapter()
    np.testing.assert_allclose(generate(pipe, guidance_scale=1.0), lcm_only, atol=1e-6)


def test_controlnet_function_form(folder15):
    pipe = tiny_models.make_pipeline("controlnet")  # plain diffusers StableDiffusionControlNetPipeline
    control = Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8))
    base = generate(pipe, image=control)
    load_res_adapter(pipe, folder15)
    with_res = generate(pipe, image=control)
    assert np.abs(with_res - base).max() > 1e-3
    no_control = generate(pipe, image=control, controlnet_conditioning_scale=0.0)
    assert np.abs(no_control - with_res).max() > 1e-4  # ControlNet still acts beside ResAdapter
    unload_res_adapter(pipe)
    assert np.array_equal(generate(pipe, image=control), base)


def _tiny_ip_adapter(unet, clip_dim: int = 16) -> dict:
    """A random IP-Adapter (plain, 4 tokens) state dict in the official layout for ``unet``."""
    gen = torch.Generator().manual_seed(11)
    cross = unet.config.cross_attention_dim
    image_proj = {
        "proj.weight": torch.randn(cross * 4, clip_dim, generator=gen) * 0.1,
        "proj.bias": torch.zeros(cross * 4),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.rsplit(".", 1)[0]).to_q.out_features
        ip[f"{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=gen) * 0.3
        ip[f"{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=gen) * 0.3
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip}


def test_ip_adapter(folder15):
    pipe = tiny_models.make_pipeline("sd15", pipeline_cls=ResAdapterPipeline)
    pipe.load_ip_adapter(_tiny_ip_adapter(pipe.unet), subfolder="", weight_name="", image_encoder_folder=None)
    embeds = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(2))]  # (negative, positive)
    pipe.set_ip_adapter_scale(0.0)
    ip_off = generate(pipe, ip_adapter_image_embeds=embeds)
    pipe.set_ip_adapter_scale(1.0)
    ip_only = generate(pipe, ip_adapter_image_embeds=embeds)
    assert np.abs(ip_only - ip_off).max() > 1e-3
    pipe.load_res_adapter(folder15)
    both = generate(pipe, ip_adapter_image_embeds=embeds)
    assert np.abs(both - ip_only).max() > 1e-3
    pipe.set_ip_adapter_scale(0.0)
    assert np.abs(generate(pipe, ip_adapter_image_embeds=embeds) - both).max() > 1e-3
    pipe.set_ip_adapter_scale(1.0)
    pipe.unload_res_adapter()
    assert np.array_equal(generate(pipe, ip_adapter_image_embeds=embeds), ip_only)


def test_img2img_shares_the_unet_state(sd15, folder15):
    sd15.load_res_adapter(folder15)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(sd15)
    assert get_res_adapter(img2img) is get_res_adapter(sd15)
    image = Image.fromarray((np.random.default_rng(1).random((32, 48, 3)) * 255).astype(np.uint8))
    with_res = generate(img2img, image=image, strength=0.8, steps=3, height=None, width=None)
    unload_res_adapter(img2img)
    assert get_res_adapter(sd15) is None
    without = generate(img2img, image=image, strength=0.8, steps=3, height=None, width=None)
    assert with_res.shape == (1, 32, 48, 3)
    assert np.abs(with_res - without).max() > 1e-3


def test_sdxl_user_lora_composes(tmp_path):
    pipe = tiny_models.make_pipeline("sdxl", pipeline_cls=ResAdapterXLPipeline)
    lora, norms = official_state_dicts(pipe.unet)
    pipe.load_res_adapter(write_official(tmp_path / "xl", lora, norms))
    res_only = unet_out(pipe)
    pipe.load_lora_weights(user_lora(tiny_models.SDXL_UNET_CONFIG, ATTN_AND_SAMPLERS), adapter_name="user")
    assert not torch.allclose(unet_out(pipe), res_only, atol=1e-4)
    pipe.unload_lora_weights()
    torch.testing.assert_close(unet_out(pipe), res_only, atol=1e-6, rtol=0)
    pipe.unload_res_adapter()


def test_animatediff_motion_unet(folder15):
    """A ResAdapter made for the SD 1.5 UNet loads into AnimateDiff's UNetMotionModel (same samplers and norms)."""
    pipe = tiny_models.make_pipeline("animatediff")

    def frames():
        gen = torch.Generator().manual_seed(0)
        out = pipe(
            "a red cube", num_frames=2, height=32, width=32, num_inference_steps=2, generator=gen, output_type="np"
        )
        return np.asarray(out.frames)

    base = frames()
    state = load_res_adapter(pipe, folder15)
    assert len(state.lora.paths) == 4
    assert np.abs(frames() - base).max() > 1e-3
    unload_res_adapter(pipe)
    assert np.array_equal(frames(), base)


def test_resolution_guard_types(sd15):
    with pytest.raises(TypeError, match="`height` must be an int"):
        sd15.check_res_adapter_resolution(32.0, 32)
    with pytest.raises(ValueError, match="`height` must be a positive multiple of 8"):
        sd15.check_res_adapter_resolution(-8, 32)
    sd15.check_res_adapter_resolution(None, None)  # defaults are filled in by the pipeline
