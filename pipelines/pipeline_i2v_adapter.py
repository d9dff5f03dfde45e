"""``I2VAdapterPipeline``: image-to-video on AnimateDiff with I2V-Adapter (arXiv 2312.16693).

Extends diffusers' ``AnimateDiffPipeline`` (an SD 1.5-family base + ``MotionAdapter`` -> ``UNetMotionModel``):

* the input image's latent is frame 0 and stays clean: it is put back into the latents before every UNet call and
  after every scheduler step (before ``callback_on_step_end``, whose returned latents are used as they are), and the
  UNet sees it unscaled;
* the UNet's spatial self-attention layers carry I2V-Adapter's first-frame attention (``load_i2v_adapter``);
* the later frames can start from the Frame Similarity Prior instead of pure noise (``similarity_prior``);
* optional content adapter (IP-Adapter-style image tokens, fed with the input image automatically);
* optional per-frame ``ControlNetModel`` / ``MultiControlNetModel`` (``conditioning_frames``), or SparseCtrl's
  ``SparseControlNetModel`` (a few ``conditioning_frames`` at ``controlnet_frame_indices``).

Everything else is AnimateDiff's: ``enable_model_cpu_offload``, ``enable_vae_slicing``, LoRAs
(``load_lora_weights``), ``load_ip_adapter``, schedulers, ``callback_on_step_end``, ``output_type``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    ControlNetModel,
    MotionAdapter,
    SchedulerMixin,
    SparseControlNetModel,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models import MultiControlNetModel
from diffusers.pipelines.animatediff.pipeline_output import AnimateDiffPipelineOutput
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import is_compiled_module
from diffusers.video_processor import VideoProcessor
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from adapters.i2v_adapter import (
    I2VAdapter,
    SimilarityPrior,
    apply_similarity_prior,
    get_i2v_adapter,
    load_i2v_adapter,
)
from adapters.i2v_adapter.first_frame import first_frame_latents, insert_first_frame
from adapters.i2v_adapter.recipe import color_match_video
from adapters.i2v_adapter.release import I2VRelease, ReleaseReport, check_against, read_ip_adapter_file, read_release

from .checks import (
    DEFAULT_MAX_NUM_FRAMES,
    NUMBER_RULES,
    check_count,
    check_finite,
    check_image_input,
    check_number,
    check_size,
    check_steps,
    validate_numbers,
)

logger = logging.get_logger(__name__)

I2V_ADAPTER_WEIGHTS_NAME = "i2v_adapter.safetensors"

__all__ = ["I2VAdapterPipeline", "export_to_gif", "export_to_video", "load_video_frames"]

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import MotionAdapter
        >>> from diffusers.utils import load_image
        >>> from pipelines import I2VAdapterPipeline
        >>> from pipelines.pipeline_i2v_adapter import export_to_gif

        >>> motion = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2")
        >>> pipe = I2VAdapterPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", motion_adapter=motion, i2v_adapter="i2v.safetensors"
        ... )
        >>> frames = pipe(image=load_image("cat.png"), prompt="a cat turning its head", num_frames=16).frames[0]
        >>> export_to_gif(frames, "cat.gif")
        ```
"""


class I2VAdapterPipeline(AnimateDiffPipeline):
    r"""Image-to-video generation with I2V-Adapter on an AnimateDiff ``UNetMotionModel``.

    Args:
        vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor, image_encoder:
            as in ``AnimateDiffPipeline`` (``unet`` may be a ``UNet2DConditionModel``; it is combined with
            ``motion_adapter`` into a ``UNetMotionModel``).
        controlnet: optional per-frame ``ControlNetModel`` (or a list / ``MultiControlNetModel``), or a
            ``SparseControlNetModel`` (SparseCtrl) for conditions on a few frames.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["feature_extractor", "image_encoder", "motion_adapter", "controlnet"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel | UNetMotionModel,
        motion_adapter: MotionAdapter | None,
        scheduler: SchedulerMixin,
        feature_extractor: CLIPImageProcessor | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        controlnet: ControlNetModel | MultiControlNetModel | SparseControlNetModel | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            motion_adapter=motion_adapter,
            scheduler=scheduler,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        self.register_modules(controlnet=controlnet)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        self.control_video_processor = VideoProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> I2VAdapterPipeline:
        """``DiffusionPipeline.from_pretrained`` plus:

        Args:
            motion_adapter: a ``MotionAdapter`` or a folder / hub id of one.
            i2v_adapter: path (or state dict) of an I2V-Adapter file to load, or ``"fresh"`` for a new zero adapter.
            i2v_adapter_scale: its scale (default 1.0).
        """
        i2v_adapter = kwargs.pop("i2v_adapter", None)
        i2v_scale = kwargs.pop("i2v_adapter_scale", 1.0)
        check_number("i2v_adapter_scale", i2v_scale, NUMBER_RULES["i2v_adapter_scale"])  # before loading
        motion = kwargs.get("motion_adapter")
        if isinstance(motion, (str, os.PathLike)):
            dtype_kw = {k: kwargs[k] for k in ("dtype", "torch_dtype") if k in kwargs}  # whichever the caller uses
            kwargs["motion_adapter"] = MotionAdapter.from_pretrained(motion, **dtype_kw)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        saved = Path(pretrained_model_name_or_path) / I2V_ADAPTER_WEIGHTS_NAME
        if i2v_adapter is None and saved.is_file():  # written by save_pretrained
            i2v_adapter = saved
        if isinstance(i2v_adapter, str) and i2v_adapter == "fresh":
            pipe.init_i2v_adapter(scale=i2v_scale)
        elif i2v_adapter is not None:
            pipe.load_i2v_adapter(i2v_adapter, scale=i2v_scale)
        return pipe

    @classmethod
    def from_authors_release(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        release: str | os.PathLike | Mapping[str, torch.Tensor] | I2VRelease,
        *,
        ip_adapter: str | os.PathLike | Mapping,
        allow_pickle: bool = False,
        use_release_unet: bool = False,
        first_frame_query: str = "to_q",
        i2v_adapter_scale: float = 1.0,
        **kwargs,
    ) -> I2VAdapterPipeline:
        """A ready pipeline from the authors' whole-UNet release (``animatediff_v15_v1_ipplus.pth``).

        >>> pipe = I2VAdapterPipeline.from_authors_release(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ...     "animatediff_v15_v1_ipplus.pth",  # space-xun/i2v_adapter
        ...     ip_adapter="IP-Adapter/models/ip-adapter-plus_sd15.bin",  # h94/IP-Adapter
        ...     image_encoder=CLIPVisionModelWithProjection.from_pretrained("h94/IP-Adapter", subfolder="models/image_encoder"),
        ...     allow_pickle=True,
        ... )
        >>> pipe.scheduler = authors_scheduler()  # adapters.i2v_adapter.recipe
        >>> frames = pipe(image=image, prompt=prompt, **AUTHORS_RECIPE).frames[0]

        The motion modules become a diffusers ``MotionAdapter`` (the ``UNetMotionModel`` is built on the base), the
        first-frame projections our I2V-Adapter, the IP-Adapter-Plus branches (with the resampler from
        ``ip_adapter``) its content adapter; see :mod:`adapters.i2v_adapter.release`. The report of what was found
        is ``pipe.authors_release_report``.

        Args:
            pretrained_model_name_or_path: the SD 1.5 base (folder or hub id).
            release: the ``.pth`` (pickle: needs ``allow_pickle=True``, read with ``weights_only=True``), a
                safetensors / state dict with the same keys, or an :class:`~adapters.i2v_adapter.release.I2VRelease`.
            ip_adapter: ``h94/IP-Adapter`` ``ip-adapter-plus_sd15`` file (``.bin`` needs ``allow_pickle``) or its state
                dict; its ``image_proj`` is the content adapter's resampler.
            allow_pickle: allow pickle files.
            use_release_unet: load the release's spatial UNet over the base's (reported either way when they differ).
            first_frame_query: ``"to_q"`` (the authors' loader: ``W_q'`` = ``to_q``) or ``"file"`` (``to_q_ff``).
            i2v_adapter_scale: first-frame attention scale.
            **kwargs: ``from_pretrained`` arguments (``image_encoder``, ``torch_dtype``, ...).
        """
        if not isinstance(release, I2VRelease):
            release = read_release(release, allow_pickle=allow_pickle)
        kwargs["motion_adapter"] = release.motion_adapter()
        pipe = cls.from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe.authors_release_report = pipe.load_authors_release(
            release,
            ip_adapter=ip_adapter,
            allow_pickle=allow_pickle,
            use_release_unet=use_release_unet,
            first_frame_query=first_frame_query,
            scale=i2v_adapter_scale,
        )
        return pipe

    def load_authors_release(
        self,
        release: str | os.PathLike | Mapping[str, torch.Tensor] | I2VRelease,
        *,
        ip_adapter: str | os.PathLike | Mapping,
        allow_pickle: bool = False,
        use_release_unet: bool = False,
        first_frame_query: str = "to_q",
        scale: float = 1.0,
    ) -> ReleaseReport:
        """Load the authors' release into this pipeline's ``UNetMotionModel`` (see :meth:`from_authors_release`).

        Every part is validated first (spatial UNet, motion modules, first-frame projections, IP branches and the
        IP-Adapter file: missing, unexpected and wrong-shape keys listed by name in one ``AdapterWeightsError``); on
        any error the pipeline is unchanged. The motion modules are copied into the UNet; the I2V-Adapter (with its
        content adapter) replaces any loaded one; the spatial UNet is copied only with ``use_release_unet``.

        Returns:
            A :class:`~adapters.i2v_adapter.release.ReleaseReport` (spatial differences from the base, ...).
        """
        if first_frame_query not in ("to_q", "file"):
            raise ValueError(f"`first_frame_query` must be 'to_q' or 'file', got {first_frame_query!r}.")
        if not isinstance(release, I2VRelease):
            release = read_release(release, allow_pickle=allow_pickle)
        image_proj, ip_branches = read_ip_adapter_file(ip_adapter, allow_pickle=allow_pickle)
        if self.image_encoder is None:
            raise ValueError(
                "The release's content adapter needs the IP-Adapter-Plus image encoder: pass `image_encoder` "
                "(CLIPVisionModelWithProjection, h94/IP-Adapter models/image_encoder)."
            )
        unet = self.unet
        differs, max_diff, ip_differs = check_against(release, unet, ip_branches)
        i2v = release.i2v_state_dict(unet, image_proj, first_frame_query=first_frame_query)
        load_i2v_adapter(unet, i2v, scale=scale)  # validates everything it needs before touching the UNet
        if self.feature_extractor is None:  # the authors' inference.py: CLIPImageProcessor() (224 px centre crop)
            self.register_modules(feature_extractor=CLIPImageProcessor())
        own = unet.state_dict()
        with torch.no_grad():
            for key, value in release.motion.items():
                own[key].copy_(value)
            if use_release_unet:
                for key in differs:
                    own[key].copy_(release.spatial[key])
        if differs:
            logger.warning(
                "The release's spatial UNet differs from the base in %d of %d tensors (max |diff| %.3g); %s.",
                len(differs),
                len(release.spatial),
                max_diff,
                "the release's was loaded" if use_release_unet else "pass use_release_unet=True to use it",
            )
        query_differs = release.query_differs()
        if query_differs:
            logger.info(
                "%d attn1.to_q_ff in the release differ from attn1.to_q; using %s (first_frame_query=%r).",
                len(query_differs),
                "to_q as the authors' loader does" if first_frame_query == "to_q" else "the file's to_q_ff",
                first_frame_query,
            )
        if ip_differs:
            logger.info(
                "%d to_{k,v}_ip of the IP-Adapter file differ from the release's; the release's are used (as the "
                "authors' code does).",
                len(ip_differs),
            )
        return ReleaseReport(differs, max_diff, use_release_unet, first_frame_query, query_differs, ip_differs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained`` of the plain components (the UNet is saved without the adapter), plus the
        I2V-Adapter as ``i2v_adapter.safetensors`` beside them; ``from_pretrained`` of the folder loads it back."""
        adapter = self.i2v_adapter
        if adapter is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        with adapter.detached():
            super().save_pretrained(save_directory, *args, **kwargs)
        adapter.save(Path(save_directory) / I2V_ADAPTER_WEIGHTS_NAME)

    @property
    def i2v_adapter(self) -> I2VAdapter | None:
        """The attached :class:`~adapters.i2v_adapter.I2VAdapter` (``None`` when none is loaded)."""
        return get_i2v_adapter(self.unet)

    @validate_numbers
    def load_i2v_adapter(
        self,
        weights: str | os.PathLike | Mapping[str, torch.Tensor],
        *,
        scale: float = 1.0,
        content_scale: float = 1.0,
        allow_pickle: bool = False,
    ) -> I2VAdapter:
        """Load an I2V-Adapter file (ours or the authors' layout) into the UNet, replacing any loaded one.

        The file is validated completely first; on any error (``AdapterWeightsError``) the pipeline is unchanged.
        """
        adapter = load_i2v_adapter(
            self.unet, weights, scale=scale, content_scale=content_scale, allow_pickle=allow_pickle
        )
        if adapter.content is not None and self.image_encoder is None:
            logger.warning(
                "The I2V-Adapter file has a content adapter, which needs a CLIP `image_encoder` "
                "(CLIPVisionModelWithProjection) in the pipeline; pass one to from_pretrained."
            )
        return adapter

    @validate_numbers
    def init_i2v_adapter(
        self, *, scale: float = 1.0, content: bool = False, content_num_tokens: int = 4
    ) -> I2VAdapter:
        """Attach a fresh (zero-output) I2V-Adapter, e.g. to train it; ``content=True`` adds a content adapter sized
        for ``self.image_encoder``."""
        current = self.i2v_adapter
        if current is not None:
            current.unload()
        embed_dim = None
        if content:
            if self.image_encoder is None:
                raise ValueError("`content=True` needs an `image_encoder` (CLIPVisionModelWithProjection).")
            embed_dim = self.image_encoder.config.projection_dim
        return I2VAdapter.attach(
            self.unet, scale=scale, content_image_embed_dim=embed_dim, content_num_tokens=content_num_tokens
        )

    @validate_numbers
    def set_i2v_adapter_scale(self, scale: float) -> None:
        """Scale of the first-frame attention (0 = plain AnimateDiff UNet)."""
        if self.i2v_adapter is None:
            raise ValueError("No I2V-Adapter is loaded; call `load_i2v_adapter` first.")
        self.i2v_adapter.set_scale(scale)

    def unload_i2v_adapter(self) -> None:
        """Remove the I2V-Adapter (and its content adapter); the UNet is restored bit-identically."""
        if self.i2v_adapter is not None:
            self.i2v_adapter.unload()

    def save_i2v_adapter(self, path: str | os.PathLike) -> None:
        """Save the loaded I2V-Adapter to a safetensors file."""
        if self.i2v_adapter is None:
            raise ValueError("No I2V-Adapter is loaded.")
        self.i2v_adapter.save(path)

    def load_ip_adapter(self, *args, **kwargs):
        """diffusers' ``load_ip_adapter``, keeping the I2V first-frame processors in place."""
        adapter = self.i2v_adapter
        if adapter is None:
            return super().load_ip_adapter(*args, **kwargs)
        if adapter.content is not None:
            raise ValueError("The loaded I2V-Adapter has its own content adapter; unload it before an IP-Adapter.")
        with adapter.suspended():
            return super().load_ip_adapter(*args, **kwargs)

    def unload_ip_adapter(self):
        """diffusers' ``unload_ip_adapter``, keeping the I2V first-frame processors in place."""
        adapter = self.i2v_adapter
        if adapter is None:
            return super().unload_ip_adapter()
        if adapter.content is not None:
            adapter.content.unload()
            adapter.content = None
            return None
        with adapter.suspended():
            return super().unload_ip_adapter()

    def _keeping_i2v_processors(self, method, *args, **kwargs):
        adapter = self.i2v_adapter
        if adapter is None:
            return method(*args, **kwargs)
        with adapter.suspended():
            return method(*args, **kwargs)

    def enable_xformers_memory_efficient_attention(self, *args, **kwargs):
        """diffusers' method; the I2V processors stay and wrap the new xformers self-attention."""
        return self._keeping_i2v_processors(super().enable_xformers_memory_efficient_attention, *args, **kwargs)

    def disable_xformers_memory_efficient_attention(self, *args, **kwargs):
        """diffusers' method; the I2V processors stay."""
        return self._keeping_i2v_processors(super().disable_xformers_memory_efficient_attention, *args, **kwargs)

    def fuse_qkv_projections(self, *args, **kwargs):
        """diffusers' method; the I2V processors stay and wrap the fused self-attention."""
        return self._keeping_i2v_processors(super().fuse_qkv_projections, *args, **kwargs)

    def unfuse_qkv_projections(self, *args, **kwargs):
        """diffusers' method; the I2V processors stay."""
        return self._keeping_i2v_processors(super().unfuse_qkv_projections, *args, **kwargs)

    def enable_vae_slicing(self) -> None:
        """Decode the frames of a chunk one at a time (``vae.enable_slicing()``; the pipeline-level helper was removed
        from recent diffusers). Frames are also decoded in chunks of ``decode_chunk_size``."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        """Undo :meth:`enable_vae_slicing`."""
        self.vae.disable_slicing()

    # ------------------------------------------------------------------------------------------------ inputs
    @property
    def max_num_frames(self) -> int:
        """Most frames one video may have: the motion modules' positional-embedding length
        (``unet.config.motion_max_seq_length``, 32 in AnimateDiff's releases), else
        :data:`pipelines.checks.DEFAULT_MAX_NUM_FRAMES`."""
        config = getattr(self.unet, "config", None)
        value = getattr(config, "motion_max_seq_length", None) if config is not None else None
        return int(value) if value else DEFAULT_MAX_NUM_FRAMES

    def check_inputs(self, prompt, height, width, *args, **kwargs):
        """diffusers' AnimateDiff checks, after the size checks (ints, multiples of the VAE factor, <= 4096), so a
        wrong type gets a message naming the argument instead of a bare comparison error."""
        for name, value in (("height", height), ("width", width)):
            check_size(name, value, multiple=self.vae_scale_factor, allow_none=False)
        super().check_inputs(prompt, height, width, *args, **kwargs)

    def check_i2v_inputs(
        self,
        image,
        num_frames,
        height,
        width,
        num_inference_steps,
        adapter_scale,
        conditioning_frames,
        batch_size,
        controlnet_frame_indices=None,
        *,
        latents: torch.Tensor | None = None,
    ) -> None:
        """Checks specific to image-to-video; each error names the argument and the allowed values.

        Limits: ``1 <= num_frames <= max_num_frames`` (32 for AnimateDiff's motion modules), ``height`` / ``width``
        multiples of the VAE factor (8) up to :data:`pipelines.checks.MAX_IMAGE_SIDE` (4096),
        ``num_inference_steps >= 1``; ``image`` a PIL image / array / tensor (or a list of them) without NaN / inf;
        ``latents`` finite.
        """
        check_image_input("image", image)
        check_count(
            "num_frames",
            num_frames,
            maximum=self.max_num_frames,
            why=" (`max_num_frames`: the motion modules' positional embedding length)",
        )
        check_steps(num_inference_steps)
        for name, value in (("height", height), ("width", width)):
            check_size(name, value, multiple=self.vae_scale_factor, allow_none=False)
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise TypeError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}.")
        check_finite("latents", latents)
        if adapter_scale is not None:
            if not isinstance(adapter_scale, (int, float)) or adapter_scale < 0:
                raise ValueError(f"`adapter_scale` must be a float >= 0, got {adapter_scale!r}.")
            if self.i2v_adapter is None:
                raise ValueError("`adapter_scale` was given but no I2V-Adapter is loaded (`load_i2v_adapter`).")
        n_images = len(image) if isinstance(image, list) else (image.shape[0] if getattr(image, "ndim", 3) == 4 else 1)
        if n_images not in (1, batch_size):
            raise ValueError(f"`image` must hold 1 or {batch_size} (= prompts) images, got {n_images}.")
        if conditioning_frames is not None:
            if self.controlnet is None:
                raise ValueError("`conditioning_frames` needs a pipeline built with a `controlnet`.")
            if isinstance(self.controlnet, SparseControlNetModel):
                frames = (
                    conditioning_frames if isinstance(conditioning_frames, (list, tuple)) else [conditioning_frames]
                )
                indices = controlnet_frame_indices or list(range(len(frames)))
                if not 1 <= len(frames) <= num_frames:
                    raise ValueError(f"`conditioning_frames` must hold 1 to `num_frames` = {num_frames} images.")
                if len(indices) != len(frames) or not all(0 <= int(i) < num_frames for i in indices):
                    raise ValueError(
                        f"`controlnet_frame_indices` must give one index in [0, {num_frames}) per conditioning "
                        f"frame ({len(frames)}), got {indices!r}."
                    )
                return
            nets = self.controlnet.nets if isinstance(self.controlnet, MultiControlNetModel) else [self.controlnet]
            per_net = conditioning_frames if len(nets) > 1 else [conditioning_frames]
            if len(per_net) != len(nets):
                raise ValueError(
                    f"`conditioning_frames` must be a list of {len(nets)} frame lists (one per ControlNet)."
                )
            for frames in per_net:
                if not isinstance(frames, (list, tuple)) or len(frames) != num_frames:
                    got = len(frames) if isinstance(frames, (list, tuple)) else type(frames).__name__
                    raise ValueError(f"`conditioning_frames` must hold `num_frames` = {num_frames} frames, got {got}.")

    def prepare_image_latents(
        self,
        image: PipelineImageInput,
        height: int,
        width: int,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The input image's clean latent (VAE posterior mean, scaled), ``(batch_size, C, height/f, width/f)``.

        Deterministic (no sampling), so the same image always gives the same first frame.
        """
        pixels = self.image_processor.preprocess(_to_rgb(image), height=height, width=width)
        pixels = pixels.to(device=device, dtype=self.vae.dtype)
        latents = first_frame_latents(self.vae.encode(pixels).latent_dist, self.vae.config.scaling_factor)
        if latents.shape[0] == 1 and batch_size > 1:
            latents = latents.repeat(batch_size, 1, 1, 1)
        return latents.to(dtype)

    def _prepare_control_frames(self, conditioning_frames, width, height, batch_size, device, dtype, cfg):
        def one(frames):
            video = self.control_video_processor.preprocess_video(frames, height=height, width=width)
            video = video.to(dtype=torch.float32).permute(0, 2, 1, 3, 4).flatten(0, 1)  # (F, 3, H, W)
            video = video.repeat(batch_size, 1, 1, 1).to(device=device, dtype=dtype)
            return torch.cat([video] * 2) if cfg else video

        if isinstance(self.controlnet, MultiControlNetModel):
            return [one(frames) for frames in conditioning_frames]
        return one(conditioning_frames)

    def _prepare_sparse_control(
        self, conditioning_frames, indices, width, height, batch_size, num_frames, device, dtype, cfg
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SparseCtrl condition ``(B', C, F, h, w)`` (zeros except at ``indices``) and mask ``(B', 1, F, h, w)``."""
        frames = conditioning_frames if isinstance(conditioning_frames, (list, tuple)) else [conditioning_frames]
        images = self.control_image_processor.preprocess(list(frames), height=height, width=width)  # (K, 3, H, W)
        images = images.to(device=device, dtype=self.vae.dtype)
        if self.controlnet.config.use_simplified_condition_embedding:
            images = self.vae.encode(2 * images - 1).latent_dist.mode() * self.vae.config.scaling_factor
        cond = torch.zeros((1, images.shape[1], num_frames, *images.shape[2:]), device=device, dtype=dtype)
        mask = torch.zeros((1, 1, num_frames, *images.shape[2:]), device=device, dtype=dtype)
        index = torch.as_tensor(list(indices), device=device, dtype=torch.long)
        cond[:, :, index] = images.to(dtype).permute(1, 0, 2, 3).unsqueeze(0)
        mask[:, :, index] = 1
        reps = batch_size * (2 if cfg else 1)
        return cond.repeat(reps, 1, 1, 1, 1), mask.repeat(reps, 1, 1, 1, 1)

    # ------------------------------------------------------------------------------------------------ call
    @validate_numbers
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PipelineImageInput = None,
        prompt: str | list[str] | None = None,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        adapter_scale: float | None = None,
        similarity_prior: SimilarityPrior | tuple[float, float] | dict | float | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        conditioning_frames: list[PipelineImageInput] | None = None,
        controlnet_frame_indices: list[int] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float | list[float] = 0.0,
        control_guidance_end: float | list[float] = 1.0,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[Any, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers convention)
        decode_chunk_size: int = 16,
        color_match: bool = False,
    ) -> AnimateDiffPipelineOutput | tuple:
        r"""Animate ``image``.

        Args:
            image: the first frame (PIL image, ``np.ndarray`` HWC in [0, 1], or tensor ``(B, 3, H, W)`` in [0, 1]).
            prompt: text prompt(s); or pass ``prompt_embeds``.
            num_frames: frames to generate, including the input frame (1 to :attr:`max_num_frames`, 32 for
                AnimateDiff's motion modules).
            height, width: output size in pixels (multiples of 8 up to 4096; default: the image's size, rounded down).
            num_inference_steps: denoising steps (the prior may skip the first ones).
            guidance_scale: classifier-free guidance weight (> 1 enables it).
            negative_prompt: negative prompt(s).
            adapter_scale: first-frame attention scale for this call (default: the adapter's current scale).
            similarity_prior: Frame Similarity Prior as ``(strength, start)``, a ``SimilarityPrior``, a dict or a
                bare strength; ``None`` or strength 0 = plain noise initialisation.
            eta: DDIM eta.
            generator: torch generator(s) for the noise.
            latents: pre-generated noise ``(B, C, num_frames, H/f, W/f)`` (frame 0 is replaced by the image latent).
            prompt_embeds, negative_prompt_embeds: pre-computed text embeddings.
            ip_adapter_image, ip_adapter_image_embeds: IP-Adapter / content adapter inputs (the content adapter uses
                ``image`` when neither is given).
            conditioning_frames: per-frame control images (``num_frames`` of them; a list of such lists for
                several ControlNets); needs a pipeline with a ``controlnet``. With a ``SparseControlNetModel``:
                a few images, placed at ``controlnet_frame_indices``.
            controlnet_frame_indices: frames the sparse conditions belong to (default ``0, 1, ...``).
            controlnet_conditioning_scale, control_guidance_start, control_guidance_end: as in diffusers'
                ControlNet pipelines.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return an ``AnimateDiffPipelineOutput`` (``.frames``) instead of a tuple.
            cross_attention_kwargs: passed to the attention processors (e.g. LoRA ``scale``).
            clip_skip: CLIP layers to skip.
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after each step.
            callback_on_step_end_tensor_inputs: tensors given to the callback (from ``_callback_tensor_inputs``).
            decode_chunk_size: frames decoded per VAE call.
            color_match: match the a/b LAB histograms of frames 1.. to frame 0 after decoding (the authors'
                post-process, :func:`adapters.i2v_adapter.recipe.color_match_video`); not with ``output_type="latent"``.

        Returns:
            ``AnimateDiffPipelineOutput`` with ``frames``: a list (per video) of PIL lists, or an array/tensor
            ``(B, F, H, W, 3)`` / ``(B, F, 3, H, W)``.

        Examples:
        """
        # 0. Default height and width to the image's size
        check_image_input("image", image)
        if height is None or width is None:
            if image is not None:
                h0, w0 = self.image_processor.get_default_height_width(image[0] if isinstance(image, list) else image)
                h0, w0 = h0 - h0 % 8, w0 - w0 % 8
            else:
                h0 = w0 = self.unet.config.sample_size * self.vae_scale_factor
            height = height or h0
            width = width or w0

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            height,
            width,
            None,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            ip_adapter_image,
            ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs,
        )
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        self.check_i2v_inputs(
            image,
            num_frames,
            height,
            width,
            num_inference_steps,
            adapter_scale,
            conditioning_frames,
            batch_size,
            controlnet_frame_indices,
            latents=latents,
        )
        prior = SimilarityPrior.coerce(similarity_prior)
        if color_match and output_type == "latent":
            raise ValueError(
                "`color_match=True` works on decoded frames; it cannot be used with output_type='latent'."
            )
        if self.free_noise_enabled:
            raise ValueError("FreeNoise is not supported by I2VAdapterPipeline; call `disable_free_noise()`.")

        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        device = self._execution_device
        num_videos_per_prompt = 1
        adapter = self.i2v_adapter
        if adapter is None and not getattr(self, "_warned_no_adapter", False):
            logger.warning("No I2V-Adapter loaded: only the clean first frame conditions the video.")
            self._warned_no_adapter = True
        previous_scale = adapter.scale if adapter is not None else None
        controlnet = None
        if conditioning_frames is not None:
            controlnet = self.controlnet._orig_mod if is_compiled_module(self.controlnet) else self.controlnet

        # 3. Encode input prompt
        lora_scale = cross_attention_kwargs.get("scale", None) if cross_attention_kwargs is not None else None
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_videos_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        prompt_embeds = prompt_embeds.repeat_interleave(repeats=num_frames, dim=0)

        # 4. Image embeddings for the content adapter / IP-Adapter
        added_cond_kwargs = None
        if getattr(self.unet, "encoder_hid_proj", None) is not None:
            if ip_adapter_image is None and ip_adapter_image_embeds is None:
                if self.image_encoder is None:
                    raise ValueError(
                        "The content adapter / IP-Adapter needs an `image_encoder`, or pass `ip_adapter_image_embeds`."
                    )
                ip_adapter_image = image
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                batch_size * num_videos_per_prompt,
                self.do_classifier_free_guidance,
            )
            added_cond_kwargs = {"image_embeds": image_embeds}

        # 5. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 6. Prepare latent variables: noise, the Frame Similarity Prior, the clean first frame
        num_channels_latents = self.unet.config.in_channels
        image_latents = self.prepare_image_latents(
            image, height, width, batch_size * num_videos_per_prompt, device, prompt_embeds.dtype
        )
        latents = self.prepare_latents(
            batch_size * num_videos_per_prompt,
            num_channels_latents,
            num_frames,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        latents, timesteps = apply_similarity_prior(
            self.scheduler, latents, image_latents, timesteps, prior, generator=generator
        )
        latents = insert_first_frame(latents, image_latents)

        # 7. Prepare extra step kwargs and ControlNet inputs
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        controlnet_keep = []
        if controlnet is not None:
            nets = controlnet.nets if isinstance(controlnet, MultiControlNetModel) else [controlnet]
            starts = control_guidance_start if isinstance(control_guidance_start, list) else [control_guidance_start]
            ends = control_guidance_end if isinstance(control_guidance_end, list) else [control_guidance_end]
            starts, ends = starts * (len(nets) // len(starts)), ends * (len(nets) // len(ends))
            if isinstance(controlnet, MultiControlNetModel) and isinstance(controlnet_conditioning_scale, float):
                controlnet_conditioning_scale = [controlnet_conditioning_scale] * len(nets)
            if isinstance(controlnet, SparseControlNetModel):
                n_cond = len(conditioning_frames) if isinstance(conditioning_frames, (list, tuple)) else 1
                sparse_cond, sparse_mask = self._prepare_sparse_control(
                    conditioning_frames,
                    controlnet_frame_indices or list(range(n_cond)),
                    width,
                    height,
                    batch_size * num_videos_per_prompt,
                    num_frames,
                    device,
                    controlnet.dtype,
                    self.do_classifier_free_guidance,
                )
            else:
                control_frames = self._prepare_control_frames(
                    conditioning_frames,
                    width,
                    height,
                    batch_size * num_videos_per_prompt,
                    device,
                    controlnet.dtype,
                    self.do_classifier_free_guidance,
                )
            for i in range(len(timesteps)):
                keeps = [
                    1.0 - float(i / len(timesteps) < s or (i + 1) / len(timesteps) > e) for s, e in zip(starts, ends)
                ]
                controlnet_keep.append(keeps if isinstance(controlnet, MultiControlNetModel) else keeps[0])

        if adapter is not None and adapter_scale is not None:
            adapter.set_scale(adapter_scale)
        self._num_timesteps = len(timesteps)
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        num_warmup_steps = max(num_warmup_steps, 0)

        # 8. Denoising loop
        try:
            with self.progress_bar(total=len(timesteps)) as progress_bar:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                    latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                    # the first frame enters the UNet clean and unscaled, whatever the scheduler's input scaling
                    latent_model_input = insert_first_frame(latent_model_input, image_latents)

                    down_res = mid_res = None
                    if controlnet is not None:
                        keep, scales = controlnet_keep[i], controlnet_conditioning_scale
                        cond_scale: float | list[float]
                        if isinstance(keep, list):
                            scales = scales if isinstance(scales, list) else [scales] * len(keep)
                            cond_scale = [c * s for c, s in zip(scales, keep)]
                        else:
                            cond_scale = (scales[0] if isinstance(scales, list) else scales) * keep
                        if isinstance(controlnet, SparseControlNetModel):
                            down_res, mid_res = controlnet(
                                latent_model_input,
                                t,
                                encoder_hidden_states=prompt_embeds,
                                controlnet_cond=sparse_cond,
                                conditioning_mask=sparse_mask,
                                conditioning_scale=cond_scale,
                                guess_mode=False,
                                return_dict=False,
                            )
                        else:
                            control_input = latent_model_input.transpose(1, 2)
                            control_input = control_input.reshape((-1,) + control_input.shape[2:])
                            down_res, mid_res = controlnet(
                                control_input,
                                t,
                                encoder_hidden_states=prompt_embeds,
                                controlnet_cond=control_frames,
                                conditioning_scale=cond_scale,
                                guess_mode=False,
                                return_dict=False,
                            )

                    noise_pred = self.unet(
                        latent_model_input,
                        t,
                        encoder_hidden_states=prompt_embeds,
                        cross_attention_kwargs=cross_attention_kwargs,
                        added_cond_kwargs=added_cond_kwargs,
                        down_block_additional_residuals=down_res,
                        mid_block_additional_residual=mid_res,
                    ).sample

                    if self.do_classifier_free_guidance:
                        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                        noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)

                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
                    latents = insert_first_frame(latents, image_latents)  # re-insert the clean first frame

                    if callback_on_step_end is not None:
                        callback_kwargs = {}
                        for k in callback_on_step_end_tensor_inputs:
                            callback_kwargs[k] = locals()[k]
                        callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                        # what the callback returns is used as is (the clean first frame was put back above; the
                        # UNet input gets it again at the next step)
                        latents = callback_outputs.pop("latents", latents)
                        prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

                    if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                        progress_bar.update()
        finally:
            if adapter is not None and adapter_scale is not None:
                adapter.set_scale(previous_scale)

        # 9. Post processing
        if output_type == "latent":
            video = latents
        else:
            video_tensor = self.decode_latents(latents, decode_chunk_size)
            if color_match:
                video_tensor = _color_match(video_tensor)
            video = self.video_processor.postprocess_video(video=video_tensor, output_type=output_type)

        # 10. Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (video,)
        return AnimateDiffPipelineOutput(frames=video)


def _color_match(video: torch.Tensor) -> torch.Tensor:
    """:func:`~adapters.i2v_adapter.recipe.color_match_video` on decoded videos ``(B, 3, F, H, W)`` in ``[-1, 1]``;
    same shape, dtype and device out (frame 0 only clamped)."""
    frames = (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).cpu().numpy()  # (B, F, H, W, 3)
    matched = np.stack([color_match_video(v) for v in frames])
    out = torch.from_numpy(matched).to(device=video.device, dtype=torch.float32).permute(0, 4, 1, 2, 3)
    return (out * 2 - 1).to(video.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# video files
# ----------------------------------------------------------------------------------------------------------------------


def _to_rgb(image: PipelineImageInput) -> PipelineImageInput:
    """PIL images in any mode (L, LA, P, RGBA, CMYK, 16-bit ``I;16`` / ``I``) as 8-bit RGB; other inputs unchanged."""
    if isinstance(image, list):
        return [_to_rgb(im) for im in image]
    if not isinstance(image, PIL.Image.Image) or image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # 16/32-bit integer: rescale to 8 bits before converting
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = PIL.Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _frames_to_uint8(frames) -> list[np.ndarray]:
    """PIL list, ``(F, H, W, 3)`` array/tensor in [0, 1] (or uint8), or ``(F, 3, H, W)`` tensor -> uint8 HWC list."""
    if isinstance(frames, torch.Tensor):
        arr = frames.detach().cpu().float()
        if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.permute(0, 2, 3, 1)
        frames = arr.numpy()
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"`frames` as an array must be (num_frames, H, W, 3), got shape {frames.shape}.")
        frames = list(frames)
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise ValueError("`frames` must be a non-empty list of PIL images or arrays.")
    out = []
    for frame in frames:
        if isinstance(frame, PIL.Image.Image):
            arr = np.asarray(frame.convert("RGB"))
        else:
            arr = np.asarray(frame)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
            if arr.ndim == 2:
                arr = np.stack([arr] * 3, axis=-1)
        out.append(arr)
    return out


def export_to_video(frames, output_path: str | os.PathLike, fps: int = 8, quality: float = 9.0) -> str:
    """Write frames to an mp4 with ``diffusers.utils.export_to_video`` (H.264 via ``imageio-ffmpeg``; install the
    ``video`` extra), accepting every frame type the pipeline returns and sizes of any parity.

    Args:
        frames: a list of PIL images, an array ``(F, H, W, 3)`` in [0, 1] or uint8, or a tensor.
        output_path: the ``.mp4`` path (its folder is created).
        fps: frames per second.
        quality: imageio-ffmpeg quality (0-10).

    Returns:
        The path written.
    """
    from diffusers.utils import export_to_video as diffusers_export_to_video
    from diffusers.utils.import_utils import is_imageio_available

    if not is_imageio_available():  # diffusers would fall back to OpenCV with a warning; ask for the extra instead
        raise ImportError("mp4 export needs `imageio` and `imageio-ffmpeg`: pip install 'diffusion-adapters[video]'")
    arrays = _frames_to_uint8(frames)
    h, w = arrays[0].shape[:2]
    if h % 2 or w % 2:  # H.264 with yuv420p needs even sizes: repeat the last row / column
        arrays = [np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for a in arrays]
    output_path = str(output_path)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    images = [PIL.Image.fromarray(a) for a in arrays]
    return diffusers_export_to_video(images, output_path, fps=fps, quality=quality, macro_block_size=1)


def export_to_gif(frames, output_path: str | os.PathLike, fps: int = 8) -> str:
    """Write frames to a looping animated GIF with ``diffusers.utils.export_to_gif`` (PIL, no extra dependency).
    Same ``frames`` types as :func:`export_to_video`; the folder of ``output_path`` is created."""
    from diffusers.utils import export_to_gif as diffusers_export_to_gif

    images = [PIL.Image.fromarray(a) for a in _frames_to_uint8(frames)]
    output_path = str(output_path)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    return diffusers_export_to_gif(images, output_path, fps=fps)


def load_video_frames(path: str | os.PathLike) -> list[PIL.Image.Image]:
    """Read an mp4/gif (or any format imageio reads) into RGB PIL frames (``diffusers.utils.load_video``)."""
    from diffusers.utils import load_video

    return load_video(str(path), convert_method=lambda frames: [frame.convert("RGB") for frame in frames])
