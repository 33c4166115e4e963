"""The contact sheet of a batch run: every pair's QA picture and caption on one PNG."""

from __future__ import annotations

import math
import textwrap
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from dmreg.batch.summary import STATUSES, status_counts
from dmreg.io.writing import atomic_path
from dmreg.qa import DPI, shorten

SHEET_COLUMNS = 4
SHEET_CELL_IN = 4.0       # width of one contact-sheet cell
SHEET_CELL_PX = 400       # QA pictures are downscaled to this before drawing: memory stays bounded
SHEET_CAPTION_IN = 0.8
SHEET_HEADER_IN = 0.9
MAX_SHEET_PAIRS = 240     # 60 rows: the sheet stays well under Agg's 65536-pixel limit
STATUS_COLOURS = dict(zip(STATUSES, ("#1a7f37", "#3465a4", "#bf8700", "#cf222e", "#6e7781")))


def write_overview_sheet(summary: dict, summary_dir: Path, path: str | Path, *, overwrite: bool = False,
                         max_pairs: int = MAX_SHEET_PAIRS) -> None:
    """Write one PNG with every pair of a batch run (schema dmreg.batch/1): its QA picture
    and a caption, failed pairs framed in red with their error. Relative output paths in
    ``summary`` are taken relative to ``summary_dir``, the folder of summary.json. Beyond
    ``max_pairs``, failed pairs are kept first and the rest are counted in the header."""
    pairs = list(summary.get("pairs") or [])
    shown = _pairs_to_show(pairs, max_pairs)
    columns = max(1, min(SHEET_COLUMNS, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    width = max(columns * SHEET_CELL_IN, 8.0)
    cell_h = SHEET_CELL_IN + SHEET_CAPTION_IN
    height = SHEET_HEADER_IN + rows * cell_h
    with atomic_path(path, overwrite) as tmp:
        fig = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(fig)
        fig.text(0.5, 1 - 0.3 / height, _sheet_title(summary, len(pairs), len(shown)),
                 ha="center", va="center", fontsize=13, weight="bold")
        fig.text(0.5, 1 - 0.65 / height, _sheet_subtitle(summary), ha="center", va="center", fontsize=10,
                 color="#444444")
        x_pad = (width - columns * SHEET_CELL_IN) / 2
        for i, pair in enumerate(shown):
            row, col = divmod(i, columns)
            top = height - SHEET_HEADER_IN - row * cell_h
            box = [(x_pad + col * SHEET_CELL_IN + 0.1) / width, (top - SHEET_CELL_IN + 0.05) / height,
                   (SHEET_CELL_IN - 0.2) / width, (SHEET_CELL_IN - 0.1) / height]
            _sheet_cell(fig.add_axes(box), pair, summary_dir)
            fig.text((x_pad + (col + 0.5) * SHEET_CELL_IN) / width, (top - SHEET_CELL_IN - 0.05) / height,
                     _caption(pair), ha="center", va="top", fontsize=8.5, linespacing=1.4,
                     color=STATUS_COLOURS.get(pair.get("status"), "black"))
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")


def _pairs_to_show(pairs: list[dict], max_pairs: int) -> list[dict]:
    if len(pairs) <= max_pairs:
        return pairs
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].get("status") != "failed")
    return [pairs[i] for i in sorted(order[:max_pairs])]


def _sheet_cell(ax: Axes, pair: dict, summary_dir: Path) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    status = pair.get("status")
    colour = STATUS_COLOURS.get(status, "black")
    if status == "failed":
        for spine in ax.spines.values():
            spine.set(color=colour, linewidth=3)
        message = _wrap(str(pair.get("error") or "no message"), width=44, lines=9)
        ax.text(0.5, 0.93, f"FAILED (exit {pair.get('exit_code')})", transform=ax.transAxes, ha="center", va="top",
                color=colour, fontsize=11, weight="bold")
        ax.text(0.05, 0.8, message, transform=ax.transAxes, ha="left", va="top", fontsize=8, family="monospace")
        return
    if status == "not run":
        _note(ax, "not run")
        return
    qa = (pair.get("outputs") or {}).get("qa")
    if not qa:
        _note(ax, "no QA picture")
        return
    image = _thumbnail(summary_dir / qa)
    if image is None:
        _note(ax, f"QA picture missing or unreadable:\n{_wrap(Path(qa).name, 40, 2)}")
        return
    ax.imshow(image, interpolation="antialiased")
    ax.set_anchor("N")
    for spine in ax.spines.values():
        spine.set_visible(False)


def _thumbnail(path: Path) -> np.ndarray | None:
    """The picture at most SHEET_CELL_PX on its long side, or None if it cannot be read."""
    try:
        image = imread(path)
    except (OSError, ValueError, SyntaxError):
        return None
    rows, cols = image.shape[:2]
    scale = SHEET_CELL_PX / max(rows, cols)
    if scale < 1:
        size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
        image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    return np.clip(image, 0.0, 1.0) if image.dtype.kind == "f" else image


def _note(ax: Axes, text: str) -> None:
    ax.set_facecolor("#f2f2f2")
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#555555", fontsize=10)


def _caption(pair: dict) -> str:
    name = shorten(str(pair.get("pair", "?")), 48)
    status = pair.get("status", "?")
    if status == "failed":
        return f"{name}\nfailed, exit code {pair.get('exit_code')}"
    if status == "not run":
        return f"{name}\nnot run"
    rmse, seconds = pair.get("rmse_px"), pair.get("time_s")
    state = "skipped (done earlier)" if status == "skipped" else str(status)
    numbers = [f"RMSE {rmse:.2f} px" if isinstance(rmse, int | float) else "RMSE ?",
               f"{pair.get('inliers', '?')}/{pair.get('matches', '?')} inliers"]
    if isinstance(seconds, int | float):
        numbers.append(f"{seconds:.1f} s")
    return f"{name}\n{state}, {pair.get('model') or '?'}\n{', '.join(numbers)}"


def _sheet_title(summary: dict, total: int, shown: int) -> str:
    counts = status_counts(summary)
    text = f"dmreg batch: {total} pairs, " + ", ".join(f"{n} {k}" for k, n in counts.items())
    if shown < total:
        text += f"  (showing {shown}, failed first; all are in summary.json)"
    return text


def _sheet_subtitle(summary: dict) -> str:
    parts = []
    if summary.get("started"):
        parts.append(f"started {summary['started']}")
    elapsed = _elapsed(summary.get("started"), summary.get("finished"))
    if elapsed:
        parts.append(f"run time {elapsed}")
    if summary.get("executor"):
        parts.append(f"executor {summary['executor']}, {summary.get('workers', '?')} workers")
    if summary.get("dmreg_version"):
        parts.append(f"dmreg {summary['dmreg_version']}")
    return " | ".join(parts)


def _elapsed(started: str | None, finished: str | None) -> str | None:
    try:
        seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return None
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _wrap(text: str, width: int, lines: int) -> str:
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" ...", break_long_words=True))
