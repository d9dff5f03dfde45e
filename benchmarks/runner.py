"""Timing harness for the benchmarks: ratios against a baseline measured in the same process.

Absolute times on shared CI machines mean little; a ratio of two medians measured side by side, in one process,
right after each other, is what the adapters' speed goals are stated in. Results go to ``benchmarks/results/`` as
JSON (for machines) and a markdown table (for people), with the machine, library versions and dtype.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

__all__ = ["measure", "compare", "environment", "write_results", "RESULTS_DIR"]


def _sync(device: str | None) -> None:
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, device: str | None = None, memory: bool = True
) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Returns:
        ``{"median_s", "min_s", "times_s", "peak_mem_bytes"}``. Peak memory is the CUDA allocator's peak on a CUDA
        ``device``; on CPU it is the peak of torch's CPU allocations during one extra profiled call.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        gc.collect()
        peak = None
        cuda = device is not None and device.startswith("cuda") and torch.cuda.is_available()
        if cuda and memory:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        if cuda and memory:
            peak = int(torch.cuda.max_memory_allocated())
        elif memory:
            peak = _cpu_peak_bytes(fn)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times, "peak_mem_bytes": peak}


def _cpu_peak_bytes(fn: Callable[[], object]) -> int | None:
    """Peak CPU memory of one call, from torch's CPU profiler memory events (None when unavailable)."""
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:  # pragma: no cover - very old torch
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    events = sorted(
        (e for e in prof.events() if getattr(e, "self_cpu_memory_usage", 0)), key=lambda e: e.time_range.start
    )
    for event in events:  # running sum of net allocations (allocs positive, frees negative) in time order
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak)


def compare(
    baseline: Callable[[], object],
    candidates: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: str | None = None,
    rounds: int = 1,
    memory: bool = True,
) -> dict:
    """Measure ``baseline`` and each candidate in the same run; report each candidate's ratio to the baseline.

    With ``rounds > 1`` the measurements are interleaved (baseline, candidates, baseline, ...) and medians taken over
    all rounds, which cancels slow drifts of the machine.

    Returns:
        ``{"baseline": measure-dict, "candidates": {name: measure-dict + "time_ratio" + "mem_ratio"}}``.
    """
    names = ["baseline", *candidates]
    fns = {"baseline": baseline, **candidates}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            runs[name].append(measure(fns[name], warmup=warmup, repeats=repeats, device=device, memory=memory))

    def merge(results: list[dict]) -> dict:
        times = [t for r in results for t in r["times_s"]]
        peaks = [r["peak_mem_bytes"] for r in results if r["peak_mem_bytes"] is not None]
        return {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "times_s": times,
            "peak_mem_bytes": max(peaks) if peaks else None,
        }

    base = merge(runs["baseline"])
    out = {"baseline": base, "candidates": {}}
    for name in candidates:
        res = merge(runs[name])
        res["time_ratio"] = res["median_s"] / base["median_s"]
        if res["peak_mem_bytes"] and base["peak_mem_bytes"]:
            res["mem_ratio"] = res["peak_mem_bytes"] / base["peak_mem_bytes"]
        else:
            res["mem_ratio"] = None
        out["candidates"][name] = res
    return out


def environment(dtype: torch.dtype | str = "float32", device: str = "cpu") -> dict:
    """Machine and library versions recorded with every result."""
    import diffusers

    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def write_results(name: str, payload: dict, results_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``payload`` as ``<name>.json`` and a markdown table ``<name>.md``.

    ``payload`` holds ``"environment"`` and ``"rows"``: a list of flat dicts (one row per measurement, e.g.
    ``{"size": "tiny", "variant": "fused", "median_s": ..., "time_ratio": ..., "goal": "<= 1.01", "met": True}``).
    """
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    rows = payload.get("rows", [])
    lines = [f"# {name}", ""]
    env = payload.get("environment", {})
    if env:
        lines.append(", ".join(f"{k}: {v}" for k, v in env.items()))
        lines.append("")
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row if k != "times_s"))
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
