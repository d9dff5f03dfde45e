"""Held-out denoising loss of MV-Adapter runs: does the reference branch carry the input object?

``python -m benchmarks.mv_heldout [RUN ...] [--base assets/base] [--adapter ...]`` loads the embedded MV pipeline,
then for the adapter as loaded and each MV-Adapter file ``RUN`` computes the denoising MSE over all views of
mini-world objects (``--data-seed``, default 12345, not the quality evaluation's scenes), exactly as training sees
them (one timestep per object, Min-SNR weighting left out), with the object's own view 0 as the reference, another
object's view 0 (swapped), and no reference (zero states), each with the full caption and with the empty caption.
Same noise and timesteps for every arm. If "own - swapped" is not clearly negative, the views do not follow the input
image. This is the diagnosis behind the embedded MV-Adapter's recipe (``assets/README.md``); it never reads the
evaluation scenes, so it may be used to choose between runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.i2v_heldout import paired

logger = logging.getLogger(__name__)

DEFAULT_TIMESTEPS = (300, 500, 700, 900)
REFERENCES = ("own", "swapped", "none")


@torch.no_grad()
def encode_objects(pipe, *, num_items: int = 32, num_views: int = 6, data_seed: int = 12345, size: int = 32):
    """Mini-world objects ``0..num_items-1``: latents ``(N, V, C, h, w)``, condition maps ``(N, V, 6, H, W)`` and
    captions."""
    from benchmarks.quality import _mv_conditions
    from training.base_model import MINIWORLD_FRAMING
    from training.miniworld import MultiViewDataset

    adapter = pipe.mv_adapter
    data = MultiViewDataset(
        num_views, "ortho_ring", size, length=num_items, seed=data_seed, background=None,
        max_objects=MINIWORLD_FRAMING["max_objects"],
    )  # fmt: skip
    items = [data[i] for i in range(num_items)]
    pixels = torch.stack([it["pixel_values"] for it in items]).to(pipe.vae.device, pipe.vae.dtype)
    latents = pipe.vae.encode(pixels.flatten(0, 1)).latent_dist.mean * pipe.vae.config.scaling_factor
    latents = latents.unflatten(0, pixels.shape[:2])
    conditions = torch.stack([_mv_conditions(adapter, it, size, size) for it in items]).float()
    return latents, conditions, [it["text"] for it in items]


@torch.no_grad()
def object_losses(
    pipe,
    latents: torch.Tensor,
    conditions: torch.Tensor,
    texts: list[str],
    reference: str,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
) -> torch.Tensor:
    """Per-object MSE over all views, averaged over ``timesteps``: ``(N,)``. ``reference``: ``"own"`` (view 0 of the
    same object), ``"swapped"`` (view 0 of the next object), ``"none"`` (zero reference states)."""
    from adapters.mv_adapter import encode_condition
    from training.core import get_target

    adapter = pipe.mv_adapter
    state = adapter.state
    n, views = latents.shape[:2]
    device, dtype = pipe.unet.device, pipe.unet.dtype
    out = torch.zeros(n)
    for i in range(n):
        x0 = latents[i].to(device, dtype)  # (V, C, h, w)
        embeds = pipe.encode_prompt([texts[i]], device, 1, False)[0]
        ref_states = None
        if adapter.config.use_ref:
            src = (i + 1) % n if reference == "swapped" else i
            cache: dict[str, torch.Tensor] = {}
            with state.override(caching=True, cache=cache, num_views=1):
                pipe.unet(latents[src, :1].to(device, dtype), torch.zeros((), dtype=torch.long), embeds)
            # "none": zero states, the unconditional reference of training and of the pipeline's CFG
            ref_states = {k: torch.zeros_like(v) for k, v in cache.items()} if reference == "none" else cache
        features = encode_condition(adapter.cond_encoder, conditions[i].to(device, dtype))
        for t in timesteps:
            gen = torch.Generator().manual_seed(int(t) * 100003 + i)
            noise = torch.randn(x0.shape, generator=gen).to(device, dtype)
            tt = torch.full((views,), int(t), dtype=torch.long)
            noisy = pipe.scheduler.add_noise(x0, noise, tt)
            with state.override(num_views=views, ref_states=ref_states, caching=False, enabled=True):
                pred = pipe.unet(
                    noisy,
                    tt,
                    embeds.repeat(views, 1, 1),
                    down_intrablock_additional_residuals=[f.clone() for f in features],
                ).sample
            target = get_target(pipe.scheduler, x0, noise, tt)
            out[i] += float((pred.float() - target.float()).pow(2).mean()) / len(timesteps)
    return out


def evaluate(pipe, adapters: Sequence[str | None], timesteps=DEFAULT_TIMESTEPS, **kwargs) -> dict[str, dict]:
    """``{arm: {caption: {reference: loss, "own_minus_swapped": ci, "own_minus_none": ci}}}``."""
    latents, conditions, texts = encode_objects(pipe, **kwargs)
    results: dict[str, dict] = {}
    for path in adapters:
        if path is not None:
            pipe.load_mv_adapter(path)
        name = str(path) if path is not None else "loaded"
        results[name] = {}
        for caption, captions in (("full", texts), ("empty", [""] * len(texts))):
            losses = {r: object_losses(pipe, latents, conditions, captions, r, timesteps) for r in REFERENCES}
            results[name][caption] = {
                **{r: float(v.mean()) for r, v in losses.items()},
                "own_minus_swapped": paired(losses["own"] - losses["swapped"]),
                "own_minus_none": paired(losses["own"] - losses["none"]),
            }
            logger.info("%s %s %s", name, caption, results[name][caption])
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mv_heldout", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="MV-Adapter files to compare (default: the loaded one only)")
    parser.add_argument("--base", default=None)
    parser.add_argument("--adapter", default=None, help="the MV-Adapter loaded first (default: embedded)")
    parser.add_argument("--num-items", type=int, default=32)
    parser.add_argument("--data-seed", type=int, default=12345)
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipelines.embedded import load_pipeline

    pipe = load_pipeline("mv", base=args.base, adapter=args.adapter)
    pipe.set_progress_bar_config(disable=True)
    results = evaluate(
        pipe, [None, *args.runs], timesteps=args.timesteps, num_items=args.num_items, data_seed=args.data_seed
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
