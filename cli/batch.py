"""`dmreg batch`: register many pairs into one output folder (cron-safe, resumable)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .console import configure_logging, exit_codes, stderr
from .options import (CreationOptions, Debug, Dem, Device, DstNodata, Flip, GcpTps, GridName, MatcherName, MaxError,
                      MaxOffset, MaxTiles, MinInliers, Model, MovBand, MovModality, NoResample, OutputFormat, Quiet,
                      RansacThreshold, RefBand, RefModality, ResamplingName, RotationSearch, RpcHeight, SarScale,
                      TargetError, TileOverlap, TileSize, Verbose, Weights, output_options, register_options)
from .report import pairs_table
from dmreg.batch.pairing import Pair, find_rasters, pairs_by_footprint, pairs_from_manifest, pairs_with_reference
from dmreg.batch.runner import BatchOptions, run_batch
from dmreg.batch.summary import PairRecord
from dmreg.errors import PAIRS_FAILED, UsageError
from dmreg.options import OutputOptions, RegisterOptions

log = logging.getLogger("dmreg")


def batch_command(
    input_dir: Annotated[Path | None, typer.Argument(help="Folder of moving rasters (not with --manifest).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder (created if missing; one run at a time).")] = ...,
    reference: Annotated[str | None, typer.Option("--reference", help=(
        "One reference for every raster: a file, a /vsi* path or a URL."))] = None,
    reference_dir: Annotated[Path | None, typer.Option(
        "--reference-dir", help="Folder of references: each raster gets the one covering most of it.")] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="CSV of pairs: reference,moving[,output] (paths relative to the CSV).")] = None,
    pattern: Annotated[str, typer.Option("--pattern", help="Glob for raster file names in the folders.")] = "*.tif",
    regex: Annotated[str | None, typer.Option("--regex", help="Only names in which this regex is found.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", help="Look in sub-folders too.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Pairs registered at once (processes).")] = 1,
    executor: Annotated[str, typer.Option("--executor", help="local (processes here) or dask.")] = "local",
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Dask scheduler address (tcp://host:8786); default: a local Dask cluster.")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed pair.")] = False,
    no_qa: Annotated[bool, typer.Option("--no-qa", help="No QA picture per pair.")] = False,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Also log every pair to this file.")] = None,
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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo pairs that are already complete.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
    debug: Debug = False,
) -> None:
    """Register every pair into OUT: per pair NAME.tif, NAME.report.json, NAME.tiepoints.geojson and NAME.qa.png; for the run summary.json and summary.csv.

    A rerun skips complete pairs and redoes partial or failed ones.

    Exit codes: 0 every pair ok or already complete, 2 usage, 3 unreadable manifest or folder, 7 another run holds OUT's lock, 8 one or more pairs failed or were flagged (--max-error or its default, an unknown predicted error, a weak consensus, or matches that follow the model they were read through; each pair's status and code are in the summary), 143 stopped by SIGTERM.
    """
    configure_logging(quiet, verbose)
    signal.signal(signal.SIGTERM, _stop)
    if log_file is not None:
        _log_to_file(log_file)
    with exit_codes(debug):
        options = register_options(
            matcher=matcher, weights=weights, device=device, model=model, ref_band=ref_band, mov_band=mov_band,
            ref_modality=ref_modality, mov_modality=mov_modality, tile_size=tile_size, tile_overlap=tile_overlap,
            max_tiles=max_tiles, sar_scale=sar_scale, rpc_height=rpc_height, dem=dem, gcp_tps=gcp_tps, target_error=target_error, max_offset=max_offset, ransac_threshold=ransac_threshold, min_inliers=min_inliers,
            max_error=max_error, rotation_search=rotation_search, flip=flip,
        )
        outputs = output_options(grid=grid, no_resample=no_resample, resampling=resampling, dst_nodata=dst_nodata,
                                 co=co, overwrite=False, driver=of)
        batch = BatchOptions(out_dir=out, workers=workers, executor=executor, scheduler=scheduler,
                             fail_fast=fail_fast, overwrite=overwrite, qa=not no_qa)
        pairs = _pairs(input_dir, reference, reference_dir, manifest, pattern, regex, recursive, out)
        if not pairs:
            log.warning("no pairs to register (nothing in %s matches %r)", input_dir, pattern)
        log.info("%d pairs, %s executor, %d worker(s), output in %s", len(pairs), executor, workers, out)
        show_bar = not quiet and stderr.is_terminal
        with Progress(TextColumn("registering pairs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=stderr, disable=not show_bar, transient=True) as bar:
            task = bar.add_task("pairs", total=len(pairs))

            def progress(record: PairRecord, done: int, total: int) -> None:
                bar.update(task, completed=done)
                _log_pair(record, done, total, echo=not quiet and not show_bar and not verbose)

            result = run_batch(pairs, options, outputs, batch, progress)
        if not quiet:
            stderr.print(pairs_table({"pairs": [vars(r) for r in result.records], "counts": result.counts}))
            stderr.print(f"summary: {result.summary}", highlight=False)
    if not result.all_ok:
        raise typer.Exit(PAIRS_FAILED)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM (cron's timeout, systemd, kill) unwinds like Ctrl-C: the lock is released,
    the summary keeps every finished pair, workers are not waited for."""
    raise SystemExit(128 + signum)


def _pairs(input_dir: Path | None, reference: str | None, reference_dir: Path | None, manifest: Path | None,
           pattern: str, regex: str | None, recursive: bool, out: Path) -> list[Pair]:
    modes = [flag for flag, value in (("--reference", reference), ("--reference-dir", reference_dir),
                                      ("--manifest", manifest)) if value is not None]
    if len(modes) != 1:
        raise UsageError("give exactly one of --reference, --reference-dir or --manifest")
    if manifest is not None:
        if input_dir is not None:
            raise UsageError("--manifest lists the pairs: give no INPUT_DIR with it")
        return pairs_from_manifest(manifest)
    if input_dir is None:
        raise UsageError("give the folder of moving rasters (INPUT_DIR)")
    movings = [p for p in find_rasters(input_dir, pattern, regex, recursive) if not _inside(p, out)]
    if reference is not None:
        return pairs_with_reference(movings, reference, input_dir)
    return pairs_by_footprint(movings, reference_dir, input_dir, pattern, recursive)


def _inside(path: Path, folder: Path) -> bool:
    """Outputs of an earlier run inside the input folder are not inputs."""
    return folder.resolve() in path.resolve().parents


def _log_pair(record: PairRecord, done: int, total: int, echo: bool) -> None:
    if record.status == "failed":
        line = f"[{done}/{total}] {record.pair}: failed (exit {record.exit_code}): {record.error}"
        log.warning(line)  # shown unless -q
        return
    rmse = f"{record.rmse_px:.3f} px" if record.rmse_px is not None else "-"
    line = f"[{done}/{total}] {record.pair}: {record.status}, {record.model}, RMSE {rmse}"
    log.info(line)  # the log file, and the console with -v
    if echo:
        stderr.print(line, highlight=False)


def _log_to_file(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("dmreg")
    logger.addHandler(handler)
    logger.setLevel(min(logger.level, logging.INFO))
