"""A-contrario validation of a consensus: could these inliers have arisen by chance?

A consensus of k inliers among n matches is judged, as in ORSA / AC-RANSAC (Moisan and
Stival 2004; Moisan, Moulon and Monasse 2012), by its number of false alarms: how many
consensuses at least as good one would expect if the matches were random, i.e. if each
match's reference point fell anywhere in the matcher's search disk. A consensus is
meaningful when that number is below one. The inlier threshold is chosen by the same
criterion (the k that minimises it), so noisy matches get a wider threshold and clean
ones a tighter one, up to the user's maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.models import MIN_SAMPLES

MIN_RESIDUAL_PX = 0.01
"""Residuals are floored here: an exact synthetic fit would otherwise have probability zero."""


@dataclass(frozen=True)
class Consensus:
    """The most meaningful inlier set of one model: its size, threshold and log10 NFA."""

    log10_nfa: float
    inliers: int
    threshold_px: float

    @property
    def meaningful(self) -> bool:
        return self.log10_nfa < 0.0


def best_consensus(residuals: np.ndarray, kind: str, search_radius_px: float, max_threshold_px: float,
                   n_tests: int = 1) -> Consensus:
    """The inlier count and threshold (at most ``max_threshold_px``) with the lowest NFA.

    ``search_radius_px`` bounds how far from its prediction a random match can fall (the
    matcher's search radius), so a random match lands within r of the model's prediction
    with probability (r / radius)^2. ``n_tests`` counts the model kinds tried.
    """
    r = np.sort(np.asarray(residuals, np.float64))
    r = r[np.isfinite(r)]
    n, s = len(r), MIN_SAMPLES[kind]
    if n <= s:
        return Consensus(math.inf, 0, 0.0)
    k = np.arange(s + 1, n + 1)
    e = np.maximum(r[s:], MIN_RESIDUAL_PX)
    log_alpha = np.minimum(2.0 * np.log10(e / search_radius_px), 0.0)
    log_fact = _log10_factorials(n)
    log_nfa = (math.log10(n_tests * (n - s)) + (log_fact[n] - log_fact[k] - log_fact[n - k])
               + (log_fact[k] - log_fact[s] - log_fact[k - s]) + (k - s) * log_alpha)
    log_nfa[e > max_threshold_px] = math.inf
    best = int(np.argmin(log_nfa))
    if not math.isfinite(log_nfa[best]):
        return Consensus(math.inf, 0, 0.0)
    return Consensus(float(log_nfa[best]), int(k[best]), float(e[best]))


def _log10_factorials(n: int) -> np.ndarray:
    """log10(i!) for i = 0..n, for the binomial coefficients of the NFA."""
    return np.concatenate([[0.0], np.cumsum(np.log10(np.arange(1, n + 1)))])
