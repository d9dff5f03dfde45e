"""A small CNN that reads mini-world attributes off an image: the evaluation's "CLIP score" and "Inception".

:class:`AttributeClassifier` predicts, from an RGB image of any size and aspect ratio,

* ``count``: how many objects are visible (1, 2 or 3; softmax over 3 classes),
* ``shapes``: which of :data:`~training.miniworld.scene.SHAPES` are present (multi-label),
* ``colors``: which of :data:`~training.miniworld.scene.COLORS` are present (multi-label),
* ``pairs``: which (shape, colour) objects are present (multi-label over ``len(SHAPES) * len(COLORS)``, index
  ``shape_index * len(COLORS) + color_index``), which checks that colours are bound to the right shapes.

:meth:`AttributeClassifier.prompt_match` turns these into prompt faithfulness (does the image show exactly the
objects the caption names?), :meth:`AttributeClassifier.features` gives the pooled penultimate features used for
a Frechet distance (:func:`frechet_distance`), like FID's Inception pool features.

Images are resized so that their shorter side is :data:`INPUT_SHORT_SIDE` pixels (aspect ratio kept; the network is
fully convolutional with global pooling) - mini-world cameras frame the scene by the shorter side, so objects keep
their size in the classifier's input at every resolution and aspect ratio.

Training uses renders labelled from the renderer's per-pixel object index (occluded or out-of-frame objects do not
count), plus a training-only dense head that classifies shape and colour per location at 1/4 resolution::

    nice -n 10 python -m training.miniworld.classifier --out assets/eval/classifier.safetensors

writes fp16 safetensors with the config and validation accuracies in its metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import logging
from safetensors.torch import load_file, save_file
from torch import nn

from .camera import Camera
from .render import render_views
from .scene import COLORS, SHAPES, Scene, parse_caption

logger = logging.get_logger(__name__)

__all__ = [
    "INPUT_SHORT_SIDE",
    "DEFAULT_CLASSIFIER_PATH",
    "AttributeClassifier",
    "load_classifier",
    "train_classifier",
    "render_labelled",
    "frechet_distance",
    "main",
]

INPUT_SHORT_SIDE = 48
DEFAULT_CLASSIFIER_PATH = Path(__file__).resolve().parents[2] / "assets" / "eval" / "classifier.safetensors"
_COLOR_NAMES = tuple(COLORS)
_MIN_VISIBLE_FRACTION = 0.004  # of the image area (about 9 px at 48x48)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(h + self.skip(x))


class AttributeClassifier(nn.Module):
    """Fully convolutional attribute classifier (about 0.27 M parameters; a stride-2 stem and three residual
    stages, each halving the resolution: a 48 x 48 input ends at 3 x 3).

    Args:
        channels: widths of the stem and of the three stages.
        feature_dim: size of the pooled feature vector (the Frechet-distance features).
    """

    def __init__(self, channels: Sequence[int] = (24, 48, 64, 96), feature_dim: int = 128):
        super().__init__()
        self.config = {"channels": list(channels), "feature_dim": int(feature_dim)}
        c = list(channels)
        self.stem = nn.Sequential(nn.Conv2d(3, c[0], 3, 2, 1), nn.GroupNorm(8, c[0]), nn.SiLU())
        self.stages = nn.Sequential(*(_Block(c[i], c[i + 1], 2) for i in range(len(c) - 1)))
        # Training-only dense head on the first stage (1/4 resolution): per-location shape and colour classes
        # (0 = background), supervised by the renderer's object index map - much more signal per image.
        self.dense_head = nn.Conv2d(c[1], len(SHAPES) + len(COLORS) + 2, 1)
        self.proj = nn.Linear(2 * c[3], feature_dim)
        self.count_head = nn.Linear(feature_dim, 3)
        self.shape_head = nn.Linear(feature_dim, len(SHAPES))
        self.color_head = nn.Linear(feature_dim, len(COLORS))
        self.pair_head = nn.Linear(feature_dim, len(SHAPES) * len(COLORS))

    # -- inputs ------------------------------------------------------------------------------------------------
    @staticmethod
    def preprocess(images) -> torch.Tensor:
        """PIL image(s), uint8 ``(B, H, W, 3)`` / ``(H, W, 3)`` arrays, or float tensors ``(B, 3, H, W)`` in [-1, 1]
        -> float32 ``(B, 3, h, w)`` in [-1, 1] with shorter side :data:`INPUT_SHORT_SIDE`."""
        if isinstance(images, torch.Tensor):
            x = images.float()
            if x.ndim == 3:
                x = x[None]
        else:
            if not isinstance(images, (list, tuple)):
                images = [images]
            arrs = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
            if len(arrs) == 1 and arrs[0].ndim == 4:
                arrs = list(arrs[0])
            x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()
            x = x / 127.5 - 1.0 if arrs[0].dtype == np.uint8 else x * 2.0 - 1.0
        h, w = x.shape[-2:]
        s = INPUT_SHORT_SIDE / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=s < 1, align_corners=False)
        return x.clamp(-1.0, 1.0)

    # -- network -----------------------------------------------------------------------------------------------
    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h1 = self.stages[0](self.stem(x))
        h = self.stages[1:](h1)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.proj(pooled), h1

    def features(self, x: torch.Tensor, preprocess: bool = True) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` (mean and max pooling, projected; before the heads' SiLU)."""
        if preprocess:
            x = self.preprocess(x)
        return self._trunk(x)[0]

    def forward(self, x: torch.Tensor, preprocess: bool = False, dense: bool = False) -> dict[str, torch.Tensor]:
        """Logits: ``count`` ``(B, 3)``, ``shapes`` ``(B, 5)``, ``colors`` ``(B, 8)``, ``pairs`` ``(B, 40)``; the
        ``features`` ``(B, feature_dim)``; with ``dense``, also ``dense`` ``(B, 15, h/4, w/4)`` (shape classes
        incl. background, then colour classes incl. background)."""
        if preprocess:
            x = self.preprocess(x)
        f, h1 = self._trunk(x)
        h = F.silu(f)
        out = {
            "count": self.count_head(h),
            "shapes": self.shape_head(h),
            "colors": self.color_head(h),
            "pairs": self.pair_head(h),
            "features": f,
        }
        if dense:
            out["dense"] = self.dense_head(h1)
        return out

    # -- predictions -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images, threshold: float = 0.5) -> list[dict]:
        """Per image: ``{"count": int, "shapes": set, "colors": set, "pairs": set of (color, shape)}``."""
        out = self(self.preprocess(images))
        count = out["count"].argmax(1) + 1
        shapes, colors, pairs = (torch.sigmoid(out[k]) > threshold for k in ("shapes", "colors", "pairs"))
        preds = []
        for b in range(count.shape[0]):
            preds.append(
                {
                    "count": int(count[b]),
                    "shapes": {SHAPES[i] for i in torch.nonzero(shapes[b]).flatten().tolist()},
                    "colors": {_COLOR_NAMES[i] for i in torch.nonzero(colors[b]).flatten().tolist()},
                    "pairs": {
                        (_COLOR_NAMES[i % len(COLORS)], SHAPES[i // len(COLORS)])
                        for i in torch.nonzero(pairs[b]).flatten().tolist()
                    },
                }
            )
        return preds

    @torch.no_grad()
    def prompt_match(self, images, prompts: str | Sequence[str]) -> list[dict]:
        """Prompt faithfulness per image.

        Each prompt is parsed with :func:`~training.miniworld.scene.parse_caption`. Returns per image
        ``{"count_ok", "objects_ok", "colors_ok", "shapes_ok", "match"}``: the predicted count equals the number of
        objects named; every named (colour, shape) pair is detected; every named colour / shape is detected;
        ``match`` = count_ok and objects_ok.
        """
        preds = self.predict(images)
        if isinstance(prompts, str):
            prompts = [prompts] * len(preds)
        if len(prompts) != len(preds):
            raise ValueError(f"prompts ({len(prompts)}) must match the number of images ({len(preds)})")
        results = []
        for pred, prompt in zip(preds, prompts):
            objs = parse_caption(prompt)
            want_pairs = {(o["color"], o["shape"]) for o in objs}
            r = {
                "count_ok": pred["count"] == len(objs),
                "objects_ok": bool(objs) and want_pairs <= pred["pairs"],
                "colors_ok": bool(objs) and {o["color"] for o in objs} <= pred["colors"],
                "shapes_ok": bool(objs) and {o["shape"] for o in objs} <= pred["shapes"],
            }
            r["match"] = r["count_ok"] and r["objects_ok"]
            results.append(r)
        return results

    # -- I/O ---------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Save fp16 weights + config (safetensors metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        meta = {"config": json.dumps(self.config), "kind": "miniworld_attribute_classifier"}
        meta.update(metadata or {})
        tmp = path.with_suffix(".tmp")
        save_file(sd, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def from_file(cls, path: str | Path) -> AttributeClassifier:
        """Load a file written by :meth:`save` (strict: every key must match)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("kind") != "miniworld_attribute_classifier":
            raise ValueError(f"{path} is not a mini-world attribute classifier (metadata kind={meta.get('kind')!r})")
        model = cls(**json.loads(meta["config"]))
        sd = {k: v.float() for k, v in load_file(str(path)).items()}
        model.load_state_dict(sd, strict=True)
        model.metadata = meta
        return model.eval()


def load_classifier(path: str | Path | None = None) -> AttributeClassifier:
    """The shipped classifier (``assets/eval/classifier.safetensors``) or the one at ``path``, in eval mode."""
    path = Path(path) if path is not None else DEFAULT_CLASSIFIER_PATH
    if not path.exists():
        raise FileNotFoundError(
            f"no classifier at {path}; train one with `python -m training.miniworld.classifier --out {path}`"
        )
    return AttributeClassifier.from_file(path)


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)`` (as FID)."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"feature sets must be (N, D) with N >= 2 and the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # sqrt(ca^(1/2) cb ca^(1/2)) through symmetric eigendecompositions (stable, real).
    wa, va = np.linalg.eigh(ca)
    sa = (va * np.sqrt(np.clip(wa, 0.0, None))) @ va.T
    wm = np.linalg.eigvalsh(sa @ cb @ sa)
    tr_sqrt = np.sqrt(np.clip(wm, 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * tr_sqrt)


# ----------------------------------------------------------------------------------------------------- training

_TRAIN_SIZES = ((48, 48), (48, 48), (48, 48), (48, 64), (64, 48), (48, 96), (96, 48), (48, 72), (72, 48))


def render_labelled(
    seed: int, index: int, height: int, width: int, supersample: int = 2
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One labelled training render: uint8 ``(H, W, 3)`` and its labels (count index, multi-hots and per-pixel
    shape / colour class maps), from the objects visible in at least :data:`_MIN_VISIBLE_FRACTION` of the image.

    Cameras cover distances 1.4-2.3 and elevations 5-45 degrees, which includes both the embedded base model's
    training data (distance 1.5-1.8) and :class:`~training.miniworld.datasets.TextImageDataset`'s default (1.9-2.2).
    """
    rng = np.random.default_rng([seed, 7, index])
    scene = Scene.random(rng, num_objects=int(rng.choice([1, 1, 2, 3])))  # half single-object: clean shape signal
    fov_short = 35.0
    fov = (
        fov_short
        if width >= height
        else math.degrees(2 * math.atan(math.tan(math.radians(fov_short) / 2) * height / width))
    )
    cam = Camera.orbit(
        float(rng.uniform(0, 360)), float(rng.uniform(5, 45)), float(rng.uniform(1.4, 2.3)), fov_deg=fov
    )
    out = render_views(scene, cam, height, width, supersample=supersample, geometry=False)
    idx = out.object_index[0]
    shape_lut = np.array([0] + [SHAPES.index(o.shape) + 1 for o in scene.objects], np.uint8)
    color_lut = np.array([0] + [_COLOR_NAMES.index(o.color) + 1 for o in scene.objects], np.uint8)
    visible = [k for k in range(scene.count) if (idx == k).mean() >= _MIN_VISIBLE_FRACTION]
    shapes = np.zeros(len(SHAPES), np.float32)
    colors = np.zeros(len(COLORS), np.float32)
    pairs = np.zeros(len(SHAPES) * len(COLORS), np.float32)
    for k in visible:
        o = scene.objects[k]
        si, ci = SHAPES.index(o.shape), _COLOR_NAMES.index(o.color)
        shapes[si] = colors[ci] = pairs[si * len(COLORS) + ci] = 1.0
    count = np.int64(min(max(len(visible), 1), 3) - 1)
    labels = {"count": count, "shapes": shapes, "colors": colors, "pairs": pairs}
    labels["shape_map"] = shape_lut[idx + 1]  # (H, W) uint8, 0 = background
    labels["color_map"] = color_lut[idx + 1]
    return out.uint8()[0], labels


def _make_pool(seed: int, num: int, group: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Pre-rendered batches, ``group`` images of one size each."""
    batches = []
    for g in range(num // group):
        h, w = _TRAIN_SIZES[np.random.default_rng([seed, 8, g]).integers(len(_TRAIN_SIZES))]
        imgs, labels = [], []
        for i in range(group):
            im, lab = render_labelled(seed, g * group + i, h, w)
            imgs.append(im)
            labels.append(lab)
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # uint8
        y = {k: torch.from_numpy(np.stack([lab[k] for lab in labels])) for k in labels[0]}
        batches.append((x, y))
    return batches


def _augment(x: torch.Tensor, y: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """uint8 batch -> float [-1, 1] with flips, blur / down-up sampling and noise (robustness to generated images)."""
    x = x.float() / 127.5 - 1.0
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
        y = {**y, "shape_map": y["shape_map"].flip(-1), "color_map": y["color_map"].flip(-1)}
    r = float(torch.rand((), generator=gen))
    h, w = x.shape[-2:]
    if r < 0.3:  # lose detail as a small decoder would
        f = 0.5 + 0.4 * float(torch.rand((), generator=gen))
        x = F.interpolate(x, size=(max(8, int(h * f)), max(8, int(w * f))), mode="bilinear", antialias=True)
        x = F.interpolate(x, size=(h, w), mode="bilinear")
    elif r < 0.45:
        k = torch.tensor([1.0, 2.0, 1.0]) / 4.0
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    sigma = 0.08 * float(torch.rand((), generator=gen)) ** 2
    x = x + sigma * torch.randn(x.shape, generator=gen)
    gain = 1.0 + 0.1 * (torch.rand((x.shape[0], 1, 1, 1), generator=gen) - 0.5)
    return (x * gain).clamp(-1.0, 1.0), y


def _soft_ce(logits: torch.Tensor, multi_hot: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the normalised multi-hot: a strong, softmax-style signal (plain CE for one object)."""
    target = multi_hot / multi_hot.sum(1, keepdim=True).clamp(min=1.0)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def _loss(out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
    dense = out["dense"]
    size = dense.shape[-2:]
    shape_t = F.interpolate(y["shape_map"][:, None].float(), size=size, mode="nearest")[:, 0].long()
    color_t = F.interpolate(y["color_map"][:, None].float(), size=size, mode="nearest")[:, 0].long()
    ns = len(SHAPES) + 1
    return (
        F.cross_entropy(dense[:, :ns], shape_t)
        + F.cross_entropy(dense[:, ns:], color_t)
        + F.cross_entropy(out["count"], y["count"])
        + F.binary_cross_entropy_with_logits(out["shapes"], y["shapes"])
        + F.binary_cross_entropy_with_logits(out["colors"], y["colors"])
        + 4.0 * F.binary_cross_entropy_with_logits(out["pairs"], y["pairs"])
        + _soft_ce(out["shapes"], y["shapes"])
        + _soft_ce(out["colors"], y["colors"])
        + _soft_ce(out["pairs"], y["pairs"])
    )


@torch.no_grad()
def evaluate(model: AttributeClassifier, batches) -> dict[str, float]:
    """Accuracies on labelled batches: count, exact shape set, exact colour set, exact object (pair) set."""
    model.eval()
    hits = {"count": 0, "shapes": 0, "colors": 0, "pairs": 0}
    n = 0
    for x, y in batches:
        out = model(x.float() / 127.5 - 1.0, preprocess=True)
        hits["count"] += (out["count"].argmax(1) == y["count"]).sum().item()
        for k in ("shapes", "colors", "pairs"):
            hits[k] += ((out[k] > 0).float() == y[k]).all(1).sum().item()
        n += x.shape[0]
    return {k: v / n for k, v in hits.items()}


def train_classifier(
    steps: int = 7000,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    batch_size: int = 32,
    pool_size: int = 16000,
    lr: float = 2e-3,
    val_size: int = 1024,
    num_threads: int | None = None,
) -> tuple[AttributeClassifier, dict[str, float]]:
    """Train an :class:`AttributeClassifier` on mini-world renders (CPU-friendly).

    A pool of ``pool_size`` labelled renders (batches of one size each, short side 48, aspect ratios 1:2 to 2:1) is
    rendered once and reused with augmentation; validation uses ``val_size`` renders from another seed.

    Returns the model (eval mode) and its validation accuracies; saves it to ``out`` when given.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    t0 = time.time()
    pool = _make_pool(seed, pool_size, batch_size)
    val = _make_pool(seed + 1000, val_size, batch_size)
    logger.info("rendered %d + %d images in %.0fs", pool_size, val_size, time.time() - t0)
    model = AttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=gen)
    model.train()
    for step in range(steps):
        x, y = pool[int(order[step % len(pool)])]
        if (step + 1) % len(pool) == 0:
            order = torch.randperm(len(pool), generator=gen)
        xa, ya = _augment(x, y, gen)
        loss = _loss(model(model.preprocess(xa), dense=True), ya)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("step %d loss %.4f (%.0fs)", step, loss.item(), time.time() - t0)
        if step % 1000 == 999:
            logger.info("validation (part) at step %d: %s", step, evaluate(model, val[:4]))
            model.train()
    metrics = evaluate(model, val)
    metrics["train_seconds"] = round(time.time() - t0, 1)
    logger.info("validation: %s", metrics)
    if out is not None:
        model.save(
            out,
            metadata={
                "steps": str(steps),
                "seed": str(seed),
                "batch_size": str(batch_size),
                "pool_size": str(pool_size),
                "validation": json.dumps(metrics),
                "command": f"python -m training.miniworld.classifier --out {out} --steps {steps} --seed {seed}",
            },
        )
    return model.eval(), metrics


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m training.miniworld.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_CLASSIFIER_PATH))
    p.add_argument("--steps", type=int, default=7000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pool-size", type=int, default=16000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import logging as _logging

    _logging.basicConfig(level=_logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _, metrics = train_classifier(
        args.steps, args.out, seed=args.seed, batch_size=args.batch_size, pool_size=args.pool_size,
        num_threads=args.threads,
    )  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
