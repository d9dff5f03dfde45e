"""benchmarks.runner: ratios measured side by side, JSON + markdown output."""

from __future__ import annotations

import json
import time

import pytest

from benchmarks.runner import compare, environment, measure, write_results


def test_measure_counts_repeats_and_warmup():
    calls = []
    result = measure(lambda: calls.append(1), warmup=2, repeats=3, memory=False)
    assert len(calls) == 5
    assert len(result["times_s"]) == 3
    assert result["min_s"] <= result["median_s"]
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, repeats=0)


def test_compare_reports_ratio_against_baseline():
    def fast():
        time.sleep(0.001)

    def slow():
        time.sleep(0.02)

    result = compare(fast, {"slow": slow, "same": fast}, warmup=0, repeats=3, rounds=2, memory=False)
    assert len(result["baseline"]["times_s"]) == 6
    assert result["candidates"]["slow"]["time_ratio"] > 2.0
    assert 0.3 < result["candidates"]["same"]["time_ratio"] < 3.0
    assert result["candidates"]["slow"]["mem_ratio"] is None


def test_cpu_peak_memory_sees_a_large_allocation():
    import torch

    small = measure(lambda: torch.ones(10), warmup=0, repeats=1)["peak_mem_bytes"]
    big = measure(lambda: torch.ones(1_000_000), warmup=0, repeats=1)["peak_mem_bytes"]
    assert big >= 4_000_000 > small


def test_write_results_json_and_markdown(tmp_path):
    payload = {"environment": environment(), "rows": [{"variant": "fused", "time_ratio": 1.004, "met": True}]}
    json_path, md_path = write_results("demo", payload, tmp_path)
    assert json.loads(json_path.read_text())["rows"][0]["variant"] == "fused"
    text = md_path.read_text()
    assert "| variant | time_ratio | met |" in text
    assert "| fused | 1.004 | True |" in text
    assert "torch:" in text


def test_speedup_fields_and_perturb():
    import torch

    from benchmarks.runner import perturb_, speedup_fields

    result = {
        "baseline": {"median_s": 2.0, "cpu_median_s": 1.0},
        "candidates": {"fast": {"median_s": 1.0, "cpu_median_s": 0.25}},
    }
    fields = speedup_fields(result, "fast", baseline_label="eager", candidate_label="compiled")
    assert list(fields) == [
        "eager_median_s",
        "compiled_median_s",
        "eager_cpu_median_s",
        "compiled_cpu_median_s",
        "speedup",
        "cpu_speedup",
    ]
    assert fields["speedup"] == 2.0 and fields["cpu_speedup"] == 4.0
    a, b = torch.zeros(100), torch.zeros(100)
    perturb_([a], seed=3)
    perturb_([b], seed=3)
    assert torch.equal(a, b) and 0.01 < float(a.std()) < 0.03
