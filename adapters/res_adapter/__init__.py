"""ResAdapter (arXiv 2403.02084): resolution adapter for SD-family UNets.

A kohya LoCon LoRA on the sampler convolutions plus retrained ResNet GroupNorms, loaded strictly and reversibly:

>>> from adapters.res_adapter import load_res_adapter, set_res_adapter_scale, unload_res_adapter
>>> load_res_adapter(pipe, "path/to/resadapter_v2_sd1.5")  # folder with the official two files
>>> set_res_adapter_scale(pipe, norm_scale=0.5)
>>> unload_res_adapter(pipe)  # base restored bit for bit
"""

from .config import (
    DEFAULT_RESOLUTION_RANGE,
    KIND,
    LORA_WEIGHTS_NAME,
    NORM_WEIGHTS_NAME,
    SINGLE_FILE_NAME,
    ResAdapterConfig,
    resnet_norm_paths,
    sampler_conv_paths,
    unet_downsample_factor,
)
from .layers import SamplerLoRA, build_sampler_lora
from .loader import (
    SAVE_FORMATS,
    ResAdapterState,
    fuse_res_adapter,
    get_res_adapter,
    init_res_adapter,
    load_res_adapter,
    read_res_adapter,
    res_adapter_state_dict,
    save_res_adapter,
    set_res_adapter_scale,
    unfuse_res_adapter,
    unload_res_adapter,
)
from .norms import GroupNormPatch

__all__ = [
    "DEFAULT_RESOLUTION_RANGE",
    "GroupNormPatch",
    "KIND",
    "LORA_WEIGHTS_NAME",
    "NORM_WEIGHTS_NAME",
    "ResAdapterConfig",
    "ResAdapterState",
    "SAVE_FORMATS",
    "SINGLE_FILE_NAME",
    "SamplerLoRA",
    "build_sampler_lora",
    "fuse_res_adapter",
    "get_res_adapter",
    "init_res_adapter",
    "load_res_adapter",
    "read_res_adapter",
    "res_adapter_state_dict",
    "resnet_norm_paths",
    "sampler_conv_paths",
    "save_res_adapter",
    "set_res_adapter_scale",
    "unfuse_res_adapter",
    "unet_downsample_factor",
    "unload_res_adapter",
]
