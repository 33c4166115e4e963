"""How far off the estimated mapping may be, point by point: a bootstrap over blocks.

Matches are resampled by block (a tile, or a cell of the matched area), not one by
one, because neighbouring matches share their errors: resampling single matches would
make a mapping fitted on one good tile look far more certain than it is. Each replicate
refits the chosen model; the spread of the replicates at a point is the expected error
there. It is large where the mapping extrapolates and where few blocks support it, and
it measures the variance of the estimate, not a bias shared by all matches. The local
model is refitted whole (base and field, hyperparameters kept), and the field's
posterior spread is added: far from every match the local distortion is simply unknown.

The bootstrap cannot see a model too simple for the data: a translation fitted to a
scaled pair is biased, and its replicates agree on the bias. So where a more general
model that also explains the matches (:data:`GENERALISATIONS`) puts a point elsewhere,
by more than its own estimation error explains, that disagreement is added too
(:func:`model_spread`). Nor can it see matches that lean toward the model they were read
through: a learned matcher's sub-pixel refinement recovers only part of an offset, and
wrong matches drift with the reading. So when a refinement pass moved the answer, that
move is added as well (``unsettled_px``): an answer that moved by a pixel when measured
again is not known to better than a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.models import MIN_SAMPLES, fit
from dmreg.estimate.blocks import MIN_BLOCKS, spatial_blocks
from dmreg.estimate.local import refitted_prediction
from dmreg.geometry.mapping import PointTransform

GENERALISATIONS = {"translation": ("similarity", "affine"), "similarity": ("affine",)}
"""The well-conditioned models that contain each kind. Homography and the quadratic
polynomial contain them too, but extrapolate wildly from matches that do not span the
raster: their disagreement would measure that, not the chosen model's error."""

SIGNIFICANT = 1.0
"""Multiples of a general model's own expected error its disagreement must exceed to
count (:func:`model_spread`). On the validation pairs, 0 inflated an accurate 288 px
pixel-space pair's CE90 to 2 px; 2 left a DistillMatch answer 4.6 px off at 1.6 px."""

REPLICATES = 100
LOCAL_REPLICATES = 30  # each refits a Gaussian process (fixed hyperparameters): ~20 ms


@dataclass(frozen=True)
class Uncertainty:
    """Expected error (px, radial RMS) at each point, and the predicted CE90 over them."""

    error_px: np.ndarray
    ce90_px: float
    replicates: int
    blocks: int
    model_spread_px: float = 0.0  # the largest disagreement of a more general model added in
    unsettled_px: float = 0.0  # the largest move of the last refinement pass added in

    def as_dict(self) -> dict:
        return {"method": "block bootstrap", "replicates": self.replicates, "blocks": self.blocks,
                "model_spread_px": finite_or_none(self.model_spread_px),
                "unsettled_px": finite_or_none(self.unsettled_px),
                "predicted_ce90_px": finite_or_none(self.ce90_px),
                "check_grid_error_px": [finite_or_none(e) for e in self.error_px]}


def model_spread(model: PointTransform, alternatives: Iterable[tuple[PointTransform, np.ndarray]],
                 at: np.ndarray) -> np.ndarray:
    """Per point of ``at``, how much further than ``SIGNIFICANT`` times its own expected
    error (``error_px`` per point, from its bootstrap) each alternative puts the point
    from where ``model`` does; the largest over them (zero without alternatives).

    A more general model fitted to the same noisy matches disagrees with a correct
    simpler one by its own estimation error (a few matches, four more parameters: pixels
    at the corners); only the disagreement beyond that shows the simpler one biased."""
    x, y = model.apply(at[:, 0], at[:, 1])
    spread = np.zeros(len(at))
    for other, error_px in alternatives:
        ox, oy = other.apply(at[:, 0], at[:, 1])
        beyond = np.hypot(ox - x, oy - y) - SIGNIFICANT * error_px
        spread = np.maximum(spread, np.where(np.isfinite(beyond), beyond, 0.0))
    return spread


def bootstrap_uncertainty(model: PointTransform, src: np.ndarray, dst: np.ndarray, inliers: np.ndarray,
                          tiles: np.ndarray, at: np.ndarray, replicates: int = REPLICATES,
                          seed: int = 0, spread_px: np.ndarray | None = None,
                          unsettled_px: np.ndarray | None = None, area_span: np.ndarray | None = None) -> Uncertainty:
    """Expected error of ``model`` at the points ``at`` (N x 2, in ``src`` coordinates):
    the spread of the refitted replicates around their mean, and ``spread_px``
    (:func:`model_spread`) and ``unsettled_px`` (the last refinement pass's move) per
    point in quadrature. ``area_span`` (x, y), the extent of the area the answer serves,
    keeps blocks no smaller than a quarter of it (:func:`spatial_blocks`), so inliers
    that crowd into a small part of that area count as the one piece of evidence they are.

    With fewer than three blocks there is nothing to resample: the error is unknown
    (infinite), which callers must treat as "not shown to be accurate".
    """
    local = model.kind == "local"
    kind = model.base.kind if local else model.kind
    spread = np.zeros(len(at)) if spread_px is None else spread_px
    unsettled = np.zeros(len(at)) if unsettled_px is None else unsettled_px
    largest = (float(spread.max()) if len(spread) else 0.0, float(unsettled.max()) if len(unsettled) else 0.0)
    s, d = src[inliers], dst[inliers]
    blocks = spatial_blocks(s, tiles[inliers], area_span) if len(s) else np.zeros(0, int)
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    if n_blocks < MIN_BLOCKS:
        return Uncertainty(np.full(len(at), math.inf), math.inf, 0, n_blocks, *largest)
    members = [np.flatnonzero(blocks == b) for b in range(n_blocks)]
    sizes = np.array([len(m) for m in members])
    wanted = LOCAL_REPLICATES if local else replicates
    draws = np.random.default_rng(seed).integers(0, n_blocks, (wanted, n_blocks))
    draws = [drawn for drawn in draws if sizes[np.unique(drawn)].sum() >= MIN_SAMPLES[kind]]
    predictions = (_linear_refits(kind, s, d, blocks, n_blocks, draws, at) if kind in LINEAR_KINDS and not local
                   else None)
    if predictions is None:
        predictions = _refits(model, kind, s, d, members, draws, at)
    if len(predictions) < wanted // 2:  # most resamples degenerate: the fit hangs on a few blocks
        return Uncertainty(np.full(len(at), math.inf), math.inf, len(predictions), n_blocks, *largest)
    p = np.array(predictions)
    dev = np.hypot(*np.moveaxis(p - p.mean(axis=0), -1, 0))
    dev = np.where(np.isfinite(dev), dev, math.inf)
    local_sd = model.std_at(at[:, 0], at[:, 1]) if local else np.zeros(len(at))
    added = local_sd ** 2 + spread ** 2 + unsettled ** 2
    error = np.sqrt(np.mean(dev ** 2, axis=0) + added)
    pooled = np.sqrt(dev ** 2 + added)
    return Uncertainty(error, float(np.quantile(pooled, 0.9)), len(predictions), n_blocks, *largest)


def _refits(model: PointTransform, kind: str, s: np.ndarray, d: np.ndarray, members: list[np.ndarray],
            draws: list[np.ndarray], at: np.ndarray) -> list[np.ndarray]:
    """Each replicate's prediction at ``at``, refitting the model on the drawn blocks."""
    predictions = []
    for drawn in draws:
        idx = np.concatenate([members[b] for b in drawn])
        try:
            with np.errstate(all="ignore"):
                xy = (refitted_prediction(model, s[idx], d[idx], at) if model.kind == "local"
                      else fit(kind, s[idx], d[idx]).apply(at[:, 0], at[:, 1]))
        except (np.linalg.LinAlgError, ValueError):
            continue
        predictions.append(np.column_stack(xy))
    return predictions


LINEAR_KINDS = ("translation", "similarity", "affine", "polynomial2")
"""Models whose least-squares fit is linear in their parameters: a replicate's fit is
then the solution of the drawn blocks' summed normal equations, so each block's are
formed once and a replicate costs one small solve instead of a refit over every match.
(Least squares is unchanged by the normalisation ``fit`` applies, so the answers agree.)"""


def _linear_refits(kind: str, s: np.ndarray, d: np.ndarray, blocks: np.ndarray, n_blocks: int,
                   draws: list[np.ndarray], at: np.ndarray) -> list[np.ndarray] | None:
    """The replicates' predictions at ``at`` through per-block normal equations, or None
    when a replicate's equations are singular (the caller then refits one by one)."""
    if not draws:
        return []
    centre = s.mean(axis=0)
    spread = float(np.abs(s - centre).max()) or 1.0
    jac = _jacobian(kind, (s - centre) / spread)                       # N x 2 x k
    target = d - s if kind == "translation" else d
    gram = np.zeros((n_blocks, jac.shape[2], jac.shape[2]))
    rhs = np.zeros((n_blocks, jac.shape[2]))
    np.add.at(gram, blocks, np.einsum("nik,nil->nkl", jac, jac))
    np.add.at(rhs, blocks, np.einsum("nik,ni->nk", jac, target))
    counts = np.stack([np.bincount(drawn, minlength=n_blocks) for drawn in draws]).astype(float)
    try:
        params = np.linalg.solve(np.einsum("rb,bkl->rkl", counts, gram),
                                 np.einsum("rb,bk->rk", counts, rhs)[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return None
    predicted = np.einsum("mik,rk->rmi", _jacobian(kind, (at - centre) / spread), params)
    return list(predicted + at if kind == "translation" else predicted)


def _jacobian(kind: str, p: np.ndarray) -> np.ndarray:
    """Per point, the 2 x k matrix taking the model's parameters to its prediction
    (translation: to the offset)."""
    x, y = p[:, 0], p[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    if kind == "translation":
        rows = [[one, zero], [zero, one]]
    elif kind == "similarity":
        rows = [[x, -y, one, zero], [y, x, zero, one]]
    elif kind == "affine":
        rows = [[x, y, one, zero, zero, zero], [zero, zero, zero, x, y, one]]
    else:  # polynomial2
        terms = [one, x, y, x * x, x * y, y * y]
        rows = [terms + [zero] * 6, [zero] * 6 + terms]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=1)


def finite_or_none(value: float | None, digits: int = 4) -> float | None:
    """A number for JSON reports: rounded, or None where it is unknown (JSON has no inf/NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)
