"""Random-initialised bases for :mod:`benchmarks.gpu`: full-size (published configs) or the tiny test models.

The full-size configurations are the published ``config.json`` values of SD 1.5
(``stable-diffusion-v1-5/stable-diffusion-v1-5``), SDXL (``stabilityai/stable-diffusion-xl-base-1.0``) and the
AnimateDiff motion adapter (``guoyww/animatediff-motion-adapter-v1-5-2``); nothing is downloaded. Full-size modules
are built directly on the target device (random initialisation on a GPU takes seconds) and then cast. Timing and
memory do not depend on the weights' values. The tokenizers are the tiny test tokenizer (ids below CLIP's 49408).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "ANIMATEDIFF_MOTION_ADAPTER_CONFIG",
    "CLIP_L_TEXT_CONFIG",
    "OPENCLIP_BIGG_TEXT_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "SDXL_UNET_CONFIG",
    "SDXL_VAE_CONFIG",
    "SIZES",
    "build_components",
    "module_bytes",
]

#: ``stable-diffusion-v1-5/stable-diffusion-v1-5`` ``unet/config.json``.
SD15_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}

#: ``stabilityai/stable-diffusion-xl-base-1.0`` ``unet/config.json``.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": (5, 10, 20),
    "block_out_channels": (320, 640, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": (1, 2, 10),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "use_linear_projection": True,
}

_VAE_COMMON: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
#: SD 1.5 ``vae/config.json``.
SD15_VAE_CONFIG: dict[str, Any] = {**_VAE_COMMON, "sample_size": 512, "scaling_factor": 0.18215}
#: SDXL base ``vae/config.json`` (``force_upcast``: the pipelines decode in float32, as with the real VAE).
SDXL_VAE_CONFIG: dict[str, Any] = {
    **_VAE_COMMON,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

#: CLIP ViT-L/14 text tower (SD 1.5 ``text_encoder``, SDXL ``text_encoder``).
CLIP_L_TEXT_CONFIG: dict[str, Any] = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}
#: OpenCLIP ViT-bigG/14 text tower (SDXL ``text_encoder_2``, with projection).
OPENCLIP_BIGG_TEXT_CONFIG: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 77,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "vocab_size": 49408,
}

#: ``guoyww/animatediff-motion-adapter-v1-5-2`` ``config.json``.
ANIMATEDIFF_MOTION_ADAPTER_CONFIG: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1,
    "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
}

#: Output sizes per benchmark (pixels, frames, views): the issue's full sizes, and the tiny test models' own size.
SIZES: dict[str, dict[str, int]] = {
    "full": {"sd15": 512, "sdxl": 1024, "mv": 768, "i2v": 512, "frames": 16, "views": 6},
    "tiny": {"sd15": 32, "sdxl": 32, "mv": 32, "i2v": 16, "frames": 8, "views": 6},
}


def _scheduler(config: dict[str, Any]):
    import diffusers

    config = dict(config)
    return getattr(diffusers, config.pop("_class_name")).from_config(config)


def _text_encoder(config: dict[str, Any], tokenizer, *, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**config, **ids))


def _full(base: str, device: str) -> dict[str, Any]:
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel

    from pipelines import testing as tm

    xl = base == "sdxl"
    tokenizer = tm.build_tokenizer()
    out: dict[str, Any] = {"tokenizer": tokenizer, "feature_extractor": None, "image_encoder": None}
    if xl:
        out["tokenizer_2"] = tm.build_tokenizer(pad_token="!")
        out["scheduler"] = _scheduler(tm.SDXL_SCHEDULER_CONFIG)
    elif base == "animatediff":
        out["scheduler"] = _scheduler(tm.ANIMATEDIFF_SCHEDULER_CONFIG)
    else:
        out["scheduler"] = _scheduler(tm.SD15_SCHEDULER_CONFIG)
        out["safety_checker"] = None
    torch.manual_seed(0)  # seeds the CUDA generators too
    with torch.device(device):  # only the modules: initialised on the device (seconds on a GPU, not minutes)
        out["unet"] = UNet2DConditionModel(**(SDXL_UNET_CONFIG if xl else SD15_UNET_CONFIG))
        out["vae"] = AutoencoderKL(**(SDXL_VAE_CONFIG if xl else SD15_VAE_CONFIG))
        out["text_encoder"] = _text_encoder(CLIP_L_TEXT_CONFIG, tokenizer)
        if xl:
            out["text_encoder_2"] = _text_encoder(OPENCLIP_BIGG_TEXT_CONFIG, out["tokenizer_2"], projection=True)
        if base == "animatediff":
            out["motion_adapter"] = MotionAdapter(**ANIMATEDIFF_MOTION_ADAPTER_CONFIG)
    return out


def _tiny(base: str) -> dict[str, Any]:
    from pipelines import testing as tm

    if base == "sdxl":
        return tm.build_sdxl_components()
    if base == "animatediff":
        return tm.build_animatediff_components()
    return tm.build_sd15_components()


def build_components(base: str, size: str, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Pipeline components of ``base`` (``"sd15"``, ``"sdxl"`` or ``"animatediff"``: SD 1.5 + motion adapter).

    ``size="full"``: the published architectures, random weights, built on ``device``; ``"tiny"``: the tiny test
    models. Modules are in eval mode, on ``device``, in ``dtype``.
    """
    if base not in ("sd15", "sdxl", "animatediff"):
        raise ValueError(f"`base` must be 'sd15', 'sdxl' or 'animatediff', got {base!r}.")
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {sorted(SIZES)}, got {size!r}.")
    components = _full(base, device) if size == "full" else _tiny(base)
    for value in components.values():
        if isinstance(value, torch.nn.Module):
            value.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return components


def module_bytes(*modules: torch.nn.Module | None) -> int:
    """Bytes of the distinct parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for tensor in (*module.parameters(), *module.buffers()):
            key = tensor.data_ptr()
            if key in seen or tensor.device.type == "meta":
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
