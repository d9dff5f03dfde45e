"""Exponential moving average of the trainable parameters only (the frozen base is never copied).

The EMA itself is diffusers' ``EMAModel`` (``step`` / ``copy_to`` / ``store`` / ``restore``; decay
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, and its first update copies the parameters). What stays ours
is the checkpoint file, ``ema_model.safetensors``: ``EMAModel.state_dict()`` holds a list of tensors and Python
scalars, which safetensors cannot store, and ``EMAModel.load_state_dict`` takes any list of tensors as the shadows (no
count or shape check, left on the file's device). :func:`ema_state_dict` / :func:`load_ema_state_dict` write and read
the flat format every checkpoint has used (``shadow.<i>`` in parameter order + ``num_updates``), validated against the
parameters. ``tests/test_training_ema.py`` shows both differences and resumes a file written by the earlier EMA class.
"""

from __future__ import annotations

import torch
from diffusers.training_utils import EMAModel

__all__ = ["ema_state_dict", "load_ema_state_dict"]


def ema_state_dict(ema: EMAModel) -> dict[str, torch.Tensor]:
    """``{"shadow.<i>": tensor}`` in parameter order, plus ``num_updates`` (= ``optimization_step``) as a 0-d int64
    tensor: the contents of ``ema_model.safetensors``."""
    state = {f"shadow.{i}": s for i, s in enumerate(ema.shadow_params)}
    state["num_updates"] = torch.tensor(ema.optimization_step, dtype=torch.int64)
    return state


@torch.no_grad()
def load_ema_state_dict(ema: EMAModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy an :func:`ema_state_dict` into ``ema`` in place (each shadow keeps its device and dtype).

    Raises:
        ValueError: the keys are not exactly ``shadow.0`` .. ``shadow.<n-1>`` and ``num_updates`` for ``ema``'s ``n``
            parameters (missing and unexpected keys listed), or a shadow's shape differs.
    """
    shadows = ema.shadow_params
    expected = {f"shadow.{i}" for i in range(len(shadows))} | {"num_updates"}
    if set(state_dict) != expected:
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        raise ValueError(
            f"EMA state does not match the trainable parameters: missing {missing}, unexpected {unexpected}."
        )
    for i, s in enumerate(shadows):
        value = state_dict[f"shadow.{i}"]
        if value.shape != s.shape:
            raise ValueError(f"EMA shadow.{i} has shape {tuple(value.shape)}, expected {tuple(s.shape)}.")
    for i, s in enumerate(shadows):
        s.copy_(state_dict[f"shadow.{i}"].to(s.device, s.dtype))
    ema.optimization_step = int(state_dict["num_updates"])
