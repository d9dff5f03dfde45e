"""Input checks shared by every pipeline's ``check_inputs``: refuse bad input early and clearly.

Each function raises ``TypeError`` (wrong type) or ``ValueError`` (wrong value) whose message names the argument,
the value it got and what is allowed, the way diffusers' ``check_inputs`` does. They only look at the arguments: no
model runs, so a pipeline calls them first, before encoding prompts or allocating latents.

Documented limits (module constants, overridable per pipeline through the class attributes that use them):

* :data:`MAX_IMAGE_SIDE` -- the largest ``height`` / ``width`` in pixels;
* :data:`MAX_NUM_VIEWS` -- the most views of one MV-Adapter call;
* :data:`DEFAULT_MAX_NUM_FRAMES` -- the most frames of one I2V-Adapter video when the motion modules do not say
  (they do: ``unet.config.motion_max_seq_length``, the length of their positional embedding);
* :data:`MAX_IMAGES_PER_PROMPT` -- the most samples per prompt of one call.

Numbers: one rule wherever a number or size enters. ``None`` means "the default"; any other value is used
as given or refused with a ``TypeError`` / ``ValueError`` naming the argument and the accepted range -- zero or
negative where not allowed, NaN, +/-inf, a bool passed as a number, a float where an int is required, a string, a
value out of range or a list of the wrong length. :data:`NUMBER_RULES` holds each argument's range, by name;
:func:`call_number_rules` reads an entry point's numeric arguments from its signature (an argument without a named
rule still gets the type / finiteness checks of its annotation), and :func:`check_numbers` (or the decorator
:func:`validate_numbers`) applies them before anything else runs.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

__all__ = [
    "DEFAULT_MAX_NUM_FRAMES",
    "MAX_IMAGES_PER_PROMPT",
    "MAX_IMAGE_SIDE",
    "MAX_NUM_VIEWS",
    "NUMBER_RULES",
    "NumberRule",
    "argparse_number",
    "bind_call_arguments",
    "call_number_rules",
    "check_number",
    "check_numbers",
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

#: Most samples per prompt (``num_images_per_prompt``) of one call; far above what fits a GPU at any useful size, so
#: a larger value is a typo (it would only fail with an out-of-memory error after the text encoders ran).
MAX_IMAGES_PER_PROMPT = 256

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


# ------------------------------------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class NumberRule:
    """What one numeric argument accepts: an int or a (finite) float in a range, a single value or a list of them.

    Attributes:
        integer: an int is required (a float, even ``2.0``, is refused); else any finite real number (ints too).
        minimum, maximum: the range's bounds (``None``: unbounded); ``open_min`` / ``open_max`` exclude them.
        sequence: ``"no"`` a single value, ``"yes"`` a list / tuple of values, ``"either"`` one or a list.
        length: the required list length (e.g. 2 for ``original_size``), ``None`` for any non-empty list.
    """

    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    sequence: str = "no"
    length: int | None = None

    def describe(self) -> str:
        """The accepted values in words, e.g. ``"an int in [1, 4096]"`` or ``"a finite number > 0"``."""
        kind = "an int" if self.integer else "a finite number"
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            text = f"{kind} in {'(' if self.open_min else '['}{_num(lo)}, {_num(hi)}{')' if self.open_max else ']'}"
        elif lo is not None:
            text = f"{kind} {'>' if self.open_min else '>='} {_num(lo)}"
        elif hi is not None:
            text = f"{kind} {'<' if self.open_max else '<='} {_num(hi)}"
        else:
            text = kind
        if self.sequence == "no":
            return text
        items = f"a list of {self.length} values" if self.length else "a non-empty list of values"
        each = f"{items}, each {text}"
        return each if self.sequence == "yes" else f"{text} or {each}"

    def in_range(self, value: float) -> bool:
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value < lo or (self.open_min and value == lo)):
            return False
        return not (hi is not None and (value > hi or (self.open_max and value == hi)))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_number(name: str, value: Any, rule: NumberRule, *, allow_none: bool = True) -> None:
    """Refuse ``value`` unless it is ``None`` (when ``allow_none``: the default is used) or what ``rule`` accepts.

    Raises:
        TypeError: a bool, a string or another non-number; a float where an int is required; a list where a single
            value is required (or the reverse).
        ValueError: NaN, +/-inf, a value out of range or a list of the wrong length. Every message names ``name``,
            the value and :meth:`NumberRule.describe`.
    """
    if value is None and allow_none:
        return
    allowed = rule.describe()
    if isinstance(value, (list, tuple)) and rule.sequence in ("yes", "either"):
        if not value or (rule.length is not None and len(value) != rule.length):
            raise ValueError(f"`{name}` must be {allowed}, got {len(value)} value(s): {_describe(value)}.")
        single = NumberRule(rule.integer, rule.minimum, rule.maximum, rule.open_min, rule.open_max)
        for i, item in enumerate(value):
            try:
                check_number(name, item, single, allow_none=False)
            except (TypeError, ValueError) as err:
                raise type(err)(f"`{name}` must be {allowed}; item {i}: {err}") from None
        return
    if rule.sequence == "yes":
        raise TypeError(f"`{name}` must be {allowed}, got {_describe(value)}.")
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.dtype == torch.bool:
        value = value.item()
    if not _is_real(value):
        raise TypeError(f"`{name}` must be {allowed}, got {_describe(value)}.")
    if rule.integer and not _is_int(value):
        raise TypeError(f"`{name}` must be {allowed}, got {_describe(value)} (a float where an int is required).")
    if not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
    if not rule.in_range(value):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


_SIZE = NumberRule(integer=True, minimum=1, maximum=MAX_IMAGE_SIDE)
_SCALE = NumberRule(minimum=0)
_UNIT = NumberRule(minimum=0, maximum=1)
_PAIR = NumberRule(integer=True, minimum=1, maximum=MAX_IMAGE_SIDE, sequence="yes", length=2)

#: The accepted range of every numeric argument of a public entry point, by name (pipeline ``__call__``, loaders,
#: ``set_*_scale``, ``from_pretrained``). A pipeline's own ``check_inputs`` may narrow them further (the size
#: multiple, a preset's step range, the motion modules' frame count).
NUMBER_RULES: dict[str, NumberRule] = {
    "height": _SIZE,
    "width": _SIZE,
    "num_inference_steps": NumberRule(integer=True, minimum=1),
    "num_images_per_prompt": NumberRule(integer=True, minimum=1, maximum=MAX_IMAGES_PER_PROMPT),
    "num_views": NumberRule(integer=True, minimum=1, maximum=MAX_NUM_VIEWS),
    "num_frames": NumberRule(integer=True, minimum=1),
    "decode_chunk_size": NumberRule(integer=True, minimum=1),
    "clip_skip": NumberRule(integer=True, minimum=0),
    "content_num_tokens": NumberRule(integer=True, minimum=1),
    "timesteps": NumberRule(integer=True, minimum=0, sequence="yes"),
    "sigmas": NumberRule(minimum=0, sequence="yes"),
    "guidance_scale": _SCALE,
    "reference_guidance_scale": _SCALE,
    "guidance_rescale": _UNIT,
    "eta": _UNIT,
    "denoising_end": _UNIT,
    "strength": NumberRule(minimum=0, maximum=1, open_min=True),
    "noise_shift": NumberRule(minimum=0, open_min=True),
    "scale": _SCALE,
    "lora_scale": _SCALE,
    "norm_scale": _SCALE,
    "content_scale": _SCALE,
    "adapter_scale": _SCALE,
    "i2v_adapter_scale": _SCALE,
    "hipa_lora_scale": _SCALE,
    "mv_scale": _SCALE,
    "ref_scale": _SCALE,
    "mv": _SCALE,
    "ref": _SCALE,
    "condition_scale": _SCALE,
    "controlnet_conditioning_scale": NumberRule(minimum=0, sequence="either"),
    "control_guidance_start": NumberRule(minimum=0, maximum=1, sequence="either"),
    "control_guidance_end": NumberRule(minimum=0, maximum=1, sequence="either"),
    # a bare strength or (strength, start); SimilarityPrior narrows start to [0, 1)
    "similarity_prior": NumberRule(minimum=0, maximum=1, sequence="either", length=2),
    "azimuth_deg": NumberRule(sequence="either"),
    "elevation_deg": NumberRule(minimum=-90, maximum=90, sequence="either"),
    "distance": NumberRule(minimum=0, open_min=True, sequence="either"),
    "fov": NumberRule(minimum=0, maximum=180, open_min=True, open_max=True, sequence="either"),
    "original_size": _PAIR,
    "target_size": _PAIR,
    "negative_original_size": _PAIR,
    "negative_target_size": _PAIR,
    "crops_coords_top_left": NumberRule(integer=True, minimum=0, sequence="yes", length=2),
    "negative_crops_coords_top_left": NumberRule(integer=True, minimum=0, sequence="yes", length=2),
    "aesthetic_score": NumberRule(),
    "negative_aesthetic_score": NumberRule(),
}

_NUMERIC = {"int": (True, False), "float": (False, False)}
_LIST = re.compile(r"^(?:list|List|Sequence|tuple|Tuple)\[(int|float)(?:, \.\.\.)?\]$")
_PAIR_RE = re.compile(r"^(?:tuple|Tuple)\[(int|float), (int|float)\]$")


def _split_union(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def annotation_rule(annotation: Any) -> NumberRule | None:
    """The type-only rule of an annotation such as ``int``, ``float | None``, ``list[float]``, ``tuple[int, int]``
    (``None`` when no alternative is a number). Union alternatives that are not numbers are left to other checks."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = text.replace("typing.", "").replace("Optional[", "(")
    scalar = listed = None
    length = None
    for part in _split_union(text):
        part = part.strip("()")
        if part in _NUMERIC:
            scalar = part if scalar != "float" else scalar
        elif m := _LIST.match(part):
            listed = m.group(1)
        elif m := _PAIR_RE.match(part):
            listed, length = ("int" if {m.group(1), m.group(2)} == {"int"} else "float"), 2
    if scalar is None and listed is None:
        return None
    integer = (scalar or listed) == "int"
    sequence = "either" if scalar and listed else ("yes" if listed else "no")
    return NumberRule(integer=integer, sequence=sequence, length=length)


@functools.cache
def _rules_cached(fn: Callable[..., Any]) -> dict[str, NumberRule]:
    rules: dict[str, NumberRule] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or name == "self":
            continue
        rule = annotation_rule(param.annotation)
        if name in NUMBER_RULES:
            rules[name] = NUMBER_RULES[name]
        elif rule is not None:
            rules[name] = rule
    return rules


def call_number_rules(fn: Callable[..., Any]) -> dict[str, NumberRule]:
    """``{argument: NumberRule}`` for every numeric argument of ``fn`` (from its signature): the named range of
    :data:`NUMBER_RULES`, else the annotation's type-only rule."""
    return dict(_rules_cached(inspect.unwrap(fn)))


def check_numbers(arguments: Mapping[str, Any], rules: Mapping[str, NumberRule]) -> None:
    """Apply ``rules`` to the given ``arguments`` (``None`` passes: the default is used). A value of an argument
    that also accepts non-numbers (``similarity_prior``, the camera arguments) is only checked when it is a number, a
    bool, a string or a list / tuple; other types (arrays, objects, dicts) are left to the pipeline's own checks."""
    for name, rule in rules.items():
        if name not in arguments:
            continue
        value = arguments[name]
        if value is None:
            continue
        if name in _MIXED and not isinstance(value, (bool, str, int, float, np.number, list, tuple)):
            continue
        check_number(name, value, rule)


#: Arguments that also accept non-numbers (objects, dicts, tensors): only their numeric values are checked here.
_MIXED = {"similarity_prior", "azimuth_deg", "elevation_deg", "distance", "fov"}


def validate_numbers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: check a call's numeric arguments against :func:`call_number_rules` before ``fn`` runs (so a refused
    call leaves everything as it was). The signature is kept (``inspect.signature`` follows ``__wrapped__``)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        check_numbers(bound.arguments, call_number_rules(fn))
        return fn(*args, **kwargs)

    return wrapper


def argparse_number(flag: str, rule: NumberRule) -> Callable[[str], Any]:
    """An argparse ``type=`` for a numeric flag: the text parsed as int / float, refused (one argparse error line
    naming ``flag`` and the accepted range) unless :func:`check_number` accepts it; ``none`` gives ``None``."""

    def parse(text: str) -> Any:
        if text.strip().lower() in ("none", "null"):
            return None
        try:
            value: Any = int(text) if rule.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"`{flag}` must be {rule.describe()}, got {text!r}.") from None
        try:
            check_number(flag, value, rule)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    parse.__name__ = "int" if rule.integer else "float"
    parse.flag, parse.rule = flag, rule  # what the flag accepts (the tests' sweep reads it from the parser)
    return parse
