"""`dmreg evaluate`: registration accuracy of one or more matchers over pairs with known truth."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .console import configure_logging, exit_codes, stderr
from .options import (Debug, Device, MaxError, MaxOffset, MaxTiles, TargetError, MinInliers, SarScale, RpcHeight, Dem, GcpTps, Model, MovBand, Overwrite, Quiet,
                      RansacThreshold, RefBand, TileOverlap, TileSize, Verbose, Weights, register_options)
from dmreg.errors import UsageError
from dmreg.evaluate import (ALL, AUC_MAX_PX, SUCCESS_THRESHOLDS_PX, WRONG_PX, Evaluation, PairResult, load_manifest,
                            parse_matchers, run_evaluation, select_pairs)
from dmreg.evaluate.manifest import find_manifest
from dmreg.io.writing import check_output, write_text
from dmreg.matchers import MATCHERS
from dmreg.pipeline import RegisterOptions
from dmreg.report import to_json

log = logging.getLogger("dmreg")
stdout = Console()
DEFAULTS = RegisterOptions()  # the register defaults, stated once in the library


def evaluate_command(
    pairs: Annotated[Path, typer.Argument(
        help="Folder with manifest.json or manifest.csv, or a manifest file (pairs with their true mapping).")],
    matcher: Annotated[str | None, typer.Option(
        "--matcher", help=f"One matcher ({', '.join(MATCHERS)}), NAME@WEIGHTS for learned weights; default "
        "structural.")] = None,
    compare: Annotated[str | None, typer.Option(
        "--compare", help="Several matchers in one run, comma-separated: structural,sift,distillmatch@WEIGHTS.",
    )] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the summary and every pair's result as JSON (schema dmreg.evaluate/1).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N (selected) pairs.")] = None,
    contains: Annotated[str | None, typer.Option(
        "--filter", help="Keep pairs whose name or modality pair contains this text (case-insensitive).")] = None,
    weights: Weights = None,
    device: Device = DEFAULTS.device,
    model: Model = DEFAULTS.model,
    ref_band: RefBand = DEFAULTS.ref_band,
    mov_band: MovBand = DEFAULTS.mov_band,
    sar_scale: SarScale = DEFAULTS.sar_scale,
    rpc_height: RpcHeight = None,
    dem: Dem = None,
    gcp_tps: GcpTps = False,
    tile_size: TileSize = DEFAULTS.tile_size,
    tile_overlap: TileOverlap = DEFAULTS.tile_overlap,
    max_tiles: MaxTiles = DEFAULTS.max_tiles,
    target_error: TargetError = DEFAULTS.target_error_px,
    max_offset: MaxOffset = DEFAULTS.max_offset_px,
    ransac_threshold: RansacThreshold = DEFAULTS.ransac_threshold_px,
    min_inliers: MinInliers = DEFAULTS.min_inliers,
    max_error: MaxError = None,
    seed: Annotated[int, typer.Option("--seed", help="RANSAC seed.")] = DEFAULTS.seed,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
    debug: Debug = False,
) -> None:
    """Register every pair of PAIRS with each matcher, as `dmreg register` would, and measure the error against the truth.

    Prints per matcher and modality pair the success rate at 1, 3, 5 and 10 px, the median error, the AUC of the error curve up to 10 px, the mean time per pair, the failures, the pairs register would flag (--max-error or its default, an unknown predicted error, a weak consensus, or matches that follow the model they were read through; no raster is written: they count as failed, their error is still in the JSON) and the wrong answers reported as good (ok, yet more than 3 px off beyond how exact the truth is). A pair that fails to register counts as an infinite error. --ref-band/--mov-band apply to pairs whose manifest entry names no band.

    Exit codes: 0 evaluated (whatever the accuracy), 2 usage or malformed manifest, 3 manifest or image missing, 6 --json output exists (use --overwrite).
    """
    configure_logging(quiet, verbose)
    with exit_codes(debug):
        if matcher is not None and compare is not None:
            raise UsageError("give --matcher (one) or --compare (several), not both")
        specs = parse_matchers(compare.split(",") if compare is not None else [matcher or "structural"], weights)
        options = register_options(
            matcher=specs[0].name, weights=specs[0].weights, device=device, model=model, ref_band=ref_band,
            mov_band=mov_band, ref_modality=None, mov_modality=None, tile_size=tile_size, tile_overlap=tile_overlap,
            max_tiles=max_tiles, sar_scale=sar_scale, rpc_height=rpc_height, dem=dem, gcp_tps=gcp_tps, target_error=target_error, max_offset=max_offset, ransac_threshold=ransac_threshold, min_inliers=min_inliers, max_error=max_error,
        )
        options = replace(options, seed=seed)
        check_output(json_out, overwrite)
        manifest = find_manifest(pairs)
        selected = select_pairs(load_manifest(manifest), contains, limit)
        if not selected:
            raise UsageError(f"no pair of {manifest} contains {contains!r}" if contains else f"{manifest}: no pairs")
        log.info("%d pairs x %d matcher(s) from %s", len(selected), len(specs), manifest)
        show_bar = not quiet and stderr.is_terminal
        with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=stderr, disable=not show_bar, transient=True) as bar:
            task = bar.add_task("pairs", total=len(selected) * len(specs))

            def progress(row: PairResult, done: int, total: int) -> None:
                bar.update(task, completed=done)
                _log_pair(row, done, total, echo=not quiet and not show_bar and not verbose)

            evaluation = run_evaluation(selected, specs, options, progress,
                                        info={"manifest": str(manifest.resolve()), "filter": contains, "limit": limit})
        if json_out is not None:
            write_text(json_out, to_json(evaluation.document()), overwrite)
        if not quiet:
            stdout.print(summary_table(evaluation))
            if json_out is not None:
                stderr.print(f"results: {json_out}", highlight=False)


def summary_table(evaluation: Evaluation) -> Table:
    """Per matcher a heading row, one row per modality pair and its total over all pairs
    (bold): n pairs, success rates, median error (px), AUC of the error curve up to
    AUC_MAX_PX, mean seconds per pair, failures, flagged pairs, pairs reported ok yet
    more than WRONG_PX off beyond the truth's tolerance, and how exact the truth of the
    group's pairs is ("±truth", e.g. Sentinel-1 against Sentinel-2)."""
    n = len({r.name for r in evaluation.rows})
    title = (f"dmreg evaluate: {n} pair(s); error in px, failed and flagged pairs count as infinite, AUC up to "
             f"{AUC_MAX_PX:g} px; wrong: ok yet over {WRONG_PX:g} px off beyond ±truth")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    table.add_column("matcher / modalities", overflow="fold", min_width=12)
    numeric = ["n", *(f"SR@{t:g}" for t in SUCCESS_THRESHOLDS_PX), "median", "AUC", "s", "fail", "flag", "wrong", "±truth"]
    for name in numeric:
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    matcher = None
    for s in evaluation.summaries:
        total = s.modalities == ALL
        if s.matcher != matcher:
            matcher = s.matcher
            table.add_row(Text(matcher, style="bold"))
        table.add_row(
            Text(f"  {s.modalities}"), str(s.pairs), *(_rate(v) for v in s.success_rates.values()),
            _px(s.median_error_px), _rate(s.auc), f"{s.mean_time_s:.2f}", str(s.failures),
            str(s.flagged), str(s.wrong_ok),
            f"{s.truth_tolerance_px:g}" if s.truth_tolerance_px else "-",
            style="bold" if total else None, end_section=total,
        )
    return table


def _rate(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN: no pairs


def _px(value: float) -> str:
    return "inf" if value == float("inf") else "-" if value != value else f"{value:.3f}"


def _log_pair(row: PairResult, done: int, total: int, echo: bool) -> None:
    if row.status == "failed":
        line = f"[{done}/{total}] {row.matcher} {row.name}: failed (exit {row.exit_code}): {row.error}"
    elif row.status == "flagged":
        line = (f"[{done}/{total}] {row.matcher} {row.name}: flagged (exit {row.exit_code}): {row.error}; error "
                f"{row.error_px:.3f} px (max {row.max_error_px:.3f}), {row.time_s:.2f} s")
    else:
        line = (f"[{done}/{total}] {row.matcher} {row.name}: {row.model}, error {row.error_px:.3f} px "
                f"(max {row.max_error_px:.3f}), {row.time_s:.2f} s")
    log.info(line)
    if echo:
        stderr.print(line, highlight=False, markup=False)
