"""`dmreg report`: the pairs of a batch run as a table, and optionally an overview sheet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from .console import configure_logging, exit_codes, stderr
from .options import Debug, Overwrite, Quiet, Verbose
from dmreg.batch.summary import SCHEMA
from dmreg.errors import InputError
from dmreg.io.writing import check_output
from dmreg.batch.summary import status_counts

STATUS_STYLES = {"ok": "green", "skipped": "blue", "failed": "red", "not run": "dim"}


def report_command(
    summary: Annotated[Path, typer.Argument(help="summary.json of a `dmreg batch` run.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Overview sheet PNG.")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
    debug: Debug = False,
) -> None:
    """Show the pairs of a batch run; with -o, draw every pair's QA picture on one sheet.

    Exit codes: 0 ok, 3 summary missing or invalid, 6 output exists (use --overwrite).
    """
    configure_logging(quiet, verbose)
    with exit_codes(debug):
        data = read_summary(summary)
        check_output(output, overwrite, inputs=(summary,))
        if not quiet:
            stderr.print(pairs_table(data))
        if output is not None:
            from dmreg.batch.sheet import write_overview_sheet  # matplotlib: 0.6 s to import, only for pictures

            write_overview_sheet(data, summary.parent, output, overwrite=overwrite)
            if not quiet:
                stderr.print(f"overview sheet: {output}", highlight=False)


def read_summary(path: Path) -> dict:
    """The batch summary, or InputError saying what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); is it the summary.json of a dmreg batch run?") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: not a dmreg batch summary (schema {found!r}, expected {SCHEMA!r})")
    if not isinstance(data.get("pairs"), list) or not all(isinstance(p, dict) for p in data["pairs"]):
        raise InputError(f"{path}: 'pairs' must be a list of objects")
    return data


def pairs_table(summary: dict) -> Table:
    """One row per pair of a batch summary (schema dmreg.batch/1); failed rows in red."""
    counts = status_counts(summary)
    table = Table(title="dmreg batch: " + ", ".join(f"{n} {k}" for k, n in counts.items()), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    pairs = summary.get("pairs") or []
    names = [str(p.get("pair", "?")) for p in pairs]
    # names up to 24 characters stay whole on a narrow terminal; the error column gives way first
    table.add_column("pair", style="bold", overflow="fold", min_width=min(24, max(map(len, names), default=4)))
    table.add_column("status", no_wrap=True)
    table.add_column("exit", justify="right", no_wrap=True)
    # a failed pair has no model: its error takes the place, and only this column and the pair wrap
    table.add_column("model / error", overflow="fold", min_width=14)
    for name in ("RMSE px", "inliers", "time s"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, p in zip(names, pairs):
        status = str(p.get("status", "?"))
        model = p.get("error") if status == "failed" and p.get("error") else p.get("model")
        # Text, not markup: names and messages may hold brackets ("[Errno 2]")
        table.add_row(Text(name), Text(status, style=STATUS_STYLES.get(status, "")),
                      _text(p.get("exit_code")), Text(_text(model)), _number(p.get("rmse_px"), 3), _inliers(p),
                      _number(p.get("time_s"), 1), style="red" if status == "failed" else None)
    return table


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _number(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _inliers(pair: dict) -> str:
    inliers, matches = pair.get("inliers"), pair.get("matches")
    if inliers is None:
        return "-"
    return f"{inliers}/{matches}" if matches is not None else str(inliers)
