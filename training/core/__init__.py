"""The shared training core: config, the accelerate loop, diffusion-loss helpers, checkpoints and EMA.

A train script is a subclass of :class:`AdapterTrainer` plus ``main``::

    from training.core import AdapterTrainer, TrainConfig, diffusion_loss, get_target, main, sample_noise

    class MyTrainer(AdapterTrainer):
        ...  # see training/core/trainer.py for the contract

    if __name__ == "__main__":
        main(MyTrainer)

Run it as ``python -m training.train_x --flags`` or ``accelerate launch -m training.train_x --flags``.
"""

from .checkpoint import latest_checkpoint, list_checkpoints, prune_checkpoints
from .config import TrainConfig, load_config_file
from .diffusion import compute_snr, diffusion_loss, get_target, min_snr_weights, sample_noise, sample_timesteps
from .ema import ema_state_dict, load_ema_state_dict
from .trainer import ADAPTER_WEIGHTS_NAME, EMA_WEIGHTS_NAME, AdapterTrainer, NonFiniteLossError, main

__all__ = [
    "ADAPTER_WEIGHTS_NAME",
    "EMA_WEIGHTS_NAME",
    "AdapterTrainer",
    "NonFiniteLossError",
    "TrainConfig",
    "compute_snr",
    "diffusion_loss",
    "ema_state_dict",
    "get_target",
    "latest_checkpoint",
    "list_checkpoints",
    "load_config_file",
    "load_ema_state_dict",
    "main",
    "min_snr_weights",
    "prune_checkpoints",
    "sample_noise",
    "sample_timesteps",
]
