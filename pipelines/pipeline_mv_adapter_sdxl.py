"""MV-Adapter on Stable Diffusion XL (official weights: ``mvadapter_{t2mv,i2mv,tg2mv,ig2mv}_sdxl``)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from .pipeline_mv_adapter import MVAdapterPipelineMixin, MVAdapterPipelineOutput, make_multiview_grid

__all__ = ["MVAdapterPipelineOutput", "MVAdapterXLPipeline", "make_multiview_grid"]


class MVAdapterXLPipeline(MVAdapterPipelineMixin, StableDiffusionXLPipeline):
    r"""Text / image / geometry to multi-view images with MV-Adapter on an SDXL base.

    Components are those of :class:`~diffusers.StableDiffusionXLPipeline`; the adapter is ``pipe.mv_adapter``. The
    default size is 768 for a full-size SDXL UNet (the official inference size), else the UNet's native size.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def _default_size(self) -> int:
        if int(self.unet.config.sample_size) == 128:
            return 768
        return super()._default_size()

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
        embeds = embeds or {}
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            pooled_name = name.replace("prompt_embeds", "pooled_prompt_embeds")
            if name in embeds and pooled_name not in embeds:
                raise ValueError(f"With `{name}` on SDXL, pass `{pooled_name}` too (both from `encode_prompt`).")
        pos, neg, pooled, neg_pooled = self.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=repeat,
            do_classifier_free_guidance=need_negative,
            negative_prompt=negative_prompt,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
            **embeds,
        )
        if self.text_encoder_2 is None:
            projection_dim = int(pooled.shape[-1])
        else:
            projection_dim = self.text_encoder_2.config.projection_dim
        time_ids = self._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=pos.dtype, text_encoder_projection_dim=projection_dim
        ).to(device)
        time_ids = time_ids.repeat(pos.shape[0], 1)
        out = {"pos": (pos, {"text_embeds": pooled.to(device), "time_ids": time_ids})}
        if need_negative:
            out["neg"] = (neg, {"text_embeds": neg_pooled.to(device), "time_ids": time_ids})
        return out
