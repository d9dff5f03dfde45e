"""Timing harness for the benchmarks: ratios against a baseline measured in the same process.

Absolute times on shared CI machines mean little; a ratio of two medians measured side by side, in one process,
right after each other, is what the adapters' speed goals are stated in. Results go to ``benchmarks/results/`` as
JSON (for machines) and a markdown table (for people), with the machine, library versions and dtype.

Every timed call is measured twice at once: wall-clock time (``time.perf_counter``) and the process's CPU time
(``time.process_time``, all threads of this process). On a machine shared with other jobs the wall time of a call
grows with the others' load while its CPU time does not (with ``torch.set_num_threads(1)`` / ``OMP_NUM_THREADS=1``
the CPU time is the work done), so on CPU the CPU-time ratio is the robust figure and the wall-time ratio the
user-facing one. On CUDA the CPU time is only the host's share (launch overhead) and the wall time is the figure.
:func:`compare` interleaves the arms call by call (A B C, B C A, ...) after a warm-up of each, so slow drifts of the
machine hit all arms alike.
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

__all__ = [
    "COLUMN_DOCS",
    "measure",
    "compare",
    "environment",
    "perturb_",
    "speedup_fields",
    "write_results",
    "RESULTS_DIR",
]

#: Meaning of the columns shared by the benchmarks' markdown tables (written under each table that has them).
COLUMN_DOCS: dict[str, str] = {
    "median_s": "median wall-clock seconds of one timed call",
    "min_s": "fastest wall-clock call, seconds",
    "cpu_median_s": "median process CPU seconds of one timed call (time.process_time, all threads of the process)",
    "cpu_min_s": "smallest process CPU seconds of one timed call",
    "peak_mem_bytes": "peak memory of one call: CUDA allocator peak on GPU, torch CPU allocations (profiler) on CPU",
    "time_ratio": "median_s / baseline median_s (wall clock, same run, interleaved)",
    "min_time_ratio": "min_s / baseline min_s",
    "min_ratio": "min_s / baseline min_s",
    "cpu_time_ratio": "cpu_median_s / baseline cpu_median_s: robust to other jobs on a shared CPU",
    "cpu_min_time_ratio": "cpu_min_s / baseline cpu_min_s",
    "mem_ratio": "peak_mem_bytes / baseline peak_mem_bytes",
    "goal": "the issue's goal for this row",
    "met": "whether the goal holds (for CPU rows: on the CPU-time ratio when measured, else the wall-time ratio)",
}


def _sync(device: str | None) -> None:
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_call(fn: Callable[[], object], device: str | None) -> tuple[float, float]:
    """One call of ``fn``: ``(wall seconds, process CPU seconds)``, synchronising CUDA before stopping the clocks."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _summary(times: list[float], cpu_times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "cpu_median_s": statistics.median(cpu_times),
        "cpu_min_s": min(cpu_times),
        "cpu_times_s": cpu_times,
    }


def _peak_bytes(fn: Callable[[], object], device: str | None) -> int | None:
    """Peak memory of one extra call (CUDA allocator peak on a CUDA device, torch CPU allocations otherwise)."""
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated())
    return _cpu_peak_bytes(fn)


def measure(
    fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, device: str | None = None, memory: bool = True
) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (wall and process CPU time each).

    Returns:
        ``{"median_s", "min_s", "times_s", "cpu_median_s", "cpu_min_s", "cpu_times_s", "peak_mem_bytes"}``. Peak
        memory (``None`` with ``memory=False``) is the CUDA allocator's peak on a CUDA ``device``; on CPU it is the
        peak of torch's CPU allocations during one extra profiled call.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        gc.collect()
        times, cpu_times = [], []
        for _ in range(repeats):
            wall, cpu = _timed_call(fn, device)
            times.append(wall)
            cpu_times.append(cpu)
        peak = _peak_bytes(fn, device) if memory else None
    return {**_summary(times, cpu_times), "peak_mem_bytes": peak}


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
    """Measure ``baseline`` and each candidate in the same run; report each candidate's ratios to the baseline.

    Each arm is first called ``warmup`` times (untimed); then ``rounds * repeats`` timed calls per arm are
    interleaved one call at a time, rotating the order every pass (A B C, B C A, C A B, ...), so that slow drifts and
    bursts of load on a shared machine fall on all arms alike. Every timed call records wall and process CPU time.
    With ``memory``, one extra call per arm measures peak memory afterwards.

    Returns:
        ``{"baseline": summary, "candidates": {name: summary + ratios}}``, a summary as returned by :func:`measure`;
        the ratios are ``time_ratio`` (of wall medians), ``min_time_ratio``, ``cpu_time_ratio`` (of CPU-time
        medians), ``cpu_min_time_ratio`` and ``mem_ratio`` (``None`` when memory was not measured).
    """
    if repeats < 1 or rounds < 1:
        raise ValueError(f"`repeats` and `rounds` must be >= 1, got {repeats} and {rounds}.")
    names = ["baseline", *candidates]
    fns = {"baseline": baseline, **candidates}
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int | None] = dict.fromkeys(names)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        _sync(device)
        gc.collect()
        for i in range(rounds * repeats):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                wall, cpu = _timed_call(fns[name], device)
                times[name].append(wall)
                cpu_times[name].append(cpu)
        if memory:
            for name in names:
                peaks[name] = _peak_bytes(fns[name], device)

    base = {**_summary(times["baseline"], cpu_times["baseline"]), "peak_mem_bytes": peaks["baseline"]}
    out = {"baseline": base, "candidates": {}}
    for name in candidates:
        res = {**_summary(times[name], cpu_times[name]), "peak_mem_bytes": peaks[name]}
        res["time_ratio"] = res["median_s"] / base["median_s"]
        res["min_time_ratio"] = res["min_s"] / base["min_s"]
        res["cpu_time_ratio"] = _ratio(res["cpu_median_s"], base["cpu_median_s"])
        res["cpu_min_time_ratio"] = _ratio(res["cpu_min_s"], base["cpu_min_s"])
        res["mem_ratio"] = _ratio(res["peak_mem_bytes"], base["peak_mem_bytes"])
        out["candidates"][name] = res
    return out


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value and base else None


def speedup_fields(result: dict, candidate: str, *, baseline_label: str, candidate_label: str) -> dict:
    """Medians (wall and CPU) of both arms of a :func:`compare` result and the baseline / candidate speed-ups.

    Keys: ``<baseline_label>_median_s``, ``<candidate_label>_median_s``, the same with ``_cpu_median_s``, then
    ``speedup`` (wall) and ``cpu_speedup``; > 1 means the candidate is faster.
    """
    base, cand = result["baseline"], result["candidates"][candidate]
    return {
        f"{baseline_label}_median_s": base["median_s"],
        f"{candidate_label}_median_s": cand["median_s"],
        f"{baseline_label}_cpu_median_s": base["cpu_median_s"],
        f"{candidate_label}_cpu_median_s": cand["cpu_median_s"],
        "speedup": base["median_s"] / cand["median_s"],
        "cpu_speedup": base["cpu_median_s"] / cand["cpu_median_s"],
    }


def perturb_(params, seed: int = 0, std: float = 0.02) -> None:
    """Add seeded ``N(0, std)`` noise to ``params`` in place (non-trivial adapter weights for timing runs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            param.add_((torch.randn(param.shape, generator=gen) * std).to(param.dtype).to(param.device))


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
    Optional: ``"notes"`` (a string or list of paragraphs written under the table) and ``"columns"`` (``{column:
    meaning}``, added to / overriding :data:`COLUMN_DOCS`); the meaning of every documented column of the table is
    listed under it. List-valued row entries (``times_s``, ``cpu_times_s``) go to the JSON only.
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
    docs = {**COLUMN_DOCS, **payload.get("columns", {})}
    if rows:
        columns = list(
            dict.fromkeys(k for row in rows for k, v in row.items() if k != "times_s" and not isinstance(v, list))
        )
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
        documented = [c for c in columns if c in docs]
        if documented:
            lines.append("")
            lines.append("Columns:")
            lines.extend(f"- `{c}`: {docs[c]}" for c in documented)
    notes = payload.get("notes")
    if notes:
        lines.append("")
        for paragraph in [notes] if isinstance(notes, str) else notes:
            lines.extend([paragraph, ""])
        lines.pop()
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
