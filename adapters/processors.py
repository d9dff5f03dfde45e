"""Swap diffusers attention processors in and out, reversibly.

MV-Adapter and I2V-Adapter attach to a UNet by replacing the processors of its self-attention layers (``attn1``)
with processors that hold the adapter's extra projections. These helpers do the swap and keep the originals, so
unloading an adapter puts back exactly the processor objects that were there before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from diffusers.models.attention_processor import Attention
from torch import nn

__all__ = ["iter_attention", "iter_self_attention", "swap_attn_processors", "restore_attn_processors"]


def iter_attention(model: nn.Module) -> Iterator[tuple[str, Attention]]:
    """``(module_path, Attention)`` for every diffusers ``Attention`` module of ``model`` in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            yield name, module


def iter_self_attention(model: nn.Module, *, include_motion: bool = False) -> Iterator[tuple[str, Attention]]:
    """The spatial self-attention layers (``...attn1``) of a UNet.

    Args:
        model: a ``UNet2DConditionModel`` or ``UNetMotionModel``.
        include_motion: also yield the temporal attention of motion modules (skipped by default).
    """
    for name, module in iter_attention(model):
        if not name.endswith("attn1") or module.is_cross_attention:
            continue
        if not include_motion and "motion_modules" in name:
            continue
        yield name, module


def swap_attn_processors(
    model: nn.Module,
    make_processor: Callable[[str, Attention], object | None],
    modules: Iterator[tuple[str, Attention]] | None = None,
) -> dict[str, object]:
    """Replace processors: ``make_processor(path, attn)`` returns the new processor, or ``None`` to leave it.

    Args:
        model: the UNet.
        make_processor: factory called once per attention module.
        modules: which ``(path, Attention)`` pairs to consider (default: :func:`iter_self_attention`).

    Returns:
        ``{path: original_processor}`` for every module that was changed; pass it to
        :func:`restore_attn_processors` to undo. The factory runs for every module before any processor is set, so
        a failing factory leaves the model unchanged.
    """
    pairs = list(iter_self_attention(model) if modules is None else modules)
    replacements = {}
    for path, attn in pairs:
        processor = make_processor(path, attn)
        if processor is not None:
            replacements[path] = (attn, processor)
    originals = {}
    for path, (attn, processor) in replacements.items():
        originals[path] = attn.processor
        attn.set_processor(processor)
    return originals


def restore_attn_processors(model: nn.Module, originals: dict[str, object]) -> None:
    """Put back the processors returned by :func:`swap_attn_processors`."""
    for path, processor in originals.items():
        model.get_submodule(path).set_processor(processor)
