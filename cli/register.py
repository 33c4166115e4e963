"""`dmreg register`: co-register one moving raster to a reference."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rasterio.enums import Resampling
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .console import configure_logging, exit_codes, stderr
from .options import CreationOptions, Debug, Overwrite, Quiet, Verbose, parse_creation_options
from dmreg.errors import UsageError
from dmreg.estimate.models import KINDS
from dmreg.matchers import MATCHERS, MODALITIES
from dmreg.pipeline import OutputOptions, RegisterOptions, RegistrationResult, register

log = logging.getLogger("dmreg")


def register_command(
    reference: Annotated[Path, typer.Argument(help="Reference raster (its grid is the target).")],
    moving: Annotated[Path, typer.Argument(help="Moving raster to align to the reference.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Aligned raster (GeoTIFF).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Report JSON (schema dmreg.report/1).")] = None,
    tiepoints: Annotated[Path | None, typer.Option("--tiepoints", help="Tie points as GeoJSON.")] = None,
    matcher: Annotated[str, typer.Option(help=f"Matcher: {', '.join(MATCHERS)}.")] = "structural",
    weights: Annotated[str | None, typer.Option(help="Learned matcher weights: a shipped name (see `dmreg models`) or a path.")] = None,
    device: Annotated[str, typer.Option(help="Learned matcher device: auto, cpu, cuda or cuda:N.")] = "auto",
    model: Annotated[str, typer.Option(help=f"auto or one of: {', '.join(KINDS)}.")] = "auto",
    ref_band: Annotated[int, typer.Option(help="Reference band used for matching (1-based).")] = 1,
    mov_band: Annotated[int, typer.Option(help="Moving band used for matching (1-based).")] = 1,
    ref_modality: Annotated[str | None, typer.Option(help=f"Hint: {', '.join(MODALITIES)}.")] = None,
    mov_modality: Annotated[str | None, typer.Option(help=f"Hint: {', '.join(MODALITIES)}.")] = None,
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels.")] = 512,
    tile_overlap: Annotated[int, typer.Option(help="Overlap between tiles in pixels.")] = 32,
    max_tiles: Annotated[int, typer.Option(help="Most tiles matched (evenly spread).")] = 100,
    max_offset: Annotated[float | None, typer.Option(help="Largest georeferencing error expected, in reference pixels (default: a quarter of the overlap).")] = None,
    ransac_threshold: Annotated[float, typer.Option(help="RANSAC inlier threshold in pixels.")] = 1.5,
    min_inliers: Annotated[int, typer.Option(help="Fewer inliers than this fails with exit code 5.")] = 12,
    grid: Annotated[str, typer.Option(help="Output grid: reference (CRS, transform and size of the reference) or moving (its own, corrected).")] = "reference",
    no_resample: Annotated[bool, typer.Option("--no-resample", help="Copy pixels untouched with corrected georeferencing (geotransform or GCPs).")] = False,
    resampling: Annotated[str, typer.Option(help="nearest, bilinear, cubic or lanczos.")] = "bilinear",
    dst_nodata: Annotated[float | None, typer.Option(help="Nodata value of the output (default: the moving raster's, else 0 / NaN).")] = None,
    co: CreationOptions = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "--estimate-only", help="Estimate and report; write no raster.")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
    debug: Debug = False,
) -> None:
    """Co-register MOVING to REFERENCE and write the aligned raster and reports.

    Exit codes: 0 ok, 2 usage, 3 input unreadable/invalid, 4 no overlap,
    5 registration failed, 6 output exists (use --overwrite).
    """
    configure_logging(quiet, verbose)
    with exit_codes(debug):
        if output is None and not dry_run and report is None and tiepoints is None:
            raise UsageError("nothing to write: give -o/--output, --report or --tiepoints (or --dry-run)")
        if no_resample and grid != "reference":
            raise UsageError("--no-resample keeps the moving pixels as they are: it cannot be combined with --grid")
        if resampling not in ("nearest", "bilinear", "cubic", "lanczos"):
            raise UsageError(f"unknown resampling {resampling!r}; choose nearest, bilinear, cubic or lanczos")
        for flag, value in (("--ref-modality", ref_modality), ("--mov-modality", mov_modality)):
            if value is not None and value not in MODALITIES:
                raise UsageError(f"{flag} {value!r}: choose one of {', '.join(MODALITIES)}")
        options = RegisterOptions(
            ref_band=ref_band, mov_band=mov_band, matcher=matcher, weights=weights, device=device, model=model, tile_size=tile_size,
            tile_overlap=tile_overlap, max_tiles=max_tiles, max_offset_px=max_offset,
            ransac_threshold_px=ransac_threshold, min_inliers=min_inliers,
            ref_modality=ref_modality, mov_modality=mov_modality,
        )
        outputs = OutputOptions(
            raster=None if dry_run or output is None else str(output),
            report=str(report) if report else None,
            tiepoints=str(tiepoints) if tiepoints else None,
            grid=grid, resample=not no_resample, resampling=Resampling[resampling], nodata=dst_nodata,
            creation_options=parse_creation_options(co), overwrite=overwrite,
        )
        show_progress = not quiet and stderr.is_terminal
        with Progress(TextColumn("matching tiles"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=stderr, disable=not show_progress, transient=True) as bar:
            task = bar.add_task("tiles", total=None)
            result = register(str(reference), str(moving), options, outputs,
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
    table.add_row("tiles matched", f"{result.tiles_matched} / {result.tiles}")
    gx, gy = result.georef.apply(np.array([result.mov.width / 2]), np.array([result.mov.height / 2]))
    cx, cy = result.correction.apply(gx, gy)
    table.add_row("correction at centre", f"dx {float(cx[0] - gx[0]):+.2f} px, dy {float(cy[0] - gy[0]):+.2f} px")
    table.add_row("time", f"{result.timings_s.get('total', 0.0):.2f} s")
    table.add_row("output", str(output) if output else "(none: estimate only)")
    return table
