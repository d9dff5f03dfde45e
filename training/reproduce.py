"""Reproduce the embedded models of ``assets/``: one command per model.

``python -m training.reproduce NAME [NAME ...]`` runs the documented training commands of each named model (``base``,
``res``, ``hipa``, ``motion``, ``mv``, ``mv_geometry``, ``i2v``, ``classifier``, ``examples``, or ``all``) in dependency order, each as
``python -m training.<script> ...`` with its run folder under ``--runs``, then assembles the model's folder under
``--out`` in exactly the layout of ``assets/`` (e.g. ``<out>/res_adapter/pytorch_lora_weights.safetensors``), which
``DIFFUSION_ADAPTERS_ASSETS=<out> python app.py`` and ``python -m benchmarks.quality --assets <out>`` read.

Adapters train on ``<out>/base`` when ``base`` is reproduced in the same call, otherwise on ``--base`` (default: the
shipped ``assets/base``); the I2V-Adapter likewise on ``<out>/motion_adapter`` or ``--motion-adapter``. Training steps
pass ``--resume_from_checkpoint latest``, and a step whose final output exists is skipped, so an interrupted call
picks up where it stopped. An existing model folder under ``--out`` is only replaced with ``--overwrite`` (and then
atomically); the default ``--out`` is ``runs/assets``, never the shipped ``assets/``.

``--print`` writes the commands without running anything (``assets/README.md`` lists ``all --print``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Step",
    "Recipe",
    "RECIPES",
    "resolve_names",
    "plan",
    "format_commands",
    "assemble",
    "format_defaults",
    "reproduce",
    "main",
]

logger = logging.getLogger(__name__)

_RESUME = "--resume_from_checkpoint latest"


def _mv_call_defaults() -> dict:
    """Call defaults of the embedded MV-Adapters (``mv``; ``mv_geometry`` uses them until its own are chosen on
    held-out objects), a fresh dict per recipe."""
    return {
        "num_inference_steps": 20,
        "guidance_scale": 7.0,
        "mv_scale": 1.0,
        "ref_scale": 1.0,
        "noise_shift": 1.0,
        "when_given": {"image": {"guidance_scale": 3.0}},
        "trained_sizes": {"min_side": 32, "max_side": 32},
    }


DEFAULTS_NAME = "pipeline_defaults.json"


@dataclass(frozen=True)
class Step:
    """One documented command, ``python -m <module> <args>``.

    ``args`` and ``produces`` are templates over ``{runs}`` (the runs folder), ``{base}`` (the base the adapters train
    on) and ``{motion_adapter}``; ``produces`` is the file whose existence means the step is done.
    """

    module: str
    args: str
    produces: str

    def argv(self, paths: dict[str, str]) -> list[str]:
        """``[module, arg, ...]`` with the placeholders filled in (split before filling, so paths may hold spaces)."""
        return [self.module] + [token.format(**paths) for token in shlex.split(self.args)]


@dataclass(frozen=True)
class Recipe:
    """How one folder of ``assets/`` is made: the steps, then ``files`` copied as ``(source, destination)``.

    ``source`` is a template like :attr:`Step.args`; ``destination`` is relative to ``<out>/<folder>``; a source folder
    is copied whole. ``defaults`` are the call defaults stored with the model (:mod:`pipelines.call_defaults`), chosen
    on held-out data as ``assets/README.md`` says; this table is their one source.
    """

    name: str
    folder: str
    steps: tuple[Step, ...]
    files: tuple[tuple[str, str], ...]
    defaults: dict[str, Any] | None = None  # written as <folder>/pipeline_defaults.json (the model's call defaults)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "base",
        "base",
        (
            Step("training.base_model", "--out {runs}/base-init --seed 0", "{runs}/base-init/model_index.json"),
            Step(
                "training.train_base_vae",
                "--pretrained_model_name_or_path {runs}/base-init --output_dir {runs}/base-vae --resolution 32 "
                "--train_batch_size 32 --max_train_steps 500 --learning_rate 1e-3 --lr_scheduler cosine "
                f"--lr_warmup_steps 20 --num_samples 4096 --seed 0 {_RESUME}",
                "{runs}/base-vae/vae/diffusion_pytorch_model.safetensors",
            ),
            Step(
                "training.train_base_vae",
                "--pretrained_model_name_or_path {runs}/base-vae --output_dir {runs}/base-vae-dec --decoder_only "
                "--object_weight 4 --resolution 32 --train_batch_size 32 --max_train_steps 600 --learning_rate 5e-4 "
                f"--lr_scheduler cosine --lr_warmup_steps 20 --num_samples 4096 --seed 1 {_RESUME}",
                "{runs}/base-vae-dec/vae/diffusion_pytorch_model.safetensors",
            ),
            Step(
                "training.train_base_vae",
                "--pretrained_model_name_or_path {runs}/base-vae-dec --output_dir {runs}/base-vae-ms --decoder_only "
                "--object_weight 4 --resolution 32 --sizes 16 24 32 48 64 --train_batch_size 32 --max_train_steps 600 "
                "--learning_rate 5e-4 --lr_scheduler cosine --lr_warmup_steps 20 --num_samples 4096 --seed 3 "
                f"{_RESUME}",
                "{runs}/base-vae-ms/vae/diffusion_pytorch_model.safetensors",
            ),
            Step(
                "training.train_base",
                "--pretrained_model_name_or_path {runs}/base-vae --output_dir {runs}/base --resolution 32 "
                "--train_batch_size 32 --max_train_steps 2000 --learning_rate 6e-4 --lr_scheduler constant_with_warmup "
                "--lr_warmup_steps 50 --use_ema --ema_decay 0.995 --snr_gamma 5 --num_samples 8192 --seed 0 "
                f"{_RESUME}",
                "{runs}/base/unet/diffusion_pytorch_model.safetensors",
            ),
            Step(
                "training.train_base",
                "--pretrained_model_name_or_path {runs}/base --output_dir {runs}/base-long --resolution 32 "
                "--train_batch_size 32 --max_train_steps 6000 --learning_rate 3e-4 --lr_scheduler cosine "
                "--lr_warmup_steps 100 --use_ema --ema_decay 0.999 --snr_gamma 5 --num_samples 32768 --seed 8 "
                f"--checkpointing_steps 1000 --checkpoints_total_limit 2 {_RESUME}",
                "{runs}/base-long/unet/diffusion_pytorch_model.safetensors",
            ),
            # v1 (shipped until session 19): the EMA weights of step 5000 of that run, with the 16-64 px decoder
            Step(
                "training.train_base",
                "export --checkpoint {runs}/base-long/checkpoint-5000 --base {runs}/base-vae-ms "
                "--output_dir {runs}/base-5000",
                "{runs}/base-5000/unet/diffusion_pytorch_model.safetensors",
            ),
            # v2: the whole VAE fine-tuned (its encoder was undertrained: the v1 VAE kept colour 0.86 of held-out
            # renders), then the UNet and text encoder continued on the new latent space, then a 16-64 px decoder
            # stage (same encoder, same latent space)
            Step(
                "training.train_base_vae",
                "--pretrained_model_name_or_path {runs}/base-5000 --output_dir {runs}/base-vae-full --object_weight 4 "
                "--resolution 32 --train_batch_size 32 --max_train_steps 2000 --learning_rate 5e-4 "
                "--lr_scheduler cosine --lr_warmup_steps 50 --num_samples 16384 --seed 14 --checkpointing_steps 500 "
                f"--checkpoints_total_limit 2 {_RESUME}",
                "{runs}/base-vae-full/vae/diffusion_pytorch_model.safetensors",
            ),
            Step(
                "training.train_base",
                "--pretrained_model_name_or_path {runs}/base-vae-full --output_dir {runs}/base-v2 --resolution 32 "
                "--train_batch_size 32 --max_train_steps 6000 --learning_rate 3e-4 --lr_scheduler cosine "
                "--lr_warmup_steps 100 --use_ema --ema_decay 0.999 --snr_gamma 5 --num_samples 32768 --seed 15 "
                f"--checkpointing_steps 500 --checkpoints_total_limit 3 {_RESUME}",
                "{runs}/base-v2/unet/diffusion_pytorch_model.safetensors",
            ),
            Step(
                "training.train_base_vae",
                "--pretrained_model_name_or_path {runs}/base-vae-full --output_dir {runs}/base-vae-full-ms "
                "--decoder_only --object_weight 4 --resolution 32 --sizes 16 24 32 48 64 --train_batch_size 32 "
                "--max_train_steps 600 --learning_rate 5e-4 --lr_scheduler cosine --lr_warmup_steps 20 "
                f"--num_samples 4096 --seed 3 {_RESUME}",
                "{runs}/base-vae-full-ms/vae/diffusion_pytorch_model.safetensors",
            ),
        ),
        # the UNet and text encoder of v2 (EMA, step 6000); the decoder stage shares their latent space
        tuple(
            (f"{{runs}}/base-v2/{part}", part)
            for part in ("model_index.json", "scheduler", "text_encoder", "tokenizer", "unet")
        )
        + (("{runs}/base-vae-full-ms/vae", "vae"),),
        defaults={"num_inference_steps": 25, "guidance_scale": 7.5, "trained_sizes": {"min_side": 32, "max_side": 32}},
    ),
    Recipe(
        "res",
        "res_adapter",
        (
            # from zero on this base: lower held-out loss at every size than the warm start from the previous base's
            # adapter (`benchmarks.res_adapter_heldout`, assets/README.md)
            Step(
                "training.train_res_adapter",
                "--pretrained_model_name_or_path {base} --output_dir {runs}/res --dataset miniworld --min_side 16 "
                "--max_side 64 --bucket_step 8 --max_aspect_ratio 2 --resolution 32 --train_batch_size 16 "
                "--max_train_steps 10000 --learning_rate 2e-3 --lr_scheduler cosine --lr_warmup_steps 50 --rank 64 "
                f"--alpha 32 --caption_dropout 0.1 --num_samples 16384 --seed 0 {_RESUME}",
                "{runs}/res/pytorch_lora_weights.safetensors",
            ),
        ),
        (
            ("{runs}/res/pytorch_lora_weights.safetensors", "pytorch_lora_weights.safetensors"),
            ("{runs}/res/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors"),
        ),
        defaults={
            "num_inference_steps": 20,
            "guidance_scale": 7.5,
            "height": 64,
            "width": 64,
            "trained_sizes": {"min_side": 16, "max_side": 64, "max_aspect_ratio": 2},
        },
    ),
    Recipe(
        "hipa",
        "hipa",
        (
            Step(
                "training.train_hipa",
                "--pretrained_model_name_or_path {base} --output_dir {runs}/hipa --resolution 32 --num_prompts 768 "
                "--seeds_per_prompt 2 --teacher_steps 25 --teacher_guidance_scale 5 --train_batch_size 16 "
                "--max_train_steps 2400 --learning_rate 5e-4 --lr_scheduler constant_with_warmup --lr_warmup_steps 20 "
                f"--seed 0 --rank 32 --lora_targets attention_ff {_RESUME}",
                "{runs}/hipa/pytorch_lora_weights.safetensors",
            ),
        ),
        (("{runs}/hipa/pytorch_lora_weights.safetensors", "pytorch_lora_weights.safetensors"),),
        defaults={"trained_sizes": {"min_side": 32, "max_side": 32}},
    ),
    Recipe(
        "motion",
        "motion_adapter",
        # shipped: trained on the v2 base at step 1500 of its 6000 steps (`training.train_base export` of
        # checkpoint-1500), started before the base finished; a motion module transfers across fine-tunes of one
        # base, and this recipe trains it on the finished base
        (
            Step(
                "training.train_motion",
                "--pretrained_model_name_or_path {base} --output_dir {runs}/motion --resolution 32 --num_frames 8 "
                "--train_batch_size 4 --max_train_steps 3000 --learning_rate 3e-4 --lr_scheduler cosine "
                f"--lr_warmup_steps 50 --num_samples 4096 --seed 9 {_RESUME}",
                "{runs}/motion/motion_adapter/diffusion_pytorch_model.safetensors",
            ),
        ),
        (
            ("{runs}/motion/motion_adapter/config.json", "config.json"),
            (
                "{runs}/motion/motion_adapter/diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.safetensors",
            ),
        ),
    ),
    Recipe(
        "mv",
        "mv_adapter",
        (
            Step(
                "training.train_mv_adapter",
                "--pretrained_model_name_or_path {base} --output_dir {runs}/mv --mode i2mv --dataset miniworld "
                "--num_views 6 --resolution 32 --train_batch_size 2 --max_train_steps 5000 --learning_rate 3e-4 "
                "--noise_shift 1 --snr_gamma 1 --drop_text 0.5 --lr_scheduler constant_with_warmup "
                f"--lr_warmup_steps 20 --seed 1 {_RESUME}",
                "{runs}/mv/adapter_model.safetensors",
            ),
            # continued with a cosine decay: lower held-out loss, and a larger own-vs-swapped reference gap, than the
            # 5000 steps alone (`benchmarks.mv_heldout`, assets/README.md)
            Step(
                "training.train_mv_adapter",
                "--pretrained_model_name_or_path {base} --output_dir {runs}/mv-cont --init_adapter "
                "{runs}/mv/adapter_model.safetensors --mode i2mv --dataset miniworld --num_views 6 --resolution 32 "
                "--train_batch_size 2 --max_train_steps 5000 --learning_rate 3e-4 --noise_shift 1 --snr_gamma 1 "
                f"--drop_text 0.5 --lr_scheduler cosine --lr_warmup_steps 20 --seed 2 {_RESUME}",
                "{runs}/mv-cont/adapter_model.safetensors",
            ),
        ),
        (("{runs}/mv-cont/adapter_model.safetensors", "mv_adapter.safetensors"),),
        defaults=_mv_call_defaults(),
    ),
    Recipe(
        "mv_geometry",
        "mv_adapter_geometry",
        # the geometry-guided MV-Adapter the texture tab uses (ig2mv: position / normal maps, reference branch, text
        # or image): the official 6-view geometry ring and row_col attention, every scene scaled into the official
        # unit box as load_mesh does to a user's mesh (tests/test_mv_geometry_conventions.py); otherwise the `mv`
        # recipe
        (
            Step(
                "training.train_mv_adapter",
                "--pretrained_model_name_or_path {base} --output_dir {runs}/mv-geo --mode ig2mv --dataset miniworld "
                "--camera_mode mvadapter --attention_mode row_col --normalize_scenes --num_views 6 --resolution 32 "
                "--train_batch_size 2 --max_train_steps 5000 --learning_rate 3e-4 --noise_shift 1 --snr_gamma 1 "
                "--drop_text 0.5 --lr_scheduler constant_with_warmup --lr_warmup_steps 20 --seed 1 "
                f"--checkpointing_steps 1000 --checkpoints_total_limit 2 {_RESUME}",
                "{runs}/mv-geo/adapter_model.safetensors",
            ),
        ),
        (("{runs}/mv-geo/adapter_model.safetensors", "mv_adapter.safetensors"),),
        # the `mv` model's call defaults (not yet chosen on held-out objects for this adapter)
        defaults=_mv_call_defaults(),
    ),
    Recipe(
        "i2v",
        "i2v_adapter",
        (
            Step(
                "training.train_i2v_adapter",
                "--pretrained_model_name_or_path {base} --motion_adapter_path {motion_adapter} --output_dir {runs}/i2v "
                "--dataset miniworld --num_frames 8 --frame_stride 1 --resolution 32 --train_batch_size 4 "
                "--max_train_steps 2000 --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 50 "
                "--snr_gamma 1 --motion_caption 0.3 --caption_dropout 0.1 --num_samples 8192 --seed 10 "
                f"{_RESUME}",
                "{runs}/i2v/adapter_model.safetensors",
            ),
        ),
        (("{runs}/i2v/adapter_model.safetensors", "i2v_adapter.safetensors"),),
        defaults={
            "num_inference_steps": 20,
            "guidance_scale": 7.5,
            "num_frames": 8,
            "adapter_scale": 1.0,
            # chosen on held-out clips by `python -m benchmarks.i2v_defaults` (assets/README.md)
            "similarity_prior": {"strength": 1.0, "start": 0.6},
            "trained_sizes": {"min_side": 32, "max_side": 32},
        },
    ),
    Recipe(
        "classifier",
        "eval",
        (
            Step(
                "training.miniworld.classifier",
                "--out {runs}/classifier/classifier.safetensors --steps 7000 --seed 0",
                "{runs}/classifier/classifier.safetensors",
            ),
        ),
        (("{runs}/classifier/classifier.safetensors", "classifier.safetensors"),),
    ),
    Recipe(
        "examples",
        "examples",
        (
            Step(
                "training.miniworld.export",
                "--kind examples --out {runs}/examples",
                "{runs}/examples/examples.json",
            ),
        ),
        (("{runs}/examples", "."),),
    ),
)

_BY_NAME = {r.name: r for r in RECIPES}


def resolve_names(names: Sequence[str]) -> list[Recipe]:
    """The recipes named (``"all"`` = every one), in dependency order, each once.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if not names:
        raise ValueError(f"`names` is empty; choose from {['all', *_BY_NAME]}.")
    unknown = [n for n in names if n != "all" and n not in _BY_NAME]
    if unknown:
        raise ValueError(f"Unknown model name(s) {unknown}; choose from {['all', *_BY_NAME]}.")
    wanted = set(_BY_NAME) if "all" in names else set(names)
    return [r for r in RECIPES if r.name in wanted]


def plan(
    recipes: Sequence[Recipe],
    runs: str | Path,
    out: str | Path,
    base: str | Path = "assets/base",
    motion_adapter: str | Path = "assets/motion_adapter",
) -> dict[str, str]:
    """The placeholder values: adapters train on ``<out>/base`` (``<out>/motion_adapter``) when that model is
    reproduced in the same call, else on ``base`` (``motion_adapter``)."""
    names = {r.name for r in recipes}
    return {
        "runs": str(runs),
        "base": str(Path(out) / "base") if "base" in names else str(base),
        "motion_adapter": str(Path(out) / "motion_adapter") if "motion" in names else str(motion_adapter),
    }


def _wrap(argv: list[str], width: int = 116) -> str:
    """``argv`` as one shell command, broken with `` \\`` before a ``--flag`` where a line would pass ``width``."""
    groups: list[list[str]] = []
    for token in argv:
        if token.startswith("--") or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    lines = [shlex.join(groups[0])]
    for group in groups[1:]:
        text = shlex.join(group)
        if len(lines[-1]) + 1 + len(text) > width:
            lines[-1] += " \\"
            lines.append("  " + text)
        else:
            lines[-1] += " " + text
    return "\n".join(lines)


def format_commands(recipes: Sequence[Recipe], paths: dict[str, str], out: str | Path) -> str:
    """The shell commands of ``recipes``, one per step, wrapped at 119 columns; each recipe's commands are preceded by
    a ``# <name> -> <out>/<folder>/`` comment."""
    blocks = []
    for recipe in recipes:
        lines = [f"# {recipe.name} -> {Path(out) / recipe.folder}/"]
        lines += [_wrap(["python", "-m", *step.argv(paths)]) for step in recipe.steps]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def assemble(recipe: Recipe, paths: dict[str, str], out: str | Path, overwrite: bool = False) -> Path:
    """Copy the recipe's outputs into ``<out>/<folder>`` (atomically; an existing folder only with ``overwrite``).

    Raises:
        FileExistsError: ``<out>/<folder>`` exists and ``overwrite`` is false (nothing is touched).
        FileNotFoundError: an output of the recipe is missing (nothing is touched).
    """
    from adapters.weights import atomic_directory

    dest = Path(out) / recipe.folder
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; pass `overwrite=True` (`--overwrite`) to replace it.")
    sources = [(Path(src.format(**paths)), rel) for src, rel in recipe.files]
    missing = [str(src) for src, _ in sources if not src.exists()]
    if missing:
        raise FileNotFoundError(f"{recipe.name}: missing outputs {missing}; run its steps first.")
    ignore = shutil.ignore_patterns("checkpoint-*", ".*")
    with atomic_directory(dest) as tmp:
        for src, rel in sources:
            target = tmp / rel
            if src.is_dir():
                shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
        if recipe.defaults is not None:
            (tmp / DEFAULTS_NAME).write_text(format_defaults(recipe.defaults), encoding="utf-8")
    return dest


def format_defaults(defaults: dict[str, Any]) -> str:
    """The text of a ``pipeline_defaults.json`` (2-space JSON, trailing newline), as shipped in ``assets/``."""
    return json.dumps(defaults, indent=2) + "\n"


def _run_module(argv: list[str]) -> None:
    subprocess.run([sys.executable, "-m", *argv], check=True)


def reproduce(
    names: Sequence[str],
    runs: str | Path = "runs",
    out: str | Path = "runs/assets",
    base: str | Path = "assets/base",
    motion_adapter: str | Path = "assets/motion_adapter",
    overwrite: bool = False,
    run: Callable[[list[str]], None] = _run_module,
) -> list[Path]:
    """Run the steps of the named models and assemble their folders under ``out``; returns those folders.

    ``run`` executes one ``[module, arg, ...]`` (default: a ``python -m`` subprocess; tests pass a fake). Existing
    folders under ``out`` are checked before anything runs, so a refused call trains nothing.
    """
    recipes = resolve_names(names)
    paths = plan(recipes, runs, out, base, motion_adapter)
    if not overwrite:
        taken = [str(Path(out) / r.folder) for r in recipes if (Path(out) / r.folder).exists()]
        if taken:
            raise FileExistsError(f"{taken} exist; pass `--overwrite` to replace them (atomically, after training).")
    folders = []
    for recipe in recipes:
        for step in recipe.steps:
            done = Path(step.produces.format(**paths))
            if done.exists():
                logger.info("%s: %s exists, skipping `%s` (delete it to rerun)", recipe.name, done, step.module)
                continue
            argv = step.argv(paths)
            logger.info("%s: python -m %s", recipe.name, shlex.join(argv))
            run(argv)
        folders.append(assemble(recipe, paths, out, overwrite=overwrite))
        logger.info("%s: wrote %s", recipe.name, folders[-1])
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.reproduce",
        description="Reproduce the embedded models of assets/ (one command per model).",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"all, or any of {', '.join(_BY_NAME)}")
    parser.add_argument("--runs", default="runs", help="folder of the training runs (default: runs)")
    parser.add_argument(
        "--out", default="runs/assets", help="where the assets layout is written (default: runs/assets)"
    )
    parser.add_argument("--base", default="assets/base", help="base for the adapters when `base` is not reproduced")
    parser.add_argument(
        "--motion-adapter",
        default="assets/motion_adapter",
        help="motion adapter for i2v when `motion` is not reproduced",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing model folders under --out")
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    try:
        recipes = resolve_names(args.names)
    except ValueError as err:
        parser.error(str(err))
    if args.print:
        paths = plan(recipes, args.runs, args.out, args.base, args.motion_adapter)
        sys.stdout.write(format_commands(recipes, paths, args.out) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reproduce(args.names, args.runs, args.out, args.base, args.motion_adapter, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
