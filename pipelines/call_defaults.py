"""Call defaults stored with a model: ``pipeline_defaults.json`` beside its weights.

A shipped model knows the settings that give its best result (steps, guidance, Frame Similarity Prior, noise shift,
size ...). They live in one JSON file in the model's folder, e.g. ``assets/i2v_adapter/pipeline_defaults.json``::

    {
      "num_inference_steps": 20,
      "guidance_scale": 7.5,
      "similarity_prior": {"strength": 0.0, "start": 0.0},
      "when_given": {"image": {"guidance_scale": 3.0}},
      "trained_sizes": {"min_side": 32, "max_side": 32}
    }

* Every key is a keyword argument of the pipeline's ``__call__``; its value is what the pipeline uses when the call
  does not pass that argument (or passes ``None``). An argument passed explicitly always wins.
* ``when_given`` (optional): ``{argument: {defaults}}`` applied over the plain defaults when the call passes that
  argument, e.g. a separate guidance for the MV-Adapter's image mode.
* ``trained_sizes`` (optional, not a call argument): the output sizes the model was trained for
  (``min_side``, ``max_side``, optional ``max_aspect_ratio``); UIs keep their size controls inside it.

The file is checked when it is read: an unknown key, an argument that cannot have a stored default (images,
generators, latents, callbacks ...) or a bad value raises ``ValueError`` naming the file and the key.

:func:`set_call_defaults` attaches defaults to a loaded pipeline (``pipelines.embedded.load_embedded`` does it with
the file of each embedded model): the pipeline keeps its class name, ``isinstance`` and ``__call__`` signature, shows
its defaults as ``pipe.call_defaults`` and fills them in on every call. ``set_call_defaults(pipe, {})`` removes them.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULTS_FILE_NAME",
    "TRAINED_SIZES_KEY",
    "WHEN_GIVEN_KEY",
    "CallDefaults",
    "get_call_defaults",
    "parse_call_defaults",
    "read_call_defaults",
    "set_call_defaults",
    "stored_default",
]

#: File name of the stored defaults in a model folder.
DEFAULTS_FILE_NAME = "pipeline_defaults.json"
#: Key of the defaults that apply when the call passes a given argument.
WHEN_GIVEN_KEY = "when_given"
#: Key of the trained size range (not a call argument).
TRAINED_SIZES_KEY = "trained_sizes"

# Per-call inputs: a stored default for these makes no sense (tensors, images, callbacks, output plumbing).
_NOT_STORABLE = frozenset(
    {
        "image", "mask_image", "control_image", "conditioning_frames", "ip_adapter_image", "ip_adapter_image_embeds",
        "generator", "latents", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds", "cameras", "condition_maps", "position_map", "normal_map", "timesteps",
        "sigmas", "callback", "callback_steps", "callback_on_step_end", "callback_on_step_end_tensor_inputs",
        "output_type", "return_dict", "cross_attention_kwargs", "added_cond_kwargs",
    }
)  # fmt: skip
_POSITIVE_INTS = frozenset(
    {"num_inference_steps", "num_frames", "num_views", "num_images_per_prompt", "decode_chunk_size", "height", "width"}
)
_NON_NEGATIVE = frozenset(
    {
        "guidance_scale", "reference_guidance_scale", "adapter_scale", "mv_scale", "ref_scale", "condition_scale",
        "controlnet_conditioning_scale", "guidance_rescale", "strength",
    }
)  # fmt: skip


class CallDefaults(dict):
    """Validated stored defaults: ``{argument: value}`` plus :attr:`when_given` and :attr:`trained_sizes`."""

    def __init__(self, values=(), *, when_given=None, trained_sizes=None, source: str = "call defaults"):
        super().__init__(values)
        self.when_given: dict[str, dict[str, Any]] = dict(when_given or {})
        self.trained_sizes: dict[str, Any] | None = dict(trained_sizes) if trained_sizes else None
        self.source = source

    def for_call(self, given: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The defaults for a call that passes the arguments ``given`` (``when_given`` entries applied)."""
        out = dict(self)
        for trigger, extra in self.when_given.items():
            if trigger in given:
                out.update(extra)
        return out

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        out: dict[str, Any] = dict(self)
        if self.when_given:
            out[WHEN_GIVEN_KEY] = self.when_given
        if self.trained_sizes:
            out[TRAINED_SIZES_KEY] = self.trained_sizes
        return out

    def __deepcopy__(self, memo):
        return CallDefaults(
            copy.deepcopy(dict(self), memo),
            when_given=copy.deepcopy(self.when_given, memo),
            trained_sizes=copy.deepcopy(self.trained_sizes, memo),
            source=self.source,
        )


# ----------------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------------


def _annotation_text(param: inspect.Parameter) -> str:
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else str(annotation)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(where: str, key: str, value: Any, param: inspect.Parameter | None) -> None:
    """Refuse a stored value that cannot be right for ``key`` (type from the annotation, range for known names)."""
    bad = f"{where}: `{key}`"
    if value is None:
        raise ValueError(f"{bad} is null; remove the key to keep the pipeline's own default.")
    if key in _NOT_STORABLE:
        raise ValueError(f"{bad} is a per-call input and cannot have a stored default.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{bad} must be a finite number, got {value}.")
    text = _annotation_text(param) if param is not None else ""
    words = set(re.findall(r"[A-Za-z_]+", text))
    if text and not words & {"Any", "object"}:
        if isinstance(value, bool) and "bool" not in words:
            raise ValueError(f"{bad} must be {text}, got the boolean {value}.")
        if _is_number(value) and not words & {"int", "float", "SimilarityPrior"}:
            raise ValueError(f"{bad} must be {text}, got the number {value}.")
        if _is_number(value) and isinstance(value, float) and "int" in words and "float" not in words:
            if not value.is_integer() or key in _POSITIVE_INTS:
                raise ValueError(f"{bad} must be an integer, got {value}.")
        if isinstance(value, str) and not words & {"str", "FewStepPreset"}:
            raise ValueError(f"{bad} must be {text}, got the string {value!r}.")
        if isinstance(value, list) and not words & {"list", "List", "Sequence", "tuple", "Tuple"}:
            raise ValueError(f"{bad} must be {text}, got a list.")
        if isinstance(value, dict) and not words & {"dict", "Dict", "Mapping", "SimilarityPrior"}:
            raise ValueError(f"{bad} must be {text}, got an object.")
    if key in _POSITIVE_INTS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{bad} must be a positive integer, got {value!r}.")
    if key in _NON_NEGATIVE and (not _is_number(value) or value < 0):
        raise ValueError(f"{bad} must be a number >= 0, got {value!r}.")
    if key == "noise_shift" and (not _is_number(value) or value <= 0):
        raise ValueError(f"{bad} must be a number > 0 (1 = no shift), got {value!r}.")
    if key == "eta" and (not _is_number(value) or not 0 <= value <= 1):
        raise ValueError(f"{bad} must be a number in [0, 1], got {value!r}.")
    if key in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2") and not isinstance(value, str):
        raise ValueError(f"{bad} must be a string, got {value!r}.")
    if key == "similarity_prior":
        from adapters.i2v_adapter.prior import SimilarityPrior

        if not isinstance(value, (dict, list, int, float)) or isinstance(value, bool):
            raise ValueError(f"{bad} must be {{'strength': s, 'start': t}}, [s, t] or a strength, got {value!r}.")
        try:
            SimilarityPrior.coerce(tuple(value) if isinstance(value, list) else value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{bad}: {err}") from err
    if key == "preset":
        from adapters.hipa.presets import get_preset

        try:
            get_preset(value)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{bad}: {err}") from err


def _check_trained_sizes(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: `{TRAINED_SIZES_KEY}` must be an object with min_side, max_side.")
    unknown = sorted(set(value) - {"min_side", "max_side", "max_aspect_ratio"})
    if unknown:
        raise ValueError(
            f"{where}: unknown keys in `{TRAINED_SIZES_KEY}`: {unknown} (min_side, max_side, max_aspect_ratio)."
        )
    for key in ("min_side", "max_side"):
        side = value.get(key)
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise ValueError(f"{where}: `{TRAINED_SIZES_KEY}.{key}` must be a positive integer, got {side!r}.")
    if value["min_side"] > value["max_side"]:
        raise ValueError(f"{where}: `{TRAINED_SIZES_KEY}.min_side` is above max_side.")
    ratio = value.get("max_aspect_ratio")
    if ratio is not None and (not _is_number(ratio) or not math.isfinite(ratio) or ratio < 1):
        raise ValueError(f"{where}: `{TRAINED_SIZES_KEY}.max_aspect_ratio` must be a number >= 1, got {ratio!r}.")
    return dict(value)


def _parameters(call: Callable | None) -> dict[str, inspect.Parameter] | None:
    """Named parameters of ``call`` (``None`` when no call is given: value checks only)."""
    if call is None:
        return None
    params = dict(inspect.signature(call).parameters)
    params.pop("self", None)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {k: p for k, p in params.items() if p.kind not in variadic}


def parse_call_defaults(
    data: Any, call: Callable | None = None, *, source: str = "call defaults", size_multiple: int | None = None
) -> CallDefaults:
    """Validate a defaults mapping (the file's content) against ``call`` (a pipeline ``__call__``; ``None``: value
    checks only) and return it as :class:`CallDefaults`.

    Raises:
        ValueError: naming ``source`` and the key: an unknown argument, a per-call input, a bad value, a size that is
            not a multiple of ``size_multiple``.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object {{argument: value}}, got {type(data).__name__}.")
    params = _parameters(call)
    values: dict[str, Any] = {}
    when_given: dict[str, dict[str, Any]] = {}
    trained = None

    def check(where: str, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise ValueError(f"{where}: keys must be strings, got {key!r}.")
        if params is not None and key not in params:
            raise ValueError(
                f"{where}: `{key}` is not an argument of {getattr(call, '__qualname__', 'the pipeline call')} "
                f"(known: {', '.join(sorted(k for k in params if k not in _NOT_STORABLE))})."
            )
        _check_value(where, key, value, params.get(key) if params else None)
        if size_multiple and key in ("height", "width") and value % size_multiple:
            raise ValueError(f"{where}: `{key}` must be a multiple of {size_multiple} for this model, got {value}.")

    for key, value in data.items():
        if key == WHEN_GIVEN_KEY:
            if not isinstance(value, Mapping):
                raise ValueError(f"{source}: `{WHEN_GIVEN_KEY}` must be an object {{argument: {{defaults}}}}.")
            for trigger, extra in value.items():
                if params is not None and trigger not in params:
                    raise ValueError(
                        f"{source}: `{WHEN_GIVEN_KEY}.{trigger}` is not an argument of the pipeline call."
                    )
                if not isinstance(extra, Mapping):
                    raise ValueError(f"{source}: `{WHEN_GIVEN_KEY}.{trigger}` must be an object of defaults.")
                for k, v in extra.items():
                    check(f"{source} ({WHEN_GIVEN_KEY}.{trigger})", k, v)
                when_given[str(trigger)] = copy.deepcopy(dict(extra))
        elif key == TRAINED_SIZES_KEY:
            trained = _check_trained_sizes(source, value)
        else:
            check(source, key, value)
            values[key] = copy.deepcopy(value)
    return CallDefaults(values, when_given=when_given, trained_sizes=trained, source=source)


def read_call_defaults(
    path: str | os.PathLike, call: Callable | None = None, *, size_multiple: int | None = None
) -> CallDefaults:
    """Read and validate a ``pipeline_defaults.json`` (a file, or a folder holding one; none there: empty)."""
    path = Path(path)
    if path.is_dir():
        path = path / DEFAULTS_FILE_NAME
    if not path.is_file():
        return CallDefaults(source=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err}).") from err
    return parse_call_defaults(data, call, source=str(path), size_multiple=size_multiple)


# ----------------------------------------------------------------------------------------------------------------------
# attaching defaults to a pipeline
# ----------------------------------------------------------------------------------------------------------------------

_SUBCLASSES: dict[type, type] = {}


@functools.lru_cache(maxsize=64)
def _signature(fn: Callable) -> inspect.Signature:
    return inspect.signature(fn)


def _fill(pipe: Any, call: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the stored defaults filled in where the call passes nothing (or ``None``)."""
    defaults: CallDefaults | None = getattr(pipe, "_call_defaults", None)
    if not defaults and not (defaults is not None and defaults.when_given):
        return args, kwargs
    signature = _signature(call)
    try:
        bound = signature.bind_partial(pipe, *args, **kwargs)
    except TypeError:
        return args, kwargs  # the pipeline raises its own error for a bad call
    given = {k for k, v in bound.arguments.items() if v is not None}
    names = list(signature.parameters)
    positional = {names[i] for i in range(1, 1 + len(args)) if i < len(names)}
    kwargs = dict(kwargs)
    filled = list(args)
    for key, value in defaults.for_call(given).items():
        if key in given:
            continue
        if key in positional:  # passed positionally as None
            filled[names.index(key) - 1] = copy.deepcopy(value)
        else:
            kwargs[key] = copy.deepcopy(value)
    return tuple(filled), kwargs


def _defaults_class(cls: type) -> type:
    """A subclass of ``cls`` (same name, module and signature) whose ``__call__`` fills in the stored defaults."""
    if getattr(cls, "_fills_call_defaults", False):
        return cls
    sub = _SUBCLASSES.get(cls)
    if sub is not None:
        return sub

    @functools.wraps(cls.__call__)
    def __call__(self, *args, **kwargs):
        parent = super(sub, self).__call__
        args, kwargs = _fill(self, getattr(parent, "__func__", parent), args, kwargs)
        return parent(*args, **kwargs)

    def call_defaults(self) -> dict[str, Any]:
        """The stored defaults (a copy; change them with :func:`pipelines.call_defaults.set_call_defaults`)."""
        return copy.deepcopy(self._call_defaults.to_json()) if self._call_defaults is not None else {}

    namespace = {
        "__call__": __call__,
        "call_defaults": property(call_defaults),
        "_fills_call_defaults": True,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    sub = type(cls.__name__, (cls,), namespace)
    _SUBCLASSES[cls] = sub
    return sub


def set_call_defaults(pipe: Any, defaults: Mapping[str, Any] | CallDefaults | None, *, source: str = "") -> Any:
    """Attach ``defaults`` (validated against ``pipe.__call__``) to a loaded pipeline; ``{}`` / ``None`` clears them.

    Returns:
        ``pipe`` (same object; its class becomes a same-named subclass that fills the defaults in each call).
    """
    cls = type(pipe)
    base = cls.__mro__[1] if cls in _SUBCLASSES.values() else cls
    data = defaults.to_json() if isinstance(defaults, CallDefaults) else dict(defaults or {})
    where = source or getattr(defaults, "source", "") or f"call defaults of {cls.__name__}"
    multiple = None
    try:
        from .tasks import size_multiple

        multiple = size_multiple(pipe) if getattr(pipe, "unet", None) is not None else None
    except (AttributeError, TypeError, ValueError):
        multiple = None
    parsed = parse_call_defaults(data, base.__call__, source=where, size_multiple=multiple)
    if base is cls:
        object.__setattr__(pipe, "__class__", _defaults_class(cls))
    object.__setattr__(pipe, "_call_defaults", parsed)
    return pipe


def get_call_defaults(pipe: Any) -> CallDefaults:
    """The defaults attached to ``pipe`` (empty when none)."""
    found = getattr(pipe, "_call_defaults", None)
    return copy.deepcopy(found) if isinstance(found, CallDefaults) else CallDefaults()


def stored_default(pipe: Any, name: str, given: set[str] | frozenset[str] = frozenset(), fallback: Any = None) -> Any:
    """What ``pipe`` uses for ``name`` when a call does not pass it: the stored default, else the ``__call__``
    signature's (when not ``None``), else ``fallback``."""
    stored = get_call_defaults(pipe).for_call(given)
    if name in stored:
        return stored[name]
    try:
        param = inspect.signature(pipe.__call__).parameters.get(name)
    except (TypeError, ValueError):
        param = None
    if param is not None and param.default is not inspect.Parameter.empty and param.default is not None:
        return param.default
    return fallback
