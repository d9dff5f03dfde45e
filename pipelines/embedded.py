"""Registry of the small models shipped in ``assets/`` (the app's and the README's defaults).

``load_embedded(name)`` returns a ready pipeline for one of :data:`EMBEDDED_NAMES`:

========= ============================================================== =================================
name      pipeline                                                       assets it reads
========= ============================================================== =================================
``base``  ``StableDiffusionPipeline``                                    ``base/``
``res``   ``ResAdapterPipeline`` with the ResAdapter loaded              ``base/`` + ``res_adapter/``
``mv``    ``MVAdapterPipeline`` with the MV-Adapter loaded               ``base/`` + ``mv_adapter/``
``i2v``   ``I2VAdapterPipeline`` (AnimateDiff motion UNet + I2V-Adapter) ``base/`` + ``motion_adapter/`` +
                                                                         ``i2v_adapter/``
``hipa``  ``HiPAPipeline`` with the one-step LoRA loaded                 ``base/`` + ``hipa/``
========= ============================================================== =================================

and one optional model (:data:`OPTIONAL_NAMES`), used where its folder exists:
``load_embedded("mv_geometry")`` is the ``MVAdapterPipeline`` with the geometry-guided MV-Adapter (``ig2mv``:
position / normal maps on the official 6-view ring, text and/or a reference image) from ``base/`` +
``mv_adapter_geometry/``; the texture job (:mod:`pipelines.texture`) uses it when present, else ``mv``.

Expected layout of ``assets/`` (override the folder with ``$DIFFUSION_ADAPTERS_ASSETS``)::

    assets/
      base/             a diffusers ``StableDiffusionPipeline.save_pretrained`` folder: model_index.json, unet/,
                        vae/, text_encoder/, tokenizer/, scheduler/ (safety checker and feature extractor: none)
      res_adapter/      ResAdapter in the official two-file layout (pytorch_lora_weights.safetensors +
                        diffusion_pytorch_model.safetensors) or our single file; anything ``load_res_adapter`` reads
      mv_adapter/       one MV-Adapter ``.safetensors`` file (official single-file keys or ours, with metadata)
      mv_adapter_geometry/  optional: a geometry-guided MV-Adapter file (``tg2mv`` / ``ig2mv``), the same forms
      motion_adapter/   a diffusers ``MotionAdapter.save_pretrained`` folder (config.json + weights)
      i2v_adapter/      one I2V-Adapter ``.safetensors`` file (``save_i2v_adapter`` output)
      hipa/             a diffusers LoRA folder (pytorch_lora_weights.safetensors), the HiPA one-step LoRA
      examples/         example inputs for the image tasks: ``*.png`` / ``*.jpg`` (optional ``examples.json``:
                        ``[{"image": "cube.png", "prompt": "a red cube"}, ...]``)

Any missing part is replaced by an **untrained placeholder**: a small SD 1.5-layout model (and motion adapter)
built from the configs below with fixed seeds, saved once to a cache folder (``$DIFFUSION_ADAPTERS_CACHE`` or
``<tmp>/diffusion-adapters-embedded``) so that every pipeline class loads it with ``from_pretrained``; missing
adapters are freshly initialised (which leaves the base output unchanged). Placeholders make the app and the
examples run offline from a fresh clone; their images are noise-like, and they are reported as "untrained
placeholder weights" in the log and through :func:`embedded_info`. Set ``$DIFFUSION_ADAPTERS_PLACEHOLDER=1`` to
use the placeholders even when assets exist (the fast tests do).

Call defaults (steps, guidance, Frame Similarity Prior, noise shift, size ...) are stored with each model, in
``pipeline_defaults.json`` beside its weights (see :mod:`pipelines.call_defaults`): ``base/`` for ``base``,
``res_adapter/``, ``mv_adapter/``, ``i2v_adapter/`` and ``hipa/`` for the adapters. :func:`load_pipeline` attaches
them (``pipe.call_defaults``), so ``load_embedded("i2v")(image=still)`` runs with them, and the CLI and the app use
them too; an argument passed explicitly always wins. A user adapter folder with its own file brings its defaults;
placeholders and a user base without one get the pipeline's own defaults. :func:`embedded_call_defaults` reads them
without loading anything.

Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging

from .utils import clip_bpe, clip_tokenizer, is_sdxl, motion_adapter_config, write_clip_tokenizer_files

logger = logging.get_logger(__name__)

__all__ = [
    "ASSETS_ENV",
    "CACHE_ENV",
    "EMBEDDED_NAMES",
    "OPTIONAL_NAMES",
    "PLACEHOLDER_ENV",
    "EmbeddedInfo",
    "assets_dir",
    "call_defaults_path",
    "default_device",
    "default_dtype",
    "dtype_kwargs",
    "embedded_call_defaults",
    "embedded_info",
    "example_entries",
    "example_images",
    "load_embedded",
    "load_pipeline",
    "placeholder_base_path",
    "resolve_device_dtype",
]

#: Names accepted by :func:`load_embedded`.
EMBEDDED_NAMES: tuple[str, ...] = ("base", "res", "mv", "i2v", "hipa")
#: Models that may be absent from ``assets/`` (their users fall back to another model): also accepted by
#: :func:`load_embedded` (a fresh adapter when absent, like the others' placeholders).
OPTIONAL_NAMES: tuple[str, ...] = ("mv_geometry",)
#: Environment variable overriding the assets folder.
ASSETS_ENV = "DIFFUSION_ADAPTERS_ASSETS"
#: Environment variable overriding the cache folder of the placeholder models.
CACHE_ENV = "DIFFUSION_ADAPTERS_CACHE"
#: Environment variable: ``1`` forces the placeholder models even where assets exist.
PLACEHOLDER_ENV = "DIFFUSION_ADAPTERS_PLACEHOLDER"

PLACEHOLDER_LABEL = "untrained placeholder weights"

# The folder whose ``pipeline_defaults.json`` holds each model's call defaults.
_DEFAULTS_PART: dict[str, str] = {
    "base": "base",
    "res": "res_adapter",
    "mv": "mv_adapter",
    "mv_geometry": "mv_adapter_geometry",
    "i2v": "i2v_adapter",
    "hipa": "hipa",
}

# Which asset sub-folders each embedded model needs (``base`` first).
_PARTS: dict[str, tuple[str, ...]] = {
    "base": ("base",),
    "res": ("base", "res_adapter"),
    "mv": ("base", "mv_adapter"),
    "mv_geometry": ("base", "mv_adapter_geometry"),
    "i2v": ("base", "motion_adapter", "i2v_adapter"),
    "hipa": ("base", "hipa"),
}

# ----------------------------------------------------------------------------------------------------------------------
# Placeholder configs: an SD 1.5-layout model, 64 px native (VAE factor 4, 16x16 latents), ~1.5M UNet parameters.
# ----------------------------------------------------------------------------------------------------------------------

PLACEHOLDER_FORMAT_VERSION = 1

PLACEHOLDER_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
    "use_linear_projection": False,
}
PLACEHOLDER_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
PLACEHOLDER_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "vocab_size": 514,  # 256 byte symbols, the same with "</w>", <|startoftext|>, <|endoftext|>
    "bos_token_id": 512,
    "eos_token_id": 513,
    "pad_token_id": 513,
}
PLACEHOLDER_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
PLACEHOLDER_MOTION_ADAPTER_CONFIG: dict[str, Any] = motion_adapter_config(PLACEHOLDER_UNET_CONFIG)


@dataclass
class EmbeddedInfo:
    """What :func:`load_embedded` loads for one name, without loading it.

    Attributes:
        name: one of :data:`EMBEDDED_NAMES`.
        parts: asset sub-folder -> the path used (a real asset or the placeholder cache folder), or ``None`` for a
            freshly initialised adapter.
        placeholders: the parts replaced by untrained placeholders (empty when everything is a trained asset).
    """

    name: str
    parts: dict[str, str | None] = field(default_factory=dict)
    placeholders: list[str] = field(default_factory=list)

    @property
    def is_placeholder(self) -> bool:
        return bool(self.placeholders)

    @property
    def label(self) -> str:
        """One line for logs and UIs."""
        if not self.placeholders:
            return f"embedded '{self.name}': trained weights from {self.parts.get('base')}"
        return f"embedded '{self.name}': {PLACEHOLDER_LABEL} for {', '.join(self.placeholders)}"


# ----------------------------------------------------------------------------------------------------------------------
# Paths, device, dtype
# ----------------------------------------------------------------------------------------------------------------------


def assets_dir() -> Path:
    """The assets folder (``$DIFFUSION_ADAPTERS_ASSETS`` or ``<repo>/assets``)."""
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "assets"


def _cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "diffusion-adapters-embedded"


def _force_placeholder() -> bool:
    return os.environ.get(PLACEHOLDER_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _asset_present(part: str) -> Path | None:
    """The asset folder for ``part`` if it exists and holds weights, else ``None``."""
    if _force_placeholder():
        return None
    path = assets_dir() / part
    if not path.is_dir():
        return None
    if part == "base":
        return path if (path / "model_index.json").is_file() else None
    if part == "motion_adapter":
        return path if (path / "config.json").is_file() else None
    has_weights = any(p.suffix == ".safetensors" for p in path.rglob("*"))
    return path if has_weights else None


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, torch.dtype]:
    """``from_pretrained`` keyword for a dtype: ``dtype=`` on diffusers versions that renamed it, else ``torch_dtype=``."""
    if dtype is None:
        return {}
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_resolve_dtype")
    except ImportError:
        renamed = False
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def default_device() -> torch.device:
    """CUDA when present, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def resolve_device_dtype(
    device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
) -> tuple[torch.device, torch.dtype]:
    """Fill in ``device`` / ``dtype`` (``"float16"``, ``"fp16"``, ``"bfloat16"``, ``"float32"`` accepted)."""
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
        name = aliases.get(dtype.lower(), dtype.lower())
        if name not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"`dtype` must be one of float16, bfloat16, float32, got {dtype!r}.")
        dtype = getattr(torch, name)
    if dtype is None:
        dtype = default_dtype(device)
    return device, dtype


# ----------------------------------------------------------------------------------------------------------------------
# Placeholder models
# ----------------------------------------------------------------------------------------------------------------------


def _build_placeholder_base(directory: Path) -> None:
    """Write the placeholder SD 1.5-layout pipeline and motion adapter into ``directory`` (deterministic)."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, merges = clip_bpe([])  # plain byte-level CLIP BPE: 514 tokens, no merges
    tokenizer = clip_tokenizer(vocab, merges)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**PLACEHOLDER_UNET_CONFIG)
        torch.manual_seed(1)
        vae = AutoencoderKL(**PLACEHOLDER_VAE_CONFIG)
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**PLACEHOLDER_TEXT_ENCODER_CONFIG))
        torch.manual_seed(3)
        motion_adapter = MotionAdapter(**PLACEHOLDER_MOTION_ADAPTER_CONFIG)
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**PLACEHOLDER_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    write_clip_tokenizer_files(directory / "tokenizer", vocab, merges)  # the slow-tokenizer files, as on the hub
    motion_adapter.eval().save_pretrained(directory / "motion_adapter", safe_serialization=True)


_BUILD_LOCK = threading.Lock()


def placeholder_base_path() -> Path:
    """Folder of the placeholder base (diffusers layout, with a ``motion_adapter/`` subfolder), built once.

    The folder name carries a hash of the configs and library versions; it is written atomically (built in a
    temporary sibling, then renamed), so concurrent processes and threads may share it.
    """
    import diffusers
    import transformers

    spec = {
        "v": PLACEHOLDER_FORMAT_VERSION,
        "unet": PLACEHOLDER_UNET_CONFIG,
        "vae": PLACEHOLDER_VAE_CONFIG,
        "te": PLACEHOLDER_TEXT_ENCODER_CONFIG,
        "s": PLACEHOLDER_SCHEDULER_CONFIG,
        "motion": PLACEHOLDER_MOTION_ADAPTER_CONFIG,
        "libs": [diffusers.__version__, transformers.__version__, torch.__version__.split("+")[0]],
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:12]
    final = _cache_dir() / f"placeholder-base-{digest}"
    marker = final / ".complete"
    with _BUILD_LOCK:
        if marker.is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            logger.warning(f"Building the placeholder base model ({PLACEHOLDER_LABEL}) in {final}.")
            _build_placeholder_base(tmp)
            marker_tmp = tmp / ".complete"
            marker_tmp.write_text(final.name)
            if final.exists() and not marker.is_file():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not marker.is_file():  # another process won the race with a complete folder: fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------------


def embedded_info(name: str) -> EmbeddedInfo:
    """Which files :func:`load_embedded` would use for ``name`` (builds nothing, loads nothing)."""
    if name not in _PARTS:
        raise ValueError(f"`name` must be one of {[*EMBEDDED_NAMES, *OPTIONAL_NAMES]}, got {name!r}.")
    info = EmbeddedInfo(name=name)
    for part in _PARTS[name]:
        path = _asset_present(part)
        info.parts[part] = str(path) if path is not None else None
        if path is None:
            info.placeholders.append(part)
    return info


def _resolved_info(
    name: str,
    base: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    motion_adapter: str | os.PathLike | None = None,
) -> EmbeddedInfo:
    """:func:`embedded_info` with the user's parts put in."""
    info = embedded_info(name)
    if base is not None:
        info.parts["base"] = str(base)
        info.placeholders = [p for p in info.placeholders if p != "base"]
    adapter_part = next((p for p in _PARTS[name] if p not in ("base", "motion_adapter")), None)
    if adapter is not None and adapter_part is not None:
        info.parts[adapter_part] = str(adapter)
        info.placeholders = [p for p in info.placeholders if p != adapter_part]
    if motion_adapter is not None and name == "i2v":
        info.parts["motion_adapter"] = str(motion_adapter)
        info.placeholders = [p for p in info.placeholders if p != "motion_adapter"]
    return info


def call_defaults_path(
    name: str, *, base: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None
) -> Path | None:
    """The ``pipeline_defaults.json`` that :func:`load_pipeline` applies for these parts, or ``None``.

    The file lives in the model's folder (``base/`` for ``"base"``, else the adapter's folder). A user adapter folder
    brings its own file; embedded adapter defaults are not applied on a user base (they were chosen for the embedded
    one); placeholders have none.
    """
    from .call_defaults import DEFAULTS_FILE_NAME

    info = _resolved_info(name, base=base, adapter=adapter)
    part = _DEFAULTS_PART[name]
    if part != "base" and base is not None and adapter is None:
        return None
    folder = info.parts.get(part)
    if folder is None or part in info.placeholders:
        return None
    path = Path(folder) / DEFAULTS_FILE_NAME
    return path if Path(folder).is_dir() and path.is_file() else None


def embedded_call_defaults(
    name: str, *, base: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None
):
    """The stored call defaults :func:`load_pipeline` would attach (a :class:`~pipelines.call_defaults.CallDefaults`,
    empty when there are none), read without loading a model.

    Raises:
        ValueError: the file is not valid JSON or holds a bad value (argument names are checked at load time).
    """
    from .call_defaults import CallDefaults, read_call_defaults

    path = call_defaults_path(name, base=base, adapter=adapter)
    return read_call_defaults(path) if path is not None else CallDefaults()


def _pipeline_call(name: str, base: str | os.PathLike) -> Callable:
    """The ``__call__`` that :func:`load_pipeline` will return for ``name`` on ``base`` (its class is imported, no model
    is loaded), so a stored default is checked against its signature before any weights load."""
    xl = is_sdxl(base)
    if name == "base":
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).__call__
    if name == "res":
        from .pipeline_res_adapter import ResAdapterPipeline, ResAdapterXLPipeline

        return (ResAdapterXLPipeline if xl else ResAdapterPipeline).__call__
    if name in ("mv", "mv_geometry"):
        from .pipeline_mv_adapter import MVAdapterPipelineMixin

        return MVAdapterPipelineMixin.__call__
    if name == "i2v":
        from .pipeline_i2v_adapter import I2VAdapterPipeline

        return I2VAdapterPipeline.__call__
    from .pipeline_hipa import HiPASDPipeline, HiPAXLPipeline

    return (HiPAXLPipeline if xl else HiPASDPipeline).__call__


def _sd_kwargs(base: str | os.PathLike, dtype) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(dtype_kwargs(dtype))
    if not is_sdxl(base):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return kwargs


def _load_base(base, adapter, motion_adapter, dtype):
    from diffusers import AutoPipelineForText2Image

    return AutoPipelineForText2Image.from_pretrained(base, **_sd_kwargs(base, dtype))


def _load_res(base, adapter, motion_adapter, dtype):
    from .pipeline_res_adapter import ResAdapterPipeline, ResAdapterXLPipeline

    cls = ResAdapterXLPipeline if is_sdxl(base) else ResAdapterPipeline
    pipe = cls.from_pretrained(base, **_sd_kwargs(base, dtype))
    if adapter:
        pipe.load_res_adapter(adapter)
    else:
        from adapters.res_adapter import init_res_adapter

        init_res_adapter(pipe)
        pipe.set_res_adapter_scale(lora_scale=1.0, norm_scale=1.0)  # leave training mode: plain inference state
    return pipe


def _load_mv(base, adapter, motion_adapter, dtype):
    from .auto_pipeline import MVAdapterPipeline

    if adapter:
        return MVAdapterPipeline.from_pretrained(base, mv_adapter=adapter, **dtype_kwargs(dtype))
    # A fresh adapter with the reference branch, so text and image (and geometry) modes all run.
    return MVAdapterPipeline.from_pretrained(base, mv_adapter_config={"variant": "i2mv"}, **dtype_kwargs(dtype))


def _load_mv_geometry(base, adapter, motion_adapter, dtype):
    from .auto_pipeline import MVAdapterPipeline

    if adapter:
        return MVAdapterPipeline.from_pretrained(base, mv_adapter=adapter, **dtype_kwargs(dtype))
    # A fresh geometry-guided adapter with the reference branch (position / normal maps, text and image).
    return MVAdapterPipeline.from_pretrained(base, mv_adapter_config={"variant": "ig2mv"}, **dtype_kwargs(dtype))


def _weights_file(path: str | os.PathLike, hint: str) -> str:
    """A local folder holding one adapter file -> that file (several: the one whose name contains ``hint``)."""
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    files = sorted(folder.glob("*.safetensors"))
    if len(files) > 1:
        files = [f for f in files if hint in f.name] or files
    if len(files) != 1:
        names = [f.name for f in sorted(folder.glob("*.safetensors"))]
        raise ValueError(f"Expected one {hint} .safetensors file in {folder}, found {names or 'none'}.")
    return str(files[0])


def _load_i2v(base, adapter, motion_adapter, dtype):
    from diffusers import MotionAdapter

    from .pipeline_i2v_adapter import I2VAdapterPipeline

    motion = MotionAdapter.from_pretrained(motion_adapter, **dtype_kwargs(dtype))
    return I2VAdapterPipeline.from_pretrained(
        base,
        motion_adapter=motion,
        i2v_adapter=_weights_file(adapter, "i2v") if adapter else "fresh",
        **dtype_kwargs(dtype),
    )


def _load_hipa(base, adapter, motion_adapter, dtype):
    from .auto_pipeline import HiPAPipeline

    return HiPAPipeline.from_pretrained(base, hipa_lora=adapter, **_sd_kwargs(base, dtype))


_LOADERS: dict[str, Callable[..., Any]] = {
    "base": _load_base,
    "res": _load_res,
    "mv": _load_mv,
    "mv_geometry": _load_mv_geometry,
    "i2v": _load_i2v,
    "hipa": _load_hipa,
}


def load_pipeline(
    name: str,
    *,
    base: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    motion_adapter: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    progress_bar: bool = True,
):
    """Load the pipeline of ``name`` with any part replaced by a user checkpoint (local folder or hub id).

    Args:
        name: one of :data:`EMBEDDED_NAMES`.
        base: the base model (default: the embedded ``assets/base`` or its placeholder).
        adapter: the adapter file / folder (ResAdapter, MV-Adapter, I2V-Adapter or HiPA LoRA; default: embedded,
            else a fresh adapter).
        motion_adapter: the ``MotionAdapter`` for ``"i2v"`` (default: embedded or placeholder).
        device, dtype, progress_bar: as in :func:`load_embedded`.

    Returns:
        The pipeline on ``device``, with ``embedded_info`` describing what was loaded and ``call_defaults`` the
        stored defaults its calls use (see :func:`call_defaults_path`).

    Raises:
        ValueError: a ``pipeline_defaults.json`` with an unknown argument or a bad value.
    """
    from .call_defaults import CallDefaults, read_call_defaults, set_call_defaults

    info = _resolved_info(name, base=base, adapter=adapter, motion_adapter=motion_adapter)
    device, dtype = resolve_device_dtype(device, dtype)
    adapter_part = next((p for p in _PARTS[name] if p not in ("base", "motion_adapter")), None)
    defaults_file = call_defaults_path(name, base=base, adapter=adapter)
    defaults = CallDefaults()
    if defaults_file is not None:  # a bad file is refused before any weights load
        call = _pipeline_call(name, info.parts.get("base") or placeholder_base_path())
        defaults = read_call_defaults(defaults_file, call)
    if info.is_placeholder:
        logger.warning(f"{info.label}: outputs will be noise-like. See assets/README.md to build the real models.")
    else:
        logger.info(info.label)

    base_path = info.parts.get("base") or str(placeholder_base_path())
    motion_path = None
    if name == "i2v":
        motion_path = info.parts.get("motion_adapter") or str(placeholder_base_path() / "motion_adapter")
    adapter_path = info.parts.get(adapter_part) if adapter_part else None
    pipe = _LOADERS[name](base_path, adapter_path, motion_path, dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress_bar)
    set_call_defaults(pipe, defaults)
    object.__setattr__(pipe, "embedded_info", info)
    return pipe


def load_embedded(
    name: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    progress_bar: bool = True,
):
    """Load the shipped model ``name`` (see the module docstring) on ``device`` in ``dtype``.

    Args:
        name: one of ``"base"``, ``"res"``, ``"mv"``, ``"i2v"``, ``"hipa"``, or the optional ``"mv_geometry"``.
        device: default CUDA if present, else MPS, else CPU.
        dtype: default float16 on CUDA, float32 elsewhere.
        progress_bar: keep diffusers' progress bar.

    Returns:
        The pipeline, moved to ``device``. Its attribute ``embedded_info`` is the :class:`EmbeddedInfo` (check
        ``pipe.embedded_info.is_placeholder``); ``pipe.call_defaults`` are the settings stored with the model
        (``assets/<folder>/pipeline_defaults.json``), used for every argument a call does not pass.
    """
    return load_pipeline(name, device=device, dtype=dtype, progress_bar=progress_bar)


def example_entries() -> list[dict[str, Any]]:
    """Example inputs for the image tasks, as dicts with ``image`` (Path), ``prompt``, and when available
    ``front_view`` (a front image, the usual multi-view reference) and ``position_map`` / ``normal_map`` (per-view
    maps side by side in one image, built from ``<name>_mv/position_XX.png`` / ``normal_XX.png``).

    Read from ``assets/examples/``: ``examples.json`` (a list, or ``{"examples": [...]}``, of entries with ``image``
    and ``caption`` or ``prompt``, optional ``front_view`` and ``name``), else every image with its stem as prompt.
    When the folder is missing, three simple shapes are drawn once into the cache folder.
    """
    folder = assets_dir() / "examples"
    if folder.is_dir():
        manifest = folder / "examples.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except ValueError as err:
                logger.warning(f"Ignoring unreadable {manifest}: {err}")
                data = []
            items = data.get("examples", []) if isinstance(data, dict) else data
            out = []
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict) or not (folder / str(item.get("image", ""))).is_file():
                    continue
                entry: dict[str, Any] = {
                    "image": folder / item["image"],
                    "prompt": str(item.get("caption", item.get("prompt", ""))),
                }
                front = item.get("front_view")
                if front and (folder / front).is_file():
                    entry["front_view"] = folder / front
                name = item.get("name") or Path(item["image"]).stem
                strips = _geometry_strips(folder / f"{name}_mv")
                if strips is not None:
                    entry["position_map"], entry["normal_map"] = strips
                out.append(entry)
            if out:
                return out
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if images:
            return [{"image": p, "prompt": p.stem.replace("_", " ").replace("-", " ")} for p in images]
    return [{"image": p, "prompt": prompt} for p, prompt in _drawn_examples()]


def _geometry_strips(folder: Path) -> tuple[Path, Path] | None:
    """Join ``position_XX.png`` / ``normal_XX.png`` of a multi-view example side by side (cached)."""
    from PIL import Image

    positions = sorted(folder.glob("position_*.png")) if folder.is_dir() else []
    normals = sorted(folder.glob("normal_*.png")) if folder.is_dir() else []
    if not positions or len(positions) != len(normals):
        return None
    out_dir = _cache_dir() / f"examples-v{PLACEHOLDER_FORMAT_VERSION}" / folder.name
    result = []
    with _BUILD_LOCK:
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, files in (("position", positions), ("normal", normals)):
            target = out_dir / f"{kind}_strip.png"
            newest = max(f.stat().st_mtime for f in files)
            if not target.is_file() or target.stat().st_mtime < newest:
                tiles = [Image.open(f).convert("RGB") for f in files]
                strip = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height))
                x = 0
                for tile in tiles:
                    strip.paste(tile, (x, 0))
                    x += tile.width
                tmp = target.with_suffix(".tmp.png")
                strip.save(tmp)
                os.replace(tmp, target)
            result.append(target)
    return result[0], result[1]


def example_images() -> list[tuple[Path, str]]:
    """``(image path, prompt)`` pairs of :func:`example_entries`."""
    return [(e["image"], e["prompt"]) for e in example_entries()]


def _drawn_examples() -> list[tuple[Path, str]]:
    from PIL import Image, ImageDraw

    folder = _cache_dir() / f"examples-v{PLACEHOLDER_FORMAT_VERSION}"
    specs = [
        ("red_sphere.png", "a red sphere", (214, 48, 49), "ellipse"),
        ("blue_cube.png", "a blue cube", (48, 98, 214), "cube"),
        ("green_cone.png", "a green cone", (46, 160, 67), "cone"),
    ]
    out = []
    with _BUILD_LOCK:
        folder.mkdir(parents=True, exist_ok=True)
        for filename, prompt, colour, shape in specs:
            path = folder / filename
            if not path.is_file():
                size = 128
                image = Image.new("RGB", (size, size))
                draw = ImageDraw.Draw(image)
                for y in range(size):  # vertical gradient background
                    shade = int(235 - 60 * y / size)
                    draw.line([(0, y), (size, y)], fill=(shade, shade, shade + 10))
                dark = tuple(int(c * 0.6) for c in colour)
                if shape == "ellipse":
                    draw.ellipse([28, 28, 100, 100], fill=colour, outline=dark, width=3)
                elif shape == "cube":
                    draw.polygon([(34, 50), (74, 50), (74, 98), (34, 98)], fill=colour)
                    draw.polygon(
                        [(34, 50), (54, 32), (94, 32), (74, 50)], fill=tuple(min(255, c + 50) for c in colour)
                    )
                    draw.polygon([(74, 50), (94, 32), (94, 80), (74, 98)], fill=dark)
                else:
                    draw.polygon([(64, 22), (100, 100), (28, 100)], fill=colour, outline=dark)
                tmp = path.with_suffix(".tmp.png")
                image.save(tmp)
                os.replace(tmp, path)
            out.append((path, prompt))
    return out
