"""Held-out prompt accuracy of embedded-base candidates: which checkpoint and which guidance scale to ship?

``python -m benchmarks.base_heldout BASE [BASE ...] [--guidance 5 7.5 10] [--num-items 128]`` generates, for each base
folder (a ``StableDiffusionPipeline`` layout, e.g. an exported training checkpoint) and each guidance scale, one image
per caption of mini-world scenes ``0..N-1`` of ``--data-seed`` (default 12345, not the quality evaluation's scenes)
with noise seed ``i`` for scene ``i`` (the same noise for every candidate), and scores them with the attribute
classifier: exact-object, colour, shape and count accuracy, each with a 95% Wilson interval, plus the paired
difference of each candidate to the first one. ``--vae-ceiling VAE ...`` instead scores the real renders of those
scenes and the same renders encoded and decoded by each VAE (the ceiling any UNet on it can reach). ``--vae`` swaps in another decoder that shares the latent space (the
shipped base uses a decoder fine-tuned after the UNet's training). It never reads the evaluation scenes, so it may be
used to choose between runs and sampler settings (``assets/README.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

KEYS = ("match", "colors_ok", "shapes_ok", "count_ok")


def heldout_prompts(num_items: int, size: int, data_seed: int = 12345) -> list[str]:
    """Captions of mini-world scenes ``0..num_items-1`` of ``data_seed``, drawn as the base's training data."""
    from benchmarks.quality import miniworld_framing
    from training.miniworld import TextImageDataset

    ds = TextImageDataset((size, size), seed=data_seed, **miniworld_framing())
    return [ds.sample(i)[0].caption() for i in range(num_items)]


def load_base(path: str | Path, vae: str | Path | None = None) -> Any:
    """A ``StableDiffusionPipeline`` from the base folder ``path`` (DDIM from its scheduler config), optionally with
    the VAE of folder ``vae``."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if vae is not None:
        kwargs["vae"] = AutoencoderKL.from_pretrained(vae)
    pipe = StableDiffusionPipeline.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def score(
    pipe: Any, clf: Any, prompts: list[str], *, guidance: float, steps: int = 25, batch: int = 16
) -> dict[str, np.ndarray]:
    """Per-prompt 0/1 outcomes ``{"match", "colors_ok", "shapes_ok", "count_ok"}`` (each ``(N,)``) of one image per
    prompt at the base's native size, noise seed ``i`` for prompt ``i``."""
    from benchmarks import metrics
    from benchmarks.quality import _batched, _generators, _np_images
    from pipelines.utils import native_resolution

    size = native_resolution(pipe)

    def gen(ps: list[str], seeds: list[int]) -> np.ndarray:
        out = pipe(ps, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                   generator=_generators(seeds), output_type="np")  # fmt: skip
        return _np_images(out)

    images = _batched(gen, prompts, batch)
    acc = metrics.prompt_accuracy(clf, images, prompts)
    return {k: acc[k] for k in KEYS}


def evaluate(
    bases: Sequence[str | Path],
    guidances: Sequence[float],
    *,
    num_items: int = 128,
    data_seed: int = 12345,
    steps: int = 25,
    vae: str | Path | None = None,
    classifier: str | Path | None = None,
) -> dict[str, Any]:
    """Every ``(base, guidance)`` candidate's accuracies with Wilson CIs, and its paired difference to the first
    candidate (normal 95% CI over prompts).

    Returns:
        ``{"candidates": [{"base", "guidance", <key>: mean_ci, "diff": {<key>: paired CI}, "per_prompt"}],
        "prompts", "num_items", ...}`` (``per_prompt``: the 0/1 outcomes, one per prompt, for breakdowns).
    """
    from benchmarks import verdicts
    from benchmarks.i2v_heldout import paired
    from benchmarks.quality import _classifier
    from pipelines.utils import native_resolution

    clf = _classifier(str(classifier) if classifier else None)
    rows: list[dict[str, Any]] = []
    first: dict[str, np.ndarray] | None = None
    prompts: list[str] | None = None
    for base in bases:
        pipe = load_base(base, vae)
        if prompts is None:
            prompts = heldout_prompts(num_items, native_resolution(pipe), data_seed)
        for g in guidances:
            outcome = score(pipe, clf, prompts, guidance=float(g), steps=steps)
            row: dict[str, Any] = {"base": str(base), "guidance": float(g)}
            row.update({k: verdicts.mean_ci(outcome[k]) for k in KEYS})
            if first is None:
                first = outcome
            row["diff"] = {k: paired(torch.from_numpy(outcome[k] - first[k])) for k in KEYS}
            row["per_prompt"] = {k: outcome[k].astype(int).tolist() for k in KEYS}
            rows.append(row)
            logger.info(
                "%s g=%s: exact %.3f colour %.3f shape %.3f count %.3f",
                base, g, *(row[k]["mean"] for k in KEYS),
            )  # fmt: skip
    return {"candidates": rows, "prompts": prompts, "num_items": num_items, "data_seed": data_seed, "steps": steps}


@torch.no_grad()
def vae_ceiling(
    vaes: Sequence[str | Path],
    *,
    num_items: int = 256,
    size: int = 32,
    data_seed: int = 12345,
    classifier: str | Path | None = None,
) -> dict[str, Any]:
    """Prompt accuracy of the held-out scenes' real renders ``(N, size, size, 3)`` and of the same renders encoded
    and decoded by each VAE folder in ``vaes``: the ceiling any UNet on that VAE can reach (a decoder fine-tune that
    keeps the encoder lifts it without retraining anything that works in latent space).

    Returns:
        ``{"real": {<key>: mean_ci}, "<vae>": {<key>: mean_ci}, ..., "num_items", "data_seed"}``.
    """
    from diffusers import AutoencoderKL

    from benchmarks import metrics, verdicts
    from benchmarks.quality import _classifier, miniworld_framing, vae_round_trip
    from training.miniworld import TextImageDataset, render

    clf = _classifier(str(classifier) if classifier else None)
    ds = TextImageDataset((size, size), seed=data_seed, **miniworld_framing())
    images, prompts = [], []
    for i in range(num_items):
        scene, cam, (h, w) = ds.sample(i)
        images.append(render(scene, cam, h, w, supersample=ds.supersample, geometry=False).rgb[0])
        prompts.append(scene.caption())
    real = np.stack(images).astype(np.float64)
    arms = {"real": real, **{str(v): vae_round_trip(AutoencoderKL.from_pretrained(v).eval(), real) for v in vaes}}
    out: dict[str, Any] = {"num_items": num_items, "data_seed": data_seed}
    for name, x in arms.items():
        acc = metrics.prompt_accuracy(clf, x, prompts)
        out[name] = {k: verdicts.mean_ci(acc[k]) for k in KEYS}
        logger.info("%s: exact %.3f colour %.3f shape %.3f count %.3f", name, *(out[name][k]["mean"] for k in KEYS))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.base_heldout", description=__doc__.split("\n\n")[0])
    parser.add_argument("bases", nargs="*", help="base folders (StableDiffusionPipeline layout) to compare")
    parser.add_argument(
        "--vae-ceiling", nargs="+", default=None, metavar="VAE",
        help="instead: accuracy of real renders through each VAE folder (the ceiling for any UNet on it)",
    )  # fmt: skip
    parser.add_argument("--guidance", type=float, nargs="+", default=[7.5], help="guidance scales to try")
    parser.add_argument("--vae", default=None, help="a VAE folder to decode with (same latent space)")
    parser.add_argument("--num-items", type=int, default=128)
    parser.add_argument("--data-seed", type=int, default=12345)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--classifier", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.vae_ceiling:
        results = vae_ceiling(
            args.vae_ceiling, num_items=args.num_items, data_seed=args.data_seed, classifier=args.classifier
        )
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
        return results
    if not args.bases:
        parser.error("give base folders to compare, or --vae-ceiling VAE [VAE ...]")
    results = evaluate(
        args.bases, args.guidance, num_items=args.num_items, data_seed=args.data_seed, steps=args.steps,
        vae=args.vae, classifier=args.classifier,
    )  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
