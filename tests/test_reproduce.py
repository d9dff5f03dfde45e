"""`python -m training.reproduce`: one command per embedded model, producing exactly the layout of `assets/`."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training import reproduce as rp
from training.core.trainer import AdapterTrainer

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
#: Folders of recipes whose model may not be shipped yet (its training runs after the recipe lands); once the folder is
#: in assets/ every check below covers it like the others.
NOT_YET_SHIPPED = {"mv_adapter_geometry"}


def _shipped(folder: str) -> bool:
    return (ASSETS / folder).is_dir() or folder not in NOT_YET_SHIPPED


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }


def _trainer_class(module_name: str) -> type[AdapterTrainer] | None:
    module = importlib.import_module(module_name)
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, AdapterTrainer) and v.__module__ == module_name
    ]
    return found[0] if found else None


def test_every_documented_step_parses_with_its_script():
    """Each step's flags are accepted by its script: trainer configs parse them (types included); the other scripts
    list every flag in their --help."""
    recipes = rp.resolve_names(["all"])
    paths = rp.plan(recipes, "runs", "runs/assets")
    helps: dict[str, str] = {}
    for recipe in recipes:
        for step in recipe.steps:
            module, *args = step.argv(paths)
            trainer = _trainer_class(module)
            if trainer is not None and args[:1] == ["export"]:  # a trainer's checkpoint export sub-command
                text = subprocess.run(
                    [sys.executable, "-m", module, "export", "--help"], capture_output=True, text=True, cwd=ROOT
                ).stdout
                flags = [a for a in args if a.startswith("--")]
                assert flags and all(f in text for f in flags), (module, flags)
            elif trainer is not None:
                config = trainer.config_class.from_args(args)
                assert config.output_dir.startswith("runs/"), (recipe.name, config.output_dir)
                assert config.resume_from_checkpoint == "latest"
            else:
                if module not in helps:
                    helps[module] = subprocess.run(
                        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True, cwd=ROOT
                    ).stdout
                flags = [a for a in args if a.startswith("--")]
                assert flags and all(f in helps[module] for f in flags), (module, flags)


def test_assets_readme_lists_exactly_the_commands(capsys):
    rp.main(["all", "--print"])
    printed = capsys.readouterr().out.strip()
    text = (ASSETS / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert printed in [b.strip() for b in blocks], (
        "assets/README.md does not list `python -m training.reproduce all --print`"
    )


def _fake_runner(recipes, paths, calls):
    """Stands in for training: touches each step's output; after a recipe's last step, puts the shipped assets where
    its training would have written them (the inverse of the assembly)."""
    last = {tuple(r.steps[-1].argv(paths)): r for r in recipes}
    produces = {tuple(s.argv(paths)): s.produces.format(**paths) for r in recipes for s in r.steps}

    def run(argv):
        calls.append(list(argv))
        done = Path(produces[tuple(argv)])
        done.parent.mkdir(parents=True, exist_ok=True)
        done.touch()
        recipe = last.get(tuple(argv))
        if recipe is None:
            return
        for src, rel in recipe.files:
            source, shipped = Path(src.format(**paths)), ASSETS / recipe.folder / rel
            if not _shipped(recipe.folder):
                source.parent.mkdir(parents=True, exist_ok=True)
                source.write_bytes(b"trained later")
                continue
            if shipped.is_dir():
                shutil.copytree(shipped, source, dirs_exist_ok=True)
            else:
                source.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(shipped, source)

    return run


def test_all_reproduces_the_shipped_layout_in_dependency_order(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "assets"
    recipes = rp.resolve_names(["all"])
    paths = rp.plan(recipes, runs, out)
    calls: list[list[str]] = []
    folders = rp.reproduce(["all"], runs, out, run=_fake_runner(recipes, paths, calls))

    pending = sorted(r.folder for r in recipes if not _shipped(r.folder))
    for folder in pending:
        shutil.rmtree(out / folder)
    assert _tree(out) == _tree(ASSETS)  # every shipped file, at its place, nothing else
    assert sorted(f.name for f in folders) == sorted([p.name for p in ASSETS.iterdir() if p.is_dir()] + pending)
    modules = [c[0] for c in calls]
    assert modules.index("training.train_base") < modules.index("training.train_res_adapter")
    assert modules.index("training.train_motion") < modules.index("training.train_i2v_adapter")
    i2v = calls[modules.index("training.train_i2v_adapter")]
    assert i2v[i2v.index("--pretrained_model_name_or_path") + 1] == str(out / "base")  # trained on the new base
    assert i2v[i2v.index("--motion_adapter_path") + 1] == str(out / "motion_adapter")
    assert not list(out.glob(".*")), "temporary folders left behind"


def test_single_adapter_trains_on_the_shipped_base_and_resumes(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    recipes = rp.resolve_names(["i2v"])
    paths = rp.plan(recipes, runs, out, base="assets/base", motion_adapter="assets/motion_adapter")
    calls: list[list[str]] = []
    rp.reproduce(["i2v"], runs, out, run=_fake_runner(recipes, paths, calls))
    assert len(calls) == 1 and "assets/base" in calls[0] and "assets/motion_adapter" in calls[0]
    assert (out / "i2v_adapter" / "i2v_adapter.safetensors").read_bytes() == (
        ASSETS / "i2v_adapter" / "i2v_adapter.safetensors"
    ).read_bytes()

    # an interrupted `base`: the finished steps are skipped, the others run
    recipes = rp.resolve_names(["base"])
    paths = rp.plan(recipes, runs, out)
    for step in recipes[0].steps[:2]:
        Path(step.produces.format(**paths)).parent.mkdir(parents=True, exist_ok=True)
        Path(step.produces.format(**paths)).touch()
    calls.clear()
    rp.reproduce(["base"], runs, out, run=_fake_runner(recipes, paths, calls))
    vae, unet = "training.train_base_vae", "training.train_base"
    assert [c[0] for c in calls] == [vae, vae, unet, unet, unet, vae, unet, vae]
    assert [c[c.index("--output_dir") + 1] for c in calls] == [
        str(runs / n)
        for n in ("base-vae-dec", "base-vae-ms", "base", "base-long", "base-5000", "base-vae-full", "base-v2")
        + ("base-vae-full-ms",)
    ]
    assert calls[4][1] == "export"  # v1, the start of the whole-VAE fine-tune
    # v2 continues on the fine-tuned VAE, and its decoder stage starts from that VAE too (same latent space)
    assert calls[6][calls[6].index("--pretrained_model_name_or_path") + 1] == str(runs / "base-vae-full")
    assert calls[7][calls[7].index("--pretrained_model_name_or_path") + 1] == str(runs / "base-vae-full")


def test_existing_output_is_never_replaced_without_overwrite(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    mine = out / "res_adapter" / "my_adapter.safetensors"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"user weights")
    calls: list[list[str]] = []
    recipes = rp.resolve_names(["res"])
    paths = rp.plan(recipes, runs, out)
    with pytest.raises(FileExistsError, match="res_adapter.*--overwrite"):
        rp.reproduce(["res"], runs, out, run=_fake_runner(recipes, paths, calls))
    assert calls == [] and mine.read_bytes() == b"user weights"  # refused before training anything

    rp.reproduce(["res"], runs, out, overwrite=True, run=_fake_runner(recipes, paths, calls))
    assert sorted(p.name for p in (out / "res_adapter").iterdir()) == sorted(
        p.name for p in (ASSETS / "res_adapter").iterdir()
    )


def test_missing_outputs_and_unknown_names_are_refused(tmp_path):
    recipe = rp.resolve_names(["mv"])[0]
    paths = rp.plan([recipe], tmp_path / "runs", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        rp.assemble(recipe, paths, tmp_path / "out")
    assert not (tmp_path / "out" / "mv_adapter").exists()
    with pytest.raises(ValueError, match=r"\['vae'\].*'base', 'res'"):
        rp.resolve_names(["res", "vae"])
    with pytest.raises(SystemExit):
        rp.main(["vae", "--print"])


def test_recipe_defaults_are_valid_call_defaults_of_their_pipelines():
    """The defaults table of each recipe is what `assets/<folder>/pipeline_defaults.json` ships, and each parses as
    call defaults of the pipeline that loads it."""
    from pipelines.call_defaults import DEFAULTS_FILE_NAME, parse_call_defaults
    from pipelines.embedded import load_pipeline

    assert rp.DEFAULTS_NAME == DEFAULTS_FILE_NAME
    pipelines = {"base": "base", "res": "res", "hipa": "hipa", "mv": "mv", "mv_geometry": "mv_geometry", "i2v": "i2v"}
    with_defaults = [r for r in rp.RECIPES if r.defaults is not None]
    assert sorted(r.name for r in with_defaults) == sorted(pipelines)
    for recipe in with_defaults:
        if _shipped(recipe.folder):
            assert (ASSETS / recipe.folder / DEFAULTS_FILE_NAME).read_text() == rp.format_defaults(recipe.defaults)
        pipe = load_pipeline(pipelines[recipe.name], progress_bar=False)
        parse_call_defaults(recipe.defaults, type(pipe).__call__, source=recipe.name)
