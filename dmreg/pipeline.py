"""register(): the one orchestrator, from two raster paths to an estimated mapping.

Coarse-to-fine: both rasters are first matched at reduced resolution over the whole
overlap (large georeferencing errors become small there), then full-resolution tiles
of the moving raster are read through that initial model and matched with a small
search radius. All matches are fitted with RANSAC and the simplest adequate model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from shapely.geometry import MultiPoint, Polygon

from dmreg.errors import DmregError, OutputExistsError, RegistrationError, UsageError
from dmreg.estimate.models import KINDS, Transform
from dmreg.estimate.robust import ModelFit, fit_all, select_model
from dmreg.geometry.footprint import overlap_in_reference
from dmreg.geometry.mapping import CorrectedMapping, GeorefMapping
from dmreg.geometry.tiling import Grid, grid_over, plan_tiles
from dmreg.io.raster import RasterInfo, check_readable, describe, gdal_env, open_raster
from dmreg.io.sampling import SUPPORTED_RESAMPLING, normalise_contrast, sample_onto_grid
from dmreg.io.writing import check_output, write_text
from dmreg.matchers import Matcher, TilePair, get_matcher
from dmreg.matchers.structure import gradient_energy
from dmreg.output import GRIDS, write_aligned
from dmreg.report import build_failure_report, build_report, tie_points_geojson, to_json

log = logging.getLogger("dmreg")

ProgressFn = Callable[[int, int], None]
"""Called as progress(done, total) after each batch of tiles."""


@dataclass(frozen=True)
class RegisterOptions:
    """Everything that steers one registration; the defaults suit 10-100 m imagery."""

    ref_band: int = 1
    mov_band: int = 1
    matcher: str = "structural"
    weights: str | None = None        # learned matchers: a shipped name or a path
    device: str = "auto"              # learned matchers: auto, cpu, cuda, cuda:N
    model: str = "auto"               # auto or one of estimate.models.KINDS
    tile_size: int = 512              # tile side in working pixels
    tile_overlap: int = 32
    max_tiles: int = 100
    coarse_size: int = 1024           # longest side of the coarse level in pixels
    max_offset_px: float | None = None  # largest georeferencing error expected (reference px)
    ransac_threshold_px: float = 1.5  # inlier threshold in working pixels
    min_inliers: int = 12
    min_valid_fraction: float = 0.5   # tiles with less valid (non-nodata) area are skipped
    min_texture: float = 0.01         # tiles with less mean gradient are skipped
    batch_size: int = 8
    refinements: int = 1              # extra fine passes through the fitted model: sub-pixel
                                      # peak estimates are unbiased only near zero offset
    ref_modality: str | None = None
    mov_modality: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model != "auto" and self.model not in KINDS:
            raise UsageError(f"unknown model {self.model!r}; choose auto or one of: {', '.join(KINDS)}")
        if self.tile_size < 64:
            raise UsageError("--tile-size must be at least 64 pixels")
        if not 0 <= self.tile_overlap < self.tile_size:
            raise UsageError("--tile-overlap must be between 0 and the tile size")
        if self.max_tiles < 1:
            raise UsageError("--max-tiles must be at least 1")
        if self.ransac_threshold_px <= 0:
            raise UsageError("--ransac-threshold must be positive")


@dataclass
class Correspondences:
    """All matches in full-resolution pixels: ``mov_px`` (moving raster), ``pred_px``
    (where the georeferencing puts them in the reference) and ``ref_px`` (where they
    matched in the reference)."""

    mov_px: np.ndarray
    pred_px: np.ndarray
    ref_px: np.ndarray
    confidence: np.ndarray
    tile: np.ndarray

    @classmethod
    def empty(cls) -> Correspondences:
        z = np.zeros((0, 2))
        return cls(z, z, z, np.zeros(0), np.zeros(0, int))

    def __len__(self) -> int:
        return len(self.confidence)


@dataclass
class RegistrationResult:
    ref: RasterInfo
    mov: RasterInfo
    georef: GeorefMapping
    correction: Transform
    selected: ModelFit
    fits: dict[str, ModelFit]
    bic: dict[str, float]
    matches: Correspondences
    matcher: dict
    tiles: int
    tiles_matched: int
    coarse: dict
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def mapping(self) -> CorrectedMapping:
        """Moving pixel -> reference pixel, corrected."""
        return CorrectedMapping(self.georef, self.correction)

    def residuals_px(self) -> np.ndarray:
        x, y = self.correction.apply(self.matches.pred_px[:, 0], self.matches.pred_px[:, 1])
        return np.hypot(x - self.matches.ref_px[:, 0], y - self.matches.ref_px[:, 1])


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
        reader = _TileReader(ref_ds, mov_ds, options, timings)

        coarse_grid = grid_over(overlap, options.coarse_size, min_scale=work_scale)
        max_offset = options.max_offset_px or 0.25 * max(coarse_grid.width, coarse_grid.height) * coarse_grid.scale
        t = time.perf_counter()
        initial, coarse = _coarse_alignment(reader, matcher, georef, coarse_grid, max_offset, options)
        timings["coarse"] = time.perf_counter() - t
        if initial is None:
            warnings.append(f"coarse alignment failed ({coarse['reason']}); using the georeferencing as is")
            initial = Transform("translation", matrix=np.eye(3))
            residual = max_offset
        else:
            residual = 3.0 * coarse["rmse_px"] + 2.0 * coarse_grid.scale

        tiles = plan_tiles(overlap, work_scale, options.tile_size, options.tile_overlap, options.max_tiles)
        fine_offset = max(4.0, residual / work_scale)
        threshold = options.ransac_threshold_px * work_scale
        for refinement in range(1 + options.refinements):
            matches, n_matched = _match_tiles(reader, matcher, georef, initial, tiles, fine_offset,
                                              progress, timings)
            log.info("pass %d: %d matches in %d of %d tiles", refinement + 1, len(matches), n_matched, len(tiles))
            t = time.perf_counter()
            fits, selected, bic = _fit(matches, overlap, threshold, options)
            timings["fit"] += time.perf_counter() - t
            initial, fine_offset = selected.transform, 4.0
    timings["total"] = time.perf_counter() - t_start
    return RegistrationResult(
        ref=ref, mov=mov, georef=georef, correction=selected.transform, selected=selected, fits=fits,
        bic=bic, matches=matches, matcher=matcher.describe(), tiles=len(tiles), tiles_matched=n_matched,
        coarse=coarse, timings_s=timings, warnings=warnings,
    )


class _TileReader:
    """Reads the reference and the moving raster onto one grid, screened and scaled."""

    def __init__(self, ref_ds, mov_ds, options: RegisterOptions, timings: dict[str, float]):
        self.ref_ds, self.mov_ds, self.options, self.timings = ref_ds, mov_ds, options, timings

    def pair(self, grid: Grid, mov_coords, max_offset: float) -> TilePair | None:
        t = time.perf_counter()
        ref_v, ref_ok = sample_onto_grid(self.ref_ds, [self.options.ref_band], grid.to_ref, grid.shape)
        mov_v, mov_ok = sample_onto_grid(
            self.mov_ds, [self.options.mov_band], lambda u, v: mov_coords(*grid.to_ref(u, v)), grid.shape
        )
        self.timings["read"] += time.perf_counter() - t
        ok = ref_ok & mov_ok
        if ok.mean() < self.options.min_valid_fraction:
            return None
        ref_img = normalise_contrast(ref_v[0], ref_ok)
        mov_img = normalise_contrast(mov_v[0], mov_ok)
        if min(gradient_energy(ref_img)[ok].mean(), gradient_energy(mov_img)[ok].mean()) < self.options.min_texture:
            return None
        return TilePair(ref_img, mov_img, ref_ok, mov_ok, max_offset=max_offset,
                        ref_modality=self.options.ref_modality, mov_modality=self.options.mov_modality)


def _working_scale(georef: GeorefMapping, mov: RasterInfo) -> float:
    """Reference pixels per working pixel: the coarser of the two resolutions, so a
    coarse thermal band is not matched against needlessly fine optical detail."""
    cx, cy = mov.width / 2, mov.height / 2
    x, y = georef.apply(np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
    mov_px_in_ref = math.sqrt(abs((x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])))
    return mov_px_in_ref if mov_px_in_ref > 1.5 else 1.0


def _coarse_alignment(reader: _TileReader, matcher: Matcher, georef: GeorefMapping, grid: Grid,
                      max_offset: float, options: RegisterOptions) -> tuple[Transform | None, dict]:
    """Match the whole overlap at low resolution; an initial correction or None."""
    info: dict = {"scale": round(grid.scale, 4), "size": [grid.width, grid.height]}
    pair = reader.pair(grid, georef.inverse, max_offset / grid.scale)
    if pair is None:
        info["reason"] = "overlap mostly nodata or textureless at coarse level"
        return None, info
    found = matcher.match([pair])[0]
    info["matches"] = len(found)
    if len(found) < 4:
        info["reason"] = f"{len(found)} matches"
        return None, info
    src = np.column_stack(grid.to_ref(found.mov_xy[:, 0], found.mov_xy[:, 1]))
    dst = np.column_stack(grid.to_ref(found.ref_xy[:, 0], found.ref_xy[:, 1]))
    threshold = max(options.ransac_threshold_px * grid.scale, 1.0)
    fits = fit_all(src, dst, threshold, kinds=("translation", "similarity", "affine"),
                   weights=found.confidence, seed=options.seed)
    if not fits:
        info["reason"] = "no consistent model"
        return None, info
    kind, _ = select_model(fits, src, dst)
    chosen = fits[kind]
    info.update({"model": kind, "inliers": chosen.n_inliers, "rmse_px": round(chosen.rmse_px, 4)})
    return chosen.transform, info


def _match_tiles(reader: _TileReader, matcher: Matcher, georef: GeorefMapping, initial: Transform,
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


def _fit(matches: Correspondences, overlap: Polygon, threshold: float,
         options: RegisterOptions) -> tuple[dict[str, ModelFit], ModelFit, dict[str, float]]:
    if len(matches) < options.min_inliers:
        raise RegistrationError(
            f"only {len(matches)} matches were found (at least {options.min_inliers} needed); "
            "check that the rasters show the same area, or try another --matcher or a larger --max-tiles"
        )
    kinds = KINDS if options.model == "auto" else (options.model,)
    src, dst = matches.pred_px, matches.ref_px
    fits = fit_all(src, dst, threshold, kinds=kinds, weights=matches.confidence, seed=options.seed)
    if options.model == "auto":
        fits = _drop_unsupported(fits, src, overlap)
    if not fits:
        which = "geometric" if options.model == "auto" else options.model
        raise RegistrationError(f"no {which} model is consistent with the {len(matches)} matches")
    kind, bic = select_model(fits, src, dst) if len(fits) > 1 else (next(iter(fits)), {})
    chosen = fits[kind]
    if chosen.n_inliers < options.min_inliers:
        raise RegistrationError(
            f"only {chosen.n_inliers} inliers for the {kind} model (at least {options.min_inliers} needed)"
        )
    return fits, chosen, bic


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


@dataclass(frozen=True)
class OutputOptions:
    """Where and how to write; None paths are not written."""

    raster: str | None = None
    report: str | None = None
    tiepoints: str | None = None
    grid: str = "reference"
    resample: bool = True
    resampling: Resampling = Resampling.bilinear
    nodata: float | None = None
    creation_options: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise UsageError(f"unknown grid {self.grid!r}; choose one of: {', '.join(GRIDS)}")
        if self.resampling not in SUPPORTED_RESAMPLING:
            names = ", ".join(r.name for r in SUPPORTED_RESAMPLING)
            raise UsageError(f"resampling {self.resampling.name} is not supported; choose one of: {names}")
        paths = [p for p in (self.raster, self.report, self.tiepoints) if p]
        if len({str(Path(p).resolve()) for p in paths}) < len(paths):
            raise UsageError("the raster, report and tie-point outputs must be different files")


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
        if outputs.report and not isinstance(error, OutputExistsError):
            report = build_failure_report(ref_path, mov_path, error, _info_or_none(ref_path, options.ref_band),
                                          _info_or_none(mov_path, options.mov_band))
            write_text(outputs.report, to_json(report), outputs.overwrite)
        raise
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
        write_text(outputs.report, to_json(build_report(result, ref_path, mov_path)), outputs.overwrite)
    return result


def _info_or_none(path: str, band: int) -> RasterInfo | None:
    """Describe a raster for a failure report, or None if it cannot even be opened."""
    try:
        with open_raster(path, band) as ds:
            return describe(ds)
    except DmregError:
        return None
