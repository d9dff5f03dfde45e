"""MV-Adapter on Stable Diffusion 1.x / 2.x (official weights: ``mvadapter_{t2mv,i2mv,tg2mv,ig2mv}_sd21``)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from .pipeline_mv_adapter import MVAdapterPipelineMixin, MVAdapterPipelineOutput, make_multiview_grid

__all__ = ["MVAdapterPipelineOutput", "MVAdapterSDPipeline", "make_multiview_grid"]


class MVAdapterSDPipeline(MVAdapterPipelineMixin, StableDiffusionPipeline):
    r"""Text / image / geometry to multi-view images with MV-Adapter on an SD 1.x/2.x base.

    Components are those of :class:`~diffusers.StableDiffusionPipeline`; the adapter (attention branches inside the
    UNet's ``attn1`` processors and the condition encoder) is ``pipe.mv_adapter``. See
    :meth:`MVAdapterPipelineMixin.__call__` for the call arguments.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

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
        pooled = [k for k in (embeds or {}) if "pooled" in k]
        if pooled:
            raise ValueError(f"`{pooled[0]}` is for SDXL bases; SD 1.x / 2.x text encoders have no pooled output.")
        pos, neg = self.encode_prompt(
            prompt,
            device,
            repeat,
            need_negative,
            negative_prompt=negative_prompt,
            prompt_embeds=(embeds or {}).get("prompt_embeds"),
            negative_prompt_embeds=(embeds or {}).get("negative_prompt_embeds"),
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
        out: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor] | None]] = {"pos": (pos, None)}
        if need_negative:
            out["neg"] = (neg, None)
        return out
