"""I2VAdapterPipeline on the tiny AnimateDiff model: clean first frame, adapter/prior on-off, ControlNet, content
adapter, output types, video export."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AnimateDiffPipeline, ControlNetModel, EulerDiscreteScheduler, MotionAdapter

from adapters.i2v_adapter import get_i2v_adapter
from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline, export_to_gif, export_to_video, load_video_frames

FRAMES = 3
STEPS = 2


@pytest.fixture(scope="module")
def pipe(tiny_animatediff) -> I2VAdapterPipeline:
    motion = MotionAdapter.from_pretrained(tiny_animatediff / "motion_adapter")
    pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff, motion_adapter=motion)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def clean_pipe(pipe):
    scheduler = pipe.scheduler
    yield pipe
    pipe.unload_i2v_adapter()
    pipe.scheduler = scheduler
    pipe.disable_vae_slicing()


def _image(h: int = 16, w: int = 24, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)
    return PIL.Image.fromarray(small).resize((w, h), PIL.Image.BILINEAR)


def _run(pipe, **kwargs):
    args = dict(
        image=_image(),
        prompt="a cube",
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    args.update(kwargs)
    return pipe(**args).frames


def _randomise(adapter, seed: int = 1, std: float = 0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * std)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_first_frame_is_the_image_latent_at_every_step(clean_pipe, scheduler):
    pipe = clean_pipe
    if scheduler == "euler":
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    _randomise(pipe.init_i2v_adapter())
    image = _image()
    expected = pipe.prepare_image_latents(image, 16, 24, 1, torch.device("cpu"), torch.float32)
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(kwargs["latents"][:, :, 0].clone())
        return {}

    latents = _run(pipe, image=image, guidance_scale=2.0, callback_on_step_end=callback)
    assert len(seen) == STEPS and all(torch.equal(s, expected) for s in seen)
    assert torch.equal(latents[:, :, 0], expected)
    assert latents.shape == (1, 4, FRAMES, 8, 12)


def test_fresh_adapter_pipeline_equals_plain(clean_pipe):
    plain = _run(clean_pipe, guidance_scale=2.0)
    adapter = clean_pipe.init_i2v_adapter()
    assert torch.equal(_run(clean_pipe, guidance_scale=2.0), plain)
    _randomise(adapter)
    on = _run(clean_pipe, guidance_scale=2.0)
    assert (on - plain).abs().max() > 1e-3
    # per-call scale 0 reproduces the plain pipeline and the adapter's own scale is restored afterwards
    assert torch.equal(_run(clean_pipe, guidance_scale=2.0, adapter_scale=0.0), plain)
    assert adapter.scale == 1.0
    assert torch.equal(_run(clean_pipe, guidance_scale=2.0), on)


def test_output_types_non_square(clean_pipe):
    frames = _run(clean_pipe, output_type="pil", height=16, width=24)
    assert len(frames) == 1 and len(frames[0]) == FRAMES and frames[0][0].size == (24, 16)
    arr = _run(clean_pipe, output_type="np")
    assert arr.shape == (1, FRAMES, 16, 24, 3) and 0.0 <= arr.min() and arr.max() <= 1.0
    pt = _run(clean_pipe, output_type="pt")
    assert pt.shape == (1, FRAMES, 3, 16, 24)
    # default size is the image's own (rounded down to a multiple of 8)
    arr = _run(clean_pipe, image=_image(h=20, w=36), output_type="np")
    assert arr.shape == (1, FRAMES, 16, 32, 3)


def test_vae_slicing_gives_the_same_video(clean_pipe):
    ref = _run(clean_pipe, output_type="np")
    clean_pipe.enable_vae_slicing()
    np.testing.assert_allclose(_run(clean_pipe, output_type="np"), ref, atol=1e-5)


def test_similarity_prior_off_equals_plain_and_on_pulls_frames_to_the_first(clean_pipe):
    _randomise(clean_pipe.init_i2v_adapter())
    plain = _run(clean_pipe)
    for off in (None, (0.0, 0.0), (0.0, 0.6), {"strength": 0.0}):
        assert torch.equal(_run(clean_pipe, similarity_prior=off), plain)
    on = _run(clean_pipe, similarity_prior=(1.0, 0.5), num_inference_steps=4)
    off = _run(clean_pipe, num_inference_steps=4)

    def spread(latents):
        return (latents[:, :, 1:] - latents[:, :, :1]).abs().mean()

    assert spread(on) < 0.8 * spread(off)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"image": None}, "image"),
        ({"similarity_prior": (2.0, 0.0)}, "similarity_prior"),
        ({"similarity_prior": (0.5, 1.0)}, "similarity_prior"),
        ({"conditioning_frames": [None] * FRAMES}, "conditioning_frames"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"height": 12}, "height"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(clean_pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        _run(clean_pipe, **kwargs)


def test_adapter_scale_needs_an_adapter(clean_pipe):
    with pytest.raises(ValueError, match="adapter_scale"):
        _run(clean_pipe, adapter_scale=0.5)
    clean_pipe.init_i2v_adapter()
    with pytest.raises(ValueError, match="adapter_scale"):
        _run(clean_pipe, adapter_scale=-1.0)


def test_from_pretrained_loads_adapter_file(clean_pipe, tiny_animatediff, tmp_path):
    adapter = clean_pipe.init_i2v_adapter()
    _randomise(adapter)
    expected = _run(clean_pipe)
    path = tmp_path / "i2v.safetensors"
    clean_pipe.save_i2v_adapter(path)
    pipe2 = I2VAdapterPipeline.from_pretrained(
        tiny_animatediff, motion_adapter=str(tiny_animatediff / "motion_adapter"), i2v_adapter=str(path)
    )
    pipe2.set_progress_bar_config(disable=True)
    assert get_i2v_adapter(pipe2.unet) is not None
    assert torch.equal(_run(pipe2), expected)


def test_plain_animatediff_components_are_shared(tiny_animatediff):
    """The pipeline is an AnimateDiffPipeline: same components, from_pipe works both ways."""
    motion = MotionAdapter.from_pretrained(tiny_animatediff / "motion_adapter")
    base = AnimateDiffPipeline.from_pretrained(tiny_animatediff, motion_adapter=motion)
    pipe = I2VAdapterPipeline.from_pipe(base)
    assert isinstance(pipe, AnimateDiffPipeline) and pipe.unet is base.unet


@pytest.fixture(scope="module")
def controlnet(tiny_controlnet) -> ControlNetModel:
    return ControlNetModel.from_pretrained(tiny_controlnet)


def test_per_frame_controlnet(pipe, controlnet):
    cn_pipe = I2VAdapterPipeline.from_pipe(pipe, controlnet=controlnet)
    cn_pipe.set_progress_bar_config(disable=True)
    try:
        _randomise(cn_pipe.init_i2v_adapter())
        control = [_image(seed=s) for s in range(FRAMES)]
        without = _run(cn_pipe)
        with_cn = _run(cn_pipe, conditioning_frames=control, guidance_scale=2.0)
        with_cn_1 = _run(cn_pipe, conditioning_frames=control)
        assert (with_cn_1 - without).abs().max() > 1e-4
        assert torch.equal(with_cn[:, :, 0], without[:, :, 0])  # the first frame stays the image latent
        zero = _run(cn_pipe, conditioning_frames=control, controlnet_conditioning_scale=0.0)
        torch.testing.assert_close(zero, without, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="conditioning_frames"):
            _run(cn_pipe, conditioning_frames=control[:2])
    finally:
        cn_pipe.unload_i2v_adapter()


# ----------------------------------------------------------------------------------------------------------------------
# content adapter
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    return CLIPVisionModelWithProjection(config).eval()


def test_content_adapter(pipe, image_encoder, tmp_path):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cpipe = I2VAdapterPipeline.from_pipe(pipe, image_encoder=image_encoder, feature_extractor=processor)
    cpipe.set_progress_bar_config(disable=True)
    try:
        plain = _run(cpipe, guidance_scale=2.0)
        adapter = cpipe.init_i2v_adapter(content=True)
        assert adapter.content is not None and cpipe.unet.encoder_hid_proj is not None
        # fresh: to_v_ip = 0 and the first-frame output projection = 0 -> bitwise the plain pipeline
        assert torch.equal(_run(cpipe, guidance_scale=2.0), plain)
        _randomise(adapter)
        on = _run(cpipe, guidance_scale=2.0)
        assert (on - plain).abs().max() > 1e-3
        adapter.content.set_scale(0.0)
        adapter.set_scale(0.0)
        assert torch.equal(_run(cpipe, guidance_scale=2.0), plain)
        adapter.content.set_scale(1.0)
        adapter.set_scale(1.0)
        cpipe.save_pretrained(tmp_path / "saved")  # the base is saved without the content adapter
        unet_config = json.loads((tmp_path / "saved" / "unet" / "config.json").read_text())
        assert unet_config["encoder_hid_dim_type"] is None
        assert torch.equal(_run(cpipe, guidance_scale=2.0), on)
        path = tmp_path / "i2v_content.safetensors"
        cpipe.save_i2v_adapter(path)
        cpipe.unload_i2v_adapter()
        assert cpipe.unet.encoder_hid_proj is None
        assert torch.equal(_run(cpipe, guidance_scale=2.0), plain)
        loaded = cpipe.load_i2v_adapter(path)
        assert loaded.content is not None
        assert torch.equal(_run(cpipe, guidance_scale=2.0), on)
    finally:
        cpipe.unload_i2v_adapter()


# ----------------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------------


def _gradient_frames(n: int = 4, h: int = 32, w: int = 48) -> list[PIL.Image.Image]:
    frames = []
    for i in range(n):
        y, x = np.mgrid[0:h, 0:w]
        arr = np.stack([(x * 5 + i * 20) % 256, (y * 7) % 256, np.full_like(x, 60 * i % 256)], axis=-1)
        frames.append(PIL.Image.fromarray(arr.astype(np.uint8)))
    return frames


def test_gif_round_trip(tmp_path):
    frames = _gradient_frames()
    path = export_to_gif(frames, tmp_path / "v.gif", fps=8)
    back = load_video_frames(path)
    assert len(back) == len(frames) and back[0].size == frames[0].size
    for a, b in zip(frames, back):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean() < 12


def test_mp4_round_trip(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    frames = _gradient_frames()
    array = np.stack([np.asarray(f) for f in frames]).astype(np.float32) / 255.0  # np input in [0, 1]
    path = export_to_video(array, tmp_path / "v.mp4", fps=8)
    back = load_video_frames(path)
    assert len(back) == len(frames) and back[0].size == frames[0].size
    for a, b in zip(frames, back):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean() < 12
    odd = export_to_video(_gradient_frames(2, 17, 23), tmp_path / "odd.mp4")  # odd sizes are padded to even
    assert load_video_frames(odd)[0].size == (24, 18)


def test_pipeline_frames_export(clean_pipe, tmp_path):
    frames = _run(clean_pipe, output_type="pil")[0]
    assert len(load_video_frames(export_to_gif(frames, tmp_path / "a.gif"))) == FRAMES
    tensor = _run(clean_pipe, output_type="pt")[0]
    assert len(load_video_frames(export_to_gif(tensor, tmp_path / "b.gif"))) == FRAMES


def test_model_cpu_offload(tiny_animatediff):
    """With accelerate's offload hooks the adapter (inside the UNet) and the frame-count hook still work; on a
    machine without an accelerator the hooks run with ``device="cpu"``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    motion = MotionAdapter.from_pretrained(tiny_animatediff / "motion_adapter")
    pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff, motion_adapter=motion, i2v_adapter="fresh")
    _randomise(pipe.i2v_adapter)
    pipe.set_progress_bar_config(disable=True)
    ref = _run(pipe.to(device)).cpu()
    pipe.to("cpu")
    pipe.enable_model_cpu_offload(device=device)
    out = _run(pipe).cpu()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert pipe.unet.device.type == "cpu"  # offloaded again after the call


def test_diffusers_ip_adapter_keeps_first_frame_processors(pipe, image_encoder):
    """``load_ip_adapter`` / ``unload_ip_adapter`` (diffusers) rebuild every processor; ours survive both."""
    from transformers import CLIPImageProcessor

    from adapters.i2v_adapter.content import CONTENT_PREFIX, fresh_content_state_dict

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ipipe = I2VAdapterPipeline.from_pipe(pipe, image_encoder=image_encoder, feature_extractor=processor)
    ipipe.set_progress_bar_config(disable=True)
    try:
        adapter = ipipe.init_i2v_adapter()
        _randomise(adapter)
        on = _run(ipipe)
        ours = adapter.processors
        flat = fresh_content_state_dict(ipipe.unet, image_encoder.config.projection_dim)
        nested = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            group, _, rest = key[len(CONTENT_PREFIX) :].partition(".")
            nested[group][rest] = value
        ipipe.load_ip_adapter(nested, subfolder="", weight_name="")
        assert all(ipipe.unet.get_submodule(p).processor is proc for p, proc in ours.items())
        assert torch.equal(_run(ipipe, ip_adapter_image=_image()), on)  # fresh IP-Adapter: to_v_ip = 0
        ipipe.unload_ip_adapter()
        assert all(ipipe.unet.get_submodule(p).processor is proc for p, proc in ours.items())
        assert torch.equal(_run(ipipe), on)
    finally:
        ipipe.unload_i2v_adapter()


def test_fuse_qkv_keeps_the_adapter(tiny_animatediff):
    # own pipeline: diffusers' unfuse leaves fused processors on the other layers
    motion = MotionAdapter.from_pretrained(tiny_animatediff / "motion_adapter")
    clean_pipe = I2VAdapterPipeline.from_pretrained(tiny_animatediff, motion_adapter=motion)
    clean_pipe.set_progress_bar_config(disable=True)
    adapter = clean_pipe.init_i2v_adapter()
    _randomise(adapter)
    ref = _run(clean_pipe)
    ours = adapter.processors
    clean_pipe.fuse_qkv_projections()
    try:
        assert all(clean_pipe.unet.get_submodule(p).processor is proc for p, proc in ours.items())
        assert type(next(iter(ours.values())).base_processor).__name__.startswith("Fused")
        torch.testing.assert_close(_run(clean_pipe), ref, atol=1e-4, rtol=1e-4)
    finally:
        clean_pipe.unfuse_qkv_projections()
    assert all(clean_pipe.unet.get_submodule(p).processor is proc for p, proc in ours.items())
    torch.testing.assert_close(_run(clean_pipe), ref, atol=1e-5, rtol=1e-5)


def test_sparse_control(pipe):
    """SparseCtrl (``SparseControlNetModel``): a condition on one frame changes the video, frame 0 stays clean."""
    from diffusers import SparseControlNetModel

    from tests.tiny_models import SD15_UNET_CONFIG

    torch.manual_seed(0)
    sparse = SparseControlNetModel(
        in_channels=4,
        down_block_types=("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "DownBlockMotion"),
        block_out_channels=SD15_UNET_CONFIG["block_out_channels"],
        layers_per_block=SD15_UNET_CONFIG["layers_per_block"],
        norm_num_groups=SD15_UNET_CONFIG["norm_num_groups"],
        cross_attention_dim=SD15_UNET_CONFIG["cross_attention_dim"],
        attention_head_dim=SD15_UNET_CONFIG["attention_head_dim"],
        conditioning_embedding_out_channels=(8, 16),
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    ).eval()
    for conv in [*sparse.controlnet_down_blocks, sparse.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.05)  # trained-like, not zero
    sp_pipe = I2VAdapterPipeline.from_pipe(pipe, controlnet=sparse)
    sp_pipe.set_progress_bar_config(disable=True)
    try:
        _randomise(sp_pipe.init_i2v_adapter())
        without = _run(sp_pipe, guidance_scale=2.0)
        with_sparse = _run(
            sp_pipe, guidance_scale=2.0, conditioning_frames=[_image(seed=5)], controlnet_frame_indices=[2]
        )
        assert (with_sparse - without).abs().max() > 1e-4
        assert torch.equal(with_sparse[:, :, 0], without[:, :, 0])
        with pytest.raises(ValueError, match="controlnet_frame_indices"):
            _run(sp_pipe, conditioning_frames=[_image()], controlnet_frame_indices=[FRAMES])
    finally:
        sp_pipe.unload_i2v_adapter()


def test_save_pretrained_round_trip(clean_pipe, tmp_path):
    from safetensors import safe_open

    adapter = clean_pipe.init_i2v_adapter()
    _randomise(adapter)
    expected = _run(clean_pipe)
    clean_pipe.save_pretrained(tmp_path / "saved")
    assert clean_pipe.i2v_adapter is adapter and torch.equal(_run(clean_pipe), expected)  # still attached
    weights = next((tmp_path / "saved" / "unet").glob("*.safetensors"))
    with safe_open(str(weights), framework="pt") as handle:
        assert not any("i2v" in key or ".processor." in key for key in handle.keys())
    assert (tmp_path / "saved" / "i2v_adapter.safetensors").is_file()
    reloaded = I2VAdapterPipeline.from_pretrained(tmp_path / "saved")
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.i2v_adapter is not None
    assert torch.equal(_run(reloaded), expected)


@pytest.mark.slow
def test_benchmark_runs():
    from benchmarks.bench_i2v_adapter import run

    payload = run("tiny", repeats=1, write=False)
    variants = [row["variant"] for row in payload["rows"]]
    assert variants[0].startswith("animatediff") and "i2v_adapter" in variants
    assert all(row["median_s"] > 0 for row in payload["rows"])


def test_video_io_is_diffusers_own(tmp_path):
    """The exports are diffusers.utils' writers (bitwise the same file), plus frame types and odd sizes."""
    pytest.importorskip("imageio_ffmpeg")
    from diffusers.utils import export_to_gif as d_gif
    from diffusers.utils import export_to_video as d_video

    frames = _gradient_frames()
    ours = export_to_video(frames, tmp_path / "ours.mp4", fps=8, quality=9.0)
    theirs = d_video(frames, str(tmp_path / "theirs.mp4"), fps=8, quality=9.0, macro_block_size=1)
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    ours = export_to_gif(frames, tmp_path / "ours.gif", fps=8)
    theirs = d_gif(frames, str(tmp_path / "theirs.gif"), fps=8)
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert all(f.mode == "RGB" for f in load_video_frames(ours))


def test_call_docstring_carries_the_example():
    doc = I2VAdapterPipeline.__call__.__doc__
    assert "Examples:" in doc and "export_to_gif(frames" in doc
