"""`dmreg register`: co-register one moving raster to a reference."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .console import configure_logging, exit_codes, stderr
from .options import (CreationOptions, Debug, Device, DstNodata, Flip, GridName, OutputFormat, MatcherName, MaxError, MaxOffset,
                      MaxTiles, MinInliers, SarScale, RpcHeight, Dem, GcpTps, RotationSearch, Model, MovBand, MovModality, NoResample, Overwrite, Quiet,
                      RansacThreshold, RefBand, RefModality, ResamplingName, TargetError, Threads, TileOverlap,
                      TileSize, Verbose, Weights, output_options, register_options)
from dmreg.errors import UsageError
from dmreg.pipeline import OutputOptions, RegisterOptions, RegistrationResult, register
from dmreg.runtime import set_thread_count

log = logging.getLogger("dmreg")


def register_command(
    reference: Annotated[str, typer.Argument(help=(
        "Reference raster (its grid is the target): a file, a /vsi* path or a URL (https://, s3://, ...)."))],
    moving: Annotated[str, typer.Argument(help="Moving raster to align to the reference (same forms).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Aligned raster (GeoTIFF).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Report JSON (schema dmreg.report/1).")] = None,
    tiepoints: Annotated[Path | None, typer.Option("--tiepoints", help="Tie points as GeoJSON.")] = None,
    matcher: MatcherName = "structural",
    weights: Weights = None,
    device: Device = "auto",
    model: Model = "auto",
    ref_band: RefBand = 1,
    mov_band: MovBand = 1,
    ref_modality: RefModality = None,
    mov_modality: MovModality = None,
    sar_scale: SarScale = RegisterOptions.sar_scale,
    rpc_height: RpcHeight = None,
    dem: Dem = None,
    gcp_tps: GcpTps = False,
    tile_size: TileSize = 512,
    tile_overlap: TileOverlap = 32,
    max_tiles: MaxTiles = 100,
    target_error: TargetError = RegisterOptions.target_error_px,
    max_offset: MaxOffset = None,
    ransac_threshold: RansacThreshold = 1.5,
    min_inliers: MinInliers = 12,
    max_error: MaxError = None,
    rotation_search: RotationSearch = None,
    flip: Flip = False,
    grid: GridName = "reference",
    of: OutputFormat = OutputOptions.driver,
    no_resample: NoResample = False,
    resampling: ResamplingName = "auto",
    dst_nodata: DstNodata = None,
    co: CreationOptions = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "--estimate-only", help="Estimate and report; write no raster.")] = False,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
    debug: Debug = False,
) -> None:
    """Co-register MOVING to REFERENCE and write the aligned raster and reports.

    Exit codes: 0 ok, 2 usage, 3 input unreadable/invalid, 4 no overlap,
    5 registration failed (too few matches, or no model that random matches could not
    explain), 6 output exists (use --overwrite), 9 flagged: predicted error above
    --max-error, by default 2 working pixels, or unknown (inliers in fewer than 3
    independent blocks), a weak consensus, or matches that follow the model they were
    read through (the report is written, the raster is not),
    10 an output could not be written
    (disk full, file size limit; no partial file is left).
    """
    configure_logging(quiet, verbose)
    with exit_codes(debug):
        if output is None and not dry_run and report is None and tiepoints is None:
            raise UsageError("nothing to write: give -o/--output, --report or --tiepoints (or --dry-run)")
        options = register_options(
            matcher=matcher, weights=weights, device=device, model=model, ref_band=ref_band, mov_band=mov_band,
            ref_modality=ref_modality, mov_modality=mov_modality, tile_size=tile_size, tile_overlap=tile_overlap,
            max_tiles=max_tiles, sar_scale=sar_scale, rpc_height=rpc_height, dem=dem, gcp_tps=gcp_tps, max_offset=max_offset, ransac_threshold=ransac_threshold, min_inliers=min_inliers,
            max_error=max_error, rotation_search=rotation_search, flip=flip, target_error=target_error,
        )
        set_thread_count(threads)
        outputs = output_options(
            grid=grid, no_resample=no_resample, resampling=resampling, dst_nodata=dst_nodata, co=co, driver=of,
            overwrite=overwrite, raster=None if dry_run or output is None else str(output),
            report=str(report) if report else None, tiepoints=str(tiepoints) if tiepoints else None,
        )
        show_progress = not quiet and stderr.is_terminal
        with Progress(TextColumn("matching tiles"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=stderr, disable=not show_progress, transient=True) as bar:
            task = bar.add_task("tiles", total=None)
            result = register(reference, moving, options, outputs,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
        for warning in result.warnings:
            log.warning(warning)
        if not quiet:
            stderr.print(summary_table(result, output if outputs.raster else None))


def summary_table(result: RegistrationResult, output: Path | None) -> Table:
    """One screen: model, accuracy, matches, time."""
    q = result.selected
    table = Table(title="dmreg register", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", q.kind)
    table.add_row("RMSE / CE90", f"{q.rmse_px:.3f} px / {q.ce90_px:.3f} px")
    table.add_row("inliers / matches", f"{q.n_inliers} / {len(result.matches)}")
    read = " + ".join(str(p["tiles_read"]) for p in result.passes)
    table.add_row("tiles matched", f"{result.tiles_matched} / {result.tiles} (read per pass: {read})")
    gx, gy = result.georef.apply(np.array([result.mov.width / 2]), np.array([result.mov.height / 2]))
    cx, cy = result.correction.apply(gx, gy)
    table.add_row("correction at centre", f"dx {float(cx[0] - gx[0]):+.2f} px, dy {float(cy[0] - gy[0]):+.2f} px")
    table.add_row("time", f"{result.timings_s.get('total', 0.0):.2f} s")
    table.add_row("output", str(output) if output else "(none: estimate only)")
    return table
