"""The predicted error includes what the bootstrap alone cannot see: how far a more
general model that also explains the matches puts points from the chosen one (a model
too simple for the data: its replicates share the bias), and how far the last
refinement pass moved the answer (matches that lean toward the model they were read
through).

The end-to-end case is a band against itself scaled by 1 %, textured only near the
centre: translation is chosen, and the similarity and affine fitted to the same matches
put the corners elsewhere by more than their own estimation error.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dmreg.estimate.models import fit
from dmreg.estimate.uncertainty import GENERALISATIONS, SIGNIFICANT, bootstrap_uncertainty, model_spread
from dmreg.geometry.mapping import check_points
from dmreg.pipeline import RegisterOptions, estimate
from helpers import write_raster

SCALE = 1.01


def test_model_spread_counts_only_disagreement_beyond_the_alternatives_own_error():
    at = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    chosen = fit("translation", at, at + [1.0, 0.0])
    near = fit("translation", at, at + [1.5, 0.0])        # 0.5 px off everywhere
    scaled = fit("similarity", at, at * 1.01 + [1.0, 0.0])  # 0, 1 and 1 px off
    assert np.allclose(model_spread(chosen, [], at), 0.0)
    spread = model_spread(chosen, [(near, np.full(3, 0.1)), (scaled, np.full(3, 0.2))], at)
    assert np.allclose(spread, [0.5 - 0.1 * SIGNIFICANT, 1.0 - 0.2 * SIGNIFICANT, 1.0 - 0.2 * SIGNIFICANT])
    within_its_noise = model_spread(chosen, [(scaled, np.full(3, 1.0 / SIGNIFICANT))], at)
    unknown = model_spread(chosen, [(scaled, np.full(3, np.inf))], at)
    assert np.allclose(within_its_noise, 0.0) and np.allclose(unknown, 0.0)


def shifted_matches(seed: int) -> tuple:
    """300 noisy matches of a shift in 10 tiles, their translation and check points."""
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 500, (300, 2))
    dst = src + [2.0, -1.0] + rng.normal(0, 0.3, src.shape)
    return src, dst, np.ones(len(src), bool), np.repeat(np.arange(10), 30), np.column_stack(check_points(500, 500))


def test_the_model_spread_is_added_to_the_bootstrap_in_quadrature():
    src, dst, inliers, tiles, at = shifted_matches(0)
    model = fit("translation", src, dst)
    spread = np.linspace(0.0, 2.0, len(at))
    plain = bootstrap_uncertainty(model, src, dst, inliers, tiles, at)
    widened = bootstrap_uncertainty(model, src, dst, inliers, tiles, at, spread_px=spread)
    assert np.allclose(widened.error_px ** 2, plain.error_px ** 2 + spread ** 2)
    assert widened.ce90_px > plain.ce90_px
    assert widened.model_spread_px == pytest.approx(2.0) and plain.model_spread_px == 0.0


def test_the_last_passes_move_is_added_to_the_bootstrap_in_quadrature():
    src, dst, inliers, tiles, at = shifted_matches(1)
    model = fit("translation", src, dst)
    spread, moved = np.full(len(at), 0.5), np.linspace(0.0, 1.5, len(at))
    plain = bootstrap_uncertainty(model, src, dst, inliers, tiles, at, spread_px=spread)
    unsettled = bootstrap_uncertainty(model, src, dst, inliers, tiles, at, spread_px=spread, unsettled_px=moved)
    assert np.allclose(unsettled.error_px ** 2, plain.error_px ** 2 + moved ** 2)
    assert unsettled.unsettled_px == pytest.approx(1.5) and plain.unsettled_px == 0.0
    assert unsettled.as_dict()["unsettled_px"] == pytest.approx(1.5)


def test_a_refined_answer_is_no_more_certain_than_its_last_move(affine_nir):
    """Red against NIR (contrast inverted over vegetation) takes a refinement pass, which
    moves the answer: the predicted error includes that move; one pass adds nothing."""
    result = estimate(str(affine_nir.ref), str(affine_nir.mov), RegisterOptions())
    assert len(result.passes) == 2
    moved = result.uncertainty.unsettled_px
    assert 0 < moved <= 1.5 * result.passes[-1]["moved_px"]
    at = np.column_stack(result.georef.apply(*check_points(result.mov.width, result.mov.height)))
    bootstrap_only = bootstrap_uncertainty(result.selected.transform, result.matches.pred_px, result.matches.ref_px,
                                           result.selected.inliers, result.matches.tile, at)
    assert result.uncertainty.ce90_px > bootstrap_only.ce90_px
    assert result.uncertainty.error_px.max() >= moved


def test_one_pass_adds_no_move(shift_nir):
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), RegisterOptions())
    assert len(result.passes) == 1 and result.uncertainty.unsettled_px == 0.0


@pytest.fixture(scope="module")
def scaled_window(l7, tmp_path_factory):
    """The red band against itself scaled by 1 % about the centre, textured only within
    50 px of the centre: the matches cannot tell the scale from a shift, translation is
    chosen, and it is 2-2.5 px off at the corners."""
    red = l7["bands"]["red"].astype(np.float32)
    h, w = red.shape
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    sx, sy = w / 2 + SCALE * (xs - w / 2), h / 2 + SCALE * (ys - h / 2)
    moving = cv2.remap(red, (sx - 0.5).astype(np.float32), (sy - 0.5).astype(np.float32), cv2.INTER_CUBIC)
    window = (np.abs(xs - w / 2) < 50) & (np.abs(ys - h / 2) < 50)
    moving = np.where(window, moving, np.median(moving))
    folder = tmp_path_factory.mktemp("spread")
    ref = write_raster(folder / "ref.tif", l7["bands"]["red"], crs=l7["crs"], transform=l7["transform"])
    mov = write_raster(folder / "mov.tif", np.clip(moving, 1, 255).astype(np.uint8), crs=l7["crs"],
                       transform=l7["transform"])
    return str(ref), str(mov)


def test_a_translation_fitted_to_central_matches_of_a_scaled_pair_is_less_certain(scaled_window):
    result = estimate(*scaled_window, RegisterOptions())
    assert result.selected.kind == "translation"
    at = np.column_stack(result.georef.apply(*check_points(result.mov.width, result.mov.height)))
    general = [(f.transform, bootstrap_uncertainty(f.transform, result.matches.pred_px, result.matches.ref_px,
                                                   f.inliers, result.matches.tile, at).error_px)
               for kind, f in result.fits.items() if f.meaningful and kind in GENERALISATIONS["translation"]]
    spread = model_spread(result.selected.transform, general, at)
    assert spread.max() > 0.1
    assert result.uncertainty.model_spread_px == pytest.approx(spread.max(), abs=1e-9)
    plain = bootstrap_uncertainty(result.selected.transform, result.matches.pred_px, result.matches.ref_px,
                                  result.selected.inliers, result.matches.tile, at)
    assert result.uncertainty.ce90_px > plain.ce90_px


def test_an_accurate_pair_keeps_a_small_spread_and_no_warning(shift_nir):
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), RegisterOptions())
    assert result.uncertainty.model_spread_px < 0.5
    assert not any("more general model" in w for w in result.warnings)


def test_inliers_crowded_into_a_small_part_of_the_area_leave_the_error_unknown():
    """300 agreeing matches within 60 x 100 px of a 500 x 500 px area: resampled by the
    cells of their own bounding box they look precise; as the one block they are, the
    error is unknown. What else the error holds is still reported."""
    rng = np.random.default_rng(2)
    src = rng.uniform([200, 150], [260, 250], (300, 2))
    dst = src + [2.0, -1.0] + rng.normal(0, 0.3, src.shape)
    inliers, tiles, at = np.ones(len(src), bool), np.zeros(len(src), int), np.column_stack(check_points(500, 500))
    model = fit("translation", src, dst)
    crowded = bootstrap_uncertainty(model, src, dst, inliers, tiles, at)
    assert np.isfinite(crowded.ce90_px) and crowded.blocks >= 3
    whole = bootstrap_uncertainty(model, src, dst, inliers, tiles, at, spread_px=np.full(len(at), 0.3),
                                  area_span=np.array([500.0, 500.0]))
    assert whole.blocks == 1 and whole.ce90_px == np.inf and whole.model_spread_px == pytest.approx(0.3)
