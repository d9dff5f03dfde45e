"""adapters.lora: hook-based low-rank deltas with scale / fuse / unfuse / unload shared by every adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters.lora import LowRankAdapter, LowRankDelta, kohya_key
from adapters.weights import AdapterWeightsError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.proj = nn.Linear(8, 6)

    def forward(self, x):
        h = self.down(torch.relu(self.conv_in(x)))
        return self.proj(h.mean(dim=(2, 3)))


TARGETS = ("down", "proj")


def _model():
    torch.manual_seed(0)
    return Net()


def _adapter(net, rank=4, alpha=2.0, randomise=True):
    deltas = {p: LowRankDelta.for_module(net.get_submodule(p), rank, alpha) for p in TARGETS}
    if randomise:
        g = torch.Generator().manual_seed(1)
        for d in deltas.values():
            d.up.weight.data = torch.randn(d.up.weight.shape, generator=g) * 0.1
    return LowRankAdapter(net, deltas).attach()


@pytest.fixture
def x():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_fresh_delta_is_bitwise_identity(x):
    net = _model()
    base = net(x)
    _adapter(net, randomise=False)
    assert torch.equal(net(x), base)


def test_delta_shapes_follow_kohya_locon():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    d = LowRankDelta.for_module(conv, 4)
    assert d.down.kernel_size == (3, 3) and d.down.stride == (2, 2) and d.down.padding == (1, 1)
    assert d.up.kernel_size == (1, 1)
    assert d.delta_weight().shape == conv.weight.shape
    assert float(d.alpha) == 4.0  # alpha defaults to rank
    lin = nn.Linear(5, 7)
    assert LowRankDelta.for_module(lin, 2).delta_weight().shape == lin.weight.shape
    with pytest.raises(TypeError, match="nn.Linear and nn.Conv2d"):
        LowRankDelta.for_module(nn.GroupNorm(2, 8), 2)
    with pytest.raises(ValueError, match="rank"):
        LowRankDelta.for_module(conv, 0)


def test_hook_matches_dense_weight_update(x):
    net = _model()
    adapter = _adapter(net)
    out = net(x)
    ref = _model()
    with torch.no_grad():
        for p in TARGETS:
            ref.get_submodule(p).weight += adapter.delta(p).delta_weight()
    torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)


def test_scale_zero_is_base_and_scale_is_linear(x):
    net = _model()
    base = net(x)
    adapter = _adapter(net)
    full = net(x)
    assert not torch.allclose(full, base)
    adapter.set_scale(0.0)
    assert torch.equal(net(x), base)
    adapter.set_scale(0.5)
    half = net(x)
    assert not torch.allclose(half, base) and not torch.allclose(half, full)
    with pytest.raises(ValueError, match="scale"):
        adapter.set_scale(float("nan"))


def test_fuse_equals_unfused_and_unfuse_restores_weights(x):
    net = _model()
    before = _snapshot(net)
    adapter = _adapter(net)
    unfused = net(x)
    adapter.fuse()
    assert adapter.fused
    torch.testing.assert_close(net(x), unfused, atol=1e-6, rtol=1e-5)
    adapter.set_scale(0.3)  # re-fuses at the new scale
    adapter.unfuse()
    fused_again_ref = net(x)
    adapter.fuse()
    torch.testing.assert_close(net(x), fused_again_ref, atol=1e-6, rtol=1e-5)
    adapter.unfuse()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_unload_restores_bitwise(x):
    net = _model()
    base, before = net(x), _snapshot(net)
    adapter = _adapter(net)
    adapter.fuse()
    adapter.unload()
    assert not adapter.attached and not adapter.fused
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert torch.equal(net(x), base)


def test_base_state_dict_keys_untouched():
    net = _model()
    keys = list(net.state_dict())
    _adapter(net)
    assert list(net.state_dict()) == keys


def test_kohya_state_dict_round_trip(x):
    net = _model()
    adapter = _adapter(net)
    sd = {k: v.clone() for k, v in adapter.kohya_state_dict().items()}
    assert set(sd) == {f"{kohya_key(p)}.{s}" for p in TARGETS for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    out = net(x)
    adapter.unload()
    other = _adapter(net, randomise=False)
    other.load_kohya_state_dict(sd)
    assert torch.equal(net(x), out)


def test_bad_state_dict_leaves_adapter_unchanged(x):
    net = _model()
    adapter = _adapter(net)
    out = net(x)
    good = adapter.kohya_state_dict()
    missing = {k: v for k, v in good.items() if "proj" not in k}
    with pytest.raises(AdapterWeightsError, match="missing keys"):
        adapter.load_kohya_state_dict(missing)
    wrong = dict(good)
    wrong["lora_unet_down.lora_up.weight"] = torch.zeros(8, 5, 1, 1)
    with pytest.raises(AdapterWeightsError, match="shape mismatches"):
        adapter.load_kohya_state_dict(wrong)
    nan = {k: v.clone() for k, v in good.items()}
    nan["lora_unet_proj.lora_up.weight"][0, 0] = float("nan")
    with pytest.raises(AdapterWeightsError, match="NaN"):
        adapter.load_kohya_state_dict(nan)
    assert torch.equal(net(x), out)


def test_unknown_target_is_refused():
    net = _model()
    with pytest.raises(ValueError, match="not a module"):
        LowRankAdapter(net, {"nope": LowRankDelta.for_module(net.proj, 2)})


def test_composes_with_peft_lora(x):
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    net = _model()
    base = net(x)
    ours = _adapter(net)
    with_ours = net(x)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["down"], init_lora_weights=False), net)
    both = net(x)
    assert not torch.allclose(both, with_ours)
    ours.set_scale(0.0)  # ours off, peft on
    peft_only = net(x)
    assert not torch.allclose(peft_only, base)
    ours.set_scale(1.0)
    torch.testing.assert_close(net(x), both)
    for module in net.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(False)
    torch.testing.assert_close(net(x), with_ours)  # peft off, ours still active


def test_gradients_flow_only_to_deltas(x):
    net = _model()
    for p in net.parameters():
        p.requires_grad_(False)
    adapter = _adapter(net)
    net(x).sum().backward()
    grads = [p.grad for p in adapter.trainable_parameters()]
    assert all(g is not None for g in grads)
    assert all(p.grad is None for p in net.parameters())


def test_follows_input_device_and_dtype(x):
    net = _model().to(torch.bfloat16)
    adapter = _adapter(net)
    out = net(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert adapter.delta("down").down.weight.dtype == torch.float32


def test_fused_adapter_leaves_no_hooks(x):
    net = _model()
    adapter = _adapter(net)
    hooks = {p: len(net.get_submodule(p)._forward_hooks) for p in TARGETS}
    assert all(n == 1 for n in hooks.values())
    adapter.fuse()
    assert all(len(net.get_submodule(p)._forward_hooks) == 0 for p in TARGETS)
    adapter.unfuse()
    assert all(len(net.get_submodule(p)._forward_hooks) == 1 for p in TARGETS)
    adapter.fuse()
    adapter.unload()
    assert all(len(net.get_submodule(p)._forward_hooks) == 0 for p in TARGETS)
