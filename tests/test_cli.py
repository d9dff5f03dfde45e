"""``python -m pipelines TASK ... --out DIR`` writes the task's images / video into DIR (placeholder models)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def placeholder_models(monkeypatch):
    monkeypatch.setenv("DIFFUSION_ADAPTERS_PLACEHOLDER", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def example_image() -> str:
    from pipelines.embedded import example_images

    return str(example_images()[0][0])


def run_cli(*args: str) -> None:
    from pipelines.__main__ import main

    assert main([*args, "--quiet"]) == 0


def test_mv_writes_views_grid_and_zip(tmp_path):
    out = tmp_path / "mv"
    run_cli("mv", "--prompt", "a red cube", "--num-views", "3", "--steps", "2", "--out", str(out))
    views = sorted(out.glob("view_*.png"))
    assert [p.name for p in views] == ["view_00.png", "view_01.png", "view_02.png"]
    assert all(Image.open(p).size == (64, 64) for p in views)
    assert Image.open(out / "grid.png").size == (3 * 64, 64)
    with zipfile.ZipFile(out / "views.zip") as zf:
        assert len(zf.namelist()) == 3
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "mv" and result["placeholder_weights"] is True


def test_i2v_writes_mp4_gif_and_frames(tmp_path, example_image):
    import imageio.v3 as iio

    out = tmp_path / "i2v"
    run_cli("i2v", "--image", example_image, "--prompt", "spin", "--frames", "3", "--steps", "2", "--out", str(out))
    assert iio.imread(out / "video.mp4").shape[0] == 3
    assert Image.open(out / "video.gif").n_frames == 3
    assert len(list((out / "frames").glob("frame_*.png"))) == 3


def test_hipa_and_res_write_images(tmp_path):
    out = tmp_path / "hipa"
    run_cli("hipa", "--prompt", "a cube", "--compare", "plain", "--out", str(out))
    assert {p.name for p in out.glob("*.png")} == {"hipa.png", "plain.png"}
    out = tmp_path / "res"
    run_cli("res", "--prompt", "a cube", "--height", "64", "--width", "128", "--steps", "2", "--out", str(out))
    assert Image.open(out / "res_adapter.png").size == (128, 64)
    assert Image.open(out / "base.png").size == (128, 64)


def test_i2mv_with_image(tmp_path, example_image):
    out = tmp_path / "i2mv"
    run_cli("i2mv", "--image", example_image, "--azimuths", "0,90", "--steps", "1", "--out", str(out))
    assert len(list(out.glob("view_*.png"))) == 2


def test_bad_input_exits_2_before_loading(tmp_path):
    from pipelines.__main__ import main

    assert main(["mv", "--prompt", "x", "--num-views", "40", "--out", str(tmp_path / "a")]) == 2
    not_image = tmp_path / "x.png"
    not_image.write_text("nope")
    assert main(["i2v", "--image", str(not_image), "--out", str(tmp_path / "b")]) == 2


def test_sizes_are_checked_against_the_base_before_it_loads(tmp_path, tiny_sd15, monkeypatch, caplog):
    """``--height`` / ``--width`` that the base cannot take (not a multiple of its size factor, above 8x its native
    side) are refused from the base's config files, before any weights load, with one line naming the flag."""
    from pipelines import embedded
    from pipelines.__main__ import main
    from pipelines.utils import folder_geometry

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the size was checked")

    monkeypatch.setattr(embedded, "load_pipeline", no_loading)
    native, multiple = folder_geometry(tiny_sd15)
    bad = [str(multiple + multiple // 2), str(8 * native + multiple)]
    for flag, value in (("--height", bad[0]), ("--width", bad[1])):
        argv = ["res", "--prompt", "x", "--base", str(tiny_sd15), flag, value, "--out", str(tmp_path / flag[2:])]
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert main(argv) == 2
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and f"`{flag}`" in errors[0].getMessage() and errors[0].exc_info is None
    assert folder_geometry(tmp_path) is None  # no configs: the loaded model is checked instead


def test_module_entry_point_help():
    res = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0
    for task in ("mv", "i2mv", "i2v", "hipa", "res"):
        assert task in res.stdout


HIPA_RUN = ["hipa", "--prompt", "a cube", "--compare", "plain"]


def _run_quiet(tmp_path, env, runs: list[list[str]]) -> subprocess.CompletedProcess:
    """Run each ``python -m pipelines`` argv of ``runs`` with ``--quiet`` in one fresh process (the flag does the
    same each call; one process saves the start-up)."""
    script = (
        "from pipelines.__main__ import main\n"
        f"for argv in {runs!r}:\n"
        f"    assert main([*argv, '--out', {str(tmp_path)!r} + '/q_' + argv[0], '--quiet']) == 0, argv\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow
def test_quiet_is_quiet_for_every_task(tmp_path, example_image):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DIFFUSION_ADAPTERS_PLACEHOLDER": "1"}
    runs = [
        ["mv", "--prompt", "a red cube", "--num-views", "2", "--steps", "1"],
        ["i2mv", "--image", example_image, "--azimuths", "0,90", "--steps", "1"],
        ["res", "--prompt", "a cube", "--steps", "1", "--height", "32", "--width", "64"],
    ]
    quiet = _run_quiet(tmp_path, env, runs)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert {Path(line).parent.name for line in quiet.stdout.split()} == {"q_mv", "q_i2mv", "q_res"}


def test_errors_are_one_line_bugs_a_traceback_and_quiet_is_quiet(tmp_path, example_image, monkeypatch):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DIFFUSION_ADAPTERS_PLACEHOLDER": "1"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "pipelines", *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
        )

    bad = cli("i2v", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "a"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "python -m pipelines i2v: error: `--image`: no such file 'missing.png'. (--help lists the flags)"
    ]
    quiet = _run_quiet(tmp_path, env, [["i2v", "--image", example_image, "--frames", "2", "--steps", "1"], HIPA_RUN])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # no progress bar (loading, denoising, video), no library notice, no Python warning
    assert quiet.stdout.split() == [str(tmp_path / "q_i2v" / n) for n in ("video.mp4", "video.gif", "frames")] + [
        str(tmp_path / "q_hipa" / n) for n in ("hipa.png", "plain.png")
    ]

    # a size the base cannot take (its size multiple, read from its config files before loading): one line, no
    # traceback
    from pipelines import __main__ as cli_main

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    cli_main.logger.addHandler(handler)
    try:
        argv = ["res", "--prompt", "x", "--height", "36", "--width", "32", "--out", str(tmp_path / "d")]
        assert cli_main.main(argv) == 2
    finally:
        cli_main.logger.removeHandler(handler)
    assert [(r.levelname, r.exc_info) for r in records] == [("ERROR", None)]
    assert "`--height`" in records[0].getMessage() and "\n" not in records[0].getMessage()

    for bug in (KeyError("a bug"), TypeError("unsupported operand")):  # every value was typed: a TypeError is a bug

        def broken(args, bug=bug):
            raise bug

        monkeypatch.setattr(cli_main, "run", broken)
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        cli_main.logger.addHandler(handler)
        try:
            assert cli_main.main(["mv", "--prompt", "x", "--out", str(tmp_path / "c")]) == 1
        finally:
            cli_main.logger.removeHandler(handler)
        assert [r.exc_info is not None for r in records] == [True]  # a bug keeps its traceback
