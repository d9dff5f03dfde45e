"""Shared low-rank layers for the adapters peft cannot express as we need them.

A :class:`LowRankDelta` is one low-rank residual ``up(down(x)) * alpha / rank`` for an ``nn.Linear`` or ``nn.Conv2d``
(for convs the kohya "LoCon" layout: ``down`` has the base conv's kernel, stride and padding, ``up`` is 1x1).

A :class:`LowRankAdapter` attaches a set of deltas to the named submodules of a model through forward hooks. The
base modules, their parameters and their ``state_dict`` keys stay exactly as they were, so

* ``unet.save_pretrained`` never sees adapter weights,
* LoRAs a user loads with diffusers' ``load_lora_weights`` (peft) compose with ours: peft wraps the base module and
  still calls it, so our hook keeps firing; unloading either leaves the other in place,
* ``unload()`` restores the model bit for bit,
* a fused adapter leaves no hook and no extra compute in the forward pass.

``scale`` (0 = off), ``fuse()`` / ``unfuse()`` (exact: the original weights are kept while fused) and ``unload()`` are
implemented once here for every adapter that uses them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .weights import AdapterWeightsError, validate_state_dict

__all__ = ["LowRankDelta", "LowRankAdapter", "kohya_key"]


def kohya_key(module_path: str, prefix: str = "lora_unet") -> str:
    """kohya-style name of a module: ``down_blocks.0.downsamplers.0.conv`` -> ``lora_unet_down_blocks_0_downsamplers_0_conv``."""
    return f"{prefix}_{module_path.replace('.', '_')}"


class LowRankDelta(nn.Module):
    """A low-rank residual for one base layer: ``delta(x) = up(down(x)) * alpha / rank``.

    Shapes: for a Linear base, ``x`` is ``(..., in_features)`` and the output ``(..., out_features)``; for a Conv2d
    base, ``x`` is ``(B, in, H, W)`` and the output ``(B, out, H', W')``, the same as the base conv's output.
    ``up`` starts at zero, so a fresh delta adds exactly nothing.
    """

    def __init__(self, down: nn.Module, up: nn.Module, rank: int, alpha: float | None = None):
        super().__init__()
        self.down = down
        self.up = up
        self.rank = int(rank)
        self.register_buffer("alpha", torch.tensor(float(rank if alpha is None else alpha)), persistent=True)

    @classmethod
    def for_module(cls, base: nn.Module, rank: int, alpha: float | None = None) -> LowRankDelta:
        """A zero-initialised delta matching ``base`` (``nn.Linear`` or ``nn.Conv2d``) with the given rank."""
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"`rank` must be a positive int, got {rank!r}.")
        factory = {"device": base.weight.device, "dtype": torch.float32}
        if isinstance(base, nn.Conv2d):
            down = nn.Conv2d(
                base.in_channels,
                rank,
                base.kernel_size,
                base.stride,
                base.padding,
                base.dilation,
                bias=False,
                **factory,
            )
            up = nn.Conv2d(rank, base.out_channels, 1, bias=False, **factory)
        elif isinstance(base, nn.Linear):
            down = nn.Linear(base.in_features, rank, bias=False, **factory)
            up = nn.Linear(rank, base.out_features, bias=False, **factory)
        else:
            raise TypeError(f"LowRankDelta supports nn.Linear and nn.Conv2d, got {type(base).__name__}.")
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(up.weight)
        return cls(down, up, rank, alpha)

    @property
    def scaling(self) -> torch.Tensor:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense weight update ``scaling * up @ down``, shaped like the base layer's weight."""
        down, up = self.down.weight, self.up.weight
        if down.dim() == 4:  # conv: up (out, r, 1, 1), down (r, in, kh, kw)
            weight = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        else:
            weight = up @ down
        return weight * self.scaling


class LowRankAdapter(nn.Module):
    """A named set of :class:`LowRankDelta` attached to submodules of ``root`` by forward hooks.

    Args:
        root: the model the deltas apply to (e.g. a UNet). It is referenced, not owned: ``LowRankAdapter`` never
            registers it as a submodule.
        deltas: module path in ``root`` (e.g. ``"down_blocks.0.downsamplers.0.conv"``) -> delta.
        scale: multiplier of every delta (0 = off).
    """

    def __init__(self, root: nn.Module, deltas: Mapping[str, LowRankDelta], scale: float = 1.0):
        super().__init__()
        modules = dict(root.named_modules())
        for path, delta in deltas.items():
            if path not in modules:
                raise ValueError(f"`deltas` names {path!r}, which is not a module of the model.")
            if not isinstance(delta, LowRankDelta):
                raise TypeError(f"`deltas[{path!r}]` must be a LowRankDelta, got {type(delta).__name__}.")
        object.__setattr__(self, "_root", root)
        self.paths = list(deltas)
        self.deltas = nn.ModuleDict({self._slot(p): d for p, d in deltas.items()})
        self.scale = float(scale)
        self._handles: list[RemovableHandle] = []
        self._wants_hooks = False
        self._originals: dict[str, torch.Tensor] = {}

    @staticmethod
    def _slot(path: str) -> str:
        return path.replace(".", "__")

    def delta(self, path: str) -> LowRankDelta:
        """The delta attached at ``path``."""
        return self.deltas[self._slot(path)]

    def base_module(self, path: str) -> nn.Module:
        """The base module at ``path`` in the model."""
        return self._root.get_submodule(path)

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @property
    def fused(self) -> bool:
        return bool(self._originals)

    def attach(self) -> LowRankAdapter:
        """Register the forward hooks (after :meth:`unfuse` when fused). Attaching twice is a no-op."""
        self._wants_hooks = True
        if not self.fused:
            self._register_hooks()
        return self

    def _register_hooks(self) -> None:
        if self.attached:
            return
        for path in self.paths:
            self._handles.append(self.base_module(path).register_forward_hook(self._make_hook(path)))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, path: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if self.fused or self.scale == 0.0:
                return output
            delta = self.delta(path)
            x = args[0]
            weight = delta.down.weight
            if weight.device != x.device:
                delta.to(x.device)
            return output + (delta(x.to(weight.dtype)) * self.scale).to(output.dtype)

        return hook

    def set_scale(self, scale: float) -> None:
        """Set the multiplier of every delta (0 = off). A fused adapter is re-fused at the new scale."""
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"`scale` must be a finite number, got {scale!r}.")
        was_fused = self.fused
        if was_fused:
            self.unfuse()
        self.scale = float(scale)
        if was_fused:
            self.fuse()

    @torch.no_grad()
    def fuse(self) -> None:
        """Add ``scale * delta_weight`` into each base weight and remove the hooks (nothing extra in the forward).

        The original weights are kept so that :meth:`unfuse` restores them exactly.
        """
        if self.fused:
            return
        for path in self.paths:
            base = self.base_module(path)
            self._originals[path] = base.weight.detach().clone()
            update = self.delta(path).delta_weight().to(base.weight.device, torch.float32) * self.scale
            base.weight.copy_((base.weight.float() + update).to(base.weight.dtype))
        self._remove_hooks()

    @torch.no_grad()
    def unfuse(self) -> None:
        """Restore the weights saved by :meth:`fuse` (bitwise) and re-attach the hooks if it was attached."""
        was_fused = self.fused
        for path, original in self._originals.items():
            self.base_module(path).weight.copy_(original)
        self._originals.clear()
        if was_fused and self._wants_hooks:
            self._register_hooks()

    def unload(self) -> None:
        """Unfuse if fused and remove the hooks: the model is bit for bit as before :meth:`attach`."""
        self._wants_hooks = False
        self.unfuse()
        self._remove_hooks()

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The deltas' parameters (``alpha`` is a buffer and never trains)."""
        return self.deltas.parameters()

    # -- kohya-style state dict ----------------------------------------------------------------------------------------
    def kohya_state_dict(self, prefix: str = "lora_unet") -> dict[str, torch.Tensor]:
        """``{prefix_path.lora_down.weight, .lora_up.weight, .alpha}`` for every delta (CPU-independent views)."""
        out = {}
        for path in self.paths:
            delta, key = self.delta(path), kohya_key(path, prefix)
            out[f"{key}.lora_down.weight"] = delta.down.weight.detach()
            out[f"{key}.lora_up.weight"] = delta.up.weight.detach()
            out[f"{key}.alpha"] = delta.alpha.detach()
        return out

    def expected_kohya_shapes(self, prefix: str = "lora_unet") -> dict[str, torch.Size]:
        """Key -> shape that :meth:`load_kohya_state_dict` needs."""
        return {k: v.shape for k, v in self.kohya_state_dict(prefix).items()}

    @torch.no_grad()
    def load_kohya_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], prefix: str = "lora_unet", *, source: str | None = None
    ) -> None:
        """Load kohya-style weights; every key must be consumed and every shape must match, else nothing changes."""
        validate_state_dict(state_dict, self.expected_kohya_shapes(prefix), what="low-rank", source=source)
        for key, value in state_dict.items():
            if not torch.isfinite(value).all():
                raise AdapterWeightsError(f"Tensor {key!r} holds NaN or inf values; nothing was changed.")
        was_fused = self.fused
        if was_fused:
            self.unfuse()
        for path in self.paths:
            delta, key = self.delta(path), kohya_key(path, prefix)
            delta.down.weight.copy_(state_dict[f"{key}.lora_down.weight"])
            delta.up.weight.copy_(state_dict[f"{key}.lora_up.weight"])
            delta.alpha.copy_(state_dict[f"{key}.alpha"])
        if was_fused:
            self.fuse()
