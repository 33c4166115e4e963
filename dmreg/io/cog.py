"""Cloud-optimised GeoTIFF output through GDAL's COG driver.

A COG keeps its overviews and tiles in an order a reader can fetch by HTTP range
requests, so it cannot be written block by block as it is resampled. GDAL's own
`gdalwarp -of COG` therefore warps into a temporary GeoTIFF and copies that with the
COG driver; dmreg does the same: the aligned raster is written as a lightly compressed
temporary GeoTIFF beside the output, then copied (overviews built, tiles compressed)
into place atomically, and the temporary file removed whatever happens. The copy keeps
the GeoTIFF's metadata (see :mod:`dmreg.io.band_metadata`); overviews of class codes are
built by nearest neighbour, as their full-resolution pixels were.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import rasterio
import rasterio.shutil

from dmreg.io.band_metadata import is_categorical
from dmreg.io.raster import dtype_kind
from dmreg.io.writing import BLOCK, atomic_path, check_raster_written
from dmreg.runtime import thread_count

INTERMEDIATE_OPTIONS = {"compress": "DEFLATE", "zlevel": "1"}
"""The temporary GeoTIFF is read once: fast compression keeps its disk use bounded."""


def cog_profile(dtype: str, overrides: dict[str, str], categorical: bool) -> dict[str, str]:
    """COG creation options: 512-pixel DEFLATE tiles with the predictor suited to the
    data, overviews down to one tile (by nearest neighbour for ``categorical`` class
    codes: GDAL's default, cubic, would invent classes), multi-threaded; then the user's ``--co``."""
    kind = dtype_kind(dtype)
    profile = {"compress": "DEFLATE", "blocksize": str(BLOCK), "bigtiff": "IF_SAFER", "overviews": "AUTO",
               "num_threads": str(thread_count()), "predictor": "YES" if kind in "iuf" else "NO"}
    if categorical:
        profile["overview_resampling"] = "NEAREST"
    profile.update({k.lower(): v for k, v in overrides.items()})
    return profile


@contextlib.contextmanager
def intermediate_geotiff(target: str | Path) -> Iterator[Path]:
    """A temporary GeoTIFF path beside ``target``, removed on exit."""
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", suffix=".dmreg-tmp", dir=target.parent) as folder:
        yield Path(folder) / "intermediate.tif"


def copy_as_cog(src_path: Path, dst_path: str | Path, creation_options: dict[str, str], overwrite: bool) -> None:
    """Copy the GeoTIFF at ``src_path`` to ``dst_path`` as a COG, atomically."""
    with rasterio.open(src_path) as src:
        profile = cog_profile(src.dtypes[0], creation_options, is_categorical(src))
    with atomic_path(dst_path, overwrite, check_raster_written) as tmp:
        rasterio.shutil.copy(src_path, tmp, driver="COG", **profile)
