"""The demo tasks as plain functions over loaded pipelines, shared by the web app (``app.py``) and the CLI
(``python -m pipelines``). No gradio here: inputs are PIL images and numbers, outputs PIL images and files.

Tasks (:data:`TASKS`): ``mv`` text to multi-view, ``i2mv`` image (+ optional position/normal maps) to multi-view,
``i2v`` image to video, ``hipa`` one-step text-to-image (with the other few-step presets to compare), ``res`` any
resolution (the same prompt and seed with and without ResAdapter).

Every function checks its inputs first and raises ``ValueError`` with a message naming the argument, the value and
what is allowed, before any model work.

Defaults: an argument left at ``None`` is not passed to the pipeline, so the pipeline's stored call defaults
(``pipe.call_defaults``, read from the model's ``pipeline_defaults.json``, see :mod:`pipelines.call_defaults`) or
its own defaults apply. :func:`task_defaults` gives the values a UI shows for a task; :func:`trained_size_note`
says when a size leaves the model's trained range.
"""

from __future__ import annotations

import inspect
import math
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import logging
from PIL import Image

from adapters.hipa.loader import DEFAULT_ADAPTER_NAME  # the HiPA LoRA's name; few-step LoRAs use their preset's
from adapters.hipa.teacher import TeacherSettings, read_teacher_settings, run_teacher, teacher_pipeline

from . import checks
from .utils import native_resolution, size_multiple

logger = logging.get_logger(__name__)

__all__ = [
    "MAX_FRAMES",
    "MAX_IMAGE_PIXELS",
    "MAX_SIDE",
    "MAX_VIEWS",
    "TASKS",
    "TaskSpec",
    "any_resolution",
    "call_pipeline",
    "check_size",
    "image_to_multiview",
    "image_to_video",
    "load_few_step_loras",
    "load_image",
    "native_resolution",
    "one_step",
    "parse_angles",
    "save_video",
    "save_views_zip",
    "size_from_ratio",
    "size_multiple",
    "task_defaults",
    "text_to_multiview",
    "trained_size_note",
]

#: Most views the app's and the CLI's multi-view tasks offer: a choice of these front ends (the multi-view attention
#: grows with the square of the view count; 12 covers every official ring), below the pipelines' own input limit
#: :data:`pipelines.checks.MAX_NUM_VIEWS`, which a Python caller may use up to.
MAX_VIEWS = 12
#: Most frames one video may have.
MAX_FRAMES = 32
#: Largest output side in pixels: the pipelines' own limit (one limit for the pipelines, the app and the CLI).
MAX_SIDE = checks.MAX_IMAGE_SIDE
#: Largest input image (pixels) accepted from users.
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class TaskSpec:
    """A demo task: its key, title, and the embedded model (:func:`pipelines.embedded.load_embedded` name) it uses."""

    key: str
    title: str
    model: str
    module: str  # the pipeline module it needs (to report "not available" when it is missing)


TASKS: dict[str, TaskSpec] = {
    "mv": TaskSpec("mv", "Text to multi-view", "mv", "pipelines.pipeline_mv_adapter"),
    "i2mv": TaskSpec("i2mv", "Image to multi-view", "mv", "pipelines.pipeline_mv_adapter"),
    "i2v": TaskSpec("i2v", "Image to video", "i2v", "pipelines.pipeline_i2v_adapter"),
    "hipa": TaskSpec("hipa", "One-step text-to-image", "hipa", "pipelines.pipeline_hipa"),
    "res": TaskSpec("res", "Any resolution", "res", "pipelines.pipeline_res_adapter"),
}


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator (diffusers draws noise on CPU and moves it, so a seed gives the same image on any device)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"`seed` must be an integer in [0, 2**63), got {seed!r}.")
    return torch.Generator(device="cpu").manual_seed(int(seed))


def call_pipeline(pipe: Any, **kwargs: Any) -> Any:
    """Call ``pipe`` with ``kwargs``; ``None`` values are not passed (the pipeline's stored or own default applies).

    Raises:
        TypeError: a keyword argument that ``pipe.__call__`` does not take (named, with the ones it does take), so a
            typo or a renamed argument surfaces instead of being dropped.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(pipe.__call__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            raise TypeError(
                f"{type(pipe).__name__}.__call__ got unexpected keyword argument(s) {unknown}; it takes "
                f"{sorted(params)}."
            )
    return pipe(**kwargs)


def check_size(pipe: Any, height: Any, width: Any) -> tuple[int, int]:
    """Validate an output size for ``pipe`` with :func:`pipelines.checks.check_size`: ints (integral floats, as
    sliders send, are accepted), multiples of :func:`size_multiple`, at most ``min(MAX_SIDE, 8 x native side)``.

    Returns:
        ``(height, width)`` as ints.

    Raises:
        TypeError: not a whole number.
        ValueError: out of range or not a multiple (the message names the nearest valid sizes).
    """
    multiple = size_multiple(pipe)
    maximum = min(MAX_SIDE, 8 * native_resolution(pipe))
    out = []
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        checks.check_size(name, value, multiple=multiple, maximum=maximum, allow_none=False, explain=" for this model")
        out.append(int(value))
    return out[0], out[1]


def size_from_ratio(native: int, scale: float, ratio: str, multiple: int) -> tuple[int, int]:
    """``(height, width)`` with about ``(scale * native)**2`` pixels at aspect ``ratio`` ("W:H"), rounded to
    ``multiple``."""
    try:
        w_part, h_part = (float(x) for x in str(ratio).split(":"))
    except ValueError as err:
        raise ValueError(f"`ratio` must look like '16:9', got {ratio!r}.") from err
    if w_part <= 0 or h_part <= 0:
        raise ValueError(f"`ratio` must have positive parts, got {ratio!r}.")
    if not scale > 0:
        raise ValueError(f"`scale` must be > 0, got {scale!r}.")
    area = (native * scale) ** 2
    width = math.sqrt(area * w_part / h_part)
    height = area / width
    return max(multiple, round(height / multiple) * multiple), max(multiple, round(width / multiple) * multiple)


def parse_angles(text: str | Sequence[float] | None, name: str = "azimuths") -> list[float] | None:
    """Parse ``"0, 90, 180"`` (or a sequence) into floats; ``None`` / empty -> ``None`` (use the defaults)."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
        if not parts:
            return None
        try:
            values = [float(p) for p in parts]
        except ValueError as err:
            raise ValueError(
                f"`{name}` must be numbers separated by commas (e.g. '0, 90, 180, 270'), got {text!r}."
            ) from err
    else:
        values = [float(v) for v in text]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"`{name}` must be finite numbers, got {values}.")
    return values


def load_image(
    source: str | os.PathLike | Image.Image,
    *,
    name: str = "image",
    max_bytes: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    keep_alpha: bool = False,
) -> Image.Image:
    """Open a user image as RGB with clear errors: a missing file, a file over ``max_bytes``, a non-image, an image
    over ``max_pixels``. Alpha is composited on white (or kept, as RGBA, with ``keep_alpha``); 16-bit / CMYK /
    palette modes are converted."""
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"`{name}`: no such file {path.name!r}.")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"`{name}` is too large: {size / 2**20:.1f} MB, the limit is {max_bytes / 2**20:.1f} MB.")
        try:
            image = Image.open(path)
            image.size  # noqa: B018 (header read)
        except (Image.UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"`{name}` is not an image file PIL can read ({path.name!r}).") from err
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"`{name}` is too large: {width}x{height} pixels, the limit is {max_pixels} pixels.")
    if width < 8 or height < 8:
        raise ValueError(f"`{name}` is too small: {width}x{height} pixels, at least 8x8 is needed.")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"`{name}` could not be decoded: {err}") from err
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if keep_alpha:
            return rgba
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.max() > 0 else 1.0
        image = Image.fromarray((array / peak * 255).astype(np.uint8))
    return image.convert("RGB")


def _fit(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize ``image`` to cover ``(height, width)`` and centre-crop."""
    scale = max(height / image.height, width / image.width)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.LANCZOS
    )
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _check_common(prompt: Any, num_inference_steps: Any, guidance_scale: Any, *, max_steps: int = 150) -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"`prompt` must be a string, got {type(prompt).__name__}.")
    if len(prompt) > 2000:
        raise ValueError(f"`prompt` is too long: {len(prompt)} characters, the limit is 2000.")
    if num_inference_steps is not None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"`num_inference_steps` must be an integer, got {num_inference_steps!r}.")
        if not 1 <= num_inference_steps <= max_steps:
            raise ValueError(f"`num_inference_steps` must be between 1 and {max_steps}, got {num_inference_steps}.")
    if guidance_scale is not None and not (
        isinstance(guidance_scale, (int, float))
        and not isinstance(guidance_scale, bool)
        and math.isfinite(guidance_scale)
        and 0 <= guidance_scale <= 30
    ):
        raise ValueError(f"`guidance_scale` must be between 0 and 30, got {guidance_scale!r}.")


def _opt(value: Any, kind: type) -> Any:
    """``kind(value)``, or ``None`` (= the pipeline's default) for ``None``."""
    return None if value is None else kind(value)


def _check_scale(name: str, value: Any, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a number between 0 and {high}, got {value!r}.")
    if not 0 <= float(value) <= high:
        raise ValueError(f"`{name}` must be between 0 and {high}, got {value}.")


def _resolve_size(pipe: Any, height: int | None, width: int | None, given=frozenset()) -> tuple[int, int]:
    """``(height, width)``: the given values, else the pipeline's stored defaults, else its native size; checked."""
    from .call_defaults import stored_default

    native = native_resolution(pipe)
    if height is None:
        height = stored_default(pipe, "height", given, fallback=native)
    if width is None:
        width = stored_default(pipe, "width", given, fallback=native)
    return check_size(pipe, height, width)


def trained_size_note(
    trained_sizes: dict[str, Any] | None, height: int, width: int, what: str = "this model"
) -> str | None:
    """A sentence when ``height`` x ``width`` lies outside ``trained_sizes`` (``min_side``, ``max_side``, optional
    ``max_aspect_ratio``, as stored in ``pipeline_defaults.json``), else ``None``."""
    if not trained_sizes:
        return None
    low, high = int(trained_sizes["min_side"]), int(trained_sizes["max_side"])
    ratio = trained_sizes.get("max_aspect_ratio")
    trained = f"{low}x{low}" if low == high else f"sides {low}-{high} px"
    if ratio is not None:
        trained += f", aspect ratio up to {float(ratio):g}:1"
    problems = []
    if min(height, width) < low or max(height, width) > high:
        problems.append("size")
    if ratio is not None and max(height, width) / min(height, width) > float(ratio) + 1e-9:
        problems.append("aspect ratio")
    if not problems:
        return None
    return (
        f"{width}x{height} is outside the {' and '.join(problems)} {what} was trained for ({trained}): "
        "expect weaker results."
    )


def _negative(negative_prompt: str | None) -> dict[str, str]:
    """Pass a negative prompt only when given, so each pipeline keeps its own default otherwise."""
    return {"negative_prompt": negative_prompt} if negative_prompt and negative_prompt.strip() else {}


def _flatten_images(images: Any) -> list[Image.Image]:
    """``output.images`` as a flat list of PIL images (pipelines may return views nested per prompt)."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        return [Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images]
    out: list[Image.Image] = []
    for item in images:
        out.extend(_flatten_images(item))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# tasks
# ----------------------------------------------------------------------------------------------------------------------


def _multiview_kwargs(
    pipe: Any,
    num_views: int,
    azimuths: str | Sequence[float] | None,
    elevation: float,
    height: int | None,
    width: int | None,
    given=frozenset(),
) -> dict[str, Any]:
    azimuth_list = parse_angles(azimuths, "azimuths")
    if azimuth_list is not None:
        num_views = len(azimuth_list)
    if isinstance(num_views, bool) or not isinstance(num_views, (int, np.integer)) or not 1 <= num_views <= MAX_VIEWS:
        raise ValueError(f"`num_views` must be between 1 and {MAX_VIEWS}, got {num_views!r}.")
    if not -90 <= float(elevation) <= 90:
        raise ValueError(f"`elevation` must be between -90 and 90 degrees, got {elevation}.")
    height, width = _resolve_size(pipe, height, width, given)
    kwargs: dict[str, Any] = {"num_views": int(num_views), "height": height, "width": width}
    if azimuth_list is not None or float(elevation) != 0.0:
        if azimuth_list is None:
            azimuth_list = [360.0 * i / num_views for i in range(num_views)]
        kwargs["azimuth_deg"] = azimuth_list
        kwargs["elevation_deg"] = [float(elevation)] * len(azimuth_list)
    return kwargs


def text_to_multiview(
    pipe: Any,
    prompt: str,
    *,
    negative_prompt: str = "",
    num_views: int = 6,
    azimuths: str | Sequence[float] | None = None,
    elevation: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    mv_scale: float | None = None,
    seed: int = 0,
) -> list[Image.Image]:
    """Generate ``num_views`` consistent views of ``prompt`` (cameras: the pipeline's default ring, or ``azimuths``
    in degrees at ``elevation``). ``None``: the pipeline's stored default. Returns the views as PIL images."""
    _check_common(prompt, num_inference_steps, guidance_scale)
    _check_scale("mv_scale", mv_scale, 2)
    if not prompt.strip():
        raise ValueError("`prompt` is empty: describe the object to generate.")
    kwargs = _multiview_kwargs(pipe, num_views, azimuths, elevation, height, width)
    generator = make_generator(seed)
    out = call_pipeline(
        pipe,
        prompt=prompt,
        **_negative(negative_prompt),
        num_inference_steps=_opt(num_inference_steps, int),
        guidance_scale=_opt(guidance_scale, float),
        mv_scale=_opt(mv_scale, float),
        generator=generator,
        output_type="pil",
        **kwargs,
    )
    return _flatten_images(out.images)


def image_to_multiview(
    pipe: Any,
    image: Image.Image,
    prompt: str = "",
    *,
    negative_prompt: str = "",
    position_map: Image.Image | None = None,
    normal_map: Image.Image | None = None,
    num_views: int = 6,
    azimuths: str | Sequence[float] | None = None,
    elevation: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    reference_guidance_scale: float | None = None,
    mv_scale: float | None = None,
    ref_scale: float | None = None,
    seed: int = 0,
) -> list[Image.Image]:
    """Generate views of the object in ``image`` (the reference; optionally guided by ``position_map`` and
    ``normal_map`` images, one per view side by side or a single map repeated). Returns the views."""
    if image is None:
        raise ValueError("`image` is missing: upload a reference image of the object.")
    _check_common(prompt, num_inference_steps, guidance_scale)
    _check_scale("reference_guidance_scale", reference_guidance_scale, 30)
    _check_scale("mv_scale", mv_scale, 2)
    _check_scale("ref_scale", ref_scale, 2)
    if (position_map is None) != (normal_map is None):
        raise ValueError("Geometry guidance needs both `position_map` and `normal_map` (or neither).")
    kwargs = _multiview_kwargs(pipe, num_views, azimuths, elevation, height, width, given={"image"})
    reference = _reference_image(image, kwargs["height"], kwargs["width"])
    if position_map is not None:
        kwargs["position_map"] = _split_maps(position_map, kwargs["num_views"], kwargs["height"], kwargs["width"])
        kwargs["normal_map"] = _split_maps(normal_map, kwargs["num_views"], kwargs["height"], kwargs["width"])
    out = call_pipeline(
        pipe,
        prompt=prompt,
        image=reference,
        **_negative(negative_prompt),
        num_inference_steps=_opt(num_inference_steps, int),
        guidance_scale=_opt(guidance_scale, float),
        reference_guidance_scale=_opt(reference_guidance_scale, float),
        mv_scale=_opt(mv_scale, float),
        ref_scale=_opt(ref_scale, float),
        generator=make_generator(seed),
        output_type="pil",
        **kwargs,
    )
    return _flatten_images(out.images)


def _reference_image(image: Image.Image, height: int, width: int) -> Image.Image:
    """An RGBA object is centred on gray as the official MV-Adapter scripts do; other images are cover-cropped."""
    if image.mode == "RGBA" and image.getextrema()[3][0] < 255:
        try:
            from .pipeline_mv_adapter import prepare_reference_image
        except ImportError:
            prepare_reference_image = None
        if prepare_reference_image is not None:
            return prepare_reference_image(image, height, width)
        gray = Image.new("RGBA", image.size, (128, 128, 128, 255))
        image = Image.alpha_composite(gray, image)
    return _fit(image.convert("RGB"), height, width)


def _split_maps(image: Image.Image, num_views: int, height: int, width: int) -> list[Image.Image]:
    """A geometry map image holding ``num_views`` maps side by side (or one map for all views) -> per-view maps."""
    image = image.convert("RGB")
    if num_views > 1 and image.width >= num_views * image.height * 0.9:
        tile = image.width // num_views
        tiles = [image.crop((i * tile, 0, (i + 1) * tile, image.height)) for i in range(num_views)]
    else:
        tiles = [image] * num_views
    return [t.resize((width, height), Image.BILINEAR) for t in tiles]


def image_to_video(
    pipe: Any,
    image: Image.Image,
    prompt: str = "",
    *,
    negative_prompt: str = "",
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    adapter_scale: float | None = None,
    prior_strength: float | None = None,
    prior_start: float | None = None,
    seed: int = 0,
) -> list[Image.Image]:
    """Animate ``image`` (the first frame) for ``num_frames`` frames (``None``: the pipeline's stored default; the
    Frame Similarity Prior's strength and start default to the stored ``similarity_prior``). Returns the frames."""
    if image is None:
        raise ValueError("`image` is missing: upload the image to animate.")
    _check_common(prompt, num_inference_steps, guidance_scale)
    if num_frames is not None and (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, (int, np.integer))
        or not 2 <= num_frames <= MAX_FRAMES
    ):
        raise ValueError(f"`num_frames` must be between 2 and {MAX_FRAMES}, got {num_frames!r}.")
    _check_scale("prior_strength", prior_strength, 1)
    if prior_start is not None:
        _check_scale("prior_start", prior_start, 1)
        if float(prior_start) >= 1:
            raise ValueError(f"`prior_start` must be in [0, 1), got {prior_start}.")
    _check_scale("adapter_scale", adapter_scale, 2)
    height, width = _resolve_size(pipe, height, width, {"image"})
    similarity_prior = None
    if prior_strength is not None or prior_start is not None:
        from adapters.i2v_adapter.prior import SimilarityPrior

        from .call_defaults import stored_default

        stored = SimilarityPrior.coerce(_as_prior(stored_default(pipe, "similarity_prior", {"image"})))
        strength = stored.strength if prior_strength is None else float(prior_strength)
        start = stored.start if prior_start is None else float(prior_start)
        similarity_prior = (strength, start) if strength > 0 else 0.0
    first = _fit(image.convert("RGB"), height, width)
    out = call_pipeline(
        pipe,
        image=first,
        prompt=prompt,
        **_negative(negative_prompt),
        num_frames=_opt(num_frames, int),
        height=height,
        width=width,
        num_inference_steps=_opt(num_inference_steps, int),
        guidance_scale=_opt(guidance_scale, float),
        adapter_scale=_opt(adapter_scale, float),
        similarity_prior=similarity_prior,
        generator=make_generator(seed),
        output_type="pil",
    )
    frames = out.frames[0] if hasattr(out, "frames") else out[0][0]
    return _flatten_images(frames)


def _as_prior(value: Any) -> Any:
    """A stored ``similarity_prior`` (JSON list -> tuple) for ``SimilarityPrior.coerce``."""
    return tuple(value) if isinstance(value, list) else value


#: What the one-step tab can compare against: key -> label.
ONE_STEP_COMPARISONS: dict[str, str] = {
    "plain": "Base, 1 step, no LoRA",
    "teacher": "Teacher (base, multi-step)",
    "lcm": "LCM sampler, 4 steps",
    "tcd": "TCD sampler, 4 steps",
    "lightning": "Lightning sampler (trailing Euler), 4 steps",
    "hyper-sd": "Hyper-SD sampler (trailing DDIM), 8 steps",
}


def one_step(
    pipe: Any,
    prompt: str,
    *,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    lora_scale: float = 1.0,
    teacher_steps: int = 25,
    teacher_guidance_scale: float = 7.5,
    compare: Sequence[str] = (),
    seed: int = 0,
) -> list[tuple[str, Image.Image, float]]:
    """HiPA one-step text-to-image, plus the chosen comparisons (keys of :data:`ONE_STEP_COMPARISONS`) from the same
    seed. A preset runs with its own LoRA when one is loaded under the preset's name (``pipe.load_hipa_lora(path,
    adapter_name="lcm", scale=0)``, see :func:`load_few_step_loras`), else its sampler alone with every LoRA off.

    Returns:
        ``[(label, image, seconds), ...]``, HiPA first.
    """
    _check_common(prompt, num_inference_steps, guidance_scale)
    if num_inference_steps is not None and not 1 <= int(num_inference_steps) <= 4:
        raise ValueError(f"`num_inference_steps` must be between 1 and 4 for HiPA, got {num_inference_steps}.")
    if not 1 <= int(teacher_steps) <= 150:
        raise ValueError(f"`teacher_steps` must be between 1 and 150, got {teacher_steps}.")
    if not 0 <= float(lora_scale) <= 2:
        raise ValueError(f"`lora_scale` must be between 0 and 2, got {lora_scale}.")
    unknown = [c for c in compare if c not in ONE_STEP_COMPARISONS]
    if unknown:
        raise ValueError(f"`compare` entries must be among {list(ONE_STEP_COMPARISONS)}, got {unknown}.")
    height, width = _resolve_size(pipe, height, width)
    common = {"prompt": prompt, **_negative(negative_prompt), "height": height, "width": width}
    loaded = list(getattr(pipe.unet, "peft_config", None) or {}) if hasattr(pipe, "set_hipa_lora_scale") else []
    has_hipa = DEFAULT_ADAPTER_NAME in loaded
    results: list[tuple[str, Image.Image, float]] = []

    def activate(active: str | None) -> None:
        """Only LoRA ``active`` on (HiPA at ``lora_scale``, others at 1); ``None`` = every LoRA off."""
        for name in loaded:
            weight = (float(lora_scale) if name == DEFAULT_ADAPTER_NAME else 1.0) if name == active else 0.0
            pipe.set_hipa_lora_scale(weight, adapter_name=name)

    def run(label: str, active: str | None, fn) -> None:
        activate(active)
        try:
            start = time.perf_counter()
            image = fn()
            results.append((label, image, time.perf_counter() - start))
        finally:
            activate(DEFAULT_ADAPTER_NAME if has_hipa else None)

    def sample(preset: str, steps: int, guidance: float):
        return lambda: call_pipeline(
            pipe,
            **common,
            num_inference_steps=steps,
            guidance_scale=guidance,
            preset=preset,
            generator=make_generator(seed),
        ).images[0]

    if num_inference_steps is None:
        from adapters.hipa.presets import get_preset

        from .call_defaults import stored_default

        shown = int(stored_default(pipe, "num_inference_steps", fallback=get_preset("hipa").num_inference_steps))
    else:
        shown = int(num_inference_steps)
    label = f"HiPA, {shown} step{'s' if shown > 1 else ''}"
    if not has_hipa:
        label += " (no HiPA LoRA loaded)"
    run(label, DEFAULT_ADAPTER_NAME, sample("hipa", _opt(num_inference_steps, int), _opt(guidance_scale, float)))
    for key in compare:
        if key == "plain":
            run(ONE_STEP_COMPARISONS[key], None, sample("hipa", 1, 1.0))
        elif key == "teacher":
            teacher = lambda: _teacher(pipe, common, int(teacher_steps), teacher_guidance_scale, seed)  # noqa: E731
            run(f"Teacher (base, {int(teacher_steps)} steps)", None, teacher)
        else:
            from adapters.hipa.presets import get_preset

            preset = get_preset(key)
            with_lora = key in loaded
            label = ONE_STEP_COMPARISONS[key] + ("" if with_lora else " (sampler only)")
            fn = sample(preset.name, preset.num_inference_steps, preset.guidance_scale)
            run(label, key if with_lora else None, fn)
    if hasattr(pipe, "set_preset"):
        pipe.set_preset("hipa")
    return results


def load_few_step_loras(pipe: Any, loras: dict[str, str]) -> None:
    """Load other few-step LoRAs (``{"lcm": path, "tcd": path, ...}``, keys = preset names) into a HiPA pipeline,
    switched off until :func:`one_step` compares with them."""
    from adapters.hipa.presets import get_preset

    for name, path in loras.items():
        key = get_preset(name).name
        if key == DEFAULT_ADAPTER_NAME:
            raise ValueError("Load the HiPA LoRA itself as the pipeline's adapter, not as a few-step LoRA.")
        pipe.load_hipa_lora(path, adapter_name=key, scale=0.0)


def hipa_teacher_settings(pipe: Any) -> TeacherSettings:
    """The teacher settings stored in the HiPA LoRA an embedded pipeline loaded (``embedded_info``); defaults (25 DDIM
    steps, guidance 7.5) for any other pipeline (see :func:`adapters.hipa.teacher.read_teacher_settings`)."""
    info = getattr(pipe, "embedded_info", None)
    return read_teacher_settings(info.parts.get("hipa") if info is not None else None)


def _teacher(pipe: Any, common: dict[str, Any], steps: int, guidance_scale: float, seed: int) -> Image.Image:
    """The multi-step teacher (:mod:`adapters.hipa.teacher`: the base, every LoRA off, a view over the same
    components) on the sampler the HiPA LoRA was trained against (:func:`hipa_teacher_settings`)."""
    teacher = teacher_pipeline(pipe, hipa_teacher_settings(pipe).sampler)
    return run_teacher(
        teacher,
        **common,
        num_inference_steps=steps,
        guidance_scale=float(guidance_scale),
        generator=make_generator(seed),
    ).images[0]


def any_resolution(
    pipe: Any,
    prompt: str,
    *,
    negative_prompt: str = "",
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    lora_scale: float = 1.0,
    norm_scale: float = 1.0,
    with_base: bool = True,
    seed: int = 0,
) -> list[tuple[str, Image.Image]]:
    """The same prompt and seed at ``height`` x ``width`` (``None``: the stored default size) with ResAdapter and
    (``with_base``) without it.

    Returns:
        ``[("ResAdapter", image), ("Base", image)]`` (the base only when ``with_base``).
    """
    _check_common(prompt, num_inference_steps, guidance_scale)
    if not prompt.strip():
        raise ValueError("`prompt` is empty: describe the image to generate.")
    for name, value in (("lora_scale", lora_scale), ("norm_scale", norm_scale)):
        if not 0 <= float(value) <= 1:
            raise ValueError(f"`{name}` must be between 0 and 1, got {value}.")
    height, width = _resolve_size(pipe, height, width)
    common = {
        "prompt": prompt,
        **_negative(negative_prompt),
        "height": height,
        "width": width,
        "num_inference_steps": _opt(num_inference_steps, int),
        "guidance_scale": _opt(guidance_scale, float),
    }
    common = {k: v for k, v in common.items() if v is not None}
    results: list[tuple[str, Image.Image]] = []
    pipe.set_res_adapter_scale(lora_scale=float(lora_scale), norm_scale=float(norm_scale))
    results.append((f"ResAdapter, {width}x{height}", pipe(**common, generator=make_generator(seed)).images[0]))
    if with_base:
        pipe.set_res_adapter_scale(lora_scale=0.0, norm_scale=0.0)
        try:
            results.append((f"Base, {width}x{height}", pipe(**common, generator=make_generator(seed)).images[0]))
        finally:
            pipe.set_res_adapter_scale(lora_scale=float(lora_scale), norm_scale=float(norm_scale))
    return results


# ----------------------------------------------------------------------------------------------------------------------
# defaults for UIs
# ----------------------------------------------------------------------------------------------------------------------

#: What a UI shows where a model has no stored default and its pipeline picks one at call time (placeholders and user
#: checkpoints only; the embedded models store theirs in ``pipeline_defaults.json``).
_UI_FALLBACKS: dict[str, dict[str, Any]] = {
    "mv": {"num_inference_steps": 20, "guidance_scale": 7.0, "mv_scale": 1.0},
    "i2mv": {"num_inference_steps": 20, "guidance_scale": 3.0, "mv_scale": 1.0, "ref_scale": 1.0},
    "i2v": {
        "num_frames": 8,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "adapter_scale": 1.0,
        "prior_strength": 0.0,
        "prior_start": 0.0,
    },
    "hipa": {},
    "res": {"num_inference_steps": 20, "guidance_scale": 7.5},
}

#: The task function behind each task key, and the inputs its calls always pass (for ``when_given`` defaults).
_TASK_FUNCTIONS = {
    "mv": ("text_to_multiview", frozenset({"prompt"})),
    "i2mv": ("image_to_multiview", frozenset({"prompt", "image"})),
    "i2v": ("image_to_video", frozenset({"prompt", "image"})),
    "hipa": ("one_step", frozenset({"prompt"})),
    "res": ("any_resolution", frozenset({"prompt"})),
}


def task_defaults(task: str, stored: Any = None) -> dict[str, Any]:
    """The values a UI shows for ``task``'s arguments: the model's stored call defaults (``stored``, a
    :class:`~pipelines.call_defaults.CallDefaults`, e.g. from :func:`pipelines.embedded.embedded_call_defaults`), else
    the task function's own defaults, else a fallback for models without stored defaults.

    Returns:
        ``{argument of the task function: value}`` plus ``"trained_sizes"`` (``None`` when not stored). ``height`` /
        ``width`` appear only when stored (else the model's native size applies).
    """
    if task not in _TASK_FUNCTIONS:
        raise ValueError(f"`task` must be one of {list(_TASK_FUNCTIONS)}, got {task!r}.")
    name, given = _TASK_FUNCTIONS[task]
    params = inspect.signature(globals()[name]).parameters
    out: dict[str, Any] = {
        k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty and p.default is not None
    }
    out.update(_UI_FALLBACKS[task])
    if task == "hipa":
        from adapters.hipa.presets import get_preset

        preset = get_preset("hipa")
        out.update(num_inference_steps=preset.num_inference_steps, guidance_scale=preset.guidance_scale)
    values = stored.for_call(given) if stored is not None and hasattr(stored, "for_call") else dict(stored or {})
    for key, value in values.items():
        if key == "similarity_prior" and "prior_strength" in params:
            from adapters.i2v_adapter.prior import SimilarityPrior

            prior = SimilarityPrior.coerce(_as_prior(value))
            out["prior_strength"], out["prior_start"] = prior.strength, prior.start
        elif key in params:
            out[key] = value
    out["trained_sizes"] = getattr(stored, "trained_sizes", None)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------------


def save_views_zip(images: Sequence[Image.Image], path: str | os.PathLike, *, prefix: str = "view") -> Path:
    """Write ``images`` as PNGs (``view_00.png`` ...) into a zip at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, image in enumerate(images):
            import io

            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            zf.writestr(f"{prefix}_{i:02d}.png", buffer.getvalue())
    os.replace(tmp, path)
    return path


def upscale_for_display(frames: Sequence[Image.Image], min_side: int = 256) -> list[Image.Image]:
    """Enlarge small frames by an integer factor (nearest neighbour) so that the shorter side is >= ``min_side``,
    and make both sides even (H.264 needs it)."""
    if not frames:
        return []
    w, h = frames[0].size
    factor = max(1, math.ceil(min_side / max(1, min(w, h))))
    out = []
    for frame in frames:
        frame = frame.convert("RGB")
        if factor > 1:
            frame = frame.resize((w * factor, h * factor), Image.NEAREST)
        if frame.width % 2 or frame.height % 2:
            frame = frame.crop((0, 0, frame.width - frame.width % 2, frame.height - frame.height % 2))
        out.append(frame)
    return out


def save_video(
    frames: Sequence[Image.Image],
    mp4_path: str | os.PathLike | None = None,
    gif_path: str | os.PathLike | None = None,
    *,
    fps: int = 8,
    min_side: int = 256,
) -> dict[str, Path]:
    """Write ``frames`` as an H.264 mp4 (yuv420p, plays in browsers) and/or a looping GIF; small frames are enlarged
    (see :func:`upscale_for_display`). Returns ``{"mp4": path, "gif": path}`` for what was written."""
    if not frames:
        raise ValueError("`frames` is empty: nothing to write.")
    if not 1 <= int(fps) <= 60:
        raise ValueError(f"`fps` must be between 1 and 60, got {fps}.")
    frames = upscale_for_display(frames, min_side)
    written: dict[str, Path] = {}
    if mp4_path is not None:
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401 (the ffmpeg binary imageio writes mp4 with)
        except ImportError as err:
            raise ImportError("Writing mp4 needs `pip install imageio imageio-ffmpeg`.") from err

        mp4_path = Path(mp4_path)
        mp4_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = mp4_path.with_name(mp4_path.stem + ".tmp.mp4")
        writer = imageio.get_writer(
            tmp,
            fps=int(fps),
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],
        )
        try:
            for frame in frames:
                writer.append_data(np.asarray(frame))
        finally:
            writer.close()
        os.replace(tmp, mp4_path)
        written["mp4"] = mp4_path
    if gif_path is not None:
        gif_path = Path(gif_path)
        gif_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = gif_path.with_name(gif_path.stem + ".tmp.gif")
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps), loop=0
        )
        os.replace(tmp, gif_path)
        written["gif"] = gif_path
    return written
