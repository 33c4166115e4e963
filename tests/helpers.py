"""Shared helpers for the dmreg tests: writing rasters, ground truth, check-grid errors.

Conventions (as in dmreg): pixel coordinates are (x=col, y=row) with (0, 0) the
top-left corner of the top-left pixel; a mapping goes MOVING pixel -> REFERENCE pixel.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
L7 = DATA / "L7_ETMs.tif"
LT05 = {band: DATA / f"LT05_167055_20000309_{band}.tif" for band in ("B3", "B4", "B5", "B6")}

# 1-based band numbers of L7_ETMs.tif
L7_BANDS = {"blue": 1, "green": 2, "red": 3, "nir": 4, "swir1": 5, "swir2": 6}

SHIFT = (3.4, -2.7)                          # pixels, applied to the moving geotransform
HOLE = (slice(200, 240), slice(100, 150))    # rows, cols (scene pixels) of a nodata hole in the 3-band moving
CROP = (slice(10, 330), slice(30, 349))      # rows, cols (scene pixels) the 3-band moving covers
MULTI_BANDS = ("swir2", "nir", "swir1")      # band 1 (matched by default) is SWIR2
MULTI_NODATA = 0

TruthFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Case:
    """A reference/moving pair with a known true mapping (moving pixel -> reference pixel)."""

    name: str
    ref: Path
    mov: Path
    truth: TruthFn
    ref_size: tuple[int, int]   # (width, height) of the reference
    source_band: np.ndarray     # the band the moving raster was made from, on the reference grid


def write_raster(path: Path, data: np.ndarray, *, crs=None, transform=None, nodata=None,
                 driver: str = "GTiff", **extra) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array; no CRS/transform when None."""
    arr = data if data.ndim == 3 else data[None]
    profile = dict(driver=driver, width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                   dtype=arr.dtype.name, **extra)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
    return Path(path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_grid_errors(check_grid: list[list[float]], truth: TruthFn,
                      ref_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Errors (px) of the reported mapping against ``truth`` on the check-grid points whose
    true reference position lies inside the reference; also returns that inside mask."""
    g = np.asarray(check_grid, dtype=np.float64)
    assert g.ndim == 2 and g.shape[1] == 4, f"check_grid has shape {g.shape}, expected (N, 4)"
    tx, ty = truth(g[:, 0], g[:, 1])
    w, h = ref_size
    inside = (tx >= 0) & (tx <= w) & (ty >= 0) & (ty <= h)
    err = np.hypot(g[:, 2] - tx, g[:, 3] - ty)
    return err[inside], inside


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mean_abs_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64))[mask].mean())


def normalised(text: str) -> str:
    """Collapse whitespace, so message fragments match however the console wrapped them."""
    return " ".join(text.split())
