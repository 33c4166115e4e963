"""register(): the one orchestrator, from two raster paths to an estimated mapping.

Coarse-to-fine: both rasters are first matched at reduced resolution over the whole
overlap (:mod:`dmreg.coarse`; large georeferencing errors become small there), then
full-resolution tiles of the moving raster are read through that initial model and
matched with a small search radius. Every model is fitted with RANSAC and kept only if
its consensus could not arise by chance; the model that best predicts held-out tiles
is chosen, and a block bootstrap says how far off it may be.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from contextlib import closing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import shapely
from shapely.geometry import MultiPoint, Polygon

from dmreg.coarse import (IDENTITY, SEARCH_SPREAD, TileReader, coarse_alignment, default_max_offset,
                          search_orientation)
from dmreg.errors import DmregError, FlaggedError, OutputExistsError, RegistrationError
from dmreg.estimate.models import KINDS, Transform
from dmreg.estimate.robust import ModelFit, fit_all, summarise_fit
from dmreg.estimate.selection import CVScore, choose_model
from dmreg.estimate.uncertainty import bootstrap_uncertainty
from dmreg.geometry.footprint import overlap_in_reference
from dmreg.geometry.mapping import CHECK_GRID_SIZE, CorrectedMapping, GeorefMapping, check_points
from dmreg.geometry.tiling import Grid, grid_over, plan_tiles, spread_order
from dmreg.io.raster import RasterInfo, check_readable, describe, gdal_env, open_raster
from dmreg.io.writing import check_output, write_text
from dmreg.matchers import Matcher, TilePair, get_matcher
from dmreg.options import MODEL_CHOICES, OutputOptions, RegisterOptions
from dmreg.output import write_aligned
from dmreg.report import build_failure_report, build_report, tie_points_geojson, to_json
from dmreg.result import Correspondences, RegistrationResult
from dmreg.runtime import serial_blas

__all__ = ["MODEL_CHOICES", "Correspondences", "OutputOptions", "ProgressFn", "RegisterOptions",
           "RegistrationResult", "estimate", "register"]

log = logging.getLogger("dmreg")

ProgressFn = Callable[[int, int], None]
"""Called as progress(done, total) after each tile."""

FIRST_PASS_SLACK = 3.0
"""A pass that a refinement pass follows only has to bring the sub-pixel peaks near zero
offset: it stops at three times the target error."""

REFINE_TOLERANCE_PX = 0.05
"""Working pixels: a pass whose model moved no further than this from the one its tiles
were read through needs no refinement pass (the sub-pixel peaks were already measured
near zero offset)."""


def estimate(ref_path: str, mov_path: str, options: RegisterOptions = RegisterOptions(),
             matcher: Matcher | None = None, progress: ProgressFn | None = None) -> RegistrationResult:
    """Estimate the mapping from the moving raster to the reference; writes nothing."""
    with gdal_env(), serial_blas():
        return _estimate(ref_path, mov_path, options, matcher, progress)


def _estimate(ref_path: str, mov_path: str, options: RegisterOptions, matcher: Matcher | None,
              progress: ProgressFn | None) -> RegistrationResult:
    t_start = time.perf_counter()
    timings = {"read": 0.0, "match": 0.0, "fit": 0.0}
    matcher = matcher or get_matcher(options.matcher, options.weights, options.device)
    warnings: list[str] = []
    with open_raster(ref_path, options.ref_band) as ref_ds, open_raster(mov_path, options.mov_band) as mov_ds, \
            ThreadPoolExecutor(1, thread_name_prefix="dmreg-read") as read_pool:
        check_readable(ref_ds, options.ref_band)
        check_readable(mov_ds, options.mov_band)
        ref, mov = describe(ref_ds), describe(mov_ds)
        georef = GeorefMapping(mov, ref)
        if not ref.georeferenced:
            warnings.append("neither raster is georeferenced: registering in pixel space")
        overlap = overlap_in_reference(georef, (mov.width, mov.height), (ref.width, ref.height))
        work_scale = _working_scale(georef, mov)
        reader = TileReader(ref_ds, mov_ds, options, timings, read_pool)

        coarse_grid = grid_over(overlap, options.coarse_size, min_scale=work_scale)
        max_offset = options.max_offset_px or default_max_offset(coarse_grid)
        t = time.perf_counter()
        search = options.rotation_search if options.rotation_search is not None else not ref.georeferenced
        turn, orientation = (search_orientation(reader, matcher, georef, overlap, work_scale, options) if search
                             else (IDENTITY, None))
        initial, coarse = coarse_alignment(reader, matcher, georef, coarse_grid, max_offset, options, turn)
        if orientation:
            coarse["orientation"] = orientation
        timings["coarse"] = time.perf_counter() - t - timings["read"]  # its reads are counted as reads
        if initial is None:
            warnings.append(f"coarse alignment failed ({coarse['reason']}); using the georeferencing as is"
                            + (" and the orientation search's answer" if orientation else ""))
            initial = turn
            residual = max_offset
        else:
            residual = 3.0 * coarse["rmse_px"] + 2.0 * coarse_grid.scale

        tiles = plan_tiles(overlap, work_scale, options.tile_size, options.tile_overlap, options.max_tiles)
        order = spread_order(tiles)
        fine_offset = max(4.0, residual / work_scale)
        threshold = options.ransac_threshold_px * work_scale
        coarse_model = initial if "model" in coarse else None
        allowed_departure = SEARCH_SPREAD * fine_offset * work_scale + threshold
        at = np.column_stack(georef.apply(*check_points(mov.width, mov.height)))
        passes: list[dict] = []
        for refinement in range(1 + options.refinements):
            radius = SEARCH_SPREAD * fine_offset * work_scale
            final = refinement == options.refinements
            budget = _Budget(_budget_kind(options, passes, coarse), threshold, radius, options, at,
                             options.target_error_px * work_scale * (1 if final else FIRST_PASS_SLACK),
                             16 if final else 8, timings)
            matches, n_matched = _match_tiles(reader, matcher, georef, initial, tiles, order, fine_offset,
                                              progress, timings, budget)
            log.info("pass %d: %d matches in %d of %d tiles read (%d planned)%s", refinement + 1, len(matches),
                     n_matched, budget.tiles_read, len(tiles),
                     f"; stopped at predicted CE90 {budget.ce90_px:.3f} px" if budget.stopped else "")
            t = time.perf_counter()
            fits, selected, scores = _fit(matches, overlap, threshold, radius, options)
            timings["fit"] += time.perf_counter() - t
            moved = _largest_distance(initial, selected.transform, overlap)
            passes.append({"tiles_read": budget.tiles_read, "tiles_matched": n_matched, "matches": len(matches),
                           "stopped_early": budget.stopped, "model": selected.kind, "moved_px": round(moved, 4)})
            initial, fine_offset = selected.transform, 4.0
            precise = not budget.stopped or budget.ce90_px <= options.target_error_px * work_scale
            if moved <= REFINE_TOLERANCE_PX * work_scale and precise and not final:
                log.info("pass %d moved the model by %.3f px at most: no further pass needed", refinement + 1, moved)
                break
        if coarse_model is not None:
            coarse["fine_departure_px"] = _check_agreement(coarse_model, selected, overlap, allowed_departure)
        t = time.perf_counter()
        uncertainty = bootstrap_uncertainty(selected.transform, matches.pred_px, matches.ref_px, selected.inliers,
                                            matches.tile, at, seed=options.seed)
        timings["uncertainty"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return RegistrationResult(
        ref=ref, mov=mov, georef=georef, correction=selected.transform, selected=selected, fits=fits,
        scores=scores, matches=matches, matcher=matcher.describe(), tiles=len(tiles), tiles_matched=n_matched,
        coarse=coarse, passes=passes, uncertainty=uncertainty, timings_s=timings, warnings=warnings,
    )


def _working_scale(georef: GeorefMapping, mov: RasterInfo) -> float:
    """Reference pixels per working pixel: the coarser of the two resolutions, so a
    coarse thermal band is not matched against needlessly fine optical detail."""
    cx, cy = mov.width / 2, mov.height / 2
    x, y = georef.apply(np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
    mov_px_in_ref = math.sqrt(abs((x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])))
    return mov_px_in_ref if mov_px_in_ref > 1.5 else 1.0


class _Budget:
    """When a pass has matched enough tiles: once the model ``kind`` fitted to its matches
    so far has a predicted CE90 at the check grid no larger than the target. The final
    pass is first checked after 16 tiles (a bootstrap over fewer blocks underestimates
    the spread), a pass a refinement follows after 8; then each time 1.5 x as many have
    been read, so the checks cost a bounded share of the pass. A hard pair never gets
    there and is matched over every planned tile."""

    GROWTH = 1.5

    def __init__(self, kind: str, threshold: float, search_radius: float, options: RegisterOptions,
                 at: np.ndarray, target_px: float, first_check: int, timings: dict[str, float]):
        self.threshold, self.search_radius, self.options, self.at = threshold, search_radius, options, at
        self.target_px, self.timings, self.kind = target_px, timings, kind
        self.next_check = first_check if target_px > 0 else math.inf
        self.tiles_read = 0
        self.stopped = False
        self.ce90_px = math.inf

    def enough(self, matches: Correspondences) -> bool:
        if self.tiles_read < self.next_check:
            return False
        self.next_check = math.ceil(self.tiles_read * self.GROWTH)
        t = time.perf_counter()
        fitted = fit_all(matches.pred_px, matches.ref_px, self.threshold, kinds=(self.kind,),
                         weights=matches.confidence, seed=self.options.seed,
                         search_radius=self.search_radius).get(self.kind)
        if fitted is None or not fitted.meaningful or fitted.n_inliers < self.options.min_inliers:
            self.timings["fit"] += time.perf_counter() - t
            return False
        self.ce90_px = bootstrap_uncertainty(fitted.transform, matches.pred_px, matches.ref_px, fitted.inliers,
                                             matches.tile, self.at, seed=self.options.seed).ce90_px
        self.timings["fit"] += time.perf_counter() - t
        log.debug("%d tiles read: %s model, predicted CE90 %.4f px (target %.4f)", self.tiles_read, self.kind,
                  self.ce90_px, self.target_px)
        self.stopped = self.ce90_px <= self.target_px
        return self.stopped


def _budget_kind(options: RegisterOptions, passes: list[dict], coarse: dict) -> str:
    """The model whose precision decides when a pass has enough tiles: the one asked for,
    else the global model the previous pass chose, else the coarse stage's, else affine
    (its spread bounds that of its special cases, translation and similarity)."""
    if options.model not in ("auto", "local"):
        return options.model
    previous = passes[-1]["model"] if passes else coarse.get("model", "affine")
    return previous if previous in KINDS else "affine"


def _match_tiles(reader: TileReader, matcher: Matcher, georef: GeorefMapping, initial: Transform,
                 tiles: list[Grid], order: list[int], max_offset: float, progress: ProgressFn | None,
                 timings: dict[str, float], budget: _Budget) -> tuple[Correspondences, int]:
    """Match tiles in ``order`` until every one is matched or the budget says the
    matches so far pin the model down."""
    mapping = CorrectedMapping(georef, initial)
    parts: list[Correspondences] = []
    n_matched = 0
    batch: list[tuple[int, TilePair]] = []

    def flush() -> None:
        nonlocal n_matched
        t = time.perf_counter()
        results = matcher.match([p for _, p in batch])
        timings["match"] += time.perf_counter() - t
        for (index, _), found in zip(batch, results):
            if len(found) == 0:
                continue
            n_matched += 1
            grid = tiles[index]
            ref_px = np.column_stack(grid.to_ref(found.ref_xy[:, 0], found.ref_xy[:, 1]))
            tile_ref = grid.to_ref(found.mov_xy[:, 0], found.mov_xy[:, 1])
            pred_px = np.column_stack(initial.inverse(*tile_ref))
            mov_px = np.column_stack(georef.inverse(pred_px[:, 0], pred_px[:, 1]))
            parts.append(Correspondences(mov_px, pred_px, ref_px, found.confidence,
                                         np.full(len(found), index)))
        batch.clear()

    with closing(_read_ahead(reader, tiles, order, mapping, max_offset)) as pairs:
        for done, (index, pair) in enumerate(pairs, start=1):
            budget.tiles_read = done
            if pair is not None:
                batch.append((index, pair))
            if len(batch) >= reader.options.batch_size or (batch and done >= budget.next_check):
                flush()
                if parts and budget.enough(Correspondences.concatenate(parts)):
                    break
            if progress:
                progress(done, len(tiles))
    if batch:
        flush()
    if progress:
        progress(len(tiles), len(tiles))
    if not parts:
        return Correspondences.empty(), 0
    return Correspondences.concatenate(parts), n_matched


def _read_ahead(reader: TileReader, tiles: list[Grid], order: list[int], mapping: CorrectedMapping,
                max_offset: float) -> Iterator[tuple[int, TilePair | None]]:
    """The tile pairs in ``order``, read by a background thread up to a batch ahead of
    the matcher, so that reading and matching overlap. Reads still queued when the
    caller stops are cancelled and running ones finished before returning: the next
    pass must not read the same datasets from two threads at once."""
    pending: deque[tuple[int, Future]] = deque()
    upcoming = iter(order)
    with ThreadPoolExecutor(1, thread_name_prefix="dmreg-tiles") as pool:
        def submit() -> None:
            index = next(upcoming, None)
            if index is not None:
                pending.append((index, pool.submit(reader.pair, tiles[index], mapping.inverse, max_offset)))

        for _ in range(reader.options.batch_size):
            submit()
        try:
            while pending:
                index, read = pending.popleft()
                submit()
                yield index, read.result()
        finally:
            for _, read in pending:
                read.cancel()


def _largest_distance(a: Transform, b: Transform, area: Polygon) -> float:
    """How far apart two models put points of ``area``, at most."""
    pts = _points_inside(area)
    ax, ay = a.apply(pts[:, 0], pts[:, 1])
    bx, by = b.apply(pts[:, 0], pts[:, 1])
    return float(np.max(np.hypot(bx - ax, by - ay)))


def _fit(matches: Correspondences, overlap: Polygon, threshold: float, search_radius: float,
         options: RegisterOptions) -> tuple[dict[str, ModelFit], ModelFit, dict[str, CVScore]]:
    """Robust fits, kept only when meaningful a contrario, then the model chosen by
    blocked cross-validation (or the one asked for). The local field competes in every
    pass: the next pass then reads its tiles through it, so sub-pixel peaks are measured
    near zero offset everywhere, the distorted areas included."""
    if len(matches) < options.min_inliers:
        raise RegistrationError(
            f"only {len(matches)} matches were found (at least {options.min_inliers} needed); "
            "check that the rasters show the same area, or try another --matcher or a larger --max-tiles"
        )
    kinds = KINDS if options.model in ("auto", "local") else (options.model,)
    src, dst = matches.pred_px, matches.ref_px
    fits = fit_all(src, dst, threshold, kinds=kinds, weights=matches.confidence, seed=options.seed,
                   search_radius=search_radius)
    if options.model in ("auto", "local"):
        fits = _drop_unsupported(fits, src, overlap)
    meaningful = {k: f for k, f in fits.items() if f.meaningful}
    if not meaningful:
        raise RegistrationError(_no_meaningful_model(fits, len(matches), options.model))
    choice = choose_model(meaningful, src, dst, matches.tile, 2 * threshold, _points_inside(overlap),
                          seed=options.seed, local={"auto": "candidate", "local": "always"}.get(options.model, "no"))
    chosen = (summarise_fit(choice.local, src, dst, threshold) if choice.kind == "local"
              else meaningful[choice.kind])
    if chosen.n_inliers < options.min_inliers:
        raise RegistrationError(
            f"only {chosen.n_inliers} inliers for the {chosen.kind} model (at least {options.min_inliers} needed)"
        )
    return fits, chosen, choice.scores


def _no_meaningful_model(fits: dict[str, ModelFit], n_matches: int, model: str) -> str:
    which = "geometric" if model in ("auto", "local") else model
    if not fits:
        return f"no {which} model is consistent with the {n_matches} matches"
    best = min(fits.values(), key=lambda f: f.consensus.log10_nfa)
    return (f"no {which} model is meaningful: the best consensus ({best.n_inliers} of {n_matches} matches for "
            f"{best.kind}) could arise from random matches (NFA 10^{best.consensus.log10_nfa:.1f} >= 1); "
            "the evidence is too weak to register")


def _check_agreement(coarse_model: Transform, selected: ModelFit, overlap: Polygon, allowed_px: float) -> float:
    """The largest distance between the coarse and the fine model inside the overlap.

    The fine stage only looked for matches near the coarse model's prediction, so a fine
    model that strays further than that search reached, anywhere in the output area, is
    extrapolating beyond its evidence: a failure, not a result."""
    departure = _largest_distance(coarse_model, selected.transform, overlap)
    if not departure <= allowed_px:
        raise RegistrationError(
            f"the {selected.kind} model departs from the coarse alignment by {departure:.1f} px inside the overlap, "
            f"further than the fine search reached ({allowed_px:.1f} px): the matches do not support it there; "
            "try --model with a simpler model"
        )
    return round(departure, 3)


def _points_inside(area: Polygon, n: int = CHECK_GRID_SIZE) -> np.ndarray:
    """An n x n grid over ``area``'s bounds, kept where inside it: the output area the
    model choice must serve, matched or not."""
    x0, y0, x1, y1 = area.bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, n + 2)[1:-1], np.linspace(y0, y1, n + 2)[1:-1])
    pts = np.column_stack([xs.ravel(), ys.ravel()])
    inside = shapely.contains_xy(area, pts[:, 0], pts[:, 1])
    return pts[inside] if inside.any() else pts


def _drop_unsupported(fits: dict[str, ModelFit], src: np.ndarray, overlap: Polygon) -> dict[str, ModelFit]:
    """Homography and polynomial2 extrapolate wildly from clustered points: keep them
    only when the inliers span at least a quarter of the overlap."""
    kept = {}
    for kind, f in fits.items():
        if kind in ("homography", "polynomial2"):
            hull = MultiPoint(src[f.inliers]).convex_hull
            if hull.area < 0.25 * overlap.area:
                continue
        kept[kind] = f
    return kept


def register(ref_path: str, mov_path: str, options: RegisterOptions = RegisterOptions(),
             outputs: OutputOptions = OutputOptions(), matcher: Matcher | None = None,
             progress: ProgressFn | None = None) -> RegistrationResult:
    """Estimate, then write the aligned raster, report and tie points.

    Outputs are checked before any work (an existing file without ``overwrite`` fails
    at once) and each is written atomically. If estimation fails and a report path was
    given, a report with status "failed" is written before the error propagates.
    """
    for path in (outputs.raster, outputs.report, outputs.tiepoints):
        check_output(path, outputs.overwrite, inputs=(ref_path, mov_path))
    try:
        result = estimate(ref_path, mov_path, options, matcher=matcher, progress=progress)
    except DmregError as error:
        if outputs.report and not isinstance(error, (OutputExistsError, FlaggedError)):
            report = build_failure_report(ref_path, mov_path, error, _info_or_none(ref_path, options.ref_band),
                                          _info_or_none(mov_path, options.mov_band))
            write_text(outputs.report, to_json(report), outputs.overwrite)
        raise
    _check_predicted_error(result, options, outputs, ref_path, mov_path)
    t = time.perf_counter()
    if outputs.raster:
        with gdal_env():
            write_aligned(result, outputs.raster, grid=outputs.grid, resample=outputs.resample,
                          resampling=outputs.resampling, nodata=outputs.nodata,
                          creation_options=outputs.creation_options, overwrite=outputs.overwrite)
    if outputs.tiepoints:
        write_text(outputs.tiepoints, to_json(tie_points_geojson(result)), outputs.overwrite)
    result.timings_s["write"] = time.perf_counter() - t
    result.timings_s["total"] += result.timings_s["write"]
    if outputs.report:
        report = {**build_report(result, ref_path, mov_path), **outputs.report_extra}
        write_text(outputs.report, to_json(report), outputs.overwrite)
    return result


def _check_predicted_error(result: RegistrationResult, options: RegisterOptions, outputs: OutputOptions,
                           ref_path: str, mov_path: str) -> None:
    """Above ``--max-error`` the estimate is flagged: the report (status "flagged") is
    written for inspection, the raster is not."""
    if options.max_error_px is None:
        return
    predicted = result.uncertainty.ce90_px if result.uncertainty else math.inf
    if predicted <= options.max_error_px:
        return
    shown = f"{predicted:.2f} px" if math.isfinite(predicted) else "unknown (too few independent blocks of matches)"
    reason = f"predicted error (CE90) {shown} exceeds --max-error {options.max_error_px:g} px"
    if outputs.report:
        report = {**build_report(result, ref_path, mov_path, status="flagged", flag=reason), **outputs.report_extra}
        write_text(outputs.report, to_json(report), outputs.overwrite)
    raise FlaggedError(reason, result)


def _info_or_none(path: str, band: int) -> RasterInfo | None:
    """Describe a raster for a failure report, or None if it cannot even be opened."""
    try:
        with open_raster(path, band) as ds:
            return describe(ds)
    except DmregError:
        return None
