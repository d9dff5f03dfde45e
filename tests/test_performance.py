"""Structural performance regression checks: counts of attention calls, model passes, host syncs, hooks
and graph breaks on the tiny models. Nothing here measures time.
"""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch.utils._python_dispatch import TorchDispatchMode

from adapters.i2v_adapter import I2VAdapter
from adapters.mv_adapter import MVAdapter
from adapters.processors import iter_self_attention
from tests import tiny_models

# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


class _SDPACounter:
    """Wraps ``F.scaled_dot_product_attention`` (looked up at call time by diffusers and our processors)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        original = F.scaled_dot_product_attention

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", counted)


class _ScalarReads(TorchDispatchMode):
    """Counts host reads of tensor data: ``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``, ...)
    plus calls of ``Tensor.tolist`` / ``Tensor.cpu`` / ``Tensor.numpy`` (not dispatched on a CPU tensor, so they are
    wrapped for the duration). Each is a host-device sync on an accelerator."""

    _METHODS = ("tolist", "cpu", "numpy")

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.paused = False
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.paused:
            self.calls += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in self._METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def wrapped(tensor, *args, _original=original, **kwargs):
                self.calls += 0 if self.paused else 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, original)
            self._saved.clear()


def test_scalar_read_recorder_sees_item_tolist_and_cpu():
    x = torch.arange(3.0)
    assert _scalar_reads(lambda: (x.sum().item(), x.tolist(), bool(x[0] > 1), x.cpu())) == 4
    assert torch.Tensor.tolist(x) == [0.0, 1.0, 2.0]  # restored


def _scalar_reads(fn, *, scheduler=None) -> int:
    """Host reads made by ``fn``; with ``scheduler``, reads inside ``step`` of its class (diffusers' code; the
    pipeline may sample with a copy, e.g. MV-Adapter's noise-shifted scheduler) are not counted."""
    mode = _ScalarReads()
    cls = type(scheduler) if scheduler is not None else None
    if cls is not None:
        step = cls.step

        def unmetered_step(*args, **kwargs):
            mode.paused = True
            try:
                return step(*args, **kwargs)
            finally:
                mode.paused = False

        cls.step = unmetered_step
    try:
        with torch.no_grad(), mode:
            fn()
    finally:
        if cls is not None:
            cls.step = step
    return mode.calls


def _hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs) for m in model.modules()
    )


def _mv_adapter(unet, mode: str = "row", use_ref: bool = True) -> MVAdapter:
    adapter = MVAdapter.from_unet(unet, attention_mode=mode, use_ref=use_ref, num_views=2)
    tiny_models.randomise_(adapter.trainable_parameters(), std=0.1)
    return adapter


def _mv_inputs(views: int, samples: int = 2, size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(samples * views, 4, size, size, generator=gen)
    text = torch.randn(samples * views, 5, 32, generator=gen)
    return sample, text


def _mv_forward(unet, adapter: MVAdapter, views: int, samples: int = 2):
    """One UNet forward with ``views`` views per sample, with reference states from a caching pass."""
    sample, text = _mv_inputs(views, samples)
    state = adapter.state
    with torch.no_grad():
        if adapter.config.use_ref:
            with state.override(caching=True, num_views=1):
                unet(sample[:samples], 0, encoder_hidden_states=text[:samples])
            ref = dict(state.cache)
            state.cache.clear()
        else:
            ref = None
        with state.override(num_views=views, ref_states=ref):
            return unet(sample, 10, encoder_hidden_states=text).sample


def _i2v_inputs(frames: int, batch: int = 2, size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, size, size, generator=gen)
    text = torch.randn(batch * frames, 5, 32, generator=gen)
    return sample, text


def _i2v_forward(unet, frames: int):
    sample, text = _i2v_inputs(frames)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


# ----------------------------------------------------------------------------------------------------------------------
# 1-2. one batched SDPA call per branch per layer, independent of views / frames
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["row", "full"])
def test_mv_attention_calls_do_not_grow_with_views(sd15_unet, monkeypatch, mode):
    unet = sd15_unet
    sample, text = _mv_inputs(2)
    counter = _SDPACounter(monkeypatch)
    with torch.no_grad():
        unet(sample, 10, encoder_hidden_states=text)
    base_calls = counter.calls
    assert base_calls > 0  # the counter sees diffusers' own attention calls
    adapter = _mv_adapter(unet, mode=mode)
    try:
        layers = len(adapter.processors)
        counts = {}
        for views in (2, 6):
            counter.calls = 0
            _mv_forward(unet, adapter, views)
            counts[views] = counter.calls - base_calls  # minus the base calls of the main pass
        # caching pass: base calls only; main pass: base + one mv + one ref SDPA per self-attention layer
        assert counts[2] == counts[6] == base_calls + 2 * layers, counts
    finally:
        adapter.unload()


def test_i2v_attention_calls_do_not_grow_with_frames(motion_unet, monkeypatch):
    unet = motion_unet
    counter = _SDPACounter(monkeypatch)
    base = {}
    for frames in (2, 4):
        counter.calls = 0
        _i2v_forward(unet, frames)
        base[frames] = counter.calls
    assert base[2] == base[4]
    adapter = I2VAdapter.attach(unet)
    try:
        tiny_models.randomise_(adapter.parameters(include_content=False), std=0.05)
        counts = {}
        for frames in (2, 4):
            counter.calls = 0
            _i2v_forward(unet, frames)
            counts[frames] = counter.calls
        assert counts[2] == counts[4] == base[2] + len(adapter.processors), (counts, base)
    finally:
        adapter.unload()


def test_i2v_projects_keys_and_values_once_per_layer(motion_unet):
    """With diffusers' default processor as the base, the first-frame branch reuses the layer's own keys/values (a
    slice of frame 0) instead of projecting frame 0 again: one ``to_k`` / ``to_v`` call per layer and UNet pass."""
    unet = motion_unet
    layers = [attn for _, attn in iter_self_attention(unet)]
    calls = {"k": 0, "v": 0}
    handles = []
    for attn in layers:
        handles.append(attn.to_k.register_forward_pre_hook(lambda *a: calls.__setitem__("k", calls["k"] + 1)))
        handles.append(attn.to_v.register_forward_pre_hook(lambda *a: calls.__setitem__("v", calls["v"] + 1)))
    adapter = I2VAdapter.attach(unet)
    try:
        tiny_models.randomise_(adapter.parameters(include_content=False), std=0.05)
        _i2v_forward(unet, 3)
        assert calls == {"k": len(layers), "v": len(layers)}, calls
    finally:
        adapter.unload()
        for handle in handles:
            handle.remove()


def test_i2v_fused_path_matches_generic_path_and_zero_init_is_bitwise_base(motion_unet):
    """The one-pass processor (base ``AttnProcessor2_0``) computes what the generic path (any other base processor:
    base output + branch) computes; a fresh adapter leaves the UNet bitwise unchanged on both paths."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    class OtherBase(AttnProcessor2_0):
        pass

    unet = motion_unet
    base = _i2v_forward(unet, 3)
    adapter = I2VAdapter.attach(unet)
    try:
        assert torch.equal(_i2v_forward(unet, 3), base)
        tiny_models.randomise_(adapter.parameters(include_content=False), std=0.05)
        fused = _i2v_forward(unet, 3)
        assert not torch.allclose(fused, base, atol=1e-3)
        for proc in adapter.processors.values():
            object.__setattr__(proc, "base_processor", OtherBase())
        torch.testing.assert_close(_i2v_forward(unet, 3), fused, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            for proc in adapter.processors.values():
                proc.to_out_i2v.weight.zero_()
                proc.to_out_i2v.bias.zero_()
        assert torch.equal(_i2v_forward(unet, 3), base)
    finally:
        adapter.unload()


# ----------------------------------------------------------------------------------------------------------------------
# 3-4. once-per-call work stays once per call (I2MV reference pass, condition maps, text embeddings)
# ----------------------------------------------------------------------------------------------------------------------


def test_i2mv_reference_condition_and_text_computed_once_per_call(tiny_sd21):
    from pipelines import MVAdapterPipeline

    pipe = MVAdapterPipeline.from_pretrained(tiny_sd21, mv_adapter_config={"use_ref": True})
    pipe.set_progress_bar_config(disable=True)
    tiny_models.randomise_(pipe.mv_adapter.trainable_parameters(), std=0.05)
    assert pipe.mv_adapter.cond_encoder is not None
    calls = {"unet": 0, "cond": 0, "text": 0}

    def counter(key):
        return lambda *a, **k: calls.__setitem__(key, calls[key] + 1)

    pipe.unet.register_forward_pre_hook(counter("unet"))
    pipe.mv_adapter.cond_encoder.register_forward_pre_hook(counter("cond"))
    pipe.text_encoder.register_forward_pre_hook(counter("text"))
    ref_image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    per_steps = {}
    for steps in (2, 4):
        for key in calls:
            calls[key] = 0
        pipe("a cat", image=ref_image, negative_prompt="bad", num_views=3, num_inference_steps=steps,
             guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="latent")  # fmt: skip
        per_steps[steps] = dict(calls)
    # CFG is batched into one UNet call per step; the reference (t=0) pass runs once per call
    assert per_steps[4]["unet"] - per_steps[2]["unet"] == 2, per_steps
    assert per_steps[2]["unet"] == 2 + 1, per_steps
    assert per_steps[2]["cond"] == per_steps[4]["cond"] == 1, per_steps
    assert per_steps[2]["text"] == per_steps[4]["text"] >= 1, per_steps
    assert per_steps[2]["text"] <= 2, per_steps  # prompt + negative prompt at most


# ----------------------------------------------------------------------------------------------------------------------
# 5. no host-device syncs (scalar reads) inside the adapters' forward
# ----------------------------------------------------------------------------------------------------------------------


def test_mv_forward_reads_no_scalars(sd15_unet):
    unet = sd15_unet
    sample, text = _mv_inputs(2)
    base = _scalar_reads(lambda: unet(sample, 10, encoder_hidden_states=text))
    adapter = _mv_adapter(unet, mode="row")
    try:
        with_adapter = _scalar_reads(lambda: _mv_forward(unet, adapter, 2))
    finally:
        adapter.unload()
    # two UNet passes (reference cache + main); diffusers' UNet itself reads nothing on this version
    assert with_adapter == 2 * base == 0, (with_adapter, base)


def test_i2v_forward_reads_no_scalars(motion_unet):
    unet = motion_unet
    base = _scalar_reads(lambda: _i2v_forward(unet, 3))
    adapter = I2VAdapter.attach(unet)
    try:
        tiny_models.randomise_(adapter.parameters(include_content=False), std=0.05)
        assert _scalar_reads(lambda: _i2v_forward(unet, 3)) == base == 0
    finally:
        adapter.unload()


def test_res_adapter_and_hipa_forward_read_no_scalars(sd15_unet):
    from adapters.hipa import HiPAConfig, add_hipa_lora
    from adapters.res_adapter import init_res_adapter, unload_res_adapter

    unet = sd15_unet
    sample, text = _mv_inputs(1)

    def forward():
        return unet(sample, 10, encoder_hidden_states=text)

    base = _scalar_reads(forward)
    state = init_res_adapter(unet)
    try:
        tiny_models.randomise_(state.lora.trainable_parameters(), std=0.05)
        assert _scalar_reads(forward) == base == 0  # unfused: LoRA hooks + norms
    finally:
        unload_res_adapter(unet)

    lora_unet = UNet2DConditionModel.from_config(unet.config).eval()
    lora_unet.load_state_dict(unet.state_dict())
    add_hipa_lora(lora_unet, HiPAConfig(rank=4))
    tiny_models.randomise_([p for n, p in lora_unet.named_parameters() if ".lora_" in n], std=0.05)
    assert _scalar_reads(lambda: lora_unet(sample, 10, encoder_hidden_states=text)) == base == 0


def test_denoising_loops_add_no_host_reads_per_step(tiny_sd21, tiny_sd15, tiny_animatediff):
    """The whole pipeline call, steps 2 vs 4: no read per step outside diffusers' scheduler ``step`` (DDIM indexes
    ``alphas_cumprod`` with the 0-dim timestep tensor, a read the base diffusers pipelines make too)."""
    from diffusers import MotionAdapter

    from pipelines import HiPAPipeline, I2VAdapterPipeline, MVAdapterPipeline

    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mv = MVAdapterPipeline.from_pretrained(tiny_sd21, mv_adapter_config={"use_ref": True})
    motion = MotionAdapter.from_pretrained(tiny_animatediff / "motion_adapter")
    i2v = I2VAdapterPipeline.from_pretrained(tiny_animatediff, motion_adapter=motion, i2v_adapter="fresh")
    hipa = HiPAPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    calls = {
        "mv": lambda n: mv(
            "a", image=image, num_views=3, num_inference_steps=n, guidance_scale=3.0, output_type="latent"
        ),
        "i2v": lambda n: i2v(
            image=image.resize((24, 16)),
            prompt="a",
            num_frames=3,
            num_inference_steps=n,
            guidance_scale=2.0,
            output_type="latent",
        ),  # fmt: skip
        "hipa": lambda n: hipa("a", num_inference_steps=n, height=32, width=32, output_type="latent"),
    }
    pipes = {"mv": mv, "i2v": i2v, "hipa": hipa}
    for name, call in calls.items():
        pipe = pipes[name]
        pipe.set_progress_bar_config(disable=True)
        reads = {n: _scalar_reads(functools.partial(call, n), scheduler=pipe.scheduler) for n in (2, 4)}
        assert reads[2] == reads[4], (name, reads)


# ----------------------------------------------------------------------------------------------------------------------
# 6. fused adapters leave nothing extra in the forward
# ----------------------------------------------------------------------------------------------------------------------


def test_fused_res_adapter_adds_no_modules_or_hooks(sd15_unet):
    from adapters.res_adapter import fuse_res_adapter, init_res_adapter, unload_res_adapter

    unet = sd15_unet
    sample, text = _mv_inputs(1)
    base_hooks, base_modules = _hook_count(unet), len(list(unet.modules()))
    state = init_res_adapter(unet)
    try:
        tiny_models.randomise_(state.lora.trainable_parameters(), std=0.05)
        with torch.no_grad():
            unfused = unet(sample, 10, encoder_hidden_states=text).sample
        assert _hook_count(unet) > base_hooks  # unfused: the LoRA runs as forward hooks
        fuse_res_adapter(unet)
        assert _hook_count(unet) == base_hooks
        assert len(list(unet.modules())) == base_modules
        with torch.no_grad():
            fused = unet(sample, 10, encoder_hidden_states=text).sample
        torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
    finally:
        unload_res_adapter(unet)


def test_fused_hipa_lora_leaves_no_peft_layers(tiny_sd15):
    from diffusers import StableDiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from adapters.hipa import HiPAConfig, add_hipa_lora

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    unet = pipe.unet.eval()
    base_hooks, base_modules = _hook_count(unet), len(list(unet.modules()))
    sample, text = _mv_inputs(1)
    add_hipa_lora(unet, HiPAConfig(rank=4, alpha=8.0))
    tiny_models.randomise_([p for n, p in unet.named_parameters() if ".lora_" in n], std=0.05)
    with torch.no_grad():
        unfused = unet(sample, 10, encoder_hidden_states=text).sample
    assert any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    pipe.fuse_lora(components=["unet"], lora_scale=1.0)
    # diffusers' fuse_lora alone keeps the peft wrappers (merged, forwarding to base_layer only); unloading the
    # LoRA weights after fusing removes them and keeps the fused weights
    assert all(m.merged for m in unet.modules() if isinstance(m, BaseTunerLayer))
    pipe.unload_lora_weights()
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    assert not any(".lora_" in n for n, _ in unet.named_parameters())
    assert len(list(unet.modules())) == base_modules and _hook_count(unet) == base_hooks
    with torch.no_grad():
        fused = unet(sample, 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# 7. channels_last (torch.compile without graph breaks: tests/test_compile.py)
# ----------------------------------------------------------------------------------------------------------------------


def test_adapters_run_channels_last(tiny_sd15, tiny_animatediff):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").eval()
    adapter = _mv_adapter(unet, mode="row")
    contiguous = _mv_forward(unet, adapter, 3)
    unet.to(memory_format=torch.channels_last)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_mv_forward(unet, adapter, 3), contiguous, atol=1e-5, rtol=1e-5)

    motion = tiny_models.tiny_motion_unet().eval()
    i2v = I2VAdapter.attach(motion)
    tiny_models.randomise_(i2v.parameters(include_content=False), std=0.05)
    contiguous = _i2v_forward(motion, 3)
    motion.to(memory_format=torch.channels_last)
    assert motion.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_i2v_forward(motion, 3), contiguous, atol=1e-5, rtol=1e-5)
