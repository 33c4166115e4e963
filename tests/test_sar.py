"""SAR radiometry: complex rasters are multilooked (intensity averaged) before their
amplitude is taken, and linear and dB SAR products are shown to the matchers alike."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from dmreg.errors import UsageError
from dmreg.io.sampling import normalise_contrast, sample_onto_grid
from dmreg.io.sar import multilooked_amplitude, sar_view
from dmreg.options import RegisterOptions
from dmreg.pipeline import OutputOptions, estimate, register
from tests.helpers import DATA

UPSAMPLE = 4


@pytest.fixture(scope="module")
def sar_files(tmp_path_factory) -> dict[str, str]:
    """The example SWIR2 band (shifted geotransform) as 4x finer single-look complex SAR,
    and as linear and dB intensity with the same speckle."""
    folder = tmp_path_factory.mktemp("sar")
    with rasterio.open(DATA / "L7_SWIR2_offset.tif") as src:
        image = src.read(1).astype(np.float32)
        crs, transform = src.crs, src.transform @ Affine.scale(1 / UPSAMPLE)
    size = (image.shape[1] * UPSAMPLE, image.shape[0] * UPSAMPLE)
    intensity = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC).clip(1.0, None)
    rng = np.random.default_rng(7)
    noise = rng.standard_normal(intensity.shape) + 1j * rng.standard_normal(intensity.shape)
    slc = (np.sqrt(intensity / 2) * noise).astype(np.complex64)
    linear = (np.abs(slc) ** 2).astype(np.float32)
    files = {"slc": slc, "linear": linear, "db": (10 * np.log10(linear.clip(1e-3))).astype(np.float32)}
    paths = {}
    for name, data in files.items():
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=size[0], height=size[1], count=1, dtype=data.dtype,
                           crs=crs, transform=transform, tiled=True) as dst:
            dst.write(data, 1)
        paths[name] = str(path)
    return paths


def test_multilooking_averages_intensity_not_complex_values(sar_files):
    with rasterio.open(sar_files["slc"]) as ds:
        z = ds.read(1, window=Window(0, 0, 64, 64)).astype(np.complex128)
        looked = multilooked_amplitude(ds, [1], Window(0, 0, 64, 64), (16, 16))[0]
    expected = np.sqrt((np.abs(z) ** 2).reshape(16, 4, 16, 4).mean(axis=(1, 3)))
    np.testing.assert_allclose(looked, expected, rtol=1e-4)
    collapsed = np.abs(z.reshape(16, 4, 16, 4).mean(axis=(1, 3)))  # what averaging complex values gives
    assert collapsed.mean() < 0.6 * expected.mean()


def test_decimated_complex_read_keeps_the_amplitude_level(sar_files):
    """A 4x decimated read of the SLC has the mean amplitude of the multilooked image."""
    with rasterio.open(sar_files["slc"]) as ds:
        values, valid = sample_onto_grid(ds, [1], lambda x, y: (x * UPSAMPLE, y * UPSAMPLE),
                                         (ds.height // UPSAMPLE, ds.width // UPSAMPLE))
        z = ds.read(1).astype(np.complex128)
    h, w = z.shape[0] // UPSAMPLE, z.shape[1] // UPSAMPLE
    expected = np.sqrt((np.abs(z) ** 2).reshape(h, UPSAMPLE, w, UPSAMPLE).mean(axis=(1, 3)))
    assert valid[2:-2, 2:-2].all()
    np.testing.assert_allclose(values[0][2:-2, 2:-2], expected[2:-2, 2:-2], rtol=1e-3)


def test_linear_and_db_sar_are_seen_alike(sar_files):
    """Hinted as SAR, a linear product and its dB twin give the same tile image in db;
    without the hint the linear one is left linear."""
    images = {}
    for name in ("linear", "db"):
        with rasterio.open(sar_files[name]) as ds:
            values, valid = sample_onto_grid(ds, [1], lambda x, y: (x, y), (256, 256))
            view = sar_view(ds, 1, "sar", "db")
            images[name] = normalise_contrast(values[0] if view is None else view(values[0], valid), valid)
            if name == "linear":
                assert view is not None and sar_view(ds, 1, None, "db") is None
            else:
                assert view is None  # already dB
    np.testing.assert_allclose(images["linear"], images["db"], atol=2e-3)


def test_scales_of_a_complex_raster(sar_files):
    with rasterio.open(sar_files["slc"]) as ds:
        amplitude = np.array([[1.0, 10.0]], np.float32)
        ok = np.ones_like(amplitude, bool)
        assert sar_view(ds, 1, None, "amplitude") is None
        np.testing.assert_allclose(sar_view(ds, 1, None, "intensity")(amplitude, ok), [[1.0, 100.0]])
        np.testing.assert_allclose(sar_view(ds, 1, None, "db")(amplitude, ok), [[0.0, 10.0]])


@pytest.mark.parametrize("scale", ["db", "amplitude", "intensity"])
def test_single_look_complex_registers(sar_files, scale):
    """The speckled SLC (4x finer than the reference) against the optical SWIR2 band:
    the content lies exactly at reference pixel = SLC pixel / 4."""
    result = estimate(str(DATA / "L7_ETMs.tif"), sar_files["slc"], RegisterOptions(ref_band=6, sar_scale=scale))
    at = np.array([100.5, 600.5, 1200.5])
    x, y = result.mapping.apply(at, at[::-1])
    error = np.hypot(x - at / UPSAMPLE, y - at[::-1] / UPSAMPLE)
    assert error.max() < 0.25, error  # measured 0.01-0.10 px; averaging complex values gave 0.19


def test_unknown_sar_scale_is_a_usage_error():
    with pytest.raises(UsageError, match="--sar-scale"):
        RegisterOptions(sar_scale="sigma0")


def test_complex_int16_registers_and_copies(tmp_path):
    """GDAL's CInt16 (Sentinel-1 SLC TIFFs), which rasterio names ``complex_int16`` and
    numpy does not know: it registers, is written as float32 amplitude when resampled and
    copied as complex_int16 with --no-resample."""
    with rasterio.open(DATA / "L7_SWIR2_offset.tif") as src:
        image, crs, transform = src.read(1).astype(float), src.crs, src.transform
    rng = np.random.default_rng(5)
    z = np.sqrt(np.clip(image, 1, None) * 50) * np.exp(1j * rng.uniform(0, 2 * np.pi, image.shape))
    path = tmp_path / "cint16.tif"
    with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=1,
                       dtype="complex_int16", crs=crs, transform=transform) as dst:
        dst.write(z.astype(np.complex64), 1)
    aligned, copied = tmp_path / "aligned.tif", tmp_path / "copied.tif"
    result = register(str(DATA / "L7_ETMs.tif"), str(path), RegisterOptions(ref_band=6),
                      OutputOptions(raster=str(aligned)))
    register(str(DATA / "L7_ETMs.tif"), str(path), RegisterOptions(ref_band=6),
             OutputOptions(raster=str(copied), resample=False, driver="GTiff"))
    x, y = result.mapping.apply(np.array([100.5]), np.array([100.5]))
    assert np.hypot(x - 100.5, y - 100.5).max() < 0.1  # measured 0.008
    with rasterio.open(aligned) as a, rasterio.open(copied) as c:
        assert a.dtypes[0] == "float32" and c.dtypes[0] == "complex_int16"
