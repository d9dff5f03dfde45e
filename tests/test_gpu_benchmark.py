"""CPU dry run of ``python -m benchmarks.gpu`` at tiny sizes: the GPU command cannot rot between GPU runs."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu

TIMING_SECTIONS = ("res_adapter_sd15", "hipa_sd15", "i2v_adapter", "res_adapter_sdxl", "mv_adapter_sdxl")
XFORMERS_SECTIONS = ("res_adapter_sd15", "i2v_adapter", "res_adapter_sdxl", "mv_adapter_sdxl")


class _StandIn(torch.nn.Module):
    """A one-conv module for the compile section: dynamo tracing a UNet takes ~20 s on a small CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.conv(x))


def _stand_in_target(settings, target):
    x = torch.randn(1, 4, 8, 8)

    def call(module):
        return module(x)

    return _StandIn(), _StandIn(), call, call, {}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu, "xformers_version", lambda: None)  # as on a machine without xformers
        mp.setattr(gpu, "_compile_target", _stand_in_target)
        payload = gpu.main(
            ["--device", "cpu", "--size", "tiny", "--out-dir", str(out), "--name", "dry",
             "--steps", "1", "--teacher-steps", "4", "--repeats", "1", "--unet-repeats", "1", "--warmup", "0",
             "--smoke", "res_adapter_sd", "hipa_sd", "--compile", "res_adapter_sd15", "--compile-base",
             "--compile-backend", "eager"]
        )  # fmt: skip
    return payload, out


def test_files_and_every_section_has_rows(dry_run):
    payload, out = dry_run
    data = json.loads((out / "dry.json").read_text())
    markdown = (out / "dry.md").read_text()
    assert list(data["sections"]) == list(gpu.SECTIONS)
    for name, section in data["sections"].items():
        assert section["rows"], name
        assert f"## {name}" in markdown
        for row in section["rows"]:
            assert row["status"] == "ok" or row["status"] == "not installed", (name, row)
    assert data["environment"]["device"] == "cpu"
    assert data["environment"]["xformers"] == "not installed"
    assert data["settings"]["size"] == "tiny"
    assert "Columns:" in markdown and "`peak_mem_bytes`" in markdown
    assert not any(note.startswith("Partial results") for note in data["notes"])  # the last write is complete


def test_timing_rows(dry_run):
    sections = dry_run[0]["sections"]
    for name in TIMING_SECTIONS:
        timed = [r for r in sections[name]["rows"] if r["status"] == "ok"]
        assert {r["timed"] for r in timed} >= {"result"}, name
        baseline = timed[0]
        assert baseline["variant"].endswith("(baseline)") and baseline["time_ratio"] == 1.0
        for row in timed:
            assert row["median_s"] > 0 and row["weights_bytes"] > 0
            assert row["peak_mem_bytes"] is None  # CUDA-only figure
    for name in XFORMERS_SECTIONS:
        rows = sections[name]["rows"]
        sdpa = [r for r in rows if r["timed"] == "unet forward" and r["attention"] == "sdpa"]
        xformers = [r for r in rows if r.get("attention") == "xformers"]
        assert len(sdpa) >= 2, name
        assert [r["status"] for r in xformers] == ["not installed"], name


def test_i2v_flop_ratio_and_hipa(dry_run):
    sections = dry_run[0]["sections"]
    i2v = sections["i2v_adapter"]
    assert i2v["extra"]["flop_ratio"] > 1.0
    unet_row = next(r for r in i2v["rows"] if r["timed"] == "unet forward" and r["variant"] == "i2v_adapter")
    assert unet_row["flop_ratio"] == pytest.approx(i2v["extra"]["flop_ratio"])
    assert unet_row["ratio_minus_flop"] == pytest.approx(unet_row["time_ratio"] - unet_row["flop_ratio"])
    assert str(gpu.FLOP_RATIO_TOLERANCE) in unet_row["goal"] and isinstance(unet_row["met"], bool)
    teacher, student = sections["hipa_sd15"]["rows"]
    assert (teacher["unet_passes"], student["unet_passes"]) == (4, 1)
    assert student["speedup"] == pytest.approx(1 / student["time_ratio"])


def test_smoke_compares_half_with_float32(dry_run):
    rows = dry_run[0]["sections"]["smoke"]["rows"]
    assert [r["pipeline"] for r in rows] == ["res_adapter_sd", "hipa_sd"]
    for row in rows:
        assert row["dtype"] == "bfloat16"  # float16 kernels are missing or slow on the CPU
        assert row["finite"] is True and row["met"] is True
        assert 0 < row["max_abs_diff"] and 0 < row["mean_abs_diff"] <= row["max_abs_diff"]


def test_compile_rows(dry_run):
    rows = dry_run[0]["sections"]["compile"]["rows"]
    assert [r["variant"] for r in rows] == ["eager (baseline)", "compiled", "compiled base"]
    compiled = rows[1]
    assert compiled["backend"] == "eager" and compiled["graph_breaks"] == 0
    assert compiled["compile_s"] > 0 and compiled["max_abs_diff"] == 0.0
    assert compiled["vs_compiled_base"] > 0 and rows[2]["compile_s"] > 0  # the base's compilation is not timed


def test_sections_degrade_on_their_own(monkeypatch):
    def broken(settings):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(gpu, "section_hipa", broken)
    settings = gpu.Settings(
        device="cpu", size="full", dtype=torch.float32, half=torch.bfloat16, steps=1, teacher_steps=1, repeats=1,
        unet_repeats=1, attention=("sdpa",), compile_targets=(), compile_backend="eager", compile_mode=None,
        budget_s=60.0,
    )  # fmt: skip
    payload = gpu.run(settings, ("hipa_sd15", "compile"))
    (row,) = payload["sections"]["hipa_sd15"]["rows"]
    assert row["status"] == "error: RuntimeError: out of memory"
    (row,) = payload["sections"]["compile"]["rows"]
    assert row["status"].startswith("skipped: time budget")  # full size, less than MIN_SECONDS["compile"] left
    settings.compile_targets = ()
    assert gpu.section_compile(settings)[0]["status"] == "skipped: no --compile targets"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu.main(["--device", "cuda"])


def test_every_arm_runs_in_the_requested_dtype():
    """On a GPU every arm must be fp16: a stray float32 module (diffusers' ``from_pipe`` casts to float32 unless told
    otherwise) would fail there or time the wrong arithmetic; bfloat16 on the CPU catches it here."""
    settings = gpu.Settings(
        device="cpu", size="tiny", dtype=torch.bfloat16, half=torch.bfloat16, steps=1, teacher_steps=1, repeats=1,
        unet_repeats=1, attention=("sdpa",), compile_targets=(), compile_backend="eager", compile_mode=None,
        budget_s=60.0,
    )  # fmt: skip
    res, i2v, mv = gpu._build_res_adapter(settings, "sd15"), gpu._build_i2v(settings), gpu._build_mv(settings)
    modules = [
        *(res[k].unet for k in ("plain", "fused", "unfused")),
        i2v["plain"].unet,
        i2v["i2v"].unet,
        i2v["i2v"].vae,
        mv["plain"].unet,
        mv["mv"].unet,
        mv["adapter"].cond_encoder,
    ]
    assert {p.dtype for m in modules for p in m.parameters()} == {torch.bfloat16}
    with torch.inference_mode():
        out = i2v["i2v"].unet(*i2v["args"], **i2v["kwargs"])[0]
        mv_out = mv["mv"].unet(*mv["args"], **mv["kwargs"], **mv["residuals"]())[0]
    assert out.dtype == mv_out.dtype == torch.bfloat16
