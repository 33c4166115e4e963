"""How far off the estimated mapping may be, point by point: a bootstrap over blocks.

Matches are resampled by block (a tile, or a cell of the matched area), not one by
one, because neighbouring matches share their errors: resampling single matches would
make a mapping fitted on one good tile look far more certain than it is. Each replicate
refits the chosen model; the spread of the replicates at a point is the expected error
there. It is large where the mapping extrapolates and where few blocks support it, and
it measures the variance of the estimate, not a bias shared by all matches. The local
model is refitted whole (base and field, hyperparameters kept), and the field's
posterior spread is added: far from every match the local distortion is simply unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.models import MIN_SAMPLES, fit
from dmreg.estimate.blocks import MIN_BLOCKS, spatial_blocks
from dmreg.estimate.local import refitted_prediction
from dmreg.geometry.mapping import PointTransform

REPLICATES = 100
LOCAL_REPLICATES = 30  # each refits a Gaussian process (fixed hyperparameters): ~20 ms


@dataclass(frozen=True)
class Uncertainty:
    """Expected error (px, radial RMS) at each point, and the predicted CE90 over them."""

    error_px: np.ndarray
    ce90_px: float
    replicates: int
    blocks: int

    def as_dict(self) -> dict:
        return {"method": "block bootstrap", "replicates": self.replicates, "blocks": self.blocks,
                "predicted_ce90_px": finite_or_none(self.ce90_px),
                "check_grid_error_px": [finite_or_none(e) for e in self.error_px]}


def bootstrap_uncertainty(model: PointTransform, src: np.ndarray, dst: np.ndarray, inliers: np.ndarray,
                          tiles: np.ndarray, at: np.ndarray, replicates: int = REPLICATES,
                          seed: int = 0) -> Uncertainty:
    """Expected error of ``model`` at the points ``at`` (N x 2, in ``src`` coordinates):
    the spread of the refitted replicates around their mean.

    With fewer than three blocks there is nothing to resample: the error is unknown
    (infinite), which callers must treat as "not shown to be accurate".
    """
    local = model.kind == "local"
    kind = model.base.kind if local else model.kind
    s, d = src[inliers], dst[inliers]
    blocks = spatial_blocks(s, tiles[inliers]) if len(s) else np.zeros(0, int)
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    if n_blocks < MIN_BLOCKS:
        return Uncertainty(np.full(len(at), math.inf), math.inf, 0, n_blocks)
    members = [np.flatnonzero(blocks == b) for b in range(n_blocks)]
    sizes = np.array([len(m) for m in members])
    rng = np.random.default_rng(seed)
    predictions = []
    for _ in range(LOCAL_REPLICATES if local else replicates):
        drawn = rng.integers(0, n_blocks, n_blocks)
        if sizes[np.unique(drawn)].sum() < MIN_SAMPLES[kind]:
            continue
        idx = np.concatenate([members[b] for b in drawn])
        try:
            with np.errstate(all="ignore"):
                xy = (refitted_prediction(model, s[idx], d[idx], at) if local
                      else fit(kind, s[idx], d[idx]).apply(at[:, 0], at[:, 1]))
        except (np.linalg.LinAlgError, ValueError):
            continue
        predictions.append(np.column_stack(xy))
    wanted = LOCAL_REPLICATES if local else replicates
    if len(predictions) < wanted // 2:  # most resamples degenerate: the fit hangs on a few blocks
        return Uncertainty(np.full(len(at), math.inf), math.inf, len(predictions), n_blocks)
    p = np.array(predictions)
    dev = np.hypot(*np.moveaxis(p - p.mean(axis=0), -1, 0))
    dev = np.where(np.isfinite(dev), dev, math.inf)
    local_sd = model.std_at(at[:, 0], at[:, 1]) if local else np.zeros(len(at))
    error = np.sqrt(np.mean(dev ** 2, axis=0) + local_sd ** 2)
    pooled = np.sqrt(dev ** 2 + local_sd ** 2)
    return Uncertainty(error, float(np.quantile(pooled, 0.9)), len(predictions), n_blocks)


def finite_or_none(value: float | None, digits: int = 4) -> float | None:
    """A number for JSON reports: rounded, or None where it is unknown (JSON has no inf/NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)
