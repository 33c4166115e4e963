"""SAR radiometry: complex data multilooked before its amplitude is taken, and the scale
(amplitude, intensity or dB) in which a SAR raster is shown to the matchers.

Averaging complex samples lets the speckle's random phases cancel, so a decimated
read of a single-look complex raster would collapse towards zero; averaging intensity
(``|z|²``) is multilooking, the standard way to reduce speckle. Real SAR rasters come
in linear units (amplitude, power, digital numbers) or in dB; on the dB scale a
multiplicative speckle becomes additive and linear and dB products look alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from dmreg.io.raster import dtype_kind

SAR_SCALES = ("db", "amplitude", "intensity")
"""``--sar-scale``: the scale a SAR raster is matched in (the first is the default)."""

STRIP_PIXELS = 4_000_000
"""Complex samples read at full resolution per strip when multilooking: bounds memory."""

PROBE_SIZE = 256
"""Side of the subsampled read that tells linear from dB units."""

SKEW_RATIO = 1.5
"""Linear when the 50-95 percentile spread exceeds the 5-50 one this many times: for
single-look intensity it is 3.6, for the same in dB 0.56."""

View = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Maps sampled values (and their validity) to the values the matchers see."""


def multilooked_amplitude(ds: rasterio.io.DatasetReader, bands: Sequence[int], window: Window,
                          out_shape: tuple[int, int]) -> np.ndarray:
    """Complex ``bands`` of ``window`` decimated to ``out_shape`` as ``sqrt(mean |z|²)``.

    The window is read at full resolution in strips of whole output rows; each strip's
    intensity is area-averaged across columns, then across its rows, so memory depends
    on the strip and the output, never on the window's height.
    """
    dec_h, dec_w = out_shape
    rows_per_output = window.height / dec_h
    outputs_per_strip = max(1, int(STRIP_PIXELS / max(1.0, window.width * len(bands) * rows_per_output)))
    out = np.empty((len(bands), dec_h, dec_w), np.float32)
    for first in range(0, dec_h, outputs_per_strip):
        last = min(first + outputs_per_strip, dec_h)
        top = int(np.floor(first * rows_per_output))
        bottom = min(int(np.ceil(last * rows_per_output)), window.height)
        z = ds.read(list(bands), window=Window(window.col_off, window.row_off + top, window.width, bottom - top))
        intensity = np.square(z.real, dtype=np.float32) + np.square(z.imag, dtype=np.float32)
        weights = _row_weights(rows_per_output, first, last, top, bottom)
        for i in range(len(bands)):
            across = cv2.resize(intensity[i], (dec_w, bottom - top), interpolation=cv2.INTER_AREA)
            out[i, first:last] = weights @ across
    return np.sqrt(out)


def _row_weights(rows_per_output: float, first: int, last: int, top: int, bottom: int) -> np.ndarray:
    """(last - first, bottom - top) area weights: output row i covers source rows
    [i·r, (i+1)·r), and source row j weighs by how much of [j, j+1) lies inside."""
    starts = np.arange(first, last)[:, None] * rows_per_output
    rows = np.arange(top, bottom)[None, :]
    overlap = np.clip(np.minimum(starts + rows_per_output, rows + 1) - np.maximum(starts, rows), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def is_complex(ds: rasterio.io.DatasetReader) -> bool:
    return dtype_kind(ds.dtypes[0]) == "c"


def sar_view(ds: rasterio.io.DatasetReader, band: int, modality: str | None, scale: str) -> View | None:
    """How a raster's sampled values become what the matchers see: None (as they are)
    unless the raster is SAR, i.e. complex or hinted ``--*-modality sar``.

    Complex rasters are sampled as amplitude (see :func:`multilooked_amplitude`). A real
    SAR raster is in dB or linear as :func:`_is_linear` tells. ``db``: every
    linear raster becomes ``10·log10`` (amplitude or power differ by a factor that the
    per-tile contrast stretch removes); ``amplitude``/``intensity``: a complex raster's
    amplitude or its square, a dB raster back to linear power, a linear one as it is.
    """
    if scale not in SAR_SCALES:
        raise ValueError(f"unknown SAR scale {scale!r}; choose one of {', '.join(SAR_SCALES)}")
    if is_complex(ds):
        return {"db": _to_db, "amplitude": None, "intensity": _square}[scale]
    if modality != "sar":
        return None
    linear = _is_linear(ds, band)
    if scale == "db":
        return _to_db if linear else None
    return None if linear else _from_db


def _is_linear(ds: rasterio.io.DatasetReader, band: int) -> bool:
    """Linear units unless the band says dB, has negative values, or is not right-skewed.
    Linear backscatter spans orders of magnitude, so its upper tail is long; on the dB
    scale the distribution is near symmetric (speckle even skews it left)."""
    if "db" in (ds.units[band - 1] or "").lower().replace(" ", ""):
        return False
    side = min(PROBE_SIZE, ds.width, ds.height)
    values = ds.read(band, out_shape=(side, side), resampling=Resampling.nearest, masked=True).compressed()
    values = values[np.isfinite(values)]
    if values.size < 16 or float(values.min()) < 0.0:
        return False
    low, median, high = np.percentile(values, [5.0, 50.0, 95.0])
    return bool(high - median > SKEW_RATIO * (median - low))


def _to_db(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """10·log10 with the smallest positive valid value as the floor (a zero is no signal,
    not minus infinity)."""
    positive = valid & (values > 0)
    floor = float(values[positive].min()) if positive.any() else 1.0
    return (10.0 * np.log10(np.maximum(values, floor))).astype(np.float32)


def _square(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.square(values, dtype=np.float32)


def _from_db(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.power(10.0, np.clip(values, -100.0, 100.0) / 10.0).astype(np.float32)
