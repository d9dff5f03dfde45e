"""Offline tiny diffusion models for tests and benchmarks (``from pipelines.testing import tiny_sd15_path``).

Every model here is built from a config in this file (no hub access, ever), is tiny but structurally faithful to the
real checkpoint it stands in for, and is saved with ``save_pretrained`` in the exact on-disk layout of a hub
repository (``model_index.json`` + ``unet/`` ``vae/`` ``text_encoder/`` ``tokenizer/`` ``scheduler/`` ...), so the code
path every test exercises is ``from_pretrained(local_dir)``:

>>> from diffusers import StableDiffusionPipeline
>>> pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_path())
>>> pipe("a red cube", num_inference_steps=2, height=32, width=32).images[0].size
(32, 32)

Families (all VAEs have a scale factor of 2: a 32x32 image is a 4x16x16 latent):

=========== ========================= ================== ============= ===================================
name        stands in for             UNet channels      cross-attn    notes
=========== ========================= ================== ============= ===================================
sd15        SD 1.5                    (32, 32, 64), x4   32            epsilon, PNDM, conv proj-in
sd21        SD 2.1 (768-v)            (32, 32, 64), x4   64            v-prediction, DDIM, linear proj
sdxl        SDXL base 1.0             (32, 64, 64), x4   96 = 32 + 64  text_time, pooled 32, Euler
animatediff SD 1.5 + MotionAdapter    (32, 32, 64), x4   32            ``motion_adapter/`` subfolder, DDIM
=========== ========================= ================== ============= ===================================

Also: ``tiny_t2i_adapter_path(kind)``, ``tiny_controlnet_path(base)``, ``tiny_ip_adapter_path()`` (h94 layout with
an image encoder), ``tiny_motion_unet()``, ``make_pipeline(name)``, the ``build_*`` in-memory builders and the
module-level configs (``SD15_UNET_CONFIG`` ...).

"x4" is the UNet's own down-sampling factor (two ``Downsample2D``), so images must be multiples of 8 pixels.

Builds are deterministic (``torch.manual_seed(0)`` before each component, inside ``torch.random.fork_rng`` so the
caller's RNG is untouched) and cached in ``$DIFFUSION_ADAPTERS_TINY_CACHE`` or
``<tempdir>/diffusion-adapters-tiny/<name>-<hash of configs + library versions>``; folders are written atomically
(built in a temporary sibling, then ``os.replace``), so concurrent processes may share the cache.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipelines.utils import (
    BOS_TOKEN,
    EOS_TOKEN,
    clip_bpe,
    clip_tokenizer,
    motion_adapter_config,
    write_clip_tokenizer_files,
)

__all__ = [
    "randomise_",
    "ANIMATEDIFF_SCHEDULER_CONFIG",
    "CACHE_ENV",
    "CONTROLNET_CONDITIONING_EMBEDDING_CHANNELS",
    "IMAGE_ENCODER_CONFIG",
    "IP_ADAPTER_NUM_TOKENS",
    "IP_ADAPTER_WEIGHTS",
    "MOTION_ADAPTER_CONFIG",
    "PIPELINE_NAMES",
    "SD15_SCHEDULER_CONFIG",
    "SD15_TEXT_ENCODER_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "SD21_SCHEDULER_CONFIG",
    "SD21_TEXT_ENCODER_CONFIG",
    "SD21_UNET_CONFIG",
    "SD21_VAE_CONFIG",
    "SDXL_SCHEDULER_CONFIG",
    "SDXL_TEXT_ENCODER_2_CONFIG",
    "SDXL_TEXT_ENCODER_CONFIG",
    "SDXL_UNET_CONFIG",
    "SDXL_VAE_CONFIG",
    "T2I_ADAPTER_CONFIGS",
    "TINY_MODELS_FORMAT_VERSION",
    "TOKENIZER_MODEL_MAX_LENGTH",
    "TOKENIZER_VOCAB_SIZE",
    "UNET_CONFIGS",
    "UNET_DOWNSAMPLE_FACTOR",
    "VAE_SCALE_FACTOR",
    "build_animatediff_components",
    "build_controlnet",
    "build_image_encoder",
    "build_ip_adapter_state_dict",
    "build_motion_adapter",
    "build_sd15_components",
    "build_sd21_components",
    "build_sdxl_components",
    "build_t2i_adapter",
    "build_tokenizer",
    "cache_root",
    "copy_config",
    "make_pipeline",
    "save_tiny_model",
    "tiny_animatediff_path",
    "tiny_controlnet_path",
    "tiny_ip_adapter_path",
    "tiny_motion_unet",
    "tiny_sd15_path",
    "tiny_sd21_path",
    "tiny_sdxl_path",
    "tiny_t2i_adapter_path",
    "tiny_tokenizer_files",
]

#: Bump when the build code changes in a way the configs do not capture (invalidates every cached folder).
TINY_MODELS_FORMAT_VERSION = 2
#: Environment variable that overrides the cache root.
CACHE_ENV = "DIFFUSION_ADAPTERS_TINY_CACHE"

#: Every tiny VAE has ``block_out_channels`` of length 2: latents are half the image size.
VAE_SCALE_FACTOR = 2
#: Every tiny UNet has three down blocks, i.e. two ``Downsample2D``: latents must be multiples of 4.
UNET_DOWNSAMPLE_FACTOR = 4

# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer: a small byte-level BPE vocabulary in the exact CLIP layout (256 byte symbols, the same 256 with "</w>",
# merges, then <|startoftext|> and <|endoftext|>). Any text tokenizes: every byte has a symbol.
# ----------------------------------------------------------------------------------------------------------------------

TOKENIZER_MODEL_MAX_LENGTH = 77

#: Words that get merges (so they become one or a few tokens), weighted by repetition in this list.
_TOKENIZER_WORDS = (
    "a a a an the the the of of in on with and and a photo photo of image picture render rendering "
    "red red blue blue green green yellow yellow white black orange purple pink brown gray grey "
    "cube cube sphere sphere cone cylinder torus pyramid ball box shape shapes object objects "
    "small large big tiny bright dark shiny matte metal wooden glass plastic "
    "cat dog car house tree bird person man woman face horse flower mountain sky sea city street "
    "view front back left right top bottom side multi camera light background floor table scene "
    "high quality detailed realistic painting style portrait landscape video frame motion moving "
    "is are at to by for from its it this that one two three low resolution blurry best worst"
).split()
#: Number of BPE merges learned from the words above (deterministically).
_TOKENIZER_NUM_MERGES = 320


@functools.lru_cache(maxsize=1)
def tiny_tokenizer_files() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Return ``(vocab, merges)`` of the tiny CLIP tokenizer (deterministic, a few hundred tokens)."""
    vocab, merges = clip_bpe(_TOKENIZER_WORDS, max_merges=_TOKENIZER_NUM_MERGES)
    return vocab, tuple(merges)


TOKENIZER_VOCAB_SIZE = len(tiny_tokenizer_files()[0])
_BOS_ID = tiny_tokenizer_files()[0][BOS_TOKEN]
_EOS_ID = tiny_tokenizer_files()[0][EOS_TOKEN]


def _write_tokenizer_files(directory: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (the files of a hub CLIP tokenizer folder) into ``directory``."""
    write_clip_tokenizer_files(directory, *tiny_tokenizer_files())


def build_tokenizer(pad_token: str = EOS_TOKEN):
    """Build the tiny ``CLIPTokenizer`` (``model_max_length=77``) from locally generated vocab/merges files.

    ``pad_token`` is ``<|endoftext|>`` for SD 1.5-like tokenizers and ``"!"`` for the OpenCLIP ones (SD 2.1,
    SDXL's ``tokenizer_2``), as on the hub.
    """
    return clip_tokenizer(*tiny_tokenizer_files(), pad_token=pad_token, model_max_length=TOKENIZER_MODEL_MAX_LENGTH)


# ----------------------------------------------------------------------------------------------------------------------
# Configs (module level so tests can build modules directly in memory: ``UNet2DConditionModel(**SD15_UNET_CONFIG)``)
# ----------------------------------------------------------------------------------------------------------------------

_COMMON_UNET = {
    "sample_size": 16,  # default pipeline resolution = 16 * VAE_SCALE_FACTOR = 32 px
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 8,
    "norm_eps": 1e-5,
}

SD15_UNET_CONFIG: dict[str, Any] = {
    **_COMMON_UNET,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 32, 64),
    "cross_attention_dim": 32,
    "attention_head_dim": 2,  # legacy diffusers meaning: number of heads (as SD 1.5's 8)
    "use_linear_projection": False,
}

SD21_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "cross_attention_dim": 64,
    "attention_head_dim": (2, 4, 8),
    "use_linear_projection": True,
    "upcast_attention": True,
}

SDXL_UNET_CONFIG: dict[str, Any] = {
    **_COMMON_UNET,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 64),
    "transformer_layers_per_block": (1, 1, 2),
    "cross_attention_dim": 96,  # text_encoder hidden 32 + text_encoder_2 hidden 64
    "attention_head_dim": (2, 4, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,  # 6 time ids * 8 + pooled text_embeds 32
}

_COMMON_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}
SD15_VAE_CONFIG: dict[str, Any] = {**_COMMON_VAE, "scaling_factor": 0.18215}
SD21_VAE_CONFIG: dict[str, Any] = {**_COMMON_VAE, "scaling_factor": 0.18215}
SDXL_VAE_CONFIG: dict[str, Any] = {**_COMMON_VAE, "scaling_factor": 0.13025, "force_upcast": True}

_COMMON_TEXT = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": TOKENIZER_MODEL_MAX_LENGTH,
    "layer_norm_eps": 1e-5,
    "vocab_size": TOKENIZER_VOCAB_SIZE,
    "bos_token_id": _BOS_ID,
    "eos_token_id": _EOS_ID,
    "pad_token_id": _EOS_ID,
}
#: CLIP ViT-L/14 text tower stand-in (SD 1.5, SDXL ``text_encoder``).
SD15_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **_COMMON_TEXT,
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
#: OpenCLIP ViT-H text tower stand-in (SD 2.1; 1024-d on the hub, 64-d here).
SD21_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **_COMMON_TEXT,
    "hidden_size": 64,
    "intermediate_size": 128,
    "projection_dim": 64,
    "hidden_act": "gelu",
}
SDXL_TEXT_ENCODER_CONFIG: dict[str, Any] = dict(SD15_TEXT_ENCODER_CONFIG)
#: OpenCLIP ViT-bigG stand-in (``CLIPTextModelWithProjection``): hidden 64, pooled/projected 32.
SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **_COMMON_TEXT,
    "hidden_size": 64,
    "intermediate_size": 128,
    "projection_dim": 32,
    "hidden_act": "gelu",
}

_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    **_SD_BETAS,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
SD21_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    **_SD_BETAS,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "timestep_spacing": "leading",
}
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    **_SD_BETAS,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "leading",
}
#: The scheduler AnimateDiff's model cards recommend (linear betas, DDIM).
ANIMATEDIFF_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
}

MOTION_ADAPTER_CONFIG: dict[str, Any] = motion_adapter_config(SD15_UNET_CONFIG)

#: T2IAdapter configs by ``adapter_type`` (in_channels is a parameter). One feature per UNet down block (plus the mid
#: block for XL), at the resolutions the tiny UNets expect: ``downscale_factor`` = VAE factor (SD) or 2x it (XL).
T2I_ADAPTER_CONFIGS: dict[str, dict[str, Any]] = {
    "full_adapter": {
        "adapter_type": "full_adapter",
        "channels": SD15_UNET_CONFIG["block_out_channels"],
        "num_res_blocks": 2,
        "downscale_factor": VAE_SCALE_FACTOR,
    },
    "full_adapter_xl": {
        "adapter_type": "full_adapter_xl",
        "channels": (*SDXL_UNET_CONFIG["block_out_channels"], SDXL_UNET_CONFIG["block_out_channels"][-1]),
        "num_res_blocks": 2,
        "downscale_factor": 2 * VAE_SCALE_FACTOR,
    },
}

#: ``ControlNetModel.from_unet(..., conditioning_embedding_out_channels=...)``: length 2 -> one stride-2 conv, the
#: same factor as the tiny VAEs.
CONTROLNET_CONDITIONING_EMBEDDING_CHANNELS = (8, 16)

#: CLIP vision tower stand-in for IP-Adapter image encoders. ``image_size`` 224 matches the default
#: ``CLIPImageProcessor()`` that ``load_ip_adapter`` creates when a pipeline has no feature extractor; patch 32 keeps it
#: at 7x7 patches.
IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
#: IP-Adapter (non-plus) image tokens, as in h94/IP-Adapter.
IP_ADAPTER_NUM_TOKENS = 4
#: ``tiny_ip_adapter_path()`` layout, as h94/IP-Adapter: base -> (subfolder, weight_name); each subfolder also holds
#: ``image_encoder/``.
IP_ADAPTER_WEIGHTS: dict[str, tuple[str, str]] = {
    "sd15": ("models", "ip-adapter_sd15.safetensors"),
    "sd21": ("models", "ip-adapter_sd21.safetensors"),
    "sdxl": ("sdxl_models", "ip-adapter_sdxl.safetensors"),
}

_BASES = {
    "sd15": (SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_ENCODER_CONFIG, SD15_SCHEDULER_CONFIG),
    "sd21": (SD21_UNET_CONFIG, SD21_VAE_CONFIG, SD21_TEXT_ENCODER_CONFIG, SD21_SCHEDULER_CONFIG),
}

# ----------------------------------------------------------------------------------------------------------------------
# In-memory builders
# ----------------------------------------------------------------------------------------------------------------------


@contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Seed torch's CPU RNG for a build without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _scheduler_from_config(config: dict[str, Any]):
    import diffusers

    config = dict(config)
    cls = getattr(diffusers, config.pop("_class_name"))
    return cls.from_config(config)


def _text_encoder(config: dict[str, Any], with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with _seeded():
        return cls(CLIPTextConfig(**config)).eval()


def _unet(config: dict[str, Any]):
    from diffusers import UNet2DConditionModel

    with _seeded():
        return UNet2DConditionModel(**config).eval()


def _vae(config: dict[str, Any]):
    from diffusers import AutoencoderKL

    with _seeded():
        return AutoencoderKL(**config).eval()


def _sd_components(base: str, scheduler_config: dict[str, Any] | None = None) -> dict[str, Any]:
    unet_cfg, vae_cfg, text_cfg, sched_cfg = _BASES[base]
    return {
        "unet": _unet(unet_cfg),
        "vae": _vae(vae_cfg),
        "text_encoder": _text_encoder(text_cfg),
        "tokenizer": build_tokenizer(pad_token=EOS_TOKEN if base == "sd15" else "!"),
        "scheduler": _scheduler_from_config(scheduler_config or sched_cfg),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def build_sd15_components() -> dict[str, Any]:
    """Fresh in-memory components of the SD 1.5-like pipeline (``StableDiffusionPipeline(**c,
    requires_safety_checker=False)``). Bitwise identical to what :func:`tiny_sd15_path` saves."""
    return _sd_components("sd15")


def build_sd21_components() -> dict[str, Any]:
    """Fresh in-memory components of the SD 2.1-like (v-prediction) pipeline."""
    return _sd_components("sd21")


def build_sdxl_components() -> dict[str, Any]:
    """Fresh in-memory components of the SDXL-like pipeline (``StableDiffusionXLPipeline(**c)``)."""
    return {
        "unet": _unet(SDXL_UNET_CONFIG),
        "vae": _vae(SDXL_VAE_CONFIG),
        "text_encoder": _text_encoder(SDXL_TEXT_ENCODER_CONFIG),
        "text_encoder_2": _text_encoder(SDXL_TEXT_ENCODER_2_CONFIG, with_projection=True),
        "tokenizer": build_tokenizer(pad_token=EOS_TOKEN),
        "tokenizer_2": build_tokenizer(pad_token="!"),
        "scheduler": _scheduler_from_config(SDXL_SCHEDULER_CONFIG),
        "image_encoder": None,
        "feature_extractor": None,
    }


def build_motion_adapter():
    """Fresh in-memory ``MotionAdapter`` matching the SD 1.5-like UNet (random, not zero, motion modules)."""
    from diffusers import MotionAdapter

    with _seeded():
        adapter = MotionAdapter(**MOTION_ADAPTER_CONFIG).eval()
        # diffusers zero-initialises the temporal output projections; a real checkpoint is not zero, and tests
        # must be able to see that motion modules do something.
        for name, param in adapter.named_parameters():
            if "proj_out" in name and not param.any():
                torch.nn.init.normal_(param, std=0.02)
    return adapter


def build_animatediff_components() -> dict[str, Any]:
    """SD 1.5-like components with AnimateDiff's scheduler plus a ``motion_adapter`` (for ``AnimateDiffPipeline``)."""
    components = _sd_components("sd15", ANIMATEDIFF_SCHEDULER_CONFIG)
    for key in ("safety_checker",):
        components.pop(key)
    components["motion_adapter"] = build_motion_adapter()
    return components


def build_t2i_adapter(kind: str = "full_adapter", in_channels: int = 3):
    """Fresh in-memory ``T2IAdapter`` (``kind`` in :data:`T2I_ADAPTER_CONFIGS`) for the SD 1.5- or SDXL-like UNet."""
    from diffusers import T2IAdapter

    if kind not in T2I_ADAPTER_CONFIGS:
        raise ValueError(f"`kind` must be one of {sorted(T2I_ADAPTER_CONFIGS)}, got {kind!r}")
    with _seeded():
        return T2IAdapter(in_channels=in_channels, **T2I_ADAPTER_CONFIGS[kind]).eval()


#: UNet config by base name ("sd15", "sd21", "sdxl").
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": SD15_UNET_CONFIG,
    "sd21": SD21_UNET_CONFIG,
    "sdxl": SDXL_UNET_CONFIG,
}
_UNET_CONFIGS = UNET_CONFIGS


def build_controlnet(base: str = "sd15"):
    """Fresh in-memory ``ControlNetModel.from_unet`` of the tiny ``base`` UNet ("sd15", "sd21" or "sdxl").

    The zero convolutions are re-initialised with small random weights (like a trained ControlNet), so the control
    image visibly changes the output.
    """
    from diffusers import ControlNetModel

    if base not in _UNET_CONFIGS:
        raise ValueError(f"`base` must be one of {sorted(_UNET_CONFIGS)}, got {base!r}")
    unet = _unet(_UNET_CONFIGS[base])
    with _seeded():
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_EMBEDDING_CHANNELS
        ).eval()
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        zero_convs.append(controlnet.controlnet_cond_embedding.conv_out)
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=0.05)
            torch.nn.init.zeros_(conv.bias)
    return controlnet


def build_image_encoder():
    """Fresh in-memory ``CLIPVisionModelWithProjection`` (the IP-Adapter image encoder stand-in)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with _seeded():
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_ENCODER_CONFIG)).eval()


def build_ip_adapter_state_dict(base: str = "sd15") -> dict[str, torch.Tensor]:
    """IP-Adapter weights for the tiny ``base`` UNet in the official flat layout (random, deterministic).

    Keys: ``image_proj.proj.{weight,bias}`` (``[4 * cross_attention_dim, projection_dim]``), ``image_proj.norm.*``,
    and ``ip_adapter.{k}.to_{k,v}_ip.weight`` (``[hidden_size, cross_attention_dim]``) with k = 1, 3, 5, ... over the
    UNet's ``attn2`` processors in ``unet.attn_processors`` order -- what ``pipe.load_ip_adapter`` expects.
    """
    if base not in _UNET_CONFIGS:
        raise ValueError(f"`base` must be one of {sorted(_UNET_CONFIGS)}, got {base!r}")
    config = _UNET_CONFIGS[base]
    channels = list(config["block_out_channels"])
    cross_dim = config["cross_attention_dim"]
    embed_dim = IMAGE_ENCODER_CONFIG["projection_dim"]
    attn_names = list(_unet(config).attn_processors)
    state: dict[str, torch.Tensor] = {}
    with _seeded():
        proj = torch.nn.Linear(embed_dim, IP_ADAPTER_NUM_TOKENS * cross_dim)
        state["image_proj.proj.weight"] = proj.weight.detach().clone()
        state["image_proj.proj.bias"] = proj.bias.detach().clone()
        state["image_proj.norm.weight"] = torch.ones(cross_dim)
        state["image_proj.norm.bias"] = torch.zeros(cross_dim)
        key_id = 1
        for name in attn_names:
            if not name.endswith("attn2.processor"):
                continue
            if name.startswith("mid_block"):
                hidden = channels[-1]
            elif name.startswith("up_blocks"):
                hidden = channels[::-1][int(name.split(".")[1])]
            else:
                hidden = channels[int(name.split(".")[1])]
            for kv in ("k", "v"):
                layer = torch.nn.Linear(cross_dim, hidden, bias=False)
                state[f"ip_adapter.{key_id}.to_{kv}_ip.weight"] = layer.weight.detach().clone()
            key_id += 2
    return state


# ----------------------------------------------------------------------------------------------------------------------
# On-disk cache
# ----------------------------------------------------------------------------------------------------------------------

_COMPLETE_MARKER = ".tiny_model_complete"


def cache_root() -> Path:
    """Directory holding the built folders (``$DIFFUSION_ADAPTERS_TINY_CACHE`` or ``<tmp>/diffusion-adapters-tiny``)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "diffusion-adapters-tiny"


def _spec_hash(spec: Any) -> str:
    import diffusers
    import transformers

    payload = {
        "spec": spec,
        "format": TINY_MODELS_FORMAT_VERSION,
        "tokenizer": tiny_tokenizer_files(),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    blob = json.dumps(payload, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _cached_build(name: str, spec: Any, build: Callable[[Path], None], root: Path | None = None) -> Path:
    """Return ``<root>/<name>-<hash>``, building it with ``build(tmp_dir)`` first if absent (atomic rename)."""
    root = Path(root) if root is not None else cache_root()
    final = root / f"{name}-{_spec_hash(spec)}"
    if (final / _COMPLETE_MARKER).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        build(tmp)
        (tmp / _COMPLETE_MARKER).write_text(final.name)
        if final.exists() and not (final / _COMPLETE_MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)  # leftover of an interrupted build from an older version
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process won the race: its folder is complete and identical.
            if not (final / _COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _save_pipeline(pipeline_cls_name: str, components: dict[str, Any], directory: Path, **init_kwargs: Any) -> None:
    import diffusers

    pipe = getattr(diffusers, pipeline_cls_name)(**components, **init_kwargs)
    pipe.save_pretrained(directory, safe_serialization=True)
    # Hub CLIP tokenizer folders also carry the slow-tokenizer files (vocab.json + merges.txt).
    for sub in ("tokenizer", "tokenizer_2"):
        if (directory / sub).is_dir():
            _write_tokenizer_files(directory / sub)
            _clean_tokenizer_config(directory / sub / "tokenizer_config.json")


def _clean_tokenizer_config(path: Path) -> None:
    """Drop the load-time flags transformers 5 writes into ``tokenizer_config.json`` (not part of a hub repo)."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _build_sd(base: str, directory: Path) -> None:
    _save_pipeline("StableDiffusionPipeline", _sd_components(base), directory, requires_safety_checker=False)


def _build_sdxl(directory: Path) -> None:
    _save_pipeline("StableDiffusionXLPipeline", build_sdxl_components(), directory, force_zeros_for_empty_prompt=True)


def _build_animatediff(directory: Path) -> None:
    # The base folder is an SD 1.5-like repository (as users download it); the motion adapter sits beside it.
    components = _sd_components("sd15", ANIMATEDIFF_SCHEDULER_CONFIG)
    _save_pipeline("StableDiffusionPipeline", components, directory, requires_safety_checker=False)
    build_motion_adapter().save_pretrained(directory / "motion_adapter", safe_serialization=True)


def _recipe(name: str, **params: Any) -> tuple[str, Any, Callable[[Path], None]]:
    """``(cache folder name, spec hashed into the cache key, build(directory))`` for a named tiny model."""
    spec: dict[str, Any]
    if name in ("sd15", "sd21"):
        unet_cfg, vae_cfg, text_cfg, sched_cfg = _BASES[name]
        spec = {"unet": unet_cfg, "vae": vae_cfg, "te": text_cfg, "s": sched_cfg}
        return name, spec, functools.partial(_build_sd, name)
    if name == "sdxl":
        spec = {
            "unet": SDXL_UNET_CONFIG,
            "vae": SDXL_VAE_CONFIG,
            "te": SDXL_TEXT_ENCODER_CONFIG,
            "te2": SDXL_TEXT_ENCODER_2_CONFIG,
            "s": SDXL_SCHEDULER_CONFIG,
        }
        return name, spec, _build_sdxl
    if name == "animatediff":
        spec = {
            "unet": SD15_UNET_CONFIG,
            "vae": SD15_VAE_CONFIG,
            "te": SD15_TEXT_ENCODER_CONFIG,
            "s": ANIMATEDIFF_SCHEDULER_CONFIG,
            "motion": MOTION_ADAPTER_CONFIG,
        }
        return name, spec, _build_animatediff
    if name == "t2i_adapter":
        kind = params.get("kind", "full_adapter")
        in_channels = int(params.get("in_channels", 3))
        if kind not in T2I_ADAPTER_CONFIGS:
            raise ValueError(f"`kind` must be one of {sorted(T2I_ADAPTER_CONFIGS)}, got {kind!r}")

        def build_t2i(directory: Path) -> None:
            build_t2i_adapter(kind, in_channels).save_pretrained(directory, safe_serialization=True)

        spec = {"t2i": T2I_ADAPTER_CONFIGS[kind], "in_channels": in_channels}
        return f"t2i-{kind}-{in_channels}", spec, build_t2i
    if name == "controlnet":
        base = params.get("base", "sd15")
        if base not in _UNET_CONFIGS:
            raise ValueError(f"`base` must be one of {sorted(_UNET_CONFIGS)}, got {base!r}")

        def build_cn(directory: Path) -> None:
            build_controlnet(base).save_pretrained(directory, safe_serialization=True)

        spec = {"unet": _UNET_CONFIGS[base], "cond": CONTROLNET_CONDITIONING_EMBEDDING_CHANNELS}
        return f"controlnet-{base}", spec, build_cn
    if name == "ip_adapter":

        def build_ip(directory: Path) -> None:
            from safetensors.torch import save_file

            encoder = build_image_encoder()
            for base, (sub, weight_name) in IP_ADAPTER_WEIGHTS.items():
                (directory / sub).mkdir(parents=True, exist_ok=True)
                if not (directory / sub / "image_encoder").exists():
                    encoder.save_pretrained(directory / sub / "image_encoder", safe_serialization=True)
                save_file(build_ip_adapter_state_dict(base), str(directory / sub / weight_name))

        spec = {"enc": IMAGE_ENCODER_CONFIG, "w": IP_ADAPTER_WEIGHTS, "unets": _UNET_CONFIGS}
        return "ip-adapter", spec, build_ip
    raise ValueError(
        "`name` must be one of ['animatediff', 'controlnet', 'ip_adapter', 'sd15', 'sd21', 'sdxl', 't2i_adapter'], "
        f"got {name!r}"
    )


def save_tiny_model(directory: str | os.PathLike, name: str, **params: Any) -> Path:
    """Build the tiny model ``name`` into ``directory`` (created; must not exist or be empty), bypassing the cache.

    ``name`` is "sd15", "sd21", "sdxl", "animatediff", "t2i_adapter" (``kind=``, ``in_channels=``) or "controlnet"
    (``base=``). Two calls give bitwise identical files.
    """
    _, _, build = _recipe(name, **params)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build(directory)
    return directory


def tiny_ip_adapter_path() -> Path:
    """Folder laid out like h94/IP-Adapter with tiny weights for every base (see :data:`IP_ADAPTER_WEIGHTS`).

    >>> pipe.load_ip_adapter(tiny_ip_adapter_path(), subfolder="models", weight_name="ip-adapter_sd15.safetensors")
    >>> pipe.load_ip_adapter(tiny_ip_adapter_path(), subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors")

    Each subfolder's ``image_encoder/`` is a ``CLIPVisionModelWithProjection`` (224 px input, 32-d image embeds).
    """
    return _tiny_path("ip_adapter")


def _tiny_path(name: str, **params: Any) -> Path:
    folder, spec, build = _recipe(name, **params)
    return _cached_build(folder, spec, build)


def tiny_sd15_path() -> Path:
    """Folder of the SD 1.5-like ``StableDiffusionPipeline`` (epsilon, PNDM, cross-attention dim 32)."""
    return _tiny_path("sd15")


def tiny_sd21_path() -> Path:
    """Folder of the SD 2.1-like ``StableDiffusionPipeline`` (v-prediction DDIM, linear projections, cross-attn 64)."""
    return _tiny_path("sd21")


def tiny_sdxl_path() -> Path:
    """Folder of the SDXL-like ``StableDiffusionXLPipeline`` (two text encoders, ``text_time`` conditioning)."""
    return _tiny_path("sdxl")


def tiny_animatediff_path() -> Path:
    """Folder of an SD 1.5-like base (AnimateDiff's DDIM scheduler) with a ``motion_adapter/`` subfolder.

    >>> base = tiny_animatediff_path()
    >>> adapter = MotionAdapter.from_pretrained(base / "motion_adapter")
    >>> pipe = AnimateDiffPipeline.from_pretrained(base, motion_adapter=adapter)
    """
    return _tiny_path("animatediff")


def tiny_t2i_adapter_path(kind: str = "full_adapter", in_channels: int = 3) -> Path:
    """Folder of a ``T2IAdapter`` for the SD 1.5-like (``"full_adapter"``) or SDXL-like (``"full_adapter_xl"``) UNet."""
    return _tiny_path("t2i_adapter", kind=kind, in_channels=in_channels)


def tiny_controlnet_path(base: str = "sd15") -> Path:
    """Folder of a ``ControlNetModel`` made ``from_unet`` of the tiny ``base`` UNet ("sd15", "sd21", "sdxl")."""
    return _tiny_path("controlnet", base=base)


def tiny_motion_unet():
    """``UNetMotionModel.from_unet2d`` of the tiny AnimateDiff base UNet and its motion adapter (loaded from disk)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    base = tiny_animatediff_path()
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    adapter = MotionAdapter.from_pretrained(base / "motion_adapter")
    return UNetMotionModel.from_unet2d(unet, adapter).eval()


# ----------------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------------

#: ``make_pipeline`` names -> (diffusers pipeline class, base folder function, extra model).
PIPELINE_NAMES: dict[str, tuple[str, str, str | None]] = {
    "sd15": ("StableDiffusionPipeline", "sd15", None),
    "sd21": ("StableDiffusionPipeline", "sd21", None),
    "sdxl": ("StableDiffusionXLPipeline", "sdxl", None),
    "animatediff": ("AnimateDiffPipeline", "animatediff", "motion_adapter"),
    "controlnet": ("StableDiffusionControlNetPipeline", "sd15", "controlnet"),
    "controlnet_sd21": ("StableDiffusionControlNetPipeline", "sd21", "controlnet"),
    "controlnet_xl": ("StableDiffusionXLControlNetPipeline", "sdxl", "controlnet"),
    "t2i_adapter": ("StableDiffusionAdapterPipeline", "sd15", "adapter"),
    "t2i_adapter_xl": ("StableDiffusionXLAdapterPipeline", "sdxl", "adapter"),
}

_BASE_PATHS: dict[str, Callable[[], Path]] = {
    "sd15": tiny_sd15_path,
    "sd21": tiny_sd21_path,
    "sdxl": tiny_sdxl_path,
    "animatediff": tiny_animatediff_path,
}


def make_pipeline(name: str, *, pipeline_cls: Any = None, progress_bar: bool = False, **kwargs: Any):
    """Load a tiny pipeline with ``from_pretrained`` from its cached folder.

    Args:
        name: one of :data:`PIPELINE_NAMES` ("sd15", "sd21", "sdxl", "animatediff", "controlnet", "controlnet_sd21",
            "controlnet_xl", "t2i_adapter", "t2i_adapter_xl").
        pipeline_cls: override the pipeline class (any ``DiffusionPipeline`` subclass accepting the components).
        progress_bar: keep diffusers' progress bar (off by default).
        **kwargs: forwarded to ``from_pretrained`` (e.g. ``torch_dtype``, extra components).
    """
    import diffusers

    if name not in PIPELINE_NAMES:
        raise ValueError(f"`name` must be one of {sorted(PIPELINE_NAMES)}, got {name!r}")
    cls_name, base, extra = PIPELINE_NAMES[name]
    base_path = _BASE_PATHS[base]()
    if extra == "motion_adapter" and "motion_adapter" not in kwargs:
        kwargs["motion_adapter"] = diffusers.MotionAdapter.from_pretrained(base_path / "motion_adapter")
    elif extra == "controlnet" and "controlnet" not in kwargs:
        kwargs["controlnet"] = diffusers.ControlNetModel.from_pretrained(tiny_controlnet_path(base))
    elif extra == "adapter" and "adapter" not in kwargs:
        kind = "full_adapter_xl" if base == "sdxl" else "full_adapter"
        kwargs["adapter"] = diffusers.T2IAdapter.from_pretrained(tiny_t2i_adapter_path(kind))
    if base in ("sd15", "sd21", "animatediff") and cls_name != "AnimateDiffPipeline":
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    cls = pipeline_cls if pipeline_cls is not None else getattr(diffusers, cls_name)
    pipe = cls.from_pretrained(base_path, **kwargs)
    pipe.set_progress_bar_config(disable=not progress_bar)
    return pipe


def copy_config(config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A deep copy of one of the module-level configs with ``overrides`` applied."""
    out = copy.deepcopy(config)
    out.update(overrides)
    return out


def randomise_(params, seed: int = 0, std: float = 0.1) -> None:
    """Fill ``params`` in place with seeded ``N(0, std)`` values (makes zero-initialised adapter branches non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * std)
