"""Web demo of the four adapters (Gradio): ``python app.py`` and open http://127.0.0.1:7860.

One tab per task: Text to multi-view and Image to multi-view (MV-Adapter), Image to video (I2V-Adapter), One-step
text-to-image (HiPA, with the other few-step samplers to compare), Any resolution (ResAdapter, with and without the
adapter side by side). By default every task runs on the small models shipped in ``assets/`` (see
``pipelines/embedded.py``; untrained placeholders where an asset is missing), offline. Model flags point a task at
real checkpoints (local folders or hub ids, used only when online)::

    python app.py --mv-base stabilityai/stable-diffusion-2-1-base --mv-adapter path/to/mvadapter_i2mv_sd21.safetensors
    python app.py --res-base runwayml/stable-diffusion-v1-5 --res-adapter path/to/resadapter_v2_sd1.5

Every setting starts at the model's stored defaults (``pipeline_defaults.json`` beside its weights, see
``pipelines/call_defaults.py``); size sliders stay inside the range a model was trained for where it was trained on
several sizes, and the page warns when a request leaves it. Small outputs are shown enlarged (nearest neighbour) with
their real size in the caption; downloads keep the real size. Input errors are one log line each (handler and
message); unexpected errors log their traceback.

``build_demo()`` builds the page without loading any model (models load on first use, once, and are cached); the
tests drive it with ``gradio_client`` and a headless browser. Everything the app writes goes under its own folder
(``--output-dir``, default ``<tmp>/diffusion-adapters-app``), including Gradio's upload/cache folder.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The app's own folder for outputs and Gradio's cache (set before gradio is imported, which reads it at import).
APP_DIR_ENV = "DIFFUSION_ADAPTERS_APP_DIR"
DEFAULT_APP_DIR = Path(os.environ.get(APP_DIR_ENV) or Path(tempfile.gettempdir()) / "diffusion-adapters-app")
_USER_GRADIO_TEMP_DIR = os.environ.get("GRADIO_TEMP_DIR")
os.environ.setdefault("GRADIO_TEMP_DIR", str(DEFAULT_APP_DIR / "gradio"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

logger = logging.getLogger("diffusion_adapters.app")

__all__ = ["AppConfig", "ModelManager", "build_demo", "launch_kwargs", "main", "parse_args", "use_output_dir"]

#: Model keys (``pipelines.embedded`` names) and the flags that override their parts.
MODEL_KEYS = ("mv", "i2v", "hipa", "res")
MAX_SEED = 2**31 - 1

TITLE = "Diffusion adapters"
INTRO = (
    "Multi-view generation (MV-Adapter), image-to-video (I2V-Adapter), one-step text-to-image (HiPA) and any "
    "resolution (ResAdapter) on Hugging Face diffusers. Every tab runs offline on the small models shipped with the "
    "project; set the model flags of `app.py` to use real checkpoints."
)

CSS = """
.pixelated img, .pixelated video { image-rendering: pixelated; }
#da-header { margin-bottom: 0.25rem; }
#da-header h1 { margin-bottom: 0.1rem; }
.da-notice { border-left: 4px solid #f59e0b; padding: 0.4rem 0.8rem; background: rgba(245, 158, 11, 0.08); }
.da-unavailable { border-left: 4px solid #dc2626; padding: 0.6rem 0.9rem; background: rgba(220, 38, 38, 0.06); }
footer { display: none !important; }
"""

EXAMPLE_PROMPTS = {
    "mv": ["a red cube", "a blue sphere", "a yellow cone"],
    "hipa": ["a red cube on a table", "a green sphere", "a small blue cylinder beside a yellow cube"],
    "res": ["a red cube on a table", "a blue sphere", "a green cone"],
}


# ----------------------------------------------------------------------------------------------------------------------
# configuration and model cache
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """User checkpoints for one model key; all ``None`` = the embedded model."""

    base: str | None = None
    adapter: str | None = None
    motion_adapter: str | None = None
    extra_loras: dict[str, str] = field(default_factory=dict)  # one-step tab: preset name -> LoRA to compare

    @property
    def is_embedded(self) -> bool:
        return self.base is None and self.adapter is None and self.motion_adapter is None


@dataclass
class AppConfig:
    """Settings of one app instance.

    Attributes:
        sources: model key (``"mv"``, ``"i2v"``, ``"hipa"``, ``"res"``) -> :class:`ModelSource`.
        device, dtype: ``None`` = automatic (CUDA + float16 where present, else CPU + float32).
        output_dir: everything the app writes goes below it.
        max_upload_mb: uploads larger than this are refused.
        concurrency_limit: requests processed at once (the rest wait in the queue).
        max_queue: queued requests beyond this are refused.
        loader: ``fn(model_key, ModelSource, device, dtype) -> pipeline`` (default: ``pipelines.embedded``); tests
            inject their own.
        keep_runs: most recent output folders kept per task.
    """

    sources: dict[str, ModelSource] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    output_dir: Path = DEFAULT_APP_DIR
    max_upload_mb: float = 20.0
    concurrency_limit: int = 2
    max_queue: int = 64
    loader: Callable[..., Any] | None = None
    keep_runs: int = 50

    def source(self, key: str) -> ModelSource:
        return self.sources.get(key) or ModelSource()


def _default_loader(key: str, source: ModelSource, device: str | None, dtype: str | None):
    from pipelines.embedded import load_pipeline

    pipe = load_pipeline(
        key,
        base=source.base,
        adapter=source.adapter,
        motion_adapter=source.motion_adapter,
        device=device,
        dtype=dtype,
    )
    if source.extra_loras:
        from pipelines.tasks import load_few_step_loras

        load_few_step_loras(pipe, source.extra_loras)
    return pipe


class ModelLoadError(RuntimeError):
    """A model could not be loaded (the message says which and why)."""


class ModelManager:
    """Loads each model once, on first use, and serialises calls into it.

    One re-entrant lock per model key guards both the load and every call (diffusers pipelines keep per-call state
    in their scheduler, so one pipeline runs one request at a time); different models run in parallel up to the
    queue's concurrency limit. A failed load is not cached: the next request tries again.
    """

    def __init__(self, config: AppConfig):
        self.config = config
        self._models: dict[str, Any] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    @property
    def loaded(self) -> list[str]:
        """Keys of the models loaded so far."""
        return sorted(self._models)

    def get(self, key: str) -> Any:
        with self._lock(key):
            if key not in self._models:
                loader = self.config.loader or _default_loader
                start = time.perf_counter()
                source = self.config.source(key)
                try:
                    pipe = loader(key, source, self.config.device, self.config.dtype)
                except (ImportError, OSError, ValueError, RuntimeError) as err:
                    what = "the embedded model" if source.is_embedded else f"{source}"
                    hint = "" if source.is_embedded else " Hub ids need a connection (and HF_HUB_OFFLINE unset)."
                    raise ModelLoadError(
                        f"Could not load {what} for '{key}': {type(err).__name__}: {err}.{hint}"
                    ) from err
                logger.info(f"Loaded model '{key}' in {time.perf_counter() - start:.1f} s.")
                self._models[key] = pipe
            return self._models[key]

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[Any]:
        """``with manager.use("mv") as pipe:`` -- the loaded pipeline, held exclusively."""
        with self._lock(key):
            yield self.get(key)


# ----------------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------------


def _model_note(key: str, source: ModelSource) -> str:
    """One line saying which weights a tab uses (reads configs only, builds nothing)."""
    if not source.is_embedded:
        parts = ", ".join(f"{k}: `{v}`" for k, v in vars(source).items() if v and k != "extra_loras")
        return f"Custom checkpoints ({parts})."
    try:
        from pipelines.embedded import embedded_info

        info = embedded_info(key)
    except (ImportError, ValueError) as err:
        return f"Embedded model registry unavailable ({err})."
    if info.is_placeholder:
        return (
            f"Embedded model with **untrained placeholder weights** for {', '.join(info.placeholders)}: outputs "
            "are noise-like until the assets are built (see `assets/README.md`)."
        )
    return "Embedded model (trained on the procedural mini-world, see `assets/README.md`)."


def _base_geometry(source: ModelSource) -> tuple[int, int]:
    """``(native side, size multiple)`` of a base from its config files only; defaults when unknown."""
    from pipelines.embedded import embedded_info

    if source.base is not None:
        folder = Path(source.base)
    else:
        base = embedded_info("base").parts.get("base")
        folder = Path(base) if base else None
    if folder is None or not (folder / "unet" / "config.json").is_file():
        if source.base is None:
            return 64, 16  # the placeholder base (see pipelines.embedded)
        return 512, 64
    from pipelines.utils import folder_geometry

    return folder_geometry(folder) or (512, 64)


def _module_error(module: str) -> str | None:
    """``None`` when ``module`` imports, else a one-line reason."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 -- any import failure makes the tab unavailable, with its reason
        logger.warning(f"{module} could not be imported: {type(err).__name__}: {err}")
        return f"{type(err).__name__}: {err}"
    return None


def _report(progress: Any, fraction: float, description: str) -> None:
    """Report ``fraction`` / ``description`` through a Gradio ``progress`` (if any); reporting never fails a request."""
    if progress is not None:
        with contextlib.suppress(Exception):
            progress(fraction, desc=description)


def _pick_seed(seed: Any, randomize: bool) -> int:
    if randomize:
        return random.randint(0, MAX_SEED)
    try:
        value = int(seed)
    except (TypeError, ValueError) as err:
        raise gr.Error(f"Seed must be an integer between 0 and {MAX_SEED}, got {seed!r}.") from err
    if not 0 <= value <= MAX_SEED:
        raise gr.Error(f"Seed must be between 0 and {MAX_SEED}, got {value}.")
    return value


#: Outputs smaller than this (shorter side, pixels) are shown enlarged by an integer factor, nearest neighbour.
DISPLAY_MIN_SIDE = 256


def _enlarged(image: Any) -> tuple[Any, int]:
    """``(image enlarged for display, factor)``: nearest neighbour, so the pixels stay visible as they are."""
    from pipelines.tasks import upscale_for_display

    big = upscale_for_display([image], DISPLAY_MIN_SIDE)[0]
    return big, max(1, big.width // max(1, image.width))


def _caption(label: str, image: Any, factor: int) -> str:
    size = f"{image.width}x{image.height} px"
    return f"{label} · {size}" + (f", shown {factor}x" if factor > 1 else "")


def _gallery(images: list, labels: str | list[str]) -> list[tuple[Any, str]]:
    """Gallery items: each image enlarged for display, its caption stating the real size."""
    out = []
    for i, image in enumerate(images):
        big, factor = _enlarged(image)
        label = f"{labels} {i}" if isinstance(labels, str) else labels[i]
        out.append((big, _caption(label, image, factor)))
    return out


def _shown_image(image: Any, label: str) -> gr.Image:
    """An output image enlarged for display, its label stating the real size."""
    big, factor = _enlarged(image)
    return gr.Image(value=big, label=_caption(label, image, factor))


def _guard_image_input(component: gr.Image, label: str) -> gr.Image:
    """Make a ``gr.Image`` input refuse non-image uploads with a clear ``gr.Error`` instead of a PIL traceback."""
    original = component.preprocess

    @functools.wraps(original)
    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error as err:
            if not err.print_exception:
                raise
            raise _user_error(label, str(err.message)) from err
        except Exception as err:  # noqa: BLE001 -- whatever PIL raises for a bad upload becomes a user message
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            message = f"{label}: {name!r} is not an image file that can be read ({type(err).__name__})."
            raise _user_error(label, message) from err

    component.preprocess = preprocess
    return component


def _user_error(where: str, message: str) -> gr.Error:
    """A ``gr.Error`` for a user's mistake, logged as one line (no traceback: nothing is wrong with the server)."""
    logger.warning(message if message.startswith(where) else f"{where}: {message}")
    return gr.Error(message, print_exception=False)


def _quiet_bounds(component: gr.components.Component, label: str) -> gr.components.Component:
    """Make a component's own input check (e.g. a slider's bounds) a message on the page and one log line (no
    traceback); for a number outside a slider's range the message says which value the slider keeps instead."""
    original = component.preprocess
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)

    @functools.wraps(original)
    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error as err:
            if not err.print_exception:
                raise
            message = str(err.message)
            if isinstance(component, gr.Slider) and isinstance(payload, (int, float)) and None not in (low, high):
                kept = low if payload < low else high
                message = (
                    f"{label} must be between {low:g} and {high:g}, got {payload:g} (the slider stops at {kept:g})."
                )
            raise _user_error(label, message) from err

    component.preprocess = preprocess
    return component


def _user_errors(fn: Callable) -> Callable:
    """Turn input errors into ``gr.Error`` messages logged as one line; log anything unexpected with its traceback
    and report it (the server keeps going)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            if not err.print_exception:
                raise
            raise _user_error(fn.__name__, str(err.message)) from err
        # every widget hands its handler a typed value, so a TypeError here is a bug (logged with its traceback
        # below), not a user's mistake
        except (ValueError, ModelLoadError) as err:
            raise _user_error(fn.__name__, str(err)) from err
        except Exception as err:  # noqa: BLE001 -- the request fails with a message; the server stays up
            logger.exception(f"{fn.__name__} failed")
            raise gr.Error(f"Generation failed: {type(err).__name__}: {err}", print_exception=False) from err

    return wrapper


# ----------------------------------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------------------------------


class DemoApp:
    """The handlers behind the tabs (no model is loaded until a handler runs)."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.models = ModelManager(config)
        self.output_dir = Path(config.output_dir).resolve()

    # -------------------------------------------------------------- files
    def run_dir(self, task: str) -> Path:
        """A fresh folder ``<output_dir>/outputs/<task>/<time>-<id>`` for one request's files (old ones pruned)."""
        root = self.output_dir / "outputs" / task
        root.mkdir(parents=True, exist_ok=True)
        runs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
        for old in runs[: max(0, len(runs) - self.config.keep_runs + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return folder

    def read_image(self, path: str | None, label: str, *, required: bool = True, keep_alpha: bool = False):
        from pipelines.tasks import load_image

        if path is None or path == "":
            if required:
                raise gr.Error(f"{label} is missing: upload an image first.")
            return None
        try:
            return load_image(
                path, name=label, max_bytes=int(self.config.max_upload_mb * 2**20), keep_alpha=keep_alpha
            )
        except ValueError as err:
            raise gr.Error(str(err).replace("`", "")) from err

    @contextlib.contextmanager
    def using(self, key: str, progress: Any = None) -> Iterator[Any]:
        """The model ``key`` held for one request; reports "Loading the model" / "Waiting" through ``progress``."""
        first = key not in self.models.loaded
        _report(progress, 0, "Loading the model (first use)..." if first else "Waiting for the model...")
        with self.models.use(key) as pipe:
            yield pipe

    @staticmethod
    def _size_note(pipe: Any, image: Any, what: str) -> str:
        """Warn on the page (and in the status line) when an output's size is outside the model's trained range."""
        from pipelines.call_defaults import get_call_defaults
        from pipelines.tasks import trained_size_note

        note = trained_size_note(get_call_defaults(pipe).trained_sizes, image.height, image.width, what)
        if not note:
            return ""
        gr.Warning(note)
        return f" **{note}**"

    @staticmethod
    def _info(pipe: Any, text: str, seconds: float) -> str:
        info = getattr(pipe, "embedded_info", None)
        note = (
            " Untrained placeholder weights: outputs are noise-like."
            if info is not None and info.is_placeholder
            else ""
        )
        return f"{text} in {seconds:.1f} s.{note}"

    # -------------------------------------------------------------- handlers
    # Each handler takes the tab's inputs as keyword arguments named like the tab's controls (``inputs_kwargs`` in
    # :func:`_connect`); those names are also the parameters of the tab's API endpoint.
    def text_to_multiview(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        seed: Any,
        randomize: bool,
        num_views: int,
        azimuths: str,
        elevation: float,
        height: int,
        width: int,
        steps: int,
        guidance: float,
        mv_scale: float,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        from pipelines import tasks

        seed = _pick_seed(seed, randomize)
        start = time.perf_counter()
        with self.using("mv", progress) as pipe:
            views = tasks.text_to_multiview(
                pipe,
                prompt,
                negative_prompt=negative_prompt,
                num_views=int(num_views),
                azimuths=azimuths,
                elevation=float(elevation),
                height=int(height),
                width=int(width),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                mv_scale=float(mv_scale),
                seed=seed,
            )
        zip_path = tasks.save_views_zip(views, self.run_dir("mv") / "views.zip")
        info = self._info(pipe, f"{len(views)} views", time.perf_counter() - start)
        info += self._size_note(pipe, views[0], "the MV-Adapter")
        return _gallery(views, "view"), str(zip_path), seed, info

    def image_to_multiview(
        self,
        *,
        image: str | None,
        prompt: str,
        negative_prompt: str,
        position_map: str | None,
        normal_map: str | None,
        seed: Any,
        randomize: bool,
        num_views: int,
        azimuths: str,
        elevation: float,
        height: int,
        width: int,
        steps: int,
        guidance: float,
        reference_guidance: float,
        mv_scale: float,
        ref_scale: float,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        from pipelines import tasks

        reference = self.read_image(image, "Reference image", keep_alpha=True)
        position = self.read_image(position_map, "Position map", required=False)
        normal = self.read_image(normal_map, "Normal map", required=False)
        seed = _pick_seed(seed, randomize)
        start = time.perf_counter()
        with self.using("mv", progress) as pipe:
            views = tasks.image_to_multiview(
                pipe,
                reference,
                prompt or "",
                negative_prompt=negative_prompt,
                position_map=position,
                normal_map=normal,
                num_views=int(num_views),
                azimuths=azimuths,
                elevation=float(elevation),
                height=int(height),
                width=int(width),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                reference_guidance_scale=float(reference_guidance) if reference_guidance else None,
                mv_scale=float(mv_scale),
                ref_scale=float(ref_scale),
                seed=seed,
            )
        zip_path = tasks.save_views_zip(views, self.run_dir("i2mv") / "views.zip")
        info = self._info(pipe, f"{len(views)} views", time.perf_counter() - start)
        info += self._size_note(pipe, views[0], "the MV-Adapter")
        return _gallery(views, "view"), str(zip_path), seed, info

    def texture_mesh(
        self,
        *,
        mesh: str | None,
        prompt: str,
        image: str | None,
        negative_prompt: str,
        seed: Any,
        randomize: bool,
        steps: int,
        guidance: float,
        texture_size: str,
        fit: str,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        from pipelines import texture

        if not mesh:
            raise gr.Error(f"Mesh is missing: upload a {' / '.join(texture.MESH_EXTENSIONS)} file first.")
        limit = int(self.config.max_upload_mb * 2**20)
        if Path(mesh).is_file() and Path(mesh).stat().st_size > limit:
            size = Path(mesh).stat().st_size / 2**20
            raise gr.Error(f"Mesh is too large: {size:.1f} MB, the limit is {limit / 2**20:.1f} MB.")
        try:  # the mesh is checked before the model loads: one message per kind of bad mesh
            texture.read_mesh(mesh, name="Mesh")
        except ValueError as err:
            raise gr.Error(str(err).replace("`", "")) from err
        reference = self.read_image(image, "Reference image", required=False, keep_alpha=True)
        if reference is None and not (prompt or "").strip():
            raise gr.Error("Prompt is empty: describe the texture, or upload a reference image.")
        seed = _pick_seed(seed, randomize)
        sizes = {"auto": None} | {str(n): n for n in TEXTURE_SIZES}
        if str(texture_size) not in sizes:
            raise gr.Error(f"Texture size must be one of {', '.join(sizes)}, got {texture_size!r}.")
        fits = {"auto": None, "on": True, "off": False}
        if fit not in fits:
            raise gr.Error(f"Fit must be one of {', '.join(fits)}, got {fit!r}.")

        def stage(fraction: float, description: str) -> None:
            _report(progress, fraction, description)

        start = time.perf_counter()
        with self.using(_texture_model(self.config), progress) as pipe:
            result = texture.texture_mesh(
                pipe,
                mesh,
                prompt or "",
                image=reference,
                negative_prompt=negative_prompt,
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                seed=seed,
                texture_size=sizes[str(texture_size)],
                fit=fits[fit],
                output_dir=self.run_dir("texture"),
                progress=stage,
            )
        from pipelines.tasks import save_views_zip

        folder = result.glb.parent
        zip_path = save_views_zip(result.views, folder / "views.zip")
        mode = (
            "views guided by the mesh's position / normal maps"
            if result.geometry_guided
            else f"unguided views on the camera ring, mesh fitted to them (scale {result.mesh_scale:.2f})"
        )
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items() if k != "total")
        text = (
            f"{result.mesh.num_faces:,} faces textured from {len(result.views)} views ({mode}); "
            f"{result.coverage:.0%} of the texture seen, the rest filled. Stages: {stages}. Done"
        )
        info = self._info(pipe, text, time.perf_counter() - start)
        info += self._size_note(pipe, result.views[0], "the MV-Adapter")
        gallery = _gallery(
            [*result.views, result.texture], [f"view {i}" for i in range(len(result.views))] + ["texture"]
        )
        files = [str(result.glb), str(result.files["texture"]), str(zip_path)]
        return str(result.glb), files, gallery, seed, info

    def image_to_video(
        self,
        *,
        image: str | None,
        prompt: str,
        negative_prompt: str,
        seed: Any,
        randomize: bool,
        num_frames: int,
        height: int,
        width: int,
        steps: int,
        guidance: float,
        adapter_scale: float,
        prior_strength: float,
        prior_start: float,
        fps: int,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        from pipelines import tasks

        first = self.read_image(image, "Input image")
        seed = _pick_seed(seed, randomize)
        start = time.perf_counter()
        with self.using("i2v", progress) as pipe:
            frames = tasks.image_to_video(
                pipe,
                first,
                prompt or "",
                negative_prompt=negative_prompt,
                num_frames=int(num_frames),
                height=int(height),
                width=int(width),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                adapter_scale=float(adapter_scale),
                prior_strength=float(prior_strength),
                prior_start=float(prior_start),
                seed=seed,
            )
        folder = self.run_dir("i2v")
        w, h = frames[0].size
        shown = tasks.upscale_for_display(frames[:1])[0].width // w
        text = f"{len(frames)} frames of {w}x{h} px" + (f" (shown {shown}x, nearest neighbour)" if shown > 1 else "")
        info = self._info(pipe, text, time.perf_counter() - start)
        info += self._size_note(pipe, frames[0], "the I2V-Adapter")
        try:
            files = tasks.save_video(frames, folder / "video.mp4", folder / "video.gif", fps=int(fps))
        except ImportError as err:  # no imageio / ffmpeg: the GIF still works
            logger.warning(f"No mp4 export ({err}); writing a GIF only.")
            files = tasks.save_video(frames, None, folder / "video.gif", fps=int(fps))
            info += " mp4 export needs `pip install imageio imageio-ffmpeg`; GIF only."
            return None, [str(files["gif"])], seed, info
        return str(files["mp4"]), [str(files["mp4"]), str(files["gif"])], seed, info

    def one_step(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        seed: Any,
        randomize: bool,
        compare: list[str] | None,
        height: int,
        width: int,
        steps: int,
        guidance: float,
        lora_scale: float,
        teacher_steps: int,
        teacher_guidance: float,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        from pipelines import tasks

        seed = _pick_seed(seed, randomize)
        labels = {v: k for k, v in tasks.ONE_STEP_COMPARISONS.items()}
        keys = [labels.get(c, c) for c in (compare or [])]
        start = time.perf_counter()
        with self.using("hipa", progress) as pipe:
            results = tasks.one_step(
                pipe,
                prompt,
                negative_prompt=negative_prompt,
                height=int(height),
                width=int(width),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                lora_scale=float(lora_scale),
                teacher_steps=int(teacher_steps),
                teacher_guidance_scale=float(teacher_guidance),
                compare=keys,
                seed=seed,
            )
        gallery = _gallery(
            [image for _, image, _ in results], [f"{label} · {s * 1000:.0f} ms" for label, _, s in results]
        )
        info = self._info(pipe, f"{len(results)} images", time.perf_counter() - start)
        return gallery, seed, info + self._size_note(pipe, results[0][1], "the HiPA LoRA")

    def any_resolution(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        seed: Any,
        randomize: bool,
        height: int,
        width: int,
        compare_base: bool,
        steps: int,
        guidance: float,
        lora_scale: float,
        norm_scale: float,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        from pipelines import tasks

        seed = _pick_seed(seed, randomize)
        start = time.perf_counter()
        with self.using("res", progress) as pipe:
            native = tasks.native_resolution(pipe)
            results = tasks.any_resolution(
                pipe,
                prompt,
                negative_prompt=negative_prompt,
                height=int(height),
                width=int(width),
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                lora_scale=float(lora_scale),
                norm_scale=float(norm_scale),
                with_base=bool(compare_base),
                seed=seed,
            )
        real = results[0][1]
        text = f"{real.width}x{real.height} px (native {native}x{native})"
        info = self._info(pipe, text, time.perf_counter() - start) + self._size_note(pipe, real, "the ResAdapter")
        titles = ["With ResAdapter", "Base only"]
        shown = [_shown_image(image, title) for title, (_, image) in zip(titles, results)]
        base = shown[1] if len(shown) > 1 else gr.Image(value=None, label="Base only")
        return shown[0], base, seed, info


# ----------------------------------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------------------------------


def _seed_row() -> tuple[gr.Number, gr.Checkbox]:
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, scale=3)
        randomize = gr.Checkbox(label="Randomize seed", value=False, scale=1, min_width=120)
    return seed, randomize


def _accept(value: Any) -> None:
    """A slider's release: nothing to do once its value passed the range check."""


def _tab_defaults(task: str, model: str, source: ModelSource) -> dict[str, Any]:
    """The values a tab starts with: the model's stored call defaults (``pipeline_defaults.json``), else fallbacks."""
    from pipelines.embedded import embedded_call_defaults
    from pipelines.tasks import task_defaults

    try:
        stored = embedded_call_defaults(model, base=source.base, adapter=source.adapter)
    except (ValueError, OSError) as err:  # the model load will report it on the page; the tab still builds
        logger.error(f"{task} tab: stored defaults ignored: {err}")
        stored = None
    return task_defaults(task, stored)


def _steps_guidance_sliders(defaults: dict[str, Any], prefix: str) -> tuple[gr.Slider, gr.Slider]:
    """Steps (``elem_id`` ``<prefix>-steps``) and guidance-scale sliders at the model's stored defaults."""
    steps = gr.Slider(1, 100, value=defaults["num_inference_steps"], step=1, label="Steps", elem_id=f"{prefix}-steps")
    guidance = gr.Slider(0, 15, value=defaults["guidance_scale"], step=0.5, label="Guidance scale")
    return steps, guidance


def _size_sliders(native: int, multiple: int, defaults: dict[str, Any], prefix: str) -> tuple[gr.Slider, gr.Slider]:
    """Height / width sliders. A model trained on a range of sizes gets sliders spanning exactly that range; one
    trained at a single size says so (the page warns when a request leaves it)."""
    trained = defaults.get("trained_sizes")
    height0, width0 = defaults.get("height", native), defaults.get("width", native)
    if trained and trained["min_side"] < trained["max_side"]:
        low = -(-int(trained["min_side"]) // multiple) * multiple
        high = int(trained["max_side"]) // multiple * multiple
        info = f"trained range: {low}-{high} px"
        if trained.get("max_aspect_ratio"):
            info += f", aspect ratio up to {float(trained['max_aspect_ratio']):g}:1"
    else:
        low, high = multiple, max(native * 4, multiple)
        info = f"trained at {trained['min_side']} px only" if trained else None
    height0, width0 = min(max(height0, low), high), min(max(width0, low), high)
    with gr.Row():
        height = gr.Slider(
            low, high, value=height0, step=multiple, label="Height", info=info, elem_id=f"{prefix}-height"
        )
        width = gr.Slider(low, high, value=width0, step=multiple, label="Width", elem_id=f"{prefix}-width")
    return height, width


def _unavailable(title: str, module: str, reason: str) -> None:
    gr.Markdown(
        f"**{title} is not available.** The pipeline module `{module}` could not be imported:\n\n`{reason}`\n\n"
        "The other tabs work as usual.",
        elem_classes=["da-unavailable"],
    )


def _connect(
    fn: Callable,
    button: gr.Button,
    inputs: dict[str, gr.components.Component],
    results: list[gr.components.Component],
    info: gr.Markdown,
    api_name: str,
    *,
    submit: gr.Textbox | None = None,
    examples: gr.Examples | None = None,
) -> None:
    """Wire one tab's action: ``button`` runs ``fn`` (the API endpoint ``api_name``), and so do Enter in ``submit``
    and a click on one of ``examples`` (which first fills its inputs).

    ``fn`` gets ``inputs`` (``{parameter name: component}``, in the endpoint's parameter order) as keyword arguments
    and returns ``(*results, seed used, status text)``; the seed goes back to ``inputs["seed"]`` and progress shows
    on ``results``.
    """
    event = {
        "inputs_kwargs": inputs,
        "outputs": [*results, inputs["seed"], info],
        "show_progress_on": results,
    }
    button.click(_user_errors(fn), api_name=api_name, **event)
    if submit is not None:
        submit.submit(_user_errors(fn), api_visibility="undocumented", **event)
    loaded = getattr(examples, "load_input_event", None)
    if loaded is not None:
        loaded.then(_user_errors(fn), api_visibility="undocumented", **event)


def _gallery_output(prefix: str, label: str) -> gr.Gallery:
    return gr.Gallery(
        label=label,
        columns=3,
        height="auto",
        format="png",
        elem_id=f"{prefix}-gallery",
        elem_classes=["pixelated"],
        object_fit="contain",
    )


def _image_output(label: str, elem_id: str) -> gr.Image:
    return gr.Image(
        label=label, format="png", height=360, elem_id=elem_id, elem_classes=["pixelated"], interactive=False
    )


def _image_input(label: str, message_label: str, **kwargs: Any) -> gr.Image:
    """A file-path image upload that refuses non-images with a message naming ``message_label``."""
    return _guard_image_input(gr.Image(label=label, type="filepath", **kwargs), message_label)


def _scale_slider(value: float, label: str, high: float = 2) -> gr.Slider:
    return gr.Slider(0, high, value=value, step=0.05, label=label)


def _status(prefix: str) -> gr.Markdown:
    return gr.Markdown(label="Status", elem_id=f"{prefix}-info")


def _generate_button(prefix: str) -> gr.Button:
    return gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate")


@dataclass
class _Tab:
    """What a tab's builder needs: the handlers, its model's weights, geometry and stored defaults, the examples."""

    state: DemoApp
    model: str
    source: ModelSource
    native: int  # the base's native side (pixels)
    multiple: int  # sizes must be multiples of this
    defaults: dict[str, Any]  # the model's stored call defaults (pipelines.tasks.task_defaults)
    examples: list[dict[str, Any]]  # pipelines.embedded.example_entries()

    def intro(self, text: str) -> None:
        gr.Markdown(f"{text} {_model_note(self.model, self.source)}")


def _view_controls(tab: _Tab, prefix: str) -> dict[str, gr.components.Component]:
    """Views, azimuths, elevation, size, steps and guidance of the two multi-view tabs."""
    from pipelines.tasks import MAX_VIEWS

    d = tab.defaults
    controls: dict[str, gr.components.Component] = {
        "num_views": gr.Slider(1, MAX_VIEWS, value=d["num_views"], step=1, label="Views", elem_id=f"{prefix}-views"),
        "azimuths": gr.Textbox(
            elem_id=f"{prefix}-azimuths",
            label="Azimuths (degrees, comma separated; overrides Views)",
            value="",
            placeholder="default ring, e.g. 0, 60, 120, 180, 240, 300",
        ),
        "elevation": gr.Slider(-45, 60, value=0, step=5, label="Elevation (degrees)"),
    }
    controls["height"], controls["width"] = _size_sliders(tab.native, tab.multiple, d, prefix)
    controls["steps"], controls["guidance"] = _steps_guidance_sliders(d, prefix)
    return controls


def _multiview_tab(tab: _Tab) -> None:
    """Text to multi-view (MV-Adapter, text mode)."""
    tab.intro("Consistent views of one object around a ring of cameras, from a text prompt (MV-Adapter).")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value="a red cube", lines=2, elem_id="mv-prompt")
            inputs = {"prompt": prompt, "negative_prompt": gr.Textbox(label="Negative prompt", value="", lines=1)}
            inputs["seed"], inputs["randomize"] = _seed_row()
            with gr.Accordion("Advanced", open=False, elem_id="mv-advanced"):
                inputs |= _view_controls(tab, "mv")
                inputs["mv_scale"] = _scale_slider(tab.defaults["mv_scale"], "Multi-view attention scale")
            button = _generate_button("mv")
        with gr.Column(scale=3):
            gallery = _gallery_output("mv", "Views")
            archive = gr.File(label="Download views (zip)", height=90, elem_id="mv-zip")
            info = _status("mv")
    examples = gr.Examples([[p] for p in EXAMPLE_PROMPTS["mv"]], inputs=[prompt], label="Examples")
    results = [gallery, archive]
    _connect(
        tab.state.text_to_multiview,
        button,
        inputs,
        results,
        info,
        "text_to_multiview",
        submit=prompt,
        examples=examples,
    )


def _image_multiview_tab(tab: _Tab) -> None:
    """Image to multi-view (MV-Adapter, image mode, optional geometry maps)."""
    d = tab.defaults
    tab.intro(
        "Views of the object in a reference image (MV-Adapter image mode); add position and normal maps to follow a "
        "given geometry."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            inputs = {
                "image": _image_input(
                    "Reference image", "Reference image", image_mode=None, height=240, elem_id="i2mv-image"
                ),
                "prompt": gr.Textbox(label="Prompt (optional)", value="", lines=1, elem_id="i2mv-prompt"),
                "negative_prompt": gr.Textbox(label="Negative prompt", value="", lines=1),
            }
            with gr.Accordion("Geometry (optional: position + normal maps)", open=False):
                gr.Markdown("One map per view side by side, or one map used for every view.")
                with gr.Row():
                    inputs["position_map"] = _image_input("Position map", "Position map", height=160)
                    inputs["normal_map"] = _image_input("Normal map", "Normal map", height=160)
            inputs["seed"], inputs["randomize"] = _seed_row()
            with gr.Accordion("Advanced", open=False, elem_id="i2mv-advanced"):
                inputs |= _view_controls(tab, "i2mv")
                inputs["reference_guidance"] = gr.Slider(
                    0,
                    10,
                    value=d.get("reference_guidance_scale") or 0,
                    step=0.5,
                    label="Reference guidance (0 = one joint guidance)",
                )
                inputs["mv_scale"] = _scale_slider(d["mv_scale"], "Multi-view attention scale")
                inputs["ref_scale"] = _scale_slider(d["ref_scale"], "Reference attention scale")
            button = _generate_button("i2mv")
        with gr.Column(scale=3):
            gallery = _gallery_output("i2mv", "Views")
            archive = gr.File(label="Download views (zip)", height=90, elem_id="i2mv-zip")
            info = _status("i2mv")
    examples = None
    if tab.examples:
        samples = [
            [
                str(e.get("front_view", e["image"])),
                e["prompt"],
                str(e["position_map"]) if "position_map" in e else None,
                str(e["normal_map"]) if "normal_map" in e else None,
            ]
            for e in tab.examples
        ]
        filled = [inputs[name] for name in ("image", "prompt", "position_map", "normal_map")]
        examples = gr.Examples(samples, inputs=filled, label="Examples", elem_id="i2mv-examples")
    _connect(
        tab.state.image_to_multiview, button, inputs, [gallery, archive], info, "image_to_multiview", examples=examples
    )


#: Texture sizes the texture tab offers ("auto": 8x the view side, 256-1024).
TEXTURE_SIZES = (256, 512, 1024, 2048)


def _texture_model(config: AppConfig) -> str:
    """The model key the texture tab runs on: ``mv`` when the user gave an MV model (``--mv-base`` /
    ``--mv-adapter``), else the embedded one :func:`pipelines.texture.texture_model` picks (the geometry-guided
    ``mv_geometry`` when shipped, else ``mv``)."""
    if not config.source("mv").is_embedded:
        return "mv"
    try:
        from pipelines.texture import texture_model
    except ImportError:  # the tab reports the missing module itself
        return "mv"
    return texture_model()


def _texture_note(source: ModelSource) -> str:
    """What the texture tab can do with the MV-Adapter it runs on (read from the adapter file, nothing loaded)."""
    from pipelines.texture import adapter_condition

    condition = adapter_condition(source.adapter) if source.adapter or source.is_embedded else None
    if condition == "geometry":
        return "This MV-Adapter is geometry-guided: the views follow the mesh's position and normal maps."
    which = (
        "No geometry-guided embedded MV-Adapter is shipped (assets/mv_adapter_geometry/), and the shipped one"
        if source.is_embedded
        else "This MV-Adapter"
    )
    if condition == "camera":
        return (
            f"{which} takes camera maps, not geometry maps (it is not a tg2mv / ig2mv adapter), so the views here are "
            "plain text- or image-guided views on its camera ring, not guided by the mesh: the mesh is scaled and "
            "moved onto the generated object's silhouette, then the views are baked onto it. A geometry-guided "
            "adapter (`--mv-adapter` with a tg2mv / ig2mv file) makes the views follow the mesh."
        )
    shipped = "No geometry-guided embedded MV-Adapter is shipped (assets/mv_adapter_geometry/). " * source.is_embedded
    return shipped + (
        "A geometry-guided adapter (tg2mv / ig2mv) makes the views follow the mesh's position and normal maps; other "
        "adapters texture from plain views on their camera ring, with the mesh fitted to the generated object."
    )


def _texture_tab(tab: _Tab) -> None:
    """Texture a mesh: MV-Adapter views baked into a UV texture, the textured .glb shown and offered."""
    from pipelines.texture import MAX_FACES, MESH_EXTENSIONS, example_meshes, example_reference

    d = tab.defaults
    tab.intro(
        "Upload a mesh and describe its texture (or give a reference image): views are generated around it and "
        f"baked into a UV texture; the textured .glb is shown and offered for download (up to {MAX_FACES:,} faces). "
        + _texture_note(tab.source)
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            inputs = {
                "mesh": gr.File(
                    label=f"Mesh ({', '.join(MESH_EXTENSIONS)})",
                    file_types=list(MESH_EXTENSIONS),
                    type="filepath",
                    height=110,
                    elem_id="texture-mesh",
                ),
                "prompt": gr.Textbox(label="Prompt", value="a red cube", lines=2, elem_id="texture-prompt"),
                "image": _image_input(
                    "Reference image (optional)",
                    "Reference image",
                    image_mode=None,
                    height=180,
                    elem_id="texture-image",
                ),
                "negative_prompt": gr.Textbox(label="Negative prompt", value="", lines=1),
            }
            inputs["seed"], inputs["randomize"] = _seed_row()
            with gr.Accordion("Advanced", open=False, elem_id="texture-advanced"):
                inputs["steps"], inputs["guidance"] = _steps_guidance_sliders(d, "texture")
                inputs["texture_size"] = gr.Dropdown(
                    ["auto", *(str(n) for n in TEXTURE_SIZES)], value="auto", label="Texture size (pixels)"
                )
                inputs["fit"] = gr.Radio(
                    ["auto", "on", "off"],
                    value="auto",
                    label="Fit the mesh to the generated object (auto: when the views are not geometry-guided)",
                )
            button = _generate_button("texture")
        with gr.Column(scale=3):
            model = gr.Model3D(label="Textured mesh", height=380, elem_id="texture-model", interactive=False)
            files = gr.File(
                label="Download (.glb, texture, views)", file_count="multiple", height=130, elem_id="texture-files"
            )
            gallery = _gallery_output("texture", "Views and texture")
            info = _status("texture")
    examples = None
    try:
        samples = [[str(path), prompt] for path, prompt in example_meshes()]
    except (ImportError, OSError, ValueError) as err:
        logger.warning(f"No example meshes: {err}")
        samples = []
    # each with its reference image (the front view the geometry adapter was trained to take) when shipped
    references = [example_reference(mesh) for mesh, _ in samples]
    example_inputs = [inputs["mesh"], inputs["prompt"]]
    if samples and all(references):
        samples = [[*sample, str(ref)] for sample, ref in zip(samples, references)]
        example_inputs.append(inputs["image"])
    if samples:
        examples = gr.Examples(samples, inputs=example_inputs, label="Example meshes", elem_id="texture-examples")
    _connect(tab.state.texture_mesh, button, inputs, [model, files, gallery], info, "texture_mesh", examples=examples)


def _video_tab(tab: _Tab) -> None:
    """Image to video (I2V-Adapter on AnimateDiff)."""
    from pipelines.tasks import MAX_FRAMES

    d = tab.defaults
    tab.intro("Animate a still image: it stays the first frame while the rest move (I2V-Adapter on AnimateDiff).")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            inputs = {
                "image": _image_input("Input image (first frame)", "Input image", height=240, elem_id="i2v-image"),
                "prompt": gr.Textbox(label="Prompt", value="", lines=1, elem_id="i2v-prompt"),
                "negative_prompt": gr.Textbox(label="Negative prompt", value="", lines=1),
            }
            inputs["seed"], inputs["randomize"] = _seed_row()
            with gr.Accordion("Advanced", open=False, elem_id="i2v-advanced"):
                inputs["num_frames"] = gr.Slider(
                    2, MAX_FRAMES, value=d["num_frames"], step=1, label="Frames", elem_id="i2v-frames"
                )
                inputs["height"], inputs["width"] = _size_sliders(tab.native, tab.multiple, d, "i2v")
                inputs["steps"], inputs["guidance"] = _steps_guidance_sliders(d, "i2v")
                inputs["adapter_scale"] = _scale_slider(d["adapter_scale"], "First-frame attention scale")
                inputs["prior_strength"] = gr.Slider(
                    0,
                    1,
                    value=d["prior_strength"],
                    step=0.05,
                    elem_id="i2v-prior",
                    label="Frame similarity prior: strength (0 = off)",
                )
                inputs["prior_start"] = gr.Slider(
                    0,
                    0.9,
                    value=min(d["prior_start"], 0.9),
                    step=0.05,
                    elem_id="i2v-prior-start",
                    label="Frame similarity prior: steps skipped (fraction)",
                )
                inputs["fps"] = gr.Slider(1, 30, value=8, step=1, label="Frames per second")
            button = _generate_button("i2v")
        with gr.Column(scale=3):
            video = gr.Video(
                label="Video",
                autoplay=True,
                loop=True,
                height=400,
                elem_id="i2v-video",
                elem_classes=["pixelated"],
                interactive=False,
            )
            files = gr.File(label="Download (mp4, GIF)", file_count="multiple", height=130, elem_id="i2v-files")
            info = _status("i2v")
    examples = None
    if tab.examples:
        samples = [[str(e["image"]), e["prompt"]] for e in tab.examples]
        examples = gr.Examples(samples, inputs=[inputs["image"], inputs["prompt"]], label="Examples")
    _connect(tab.state.image_to_video, button, inputs, [video, files], info, "image_to_video", examples=examples)


def _one_step_tab(tab: _Tab) -> None:
    """One-step text-to-image (HiPA), next to plain one-step sampling, the teacher and other few-step samplers."""
    from pipelines.tasks import ONE_STEP_COMPARISONS

    d = tab.defaults
    tab.intro(
        "One UNet evaluation per image with the HiPA LoRA, next to the same seed with plain one-step sampling, the "
        "multi-step teacher and other few-step samplers."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value="a red cube on a table", lines=2, elem_id="hipa-prompt")
            inputs = {
                "prompt": prompt,
                "negative_prompt": gr.Textbox(label="Negative prompt (used with guidance > 1)", value="", lines=1),
            }
            inputs["seed"], inputs["randomize"] = _seed_row()
            inputs["compare"] = gr.CheckboxGroup(
                list(ONE_STEP_COMPARISONS.values()),
                value=[ONE_STEP_COMPARISONS["plain"], ONE_STEP_COMPARISONS["teacher"]],
                label="Compare with (same seed)",
            )
            with gr.Accordion("Advanced", open=False, elem_id="hipa-advanced"):
                inputs["height"], inputs["width"] = _size_sliders(tab.native, tab.multiple, d, "hipa")
                inputs["steps"] = gr.Slider(
                    1, 4, value=d["num_inference_steps"], step=1, label="HiPA steps", elem_id="hipa-steps"
                )
                inputs["guidance"] = gr.Slider(0, 10, value=d["guidance_scale"], step=0.5, label="Guidance (1 = off)")
                inputs["lora_scale"] = _scale_slider(d["lora_scale"], "HiPA LoRA scale")
                inputs["teacher_steps"] = gr.Slider(
                    2, 100, value=d["teacher_steps"], step=1, label="Teacher steps", elem_id="hipa-teacher-steps"
                )
                inputs["teacher_guidance"] = gr.Slider(
                    0, 15, value=d["teacher_guidance_scale"], step=0.5, label="Teacher guidance"
                )
            button = _generate_button("hipa")
        with gr.Column(scale=3):
            gallery = _gallery_output("hipa", "Results")
            info = _status("hipa")
    examples = gr.Examples([[p] for p in EXAMPLE_PROMPTS["hipa"]], inputs=[prompt], label="Examples")
    _connect(tab.state.one_step, button, inputs, [gallery], info, "one_step", submit=prompt, examples=examples)


def _any_resolution_tab(tab: _Tab) -> None:
    """Any resolution (ResAdapter), with and without the adapter side by side."""
    d = tab.defaults
    tab.intro(
        f"The same prompt and seed at a size the base was not trained for (native {tab.native}x{tab.native}), with "
        "ResAdapter and without it."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value="a red cube on a table", lines=2, elem_id="res-prompt")
            negative = gr.Textbox(label="Negative prompt", value="", lines=1)
            height, width = _size_sliders(tab.native, tab.multiple, d, "res")
            seed, randomize = _seed_row()
            inputs = {"prompt": prompt, "negative_prompt": negative, "seed": seed, "randomize": randomize}
            inputs |= {"height": height, "width": width}
            with gr.Accordion("Advanced", open=False, elem_id="res-advanced"):
                inputs["compare_base"] = gr.Checkbox(value=d["with_base"], label="Also generate without ResAdapter")
                inputs["steps"], inputs["guidance"] = _steps_guidance_sliders(d, "res")
                inputs["lora_scale"] = _scale_slider(d["lora_scale"], "ResAdapter LoRA scale", high=1)
                inputs["norm_scale"] = _scale_slider(d["norm_scale"], "ResAdapter norm scale", high=1)
            button = _generate_button("res")
        with gr.Column(scale=3):
            with gr.Row():
                with_adapter = _image_output("With ResAdapter", "res-with")
                without = _image_output("Base only", "res-without")
            info = _status("res")
    examples = gr.Examples([[p] for p in EXAMPLE_PROMPTS["res"]], inputs=[prompt], label="Examples")
    _connect(
        tab.state.any_resolution,
        button,
        inputs,
        [with_adapter, without],
        info,
        "any_resolution",
        submit=prompt,
        examples=examples,
    )


#: One builder per tab, in page order (keys are ``pipelines.tasks.TASKS`` keys, or ``texture`` for
#: ``pipelines.texture.TEXTURE_TASK``, and the tabs' ids).
TAB_BUILDERS: dict[str, Callable[[_Tab], None]] = {
    "mv": _multiview_tab,
    "i2mv": _image_multiview_tab,
    "texture": _texture_tab,
    "i2v": _video_tab,
    "hipa": _one_step_tab,
    "res": _any_resolution_tab,
}


def build_demo(config: AppConfig | None = None) -> gr.Blocks:
    """Build the Blocks (no model is loaded: models load on first use). ``demo.app_state`` is the :class:`DemoApp`.

    The app's own files go under ``config.output_dir``; Gradio's upload/cache folder is ``$GRADIO_TEMP_DIR``
    (:func:`use_output_dir` points it below ``output_dir``; ``main`` does so before building).
    """
    from pipelines.tasks import TASKS, TaskSpec

    config = config or AppConfig()
    state = DemoApp(config)
    specs = {**TASKS, "texture": TaskSpec("texture", "Texture a mesh", _texture_model(config), "pipelines.texture")}
    errors = {key: _module_error(spec.module) for key, spec in specs.items()}
    try:
        from pipelines.embedded import example_entries

        entries = example_entries()
    except (ImportError, OSError, ValueError) as err:
        logger.warning(f"No example images: {err}")
        entries = []

    with gr.Blocks(title=TITLE, delete_cache=(3600, 24 * 3600)) as demo:
        with gr.Column(elem_id="da-header"):
            gr.Markdown(f"# {TITLE}\n{INTRO}")
        for key, build in TAB_BUILDERS.items():
            spec = specs[key]
            with gr.Tab(spec.title, id=key):
                if errors[key]:
                    _unavailable(spec.title, spec.module, errors[key])
                    continue
                source = config.source(spec.model)
                native, multiple = _base_geometry(source)
                defaults = _tab_defaults("mv" if key == "texture" else key, spec.model, source)  # the MV defaults
                build(_Tab(state, spec.model, source, native, multiple, defaults, entries))

        # A number typed into a slider's box outside its range is clamped by the browser when the box loses focus; the
        # slider's release event still carries the typed value, so the server says so on the page (see _quiet_bounds).
        for block in list(demo.blocks.values()):
            if isinstance(block, gr.Slider):
                block.release(_accept, block, None, show_progress="hidden", api_visibility="private")

    for block in demo.blocks.values():  # a value outside a control's range: a message and one log line
        if isinstance(block, (gr.Slider, gr.Number, gr.Dropdown, gr.CheckboxGroup)):
            _quiet_bounds(block, str(block.label or type(block).__name__))
    demo.queue(default_concurrency_limit=config.concurrency_limit, max_size=config.max_queue)
    demo.app_state = state
    return demo


def use_output_dir(output_dir: str | os.PathLike) -> Path:
    """Point Gradio's upload/cache folder at ``<output_dir>/gradio`` (unless the user set ``$GRADIO_TEMP_DIR``), so
    everything the app writes stays under ``output_dir``. Call before :func:`build_demo` and ``launch``; one app
    per process."""
    folder = Path(output_dir).resolve() / "gradio"
    if _USER_GRADIO_TEMP_DIR is None:
        os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return Path(os.environ["GRADIO_TEMP_DIR"])


def launch_kwargs(config: AppConfig, host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> dict:
    """Keyword arguments for ``demo.launch`` (host, port, share, upload limit, look)."""
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "max_file_size": int(config.max_upload_mb * 2**20),
        "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="slate"),
        "css": CSS,
        "show_error": True,
        "footer_links": ["api"],
    }


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Web demo of the diffusion adapters (Gradio).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, help="float16 | bfloat16 | float32 (default: fp16 on CUDA)")
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_APP_DIR, help="folder for everything the app writes"
    )
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (MB)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests processed at once")
    parser.add_argument("--preload", action="store_true", help="load every model at start-up instead of on first use")
    parser.add_argument("--base", default=None, help="base model for every task (folder or hub id)")
    group = parser.add_argument_group("model flags (folders or hub ids; default: the embedded models)")
    group.add_argument("--mv-base", default=None, help="base model for the multi-view tabs")
    group.add_argument("--mv-adapter", default=None, help="MV-Adapter weights (.safetensors file or folder)")
    group.add_argument("--i2v-base", default=None, help="SD 1.5-family base for image to video")
    group.add_argument("--motion-adapter", default=None, help="AnimateDiff MotionAdapter folder or hub id")
    group.add_argument("--i2v-adapter", default=None, help="I2V-Adapter weights")
    group.add_argument("--hipa-base", default=None, help="base model for one-step text-to-image")
    group.add_argument("--hipa-lora", default=None, help="HiPA (or other one-step) LoRA, diffusers format")
    group.add_argument(
        "--few-step-lora",
        action="append",
        default=[],
        metavar="PRESET=PATH",
        help="a few-step LoRA to compare with on the one-step tab (lcm, tcd, lightning, hyper-sd); repeatable",
    )
    group.add_argument("--res-base", default=None, help="base model for any resolution")
    group.add_argument("--res-adapter", default=None, help="ResAdapter folder or file")
    return parser.parse_args(argv)


def _few_step_loras(values: list[str]) -> dict[str, str]:
    from pipelines.utils import parse_preset_paths

    try:
        return parse_preset_paths(values, "--few-step-lora")
    except ValueError as err:
        raise SystemExit(str(err)) from err


def config_from_args(args: argparse.Namespace) -> AppConfig:
    sources = {
        "mv": ModelSource(base=args.mv_base or args.base, adapter=args.mv_adapter),
        "i2v": ModelSource(
            base=args.i2v_base or args.base, adapter=args.i2v_adapter, motion_adapter=args.motion_adapter
        ),
        "hipa": ModelSource(
            base=args.hipa_base or args.base,
            adapter=args.hipa_lora,
            extra_loras=_few_step_loras(args.few_step_lora),
        ),
        "res": ModelSource(base=args.res_base or args.base, adapter=args.res_adapter),
    }
    if args.concurrency < 1:
        raise SystemExit("--concurrency must be >= 1")
    if args.max_upload_mb <= 0:
        raise SystemExit("--max-upload-mb must be > 0")
    return AppConfig(
        sources=sources,
        device=args.device,
        dtype=args.dtype,
        output_dir=args.output_dir,
        max_upload_mb=args.max_upload_mb,
        concurrency_limit=args.concurrency,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = config_from_args(args)
    cache = use_output_dir(config.output_dir)
    logger.info(f"Writing outputs under {Path(config.output_dir).resolve()} (Gradio cache: {cache})")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(f"Binding to {args.host}: the demo is reachable from other machines.")
    demo = build_demo(config)
    if args.preload:
        for key in MODEL_KEYS:
            try:
                demo.app_state.models.get(key)
            except ModelLoadError as err:
                logger.error(f"{err} (the tab will retry on first use)")
    demo.launch(**launch_kwargs(config, host=args.host, port=args.port, share=args.share))


if __name__ == "__main__":
    main()
