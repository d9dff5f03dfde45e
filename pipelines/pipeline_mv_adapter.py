"""MV-Adapter pipelines: text / image / geometry to consistent multi-view images on SD 1.5/2.1 and SDXL.

``MVAdapterPipeline.from_pretrained(base, mv_adapter=...)`` (:mod:`pipelines.auto_pipeline`) picks
:class:`MVAdapterSDPipeline` or :class:`MVAdapterXLPipeline` from the base's config (like diffusers' AutoPipeline). The mode of a call follows its
inputs: ``image`` -> image-to-multi-view (I2MV), ``mesh`` or ``position_map``/``normal_map`` -> geometry-guided
(G2MV; a mesh is rendered into the maps for the call's cameras), else text-to-multi-view with camera maps (T2MV).

The shared generation code lives in :class:`MVAdapterPipelineMixin`; the SD and SDXL variants only encode prompts.

Example::

    pipe = MVAdapterPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0",
                                             mv_adapter="mvadapter_t2mv_sdxl.safetensors")
    views = pipe("a corgi", num_views=6).images[0]        # list of 6 PIL images
    make_multiview_grid(views).save("corgi.png")
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import PipelineImageInput
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from adapters.deprecation import deprecated_kwarg, deprecated_name
from adapters.mv_adapter import (
    WEIGHT_NAME,
    Cameras,
    GeometryMaps,
    Mesh,
    MVAdapter,
    camera_maps,
    default_cameras,
    encode_condition,
    geometry_cameras,
    geometry_maps,
    load_mesh,
    load_mv_adapter,
    render_geometry,
    shifted_snr_scheduler,
)
from adapters.processors import exposed_base_processors

from .checks import (
    MAX_NUM_VIEWS,
    check_count,
    check_finite,
    check_image_input,
    check_negative_prompt,
    check_size,
    check_steps,
    validate_numbers,
)
from .ip_adapter import check_ip_adapter_inputs, ip_adapter_embeds_per_sample
from .utils import size_multiple

logger = logging.get_logger(__name__)

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "MVAdapterPipelineMixin",
    "MVAdapterPipelineOutput",
    "make_multiview_grid",
    "prepare_reference_image",
]

#: The negative prompt of the official inference scripts.
DEFAULT_NEGATIVE_PROMPT = "watermark, ugly, deformed, noisy, blurry, low contrast"
ADAPTER_SUBFOLDER = "mv_adapter"
#: The official shifted-SNR factor, used when the adapter does not record the one it was trained with.
DEFAULT_NOISE_SHIFT = 8.0


@dataclass
class MVAdapterPipelineOutput(BaseOutput):
    """Output of the MV-Adapter pipelines.

    Attributes:
        images: the views of every generated sample (prompt x ``num_images_per_prompt``), stacked like AnimateDiff's
            ``frames``: one ``(samples, V, H, W, 3)`` array (``output_type="np"``), one ``(samples, V, 3, H, W)``
            tensor (``"pt"``), ``(samples, V, C, h, w)`` latents (``"latent"``), or for ``"pil"`` a list (samples) of
            lists of ``V`` PIL images. ``images[s]`` is sample ``s``'s views in every case.
    """

    images: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor


def make_multiview_grid(views: Sequence[PIL.Image.Image], rows: int = 1, cols: int | None = None) -> PIL.Image.Image:
    """Paste ``views`` (PIL images of one size) into a ``rows x cols`` grid (default: one row) with
    ``diffusers.utils.make_image_grid``; a grid larger than the views is filled with black."""
    from diffusers.utils import make_image_grid

    views = list(views)
    if not views:
        raise ValueError("`views` is empty.")
    cols = cols or -(-len(views) // rows)
    if rows * cols < len(views):
        raise ValueError(f"A {rows}x{cols} grid cannot hold {len(views)} views.")
    blank = PIL.Image.new("RGB", views[0].size)
    return make_image_grid(views + [blank] * (rows * cols - len(views)), rows=rows, cols=cols)


def prepare_reference_image(image: PIL.Image.Image, height: int, width: int, *, fill: float = 0.9) -> PIL.Image.Image:
    """Centre an RGBA object as the official inference scripts do before image-to-multi-view.

    The alpha bounding box is cropped, scaled so its longer side fills ``fill`` of the target side, centred on a
    ``width x height`` canvas and composited over gray (0.5). RGB images are only resized.
    """
    if image.mode != "RGBA":
        return image.convert("RGB").resize((width, height), PIL.Image.BICUBIC)
    arr = np.asarray(image)
    ys, xs = np.nonzero(arr[..., 3] > 0)
    if len(ys) == 0:
        raise ValueError("The reference image's alpha channel is empty.")
    y0, y1 = max(int(ys.min()) - 1, 0), min(int(ys.max()) + 1, arr.shape[0])
    x0, x1 = max(int(xs.min()) - 1, 0), min(int(xs.max()) + 1, arr.shape[1])
    crop = arr[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    if h > w:
        new_w, new_h = int(w * (height * fill) / h), int(height * fill)
    else:
        new_h, new_w = int(h * (width * fill) / w), int(width * fill)
    crop = np.asarray(PIL.Image.fromarray(crop).resize((max(new_w, 1), max(new_h, 1))))
    canvas: np.ndarray = np.zeros((height, width, 4), dtype=np.uint8)
    top, left = (height - crop.shape[0]) // 2, (width - crop.shape[1]) // 2
    canvas[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return _rgba_on_gray(PIL.Image.fromarray(canvas, mode="RGBA"))


def _describe_tensor(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _image_hw(image) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, a ``(..., C, H, W)`` tensor or a ``(..., H, W, C)`` array."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    shape = np.shape(image)
    return (int(shape[-3]), int(shape[-2])) if len(shape) >= 3 else (int(shape[0]), int(shape[1]))


def _rgba_on_gray(image: PIL.Image.Image) -> PIL.Image.Image:
    """Composite an RGBA reference over the official gray (0.5) background."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    arr = np.asarray(image, dtype=np.float32) / 255.0
    rgb = arr[..., :3] * arr[..., 3:4] + (1.0 - arr[..., 3:4]) * 0.5
    return PIL.Image.fromarray((rgb * 255.0).clip(0, 255).astype(np.uint8))


def _mv_adapter_kwargs(
    kwargs: dict[str, Any], mv_adapter: Any, weight_name: str | None, config: dict[str, Any] | None
) -> tuple[Any, str | None, dict[str, Any] | None]:
    """``(mv_adapter, mv_adapter_weight_name, mv_adapter_config)`` with the deprecated ``adapter`` /
    ``adapter_weight_name`` / ``adapter_config`` taken out of ``kwargs`` (each warns, pointing at the caller of the
    function calling this one)."""
    mv_adapter = deprecated_kwarg(kwargs, "adapter", "mv_adapter", mv_adapter, stacklevel=5)
    weight_name = deprecated_kwarg(kwargs, "adapter_weight_name", "mv_adapter_weight_name", weight_name, stacklevel=5)
    config = deprecated_kwarg(kwargs, "adapter_config", "mv_adapter_config", config, stacklevel=5)
    return mv_adapter, weight_name, config


class MVAdapterPipelineMixin:
    """The MV-Adapter generation loop and adapter management, shared by the SD and SDXL variants.

    A variant subclasses ``(MVAdapterPipelineMixin, <diffusers pipeline>)`` and implements :meth:`_encode_text`.
    """

    mv_adapter: MVAdapter | None = None
    #: Most views one call may produce (:data:`pipelines.checks.MAX_NUM_VIEWS`); raise it on an instance or subclass
    #: for experiments with more views.
    max_num_views: int = MAX_NUM_VIEWS
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    # ------------------------------------------------------------------------------------------------------------
    # adapter management
    def load_mv_adapter(
        self,
        source: str | os.PathLike | dict[str, torch.Tensor],
        *,
        weight_name: str | None = None,
        allow_pickle: bool = False,
        cond_encoder: torch.nn.Module | None = None,
        **config_overrides: Any,
    ) -> MVAdapter:
        """Load an official (``mvadapter_*.safetensors``) or our MV-Adapter file; replaces any attached adapter.

        The whole file is validated before anything changes: a failed load leaves the pipeline as it was.
        """
        new = load_mv_adapter(
            self.unet,
            source,
            weight_name=weight_name,
            vae_scale_factor=self.vae_scale_factor,
            allow_pickle=allow_pickle,
            cond_encoder=cond_encoder,
            attach=False,
            **config_overrides,
        )
        self._set_adapter(new)
        return new

    def init_mv_adapter(self, cond_encoder: torch.nn.Module | None = None, **config: Any) -> MVAdapter:
        """Attach a fresh, zero-initialised adapter (its output equals the base's until trained)."""
        new = MVAdapter.from_unet(
            self.unet, vae_scale_factor=self.vae_scale_factor, cond_encoder=cond_encoder, attach=False, **config
        )
        self._set_adapter(new)
        return new

    def register_condition_encoder(self, encoder: torch.nn.Module) -> None:
        """Use ``encoder`` (``(B, C_in, H, W) -> list of down-block residuals``) as the condition encoder."""
        if self.mv_adapter is None:
            raise ValueError("Load or init an MV-Adapter before registering a condition encoder.")
        self.mv_adapter.cond_encoder = encoder
        self.mv_adapter.config.cond_encoder = None

    def _set_adapter(self, adapter: MVAdapter) -> None:
        if self.mv_adapter is not None:
            self.mv_adapter.unload()
        adapter.attach()
        self.mv_adapter = adapter

    def unload_mv_adapter(self) -> None:
        """Remove the adapter: the UNet's original processors are restored."""
        if self.mv_adapter is not None:
            self.mv_adapter.unload()
            self.mv_adapter = None

    @validate_numbers
    def set_mv_adapter_scale(self, scale: float | None = None, ref_scale: float | None = None) -> None:
        """Default scales of the multi-view (``scale``) and reference (``ref_scale``) branches; ``None`` keeps one
        (0 switches a branch off exactly; a call's ``mv_scale`` / ``ref_scale`` override them for that call)."""
        self._require_adapter().set_scale(scale, ref_scale)

    @validate_numbers
    def set_adapter_scale(self, mv: float | None = None, ref: float | None = None) -> None:
        """Deprecated: :meth:`set_mv_adapter_scale` (``mv`` -> ``scale``, ``ref`` -> ``ref_scale``)."""
        deprecated_name("set_adapter_scale", "set_mv_adapter_scale(scale=..., ref_scale=...)", stacklevel=5)
        self._require_adapter().set_scale(mv, ref)

    def _require_adapter(self) -> MVAdapter:
        if self.mv_adapter is None:
            raise ValueError("No MV-Adapter is loaded: call `load_mv_adapter(...)` or `init_mv_adapter()`.")
        return self.mv_adapter

    def _adapter_detached(self):
        return self.mv_adapter.detached() if self.mv_adapter is not None else contextlib.nullcontext()

    def load_ip_adapter(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``load_ip_adapter`` (same arguments), with the MV-Adapter kept attached.

        diffusers' loader re-creates every attention processor by its class (the self-attention ones without
        arguments), which an MV-Adapter processor cannot be. The load runs with the UNet's base processors exposed
        (:func:`adapters.processors.exposed_base_processors`): diffusers replaces those, puts its IP-Adapter
        processors on the cross-attention layers (``attn2``), and each MV-Adapter processor then wraps the new
        self-attention processor of its layer. The two compose: the MV branches sit beside ``attn1``, the image
        branch beside ``attn2``, each with its own scale (``set_mv_adapter_scale`` / ``set_ip_adapter_scale``).
        """
        with exposed_base_processors(self.unet):
            return super().load_ip_adapter(*args, **kwargs)

    def unload_ip_adapter(self) -> None:
        """diffusers' ``unload_ip_adapter``, with the MV-Adapter kept attached (its processors are the same objects
        before and after, wrapping the self-attention processors diffusers puts back)."""
        with exposed_base_processors(self.unet):
            return super().unload_ip_adapter()

    def enable_xformers_memory_efficient_attention(self, *args: Any, **kwargs: Any) -> None:
        """xformers for the base attention; the adapter stays attached around the new processors."""
        with self._adapter_detached():
            super().enable_xformers_memory_efficient_attention(*args, **kwargs)

    def disable_xformers_memory_efficient_attention(self) -> None:
        with self._adapter_detached():
            super().disable_xformers_memory_efficient_attention()

    # ------------------------------------------------------------------------------------------------------------
    # saving / loading with the base
    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save the base components (plain UNet) and the adapter in ``mv_adapter/mv_adapter.safetensors``."""
        adapter = self.mv_adapter
        ctx = adapter.detached() if adapter is not None else contextlib.nullcontext()
        with ctx:
            super().save_pretrained(save_directory, *args, **kwargs)
        if adapter is not None:
            adapter.save(Path(save_directory) / ADAPTER_SUBFOLDER / WEIGHT_NAME)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        mv_adapter: str | os.PathLike | dict | bool | None = None,
        mv_adapter_weight_name: str | None = None,
        mv_adapter_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """Load the base pipeline and an adapter.

        Args:
            mv_adapter: a weight file / folder / state dict; ``None`` loads ``<base>/mv_adapter/`` when present and
                otherwise attaches a fresh zero-initialised adapter (``mv_adapter_config`` fields); ``False``
                attaches nothing.
            mv_adapter_weight_name: file name inside an ``mv_adapter`` folder.
            mv_adapter_config: :class:`~adapters.mv_adapter.MVAdapterConfig` overrides (e.g. ``{"variant": "ig2mv"}``).

        ``adapter`` / ``adapter_weight_name`` / ``adapter_config`` are the deprecated names of these three.
        """
        mv_adapter, mv_adapter_weight_name, mv_adapter_config = _mv_adapter_kwargs(
            kwargs, mv_adapter, mv_adapter_weight_name, mv_adapter_config
        )
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        overrides = dict(mv_adapter_config or {})
        if mv_adapter is False:
            return pipe
        if mv_adapter is None:
            saved = Path(str(pretrained_model_name_or_path)) / ADAPTER_SUBFOLDER / WEIGHT_NAME
            if saved.is_file():
                pipe.load_mv_adapter(saved, **overrides)
            else:
                logger.info("No MV-Adapter given: attaching a fresh zero-initialised adapter (output == base).")
                pipe.init_mv_adapter(**overrides)
        else:
            pipe.load_mv_adapter(mv_adapter, weight_name=mv_adapter_weight_name, **overrides)
        return pipe

    # ------------------------------------------------------------------------------------------------------------
    # per-variant hooks
    def _encode_text(
        self,
        prompt: list[str],
        negative_prompt: list[str] | None,
        *,
        device: torch.device,
        repeat: int,
        need_negative: bool,
        height: int,
        width: int,
        clip_skip: int | None,
        lora_scale: float | None,
        embeds: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor] | None]]:
        """``{"pos": (states, added_cond_kwargs), "neg": ...}`` with ``prompts * repeat`` rows each; ``prompt`` is
        ``None`` when ``embeds`` holds ``prompt_embeds`` (and optionally the negative / pooled embeddings)."""
        raise NotImplementedError

    def _default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # ------------------------------------------------------------------------------------------------------------
    # inputs
    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor x UNet downsampling)."""
        return size_multiple(self)

    def check_inputs(
        self,
        prompt,
        image,
        position_map,
        normal_map,
        num_views: int,
        cameras: Cameras | None,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        reference_guidance_scale: float | None,
        mv_scale: float | None,
        ref_scale: float | None,
        noise_shift: float | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        *,
        latents: torch.Tensor | None = None,
        condition_maps: torch.Tensor | np.ndarray | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        num_images_per_prompt: int = 1,
        mesh: Any = None,
    ) -> None:
        """Validate a call's arguments before any model runs; each error names the argument and what is allowed.

        Limits: ``1 <= num_views <= max_num_views`` (:data:`pipelines.checks.MAX_NUM_VIEWS`, 32), ``height`` /
        ``width`` multiples of :attr:`size_multiple` up to :data:`pipelines.checks.MAX_IMAGE_SIDE` (4096),
        ``num_inference_steps >= 1``; ``image`` a PIL image / array / tensor (or a list of them); ``latents``,
        ``condition_maps``, ``position_map``, ``normal_map`` and image tensors finite (no NaN / inf); IP-Adapter
        inputs as :func:`pipelines.ip_adapter.check_ip_adapter_inputs` (one row per prompt or sample, never per view).

        Raises:
            TypeError: an argument of the wrong type.
            ValueError: an argument out of range, non-finite, or not fitting the loaded adapter.
        """
        adapter = self.mv_adapter
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if prompt_embeds is None and (
            not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt)
        ):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {type(prompt).__name__}.")
        for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3):
                raise ValueError(f"`{name}` must be a (prompts, tokens, dim) tensor, got {_describe_tensor(value)}.")
            check_finite(name, value)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        if (
            prompt_embeds is not None
            and negative_prompt_embeds is not None
            and prompt_embeds.shape != negative_prompt_embeds.shape
        ):
            raise ValueError(
                f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                f"{tuple(negative_prompt_embeds.shape)} must have the same shape."
            )
        check_negative_prompt(prompt, negative_prompt)
        check_count(
            "num_views", num_views, maximum=self.max_num_views, why=" (`max_num_views`; the official models use 6)"
        )
        if cameras is not None and len(cameras) != num_views:
            raise ValueError(f"`cameras` has {len(cameras)} views but `num_views` is {num_views}.")
        for name, value in (("height", height), ("width", width)):
            check_size(name, value, multiple=self.size_multiple, allow_none=False)
        check_steps(num_inference_steps)
        check_image_input("image", image, allow_none=True)
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise TypeError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}.")
        check_finite("latents", latents)
        if condition_maps is not None and not isinstance(condition_maps, (torch.Tensor, np.ndarray)):
            raise TypeError(
                f"`condition_maps` must be a torch.Tensor or np.ndarray (V, C, H, W) in [0, 1], got "
                f"{type(condition_maps).__name__}."
            )
        check_finite("condition_maps", condition_maps)
        check_finite("position_map", position_map)
        check_finite("normal_map", normal_map)
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}.")
        if reference_guidance_scale is not None and reference_guidance_scale < 0:
            raise ValueError(f"`reference_guidance_scale` must be >= 0, got {reference_guidance_scale}.")
        if noise_shift is not None and noise_shift <= 0:
            raise ValueError(f"`noise_shift` must be > 0 (1 = no shift), got {noise_shift}.")
        if (position_map is None) != (normal_map is None):
            raise ValueError("`position_map` and `normal_map` must be given together (geometry mode).")
        if mesh is not None:
            self._check_mesh_input(mesh, position_map, normal_map, condition_maps)
        if adapter is None:
            given = [n for n, v in (("image", image), ("mesh", mesh), ("position_map", position_map),
                                    ("condition_maps", condition_maps)) if v is not None]  # fmt: skip
            if given:
                raise ValueError(
                    f"`{given[0]}` needs an MV-Adapter and none is loaded: call `load_mv_adapter(...)` or "
                    "`init_mv_adapter()` (without one, the views are sampled by the base alone)."
                )
        elif image is not None and not adapter.config.use_ref:
            raise ValueError(
                "`image` was given but the loaded MV-Adapter has no reference branch; load an i2mv/ig2mv adapter."
            )
        if adapter is not None and adapter.config.attention_mode == "row_col" and num_views != 6:
            raise ValueError(f"This adapter's 'row_col' attention needs `num_views` = 6, got {num_views}.")
        if adapter is not None and adapter.cond_encoder is None:
            raise ValueError(
                "The MV-Adapter has no condition encoder; register one with `register_condition_encoder`."
            )
        if prompt_embeds is not None:
            num_prompts = int(prompt_embeds.shape[0])
        else:
            num_prompts = 1 if isinstance(prompt, str) else len(prompt)
        check_ip_adapter_inputs(
            self, ip_adapter_image, ip_adapter_image_embeds, batch_size=num_prompts,
            num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=guidance_scale > 1.0,
        )  # fmt: skip
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` {bad} are not in {self._callback_tensor_inputs}."
                )

    def _check_mesh_input(self, mesh, position_map, normal_map, condition_maps) -> None:
        """``mesh`` is a path, a trimesh object or a :class:`~adapters.mv_adapter.Mesh`, given alone (not with maps),
        to a pipeline whose MV-Adapter is geometry-guided."""
        if position_map is not None or normal_map is not None:
            raise ValueError(
                "Pass either `mesh` or `position_map` / `normal_map`, not both: the mesh is rendered into those maps."
            )
        if condition_maps is not None:
            raise ValueError("Pass either `mesh` or `condition_maps`, not both.")
        is_trimesh = type(mesh).__module__.split(".")[0] == "trimesh"
        if not (isinstance(mesh, (str, os.PathLike, Mesh)) or is_trimesh):
            raise TypeError(
                "`mesh` must be a mesh file path (.obj / .glb / .gltf / .ply / .stl), a trimesh.Trimesh / Scene or an "
                f"adapters.mv_adapter.Mesh, got {type(mesh).__name__}."
            )
        adapter = self.mv_adapter
        if adapter is None:
            raise ValueError(
                "`mesh` needs a geometry-guided MV-Adapter and none is loaded: load a tg2mv / ig2mv adapter with "
                "`load_mv_adapter(...)` (or `init_mv_adapter(variant='tg2mv')` to train one)."
            )
        if adapter.config.condition != "geometry" or adapter.cond_encoder is None:
            raise ValueError(
                f"`mesh` needs a geometry condition encoder, but the loaded MV-Adapter (variant "
                f"{adapter.config.variant or 'custom'}) is conditioned on {adapter.config.condition!r} maps: load a "
                "geometry-guided adapter (tg2mv / ig2mv) with `load_mv_adapter(...)`."
            )

    def prepare_mesh_maps(
        self,
        mesh: Any,
        num_views: int,
        cameras: Cameras | None,
        azimuth_deg: Sequence[float] | None,
        elevation_deg: float | Sequence[float] | None,
        distance: float | Sequence[float] | None,
        fov: float | Sequence[float] | None,
        height: int,
        width: int,
    ) -> GeometryMaps:
        """Render a mesh's position / normal maps ``(V, height, width, 3)`` for a call's cameras.

        ``mesh`` is loaded with :func:`~adapters.mv_adapter.load_mesh` (normalised into the official unit box) unless
        it already is a :class:`~adapters.mv_adapter.Mesh`. The cameras are ``cameras`` when given, else
        :func:`~adapters.mv_adapter.geometry_cameras` with the call's ``azimuth_deg`` / ``elevation_deg`` /
        ``distance`` / ``fov``: for 6 views and no angles the official geometry ring (front, right, back, left, top,
        bottom: the layout of the tg2mv / ig2mv ``row_col`` attention), else an even orthographic ring at elevation 0.
        Maps are rendered at the output size on the execution device (nvdiffrast when installed and on a GPU).
        """
        if not isinstance(mesh, Mesh):
            mesh = load_mesh(mesh)
        if cameras is None:
            cameras = geometry_cameras(
                num_views,
                azimuth_deg=azimuth_deg,
                elevation_deg=elevation_deg,
                distance=1.8 if distance is None else distance,
                fov_deg=fov,
            )
        if len(cameras) != num_views:
            raise ValueError(f"The mesh's cameras are {len(cameras)} views but `num_views` is {num_views}.")
        return render_geometry(mesh.to(self._execution_device), cameras, height, width)

    def prepare_cameras(
        self,
        num_views: int,
        cameras: Cameras | np.ndarray | torch.Tensor | None,
        azimuth_deg: Sequence[float] | None,
        elevation_deg: float | Sequence[float] | None,
        distance: float | Sequence[float] | None,
        fov: float | Sequence[float] | None,
    ) -> Cameras:
        """The call's cameras: given ``Cameras`` / OpenCV ``(V, 4, 4)`` matrices, or the official ring."""
        if cameras is not None:
            if not isinstance(cameras, Cameras):
                cameras = Cameras.from_c2w(cameras, convention="opencv", fov_deg=fov)
            return cameras
        return default_cameras(
            num_views,
            azimuth_deg=azimuth_deg,
            elevation_deg=0.0 if elevation_deg is None else elevation_deg,
            distance=1.8 if distance is None else distance,
            fov_deg=fov,
        )

    def prepare_condition(
        self,
        *,
        cameras: Cameras | None,
        position_map,
        normal_map,
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The 6-channel condition maps ``(V, 6, height, width)`` in ``[0, 1]``."""
        if position_map is not None:
            maps = geometry_maps(position_map, normal_map, height, width)
        else:
            maps = camera_maps(cameras, height, width, kind=self._require_adapter().config.camera_map)
        return maps.to(device=device, dtype=dtype)

    def _encode_condition(self, maps: torch.Tensor, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        encoder = self._require_adapter().cond_encoder
        offloaded = getattr(self.unet, "_hf_hook", None) is not None
        param = next(encoder.parameters(), None)
        # Device and dtype moved separately: diffusers models log a warning on every `.to()` that names a dtype.
        if param is not None and param.device != torch.device(device):
            encoder.to(device)
        if param is not None and param.dtype != dtype:
            encoder.to(dtype=dtype)
        try:
            return encode_condition(encoder, maps)
        finally:
            if offloaded:
                encoder.to("cpu")

    def _encode_vae(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Reference latents ``(S, C, h, w)`` (posterior mode, scaled like the official pipeline's sample)."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        image = image.to(device=self._execution_device, dtype=vae.dtype)
        dist = vae.encode(image).latent_dist
        # The official pipeline samples the posterior with the call's generator (after the initial noise was drawn).
        latents = dist.mode() if isinstance(generator, list) else dist.sample(generator)
        if upcast:
            vae.to(dtype=torch.float16)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
            return (latents - mean) * vae.config.scaling_factor / std
        return latents * vae.config.scaling_factor

    def _decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        latents = latents.to(dtype=vae.dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        return image

    def _shifted_scheduler(self, noise_shift: float):
        """The scheduler of one call: ``self.scheduler`` with the shifted-SNR schedule (a copy; ``self.scheduler`` is
        never changed), or ``self.scheduler`` itself for ``noise_shift == 1`` and for schedulers the shift cannot
        rebuild (no ``alphas_cumprod`` / ``trained_betas``: EDM, flow matching), which run unshifted with a warning."""
        scheduler = self.scheduler
        if noise_shift == 1:
            return scheduler
        params = inspect.signature(type(scheduler).__init__).parameters
        if not hasattr(scheduler, "alphas_cumprod") or "trained_betas" not in params:
            logger.warning(
                f"{type(scheduler).__name__} has no betas schedule (`alphas_cumprod` / `trained_betas`) to shift: "
                f"`noise_shift`={noise_shift} is not applied; the scheduler runs unshifted."
            )
            return scheduler
        return shifted_snr_scheduler(scheduler, noise_shift)

    # ------------------------------------------------------------------------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @validate_numbers
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor | None = None,
        position_map=None,
        normal_map=None,
        mesh: str | os.PathLike | Any | None = None,
        num_views: int | None = None,
        azimuth_deg: Sequence[float] | None = None,
        elevation_deg: float | Sequence[float] | None = None,
        distance: float | Sequence[float] | None = None,
        fov: float | Sequence[float] | None = None,
        cameras: Cameras | np.ndarray | torch.Tensor | None = None,
        condition_maps: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        reference_guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        mv_scale: float | None = None,
        ref_scale: float | None = None,
        condition_scale: float = 1.0,
        noise_shift: float | None = None,
        clip_skip: int | None = None,
    ):
        r"""Generate ``num_views`` consistent views per prompt.

        Args:
            prompt: text prompt(s); ``P`` prompts give ``P * num_images_per_prompt`` samples of ``num_views`` views.
                Default (no ``prompt_embeds``): the official ``"high quality"``.
            image: reference image(s) for image-to-multi-view (one, or one per prompt); RGBA is put on gray. It is
                encoded at its own size (as the official pipeline); :func:`prepare_reference_image` centres and
                resizes it to the output size like the official scripts.
            position_map, normal_map: per-view geometry for G2MV (arrays ``(V, H, W, 3)`` or lists of arrays or PIL
                images, see :func:`adapters.mv_adapter.geometry_maps`).
            mesh: instead of the maps, a mesh for geometry-guided generation: a ``.obj`` / ``.glb`` / ``.gltf`` /
                ``.ply`` / ``.stl`` path, a ``trimesh.Trimesh`` / ``Scene`` or an :class:`~adapters.mv_adapter.Mesh`.
                It is normalised into the official unit box and its position / normal maps are rendered at the output
                size for this call's cameras (:meth:`prepare_mesh_maps`: ``cameras``, else ``azimuth_deg`` /
                ``elevation_deg`` / ``distance`` / ``fov``, else the official 6-view geometry ring). Needs a
                geometry-guided adapter (tg2mv / ig2mv); not together with ``position_map`` / ``normal_map``.
            num_views: views per sample, 1 to :attr:`max_num_views` (32) (default: from the cameras/maps, else the
                adapter's ``num_views``).
            azimuth_deg, elevation_deg, distance, fov: cameras on a sphere (azimuth 0 = front; ``fov`` in degrees
                makes them perspective, default orthographic with the official box).
            cameras: a :class:`~adapters.mv_adapter.Cameras` or OpenCV ``(V, 4, 4)`` camera-to-world matrices.
            condition_maps: precomputed condition ``(V, C_in, H, W)`` in ``[0, 1]`` for the condition encoder
                (replaces cameras / geometry maps; e.g. a training set's maps or a custom condition).
            height, width: output size (any multiple of :attr:`size_multiple` up to 4096; non-square allowed).
            num_inference_steps: denoising steps.
            guidance_scale: text classifier-free guidance (default 7.0 for text modes, 3.0 with ``image``, as the
                official scripts).
            reference_guidance_scale: image guidance; ``None`` uses one guidance over (negative prompt, zero
                reference) as the official pipeline; a value adds a third branch
                ``eps = u + s_ref * (e_img - u) + s_txt * (e_full - e_img)``.
            negative_prompt: defaults to the official negative prompt (not used when ``negative_prompt_embeds`` are
                given).
            num_images_per_prompt: samples per prompt.
            generator: one ``torch.Generator``, one per sample (``P * num_images_per_prompt``, as diffusers), or one
                per view (``samples * num_views``).
            latents: initial noise ``(samples * num_views, C, h, w)``, the views of a sample contiguous.
            prompt_embeds, negative_prompt_embeds: ``(P, tokens, dim)`` text embeddings from :meth:`encode_prompt`
                instead of ``prompt`` / ``negative_prompt`` (SDXL also takes ``pooled_prompt_embeds`` /
                ``negative_pooled_prompt_embeds`` ``(P, dim)``).
            ip_adapter_image: image(s) for the IP-Adapter(s) loaded with ``load_ip_adapter`` (one image per
                IP-Adapter; the same for every sample and view).
            ip_adapter_image_embeds: precomputed image embeddings instead: a list with one tensor per IP-Adapter,
                ``(B, num_images, D)`` (or ``(B, num_images, tokens, D)`` for IP-Adapter Plus) with ``B`` = 1, ``P``
                (one per prompt) or ``P * num_images_per_prompt`` (one per sample); under guidance (``guidance_scale
                > 1``) ``2 * B`` rows, negatives first, as ``prepare_ip_adapter_image_embeds(...,
                do_classifier_free_guidance=True)`` returns. Embeddings are per sample, never per view: each sample's
                row is repeated for its ``num_views`` views (the UNet batch is samples x views). The reference pass of
                image-to-multi-view uses the positive rows.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            callback_on_step_end: ``fn(pipe, step, t, tensors) -> dict`` (may replace ``latents``).
            cross_attention_kwargs: passed to the UNet (e.g. ``{"scale": lora_scale}``).
            mv_scale, ref_scale: branch scales for this call (default: the adapter's, 1.0).
            condition_scale: scale of the condition encoder's residuals.
            noise_shift: shifted-SNR schedule factor ("interpolated"); 1 = the base schedule. ``None``: the value
                the loaded adapter was trained with (recorded in its config), else the official 8; without an adapter,
                1. A scheduler without ``alphas_cumprod`` / ``trained_betas`` (EDM, flow matching) is used unshifted,
                with a warning.

        Without an MV-Adapter loaded the views are sampled by the base alone (no multi-view attention, no camera
        condition; ``image`` and geometry inputs are refused), like the base pipeline with one sample per view.

        Returns:
            :class:`MVAdapterPipelineOutput` (or a tuple with its ``images``).
        """
        adapter = self.mv_adapter
        # 0. Defaults
        if cameras is not None and not isinstance(cameras, Cameras):
            cameras = Cameras.from_c2w(cameras, convention="opencv", fov_deg=fov)
        if num_views is None:
            if cameras is not None:
                num_views = len(cameras)
            elif condition_maps is not None:
                num_views = len(condition_maps)
            elif azimuth_deg is not None:
                num_views = len(azimuth_deg)
            elif position_map is not None:
                num_views = len(position_map)
            else:
                num_views = adapter.config.num_views if adapter is not None else 1
        if prompt is None and prompt_embeds is None:
            prompt = "high quality"
        if negative_prompt_embeds is not None and negative_prompt == DEFAULT_NEGATIVE_PROMPT:
            negative_prompt = None  # the default gives way to the embeddings
        height = self._default_size() if height is None else height  # 0 is refused, never replaced
        width = self._default_size() if width is None else width
        if guidance_scale is None:
            guidance_scale = 3.0 if image is not None else 7.0

        # 1. Check inputs
        self.check_inputs(
            prompt, image, position_map, normal_map, num_views, cameras, height, width, num_inference_steps,
            guidance_scale, reference_guidance_scale, mv_scale, ref_scale, noise_shift,
            callback_on_step_end_tensor_inputs, latents=latents, condition_maps=condition_maps, mesh=mesh,
            negative_prompt=negative_prompt, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            num_images_per_prompt=num_images_per_prompt,
        )  # fmt: skip
        if azimuth_deg is not None and len(azimuth_deg) != num_views:
            raise ValueError(f"`azimuth_deg` has {len(azimuth_deg)} values but `num_views` is {num_views}.")
        self._guidance_scale = guidance_scale
        self._interrupt = False

        # 2. Batch layout
        if prompt_embeds is not None:
            prompts = None
            num_prompts = int(prompt_embeds.shape[0])
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            num_prompts = len(prompts)
        samples = num_prompts * num_images_per_prompt
        views = num_views
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        three_branch = image is not None and reference_guidance_scale is not None and do_cfg
        if three_branch and reference_guidance_scale == guidance_scale:
            three_branch = False  # identical to the two-branch formula
        branches = ["neg", "neg", "pos"] if three_branch else (["neg", "pos"] if do_cfg else ["pos"])
        sample_generators = None
        if isinstance(generator, list):
            if len(generator) == samples and views > 1:
                sample_generators = generator
                generator = [g for g in generator for _ in range(views)]  # each sample's views from its generator
            elif len(generator) != samples * views:
                raise ValueError(
                    f"`generator` has {len(generator)} entries; expected one per sample ({samples}) or one per view "
                    f"({samples * views} = samples x views)."
                )

        # 3. Encode the prompts
        if negative_prompt is None:
            negatives = None
        else:
            negatives = [negative_prompt] * num_prompts if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != num_prompts:
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries but there are {num_prompts} prompts."
                )
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        embeds = {
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "pooled_prompt_embeds": pooled_prompt_embeds,
            "negative_pooled_prompt_embeds": negative_pooled_prompt_embeds,
        }
        text = self._encode_text(
            prompts, negatives, device=device, repeat=num_images_per_prompt * views, need_negative=do_cfg,
            height=height, width=width, clip_skip=clip_skip, lora_scale=lora_scale,
            embeds={k: v for k, v in embeds.items() if v is not None},
        )  # fmt: skip
        prompt_embeds = torch.cat([text[b][0] for b in branches])
        added = None
        if text["pos"][1] is not None:
            added = {k: torch.cat([text[b][1][k] for b in branches]) for k in text["pos"][1]}
        ip_embeds = None  # {"neg" / "pos": per IP-Adapter (samples, n, ...)}
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            negative, positive = ip_adapter_embeds_per_sample(
                self, ip_adapter_image, ip_adapter_image_embeds, device=device, dtype=prompt_embeds.dtype,
                batch_size=num_prompts, num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=do_cfg,
            )  # fmt: skip
            ip_embeds = {"pos": positive, "neg": negative}
            # the UNet batch: branches x samples x views, each sample's row repeated for its views
            added = dict(added or {})
            added["image_embeds"] = [
                torch.cat([ip_embeds[b][i].repeat_interleave(views, dim=0) for b in branches])
                for i in range(len(positive))
            ]

        # 4. Timesteps (shifted-SNR schedule)
        if noise_shift is None:
            if adapter is None:
                noise_shift = 1.0
            else:
                trained = adapter.config.extra.get("noise_shift")
                noise_shift = float(trained) if trained is not None else DEFAULT_NOISE_SHIFT
        scheduler = self._shifted_scheduler(noise_shift)
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps

        # 5. Latents: (samples * views, C, h, w), the views of a sample contiguous
        dtype = prompt_embeds.dtype
        shape = (samples * views, self.unet.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)  # fmt: skip
        if latents is None and sample_generators is not None:
            view_shape = (views, *shape[1:])
            latents = torch.cat([randn_tensor(view_shape, generator=g, device=device, dtype=dtype)
                                 for g in sample_generators])  # fmt: skip
        elif latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=dtype) * scheduler.init_noise_sigma

        # 6. Condition maps -> encoder residuals (computed once, the same for every branch and step)
        features = None
        if adapter is None:
            pass  # the base alone: no condition
        elif condition_maps is not None:
            maps = torch.as_tensor(condition_maps).to(device=device, dtype=dtype)
            if maps.shape[-2:] != (height, width):
                maps = torch.nn.functional.interpolate(maps, size=(height, width), mode="bilinear")
        else:
            if mesh is not None:  # rendered like `render_geometry` by hand, then the same path as given maps
                rendered = self.prepare_mesh_maps(
                    mesh, views, cameras, azimuth_deg, elevation_deg, distance, fov, height, width
                )
                position_map, normal_map = rendered.position.cpu(), rendered.normal.cpu()
            if position_map is None:
                cameras = cameras or self.prepare_cameras(views, None, azimuth_deg, elevation_deg, distance, fov)
            maps = self.prepare_condition(
                cameras=cameras, position_map=position_map, normal_map=normal_map, height=height, width=width,
                device=device, dtype=dtype,
            )  # fmt: skip
        if adapter is not None:
            if maps.shape[0] != views:
                raise ValueError(f"The condition has {maps.shape[0]} views but `num_views` is {views}.")
            features = self._encode_condition(maps, device, dtype)
            reps = samples * len(branches)
            features = [(f * condition_scale).to(dtype).repeat(reps, 1, 1, 1) for f in features]

        # 7. Reference states (I2MV): one UNet pass at t=0, cached per attn1; zeros as the unconditional reference
        ref_states = None
        if image is not None:
            ref_states = self._reference_states(image, samples, num_images_per_prompt, views, text, height, width,
                                                generator, cross_attention_kwargs,
                                                ip_embeds["pos"] if ip_embeds is not None else None)  # fmt: skip
            ref_states = {
                k: torch.cat([torch.zeros_like(v) if (b == "neg" and j == 0) else v for j, b in enumerate(branches)])
                for k, v in ref_states.items()
            }
        # diffusers' own: it reads self.scheduler's step, and the call's scheduler is self.scheduler or a copy of the
        # same class (_shifted_scheduler), so the keywords are the same
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 8. Denoising loop
        adapter_call: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if adapter is not None:
            state = adapter.state
            adapter_call = state.override(
                num_views=views,
                ref_states=ref_states,
                mv_scale=state.mv_scale if mv_scale is None else mv_scale,
                ref_scale=state.ref_scale if ref_scale is None else ref_scale,
                caching=False,
                enabled=True,
            )
        self._num_timesteps = len(timesteps)
        with adapter_call, self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * len(branches))
                model_input = scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    cross_attention_kwargs=cross_attention_kwargs,
                    down_intrablock_additional_residuals=list(features) if features is not None else None,
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]
                if three_branch:  # guidance read from the pipeline each step (a callback may change it)
                    uncond, img, full = noise_pred.chunk(3)
                    noise_pred = (
                        uncond + reference_guidance_scale * (img - uncond) + self.guidance_scale * (full - img)
                    )
                elif do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + self.guidance_scale * (cond - uncond)
                latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    names = callback_on_step_end_tensor_inputs or ["latents"]
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in names}) or {}
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()

        # 9. Decode, then group the views of each sample: (samples, views, ...)
        if output_type == "latent":
            images = latents
        else:
            images = self._decode_vae(latents)
            watermark = getattr(self, "watermark", None)  # SDXL's invisible watermark, when installed (as official)
            if watermark is not None:
                images = watermark.apply_watermark(images)
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if isinstance(images, list):
            grouped = [images[s * views : (s + 1) * views] for s in range(samples)]
        else:
            grouped = images.reshape(samples, views, *images.shape[1:])
        if not return_dict:
            return (grouped,)
        return MVAdapterPipelineOutput(images=grouped)

    def _reference_states(
        self,
        image,
        samples: int,
        num_images_per_prompt: int,
        views: int,
        text: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor] | None]],
        height: int,
        width: int,
        generator,
        cross_attention_kwargs: dict[str, Any] | None,
        image_embeds: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{attn1 name: (samples, tokens, C)}``: the attn1 inputs of the reference image's UNet pass at t=0.

        The pass uses each sample's positive prompt, no condition residuals and the base attention only, and the
        reference is encoded at its own size (rounded down to a multiple of the VAE factor), as the official pipeline
        does: ``height``/``width`` (the output size) only set the SDXL micro-conditioning, which ``text`` already
        holds. Use :func:`prepare_reference_image` to centre and resize a reference like the official scripts.
        ``image_embeds`` (per IP-Adapter, ``(samples, n, ...)``) are the positive IP-Adapter embeddings of the samples.
        """
        images = image if isinstance(image, list) else [image]
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            images = list(image)
        images = [_rgba_on_gray(im) if isinstance(im, PIL.Image.Image) else im for im in images]
        num_prompts = samples // num_images_per_prompt
        if len(images) not in (1, num_prompts):
            raise ValueError(f"`image` has {len(images)} entries; expected 1 or one per prompt ({num_prompts}).")
        # The reference's own size rounded down to the VAE factor, as the official pipeline; a reference smaller than
        # the UNet's size multiple (which the official pipeline cannot encode) is resized to the output size.
        ref_h, ref_w = (n - n % self.vae_scale_factor for n in _image_hw(images[0]))
        if min(ref_h, ref_w) < self.size_multiple:
            logger.warning(
                f"The reference image ({ref_h}x{ref_w}) is smaller than the UNet's size multiple "
                f"{self.size_multiple}; it is resized to the output size {height}x{width}."
            )
            ref_h, ref_w = height, width
        pixels = self.image_processor.preprocess(images, height=ref_h, width=ref_w)
        ref_latents = self._encode_vae(pixels, generator)
        if ref_latents.shape[0] == 1:
            ref_latents = ref_latents.repeat(samples, 1, 1, 1)
        else:
            ref_latents = ref_latents.repeat_interleave(num_images_per_prompt, dim=0)
        embeds, added = text["pos"]
        embeds = embeds[::views]
        added = {k: v[::views] for k, v in added.items()} if added is not None else None
        if image_embeds is not None:
            added = {**(added or {}), "image_embeds": image_embeds}
        ref_latents = ref_latents.to(dtype=embeds.dtype)
        state = self._require_adapter().state
        cache: dict[str, torch.Tensor] = {}
        with state.override(caching=True, cache=cache, num_views=1):
            self.unet(
                ref_latents,
                torch.zeros((), device=ref_latents.device, dtype=torch.long),
                encoder_hidden_states=embeds,
                cross_attention_kwargs=cross_attention_kwargs,
                added_cond_kwargs=added,
                return_dict=False,
            )
        return cache


def __getattr__(name: str):
    # ``from pipelines.pipeline_mv_adapter import MVAdapterPipeline`` keeps working; the factory lives in
    # auto_pipeline, which imports the SD / SDXL variants (and they import this module): imported lazily.
    if name == "MVAdapterPipeline":
        from .auto_pipeline import MVAdapterPipeline

        return MVAdapterPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
