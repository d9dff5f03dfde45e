"""Exponential moving average of the trainable parameters only (the frozen base is never copied)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["TrainableEMA"]


class TrainableEMA:
    """EMA shadow copies (fp32) of a list of parameters.

    The decay warms up like diffusers' ``EMAModel``: ``min(decay, (1 + n) / (10 + n))`` at update ``n``.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float = 0.9999) -> None:
        self.parameters = list(parameters)
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().to(torch.float32).clone() for p in self.parameters]
        self._backup: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def step(self) -> None:
        """Move the shadows towards the current parameters."""
        decay = self.current_decay()
        for s, p in zip(self.shadow, self.parameters):
            s.lerp_(p.detach().to(s.device, torch.float32), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self) -> None:
        """Write the EMA weights into the parameters."""
        for s, p in zip(self.shadow, self.parameters):
            p.copy_(s.to(p.device, p.dtype))

    @torch.no_grad()
    def store(self) -> None:
        """Remember the current (non-EMA) parameters, to :meth:`restore` after e.g. validation with EMA weights."""
        self._backup = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def restore(self) -> None:
        if self._backup is None:
            raise RuntimeError("TrainableEMA.restore() called without store().")
        for b, p in zip(self._backup, self.parameters):
            p.copy_(b)
        self._backup = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"shadow.<i>": tensor}`` in parameter order, plus ``num_updates`` as a 0-d int64 tensor."""
        sd = {f"shadow.{i}": s for i, s in enumerate(self.shadow)}
        sd["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return sd

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        expected = {f"shadow.{i}" for i in range(len(self.shadow))} | {"num_updates"}
        if set(state_dict) != expected:
            missing = sorted(expected - set(state_dict))
            unexpected = sorted(set(state_dict) - expected)
            raise ValueError(
                f"EMA state does not match the trainable parameters: missing {missing}, unexpected {unexpected}."
            )
        for i, s in enumerate(self.shadow):
            value = state_dict[f"shadow.{i}"]
            if value.shape != s.shape:
                raise ValueError(f"EMA shadow.{i} has shape {tuple(value.shape)}, expected {tuple(s.shape)}.")
            s.copy_(value.to(s.device, torch.float32))
        self.num_updates = int(state_dict["num_updates"])
