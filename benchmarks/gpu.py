"""GPU benchmark: every adapter against its own base at full size, fp16, in one short run.

``python -m benchmarks.gpu`` writes ``benchmarks/results/gpu.md`` + ``gpu.json``. On one H100 / H200 it is meant to
finish in under 8 minutes, model construction included. Bases are random-initialised from the published configs
(:mod:`benchmarks.gpu_models`): nothing is downloaded or installed. Sections:

- ``smoke``: each pipeline end to end on the tiny test models, half precision vs float32 (:mod:`benchmarks.gpu_smoke`);
- ``res_adapter_sd15`` / ``res_adapter_sdxl``: SD 1.5 UNet at 512 px / SDXL UNet at 1024 px, base vs ResAdapter
  fused and unfused (UNet forward), base vs fused ResAdapter pipeline (one image);
- ``hipa_sd15``: HiPA one step (fused LoRA) vs the 50-step DDIM teacher with CFG 7.5 (one image at 512 px);
- ``i2v_adapter``: SD 1.5 + AnimateDiff v1-5-2 at 512 px, 16 frames: AnimateDiff vs I2V-Adapter (UNet forward, with
  the FLOP ratio of :func:`benchmarks.bench_i2v_adapter.unet_flops` beside the time ratio, and one video);
- ``mv_adapter_sdxl``: SDXL at 768 px, 6 views: 6 base images in one batched call vs MV-Adapter's 6 views;
- ``compile``: ``torch.compile`` vs eager UNet forward of chosen adapter UNets (compile time, speed-up, graph breaks).

Each comparison runs the adapter and its own base in the same process, interleaved call by call
(:func:`benchmarks.runner.compare`). UNet forwards are timed with SDPA and, when installed, xformers (the row says
"not installed" otherwise). Peak memory of an arm = its own weights + the CUDA allocator's peak above what was
allocated before the call. Every section degrades on its own: an error, a missing package or the time budget gives
a row saying so, and the others still run. ``--device cpu --size tiny`` is the dry run the tests use.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_models import SIZES, build_components, module_bytes
from benchmarks.runner import COLUMN_DOCS, RESULTS_DIR, compare, environment, perturb_

logger = logging.getLogger(__name__)

SECTIONS = ("smoke", "res_adapter_sd15", "hipa_sd15", "i2v_adapter", "res_adapter_sdxl", "mv_adapter_sdxl", "compile")
COMPILE_TARGETS = ("res_adapter_sd15", "res_adapter_sdxl", "i2v_adapter", "mv_adapter_sdxl")
ATTENTION = ("sdpa", "xformers")
#: The I2V-Adapter goal on a GPU: UNet time ratio within this of its FLOP ratio.
FLOP_RATIO_TOLERANCE = 0.03
#: Seconds a full-size section needs at least (the run skips it, with a row saying so, when less is left).
MIN_SECONDS = {
    "smoke": 15,
    "res_adapter_sd15": 25,
    "hipa_sd15": 25,
    "i2v_adapter": 45,
    "res_adapter_sdxl": 35,
    "mv_adapter_sdxl": 50,
    "compile": 120,
}
PROMPT = "a red cube on a wooden table"
NEGATIVE = "blurry"

COLUMNS = {
    **COLUMN_DOCS,
    "timed": "`unet forward`: one CFG-batched UNet call; `result`: one whole pipeline call (text encoding, denoising "
    "loop, VAE decode) giving one result",
    "result": "what one timed call produces",
    "attention": "attention kernels: `sdpa` (torch scaled_dot_product_attention, diffusers' default) or `xformers`",
    "weights_bytes": "bytes of the arm's own weights (parameters and buffers of every module it uses)",
    "peak_mem_bytes": "weights_bytes + the CUDA allocator's peak above the memory allocated before the call",
    "flop_ratio": "FLOPs of the UNet forward with / without the adapter (torch.utils.flop_counter on the meta device)",
    "ratio_minus_flop": "time_ratio - flop_ratio",
    "unet_passes": "UNet evaluations per result (CFG doubles the batch, not the passes)",
    "speedup": "baseline median_s / this median_s",
    "compile_s": "wall seconds of the first compiled call (dynamo + backend compilation)",
    "graph_breaks": "dynamo graph breaks over the whole UNet forward (0 = one graph)",
    "max_abs_diff": "largest |difference| between the two outputs",
    "mean_abs_diff": "mean |difference| between the two outputs",
    "finite": "every output value of both runs is finite",
    "met": "whether the goal holds, judged on this run's wall-time (and memory) ratios; only GPU rows at full size "
    "speak to the goals",
    "vs_compiled_base": "compiled adapter UNet median_s / compiled base UNet median_s (with --compile-base)",
    "status": "`ok`, or why the row has no measurement (not installed, needs CUDA, skipped, error)",
}


@dataclass
class Settings:
    """What one run measures (see ``main``'s options)."""

    device: str
    size: str
    dtype: torch.dtype
    half: torch.dtype
    steps: int
    teacher_steps: int
    repeats: int
    unet_repeats: int
    attention: tuple[str, ...]
    compile_targets: tuple[str, ...]
    compile_backend: str
    compile_mode: str | None
    budget_s: float
    compile_base: bool = False
    warmup: int = 1
    smoke: tuple[str, ...] | None = None
    start: float = field(default_factory=time.perf_counter)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def left(self) -> float:
        """Seconds left of the time budget."""
        return self.budget_s - (time.perf_counter() - self.start)

    def px(self, key: str) -> int:
        return SIZES[self.size][key]


@dataclass
class Arm:
    """One thing timed: a call and the modules whose weights it needs (``pipe``: toggles attention kernels)."""

    fn: Callable[[], object]
    modules: tuple[torch.nn.Module | None, ...]
    pipe: Any = None


# ----------------------------------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------------------------------


def xformers_version() -> str | None:
    """The installed xformers version, or ``None``."""
    if importlib.util.find_spec("xformers") is None:
        return None
    try:
        return importlib.metadata.version("xformers")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _activation_peak(fn: Callable[[], object], device: str) -> int | None:
    """Peak CUDA allocation of one call above what was allocated before it (``None`` off CUDA)."""
    if not device.startswith("cuda"):
        return None
    gc.collect()
    _sync(device)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        fn()
    _sync(device)
    return int(torch.cuda.max_memory_allocated() - before)


def _pipe_modules(pipe, *extra: torch.nn.Module | None) -> tuple[torch.nn.Module | None, ...]:
    mods = tuple(v for v in pipe.components.values() if isinstance(v, torch.nn.Module))
    return (*mods, *extra)


def _measure(s: Settings, arms: dict[str, Arm], *, repeats: int) -> dict[str, dict]:
    """Interleaved timing of ``arms`` (the first is the baseline) plus each arm's weights and peak memory."""
    names = list(arms)
    result = compare(
        arms[names[0]].fn,
        {name: arms[name].fn for name in names[1:]},
        warmup=s.warmup,
        repeats=repeats,
        device=s.device,
        memory=False,
    )
    out = {names[0]: dict(result["baseline"])}
    out.update({name: dict(res) for name, res in result["candidates"].items()})
    for name, arm in arms.items():
        weights = module_bytes(*arm.modules)
        act = _activation_peak(arm.fn, s.device)
        out[name]["weights_bytes"] = weights
        out[name]["peak_mem_bytes"] = weights + act if act is not None else None
    base = out[names[0]]
    for name in names:
        res = out[name]
        res["time_ratio"] = res["median_s"] / base["median_s"]
        res["min_time_ratio"] = res["min_s"] / base["min_s"]
        peak, base_peak = res["peak_mem_bytes"], base["peak_mem_bytes"]
        res["mem_ratio"] = peak / base_peak if peak and base_peak else None
    return out


def _rows(section: str, timed: str, result: str, attention: str, stats: dict[str, dict], goals=None) -> list[dict]:
    """Table rows of one :func:`_measure` result; ``goals``: ``{arm: (text, predicate(row) -> bool)}``."""
    goals = goals or {}
    rows = []
    for i, (name, res) in enumerate(stats.items()):
        row = {
            "section": section,
            "timed": timed,
            "variant": name + (" (baseline)" if i == 0 else ""),
            "attention": attention,
            "result": result,
            "median_s": res["median_s"],
            "min_s": res["min_s"],
            "time_ratio": res["time_ratio"],
            "min_time_ratio": res["min_time_ratio"],
            "weights_bytes": res["weights_bytes"],
            "peak_mem_bytes": res["peak_mem_bytes"],
            "mem_ratio": res["mem_ratio"],
            "goal": "-",
            "met": "-",
            "status": "ok",
            "times_s": res["times_s"],
        }
        if name in goals:
            text, predicate = goals[name]
            row["goal"], row["met"] = text, bool(predicate(row))
        rows.append(row)
    return rows


def _status_row(section: str, status: str, **extra: Any) -> dict:
    return {"section": section, **extra, "status": status}


def _attention_rows(
    s: Settings, section: str, arms: dict[str, Arm], result: str, goals=None, extra: Callable[[dict], None] = None
) -> list[dict]:
    """UNet-forward rows for every requested attention kernel (SDPA first; xformers last, switched off after)."""
    rows = []
    for kernel in s.attention:
        if kernel == "xformers":
            version = xformers_version()
            if version is None:
                rows.append(_status_row(section, "not installed", timed="unet forward", attention="xformers"))
                continue
            if not s.cuda:
                rows.append(_status_row(section, "needs CUDA", timed="unet forward", attention="xformers"))
                continue
        try:
            if kernel == "xformers":
                for arm in arms.values():
                    arm.pipe.enable_xformers_memory_efficient_attention()
            stats = _measure(s, arms, repeats=s.unet_repeats)
        except Exception as err:  # noqa: BLE001 - a broken xformers build must not cost the section's other rows
            if kernel != "xformers":
                raise
            logger.exception("xformers in %s failed", section)
            status = f"error: {type(err).__name__}: {str(err)[:300]}"
            rows.append(_status_row(section, status, timed="unet forward", attention="xformers"))
            continue
        finally:
            if kernel == "xformers":
                for arm in arms.values():
                    arm.pipe.disable_xformers_memory_efficient_attention()
        new = _rows(section, "unet forward", result, kernel, stats, goals)
        if extra is not None:
            for row in new:
                extra(row)
        rows.extend(new)
    return rows


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------------


def _unet_inputs(unet, batch: int, latent_hw: int, device: str, dtype: torch.dtype, frames: int | None = None):
    """``(args, kwargs)`` of one CFG-batched UNet forward: ``batch`` samples (videos of ``frames`` for a motion UNet)."""
    gen = torch.Generator().manual_seed(1)
    config = unet.config
    shape = (batch, config.in_channels, *((frames,) if frames else ()), latent_hw, latent_hw)
    sample = torch.randn(shape, generator=gen).to(device, dtype)
    text_batch = batch * (frames or 1)
    text = torch.randn(text_batch, 77, config.cross_attention_dim, generator=gen).to(device, dtype)
    kwargs: dict[str, Any] = {"return_dict": False}
    if getattr(config, "addition_embed_type", None) == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        px = float(latent_hw * 8)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=gen).to(device, dtype),
            "time_ids": torch.tensor([[px, px, 0.0, 0.0, px, px]] * batch).to(device, dtype),
        }
    return (sample, torch.tensor(500, device=device), text), kwargs


def _unet_call(unet, args: tuple, kwargs: dict, extra: Callable[[], dict] | None = None) -> Callable[[], object]:
    def call():
        more = extra() if extra is not None else {}
        return unet(*args, **kwargs, **more)[0]

    return call


def _gen(s: Settings) -> torch.Generator:
    return torch.Generator(s.device).manual_seed(0)


# ----------------------------------------------------------------------------------------------------------------------
# builders (shared by the sections and the compile section)
# ----------------------------------------------------------------------------------------------------------------------


def _build_res_adapter(s: Settings, base: str) -> dict:
    """Base pipeline, ResAdapter (fused / unfused) UNets and pipeline on copies of the base UNet."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from adapters.res_adapter import fuse_res_adapter, load_res_adapter
    from benchmarks.bench_res_adapter import random_res_adapter
    from pipelines.pipeline_res_adapter import ResAdapterPipeline, ResAdapterXLPipeline

    xl = base == "sdxl"
    comps = build_components(base, s.size, s.device, s.dtype)
    extra = {} if xl else {"requires_safety_checker": False}
    plain = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline)(**comps, **extra)
    adapter = random_res_adapter(plain.unet)
    fused_unet, unfused_unet = copy.deepcopy(plain.unet), copy.deepcopy(plain.unet)
    load_res_adapter(unfused_unet, adapter)
    load_res_adapter(fused_unet, adapter)
    fuse_res_adapter(fused_unet)
    fused = (ResAdapterXLPipeline if xl else ResAdapterPipeline)(**{**comps, "unet": fused_unet}, **extra)
    unfused = (ResAdapterXLPipeline if xl else ResAdapterPipeline)(**{**comps, "unet": unfused_unet}, **extra)
    for pipe in (plain, fused, unfused):
        pipe.set_progress_bar_config(disable=True)
    px = s.px(base)
    args, kwargs = _unet_inputs(plain.unet, 2, px // plain.vae_scale_factor, s.device, s.dtype)
    return {"plain": plain, "fused": fused, "unfused": unfused, "px": px, "args": args, "kwargs": kwargs}


def _build_i2v(s: Settings) -> dict:
    from diffusers import AnimateDiffPipeline

    from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline

    comps = build_components("animatediff", s.size, s.device, s.dtype)
    with torch.device(s.device):  # from_unet2d builds the motion UNet: on the device, not on the host
        plain = AnimateDiffPipeline(**comps)
        plain.to(s.device, s.dtype)
        # diffusers' from_pipe casts every component to float32 unless given a dtype
        i2v = I2VAdapterPipeline.from_pipe(plain, unet=copy.deepcopy(plain.unet), dtype=s.dtype)
    adapter = i2v.init_i2v_adapter()
    perturb_(adapter.parameters())
    for pipe in (plain, i2v):
        pipe.set_progress_bar_config(disable=True)
    px, frames = s.px("i2v"), s.px("frames")
    latent = px // plain.vae_scale_factor
    args, kwargs = _unet_inputs(plain.unet, 2, latent, s.device, s.dtype, frames=frames)
    return {"plain": plain, "i2v": i2v, "px": px, "frames": frames, "latent": latent, "args": args, "kwargs": kwargs}


def _build_mv(s: Settings) -> dict:
    from diffusers import StableDiffusionXLPipeline

    from adapters.mv_adapter import camera_maps, default_cameras, encode_condition
    from pipelines.pipeline_mv_adapter_sdxl import MVAdapterXLPipeline

    views = s.px("views")
    comps = build_components("sdxl", s.size, s.device, s.dtype)
    plain = StableDiffusionXLPipeline(**comps)
    mv = MVAdapterXLPipeline(**{**comps, "unet": copy.deepcopy(plain.unet)})
    adapter = mv.init_mv_adapter(num_views=views)
    adapter.cond_encoder.to(s.device, s.dtype)
    perturb_(adapter.trainable_parameters())
    adapter.state.num_views = views
    for pipe in (plain, mv):
        pipe.set_progress_bar_config(disable=True)
    px = s.px("mv")
    args, kwargs = _unet_inputs(plain.unet, 2 * views, px // plain.vae_scale_factor, s.device, s.dtype)
    maps = camera_maps(default_cameras(views), px, px).repeat(2, 1, 1, 1).to(s.device, s.dtype)
    with torch.inference_mode():
        features = encode_condition(adapter.cond_encoder, maps)

    def residuals() -> dict:  # the UNet pops from the list: a fresh list per call
        return {"down_intrablock_additional_residuals": list(features)}

    return {"plain": plain, "mv": mv, "adapter": adapter, "px": px, "views": views, "args": args, "kwargs": kwargs,
            "residuals": residuals}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------------------------


def section_res_adapter(s: Settings, base: str) -> list[dict]:
    """ResAdapter on SD 1.5 (512 px) or SDXL (1024 px): UNet forward and one image, fused / unfused vs base."""
    from benchmarks.bench_res_adapter import GOALS

    section = f"res_adapter_{base}"
    b = _build_res_adapter(s, "sdxl" if base == "sdxl" else "sd15")
    plain, fused, unfused, px = b["plain"], b["fused"], b["unfused"], b["px"]
    arms = {
        "base": Arm(_unet_call(plain.unet, b["args"], b["kwargs"]), (plain.unet,), plain),
        "fused": Arm(_unet_call(fused.unet, b["args"], b["kwargs"]), (fused.unet,), fused),
        "unfused": Arm(_unet_call(unfused.unet, b["args"], b["kwargs"]), (unfused.unet,), unfused),
    }
    goals = {name: (f"<= {goal}", lambda r, g=goal: r["time_ratio"] <= g) for name, goal in GOALS.items()}
    rows = _attention_rows(s, section, arms, f"batch 2 (CFG), {px} px", goals)
    common = {"height": px, "width": px, "num_inference_steps": s.steps, "guidance_scale": 7.5,
              "negative_prompt": NEGATIVE, "output_type": "pt"}  # fmt: skip
    results = {
        "base": Arm(lambda: plain(PROMPT, generator=_gen(s), **common), _pipe_modules(plain)),
        "fused": Arm(lambda: fused(PROMPT, generator=_gen(s), **common), _pipe_modules(fused)),
    }
    stats = _measure(s, results, repeats=s.repeats)
    goal = {"fused": (f"<= {GOALS['fused']}", lambda r: r["time_ratio"] <= GOALS["fused"])}
    rows += _rows(section, "result", f"1 image {px} px, {s.steps} steps, CFG", "sdpa", stats, goal)
    return rows


def section_hipa(s: Settings) -> list[dict]:
    """HiPA one step (fused random LoRA) vs the 50-step DDIM teacher with CFG 7.5, one SD 1.5 image at 512 px."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from adapters.hipa import ATTENTION_TARGETS, FEED_FORWARD_TARGETS
    from benchmarks.bench_hipa import GOAL_SPEEDUP, _random_lora
    from pipelines.auto_pipeline import HiPAPipeline

    comps = build_components("sd15", s.size, s.device, s.dtype)
    teacher = StableDiffusionPipeline(**comps, requires_safety_checker=False)
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config, clip_sample=False)
    student_base = StableDiffusionPipeline(**{**comps, "unet": copy.deepcopy(comps["unet"])},
                                           requires_safety_checker=False)  # fmt: skip
    hipa = HiPAPipeline.from_pipe(student_base)
    _random_lora(hipa, "hipa", [*ATTENTION_TARGETS, *FEED_FORWARD_TARGETS], seed=0)
    for pipe in (teacher, hipa):
        pipe.set_progress_bar_config(disable=True)
    px = s.px("sd15")
    common = {"height": px, "width": px, "output_type": "pt"}
    arms = {
        f"teacher_{s.teacher_steps}step": Arm(
            lambda: teacher(
                PROMPT, num_inference_steps=s.teacher_steps, guidance_scale=7.5, generator=_gen(s), **common
            ),  # fmt: skip
            _pipe_modules(teacher),
        ),
        "hipa_1step": Arm(lambda: hipa(PROMPT, generator=_gen(s), **common), _pipe_modules(hipa)),
    }
    stats = _measure(s, arms, repeats=s.repeats)
    goal = {"hipa_1step": (f"speedup >= {GOAL_SPEEDUP:g}x", lambda r: 1 / r["time_ratio"] >= GOAL_SPEEDUP)}
    rows = _rows("hipa_sd15", "result", f"1 image {px} px", "sdpa", stats, goal)
    for row, passes in zip(rows, (s.teacher_steps, 1), strict=True):
        row["unet_passes"] = passes
        row["speedup"] = 1 / row["time_ratio"]
    return rows


def section_i2v(s: Settings) -> tuple[list[dict], dict]:
    """I2V-Adapter vs AnimateDiff at 512 px / 16 frames: UNet forward (with its FLOP ratio) and one video."""
    from PIL import Image

    from benchmarks.bench_i2v_adapter import GOAL_RATIO, unet_flops

    b = _build_i2v(s)
    plain, i2v, px, frames = b["plain"], b["i2v"], b["px"], b["frames"]
    base_flops, i2v_flops = unet_flops(dict(plain.unet.config), frames, b["latent"])
    flop_ratio = i2v_flops / base_flops
    arms = {
        "animatediff": Arm(_unet_call(plain.unet, b["args"], b["kwargs"]), (plain.unet,), plain),
        "i2v_adapter": Arm(_unet_call(i2v.unet, b["args"], b["kwargs"]), (i2v.unet,), i2v),
    }

    def add_flops(row: dict) -> None:
        row["flop_ratio"] = 1.0 if row["variant"].startswith("animatediff") else flop_ratio
        row["ratio_minus_flop"] = row["time_ratio"] - row["flop_ratio"]

    goal = {
        "i2v_adapter": (
            f"|time_ratio - flop_ratio| <= {FLOP_RATIO_TOLERANCE}",
            lambda r: abs(r["time_ratio"] - flop_ratio) <= FLOP_RATIO_TOLERANCE,
        )
    }
    result = f"batch 2 (CFG) x {frames} frames, {px} px"
    rows = _attention_rows(s, "i2v_adapter", arms, result, goal, add_flops)
    image = Image.new("RGB", (px, px), (180, 90, 40))
    common = {"prompt": PROMPT, "num_frames": frames, "height": px, "width": px, "num_inference_steps": s.steps,
              "guidance_scale": 7.5, "output_type": "pt"}  # fmt: skip
    results = {
        "animatediff": Arm(lambda: plain(generator=_gen(s), **common), _pipe_modules(plain)),
        "i2v_adapter": Arm(lambda: i2v(image=image, generator=_gen(s), **common), _pipe_modules(i2v)),
    }
    stats = _measure(s, results, repeats=s.repeats)
    video_goal = {"i2v_adapter": (f"<= {GOAL_RATIO:g}x", lambda r: r["time_ratio"] <= GOAL_RATIO)}
    rows += _rows("i2v_adapter", "result", f"1 video {frames} frames {px} px, {s.steps} steps, CFG", "sdpa", stats,
                  video_goal)  # fmt: skip
    for row in rows:
        row.setdefault("flop_ratio", None)
    return rows, {"base_flops": base_flops, "i2v_flops": i2v_flops, "flop_ratio": flop_ratio}


def section_mv(s: Settings) -> list[dict]:
    """MV-Adapter on SDXL at 768 px: 6 views in one call vs 6 base images in one batched call."""
    from benchmarks.bench_mv_adapter import GOAL_RATIO

    b = _build_mv(s)
    plain, mv, px, views = b["plain"], b["mv"], b["px"], b["views"]
    cond = b["adapter"].cond_encoder
    arms = {
        "base": Arm(_unet_call(plain.unet, b["args"], b["kwargs"]), (plain.unet,), plain),
        "mv_adapter": Arm(_unet_call(mv.unet, b["args"], b["kwargs"], b["residuals"]), (mv.unet, cond), mv),
    }

    def ok(row: dict) -> bool:
        return row["time_ratio"] <= GOAL_RATIO and (row["mem_ratio"] is None or row["mem_ratio"] <= GOAL_RATIO)

    goal = {"mv_adapter": (f"<= {GOAL_RATIO}x time and memory", ok)}
    rows = _attention_rows(s, "mv_adapter_sdxl", arms, f"batch 2 (CFG) x {views} views, {px} px", goal)
    common = {"height": px, "width": px, "num_inference_steps": s.steps, "guidance_scale": 7.0,
              "negative_prompt": NEGATIVE, "output_type": "pt"}  # fmt: skip
    results = {
        f"base_x{views}": Arm(
            lambda: plain(PROMPT, num_images_per_prompt=views, generator=_gen(s), **common), _pipe_modules(plain)
        ),
        "mv_adapter": Arm(lambda: mv(PROMPT, num_views=views, generator=_gen(s), **common), _pipe_modules(mv, cond)),
    }
    stats = _measure(s, results, repeats=s.repeats)
    rows += _rows("mv_adapter_sdxl", "result", f"{views} views {px} px, {s.steps} steps, CFG", "sdpa", stats, goal)
    return rows


def _compile_target(s: Settings, target: str) -> tuple[torch.nn.Module, torch.nn.Module, Callable, Callable, dict]:
    """``(adapter UNet, base UNet, call(adapter_unet), call(base_unet), keep-alive)`` for one compile target."""
    if target.startswith("res_adapter"):
        b = _build_res_adapter(s, "sdxl" if target.endswith("sdxl") else "sd15")
        args, kwargs = b["args"], b["kwargs"]
        call = lambda unet: unet(*args, **kwargs)[0]  # noqa: E731
        return b["fused"].unet, b["plain"].unet, call, call, b
    if target == "i2v_adapter":
        b = _build_i2v(s)
        args, kwargs = b["args"], b["kwargs"]
        call = lambda unet: unet(*args, **kwargs)[0]  # noqa: E731
        return b["i2v"].unet, b["plain"].unet, call, call, b
    if target == "mv_adapter_sdxl":
        b = _build_mv(s)
        args, kwargs, residuals = b["args"], b["kwargs"], b["residuals"]
        call = lambda unet: unet(*args, **kwargs, **residuals())[0]  # noqa: E731
        return b["mv"].unet, b["plain"].unet, call, lambda unet: unet(*args, **kwargs)[0], b
    raise ValueError(f"unknown compile target {target!r}; expected one of {COMPILE_TARGETS}.")


def _compile_one(s: Settings, target: str) -> list[dict]:
    """Eager vs compiled forward of one target's adapter UNet (its models are freed on return)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from benchmarks.compile_speedup import _graph_breaks

    unet, base, call, base_call, _keep = _compile_target(s, target)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(unet, backend=s.compile_backend, mode=s.compile_mode, dynamic=False)
    with torch.inference_mode():
        eager_out = call(unet)
        _sync(s.device)
        start = time.perf_counter()
        compiled_out = call(compiled)
        _sync(s.device)
        compile_s = time.perf_counter() - start
    diff = (compiled_out.float() - eager_out.float()).abs()
    breaks = _graph_breaks()
    arms = {"eager": Arm(lambda: call(unet), (unet,)), "compiled": Arm(lambda: call(compiled), (unet,))}
    if s.compile_base:
        compiled_base = torch.compile(base, backend=s.compile_backend, mode=s.compile_mode, dynamic=False)
        with torch.inference_mode():
            start = time.perf_counter()
            base_call(compiled_base)  # its compilation, outside the timed calls
            _sync(s.device)
            compile_base_s = time.perf_counter() - start
        arms["compiled base"] = Arm(lambda: base_call(compiled_base), (base,))
    stats = _measure(s, arms, repeats=s.unet_repeats)
    rows = _rows("compile", "unet forward", f"{target} adapter UNet", "sdpa", stats)
    for row in rows:
        row.update({"backend": s.compile_backend, "speedup": 1 / row["time_ratio"]})
    rows[1].update({"compile_s": compile_s, "graph_breaks": breaks, "max_abs_diff": float(diff.max()),
                    "mean_abs_diff": float(diff.mean())})  # fmt: skip
    if s.compile_base:
        rows[2].update({"result": f"{target} base UNet", "compile_s": compile_base_s})
        rows[1]["vs_compiled_base"] = stats["compiled"]["median_s"] / stats["compiled base"]["median_s"]
    return rows


def section_compile(s: Settings) -> list[dict]:
    """``torch.compile`` vs eager forward of each target's adapter UNet (fused ResAdapter = the base's graph)."""
    import torch._dynamo

    if not s.compile_targets:
        return [_status_row("compile", "skipped: no --compile targets")]
    rows = []
    for target in s.compile_targets:
        if s.size == "full" and s.left() < MIN_SECONDS["compile"]:
            rows.append(_status_row("compile", f"skipped: time budget ({s.left():.0f} s left)", target=target))
            continue
        try:
            rows.extend(_compile_one(s, target))
        except Exception as err:  # noqa: BLE001 - a failed compile must not stop the run
            logger.exception("compile of %s failed", target)
            rows.append(_status_row("compile", f"error: {type(err).__name__}: {str(err)[:300]}", target=target))
        finally:
            torch._dynamo.reset()
            _free()
    return rows


def section_smoke(s: Settings) -> list[dict]:
    """Every pipeline end to end on the tiny models: half precision vs float32 (see :mod:`benchmarks.gpu_smoke`)."""
    from benchmarks.gpu_smoke import run_smoke

    rows = run_smoke(s.device, s.half, only=s.smoke, budget=s.left)
    return [{"section": "smoke", **row} for row in rows]


# ----------------------------------------------------------------------------------------------------------------------
# driver and output
# ----------------------------------------------------------------------------------------------------------------------


def _run_section(s: Settings, name: str) -> tuple[list[dict], dict]:
    extra: dict = {}
    if name == "smoke":
        rows = section_smoke(s)
    elif name == "res_adapter_sd15":
        rows = section_res_adapter(s, "sd15")
    elif name == "res_adapter_sdxl":
        rows = section_res_adapter(s, "sdxl")
    elif name == "hipa_sd15":
        rows = section_hipa(s)
    elif name == "i2v_adapter":
        rows, extra = section_i2v(s)
    elif name == "mv_adapter_sdxl":
        rows = section_mv(s)
    elif name == "compile":
        rows = section_compile(s)
    else:
        raise ValueError(f"unknown section {name!r}; expected one of {SECTIONS}.")
    return rows, extra


def _notes(s: Settings) -> list[str]:
    return [
        f"Random-initialised bases ({'published full-size configs' if s.size == 'full' else 'the tiny test models'}, "
        f"{str(s.dtype).replace('torch.', '')}); timings do not depend on the weights' values. Each comparison: "
        f"{s.warmup} untimed call(s) per arm, then timed call by call, interleaved (benchmarks.runner.compare): "
        f"`unet forward` {s.unet_repeats} calls per arm, `result` {s.repeats} calls per arm with {s.steps} denoising steps (the HiPA "
        f"teacher {s.teacher_steps}); the time of a result at other step counts is about steps x the UNet forward "
        "plus the encoders and the VAE decode.",
        "SDXL's VAE has `force_upcast` (published config), so SDXL pipelines decode in float32 in both arms.",
        f"I2V-Adapter goal on a GPU: the UNet time ratio within {FLOP_RATIO_TOLERANCE} of its FLOP ratio (the "
        "first-frame attention adds ~13% FLOPs per UNet pass at 512 px / 16 frames).",
        "Smoke rows: the tiny test models, 2 steps, the same weights and initial latents in float32 and in "
        f"{str(s.half).replace('torch.', '')}; images in [0, 1] compared (tolerances in benchmarks.gpu_smoke).",
    ]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _markdown(payload: dict) -> str:
    lines = ["# gpu", ""]
    env = payload["environment"]
    lines += [", ".join(f"{k}: {v}" for k, v in env.items()), ""]
    lines += [f"Total wall time {payload['elapsed_s']:.0f} s (budget {payload['settings']['budget_s']:.0f} s).", ""]
    lines += [*(p for note in payload["notes"] for p in (note, "")), ""]
    for name, section in payload["sections"].items():
        lines += [f"## {name}", ""]
        if section.get("extra"):
            lines += [", ".join(f"{k}: {_fmt(v)}" for k, v in section["extra"].items()), ""]
        rows = section["rows"]
        columns = list(
            dict.fromkeys(k for r in rows for k, v in r.items() if k != "section" and not isinstance(v, list))
        )
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
        lines += ["", f"Section wall time {section['elapsed_s']:.1f} s.", ""]
    used = list(dict.fromkeys(k for sec in payload["sections"].values() for r in sec["rows"] for k in r))
    lines += ["Columns:"] + [f"- `{c}`: {COLUMNS[c]}" for c in used if c in COLUMNS]
    return "\n".join(lines).rstrip() + "\n"


def write(payload: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(_markdown(payload))
    return json_path, md_path


def _payload(s: Settings, sections: dict[str, dict], pending: list[str]) -> dict:
    env = environment(s.dtype, s.device)
    env.update({
        "xformers": xformers_version() or "not installed",
        "cuda": torch.version.cuda,
        "half_dtype (smoke)": str(s.half).replace("torch.", ""),
    })  # fmt: skip
    settings = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in asdict(s).items() if k != "start"}
    notes = _notes(s)
    if pending:
        notes.append(f"Partial results: still to run when written: {', '.join(pending)}.")
    return {
        "environment": env,
        "settings": settings,
        "elapsed_s": time.perf_counter() - s.start,
        "notes": notes,
        "sections": sections,
        "columns": dict(COLUMNS),
    }


def run(
    s: Settings, sections: tuple[str, ...] = SECTIONS, *, checkpoint: Callable[[dict], None] | None = None
) -> dict:
    """Run ``sections`` in order; each gives rows (or a row saying why not). Returns the payload.

    ``checkpoint(payload)`` is called after every section (the results so far survive a run killed at its limit).
    """
    out: dict[str, dict] = {}
    for i, name in enumerate(sections):
        start = time.perf_counter()
        extra: dict = {}
        if s.size == "full" and s.left() < MIN_SECONDS.get(name, 0):
            rows = [_status_row(name, f"skipped: time budget ({s.left():.0f} s left)")]
        else:
            logger.info("section %s (%.0f s left)", name, s.left())
            try:
                rows, extra = _run_section(s, name)
            except Exception as err:  # noqa: BLE001 - every section reports; one failure must not end the run
                logger.exception("section %s failed", name)
                rows = [_status_row(name, f"error: {type(err).__name__}: {str(err)[:300]}")]
            _free()
        out[name] = {"rows": rows, "extra": extra, "elapsed_s": time.perf_counter() - start}
        logger.info("section %s done in %.1f s", name, out[name]["elapsed_s"])
        if checkpoint is not None and i + 1 < len(sections):
            checkpoint(_payload(s, out, list(sections[i + 1 :])))
    return _payload(s, out, [])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="full (default on cuda) or tiny (cpu)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--steps", type=int, default=None, help="denoising steps of a timed result (full 10, tiny 2)")
    p.add_argument("--teacher-steps", type=int, default=50, help="HiPA teacher steps")
    p.add_argument("--repeats", type=int, default=None, help="timed results per arm (full 3, tiny 1)")
    p.add_argument("--unet-repeats", type=int, default=None, help="timed UNet forwards per arm (full 10, tiny 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per arm before timing")
    p.add_argument("--attention", nargs="+", choices=ATTENTION, default=list(ATTENTION))
    p.add_argument(
        "--compile",
        nargs="*",
        choices=COMPILE_TARGETS,
        default=None,
        help="adapter UNets to torch.compile (default: res_adapter_sd15 i2v_adapter; none given: no compile)",
    )
    p.add_argument("--compile-base", action="store_true", help="also time the compiled base UNet of each target")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune)")
    p.add_argument("--smoke", nargs="+", default=None, help="smoke pipelines (default: all)")
    p.add_argument("--budget-s", type=float, default=420.0, help="full size: sections left when this is spent skip")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--name", default=None, help="results file name (default: gpu for cuda/full, else gpu_<size>_<dev>)"
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    """Parse options, run, write the results; returns the payload."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from diffusers.utils import logging as diffusers_logging

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu --size tiny for a dry run).")
    cuda = device.startswith("cuda")
    size = args.size or ("full" if cuda else "tiny")
    full = size == "full"
    compile_targets = ("res_adapter_sd15", "i2v_adapter") if args.compile is None else tuple(args.compile)
    s = Settings(
        device=device,
        size=size,
        dtype=torch.float16 if cuda else torch.float32,
        half=torch.float16 if cuda else torch.bfloat16,  # CPU: bfloat16 (float16 kernels are missing/slow there)
        steps=args.steps or (10 if full else 2),
        teacher_steps=args.teacher_steps,
        repeats=args.repeats or (3 if full else 1),
        unet_repeats=args.unet_repeats or (10 if full else 2),
        attention=tuple(args.attention),
        compile_targets=compile_targets,
        compile_backend=args.compile_backend,
        compile_mode=args.compile_mode,
        budget_s=args.budget_s,
        compile_base=args.compile_base,
        warmup=args.warmup,
        smoke=tuple(args.smoke) if args.smoke else None,
    )
    name = args.name or ("gpu" if cuda and full else f"gpu_{size}_{device.split(':')[0]}")
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # per-module dtype-cast warnings would drown the progress lines
    try:
        payload = run(s, tuple(args.sections), checkpoint=lambda partial: write(partial, args.out_dir, name))
    finally:
        diffusers_logging.set_verbosity(verbosity)
    json_path, md_path = write(payload, args.out_dir, name)
    logger.info("wrote %s and %s (%.0f s)", json_path, md_path, payload["elapsed_s"])
    return payload


if __name__ == "__main__":
    main()
