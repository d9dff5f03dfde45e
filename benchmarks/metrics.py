"""Quality metrics for the mini-world evaluation (``python -m benchmarks.quality``).

Every image argument is an RGB batch ``(N, H, W, 3)`` (or one image ``(H, W, 3)``) of floats in ``[0, 1]`` (numpy or
torch), a uint8 array, or a list of PIL images; :func:`to_array` converts them all to float64 numpy ``(N, H, W, 3)``.

Metrics:

* :func:`psnr`, :func:`ssim`: pixel fidelity against a reference (own implementations; SSIM is Wang et al. 2004 with
  a Gaussian window, ``sigma = 1.5``, ``K1 = 0.01``, ``K2 = 0.03``, computed per channel and averaged).
* :func:`prompt_accuracy`: prompt faithfulness, the CLIP-score analogue - the mini-world attribute classifier
  (:mod:`training.miniworld.classifier`) must see exactly the objects the prompt names (count and colour-shape pairs).
* :func:`classifier_features` + :func:`frechet_distance`: the FID analogue - the Frechet distance between Gaussians
  fitted to the classifier's pooled features of generated images and of real renders; :func:`kernel_distance` (KID)
  on the same features, unbiased at the small sample sizes a CPU evaluation affords.
* :func:`cross_view_consistency`: do the views of one generated object show the same object (classifier feature
  cosine similarity between views, and agreement of the detected objects)?
* :func:`first_frame_fidelity`, :func:`frame_consistency`, :func:`motion_amount`: for videos - is the input image
  kept, does the content stay the same object from frame to frame, and how much does it move?
* :func:`input_identity`, :func:`temporal_coherence`, :func:`background_change`: the same questions asked so that a
  pipeline cannot answer them by construction - identity to the input on the generated frames ``1..N`` only (an
  image-to-video pipeline pastes frame 0 back), consecutive-frame SSIM / PSNR, and the change of a border ring (the
  background around a centred subject) against frame 0; :func:`background_agreement` is the multi-view analogue.
* :func:`summarize`, :func:`bootstrap_ci`, :func:`paired_bootstrap`, :func:`set_distances`: spreads over seeds and
  confidence intervals of differences, so a claim is only called when a difference is outside the seed-to-seed
  spread; :func:`wilson_ci` for shares of 0/1 outcomes, :func:`paired_ratio_bootstrap` for a ratio of means (e.g. a
  generated clip's motion over the ground truth's), :func:`gap_closed` (jackknife CI of the share of an FD gap
  closed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "to_array",
    "psnr",
    "ssim",
    "classifier_features",
    "frechet_distance",
    "kernel_distance",
    "prompt_accuracy",
    "cross_view_consistency",
    "first_frame_fidelity",
    "frame_consistency",
    "motion_amount",
    "input_identity",
    "temporal_coherence",
    "border_ring",
    "background_change",
    "background_agreement",
    "summarize",
    "bootstrap_ci",
    "paired_bootstrap",
    "set_distances",
    "wilson_ci",
    "paired_ratio_bootstrap",
    "gap_closed",
]


# ----------------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------------


def to_array(images: Any) -> np.ndarray:
    """Images -> float64 ``(N, H, W, 3)`` in ``[0, 1]``.

    Accepts a PIL image or a list of them, a numpy array / torch tensor ``(N, H, W, 3)`` or ``(H, W, 3)`` (uint8 in
    ``[0, 255]`` or floats in ``[0, 1]``), or a list of such single images.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("`images` is empty.")
        return np.concatenate([to_array(im) for im in images], axis=0)
    if hasattr(images, "convert") and hasattr(images, "size"):  # PIL
        images = np.asarray(images.convert("RGB"))
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255.0
    else:
        arr = arr.astype(np.float64)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) or (H, W, 3), got shape {arr.shape}.")
    return arr


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_array(a), to_array(b)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"images must have the same size, got {x.shape[1:3]} and {y.shape[1:3]}.")
    if len(x) != len(y):
        if len(y) == 1:
            y = np.broadcast_to(y, x.shape)
        elif len(x) == 1:
            x = np.broadcast_to(x, y.shape)
        else:
            raise ValueError(f"batch sizes differ: {len(x)} and {len(y)}.")
    return x, y


# ----------------------------------------------------------------------------------------------------------------------
# pixel fidelity
# ----------------------------------------------------------------------------------------------------------------------


def psnr(a: Any, b: Any, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image, ``10 log10(range^2 / MSE)``; ``inf`` for identical images.

    Args:
        a, b: image batches of the same size (``(N, H, W, 3)``; one image broadcasts against a batch).
        data_range: the value range (1 for images in ``[0, 1]``).

    Returns:
        ``(N,)`` float64.
    """
    x, y = _pair(a, b)
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, 10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-300)), np.inf)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    a: Any, b: Any, data_range: float = 1.0, win_size: int = 7, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
) -> np.ndarray:
    """Structural similarity (Wang et al. 2004) per image, averaged over valid window positions and channels.

    ``SSIM = ((2 mu_x mu_y + C1)(2 cov_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))`` with local
    statistics from a normalised Gaussian window (``win_size`` x ``win_size``, shrunk to the image's shorter side,
    kept odd), ``C1 = (k1 * range)^2``, ``C2 = (k2 * range)^2``; variances are the window-weighted (biased) ones.

    Returns:
        ``(N,)`` float64 in ``[-1, 1]``; exactly 1 for identical images.
    """
    x, y = _pair(a, b)
    n, h, w, c = x.shape
    size = min(win_size, h, w)
    size = size if size % 2 == 1 else size - 1
    if size < 1:
        raise ValueError(f"images too small for SSIM: {h}x{w}.")
    win = _gaussian_window(size, sigma)[None, None].repeat(c, 1, 1, 1)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ty = torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(tx), filt(ty)
    var_x = filt(tx * tx) - mu_x**2
    var_y = filt(ty * ty) - mu_y**2
    cov = filt(tx * ty) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3)).numpy()


# ----------------------------------------------------------------------------------------------------------------------
# classifier-based metrics
# ----------------------------------------------------------------------------------------------------------------------


def _classifier_input(images: Any) -> torch.Tensor:
    """``(N, 3, H, W)`` float32 in ``[-1, 1]`` for :class:`~training.miniworld.classifier.AttributeClassifier`."""
    arr = to_array(images)
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).astype(np.float32)).mul(2.0).sub(1.0)


@torch.no_grad()
def classifier_features(classifier: torch.nn.Module, images: Any, batch_size: int = 64) -> np.ndarray:
    """The classifier's pooled features ``(N, D)`` (float64), the Frechet-distance features."""
    x = _classifier_input(images)
    feats = [classifier.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(feats).double().numpy()


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)`` (as FID):
    ``|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a^1/2 C_b C_a^1/2)^1/2)``, with the matrix square roots from
    symmetric eigendecompositions (real and stable for singular covariances). 0 for identical sets."""
    from training.miniworld.classifier import frechet_distance as _fd

    return max(0.0, float(_fd(np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64))))


def kernel_distance(feats_a: Any, feats_b: Any) -> float:
    """Kernel distance (KID, Binkowski et al. 2018): the unbiased estimate of the squared MMD between two feature sets
    ``(N, D)`` and ``(M, D)`` with the polynomial kernel ``k(x, y) = (x . y / D + 1)^3``. Unlike FD it has no bias at
    small sample sizes (its expectation is 0 for two samples of one distribution; single estimates can be < 0)."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"feature sets must be (N, D) with N >= 2 and the same D, got {a.shape} and {b.shape}")
    d = a.shape[1]
    kaa = (a @ a.T / d + 1.0) ** 3
    kbb = (b @ b.T / d + 1.0) ** 3
    kab = (a @ b.T / d + 1.0) ** 3
    n, m = len(a), len(b)
    return float(
        (kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1)) - 2.0 * kab.mean()
    )


@torch.no_grad()
def prompt_accuracy(classifier: Any, images: Any, prompts: str | Sequence[str]) -> dict[str, np.ndarray]:
    """Prompt faithfulness per image (our CLIP-score analogue).

    Each prompt is parsed with :func:`training.miniworld.scene.parse_caption`; the classifier must detect every
    named (colour, shape) object and the right number of objects.

    Returns:
        ``{"match", "objects_ok", "count_ok", "colors_ok", "shapes_ok"}``, each a ``(N,)`` float array of 0/1.
    """
    results = classifier.prompt_match(_classifier_input(images), prompts)
    keys = ("match", "objects_ok", "count_ok", "colors_ok", "shapes_ok")
    return {k: np.array([float(r[k]) for r in results]) for k in keys}


def _cosine_matrix(feats: np.ndarray) -> np.ndarray:
    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return f @ f.T


@torch.no_grad()
def _object_sets(classifier: Any, images: Any) -> list[frozenset]:
    return [frozenset(p["pairs"]) for p in classifier.predict(_classifier_input(images))]


@torch.no_grad()
def cross_view_consistency(classifier: Any, views: Any) -> dict[str, float]:
    """Consistency of the ``V`` views ``(V, H, W, 3)`` of one object.

    Returns:
        ``feature_similarity``: mean cosine similarity of classifier features over all view pairs (1 = the views
        look like the same objects to the classifier); ``attribute_agreement``: the fraction of view pairs whose
        detected (colour, shape) object sets are equal.
    """
    arr = to_array(views)
    if len(arr) < 2:
        raise ValueError("cross-view consistency needs at least 2 views.")
    sim = _cosine_matrix(classifier_features(classifier, arr))
    iu = np.triu_indices(len(arr), k=1)
    sets = _object_sets(classifier, arr)
    agree = [sets[i] == sets[j] for i, j in zip(*iu)]
    return {"feature_similarity": float(sim[iu].mean()), "attribute_agreement": float(np.mean(agree))}


@torch.no_grad()
def first_frame_fidelity(classifier: Any, frames: Any, image: Any) -> dict[str, float]:
    """How well a clip ``(F, H, W, 3)`` keeps its input ``image`` ``(H, W, 3)``.

    Returns:
        ``psnr`` / ``ssim`` of frame 0 against the image; ``identity``: mean cosine similarity of every frame's
        classifier features to the image's (is it still the same object, also after it moved?);
        ``attribute_kept``: the fraction of frames whose detected objects equal those detected in the image.
    """
    f, im = to_array(frames), to_array(image)
    feats = classifier_features(classifier, np.concatenate([im, f]))
    sim = _cosine_matrix(feats)[0, 1:]
    sets = _object_sets(classifier, np.concatenate([im, f]))
    return {
        "psnr": float(np.minimum(psnr(f[:1], im)[0], 100.0)),
        "ssim": float(ssim(f[:1], im)[0]),
        "identity": float(sim.mean()),
        "attribute_kept": float(np.mean([s == sets[0] for s in sets[1:]])),
    }


@torch.no_grad()
def frame_consistency(classifier: Any, frames: Any) -> dict[str, float]:
    """Frame-to-frame consistency of a clip ``(F, H, W, 3)``: mean classifier-feature cosine similarity and SSIM of
    consecutive frames (content stays the same object; the SSIM also drops with motion)."""
    f = to_array(frames)
    if len(f) < 2:
        raise ValueError("frame consistency needs at least 2 frames.")
    feats = classifier_features(classifier, f)
    fn = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return {
        "feature_similarity": float((fn[1:] * fn[:-1]).sum(axis=1).mean()),
        "ssim": float(ssim(f[1:], f[:-1]).mean()),
    }


def motion_amount(frames: Any) -> dict[str, float]:
    """How much a clip ``(F, H, W, 3)`` moves: mean absolute pixel change between consecutive frames
    (``consecutive``, in ``[0, 1]`` units) and between the first and the last frame (``first_last``)."""
    f = to_array(frames)
    if len(f) < 2:
        raise ValueError("motion amount needs at least 2 frames.")
    return {
        "consecutive": float(np.abs(f[1:] - f[:-1]).mean()),
        "first_last": float(np.abs(f[-1] - f[0]).mean()),
    }


@torch.no_grad()
def input_identity(classifier: Any, frames: Any, image: Any) -> dict[str, float]:
    """How well the generated frames of a clip ``(F, H, W, 3)`` (``F >= 2``) keep the input ``image`` ``(H, W, 3)``,
    on frames ``1..F-1`` only: an image-to-video pipeline puts the input latent back as frame 0, so frame 0 says
    nothing about the trained weights (its scores are returned apart, as ``*_frame0``, for the report).

    Returns:
        ``identity``: mean cosine similarity of the classifier features of frames ``1..F-1`` to the image's;
        ``attribute_kept``: the share of frames ``1..F-1`` whose detected (colour, shape) objects equal the image's;
        ``identity_frame0``, ``psnr_frame0`` (capped at 100 dB), ``ssim_frame0``: frame 0 against the image.
    """
    f, im = to_array(frames), to_array(image)
    if len(f) < 2:
        raise ValueError("identity on frames 1..N needs at least 2 frames.")
    both = np.concatenate([im, f])
    sim = _cosine_matrix(classifier_features(classifier, both))[0, 1:]
    sets = _object_sets(classifier, both)
    return {
        "identity": float(sim[1:].mean()),
        "attribute_kept": float(np.mean([s == sets[0] for s in sets[2:]])),
        "identity_frame0": float(sim[0]),
        "psnr_frame0": float(np.minimum(psnr(f[:1], im)[0], 100.0)),
        "ssim_frame0": float(ssim(f[:1], im)[0]),
    }


def temporal_coherence(frames: Any, max_psnr: float = 100.0) -> dict[str, float]:
    """Consecutive-frame coherence of a clip ``(F, H, W, 3)``: the mean SSIM of the ``F - 1`` consecutive pairs and
    their PSNR from the pooled MSE (``10 log10(1 / mean MSE)``, so one identical pair does not dominate; capped at
    ``max_psnr``). Flicker lowers both; so does motion, which is why a clip is compared with the ground-truth clip of
    the same scene."""
    f = to_array(frames)
    if len(f) < 2:
        raise ValueError("temporal coherence needs at least 2 frames.")
    mse = float(((f[1:] - f[:-1]) ** 2).mean())
    value = 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
    return {"ssim": float(ssim(f[1:], f[:-1]).mean()), "psnr": float(min(value, max_psnr))}


def border_ring(height: int, width: int, fraction: float = 0.12) -> np.ndarray:
    """Boolean mask ``(H, W)`` of the outer ring of an image, ``round(fraction * min(H, W))`` pixels wide (at least
    1): the background around the centred subject of a mini-world render."""
    r = max(1, int(round(fraction * min(height, width))))
    mask = np.zeros((height, width), dtype=bool)
    mask[:r] = mask[-r:] = True
    mask[:, :r] = mask[:, -r:] = True
    return mask


def background_change(frames: Any, fraction: float = 0.12) -> float:
    """Background stability of a clip ``(F, H, W, 3)``: the mean absolute change of the border ring
    (:func:`border_ring`) of frames ``1..F-1`` against frame 0, in ``[0, 1]`` units (0 = a still background)."""
    f = to_array(frames)
    if len(f) < 2:
        raise ValueError("background change needs at least 2 frames.")
    ring = border_ring(f.shape[1], f.shape[2], fraction)
    return float(np.abs(f[1:] - f[:1])[:, ring].mean())


def background_agreement(views: Any, fraction: float = 0.12) -> float:
    """Background disagreement across the ``V`` views ``(V, H, W, 3)`` of one object: the mean absolute difference
    of the views' mean border-ring colours over all view pairs (0 = the same background colour in every view). Mean
    colours, not pixels, because the views see the scene from different cameras."""
    v = to_array(views)
    if len(v) < 2:
        raise ValueError("background agreement needs at least 2 views.")
    ring = border_ring(v.shape[1], v.shape[2], fraction)
    colours = v[:, ring].mean(axis=1)  # (V, 3)
    iu = np.triu_indices(len(v), k=1)
    return float(np.abs(colours[iu[0]] - colours[iu[1]]).mean())


# ----------------------------------------------------------------------------------------------------------------------
# statistics over seeds
# ----------------------------------------------------------------------------------------------------------------------


def summarize(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean, standard deviation over seeds (``ddof=1``), count and a 95% bootstrap CI of the mean."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": int(len(v)),
        "ci_low": lo,
        "ci_high": hi,
    }


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` over the per-seed ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(stat(v)), float(stat(v))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    stats = np.array([stat(v[i]) for i in idx])
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def paired_bootstrap(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """The mean paired difference ``a - b`` over the same seeds with its 95% bootstrap CI.

    Returns:
        ``{"diff", "ci_low", "ci_high", "n"}``; a difference is outside the seed-to-seed spread when the CI does not
        contain 0.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal shapes, got {x.shape} and {y.shape}.")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return {"diff": float(d.mean()) if len(d) else math.nan, "ci_low": lo, "ci_high": hi, "n": int(len(d))}


def _jackknife(values: np.ndarray, full: float) -> tuple[float, float]:
    """Jackknife bias-corrected estimate and standard error from leave-one-out values."""
    n = len(values)
    mean = float(values.mean())
    se = math.sqrt((n - 1) / n * float(((values - mean) ** 2).sum()))
    return n * full - (n - 1) * mean, se


def set_distances(feats: dict[str, np.ndarray], real: np.ndarray, *, z: float = 1.96) -> dict[str, dict[str, float]]:
    """Frechet distance (FD) and kernel distance (KID) of several generated feature sets to ``real`` features, with
    95% confidence intervals over seeds, and the paired differences between the sets.

    Row ``i`` of every set comes from seed ``i``, so the sets are paired. The spread over seeds is estimated with the
    delete-one jackknife (leave seed ``i`` out of every set at once), which, unlike a bootstrap with replacement, never
    duplicates rows (duplicates bias FD and KID strongly at small ``N``). The real set is the fixed reference.
    Intervals: ``estimate +- z * jackknife SE``.

    Args:
        feats: name -> ``(N, D)`` features (``N >= 3``), the same seeds in every set.
        real: ``(M, D)`` features of real renders.

    Returns:
        name -> ``{"fd", "ci_low", "ci_high", "se", "kid", "kid_ci_low", "kid_ci_high"}``; ``"<a> - <b>"`` (every pair in
        the order given) -> ``{"diff", "ci_low", "ci_high", "kid_diff", "kid_ci_low", "kid_ci_high"}``.
    """
    names = list(feats)
    n = len(next(iter(feats.values())))
    if any(len(f) != n for f in feats.values()):
        raise ValueError("every feature set must have one row per seed (equal lengths).")
    if n < 3:
        raise ValueError(f"set distances need at least 3 seeds, got {n}.")
    full = {k: (frechet_distance(f, real), kernel_distance(f, real)) for k, f in feats.items()}
    loo: dict[str, np.ndarray] = {}
    for k, f in feats.items():
        vals = [
            (frechet_distance(np.delete(f, i, 0), real), kernel_distance(np.delete(f, i, 0), real)) for i in range(n)
        ]
        loo[k] = np.array(vals)
    out: dict[str, dict[str, float]] = {}
    for k in names:
        _, se = _jackknife(loo[k][:, 0], full[k][0])
        _, kse = _jackknife(loo[k][:, 1], full[k][1])
        fd, kid = full[k]
        out[k] = {
            "fd": fd, "ci_low": max(0.0, fd - z * se), "ci_high": fd + z * se, "se": se,
            "kid": kid, "kid_ci_low": kid - z * kse, "kid_ci_high": kid + z * kse,
        }  # fmt: skip
    for i, ka in enumerate(names):
        for kb in names[i + 1 :]:
            d = full[ka][0] - full[kb][0]
            kd = full[ka][1] - full[kb][1]
            _, se = _jackknife(loo[ka][:, 0] - loo[kb][:, 0], d)
            _, kse = _jackknife(loo[ka][:, 1] - loo[kb][:, 1], kd)
            out[f"{ka} - {kb}"] = {
                "diff": d, "ci_low": d - z * se, "ci_high": d + z * se,
                "kid_diff": kd, "kid_ci_low": kd - z * kse, "kid_ci_high": kd + z * kse,
            }  # fmt: skip
    return out


def wilson_ci(successes: int | float, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for ``z = 1.96``) of a share ``successes / n`` of 0/1 outcomes. Unlike a bootstrap it
    stays honest at the edges: 12 successes out of 12 give ``[0.76, 1]``, not ``[1, 1]``."""
    if n <= 0:
        return math.nan, math.nan
    p = float(successes) / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_ratio_bootstrap(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """The ratio of means ``mean(a) / mean(b)`` over the same seeds (e.g. a generated clip's motion over the
    ground-truth clip of the same scene) with a 95% percentile bootstrap CI, resampling seeds in pairs.

    A resample whose ``b`` mean is 0 gives ``inf`` when its ``a`` mean is positive and 1 when both are 0.

    Returns:
        ``{"ratio", "ci_low", "ci_high", "n", "mean_a", "mean_b"}``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal shapes, got {x.shape} and {y.shape}.")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n == 0:
        return {"ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "mean_a": math.nan,
                "mean_b": math.nan}  # fmt: skip

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = num / den
        return np.where(den > 0, r, np.where(num > 0, np.inf, 1.0))

    full = float(ratio(np.array(x.mean()), np.array(y.mean())))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) if n > 1 else np.zeros((1, 1), dtype=int)
    boot = ratio(x[idx].mean(axis=1), y[idx].mean(axis=1))
    lo, hi = (float(np.quantile(boot, q, method="nearest")) for q in (0.025, 0.975))
    return {"ratio": full, "ci_low": lo, "ci_high": hi, "n": n, "mean_a": float(x.mean()), "mean_b": float(y.mean())}


def gap_closed(
    start: np.ndarray, candidate: np.ndarray, goal: np.ndarray, real: np.ndarray, *, z: float = 1.96
) -> dict[str, float]:
    """The share of the FD gap from ``start`` to ``goal`` that ``candidate`` closes,
    ``(FD start - FD candidate) / (FD start - FD goal)`` (e.g. HiPA: start = plain one step, goal = the multi-step
    teacher), with a delete-one jackknife CI over seeds (``estimate +- z * SE``; seed ``i`` left out of all three sets at
    once, the FDs recomputed, as :func:`set_distances` does).

    Args:
        start, candidate, goal: ``(N, D)`` features, row ``i`` from seed ``i`` in each (``N >= 3``).
        real: ``(M, D)`` features of the real renders (the fixed reference).

    Returns:
        ``{"closed", "ci_low", "ci_high", "se", "gap"}``; ``closed`` and the CI are NaN when the full-sample gap
        ``FD start - FD goal`` is not positive (no gap to close).
    """
    sets = [np.asarray(f, dtype=np.float64) for f in (start, candidate, goal)]
    n = len(sets[0])
    if any(len(f) != n for f in sets) or n < 3:
        raise ValueError("gap_closed needs three feature sets with the same N >= 3 rows (one per seed).")

    def share(fs: list[np.ndarray]) -> tuple[float, float]:
        d = [frechet_distance(f, real) for f in fs]
        gap = d[0] - d[2]
        return ((d[0] - d[1]) / gap if gap > 0 else math.nan), gap

    full, gap = share(sets)
    if not math.isfinite(full):
        return {"closed": math.nan, "ci_low": math.nan, "ci_high": math.nan, "se": math.nan, "gap": gap}
    loo = np.array([share([np.delete(f, i, 0) for f in sets])[0] for i in range(n)])
    if not np.all(np.isfinite(loo)):
        return {"closed": full, "ci_low": -math.inf, "ci_high": math.inf, "se": math.inf, "gap": gap}
    _, se = _jackknife(loo, full)
    return {"closed": full, "ci_low": full - z * se, "ci_high": full + z * se, "se": se, "gap": gap}
