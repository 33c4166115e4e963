"""Fixtures: small GeoTIFFs made from the sample data with known misregistrations.

Bands of one scene are co-registered by the data provider, so a misregistration the
test applies to one band is the ground truth of a (cross-band, hence cross-modal)
registration problem. Everything is written under pytest's tmp folders; the sample
data in examples/ is only read.

Every case is written once per session (registration inputs are never modified; that
is itself tested in test_outputs.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import array_bounds
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.warp import transform as warp_transform

from helpers import CROP, HOLE, L7, L7_BANDS, LT05, MULTI_BANDS, MULTI_NODATA, SHIFT, Case, write_raster

AFFINE_ANGLE_DEG = 1.5
AFFINE_SCALE = 1.02
AFFINE_SHIFT = (2.3, -1.6)
OTHER_CRS = "EPSG:31984"          # the UTM zone west of the sample's EPSG:31985
OTHER_CRS_SHIFT = (2.6, -1.8)
THERMAL_SHIFT = (2.0, -1.5)


@pytest.fixture(scope="session")
def l7() -> dict:
    """All six L7 bands (uint8, rows x cols) and the georeferencing."""
    with rasterio.open(L7) as ds:
        bands = {name: ds.read(i) for name, i in L7_BANDS.items()}
        return {"bands": bands, "crs": ds.crs, "transform": ds.transform,
                "width": ds.width, "height": ds.height}


@pytest.fixture(scope="session")
def case_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cases")


@pytest.fixture(scope="session")
def l7_ref(l7, case_dir) -> Path:
    """The reference of all L7 cases: the red band, as georeferenced in the scene."""
    return write_raster(case_dir / "ref_red.tif", l7["bands"]["red"], crs=l7["crs"], transform=l7["transform"])


def _identity(x, y):
    return np.asarray(x, float), np.asarray(y, float)


def _shift_case(l7, l7_ref, case_dir, band: str) -> Case:
    """Moving = an L7 band whose geotransform is shifted by SHIFT pixels: the pixels are
    untouched, so the true mapping is the identity in pixels."""
    mov = write_raster(case_dir / f"shift_{band}.tif", l7["bands"][band], crs=l7["crs"],
                       transform=l7["transform"] @ Affine.translation(*SHIFT))
    return Case(f"shift-{band}", l7_ref, mov, _identity, (l7["width"], l7["height"]), l7["bands"][band])


def affine_matrix(width: int, height: int) -> np.ndarray:
    """The true moving pixel -> reference pixel affine (dmreg pixel convention): a 1.5
    degree rotation and 2 % scale about the image centre, then a shift."""
    a = np.deg2rad(AFFINE_ANGLE_DEG)
    r = AFFINE_SCALE * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([width / 2, height / 2])
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = c - r @ c + np.array(AFFINE_SHIFT)
    return m


def _affine_case(l7, l7_ref, case_dir, band: str) -> Case:
    """Moving pixels resampled so that moving(p) = band(A p) (A in dmreg's corner
    convention); same geotransform as the reference; true mapping x_ref = A x_mov."""
    w, h = l7["width"], l7["height"]
    a = affine_matrix(w, h)
    # cv2 puts pixel centres on integers: p_cv = p_dmreg - 0.5, so A_cv = T(-0.5) A T(+0.5)
    to_cv, from_cv = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]), np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    a_cv = to_cv @ a @ from_cv
    moved = cv2.warpAffine(l7["bands"][band], a_cv[:2], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mov = write_raster(case_dir / f"affine_{band}.tif", moved, crs=l7["crs"], transform=l7["transform"], nodata=0)

    def truth(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return a[0, 0] * x + a[0, 1] * y + a[0, 2], a[1, 0] * x + a[1, 1] * y + a[1, 2]

    return Case(f"affine-{band}", l7_ref, mov, truth, (w, h), l7["bands"][band])


def _other_crs_case(l7, l7_ref, case_dir, band: str) -> Case:
    """Moving = the band reprojected into the neighbouring UTM zone, then its geotransform
    shifted by OTHER_CRS_SHIFT pixels. Truth: moving pixel -> (unshifted) map -> reference pixel."""
    w, h, src_crs, src_t = l7["width"], l7["height"], l7["crs"], l7["transform"]
    dst_t, dw, dh = calculate_default_transform(src_crs, OTHER_CRS, w, h, *array_bounds(h, w, src_t))
    out = np.zeros((dh, dw), np.uint8)
    reproject(l7["bands"][band], out, src_transform=src_t, src_crs=src_crs, dst_transform=dst_t,
              dst_crs=OTHER_CRS, resampling=Resampling.bilinear, dst_nodata=0)
    mov = write_raster(case_dir / f"crs_{band}.tif", out, crs=OTHER_CRS,
                       transform=dst_t @ Affine.translation(*OTHER_CRS_SHIFT), nodata=0)

    def truth(x, y):
        mx, my = dst_t @ (np.asarray(x, float), np.asarray(y, float))
        rx, ry = warp_transform(OTHER_CRS, src_crs, np.ravel(mx), np.ravel(my))
        px, py = ~src_t @ (np.asarray(rx), np.asarray(ry))
        return np.asarray(px).reshape(np.shape(x)), np.asarray(py).reshape(np.shape(y))

    return Case(f"crs-{band}", l7_ref, mov, truth, (w, h), l7["bands"][band])


@pytest.fixture(scope="session")
def shift_swir2(l7, l7_ref, case_dir) -> Case:
    return _shift_case(l7, l7_ref, case_dir, "swir2")


@pytest.fixture(scope="session")
def shift_nir(l7, l7_ref, case_dir) -> Case:
    return _shift_case(l7, l7_ref, case_dir, "nir")


@pytest.fixture(scope="session")
def affine_swir2(l7, l7_ref, case_dir) -> Case:
    return _affine_case(l7, l7_ref, case_dir, "swir2")


@pytest.fixture(scope="session")
def affine_nir(l7, l7_ref, case_dir) -> Case:
    return _affine_case(l7, l7_ref, case_dir, "nir")


@pytest.fixture(scope="session")
def crs_swir2(l7, l7_ref, case_dir) -> Case:
    return _other_crs_case(l7, l7_ref, case_dir, "swir2")


@pytest.fixture(scope="session")
def crs_nir(l7, l7_ref, case_dir) -> Case:
    return _other_crs_case(l7, l7_ref, case_dir, "nir")


@pytest.fixture(scope="session")
def thermal(case_dir) -> Case:
    """Landsat 5: red (B3) reference, thermal (B6) moving with a shifted geotransform."""
    with rasterio.open(LT05["B3"]) as ds:
        red, profile = ds.read(1), ds.profile
    with rasterio.open(LT05["B6"]) as ds:
        tir = ds.read(1)
    ref = write_raster(case_dir / "lt05_b3.tif", red, crs=profile["crs"], transform=profile["transform"],
                       nodata=profile["nodata"])
    mov = write_raster(case_dir / "lt05_b6_shift.tif", tir, crs=profile["crs"],
                       transform=profile["transform"] @ Affine.translation(*THERMAL_SHIFT), nodata=profile["nodata"])
    return Case("thermal", ref, mov, _identity, (red.shape[1], red.shape[0]), tir)


@pytest.fixture(scope="session")
def multiband(l7, l7_ref, case_dir) -> Case:
    """Moving = 3 L7 bands (SWIR2, NIR, SWIR1) cropped to CROP, nodata 0 with a nodata hole
    at HOLE, geotransform of the crop shifted by SHIFT pixels. The true mapping is then
    x_ref = x_mov + CROP col offset, y_ref = y_mov + CROP row offset; ``source_band``
    holds the three full-scene bands (hole included) on the reference grid."""
    stack = np.stack([l7["bands"][b] for b in MULTI_BANDS])
    assert (stack != MULTI_NODATA).all(), "sample data unexpectedly contains the nodata value"
    stack[:, HOLE[0], HOLE[1]] = MULTI_NODATA
    dy, dx = CROP[0].start, CROP[1].start
    crop_t = l7["transform"] @ Affine.translation(dx, dy)
    mov = write_raster(case_dir / "multi_crop_shift.tif", np.ascontiguousarray(stack[:, CROP[0], CROP[1]]),
                       crs=l7["crs"], transform=crop_t @ Affine.translation(*SHIFT), nodata=MULTI_NODATA)

    def truth(x, y):
        return np.asarray(x, float) + dx, np.asarray(y, float) + dy

    return Case("multiband", l7_ref, mov, truth, (l7["width"], l7["height"]), stack)


@pytest.fixture
def one_torch_thread():
    """A training job may share this machine: torch tests run on one thread (used by the
    learned-model test modules through ``pytestmark``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
