"""MV-Adapter pipelines under ``enable_model_cpu_offload``, as far as a CPU-only machine can show it.

diffusers 0.42.1 refuses ``enable_model_cpu_offload()`` without an accelerator, but accepts an explicit
``device="cpu"``: it then installs the real accelerate ``CpuOffload`` hook chain with execution device ``cpu:0``. That
exercises the offload code paths (hooks, chain order, ``_execution_device``, ``maybe_free_model_hooks``, the
condition encoder's manual move) but every tensor still lives in host memory, so device mismatches and the memory
saving itself can only be checked on a GPU.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torch import nn

from pipelines import MVAdapterPipeline

OFFLOAD_DEVICE = torch.device("cpu:0")
#: The offload hook calls ``module.to("cpu:0")`` before every forward; on CPU that re-allocates the parameters and
#: can change float32 rounding (a plain diffusers SDXL UNet moved to "cpu:0" differs by ~1e-6 from itself), so outputs
#: are compared at this tolerance rather than bitwise.
ATOL = 1e-5


def _randomise(adapter, seed=0, std=0.05):
    torch.manual_seed(seed)
    for p in adapter.trainable_parameters():
        torch.nn.init.normal_(p, std=std)


def _pipe(base, **config):
    pipe = MVAdapterPipeline.from_pretrained(base, mv_adapter_config=config)
    pipe.set_progress_bar_config(disable=True)
    _randomise(pipe.mv_adapter)
    return pipe


def _module_components(pipe) -> dict[str, nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, nn.Module)}


def _spy_moves(module: nn.Module) -> list:
    """Record the device/dtype arguments of every ``module.to(...)`` call."""
    calls = []
    original = module.to

    def to(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    module.to = to
    return calls


def _call(pipe, image=None, **kw):
    return pipe(
        "a chair", image=image, num_views=4, num_inference_steps=2, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(5), output_type="np", **kw,
    ).images[0]  # fmt: skip


@pytest.mark.parametrize("family", ["sd21", "sdxl"])
def test_offload_hooks_every_component_and_output_is_unchanged(family, tiny_sd21, tiny_sdxl):
    base = tiny_sdxl if family == "sdxl" else tiny_sd21
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    plain = _pipe(base, use_ref=True)
    expected_t2mv, expected_i2mv = _call(plain), _call(plain, image)

    pipe = _pipe(base, use_ref=True)
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device == OFFLOAD_DEVICE
    # every nn.Module component is in the offload chain (none falls to the unordered "leftover" hooks) and hooked
    modules = _module_components(pipe)
    sequence = pipe.model_cpu_offload_seq.split("->")
    assert set(modules) <= set(sequence), (
        f"components missing from model_cpu_offload_seq: {set(modules) - set(sequence)}"
    )
    assert len(pipe._all_hooks) == len(modules)
    for name, module in modules.items():
        assert module._hf_hook.execution_device == OFFLOAD_DEVICE, name
    # the adapter's attention branches are UNet submodules: the UNet's hook moves them with it
    unet_params = {id(p) for p in pipe.unet.parameters()}
    processors = pipe.mv_adapter.processors.values()
    assert all(id(p) in unet_params for proc in processors for p in proc.parameters())
    # the condition encoder is not a pipeline component: it is moved to the execution device for its call and back
    encoder = pipe.mv_adapter.cond_encoder
    assert not any(encoder is m for m in modules.values())
    moves = _spy_moves(encoder)

    torch.testing.assert_close(_call(pipe), expected_t2mv, atol=ATOL, rtol=0)
    assert [args for args, _ in moves] == [(OFFLOAD_DEVICE,), ("cpu",)]
    torch.testing.assert_close(_call(pipe, image), expected_i2mv, atol=ATOL, rtol=0)
    assert len(moves) == 4 and moves[-1][0] == ("cpu",)
    # maybe_free_model_hooks re-armed the chain: the hooks are still there after the calls
    assert all(getattr(m, "_hf_hook", None) is not None for m in _module_components(pipe).values())


def test_adapter_loaded_after_enabling_offload(tiny_sd21, tmp_path):
    """Attaching (or replacing) the adapter on an offloaded pipeline: the new processors travel with the UNet."""
    plain = _pipe(tiny_sd21)
    path = tmp_path / "mvadapter_t2mv_sd21.safetensors"
    plain.mv_adapter.save(path, format="official")
    expected = _call(plain)

    pipe = MVAdapterPipeline.from_pretrained(tiny_sd21, mv_adapter=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")
    pipe.load_mv_adapter(path)
    torch.testing.assert_close(_call(pipe), expected, atol=ATOL, rtol=0)
    pipe.init_mv_adapter()  # a fresh adapter replaces it
    assert np.abs(_call(pipe) - expected).max() > 1e-3


def test_offload_without_accelerator_needs_explicit_device(tiny_sd21):
    """Documented diffusers behaviour the CPU test relies on: no accelerator and no device -> RuntimeError."""
    if torch.cuda.is_available():
        pytest.skip("an accelerator is present")
    pipe = MVAdapterPipeline.from_pretrained(tiny_sd21, mv_adapter=False)
    with pytest.raises(RuntimeError, match="accelerator"):
        pipe.enable_model_cpu_offload()
