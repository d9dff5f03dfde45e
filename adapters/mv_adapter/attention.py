"""MV-Adapter's decoupled attention: multi-view and reference attention beside every UNet self-attention.

For each ``attn1`` of the UNet the processor computes, in one batched pass over all views::

    out = base_attn1(x) + mv_scale * to_out_mv(MVAttn(x)) + ref_scale * to_out_ref(RefAttn(x, ref))

``base_attn1`` is the processor that was there before (so a zero-initialised adapter, or scales 0, reproduce the base
output bit for bit). ``MVAttn`` attends across the views of one sample:

* ``"full"``: every token attends to all tokens of all views of its sample;
* ``"row"``: a token in row ``i`` attends to row ``i`` of every view (the official processor for orthographic rings,
  ``DecoupledMVRowSelfAttnProcessor2_0``);
* ``"row_col"``: the official 6-view geometry layout ``[front, right, back, left, top, bottom]``: rows across views
  0-3, columns across ``[flip(front), back, top, bottom]``, averaged where both apply.

``RefAttn`` attends to the cached ``attn1`` input of the reference image at the same layer. The batch is laid out as
``(samples * views, tokens, channels)`` with the views of one sample contiguous; every query attends to its sample's
reference states, so reference states are ``(samples, ref_tokens, channels)`` and are never repeated per view.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.utils import logging
from torch import nn

logger = logging.get_logger(__name__)

__all__ = ["ATTENTION_MODES", "MVAdapterAttnProcessor", "MVAttentionState", "layer_grid"]

ATTENTION_MODES = ("row", "full", "row_col")


@dataclass
class MVAttentionState:
    """Call-time state shared by all processors of one adapter.

    Attributes:
        num_views: views per sample; the batch must be ``samples * num_views``.
        mv_scale, ref_scale: branch scales (0 switches a branch off exactly).
        latent_hw: spatial size of the UNet input, set by a forward pre-hook on the UNet; used to recover each
            layer's ``(h, w)`` token grid for row attention on non-square images.
        caching: when True, processors store their input in ``cache`` and compute the base attention only (the
            reference pass of image-to-multi-view).
        cache: ``{layer_name: (samples, tokens, channels)}`` filled while ``caching``.
        ref_states: ``{layer_name: (samples, tokens, channels)}`` reference states used by the reference branch;
            ``None`` switches the reference branch off.
        enabled: False makes every processor return the base output (used to run the plain base model).
    """

    num_views: int = 1
    mv_scale: float = 1.0
    ref_scale: float = 1.0
    latent_hw: tuple[int, int] | None = None
    caching: bool = False
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    ref_states: dict[str, torch.Tensor] | None = None
    enabled: bool = True

    @contextlib.contextmanager
    def override(self, **values) -> Iterator[MVAttentionState]:
        """Temporarily set attributes (restored on exit)."""
        old = {k: getattr(self, k) for k in values}
        for k, v in values.items():
            setattr(self, k, v)
        try:
            yield self
        finally:
            for k, v in old.items():
                setattr(self, k, v)


def layer_grid(num_tokens: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """The ``(h, w)`` token grid of a UNet layer with ``num_tokens`` tokens.

    UNet downsamplers map ``n -> ceil(n / 2)``; the grid is found by halving ``latent_hw`` until the token count
    matches. Without ``latent_hw`` the grid must be square.
    """
    if latent_hw is not None:
        h, w = latent_hw
        for _ in range(10):
            if h * w == num_tokens:
                return h, w
            h, w = (h + 1) // 2, (w + 1) // 2
    side = int(round(num_tokens**0.5))
    if side * side == num_tokens:
        return side, side
    raise ValueError(f"Cannot infer the token grid of a layer with {num_tokens} tokens (latent size {latent_hw}).")


def _linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias)


class MVAdapterAttnProcessor(nn.Module):
    r"""Decoupled multi-view + reference attention for one ``attn1`` (a drop-in diffusers processor).

    Parameters (official key names): ``to_q_mv``, ``to_k_mv``, ``to_v_mv`` (no bias), ``to_out_mv.0`` (bias) and the
    same with ``_ref`` when ``use_ref``.

    Args:
        name: the layer's path in the UNet (key of the reference cache).
        query_dim: input channels ``C``; inner_dim: ``heads * head_dim``.
        state: the adapter's shared :class:`MVAttentionState`.
        base_processor: the processor that computes the base self-attention (kept, not registered as a submodule).
        use_mv, use_ref: which branches exist.
        mode: one of ``"row"``, ``"full"``, ``"row_col"``.

    The processor wraps the layer's own processor (``base_processor``): diffusers' processor methods on the UNet
    (``set_default_attn_processor``, ``set_attention_slice`` / ``enable_attention_slicing``, fused QKV) replace that
    base and leave this processor on top (:func:`adapters.processors.install_processor_guard`). When the base is a
    sliced processor (``slice_size``), the multi-view and reference attention are sliced the same way.
    """

    wraps_base_processor = True

    def __init__(
        self,
        name: str,
        query_dim: int,
        inner_dim: int,
        *,
        state: MVAttentionState,
        base_processor: object,
        use_mv: bool = True,
        use_ref: bool = False,
        mode: str = "row",
    ):
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"`mode` must be one of {ATTENTION_MODES}, got {mode!r}.")
        self.name = name
        self.use_mv = use_mv
        self.use_ref = use_ref
        self.mode = mode
        # Plain attributes (not submodules), so the state dict holds only the adapter's own weights.
        self.__dict__["state"] = state
        self.__dict__["base_processor"] = base_processor
        if use_mv:
            self.to_q_mv = _linear(query_dim, inner_dim, False)
            self.to_k_mv = _linear(query_dim, inner_dim, False)
            self.to_v_mv = _linear(query_dim, inner_dim, False)
            self.to_out_mv = nn.ModuleList([_linear(inner_dim, query_dim, True), nn.Dropout(0.0)])
        if use_ref:
            self.to_q_ref = _linear(query_dim, inner_dim, False)
            self.to_k_ref = _linear(query_dim, inner_dim, False)
            self.to_v_ref = _linear(query_dim, inner_dim, False)
            self.to_out_ref = nn.ModuleList([_linear(inner_dim, query_dim, True), nn.Dropout(0.0)])

    @torch.no_grad()
    def init_from_base(self, attn: Attention, zero_out: bool = True) -> None:
        """Copy the base ``to_q/k/v`` into each branch; zero the output projections (or copy them too)."""
        for suffix in ("mv", "ref"):
            if not getattr(self, f"use_{suffix}"):
                continue
            for proj in ("q", "k", "v"):
                getattr(self, f"to_{proj}_{suffix}").weight.copy_(getattr(attn, f"to_{proj}").weight)
            out = getattr(self, f"to_out_{suffix}")[0]
            if zero_out:
                out.weight.zero_()
                out.bias.zero_()
            else:
                out.weight.copy_(attn.to_out[0].weight)
                if attn.to_out[0].bias is not None:
                    out.bias.copy_(attn.to_out[0].bias)
                else:
                    out.bias.zero_()

    # ------------------------------------------------------------------------------------------------------------
    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``scaled_dot_product_attention`` on ``(B, heads, L, d)``; in chunks of ``slice_size`` (batch x heads) rows
        when the base processor is sliced (``SlicedAttnProcessor``), as diffusers' attention slicing does."""
        slice_size = getattr(self.base_processor, "slice_size", None)
        if not slice_size:
            return F.scaled_dot_product_attention(q, k, v)
        b, heads, length, d = q.shape
        q2, k2, v2 = (t.reshape(b * heads, t.shape[2], t.shape[3]) for t in (q, k, v))
        parts = [
            F.scaled_dot_product_attention(q2[i : i + slice_size], k2[i : i + slice_size], v2[i : i + slice_size])
            for i in range(0, b * heads, slice_size)
        ]
        return torch.cat(parts).reshape(b, heads, length, v.shape[-1])

    def _mv_attention(self, attn: Attention, x: torch.Tensor, num_views: int) -> torch.Tensor:
        """``(S*V, N, C) -> (S*V, N, inner)``: multi-view attention, one batched SDPA call per layout."""
        bv, n, _ = x.shape
        s, v = bv // num_views, num_views
        heads = attn.heads
        q, k, val = self.to_q_mv(x), self.to_k_mv(x), self.to_v_mv(x)
        inner = q.shape[-1]
        d = inner // heads
        if self.mode == "full":

            def split(t):  # (S, heads, V*N, d)
                return t.reshape(s, v * n, heads, d).transpose(1, 2)

            o = self._sdpa(split(q), split(k), split(val))
            return o.transpose(1, 2).reshape(bv, n, inner)

        h, w = layer_grid(n, self.state.latent_hw)
        if self.mode == "row":

            def rows(t):  # (S*h, heads, V*w, d)
                return t.reshape(s, v, h, w, heads, d).permute(0, 2, 4, 1, 3, 5).reshape(s * h, heads, v * w, d)

            o = self._sdpa(rows(q), rows(k), rows(val))
            return o.reshape(s, h, heads, v, w, d).permute(0, 3, 1, 4, 2, 5).reshape(bv, n, inner)

        # row_col: the official 6-view geometry layout.
        if v != 6:
            raise ValueError(f"Attention mode 'row_col' needs exactly 6 views, got num_views={v}.")
        grid = [t.reshape(s, v, h, w, heads, d) for t in (q, k, val)]
        row_in = [t[:, 0:4].permute(0, 2, 4, 1, 3, 5).reshape(s * h, heads, 4 * w, d) for t in grid]
        row = self._sdpa(*row_in)
        row = row.reshape(s, h, heads, 4, w, d).permute(0, 3, 1, 4, 2, 5)  # (S, 4, h, w, heads, d)

        def col_views(t):
            return torch.cat([t[:, 0:1].flip(3), t[:, [2, 4, 5]]], dim=1)  # (S, 4, h, w, heads, d)

        col_in = [col_views(t).permute(0, 3, 4, 1, 2, 5).reshape(s * w, heads, 4 * h, d) for t in grid]
        col = self._sdpa(*col_in)
        col = col.reshape(s, w, heads, 4, h, d).permute(0, 3, 4, 1, 2, 5)  # (S, 4, h, w, heads, d)
        col = torch.cat([col[:, 0:1].flip(3), col[:, 1:]], dim=1)
        out = torch.stack(
            [(row[:, 0] + col[:, 0]) / 2, row[:, 1], (row[:, 2] + col[:, 1]) / 2, row[:, 3], col[:, 2], col[:, 3]],
            dim=1,
        )
        return out.reshape(bv, n, inner)

    def _ref_attention(self, attn: Attention, x: torch.Tensor, ref: torch.Tensor, num_views: int) -> torch.Tensor:
        """``(S*V, N, C)`` queries against reference states ``(S or 1, M, C)`` -> ``(S*V, N, inner)``."""
        bv, n, _ = x.shape
        s = bv // num_views
        ref = ref.to(device=x.device, dtype=x.dtype)
        if ref.shape[0] == 1 and s > 1:
            ref = ref.expand(s, -1, -1)
        if ref.shape[0] != s:
            raise ValueError(
                f"Reference states of layer {self.name!r} hold {ref.shape[0]} samples but the batch has {s} "
                f"samples of {num_views} views."
            )
        heads = attn.heads
        q = self.to_q_ref(x)
        inner = q.shape[-1]
        d = inner // heads
        q = q.reshape(s, num_views * n, heads, d).transpose(1, 2)
        k = self.to_k_ref(ref).reshape(s, -1, heads, d).transpose(1, 2)
        val = self.to_v_ref(ref).reshape(s, -1, heads, d).transpose(1, 2)
        o = self._sdpa(q, k, val)
        return o.transpose(1, 2).reshape(bv, n, inner)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        mv_scale: float | None = None,
        ref_scale: float | None = None,
        num_views: int | None = None,
    ) -> torch.Tensor:
        """Args: ``hidden_states`` ``(S*V, N, C)``; the optional ``mv_scale``/``ref_scale``/``num_views`` override
        the shared state for this call (they can come through ``cross_attention_kwargs``)."""
        state = self.state
        base_kwargs = {"encoder_hidden_states": encoder_hidden_states, "attention_mask": attention_mask}
        if temb is not None:
            base_kwargs["temb"] = temb
        if state.caching:
            state.cache[self.name] = hidden_states.detach().clone()
            return self.base_processor(attn, hidden_states, **base_kwargs)
        out = self.base_processor(attn, hidden_states, **base_kwargs)
        if not state.enabled:
            return out
        views = num_views if num_views is not None else state.num_views
        mv_s = state.mv_scale if mv_scale is None else mv_scale
        ref_s = state.ref_scale if ref_scale is None else ref_scale
        use_mv = self.use_mv and mv_s != 0
        ref = state.ref_states.get(self.name) if (self.use_ref and state.ref_states is not None) else None
        use_ref = ref is not None and ref_s != 0
        if not (use_mv or use_ref):
            return out
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError("MVAdapterAttnProcessor supports the token-sequence self-attention of UNet transformers.")
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MVAdapterAttnProcessor is a self-attention processor (no encoder states or masks).")
        if hidden_states.shape[0] % views != 0:
            raise ValueError(f"Batch {hidden_states.shape[0]} is not a multiple of num_views={views}.")
        if use_mv:
            mv = self.to_out_mv[1](self.to_out_mv[0](self._mv_attention(attn, hidden_states, views)))
            out = out + mv * (mv_s / attn.rescale_output_factor)
        if use_ref:
            r = self.to_out_ref[1](self.to_out_ref[0](self._ref_attention(attn, hidden_states, ref, views)))
            out = out + r * (ref_s / attn.rescale_output_factor)
        return out
