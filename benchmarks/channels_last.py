"""channels_last vs contiguous (NCHW) weights and activations: one UNet forward of each adapter's UNet, eager.

``python -m benchmarks --channels-last --size tiny|mid [--only ...]`` writes ``benchmarks/results/channels_last_<size>``
(``.json`` / ``.md``). The UNets and inputs are those of :mod:`benchmarks.compile_speedup` (adapter attached,
unfused); two identical, seeded copies are built, one converted with ``unet.to(memory_format=torch.channels_last)``
(4-D inputs converted too), and both are timed interleaved call by call after a warm-up (:func:`benchmarks.runner
.compare`). ``speedup`` > 1 means channels_last is faster.
"""

from __future__ import annotations

import logging

import torch

from benchmarks.compile_speedup import ADAPTERS, I2V_LATENT, build
from benchmarks.runner import compare, environment, speedup_fields, write_results

logger = logging.getLogger(__name__)


def run(size: str = "tiny", *, only: list[str] | None = None, repeats: int = 5, write: bool = True) -> dict:
    """Time contiguous vs channels_last UNet forwards of each adapter; returns (and writes) the payload."""
    if size not in I2V_LATENT:
        raise ValueError(f"`size` must be one of {sorted(I2V_LATENT)} for the channels_last benchmark, got {size!r}.")
    rows = []
    for name in only or ADAPTERS:
        unet, args, kwargs = build(name, size)
        cl_unet, cl_args, _ = build(name, size)
        cl_unet.to(memory_format=torch.channels_last)
        cl_args = tuple(
            a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4 else a
            for a in cl_args
        )
        with torch.inference_mode():
            diff = float((unet(*args, **kwargs).sample - cl_unet(*cl_args, **kwargs).sample).abs().max())
        result = compare(
            lambda unet=unet, args=args, kw=kwargs: unet(*args, **kw).sample,
            {"channels_last": lambda unet=cl_unet, args=cl_args, kw=kwargs: unet(*args, **kw).sample},
            warmup=1,
            repeats=repeats,
            memory=False,
        )
        row = {
            "size": size,
            "adapter": name,
            **speedup_fields(result, "channels_last", baseline_label="contiguous", candidate_label="channels_last"),
            "max_abs_diff": diff,
        }
        logger.info("%s", row)
        rows.append(row)
    payload = {
        "environment": environment("float32", "cpu"),
        "repeats": repeats,
        "rows": rows,
        "columns": {
            "contiguous_median_s": "median wall seconds of one UNet forward, default (NCHW contiguous) memory format",
            "channels_last_median_s": "median wall seconds, weights (and 4-D inputs) in channels_last",
            "contiguous_cpu_median_s": "median process CPU seconds, contiguous",
            "channels_last_cpu_median_s": "median process CPU seconds, channels_last",
            "speedup": "contiguous_median_s / channels_last_median_s (wall; > 1: channels_last faster)",
            "cpu_speedup": "contiguous_cpu_median_s / channels_last_cpu_median_s (robust on a shared CPU)",
            "max_abs_diff": "max |channels_last - contiguous| of the UNet output",
        },
    }
    if write:
        write_results(f"channels_last_{size}", payload)
    return payload
