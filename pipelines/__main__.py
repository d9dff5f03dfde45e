"""Command line for the demo tasks, without the browser.

Examples::

    python -m pipelines mv   --prompt "a red cube" --out out/mv              # views as PNGs + grid + zip
    python -m pipelines i2mv --image cube.png --out out/i2mv
    python -m pipelines i2v  --image cube.png --prompt "spinning" --frames 8 --out out/i2v   # mp4 + GIF + frames
    python -m pipelines hipa --prompt "a red cube" --compare plain teacher --out out/hipa
    python -m pipelines res  --prompt "a red cube" --height 32 --width 64 --out out/res    # with and without
    python -m pipelines texture --mesh model.glb --prompt "a red cube" --out out/texture  # textured .glb + views

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
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checks import NumberRule, argparse_number
from .tasks import MAX_FRAMES, MAX_SIDE, MAX_VIEWS, ONE_STEP_COMPARISONS, TASKS, TaskSpec

logger = logging.getLogger("pipelines.cli")

# Ranges of the numeric flags: the task functions' own limits (pipelines.tasks), so a value the task would refuse is
# refused at parse time, before any model loads (see pipelines.checks). Only what depends on the model (the size
# multiple, 8x its native size) is checked after it loads, still before it runs.
_STEPS = NumberRule(integer=True, minimum=1, maximum=150)
_GUIDANCE = NumberRule(minimum=0, maximum=30)
_SCALE_2 = NumberRule(minimum=0, maximum=2)
_UNIT = NumberRule(minimum=0, maximum=1)
_SIDE = NumberRule(integer=True, minimum=1, maximum=MAX_SIDE)


def _number(p: argparse.ArgumentParser, flag: str, rule: NumberRule, default: Any = None, help: str | None = None):
    """Add a numeric flag parsed with the shared number rule (:func:`pipelines.checks.argparse_number`)."""
    return p.add_argument(flag, type=argparse_number(flag, rule), default=default, help=help)


def _image_file(flag: str, *, keep_alpha: bool = False) -> Callable[[str], Any]:
    """argparse ``type=``: the image at the path, opened and checked (:func:`pipelines.tasks.load_image`)."""

    def parse(text: str) -> Any:
        from .tasks import load_image

        try:
            return load_image(text, name=flag, keep_alpha=keep_alpha)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = "image file"
    parse.path_kind = "image"  # read by the tests' sweep of path flags
    return parse


def _model_path(flag: str) -> Callable[[str], str]:
    """argparse ``type=``: an existing local file / folder, or a hub id (``owner/name``, resolved when loading)."""

    def parse(text: str) -> str:
        path = Path(text).expanduser()
        if path.exists() or _looks_like_hub_id(text):
            return text
        raise argparse.ArgumentTypeError(f"`{flag}` {text!r} does not exist (a local folder or file, or a hub id).")

    parse.__name__ = "model path"
    parse.path_kind = "model"
    return parse


def _mesh_file(flag: str) -> Callable[[str], str]:
    """argparse ``type=``: a mesh file that loads (:func:`pipelines.texture.read_mesh`: extension, empty file, a file
    that is not what its extension says, no faces, more than :data:`pipelines.texture.MAX_FACES` faces ...), so a
    bad mesh is refused before any model loads. Returns the path (the texture job loads it again, timed)."""

    def parse(text: str) -> str:
        from .texture import read_mesh

        try:
            read_mesh(text, name=flag)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    parse.__name__ = "mesh file"
    parse.path_kind = "mesh"  # read by the tests' sweep of path flags
    return parse


def _task(name: str) -> TaskSpec:
    """The demo task ``name``: one of :data:`pipelines.tasks.TASKS`, or ``texture``."""
    if name == "texture":
        from .texture import texture_task

        return texture_task()  # the geometry-guided embedded model when shipped, else the camera-conditioned one
    return TASKS[name]


def _looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not Path(text).is_absolute()


def _out_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"`--out` {text!r} is a file, not a folder.")
    return path


_out_dir.path_kind = "out"


def _angles(text: str) -> list[float] | None:
    """``--azimuths``: comma-separated finite degrees, at most :data:`MAX_VIEWS` (``""``: the default ring)."""
    from .tasks import parse_angles

    try:
        values = parse_angles(text, "--azimuths")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if values is not None and len(values) > MAX_VIEWS:
        raise argparse.ArgumentTypeError(f"`--azimuths` gives {len(values)} views; at most {MAX_VIEWS} are allowed.")
    return values


def _ratio(text: str) -> str:
    """``--ratio``: ``W:H`` with positive finite parts."""
    parts = text.split(":")
    try:
        values = [float(x) for x in parts]
    except ValueError:
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"`--ratio` must look like W:H with positive numbers, e.g. 16:9, got {text!r}."
        )
    return text


def _device(text: str) -> str:
    """``--device``: a torch device string of a device present on this machine."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"`--device` {text!r} is not a torch device (e.g. cpu, cuda, cuda:1)."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"`--device` {text!r}: no CUDA device is available here.")
    return text


def _few_step_lora(text: str) -> tuple[str, str]:
    """``--few-step-lora PRESET=PATH``: ``(preset, path)``, the path existing (or a hub id)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"`--few-step-lora` must look like PRESET=PATH, got {text!r}.")
    return name.strip().lower(), _model_path("--few-step-lora")(path.strip())


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose error is one line on stderr (exit status 2), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"^argument (\S+): (`\1`)", r"\2", message)  # the flag named once
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m pipelines", description="Run the adapter demo tasks from the command line."
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    def common(
        p: argparse.ArgumentParser,
        *,
        image: str | None = None,
        keep_alpha: bool = False,
        prompt_required: bool = True,
        steps: NumberRule = _STEPS,
    ) -> None:
        if image is not None:
            p.add_argument("--image", required=True, type=_image_file("--image", keep_alpha=keep_alpha), help=image)
        p.add_argument("--prompt", required=prompt_required, default="", help="text prompt")
        p.add_argument("--negative-prompt", default="", help="negative prompt")
        p.add_argument("--out", required=True, type=_out_dir, help="output folder (created)")
        _number(p, "--seed", NumberRule(integer=True, minimum=0, maximum=2**63 - 1), 0)
        _number(p, "--steps", steps, help="denoising steps (default: the model's)")
        _number(p, "--guidance", _GUIDANCE, help="classifier-free guidance scale (default: the model's)")
        _number(p, "--height", _SIDE, help="output height (default: the model's)")
        _number(p, "--width", _SIDE, help="output width (default: the model's)")
        p.add_argument("--base", type=_model_path("--base"), help="base model folder or hub id (default: embedded)")
        p.add_argument("--adapter", type=_model_path("--adapter"), help="adapter weights (default: embedded)")
        p.add_argument("--device", type=_device, help="torch device (default: cuda if available)")
        p.add_argument(
            "--dtype",
            choices=("float16", "fp16", "bfloat16", "bf16", "float32", "fp32"),
            help="weights dtype (default: fp16 on CUDA, else float32)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars, no log lines but errors")

    def views(p: argparse.ArgumentParser) -> None:
        _number(
            p,
            "--num-views",
            NumberRule(integer=True, minimum=1, maximum=MAX_VIEWS),
            help=f"views, 1-{MAX_VIEWS} (default 6)",
        )
        p.add_argument("--azimuths", type=_angles, help="camera azimuths in degrees, e.g. '0,90,180,270'")
        _number(p, "--elevation", NumberRule(minimum=-90, maximum=90), 0.0, help="camera elevation in degrees")
        _number(p, "--mv-scale", _SCALE_2, help="multi-view attention scale (default: the model's)")

    p = sub.add_parser("mv", help=TASKS["mv"].title)
    common(p)
    views(p)

    p = sub.add_parser("i2mv", help=TASKS["i2mv"].title)
    common(p, image="reference image", keep_alpha=True, prompt_required=False)
    views(p)
    p.add_argument("--position-map", type=_image_file("--position-map"), help="position map image (with --normal-map)")
    p.add_argument("--normal-map", type=_image_file("--normal-map"), help="normal map image (with --position-map)")
    _number(p, "--reference-guidance", _GUIDANCE, help="separate image guidance scale")
    _number(p, "--ref-scale", _SCALE_2, help="reference attention scale (default: the model's)")

    p = sub.add_parser("i2v", help=TASKS["i2v"].title)
    common(p, image="first frame", prompt_required=False)
    p.add_argument(
        "--motion-adapter",
        type=_model_path("--motion-adapter"),
        help="MotionAdapter folder or hub id (default: embedded)",
    )
    _number(
        p,
        "--frames",
        NumberRule(integer=True, minimum=2, maximum=MAX_FRAMES),
        help=f"frames, 2-{MAX_FRAMES} (default: the model's)",
    )
    _number(p, "--fps", NumberRule(integer=True, minimum=1, maximum=60), 8)
    _number(p, "--adapter-scale", _SCALE_2, help="first-frame attention scale")
    _number(p, "--prior-strength", _UNIT, help="frame similarity prior strength (0 = off)")
    _number(
        p, "--prior-start", NumberRule(minimum=0, maximum=1, open_max=True), help="fraction of steps the prior skips"
    )

    p = sub.add_parser("hipa", help=TASKS["hipa"].title)
    common(p, steps=NumberRule(integer=True, minimum=1, maximum=4))
    _number(p, "--lora-scale", _SCALE_2, 1.0)
    p.add_argument("--compare", nargs="*", default=[], choices=list(ONE_STEP_COMPARISONS), help="also run these")
    _number(p, "--teacher-steps", _STEPS, 25)
    p.add_argument(
        "--few-step-lora",
        action="append",
        default=[],
        type=_few_step_lora,
        metavar="PRESET=PATH",
        help="load a few-step LoRA (lcm, tcd, lightning, hyper-sd) for --compare; repeatable",
    )

    p = sub.add_parser("res", help=TASKS["res"].title)
    common(p)
    _number(
        p,
        "--scale",
        NumberRule(minimum=0, maximum=8, open_min=True),
        help="side relative to native, e.g. 1.5 (instead of --height/--width)",
    )
    p.add_argument("--ratio", type=_ratio, help="aspect ratio W:H, e.g. 2:1 (instead of --height/--width)")
    _number(p, "--lora-scale", _UNIT, 1.0)
    _number(p, "--norm-scale", _UNIT, 1.0)
    p.add_argument("--no-base", action="store_true", help="skip the run without ResAdapter")

    p = sub.add_parser("texture", help="Texture a mesh (MV-Adapter views baked into a UV texture)")
    p.add_argument("--mesh", required=True, type=_mesh_file("--mesh"), help=".obj/.glb/.gltf/.ply/.stl mesh file")
    p.add_argument("--image", type=_image_file("--image", keep_alpha=True), help="reference image (image-guided)")
    common(p, prompt_required=False)
    _number(p, "--reference-guidance", _GUIDANCE, help="separate image guidance scale (with --image)")
    _number(
        p,
        "--texture-size",
        NumberRule(integer=True, minimum=16, maximum=4096),
        help="texture side in pixels (default: 8x the view side, 256-1024)",
    )
    p.add_argument(
        "--fit",
        choices=("auto", "on", "off"),
        default="auto",
        help="move the mesh onto the generated object's silhouette (auto: when the views are not geometry-guided)",
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The checks that involve more than one flag, before any model loads.

    Raises:
        ValueError: naming the flags.
    """
    if args.task in ("mv", "res") and not args.prompt.strip():
        raise ValueError("`--prompt` is empty: describe what to generate.")
    if args.task == "texture" and args.image is None and not args.prompt.strip():
        raise ValueError("`--prompt` is empty: describe the texture, or give a reference `--image`.")
    if args.task in ("mv", "i2mv") and args.azimuths is not None and args.num_views is not None:
        if len(args.azimuths) != args.num_views:
            raise ValueError(
                f"`--num-views` {args.num_views} disagrees with the {len(args.azimuths)} `--azimuths`; give one of them."
            )
    if args.task == "i2mv" and (args.position_map is None) != (args.normal_map is None):
        raise ValueError("`--position-map` and `--normal-map` go together: give both or neither.")
    if args.task == "res" and (args.scale is not None or args.ratio is not None):
        if args.height is not None or args.width is not None:
            raise ValueError("`--scale` / `--ratio` and `--height` / `--width` exclude each other: give one way.")
    if args.task == "hipa":
        from adapters.hipa.presets import get_preset

        for name, _ in args.few_step_lora:
            try:
                key = get_preset(name).name
            except ValueError as err:
                raise ValueError(f"`--few-step-lora`: {err}") from None
            if key == "hipa":
                raise ValueError("`--few-step-lora`: load the HiPA LoRA itself with `--adapter`.")


def check_sizes_before_loading(args: argparse.Namespace) -> None:
    """``--height`` / ``--width`` against the base's size multiple and ``min(4096, 8 x native)``, read from its config
    files, so a bad size is refused before any weights load (the task checks again on the loaded model)."""
    from . import checks
    from .embedded import embedded_info, placeholder_base_path
    from .utils import folder_geometry

    sizes = [(name, getattr(args, name, None)) for name in ("height", "width")]
    if all(value is None for _, value in sizes):
        return
    model = _task(args.task).model
    folder = args.base or embedded_info(model).parts.get("base") or placeholder_base_path()
    geometry = folder_geometry(folder) if Path(folder).is_dir() else None
    if geometry is None:  # a hub id or a folder without configs: the loaded model is checked instead
        return
    native, multiple = geometry
    for name, value in sizes:
        if value is not None:
            checks.check_size(
                f"--{name}", value, multiple=multiple, maximum=min(checks.MAX_IMAGE_SIDE, 8 * native),
                allow_none=False, explain=" for this model",
            )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, list[str]]:
    """Run one task; returns ``{"files": [...], ...}`` (also written to ``<out>/result.json``)."""
    from . import tasks
    from .embedded import load_pipeline

    model = _task(args.task).model
    out: Path = args.out
    check_args(args)  # every flag was checked when parsed; these involve several flags. Nothing is loaded yet.
    check_sizes_before_loading(args)
    out.mkdir(parents=True, exist_ok=True)
    image = getattr(args, "image", None)  # already opened and checked by its flag's type
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
        tasks.load_few_step_loras(pipe, dict(args.few_step_lora))
    if args.task == "texture":
        return _run_texture(args, pipe)
    files: list[Path] = []
    first = None  # the first output image (its size is checked against the trained range)
    start = time.perf_counter()
    common = {"negative_prompt": args.negative_prompt, "seed": args.seed}
    if args.steps is not None:
        common["num_inference_steps"] = args.steps
    if args.guidance is not None:
        common["guidance_scale"] = args.guidance

    if args.task in ("mv", "i2mv"):
        height, width = args.height, args.width
        view_args = {
            "num_views": 6 if args.num_views is None else args.num_views,
            "azimuths": args.azimuths,
            "elevation": args.elevation,
            "height": height,
            "width": width,
            "mv_scale": args.mv_scale,
        }
        if args.task == "mv":
            images = tasks.text_to_multiview(pipe, args.prompt, **view_args, **common)
        else:
            images = tasks.image_to_multiview(
                pipe,
                image,
                args.prompt,
                position_map=args.position_map,
                normal_map=args.normal_map,
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
        height, width = args.height, args.width
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
        height, width = args.height, args.width
        timed = tasks.one_step(
            pipe,
            args.prompt,
            height=height,
            width=width,
            lora_scale=args.lora_scale,
            compare=args.compare,
            teacher_steps=args.teacher_steps,
            **common,
        )
        first = timed[0][1] if timed else None
        names = ["hipa", *args.compare]
        for name, (label, image_out, seconds) in zip(names, timed):
            path = out / f"{name}.png"
            image_out.save(path)
            files.append(path)
            logger.info(f"{label}: {seconds * 1000:.0f} ms -> {path}")
    elif args.task == "res":
        height, width = args.height, args.width
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


def _run_texture(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    """The ``texture`` task: :func:`pipelines.texture.texture_mesh` writes the files and its ``result.json`` (never
    overwriting: a second run in the same ``--out`` gets ``textured-2.glb``, ``result-2.json`` ...)."""
    from . import tasks
    from .call_defaults import get_call_defaults
    from .texture import FALLBACK_NOTE, texture_mesh

    result = texture_mesh(
        pipe,
        args.mesh,
        args.prompt,
        image=args.image,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        reference_guidance_scale=args.reference_guidance,
        seed=args.seed,
        texture_size=args.texture_size,
        fit={"auto": None, "on": True, "off": False}[args.fit],
        output_dir=args.out,
    )
    view = result.views[0]
    note = tasks.trained_size_note(get_call_defaults(pipe).trained_sizes, view.height, view.width)
    if note:
        logger.warning(f"texture: {note}")
    info = getattr(pipe, "embedded_info", None)
    if not result.geometry_guided:
        if args.adapter is None and info is not None and info.name == "mv":
            logger.warning(f"texture: {FALLBACK_NOTE}")
        logger.info(
            "texture: this MV-Adapter takes no geometry maps (camera condition): the views are unguided views on its "
            f"camera ring, and the mesh was fitted to their silhouettes (scale {result.mesh_scale:.2f})."
        )
    logger.info("texture: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
    summary = result.summary()
    summary["placeholder_weights"] = bool(info is not None and info.is_placeholder)
    result.files["result"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


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


#: Errors caused by the user's input (a value the loaded model refuses, a model that cannot be read or found): one
#: line, exit status 2. A ``TypeError`` is not among them: every value reaching the code was typed by its flag, so a
#: ``TypeError`` is a bug and keeps its traceback (exit status 1).
USER_ERRORS = (ValueError, OSError)


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
