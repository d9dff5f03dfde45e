"""MV-Adapter pipelines end to end on the tiny SD 1.5 / 2.1 / SDXL models."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionPipeline

from adapters.mv_adapter import default_cameras
from pipelines import MVAdapterPipeline, MVAdapterSDPipeline, MVAdapterXLPipeline
from pipelines.pipeline_mv_adapter import make_multiview_grid


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd15(tiny_sd15):
    return _quiet(MVAdapterPipeline.from_pretrained(tiny_sd15))


def _randomise(adapter, seed=0, std=0.05):
    torch.manual_seed(seed)
    for p in adapter.trainable_parameters():
        torch.nn.init.normal_(p, std=std)


def test_auto_pipeline_picks_variant(sd15, tiny_sdxl):
    assert type(sd15) is MVAdapterSDPipeline and sd15.mv_adapter is not None
    xl = MVAdapterPipeline.from_pretrained(tiny_sdxl, mv_adapter=False)
    assert type(xl) is MVAdapterXLPipeline and xl.mv_adapter is None


def test_fresh_adapter_equals_base_pipeline(sd15, tiny_sd15):
    """Zero-initialised attention branches and a zero condition: exactly the base SD pipeline's images."""
    base = _quiet(StableDiffusionPipeline.from_pretrained(tiny_sd15))
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = {"num_inference_steps": 2, "guidance_scale": 5.0, "negative_prompt": "blurry", "output_type": "np"}
    expected = base("a red cube", num_images_per_prompt=3, latents=latents, **kw).images
    out = sd15("a red cube", num_views=3, latents=latents, noise_shift=1, condition_scale=0.0, **kw).images
    assert np.array_equal(out[0], expected)


def test_views_and_nonsquare_end_to_end(sd15):
    for views in (1, 4, 6, 8):
        out = sd15("a cat", num_views=views, num_inference_steps=1, guidance_scale=1.0, output_type="pil").images
        assert len(out) == 1 and len(out[0]) == views and out[0][0].size == (32, 32)
    out = sd15(["a cat", "a dog"], num_views=2, height=16, width=40, num_inference_steps=1, output_type="np")
    assert len(out.images) == 2 and out.images[1].shape == (2, 16, 40, 3)
    assert make_multiview_grid(sd15("x", num_views=3, num_inference_steps=1).images[0]).size == (96, 32)


def test_scales_zero_and_cameras(sd15):
    _randomise(sd15.mv_adapter)
    kw = {"num_views": 4, "num_inference_steps": 1, "output_type": "latent", "guidance_scale": 1.0}
    a = sd15("a cat", generator=torch.Generator().manual_seed(1), **kw).images[0]
    b = sd15("a cat", generator=torch.Generator().manual_seed(1), mv_scale=0.0, **kw).images[0]
    assert not torch.equal(a, b)
    cams = default_cameras(4)
    c = sd15("a cat", generator=torch.Generator().manual_seed(1), cameras=cams, **kw).images[0]
    assert torch.equal(a, c)  # default cameras == official ring given explicitly
    d = sd15("a cat", generator=torch.Generator().manual_seed(1), cameras=cams.c2w.numpy(), **kw).images[0]
    torch.testing.assert_close(d, a)  # the same cameras as OpenCV matrices (orthographic: no fov)
    sd15.init_mv_adapter()


def test_image_to_multiview_cache_equals_recomputation(tiny_sd21):
    pipe = _quiet(MVAdapterPipeline.from_pretrained(tiny_sd21, mv_adapter_config={"use_ref": True}))
    _randomise(pipe.mv_adapter)
    ref_image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    calls = {"unet": 0, "steps": 0}
    pipe.unet.register_forward_pre_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))
    text = None

    def check(p, step, t, tensors):
        nonlocal text
        state = p.mv_adapter.state
        text = text or p._encode_text(["a cat"], ["bad"], device="cpu", repeat=3, need_negative=True, height=32,
                                      width=32, clip_skip=None, lora_scale=None)  # fmt: skip
        g = torch.Generator().manual_seed(7)
        torch.randn(3, 4, 16, 16, generator=g)  # the pipeline drew the initial noise first
        with torch.no_grad():
            fresh = p._reference_states(ref_image, 1, 1, 3, text, 32, 32, g, None)
        for name, value in fresh.items():
            used = state.ref_states[name]
            assert torch.equal(used[0], torch.zeros_like(value[0]))  # unconditional reference = zeros
            torch.testing.assert_close(used[1], value[0], atol=0, rtol=0)
        calls["steps"] += 1
        return {}

    out = pipe("a cat", image=ref_image, negative_prompt="bad", num_views=3, num_inference_steps=3,
               generator=torch.Generator().manual_seed(7), callback_on_step_end=check, output_type="np")  # fmt: skip
    assert calls["steps"] == 3
    assert calls["unet"] == 3 + 1 + 3  # denoising steps + one reference pass (+ the checks' own passes)
    assert out.images[0].shape == (3, 32, 32, 3)
    # the reference matters, and ref_scale=0 switches it off
    kw = {"num_views": 3, "num_inference_steps": 1, "output_type": "latent", "guidance_scale": 1.0}
    a = pipe("a cat", image=ref_image, generator=torch.Generator().manual_seed(0), **kw).images[0]
    b = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images[0]
    c = pipe("a cat", image=ref_image, ref_scale=0.0, generator=torch.Generator().manual_seed(0), **kw).images[0]
    assert not torch.equal(a, b)
    assert torch.equal(c, b)  # ref_scale 0: the reference branch is off


def test_sdxl_image_and_geometry_modes(tiny_sdxl):
    pipe = _quiet(MVAdapterPipeline.from_pretrained(tiny_sdxl, mv_adapter_config={"variant": "ig2mv"}))
    assert pipe.mv_adapter.config.attention_mode == "row_col"
    _randomise(pipe.mv_adapter)
    rng = np.random.default_rng(0)
    pos = rng.uniform(-0.5, 0.5, (6, 32, 32, 3))
    nrm = rng.normal(size=(6, 32, 32, 3))
    ref_image = PIL.Image.new("RGBA", (32, 32), (255, 0, 0, 128))
    out = pipe("a chair", image=ref_image, position_map=pos, normal_map=nrm, num_inference_steps=2,
               guidance_scale=3.0, reference_guidance_scale=1.5, output_type="np")  # fmt: skip
    assert out.images[0].shape == (6, 32, 32, 3) and np.isfinite(out.images[0]).all()
    with pytest.raises(ValueError, match="num_views"):
        pipe("a chair", num_views=4, num_inference_steps=1)


def test_check_inputs(sd15):
    with pytest.raises(ValueError, match="height"):
        sd15("a", height=30, num_inference_steps=1)
    with pytest.raises(ValueError, match="reference branch"):
        sd15("a", image=PIL.Image.new("RGB", (32, 32)), num_inference_steps=1)
    with pytest.raises(ValueError, match="normal_map"):
        sd15("a", position_map=np.zeros((2, 8, 8, 3)), num_inference_steps=1)
    with pytest.raises(ValueError, match="azimuth_deg"):
        sd15("a", num_views=3, azimuth_deg=[0, 90], num_inference_steps=1)
    with pytest.raises(ValueError, match="noise_shift"):
        sd15("a", noise_shift=0, num_inference_steps=1)


def test_save_and_load_with_base(sd15, tmp_path):
    _randomise(sd15.mv_adapter, seed=3)
    sd15.save_pretrained(tmp_path / "mv")
    assert (tmp_path / "mv" / "mv_adapter" / "mv_adapter.safetensors").is_file()
    assert sd15.mv_adapter.attached  # re-attached after saving
    from safetensors.torch import load_file

    unet_keys = load_file(str(next((tmp_path / "mv" / "unet").glob("*.safetensors"))))
    assert not any(".processor." in k for k in unet_keys)
    again = _quiet(MVAdapterPipeline.from_pretrained(tmp_path / "mv"))
    kw = {"num_views": 2, "num_inference_steps": 1, "output_type": "latent"}
    a = sd15("a", generator=torch.Generator().manual_seed(0), **kw).images[0]
    b = again("a", generator=torch.Generator().manual_seed(0), **kw).images[0]
    assert torch.equal(a, b)
    sd15.init_mv_adapter()


def test_vae_slicing_tiling_and_lora(sd15):
    peft = pytest.importorskip("peft")
    _randomise(sd15.mv_adapter, seed=5)
    kw = {"num_views": 2, "num_inference_steps": 1, "output_type": "np", "guidance_scale": 1.0}
    a = sd15("a", generator=torch.Generator().manual_seed(0), **kw).images[0]
    sd15.vae.enable_slicing()
    sd15.vae.enable_tiling()
    b = sd15("a", generator=torch.Generator().manual_seed(0), **kw).images[0]
    sd15.vae.disable_slicing()
    sd15.vae.disable_tiling()
    np.testing.assert_allclose(a, b, atol=1e-5)
    keys = set(sd15.mv_adapter.state_dict())
    sd15.unet.add_adapter(peft.LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), "extra")
    assert set(sd15.mv_adapter.state_dict()) == keys  # our branches are not wrapped by the LoRA
    c = sd15("a", generator=torch.Generator().manual_seed(0), cross_attention_kwargs={"scale": 0.5}, **kw).images[0]
    np.testing.assert_allclose(a, c, atol=1e-6)  # fresh LoRA (zero up weights) changes nothing
    sd15.unet.delete_adapters("extra")
    sd15.init_mv_adapter()


def test_pipeline_uses_official_condition_and_schedule(sd15):
    """The condition fed to the encoder and the sampling timesteps equal the official inference code's."""
    from diffusers import PNDMScheduler

    from tests.test_mv_camera import _official_interpolated_betas, official_c2w_opengl, official_ortho_condition

    seen = {}
    hook = sd15.mv_adapter.cond_encoder.register_forward_pre_hook(lambda m, a: seen.setdefault("cond", a[0].clone()))
    steps = []
    try:
        sd15("a cat", num_views=6, num_inference_steps=3, guidance_scale=1.0, output_type="latent",
             callback_on_step_end=lambda p, i, t, kw: steps.append(int(t)) or {})  # fmt: skip
    finally:
        hook.remove()
    gl = official_c2w_opengl([0.0] * 6, [1.8] * 6, [a - 90 for a in [0, 45, 90, 180, 270, 315]])
    torch.testing.assert_close(seen["cond"], official_ortho_condition(gl, 32), atol=1e-6, rtol=0)
    betas = _official_interpolated_betas(sd15.scheduler.alphas_cumprod, 8.0)
    official = PNDMScheduler.from_config(sd15.scheduler.config, trained_betas=betas.numpy())
    official.set_timesteps(3)
    assert steps == [int(t) for t in official.timesteps]
    assert type(sd15.scheduler) is PNDMScheduler


def test_prepare_reference_image():
    from pipelines.pipeline_mv_adapter import prepare_reference_image

    arr = np.zeros((40, 60, 4), dtype=np.uint8)
    arr[5:15, 10:30] = (255, 0, 0, 255)  # a 10x20 red box
    out = np.asarray(prepare_reference_image(PIL.Image.fromarray(arr, mode="RGBA"), 32, 32)).astype(int)
    assert out.shape == (32, 32, 3)
    assert tuple(out[0, 0]) == (127, 127, 127)  # gray background
    red = np.argwhere((out[..., 0] > 200) & (out[..., 1] < 50))
    assert red[:, 1].max() - red[:, 1].min() + 1 >= 26  # longer side fills ~90% of the width
    assert abs(red[:, 0].mean() - 15.5) < 1.5 and abs(red[:, 1].mean() - 15.5) < 1.5  # centred


def test_noise_shift_defaults_to_the_adapters_trained_value(sd15):
    """``noise_shift=None`` samples with the shift recorded in the adapter's config (else the official 8)."""
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = {"num_views": 2, "num_inference_steps": 2, "guidance_scale": 1.0, "output_type": "np", "latents": latents}
    official = sd15("a red cube", noise_shift=8.0, **kw).images[0]
    plain = sd15("a red cube", noise_shift=1.0, **kw).images[0]
    assert np.array_equal(sd15("a red cube", **kw).images[0], official)
    sd15.mv_adapter.config.extra["noise_shift"] = 1.0
    try:
        assert np.array_equal(sd15("a red cube", **kw).images[0], plain)
    finally:
        sd15.mv_adapter.config.extra.pop("noise_shift")


def test_multiview_grid_is_diffusers_make_image_grid():
    from diffusers.utils import make_image_grid
    from PIL import Image

    views = [Image.new("RGB", (8, 6), (40 * i, 255 - 40 * i, 7)) for i in range(5)]
    full = make_multiview_grid(views[:4], rows=2)
    assert np.array_equal(np.asarray(full), np.asarray(make_image_grid(views[:4], rows=2, cols=2)))
    partial = np.asarray(make_multiview_grid(views, rows=2))  # 2x3 for 5 views: the last cell stays black
    assert partial.shape == (12, 24, 3) and not partial[6:, 16:].any()
    assert np.array_equal(partial[6:, 8:16], np.asarray(views[4]))
    with pytest.raises(ValueError, match="cannot hold 5 views"):
        make_multiview_grid(views, rows=2, cols=2)
