"""Model choice by prediction error: spatially blocked cross-validation.

Each candidate is fitted without one block of matches (a tile, or a cell of the matched
area when there are few tiles) and judged on how well it predicts that block. Blocks,
not single matches, are held out because the errors of neighbouring matches are
correlated: a model that bends to one tile's bias predicts that tile well and the rest
badly. Candidates are tried from simple to complex, and a more complex one replaces
the current choice only when its held-out error is lower by more than the standard
error of the difference, so the noise level of the matches decides how much
complexity they can support.

Held-out matches only test the model where there are matches. Where there are none
(the corners of a scene matched in its centre) a complex model extrapolates, so its
gain must also pay for the variance it adds there: the block-bootstrap variance,
averaged over points spread across the output area.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from dmreg.estimate.blocks import MIN_BLOCKS, spatial_blocks
from dmreg.estimate.local import fit_local
from dmreg.estimate.models import KINDS, fit
from dmreg.estimate.robust import ModelFit
from dmreg.estimate.uncertainty import bootstrap_uncertainty, finite_or_none
from dmreg.geometry.mapping import PointTransform
from dmreg.runtime import thread_count

Fitter = Callable[[np.ndarray, np.ndarray, np.ndarray], PointTransform]
"""fitter(src, dst, train_mask) -> a model fitted on the masked matches."""

VARIANCE_REPLICATES = 40  # the choice needs the variance to about 20 %, not the report's precision
MIN_GAIN_PX2 = 1e-4  # gains below 0.01 px RMS are numerical noise, not signal
FOLDS = 5


@dataclass(frozen=True)
class CVScore:
    """Held-out error of one candidate: RMS over all held-out matches and its standard error."""

    rmse_px: float
    se_px: float

    def as_dict(self) -> dict:
        return {"cv_rmse_px": finite_or_none(self.rmse_px), "cv_se_px": finite_or_none(self.se_px)}


def cross_validate(fitters: dict[str, Fitter], src: np.ndarray, dst: np.ndarray, blocks: np.ndarray,
                   truncate_px: float, folds: int = FOLDS, seed: int = 0) -> dict[str, np.ndarray]:
    """Per candidate, the mean held-out loss of each block (inf where the fit failed).

    The loss is the squared error truncated at ``truncate_px``: a false match among the
    held-out ones then costs every candidate the same instead of deciding the choice.
    """
    losses, jobs = _fold_jobs(fitters, src, dst, blocks, truncate_px, folds, seed)
    with ThreadPoolExecutor(thread_count(), thread_name_prefix="dmreg-cv") as pool:  # numpy releases the GIL
        list(pool.map(lambda job: job(), jobs))
    return losses


def _fold_jobs(fitters: dict[str, Fitter], src: np.ndarray, dst: np.ndarray, blocks: np.ndarray,
               truncate_px: float, folds: int, seed: int) -> tuple[dict[str, np.ndarray], list[Callable[[], None]]]:
    """The losses :func:`cross_validate` returns, and one job per (fold, candidate) that
    fills its cells of them: whoever runs the jobs decides when and where."""
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    order = np.random.default_rng(seed).permutation(n_blocks)
    fold_of_block = np.empty(n_blocks, int)
    fold_of_block[order] = np.arange(n_blocks) % min(folds, max(n_blocks, 1))
    fold = fold_of_block[blocks]
    losses = {name: np.full(n_blocks, math.inf) for name in fitters}

    def score(f: int, name: str) -> None:
        held = fold == f
        try:
            with np.errstate(all="ignore"):
                model = fitters[name](src, dst, ~held)
                x, y = model.apply(src[held, 0], src[held, 1])
        except (np.linalg.LinAlgError, ValueError):
            return
        err2 = np.minimum((x - dst[held, 0]) ** 2 + (y - dst[held, 1]) ** 2, truncate_px ** 2)
        err2 = np.where(np.isfinite(err2), err2, truncate_px ** 2)
        per_block = np.bincount(blocks[held], weights=err2, minlength=n_blocks)
        counts = np.bincount(blocks[held], minlength=n_blocks)
        in_fold = np.unique(blocks[held])
        losses[name][in_fold] = per_block[in_fold] / counts[in_fold]  # each (fold, name) writes its own cells

    return losses, [partial(score, f, name) for f in np.unique(fold).tolist() for name in fitters]


def choose(losses: dict[str, np.ndarray], order: Sequence[str],
           variance: dict[str, float] | None = None) -> tuple[str, dict[str, CVScore]]:
    """The simplest candidate (in ``order``) that no more complex one beats by more than
    one standard error of the paired per-block difference, once the more complex one's
    extra ``variance`` (px², over the output area) is paid; and every candidate's score.
    A candidate that could not be fitted without some block is not scored; when none
    could, the simplest stands: nothing showed that more is needed."""
    scores = _scores(losses)
    variance = variance or {}
    ranked = [name for name in order if name in scores] or [next(n for n in order if n in losses)]
    current = ranked[0]
    for name in ranked[1:]:
        gain = losses[current] - losses[name]
        extra = variance.get(name, 0.0) - variance.get(current, 0.0)
        if gain.mean() - extra > max(_standard_error(gain), MIN_GAIN_PX2):
            current = name
    return current, scores


def _scores(losses: dict[str, np.ndarray]) -> dict[str, CVScore]:
    return {name: _score(loss) for name, loss in losses.items() if np.all(np.isfinite(loss))}


def _score(block_loss: np.ndarray) -> CVScore:
    rmse = math.sqrt(float(block_loss.mean()))
    se_mse = _standard_error(block_loss)
    return CVScore(rmse, se_mse / (2 * rmse) if rmse > 0 else 0.0)


def _standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.inf


@dataclass(frozen=True)
class Choice:
    """The chosen model kind, every candidate's held-out error, and the local model when
    one was fitted (``kind == "local"``, or asked for)."""

    kind: str
    scores: dict[str, CVScore]
    local: PointTransform | None = None
    variance: dict[str, float] = field(default_factory=dict)  # px², bootstrap, over the output area


def choose_model(fits: dict[str, ModelFit], src: np.ndarray, dst: np.ndarray, tiles: np.ndarray,
                 truncate_px: float, at: np.ndarray, order: Sequence[str] = KINDS, local: str = "candidate",
                 seed: int = 0) -> Choice:
    """Cross-validate the global fits, then a local field on top of the best of them.

    The global models are judged on the matches at least one of them explains (their
    inliers' union): matches no model explains, most of them on a hard cross-modal pair,
    would only add the same truncated loss to every candidate and drown the
    difference. The local field is then judged against the best global model on every
    match, since a local distortion pushes true matches off every global model. The
    truncated loss keeps false matches from deciding. ``at`` (N x 2, in ``src``
    coordinates) spreads over the output area, for the variance term. ``local``: "no"
    (globals only), "candidate" (local competes), "always" (--model local). The scores
    of the local model and of the best global one are those of the second comparison.
    """
    explained = np.any([f.inliers for f in fits.values()], axis=0)
    blocks = spatial_blocks(src[explained], tiles[explained])
    if int(blocks.max()) + 1 < MIN_BLOCKS:  # too few blocks to hold any out: the simplest fit
        simplest = next(k for k in order if k in fits)
        model = _local_fit(fits[simplest], src, dst, tiles, seed) if local == "always" else None
        return Choice("local" if model else simplest, {}, model)
    variance = {kind: _variance(f.transform, f.inliers, src, dst, tiles, at, seed) for kind, f in fits.items()}
    fitters = {kind: _global_fitter(kind, f.inliers[explained]) for kind, f in fits.items()}
    losses = cross_validate(fitters, src[explained], dst[explained], blocks, truncate_px, seed=seed)
    best, scores = choose(losses, order, variance)
    if local == "no":
        return Choice(best, scores, variance=variance)
    base_inliers = fits[best].inliers

    def local_fitter(a: np.ndarray, b: np.ndarray, train: np.ndarray) -> PointTransform:
        base = fit(best, a[train & base_inliers], b[train & base_inliers])
        return fit_local(base, a[train], b[train], tiles[train], seed=seed, spread=False)

    pair, jobs = _fold_jobs({best: _global_fitter(best, base_inliers), "local": local_fitter}, src, dst,
                            spatial_blocks(src, tiles), truncate_px, FOLDS, seed)
    # the field's own fit and its folds share the threads; when the field turns out to be
    # zero, folds not yet begun are dropped and one already running is not waited for
    pool = ThreadPoolExecutor(thread_count(), thread_name_prefix="dmreg-cv")
    try:
        whole = pool.submit(_local_fit, fits[best], src, dst, tiles, seed)
        folds = [pool.submit(job) for job in jobs]
        model = whole.result()
        if not (model.dx.any() or model.dy.any()):  # no evidence of a local field: it IS the global model
            return Choice("local" if local == "always" else best, scores, model if local == "always" else None,
                          variance)
        for job in folds:
            job.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    variance["local"] = variance[best] + float(np.mean(model.std_at(at[:, 0], at[:, 1]) ** 2))
    kind = "local" if local == "always" else choose(pair, (best, "local"), variance)[0]
    return Choice(kind, {**scores, **_scores(pair)}, model if kind == "local" else None, variance)


def _variance(model: PointTransform, inliers: np.ndarray, src: np.ndarray, dst: np.ndarray, tiles: np.ndarray,
              at: np.ndarray, seed: int) -> float:
    error = bootstrap_uncertainty(model, src, dst, inliers, tiles, at, replicates=VARIANCE_REPLICATES,
                                  seed=seed).error_px
    return float(np.mean(error ** 2))


def _global_fitter(kind: str, inliers: np.ndarray) -> Fitter:
    def fitter(src: np.ndarray, dst: np.ndarray, train: np.ndarray) -> PointTransform:
        return fit(kind, src[train & inliers], dst[train & inliers])
    return fitter


def _local_fit(base: ModelFit, src: np.ndarray, dst: np.ndarray, tiles: np.ndarray, seed: int) -> PointTransform:
    return fit_local(base.transform, src, dst, tiles, seed=seed)
