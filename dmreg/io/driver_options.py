"""Checking the user's ``--co`` against the output driver before any work is done.

GDAL only logs a creation option its driver does not know and goes on, so a GeoTIFF
option given for a COG (``BLOCKXSIZE`` where the COG driver takes ``BLOCKSIZE``) would
be dropped silently after minutes of registration.
"""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from dmreg.errors import UsageError

_REJECTED = re.compile(r"does not support (?:the )?creation option '?([A-Za-z0-9_]+)")


class _Rejections(logging.Handler):
    """Collects the option names GDAL says a driver does not support."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = _REJECTED.search(record.getMessage())
        if found:
            self.names.append(found.group(1))


def check_creation_options(driver: str, options: dict[str, str]) -> None:
    """UsageError when ``driver`` rejects or does not know one of ``options``: a 16 x 16
    raster is written in memory with them, as the output will be."""
    if not options:
        return
    rejections, gdal_log = _Rejections(), logging.getLogger("rasterio._env")
    gdal_log.addHandler(rejections)
    profile = dict(width=16, height=16, count=1, dtype="uint8")
    shown = " ".join(f"--co {k.upper()}={v}" for k, v in options.items())
    try:
        with warnings.catch_warnings(), rasterio.MemoryFile() as source, rasterio.MemoryFile() as target:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with source.open(driver="GTiff", **profile) as tmp:
                tmp.write(np.zeros((1, 16, 16), np.uint8))
            if driver == "GTiff":
                with target.open(driver="GTiff", **profile, **options):
                    pass
            else:  # COG is a copy-only driver
                rasterio.shutil.copy(source.name, target.name, driver=driver, **options)
    except RasterioError as exc:
        raise UsageError(f"{shown}: the {driver} driver refuses it ({str(exc).splitlines()[0]})") from exc
    finally:
        gdal_log.removeHandler(rejections)
    if rejections.names:
        hint = "; GeoTIFF options need --of GTiff" if driver == "COG" else ""
        raise UsageError(f"the {driver} driver does not take creation option(s) {', '.join(rejections.names)}{hint}")
