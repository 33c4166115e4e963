"""Reading raster windows onto arbitrary pixel grids.

Everything the pipeline reads goes through :func:`sample_onto_grid`: a grid of output
pixels, a function that says where each output pixel centre lies in the source raster,
and one bounded window read. Memory therefore depends on the grid size, never on the
raster size. Source pixels much smaller than output pixels are first averaged by a
decimated read (GDAL overviews when the file has them), so nothing aliases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from dmreg.errors import InputError
from dmreg.io.sar import is_complex, multilooked_amplitude

CoordFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Maps output pixel coordinates (x, y) to source pixel coordinates (x, y), vectorised."""

_CV2_INTERPOLATION = {
    Resampling.nearest: cv2.INTER_NEAREST,
    Resampling.bilinear: cv2.INTER_LINEAR,
    Resampling.cubic: cv2.INTER_CUBIC,
    Resampling.lanczos: cv2.INTER_LANCZOS4,
    Resampling.average: cv2.INTER_LINEAR,
}
SUPPORTED_RESAMPLING = tuple(_CV2_INTERPOLATION)

MAX_READ_RATIO = 16
"""A read never holds more than this many source pixels per output pixel: memory stays
bounded by the output block whatever the mapping."""

MARGIN_PX = 3
"""Pixels (of the read, after decimation) read beyond the grid's footprint on each side."""

LATTICE_STEP = 16
"""Source coordinates are computed exactly on a lattice of this step and bilinearly
interpolated between: the mappings used (affine, homography, 2nd-order polynomial,
map projections) are smooth, so the interpolation error stays far below 1e-3 px."""


def sample_onto_grid(
    ds: rasterio.io.DatasetReader,
    bands: Sequence[int],
    src_coords: CoordFn,
    shape: tuple[int, int],
    resampling: Resampling = Resampling.bilinear,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``bands`` of ``ds`` onto an output grid of ``shape`` (rows, cols).

    Returns ``(values, valid)``: float32 values of shape (len(bands), rows, cols), complex
    bands as amplitude (multilooked where decimated), and a boolean mask that is False
    outside the raster, on nodata, on masked or non-finite pixels and next to them.
    """
    if resampling not in _CV2_INTERPOLATION:
        raise ValueError(f"resampling {resampling.name} is not supported")
    rows, cols = shape
    sx, sy = _dense_source_coords(src_coords, rows, cols)
    out = np.zeros((len(bands), rows, cols), np.float32)
    valid = np.zeros((rows, cols), bool)

    window, factor = _source_window(ds, sx, sy, cols, rows)
    if window is None:
        return out, valid
    dec_h = max(1, int(np.ceil(window.height / factor)))
    dec_w = max(1, int(np.ceil(window.width / factor)))
    src, src_valid = _read_window(ds, bands, window, (dec_h, dec_w), averaged=resampling != Resampling.nearest)

    # pixel-corner source coordinates -> cv2 pixel-centre coordinates in the decimated window
    map_x = ((sx - window.col_off) * (dec_w / window.width) - 0.5).astype(np.float32)
    map_y = ((sy - window.row_off) * (dec_h / window.height) - 0.5).astype(np.float32)
    interp = _CV2_INTERPOLATION[resampling]
    holes = None if src_valid.all() else src_valid.view(np.uint8)
    for i in range(len(bands)):
        band = src[i]
        if holes is not None:  # holes take the valid mean (0 if none), so no nodata value is interpolated
            band = np.where(src_valid, band, np.float32(cv2.mean(band, mask=holes)[0]))
        out[i] = cv2.remap(band, map_x, map_y, interp, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.remap(
        src_valid.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )
    inside = (map_x >= -0.5) & (map_y >= -0.5) & (map_x <= dec_w - 0.5) & (map_y <= dec_h - 0.5)
    valid = inside & (weight > 0.999)
    return out, valid


def normalise_contrast(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Robust 1-99 percentile stretch to [0, 1]; invalid pixels get the valid median.

    Per-tile stretching makes matchers indifferent to radiometric units (DN, reflectance,
    brightness temperature, SAR amplitude) and to the dynamic range of each sensor.
    """
    img = np.zeros(values.shape, np.float32)
    if valid.sum() < 16:
        return img
    lo, median, hi = np.percentile(values[valid], [1.0, 50.0, 99.0])
    if hi <= lo:
        return img
    img = np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    img[~valid] = min(max((median - lo) / (hi - lo), 0.0), 1.0)  # the stretch is monotonic: median of img
    return img


def _dense_source_coords(fn: CoordFn, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate ``fn`` exactly on a lattice of pixel centres and interpolate bilinearly."""
    step = LATTICE_STEP
    lat_c = np.append(np.arange(0, cols - 1, step, dtype=np.float64), cols - 1) + 0.5
    lat_r = np.append(np.arange(0, rows - 1, step, dtype=np.float64), rows - 1) + 0.5
    if cols == 1:
        lat_c = np.array([0.5])
    if rows == 1:
        lat_r = np.array([0.5])
    gx, gy = np.meshgrid(lat_c, lat_r)
    lx, ly = fn(gx.ravel(), gy.ravel())
    lx = np.asarray(lx, np.float64).reshape(gx.shape)
    ly = np.asarray(ly, np.float64).reshape(gx.shape)
    cx = np.arange(cols, dtype=np.float64) + 0.5
    cy = np.arange(rows, dtype=np.float64) + 0.5
    return _bilinear(lx, lat_r, lat_c, cy, cx), _bilinear(ly, lat_r, lat_c, cy, cx)


def _bilinear(grid: np.ndarray, gr: np.ndarray, gc: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``grid`` (sampled at rows ``gr``, columns ``gc``) interpolated bilinearly at rows
    ``r`` x columns ``c``. Bilinear interpolation is separable: two small matrix products.
    A non-finite lattice value (a mapping with no answer there) makes every point it
    weighs on NaN, and no other."""
    wr, wc = _interpolation_matrix(gr, r), _interpolation_matrix(gc, c)
    finite = np.isfinite(grid)
    if finite.all():
        return wr @ grid @ wc.T
    values = wr @ np.where(finite, grid, 0.0) @ wc.T
    return np.where(wr @ (~finite).astype(float) @ wc.T > 0, np.nan, values)


def _interpolation_matrix(lattice: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(len(points), len(lattice)) weights of linear interpolation (extrapolation at the ends)."""
    n = len(lattice)
    i = np.clip(np.searchsorted(lattice, points, side="right") - 1, 0, max(n - 2, 0))
    i1 = np.minimum(i + 1, n - 1)
    span = np.where(i1 > i, lattice[i1] - lattice[i], 1.0)
    f = np.where(i1 > i, (points - lattice[i]) / span, 0.0)
    weights = np.zeros((len(points), n))
    rows = np.arange(len(points))
    np.add.at(weights, (rows, i), 1.0 - f)
    np.add.at(weights, (rows, i1), f)
    return weights


def _source_window(
    ds: rasterio.io.DatasetReader, sx: np.ndarray, sy: np.ndarray, cols: int, rows: int
) -> tuple[Window | None, float]:
    """The dataset window covering the source coordinates, and the decimation factor.
    Non-finite coordinates (a mapping that has no answer there, e.g. an inverse that did
    not converge) are left out: those output pixels come out invalid. The window's
    margin is ``MARGIN_PX`` decimated pixels, so the interpolation at the grid's edges
    always has its neighbours, whatever the decimation."""
    bounds = np.array([sx.min(), sy.min(), sx.max(), sy.max()])  # NaN if any coordinate is NaN
    if not np.isfinite(bounds).all():
        finite = np.isfinite(sx) & np.isfinite(sy)
        if not finite.any():
            return None, 1.0
        bounds = np.array([sx[finite].min(), sy[finite].min(), sx[finite].max(), sy[finite].max()])
    lo_x, lo_y = int(np.floor(bounds[0])), int(np.floor(bounds[1]))
    hi_x, hi_y = int(np.ceil(bounds[2])), int(np.ceil(bounds[3]))
    if min(hi_x, ds.width) <= max(lo_x, 0) or min(hi_y, ds.height) <= max(lo_y, 0):
        return None, 1.0
    factor = _decimation(sx, sy, cols, rows)
    # a far-flung mapping (a homography near its horizon) can stretch one output block
    # over the whole raster: decimate further so the read stays bounded
    span = (min(hi_x, ds.width) - max(lo_x, 0)) * (min(hi_y, ds.height) - max(lo_y, 0))
    factor = max(factor, float(np.ceil(np.sqrt(span / (MAX_READ_RATIO * rows * cols)))))
    margin = int(np.ceil(MARGIN_PX * factor))
    x0, y0 = max(lo_x - margin, 0), max(lo_y - margin, 0)
    x1, y1 = min(hi_x + margin, ds.width), min(hi_y + margin, ds.height)
    return Window(x0, y0, x1 - x0, y1 - y0), factor


def _decimation(sx: np.ndarray, sy: np.ndarray, cols: int, rows: int) -> float:
    """Source pixels per output pixel (whole, at least 1), the median of the local
    Jacobian at every 8th row and column: the mappings are smooth, and the median needs
    no more."""
    dx = (np.hypot(sx[::8, 1::8] - sx[::8, :-1:8], sy[::8, 1::8] - sy[::8, :-1:8]) if cols > 1
          else np.ones(1))
    dy = (np.hypot(sx[1::8, ::8] - sx[:-1:8, ::8], sy[1::8, ::8] - sy[:-1:8, ::8]) if rows > 1
          else np.ones(1))
    if not (np.isfinite(dx).any() and np.isfinite(dy).any()):
        return 1.0
    ratio = float(min(np.nanmedian(dx), np.nanmedian(dy)))
    return float(np.floor(ratio)) if ratio >= 2.0 else 1.0


def _read_window(
    ds: rasterio.io.DatasetReader, bands: Sequence[int], window: Window, out_shape: tuple[int, int],
    averaged: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The window decimated to ``out_shape``: by averaging, unless nearest neighbour was
    asked for (class codes must not be blended, even when decimated)."""
    decimated = out_shape != (window.height, window.width)
    try:
        if decimated and averaged and is_complex(ds):
            data = multilooked_amplitude(ds, bands, window, out_shape)
        else:
            data = ds.read(
                list(bands), window=window, out_shape=(len(bands), *out_shape),
                resampling=Resampling.average if decimated and averaged else Resampling.nearest,
            )
        valid = _valid_from_values(ds, bands[0], data[0])
        if valid is None:
            valid = ds.read_masks(bands[0], window=window, out_shape=out_shape, resampling=Resampling.nearest) > 0
    except RasterioError as exc:
        raise InputError(f"{ds.name}: cannot read pixels ({str(exc).splitlines()[0]})") from exc
    if np.iscomplexobj(data):
        data = np.abs(data)
    data = data.astype(np.float32, copy=False)
    return data, valid & np.isfinite(data).all(axis=0)


def _valid_from_values(ds: rasterio.io.DatasetReader, band: int, values: np.ndarray) -> np.ndarray | None:
    """The band's mask computed from the values just read, when the mask is only "all
    valid" or "not the nodata value"; None for other masks (GDAL reads those). GDAL would
    otherwise decode the blocks a second time to derive the same nodata mask, and a
    decimated read of a whole scene does not fit its block cache. On averaged values
    this marks valid every pixel that averages at least one valid source pixel (GDAL's
    average leaves nodata out)."""
    flags = ds.mask_flag_enums[band - 1]
    if flags == [MaskFlags.all_valid]:
        return np.ones(values.shape, bool)
    if flags != [MaskFlags.nodata] or is_complex(ds):  # a multilooked amplitude is not the values read
        return None
    nodata = ds.nodatavals[band - 1]
    if nodata is None:
        return None
    if math.isnan(nodata):
        return ~np.isnan(values)
    if values.dtype.kind in "iu":
        limits = np.iinfo(values.dtype)
        if not (float(nodata).is_integer() and limits.min <= nodata <= limits.max):
            return np.ones(values.shape, bool)  # no value of this type is the nodata value
    return values != np.asarray(nodata).astype(values.dtype)
