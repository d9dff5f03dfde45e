"""End-to-end smoke run of every pipeline on a device: half precision vs float32 (for :mod:`benchmarks.gpu`).

Each pipeline is built from the tiny test models with a random, non-zero adapter, run once in float32 and once
after ``pipe.to(dtype=half)`` with the same weights and the same initial latents (drawn in float32 on the CPU, then
cast), so the only difference is the arithmetic's precision. A row passes when every output value is finite and the
outputs (images in [0, 1]) agree within :data:`TOLERANCES`: the largest per-pixel difference and the mean one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["PIPELINES", "TOLERANCES", "run_smoke"]

PIPELINES = (
    "res_adapter_sd",
    "res_adapter_sdxl",
    "mv_adapter_sd",
    "mv_adapter_sdxl",
    "i2v_adapter",
    "hipa_sd",
    "hipa_sdxl",
)
#: ``{dtype: (max abs diff, mean abs diff)}`` allowed between the half-precision and the float32 output in [0, 1]
#: (bfloat16 keeps 8 mantissa bits to float16's 11, so it gets a looser bound).
#: Measured on the CPU (tiny models, 2 steps): float16 max 0.004 / mean 0.0005, bfloat16 max 0.03 / mean 0.004.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (0.03, 0.003),
    torch.bfloat16: (0.15, 0.02),
}
NUM_VIEWS = 6
NUM_FRAMES = 8
STEPS = 2
PROMPT = "a red cube"


def _latents(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _build(name: str) -> tuple[Any, dict[str, Any], tuple[int, ...]]:
    """``(float32 pipeline on the CPU with a random adapter, call kwargs, latent shape)``."""
    from benchmarks.runner import perturb_
    from pipelines import testing as tm

    xl = name.endswith("sdxl")
    components = tm.build_sdxl_components() if xl else tm.build_sd15_components()
    if not xl:
        components["requires_safety_checker"] = False
    hw = tm.SD15_UNET_CONFIG["sample_size"]
    if name.startswith("res_adapter"):
        from benchmarks.bench_res_adapter import random_res_adapter
        from pipelines.pipeline_res_adapter import ResAdapterPipeline, ResAdapterXLPipeline

        pipe = (ResAdapterXLPipeline if xl else ResAdapterPipeline)(**components)
        pipe.load_res_adapter(random_res_adapter(pipe.unet))
        pipe.fuse_res_adapter()
        return pipe, {"num_inference_steps": STEPS}, (1, 4, hw, hw)
    if name.startswith("mv_adapter"):
        from pipelines.pipeline_mv_adapter_sd import MVAdapterSDPipeline
        from pipelines.pipeline_mv_adapter_sdxl import MVAdapterXLPipeline

        pipe = (MVAdapterXLPipeline if xl else MVAdapterSDPipeline)(**components)
        adapter = pipe.init_mv_adapter(num_views=NUM_VIEWS)
        perturb_(adapter.trainable_parameters())
        return pipe, {"num_views": NUM_VIEWS, "num_inference_steps": STEPS}, (NUM_VIEWS, 4, hw, hw)
    if name == "i2v_adapter":
        from PIL import Image

        from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline

        pipe = I2VAdapterPipeline(**tm.build_animatediff_components())
        adapter = pipe.init_i2v_adapter()
        perturb_(adapter.parameters())
        image = Image.new("RGB", (2 * hw, 2 * hw), (180, 90, 40))
        kwargs = {"image": image, "num_frames": NUM_FRAMES, "num_inference_steps": STEPS}
        return pipe, kwargs, (1, 4, NUM_FRAMES, hw, hw)
    if name.startswith("hipa"):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        from adapters.hipa import ATTENTION_TARGETS, FEED_FORWARD_TARGETS
        from benchmarks.bench_hipa import _random_lora
        from pipelines.auto_pipeline import HiPAPipeline

        base = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline)(**components)
        pipe = HiPAPipeline.from_pipe(base)
        _random_lora(pipe, "hipa", [*ATTENTION_TARGETS, *FEED_FORWARD_TARGETS], seed=0)
        return pipe, {}, (1, 4, hw, hw)
    raise ValueError(f"unknown pipeline {name!r}; expected one of {PIPELINES}.")


def _output(pipe, kwargs: dict, latents: torch.Tensor, device: str, dtype: torch.dtype) -> np.ndarray:
    out = pipe(
        prompt=PROMPT,
        latents=latents.to(device, dtype),
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        return_dict=False,
        **kwargs,
    )[0]
    return np.asarray(out, dtype=np.float64)


def _one(name: str, device: str, half: torch.dtype) -> dict:
    start = time.perf_counter()
    pipe, kwargs, shape = _build(name)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    latents = _latents(shape)
    with torch.inference_mode():
        ref = _output(pipe, kwargs, latents, device, torch.float32)
        pipe.to(dtype=half)
        low = _output(pipe, kwargs, latents, device, half)
    max_tol, mean_tol = TOLERANCES[half]
    finite = bool(np.isfinite(low).all() and np.isfinite(ref).all())
    diff = np.abs(low - ref) if finite else None
    max_diff = float(diff.max()) if diff is not None else None
    mean_diff = float(diff.mean()) if diff is not None else None
    return {
        "pipeline": name,
        "pipeline_class": type(pipe).__name__,
        "dtype": str(half).replace("torch.", ""),
        "output_shape": "x".join(str(s) for s in ref.shape),
        "finite": finite,
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "tolerance": f"max <= {max_tol:g}, mean <= {mean_tol:g}",
        "met": finite and max_diff <= max_tol and mean_diff <= mean_tol,
        "seconds": time.perf_counter() - start,
        "status": "ok",
    }


def run_smoke(
    device: str, half: torch.dtype, *, only: tuple[str, ...] | None = None, budget: Callable[[], float] | None = None
) -> list[dict]:
    """One row per pipeline (see the module docstring); a pipeline that fails gets a row with its error."""
    if half not in TOLERANCES:
        raise ValueError(f"`half` must be one of {list(TOLERANCES)}, got {half}.")
    rows = []
    for name in only or PIPELINES:
        if budget is not None and budget() <= 0:
            rows.append({"pipeline": name, "status": "skipped: time budget spent"})
            continue
        try:
            rows.append(_one(name, device, half))
        except Exception as err:  # noqa: BLE001 - one broken pipeline must not hide the others' results
            logger.exception("smoke run of %s failed", name)
            rows.append({"pipeline": name, "status": f"error: {type(err).__name__}: {str(err)[:300]}", "met": False})
        logger.info("smoke %s", rows[-1])
    return rows
