"""Writing outputs: atomically, block-wise, never over an existing file unless asked."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.rpc import RPC
from rasterio.warp import reproject
from rasterio.windows import Window

from dmreg.errors import DmregError, OutputExistsError, OutputWriteError, UsageError
from dmreg.io.band_metadata import copy_metadata
from dmreg.io.raster import dtype_kind
from dmreg.io.sampling import CoordFn, sample_onto_grid
from dmreg.io.sar import is_complex
from dmreg.runtime import thread_count

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it

BLOCK = 512
DEFAULT_CREATION_OPTIONS = {
    "tiled": "YES", "blockxsize": str(BLOCK), "blockysize": str(BLOCK),
    "compress": "DEFLATE", "bigtiff": "IF_SAFER",
}
WARP_MEMORY_MB = 128
"""GDAL's warper works in chunks of at most this much memory, which bounds the write's peak."""


def check_output(path: str | Path | None, overwrite: bool, inputs: tuple[str | Path, ...] = ()) -> None:
    """Refuse an existing output without ``overwrite``, and any output that is an input."""
    if path is None:
        return
    p = Path(path)
    for src in inputs:
        if p.exists() and Path(src).exists() and p.resolve() == Path(src).resolve():
            raise UsageError(f"{p}: the output would replace an input; choose another path")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} exists; pass --overwrite to replace it")
    if not p.parent.exists():
        raise UsageError(f"{p.parent}: output folder does not exist")


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool,
                verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success
    (and once ``verify``, if given, has accepted the finished file)."""
    target = Path(path)
    check_output(target, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".dmreg-tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if verify is not None:
            verify(tmp_path)
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} appeared while writing; pass --overwrite to replace it")
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get what the user's umask allows
        os.replace(tmp_path, target)
    except DmregError:
        raise
    except OSError as exc:  # ENOSPC, EFBIG, EACCES..., also as GDAL reports them (RasterioIOError)
        raise OutputWriteError(f"{target}: cannot write it ({_reason(exc)}); nothing was left in its place") from exc
    finally:
        for leftover in (tmp_path, Path(f"{tmp_path}.aux.xml")):
            leftover.unlink(missing_ok=True)


def check_raster_written(path: Path) -> None:
    """Read the finished raster's first and last blocks of every band. GDAL reports a
    block it could not flush (disk full, file size limit) as a logged error, not an
    exception, and leaves a truncated file: this finds it before it replaces anything."""
    try:
        with _quiet(), rasterio.open(path) as ds:
            last = Window(max(ds.width - 1, 0), max(ds.height - 1, 0), 1, 1)
            for window in (Window(0, 0, 1, 1), last):
                ds.read(window=window)
    except RasterioError as exc:
        raise OSError(errno.EIO, f"the written file is incomplete ({_reason(exc)})") from exc


def _reason(exc: OSError) -> str:
    """The operating system's word for a failed write, or GDAL's (rasterio chains it)."""
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    text = str(exc.__cause__ or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_text(path: str | Path, text: str, overwrite: bool) -> None:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def creation_profile(dtype: str, overrides: dict[str, str]) -> dict[str, str]:
    """Tiled, DEFLATE-compressed GeoTIFF options with a predictor suited to ``dtype``,
    then the user's ``--co`` on top."""
    profile = dict(DEFAULT_CREATION_OPTIONS, num_threads=str(thread_count()))
    kind = dtype_kind(dtype)
    profile["predictor"] = "3" if kind == "f" else "2" if kind in "iu" else "1"
    profile.update({k.lower(): v for k, v in overrides.items()})
    return profile


def output_dtype(src_dtype: str) -> str:
    """Complex SAR is written as amplitude (float32): interpolating phase is meaningless."""
    return "float32" if dtype_kind(src_dtype) == "c" else src_dtype


def write_resampled(src: rasterio.io.DatasetReader, dst_path: str | Path, *, dst_crs: CRS | None,
                    dst_transform: Affine, dst_size: tuple[int, int], dst_coords: CoordFn,
                    resampling: Resampling, nodata: float | None, creation_options: dict[str, str],
                    overwrite: bool, dst_gcps: Sequence[GroundControlPoint] = (),
                    dst_rpcs: RPC | None = None) -> None:
    """Resample every band of ``src`` onto a new grid, one 512-pixel block at a time.

    ``dst_coords`` maps output pixel coordinates to source pixel coordinates. A grid
    georeferenced by GCPs (in ``dst_crs``) or RPCs carries them instead of a transform.
    """
    dtype = output_dtype(src.dtypes[0])
    fill = _fill_value(nodata, dtype)
    width, height = dst_size
    bands = list(range(1, src.count + 1))
    profile = dict(driver="GTiff", width=width, height=height, count=src.count, dtype=dtype, nodata=fill,
                   **creation_profile(dtype, creation_options))
    if not dst_gcps and dst_rpcs is None:
        profile.update(crs=dst_crs, transform=dst_transform)
    with atomic_path(dst_path, overwrite, check_raster_written) as tmp, _quiet(), \
            rasterio.open(tmp, "w", **profile) as dst:
        if dst_gcps:
            dst.gcps = (list(dst_gcps), dst_crs)
        if dst_rpcs is not None:
            dst.rpcs = dst_rpcs
        for row in range(0, height, BLOCK):
            for col in range(0, width, BLOCK):
                win = Window(col, row, min(BLOCK, width - col), min(BLOCK, height - row))
                values, valid = sample_onto_grid(
                    src, bands, lambda x, y, c=col, r=row: dst_coords(x + c, y + r),
                    (win.height, win.width), resampling,
                )
                values[:, ~valid] = fill
                dst.write(_cast(values, dtype), window=win)
        copy_metadata(src, dst, keeps_grid=_is_grid_of(src, dst_crs, dst_transform, dst_size))


def gdal_can_warp(src: rasterio.io.DatasetReader) -> bool:
    """Whether GDAL's warper reads ``src`` as dmreg's own resampler would: real-valued
    bands whose validity is all-valid or a nodata value (complex SAR is written as
    amplitude, and explicit masks or alpha bands are honoured only by dmreg's reader)."""
    if is_complex(src):
        return False
    return all(flags == [MaskFlags.all_valid] or MaskFlags.nodata in flags for flags in src.mask_flag_enums)


def write_warped(src: rasterio.io.DatasetReader, dst_path: str | Path, *, dst_crs: CRS, dst_transform: Affine,
                 warp_transform: Affine, dst_size: tuple[int, int], resampling: Resampling,
                 nodata: float | None, creation_options: dict[str, str], overwrite: bool) -> None:
    """Resample every band of ``src`` with GDAL's warper, chunked and multi-threaded.

    GDAL sees the output grid as ``warp_transform``, so output pixel p takes the source
    pixels at ``~src.transform * reprojection(warp_transform * p)``; the file is then
    labelled ``dst_transform``. With ``warp_transform = dst_transform * ~C`` this applies
    an affine correction C exactly when source and output share a CRS.
    """
    dtype = src.dtypes[0]
    fill = _fill_value(nodata, dtype)
    width, height = dst_size
    bands = list(range(1, src.count + 1))
    profile = dict(driver="GTiff", width=width, height=height, count=src.count, dtype=dtype,
                   crs=dst_crs, transform=warp_transform, nodata=fill, **creation_profile(dtype, creation_options))
    with atomic_path(dst_path, overwrite, check_raster_written) as tmp, _quiet(), \
            rasterio.open(tmp, "w", **profile) as dst:
        reproject(rasterio.band(src, bands), rasterio.band(dst, bands), src_nodata=src.nodata, dst_nodata=fill,
                  resampling=resampling, num_threads=thread_count(), warp_mem_limit=WARP_MEMORY_MB,
                  init_dest_nodata=True)
        dst.transform = dst_transform
        copy_metadata(src, dst, keeps_grid=_is_grid_of(src, dst_crs, dst_transform, dst_size))


def write_copy(src: rasterio.io.DatasetReader, dst_path: str | Path, *, crs: CRS | None,
               transform: Affine | None, gcps: list[GroundControlPoint] | None,
               creation_options: dict[str, str], overwrite: bool) -> None:
    """Copy the pixels unchanged, with new georeferencing: a transform, or GCPs."""
    profile = dict(driver="GTiff", width=src.width, height=src.height, count=src.count,
                   dtype=src.dtypes[0], nodata=src.nodata, **creation_profile(src.dtypes[0], creation_options))
    if transform is not None:
        profile.update(crs=crs, transform=transform)
    with atomic_path(dst_path, overwrite, check_raster_written) as tmp, _quiet(), \
            rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, src.height, BLOCK):
            for col in range(0, src.width, BLOCK):
                win = Window(col, row, min(BLOCK, src.width - col), min(BLOCK, src.height - row))
                dst.write(src.read(window=win), window=win)
        if gcps is not None:  # pixel space: GCPs in reference pixels, with no CRS (rasterio wants an empty one)
            dst.gcps = (gcps, crs if crs is not None else CRS())
        copy_metadata(src, dst, keeps_grid=gcps is None)


def _is_grid_of(src: rasterio.io.DatasetReader, crs: CRS | None, transform: Affine, size: tuple[int, int]) -> bool:
    """Whether the output grid is ``src``'s own (``--grid moving``): only then do the
    source's grid tags describe it."""
    return crs == src.crs and transform == src.transform and size == (src.width, src.height)


def _fill_value(nodata: float | None, dtype: str) -> float:
    if nodata is not None:
        return nodata
    return float("nan") if dtype_kind(dtype) == "f" else 0


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(values), info.min, info.max).astype(dt)
    return values.astype(dt)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield
