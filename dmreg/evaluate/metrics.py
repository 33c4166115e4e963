"""Accuracy metrics over the errors of many pairs: pure functions over arrays.

An error is a pair's registration error in pixels (its mean distance to the truth over
the check points); a failed pair has an infinite error, so it counts in every
denominator and below no threshold.
"""

from __future__ import annotations

import numpy as np

SUCCESS_THRESHOLDS_PX = (1.0, 3.0, 5.0, 10.0)
"""The thresholds of the success rates dmreg reports (SR@1, SR@3, SR@5, SR@10)."""

AUC_MAX_PX = 10.0
"""The cumulative error curve is integrated from 0 up to this many pixels."""


def _errors(errors: np.ndarray | list[float]) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64).ravel()
    if np.isnan(e).any():
        raise ValueError("errors must not be NaN (a failure is +inf)")
    if (e < 0).any():
        raise ValueError("errors must be non-negative")
    return e


def success_rate(errors: np.ndarray | list[float], threshold_px: float) -> float:
    """Fraction of pairs whose error is at most ``threshold_px``; NaN when there are none."""
    e = _errors(errors)
    return float(np.mean(e <= threshold_px)) if len(e) else float("nan")


def success_rates(errors: np.ndarray | list[float],
                  thresholds_px: tuple[float, ...] = SUCCESS_THRESHOLDS_PX) -> dict[float, float]:
    """``{threshold: success_rate}`` for each threshold."""
    return {t: success_rate(errors, t) for t in thresholds_px}


def median_error(errors: np.ndarray | list[float]) -> float:
    """The median error (+inf when at least half the pairs failed; NaN when there are none)."""
    e = np.sort(_errors(errors))
    if not len(e):
        return float("nan")
    mid = len(e) // 2
    if len(e) % 2:
        return float(e[mid])
    lo, hi = e[mid - 1], e[mid]
    return float("inf") if np.isinf(hi) else float((lo + hi) / 2)  # inf - inf would make NaN


def auc(errors: np.ndarray | list[float], max_px: float = AUC_MAX_PX) -> float:
    """Area under the cumulative error curve (success rate against threshold) from 0 to
    ``max_px``, divided by ``max_px`` so that it lies in [0, 1]: the mean success rate
    over all thresholds in [0, max_px]. NaN when there are no errors.

    The curve SR(t) = fraction of errors <= t is a step function, and its integral is
    exact in closed form: each pair contributes max(0, max_px - error) to the area, so
    AUC = mean(max(0, 1 - error / max_px)). A failure (+inf) contributes 0.
    """
    if max_px <= 0:
        raise ValueError("max_px must be positive")
    e = _errors(errors)
    if not len(e):
        return float("nan")
    return float(np.mean(np.clip(1.0 - e / max_px, 0.0, 1.0)))
