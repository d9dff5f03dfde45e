"""Held-out denoising loss of I2V-Adapter runs: does the first-frame branch help, and under which captions?

``python -m benchmarks.i2v_heldout [RUN ...] [--pipeline assets] [--out loss.json]`` loads the embedded I2V pipeline
(``--base`` / ``--motion-adapter`` / ``--adapter`` override its parts), then for the adapter as loaded and for each
I2V-Adapter file ``RUN`` computes the denoising MSE on frames 1..N of mini-world clips (``--data-seed``, default
12345, not the quality evaluation's scenes), exactly as training sees them (frame 0 clean, one timestep per clip),
with the adapter at scale 1 and at scale 0 (the plain motion UNet), the same noise and timesteps for every arm, and
three captions: the full caption (``"a red cube, spinning"``), the motion word alone (``"spinning"``) and the empty
caption. The paired difference "scale 1 - scale 0" per clip (95% normal CI) says how much the trained branch carries:
if it only helps when the caption does not name the subject, the subject comes from the text, not the image.

This is the diagnosis behind the embedded I2V-Adapter's recipe (``assets/README.md``); it never reads the evaluation
scenes, so it may be used to choose between runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)
CAPTIONS = ("full", "motion", "empty")


@torch.no_grad()
def encode_clips(pipe, *, num_items: int = 32, num_frames: int = 8, data_seed: int = 12345, size: int = 32):
    """Mini-world clips ``0..num_items-1`` of ``data_seed``, VAE-encoded (posterior mean, scaled):
    latents ``(N, C, F, h, w)`` and ``{"full", "motion", "empty"}`` caption lists."""
    from training.base_model import MINIWORLD_FRAMING
    from training.miniworld import VideoDataset
    from training.miniworld.scene import MOTIONS

    if num_items < 1:
        raise ValueError(f"`num_items` must be >= 1, got {num_items}.")
    data = VideoDataset(num_frames, size, length=num_items, seed=data_seed, **MINIWORLD_FRAMING)
    items = [data[i] for i in range(num_items)]
    pixels = torch.stack([item["pixel_values"] for item in items]).to(pipe.vae.device, pipe.vae.dtype)
    flat = pixels.flatten(0, 1)
    latents = pipe.vae.encode(flat).latent_dist.mean * pipe.vae.config.scaling_factor
    latents = latents.unflatten(0, pixels.shape[:2]).permute(0, 2, 1, 3, 4)
    texts = {
        "full": [item["text"] for item in items],
        "motion": [MOTIONS[item["motion"]] for item in items],
        "empty": [""] * num_items,
    }
    return latents, texts


@torch.no_grad()
def clip_losses(
    pipe, latents: torch.Tensor, texts: list[str], timesteps: Sequence[int] = DEFAULT_TIMESTEPS, batch: int = 8
) -> torch.Tensor:
    """Per-clip MSE on frames 1..N, averaged over ``timesteps``: ``(N,)``. Noise is seeded by (timestep, clip)."""
    from adapters.i2v_adapter.first_frame import add_noise_keep_first_frame
    from training.core import get_target

    scheduler = pipe.scheduler
    device, dtype = pipe.unet.device, pipe.unet.dtype
    out = torch.zeros(latents.shape[0])
    for start in range(0, latents.shape[0], batch):
        x0 = latents[start : start + batch].to(device, dtype)
        embeds = pipe.encode_prompt(texts[start : start + batch], device, 1, False)[0]
        embeds = embeds.repeat_interleave(x0.shape[2], dim=0)
        for t in timesteps:
            gen = torch.Generator().manual_seed(int(t) * 100003 + start)
            noise = torch.randn(x0.shape, generator=gen).to(device, dtype)
            tt = torch.full((x0.shape[0],), int(t), device=device, dtype=torch.long)
            noisy = add_noise_keep_first_frame(scheduler, x0, noise, tt)
            pred = pipe.unet(noisy, tt, encoder_hidden_states=embeds).sample
            target = get_target(scheduler, x0, noise, tt)
            err = (pred.float() - target.float())[:, :, 1:].pow(2).mean(dim=(1, 2, 3, 4))
            out[start : start + batch] += err.cpu() / len(timesteps)
    return out


def paired(diff: torch.Tensor) -> dict[str, float]:
    """Mean and 95% normal CI of per-clip differences ``(N,)``."""
    mean = float(diff.mean())
    half = 1.96 * float(diff.std(unbiased=True)) / math.sqrt(max(diff.numel(), 1)) if diff.numel() > 1 else math.nan
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def evaluate(
    pipe, adapters: Sequence[str | None], timesteps: Sequence[int] = DEFAULT_TIMESTEPS, **kwargs
) -> dict[str, dict]:
    """``{arm: {caption: {"loss_on", "loss_off", "diff": {mean, ci_low, ci_high}}}}`` for the loaded adapter
    (``None``) and each adapter file."""
    latents, texts = encode_clips(pipe, **kwargs)
    results: dict[str, dict] = {}
    off: dict[str, torch.Tensor] = {}
    for path in adapters:
        if path is not None:
            pipe.load_i2v_adapter(path)
        name = str(path) if path is not None else "loaded"
        results[name] = {}
        for caption in CAPTIONS:
            if caption not in off:
                pipe.set_i2v_adapter_scale(0.0)
                off[caption] = clip_losses(pipe, latents, texts[caption], timesteps)
            pipe.set_i2v_adapter_scale(1.0)
            on = clip_losses(pipe, latents, texts[caption], timesteps)
            results[name][caption] = {
                "loss_on": float(on.mean()),
                "loss_off": float(off[caption].mean()),
                "diff": paired(on - off[caption]),
            }
            logger.info("%s %s: on %.4f off %.4f", name, caption, float(on.mean()), float(off[caption].mean()))
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.i2v_heldout", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="I2V-Adapter files to compare (default: the loaded one only)")
    parser.add_argument("--base", default=None)
    parser.add_argument("--motion-adapter", default=None)
    parser.add_argument("--adapter", default=None, help="the I2V-Adapter loaded first (default: embedded)")
    parser.add_argument("--num-items", type=int, default=32)
    parser.add_argument("--data-seed", type=int, default=12345)
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS), help="noise levels averaged over"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipelines.embedded import load_pipeline

    pipe = load_pipeline("i2v", base=args.base, adapter=args.adapter, motion_adapter=args.motion_adapter)
    pipe.set_progress_bar_config(disable=True)
    results = evaluate(
        pipe, [None, *args.runs], timesteps=args.timesteps, num_items=args.num_items, data_seed=args.data_seed
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    for name, per_caption in results.items():
        for caption, r in per_caption.items():
            d = r["diff"]
            logger.info(
                "%-40s %-6s on %.4f off %.4f diff %+.4f [%+.4f, %+.4f]",
                name,
                caption,
                r["loss_on"],
                r["loss_off"],
                d["mean"],
                d["ci_low"],
                d["ci_high"],
            )
    return results


if __name__ == "__main__":
    main()
