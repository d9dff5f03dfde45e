"""HiPA (arXiv 2311.18158): one-step text-to-image with high-frequency-promoting LoRA adaptors.

The adaptor is a standard peft / diffusers LoRA on the UNet's attention and feed-forward projections, trained so that
the one-step x0 prediction from pure noise matches the multi-step teacher's sample (spatial + high-frequency loss):

>>> from adapters.hipa import HiPAConfig, add_hipa_lora, hipa_loss, high_pass
>>> names = add_hipa_lora(unet, HiPAConfig(rank=8))  # zero-initialised, only LoRA weights trainable
>>> loss = hipa_loss(student_x0, teacher_x0, lambda_hf=1.0)
"""

from .config import ATTENTION_TARGETS, FEED_FORWARD_TARGETS, HiPAConfig
from .frequency import high_pass, high_pass_transfer, hipa_loss, low_pass, sobel_edges
from .loader import (
    DEFAULT_ADAPTER_NAME,
    KIND,
    LORA_WEIGHT_NAME_SAFE,
    add_hipa_lora,
    fuse_hipa_lora,
    hipa_lora_state_dict,
    load_hipa_lora,
    lora_parameter_names,
    save_hipa_lora,
    set_hipa_lora_scale,
    set_hipa_scale,
    unfuse_hipa_lora,
    unload_hipa_lora,
    validate_unet_lora,
)
from .one_step import last_timestep, predict_x0
from .presets import PRESETS, FewStepPreset, get_preset, make_scheduler

__all__ = [
    "ATTENTION_TARGETS",
    "DEFAULT_ADAPTER_NAME",
    "FEED_FORWARD_TARGETS",
    "KIND",
    "LORA_WEIGHT_NAME_SAFE",
    "PRESETS",
    "FewStepPreset",
    "HiPAConfig",
    "add_hipa_lora",
    "fuse_hipa_lora",
    "get_preset",
    "high_pass",
    "high_pass_transfer",
    "hipa_lora_state_dict",
    "hipa_loss",
    "last_timestep",
    "load_hipa_lora",
    "lora_parameter_names",
    "low_pass",
    "make_scheduler",
    "predict_x0",
    "save_hipa_lora",
    "set_hipa_lora_scale",
    "set_hipa_scale",
    "sobel_edges",
    "unfuse_hipa_lora",
    "unload_hipa_lora",
    "validate_unet_lora",
]
