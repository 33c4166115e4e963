"""dmreg.io.sampling.sample_onto_grid: bounded reads, pixel convention, decimation,
complex amplitude, nodata masking."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling

from dmreg.io.sampling import LATTICE_STEP, sample_onto_grid
from helpers import write_raster

CRS = "EPSG:32618"
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)


class ReadSpy:
    """Wraps a dataset and records every pixel read (window and output shape)."""

    def __init__(self, ds):
        self._ds = ds
        self.reads: list[tuple[str, object, object]] = []

    def read(self, *args, **kwargs):
        self.reads.append(("read", kwargs.get("window"), kwargs.get("out_shape")))
        return self._ds.read(*args, **kwargs)

    def read_masks(self, *args, **kwargs):
        self.reads.append(("read_masks", kwargs.get("window"), kwargs.get("out_shape")))
        return self._ds.read_masks(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._ds, name)


def identity(x, y):
    return x, y


def offset(dx, dy):
    return lambda x, y: (x + dx, y + dy)


@pytest.fixture(scope="module")
def float_raster(tmp_path_factory):
    """A 2-band float32 raster, 300 x 240, smooth plus noise."""
    rng = np.random.default_rng(42)
    rows, cols = 240, 300
    yy, xx = np.mgrid[0:rows, 0:cols]
    b1 = (np.sin(xx / 7.0) + np.cos(yy / 5.0) + rng.normal(0, 0.1, (rows, cols))).astype(np.float32)
    b2 = (xx * 0.5 - yy * 0.25).astype(np.float32)
    data = np.stack([b1, b2])
    path = write_raster(tmp_path_factory.mktemp("sampling") / "float.tif", data, crs=CRS, transform=TRANSFORM)
    return path, data


def test_identity_returns_the_pixels(float_raster):
    path, data = float_raster
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1, 2], identity, data.shape[1:])
    assert values.dtype == np.float32 and values.shape == data.shape
    assert valid.shape == data.shape[1:] and valid.all()
    assert np.allclose(values, data, atol=1e-5)


def test_integer_offset_reads_only_a_bounded_window(float_raster):
    path, data = float_raster
    rows, cols = 20, 30
    with rasterio.open(path) as ds:
        spy = ReadSpy(ds)
        values, valid = sample_onto_grid(spy, [1], offset(100, 50), (rows, cols))
    assert np.allclose(values[0], data[0, 50:50 + rows, 100:100 + cols], atol=1e-5)
    assert valid.all()
    assert spy.reads, "nothing was read"
    for _, window, _ in spy.reads:
        assert window is not None, "the whole raster was read"
        # the grid plus a few pixels of margin, never the 300 x 240 raster
        assert window.width <= cols + 8 and window.height <= rows + 8, window
        assert 100 - 4 <= window.col_off <= 100 and 50 - 4 <= window.row_off <= 50, window
    pixels_read = sum(w.width * w.height for _, w, _ in spy.reads)
    assert pixels_read <= 2 * (cols + 8) * (rows + 8)


def test_half_pixel_offset_interpolates_bilinearly(float_raster):
    """Output pixel centre (c + 0.5) + 0.5 is the corner between source pixels c and c + 1
    (corner-at-0 convention), so bilinear gives their mean."""
    path, data = float_raster
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [2, 1], offset(0.5, 0.0), (100, 100))
    expected = 0.5 * (data[1, :100, :100] + data[1, :100, 1:101])
    assert np.allclose(values[0], expected, atol=1e-3)
    expected = 0.5 * (data[0, :100, :100] + data[0, :100, 1:101])
    assert np.allclose(values[1], expected, atol=1e-3)
    assert valid.all()


def test_two_times_decimation_averages_blocks(float_raster):
    """Output pixels of 2 x 2 source pixels: a decimated (averaged) read, not point sampling."""
    path, data = float_raster
    rows, cols = data.shape[1] // 2, data.shape[2] // 2
    with rasterio.open(path) as ds:
        spy = ReadSpy(ds)
        values, valid = sample_onto_grid(spy, [1], lambda x, y: (2 * x, 2 * y), (rows, cols))
    blocks = data[0].reshape(rows, 2, cols, 2).mean(axis=(1, 3))
    assert valid.all()
    assert np.allclose(values[0], blocks, atol=1e-4)
    # the read itself is decimated: never more output pixels than about the grid's
    reads = [r for r in spy.reads if r[0] == "read"]
    assert reads and all(shape is not None and np.prod(shape[-2:]) <= (rows + 4) * (cols + 4)
                         for _, _, shape in reads)


def test_outside_the_raster_is_invalid(float_raster):
    path, data = float_raster
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], offset(10_000, 10_000), (16, 16))
        assert not valid.any()
        # half in, half out: the left 10 columns fall left of the raster
        values, valid = sample_onto_grid(ds, [1], offset(-10, 20), (16, 30))
    assert not valid[:, :10].any()
    assert valid[:, 11:].all()
    assert np.allclose(values[0][:, 11:], data[0, 20:36, 1:20], atol=1e-5)


def test_complex_is_sampled_as_amplitude(tmp_path):
    rng = np.random.default_rng(3)
    amplitude = rng.uniform(1.0, 5.0, (40, 50)).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, (40, 50)).astype(np.float32)
    data = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    path = write_raster(tmp_path / "slc.tif", data, crs=CRS, transform=TRANSFORM)
    with rasterio.open(path) as ds:
        assert ds.dtypes[0] == "complex64"
        values, valid = sample_onto_grid(ds, [1], identity, (40, 50))
    assert values.dtype == np.float32
    assert valid.all()
    assert np.allclose(values[0], amplitude, rtol=1e-5)


def test_complex_interpolates_amplitude_not_phase(tmp_path):
    """Halfway between +a and -a the complex mean is 0; the amplitude mean is a."""
    data = np.ones((16, 16), np.complex64) * 3.0
    data[:, 1::2] *= -1
    path = write_raster(tmp_path / "alt.tif", data, crs=CRS, transform=TRANSFORM)
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], offset(0.5, 0.0), (16, 14))
    assert valid.all()
    assert np.allclose(values[0], 3.0, atol=1e-4)


@pytest.fixture()
def nodata_raster(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.integers(100, 200, (60, 60)).astype(np.int16)
    data[20:24, 30:35] = -9999
    data[45, 10] = -9999
    return write_raster(tmp_path / "nodata.tif", data, crs=CRS, transform=TRANSFORM, nodata=-9999), data


def _far_from(mask: np.ndarray, distance: int) -> np.ndarray:
    near = np.zeros_like(mask)
    for r, c in zip(*np.nonzero(mask)):
        near[max(r - distance, 0):r + distance + 1, max(c - distance, 0):c + distance + 1] = True
    return ~near


def test_nodata_is_masked(nodata_raster):
    path, data = nodata_raster
    bad = data == -9999
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], identity, data.shape)
    assert not valid[bad].any()
    assert valid[_far_from(bad, 1)].all()
    assert np.array_equal(values[0][valid], data[valid].astype(np.float32))


def test_nodata_does_not_bleed_into_interpolated_values(nodata_raster):
    path, data = nodata_raster
    bad = data == -9999
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], offset(0.5, 0.5), (59, 59))
    # every output pixel whose 2 x 2 source neighbourhood touches nodata is invalid ...
    touches = bad[:-1, :-1] | bad[1:, :-1] | bad[:-1, 1:] | bad[1:, 1:]
    assert not valid[touches].any()
    assert valid[~touches].all()
    # ... and valid values stay within the data range (no -9999 mixed in)
    assert values[0][valid].min() >= 100 and values[0][valid].max() <= 199


def test_nan_is_masked(tmp_path):
    data = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    data[5, 7] = np.nan
    path = write_raster(tmp_path / "nan.tif", data, crs=CRS, transform=TRANSFORM)
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], identity, data.shape)
    assert not valid[5, 7]
    assert np.isfinite(values).all()
    assert valid[_far_from(~np.isfinite(data), 1)].all()


def test_unsupported_resampling_is_refused(float_raster):
    path, _ = float_raster
    with rasterio.open(path) as ds, pytest.raises(ValueError):
        sample_onto_grid(ds, [1], identity, (8, 8), resampling=Resampling.mode)


def test_non_finite_source_coordinates_are_invalid_not_an_error(float_raster):
    """A mapping with no answer somewhere (an inverse that did not converge) gives NaN
    coordinates: those pixels are invalid, the others are read as usual."""
    path, data = float_raster

    def partly_nan(x, y):
        x = np.asarray(x, float)
        return np.where(x < 5, np.nan, x), np.asarray(y, float)

    far = 5 + LATTICE_STEP  # coordinates are interpolated from a lattice: NaN reaches one lattice step
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], partly_nan, (16, 32))
        assert not valid[:, :5].any() and valid[:, far:].all()
        assert np.allclose(values[0][:, far:], data[0, :16, far:32], atol=1e-5)
        _, valid = sample_onto_grid(ds, [1], lambda x, y: (np.full_like(x, np.nan), y), (8, 8))
    assert not valid.any()


def test_a_block_stretched_over_the_whole_raster_reads_a_bounded_window(float_raster, monkeypatch):
    """One output row and column mapped to the far edges (a homography near its horizon
    does this): the window spans the raster, but the read is decimated to at most
    MAX_READ_RATIO source pixels per output pixel."""
    from dmreg.io import sampling

    shapes = []
    real_read = sampling._read_window
    monkeypatch.setattr(sampling, "_read_window",
                        lambda ds, bands, window, out_shape, **kw: shapes.append(out_shape)
                        or real_read(ds, bands, window, out_shape, **kw))

    def far_flung(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return np.where(x > 30, 299.0, x), np.where(y > 30, 239.0, y)

    path, _ = float_raster
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], far_flung, (32, 32))
    (rows, cols), = shapes
    assert rows * cols <= sampling.MAX_READ_RATIO * 32 * 32
    assert valid.any() and np.isfinite(values[0][valid]).all()


@pytest.mark.parametrize("dtype, nodata, holes", [
    ("uint16", 0, 0),
    ("int16", -9999, -9999),
    ("float32", -3.4028234663852886e38, -3.4028234663852886e38),
    ("float32", float("nan"), float("nan")),
    ("uint8", 300, 0),     # a nodata value no uint8 can hold: nothing is nodata
    ("uint16", None, 0),   # no mask at all: everything is valid
])
def test_masks_computed_from_the_values_equal_gdals(tmp_path, dtype, nodata, holes):
    """Full-resolution reads derive a nodata (or all-valid) mask from the values instead
    of having GDAL decode the blocks again: the result must be GDAL's own mask."""
    from dmreg.io.sampling import _read_window
    from rasterio.windows import Window

    rng = np.random.default_rng(3)
    data = rng.integers(1, 200, (60, 70)).astype(dtype)
    data[10:25, 5:30] = holes
    data[40, 40] = holes
    storable = nodata is not None and dtype != "uint8"  # GDAL refuses to store an out-of-range nodata
    path = write_raster(tmp_path / "m.tif", data, crs=CRS, transform=TRANSFORM, nodata=nodata if storable else None)
    if nodata is not None and not storable:  # so it is set on the band afterwards
        with rasterio.open(path, "r+") as ds:
            ds.nodata = nodata
    window = Window(3, 4, 50, 45)
    with rasterio.open(path) as ds:
        spy = ReadSpy(ds)
        values, valid = _read_window(spy, [1], window, (45, 50))
        expected = ds.read_masks(1, window=window) > 0
    assert not any(kind == "read_masks" for kind, _, _ in spy.reads)
    np.testing.assert_array_equal(valid, expected & np.isfinite(values[0]))


def test_decimated_mask_from_values_keeps_every_block_with_a_valid_pixel(tmp_path):
    """GDAL's average leaves nodata out, so a decimated pixel is nodata only where its
    whole block is; every other one holds the mean of its valid pixels."""
    data = np.full((40, 40), 100, np.uint16)
    data[:, :10] = 0           # whole 4x4 blocks of nodata
    data[0:4, 20:22] = 0       # half a block
    path = write_raster(tmp_path / "d.tif", data, crs=CRS, transform=TRANSFORM, nodata=0)
    from dmreg.io.sampling import _read_window
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        values, valid = _read_window(ds, [1], Window(0, 0, 40, 40), (10, 10))
    assert not valid[:, :2].any() and valid[:, 3:].all()
    assert values[0, 0, 5] == 100  # the half-nodata block averages its valid half only


def test_decimated_reads_come_from_the_overviews_when_the_file_has_them(tmp_path):
    """A coarse read of a file with overviews (a COG, say) is served from them instead of
    decoding every full-resolution block. Shown by changing the full-resolution pixels
    after the overviews were built: a 4x decimated read still gives the overview's."""
    data = np.full((256, 256), 10.0, np.float32)
    path = write_raster(tmp_path / "ovr.tif", data, crs=CRS, transform=TRANSFORM, tiled=True,
                        blockxsize=64, blockysize=64)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
        ds.write(np.full((1, 256, 256), 50.0, np.float32))  # the overviews keep the old pixels
    with rasterio.open(path) as ds:
        coarse, _ = sample_onto_grid(ds, [1], lambda x, y: (4 * x, 4 * y), (64, 64))
        full, _ = sample_onto_grid(ds, [1], identity, (64, 64))
    assert np.allclose(coarse[0][4:-4, 4:-4], 10.0)
    assert np.allclose(full[0], 50.0)
