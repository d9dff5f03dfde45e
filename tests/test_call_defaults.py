"""Call defaults stored with each embedded model (``assets/<folder>/pipeline_defaults.json``): the pipeline, the tasks,
the CLI and the app use them; an explicit argument wins; a bad file is refused."""

from __future__ import annotations

import functools
import json
import math

import pytest
from PIL import Image

from pipelines.call_defaults import (
    DEFAULTS_FILE_NAME,
    get_call_defaults,
    parse_call_defaults,
    read_call_defaults,
    set_call_defaults,
)
from pipelines.embedded import PLACEHOLDER_ENV, assets_dir, call_defaults_path, embedded_call_defaults

ASSETS = assets_dir()
needs_assets = pytest.mark.skipif(
    not (ASSETS / "base" / "model_index.json").is_file(), reason="the embedded models are not in assets/"
)
FOLDERS = {"base": "base", "res": "res_adapter", "mv": "mv_adapter", "i2v": "i2v_adapter", "hipa": "hipa"}


class _Stop(Exception):
    """Raised by the scheduler spy: the call got as far as choosing its timesteps."""


def _spy_steps(pipe, monkeypatch) -> list:
    """Record ``scheduler.set_timesteps``'s step count, then stop the call (no denoising needed)."""
    seen: list = []

    def spy(num_inference_steps=None, *args, **kwargs):
        seen.append(num_inference_steps)
        raise _Stop

    monkeypatch.setattr(pipe.scheduler, "set_timesteps", spy)  # undone after the test
    return seen


def _run(pipe, **kwargs):
    try:
        pipe(**kwargs)
    except _Stop:
        pass


@pytest.fixture
def real_assets(monkeypatch):
    monkeypatch.delenv(PLACEHOLDER_ENV, raising=False)


@pytest.fixture(scope="module")
def loaded():
    """The embedded pipelines, loaded once (real assets, no placeholders)."""
    import os

    from pipelines.embedded import load_embedded

    previous = os.environ.pop(PLACEHOLDER_ENV, None)
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache[name] = load_embedded(name, device="cpu", dtype="float32", progress_bar=False)
        return cache[name]

    try:
        yield get
    finally:
        if previous is not None:
            os.environ[PLACEHOLDER_ENV] = previous


# ----------------------------------------------------------------------------------------------------------------------
# the shipped files
# ----------------------------------------------------------------------------------------------------------------------


@needs_assets
@pytest.mark.parametrize("name", list(FOLDERS))
def test_every_embedded_model_ships_valid_defaults(name, real_assets, loaded):
    path = ASSETS / FOLDERS[name] / DEFAULTS_FILE_NAME
    assert call_defaults_path(name) == path
    stored = json.loads(path.read_text())
    pipe = loaded(name)
    assert pipe.call_defaults == stored  # attached as read, and checked against the pipeline's __call__
    assert type(pipe).__name__ == type(pipe).__mro__[1].__name__  # same class name, a diffusers user sees no change
    assert embedded_call_defaults(name).to_json() == stored


@needs_assets
@pytest.mark.parametrize("name", ["base", "res", "mv", "i2v"])
def test_the_pipeline_runs_with_the_stored_steps_and_guidance(name, real_assets, loaded, monkeypatch):
    pipe = loaded(name)
    stored = pipe.call_defaults
    seen = _spy_steps(pipe, monkeypatch)
    kwargs = {"prompt": "a red cube"}
    if name == "i2v":
        kwargs["image"] = Image.new("RGB", (32, 32), "red")
    _run(pipe, **kwargs)
    assert seen == [stored["num_inference_steps"]]
    assert math.isclose(pipe.guidance_scale, stored["guidance_scale"])
    # an explicit argument wins, and None means "the default"
    _run(pipe, **kwargs, num_inference_steps=3, guidance_scale=1.5)
    _run(pipe, **kwargs, num_inference_steps=None)
    assert seen[1:] == [3, stored["num_inference_steps"]]


@needs_assets
def test_mode_dependent_defaults_apply_when_their_argument_is_given(real_assets, loaded, monkeypatch):
    pipe = loaded("mv")
    stored = pipe.call_defaults
    _spy_steps(pipe, monkeypatch)
    _run(pipe, prompt="a red cube")
    assert pipe.guidance_scale == stored["guidance_scale"]
    _run(pipe, prompt="", image=Image.new("RGB", (32, 32), "red"))
    assert pipe.guidance_scale == stored["when_given"]["image"]["guidance_scale"]
    _run(pipe, prompt="", image=Image.new("RGB", (32, 32), "red"), guidance_scale=5.0)
    assert pipe.guidance_scale == 5.0


@needs_assets
def test_the_filled_arguments_reach_the_pipeline_call(real_assets, loaded, monkeypatch):
    """Spy on the pipeline class's own ``__call__``: every stored argument arrives, explicit ones win."""
    pipe = loaded("i2v")
    parent = type(pipe).__mro__[1]
    calls = []

    @functools.wraps(parent.__call__)  # the spy keeps the real signature
    def spy(self, *args, **kwargs):
        calls.append((args, kwargs))

    monkeypatch.setattr(parent, "__call__", spy)
    image = Image.new("RGB", (32, 32), "red")
    pipe(image=image, prompt="spin")
    pipe(image, "spin", 4, num_inference_steps=2, similarity_prior=(0.5, 0.2))
    stored = pipe.call_defaults
    (_, first), (args, second) = calls
    expected = {k: v for k, v in stored.items() if k != "trained_sizes"}
    assert {k: first[k] for k in expected} == expected
    assert args == (image, "spin", 4) and "num_frames" not in second  # passed positionally: not replaced
    assert second["num_inference_steps"] == 2 and second["similarity_prior"] == (0.5, 0.2)
    assert second["guidance_scale"] == stored["guidance_scale"]


@needs_assets
def test_tasks_cli_and_app_use_the_stored_defaults(real_assets, loaded, tmp_path):
    from pipelines import tasks
    from pipelines.__main__ import main

    pipe = loaded("res")
    stored = pipe.call_defaults
    results = tasks.any_resolution(pipe, "a red cube", num_inference_steps=1, with_base=False)
    assert results[0][1].size == (stored["width"], stored["height"])
    # the CLI: no size flag -> the stored size
    out = tmp_path / "res"
    assert main(["res", "--prompt", "a cube", "--steps", "1", "--no-base", "--out", str(out), "--quiet"]) == 0
    assert Image.open(out / "res_adapter.png").size == (stored["width"], stored["height"])
    # the app: every tab starts at its model's stored values
    import app

    demo = app.build_demo(app.AppConfig(output_dir=tmp_path / "app"))
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    i2v = json.loads((ASSETS / "i2v_adapter" / DEFAULTS_FILE_NAME).read_text())
    mv = json.loads((ASSETS / "mv_adapter" / DEFAULTS_FILE_NAME).read_text())
    assert by_id["i2v-steps"].value == i2v["num_inference_steps"]
    assert by_id["i2v-frames"].value == i2v["num_frames"]
    assert by_id["i2v-prior"].value == i2v["similarity_prior"]["strength"]
    assert by_id["mv-steps"].value == mv["num_inference_steps"]
    assert by_id["res-height"].value == stored["height"] and by_id["res-width"].value == stored["width"]
    trained = stored["trained_sizes"]
    assert (by_id["res-height"].minimum, by_id["res-height"].maximum) == (trained["min_side"], trained["max_side"])


@needs_assets
def test_a_size_outside_the_trained_range_is_said_on_the_page(real_assets, tmp_path, monkeypatch):
    import app

    warned = []
    monkeypatch.setattr(app.gr, "Warning", lambda message, *a, **k: warned.append(message))
    demo_app = app.DemoApp(app.AppConfig(output_dir=tmp_path))
    common = {
        "prompt": "a cube", "negative_prompt": "", "seed": 0, "randomize": False, "compare_base": False, "steps": 1,
        "guidance": 7.5, "lora_scale": 1.0, "norm_scale": 1.0, "progress": None,
    }  # fmt: skip
    *_, info = demo_app.any_resolution(height=16, width=48, **common)
    assert warned and "aspect ratio" in warned[0] and "48x16" in warned[0] and warned[0] in info
    warned.clear()
    demo_app.any_resolution(height=32, width=64, **common)
    assert warned == []


# ----------------------------------------------------------------------------------------------------------------------
# bad files are refused
# ----------------------------------------------------------------------------------------------------------------------


def _i2v_call():
    from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline

    return I2VAdapterPipeline.__call__


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"num_inference_stepz": 20}, "`num_inference_stepz` is not an argument"),
        ({"num_inference_steps": 0}, "`num_inference_steps` must be a positive integer"),
        ({"num_inference_steps": 2.5}, "`num_inference_steps` must be an integer"),
        ({"num_inference_steps": "20"}, "`num_inference_steps` must be"),
        ({"num_inference_steps": True}, "`num_inference_steps` must be"),
        ({"guidance_scale": float("nan")}, "`guidance_scale` must be a finite number"),
        ({"guidance_scale": -1}, "`guidance_scale` must be a number >= 0"),
        ({"guidance_scale": None}, "`guidance_scale` is null"),
        ({"similarity_prior": {"strength": 2.0}}, "similarity_prior"),
        ({"similarity_prior": "strong"}, "similarity_prior"),
        ({"image": "cube.png"}, "`image` is a per-call input"),
        ({"generator": 0}, "`generator` is a per-call input"),
        ({"when_given": {"imagez": {"guidance_scale": 3}}}, "`when_given.imagez` is not an argument"),
        ({"when_given": {"image": {"num_frames": -1}}}, "`num_frames` must be a positive integer"),
        ({"trained_sizes": {"min_side": 64, "max_side": 16}}, "min_side` is above max_side"),
        ({"trained_sizes": {"min_side": 16}}, "max_side` must be a positive integer"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(data, match):
    with pytest.raises(ValueError, match=match):
        parse_call_defaults(data, _i2v_call(), source="test.json")


def test_read_refuses_broken_json_and_accepts_a_missing_file(tmp_path):
    (tmp_path / DEFAULTS_FILE_NAME).write_text("{num_inference_steps: 20")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        read_call_defaults(tmp_path)
    assert read_call_defaults(tmp_path / "nowhere") == {}
    (tmp_path / DEFAULTS_FILE_NAME).write_text('{"num_inference_steps": NaN}')
    with pytest.raises(ValueError, match="finite"):
        read_call_defaults(tmp_path)


@needs_assets
def test_load_embedded_refuses_a_bad_file_before_loading(real_assets, tmp_path, monkeypatch):
    from pipelines import embedded

    for part in ("base", "motion_adapter"):
        (tmp_path / part).symlink_to(ASSETS / part)
    folder = tmp_path / "i2v_adapter"
    folder.mkdir()
    for weights in (ASSETS / "i2v_adapter").glob("*.safetensors"):
        (folder / weights.name).symlink_to(weights)
    (folder / DEFAULTS_FILE_NAME).write_text(json.dumps({"num_inference_steps": 20, "guidance": 7.5}))
    monkeypatch.setenv(embedded.ASSETS_ENV, str(tmp_path))
    loaders = []
    monkeypatch.setitem(embedded._LOADERS, "i2v", lambda *args: loaders.append(args))
    with pytest.raises(ValueError, match=r"i2v_adapter.*`guidance` is not an argument"):
        embedded.load_embedded("i2v")
    (folder / DEFAULTS_FILE_NAME).write_text(json.dumps({"num_frames": 0}))
    with pytest.raises(ValueError, match="`num_frames` must be a positive integer"):
        embedded.load_embedded("i2v")
    assert loaders == []  # refused before any model was loaded


# ----------------------------------------------------------------------------------------------------------------------
# attaching defaults to any pipeline
# ----------------------------------------------------------------------------------------------------------------------


def test_set_call_defaults_on_a_diffusers_pipeline(tiny_sd15, tmp_path, monkeypatch):
    import inspect

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    signature = inspect.signature(pipe.__call__)
    set_call_defaults(pipe, {"num_inference_steps": 2, "guidance_scale": 1.0})
    assert isinstance(pipe, StableDiffusionPipeline) and type(pipe).__name__ == "StableDiffusionPipeline"
    assert inspect.signature(pipe.__call__) == signature
    assert pipe.call_defaults == {"num_inference_steps": 2, "guidance_scale": 1.0}
    seen = _spy_steps(pipe, monkeypatch)
    _run(pipe, prompt="a cube")
    _run(pipe, prompt="a cube", num_inference_steps=4)
    assert seen == [2, 4]
    with pytest.raises(ValueError, match="`height` must be a multiple of"):
        set_call_defaults(pipe, {"height": 36})
    assert get_call_defaults(pipe) == {"num_inference_steps": 2, "guidance_scale": 1.0}  # unchanged after a refusal
    pipe.save_pretrained(tmp_path / "saved")  # the class swap leaves save_pretrained's model_index intact
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    set_call_defaults(pipe, {})
    assert pipe.call_defaults == {}
    _run(pipe, prompt="a cube")
    assert seen[-1] == 50  # diffusers' own default again


def test_trained_size_note():
    from pipelines.tasks import trained_size_note

    trained = {"min_side": 16, "max_side": 64, "max_aspect_ratio": 2}
    assert trained_size_note(trained, 32, 64) is None
    assert "size" in trained_size_note(trained, 8, 16)
    assert "aspect ratio" in trained_size_note(trained, 16, 48)
    assert "32x32" in trained_size_note({"min_side": 32, "max_side": 32}, 64, 64)
    assert trained_size_note(None, 9999, 1) is None


def test_task_defaults_map_the_stored_prior_and_fall_back_without_a_file():
    from pipelines.call_defaults import CallDefaults
    from pipelines.tasks import task_defaults

    stored = CallDefaults({"num_inference_steps": 12, "similarity_prior": [0.4, 0.1]})
    values = task_defaults("i2v", stored)
    assert values["num_inference_steps"] == 12 and (values["prior_strength"], values["prior_start"]) == (0.4, 0.1)
    bare = task_defaults("i2v")
    assert bare["trained_sizes"] is None and "height" not in bare and bare["num_frames"] >= 2
