"""Reversible patch of the ResNet GroupNorms: keep the base weights, blend in the ResAdapter weights.

The official loader overwrites the base UNet's ``norm1`` / ``norm2`` parameters for good. :class:`GroupNormPatch`
keeps a copy of the base values instead and writes ``lerp(base, adapter, norm_scale)`` into the live parameters:
``norm_scale = 0`` is the base (bitwise), ``1`` the ResAdapter (bitwise), values between blend linearly.
:meth:`GroupNormPatch.restore` writes the base values back bit for bit.

The live ``nn.GroupNorm`` modules are never replaced or wrapped, so the patch adds no module, hook or compute to
the forward pass, the UNet's ``state_dict`` keys are unchanged, and peft / diffusers LoRAs compose with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["GroupNormPatch"]


class GroupNormPatch:
    """Adapter weight and bias for a set of GroupNorms of a model, applied in place with a blend factor.

    Args:
        root: the model (a UNet); referenced, not owned.
        adapter: ``"<norm path>.weight"`` / ``"<norm path>.bias"`` -> tensor of shape ``(num_channels,)`` for every
            norm to patch (both keys of a norm must be given). Stored as float32 on CPU.

    The base values are captured when the patch is first applied, so a patch can be built (and validated) without
    touching the model.
    """

    def __init__(self, root: nn.Module, adapter: Mapping[str, torch.Tensor]):
        self._root = root
        self.paths = sorted({key.rsplit(".", 1)[0] for key in adapter})
        for path in self.paths:
            for param in ("weight", "bias"):
                if f"{path}.{param}" not in adapter:
                    raise KeyError(f"GroupNormPatch needs both weight and bias of {path!r}.")
        self.adapter = {k: v.detach().to("cpu", torch.float32).clone() for k, v in adapter.items()}
        self.base: dict[str, torch.Tensor] = {}
        self.scale: float | None = None

    def module(self, path: str) -> nn.GroupNorm:
        return self._root.get_submodule(path)

    def _params(self):
        for path in self.paths:
            norm = self.module(path)
            yield f"{path}.weight", norm.weight
            yield f"{path}.bias", norm.bias

    @property
    def applied(self) -> bool:
        return bool(self.base)

    @torch.no_grad()
    def apply(self, scale: float = 1.0) -> None:
        """Write ``base + scale * (adapter - base)`` into the live parameters (base kept on first call).

        ``scale`` 0 writes the base values and 1 the adapter values, both exactly.
        """
        if not self.base:
            self.base = {key: param.detach().clone() for key, param in self._params()}
        for key, param in self._params():
            base = self.base[key]
            adapter = self.adapter[key]
            if scale == 0.0:
                value = base
            elif scale == 1.0:
                value = adapter
            else:
                value = torch.lerp(base.to("cpu", torch.float32), adapter, float(scale))
            param.copy_(value.to(param.device, param.dtype))
        self.scale = float(scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the base values back (bitwise) and forget them."""
        for key, param in self._params():
            if key in self.base:
                param.copy_(self.base[key].to(param.device))
        self.base = {}
        self.scale = None

    @torch.no_grad()
    def capture(self) -> None:
        """Take the live parameters as the new adapter values (after training them in place at scale 1)."""
        self.adapter = {key: param.detach().to("cpu", torch.float32).clone() for key, param in self._params()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter values in diffusers key names (``down_blocks.0.resnets.0.norm1.weight`` ...)."""
        return dict(self.adapter)

    def parameters(self) -> list[nn.Parameter]:
        """The live GroupNorm parameters this patch writes (what a trainer optimises)."""
        return [param for _, param in self._params()]
