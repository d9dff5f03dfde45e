"""Held-out denoising loss of ResAdapter runs per resolution: how model selection for ``assets/res_adapter`` was done.

``python -m benchmarks.res_adapter_heldout RUN [RUN ...] [--base assets/base] [--out loss.json]`` loads the base
pipeline, then for the base alone and for each ResAdapter ``RUN`` (a folder or weight file ``load_res_adapter``
reads) computes the denoising MSE (against the scheduler's target) on mini-world renders at every size in
``--sizes``: the same renders (``--data-seed``, default 12345, not the quality evaluation's scenes, encoded once), the
same fixed timesteps and the same noise for every arm, with the prompt's caption and with an empty caption (the
unconditional half of CFG). Each adapter's difference to the base is paired over the renders and given with a 95%
normal CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_SIZES = ((32, 32), (16, 16), (48, 48), (64, 64), (32, 64))
DEFAULT_TIMESTEPS = (50, 178, 307, 435, 564, 692, 821, 950)


def _size_arg(text: str) -> tuple[int, int]:
    from training.train_res_adapter import parse_size

    try:
        return parse_size(text, "--sizes")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@torch.no_grad()
def encode_renders(
    pipe, size: tuple[int, int], *, num_items: int = 64, data_seed: int = 12345
) -> tuple[torch.Tensor, list[str]]:
    """Renders ``0..num_items-1`` of the mini-world at ``size = (height, width)``, VAE-encoded (posterior mean,
    scaled): latents ``(num_items, C, h, w)`` and their captions. The ResAdapter leaves the VAE alone, so one
    encoding serves every arm."""
    from training.train_res_adapter import MiniworldBucketDataset

    if num_items < 1:
        raise ValueError(f"`num_items` must be >= 1, got {num_items}.")
    data = MiniworldBucketDataset(num_items, seed=data_seed)
    items = [data[(i, *size)] for i in range(num_items)]
    pixels = torch.stack([item["pixel_values"] for item in items]).to(pipe.vae.device, pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    return latents, [item["text"] for item in items]


@torch.no_grad()
def heldout_loss(
    pipe,
    size: tuple[int, int],
    *,
    num_items: int = 64,
    data_seed: int = 12345,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    empty_prompt: bool = False,
    renders: tuple[torch.Tensor, list[str]] | None = None,
) -> torch.Tensor:
    """Per-render denoising MSE of ``pipe.unet`` at ``size``, averaged over ``timesteps``: ``(num_items,)``.

    The renders of :func:`encode_renders` (or ``renders``, its result for the same arguments) are noised at each
    timestep with noise seeded by the timestep, and the UNet's prediction is compared to the scheduler's target
    (:func:`training.core.get_target`). Deterministic: two calls on the same weights return the same tensor.
    """
    from training.core import get_target

    latents, texts = (
        renders if renders is not None else encode_renders(pipe, size, num_items=num_items, data_seed=data_seed)
    )
    device, dtype = pipe.unet.device, pipe.unet.dtype
    latents = latents.to(device, dtype)
    embeds = pipe.encode_prompt([""] * len(texts) if empty_prompt else texts, device, 1, False)[0]
    losses = []
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(int(t))).to(device, dtype)
        step = torch.full((len(latents),), int(t), device=device, dtype=torch.long)
        noisy = pipe.scheduler.add_noise(latents, noise, step)
        pred = pipe.unet(noisy, step, embeds).sample
        target = get_target(pipe.scheduler, latents, noise, step)
        losses.append(((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3)))
    return torch.stack(losses).mean(0).cpu()


def compare(
    pipe,
    adapters: Sequence[str | os.PathLike | dict],
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    *,
    num_items: int = 64,
    data_seed: int = 12345,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
) -> list[dict]:
    """Rows ``{"size", "prompt", "arm", "loss", "diff", "ci95"}`` for the base and each adapter (a path or a state
    dict; loaded, measured, unloaded in turn, so the pipeline ends as it started)."""
    from adapters.res_adapter import load_res_adapter, unload_res_adapter

    renders = {size: encode_renders(pipe, size, num_items=num_items, data_seed=data_seed) for size in sizes}

    def measure() -> dict:
        return {
            (size, empty): heldout_loss(pipe, size, timesteps=timesteps, empty_prompt=empty, renders=renders[size])
            for size in sizes
            for empty in (False, True)
        }

    arms: dict[str, dict] = {"base": measure()}
    for index, adapter in enumerate(adapters):
        name = str(adapter) if isinstance(adapter, (str, os.PathLike)) else f"adapter {index}"
        load_res_adapter(pipe, adapter)
        try:
            arms[name] = measure()
        finally:
            unload_res_adapter(pipe)
    rows = []
    for (size, empty), base in arms["base"].items():
        for arm, losses in arms.items():
            diff = losses[(size, empty)] - base
            half = 1.96 * float(diff.std()) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
            rows.append(
                {
                    "size": f"{size[0]}x{size[1]}",
                    "prompt": "empty" if empty else "caption",
                    "arm": arm,
                    "loss": float(losses[(size, empty)].mean()),
                    "diff": float(diff.mean()),
                    "ci95": [float(diff.mean()) - half, float(diff.mean()) + half],
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", help="ResAdapter folders or files")
    parser.add_argument("--base", default="assets/base", help="base SD 1.x folder (default: assets/base)")
    parser.add_argument("--sizes", nargs="+", type=_size_arg, default=list(DEFAULT_SIZES), help="'HxW' or 'S'")
    parser.add_argument("--items", type=int, default=64, help="renders per size (default 64)")
    parser.add_argument("--data-seed", type=int, default=12345, help="mini-world data seed (default 12345)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.items < 1:
        parser.error(f"--items must be >= 1, got {args.items}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    rows = compare(pipe, args.adapters, args.sizes, num_items=args.items, data_seed=args.data_seed)
    for row in rows:
        lo, hi = row["ci95"]
        logger.info(
            "%-6s %-7s %-40s loss %.4f  diff %+.4f [%+.4f, %+.4f]",
            row["size"], row["prompt"], row["arm"][-40:], row["loss"], row["diff"], lo, hi,
        )  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
