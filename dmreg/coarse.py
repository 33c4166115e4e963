"""The coarse stage: the whole overlap at reduced resolution, through an orientation
search when the pair has no georeferencing to say which way is up.

Matches found here become the initial model the full-resolution tiles are read
through, so a large georeferencing error (or a rotated drone frame) becomes a small
offset there.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Executor

import numpy as np
from shapely.geometry import Polygon

from dmreg.estimate.models import Transform
from dmreg.estimate.robust import fit_all, ransac
from dmreg.estimate.selection import choose_model
from dmreg.geometry.mapping import GeorefMapping, check_points
from dmreg.geometry.tiling import Grid, grid_over
from dmreg.io.sampling import normalise_contrast, sample_onto_grid
from dmreg.io.sar import View, sar_view
from dmreg.matchers import Matcher, TilePair
from dmreg.matchers.structure import gradient_energy
from dmreg.options import RegisterOptions

COARSE_KINDS = ("translation", "similarity", "affine")
IDENTITY = Transform("translation", matrix=np.eye(3))
ORIENTATION_SEARCH_SIZE = 256   # longest side of the grid the orientations are tried on
DEFAULT_ROTATION_STEP_DEG = 15.0  # for matchers that do not say what rotation they tolerate
ORIENTATION_ITERATIONS = 500
"""RANSAC samples per orientation tried: a wrong orientation has no consensus to find and
would otherwise use the full 2000; 500 two-point samples still find a 10 % inlier
consensus with probability 0.993."""
DOMINANT_SHARE = 0.5
"""An orientation whose consensus holds at least half of its matches ends the search:
wrong ones hold a sixth or less (measured on the 800 px DistillMatch benchmark pair:
7-16 % of the matches, against 74 % at the right orientation)."""
MIN_DOMINANT_INLIERS = 20
SEARCH_SPREAD = 1.5
"""Matchers accept matches up to 1.5 x ``max_offset`` from the prediction: the radius of
the disk a random match falls in, for the a-contrario test."""


class TileReader:
    """Reads the reference and the moving raster onto one grid, screened and scaled.

    The two rasters are read at the same time, the reference in ``pool`` (GDAL's
    decoding releases the GIL; each dataset is only ever read by one thread at a time)."""

    def __init__(self, ref_ds, mov_ds, options: RegisterOptions, timings: dict[str, float], pool: Executor):
        self.ref_ds, self.mov_ds, self.options, self.timings, self.pool = ref_ds, mov_ds, options, timings, pool
        self.ref_view = sar_view(ref_ds, options.ref_band, options.ref_modality, options.sar_scale)
        self.mov_view = sar_view(mov_ds, options.mov_band, options.mov_modality, options.sar_scale)

    def pair(self, grid: Grid, mov_coords, max_offset: float) -> TilePair | None:
        t = time.perf_counter()
        ref_read = self.pool.submit(sample_onto_grid, self.ref_ds, [self.options.ref_band], grid.to_ref, grid.shape)
        mov_v, mov_ok = sample_onto_grid(
            self.mov_ds, [self.options.mov_band], lambda u, v: mov_coords(*grid.to_ref(u, v)), grid.shape
        )
        ref_v, ref_ok = ref_read.result()
        self.timings["read"] += time.perf_counter() - t
        ok = ref_ok & mov_ok
        if ok.mean() < self.options.min_valid_fraction:
            return None
        ref_img = normalise_contrast(_seen(self.ref_view, ref_v[0], ref_ok), ref_ok)
        mov_img = normalise_contrast(_seen(self.mov_view, mov_v[0], mov_ok), mov_ok)
        if min(gradient_energy(ref_img)[ok].mean(), gradient_energy(mov_img)[ok].mean()) < self.options.min_texture:
            return None
        return TilePair(ref_img, mov_img, ref_ok, mov_ok, max_offset=max_offset,
                        ref_modality=self.options.ref_modality, mov_modality=self.options.mov_modality)


def _seen(view: View | None, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return values if view is None else view(values, valid)


def default_max_offset(grid: Grid) -> float:
    """The largest georeferencing error looked for unless the user says: a quarter of the
    grid's longer side, in reference pixels."""
    return 0.25 * max(grid.width, grid.height) * grid.scale


def _threshold(options: RegisterOptions, grid: Grid) -> float:
    """The RANSAC threshold at a reduced grid, never under one of its pixels."""
    return max(options.ransac_threshold_px * grid.scale, 1.0)


MIN_SKIP_INLIERS = 50
"""Inliers a half-size grid's model needs (besides holding ``DOMINANT_SHARE`` of its
matches) before the full coarse grid is skipped: enough to pin an affine down over the
whole overlap at that scale."""


def coarse_grids(overlap: Polygon, coarse_size: int, work_scale: float, half_first: bool = True) -> list[Grid]:
    """The grids the coarse stage may match, cheapest first: the coarse grid (at most
    ``coarse_size`` pixels a side, none finer than the working scale), preceded, with
    ``half_first`` and when the overlap is larger than the coarse grid, by one half as
    fine. A half grid's model is less precise (on four Landsat 8 band pairs 0.23-0.40 px
    from the final model, against 0.07-0.27 px from the full grid's), so ``half_first``
    is for matchers whose fine passes absorb that (:func:`dmreg.fine.tolerates_read_offsets`):
    the structural matcher's errors did not change, DistillMatch's grew on three of the
    four (0.078 -> 0.104 px at most)."""
    full = grid_over(overlap, coarse_size, min_scale=work_scale)
    if not half_first or full.scale <= work_scale:
        return [full]
    return [grid_over(overlap, coarse_size // 2, min_scale=work_scale), full]


def coarse_alignment(reader: TileReader, matcher: Matcher, georef: GeorefMapping, grids: list[Grid],
                     max_offset: float, options: RegisterOptions,
                     turn: Transform = IDENTITY) -> tuple[Transform | None, dict, Grid]:
    """Match the whole overlap at low resolution: an initial correction or None, what was
    found, and the grid it was found on. ``turn`` (from the orientation search) is applied
    to the moving raster first.

    The grids (:func:`coarse_grids`) are tried cheapest first: a half-size grid costs a
    quarter of the full one's pixels and templates. Its model is kept when it dominates
    its matches (``DOMINANT_SHARE``, ``MIN_SKIP_INLIERS``), and the fine passes start
    from it, their search widened to its coarser pixels; otherwise the next grid is
    matched as if the first had not been tried."""
    tried = []
    for grid in grids[:-1]:
        initial, info = _align_on(reader, matcher, georef, grid, max_offset, options, turn)
        if initial is not None and info["inliers"] >= max(MIN_SKIP_INLIERS, DOMINANT_SHARE * info["matches"]):
            return initial, info, grid
        tried.append({k: info[k] for k in ("size", "matches", "inliers", "reason") if k in info})
    initial, info = _align_on(reader, matcher, georef, grids[-1], max_offset, options, turn)
    if tried:
        info["coarser_grids_tried"] = tried
    return initial, info, grids[-1]


def _align_on(reader: TileReader, matcher: Matcher, georef: GeorefMapping, grid: Grid, max_offset: float,
              options: RegisterOptions, turn: Transform) -> tuple[Transform | None, dict]:
    """The coarse model from one grid's matches, or None, and what was found."""
    info: dict = {"scale": round(grid.scale, 4), "size": [grid.width, grid.height]}
    found = _coarse_matches(reader, matcher, georef, grid, max_offset, turn)
    if isinstance(found, str):
        info["reason"] = found
        return None, info
    src, dst, confidence = found
    info["matches"] = len(src)
    threshold = _threshold(options, grid)
    fits = fit_all(src, dst, threshold, kinds=COARSE_KINDS, weights=confidence, seed=options.seed,
                   search_radius=SEARCH_SPREAD * max_offset)
    fits = {k: f for k, f in fits.items() if f.meaningful}
    if not fits:
        info["reason"] = "no meaningful model (the consensus could arise from random matches)"
        return None, info
    at = np.column_stack(grid.to_ref(*check_points(grid.width, grid.height)))
    choice = choose_model(fits, src, dst, np.zeros(len(src), int), 2 * threshold, at, order=COARSE_KINDS,
                          local="no", seed=options.seed)
    chosen = fits[choice.kind]
    info.update({"model": chosen.kind, "inliers": chosen.n_inliers, "rmse_px": round(chosen.rmse_px, 4),
                 "log10_nfa": round(chosen.consensus.log10_nfa, 2)})
    return chosen.transform, info


def _coarse_matches(reader: TileReader, matcher: Matcher, georef: GeorefMapping, grid: Grid, max_offset: float,
                    turn: Transform) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """Matches over the whole overlap as (src, dst, confidence) in reference pixels, or
    why there are none. The moving raster is read through ``turn``, so its matches are
    mapped back through it."""
    pair = reader.pair(grid, lambda x, y: georef.inverse(*turn.apply(x, y)), max_offset / grid.scale)
    if pair is None:
        return "overlap mostly nodata or textureless at coarse level"
    found = matcher.match([pair])[0]
    if len(found) < 4:
        return f"{len(found)} matches"
    src = np.column_stack(turn.apply(*grid.to_ref(found.mov_xy[:, 0], found.mov_xy[:, 1])))
    dst = np.column_stack(grid.to_ref(found.ref_xy[:, 0], found.ref_xy[:, 1]))
    return src, dst, found.confidence


def search_orientation(reader: TileReader, matcher: Matcher, georef: GeorefMapping, overlap: Polygon,
                        work_scale: float, options: RegisterOptions) -> tuple[Transform, dict]:
    """The orientation (and, with ``flip``, mirroring) of the moving raster under which
    the coarse matches are most meaningful, tried over the full circle on a small grid at
    the step the matcher tolerates (``rotation_step_deg``), upright first. An orientation
    whose consensus dominates its matches (``DOMINANT_SHARE``) ends the search there: an
    upright pair, the usual case, costs one trial instead of the full circle."""
    grid = grid_over(overlap, ORIENTATION_SEARCH_SIZE, min_scale=work_scale)
    max_offset = default_max_offset(grid)
    threshold = _threshold(options, grid)
    step = float(getattr(matcher, "rotation_step_deg", DEFAULT_ROTATION_STEP_DEG))
    centre = overlap.centroid
    trials = [(angle, mirrored) for mirrored in ((False, True) if options.flip else (False,))
              for angle in np.arange(0.0, 360.0, step)]
    best = (math.inf, IDENTITY, 0.0, False)
    tried = 0
    for angle, mirrored in trials:
        tried += 1
        turn = _turn(float(angle), mirrored, centre.x, centre.y)
        found = _coarse_matches(reader, matcher, georef, grid, max_offset, turn)
        if isinstance(found, str):
            continue
        fitted = ransac("similarity", *found[:2], threshold, weights=found[2], seed=options.seed,
                        max_iterations=ORIENTATION_ITERATIONS, search_radius=SEARCH_SPREAD * max_offset)
        score = fitted.consensus.log10_nfa if fitted is not None else math.inf
        if score < best[0]:
            best = (score, turn, float(angle), mirrored)
        if fitted is not None and fitted.meaningful and fitted.n_inliers >= max(
                MIN_DOMINANT_INLIERS, DOMINANT_SHARE * len(found[0])):
            break
    score, turn, angle, mirrored = best
    info = {"tried": tried, "of": len(trials), "step_deg": step, "angle_deg": angle, "mirrored": mirrored,
            "log10_nfa": round(score, 2) if math.isfinite(score) else None}
    return turn, info


def _turn(angle_deg: float, mirrored: bool, cx: float, cy: float) -> Transform:
    """Rotation by ``angle_deg`` (after a left-right mirror) about (cx, cy)."""
    a = math.radians(angle_deg)
    m = np.diag([-1.0, 1.0, 1.0]) if mirrored else np.eye(3)
    rotate = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    about = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    return Transform("affine", matrix=about @ rotate @ m @ np.linalg.inv(about))
