"""A pair's output files, and whether an earlier run finished them.

The report is written after the raster and the tie points, and the QA picture after
the report; a pair is complete only when all its files exist, its report says "ok"
for the same two inputs and the raster opens. Anything less is redone."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from dmreg.io.raster import gdal_env

TEMP_GLOB = ".*.dmreg-tmp"
"""dmreg.io.writing.atomic_path's temporary files, and the folders of
dmreg.io.cog.intermediate_geotiff (a COG's first GeoTIFF)."""


@dataclass(frozen=True)
class PairOutputs:
    raster: Path
    report: Path
    tiepoints: Path
    qa: Path
    want_qa: bool = True

    @classmethod
    def for_pair(cls, out_dir: Path, name: str, qa: bool) -> PairOutputs:
        return cls(out_dir / f"{name}.tif", out_dir / f"{name}.report.json", out_dir / f"{name}.tiepoints.geojson",
                   out_dir / f"{name}.qa.png", qa)

    def files(self) -> list[Path]:
        """The files a complete pair has."""
        return [self.raster, self.report, self.tiepoints, *([self.qa] if self.want_qa else [])]

    def relative_to(self, folder: Path) -> dict[str, str | None]:
        """Paths relative to ``folder`` (the summary's), so an output folder can be moved."""
        paths = {"raster": self.raster, "report": self.report, "tiepoints": self.tiepoints,
                 "qa": self.qa if self.want_qa else None}
        return {key: (str(p.relative_to(folder)) if p is not None else None) for key, p in paths.items()}

    def clear(self) -> None:
        """Remove what an earlier attempt left before redoing the pair, including a QA
        picture this run will not draw: it would show another registration."""
        for path in (self.raster, self.report, self.tiepoints, self.qa):
            path.unlink(missing_ok=True)


def completed_report(outputs: PairOutputs, reference: str, moving: str) -> dict | None:
    """The report of a finished pair, or None if the pair must be (re)done."""
    if not all(p.is_file() for p in outputs.files()):
        return None
    try:
        report = json.loads(outputs.report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("status") != "ok":
        return None
    if (report.get("reference", {}).get("path"), report.get("moving", {}).get("path")) != (reference, moving):
        return None
    try:
        with gdal_env(), rasterio.open(outputs.raster) as ds:
            for row, col in ((0, 0), (ds.height - 1, ds.width - 1)):  # first and last block: not truncated
                ds.read(1, window=((row, row + 1), (col, col + 1)))
    except RasterioError:
        return None
    return report


def remove_temp_files(out_dir: Path) -> list[Path]:
    """Delete temporary files and folders of runs that were killed (the caller holds the
    folder's lock)."""
    removed = []
    for tmp in out_dir.glob(TEMP_GLOB):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    for aux in out_dir.glob(".*.dmreg-tmp.aux.xml"):
        aux.unlink(missing_ok=True)
    return removed
