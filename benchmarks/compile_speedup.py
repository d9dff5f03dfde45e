"""torch.compile vs eager: one UNet forward of each adapter's UNet (adapter attached, unfused), on the CPU.

``python -m benchmarks --compile --size tiny|mid [--only res_adapter mv_adapter i2v_adapter hipa]`` writes
``benchmarks/results/compile_<size>.json`` / ``.md``. For each adapter the same UNet object is called eagerly and through
``torch.compile(unet)`` (inductor, static shapes), interleaved call by call after a warm-up (the compiled arm's first
call, the compilation, is timed separately as ``compile_s``). ``speedup`` = eager median / compiled median (CPU time
on CPU, see :mod:`benchmarks.runner`); ``max_abs_diff`` compares the two outputs; ``graph_breaks`` counts dynamo's
graph breaks over the whole UNet (diffusers' own code included).

UNets (random weights, timing does not depend on them):

- ``res_adapter``: the ResAdapter benchmark's UNet (tiny test UNet / SD 1.5-shaped mid UNet) with a random
  ResAdapter, unfused (LoRA forward hooks on the sampler convs + patched norms);
- ``hipa``: the same UNets with a random rank-4 HiPA LoRA (peft layers, unfused);
- ``mv_adapter``: the same UNets with a row-wise MV-Adapter, 6 views, batch 2 x 6;
- ``i2v_adapter``: the tiny AnimateDiff motion UNet with a random I2V-Adapter, 2 videos x 8 frames, latents 16x16
  (tiny) / 32x32 (mid).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import torch

from benchmarks.runner import compare, environment, perturb_, speedup_fields, write_results

logger = logging.getLogger(__name__)

ADAPTERS = ("res_adapter", "hipa", "mv_adapter", "i2v_adapter")
I2V_LATENT = {"tiny": 16, "mid": 32}
MV_VIEWS = 6


def _sd_inputs(unet, size: str, batch: int | None = None) -> tuple:
    from benchmarks.bench_res_adapter import LATENTS

    shape = list(LATENTS[size])
    if batch is not None:
        shape[0] = batch
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(shape, generator=gen)
    text = torch.randn(shape[0], 77, unet.config.cross_attention_dim, generator=gen)
    return sample, torch.tensor(500), text


def build(name: str, size: str) -> tuple[torch.nn.Module, tuple, dict]:
    """``(unet with the adapter attached, forward args, forward kwargs)`` for one adapter."""
    from benchmarks.bench_res_adapter import build_unet, random_res_adapter

    if name == "res_adapter":
        from adapters.res_adapter import load_res_adapter

        unet = build_unet(size)
        load_res_adapter(unet, random_res_adapter(unet))
        return unet, _sd_inputs(unet, size), {}
    if name == "hipa":
        from adapters.hipa import HiPAConfig, add_hipa_lora

        unet = build_unet(size)
        add_hipa_lora(unet, HiPAConfig(rank=4))
        perturb_([p for n, p in unet.named_parameters() if ".lora_" in n])
        return unet, _sd_inputs(unet, size), {}
    if name == "mv_adapter":
        from adapters.mv_adapter import MVAdapter

        unet = build_unet(size)
        adapter = MVAdapter.from_unet(unet, attention_mode="row", use_ref=False, num_views=MV_VIEWS)
        perturb_(adapter.trainable_parameters())
        adapter.state.num_views = MV_VIEWS
        return unet, _sd_inputs(unet, size, batch=2 * MV_VIEWS), {}
    if name == "i2v_adapter":
        from adapters.i2v_adapter import I2VAdapter
        from pipelines.testing import tiny_motion_unet

        unet = copy.deepcopy(tiny_motion_unet())
        adapter = I2VAdapter.attach(unet)
        perturb_(adapter.parameters(include_content=False))
        gen = torch.Generator().manual_seed(1)
        hw, frames = I2V_LATENT[size], 8
        sample = torch.randn(2, unet.config.in_channels, frames, hw, hw, generator=gen)
        text = torch.randn(2 * frames, 77, unet.config.cross_attention_dim, generator=gen)
        return unet, (sample, torch.tensor(500), text), {}
    raise ValueError(f"unknown adapter {name!r}; expected one of {ADAPTERS}.")


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def run(size: str = "tiny", *, only: list[str] | None = None, repeats: int = 5, write: bool = True) -> dict:
    """Time eager vs compiled UNet forwards of each adapter; returns (and writes) ``{"environment", "rows"}``."""
    import torch._dynamo

    if size not in I2V_LATENT:
        raise ValueError(f"`size` must be one of {sorted(I2V_LATENT)} for the compile benchmark, got {size!r}.")
    rows = []
    for name in only or ADAPTERS:
        unet, args, kwargs = build(name, size)
        unet.eval()
        torch._dynamo.reset()
        compiled = torch.compile(unet, dynamic=False)

        def eager_fn(unet=unet, args=args, kwargs=kwargs) -> Callable:
            return unet(*args, **kwargs).sample

        def compiled_fn(compiled=compiled, args=args, kwargs=kwargs) -> Callable:
            return compiled(*args, **kwargs).sample

        with torch.inference_mode():
            start = time.perf_counter()
            out_compiled = compiled_fn()
            compile_s = time.perf_counter() - start
            out_eager = eager_fn()
        diff = float((out_compiled - out_eager).abs().max())
        breaks = _graph_breaks()
        result = compare(eager_fn, {"compiled": compiled_fn}, warmup=1, repeats=repeats, memory=False)
        row = {
            "size": size,
            "adapter": name,
            **speedup_fields(result, "compiled", baseline_label="eager", candidate_label="compiled"),
            "compile_s": compile_s,
            "graph_breaks": breaks,
            "max_abs_diff": diff,
        }
        logger.info("%s", row)
        rows.append(row)
        torch._dynamo.reset()
        del unet, compiled
    payload = {
        "environment": environment("float32", "cpu"),
        "repeats": repeats,
        "rows": rows,
        "columns": {
            "eager_median_s": "median wall seconds of one eager UNet forward (adapter attached)",
            "compiled_median_s": "median wall seconds of one torch.compile'd UNet forward (after compilation)",
            "eager_cpu_median_s": "median process CPU seconds, eager",
            "compiled_cpu_median_s": "median process CPU seconds, compiled",
            "speedup": "eager_median_s / compiled_median_s (wall)",
            "cpu_speedup": "eager_cpu_median_s / compiled_cpu_median_s (robust on a shared CPU)",
            "compile_s": "wall seconds of the first compiled call (dynamo + inductor compilation)",
            "graph_breaks": "dynamo graph breaks over the whole UNet forward (0 = one graph)",
            "max_abs_diff": "max |compiled - eager| of the UNet output",
        },
        "notes": (__doc__ or "").split("\n\n")[1].replace("\n", " ").replace("``", "`"),
    }
    if write:
        write_results(f"compile_{size}", payload)
    return payload
