"""The run's summary: one record per pair, as JSON (schema dmreg.batch/1) and CSV,
rewritten atomically after every pair so a killed run still leaves a true summary."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dmreg import __version__
from dmreg.io.writing import write_text
from dmreg.report import to_json

SCHEMA = "dmreg.batch/1"
STATUSES = ("ok", "skipped", "flagged", "failed", "not run")
CSV_COLUMNS = ("pair", "status", "exit_code", "model", "rmse_px", "inliers", "matches", "time_s",
               "reference", "moving", "error")


@dataclass
class PairRecord:
    """What happened to one pair. ``skipped``: complete from an earlier run (its numbers
    come from that run's report); ``flagged``: estimated, but its predicted error exceeds
    --max-error (report and QA picture written, no raster); ``not run``: the run stopped
    first (--fail-fast)."""

    pair: str
    reference: str | None
    moving: str
    status: str = "not run"
    exit_code: int | None = None
    model: str | None = None
    rmse_px: float | None = None
    inliers: int | None = None
    matches: int | None = None
    time_s: float | None = None
    error: str | None = None
    outputs: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_report(cls, base: PairRecord, report: dict, status: str, time_s: float | None = None) -> PairRecord:
        quality, model = report.get("quality", {}), report.get("model", {})
        return PairRecord(base.pair, base.reference, base.moving, status=status, exit_code=0,
                          model=model.get("type"), rmse_px=quality.get("rmse_px"), inliers=quality.get("inliers"),
                          matches=quality.get("matches"),
                          time_s=time_s if time_s is not None else report.get("timings_s", {}).get("total"),
                          outputs=base.outputs)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def counts(records: list[PairRecord]) -> dict[str, int]:
    return {status: sum(r.status == status for r in records) for status in STATUSES}


def write_summary(out_dir: Path, header: dict, records: list[PairRecord]) -> Path:
    """Write summary.json and summary.csv in ``out_dir``; returns the JSON's path."""
    summary = {"schema": SCHEMA, "dmreg_version": __version__, **header, "counts": counts(records),
               "pairs": [_clean(asdict(r)) for r in records]}
    json_path = out_dir / "summary.json"
    write_text(json_path, to_json(summary), overwrite=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(record).items()})
    write_text(out_dir / "summary.csv", buffer.getvalue(), overwrite=True)
    return json_path


def _clean(row: dict) -> dict:
    """JSON has no NaN: unknown numbers become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def status_counts(summary: dict) -> dict[str, int]:
    """Pairs per status, counted from the pairs themselves (unknown statuses too)."""
    counts = dict.fromkeys(STATUSES, 0)
    for pair in summary.get("pairs") or []:
        status = str(pair.get("status", "?"))
        counts[status] = counts.get(status, 0) + 1
    return counts
