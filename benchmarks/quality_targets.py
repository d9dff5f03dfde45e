"""The targets of the quality report, each decided from a 95% CI by :mod:`benchmarks.verdicts`.

Pure functions from per-seed measurements to rows ``{"target", "figure", "verdict"}`` of the report's summary table
(``python -m benchmarks.quality``); a section's claim holds when every one of its rows holds
(:func:`benchmarks.verdicts.all_hold`). Every row can fail: an adapter arm identical to its switched-off arm, a
reference that the views ignore, a clip that moves ten times as much as the ground truth, all come out as not holding.

Targets:

* **Base** - colour accuracy ``>= 0.90`` and exact-object accuracy ``>= 0.50`` at the native size
  (:data:`BASE_TARGETS`; Wilson intervals over seeds); shape and count accuracies are reported with their CIs.
* **I2V-Adapter** (:func:`i2v_targets`) - identity to the input on frames ``1..N`` above the adapter-off arm
  (``adapter_scale=0``, same noise; paired CI > 0); the subject keeps its colour and its shape (shares of frames
  ``1..N`` where the classifier sees the scene's colours / shapes, at least 90% of the ground-truth clips' shares);
  consecutive-frame SSIM and PSNR at least 90% of the ground-truth clips', background change against frame 0 at most
  110% of theirs (``within 10%``, one-sided: a clip stiller than the ground truth is caught by the motion band);
  motion (mean absolute change per frame) inside ``[1/3, 3]`` times the ground truth's (:data:`MOTION_BAND`; fails
  both for a still and for flicker). Ratios are of means over the same scenes, with a paired bootstrap CI.
* **MV-Adapter** (:func:`mv_targets`) - PSNR, SSIM to the ground truth and cross-view feature consistency higher than
  independent views (multi-view attention off) and than per-view base text-to-image; "follows the input": PSNR, SSIM
  and per-view colour / shape agreement with the input object higher with the true reference than with another
  object's reference (same noise, prompt and cameras). Background agreement across views is descriptive.
* **HiPA** (:func:`hipa_targets`) - FD lower than plain one step, accuracy not lower, and the share of the
  plain-to-teacher FD gap closed with a jackknife CI wholly at or above :data:`HIPA_GAP_TARGET`.
* **ResAdapter** (:func:`res_adapter_targets`) - FD lower (accuracy not lower) at every off-native size, and at the
  native size neither FD nor accuracy worse (neither difference reversed).
* **Texturing** (:func:`texture_targets`) - a mesh textured from geometry-guided multi-view generation, re-rendered
  from held-out cameras: PSNR and SSIM to the ground-truth renders and colour accuracy higher than the same mesh
  textured from independent per-view generations (the same pipeline with multi-view attention off, same noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.verdicts import (
    DOES_NOT_HOLD,
    HOLDS,
    REVERSED,
    ci_threshold_verdict,
    direction_verdict,
    ratio_band_verdict,
    target_row,
    threshold_verdict,
)

__all__ = [
    "BASE_TARGETS",
    "I2V_WITHIN",
    "MOTION_BAND",
    "HIPA_GAP_TARGET",
    "paired_diff",
    "not_worse",
    "base_targets",
    "i2v_targets",
    "mv_targets",
    "MV_ARM_FOR",
    "hipa_targets",
    "res_adapter_targets",
    "swapped_index",
    "TEXTURE_CLAIMED",
    "texture_targets",
]

#: Base targets at the native size: per-seed key of :func:`benchmarks.metrics.prompt_accuracy` -> (label, target).
BASE_TARGETS: dict[str, tuple[str, float]] = {
    "colors_ok": ("colour accuracy", 0.90),
    "match": ("exact-object accuracy", 0.50),
}
#: "Within 10% of the ground truth's" for the I2V coherence and background-stability targets.
I2V_WITHIN = 0.10
#: Motion band, as multiples of the ground-truth clips' motion: present (>= 1/3) but not flicker (<= 3).
MOTION_BAND = (1.0 / 3.0, 3.0)
#: HiPA: the whole CI of the share of the plain-to-teacher FD gap closed must be at or above this.
HIPA_GAP_TARGET = 0.5


def _iv(value: float, lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(value)} [{f.format(lo)}, {f.format(hi)}]"


def paired_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, want: str, seed: int = 0) -> dict:
    """Mean paired difference ``a - b`` ``(N,)`` with its bootstrap CI and :func:`direction_verdict`."""
    p: dict[str, Any] = metrics.paired_bootstrap(a, b, seed=seed)
    p["verdict"] = direction_verdict(p["ci_low"], p["ci_high"], want)
    p["want"] = want
    return p


def not_worse(verdict: str) -> str:
    """A "not worse" claim from a direction verdict: it fails only when the difference is reversed (wholly on the
    wrong side of 0); ``"undetermined"`` stays undetermined."""
    if verdict == REVERSED:
        return DOES_NOT_HOLD
    return verdict if verdict == "undetermined" else HOLDS


def _ratio_figure(r: Mapping[str, Any], digits: int = 3) -> str:
    if not math.isfinite(r.get("ratio", math.nan)):
        return "n/a"
    return (
        f"{r['mean_a']:.{digits}f} vs ground truth {r['mean_b']:.{digits}f}: ratio {r['ratio']:.2f} "
        f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
    )


def base_targets(scores: Mapping[str, Sequence[float] | np.ndarray], *, seed: int = 0) -> tuple[list[dict], dict]:
    """Base targets from per-seed 0/1 scores (``{"colors_ok": (N,), "match": (N,), ...}``).

    Returns:
        ``(rows, details)``; ``details`` maps each key of :data:`BASE_TARGETS` to its :func:`threshold_verdict`.
    """
    rows, details = [], {}
    for key, (label, target) in BASE_TARGETS.items():
        t = threshold_verdict(scores[key], target, seed=seed)
        details[key] = t
        rows.append(
            target_row(
                f"base: {label} >= {target:.2f} at the native size",
                _iv(t["mean"], t["ci_low"], t["ci_high"], 2),
                t["verdict"],
            )
        )
    return rows, details


def i2v_targets(per: Mapping[str, Mapping[str, Sequence[float]]], *, seed: int = 0) -> tuple[list[dict], dict]:
    """I2V-Adapter targets from per-clip values.

    Args:
        per: arm -> metric -> ``(N,)`` per-clip values, for the arms ``"i2v"``, ``"i2v_off"`` (the same pipeline with
            the adapter at scale 0, same noise) and ``"ground_truth"`` (the clips of the same scenes), with the metrics
            ``"identity"`` (frames 1..N), ``"colour_kept"``, ``"shape_kept"``, ``"coherence_ssim"``,
            ``"coherence_psnr"``, ``"background_change"`` and ``"motion"``; optionally ``"i2v_motion_prompt"`` and
            ``"i2v_off_motion_prompt"`` (the same two arms prompted with the motion word alone, so that only the
            image names the subject), which add an identity-vs-off and a colour-kept target.

    Returns:
        ``(rows, details)``; ``details`` holds the paired difference / ratio dict behind each row, by metric.
    """
    a, off, gt = per["i2v"], per["i2v_off"], per["ground_truth"]
    lo_in, hi_in = 1.0 - I2V_WITHIN, 1.0 + I2V_WITHIN
    details: dict[str, Any] = {"identity_vs_off": paired_diff(a["identity"], off["identity"], "higher", seed)}
    d = details["identity_vs_off"]
    rows = [
        target_row(
            "I2V: identity to the input on frames 1..N higher with the adapter than with adapter_scale=0 (same noise)",
            _iv(d["diff"], d["ci_low"], d["ci_high"], 3, signed=True),
            d["verdict"],
        )
    ]
    specs = [
        ("colour_kept", "I2V: subject keeps its colour in every frame (share of frames 1..N, >= 90% of ground truth's)",
         lo_in, math.inf),
        ("shape_kept", "I2V: subject keeps its shape in every frame (share of frames 1..N, >= 90% of ground truth's)",
         lo_in, math.inf),
        ("coherence_ssim", "I2V: frame-to-frame SSIM within 10% of the ground-truth clips' (>= 0.9x)", lo_in, math.inf),
        ("coherence_psnr", "I2V: frame-to-frame PSNR within 10% of the ground-truth clips' (>= 0.9x)", lo_in, math.inf),
        ("background_change", "I2V: background change vs frame 0 within 10% of the ground-truth clips' (<= 1.1x)",
         0.0, hi_in),
        ("motion", f"I2V: motion present but within 3x the ground truth's ({MOTION_BAND[0]:.2f}x to "
         f"{MOTION_BAND[1]:.0f}x)", *MOTION_BAND),
    ]  # fmt: skip
    for key, label, low, high in specs:
        r = ratio_band_verdict(a[key], gt[key], low, high, seed=seed)
        details[key] = r
        digits = {"motion": 4, "background_change": 4, "coherence_psnr": 2}.get(key, 3)
        rows.append(target_row(label, _ratio_figure(r, digits), r["verdict"]))
    if "i2v_motion_prompt" in per and "i2v_off_motion_prompt" in per:
        # The prompt is the motion word alone, so only the image names the subject (``--prompt "spinning"``).
        m, m_off = per["i2v_motion_prompt"], per["i2v_off_motion_prompt"]
        d = details["identity_vs_off_motion_prompt"] = paired_diff(m["identity"], m_off["identity"], "higher", seed)
        rows.append(
            target_row(
                "I2V, motion word only as prompt: identity on frames 1..N higher with the adapter than with "
                "adapter_scale=0 (same noise)",
                _iv(d["diff"], d["ci_low"], d["ci_high"], 3, signed=True),
                d["verdict"],
            )
        )
        r = details["colour_kept_motion_prompt"] = ratio_band_verdict(
            m["colour_kept"], gt["colour_kept"], lo_in, math.inf, seed=seed
        )
        rows.append(
            target_row(
                "I2V, motion word only as prompt: subject keeps its colour in every frame (>= 90% of ground truth's)",
                _ratio_figure(r, 3),
                r["verdict"],
            )
        )
    return rows, details


def swapped_index(i: int, n: int) -> int:
    """The object whose reference image object ``i`` of ``n`` gets in the swapped-reference arm: ``(i + 1) mod n``
    (never ``i`` itself when ``n >= 2``)."""
    if n < 2:
        raise ValueError(f"a swapped reference needs at least 2 objects, got {n}")
    return (int(i) + 1) % int(n)


_MV_LABELS = {
    "independent": "independent views (multi-view attention off)",
    "base_t2i": "per-view base text-to-image",
    "swapped": "the same pipeline with another object's reference",
    "swapped_image_only": "the same pipeline with another object's reference, both without a prompt",
}
_MV_METRICS = {
    "psnr": "PSNR to ground truth",
    "ssim": "SSIM to ground truth",
    "consistency_features": "cross-view feature consistency",
    "colour_agreement": "per-view colour agreement with the input object",
    "shape_agreement": "per-view shape agreement with the input object",
}
#: MV comparisons that make up the claim: baseline arm -> metrics where the MV-Adapter must be higher.
MV_CLAIMED: dict[str, tuple[str, ...]] = {
    "independent": ("psnr", "ssim", "consistency_features"),
    "base_t2i": ("psnr", "ssim", "consistency_features"),
    "swapped": ("psnr", "ssim", "colour_agreement", "shape_agreement"),
    "swapped_image_only": ("psnr", "ssim", "colour_agreement", "shape_agreement"),
}
#: The MV arm each baseline of :data:`MV_CLAIMED` is paired with (default ``"mv"``): with no prompt the reference
#: image is the only thing that names the object, so the image-only arms test the reference branch alone.
MV_ARM_FOR: dict[str, str] = {"swapped_image_only": "mv_image_only"}


def mv_targets(per: Mapping[str, Mapping[str, Sequence[float]]], *, seed: int = 0) -> tuple[list[dict], dict]:
    """MV-Adapter targets: the MV arm (``"mv"``, or :data:`MV_ARM_FOR`'s) against each baseline arm of
    :data:`MV_CLAIMED` that ``per`` holds (the swapped-reference arms exist only for adapters with a reference image),
    paired over objects.

    Args:
        per: arm -> metric -> ``(N,)`` per-object values.

    Returns:
        ``(rows, diffs)``; ``diffs[baseline][metric]`` is the :func:`paired_diff` of ``<its MV arm> - baseline``.
    """
    rows, diffs = [], {}
    for base, keys in MV_CLAIMED.items():
        if base not in per:
            continue
        diffs[base] = {}
        for key in keys:
            d = paired_diff(per[MV_ARM_FOR.get(base, "mv")][key], per[base][key], "higher", seed)
            diffs[base][key] = d
            what = {"swapped": "follows the input: ", "swapped_image_only": "follows the input with no prompt: "}
            what = what.get(base, "")
            rows.append(
                target_row(
                    f"MV: {what}{_MV_METRICS[key]} higher than {_MV_LABELS[base]}",
                    _iv(d["diff"], d["ci_low"], d["ci_high"], 3, signed=True),
                    d["verdict"],
                )
            )
    return rows, diffs


def hipa_targets(
    fd_vs_plain: Mapping[str, Any], accuracy_vs_plain: Mapping[str, Any], gap: Mapping[str, float]
) -> list[dict]:
    """HiPA targets from the FD difference HiPA - plain one step (``{"diff", "ci_low", "ci_high"}``), the paired
    accuracy difference (a :func:`paired_diff`) and the gap closed (:func:`benchmarks.metrics.gap_closed`)."""
    fd_verdict = direction_verdict(fd_vs_plain["ci_low"], fd_vs_plain["ci_high"], "lower")
    gap_verdict = ci_threshold_verdict(gap["ci_low"], gap["ci_high"], HIPA_GAP_TARGET)
    return [
        target_row(
            "HiPA: FD of one step with the LoRA lower than plain one step",
            _iv(fd_vs_plain["diff"], fd_vs_plain["ci_low"], fd_vs_plain["ci_high"], 1, signed=True),
            fd_verdict,
        ),
        target_row(
            "HiPA: accuracy not lower than plain one step",
            _iv(accuracy_vs_plain["diff"], accuracy_vs_plain["ci_low"], accuracy_vs_plain["ci_high"], 2, signed=True),
            not_worse(accuracy_vs_plain["verdict"]),
        ),
        target_row(
            f"HiPA: share of the one-step-to-teacher FD gap closed, CI above {HIPA_GAP_TARGET:.0%}",
            _pct_iv(gap["closed"], gap["ci_low"], gap["ci_high"]),
            gap_verdict,
        ),
    ]


def _pct_iv(value: float, lo: float, hi: float) -> str:
    if not math.isfinite(value):
        return "n/a (no gap between plain one step and the teacher)"

    def pct(x: float) -> str:
        return f"{x:.0%}" if math.isfinite(x) else ("-inf" if x < 0 else "+inf")

    return f"{pct(value)} [{pct(lo)}, {pct(hi)}]"


def res_adapter_targets(
    off_native: Sequence[tuple[str, str, str]],
    native: tuple[str, str, str] | None,
    fd_diffs: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict]:
    """ResAdapter targets: one row per off-native size ``(size, FD verdict, accuracy verdict)`` (FD lower outside the
    spread and accuracy not reversed) and one for the native size (neither FD nor accuracy reversed). ``fd_diffs``
    (size -> ``{"diff", "ci_low", "ci_high"}``) gives the figures."""
    fd_diffs = fd_diffs or {}

    def fig(key: str) -> str:
        d = fd_diffs.get(key)
        return "FD diff " + _iv(d["diff"], d["ci_low"], d["ci_high"], 1, signed=True) if d else "-"

    rows = []
    for key, fd_v, acc_v in off_native:
        verdict = fd_v if fd_v != HOLDS else (DOES_NOT_HOLD if acc_v == REVERSED else HOLDS)
        rows.append(target_row(f"ResAdapter at {key}: FD lower than the base, accuracy not lower", fig(key), verdict))
    if native is not None:
        key, fd_v, acc_v = native
        verdict = DOES_NOT_HOLD if REVERSED in (fd_v, acc_v) else not_worse(fd_v)
        rows.append(target_row(f"ResAdapter at the native {key}: not worse (FD, accuracy)", fig(key), verdict))
    return rows


#: Texturing metrics of the claim: key -> what it measures on the held-out re-renders (the textured mesh must score
#: higher with multi-view attention than without).
TEXTURE_CLAIMED: dict[str, str] = {
    "psnr": "PSNR to ground truth on the object",
    "ssim": "SSIM to ground truth",
    "colour_accuracy": "colour accuracy (classifier)",
}


def texture_targets(
    per: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    arm: str = "mv",
    baseline: str = "independent",
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Texturing targets: every metric of :data:`TEXTURE_CLAIMED` higher for the mesh textured from multi-view
    generation (``per[arm]``) than from independent per-view generation (``per[baseline]``), paired over objects.

    Args:
        per: arm -> metric -> ``(N,)`` per-object values (means over the held-out cameras).

    Returns:
        ``(rows, diffs)``; ``diffs[metric]`` is the :func:`paired_diff` of ``arm - baseline``.
    """
    rows, diffs = [], {}
    for key, label in TEXTURE_CLAIMED.items():
        d = diffs[key] = paired_diff(per[arm][key], per[baseline][key], "higher", seed)
        digits = 2 if key == "psnr" else 3
        rows.append(
            target_row(
                f"Texturing: held-out re-renders' {label} higher than from independent per-view generations "
                "(multi-view attention off)",
                _iv(d["diff"], d["ci_low"], d["ci_high"], digits, signed=True),
                d["verdict"],
            )
        )
    return rows, diffs
