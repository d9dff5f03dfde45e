"""torch.compile readiness: every attention processor / hook-based layer of ours traces with
``torch._dynamo`` in one graph (no graph breaks) on a tiny layer, and its compiled output matches eager.

``torch._dynamo.explain`` traces without compiling (no C++ toolchain needed); graph breaks of diffusers' own layers are
measured on the same layer without our adapter and must stay zero too.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from adapters.i2v_adapter import I2VAdapter
from adapters.mv_adapter import MVAdapter
from adapters.processors import iter_self_attention
from tests import tiny_models

pytestmark = pytest.mark.skipif(
    not hasattr(torch, "_dynamo") or not hasattr(torch._dynamo, "explain"),
    reason="torch._dynamo.explain is not available in this torch build",
)


def _explain(fn, *args):
    """``(graph_break_count, graph_count, op_count)`` of tracing ``fn(*args)`` with dynamo."""
    import torch._dynamo

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            explanation = torch._dynamo.explain(fn)(*args)
        return explanation.graph_break_count, explanation.graph_count, explanation.op_count
    finally:
        torch._dynamo.reset()


def _assert_one_graph(fn, *args, base_ops: int | None = None) -> int:
    breaks, graphs, ops = _explain(fn, *args)
    assert breaks == 0 and graphs == 1, (breaks, graphs)
    assert ops > 0  # the layer was really traced
    if base_ops is not None:
        assert ops > base_ops, (ops, base_ops)  # ... including the adapter's own operations
    return ops


def test_mv_processor_compiles_without_graph_breaks(sd15_unet):
    unet = sd15_unet
    _, attn = next(iter_self_attention(unet))
    x = torch.randn(4, 64, attn.to_q.in_features)
    base_ops = _assert_one_graph(attn, x)
    adapter = MVAdapter.from_unet(unet, attention_mode="row", use_ref=True, num_views=2)
    try:
        tiny_models.randomise_(adapter.trainable_parameters(), std=0.05)
        ref = {name: torch.randn(2, 64, attn.to_q.in_features) for name in adapter.processors}
        with adapter.state.override(num_views=2, latent_hw=(8, 8), ref_states=ref):
            _assert_one_graph(attn, x, base_ops=base_ops)
    finally:
        adapter.unload()


class _OtherBase(AttnProcessor2_0):
    """A base processor that is not exactly ``AttnProcessor2_0``: the I2V processor takes its generic path."""


@pytest.mark.parametrize("path", ["fused", "generic"])
def test_i2v_processor_compiles_without_graph_breaks(motion_unet, path):
    unet = motion_unet
    _, attn = next(iter_self_attention(unet))
    x = torch.randn(6, 64, attn.to_q.in_features)
    base_ops = _assert_one_graph(attn, x)
    adapter = I2VAdapter.attach(unet)
    try:
        tiny_models.randomise_(adapter.parameters(include_content=False), std=0.05)
        adapter.context.num_frames = 3
        if path == "generic":
            for proc in adapter.processors.values():
                object.__setattr__(proc, "base_processor", _OtherBase())
        _assert_one_graph(attn, x, base_ops=base_ops)
        with torch.no_grad():
            eager = attn(x)
            compiled = torch.compile(attn, backend="eager", fullgraph=True)(x)
        torch.testing.assert_close(compiled, eager)
    finally:
        adapter.unload()
        torch._dynamo.reset()


def test_res_adapter_unfused_hooks_compile_without_graph_breaks(sd15_unet):
    from adapters.res_adapter import init_res_adapter, unload_res_adapter

    unet = sd15_unet
    down = unet.down_blocks[0].downsamplers[0]
    up = unet.up_blocks[0].upsamplers[0]
    channels = down.channels
    x_down = torch.randn(2, channels, 8, 8)
    x_up = torch.randn(2, up.channels, 4, 4)
    base_ops = (_assert_one_graph(down, x_down), _assert_one_graph(up, x_up))
    state = init_res_adapter(unet)
    try:
        tiny_models.randomise_(state.lora.trainable_parameters(), std=0.05)
        assert down.conv._forward_hooks and up.conv._forward_hooks  # unfused: the LoRA runs as forward hooks
        _assert_one_graph(down, x_down, base_ops=base_ops[0])
        _assert_one_graph(up, x_up, base_ops=base_ops[1])
    finally:
        unload_res_adapter(unet)


def test_hipa_peft_lora_unfused_compiles_without_graph_breaks(tiny_sd15):
    from adapters.hipa import HiPAConfig, add_hipa_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").eval()
    _, attn = next(iter_self_attention(unet))
    x = torch.randn(2, 64, attn.to_q.in_features)
    base_ops = _assert_one_graph(attn, x)
    add_hipa_lora(unet, HiPAConfig(rank=4))
    tiny_models.randomise_([p for n, p in unet.named_parameters() if ".lora_" in n], std=0.05)
    _assert_one_graph(attn, x, base_ops=base_ops)
