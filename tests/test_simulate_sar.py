"""dmreg.train.simulate.pseudo_sar: the Sentinel-1-like stand-in, stage by stage.

Synthetic optical images only (no data folder); the comparison with real Sentinel-1 is
benchmarks/sar_statistics.py.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from dmreg.train.simulate import _SAR_RANGES, _point_spread, _sar_layers, _speckle, pseudo_sar

QUIET = replace(_SAR_RANGES, class_db=(0.0, 0.0), variation_db=(0.0, 0.0), relief_px=(0.0, 0.0),
                points_per_built_up_px=(0.0, 0.0), points_per_px=(0.0, 0.0), lines_per_built_up_px=(0.0, 0.0))
"""No structure at all: a flat input then gives constant backscatter times speckle."""


def _optical(shape: tuple[int, int] = (128, 160), seed: int = 0) -> np.ndarray:
    """A field-like optical crop in [0, 1]: smooth noise plus a few flat rectangles."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4.0)
    for _ in range(6):
        r, c = rng.integers(0, shape[0] - 20), rng.integers(0, shape[1] - 20)
        img[r:r + rng.integers(10, 40), c:c + rng.integers(10, 40)] = rng.random()
    img += rng.normal(0.0, 0.01, shape).astype(np.float32)
    return np.clip((img - img.min()) / (img.max() - img.min()), 0.0, 1.0).astype(np.float32)


def _enl(x: np.ndarray) -> float:
    return float(x.mean() ** 2 / x.var())


def test_output_is_float32_unit_range_same_shape_and_seeded():
    img = _optical()
    for looks in (None, 1, 4.4, 5):
        out = pseudo_sar(img, np.random.default_rng(3), looks=looks)
        assert out.dtype == np.float32 and out.shape == img.shape
        assert out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0.1
        np.testing.assert_array_equal(out, pseudo_sar(img, np.random.default_rng(3), looks=looks))
    assert not np.array_equal(pseudo_sar(img, np.random.default_rng(3)), pseudo_sar(img, np.random.default_rng(4)))
    assert pseudo_sar(np.full((16, 24), 0.5, np.float32), np.random.default_rng(0)).shape == (16, 24)


def test_bad_looks_and_shapes_are_refused():
    img = _optical()
    for looks in (0.5, 0, float("nan")):
        with pytest.raises(ValueError, match="looks"):
            pseudo_sar(img, np.random.default_rng(0), looks=looks)
    with pytest.raises(ValueError, match="H x W"):
        pseudo_sar(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))


def test_random_looks_stay_in_the_documented_range():
    looks = [_sar_layers(_optical((32, 32)), np.random.default_rng(s)).looks for s in range(20)]
    assert min(looks) >= _SAR_RANGES.looks[0] and max(looks) <= _SAR_RANGES.looks[1]


@pytest.mark.parametrize("looks", [1.0, 2.5, 4.4])
def test_speckle_enl_matches_the_requested_looks_on_a_flat_input(looks):
    flat = np.full((256, 256), 0.4, np.float32)
    layers = _sar_layers(flat, np.random.default_rng(1), looks=looks, ranges=QUIET)
    assert layers.looks == looks
    # constant backscatter (plus a constant noise floor) times speckle: the ENL is the looks
    assert np.ptp(layers.backscatter_db) < 1e-5 and not layers.shadow.any() and not layers.scatterers.any()
    assert _enl(layers.intensity) == pytest.approx(looks, rel=0.1)
    assert _enl(layers.speckle) == pytest.approx(looks, rel=0.1)
    assert layers.speckle.mean() == pytest.approx(1.0, abs=0.03)


def test_speckle_is_gamma_with_mean_one_and_spatially_correlated():
    s = _speckle(np.random.default_rng(0), (200, 200), 4.4, 1.0)
    assert s.dtype == np.float32 and s.min() > 0
    assert s.mean() == pytest.approx(1.0, abs=0.02) and _enl(s) == pytest.approx(4.4, rel=0.1)
    lag1 = np.corrcoef(s[:, :-1].ravel(), s[:, 1:].ravel())[0, 1]
    lag5 = np.corrcoef(s[:, :-5].ravel(), s[:, 5:].ravel())[0, 1]
    assert lag1 > 0.4 and abs(lag5) < 0.05  # neighbours share speckle, distant pixels do not
    white = _speckle(np.random.default_rng(0), (200, 200), 4.4, 0.0)
    assert abs(np.corrcoef(white[:, :-1].ravel(), white[:, 1:].ravel())[0, 1]) < 0.03


def test_db_and_the_stretch_are_monotone_in_intensity():
    layers = _sar_layers(_optical(), np.random.default_rng(5))
    np.testing.assert_allclose(layers.db, 10.0 * np.log10(layers.intensity), atol=1e-4)
    order = np.argsort(layers.intensity, axis=None)
    assert np.all(np.diff(layers.db.ravel()[order]) >= 0)
    assert np.all(np.diff(layers.image.ravel()[order]) >= 0)
    # the 1-99 percentile stretch: about 1% clipped at each end
    assert 0.005 < (layers.image == 0).mean() < 0.02 and 0.005 < (layers.image == 1).mean() < 0.02


def test_scatterers_exist_but_are_sparse():
    img = _optical((256, 256))
    dense = replace(_SAR_RANGES, points_per_px=(3e-4, 3e-4))
    for seed in range(3):  # about 20 points on 256 x 256
        layers = _sar_layers(img, np.random.default_rng(seed), ranges=dense)
        clutter_level = np.median(layers.intensity)
        strong = layers.scatterers > 10 * clutter_level  # 10 dB above the typical pixel
        assert strong.any() and strong.mean() < 0.01
        # isolated strong points: the brightest pixel of the image is a scatterer
        peak = np.unravel_index(np.argmax(layers.intensity), layers.intensity.shape)
        assert layers.scatterers[peak] > 10 * clutter_level
    # with the default ranges: a small fraction of the image at most, present in most draws
    fractions = []
    for seed in range(12):
        layers = _sar_layers(img, np.random.default_rng(seed))
        fractions.append((layers.scatterers > 10 * np.median(layers.intensity)).mean())
    assert max(fractions) < 0.01 and sum(f > 0 for f in fractions) >= 6


def test_point_spread_draws_a_cross_along_range_and_azimuth():
    for look in ((1.0, 0.0), (0.0, 1.0), (np.sqrt(0.5), np.sqrt(0.5))):
        psf = _point_spread(look, 2.0, 1.0)
        c = psf.shape[0] // 2
        assert psf[c, c] == pytest.approx(1.0) and psf.max() == psf[c, c]
        # first sidelobe (1.5 resolutions out) on the range axis and on the azimuth axis
        for axis in (np.array(look), np.array([-look[1], look[0]])):
            x, y = np.round(c + 3.0 * axis).astype(int)
            on_axis = psf[y, x]
            assert 10 ** (-16 / 10) < on_axis < 10 ** (-11 / 10)  # about -13 dB, the sinc^2's
        # off the axes, at the same distance: the product of two sidelobes, far weaker
        d = np.array(look) + np.array([-look[1], look[0]])
        x, y = np.round(c + 3.0 * d / np.linalg.norm(d)).astype(int)
        assert psf[y, x] < 0.1 * on_axis


def test_layover_displacement_is_small_zero_mean_along_the_look_and_is_the_warp_applied():
    img = _optical((128, 128), seed=2)
    for seed in range(6):
        d = _sar_layers(img, np.random.default_rng(seed)).displacement
        assert d.shape == (128, 128, 2) and d.dtype == np.float32
        assert np.abs(d.mean(axis=(0, 1))).max() < 1e-4  # the truth is exact on average
        assert np.linalg.norm(d, axis=-1).max() <= _SAR_RANGES.layover_max_px + 1e-4
        # one direction (the look) for every pixel: rank-1 field
        assert np.linalg.svd(d.reshape(-1, 2), compute_uv=False)[1] < 1e-3 * max(np.abs(d).max(), 1e-6) * 128

    # exact check: with no speckle, noise, terrain radiometry, blur or scatterers, the SAR
    # intensity is the backscatter map warped by exactly the displacement field
    exact = replace(QUIET, relief_px=(3.0, 3.0), layover_gain=(1.0, 1.0), cos_power=(0.0, 0.0),
                    area_weight=(0.0, 0.0), noise_floor_db=(-200.0, -200.0), psf_resolution_px=(1e-3, 1e-3),
                    class_db=(1.0, 1.0), variation_db=(2.0, 2.0), incidence_deg=(20.0, 20.0))
    layers = _sar_layers(img, np.random.default_rng(7), looks=1e9, ranges=exact)
    d = layers.displacement
    assert np.abs(d).max() > 1.0  # a real warp, not the identity
    rows, cols = np.indices(img.shape, dtype=np.float32)
    expected = cv2.remap((10.0 ** (layers.backscatter_db / 10.0)).astype(np.float32), cols + d[..., 0],
                         rows + d[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    keep = ~cv2.dilate(layers.shadow.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    keep[:4], keep[-4:], keep[:, :4], keep[:, -4:] = False, False, False, False
    np.testing.assert_allclose(layers.intensity[keep], expected[keep], rtol=1e-3)
    # and it differs from the unwarped map where the warp is large
    unwarped = 10.0 ** (layers.backscatter_db / 10.0)
    assert np.abs(layers.intensity[keep] / unwarped[keep] - 1).max() > 0.01


def test_radiometry_owes_little_to_optical_brightness():
    img = _optical((128, 128), seed=4)
    r = [abs(np.corrcoef(img.ravel(), pseudo_sar(img, np.random.default_rng(s)).ravel())[0, 1]) for s in range(16)]
    assert np.median(r) < 0.4
