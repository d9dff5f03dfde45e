"""First-frame attention of I2V-Adapter (arXiv 2312.16693), as a diffusers attention processor.

In every spatial self-attention (``attn1`` of the spatial transformer blocks) of a ``UNetMotionModel``, a parallel
cross-frame attention lets every frame look at the first frame:

    out_i = SA(x_i) + scale * W_out'( Attention( x_i W_q', x_1 W_k, x_1 W_v ) )

``W_k`` / ``W_v`` are the frozen base projections of the layer (so LoRAs and fine-tuned bases keep working), ``W_q'``
is a new trainable query projection initialised as a copy of ``W_q`` and ``W_out'`` a new output projection
initialised to zero: a fresh adapter leaves the UNet's prediction bit-identical to the plain motion UNet.

The spatial layers of a ``UNetMotionModel`` see frames folded into the batch, ``(batch * num_frames, tokens, dim)``
with the frames of one video contiguous. The number of frames is not passed to spatial processors, so a forward
pre-hook on the UNet (:func:`install_num_frames_hook`) writes ``sample.shape[2]`` into a small shared
:class:`FrameContext` that every processor reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

__all__ = ["FrameContext", "I2VAdapterAttnProcessor", "first_frame_attention", "install_num_frames_hook"]


class FrameContext:
    """Mutable holder for the frame count of the current UNet call, shared by all I2V processors of one UNet.

    Attributes:
        num_frames: frames per video in the current forward pass; ``None`` before the first call.
    """

    def __init__(self, num_frames: int | None = None):
        self.num_frames = num_frames


def install_num_frames_hook(unet: nn.Module, context: FrameContext) -> torch.utils.hooks.RemovableHandle:
    """Register a forward pre-hook on ``unet`` that stores ``sample.shape[2]`` (frames) in ``context``.

    Works with any caller of the UNet (AnimateDiff pipelines, ControlNet variants, training loops), with accelerate
    offload hooks and with gradient checkpointing, since the count is read before the forward runs.

    Returns:
        The hook handle; ``handle.remove()`` uninstalls it.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if isinstance(sample, torch.Tensor) and sample.ndim == 5:
            context.num_frames = int(sample.shape[2])

    return unet.register_forward_pre_hook(hook, with_kwargs=True)


def first_frame_attention(
    attn: Attention, query_proj: nn.Linear, hidden_states: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """Attention of every frame's queries on the first frame's keys/values, batched over frames.

    Args:
        attn: the base ``Attention`` module (its ``to_k`` / ``to_v`` and head count are used).
        query_proj: the trainable query projection ``W_q'`` (``dim -> inner_dim``).
        hidden_states: ``(batch * num_frames, tokens, dim)``, frames of one video contiguous.
        num_frames: frames per video.

    Returns:
        ``(batch * num_frames, tokens, inner_dim)`` attention output before the output projection.

    All frames of one video share the same keys/values, so the queries of all frames are concatenated along the
    token axis and attend to the first frame's ``tokens`` keys in one SDPA call per video (no key/value copies).
    """
    batch_frames, tokens, dim = hidden_states.shape
    batch = _video_batch(batch_frames, num_frames)
    first = hidden_states.view(batch, num_frames, tokens, dim)[:, 0]  # (B, N, C)
    key = attn.to_k(first)
    value = attn.to_v(first)
    head_dim = key.shape[-1] // attn.heads
    key = key.view(batch, tokens, attn.heads, head_dim).transpose(1, 2)  # (B, H, N, d)
    value = value.view(batch, tokens, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return _first_frame_sdpa(attn, query_proj(hidden_states), key, value, num_frames)


def _video_batch(batch_frames: int, num_frames: int) -> int:
    if num_frames < 1 or batch_frames % num_frames != 0:
        raise ValueError(
            f"`num_frames` ({num_frames}) must divide the batch of the spatial attention ({batch_frames})."
        )
    return batch_frames // num_frames


def _first_frame_sdpa(
    attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """The branch's attention from projected tensors.

    Args:
        query: ``(batch * num_frames, tokens, inner_dim)`` output of ``W_q'`` (``norm_q`` not yet applied).
        key, value: ``(batch, heads, tokens, head_dim)`` first-frame keys (``norm_k`` applied) and values; any
            strides (e.g. a slice of the layer's own keys).

    Returns:
        ``(batch * num_frames, tokens, inner_dim)``.
    """
    batch_frames, tokens, inner_dim = query.shape
    batch, heads, _, head_dim = key.shape
    query = query.view(batch, num_frames * tokens, heads, head_dim).transpose(1, 2)  # (B, H, F*N, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)  # (B, H, F*N, d)
    return out.transpose(1, 2).reshape(batch_frames, tokens, inner_dim).to(query.dtype)


class I2VAdapterAttnProcessor(nn.Module):
    r"""Spatial self-attention plus I2V-Adapter's first-frame attention, like ``IPAdapterAttnProcessor2_0``.

    The base self-attention is computed by the processor that was on the layer before (``base_processor``, usually
    ``AttnProcessor2_0``), unchanged, so with ``scale == 0`` or a zero output projection the result is bitwise the
    base result. The adapter branch is added to it:

        out = base_processor(attn, x) + scale * to_out_i2v(first_frame_attention(attn, to_q_i2v, x))

    When the base is diffusers' ``AttnProcessor2_0`` (the default on torch 2) both are computed in one pass with the
    same operations as ``AttnProcessor2_0`` (bitwise its result when the branch is zero), the branch reusing the
    layer's keys/values of frame 0 instead of projecting frame 0 again; the result equals the two-step form above
    up to float rounding.

    Args:
        hidden_size: the layer's query dimension (``attn.to_q.in_features``).
        inner_dim: the layer's attention width (``attn.to_q.out_features``).
        context: the :class:`FrameContext` giving the frame count of the current UNet call.
        base_processor: the processor computing the layer's own self-attention.
        scale: weight of the adapter branch (0 turns it off).

    Attributes:
        to_q_i2v: ``nn.Linear(hidden_size, inner_dim, bias=False)`` trainable query projection.
        to_out_i2v: ``nn.Linear(inner_dim, hidden_size)`` trainable output projection, zero-initialised.

    diffusers' processor methods on the UNet (``set_default_attn_processor``, attention slicing, fused QKV) replace
    ``base_processor`` and keep this processor on top (:func:`adapters.processors.install_processor_guard`).
    """

    wraps_base_processor = True

    def __init__(
        self,
        hidden_size: int,
        inner_dim: int,
        context: FrameContext,
        base_processor: Callable | None = None,
        scale: float = 1.0,
    ):
        super().__init__()
        if not hasattr(F, "scaled_dot_product_attention"):
            raise ImportError("I2VAdapterAttnProcessor requires torch>=2.0 (scaled_dot_product_attention).")
        self.hidden_size = hidden_size
        self.inner_dim = inner_dim
        self.scale = float(scale)
        self.to_q_i2v = nn.Linear(hidden_size, inner_dim, bias=False)
        self.to_out_i2v = nn.Linear(inner_dim, hidden_size, bias=True)
        nn.init.zeros_(self.to_out_i2v.weight)
        nn.init.zeros_(self.to_out_i2v.bias)
        # plain attributes, not submodules: neither is part of this processor's parameters or state_dict
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "base_processor", base_processor)

    @classmethod
    def for_attention(
        cls, attn: Attention, context: FrameContext, base_processor: Callable | None = None, scale: float = 1.0
    ) -> I2VAdapterAttnProcessor:
        """A processor sized for ``attn`` with ``to_q_i2v`` copied from ``attn.to_q`` (same dtype/device)."""
        processor = cls(attn.to_q.in_features, attn.to_q.out_features, context, base_processor, scale)
        weight = attn.to_q.weight
        processor.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            processor.to_q_i2v.weight.copy_(weight)
        return processor

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """``hidden_states``: ``(batch * num_frames, tokens, dim)`` (or 4-D ``(B*F, C, H, W)``); same shape out.

        With diffusers' ``AttnProcessor2_0`` as the base (the default) and a plain self-attention call, the base
        attention and the branch run in one pass (:meth:`_fused_call`) that projects the keys/values once for all
        frames and gives the branch the first frame's slice of them. Any other base processor (xformers, LoRA or
        fused-QKV processors, a user's own) runs unchanged and the branch is added to its output (generic path).
        """
        base = self.base_processor
        if base is None:
            base = AttnProcessor2_0()
            object.__setattr__(self, "base_processor", base)
        if self.scale == 0.0:
            return base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        num_frames = self.context.num_frames
        if num_frames is None:
            raise RuntimeError(
                "I2VAdapterAttnProcessor does not know the frame count: call the UNet with 5-D `sample` "
                "(batch, channels, frames, height, width) or set `context.num_frames`."
            )
        if (
            type(base) is AttnProcessor2_0
            and encoder_hidden_states is None
            and attention_mask is None
            and not args
            and not kwargs
        ):
            return self._fused_call(attn, hidden_states, temb, num_frames)
        out = base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        x = hidden_states
        if attn.spatial_norm is not None:
            x = attn.spatial_norm(x, temb)
        is_4d = x.ndim == 4
        if is_4d:
            b, c, h, w = x.shape
            x = x.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        branch = self.to_out_i2v(first_frame_attention(attn, self.to_q_i2v, x, num_frames))
        if is_4d:
            branch = branch.transpose(-1, -2).reshape(b, c, h, w)
        return out.add(branch, alpha=self.scale / attn.rescale_output_factor)

    def _fused_call(
        self, attn: Attention, hidden_states: torch.Tensor, temb: torch.Tensor | None, num_frames: int
    ) -> torch.Tensor:
        """Base self-attention (the same operations as ``AttnProcessor2_0``, so bitwise its result) plus the branch,
        sharing the input preparation and the key/value projections: the branch's first-frame keys/values are a
        strided slice of the layer's own, not a second ``to_k`` / ``to_v`` pass over frame 0."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_frames, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_frames, channel, height * width).transpose(1, 2)
        batch_frames = hidden_states.shape[0]
        batch = _video_batch(batch_frames, num_frames)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)  # (B*F, H, N, d)
        key = key.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_frames, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch_frames, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))

        # branch: every frame's W_q' queries on the first frame's keys/values, (B, H, N, d) views of the above
        first_key = key.unflatten(0, (batch, num_frames))[:, 0]
        first_value = value.unflatten(0, (batch, num_frames))[:, 0]
        branch = _first_frame_sdpa(attn, self.to_q_i2v(hidden_states), first_key, first_value, num_frames)
        branch = self.to_out_i2v(branch)

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_frames, channel, height, width)
            branch = branch.transpose(-1, -2).reshape(batch_frames, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor
        return out.add(branch, alpha=self.scale / attn.rescale_output_factor)
