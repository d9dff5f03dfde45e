"""HiPA one-step text-to-image pipelines (SD 1.5 / 2.1 and SDXL), also running LCM / TCD / Lightning / Hyper-SD LoRAs.

One-step sampling (the default ``preset="hipa"``): the latents start as pure noise ``x_T`` and the UNet (base + HiPA
LoRA) is evaluated once at the last training timestep ``T - 1``; the image is the closed-form x0 estimate from its
output (epsilon or v prediction, see :func:`adapters.hipa.one_step.predict_x0`). With ``num_inference_steps`` 2-4 the
``hipa`` preset runs DDIM on trailing timesteps. The other presets (:mod:`adapters.hipa.presets`) swap in the
scheduler a few-step LoRA was distilled for.

Example::

    pipe = HiPAPipeline.from_pretrained("path/to/sd15", hipa_lora="path/to/hipa_lora")
    image = pipe("a red cube on a table").images[0]             # one step
    pipe.load_hipa_lora("path/to/lcm_lora", adapter_name="lcm")   # any diffusers LoRA
    image = pipe("a red cube on a table", preset="lcm").images[0]

:class:`HiPAPipeline` (the factory picking :class:`HiPASDPipeline` or :class:`HiPAXLPipeline`) lives in
:mod:`pipelines.auto_pipeline`; importing it from here still works.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.utils import logging

from adapters.deprecation import deprecated_name
from adapters.hipa.loader import (
    DEFAULT_ADAPTER_NAME,
    fuse_hipa_lora,
    load_hipa_lora,
    set_hipa_lora_scale,
    unfuse_hipa_lora,
    unload_hipa_lora,
)
from adapters.hipa.loader import _current_weight as _lora_weight
from adapters.hipa.one_step import is_one_step_scheduler, one_step_scheduler
from adapters.hipa.presets import FewStepPreset, get_preset, make_scheduler

from .checks import check_finite, check_negative_prompt, check_size, check_steps, validate_numbers
from .ip_adapter import check_ip_adapter_inputs, ip_adapter_embeds_per_sample

logger = logging.get_logger(__name__)

__all__ = ["HIPA_LORA_SUBFOLDER", "HiPASDPipeline", "HiPAXLPipeline", "HiPAPipelineMixin"]

#: ``save_pretrained`` writes the UNet's LoRAs here (one folder per adapter name, diffusers' LoRA format, plus
#: ``adapters.json`` with their weights), beside the plain base; ``from_pretrained`` of the folder loads them back.
HIPA_LORA_SUBFOLDER = "hipa_lora"
_LORAS_INDEX = "adapters.json"


def _unmerged_qkv_loras(unet: torch.nn.Module) -> list[str]:
    """Paths of ``to_q`` / ``to_k`` / ``to_v`` layers holding an active LoRA not merged into their weights."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no LoRA layers
        return []
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, BaseTunerLayer)
        and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
        and not module.merged
        and not module.disable_adapters
    ]


def _restoring_scheduler(call: Callable) -> Callable:
    """``pipe.scheduler`` after a call is the one before it (a preset given to the call runs on its own scheduler)."""

    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        own = self.scheduler
        try:
            return call(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "scheduler", own)

    return wrapper


class HiPAPipelineMixin:
    """Preset handling, LoRA loading and the one-step / few-step sampling loop shared by the SD and SDXL variants."""

    _hipa_preset: FewStepPreset | None = None
    _hipa_preset_scheduler: Any = None
    _hipa_base_scheduler_config: dict | None = None

    # ------------------------------------------------------------------ presets and LoRAs

    @property
    def preset(self) -> FewStepPreset | None:
        """The preset last applied with :meth:`set_preset` (``None`` before the first call)."""
        return self._hipa_preset

    def set_preset(self, preset: str | FewStepPreset) -> FewStepPreset:
        """Swap in the preset's scheduler, built from the base model's scheduler config (keeps the noise schedule
        and ``prediction_type``). Later calls use the preset's steps and guidance unless given explicitly, and its
        step range while ``pipe.scheduler`` is that scheduler (a scheduler swapped in afterwards is used as given)."""
        preset = get_preset(preset) if isinstance(preset, str) else preset
        self.scheduler = self._preset_scheduler(preset)
        self._hipa_preset = preset
        self._hipa_preset_scheduler = self.scheduler
        return preset

    def _preset_scheduler(self, preset: FewStepPreset):
        """A new scheduler of ``preset``'s kind from the base model's scheduler config."""
        if self._hipa_base_scheduler_config is None:
            self._hipa_base_scheduler_config = dict(self.scheduler.config)
        return make_scheduler(preset, self._hipa_base_scheduler_config)

    @validate_numbers
    def load_hipa_lora(
        self,
        pretrained: str | os.PathLike | dict[str, torch.Tensor],
        *,
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        scale: float = 1.0,
        weight_name: str | None = None,
    ) -> str:
        """Validate and load a diffusers-format LoRA (HiPA, LCM-LoRA, TCD, Hyper-SD, Lightning) with ``scale``.

        The file is checked against the UNet before anything changes; a bad file raises
        :class:`adapters.weights.AdapterWeightsError` and leaves the pipeline as it was.
        """
        return load_hipa_lora(self, pretrained, adapter_name=adapter_name, scale=scale, weight_name=weight_name)

    @validate_numbers
    def set_hipa_lora_scale(self, scale: float, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        """Set the weight of a loaded LoRA (``0`` = off); the other loaded LoRAs keep theirs."""
        set_hipa_lora_scale(self, scale, adapter_name=adapter_name)

    @validate_numbers
    def set_hipa_scale(self, scale: float, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        """Deprecated: :meth:`set_hipa_lora_scale`."""
        deprecated_name("set_hipa_scale", "set_hipa_lora_scale", stacklevel=5)
        set_hipa_lora_scale(self, scale, adapter_name=adapter_name)

    def fuse_hipa_lora(self, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        """Merge the LoRA, at its current weight, into the UNet's weights (diffusers' ``fuse_lora`` for that LoRA)."""
        fuse_hipa_lora(self, adapter_name=adapter_name)

    def unfuse_hipa_lora(self) -> None:
        """Undo :meth:`fuse_hipa_lora` (to float tolerance); the LoRAs stay loaded."""
        unfuse_hipa_lora(self)

    def unload_hipa_lora(self, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        """Remove the LoRA; when it was the last one, the pipeline is bit for bit as before loading (a fused LoRA is
        refused: :meth:`unfuse_hipa_lora` first)."""
        unload_hipa_lora(self, adapter_name=adapter_name)

    # ------------------------------------------------------------------ saving / loading with the base
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained`` of the plain base (a LoRA never goes into the saved UNet) plus every UNet
        LoRA in ``hipa_lora/<adapter name>/`` with its weight; :meth:`from_pretrained` of the folder loads them back.

        Raises:
            ValueError: a LoRA fused into the weights (``unfuse_lora()`` first) or one on a text encoder.
        """
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import get_peft_model_state_dict

        names = list(getattr(self.unet, "peft_config", None) or {})
        if not names:
            return super().save_pretrained(save_directory, *args, **kwargs)
        if any(isinstance(m, BaseTunerLayer) and m.merged for m in self.unet.modules()):
            raise ValueError("A LoRA is fused into the UNet's weights: call `pipe.unfuse_lora()` before saving.")
        for encoder in ("text_encoder", "text_encoder_2"):
            if getattr(getattr(self, encoder, None), "peft_config", None):
                raise ValueError(f"`save_pretrained` saves UNet LoRAs only; unload the LoRA on `{encoder}` first.")
        index = {
            "weights": {name: _lora_weight(self.unet, name) for name in names},
            "active": list(self.get_active_adapters()),
        }
        folder = Path(save_directory) / HIPA_LORA_SUBFOLDER
        for name in names:
            config = {
                k: sorted(v) if isinstance(v, set) else v for k, v in self.unet.peft_config[name].to_dict().items()
            }
            type(self).save_lora_weights(
                folder / name,
                unet_lora_layers=get_peft_model_state_dict(self.unet, adapter_name=name),
                unet_lora_adapter_metadata=config,
            )
        (folder / _LORAS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        self.unload_lora_weights()
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self._load_saved_loras(folder)

    def _load_saved_loras(self, folder: Path) -> None:
        index = json.loads((folder / _LORAS_INDEX).read_text())
        for name, weight in index["weights"].items():
            load_hipa_lora(self, folder / name, adapter_name=name, scale=weight, check_family=False)
        active = index["active"]
        self.set_adapters(active, adapter_weights=[index["weights"][name] for name in active])

    @classmethod
    @validate_numbers
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args,
        hipa_lora: str | os.PathLike | dict | None = None,
        hipa_lora_scale: float = 1.0,
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        **kwargs,
    ):
        """diffusers' ``from_pretrained``; the LoRAs :meth:`save_pretrained` wrote beside the base are loaded back
        (same names, weights and active set), then ``hipa_lora`` (a HiPA or other few-step LoRA: file, folder or
        state dict) if given, as ``adapter_name`` with weight ``hipa_lora_scale``."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        folder = Path(str(pretrained_model_name_or_path)) / HIPA_LORA_SUBFOLDER
        if (folder / _LORAS_INDEX).is_file():
            pipe._load_saved_loras(folder)
        if hipa_lora is not None:
            pipe.load_hipa_lora(hipa_lora, adapter_name=adapter_name, scale=hipa_lora_scale)
        return pipe

    def fuse_qkv_projections(self, *args, **kwargs) -> None:
        """diffusers' fused QKV projections; refused while a LoRA is loaded on the attention projections and not
        fused into them (the fused projection would drop it): call ``pipe.fuse_lora()`` first.

        Raises:
            ValueError: an unmerged LoRA on ``to_q`` / ``to_k`` / ``to_v``.
        """
        unet = kwargs.get("unet", args[0] if args else True)
        if unet:
            names = _unmerged_qkv_loras(self.unet)
            if names:
                raise ValueError(
                    f"`fuse_qkv_projections()` would drop the LoRA on {len(names)} attention projections (e.g. "
                    f"{names[0]!r}): call `pipe.fuse_lora()` first, or unload the LoRA."
                )
        super().fuse_qkv_projections(*args, **kwargs)

    # ------------------------------------------------------------------ the call: a preset on diffusers' own __call__

    _hipa_ip_layout: tuple[int, int, torch.dtype] | None = None

    def _resolve_preset(self, preset: str | FewStepPreset | None) -> tuple[FewStepPreset, bool]:
        """The preset giving this call's defaults and whether its step range applies; puts the call's scheduler on
        ``self.scheduler`` for the call (:func:`_restoring_scheduler` puts the pipeline's own back afterwards).

        * ``preset`` given: that preset with a scheduler of its kind built for this call (``pipe.scheduler`` is not
          replaced) and its step range;
        * else, ``pipe.scheduler`` is the one :meth:`set_preset` installed: that preset and its step range;
        * else (a scheduler the user swapped in, or the pipeline's own before any preset): that scheduler as given,
          any step count >= 1, defaults from the last preset (``"hipa"`` before any).
        """
        if preset is not None:
            preset = get_preset(preset) if isinstance(preset, str) else preset
            if not (preset == self._hipa_preset and self.scheduler is self._hipa_preset_scheduler):
                object.__setattr__(self, "scheduler", self._preset_scheduler(preset))
            return preset, True
        if self._hipa_preset is not None and self.scheduler is self._hipa_preset_scheduler:
            return self._hipa_preset, True
        return self._hipa_preset or get_preset("hipa"), False

    @staticmethod
    def _preset_defaults(
        preset: FewStepPreset, num_inference_steps: int | None, guidance_scale: float | None, eta: float | None
    ) -> tuple[int, float, float]:
        """``(num_inference_steps, guidance_scale, eta)``: the call's values, the preset's where ``None``."""
        return (
            preset.num_inference_steps if num_inference_steps is None else num_inference_steps,
            preset.guidance_scale if guidance_scale is None else float(guidance_scale),
            preset.eta if eta is None else float(eta),
        )

    def _use_one_step_scheduler(self, preset: FewStepPreset, num_inference_steps: int) -> None:
        """One step of a one-step preset (``hipa``) is the closed-form x0 at ``T - 1`` on any ``pipe.scheduler`` (the
        pipeline's own, or one swapped in): the call runs on :func:`adapters.hipa.one_step.one_step_scheduler` built
        from its config, unless it is such a scheduler already (the preset's own)."""
        if preset.one_step_x0 and num_inference_steps == 1 and not is_one_step_scheduler(self.scheduler):
            object.__setattr__(self, "scheduler", one_step_scheduler(self.scheduler.config))

    def _check_hipa_inputs(
        self,
        preset: FewStepPreset,
        num_inference_steps: int,
        guidance_scale: float,
        eta: float,
        height,
        width,
        *,
        prompt=None,
        negative_prompt=None,
        latents: torch.Tensor | None = None,
        preset_steps: bool = True,
    ) -> None:
        """The preset's step range (any count >= 1 with ``preset_steps=False``), guidance >= 0, eta in [0, 1], sizes
        (ints, multiples of 8, <= 4096), a ``negative_prompt`` list with one entry per prompt and finite ``latents``
        (see :mod:`pipelines.checks`). diffusers' own ``check_inputs`` runs after these, in its ``__call__``."""
        if preset_steps:
            check_steps(
                num_inference_steps,
                minimum=preset.min_steps,
                maximum=preset.max_steps,
                context=f" for preset {preset.name!r}",
            )
        else:
            check_steps(num_inference_steps)
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0 (<= 1 disables guidance), got {guidance_scale}.")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"`eta` must be in [0, 1], got {eta}.")
        for name, value in (("height", height), ("width", width)):
            check_size(name, value, multiple=8)
        check_negative_prompt(prompt, negative_prompt)
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise TypeError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}.")
        check_finite("latents", latents)

    @staticmethod
    def _batch_size(prompt, prompt_embeds) -> int:
        """Number of prompts of a call (as diffusers counts them)."""
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list):
            return len(prompt)
        if isinstance(prompt_embeds, torch.Tensor):
            return int(prompt_embeds.shape[0])
        return 1

    def _check_ip_adapter(
        self, prompt, prompt_embeds, ip_adapter_image, ip_adapter_image_embeds, num_images_per_prompt, guidance_scale
    ) -> None:
        """The IP-Adapter checks of :func:`pipelines.ip_adapter.check_ip_adapter_inputs` for this call's batch."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return
        do_cfg = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        check_ip_adapter_inputs(
            self, ip_adapter_image, ip_adapter_image_embeds, batch_size=self._batch_size(prompt, prompt_embeds),
            num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=do_cfg,
        )  # fmt: skip

    @contextlib.contextmanager
    def _ip_adapter_layout(self, prompt, prompt_embeds, num_images_per_prompt: int):
        """Within a call: the batch layout :meth:`prepare_ip_adapter_image_embeds` expands embeddings to."""
        self._hipa_ip_layout = (self._batch_size(prompt, prompt_embeds), num_images_per_prompt, self.unet.dtype)
        try:
            yield
        finally:
            self._hipa_ip_layout = None

    def prepare_ip_adapter_image_embeds(
        self, ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_classifier_free_guidance
    ):
        """diffusers' own, except within a call: there embeddings given one per prompt or one per sample are laid out
        one row per sample (negatives first under guidance; :func:`pipelines.ip_adapter.ip_adapter_embeds_per_sample`)
        in the UNet's dtype. diffusers repeats every given row once per sample, which is right only for one row
        (``tests/test_hipa_stock_call.py::test_ip_adapter_embeds``)."""
        layout, self._hipa_ip_layout = self._hipa_ip_layout, None  # the helper below calls diffusers' own via this
        if layout is None:
            return super().prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_classifier_free_guidance
            )
        batch_size, per_prompt, dtype = layout
        negative, positive = ip_adapter_embeds_per_sample(
            self, ip_adapter_image, ip_adapter_image_embeds, device=device, dtype=dtype, batch_size=batch_size,
            num_images_per_prompt=per_prompt, do_classifier_free_guidance=do_classifier_free_guidance,
        )  # fmt: skip
        if negative is None:
            return positive
        return [torch.cat([neg, pos]) for neg, pos in zip(negative, positive)]


class HiPASDPipeline(HiPAPipelineMixin, StableDiffusionPipeline):
    r"""One-step (HiPA) and few-step (LCM / TCD / Lightning / Hyper-SD LoRA) text-to-image for SD 1.x / 2.x.

    Same components as [`StableDiffusionPipeline`]; a call never replaces ``pipe.scheduler``.
    Works with epsilon- and v-prediction bases.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    @validate_numbers
    @_restoring_scheduler
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        preset: str | FewStepPreset | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        r"""Generate images in one step (default) or a few steps: diffusers' [`StableDiffusionPipeline`] call on the
        preset's scheduler, with the preset's defaults and HiPA's input checks first
        (``tests/test_hipa_stock_call.py`` compares the two calls bitwise).

        Args:
            prompt: prompt(s); or pass `prompt_embeds` ``(B, 77, D)``.
            height, width: image size in pixels (multiples of 8); default from the UNet's `sample_size`.
            num_inference_steps: steps; default from the preset (1 for ``hipa``), range per preset.
            guidance_scale: classifier-free guidance; default from the preset (1 = off); > 1 enables it.
            negative_prompt: used only with guidance.
            eta: ``scheduler.step`` eta (TCD's gamma); default from the preset.
            generator, latents: noise control; `latents` is ``(B, 4, height / f, width / f)``.
            ip_adapter_image: image(s) for the IP-Adapter(s) loaded with ``load_ip_adapter`` (one per IP-Adapter).
            ip_adapter_image_embeds: precomputed image embeddings instead: a list with one tensor per IP-Adapter,
                ``(B, num_images, D)`` (or ``(B, num_images, tokens, D)`` for IP-Adapter Plus), ``B`` = 1, one per
                prompt or one per sample; under guidance ``2 * B`` rows, negatives first (what
                ``prepare_ip_adapter_image_embeds(..., do_classifier_free_guidance=True)`` returns).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (values in [0, 1]) or ``"latent"``.
            cross_attention_kwargs: forwarded to the UNet (``{"scale": s}`` scales all LoRAs).
            preset: ``"hipa"``, ``"lcm"``, ``"tcd"``, ``"lightning"`` or ``"hyper-sd"``; ``None`` keeps the last
                applied one (``"hipa"`` defaults before any). A preset given here runs on a scheduler of its kind for
                this call only; ``pipe.scheduler`` is never replaced by a call (use :meth:`set_preset` for that).
                Without one, a scheduler swapped into ``pipe.scheduler`` is used as given, with any step count >= 1
                (one ``hipa`` step is always the x0 prediction at ``T - 1``).
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in diffusers (under guidance
                ``prompt_embeds`` holds the negative rows first, as diffusers passes it).

        Returns:
            [`StableDiffusionPipelineOutput`] or a tuple ``(images, nsfw_content_detected)``.
        """
        # 0. Preset (its scheduler for this call) and its defaults
        preset, preset_steps = self._resolve_preset(preset)
        num_inference_steps, guidance_scale, eta = self._preset_defaults(
            preset, num_inference_steps, guidance_scale, eta
        )
        native = self.unet.config.sample_size * self.vae_scale_factor
        height = native if height is None else height  # 0 is refused (validate_numbers), never replaced
        width = native if width is None else width

        # 1. HiPA's checks (diffusers' own follow in its call)
        self._check_hipa_inputs(
            preset, num_inference_steps, guidance_scale, eta, height, width,
            prompt=prompt, negative_prompt=negative_prompt, latents=latents, preset_steps=preset_steps,
        )  # fmt: skip
        self._check_ip_adapter(
            prompt, prompt_embeds, ip_adapter_image, ip_adapter_image_embeds, num_images_per_prompt, guidance_scale
        )
        self._use_one_step_scheduler(preset, num_inference_steps)

        # 2. diffusers' call
        with self._ip_adapter_layout(prompt, prompt_embeds, num_images_per_prompt):
            return super().__call__(
                prompt=prompt,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                negative_prompt=negative_prompt,
                num_images_per_prompt=num_images_per_prompt,
                eta=eta,
                generator=generator,
                latents=latents,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                ip_adapter_image=ip_adapter_image,
                ip_adapter_image_embeds=ip_adapter_image_embeds,
                output_type=output_type,
                return_dict=return_dict,
                cross_attention_kwargs=cross_attention_kwargs,
                clip_skip=clip_skip,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=(
                    ["latents"] if callback_on_step_end_tensor_inputs is None else callback_on_step_end_tensor_inputs
                ),
            )


class HiPAXLPipeline(HiPAPipelineMixin, StableDiffusionXLPipeline):
    r"""One-step (HiPA) and few-step (LCM / TCD / Lightning / Hyper-SD LoRA) text-to-image for SDXL.

    Same components as [`StableDiffusionXLPipeline`]; a call never replaces ``pipe.scheduler``.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _callback_tensor_inputs = [
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "add_text_embeds",
        "add_time_ids",
    ]

    @validate_numbers
    @_restoring_scheduler
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        preset: str | FewStepPreset | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        r"""Generate SDXL images in one step (default) or a few steps: diffusers' [`StableDiffusionXLPipeline`] call
        on the preset's scheduler, with the preset's defaults and HiPA's input checks first
        (``tests/test_hipa_stock_call.py`` compares the two calls bitwise).

        Args are those of :meth:`HiPASDPipeline.__call__` (``ip_adapter_image`` / ``ip_adapter_image_embeds`` included)
        plus SDXL's `prompt_2`, `negative_prompt_2`, pooled embeddings ``(B, D_pool)`` and micro-conditioning
        (`original_size`, `crops_coords_top_left`, `target_size`).

        Returns:
            [`StableDiffusionXLPipelineOutput`] or a tuple ``(images,)``.
        """
        # 0. Preset (its scheduler for this call) and its defaults
        preset, preset_steps = self._resolve_preset(preset)
        num_inference_steps, guidance_scale, eta = self._preset_defaults(
            preset, num_inference_steps, guidance_scale, eta
        )
        native = self.default_sample_size * self.vae_scale_factor
        height = native if height is None else height  # 0 is refused (validate_numbers), never replaced
        width = native if width is None else width

        # 1. HiPA's checks (diffusers' own follow in its call)
        self._check_ip_adapter(
            prompt, prompt_embeds, ip_adapter_image, ip_adapter_image_embeds, num_images_per_prompt, guidance_scale
        )
        self._check_hipa_inputs(
            preset, num_inference_steps, guidance_scale, eta, height, width,
            prompt=prompt, negative_prompt=negative_prompt, latents=latents, preset_steps=preset_steps,
        )  # fmt: skip
        check_negative_prompt(
            prompt_2 if prompt_2 is not None else prompt, negative_prompt_2, name="negative_prompt_2"
        )
        self._use_one_step_scheduler(preset, num_inference_steps)

        # 2. diffusers' call
        with self._ip_adapter_layout(prompt, prompt_embeds, num_images_per_prompt):
            return super().__call__(
                prompt=prompt,
                prompt_2=prompt_2,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                negative_prompt=negative_prompt,
                negative_prompt_2=negative_prompt_2,
                num_images_per_prompt=num_images_per_prompt,
                eta=eta,
                generator=generator,
                latents=latents,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                ip_adapter_image=ip_adapter_image,
                ip_adapter_image_embeds=ip_adapter_image_embeds,
                output_type=output_type,
                return_dict=return_dict,
                cross_attention_kwargs=cross_attention_kwargs,
                original_size=original_size,
                crops_coords_top_left=crops_coords_top_left,
                target_size=target_size,
                clip_skip=clip_skip,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=(
                    ["latents"] if callback_on_step_end_tensor_inputs is None else callback_on_step_end_tensor_inputs
                ),
            )


def __getattr__(name: str):
    # ``from pipelines.pipeline_hipa import HiPAPipeline`` keeps working; the factory lives in auto_pipeline (which
    # imports this module, hence the lazy import).
    if name == "HiPAPipeline":
        from .auto_pipeline import HiPAPipeline

        return HiPAPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
