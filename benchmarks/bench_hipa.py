"""HiPA benchmark: one-step generation vs the 50-step teacher (goal: >= 25x faster) and vs LCM-LoRA 4 steps.

All three are timed end to end (prompt encoding, sampling, VAE decode) at the same size in one process:

- baseline ``teacher_50step``: the base with DDIM, 50 steps, classifier-free guidance 7.5 (two UNet passes per step);
- ``hipa_1step``: base + a HiPA LoRA (fused), one UNet pass at t = T-1, no guidance;
- ``lcm_4step``: base + an LCM-LoRA-layout LoRA (fused), ``LCMScheduler``, 4 steps, no guidance.

Run ``python -m benchmarks.bench_hipa --size tiny|mid`` (``tiny``: the tiny SD 1.5-like test model at 32 px;
``mid``: the same model at 128 px), or pass ``--base <SD folder> --resolution 512 --device cuda`` to time a real
checkpoint. Random LoRAs of the right layout stand in for trained ones (the timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics

import torch

from benchmarks.runner import environment, measure, write_results

logger = logging.getLogger(__name__)

SIZES = {"tiny": 32, "mid": 128}
GOAL_SPEEDUP = 25.0


def _random_lora(pipe, adapter_name: str, targets, seed: int) -> None:
    from adapters.hipa import HiPAConfig, add_hipa_lora

    add_hipa_lora(pipe.unet, HiPAConfig(rank=8, target_modules=list(targets)), adapter_name=adapter_name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen).to(param.dtype) * 0.01)
                param.requires_grad_(False)
    pipe.fuse_lora(components=["unet"], adapter_names=[adapter_name])


def _merge(results: list[dict]) -> dict:
    times = [t for r in results for t in r["times_s"]]
    peaks = [r["peak_mem_bytes"] for r in results if r["peak_mem_bytes"] is not None]
    return {"median_s": statistics.median(times), "times_s": times, "peak_mem_bytes": max(peaks) if peaks else None}


def run(
    size: str = "tiny",
    *,
    base: str | None = None,
    resolution: int | None = None,
    device: str = "cpu",
    repeats: int = 3,
    threads: int | None = 1,
    write: bool = True,
) -> dict:
    """Time teacher vs HiPA vs LCM; returns (and writes) ``{"environment", "rows"}``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from adapters.hipa import ATTENTION_TARGETS, FEED_FORWARD_TARGETS
    from pipelines.auto_pipeline import HiPAPipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if base is None:
        from pipelines.testing import tiny_sd15_path

        base = str(tiny_sd15_path())
    resolution = resolution or SIZES.get(size, 32)
    cuda = device.startswith("cuda")
    if threads is not None and not cuda:
        # On a small shared CPU box, torch's default intra-op threads oversubscribe the cores and made the 50-step
        # teacher ~20x slower and very noisy; one thread per process gives stable medians.
        torch.set_num_threads(threads)
    dtype = torch.float16 if cuda else torch.float32
    load = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    prompt = "a red cube beside a small blue sphere"

    teacher = StableDiffusionPipeline.from_pretrained(base, **load).to(device)
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config, clip_sample=False)
    hipa = HiPAPipeline.from_pretrained(base, preset="hipa", **load).to(device)
    _random_lora(hipa, "hipa", [*ATTENTION_TARGETS, *FEED_FORWARD_TARGETS], seed=0)
    lcm = HiPAPipeline.from_pretrained(base, preset="lcm", **load).to(device)
    _random_lora(lcm, "lcm", [*ATTENTION_TARGETS, *FEED_FORWARD_TARGETS, "proj_in", "proj_out"], seed=1)
    for pipe in (teacher, hipa, lcm):
        pipe.set_progress_bar_config(disable=True)

    def gen():
        return torch.Generator(device).manual_seed(0)

    common = {"height": resolution, "width": resolution, "output_type": "np"}
    fns = {
        "teacher_50step": lambda: teacher(
            prompt, num_inference_steps=50, guidance_scale=7.5, generator=gen(), **common
        ),
        "hipa_1step": lambda: hipa(prompt, generator=gen(), **common),
        "lcm_4step": lambda: lcm(prompt, num_inference_steps=4, generator=gen(), **common),
    }
    # Interleaved rounds (teacher, hipa, lcm, teacher, ...) cancel slow drifts of a shared machine; CPU memory
    # profiling is skipped (it multiplies the 50-step teacher's run time), CUDA peak memory is recorded.
    runs: dict[str, list[dict]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(measure(fn, warmup=1 if not runs[name] else 0, repeats=1, device=device, memory=cuda))
    result = {"baseline": _merge(runs["teacher_50step"]), "candidates": {}}
    for name in ("hipa_1step", "lcm_4step"):
        merged = _merge(runs[name])
        merged["time_ratio"] = merged["median_s"] / result["baseline"]["median_s"]
        result["candidates"][name] = merged
    base_row = result["baseline"]
    hipa_speedup = 1.0 / result["candidates"]["hipa_1step"]["time_ratio"]
    lcm_speedup = 1.0 / result["candidates"]["lcm_4step"]["time_ratio"]
    rows = [
        {
            "size": size,
            "resolution": resolution,
            "variant": "teacher_50step (DDIM, CFG 7.5)",
            "unet_passes": 100,
            "median_s": base_row["median_s"],
            "speedup_vs_teacher": 1.0,
            "speedup_vs_lcm": 1.0 / lcm_speedup,
            "goal": "-",
            "met": "-",
        }
    ]
    rows.append(
        {
            "size": size,
            "resolution": resolution,
            "variant": "hipa_1step (fused LoRA)",
            "unet_passes": 1,
            "median_s": result["candidates"]["hipa_1step"]["median_s"],
            "speedup_vs_teacher": hipa_speedup,
            "speedup_vs_lcm": hipa_speedup / lcm_speedup,
            "goal": f">= {GOAL_SPEEDUP:g}x",
            "met": hipa_speedup >= GOAL_SPEEDUP,
        }
    )
    rows.append(
        {
            "size": size,
            "resolution": resolution,
            "variant": "lcm_4step (fused LoRA)",
            "unet_passes": 4,
            "median_s": result["candidates"]["lcm_4step"]["median_s"],
            "speedup_vs_teacher": lcm_speedup,
            "speedup_vs_lcm": 1.0,
            "goal": "-",
            "met": "-",
        }
    )
    payload = {"environment": environment(dtype, device), "base": base, "rows": rows, "raw": result}
    if write:
        write_results(f"hipa_{size}" if device == "cpu" else f"hipa_{size}_{device.split(':')[0]}", payload)
    for row in rows:
        logger.info("%s", row)
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid", "full"])
    parser.add_argument("--base", default=None, help="SD 1.x/2.x folder (default: the tiny test model)")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.size == "full" and args.base is None:
        parser.error("--size full needs --base <a real SD checkpoint folder> (nothing is downloaded).")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(
        args.size,
        base=args.base,
        resolution=args.resolution,
        device=args.device,
        repeats=args.repeats,
        threads=args.threads or None,
    )


if __name__ == "__main__":
    main()
