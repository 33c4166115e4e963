"""How far off the estimated mapping may be, point by point: a bootstrap over blocks.

Matches are resampled by block (a tile, or a cell of the matched area), not one by
one, because neighbouring matches share their errors: resampling single matches would
make a mapping fitted on one good tile look far more certain than it is. Each replicate
refits the chosen model; the spread of the replicates at a point is the expected error
there. It is large where the mapping extrapolates and where few blocks support it, and
it measures the variance of the estimate, not a bias shared by all matches. For the
local model the field's own posterior spread is added to that of its global base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.models import MIN_SAMPLES, fit
from dmreg.estimate.blocks import MIN_BLOCKS, spatial_blocks
from dmreg.geometry.mapping import PointTransform

REPLICATES = 100


@dataclass(frozen=True)
class Uncertainty:
    """Expected error (px, radial RMS) at each point, and the predicted CE90 over them."""

    error_px: np.ndarray
    ce90_px: float
    replicates: int
    blocks: int

    def as_dict(self) -> dict:
        return {"method": "block bootstrap", "replicates": self.replicates, "blocks": self.blocks,
                "predicted_ce90_px": _round(self.ce90_px),
                "check_grid_error_px": [_round(float(e)) for e in self.error_px]}


def bootstrap_uncertainty(model: PointTransform, src: np.ndarray, dst: np.ndarray, inliers: np.ndarray,
                          tiles: np.ndarray, at: np.ndarray, replicates: int = REPLICATES,
                          seed: int = 0) -> Uncertainty:
    """Expected error of ``model`` at the points ``at`` (N x 2, in ``src`` coordinates).

    With fewer than three blocks there is nothing to resample: the error is unknown
    (infinite), which callers must treat as "not shown to be accurate".
    """
    kind = model.base.kind if model.kind == "local" else model.kind
    s, d = src[inliers], dst[inliers]
    blocks = spatial_blocks(s, tiles[inliers])
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    if n_blocks < MIN_BLOCKS:
        return Uncertainty(np.full(len(at), math.inf), math.inf, 0, n_blocks)
    base = model.base if model.kind == "local" else model
    cx, cy = base.apply(at[:, 0], at[:, 1])
    members = [np.flatnonzero(blocks == b) for b in range(n_blocks)]
    rng = np.random.default_rng(seed)
    deviations = []
    for _ in range(replicates):
        idx = np.concatenate([members[b] for b in rng.integers(0, n_blocks, n_blocks)])
        if len(np.unique(idx)) < MIN_SAMPLES[kind]:
            continue
        try:
            with np.errstate(all="ignore"):
                x, y = fit(kind, s[idx], d[idx]).apply(at[:, 0], at[:, 1])
        except (np.linalg.LinAlgError, ValueError):
            continue
        deviations.append(np.hypot(x - cx, y - cy))
    if len(deviations) < replicates // 2:  # most resamples degenerate: the fit hangs on a few blocks
        return Uncertainty(np.full(len(at), math.inf), math.inf, len(deviations), n_blocks)
    dev = np.nan_to_num(np.array(deviations), nan=math.inf)
    local_sd = model.std_at(at[:, 0], at[:, 1]) if model.kind == "local" else np.zeros(len(at))
    error = np.sqrt(np.mean(dev ** 2, axis=0) + local_sd ** 2)
    pooled = np.sqrt(dev ** 2 + local_sd ** 2)
    return Uncertainty(error, float(np.quantile(pooled, 0.9)), len(deviations), n_blocks)


def _round(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None
