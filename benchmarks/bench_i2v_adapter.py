"""I2V-Adapter benchmark: image-to-video generation time and peak memory vs plain AnimateDiff (goal <= 1.1x time).

Timed end to end in one process, same base + motion adapter, frames, size, steps and guidance:

- baseline ``animatediff``: ``AnimateDiffPipeline`` text-to-video;
- ``i2v_adapter``: ``I2VAdapterPipeline`` with a (random, non-zero) I2V-Adapter at scale 1: image encode, clean first
  frame, first-frame attention in every spatial self-attention;
- ``i2v_clean_first_frame_only``: ``I2VAdapterPipeline`` without an adapter (the pipeline's own overhead).

Sizes: ``tiny`` (the tiny AnimateDiff test model, 32 px, 8 frames, 4 steps), ``mid`` (the same model at 64 px) and
``full`` (randomly initialised SD 1.5 + AnimateDiff v1-5-2 architectures at 512 px, 16 frames, 10 steps; meant for a
GPU: ``python -m benchmarks.bench_i2v_adapter --size full --device cuda``). Random weights stand in for trained ones
(timing does not depend on the values).

Cost model: the first-frame attention adds, per spatial self-attention, one query and one output projection over
all tokens plus one attention of the same size as the layer's own (``F*N`` queries on the first frame's ``N`` keys;
the keys/values are the layer's own, sliced, not recomputed). :func:`unet_flops` counts it on the meta device: +13%
FLOPs per UNet pass for SD 1.5 + AnimateDiff at 512 px / 16 frames, +15% for the tiny test UNet at 16x16 latents and
+39% at 32x32 (its narrow 2-head attention over 1024 tokens dominates), so the 1.1x goal holds for the whole video
only where shared costs dilute it. The numbers and this explanation are written into the markdown results.
CPU timings are judged on process CPU time (see :mod:`benchmarks.runner`).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os

import torch

from benchmarks.runner import compare, environment, perturb_, write_results

logger = logging.getLogger(__name__)

GOAL_RATIO = 1.1
SIZES = {
    "tiny": {"resolution": 32, "num_frames": 8, "steps": 4},
    "mid": {"resolution": 64, "num_frames": 8, "steps": 4},
    "full": {"resolution": 512, "num_frames": 16, "steps": 10},
}


def _full_size_components(dtype: torch.dtype) -> dict:
    """SD 1.5 + AnimateDiff v1-5-2 shaped components, random weights (no download)."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines.testing import build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=max(49408, len(tokenizer)),
            max_position_embeddings=77,
        )
    )
    motion = MotionAdapter(
        block_out_channels=(320, 640, 1280, 1280),
        motion_layers_per_block=2,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False, steps_offset=1
    )
    parts = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "motion_adapter": motion}
    for module in parts.values():
        module.to(dtype).eval()
    return {**parts, "tokenizer": tokenizer, "scheduler": scheduler, "feature_extractor": None, "image_encoder": None}


def unet_flops(unet_config: dict, num_frames: int, latent_hw: int, batch: int = 2) -> tuple[int, int]:
    """FLOPs of one motion-UNet forward without and with an I2V-Adapter, counted on the meta device (no memory, no
    weights; attention counted as its matmuls) with ``torch.utils.flop_counter``: ``(base, with_adapter)``."""
    from diffusers import UNetMotionModel
    from torch.utils.flop_counter import FlopCounterMode

    from adapters.i2v_adapter import I2VAdapter

    with torch.device("meta"):
        unet = UNetMotionModel.from_config(unet_config).eval()
        sample = torch.empty(batch, unet.config.in_channels, num_frames, latent_hw, latent_hw)
        text = torch.empty(batch * num_frames, 77, unet.config.cross_attention_dim)

    def count() -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(sample, 500, encoder_hidden_states=text)
        return int(counter.get_total_flops())

    base = count()
    adapter = I2VAdapter.attach(unet)
    try:
        return base, count()
    finally:
        adapter.unload()


def _sd15_animatediff_config() -> dict:
    """``UNetMotionModel`` configuration of SD 1.5 + AnimateDiff v1-5-2 (for the FLOP estimate)."""
    return {"cross_attention_dim": 768, "use_motion_mid_block": True, "motion_max_seq_length": 32}


def _notes(size: str, rows: list[dict], flops: dict) -> list[str]:
    by = {(r["timed"], r["variant"]): r for r in rows}
    video, unet = by[("video", "i2v_adapter")], by[("unet forward", "i2v_adapter")]
    here, sd15 = flops["this_unet"], flops["sd15_animatediff_512px_16f"]
    video_ratio = video.get("cpu_time_ratio") or video["time_ratio"]
    unet_ratio = unet.get("cpu_time_ratio") or unet["time_ratio"]
    verdict = (
        "Both ratios meet the 1.1x goal."
        if video_ratio <= GOAL_RATIO and unet_ratio <= GOAL_RATIO
        else f"Whole video {video_ratio:.3f}x, UNet forward alone {unet_ratio:.3f}x: "
        + ("the video meets the 1.1x goal, the UNet forward alone does not. " if video_ratio <= GOAL_RATIO else "")
        + ("Neither meets the 1.1x goal here. " if video_ratio > GOAL_RATIO and unet_ratio > GOAL_RATIO else "")
        + "The excess is the branch's arithmetic, not overhead (see the FLOP count)."
    )
    return [
        "Each arm is warmed up once, then the arms are timed call by call, interleaved (benchmarks.runner.compare); "
        "`video` = one whole pipeline call (text/image encoding, denoising loop with CFG, VAE decode), `unet forward` "
        "= one CFG-batched UNet call (2 videos) of the denoising loop. On CPU `met` is judged on the CPU-time ratio "
        "(process CPU time: the machine is shared, wall times include waiting for a core).",
        verdict,
        "Cost model: per spatial self-attention the first-frame branch adds one query and one output projection over "
        "all tokens and one attention as large as the layer's own self-attention (F*N queries on the first frame's N "
        "keys: the same QK^T and AV FLOPs as F frames of N-token self-attention). The keys/values are the layer's own "
        "(a slice of frame 0, not recomputed), so the branch costs about one extra spatial self-attention per layer "
        "minus its K/V projections: pure arithmetic that no rewrite removes without changing the result. "
        f"FLOPs of one UNet forward (counted with torch.utils.flop_counter on the meta device): this {size} setting "
        f"{here['base'] / 1e9:.1f} -> {here['with_adapter'] / 1e9:.1f} GFLOP = {here['ratio']:.3f}x (the tiny test "
        "UNet has 32-channel, 2-head attention over up to 32x32 latent tokens, so attention dominates its FLOPs); SD "
        f"1.5 + AnimateDiff at 512 px, 16 frames: {sd15['base'] / 1e12:.1f} -> {sd15['with_adapter'] / 1e12:.1f} "
        f"TFLOP = {sd15['ratio']:.3f}x per UNet pass (the 64x64 level's self-attention dominates; at 256 px the "
        "ratio is smaller). The whole-video ratio adds the costs shared by both arms (encoders, VAE decode).",
        "Not faster, so not used: one SDPA call over the stacked base + branch batch (the key/value copies it needs "
        "cost more than the saved call on CPU).",
    ]


def run(
    size: str = "tiny",
    *,
    base: str | None = None,
    motion_adapter: str | None = None,
    device: str = "cpu",
    repeats: int = 3,
    rounds: int = 1,
    write: bool = True,
) -> dict:
    """Time AnimateDiff vs I2V-Adapter; returns (and writes) ``{"environment", "rows"}``."""
    from diffusers import AnimateDiffPipeline, MotionAdapter
    from PIL import Image

    from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {sorted(SIZES)}, got {size!r}.")
    spec = SIZES[size]
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if size == "full" and base is None:
        components = _full_size_components(dtype)
        plain = AnimateDiffPipeline(**components)
        base_name = "random SD 1.5 + AnimateDiff v1-5-2 architecture"
    else:
        if base is None:
            from pipelines.testing import tiny_animatediff_path

            base = str(tiny_animatediff_path())
            motion_adapter = motion_adapter or os.path.join(base, "motion_adapter")
        motion = MotionAdapter.from_pretrained(motion_adapter)
        plain = AnimateDiffPipeline.from_pretrained(base, motion_adapter=motion).to(dtype=dtype)
        base_name = base
    # separate UNets: the adapter goes on a copy so the baseline stays plain
    i2v_unet = copy.deepcopy(plain.unet)
    # diffusers' from_pipe casts every component to float32 unless given a dtype (fp16 on a GPU)
    i2v = I2VAdapterPipeline.from_pipe(plain, unet=i2v_unet, dtype=dtype)
    clean_only = I2VAdapterPipeline.from_pipe(plain, dtype=dtype)
    for pipe in (plain, i2v, clean_only):
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
    adapter = i2v.init_i2v_adapter()
    perturb_(adapter.parameters())

    res, frames, steps = spec["resolution"], spec["num_frames"], spec["steps"]
    image = Image.new("RGB", (res, res), (180, 90, 40))
    prompt = "a red cube rotating on a table"
    common = {
        "prompt": prompt,
        "num_frames": frames,
        "height": res,
        "width": res,
        "num_inference_steps": steps,
        "guidance_scale": 7.5,
        "output_type": "np",
    }

    def gen():
        return torch.Generator(device).manual_seed(0)

    def gen_cpu():
        return torch.Generator().manual_seed(0)

    result = compare(
        lambda: plain(generator=gen(), **common),
        {
            "i2v_adapter": lambda: i2v(image=image, generator=gen(), **common),
            "i2v_clean_first_frame_only": lambda: clean_only(image=image, generator=gen(), **common),
        },
        repeats=repeats,
        rounds=rounds,
        device=device,
    )
    # the UNet forward alone (the denoising loop's cost), many short interleaved repeats: less noisy than whole videos
    latent_hw = res // plain.vae_scale_factor
    sample = torch.randn(2, plain.unet.config.in_channels, frames, latent_hw, latent_hw, generator=gen_cpu())
    sample = sample.to(device, dtype)
    text = torch.randn(2 * frames, 77, plain.unet.config.cross_attention_dim, generator=gen_cpu()).to(device, dtype)
    unet_result = compare(
        lambda: plain.unet(sample, 500, encoder_hidden_states=text),
        {"i2v_adapter": lambda: i2v.unet(sample, 500, encoder_hidden_states=text)},
        repeats=max(repeats, 5),
        rounds=max(rounds, 3),
        device=device,
    )
    common_row = {"size": size, "resolution": res, "frames": frames, "steps": steps}
    cpu = device == "cpu"

    def row(what: str, name: str, res_: dict, ratios: dict | None, goal: bool) -> dict:
        ratios = ratios or {"time_ratio": 1.0, "min_time_ratio": 1.0, "cpu_time_ratio": 1.0, "mem_ratio": 1.0}
        # on a shared CPU the CPU-time ratio is the robust figure (see benchmarks.runner); on GPU the wall time
        judged = ratios["cpu_time_ratio"] if cpu and ratios.get("cpu_time_ratio") else ratios["time_ratio"]
        out = {
            **common_row,
            "timed": what,
            "variant": name,
            "median_s": res_["median_s"],
            "min_s": res_["min_s"],
            "cpu_median_s": res_["cpu_median_s"],
            "peak_mem_bytes": res_["peak_mem_bytes"],
            "time_ratio": ratios["time_ratio"],
            "min_time_ratio": ratios["min_time_ratio"],
            "cpu_time_ratio": ratios["cpu_time_ratio"],
            "mem_ratio": ratios["mem_ratio"],
            "goal": f"<= {GOAL_RATIO:g}x" if goal else "-",
            "met": judged <= GOAL_RATIO if goal else "-",
        }
        if not cpu:
            del out["cpu_median_s"], out["cpu_time_ratio"]
        return out

    rows = []
    for what, res_ in (("video", result), ("unet forward", unet_result)):
        rows.append(row(what, "animatediff (baseline)", res_["baseline"], None, False))
        for name, cand in res_["candidates"].items():
            rows.append(row(what, name, cand, cand, name == "i2v_adapter"))
    flops = {}
    for key, config, f, hw in (
        ("this_unet", dict(plain.unet.config), frames, latent_hw),
        ("sd15_animatediff_512px_16f", _sd15_animatediff_config(), 16, 64),
    ):
        base_flops, i2v_flops = unet_flops(config, f, hw)
        flops[key] = {"base": base_flops, "with_adapter": i2v_flops, "ratio": i2v_flops / base_flops}
    for r in rows:
        if r["timed"] == "unet forward":
            r["flop_ratio"] = 1.0 if r["variant"].startswith("animatediff") else flops["this_unet"]["ratio"]
    payload = {
        "environment": environment(dtype, device),
        "base": base_name,
        "flops": flops,
        "repeats": {"video": repeats * rounds, "unet forward": max(repeats, 5) * max(rounds, 3)},
        "rows": rows,
        "notes": _notes(size, rows, flops),
        "columns": {"flop_ratio": "FLOPs of the UNet forward with / without the adapter (meta-device count)"},
        "raw": {"video": result, "unet": unet_result},
    }
    if write:
        write_results(
            f"i2v_adapter_{size}" if device == "cpu" else f"i2v_adapter_{size}_{device.split(':')[0]}", payload
        )
    for row in rows:
        logger.info("%s", row)
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--base", default=None, help="SD 1.5-family pipeline folder (default: tiny test model)")
    parser.add_argument("--motion_adapter", default=None, help="MotionAdapter folder (with --base)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (cancels machine drift)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.base is not None and args.motion_adapter is None:
        parser.error("--base needs --motion_adapter")
    run(
        args.size,
        base=args.base,
        motion_adapter=args.motion_adapter,
        device=args.device,
        repeats=args.repeats,
        rounds=args.rounds,
    )


if __name__ == "__main__":
    main()
