"""Point layers for GIS tools (GeoPackage, FlatGeobuf) through pyogrio, written atomically.

GeoJSON is written by dmreg itself (RFC 7946, see :mod:`dmreg.report`); the binary
formats keep the points in the reference CRS, which both formats can name.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import shapely

from dmreg.errors import UsageError
from dmreg.io.writing import atomic_path

VECTOR_DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf"}
GEOJSON_SUFFIXES = (".geojson", ".json")


def vector_driver(path: str | Path) -> str | None:
    """The OGR driver a tie-point path asks for by its extension; None for GeoJSON.
    Any other extension, or a binary format without pyogrio installed, is a UsageError."""
    suffix = Path(path).suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        return None
    if suffix not in VECTOR_DRIVERS:
        known = ", ".join((*GEOJSON_SUFFIXES, *VECTOR_DRIVERS))
        raise UsageError(f"{path}: tie points are written as {known}; the extension says which")
    if importlib.util.find_spec("pyogrio") is None:
        raise UsageError(f"{path}: {VECTOR_DRIVERS[suffix]} needs pyogrio: pip install 'dmreg[vector]'")
    return VECTOR_DRIVERS[suffix]


def write_points(path: str | Path, x: np.ndarray, y: np.ndarray, fields: dict[str, np.ndarray],
                 crs: str | None, overwrite: bool) -> None:
    """One point feature per (x, y) with ``fields`` as attributes, in ``crs`` (None: no
    CRS, e.g. pixel coordinates)."""
    from pyogrio.raw import write

    driver = vector_driver(path)
    geometry = shapely.to_wkb(shapely.points(np.column_stack([x, y])))
    with atomic_path(path, overwrite) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The filename extension should be")  # the temporary name's
        tmp.unlink()  # the drivers create their file themselves
        write(str(tmp), geometry, field_data=list(fields.values()), fields=list(fields), crs=crs,
              driver=driver, geometry_type="Point", layer="tie_points")
