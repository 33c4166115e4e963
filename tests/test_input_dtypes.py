"""End to end on the shipped imagery, whatever the moving raster's data type.

The moving raster is the L7 SWIR2 band of the shift case (geotransform shifted by SHIFT
pixels, pixels untouched: the true mapping is the identity in pixels, see conftest.py)
with a nodata hole at HOLE, rewritten as uint16, int16 (negative values present),
float32 (NaN nodata) and complex64 (amplitude x random phase). A linear change of units
must not change the estimate (tiles are contrast-stretched per tile), and the aligned
raster keeps the input's dtype and nodata (complex: float32 amplitude, see
dmreg.io.writing.output_dtype).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from dmreg.geometry.mapping import check_points
from dmreg.io.sampling import sample_onto_grid
from dmreg.pipeline import OutputOptions, RegisterOptions, register
from helpers import HOLE, SHIFT, write_raster

MAX_ERROR_PX = 0.5        # as tests/test_register_accuracy.py for the uint8 cases
SAME_ESTIMATE_PX = 1e-3   # a linear change of units leaves the estimate as it is
INTERIOR = 8              # border pixels left out of content comparisons
COMPLEX_LOOKS = 4         # the complex moving raster has 4 x 4 pixels per reference pixel


def _hole_inner(shrink: int = 2) -> tuple[slice, slice]:
    """The nodata hole less a rim that bilinear resampling may blend with its edge."""
    return tuple(slice(s.start + shrink, s.stop - shrink) for s in HOLE)


def _dtype_variants(swir2: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (moving pixels with the hole set to nodata, nodata). Every variant is a
    linear function of the uint8 band outside the hole."""
    out = {}
    a = swir2.copy()
    a[HOLE] = 0
    out["uint8"] = (a, 0)
    a = swir2.astype(np.uint16) * 257                      # the full 16-bit range
    a[HOLE] = 0
    out["uint16"] = (a, 0)
    a = swir2.astype(np.int16) * 100 - 12000                # -11900 .. 13500: negative values
    a[HOLE] = -32768
    out["int16"] = (a, -32768)
    a = swir2.astype(np.float32) / 255                       # reflectance-like
    a[HOLE] = np.nan
    out["float32"] = (a, math.nan)
    return out


@pytest.fixture(scope="module")
def dtype_runs(l7, l7_ref, tmp_path_factory) -> dict[str, dict]:
    """Each variant registered once against the red reference, aligned raster written."""
    d = tmp_path_factory.mktemp("dtypes")
    runs = {}
    for name, (pixels, nodata) in _dtype_variants(l7["bands"]["swir2"]).items():
        assert pixels.dtype.name == name
        mov = write_raster(d / f"mov_{name}.tif", pixels, crs=l7["crs"],
                           transform=l7["transform"] @ Affine.translation(*SHIFT), nodata=nodata)
        out = d / f"aligned_{name}.tif"
        result = register(str(l7_ref), str(mov), RegisterOptions(), OutputOptions(raster=str(out)))
        x, y = check_points(result.mov.width, result.mov.height)
        mapped = np.column_stack(result.mapping.apply(x, y))
        runs[name] = {"pixels": pixels, "nodata": nodata, "out": out, "result": result,
                      "check": np.column_stack([x, y]), "mapped": mapped}
    return runs


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def _valid(values: np.ndarray, nodata: float) -> np.ndarray:
    return ~np.isnan(values) if math.isnan(nodata) else values != nodata


def _content_error(aligned: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Mean |aligned - truth| on the valid interior, and the same for truth moved by one
    pixel: a correctly aligned raster is much closer than a one-pixel error."""
    interior = np.zeros_like(valid)
    interior[INTERIOR:-INTERIOR, INTERIOR:-INTERIOR] = True
    mask = valid & interior & np.isfinite(truth) & np.isfinite(np.roll(truth, 1, axis=1))
    assert mask.mean() > 0.5, "the aligned raster is mostly nodata"
    t = truth.astype(np.float64)
    err = float(np.abs(aligned.astype(np.float64) - t)[mask].mean())
    one_px = float(np.abs(np.roll(t, 1, axis=1) - t)[mask].mean())
    return err, one_px


def test_uint8_control_recovers_the_shift(dtype_runs):
    run = dtype_runs["uint8"]
    check, mapped = run["check"], run["mapped"]
    err = np.hypot(*(mapped - check).T)  # truth: identity in pixels
    assert err.max() < MAX_ERROR_PX
    # the georeferencing alone is SHIFT off: the correction did remove it
    gx, gy = run["result"].georef.apply(check[:, 0], check[:, 1])
    assert np.allclose(gx - check[:, 0], SHIFT[0]) and np.allclose(gy - check[:, 1], SHIFT[1])


@pytest.mark.parametrize("name", ["uint16", "int16", "float32"])
def test_registration_does_not_depend_on_the_data_type(dtype_runs, name):
    run, control = dtype_runs[name], dtype_runs["uint8"]
    err = np.hypot(*(run["mapped"] - run["check"]).T)
    assert err.max() < MAX_ERROR_PX, f"{name}: max check-grid error {err.max():.3f} px"
    # the same estimate as the uint8 original, not merely as good
    diff = np.hypot(*(run["mapped"] - control["mapped"]).T)
    assert diff.max() < SAME_ESTIMATE_PX, f"{name}: estimate differs from uint8 by {diff.max():.3g} px"
    assert run["result"].selected.kind == control["result"].selected.kind


@pytest.mark.parametrize("name", ["uint8", "uint16", "int16", "float32"])
def test_aligned_raster_keeps_dtype_nodata_and_values(dtype_runs, name):
    run = dtype_runs[name]
    pixels, nodata = run["pixels"], run["nodata"]
    with rasterio.open(run["out"]) as out:
        assert out.dtypes[0] == name
        assert _same(out.nodata, nodata), f"output nodata {out.nodata}, input {nodata}"
        aligned = out.read(1)
    valid = _valid(aligned, nodata)
    # the hole stays nodata, and nodata does not spread over the image
    assert not valid[_hole_inner()].any()
    assert valid.mean() > 0.95
    # values in the input's units, in place (the true mapping is the identity in pixels)
    truth = np.where(_valid(pixels, nodata), pixels, np.nan)
    err, one_px = _content_error(aligned, truth, valid)
    assert err < 0.5 * one_px, f"{name}: aligned differs by {err:.4g}; a 1 px shift gives {one_px:.4g}"
    # bilinear resampling stays within the input's range: no wrap-around, no nodata mixed in
    assert aligned[valid].min() >= np.nanmin(truth) and aligned[valid].max() <= np.nanmax(truth)
    if name == "int16":
        assert aligned[valid].min() < -5000, "negative values lost"
    if name == "uint16":
        assert aligned[valid].max() > 255 * 100, "values squeezed to 8 bits"


def _speckled(amplitude: np.ndarray, looks: int, seed: int = 0) -> np.ndarray:
    """A single-look complex raster whose ``looks`` x ``looks`` blocks all have the
    amplitude of one input pixel, each sample with its own random phase: multilooking
    (sqrt of mean |z|^2) over a block gives that amplitude back exactly, whereas the
    complex mean of random phases collapses towards zero."""
    rng = np.random.default_rng(seed)
    a = np.kron(amplitude.astype(np.float32), np.ones((looks, looks), np.float32))
    return (a * np.exp(1j * rng.uniform(-np.pi, np.pi, a.shape))).astype(np.complex64)


def test_complex_moving_registers_as_its_amplitude(l7, l7_ref, tmp_path):
    """A complex64 moving raster at 4x the reference resolution: read decimated at every
    level, so its amplitude must be formed before averaging (issue 11 multilook)."""
    k = COMPLEX_LOOKS
    swir2 = l7["bands"]["swir2"]
    mov = write_raster(tmp_path / "slc.tif", _speckled(swir2, k), crs=l7["crs"],
                       transform=l7["transform"] @ Affine.translation(*SHIFT) @ Affine.scale(1 / k))
    out = tmp_path / "aligned.tif"
    result = register(str(l7_ref), str(mov), RegisterOptions(), OutputOptions(raster=str(out)))
    x, y = check_points(result.mov.width, result.mov.height)
    mx, my = result.mapping.apply(x, y)
    err = np.hypot(mx - x / k, my - y / k)  # truth: moving pixel (x, y) shows reference pixel (x/k, y/k)
    assert err.max() < MAX_ERROR_PX, f"complex: max check-grid error {err.max():.3f} px"
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "float32"          # complex is written as amplitude
        assert (ds.width, ds.height) == (l7["width"], l7["height"])
        aligned = ds.read(1)
    valid = np.isfinite(aligned) if ds.nodata is None or math.isnan(ds.nodata) else aligned != ds.nodata
    # 16 looks per output pixel: the multilooked amplitude is the band itself, not the
    # ~4x smaller, speckled modulus of the complex mean
    err, one_px = _content_error(aligned, swir2.astype(np.float64), valid)
    assert err < 0.5 * one_px, f"complex: aligned amplitude differs by {err:.3g}; a 1 px shift gives {one_px:.3g}"


def test_decimated_complex_read_is_multilooked(tmp_path):
    """A 4x decimated read of complex data is sqrt(mean |z|^2) over 4 x 4 blocks (the
    multilooked amplitude), not |mean z|."""
    rng = np.random.default_rng(5)
    amplitude = rng.uniform(1.0, 5.0, (256, 256))
    z = (amplitude * np.exp(1j * rng.uniform(-np.pi, np.pi, amplitude.shape))).astype(np.complex64)
    path = write_raster(tmp_path / "slc.tif", z, crs="EPSG:32618",
                        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0))
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], lambda x, y: (4 * x, 4 * y), (64, 64))
    blocks = z.astype(np.complex128).reshape(64, 4, 64, 4)
    multilooked = np.sqrt((np.abs(blocks) ** 2).mean(axis=(1, 3)))
    collapsed = np.abs(blocks.mean(axis=(1, 3)))
    assert np.abs(multilooked - collapsed).mean() > 1.0      # the two answers really differ here
    assert valid.all()
    assert np.allclose(values[0], multilooked, rtol=1e-4, atol=1e-5)
