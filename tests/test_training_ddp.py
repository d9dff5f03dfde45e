"""The training core in separate processes: 2-process DDP on CPU (gloo), and runs killed with SIGKILL then resumed.

Each test launches the toy train script of tests/test_training_core.py (``python -m tests.test_training_core``), in
two processes through ``torch.distributed.run`` (what ``accelerate launch --multi_gpu`` uses; on CPU accelerate then
picks the gloo backend) or in one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.core import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
COMMON_ARGS = ["--seed", "0", "--train_batch_size", "2", "--report_to", "none", "--mixed_precision", "no"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        ACCELERATE_USE_CPU="true",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def _command(model: Path, out: Path, args: list[str], nproc: int) -> list[str]:
    script = [
        "-m",
        "tests.test_training_core",
        "--pretrained_model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
    ]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return launcher + script + COMMON_ARGS + args


def launch(model: Path, out: Path, args: list[str], nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _command(model, out, args, nproc), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"training exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def final_adapter(out: Path) -> dict[str, torch.Tensor]:
    from adapters.weights import load_weights

    return load_weights(out / "adapter_model.safetensors")[0]


def assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_two_process_ddp_syncs_adapter_and_uses_global_batch(tiny_sd15, tmp_path):
    out = tmp_path / "ddp"
    launch(
        tiny_sd15,
        out,
        ["--num_examples", "8", "--max_train_steps", "4", "--checkpointing_steps", "2", "--record_indices"],
        nproc=2,
    )
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # DDP averaged the gradients: both ranks end with the same adapter, which is what was saved, and it trained
    assert ranks[0]["adapter"] == ranks[1]["adapter"]
    saved = {k: v.flatten().tolist() for k, v in final_adapter(out).items()}
    assert saved == ranks[0]["adapter"]
    assert any(x != 0 for x in saved["up.weight"])
    # the effective batch is the global one: each step the two ranks see different examples, 2 steps cover the
    # 8 examples once per epoch (4 per step = 2 ranks x 2 per device)
    steps = list(zip(ranks[0]["indices"], ranks[1]["indices"]))
    assert len(steps) == 4
    for epoch in (steps[:2], steps[2:]):
        seen = [i for a, b in epoch for i in a + b]
        assert sorted(seen) == list(range(8)), epoch
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    assert state["total_batch_size"] == 4 == 2 * state["train_batch_size"]
    # every rank's RNG state is in the checkpoint, no model weights are
    names = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "adapter_model.safetensors"} <= names
    assert not [n for n in names if n.startswith(("model", "pytorch_model"))]


@pytest.mark.slow
def test_two_process_resume_matches_uninterrupted(tiny_sd15, tmp_path):
    args = ["--num_examples", "12", "--max_train_steps", "5", "--checkpointing_steps", "2", "--lr_scheduler", "cosine"]
    launch(tiny_sd15, tmp_path / "a", args, nproc=2)
    crashed = launch(tiny_sd15, tmp_path / "b", args + ["--crash_at_step", "4"], nproc=2, check=False)
    assert crashed.returncode != 0 and "injected crash at step 4" in crashed.stderr
    launch(tiny_sd15, tmp_path / "b", args + ["--resume_from_checkpoint", "latest"], nproc=2)
    assert_same_adapter(final_adapter(tmp_path / "b"), final_adapter(tmp_path / "a"))


def _run_and_kill(model: Path, out: Path, args: list[str], timeout: float = 300) -> None:
    """Start a run, wait until it pauses at the injected point, SIGKILL it."""
    proc = subprocess.Popen(
        _command(model, out, args, 1), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    marker = out / "paused"
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"run ended before the kill point:\n{proc.stderr.read().decode()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("run never reached the kill point")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    marker.unlink()


@pytest.mark.slow
def test_sigkill_mid_step_and_mid_checkpoint_then_resume(tiny_sd15, tmp_path):
    args = ["--num_examples", "6", "--max_train_steps", "6", "--checkpointing_steps", "2", "--lr_scheduler", "cosine"]
    args += ["--lr_warmup_steps", "1", "--learning_rate", "5e-3"]
    launch(tiny_sd15, tmp_path / "ref", args)
    reference = final_adapter(tmp_path / "ref")

    # killed in the middle of step 5 (after checkpoint-4): resume from checkpoint-4
    out = tmp_path / "step"
    _run_and_kill(tiny_sd15, out, args + ["--pause_at_step", "5"])
    assert latest_checkpoint(out).name == "checkpoint-4"
    assert not (out / "adapter_model.safetensors").exists()
    launch(tiny_sd15, out, args + ["--resume_from_checkpoint", "latest"])
    assert_same_adapter(final_adapter(out), reference)

    # killed while writing checkpoint-4: the half-written folder is never used; resume from checkpoint-2
    out = tmp_path / "ckpt"
    _run_and_kill(tiny_sd15, out, args + ["--pause_at_step", "4", "--pause_in_checkpoint"])
    partial = out / ".checkpoint-4.tmp"
    assert (partial / "adapter_model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert not (out / "checkpoint-4").exists()
    assert latest_checkpoint(out).name == "checkpoint-2"
    launch(tiny_sd15, out, args + ["--resume_from_checkpoint", "latest"])
    assert not partial.exists()
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    assert_same_adapter(final_adapter(out), reference)
