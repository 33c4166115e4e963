"""Where a model has no answer it says so (NaN), and the writer leaves those pixels
empty instead of inventing them: a homography past its horizon, a quadratic that does
not invert far from its data."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.enums import Resampling

from dmreg.estimate.models import Transform, fit
from dmreg.io.writing import write_resampled
from tests.helpers import DATA

HORIZON_X = 200.0
TILTED = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0 / HORIZON_X, 0.0, 1.0]])
"""w = 1 - x / 200: the line x = 200 is this homography's horizon."""


def test_points_past_a_homography_horizon_have_no_image():
    t = Transform("homography", matrix=TILTED)
    x = np.array([10.0, 150.0, 199.0, 201.0, 400.0])
    px, py = t.apply(x, np.full(5, 30.0))
    assert np.isfinite(px[:3]).all() and np.isnan(px[3:]).all() and np.isnan(py[3:]).all()
    np.testing.assert_allclose(px[:3], x[:3] / (1 - x[:3] / HORIZON_X))
    # the inverse is normalised the same way: its own horizon is honoured too
    qx, qy = t.inverse(px[:3], py[:3])
    np.testing.assert_allclose(np.column_stack([qx, qy]), np.column_stack([x[:3], np.full(3, 30.0)]), atol=1e-9)


def test_polynomial_inverse_is_nan_where_it_does_not_converge():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 1000, (60, 2))
    dst = src + np.column_stack([2e-4 * src[:, 0] ** 2, 3e-4 * src[:, 1] ** 2])
    model = fit("polynomial2", src, dst)
    x, y = model.inverse(dst[:5, 0], dst[:5, 1])
    np.testing.assert_allclose(np.column_stack([x, y]), src[:5], atol=1e-6)
    # a parabola x + 2e-4 x² never reaches below x = -1250: there is no inverse there
    far = np.array([-20000.0])
    fx, fy = model.inverse(far, np.array([500.0]))
    assert np.isnan(fx).all() and np.isnan(fy).all()


def test_writer_leaves_pixels_past_the_horizon_empty(tmp_path):
    """Output x < 200 maps through the homography into the source; beyond the horizon
    there is no source pixel, and the output there is nodata: before, a point past the
    horizon was projected through it onto a mirrored image."""
    src_path = DATA / "L7_ETMs.tif"
    t = Transform("homography", matrix=TILTED)
    out = tmp_path / "tilted.tif"
    with rasterio.open(src_path) as src:
        write_resampled(src, out, dst_crs=src.crs, dst_transform=src.transform, dst_size=(src.width, src.height),
                        dst_coords=t.apply, resampling=Resampling.nearest, nodata=0, creation_options={},
                        overwrite=False)
        image = src.read(1).astype(float)
    with rasterio.open(out) as ds:
        written = ds.read(1).astype(float)
        valid = ds.read_masks(1) > 0
    assert not valid[:, 201:].any()
    # inside the horizon every pixel is the source pixel the homography points at
    rows, cols = np.mgrid[0:170, 0:40] + 0.5  # maps inside the source: w >= 0.8
    sx, sy = t.apply(cols.ravel(), rows.ravel())
    expected = image[np.floor(sy).astype(int), np.floor(sx).astype(int)].reshape(rows.shape)
    assert valid[3:170, 3:40].all()
    # one decimation factor serves a whole block, and the stretch here runs to infinity at
    # the horizon: the picture is right but smoothed (correlation measured 0.9)
    assert np.corrcoef(written[3:170, 3:40].ravel(), expected[3:170, 3:40].ravel())[0, 1] > 0.8
