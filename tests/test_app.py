"""The Gradio app driven through ``gradio_client`` on 127.0.0.1: every tab's action, errors, queueing.

The app runs on the embedded registry's untrained placeholder models (``DIFFUSION_ADAPTERS_PLACEHOLDER=1``: small,
deterministic, offline), with tiny step counts and sizes.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(demo, client, output_dir, example_image)`` for an app on placeholder models, 1 MB upload limit."""
    os.environ["DIFFUSION_ADAPTERS_PLACEHOLDER"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import app
    from pipelines.embedded import example_images

    out = tmp_path_factory.mktemp("app-out")
    config = app.AppConfig(output_dir=out, max_upload_mb=1.0, concurrency_limit=2)
    previous_cache = os.environ.get("GRADIO_TEMP_DIR")
    app.use_output_dir(out)
    demo = app.build_demo(config)
    kwargs = app.launch_kwargs(config, port=free_port())
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    client = gradio_client.Client(demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))
    try:
        yield demo, client, out, str(example_images()[0][0])
    finally:
        demo.close()
        os.environ.pop("DIFFUSION_ADAPTERS_PLACEHOLDER", None)
        if previous_cache is not None:
            os.environ["GRADIO_TEMP_DIR"] = previous_cache


def mv_args(prompt="a red cube", views=4, azimuths="", height=64, width=64, seed=0) -> dict:
    """Keyword arguments of ``/text_to_multiview`` (the handler's parameters)."""
    return dict(
        prompt=prompt,
        negative_prompt="",
        seed=seed,
        randomize=False,
        num_views=views,
        azimuths=azimuths,
        elevation=0,
        height=height,
        width=width,
        steps=2,
        guidance=7.0,
        mv_scale=1.0,
    )


def hipa_args(seed=0, compare=(), prompt="a red cube") -> dict:
    """Keyword arguments of ``/one_step``."""
    return dict(
        prompt=prompt,
        negative_prompt="",
        seed=seed,
        randomize=False,
        compare=list(compare),
        height=64,
        width=64,
        steps=1,
        guidance=1.0,
        lora_scale=1.0,
        teacher_steps=2,
        teacher_guidance=7.5,
    )


def i2v_args(image, prompt="spin", seed=0, prior_strength=0.0, prior_start=0.0, steps=1) -> dict:
    """Keyword arguments of ``/image_to_video``."""
    return dict(
        image=image,
        prompt=prompt,
        negative_prompt="",
        seed=seed,
        randomize=False,
        num_frames=4,
        height=64,
        width=64,
        steps=steps,
        guidance=7.5,
        adapter_scale=1.0,
        prior_strength=prior_strength,
        prior_start=prior_start,
        fps=8,
    )


def test_endpoint_parameters_are_the_handlers_keywords(served):
    """Each endpoint's parameters are its handler's keyword arguments, named and in the same order: the API, the
    tab's controls and the handler cannot drift apart."""
    import inspect

    demo, client, _, _ = served
    api = client.view_api(return_format="dict")["named_endpoints"]
    handlers = {
        "/text_to_multiview": demo.app_state.text_to_multiview,
        "/image_to_multiview": demo.app_state.image_to_multiview,
        "/image_to_video": demo.app_state.image_to_video,
        "/one_step": demo.app_state.one_step,
        "/any_resolution": demo.app_state.any_resolution,
    }
    for endpoint, handler in handlers.items():
        names = [p["parameter_name"] for p in api[endpoint]["parameters"]]
        expected = [name for name in inspect.signature(handler).parameters if name != "progress"]
        assert names == expected, endpoint
    assert list(mv_args()) == [p["parameter_name"] for p in api["/text_to_multiview"]["parameters"]]


def png(path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def test_import_is_cheap_and_build_loads_nothing():
    code = "import sys, app; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


def test_build_demo_has_five_tabs_and_loads_no_model(served):
    demo, client, _, _ = served
    assert demo.app_state.models.loaded in ([], ["mv"], ["mv", "i2v"]) or isinstance(
        demo.app_state.models.loaded, list
    )
    import app

    fresh = app.build_demo(app.AppConfig())
    assert fresh.app_state.models.loaded == []
    api = client.view_api(return_format="dict")["named_endpoints"]
    assert {"/text_to_multiview", "/image_to_multiview", "/image_to_video", "/one_step", "/any_resolution"} <= set(api)


def test_text_to_multiview(served):
    _, client, out, _ = served
    gallery, zip_path, seed, info = client.predict(**mv_args(views=4), api_name="/text_to_multiview")
    assert len(gallery) == 4
    images = [png(item["image"]) for item in gallery]
    # shown enlarged 4x (nearest neighbour), the caption states the real size; the zip holds the real images
    assert all(im.size == (256, 256) and im.mode == "RGB" for im in images)
    assert [item["caption"] for item in gallery] == [f"view {i} · 64x64 px, shown 4x" for i in range(4)]
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        assert names == [f"view_{i:02d}.png" for i in range(4)]
        first = Image.open(io.BytesIO(zf.read(names[0]))).convert("RGB")
        assert first.size == (64, 64)
        assert np.array_equal(np.asarray(first.resize((256, 256), Image.NEAREST)), np.asarray(images[0]))
    assert seed == 0
    assert "4 views" in info and "placeholder" in info
    # custom azimuths set the number of views
    gallery, *_ = client.predict(**mv_args(azimuths="0, 120, 240"), api_name="/text_to_multiview")
    assert len(gallery) == 3
    # everything the request wrote is under the app's own output folder (outputs and Gradio's cache)
    assert list((Path(out) / "outputs" / "mv").glob("*/views.zip"))
    if os.environ["GRADIO_TEMP_DIR"] == str(Path(out).resolve() / "gradio"):  # unless the user set it
        assert list((Path(out) / "gradio").rglob("*.png")) and list((Path(out) / "gradio").rglob("views.zip"))


def test_image_to_multiview_with_geometry(served, tmp_path):
    _, client, _, example = served
    from gradio_client import handle_file

    pos = tmp_path / "pos.png"
    nrm = tmp_path / "nrm.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 96, 3), dtype=np.uint8)).save(pos)
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(nrm)
    kwargs = dict(
        image=handle_file(example),
        prompt="",
        negative_prompt="",
        position_map=handle_file(str(pos)),
        normal_map=handle_file(str(nrm)),
        seed=3,
        randomize=False,
        num_views=3,
        azimuths="",
        elevation=0,
        height=64,
        width=96,
        steps=2,
        guidance=3.0,
        reference_guidance=0,
        mv_scale=1.0,
        ref_scale=1.0,
    )
    gallery, zip_path, seed, info = client.predict(**kwargs, api_name="/image_to_multiview")
    assert len(gallery) == 3 and seed == 3
    assert all(png(item["image"]).size == (96 * 4, 64 * 4) for item in gallery)
    assert all("96x64 px, shown 4x" in item["caption"] for item in gallery)
    # a position map alone is refused with a message
    with pytest.raises(Exception, match="position_map.*normal_map|both"):
        client.predict(**(kwargs | dict(normal_map=None, width=64)), api_name="/image_to_multiview")


def test_image_to_video(served):
    _, client, out, example = served
    import imageio.v3 as iio
    from gradio_client import handle_file

    video, files, seed, info = client.predict(
        **i2v_args(handle_file(example), "spinning", seed=5, prior_strength=0.3, prior_start=0.2, steps=2),
        api_name="/image_to_video",
    )
    video_path = video["video"] if isinstance(video, dict) else video
    frames = iio.imread(video_path)
    assert frames.shape[0] == 4 and frames.shape[1:] == (256, 256, 3)  # 64 px frames shown at 4x
    assert sorted(Path(f).suffix for f in files) == [".gif", ".mp4"]
    gif = next(f for f in files if f.endswith(".gif"))
    assert Image.open(gif).n_frames == 4
    assert seed == 5 and "4 frames of 64x64 px (shown 4x" in info
    assert list((Path(out) / "outputs" / "i2v").glob("*/video.mp4"))


def test_one_step_with_comparisons(served):
    _, client, _, _ = served
    gallery, seed, info = client.predict(
        **hipa_args(compare=["Base, 1 step, no LoRA", "Teacher (base, multi-step)"]), api_name="/one_step"
    )
    assert len(gallery) == 3
    assert all(png(item["image"]).size == (256, 256) for item in gallery)
    captions = [item["caption"] for item in gallery]
    assert captions[0].startswith("HiPA, 1 step") and "Teacher (base, 2 steps)" in captions[2]
    assert all(" ms · 64x64 px, shown 4x" in c for c in captions)


def test_any_resolution_side_by_side(served):
    _, client, _, _ = served
    kwargs = dict(
        prompt="a red cube",
        negative_prompt="",
        seed=0,
        randomize=False,
        height=64,
        width=128,
        compare_base=True,
        steps=2,
        guidance=7.5,
        lora_scale=1.0,
        norm_scale=1.0,
    )
    with_adapter, base, seed, info = client.predict(**kwargs, api_name="/any_resolution")
    # shown enlarged 4x (nearest neighbour), the label states the real size
    assert with_adapter["label"] == "With ResAdapter · 128x64 px, shown 4x"
    assert base["label"] == "Base only · 128x64 px, shown 4x"
    assert png(with_adapter["value"]).size == (128 * 4, 64 * 4) and png(base["value"]).size == (128 * 4, 64 * 4)
    assert "128x64 px" in info
    with_adapter, base, *_ = client.predict(
        **(kwargs | dict(width=64, compare_base=False)), api_name="/any_resolution"
    )
    assert png(with_adapter["value"]).size == (256, 256) and base["value"] is None


def test_bad_inputs_give_clear_messages(served, tmp_path):
    _, client, _, example = served
    from gradio_client import handle_file

    # no image
    with pytest.raises(Exception, match="Input image is missing"):
        client.predict(**i2v_args(None), api_name="/image_to_video")
    # a non-image upload
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(Exception, match="not an image"):
        client.predict(**i2v_args(handle_file(str(fake))), api_name="/image_to_video")
    # too many views
    with pytest.raises(Exception, match="num_views.*between 1 and 12"):
        client.predict(**mv_args(azimuths=",".join(str(10 * i) for i in range(13))), api_name="/text_to_multiview")
    # size out of range (the slider's bounds are enforced on the server)
    with pytest.raises(Exception, match=r"Width must be between 16 and 256, got 4096"):
        client.predict(**mv_args(width=4096), api_name="/text_to_multiview")
    # a size that is not a multiple of the model's factor
    with pytest.raises(Exception, match="multiple of 16"):
        client.predict(**mv_args(width=72), api_name="/text_to_multiview")
    # an oversized upload (limit 1 MB)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    with pytest.raises(Exception, match="(?i)size|large|exceed"):
        client.predict(**i2v_args(handle_file(str(big))), api_name="/image_to_video")
    # the server keeps serving: a good request right after the failures works
    video, *_ = client.predict(**i2v_args(handle_file(example)), api_name="/image_to_video")
    assert video


def test_failing_request_does_not_affect_the_next(served):
    _, client, _, _ = served
    reference, *_ = client.predict(**hipa_args(seed=7), api_name="/one_step")
    with pytest.raises(Exception, match="prompt"):
        client.predict(**hipa_args(prompt="x" * 3000), api_name="/one_step")
    again, *_ = client.predict(**hipa_args(seed=7), api_name="/one_step")
    assert np.array_equal(np.asarray(png(reference[0]["image"])), np.asarray(png(again[0]["image"])))


def test_eight_concurrent_requests_are_queued_and_correct(served):
    _, client, _, _ = served
    seeds = [0, 1, 2, 3, 0, 1, 2, 3]
    jobs = [client.submit(**hipa_args(seed=s), api_name="/one_step") for s in seeds]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: job.result(timeout=600), jobs))
    assert len(results) == 8
    arrays = []
    for (gallery, seed, _info), expected in zip(results, seeds):
        assert seed == expected and len(gallery) == 1
        arrays.append(np.asarray(png(gallery[0]["image"])))
    for i in range(4):  # same seed -> same image, different seeds -> different images
        assert np.array_equal(arrays[i], arrays[i + 4])
    assert not np.array_equal(arrays[0], arrays[1])


def test_defaults_bind_localhost_without_share():
    import app

    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.share is False
    config = app.config_from_args(args)
    kwargs = app.launch_kwargs(config, host=args.host, port=args.port, share=args.share)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False


def test_model_flags_point_tasks_at_checkpoints():
    import app

    args = app.parse_args(["--base", "base-x", "--mv-adapter", "mv.safetensors", "--res-base", "res-y"])
    config = app.config_from_args(args)
    assert config.source("mv").base == "base-x" and config.source("mv").adapter == "mv.safetensors"
    assert config.source("res").base == "res-y"
    assert config.source("i2v").motion_adapter is None and not config.source("hipa").is_embedded


def test_missing_pipeline_module_shows_not_available(served, monkeypatch):
    import app

    real = app._module_error
    monkeypatch.setattr(
        app,
        "_module_error",
        lambda module: "ModuleNotFoundError: gone" if module.endswith("pipeline_i2v_adapter") else real(module),
    )
    demo = app.build_demo(app.AppConfig(output_dir=served[2]))
    text = str(demo.config)
    assert "Image to video is not available" in text and "ModuleNotFoundError: gone" in text
    endpoints = {dep.get("api_name") for dep in demo.config["dependencies"]}
    assert "image_to_video" not in endpoints and "text_to_multiview" in endpoints


def test_model_load_failure_is_a_message_and_is_retried(tmp_path):
    import app

    calls = []

    def loader(key, source, device, dtype):
        calls.append(key)
        raise OSError("no such model 'x' (offline?)")

    demo_app = app.DemoApp(app.AppConfig(output_dir=tmp_path, loader=loader))
    wrapped = app._user_errors(demo_app.one_step)
    for _ in range(2):
        with pytest.raises(app.gr.Error, match="Could not load the embedded model for 'hipa': OSError: no such model"):
            wrapped(**hipa_args(prompt="a cube"))
    assert calls == ["hipa", "hipa"]


def test_video_falls_back_to_gif_without_ffmpeg(tmp_path, monkeypatch):
    import app
    from pipelines import tasks

    frames = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(3)]
    monkeypatch.setattr(tasks, "image_to_video", lambda pipe, image, prompt, **kwargs: frames)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # "not installed"
    image = tmp_path / "in.png"
    Image.new("RGB", (32, 32), "white").save(image)
    demo_app = app.DemoApp(app.AppConfig(output_dir=tmp_path, loader=lambda *args: object()))
    kwargs = i2v_args(str(image), prompt="", seed=1) | dict(num_frames=3, height=32, width=32)
    video, files, seed, info = demo_app.image_to_video(**kwargs, progress=None)
    assert video is None and len(files) == 1 and files[0].endswith(".gif")
    assert Image.open(files[0]).n_frames == 3 and "GIF only" in info
    assert Path(files[0]).is_relative_to(tmp_path)


def test_user_errors_are_one_log_line_and_bugs_keep_their_traceback(tmp_path, caplog):
    import logging

    import app

    demo_app = app.DemoApp(app.AppConfig(output_dir=tmp_path, loader=lambda *args: object()))
    wrapped = app._user_errors(demo_app.one_step)
    with caplog.at_level(logging.WARNING, logger="diffusion_adapters.app"):
        with pytest.raises(app.gr.Error) as err:
            wrapped(**hipa_args(seed=-5, prompt="a cube"))  # a bad seed
    assert err.value.print_exception is False  # Gradio prints no traceback for it either
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("WARNING", None)]
    assert caplog.records[0].getMessage().startswith("one_step: Seed must be between 0")
    caplog.clear()

    # a KeyError, and a TypeError too (every widget hands its handler a typed value), is a bug: traceback logged
    for bug in (KeyError("a bug"), TypeError("'NoneType' object is not subscriptable")):

        def broken(*args, bug=bug, **kwargs):
            raise bug

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="diffusion_adapters.app"):
            with pytest.raises(app.gr.Error, match=f"Generation failed: {type(bug).__name__}"):
                app._user_errors(broken)()
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None  # the traceback is logged


def test_slider_out_of_range_is_a_message_not_a_traceback(served, caplog):
    import logging

    demo, *_ = served
    views = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "mv-views")
    with caplog.at_level(logging.WARNING, logger="diffusion_adapters.app"):
        with pytest.raises(
            Exception, match=r"Views must be between 1 and 12, got 500 \(the slider stops at 12\)"
        ) as err:
            views.preprocess(500)
    assert err.value.print_exception is False
    assert [r.getMessage() for r in caplog.records] == [
        "Views must be between 1 and 12, got 500 (the slider stops at 12)."
    ]
