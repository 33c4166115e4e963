"""The aligned raster through GDAL's warper equals dmreg's own block resampler.

GDAL writes the output wherever the whole mapping is affine in one CRS (it is
multi-threaded and several times faster); the hand resampler stays for every other
mapping. The two must put every pixel in the same place: the shift between their
outputs, measured by least squares on the image gradient, is under 0.01 px in each
quarter of a real Landsat band (a rotation or scale error would show as different
shifts in different quarters).
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from dmreg.io.writing import write_resampled
from dmreg.options import RegisterOptions
from dmreg.output import _gdal_warp_transform, write_aligned
from dmreg.pipeline import estimate

from helpers import Case


def _shift_between(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(dx, dy) with a(p) ~ b(p + d), from a - b ~ grad(b) . d (valid for |d| << 1 px)."""
    gy, gx = np.gradient(b)
    design = np.column_stack([gx[mask], gy[mask]])
    d, *_ = np.linalg.lstsq(design, (a - b)[mask], rcond=None)
    return d


def _quarters(shape: tuple[int, int], margin: int) -> list[tuple[slice, slice]]:
    h, w = shape
    rows = (slice(margin, h // 2), slice(h // 2, h - margin))
    cols = (slice(margin, w // 2), slice(w // 2, w - margin))
    return [(r, c) for r in rows for c in cols]


def _read(path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as ds:
        return ds.read(1).astype(np.float64), ds.read_masks(1) > 0


@pytest.mark.parametrize("grid", ["reference", "moving"])
def test_gdal_warper_equals_hand_resampler(affine_swir2: Case, tmp_path, grid):
    case = affine_swir2
    result = estimate(str(case.ref), str(case.mov), RegisterOptions(model="affine"))
    assert _gdal_warp_transform(result, grid) is not None, "an affine model in one CRS goes through GDAL"
    gdal_out, hand_out = tmp_path / "gdal.tif", tmp_path / "hand.tif"
    write_aligned(result, gdal_out, grid=grid, resampling=Resampling.bilinear)

    target = result.ref if grid == "reference" else result.mov
    if grid == "reference":
        coords = result.mapping.inverse
    else:
        def coords(x, y):
            return result.mapping.inverse(*result.georef.apply(x, y))
    with rasterio.open(case.mov) as src:
        write_resampled(src, hand_out, dst_crs=target.crs, dst_transform=target.transform,
                        dst_size=(target.width, target.height), dst_coords=coords,
                        resampling=Resampling.bilinear, nodata=0, creation_options={}, overwrite=False)

    with rasterio.open(gdal_out) as g, rasterio.open(hand_out) as h:
        assert g.transform.almost_equals(h.transform) and g.crs == h.crs
        assert (g.width, g.height, g.nodata) == (h.width, h.height, h.nodata)
    a, a_ok = _read(gdal_out)
    b, b_ok = _read(hand_out)
    # GDAL renormalises over valid neighbours at nodata edges where dmreg marks the pixel invalid
    assert (a_ok & ~b_ok).mean() < 0.01 and (b_ok & ~a_ok).mean() < 0.001
    both = a_ok & b_ok
    for rows, cols in _quarters(a.shape, margin=12):
        mask = both[rows, cols]
        assert mask.mean() > 0.5
        dx, dy = _shift_between(a[rows, cols], b[rows, cols], mask)
        assert np.hypot(dx, dy) < 0.01, f"GDAL's output is ({dx:.4f}, {dy:.4f}) px off the hand resampler's"
        assert np.abs(a[rows, cols] - b[rows, cols])[mask].mean() < 1.0  # DN, uint8: rounding only


def test_non_affine_or_reprojected_mappings_keep_the_hand_resampler(crs_swir2: Case, affine_swir2: Case):
    reprojected = estimate(str(crs_swir2.ref), str(crs_swir2.mov), RegisterOptions(model="affine"))
    assert _gdal_warp_transform(reprojected, "reference") is None
    homography = estimate(str(affine_swir2.ref), str(affine_swir2.mov), RegisterOptions(model="homography"))
    assert _gdal_warp_transform(homography, "reference") is None
