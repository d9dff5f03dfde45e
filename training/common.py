"""The training core every adapter shares (re-exported from :mod:`training.core`).

A train script is a subclass of :class:`AdapterTrainer` plus ``main``::

    from training.common import AdapterTrainer, TrainConfig, diffusion_loss, get_target, main, sample_noise

    class MyTrainer(AdapterTrainer):
        ...  # see training/core/trainer.py for the contract

    if __name__ == "__main__":
        main(MyTrainer)

Run it as ``python -m training.train_x --flags`` or ``accelerate launch -m training.train_x --flags``.
"""

from training.core import *  # noqa: F403
from training.core import __all__  # noqa: F401
