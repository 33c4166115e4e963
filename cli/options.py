"""Options shared by several commands, defined once."""

from __future__ import annotations

from typing import Annotated

import typer
from rasterio.enums import Resampling

from dmreg.errors import UsageError
from dmreg.io.sar import SAR_SCALES
from dmreg.matchers import MATCHERS, MODALITIES
from dmreg.pipeline import MODEL_CHOICES, OutputOptions, RegisterOptions

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only (for cron).")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail; repeat for debug logs.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
CreationOptions = Annotated[
    list[str] | None,
    typer.Option("--co", metavar="NAME=VALUE", help="GeoTIFF creation option, repeatable (e.g. --co COMPRESS=ZSTD)."),
]

# how to register: `dmreg register` and `dmreg batch` take the same options
MatcherName = Annotated[str, typer.Option("--matcher", help=f"Matcher: {', '.join(MATCHERS)}.")]
Weights = Annotated[str | None, typer.Option(
    "--weights", help="Learned matcher weights: a shipped name (see `dmreg models`) or a path.")]
Device = Annotated[str, typer.Option("--device", help="Learned matcher device: auto, cpu, cuda or cuda:N.")]
Model = Annotated[str, typer.Option("--model", help=(
    f"{', '.join(MODEL_CHOICES)}. auto: the model that best predicts held-out tiles; local: a smooth field of "
    "local shifts on top of the best global model."))]
RefBand = Annotated[int, typer.Option("--ref-band", help="Reference band used for matching (1-based).")]
MovBand = Annotated[int, typer.Option("--mov-band", help="Moving band used for matching (1-based).")]
RefModality = Annotated[str | None, typer.Option("--ref-modality", help=f"Hint: {', '.join(MODALITIES)}.")]
MovModality = Annotated[str | None, typer.Option("--mov-modality", help=f"Hint: {', '.join(MODALITIES)}.")]
SarScale = Annotated[str, typer.Option("--sar-scale", help=(
    f"Scale SAR rasters (complex ones, or those hinted --*-modality sar) are matched in: {', '.join(SAR_SCALES)}. "
    "Complex data is multilooked (intensity averaged) before decimation; linear and dB products look alike in db."))]
RpcHeight = Annotated[float | None, typer.Option("--rpc-height", help=(
    "Rasters georeferenced by RPCs: the terrain's height in metres above the ellipsoid (default 0)."))]
Dem = Annotated[str | None, typer.Option("--dem", help=(
    "Rasters georeferenced by RPCs: a DEM (any GDAL raster, heights in metres above the ellipsoid) to "
    "orthorectify them with."))]
GcpTps = Annotated[bool, typer.Option("--gcp-tps", help=(
    "Rasters georeferenced by GCPs: a thin-plate spline through every GCP instead of GDAL's polynomial "
    "(for GCPs that follow terrain relief, e.g. SAR slant geometry)."))]
TileSize = Annotated[int, typer.Option("--tile-size", help="Tile side in pixels.")]
TileOverlap = Annotated[int, typer.Option("--tile-overlap", help="Overlap between tiles in pixels.")]
MaxTiles = Annotated[int, typer.Option("--max-tiles", help="Most tiles matched (evenly spread).")]
TargetError = Annotated[float, typer.Option("--target-error", help=(
    "Stop matching tiles once the model's predicted error (CE90, working pixels) is this small; 0 matches every "
    "planned tile."))]
Threads = Annotated[int | None, typer.Option("--threads", help=(
    "Threads for matching, reading and writing (default: the DMREG_THREADS environment variable, else every "
    "CPU this process may use)."))]
MaxOffset = Annotated[float | None, typer.Option(
    "--max-offset", help="Largest georeferencing error expected, in reference pixels (default: a quarter of the "
    "overlap).")]
RansacThreshold = Annotated[float, typer.Option("--ransac-threshold", help="RANSAC inlier threshold in pixels.")]
MinInliers = Annotated[int, typer.Option("--min-inliers", help="Fewer inliers than this fails with exit code 5.")]
MaxError = Annotated[float | None, typer.Option(
    "--max-error", help="Flag the result (exit code 9, no raster written) when its predicted error (CE90, "
    "reference pixels) exceeds this or is unknown (inliers in fewer than 3 independent blocks), its consensus "
    "is weak (NFA above 10^-6), or its matches follow the model they were read through (read-through probe) "
    "[default: 2 working pixels; inf: never flag].")]
RotationSearch = Annotated[bool | None, typer.Option(
    "--rotation-search/--no-rotation-search", help="Try orientations over the full circle at the coarse level "
    "(default: on for pixel-space pairs, off for georeferenced ones).")]
Flip = Annotated[bool, typer.Option("--flip", help="The rotation search also tries the mirrored moving image.")]
# how to write
GridName = Annotated[str, typer.Option(
    "--grid", help="Output grid: reference (CRS, transform and size of the reference) or moving (its own, "
    "corrected).")]
OutputFormat = Annotated[str, typer.Option(
    "--of", help="Output format: COG (cloud-optimised GeoTIFF with overviews, the default; --co takes the COG "
    "driver's options, e.g. --co COMPRESS=ZSTD) or GTiff (tiled GeoTIFF, written in one pass: faster).")]
NoResample = Annotated[bool, typer.Option(
    "--no-resample", help="Copy pixels untouched with corrected georeferencing (geotransform or GCPs).")]
ResamplingName = Annotated[str, typer.Option("--resampling", help=(
    "auto (nearest for class rasters: paletted or thematic bands; bilinear otherwise), nearest, bilinear, cubic "
    "or lanczos."))]
DstNodata = Annotated[float | None, typer.Option(
    "--dst-nodata", help="Nodata value of the output (default: the moving raster's, else 0 / NaN).")]

RESAMPLING_NAMES = ("auto", "nearest", "bilinear", "cubic", "lanczos")


def parse_creation_options(items: list[str] | None) -> dict[str, str]:
    """``["COMPRESS=ZSTD", ...]`` -> ``{"compress": "ZSTD"}``; UsageError on a malformed item."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--co {item!r}: expected NAME=VALUE")
        out[name.strip().lower()] = value.strip()
    return out


def register_options(*, matcher: str, weights: str | None, device: str, model: str, ref_band: int, mov_band: int,
                     ref_modality: str | None, mov_modality: str | None, tile_size: int, tile_overlap: int,
                     max_tiles: int, max_offset: float | None, ransac_threshold: float,
                     min_inliers: int, max_error: float | None = None, rotation_search: bool | None = None,
                     flip: bool = False, target_error: float = RegisterOptions.target_error_px,
                     sar_scale: str = RegisterOptions.sar_scale, rpc_height: float | None = None,
                     dem: str | None = None, gcp_tps: bool = False) -> RegisterOptions:
    """RegisterOptions from command-line values (it validates them itself)."""
    return RegisterOptions(
        ref_band=ref_band, mov_band=mov_band, matcher=matcher, weights=weights, device=device, model=model,
        tile_size=tile_size, tile_overlap=tile_overlap, max_tiles=max_tiles, max_offset_px=max_offset,
        ransac_threshold_px=ransac_threshold, min_inliers=min_inliers,
        ref_modality=ref_modality, mov_modality=mov_modality, max_error_px=max_error,
        rotation_search=rotation_search, flip=flip, target_error_px=target_error, sar_scale=sar_scale,
        rpc_height=rpc_height, dem=dem, gcp_tps=gcp_tps,
    )


def output_options(*, grid: str, no_resample: bool, resampling: str, dst_nodata: float | None,
                   co: list[str] | None, overwrite: bool, raster: str | None = None, report: str | None = None,
                   tiepoints: str | None = None, driver: str = "GTiff") -> OutputOptions:
    """OutputOptions from command-line values (paths may be filled in later, per pair)."""
    if no_resample and grid != "reference":
        raise UsageError("--no-resample keeps the moving pixels as they are: it cannot be combined with --grid")
    if resampling not in RESAMPLING_NAMES:
        raise UsageError(f"unknown resampling {resampling!r}; choose {', '.join(RESAMPLING_NAMES)}")
    return OutputOptions(raster=raster, report=report, tiepoints=tiepoints, grid=grid, driver=driver,
                         resample=not no_resample,
                         resampling=None if resampling == "auto" else Resampling[resampling], nodata=dst_nodata,
                         creation_options=parse_creation_options(co), overwrite=overwrite)
