"""The predicted error includes how far a more general model that also explains the
matches puts points from the chosen one: the bootstrap alone cannot see a model too
simple for the data (its replicates share the bias).

The end-to-end case shows the red band of the sample scene only in a central window of
140 x 140 px (the rest flat): translation is chosen, and a similarity or an affine
fitted to the same central matches extrapolates differently to the raster's corners.
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from dmreg.estimate.models import fit
from dmreg.estimate.uncertainty import GENERALISATIONS, bootstrap_uncertainty, model_spread
from dmreg.geometry.mapping import check_points
from dmreg.pipeline import RegisterOptions, estimate
from helpers import SHIFT, write_raster


def test_model_spread_is_the_largest_disagreement_per_point():
    at = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    chosen = fit("translation", at, at + [1.0, 0.0])
    near = fit("translation", at, at + [1.5, 0.0])
    scaled = fit("similarity", at, at * 1.01 + [1.0, 0.0])
    assert np.allclose(model_spread(chosen, [], at), 0.0)
    assert np.allclose(model_spread(chosen, [near, scaled], at), [0.5, 1.0, 1.0])


def test_the_model_spread_is_added_to_the_bootstrap_in_quadrature():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (300, 2))
    dst = src + [2.0, -1.0] + rng.normal(0, 0.3, src.shape)
    tiles = np.repeat(np.arange(10), 30)
    model = fit("translation", src, dst)
    inliers = np.ones(len(src), bool)
    at = np.column_stack(check_points(500, 500))
    spread = np.linspace(0.0, 2.0, len(at))
    plain = bootstrap_uncertainty(model, src, dst, inliers, tiles, at)
    widened = bootstrap_uncertainty(model, src, dst, inliers, tiles, at, spread_px=spread)
    assert np.allclose(widened.error_px ** 2, plain.error_px ** 2 + spread ** 2)
    assert widened.ce90_px > plain.ce90_px
    assert widened.model_spread_px == pytest.approx(2.0) and plain.model_spread_px == 0.0


@pytest.fixture(scope="module")
def central_window(l7, l7_ref, tmp_path_factory):
    red = l7["bands"]["red"]
    flat = np.full_like(red, int(np.median(red)))
    cy, cx = red.shape[0] // 2, red.shape[1] // 2
    flat[cy - 70:cy + 70, cx - 70:cx + 70] = red[cy - 70:cy + 70, cx - 70:cx + 70]
    moving = write_raster(tmp_path_factory.mktemp("spread") / "window.tif", flat, crs=l7["crs"],
                          transform=l7["transform"] @ Affine.translation(*SHIFT))
    return str(l7_ref), str(moving)


def test_a_model_fitted_to_central_matches_is_less_certain_at_the_corners(central_window):
    result = estimate(*central_window, RegisterOptions())
    assert result.selected.kind == "translation"
    at = np.column_stack(result.georef.apply(*check_points(result.mov.width, result.mov.height)))
    general = [f.transform for kind, f in result.fits.items()
               if f.meaningful and kind in GENERALISATIONS["translation"]]
    assert len(general) == 2
    spread = model_spread(result.selected.transform, general, at)
    assert spread.max() > 0.1
    assert result.uncertainty.model_spread_px == pytest.approx(spread.max(), abs=1e-9)
    assert result.uncertainty.ce90_px >= np.quantile(spread, 0.9)
    assert result.uncertainty.error_px.argmax() in np.flatnonzero(spread > np.median(spread))  # a corner


def test_an_accurate_pair_keeps_a_small_spread_and_no_warning(shift_nir):
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), RegisterOptions())
    assert result.uncertainty.model_spread_px < 0.5
    assert not any("more general model" in w for w in result.warnings)
