"""RANSAC (MSAC scoring, local refits, a-contrario validation) for every model kind.

One seeded implementation serves all kinds, so results are reproducible and
translation and polynomial2 get the same treatment as the matrix models. Hypotheses
are scored by MSAC at the user's threshold; given the matcher's search radius, the
refits then use the a-contrario threshold and record how meaningful the consensus is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.acontrario import Consensus, best_consensus
from dmreg.estimate.models import KINDS, MIN_SAMPLES, Transform, fit, residuals
from dmreg.geometry.mapping import PointTransform


@dataclass(frozen=True)
class ModelFit:
    """A robust fit and its quality on its own inliers."""

    transform: PointTransform  # a Transform, or a LocalTransform for the local model
    inliers: np.ndarray  # bool mask over the input correspondences
    rmse_px: float
    ce90_px: float
    consensus: Consensus | None = None  # set when the search radius is known

    @property
    def meaningful(self) -> bool:
        """False only when the consensus could have arisen from random matches."""
        return self.consensus is None or self.consensus.meaningful

    @property
    def kind(self) -> str:
        return self.transform.kind

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())

    def summary(self) -> dict:
        out = {"inliers": self.n_inliers, "rmse_px": round(self.rmse_px, 4), "ce90_px": round(self.ce90_px, 4)}
        if self.consensus is not None:
            out["log10_nfa"] = round(self.consensus.log10_nfa, 2)
            out["threshold_px"] = round(self.consensus.threshold_px, 4)
        return out


def ransac(kind: str, src: np.ndarray, dst: np.ndarray, threshold: float,
           weights: np.ndarray | None = None, max_iterations: int = 2000,
           confidence: float = 0.999, seed: int = 0, search_radius: float | None = None,
           n_tests: int = 1) -> ModelFit | None:
    """Fit ``kind`` robustly; None when no sample gives a model with enough inliers.

    Samples are drawn with probability proportional to ``weights`` (match confidence),
    as in PROSAC-like guided sampling, which finds good models in fewer iterations.
    With ``search_radius`` (how far the matcher looked), ``threshold`` becomes the
    largest inlier threshold and the refits use the a-contrario one (see
    :mod:`dmreg.estimate.acontrario`); ``n_tests`` counts the model kinds tried.
    """
    n = len(src)
    k = MIN_SAMPLES[kind]
    if n < max(k + 1, 3):
        return None
    rng = np.random.default_rng(seed)
    p = None if weights is None else _sampling_probabilities(weights)
    best_cost, best = math.inf, None
    needed, it = max_iterations, 0
    while it < min(needed, max_iterations):
        it += 1
        sample = rng.choice(n, size=k, replace=False, p=p)
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # degenerate samples
                model = fit(kind, src[sample], dst[sample])
                r = residuals(model, src, dst)
        except (np.linalg.LinAlgError, ValueError):
            continue
        if not np.all(np.isfinite(r)):
            continue
        cost = float(np.minimum(r * r, threshold * threshold).sum())
        if cost < best_cost:
            best_cost, best = cost, model
            ratio = float((r < threshold).mean())
            needed = _iterations_needed(ratio, k, confidence)
    if best is None:
        return None
    return _refine(kind, best, src, dst, threshold, search_radius, n_tests)


def fit_all(src: np.ndarray, dst: np.ndarray, threshold: float, kinds: tuple[str, ...] = KINDS,
            weights: np.ndarray | None = None, seed: int = 0,
            search_radius: float | None = None) -> dict[str, ModelFit]:
    """Robust fits of each kind that has enough points (meaningful or not: callers decide)."""
    fits = {}
    for kind in kinds:
        result = ransac(kind, src, dst, threshold, weights=weights, seed=seed, search_radius=search_radius,
                        n_tests=len(kinds))
        if result is not None and result.n_inliers >= 2 * MIN_SAMPLES[kind] + 2:
            fits[kind] = result
    return fits


def _refine(kind: str, model: Transform, src: np.ndarray, dst: np.ndarray, threshold: float,
            search_radius: float | None = None, n_tests: int = 1) -> ModelFit:
    """Least-squares refits on the inliers until the inlier set stops changing.

    The refit is kept even when it loses a few marginal inliers: a model from a minimal
    sample is only as good as the few matches it was drawn from.
    """

    def inliers_of(m: Transform) -> tuple[np.ndarray, Consensus | None]:
        r = residuals(m, src, dst)
        if search_radius is None:
            return r < threshold, None
        found = best_consensus(r, kind, search_radius, threshold, n_tests)
        return (r <= found.threshold_px if found.inliers else r < threshold), found

    inliers, consensus = inliers_of(model)
    for _ in range(5):
        if inliers.sum() < MIN_SAMPLES[kind]:
            break
        try:
            candidate = fit(kind, src[inliers], dst[inliers])
        except (np.linalg.LinAlgError, ValueError):
            break
        new_inliers, new_consensus = inliers_of(candidate)
        if new_inliers.sum() < MIN_SAMPLES[kind]:
            break
        model, consensus = candidate, new_consensus
        if np.array_equal(new_inliers, inliers):
            break
        inliers = new_inliers
    return summarise_fit(model, src, dst, threshold, inliers, consensus)


def summarise_fit(model: PointTransform, src: np.ndarray, dst: np.ndarray, threshold: float,
                  inliers: np.ndarray | None = None, consensus: Consensus | None = None) -> ModelFit:
    """A ModelFit of ``model``: inliers (by ``threshold`` unless given), RMSE and CE90 on them."""
    r_all = residuals(model, src, dst)
    if inliers is None:
        inliers = r_all < threshold
    r = r_all[inliers]
    rmse = float(np.sqrt(np.mean(r * r))) if len(r) else math.inf
    ce90 = float(np.percentile(r, 90)) if len(r) else math.inf
    return ModelFit(model, inliers, rmse, ce90, consensus)


def _sampling_probabilities(weights: np.ndarray) -> np.ndarray:
    """Confidences as sampling probabilities. A matcher may return zero, negative or NaN
    confidences: those become a small floor, so every match can still be drawn and a
    minimal sample always exists."""
    w = np.nan_to_num(np.asarray(weights, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    w = np.clip(w, 0.0, None)
    w = w + 1e-3 * (w.max() if w.max() > 0 else 1.0)
    return w / w.sum()


def _iterations_needed(inlier_ratio: float, k: int, confidence: float) -> int:
    good = inlier_ratio ** k
    if good <= 0:
        return 10**9
    if good >= 1:
        return 1
    return int(math.ceil(math.log(1 - confidence) / math.log1p(-good)))
