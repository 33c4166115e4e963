"""RANSAC (MSAC scoring, local refits) for every model kind, and model selection.

One seeded implementation serves all kinds, so results are reproducible and
translation and polynomial2 get the same treatment as the matrix models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.models import KINDS, MIN_SAMPLES, N_PARAMS, Transform, fit, residuals


@dataclass(frozen=True)
class ModelFit:
    """A robust fit and its quality on its own inliers."""

    transform: Transform
    inliers: np.ndarray  # bool mask over the input correspondences
    rmse_px: float
    ce90_px: float

    @property
    def kind(self) -> str:
        return self.transform.kind

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())

    def summary(self) -> dict:
        return {"inliers": self.n_inliers, "rmse_px": round(self.rmse_px, 4), "ce90_px": round(self.ce90_px, 4)}


def ransac(kind: str, src: np.ndarray, dst: np.ndarray, threshold: float,
           weights: np.ndarray | None = None, max_iterations: int = 2000,
           confidence: float = 0.999, seed: int = 0) -> ModelFit | None:
    """Fit ``kind`` robustly; None when no sample gives a model with enough inliers.

    Samples are drawn with probability proportional to ``weights`` (match confidence),
    as in PROSAC-like guided sampling, which finds good models in fewer iterations.
    """
    n = len(src)
    k = MIN_SAMPLES[kind]
    if n < max(k + 1, 3):
        return None
    rng = np.random.default_rng(seed)
    p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
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
    return _refine(kind, best, src, dst, threshold)


def fit_all(src: np.ndarray, dst: np.ndarray, threshold: float, kinds: tuple[str, ...] = KINDS,
            weights: np.ndarray | None = None, seed: int = 0) -> dict[str, ModelFit]:
    """Robust fits of each kind that has enough points."""
    fits = {}
    for kind in kinds:
        result = ransac(kind, src, dst, threshold, weights=weights, seed=seed)
        if result is not None and result.n_inliers >= 2 * MIN_SAMPLES[kind] + 2:
            fits[kind] = result
    return fits


def select_model(fits: dict[str, ModelFit], src: np.ndarray, dst: np.ndarray,
                 min_gain_px: float = 0.05) -> tuple[str, dict[str, float]]:
    """Pick the simplest model the data support, by BIC on one common inlier set.

    All candidates are refitted by least squares on the largest inlier set, so their
    residuals are comparable; BIC = n ln(RSS/n) + k ln(n), with n residual components
    and k parameters. BIC rather than AIC because match errors are correlated within a
    tile, and for the same reason BIC alone still over-fits: with hundreds of matches a
    matcher's own slowly varying bias looks significant. So a simpler model is kept
    whenever its RMSE is within ``min_gain_px`` of the BIC choice's: extra parameters
    must buy a visible improvement.
    """
    common = max(fits.values(), key=lambda f: f.n_inliers).inliers
    s, d = src[common], dst[common]
    n = 2 * len(s)
    scores, rmse = {}, {}
    for kind in fits:
        try:
            r = residuals(fit(kind, s, d), s, d)
        except (np.linalg.LinAlgError, ValueError):
            continue
        rss = max(float((r * r).sum()), 1e-12)
        scores[kind] = n * math.log(rss / n) + N_PARAMS[kind] * math.log(n)
        rmse[kind] = math.sqrt(rss / len(s))
    best = min(scores, key=scores.get)
    simplest = min((k for k in scores if N_PARAMS[k] <= N_PARAMS[best] and rmse[k] <= rmse[best] + min_gain_px),
                   key=lambda k: N_PARAMS[k])
    return simplest, scores


def _refine(kind: str, model: Transform, src: np.ndarray, dst: np.ndarray, threshold: float) -> ModelFit:
    """Least-squares refits on the inliers until the inlier set stops changing.

    The refit is kept even when it loses a few marginal inliers: a model from a minimal
    sample is only as good as the few matches it was drawn from.
    """
    inliers = residuals(model, src, dst) < threshold
    for _ in range(5):
        if inliers.sum() < MIN_SAMPLES[kind]:
            break
        try:
            candidate = fit(kind, src[inliers], dst[inliers])
        except (np.linalg.LinAlgError, ValueError):
            break
        new_inliers = residuals(candidate, src, dst) < threshold
        if new_inliers.sum() < MIN_SAMPLES[kind]:
            break
        model = candidate
        if np.array_equal(new_inliers, inliers):
            break
        inliers = new_inliers
    r = residuals(model, src, dst)[inliers]
    rmse = float(np.sqrt(np.mean(r * r))) if len(r) else math.inf
    ce90 = float(np.percentile(r, 90)) if len(r) else math.inf
    return ModelFit(model, inliers, rmse, ce90)


def _iterations_needed(inlier_ratio: float, k: int, confidence: float) -> int:
    good = inlier_ratio ** k
    if good <= 0:
        return 10**9
    if good >= 1:
        return 1
    return int(math.ceil(math.log(1 - confidence) / math.log1p(-good)))
