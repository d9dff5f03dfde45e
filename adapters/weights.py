"""Adapter weight files: safetensors I/O, strict key validation, metadata and format conversion.

Every adapter in the suite reads and writes its weights through this module so that

* a file is checked completely (missing keys, unexpected keys, shape mismatches, base family) *before* any module is
  touched, and a bad file raises one :class:`AdapterWeightsError` that lists what is wrong;
* pickle formats (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) are refused unless the caller opts in with
  ``allow_pickle=True``, and are then read with ``torch.load(weights_only=True)``;
* saving never leaves a half-written file where a good one was (temporary file + ``os.replace``);
* official layouts are converted to and from ours by a small registry of named formats.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging
from safetensors import SafetensorError
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save_file as _st_save_file

logger = logging.get_logger(__name__)

FORMAT_VERSION = "1"
METADATA_PREFIX = "diffusion_adapters."
KIND_KEY = METADATA_PREFIX + "kind"
VERSION_KEY = METADATA_PREFIX + "format_version"
FAMILY_KEY = METADATA_PREFIX + "base_family"

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
SAFETENSORS_SUFFIXES = (".safetensors",)
_MAX_LISTED = 5

StateDict = dict[str, torch.Tensor]


class AdapterWeightsError(ValueError):
    """A weight file that does not fit the model it is loaded into.

    Attributes:
        missing: keys the model needs that the file lacks.
        unexpected: keys in the file that nothing consumes.
        mismatched: ``(key, shape_in_file, expected_shape)`` triples (``"r"`` in an expected shape: any LoRA rank).
        wrong_dtype: ``(key, dtype_in_file)`` pairs of tensors that are not floating point (see :func:`check_dtypes`).
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int | str, ...]]] | None = None,
        wrong_dtype: list[tuple[str, str]] | None = None,
    ):
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])
        self.wrong_dtype = list(wrong_dtype or [])


def _listing(label: str, items: list, fmt: Callable[[Any], str] = str) -> str:
    shown = ", ".join(fmt(item) for item in items[:_MAX_LISTED])
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {label}: {shown}{more}"


# ----------------------------------------------------------------------------------------------------------------------
# reading and writing
# ----------------------------------------------------------------------------------------------------------------------


def load_weights(
    path: str | os.PathLike, *, allow_pickle: bool = False, device: str | torch.device = "cpu"
) -> tuple[StateDict, dict[str, str]]:
    """Read a weight file.

    Args:
        path: a ``.safetensors`` file, or (with ``allow_pickle=True``) a ``.bin``/``.ckpt``/``.pt``/``.pth`` file.
        allow_pickle: allow pickle formats; they are read with ``torch.load(weights_only=True)``.
        device: where the tensors are placed.

    Returns:
        ``(state_dict, metadata)``; metadata is the safetensors header metadata (empty for pickle files).

    Raises:
        FileNotFoundError: the file does not exist.
        AdapterWeightsError: the file is corrupt or truncated, or a pickle file without ``allow_pickle``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weight file at {str(path)!r}.")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise AdapterWeightsError(
                f"Refusing to read pickle file {str(path)!r}: pickle files can run arbitrary code. Convert it to "
                "safetensors, or pass allow_pickle=True if you trust its source (it is then read with "
                "torch.load(weights_only=True))."
            )
        try:
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # torch raises many types for corrupt pickles
            raise AdapterWeightsError(f"Could not read {str(path)!r} as a torch checkpoint: {err}") from err
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise AdapterWeightsError(f"{str(path)!r} does not hold a flat mapping of tensor names to tensors.")
        return dict(obj), {}
    dev = torch.device(device)
    try:
        state_dict = _st_load_file(str(path), device="cpu" if dev.type == "cpu" else str(dev))
        metadata = _read_safetensors_metadata(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterWeightsError(
            f"Could not read {str(path)!r} as safetensors (truncated or corrupt file?): {err}"
        ) from err
    return state_dict, metadata


def _read_safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def save_weights(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``state_dict`` to a safetensors file atomically.

    The tensors are written to a temporary file in the same folder, which then replaces ``path`` in one
    ``os.replace``; a crash while saving leaves any earlier file at ``path`` intact.

    Args:
        state_dict: name -> tensor (any device; saved contiguous on CPU).
        path: destination ``.safetensors`` file; parent folders are created.
        metadata: string -> string header metadata.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ValueError(f"`path` must end in .safetensors, got {str(path)!r}.")
    bad = {k: type(v).__name__ for k, v in (metadata or {}).items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"`metadata` values must be str; got {bad}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _st_save_file(tensors, tmp, metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Write a folder atomically: yields a temporary folder beside ``path`` that replaces it on success.

    On an exception the temporary folder is removed and any existing folder at ``path`` is left untouched. An
    existing ``path`` is only removed after the new folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# validation and metadata
# ----------------------------------------------------------------------------------------------------------------------


def check_dtypes(state_dict: Mapping[str, torch.Tensor], *, what: str = "adapter", source: str | None = None) -> None:
    """Refuse tensors that cannot be adapter weights: integer, bool or complex dtypes.

    Every floating dtype passes (float16, bfloat16, float32, float64, ...): the loaders copy tensors into the model's
    parameters, which casts them to the model's dtype, so a half-precision file loads into a float32 model.

    Raises:
        AdapterWeightsError: listing the offending keys with their dtypes (``.wrong_dtype``); nothing is touched.
    """
    wrong = sorted(
        (k, str(v.dtype).removeprefix("torch."))
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and not v.is_floating_point()
    )
    if not wrong:
        return
    origin = f" from {source!r}" if source else ""
    raise AdapterWeightsError(
        f"The {what} weights{origin} have tensors of a non-floating dtype; weights must be floating point (float16, "
        "bfloat16, float32 or float64; they are cast to the model's dtype). Nothing was changed. "
        + _listing("tensors of a wrong dtype", wrong, lambda m: f"{m[0]} ({m[1]})")
        + ".",
        wrong_dtype=wrong,
    )


def validate_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    *,
    what: str = "adapter",
    source: str | None = None,
    check_dtype: bool = True,
) -> None:
    """Check that ``state_dict`` has exactly the ``expected`` keys with the expected shapes (and floating dtypes).

    Args:
        state_dict: the file's tensors (already converted to our key names).
        expected: key -> shape the model needs.
        what: a name for error messages (e.g. ``"ResAdapter"``).
        source: the file, for error messages.
        check_dtype: also refuse integer / bool / complex tensors (:func:`check_dtypes`); every floating dtype passes.

    Raises:
        AdapterWeightsError: listing missing keys, unexpected keys and shape mismatches (first few, with counts), or
            tensors of a non-floating dtype.
    """
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(
        (k, tuple(state_dict[k].shape), tuple(expected[k]))
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or mismatched):
        if check_dtype:
            check_dtypes(state_dict, what=what, source=source)
        return
    parts = []
    if missing:
        parts.append(_listing("missing keys", missing))
    if unexpected:
        parts.append(_listing("unexpected keys", unexpected))
    if mismatched:
        parts.append(
            _listing("shape mismatches", mismatched, lambda m: f"{m[0]} (file {list(m[1])}, model {list(m[2])})")
        )
    origin = f" from {source!r}" if source else ""
    raise AdapterWeightsError(
        f"The {what} weights{origin} do not fit this model; nothing was changed. " + "; ".join(parts) + ".",
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def base_family(unet: torch.nn.Module) -> str:
    """The SD family of a UNet from its config: ``"sdxl"``, ``"sd2"`` or ``"sd1"``.

    ``addition_embed_type == "text_time"`` means SDXL; ``use_linear_projection`` means SD 2.x; anything else is
    treated as SD 1.x (this includes ``UNetMotionModel`` built from an SD 1.5 UNet).
    """
    config = getattr(unet, "config", {})
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    if get("addition_embed_type", None) == "text_time":
        return "sdxl"
    if get("use_linear_projection", False):
        return "sd2"
    return "sd1"


def adapter_metadata(kind: str, family: str | None = None, **extra: object) -> dict[str, str]:
    """Metadata we write into every adapter file: kind, format version, base family and extras (stringified)."""
    meta = {KIND_KEY: kind, VERSION_KEY: FORMAT_VERSION}
    if family is not None:
        meta[FAMILY_KEY] = family
    for key, value in extra.items():
        meta[key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key] = str(value)
    return meta


def check_adapter_kind(metadata: Mapping[str, str], kind: str, *, source: str | None = None) -> None:
    """Refuse a file whose metadata says it holds another adapter kind (files without our metadata pass)."""
    found = metadata.get(KIND_KEY)
    if found is not None and found != kind:
        origin = f" {source!r}" if source else ""
        raise AdapterWeightsError(f"The file{origin} holds a {found!r} adapter, not a {kind!r} adapter.")


def check_base_family(
    metadata: Mapping[str, str], unet: torch.nn.Module, *, what: str = "adapter", source: str | None = None
) -> None:
    """Refuse a file made for another base family than ``unet``'s (files without family metadata pass)."""
    found = metadata.get(FAMILY_KEY)
    expected = base_family(unet)
    if found is not None and found != expected:
        origin = f" {source!r}" if source else ""
        raise AdapterWeightsError(
            f"The {what} file{origin} was made for a {found!r} base, but this pipeline's UNet is {expected!r}; "
            "nothing was changed."
        )


# ----------------------------------------------------------------------------------------------------------------------
# format registry: official layouts <-> ours
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFormat:
    """A named on-disk layout of one adapter kind and how to convert it to and from ours."""

    kind: str
    name: str
    detect: Callable[[Mapping[str, torch.Tensor], Mapping[str, str]], bool]
    to_ours: Callable[[StateDict], StateDict]
    from_ours: Callable[[StateDict], StateDict]


_FORMATS: dict[str, dict[str, WeightFormat]] = {}


def register_format(
    kind: str,
    name: str,
    *,
    detect: Callable[[Mapping[str, torch.Tensor], Mapping[str, str]], bool],
    to_ours: Callable[[StateDict], StateDict] = dict,
    from_ours: Callable[[StateDict], StateDict] = dict,
) -> WeightFormat:
    """Register a layout for ``kind``. Formats are tried in registration order by :func:`detect_format`."""
    fmt = WeightFormat(kind, name, detect, to_ours, from_ours)
    _FORMATS.setdefault(kind, {})[name] = fmt
    return fmt


def registered_formats(kind: str) -> list[str]:
    """Names of the formats registered for ``kind``."""
    return list(_FORMATS.get(kind, {}))


def get_format(kind: str, name: str) -> WeightFormat:
    """The registered format ``name`` of ``kind``, or a ValueError naming the allowed ones."""
    try:
        return _FORMATS[kind][name]
    except KeyError:
        raise ValueError(f"Unknown {kind} format {name!r}; allowed: {registered_formats(kind)}.") from None


def detect_format(kind: str, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Name of the first registered format of ``kind`` that recognises the file."""
    for fmt in _FORMATS.get(kind, {}).values():
        if fmt.detect(state_dict, metadata):
            return fmt.name
    sample = ", ".join(list(state_dict)[:_MAX_LISTED])
    raise AdapterWeightsError(
        f"Unrecognised {kind} weight layout (first keys: {sample}); known layouts: {registered_formats(kind)}."
    )


def convert_to_ours(kind: str, state_dict: StateDict, metadata: Mapping[str, str]) -> StateDict:
    """Detect the layout of a file and convert it to our key names."""
    return get_format(kind, detect_format(kind, state_dict, metadata)).to_ours(state_dict)


def convert_from_ours(kind: str, name: str, state_dict: StateDict) -> StateDict:
    """Convert our key names to the registered layout ``name``."""
    return get_format(kind, name).from_ours(state_dict)
