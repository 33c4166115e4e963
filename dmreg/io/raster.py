"""Opening rasters and describing them; every rasterio failure becomes an InputError."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from dmreg.errors import InputError


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know of a raster, without its pixels."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


GDAL_CACHE_MB = 256
"""GDAL's block cache defaults to 5% of RAM; bounding it keeps peak memory flat on
large rasters whatever the machine (decimated reads pass many blocks through it)."""


def gdal_env() -> rasterio.Env:
    """The GDAL settings every dmreg read and write runs under."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024)  # rasterio passes bytes


def describe(ds: rasterio.io.DatasetReader) -> RasterInfo:
    return RasterInfo(
        path=str(ds.name),
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtype=ds.dtypes[0],
        crs=ds.crs if ds.crs else None,
        transform=ds.transform if ds.crs else Affine.identity(),
        nodata=ds.nodata,
    )


URL_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://", "az://", "oss://", "file://", "zip://",
               "tar://")


def is_gdal_path(path: str | Path) -> bool:
    """A path only GDAL can resolve: a /vsi* virtual file system path or a URL (rasterio
    maps https:// to /vsicurl/, s3:// to /vsis3/ and so on). Such a path is checked by
    opening it, never on the local disk, and must stay a string: pathlib would fold the
    double slash of /vsicurl/https://."""
    text = str(path)
    return text.startswith("/vsi") or text.lower().startswith(URL_SCHEMES)


@contextlib.contextmanager
def open_raster(path: str | Path, band: int = 1) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading, checking that ``band`` exists.

    Raises InputError with a one-line message for a missing, unreadable or
    truncated file, so the CLI can exit with code 3.
    """
    p = str(path) if is_gdal_path(path) else Path(path)
    if isinstance(p, Path) and not p.exists():
        raise InputError(f"{p}: no such file")
    if isinstance(p, Path) and p.is_dir():
        raise InputError(f"{p}: is a folder, expected a raster file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(p)
    except RasterioError as exc:
        what = "cannot open it" if isinstance(p, str) else "not a readable raster"
        raise InputError(f"{p}: {what} ({_first_line(exc)})") from exc
    with ds:
        if not 1 <= band <= ds.count:
            raise InputError(f"{p}: band {band} requested but the raster has {ds.count} band(s)")
        if ds.width < 8 or ds.height < 8:
            raise InputError(f"{p}: {ds.width}x{ds.height} pixels is too small to register")
        yield ds


def check_readable(ds: rasterio.io.DatasetReader, band: int) -> None:
    """Read the last block of ``band``: a truncated file fails here, before any work is done."""
    from rasterio.windows import Window

    w = Window(max(ds.width - 16, 0), max(ds.height - 16, 0), min(16, ds.width), min(16, ds.height))
    try:
        ds.read(band, window=w)
    except RasterioError as exc:
        raise InputError(f"{ds.name}: raster data is unreadable or truncated ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
