"""``pipelines.tasks``: input checks and file helpers shared by the app and the CLI (no model needed)."""

from __future__ import annotations

import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import checks, tasks


def fake_pipe(native: int = 64, vae_factor: int = 4, unet_blocks: int = 3):
    """Just what the size helpers read: ``unet.config`` and ``vae_scale_factor``."""
    config = types.SimpleNamespace(sample_size=native // vae_factor, block_out_channels=(32,) * unet_blocks)
    return types.SimpleNamespace(unet=types.SimpleNamespace(config=config), vae_scale_factor=vae_factor)


def test_sizes():
    pipe = fake_pipe()
    assert tasks.size_multiple(pipe) == 16 and tasks.native_resolution(pipe) == 64
    assert tasks.check_size(pipe, 64, 128) == (64, 128)
    with pytest.raises(ValueError, match=r"`width` must be a multiple of 16 .* nearest valid sizes: 64 or 80"):
        tasks.check_size(pipe, 64, 72)
    assert tasks.check_size(pipe, 64.0, 512.0) == (64, 512)  # sliders send floats
    # one limit with the pipelines (pipelines.checks.MAX_IMAGE_SIDE), capped at 8x the native side for the model
    assert tasks.MAX_SIDE == checks.MAX_IMAGE_SIDE == 4096
    with pytest.raises(ValueError, match=r"`height` must be at most 512 pixels \(a multiple of 16 in \[16, 512\]\)"):
        tasks.check_size(pipe, 1024, 64)
    big = fake_pipe(native=1024, vae_factor=8)
    assert tasks.check_size(big, 4096, 64) == (4096, 64)
    with pytest.raises(ValueError, match="at most 4096 pixels"):
        tasks.check_size(big, 4160, 64)
    with pytest.raises(TypeError, match="`height` must be an int"):
        tasks.check_size(pipe, "64", 64)
    with pytest.raises(TypeError, match="`width` must be an int"):
        tasks.check_size(pipe, 64, 64.5)
    assert tasks.size_from_ratio(64, 1.5, "2:1", 16) == (64, 128)
    assert tasks.size_from_ratio(64, 2.0, "1:1", 16) == (128, 128)
    h, w = tasks.size_from_ratio(512, 1.0, "16:9", 64)
    assert h % 64 == 0 and w % 64 == 0 and w > h
    with pytest.raises(ValueError, match="`ratio` must look like"):
        tasks.size_from_ratio(64, 1.0, "wide", 16)


def test_parse_angles():
    assert tasks.parse_angles("0, 90,180 270") == [0.0, 90.0, 180.0, 270.0]
    assert tasks.parse_angles("") is None and tasks.parse_angles(None) is None
    with pytest.raises(ValueError, match="numbers separated by commas"):
        tasks.parse_angles("0, north")
    with pytest.raises(ValueError, match="finite"):
        tasks.parse_angles("0, nan")


def test_input_checks_fail_before_any_model_work():
    pipe = fake_pipe()  # has no __call__: any model work would raise AttributeError
    with pytest.raises(ValueError, match="`num_views` must be between 1 and 12, got 13"):
        tasks.text_to_multiview(pipe, "a cube", num_views=13)
    with pytest.raises(ValueError, match="`prompt` is empty"):
        tasks.text_to_multiview(pipe, "  ")
    with pytest.raises(ValueError, match="`num_frames` must be between 2 and 32, got 0"):
        tasks.image_to_video(pipe, Image.new("RGB", (32, 32)), num_frames=0)
    with pytest.raises(ValueError, match="`image` is missing"):
        tasks.image_to_video(pipe, None)
    with pytest.raises(ValueError, match="both `position_map` and `normal_map`"):
        tasks.image_to_multiview(pipe, Image.new("RGB", (32, 32)), position_map=Image.new("RGB", (32, 32)))
    with pytest.raises(ValueError, match="`num_inference_steps` must be between 1 and 4 for HiPA"):
        tasks.one_step(pipe, "a cube", num_inference_steps=8)
    with pytest.raises(ValueError, match="`compare` entries must be among"):
        tasks.one_step(pipe, "a cube", compare=["sdxl-turbo"])
    with pytest.raises(ValueError, match="`norm_scale` must be between 0 and 1"):
        tasks.any_resolution(pipe, "a cube", norm_scale=2.0)
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        tasks.make_generator(-1)
    with pytest.raises(ValueError, match="`guidance_scale` must be between 0 and 30"):
        tasks.text_to_multiview(pipe, "a cube", guidance_scale=float("nan"))


def test_load_image_modes_and_refusals(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    assert tasks.load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 255, 255)  # on white
    assert tasks.load_image(tmp_path / "rgba.png", keep_alpha=True).mode == "RGBA"
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert tasks.load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert tasks.load_image(tmp_path / "cmyk.jpg").mode == "RGB"
    Image.new("L", (16, 16), 7).save(tmp_path / "gray.png")
    assert tasks.load_image(tmp_path / "gray.png").getpixel((3, 3)) == (7, 7, 7)

    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="is not an image file"):
        tasks.load_image(tmp_path / "text.png")
    with pytest.raises(ValueError, match="no such file"):
        tasks.load_image(tmp_path / "missing.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match="too small"):
        tasks.load_image(tmp_path / "tiny.png")
    Image.new("RGB", (300, 300)).save(tmp_path / "big.bmp")
    with pytest.raises(ValueError, match="too large: 0.3 MB, the limit is 0.1 MB"):
        tasks.load_image(tmp_path / "big.bmp", max_bytes=int(0.1 * 2**20))
    with pytest.raises(ValueError, match="too large: 300x300 pixels"):
        tasks.load_image(tmp_path / "big.bmp", max_pixels=10_000)


def test_reference_image_and_geometry_maps():
    rgba = Image.new("RGBA", (100, 50), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (40, 10, 60, 40))
    ref = tasks._reference_image(rgba, 64, 64)
    assert ref.size == (64, 64) and ref.mode == "RGB"
    assert ref.getpixel((0, 0)) in ((127, 127, 127), (128, 128, 128))  # official gray background
    assert ref.getpixel((32, 32))[0] > 200  # the object, centred
    strip = Image.new("RGB", (96, 32))
    assert len(tasks._split_maps(strip, 3, 64, 64)) == 3
    assert [m.size for m in tasks._split_maps(Image.new("RGB", (32, 32)), 4, 64, 48)] == [(48, 64)] * 4


def test_files(tmp_path):
    import imageio.v3 as iio

    frames = [Image.new("RGB", (33, 20), (i * 40, 100, 0)) for i in range(5)]
    written = tasks.save_video(frames, tmp_path / "v.mp4", tmp_path / "v.gif", fps=5, min_side=64)
    video = iio.imread(written["mp4"])
    assert video.shape == (5, 80, 132, 3)  # 4x nearest upscale, even sides for H.264
    assert Image.open(written["gif"]).n_frames == 5
    assert not list(tmp_path.glob("*.tmp*"))
    # why the app writes its own mp4 rather than diffusers.utils.export_to_video: the index (moov) comes before the
    # data (mdat), so a browser starts playing before the download ends; diffusers' writer puts it at the end
    from diffusers.utils import export_to_video

    data = written["mp4"].read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    even = [f.resize((32, 20)) for f in frames]  # (its writer does not pad odd sizes for H.264 either)
    plain = Path(export_to_video(even, str(tmp_path / "plain.mp4"), fps=5, macro_block_size=1)).read_bytes()
    assert plain.index(b"moov") > plain.index(b"mdat")
    with pytest.raises(ValueError, match="`frames` is empty"):
        tasks.save_video([], tmp_path / "x.mp4")
    path = tasks.save_views_zip(frames[:2], tmp_path / "z" / "views.zip")
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["view_00.png", "view_01.png"]


def test_call_pipeline_refuses_unknown_keywords():
    """A keyword the pipeline does not take is an error naming it (no longer dropped silently); ``None`` values are
    left to the pipeline's defaults."""

    class Pipe:
        def __call__(self, prompt, num_inference_steps=50, guidance_scale=7.5):
            return prompt, num_inference_steps, guidance_scale

    pipe = Pipe()
    assert tasks.call_pipeline(pipe, prompt="a cube", num_inference_steps=None, guidance_scale=2.0) == (
        "a cube",
        50,
        2.0,
    )
    with pytest.raises(
        TypeError, match=r"Pipe.__call__ got unexpected keyword argument\(s\) \['num_inference_step'\]"
    ):
        tasks.call_pipeline(pipe, prompt="a cube", num_inference_step=4)

    class Open:
        def __call__(self, prompt, **kwargs):
            return kwargs

    assert tasks.call_pipeline(Open(), prompt="a", anything=1) == {"anything": 1}  # **kwargs: the pipeline decides


def test_front_end_limits_sit_inside_the_pipelines_own():
    """The app's / CLI's view and frame limits are front-end choices at or below what the pipelines accept; the
    pixel limit is the pipelines' own."""
    assert 6 <= tasks.MAX_VIEWS <= checks.MAX_NUM_VIEWS
    assert tasks.MAX_FRAMES <= checks.DEFAULT_MAX_NUM_FRAMES
    assert tasks.MAX_SIDE == checks.MAX_IMAGE_SIDE
    with pytest.raises(ValueError, match=f"between 1 and {tasks.MAX_VIEWS}"):
        tasks._multiview_kwargs(None, tasks.MAX_VIEWS + 1, None, 0.0, None, None)
