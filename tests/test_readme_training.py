"""The README's "## Training" commands run as written on the embedded base, one or two steps each.

Each command of the README's training code block is run in-process (``runpy``, as ``python -m``; ``accelerate launch
-m X`` is the single-process ``python -m X``) in a temporary folder holding links to ``assets/`` and ``training/``,
with only ``--num`` lowered for the data exports and ``--max_train_steps 1 --report_to none`` appended to the
training commands (argparse: the last flag wins). A missing input path is one clear line, before any model loads.
"""

from __future__ import annotations

import logging
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_training_commands() -> list[list[str]]:
    """The commands of the README's "## Training" code block (continuations joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Training", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


COMMANDS = readme_training_commands()
TRAIN_MODULES = sorted({c[c.index("-m") + 1] for c in COMMANDS if c[:2] == ["accelerate", "launch"]})


def _module_argv(command: list[str]) -> tuple[str, list[str]]:
    i = command.index("-m")
    return command[i + 1], command[i + 2 :]


def _run(module: str, argv: list[str]) -> None:
    saved = sys.argv
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = saved


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    (tmp_path / "training").symlink_to(ROOT / "training")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_one_command_per_training_script():
    assert TRAIN_MODULES == [
        "training.train_hipa",
        "training.train_i2v_adapter",
        "training.train_mv_adapter",
        "training.train_res_adapter",
    ]
    for command in COMMANDS:
        assert "<" not in " ".join(command), f"placeholder left in a README command: {command}"
        if command[:2] == ["accelerate", "launch"]:  # the launcher's own notices are kept quiet by the shipped config
            assert command[2:5] == ["--config_file", "training/configs/accelerate_single.yaml", "-q"], command


@pytest.mark.parametrize("module", TRAIN_MODULES, ids=[m.split(".")[-1] for m in TRAIN_MODULES])
def test_readme_training_command_runs(module, workdir):
    """The README's data export (if any) and training command for ``module``, for one step."""
    index = next(i for i, c in enumerate(COMMANDS) if c[:2] == ["accelerate", "launch"] and module in c)
    prev = COMMANDS[index - 1] if index else []
    if prev[:3] == ["python", "-m", "training.miniworld.export"]:
        export_module, export_argv = _module_argv(prev)
        export_argv = [("2" if i and export_argv[i - 1] == "--num" else a) for i, a in enumerate(export_argv)]
        _run(export_module, export_argv)
    _, argv = _module_argv(COMMANDS[index])
    _run(module, [*argv, "--max_train_steps", "1", "--report_to", "none"])
    out = Path(argv[argv.index("--output_dir") + 1])
    written = [p for p in out.rglob("*.safetensors") if "checkpoint-" not in str(p)]
    assert written, f"{module} wrote no adapter file under {out}"


@pytest.mark.parametrize("module", TRAIN_MODULES, ids=[m.split(".")[-1] for m in TRAIN_MODULES])
def test_missing_input_path_is_one_line(module, workdir, caplog):
    """A missing base or data / prompts path: exit status 2 and one error line naming the flag, no model loaded."""
    index = next(i for i, c in enumerate(COMMANDS) if c[:2] == ["accelerate", "launch"] and module in c)
    _, argv = _module_argv(COMMANDS[index])
    flag = "--prompts_file" if "--prompts_file" in argv else "--train_data_dir"
    for bad_flag in ("--pretrained_model_name_or_path", flag):
        bad = list(argv)
        bad[bad.index(bad_flag) + 1] = "does/not/exist.txt" if bad_flag == "--prompts_file" else "no_such_folder"
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as info:
            _run(module, bad)
        assert info.value.code == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert f"`{bad_flag}`" in errors[0] and "does not exist" in errors[0], errors[0]
    assert not (workdir / "out").exists() or not any((workdir / "out").rglob("*.safetensors"))


def test_resolution_defaults_to_the_base_native_size():
    from training.core.config import native_resolution
    from training.train_hipa import HiPATrainConfig

    cfg = HiPATrainConfig(pretrained_model_name_or_path=str(ROOT / "assets" / "base"))
    assert cfg.resolution is None
    assert cfg.resolve_resolution() == native_resolution(ROOT / "assets" / "base") == 32
    assert HiPATrainConfig(pretrained_model_name_or_path="x", resolution=64).resolve_resolution() == 64


if os.environ.get("HF_HUB_OFFLINE") is None:  # the commands load local folders only
    os.environ["HF_HUB_OFFLINE"] = "1"


def test_accelerate_launch_with_the_single_process_config_prints_one_line():
    """Through ``accelerate launch`` (a separate launcher process, where no filter of ours runs): with the shipped
    single-process config (``--config_file training/configs/accelerate_single.yaml``) the launcher prints no "values
    were not passed to `accelerate launch` and had defaults used instead" notice, and with its ``-q`` no traceback of
    its own when the script exits 2. A bad flag is then one line on stderr, as with ``python -m``."""
    import subprocess

    config = ROOT / "training" / "configs" / "accelerate_single.yaml"
    command = ["accelerate", "launch", "--config_file", str(config), "-q", "-m", "training.train_hipa"]
    command += ["--pretrained_model_name_or_path", "assets/base", "--learning_rate", "nan"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "`--learning_rate` must be a finite number > 0, got nan" in lines[0]
