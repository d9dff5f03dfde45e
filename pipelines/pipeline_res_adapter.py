"""ResAdapter for diffusers pipelines: a loader mixin for any SD-family pipeline and SD / SDXL text-to-image pipelines.

``ResAdapterLoaderMixin`` gives a pipeline ``load_res_adapter`` / ``set_res_adapter_scale`` / ``fuse_res_adapter`` /
``unfuse_res_adapter`` / ``unload_res_adapter`` / ``save_res_adapter``, the way diffusers' ``StableDiffusionLoraLoaderMixin``
gives ``load_lora_weights``. The same operations exist as functions taking the pipeline as first argument, for
pipelines we did not subclass (img2img, inpaint, ControlNet, IP-Adapter-enabled, AnimateDiff ...)::

    from diffusers import StableDiffusionControlNetPipeline
    from pipelines.pipeline_res_adapter import load_res_adapter

    pipe = StableDiffusionControlNetPipeline.from_pretrained(...)
    load_res_adapter(pipe, "resadapter_v2_sd1.5")      # folder with the official two files

``ResAdapterPipeline`` / ``ResAdapterXLPipeline`` are diffusers' ``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline`` with the mixin and a resolution guard in ``check_inputs``: a height or width that is not a
multiple of the UNet's total down-sampling factor times the VAE factor raises a ``ValueError`` naming the nearest
valid sizes (sizes above 4096 are refused too), and a size outside the loaded adapter's trained range logs a warning.
Their ``__call__`` is diffusers' unchanged (the adapter acts inside the UNet), so every diffusers argument and feature
keeps working; it first checks the two arguments diffusers' ``check_inputs`` never sees (``num_inference_steps`` >= 1,
finite ``latents``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import logging

from adapters.res_adapter import loader as _loader
from adapters.res_adapter.config import SINGLE_FILE_NAME, unet_downsample_factor
from adapters.res_adapter.loader import ResAdapterState, res_adapter_detached

from .checks import (
    bind_call_arguments,
    call_number_rules,
    check_finite,
    check_numbers,
    check_size,
    check_steps,
    validate_numbers,
)

logger = logging.get_logger(__name__)

__all__ = [
    "RES_ADAPTER_SUBFOLDER",
    "ResAdapterLoaderMixin",
    "ResAdapterPipeline",
    "ResAdapterXLPipeline",
    "check_res_adapter_call",
    "check_res_adapter_resolution",
    "fuse_res_adapter",
    "get_res_adapter",
    "load_res_adapter",
    "resolution_multiple",
    "save_res_adapter",
    "set_res_adapter_scale",
    "unfuse_res_adapter",
    "unload_res_adapter",
]

# Function forms (work on any pipeline with a `unet`, or on a UNet).
# the loader functions with the shared number checks (scales: finite, >= 0) in front
load_res_adapter = validate_numbers(_loader.load_res_adapter)
set_res_adapter_scale = validate_numbers(_loader.set_res_adapter_scale)
fuse_res_adapter = _loader.fuse_res_adapter
unfuse_res_adapter = _loader.unfuse_res_adapter
unload_res_adapter = _loader.unload_res_adapter
save_res_adapter = _loader.save_res_adapter
get_res_adapter = _loader.get_res_adapter


#: ``save_pretrained`` writes a loaded ResAdapter here, beside the base components (``res_adapter.safetensors`` and
#: ``res_adapter_call.json`` with its scales and fused state); ``from_pretrained`` of the folder loads it back.
RES_ADAPTER_SUBFOLDER = "res_adapter"
_SCALES_NAME = "res_adapter_call.json"


def _save_pipeline_with_res_adapter(pipe, save, save_directory, args, kwargs) -> None:
    """``save(save_directory, ...)`` (diffusers' ``save_pretrained``) with the UNet at its base weights, then the
    loaded ResAdapter (if any) into ``<save_directory>/res_adapter/``."""
    with res_adapter_detached(pipe) as state:
        save(save_directory, *args, **kwargs)
    if state is None:
        return
    folder = Path(save_directory) / RES_ADAPTER_SUBFOLDER
    save_res_adapter(pipe, folder, format="diffusion-adapters")
    call = {"lora_scale": state.lora_scale, "norm_scale": state.norm_scale, "fused": state.fused}
    (folder / _SCALES_NAME).write_text(json.dumps(call, indent=2, sort_keys=True))


def _load_saved_res_adapter(pipe, pretrained_model_name_or_path, res_adapter) -> None:
    """Load ``res_adapter`` (a path / state dict), else the one ``save_pretrained`` wrote beside the base; ``False``
    loads none."""
    if res_adapter is False:
        return
    call = {"lora_scale": 1.0, "norm_scale": 1.0, "fused": False}
    if res_adapter is None:
        folder = Path(str(pretrained_model_name_or_path)) / RES_ADAPTER_SUBFOLDER
        if not (folder / SINGLE_FILE_NAME).is_file():
            return
        res_adapter = folder / SINGLE_FILE_NAME
        if (folder / _SCALES_NAME).is_file():
            call.update(json.loads((folder / _SCALES_NAME).read_text()))
    pipe.load_res_adapter(res_adapter, lora_scale=call["lora_scale"], norm_scale=call["norm_scale"])
    if call["fused"]:
        pipe.fuse_res_adapter()


def resolution_multiple(pipe: object) -> int:
    """Image sizes must be multiples of this: the UNet's total down-sampling times the VAE's (64 on SD 1.5)."""
    vae_factor = getattr(pipe, "vae_scale_factor", None)
    if vae_factor is None:
        vae = getattr(pipe, "vae", None)
        blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
        vae_factor = 2 ** (len(blocks) - 1) if blocks else 8
    return unet_downsample_factor(pipe.unet) * int(vae_factor)


def check_res_adapter_resolution(pipe: object, height: int | None, width: int | None) -> None:
    """Validate an image size for a pipeline (with or without a ResAdapter loaded).

    Raises:
        TypeError: ``height`` / ``width`` is not an int.
        ValueError: a non-positive size, one above :data:`pipelines.checks.MAX_IMAGE_SIDE` (4096) or one that is not
            a multiple of :func:`resolution_multiple`; the message names the nearest valid sizes.

    Logs a warning when the size lies outside the loaded ResAdapter's trained resolution range.
    """
    multiple = resolution_multiple(pipe)
    down = unet_downsample_factor(pipe.unet)
    explain = f" (UNet down-sampling {down} x VAE {multiple // down})"
    for name, value in (("height", height), ("width", width)):
        check_size(name, value, multiple=multiple, explain=explain)
    state = get_res_adapter(pipe)
    if state is None or state.resolution_range is None or height is None or width is None:
        return
    low, high = state.resolution_range
    if min(height, width) < low or max(height, width) > high:
        logger.warning(
            f"{height}x{width} lies outside the range the loaded ResAdapter was trained for ({low}-{high} px per "
            "side); results may degrade. For sizes above the range, a `norm_scale` / `lora_scale` below 1 often helps."
        )


def check_res_adapter_call(pipe: object, arguments: dict, call=None) -> None:
    """Checks of ``__call__`` arguments that diffusers' ``check_inputs`` never sees: every numeric argument of
    ``call`` (the parent's ``__call__``: :func:`pipelines.checks.call_number_rules`; sizes before diffusers replaces
    a 0 by its default), ``num_inference_steps`` (an int >= 1 unless ``timesteps`` / ``sigmas`` are given) and finite
    ``latents``.

    Raises:
        TypeError / ValueError: naming the argument, its value and what is allowed.
    """
    if call is not None:
        check_numbers(arguments, call_number_rules(call))
    if arguments.get("timesteps") is None and arguments.get("sigmas") is None:
        check_steps(arguments.get("num_inference_steps"))
    latents = arguments.get("latents")
    if latents is not None and not isinstance(latents, torch.Tensor):
        raise TypeError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}.")
    check_finite("latents", latents)


class ResAdapterLoaderMixin:
    """Load, scale, fuse, unload and save a ResAdapter on any pipeline with a ``unet``.

    The adapter's state lives on the UNet (``pipe.unet._res_adapter``), so pipelines that share a UNet share it.
    """

    @property
    def res_adapter(self) -> ResAdapterState | None:
        """The loaded ResAdapter (config, scales, trained resolution range), or ``None``."""
        return get_res_adapter(self)

    @validate_numbers
    def load_res_adapter(
        self,
        pretrained_model_name_or_path: str | os.PathLike | Mapping[str, torch.Tensor],
        lora_scale: float = 1.0,
        norm_scale: float = 1.0,
        allow_pickle: bool = False,
        **kwargs,
    ) -> ResAdapterState:
        """Load a ResAdapter (official folder / either file / our single file); see
        :func:`adapters.res_adapter.load_res_adapter`. A failed load leaves the pipeline unchanged."""
        return load_res_adapter(
            self, pretrained_model_name_or_path, lora_scale, norm_scale, allow_pickle=allow_pickle, **kwargs
        )

    @validate_numbers
    def set_res_adapter_scale(self, lora_scale: float | None = None, norm_scale: float | None = None) -> None:
        """Set the sampler-LoRA multiplier (0 = off) and/or the GroupNorm blend (0 = base, 1 = ResAdapter)."""
        set_res_adapter_scale(self, lora_scale=lora_scale, norm_scale=norm_scale)

    def fuse_res_adapter(self) -> None:
        """Merge the sampler LoRA into the conv weights (no hooks left in the forward pass)."""
        fuse_res_adapter(self)

    def unfuse_res_adapter(self) -> None:
        """Undo :meth:`fuse_res_adapter` exactly."""
        unfuse_res_adapter(self)

    def unload_res_adapter(self) -> None:
        """Remove the ResAdapter; the UNet is bit for bit as before loading."""
        unload_res_adapter(self)

    def save_res_adapter(self, save_directory: str | os.PathLike, format: str = "official", **kwargs) -> list[Path]:
        """Save the loaded ResAdapter (``format="official"``: the two official files; ``"diffusion-adapters"``:
        one file with metadata)."""
        return save_res_adapter(self, save_directory, format=format, **kwargs)

    def check_res_adapter_resolution(self, height: int | None, width: int | None) -> None:
        """The resolution guard (see :func:`check_res_adapter_resolution`)."""
        check_res_adapter_resolution(self, height, width)


class _SavesResAdapterBeside:
    """``save_pretrained`` / ``from_pretrained`` of the ResAdapter pipelines; listed before the diffusers pipeline in
    the bases so that ``super()`` is diffusers' own method."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained`` with the UNet at its base weights (a loaded ResAdapter never goes into the
        saved UNet) plus the adapter in ``res_adapter/`` beside it, which :meth:`from_pretrained` loads back."""
        _save_pipeline_with_res_adapter(self, super().save_pretrained, save_directory, args, kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, res_adapter=None, **kwargs):
        """diffusers' ``from_pretrained`` plus ``res_adapter``: a ResAdapter to load (folder / file / state dict);
        ``None`` loads the one :meth:`save_pretrained` wrote beside the base (with its scales), ``False`` none."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        _load_saved_res_adapter(pipe, pretrained_model_name_or_path, res_adapter)
        return pipe


class ResAdapterPipeline(_SavesResAdapterBeside, StableDiffusionPipeline, ResAdapterLoaderMixin):
    """SD 1.x / 2.x text-to-image with ResAdapter (diffusers' ``StableDiffusionPipeline`` + the loader mixin).

    Examples:
        >>> pipe = ResAdapterPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
        >>> pipe.load_res_adapter("res-adapter/resadapter_v2_sd1.5")
        >>> image = pipe("a cat", height=384, width=640).images[0]
    """

    def check_inputs(self, prompt, height, width, *args, **kwargs):
        self.check_res_adapter_resolution(height, width)
        super().check_inputs(prompt, height, width, *args, **kwargs)

    @functools.wraps(StableDiffusionPipeline.__call__)
    def __call__(self, *args, **kwargs):
        # diffusers' __call__ unchanged; the arguments its check_inputs never sees are checked first
        arguments = bind_call_arguments(StableDiffusionPipeline.__call__, (self, *args), kwargs)
        check_res_adapter_call(self, arguments, StableDiffusionPipeline.__call__)
        return super().__call__(*args, **kwargs)


class ResAdapterXLPipeline(_SavesResAdapterBeside, StableDiffusionXLPipeline, ResAdapterLoaderMixin):
    """SDXL text-to-image with ResAdapter (diffusers' ``StableDiffusionXLPipeline`` + the loader mixin).

    Examples:
        >>> pipe = ResAdapterXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
        >>> pipe.load_res_adapter("res-adapter/resadapter_v2_sdxl")
        >>> image = pipe("a cat", height=512, width=512).images[0]
    """

    def check_inputs(self, prompt, prompt_2, height, width, *args, **kwargs):
        self.check_res_adapter_resolution(height, width)
        super().check_inputs(prompt, prompt_2, height, width, *args, **kwargs)

    @functools.wraps(StableDiffusionXLPipeline.__call__)
    def __call__(self, *args, **kwargs):
        arguments = bind_call_arguments(StableDiffusionXLPipeline.__call__, (self, *args), kwargs)
        check_res_adapter_call(self, arguments, StableDiffusionXLPipeline.__call__)
        return super().__call__(*args, **kwargs)
