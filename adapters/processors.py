"""Swap diffusers attention processors in and out, reversibly.

MV-Adapter and I2V-Adapter attach to a UNet by replacing the processors of its self-attention layers (``attn1``)
with processors that hold the adapter's extra projections. These helpers do the swap and keep the originals, so
unloading an adapter puts back exactly the processor objects that were there before.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator

from diffusers.models.attention_processor import Attention
from torch import nn

__all__ = [
    "GUARDED_METHODS",
    "exposed_base_processors",
    "install_processor_guard",
    "processor_guard_paused",
    "is_wrapping_processor",
    "iter_attention",
    "iter_self_attention",
    "remove_processor_guard",
    "restore_attn_processors",
    "swap_attn_processors",
]

#: UNet methods that set processors on every layer; with an adapter attached they act on the adapter's base
#: processors and the adapter stays on top (see :func:`install_processor_guard`).
GUARDED_METHODS = (
    "set_attn_processor",
    "set_default_attn_processor",
    "set_attention_slice",
    "fuse_qkv_projections",
    "unfuse_qkv_projections",
)
_GUARD_ATTR = "_adapter_processor_guard"


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


def is_wrapping_processor(processor: object) -> bool:
    """True for an adapter processor that adds a branch to the output of the processor it wraps (its
    ``base_processor``): MV-Adapter's and I2V-Adapter's ``attn1`` processors."""
    return bool(getattr(processor, "wraps_base_processor", False))


@contextlib.contextmanager
def exposed_base_processors(model: nn.Module) -> Iterator[None]:
    """Temporarily put every wrapping adapter processor's ``base_processor`` back on its layer.

    Inside the block, diffusers' processor methods (``set_default_attn_processor``, ``set_attention_slice``, fused QKV,
    ``set_attn_processor``) see and replace only the base processors. On exit each adapter processor goes back on its
    layer and wraps whatever processor the layer holds then (e.g. ``AttnProcessor``, ``SlicedAttnProcessor``,
    ``FusedAttnProcessor2_0``); a layer given a wrapping processor inside the block keeps it. Nested use is a no-op.
    """
    wrapped = {}
    for path, attn in iter_attention(model):
        if is_wrapping_processor(attn.processor) and attn.processor.base_processor is not None:
            wrapped[path] = (attn, attn.processor)
            attn.set_processor(attn.processor.base_processor)
    try:
        yield
    finally:
        for attn, wrapper in wrapped.values():
            current = attn.processor
            if is_wrapping_processor(current):
                continue
            object.__setattr__(wrapper, "base_processor", current)
            attn.set_processor(wrapper)


def _guarded(method: Callable) -> Callable:
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        with exposed_base_processors(self):
            return method(self, *args, **kwargs)

    return guarded


def install_processor_guard(model: nn.Module) -> None:
    """Make the UNet's processor-setting methods (:data:`GUARDED_METHODS`) keep attached adapter processors.

    Each method runs inside :func:`exposed_base_processors`, so ``unet.set_default_attn_processor()`` resets the base
    attention to the default and the adapter stays on top of it, ``set_attention_slice`` slices the base attention (an
    adapter processor may slice its own branch from its base's ``slice_size``), and fused QKV fuses the base
    projections. Installed per instance by an adapter's attach (counted, so two adapters on one UNet share it) and
    removed by the last :func:`remove_processor_guard`.
    """
    count = getattr(model, _GUARD_ATTR, 0)
    if count == 0:
        for name in GUARDED_METHODS:
            method = getattr(type(model), name, None)
            if method is None:
                continue

            object.__setattr__(model, name, types.MethodType(_guarded(method), model))
    object.__setattr__(model, _GUARD_ATTR, count + 1)


def remove_processor_guard(model: nn.Module) -> None:
    """Undo one :func:`install_processor_guard`; the last one removes the per-instance methods."""
    count = getattr(model, _GUARD_ATTR, 0)
    if count <= 0:
        return
    if count == 1:
        for name in GUARDED_METHODS:
            model.__dict__.pop(name, None)
        model.__dict__.pop(_GUARD_ATTR, None)
    else:
        object.__setattr__(model, _GUARD_ATTR, count - 1)


@contextlib.contextmanager
def processor_guard_paused(model: nn.Module) -> Iterator[None]:
    """Inside the block the UNet's processor methods act as diffusers' own (they replace adapter processors too), e.g.
    to park adapter processors behind plain ones while diffusers code re-creates every processor."""
    saved = {name: model.__dict__.pop(name) for name in GUARDED_METHODS if name in model.__dict__}
    try:
        yield
    finally:
        model.__dict__.update(saved)
