"""Which moving raster goes with which reference: a folder and one reference, a CSV
manifest, or a folder of references searched by footprint."""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from shapely import STRtree
from shapely.geometry import Polygon, box

from dmreg.errors import InputError, NoOverlapError, UsageError
from dmreg.io.raster import gdal_env, is_gdal_path
from dmreg.io.tables import csv_rows

log = logging.getLogger("dmreg")

FOOTPRINT_CRS = "EPSG:4326"
"""References and moving rasters are compared in one geographic CRS, whatever their own."""


@dataclass(frozen=True)
class Pair:
    """One registration to run. ``name`` is unique in a run and names its outputs.
    A pair known to fail before any work (no reference overlaps, moving raster
    unreadable) carries its exit code and message instead of a reference."""

    name: str
    moving: str
    reference: str | None
    error_code: int | None = None
    error: str | None = None


def find_rasters(folder: Path, pattern: str = "*.tif", regex: str | None = None,
                 recursive: bool = False) -> list[Path]:
    """Files under ``folder`` whose name matches the glob ``pattern`` (case-insensitive)
    and, if given, the regular expression ``regex`` (searched in the name), sorted.
    Hidden files and dmreg's temporary files are never inputs."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    try:
        name_filter = re.compile(regex) if regex else None
    except re.error as exc:
        raise UsageError(f"--regex {regex!r}: {exc}") from None
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = [
        p for p in candidates
        if p.is_file() and not p.name.startswith(".") and fnmatch.fnmatch(p.name.lower(), pattern.lower())
        and (name_filter is None or name_filter.search(p.name))
    ]
    return sorted(found)


def pairs_with_reference(movings: list[Path], reference: str, root: Path) -> list[Pair]:
    """Every moving raster against one reference (the reference itself is skipped). A
    /vsi* or URL reference is checked when each pair opens it."""
    if is_gdal_path(reference):
        return _named([(m, reference) for m in movings], root)
    if not Path(reference).is_file():
        raise InputError(f"{reference}: reference raster not found")
    ref = Path(reference).resolve()
    kept = [m for m in movings if m.resolve() != ref]
    return _named([(m, str(ref)) for m in kept], root)


def pairs_from_manifest(manifest: Path) -> list[Pair]:
    """Pairs from a CSV with a header ``reference,moving[,output]`` (``ref``/``mov``/``out``
    also accepted). Relative paths are relative to the manifest's folder, /vsi* paths and
    URLs are kept as they are; ``output`` is the aligned raster's file name inside the
    output folder and names the pair."""
    if not manifest.is_file():
        raise InputError(f"{manifest}: manifest not found")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest}: cannot read the manifest ({exc})") from None
    rows = csv_rows(text)
    if not rows:
        raise InputError(f"{manifest}: the manifest is empty")
    header = [h.strip().lower() for h in rows[0]]
    columns = {key: _column(header, names) for key, names in
               (("reference", ("reference", "ref")), ("moving", ("moving", "mov")), ("output", ("output", "out")))}
    if columns["reference"] is None or columns["moving"] is None:
        raise InputError(f"{manifest}: the first line must name the columns: reference,moving[,output] "
                         f"(found {','.join(header)})")
    base = manifest.resolve().parent
    entries: list[tuple[Path | str, str, str | None]] = []
    for line, row in enumerate(rows[1:], start=2):
        cell = {key: (row[i].strip() if i is not None and i < len(row) else "") for key, i in columns.items()}
        if not cell["reference"] or not cell["moving"]:
            raise InputError(f"{manifest}, line {line}: reference and moving are both required")
        output = cell["output"] or None
        if output and (Path(output).name != output or output in (".", "..")):
            raise InputError(f"{manifest}, line {line}: output {output!r} must be a file name (it is written "
                             "inside --out)")
        moving = cell["moving"] if is_gdal_path(cell["moving"]) else base / cell["moving"]
        reference = cell["reference"] if is_gdal_path(cell["reference"]) else str((base / cell["reference"]).resolve())
        entries.append((moving, reference, Path(output).stem if output else None))
    return _named([(m, r) for m, r, _ in entries], base, [n for _, _, n in entries])


def pairs_by_footprint(movings: list[Path], reference_dir: Path, root: Path, pattern: str = "*.tif",
                       recursive: bool = False) -> list[Pair]:
    """Each moving raster with the reference (from ``reference_dir``) that covers the
    largest share of its footprint, found through an STRtree over the references'
    bounds in EPSG:4326. Unreadable or non-georeferenced references are left out with a
    warning; a moving raster no reference covers becomes a failed pair (exit 4). Pairs
    are named after the moving files' paths below ``root``."""
    references = find_rasters(reference_dir, pattern, recursive=recursive)
    boxes, paths = [], []
    for path in references:
        try:
            boxes.append(footprint(path))
            paths.append(str(path.resolve()))
        except InputError as exc:
            log.warning("reference left out: %s", exc)
    if not paths:
        raise InputError(f"{reference_dir}: no usable georeferenced reference raster matches {pattern!r}")
    tree = STRtree(boxes)
    chosen: list[tuple[Path, str | None, tuple[int, str] | None]] = []
    for moving in movings:
        if str(moving.resolve()) in paths:
            continue
        try:
            area = footprint(moving)
        except InputError as exc:
            chosen.append((moving, None, (exc.exit_code, str(exc))))
            continue
        hits = tree.query(area, predicate="intersects")
        shares = sorted(((boxes[i].intersection(area).area / area.area, paths[i]) for i in hits),
                        key=lambda s: (-s[0], s[1]))
        if not shares or shares[0][0] <= 0:
            error = NoOverlapError(f"no reference raster in {reference_dir} overlaps {moving.name}")
            chosen.append((moving, None, (error.exit_code, str(error))))
        else:
            chosen.append((moving, shares[0][1], None))
    named = _named([(m, r) for m, r, _ in chosen], root)
    return [Pair(p.name, p.moving, p.reference, *(err or (None, None))) for p, (_, _, err) in zip(named, chosen)]


def footprint(path: Path) -> Polygon:
    """The raster's bounds in EPSG:4326 (edges densified, so a projected CRS bends them)."""
    try:
        with gdal_env(), rasterio.open(path) as ds:
            if ds.crs is None:
                raise InputError(f"{path}: not georeferenced (no CRS): it cannot be paired by footprint")
            west, south, east, north = transform_bounds(ds.crs, FOOTPRINT_CRS, *ds.bounds, densify_pts=21)
    except RasterioError as exc:
        raise InputError(f"{path}: cannot read the raster ({exc})") from None
    return box(west, south, east, north)


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _named(entries: list[tuple[Path | str, str | None]], root: Path,
           names: list[str | None] | None = None) -> list[Pair]:
    """Pairs named after the moving file (its path below ``root`` when in a subfolder,
    ``/`` as ``__``; a URL's file name) unless a name is given; a name used twice is a
    usage error."""
    pairs = []
    for i, (moving, reference) in enumerate(entries):
        if isinstance(moving, str):  # a /vsi* path or URL
            name = names[i] if names and names[i] else PurePosixPath(moving.split("?")[0]).stem
            pairs.append(Pair(name=name, moving=moving, reference=reference))
            continue
        name = names[i] if names and names[i] else _stem_below(moving, root)
        pairs.append(Pair(name=name, moving=str(moving.resolve()), reference=reference))
    twice = sorted(n for n, count in Counter(p.name.lower() for p in pairs).items() if count > 1)
    if twice:
        raise UsageError(f"several pairs would write outputs named {', '.join(twice)}: rename the files or name "
                         "each output in a manifest's output column")
    return pairs


def _stem_below(path: Path, root: Path) -> str:
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(path.name)
    return "__".join(relative.with_suffix("").parts)
