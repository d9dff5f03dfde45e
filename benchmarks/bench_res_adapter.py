"""ResAdapter benchmark: one UNet denoising step, base vs ResAdapter fused vs ResAdapter unfused (hooks).

Goals: fused / base <= 1.01 (a fused ResAdapter leaves no extra module, hook or compute: the LoRA is merged into the
sampler convs and the GroupNorms are patched in place), unfused / base <= 1.05. The three UNets have identical base
weights (random, seeded), the adapter is a random official-layout ResAdapter (rank 16, alpha 8, as v2); all three are
timed in one process, interleaved over several rounds, so the ratios are measured side by side.

Sizes:

``tiny``  the tiny SD 1.5-like test UNet (channels 32/32/64), latents 2 x 4 x 16 x 24.
``mid``   an SD 1.5-shaped UNet (4 levels, 2 layers per block, cross-attention on the first three) at channels
          64/128/256/256, latents 1 x 4 x 32 x 32.
``full``  the SD 1.5 UNet configuration (320/640/1280/1280), latents 2 x 4 x 64 x 64 (GPU recommended).

On CPU the goals are judged on process CPU time (``time.process_time``), which other jobs on a shared machine
disturb far less than wall time; wall-time ratios (median and best) are recorded too.

Run ``python -m benchmarks.bench_res_adapter --size tiny|mid|full [--device cuda] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import torch

from benchmarks.runner import environment, measure, write_results

logger = logging.getLogger(__name__)

GOALS = {"fused": 1.01, "unfused": 1.05}

_SD15_SHAPE = {
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 2,
    "sample_size": 64,
}
CONFIGS = {
    "mid": {
        **_SD15_SHAPE,
        "block_out_channels": (64, 128, 256, 256),
        "cross_attention_dim": 256,
        "attention_head_dim": 4,
        "norm_num_groups": 32,
    },
    "full": {
        **_SD15_SHAPE,
        "block_out_channels": (320, 640, 1280, 1280),
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
}
LATENTS = {"tiny": (2, 4, 16, 24), "mid": (1, 4, 32, 32), "full": (2, 4, 64, 64)}


def build_unet(size: str):
    """A seeded random UNet of the given size (the tiny one is the test fixture's configuration)."""
    from diffusers import UNet2DConditionModel

    if size == "tiny":
        from pipelines.testing import SD15_UNET_CONFIG

        config = dict(SD15_UNET_CONFIG)
    else:
        config = dict(CONFIGS[size])
    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval()


def random_res_adapter(unet, rank: int = 16, alpha: float = 8.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ResAdapter state dict in the official layout (kohya LoRA keys + diffusers norm keys)."""
    from adapters.res_adapter import resnet_norm_paths, sampler_conv_paths

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for path in sampler_conv_paths(unet):
        conv = unet.get_submodule(path)
        key = "lora_unet_" + path.replace(".", "_")
        kh, kw = conv.kernel_size
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, conv.in_channels, kh, kw, generator=gen) * 0.02
        sd[f"{key}.lora_up.weight"] = torch.randn(conv.out_channels, rank, 1, 1, generator=gen) * 0.02
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    for path in resnet_norm_paths(unet):
        norm = unet.get_submodule(path)
        weight, bias = norm.weight.detach().float().cpu(), norm.bias.detach().float().cpu()  # any device / dtype
        sd[f"{path}.weight"] = weight * (1 + 0.1 * torch.randn(weight.shape, generator=gen))
        sd[f"{path}.bias"] = bias + 0.1 * torch.randn(bias.shape, generator=gen)
    return sd


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def run(size: str = "tiny", *, device: str | None = None, repeats: int = 3, rounds: int = 6, write: bool = True):
    """Time base / fused / unfused UNet steps; returns (and writes) ``{"environment", "rows"}``."""
    from adapters.res_adapter import fuse_res_adapter, load_res_adapter

    if size not in LATENTS:
        raise ValueError(f"`size` must be one of {sorted(LATENTS)}, got {size!r}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    base = build_unet(size)
    adapter = random_res_adapter(base)
    fused, unfused = copy.deepcopy(base), copy.deepcopy(base)
    load_res_adapter(unfused, adapter)
    load_res_adapter(fused, adapter)
    fuse_res_adapter(fused)
    modules = {name: len(list(m.modules())) for name, m in (("base", base), ("fused", fused), ("unfused", unfused))}
    hooks = {name: _hooks(m) for name, m in (("base", base), ("fused", fused), ("unfused", unfused))}
    for unet in (base, fused, unfused):
        unet.to(device, dtype)

    gen = torch.Generator().manual_seed(1)
    shape = LATENTS[size]
    sample = torch.randn(shape, generator=gen).to(device, dtype)
    text = torch.randn(shape[0], 77, base.config.cross_attention_dim, generator=gen).to(device, dtype)
    timestep = torch.tensor([500] * shape[0], device=device)

    def step(unet):
        return lambda: unet(sample, timestep, text).sample

    with torch.inference_mode():  # sanity: the fused and unfused adapters compute the same thing
        diff = float((step(fused)() - step(unfused)()).abs().max())
    fns = {"base": step(base), "fused": step(fused), "unfused": step(unfused)}
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    cpu = device == "cpu"
    for r in range(rounds):  # interleaved, rotating the order each round (cancels drift and position effects)
        for name in names[r % 3 :] + names[: r % 3]:
            res = measure(fns[name], warmup=1 if r == 0 else 0, repeats=repeats, device=device, memory=False)
            times[name].extend(res["times_s"])
            if cpu:  # process CPU time: far less sensitive than wall time to other jobs on a shared machine
                with torch.inference_mode():
                    for _ in range(repeats):
                        start = time.process_time()
                        fns[name]()
                        cpu_times[name].append(time.process_time() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_times.items() if values}
    rows = []
    for name in names:
        row = {
            "size": size,
            "variant": name,
            "median_s": median[name],
            "time_ratio": median[name] / median["base"],
            "min_ratio": best[name] / best["base"],
        }
        if cpu:
            row["cpu_median_s"] = cpu_median[name]
            row["cpu_time_ratio"] = cpu_median[name] / cpu_median["base"]
        row.update({"modules": modules[name], "hooks": hooks[name], "times_s": times[name]})
        if name in GOALS:
            ratio = row["cpu_time_ratio"] if cpu else row["time_ratio"]
            row["goal"] = f"<= {GOALS[name]}" + (" (CPU time)" if cpu else "")
            row["met"] = ratio <= GOALS[name]
        rows.append(row)
    payload = {
        "environment": environment(dtype, device),
        "latents": list(shape),
        "fused_vs_unfused_max_abs_diff": diff,
        "rounds": rounds,
        "repeats": repeats,
        "extra_modules_fused": modules["fused"] - modules["base"],
        "extra_hooks_fused": hooks["fused"] - hooks["base"],
        "rows": rows,
    }
    if write:
        suffix = "" if device == "cpu" else f"_{device.split(':')[0]}"
        write_results(f"res_adapter_{size}{suffix}", payload)
    for row in rows:
        logger.info(
            "%s %-8s median %.4fs ratio %.3f (min ratio %.3f, CPU-time ratio %s) hooks %d",
            size,
            row["variant"],
            row["median_s"],
            row["time_ratio"],
            row["min_ratio"],
            f"{row['cpu_time_ratio']:.3f}" if "cpu_time_ratio" in row else "-",
            row["hooks"],
        )
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=sorted(LATENTS))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.size, device=args.device, repeats=args.repeats, rounds=args.rounds)


if __name__ == "__main__":
    main()
