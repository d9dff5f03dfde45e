"""Verdicts of the quality report (``python -m benchmarks.quality``): small pure functions from 95% CIs to words.

Every claim is decided from a confidence interval alone, never from a point estimate, and every claim can fail:

* :func:`direction_verdict` - a paired difference ``candidate - baseline`` (CI over seeds): ``"holds"`` when the whole
  CI is on the wanted side of 0, ``"reversed"`` when it is wholly on the other side, ``"within spread"`` otherwise.
* :func:`ci_threshold_verdict` / :func:`threshold_verdict` - a quantity against a target (e.g. colour accuracy
  ``>= 0.90``): ``"holds"`` when the CI's low end is at or above the target, ``"does not hold"`` when its high end is
  below it, ``"within spread"`` when the CI straddles it. Shares of 0/1 outcomes get a Wilson interval, other values a
  bootstrap of the mean.
* :func:`band_verdict` / :func:`ratio_band_verdict` - a ratio (e.g. a clip's motion over the ground truth's) inside a
  band ``[low, high]`` (one end may be infinite): ``"holds"`` when the whole CI is inside, ``"does not hold"`` when it
  is wholly outside, ``"within spread"`` when it crosses a bound.

Any NaN bound gives ``"undetermined"``. :func:`target_row` packs one target of the report's summary table and
:func:`all_hold` says whether a section's targets all hold (an empty list never does: no evidence, no claim).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import metrics

__all__ = [
    "HOLDS",
    "direction_verdict",
    "ci_threshold_verdict",
    "mean_ci",
    "threshold_verdict",
    "band_verdict",
    "ratio_band_verdict",
    "target_row",
    "all_hold",
]

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
REVERSED = "reversed"
WITHIN = "within spread"
UNDETERMINED = "undetermined"


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float, np.floating)) and not math.isnan(v) for v in values)


def direction_verdict(ci_low: float, ci_high: float, want: str) -> str:
    """Verdict on the CI of a paired difference ``candidate - baseline``; ``want`` is ``"higher"`` or ``"lower"``."""
    if want not in ("higher", "lower"):
        raise ValueError(f"`want` must be 'higher' or 'lower', got {want!r}")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return UNDETERMINED
    if (want == "lower" and ci_high < 0) or (want == "higher" and ci_low > 0):
        return HOLDS
    if (want == "lower" and ci_low > 0) or (want == "higher" and ci_high < 0):
        return REVERSED
    return WITHIN


def ci_threshold_verdict(ci_low: float, ci_high: float, target: float) -> str:
    """``"holds"`` when ``ci_low >= target``, ``"does not hold"`` when ``ci_high < target``, else ``"within
    spread"``."""
    if not _finite(ci_low, ci_high, target):
        return UNDETERMINED
    if ci_low >= target:
        return HOLDS
    if ci_high < target:
        return DOES_NOT_HOLD
    return WITHIN


def mean_ci(values: Sequence[float] | np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Mean of per-seed ``values`` ``(N,)`` with its 95% CI: the Wilson score interval when every value is 0 or 1 (a
    share of successes), else a percentile bootstrap of the mean. Non-finite values are dropped.

    Returns:
        ``{"mean", "ci_low", "ci_high", "n", "interval"}`` (``interval`` is ``"wilson"`` or ``"bootstrap"``).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "interval": "none"}
    if np.all((v == 0) | (v == 1)):
        lo, hi = metrics.wilson_ci(float(v.sum()), len(v))
        kind = "wilson"
    else:
        lo, hi = metrics.bootstrap_ci(v, seed=seed)
        kind = "bootstrap"
    return {"mean": float(v.mean()), "ci_low": lo, "ci_high": hi, "n": int(len(v)), "interval": kind}


def threshold_verdict(values: Sequence[float] | np.ndarray, target: float, *, seed: int = 0) -> dict[str, Any]:
    """Is the mean of per-seed ``values`` ``(N,)`` at or above ``target``? :func:`mean_ci` then
    :func:`ci_threshold_verdict`.

    Returns:
        :func:`mean_ci`'s dict plus ``"target"`` and ``"verdict"``.
    """
    out: dict[str, Any] = mean_ci(values, seed=seed)
    out["target"] = float(target)
    out["verdict"] = ci_threshold_verdict(out["ci_low"], out["ci_high"], target)
    return out


def band_verdict(ci_low: float, ci_high: float, low: float, high: float) -> str:
    """``"holds"`` when ``low <= ci_low`` and ``ci_high <= high``, ``"does not hold"`` when the CI lies wholly below
    ``low`` or wholly above ``high``, else ``"within spread"``. ``low`` / ``high`` may be ``-inf`` / ``inf``."""
    if low > high:
        raise ValueError(f"band bounds must satisfy low <= high, got [{low}, {high}]")
    if not _finite(ci_low, ci_high, low, high):
        return UNDETERMINED
    if low <= ci_low and ci_high <= high:
        return HOLDS
    if ci_high < low or ci_low > high:
        return DOES_NOT_HOLD
    return WITHIN


def ratio_band_verdict(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    low: float,
    high: float,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Is ``mean(a) / mean(b)`` (paired per-seed values ``(N,)``, e.g. generated vs ground-truth clips of the same
    scenes) inside ``[low, high]``? :func:`metrics.paired_ratio_bootstrap` then :func:`band_verdict`.

    Returns:
        ``{"ratio", "ci_low", "ci_high", "n", "mean_a", "mean_b", "band", "verdict"}``.
    """
    out: dict[str, Any] = metrics.paired_ratio_bootstrap(a, b, seed=seed)
    out["band"] = [float(low), float(high)]
    out["verdict"] = band_verdict(out["ci_low"], out["ci_high"], low, high)
    return out


def target_row(target: str, figure: str, verdict: str) -> dict[str, str]:
    """One row of the report's summary table: the target as the issue states it, the measured figure with its CI,
    and the verdict."""
    return {"target": target, "figure": figure, "verdict": verdict}


def all_hold(targets: Sequence[dict[str, str]]) -> bool:
    """True when there is at least one target and every target's verdict is ``"holds"``."""
    return bool(targets) and all(t["verdict"] == HOLDS for t in targets)
