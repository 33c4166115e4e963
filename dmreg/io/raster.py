"""Opening rasters and describing them; every rasterio failure becomes an InputError."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.rpc import RPC
from rasterio.transform import GCPTransformer, RPCTransformer

from dmreg.errors import InputError


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know of a raster, without its pixels.

    A raster is georeferenced by a geotransform, by ground control points (SAR GRD
    products, scanned maps) or by rational polynomial coefficients (optical Level-1
    products), in that order of preference. ``to_map``/``to_pixel`` hide which: GCPs and
    RPCs go through GDAL's transformers (GCPs by the polynomial gdalwarp fits, or with
    ``gcp_tps`` a thin-plate spline exact at every GCP; RPCs at ``rpc_height`` metres above
    the ellipsoid, or on the ``dem`` file's heights).
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    gcps: tuple[GroundControlPoint, ...] = ()
    rpcs: RPC | None = None
    rpc_height: float | None = None
    dem: str | None = None
    gcp_tps: bool = False

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def georeferencing(self) -> str:
        """geotransform, gcps, rpcs, or none (pixel space)."""
        if self.crs is None:
            return "none"
        return "geotransform" if self.by_transform else "rpcs" if self.rpcs is not None else "gcps"

    @property
    def by_transform(self) -> bool:
        """Whether ``transform`` places the pixels (a geotransform, or pixel space)."""
        return self.rpcs is None and not self.gcps

    def to_map(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (x right, y down, pixel corners at integers) to ``crs``."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if self.by_transform:
            return self.transform @ (x, y)
        with self._transformer() as transformer:
            mx, my = transformer.xy(y.ravel(), x.ravel(), offset="ul")
        return np.asarray(mx, np.float64).reshape(x.shape), np.asarray(my, np.float64).reshape(y.shape)

    def to_pixel(self, mx: np.ndarray, my: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in ``crs`` to pixel coordinates (the inverse of :meth:`to_map`)."""
        mx, my = np.asarray(mx, np.float64), np.asarray(my, np.float64)
        if self.by_transform:
            return ~self.transform @ (mx, my)
        with self._transformer() as transformer:
            rows, cols = transformer.rowcol(mx.ravel(), my.ravel(), op=np.positive)
        return np.asarray(cols, np.float64).reshape(mx.shape), np.asarray(rows, np.float64).reshape(my.shape)

    def _transformer(self) -> GCPTransformer | RPCTransformer:
        """A fresh GDAL transformer per call: they are cheap to make, and RPC ones with a
        DEM cache its blocks and are not safe to share between the reading threads."""
        if self.rpcs is not None:
            height = {"RPC_DEM": self.dem} if self.dem else {"RPC_HEIGHT": self.rpc_height or 0.0}
            return RPCTransformer(self.rpcs, RPC_PIXEL_ERROR_THRESHOLD=RPC_INVERSE_TOLERANCE_PX, **height)
        return GCPTransformer(list(self.gcps), tps=self.gcp_tps)


def dtype_kind(name: str) -> str:
    """numpy's kind letter of a rasterio dtype name: rasterio names GDAL's CInt16 (the
    format of Sentinel-1 SLC products) ``complex_int16``, which numpy does not know."""
    return "c" if name.startswith("complex") else np.dtype(name).kind


GDAL_CACHE_MB = 256
"""GDAL's block cache defaults to 5% of RAM; bounding it keeps peak memory flat on
large rasters whatever the machine (decimated reads pass many blocks through it)."""


def gdal_env() -> rasterio.Env:
    """The GDAL settings every dmreg read and write runs under."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024)  # rasterio passes bytes


def describe(ds: rasterio.io.DatasetReader, rpc_height: float | None = None, dem: str | None = None,
             gcp_tps: bool = False) -> RasterInfo:
    """The raster's description; a raster with neither a CRS-bearing geotransform, GCPs
    nor RPCs is in pixel space."""
    gcps, gcp_crs = ds.gcps
    base = dict(path=str(ds.name), width=ds.width, height=ds.height, count=ds.count, dtype=ds.dtypes[0],
                nodata=ds.nodata, transform=Affine.identity())
    if ds.crs:
        return RasterInfo(**{**base, "transform": ds.transform}, crs=ds.crs)
    if ds.rpcs is not None:
        return RasterInfo(**base, crs=CRS.from_epsg(4326), rpcs=ds.rpcs, rpc_height=rpc_height, dem=dem)
    if gcps and gcp_crs:
        if len(gcps) < MIN_GCPS:
            raise InputError(f"{ds.name}: {len(gcps)} ground control points; at least {MIN_GCPS} are needed")
        return RasterInfo(**base, crs=gcp_crs, gcps=tuple(gcps), gcp_tps=gcp_tps)
    return RasterInfo(**base, crs=None)


RPC_INVERSE_TOLERANCE_PX = 1e-4
"""GDAL stops inverting RPCs at 0.1 px by default: far too coarse to register with."""

MIN_GCPS = 3
"""GDAL's GCP transformer needs three points for its first-order polynomial."""


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
