"""register(): the one orchestrator, from two raster paths to an estimated mapping.

Coarse-to-fine: both rasters are first matched at reduced resolution over the whole
overlap (:mod:`dmreg.coarse`; large georeferencing errors become small there), then
full-resolution tiles of the moving raster are read through that initial model and
matched with a small search radius, in passes (:mod:`dmreg.fine`). Every model is
fitted with RANSAC and kept only if its consensus could not arise by chance; the model
that best predicts held-out tiles is chosen, and a block bootstrap says how far off it
may be.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from shapely.geometry import Polygon

from dmreg.coarse import (IDENTITY, SEARCH_SPREAD, TileReader, coarse_alignment, coarse_grids, default_max_offset,
                          search_orientation)
from dmreg.errors import DmregError, FlaggedError, OutputExistsError, RegistrationError
from dmreg.estimate.blocks import MIN_BLOCKS
from dmreg.estimate.models import Transform
from dmreg.estimate.robust import ModelFit
from dmreg.estimate.uncertainty import GENERALISATIONS, bootstrap_uncertainty, model_spread
from dmreg.fine import ProgressFn, fine_passes, largest_distance, tolerates_read_offsets
from dmreg.geometry.footprint import extent, overlap_in_reference
from dmreg.geometry.mapping import GeorefMapping, check_points
from dmreg.io.raster import RasterInfo, check_readable, describe, gdal_env, open_raster
from dmreg.io.writing import check_output, write_text
from dmreg.matchers import Matcher, get_matcher
from dmreg.options import MODEL_CHOICES, OutputOptions, RegisterOptions
from dmreg.output import write_aligned
from dmreg.probe import probe_flag
from dmreg.report import build_failure_report, build_report, to_json, write_tie_points
from dmreg.result import Correspondences, RegistrationResult
from dmreg.runtime import serial_blas

__all__ = ["MODEL_CHOICES", "Correspondences", "OutputOptions", "ProgressFn", "RegisterOptions",
           "RegistrationResult", "estimate", "predicted_error_flag", "register"]


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
        ref, mov = (describe(ds, options.rpc_height, options.dem, options.gcp_tps) for ds in (ref_ds, mov_ds))
        georef = GeorefMapping(mov, ref)
        if not ref.georeferenced:
            warnings.append("neither raster is georeferenced: registering in pixel space")
        overlap = overlap_in_reference(georef, (mov.width, mov.height), (ref.width, ref.height))
        work_scale = _working_scale(georef, mov)
        reader = TileReader(ref_ds, mov_ds, options, timings, read_pool)

        grids = coarse_grids(overlap, options.coarse_size, work_scale, half_first=tolerates_read_offsets(matcher))
        max_offset = options.max_offset_px or default_max_offset(grids[-1])
        t = time.perf_counter()
        search = options.rotation_search if options.rotation_search is not None else not ref.georeferenced
        turn, orientation = (search_orientation(reader, matcher, georef, overlap, work_scale, options) if search
                             else (IDENTITY, None))
        initial, coarse, coarse_grid = coarse_alignment(reader, matcher, georef, grids, max_offset, options, turn)
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

        fine_offset = max(4.0, residual / work_scale)
        coarse_model = initial if "model" in coarse else None
        allowed_departure = SEARCH_SPREAD * fine_offset * work_scale + options.ransac_threshold_px * work_scale
        at = np.column_stack(georef.apply(*check_points(mov.width, mov.height)))
        fine = fine_passes(reader, matcher, georef, overlap, initial, coarse, fine_offset, work_scale, at, options,
                           progress, timings)
        matches, selected = fine.matches, fine.selected
        if coarse_model is not None:
            coarse["fine_departure_px"] = _check_agreement(coarse_model, selected, overlap, allowed_departure)
        t = time.perf_counter()
        general = [(f.transform, bootstrap_uncertainty(f.transform, matches.pred_px, matches.ref_px, f.inliers,
                                                       matches.tile, at, seed=options.seed).error_px)
                   for kind, f in fine.fits.items() if f.meaningful and kind in GENERALISATIONS.get(selected.kind, ())]
        uncertainty = bootstrap_uncertainty(selected.transform, matches.pred_px, matches.ref_px, selected.inliers,
                                            matches.tile, at, seed=options.seed,
                                            spread_px=model_spread(selected.transform, general, at),
                                            unsettled_px=fine.unsettled_px, area_span=extent(overlap))
        timings["uncertainty"] = time.perf_counter() - t
        if uncertainty.model_spread_px > work_scale:
            warnings.append(_underdetermined(selected.kind, uncertainty.model_spread_px))
    timings["total"] = time.perf_counter() - t_start
    return RegistrationResult(
        ref=ref, mov=mov, georef=georef, correction=selected.transform, selected=selected, fits=fine.fits,
        scores=fine.scores, matches=matches, matcher=matcher.describe(), tiles=fine.tiles,
        tiles_matched=fine.tiles_matched, coarse=coarse, passes=fine.passes, uncertainty=uncertainty,
        probe=fine.probe, timings_s=timings, warnings=warnings,
    )


def _underdetermined(kind: str, spread_px: float) -> str:
    return (f"a more general model that also explains the matches puts points up to {spread_px:.1f} px from where "
            f"the {kind} model does: the matches do not pin the mapping down better than that (it is in the "
            "predicted error; --max-error flags such results)")


def _working_scale(georef: GeorefMapping, mov: RasterInfo) -> float:
    """Reference pixels per working pixel: the coarser of the two resolutions, so a
    coarse thermal band is not matched against needlessly fine optical detail."""
    cx, cy = mov.width / 2, mov.height / 2
    x, y = georef.apply(np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
    mov_px_in_ref = math.sqrt(abs((x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])))
    return mov_px_in_ref if mov_px_in_ref > 1.5 else 1.0


def _check_agreement(coarse_model: Transform, selected: ModelFit, overlap: Polygon, allowed_px: float) -> float:
    """The largest distance between the coarse and the fine model inside the overlap.

    The fine stage only looked for matches near the coarse model's prediction, so a fine
    model that strays further than that search reached, anywhere in the output area, is
    extrapolating beyond its evidence: a failure, not a result."""
    departure = largest_distance(coarse_model, selected.transform, overlap)
    if not departure <= allowed_px:
        raise RegistrationError(
            f"the {selected.kind} model departs from the coarse alignment by {departure:.1f} px inside the overlap, "
            f"further than the fine search reached ({allowed_px:.1f} px): the matches do not support it there; "
            "try --model with a simpler model"
        )
    return round(departure, 3)


DEFAULT_MAX_ERROR_WORKING_PX = 2.0
"""Without ``--max-error``, a result whose predicted CE90 exceeds this many working
pixels is flagged, not written as if it were good. Over the 144 validation pairs it
flagged 20 of DistillMatch's 108 answers, 17 of them more than 3 px off at 90 % of the
check grid and none within 2 px (structural: 6 of 52; 4 and 1)."""


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
                          creation_options=outputs.creation_options, overwrite=outputs.overwrite,
                          driver=outputs.driver)
    if outputs.tiepoints:
        write_tie_points(outputs.tiepoints, result, outputs.overwrite)
    result.timings_s["write"] = time.perf_counter() - t
    result.timings_s["total"] += result.timings_s["write"]
    if outputs.report:
        report = {**build_report(result, ref_path, mov_path), **outputs.report_extra}
        write_text(outputs.report, to_json(report), outputs.overwrite)
    return result


MIN_EVIDENCE_LOG10_NFA = -6.0
"""A result is written as good only when its model's consensus could arise by chance
with an expected count (NFA) of at most 10^-6. Model fitting accepts anything below 1,
the a-contrario convention, which assumes independent matches; dense learned matches
are not: where a tile holds nothing to match, their sub-pixel refinement leans toward
the offset they were read at, so they agree with whatever model they were read
through. Of the DistillMatch answers the 2-working-pixel CE90 limit let through on the
144 validation pairs, the 5 with NFA above 10^-8 were all more than 3 px off (3.5 to
23 px) and every one within 2 px had NFA below 10^-10; no structural answer came near.
The threshold sits inside that gap."""


def predicted_error_flag(result: RegistrationResult, options: RegisterOptions) -> str | None:
    """Why the estimate must be flagged rather than written as good, or None: its
    model's consensus is weak (``MIN_EVIDENCE_LOG10_NFA``), its matches follow the model
    they were read through (:func:`dmreg.probe.probe_flag`), or its predicted error is
    unknown or exceeds ``--max-error`` (by default ``DEFAULT_MAX_ERROR_WORKING_PX``
    working pixels); ``--max-error inf`` flags nothing. `dmreg evaluate` asks the same,
    so it scores what register delivers."""
    if options.max_error_px == math.inf:
        return None
    weak = _weak_evidence(result) or probe_flag(result.probe)
    if weak:
        return weak
    if options.max_error_px is None:
        limit = DEFAULT_MAX_ERROR_WORKING_PX * _working_scale(result.georef, result.mov)
        named = (f"the default limit of {DEFAULT_MAX_ERROR_WORKING_PX:g} working pixels ({limit:.3g} px here; "
                 "--max-error sets another, --max-error inf none)")
    else:
        limit, named = options.max_error_px, f"--max-error {options.max_error_px:g} px"
    predicted = result.uncertainty.ce90_px if result.uncertainty else math.inf
    if predicted <= limit:
        return None
    if not math.isfinite(predicted):
        return f"the predicted error is unknown: {_why_unknown(result)}; --max-error inf writes it anyway"
    return f"predicted error (CE90) {predicted:.2f} px exceeds {named}"


def _why_unknown(result: RegistrationResult) -> str:
    """Why the bootstrap could not measure the predicted error."""
    blocks = result.uncertainty.blocks if result.uncertainty else 0
    if blocks >= MIN_BLOCKS:
        return f"most resamples of its {blocks} blocks of matches could not be fitted (the fit hangs on a few)"
    inliers = result.matches.pred_px[result.selected.inliers]
    width, height = np.ptp(inliers, axis=0) if len(inliers) else (0.0, 0.0)
    return (f"the model's {len(inliers)} inliers fall into {blocks} independent block(s) of matches, fewer than the "
            f"{MIN_BLOCKS} a bootstrap needs (they span {width:.0f} x {height:.0f} px; a block is a matched tile, or "
            "at least a quarter of the overlap along each axis)")


def _weak_evidence(result: RegistrationResult) -> str | None:
    """Why the chosen model's consensus is too weak to write, or None (the local model is
    judged by the consensus of the global model it rests on)."""
    selected = result.selected
    fit = result.fits.get(selected.transform.base.kind) if selected.kind == "local" else selected
    if fit is None or fit.consensus is None or fit.consensus.log10_nfa <= MIN_EVIDENCE_LOG10_NFA:
        return None
    return (f"the evidence is weak: {fit.consensus.inliers} inliers of {len(result.matches)} matches agree on the "
            f"{fit.kind} model, a consensus chance alone would give with NFA 10^{fit.consensus.log10_nfa:.1f} "
            f"(a result is written at 10^{MIN_EVIDENCE_LOG10_NFA:g} or less; --max-error inf writes it anyway)")


def _check_predicted_error(result: RegistrationResult, options: RegisterOptions, outputs: OutputOptions,
                           ref_path: str, mov_path: str) -> None:
    """A flagged estimate writes its report (status "flagged") for inspection, not the raster."""
    reason = predicted_error_flag(result, options)
    if reason is None:
        return
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
