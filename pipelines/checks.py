"""Input checks shared by every pipeline's ``check_inputs`` (issue 12: refuse bad input early and clearly).

Each function raises ``TypeError`` (wrong type) or ``ValueError`` (wrong value) whose message names the argument,
the value it got and what is allowed, the way diffusers' ``check_inputs`` does. They only look at the arguments: no
model runs, so a pipeline calls them first, before encoding prompts or allocating latents.

Documented limits (module constants, overridable per pipeline through the class attributes that use them):

* :data:`MAX_IMAGE_SIDE` -- the largest ``height`` / ``width`` in pixels;
* :data:`MAX_NUM_VIEWS` -- the most views of one MV-Adapter call;
* :data:`DEFAULT_MAX_NUM_FRAMES` -- the most frames of one I2V-Adapter video when the motion modules do not say
  (they do: ``unet.config.motion_max_seq_length``, the length of their positional embedding).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

__all__ = [
    "DEFAULT_MAX_NUM_FRAMES",
    "MAX_IMAGE_SIDE",
    "MAX_NUM_VIEWS",
    "bind_call_arguments",
    "check_count",
    "check_finite",
    "check_image_input",
    "check_negative_prompt",
    "check_size",
    "check_steps",
    "nearest_multiples",
]

#: Largest ``height`` / ``width`` (pixels) any pipeline accepts: 4x SDXL's native 1024. It is above the app's size
#: sliders (4x the native size: 2048 on SD 1.5, 4096 on SDXL) and far above ResAdapter's official trained ranges
#: (128-1024 on SD 1.5, 256-1536 on SDXL); a larger request is almost always a typo and would only fail later with
#: an out-of-memory error after the text encoders ran.
MAX_IMAGE_SIDE = 4096

#: Most views one MV-Adapter call may produce. The official models generate 6 views (trained on up to 10-view
#: renders) and the app offers 1-12; multi-view attention grows with the square of the view count, so beyond 32 views
#: a call is refused as an input error rather than left to run out of memory.
MAX_NUM_VIEWS = 32

#: Most frames of one I2V-Adapter video when the UNet does not record ``motion_max_seq_length`` (AnimateDiff's motion
#: modules carry a positional embedding of that many frames, 32 in every official release; the app offers 2-32).
DEFAULT_MAX_NUM_FRAMES = 32

_IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor)
_IMAGE_TYPES_TEXT = "a PIL image, an np.ndarray or a torch.Tensor (or a non-empty list of them)"


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} ({text})"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def nearest_multiples(value: int, multiple: int) -> list[int]:
    """The multiples of ``multiple`` just below and above ``value`` (positive ones only)."""
    low = (value // multiple) * multiple
    return [c for c in (low, low + multiple) if c > 0]


def check_finite(name: str, value: Any) -> None:
    """Refuse a tensor / array (or a list / tuple of them) holding NaN or inf.

    ``None``, PIL images and integer tensors pass (they cannot hold NaN).

    Raises:
        ValueError: naming ``name``, how many values are not finite and the tensor's shape.
    """
    if value is None or isinstance(value, PIL.Image.Image):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(f"{name}[{i}]", item)
        return
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return
        bad = int((~torch.isfinite(value)).sum())
        shape = tuple(value.shape)
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.inexact):
            return
        bad = int((~np.isfinite(value)).sum())
        shape = value.shape
    else:
        return
    if bad:
        raise ValueError(f"`{name}` holds {bad} NaN or inf value(s) (shape {shape}); only finite values are allowed.")


def check_image_input(name: str, image: Any, *, allow_none: bool = False) -> None:
    """Refuse an ``image`` that is not a PIL image, array or tensor (or a non-empty list of them), or holds NaN/inf.

    Raises:
        ValueError: ``image`` is ``None`` (unless ``allow_none``), an empty list, or holds NaN / inf values.
        TypeError: any other type (a file path included: load it first, e.g. ``diffusers.utils.load_image``).
    """
    if image is None:
        if allow_none:
            return
        raise ValueError(f"`{name}` is required: {_IMAGE_TYPES_TEXT}.")
    items = image if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError(f"`{name}` is an empty list; expected {_IMAGE_TYPES_TEXT}.")
    for item in items:
        if not isinstance(item, _IMAGE_TYPES):
            hint = (
                " (a file path? load it first, e.g. with `diffusers.utils.load_image`)"
                if isinstance(item, str)
                else ""
            )
            raise TypeError(f"`{name}` must be {_IMAGE_TYPES_TEXT}, got {_describe(item)}{hint}.")
    check_finite(name, list(items) if isinstance(image, (list, tuple)) else image)


def check_size(
    name: str,
    value: Any,
    *,
    multiple: int,
    maximum: int = MAX_IMAGE_SIDE,
    allow_none: bool = True,
    explain: str = "",
) -> None:
    """Check an image side (``height`` / ``width``): an int in ``[multiple, maximum]`` divisible by ``multiple``.

    Args:
        name: the argument's name.
        value: its value (``None`` passes when ``allow_none``: the pipeline fills in its default).
        multiple: the model's size factor (VAE factor x UNet down-sampling, or just the VAE factor).
        maximum: the largest allowed value (default :data:`MAX_IMAGE_SIDE`).
        explain: appended to the "multiple of" message (e.g. how the factor is made up).

    Raises:
        TypeError: not an int.
        ValueError: not positive, above ``maximum`` or not a multiple of ``multiple`` (with the nearest valid sizes).
    """
    if value is None and allow_none:
        return
    if not _is_int(value):
        raise TypeError(f"`{name}` must be an int (a multiple of {multiple}), got {_describe(value)}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive multiple of {multiple}, got {value}.")
    if value > maximum:
        raise ValueError(
            f"`{name}` must be at most {maximum} pixels (a multiple of {multiple} in [{multiple}, {maximum}]), "
            f"got {value}."
        )
    if value % multiple:
        nearest = " or ".join(str(c) for c in nearest_multiples(int(value), multiple))
        raise ValueError(
            f"`{name}` must be a multiple of {multiple}{explain}, got {value}; nearest valid sizes: {nearest}."
        )


def check_count(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None, why: str = "") -> None:
    """Check a count such as ``num_views`` / ``num_frames``: an int in ``[minimum, maximum]``.

    Raises:
        TypeError: not an int.
        ValueError: out of range (the message gives the range and ``why`` the maximum is what it is).
    """
    allowed = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if not _is_int(value):
        raise TypeError(f"`{name}` must be {allowed}, got {_describe(value)}.")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be {allowed}{why}, got {value}.")


def check_steps(
    num_inference_steps: Any,
    *,
    name: str = "num_inference_steps",
    minimum: int = 1,
    maximum: int | None = None,
    context: str = "",
) -> None:
    """Check a step count: an int in ``[minimum, maximum]`` (``context`` says whose range it is, e.g. a preset's).

    Raises:
        TypeError: not an int.
        ValueError: out of range.
    """
    check_count(name, num_inference_steps, minimum=minimum, maximum=maximum, why=context)


def check_negative_prompt(prompt: Any, negative_prompt: Any, *, name: str = "negative_prompt") -> None:
    """A list ``negative_prompt`` must have one entry per prompt (a string is used for every prompt).

    Raises:
        TypeError: ``negative_prompt`` is neither a string, a list of strings nor ``None``.
        ValueError: both are lists of different lengths.
    """
    if negative_prompt is None or isinstance(negative_prompt, str):
        return
    if not isinstance(negative_prompt, list) or not all(isinstance(p, str) for p in negative_prompt):
        raise TypeError(f"`{name}` must be a string or a list of strings, got {_describe(negative_prompt)}.")
    if isinstance(prompt, list) and len(negative_prompt) != len(prompt):
        raise ValueError(
            f"`{name}` has {len(negative_prompt)} entries but `prompt` has {len(prompt)}; pass one string for all "
            "prompts or one per prompt."
        )
    if isinstance(prompt, str) and len(negative_prompt) != 1:
        raise ValueError(
            f"`{name}` has {len(negative_prompt)} entries for a single `prompt`; pass a string or a one-item list."
        )


def bind_call_arguments(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments a call ``fn(*args, **kwargs)`` would see, defaults applied (``self`` included in ``args``).

    Lets a thin ``__call__`` wrapper look at arguments (``latents``, ``num_inference_steps``) that a parent pipeline's
    own ``check_inputs`` never receives.
    """
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
