"""Command line for the demo tasks, without the browser.

Examples::

    python -m pipelines mv   --prompt "a red cube" --out out/mv              # views as PNGs + grid + zip
    python -m pipelines i2mv --image cube.png --out out/i2mv
    python -m pipelines i2v  --image cube.png --prompt "spinning" --frames 8 --out out/i2v   # mp4 + GIF + frames
    python -m pipelines hipa --prompt "a red cube" --compare plain teacher --out out/hipa
    python -m pipelines res  --prompt "a red cube" --height 32 --width 64 --out out/res    # with and without

By default each task runs the embedded model (``pipelines.embedded``); ``--base``, ``--adapter`` and
``--motion-adapter`` point it at other checkpoints (local folders or hub ids). A setting left out uses the model's
stored defaults (``pipeline_defaults.json`` in its folder, see ``pipelines.call_defaults``), else the pipeline's own.
The written files are listed on stdout, one per line, and in ``<out>/result.json``. An input error is one line on
stderr (exit status 2); ``--quiet`` leaves only errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from .checks import MAX_IMAGE_SIDE, NumberRule, argparse_number
from .tasks import MAX_FRAMES, MAX_VIEWS, ONE_STEP_COMPARISONS, TASKS

logger = logging.getLogger("pipelines.cli")

#: Ranges of the numeric flags (refused at parse time, before any model loads; see pipelines.checks).
_SCALE = NumberRule(minimum=0)
_SIDE = NumberRule(integer=True, minimum=1, maximum=MAX_IMAGE_SIDE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines", description="Run the adapter demo tasks from the command line."
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    def common(p: argparse.ArgumentParser, *, image: str | None = None, prompt_required: bool = True) -> None:
        if image is not None:
            p.add_argument("--image", required=True, help=image)
        p.add_argument("--prompt", required=prompt_required, default="", help="text prompt")
        p.add_argument("--negative-prompt", default="", help="negative prompt")
        p.add_argument("--out", required=True, type=Path, help="output folder (created)")
        p.add_argument("--seed", type=argparse_number("--seed", NumberRule(integer=True, minimum=0)), default=0)
        p.add_argument(
            "--steps",
            type=argparse_number("--steps", NumberRule(integer=True, minimum=1)),
            default=None,
            help="denoising steps (default: the model's)",
        )
        p.add_argument(
            "--guidance",
            type=argparse_number("--guidance", _SCALE),
            default=None,
            help="classifier-free guidance scale (default: the model's)",
        )
        p.add_argument(
            "--height",
            type=argparse_number("--height", _SIDE),
            default=None,
            help="output height (default: the model's)",
        )
        p.add_argument(
            "--width", type=argparse_number("--width", _SIDE), default=None, help="output width (default: the model's)"
        )
        p.add_argument("--base", default=None, help="base model folder or hub id (default: embedded)")
        p.add_argument("--adapter", default=None, help="adapter weights (default: embedded)")
        p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
        p.add_argument("--dtype", default=None, help="float16 | bfloat16 | float32 (default: fp16 on CUDA)")
        p.add_argument("--quiet", action="store_true", help="no progress bars, no log lines but errors")

    def views(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--num-views",
            type=argparse_number("--num-views", NumberRule(integer=True, minimum=1, maximum=MAX_VIEWS)),
            default=6,
            help=f"views, 1-{MAX_VIEWS}",
        )
        p.add_argument("--azimuths", default=None, help="camera azimuths in degrees, e.g. '0,90,180,270'")
        p.add_argument(
            "--elevation",
            type=argparse_number("--elevation", NumberRule(minimum=-90, maximum=90)),
            default=0.0,
            help="camera elevation in degrees",
        )
        p.add_argument(
            "--mv-scale",
            type=argparse_number("--mv-scale", _SCALE),
            default=None,
            help="multi-view attention scale (default: the model's)",
        )

    p = sub.add_parser("mv", help=TASKS["mv"].title)
    common(p)
    views(p)

    p = sub.add_parser("i2mv", help=TASKS["i2mv"].title)
    common(p, image="reference image", prompt_required=False)
    views(p)
    p.add_argument("--position-map", default=None, help="position map image (with --normal-map)")
    p.add_argument("--normal-map", default=None, help="normal map image (with --position-map)")
    p.add_argument(
        "--reference-guidance",
        type=argparse_number("--reference-guidance", _SCALE),
        default=None,
        help="separate image guidance scale",
    )
    p.add_argument(
        "--ref-scale",
        type=argparse_number("--ref-scale", _SCALE),
        default=None,
        help="reference attention scale (default: the model's)",
    )

    p = sub.add_parser("i2v", help=TASKS["i2v"].title)
    common(p, image="first frame", prompt_required=False)
    p.add_argument("--motion-adapter", default=None, help="MotionAdapter folder or hub id (default: embedded)")
    p.add_argument(
        "--frames",
        type=argparse_number("--frames", NumberRule(integer=True, minimum=2, maximum=MAX_FRAMES)),
        default=None,
        help=f"frames, 2-{MAX_FRAMES} (default: the model's)",
    )
    p.add_argument("--fps", type=argparse_number("--fps", NumberRule(integer=True, minimum=1, maximum=240)), default=8)
    p.add_argument(
        "--adapter-scale",
        type=argparse_number("--adapter-scale", _SCALE),
        default=None,
        help="first-frame attention scale",
    )
    p.add_argument(
        "--prior-strength",
        type=argparse_number("--prior-strength", NumberRule(minimum=0, maximum=1)),
        default=None,
        help="frame similarity prior strength (0 = off)",
    )
    p.add_argument(
        "--prior-start",
        type=argparse_number("--prior-start", NumberRule(minimum=0, maximum=1, open_max=True)),
        default=None,
        help="fraction of steps the prior skips",
    )

    p = sub.add_parser("hipa", help=TASKS["hipa"].title)
    common(p)
    p.add_argument("--lora-scale", type=argparse_number("--lora-scale", _SCALE), default=1.0)
    p.add_argument("--compare", nargs="*", default=[], choices=list(ONE_STEP_COMPARISONS), help="also run these")
    p.add_argument(
        "--teacher-steps", type=argparse_number("--teacher-steps", NumberRule(integer=True, minimum=1)), default=25
    )
    p.add_argument(
        "--few-step-lora",
        action="append",
        default=[],
        metavar="PRESET=PATH",
        help="load a few-step LoRA (lcm, tcd, lightning, hyper-sd) for --compare; repeatable",
    )

    p = sub.add_parser("res", help=TASKS["res"].title)
    common(p)
    p.add_argument(
        "--scale",
        type=argparse_number("--scale", NumberRule(minimum=0, open_min=True)),
        default=None,
        help="side relative to native, e.g. 1.5 (instead of --height/--width)",
    )
    p.add_argument("--ratio", default=None, help="aspect ratio W:H, e.g. 2:1 (instead of --height/--width)")
    p.add_argument("--lora-scale", type=argparse_number("--lora-scale", _SCALE), default=1.0)
    p.add_argument("--norm-scale", type=argparse_number("--norm-scale", _SCALE), default=1.0)
    p.add_argument("--no-base", action="store_true", help="skip the run without ResAdapter")
    return parser


def _size(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """``--height`` / ``--width`` (``None``: the model's stored default, else its native size)."""
    return args.height, args.width


def run(args: argparse.Namespace) -> dict[str, list[str]]:
    """Run one task; returns ``{"files": [...], ...}`` (also written to ``<out>/result.json``)."""
    from . import tasks
    from .embedded import load_pipeline

    model = TASKS[args.task].model
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # Check the inputs that need no model before loading one.
    image = tasks.load_image(args.image, keep_alpha=args.task == "i2mv") if getattr(args, "image", None) else None
    if args.task in ("mv", "i2mv") and not args.azimuths and not 1 <= args.num_views <= MAX_VIEWS:
        raise ValueError(f"`--num-views` must be between 1 and {MAX_VIEWS}, got {args.num_views}.")
    if args.task == "i2v" and args.frames is not None and not 2 <= args.frames <= MAX_FRAMES:
        raise ValueError(f"`--frames` must be between 2 and {MAX_FRAMES}, got {args.frames}.")
    pipe = load_pipeline(
        model,
        base=args.base,
        adapter=args.adapter,
        motion_adapter=getattr(args, "motion_adapter", None),
        device=args.device,
        dtype=args.dtype,
        progress_bar=not args.quiet,
    )
    if args.task == "hipa" and args.few_step_lora:
        loras = {}
        for value in args.few_step_lora:
            name, sep, path = value.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"`--few-step-lora` must look like PRESET=PATH, got {value!r}.")
            loras[name.strip().lower()] = path.strip()
        tasks.load_few_step_loras(pipe, loras)
    files: list[Path] = []
    first = None  # the first output image (its size is checked against the trained range)
    start = time.perf_counter()
    common = {"negative_prompt": args.negative_prompt, "seed": args.seed}
    if args.steps is not None:
        common["num_inference_steps"] = args.steps
    if args.guidance is not None:
        common["guidance_scale"] = args.guidance

    if args.task in ("mv", "i2mv"):
        height, width = _size(args)
        view_args = {
            "num_views": args.num_views,
            "azimuths": args.azimuths,
            "elevation": args.elevation,
            "height": height,
            "width": width,
            "mv_scale": args.mv_scale,
        }
        if args.task == "mv":
            images = tasks.text_to_multiview(pipe, args.prompt, **view_args, **common)
        else:
            position = tasks.load_image(args.position_map, name="position_map") if args.position_map else None
            normal = tasks.load_image(args.normal_map, name="normal_map") if args.normal_map else None
            images = tasks.image_to_multiview(
                pipe,
                image,
                args.prompt,
                position_map=position,
                normal_map=normal,
                reference_guidance_scale=args.reference_guidance,
                ref_scale=args.ref_scale,
                **view_args,
                **common,
            )
        first = images[0] if images else None
        for i, view in enumerate(images):
            path = out / f"view_{i:02d}.png"
            view.save(path)
            files.append(path)
        from diffusers.utils import make_image_grid

        grid = make_image_grid(images, rows=1, cols=len(images))
        grid.save(out / "grid.png")
        files.append(out / "grid.png")
        files.append(tasks.save_views_zip(images, out / "views.zip"))
    elif args.task == "i2v":
        height, width = _size(args)
        frames = tasks.image_to_video(
            pipe,
            image,
            args.prompt,
            num_frames=args.frames,
            height=height,
            width=width,
            adapter_scale=args.adapter_scale,
            prior_strength=args.prior_strength,
            prior_start=args.prior_start,
            **common,
        )
        first = frames[0] if frames else None
        frame_dir = out / "frames"
        frame_dir.mkdir(exist_ok=True)
        for i, frame in enumerate(frames):
            frame.save(frame_dir / f"frame_{i:03d}.png")
        written = tasks.save_video(frames, out / "video.mp4", out / "video.gif", fps=args.fps)
        files.extend([written["mp4"], written["gif"], frame_dir])
    elif args.task == "hipa":
        height, width = _size(args)
        results = tasks.one_step(
            pipe,
            args.prompt,
            height=height,
            width=width,
            lora_scale=args.lora_scale,
            compare=args.compare,
            teacher_steps=args.teacher_steps,
            **common,
        )
        first = results[0][1] if results else None
        names = ["hipa", *args.compare]
        for name, (label, image_out, seconds) in zip(names, results):
            path = out / f"{name}.png"
            image_out.save(path)
            files.append(path)
            logger.info(f"{label}: {seconds * 1000:.0f} ms -> {path}")
    elif args.task == "res":
        height, width = _size(args)
        if height is None and width is None and (args.scale is not None or args.ratio is not None):
            height, width = tasks.size_from_ratio(
                tasks.native_resolution(pipe),
                1.0 if args.scale is None else args.scale,
                "1:1" if args.ratio is None else args.ratio,
                tasks.size_multiple(pipe),
            )
        results = tasks.any_resolution(
            pipe,
            args.prompt,
            height=height,
            width=width,
            lora_scale=args.lora_scale,
            norm_scale=args.norm_scale,
            with_base=not args.no_base,
            **common,
        )
        first = results[0][1] if results else None
        for name, (_, image_out) in zip(("res_adapter", "base"), results):
            path = out / f"{name}.png"
            image_out.save(path)
            files.append(path)
    if first is not None:
        from .call_defaults import get_call_defaults

        note = tasks.trained_size_note(get_call_defaults(pipe).trained_sizes, first.height, first.width)
        if note:
            logger.warning(f"{args.task}: {note}")
    info = getattr(pipe, "embedded_info", None)
    result = {
        "task": args.task,
        "files": [str(f) for f in files],
        "seconds": round(time.perf_counter() - start, 3),
        "placeholder_weights": bool(info is not None and info.is_placeholder),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _quiet_libraries() -> None:
    """``--quiet``: only errors from the libraries, and none of their progress bars or Python warnings."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    hub_utils.disable_progress_bars()
    warnings.simplefilter("ignore")  # library deprecation notices: nothing a CLI user can act on
    logging.getLogger().setLevel(logging.ERROR)
    logger.setLevel(logging.ERROR)


#: Errors caused by the user's input (a bad value, a missing or unreadable file or model): one line, exit status 2.
USER_ERRORS = (ValueError, TypeError, OSError)


def main(argv: list[str] | None = None) -> int:
    try:  # a bad flag value (checked by its type, before any model loads): argparse's one error line, status 2
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    logger.setLevel(logging.NOTSET)
    if args.quiet:
        _quiet_libraries()
    try:
        result = run(args)
    except USER_ERRORS as err:
        logger.error(f"{args.task}: {err}")  # one line: the message names the argument
        return 2
    except Exception:  # noqa: BLE001 -- a bug: the traceback goes to the log, the exit status says it failed
        logger.exception(f"{args.task}: unexpected error")
        return 1
    if result["placeholder_weights"]:
        logger.warning("These outputs come from untrained placeholder weights (see assets/README.md).")
    sys.stdout.write("\n".join(result["files"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
