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
from collections.abc import Callable

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
from dmreg.geometry.tiling import Grid, grid_over, plan_tiles
from dmreg.io.raster import RasterInfo, check_readable, describe, gdal_env, open_raster
from dmreg.io.writing import check_output, write_text
from dmreg.matchers import Matcher, TilePair, get_matcher
from dmreg.options import MODEL_CHOICES, OutputOptions, RegisterOptions
from dmreg.output import write_aligned
from dmreg.report import build_failure_report, build_report, tie_points_geojson, to_json
from dmreg.result import Correspondences, RegistrationResult

__all__ = ["MODEL_CHOICES", "Correspondences", "OutputOptions", "ProgressFn", "RegisterOptions",
           "RegistrationResult", "estimate", "register"]

log = logging.getLogger("dmreg")

ProgressFn = Callable[[int, int], None]
"""Called as progress(done, total) after each batch of tiles."""


def estimate(ref_path: str, mov_path: str, options: RegisterOptions = RegisterOptions(),
             matcher: Matcher | None = None, progress: ProgressFn | None = None) -> RegistrationResult:
    """Estimate the mapping from the moving raster to the reference; writes nothing."""
    with gdal_env():
        return _estimate(ref_path, mov_path, options, matcher, progress)


def _estimate(ref_path: str, mov_path: str, options: RegisterOptions, matcher: Matcher | None,
              progress: ProgressFn | None) -> RegistrationResult:
    t_start = time.perf_counter()
    timings = {"read": 0.0, "match": 0.0, "fit": 0.0}
    matcher = matcher or get_matcher(options.matcher, options.weights, options.device)
    warnings: list[str] = []
    with open_raster(ref_path, options.ref_band) as ref_ds, open_raster(mov_path, options.mov_band) as mov_ds:
        check_readable(ref_ds, options.ref_band)
        check_readable(mov_ds, options.mov_band)
        ref, mov = describe(ref_ds), describe(mov_ds)
        georef = GeorefMapping(mov, ref)
        if not ref.georeferenced:
            warnings.append("neither raster is georeferenced: registering in pixel space")
        overlap = overlap_in_reference(georef, (mov.width, mov.height), (ref.width, ref.height))
        work_scale = _working_scale(georef, mov)
        reader = TileReader(ref_ds, mov_ds, options, timings)

        coarse_grid = grid_over(overlap, options.coarse_size, min_scale=work_scale)
        max_offset = options.max_offset_px or default_max_offset(coarse_grid)
        t = time.perf_counter()
        search = options.rotation_search if options.rotation_search is not None else not ref.georeferenced
        turn, orientation = (search_orientation(reader, matcher, georef, overlap, work_scale, options) if search
                             else (IDENTITY, None))
        initial, coarse = coarse_alignment(reader, matcher, georef, coarse_grid, max_offset, options, turn)
        if orientation:
            coarse["orientation"] = orientation
        timings["coarse"] = time.perf_counter() - t
        if initial is None:
            warnings.append(f"coarse alignment failed ({coarse['reason']}); using the georeferencing as is"
                            + (" and the orientation search's answer" if orientation else ""))
            initial = turn
            residual = max_offset
        else:
            residual = 3.0 * coarse["rmse_px"] + 2.0 * coarse_grid.scale

        tiles = plan_tiles(overlap, work_scale, options.tile_size, options.tile_overlap, options.max_tiles)
        fine_offset = max(4.0, residual / work_scale)
        threshold = options.ransac_threshold_px * work_scale
        coarse_model = initial if "model" in coarse else None
        allowed_departure = SEARCH_SPREAD * fine_offset * work_scale + threshold
        for refinement in range(1 + options.refinements):
            matches, n_matched = _match_tiles(reader, matcher, georef, initial, tiles, fine_offset,
                                              progress, timings)
            log.info("pass %d: %d matches in %d of %d tiles", refinement + 1, len(matches), n_matched, len(tiles))
            t = time.perf_counter()
            fits, selected, scores = _fit(matches, overlap, threshold, SEARCH_SPREAD * fine_offset * work_scale,
                                          options)
            timings["fit"] += time.perf_counter() - t
            initial, fine_offset = selected.transform, 4.0
        if coarse_model is not None:
            coarse["fine_departure_px"] = _check_agreement(coarse_model, selected, overlap, allowed_departure)
        t = time.perf_counter()
        at = np.column_stack(georef.apply(*check_points(mov.width, mov.height)))
        uncertainty = bootstrap_uncertainty(selected.transform, matches.pred_px, matches.ref_px, selected.inliers,
                                            matches.tile, at, seed=options.seed)
        timings["uncertainty"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return RegistrationResult(
        ref=ref, mov=mov, georef=georef, correction=selected.transform, selected=selected, fits=fits,
        scores=scores, matches=matches, matcher=matcher.describe(), tiles=len(tiles), tiles_matched=n_matched,
        coarse=coarse, uncertainty=uncertainty, timings_s=timings, warnings=warnings,
    )


def _working_scale(georef: GeorefMapping, mov: RasterInfo) -> float:
    """Reference pixels per working pixel: the coarser of the two resolutions, so a
    coarse thermal band is not matched against needlessly fine optical detail."""
    cx, cy = mov.width / 2, mov.height / 2
    x, y = georef.apply(np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
    mov_px_in_ref = math.sqrt(abs((x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])))
    return mov_px_in_ref if mov_px_in_ref > 1.5 else 1.0


def _match_tiles(reader: TileReader, matcher: Matcher, georef: GeorefMapping, initial: Transform,
                 tiles: list[Grid], max_offset: float, progress: ProgressFn | None,
                 timings: dict[str, float]) -> tuple[Correspondences, int]:
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

    for index, grid in enumerate(tiles):
        pair = reader.pair(grid, mapping.inverse, max_offset)
        if pair is not None:
            batch.append((index, pair))
        if len(batch) >= reader.options.batch_size:
            flush()
        if progress:
            progress(index + 1, len(tiles))
    if batch:
        flush()
    if not parts:
        return Correspondences.empty(), 0
    return Correspondences(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("mov_px", "pred_px", "ref_px", "confidence", "tile"))), n_matched


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
    pts = _points_inside(overlap)
    cx, cy = coarse_model.apply(pts[:, 0], pts[:, 1])
    fx, fy = selected.transform.apply(pts[:, 0], pts[:, 1])
    departure = float(np.max(np.hypot(fx - cx, fy - cy)))
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
