"""The shared training core: config, the accelerate loop, diffusion-loss helpers, checkpoints and EMA."""

from .checkpoint import latest_checkpoint, list_checkpoints, prune_checkpoints
from .config import TrainConfig, load_config_file
from .diffusion import compute_snr, diffusion_loss, get_target, min_snr_weights, sample_noise, sample_timesteps
from .ema import TrainableEMA
from .trainer import ADAPTER_WEIGHTS_NAME, EMA_WEIGHTS_NAME, AdapterTrainer, NonFiniteLossError, main

__all__ = [
    "ADAPTER_WEIGHTS_NAME",
    "EMA_WEIGHTS_NAME",
    "AdapterTrainer",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainableEMA",
    "compute_snr",
    "diffusion_loss",
    "get_target",
    "latest_checkpoint",
    "list_checkpoints",
    "load_config_file",
    "main",
    "min_snr_weights",
    "prune_checkpoints",
    "sample_noise",
    "sample_timesteps",
]
