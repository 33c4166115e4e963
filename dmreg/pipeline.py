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
import shapely
from rasterio.enums import Resampling
from shapely.geometry import MultiPoint, Polygon

from dmreg.errors import DmregError, FlaggedError, OutputExistsError, RegistrationError, UsageError
from dmreg.estimate.models import KINDS, Transform
from dmreg.estimate.robust import ModelFit, fit_all, summarise_fit
from dmreg.estimate.selection import CVScore, choose_model
from dmreg.estimate.uncertainty import Uncertainty, bootstrap_uncertainty
from dmreg.geometry.footprint import overlap_in_reference
from dmreg.geometry.mapping import CHECK_GRID_SIZE, CorrectedMapping, GeorefMapping, check_points
from dmreg.geometry.tiling import Grid, grid_over, plan_tiles
from dmreg.io.raster import RasterInfo, check_readable, describe, gdal_env, open_raster
from dmreg.io.sampling import SUPPORTED_RESAMPLING, normalise_contrast, sample_onto_grid
from dmreg.io.writing import check_output, write_text
from dmreg.matchers import Matcher, TilePair, get_matcher
from dmreg.matchers.structure import gradient_energy
from dmreg.output import GRIDS, write_aligned
from dmreg.report import build_failure_report, build_report, tie_points_geojson, to_json

log = logging.getLogger("dmreg")

COARSE_KINDS = ("translation", "similarity", "affine")
IDENTITY = Transform("translation", matrix=np.eye(3))
ORIENTATION_SEARCH_SIZE = 256   # longest side of the grid the orientations are tried on
DEFAULT_ROTATION_STEP_DEG = 15.0  # for matchers that do not say what rotation they tolerate
SEARCH_SPREAD = 1.5
"""Matchers accept matches up to 1.5 x ``max_offset`` from the prediction: the radius of
the disk a random match falls in, for the a-contrario test."""

ProgressFn = Callable[[int, int], None]
"""Called as progress(done, total) after each batch of tiles."""


MODEL_CHOICES = ("auto", *KINDS, "local")
"""``--model``: auto (chosen by cross-validation), a global kind, or local (a smooth field
on top of the best global kind)."""


@dataclass(frozen=True)
class RegisterOptions:
    """Everything that steers one registration; the defaults suit 10-100 m imagery."""

    ref_band: int = 1
    mov_band: int = 1
    matcher: str = "structural"
    weights: str | None = None        # learned matchers: a shipped name or a path
    device: str = "auto"              # learned matchers: auto, cpu, cuda, cuda:N
    model: str = "auto"               # auto, local or one of estimate.models.KINDS
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
    max_error_px: float | None = None  # predicted CE90 above this: flagged (FlaggedError), nothing written
    rotation_search: bool | None = None  # None: on for pixel-space pairs, off for georeferenced ones
    flip: bool = False                # rotation search also tries the mirrored image
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_CHOICES:
            raise UsageError(f"unknown model {self.model!r}; choose one of: {', '.join(MODEL_CHOICES)}")
        if self.tile_size < 64:
            raise UsageError("--tile-size must be at least 64 pixels")
        if not 0 <= self.tile_overlap < self.tile_size:
            raise UsageError("--tile-overlap must be between 0 and the tile size")
        if self.max_tiles < 1:
            raise UsageError("--max-tiles must be at least 1")
        if self.ransac_threshold_px <= 0:
            raise UsageError("--ransac-threshold must be positive")
        if self.max_error_px is not None and not self.max_error_px > 0:
            raise UsageError("--max-error must be positive")
        if self.flip and self.rotation_search is False:
            raise UsageError("--flip is part of the rotation search: it cannot be combined with --no-rotation-search")


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
    scores: dict[str, CVScore]
    matches: Correspondences
    matcher: dict
    tiles: int
    tiles_matched: int
    coarse: dict
    uncertainty: Uncertainty | None = None  # at the report's check grid
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
        search = options.rotation_search if options.rotation_search is not None else not ref.georeferenced
        turn, orientation = (_search_orientation(reader, matcher, georef, overlap, work_scale, options) if search
                             else (IDENTITY, None))
        initial, coarse = _coarse_alignment(reader, matcher, georef, coarse_grid, max_offset, options, turn)
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
                      max_offset: float, options: RegisterOptions,
                      turn: Transform = IDENTITY) -> tuple[Transform | None, dict]:
    """Match the whole overlap at low resolution; an initial correction or None.
    ``turn`` (from the orientation search) is applied to the moving raster first."""
    info: dict = {"scale": round(grid.scale, 4), "size": [grid.width, grid.height]}
    found = _coarse_matches(reader, matcher, georef, grid, max_offset, turn)
    if isinstance(found, str):
        info["reason"] = found
        return None, info
    src, dst, confidence = found
    info["matches"] = len(src)
    threshold = max(options.ransac_threshold_px * grid.scale, 1.0)
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


def _coarse_matches(reader: _TileReader, matcher: Matcher, georef: GeorefMapping, grid: Grid, max_offset: float,
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


def _search_orientation(reader: _TileReader, matcher: Matcher, georef: GeorefMapping, overlap: Polygon,
                        work_scale: float, options: RegisterOptions) -> tuple[Transform, dict]:
    """The orientation (and, with ``flip``, mirroring) of the moving raster under which
    the coarse matches are most meaningful, tried over the full circle on a small grid at
    the step the matcher tolerates (``rotation_step_deg``)."""
    grid = grid_over(overlap, ORIENTATION_SEARCH_SIZE, min_scale=work_scale)
    max_offset = 0.25 * max(grid.width, grid.height) * grid.scale
    threshold = max(options.ransac_threshold_px * grid.scale, 1.0)
    step = float(getattr(matcher, "rotation_step_deg", DEFAULT_ROTATION_STEP_DEG))
    centre = overlap.centroid
    trials = [(angle, mirrored) for mirrored in ((False, True) if options.flip else (False,))
              for angle in np.arange(0.0, 360.0, step)]
    best = (math.inf, IDENTITY, 0.0, False)
    for angle, mirrored in trials:
        turn = _turn(float(angle), mirrored, centre.x, centre.y)
        found = _coarse_matches(reader, matcher, georef, grid, max_offset, turn)
        if isinstance(found, str):
            continue
        fits = fit_all(*found[:2], threshold, kinds=("similarity", "affine"), weights=found[2], seed=options.seed,
                       search_radius=SEARCH_SPREAD * max_offset)
        score = min((f.consensus.log10_nfa for f in fits.values()), default=math.inf)
        if score < best[0]:
            best = (score, turn, float(angle), mirrored)
    score, turn, angle, mirrored = best
    info = {"tried": len(trials), "step_deg": step, "angle_deg": angle, "mirrored": mirrored,
            "log10_nfa": round(score, 2) if math.isfinite(score) else None}
    return turn, info


def _turn(angle_deg: float, mirrored: bool, cx: float, cy: float) -> Transform:
    """Rotation by ``angle_deg`` (after a left-right mirror) about (cx, cy)."""
    a = math.radians(angle_deg)
    m = np.diag([-1.0, 1.0, 1.0]) if mirrored else np.eye(3)
    rotate = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    about = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    return Transform("affine", matrix=about @ rotate @ m @ np.linalg.inv(about))


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
        write_text(outputs.report, to_json(build_report(result, ref_path, mov_path)), outputs.overwrite)
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
        report = build_report(result, ref_path, mov_path, status="flagged", flag=reason)
        write_text(outputs.report, to_json(report), outputs.overwrite)
    raise FlaggedError(reason, result)


def _info_or_none(path: str, band: int) -> RasterInfo | None:
    """Describe a raster for a failure report, or None if it cannot even be opened."""
    try:
        with open_raster(path, band) as ds:
            return describe(ds)
    except DmregError:
        return None
