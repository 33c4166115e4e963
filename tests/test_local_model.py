"""Unit tests of dmreg.estimate.local: a Gaussian-process displacement field on top of a
global model, checked against synthetic matches whose true mapping is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmreg.estimate.local import (
    LocalTransform,
    _group_median,
    _kernel,
    _log_evidence,
    _robust_sigma,
    _spacing_and_noise,
    fit_local,
)
from dmreg.estimate.blocks import spatial_blocks
from dmreg.estimate.models import Transform, fit
from dmreg.estimate.robust import fit_all
from dmreg.estimate.selection import choose_model, cross_validate

SIDE = 1000.0   # matched area, pixels
AFFINE = Transform("affine", matrix=np.array([[1.01, 0.02, 5.0], [-0.015, 0.99, -3.0], [0, 0, 1]]))
TILE = 250.0    # 4 x 4 tiles over the matched area


def local_field(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2.5 px of smooth misregistration: a sinusoid of wavelength ~400 px in x, two bumps in y."""
    fx = 2.5 * np.sin(2 * np.pi * x / 400 + 0.3) * np.cos(2 * np.pi * y / 450)
    fy = (2.5 * np.exp(-((x - 400) ** 2 + (y - 600) ** 2) / (2 * 120 ** 2))
          - 1.5 * np.exp(-((x - 750) ** 2 + (y - 250) ** 2) / (2 * 100 ** 2)))
    return fx, fy


def truth(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ax, ay = AFFINE.apply(x, y)
    fx, fy = local_field(x, y)
    return ax + fx, ay + fy


def matches(n_side: int = 40, noise: float = 0.3, outliers: float = 0.0, signal: bool = True,
            seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """src on a jittered n_side x n_side grid, dst from the true mapping plus noise, a
    fraction of them moved 10-50 px in random directions; also the outlier mask and the
    tile of each match."""
    rng = np.random.default_rng(seed)
    spacing = SIDE / n_side
    g = (np.arange(n_side) + 0.5) * spacing
    gx, gy = np.meshgrid(g, g)
    src = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-0.2, 0.2, (n_side ** 2, 2)) * spacing
    mapping = truth if signal else AFFINE.apply
    dst = np.column_stack(mapping(src[:, 0], src[:, 1])) + rng.normal(0, noise, src.shape)
    bad = rng.random(len(src)) < outliers
    angle = rng.uniform(0, 2 * np.pi, bad.sum())
    size = rng.uniform(10, 50, bad.sum())
    dst[bad] += np.column_stack([size * np.cos(angle), size * np.sin(angle)])
    tiles = (src[:, 1] // TILE).astype(int) * 4 + (src[:, 0] // TILE).astype(int)
    return src, dst, bad, tiles


def rms_inside(model: Transform | LocalTransform) -> float:
    """RMS error against the true mapping on a dense grid inside the matched area."""
    g = np.arange(50.0, 951.0, 10.0)
    x, y = np.meshgrid(g, g)
    px, py = model.apply(x, y)
    tx, ty = truth(x, y)
    return float(np.sqrt(np.mean((px - tx) ** 2 + (py - ty) ** 2)))


@pytest.fixture(scope="module")
def smooth() -> LocalTransform:
    src, dst, _, tiles = matches()
    return fit_local(fit("affine", src, dst), src, dst, tiles)


def test_recovers_a_known_smooth_field(smooth):
    assert rms_inside(smooth.base) > 1.0
    assert rms_inside(smooth) <= 0.3
    assert smooth.kind == "local" and smooth.matrix is None


def test_equals_the_global_model_without_local_signal():
    src, dst, _, tiles = matches(signal=False)
    base = fit("affine", src, dst)
    model = fit_local(base, src, dst, tiles)
    assert not model.dx.any() and not model.dy.any()
    x, y = np.meshgrid(np.linspace(-500, 1500, 50), np.linspace(-500, 1500, 40))
    for got, want in zip(model.apply(x, y), base.apply(x, y)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(model.inverse(x, y), base.inverse(x, y)):
        np.testing.assert_array_equal(got, want)


def test_few_matches_give_the_global_model():
    src, dst, _, _ = matches(n_side=4)
    model = fit_local(fit("affine", src, dst), src, dst)
    assert not model.dx.any() and not model.dy.any()


def test_gross_outliers_are_rejected():
    src, dst, bad, tiles = matches(outliers=0.15)
    model = fit_local(fit("affine", src, dst), src, dst, tiles)  # a base biased by the outliers too
    assert rms_inside(model) <= 0.4
    assert 0.97 * (~bad).sum() <= model.n_used <= (~bad).sum()


def test_noisy_tiles_weigh_less_when_tiles_are_given():
    src, dst, _, tiles = matches()
    noisy = np.isin(tiles, [5, 10])
    dst[noisy] += np.random.default_rng(5).normal(0, 3.0, (noisy.sum(), 2))
    base = fit("affine", src, dst)
    with_tiles, without = fit_local(base, src, dst, tiles), fit_local(base, src, dst)
    assert rms_inside(with_tiles) <= 0.3
    assert rms_inside(with_tiles) < rms_inside(without)
    # their matches are kept with a wider threshold, not cut as outliers of the global noise
    assert with_tiles.n_used >= 0.98 * len(src) > 0.95 * len(src) > without.n_used


def test_extrapolates_as_the_global_model(smooth):
    far = 3.5 * smooth.length_scale
    t = np.linspace(-far, SIDE + far, 25)
    lo, hi = np.full_like(t, -far), np.full_like(t, SIDE + far)
    x = np.concatenate([t, t, lo, hi])
    y = np.concatenate([lo, hi, t, t])
    for got, want in zip(smooth.apply(x, y), smooth.base.apply(x, y)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    fx, fy = smooth.field_at(np.array([400.0]), np.array([600.0]))
    assert abs(fy[0]) > 1.0   # but not inside, where the field is


def test_inverse_undoes_apply_and_keeps_the_shape(smooth):
    x, y = np.meshgrid(np.linspace(-300, 1300, 40), np.linspace(-300, 1300, 30))
    ax, ay = smooth.apply(x, y)
    assert ax.shape == ay.shape == (30, 40)
    ix, iy = smooth.inverse(ax, ay)
    assert ix.shape == iy.shape == (30, 40)
    np.testing.assert_allclose(ix, x, rtol=0, atol=1e-3)
    np.testing.assert_allclose(iy, y, rtol=0, atol=1e-3)
    rx, ry = smooth.apply(*smooth.inverse(x, y))
    np.testing.assert_allclose(rx, x, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ry, y, rtol=0, atol=1e-3)


def test_as_dict_is_json_and_the_grid_small(smooth):
    d = json.loads(json.dumps(smooth.as_dict(), allow_nan=False))
    assert d["kind"] == "local" and d["base"]["kind"] == "affine"
    grid = d["grid"]
    for values in (grid["dx"], grid["dy"]):
        assert 2 <= len(values) <= 64 and all(len(row) == len(values[0]) <= 64 for row in values)
    assert len(grid["origin"]) == 2 and grid["step"] > 0
    assert np.abs(np.array(grid["dx"]) - smooth.dx).max() <= 5e-5


def test_std_is_small_near_matches_and_large_away_from_them(smooth):
    beyond = SIDE + 2 * smooth.length_scale   # inside the grid's margin of 3 length scales
    assert beyond < smooth.origin[0] + smooth.step * (smooth.dx.shape[1] - 1)
    near = smooth.std_at(np.array([500.0, 300.0]), np.array([500.0, 700.0]))
    far = smooth.std_at(np.array([beyond]), np.array([500.0]))
    assert near.max() < 0.2 and far[0] > 5 * near.max()



def test_a_fit_without_its_spread_has_the_same_field(smooth):
    """Cross-validation folds only apply the field: skipping the spread must not change it."""
    src, dst, _, tiles = matches()
    quick = fit_local(fit("affine", src, dst), src, dst, tiles, spread=False)
    np.testing.assert_array_equal(quick.dx, smooth.dx)
    np.testing.assert_array_equal(quick.dy, smooth.dy)
    assert np.isnan(quick.sd).all() and np.isfinite(smooth.sd).all()


def test_cell_medians_equal_numpys_median_per_cell():
    """The grouped median (odd and even counts, ties) is np.median's, cell by cell."""
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 40, 900)
    groups[:40] = np.arange(40)  # no empty cell
    values = np.round(rng.normal(size=(900, 2)), 1)  # rounding makes ties
    expected = np.array([np.median(values[groups == g], axis=0) for g in range(40)])
    np.testing.assert_array_equal(_group_median(values, groups, 40), expected)


def test_evidence_of_every_scale_pair_equals_the_dense_gaussian_likelihood():
    """The eigenbasis shortcut over a grid of (sigma_n, sigma_f) gives the log marginal
    likelihood computed directly from K = sf² K_l + sn² W⁻¹, for both components."""
    rng = np.random.default_rng(6)
    xy, r, w = rng.uniform(0, 500, (30, 2)), rng.normal(size=(30, 2)), rng.uniform(0.5, 2.0, 30)
    length, sigmas_f, sigmas_n = 120.0, np.array([0.0, 0.3, 1.5]), np.array([0.2, 0.8])
    sw = np.sqrt(w)
    lam, u = np.linalg.eigh(sw[:, None] * _kernel(xy, xy, length) * sw[None, :])
    scores = _log_evidence(lam, u.T @ (sw[:, None] * r), w, sigmas_f, sigmas_n)
    for i, sn in enumerate(sigmas_n):
        for j, sf in enumerate(sigmas_f):
            k = sf ** 2 * _kernel(xy, xy, length) + sn ** 2 * np.diag(1 / w)
            dense = sum(-0.5 * (r[:, c] @ np.linalg.solve(k, r[:, c]) + np.linalg.slogdet(k)[1]
                                + len(w) * np.log(2 * np.pi)) for c in (0, 1))
            assert scores[i, j] == pytest.approx(dense, rel=1e-9)


def test_spacing_is_the_median_nearest_neighbour_distance_whatever_the_chunking():
    """Distances are computed a chunk of sample rows at a time: the result is the
    brute-force one on a regular grid (spacing exactly 10 px) and on random points."""
    g = np.arange(60) * 10.0
    grid = np.column_stack([a.ravel() for a in np.meshgrid(g, g)])  # 3600 points: chunks of 55 rows
    spacing, _ = _spacing_and_noise(grid, np.zeros_like(grid), np.random.default_rng(0))
    assert spacing == pytest.approx(10.0)
    pts = np.random.default_rng(7).uniform(0, 1000, (2500, 2))
    r = np.random.default_rng(8).normal(size=(2500, 2))
    sample = np.random.default_rng(0).choice(len(pts), 500, replace=False)
    d2 = ((pts[sample, None] - pts[None]) ** 2).sum(-1)
    d2[np.arange(500), sample] = np.inf
    nearest = d2.argmin(1)
    spacing, noise = _spacing_and_noise(pts, r, np.random.default_rng(0))
    assert spacing == pytest.approx(np.sqrt(np.median(d2[np.arange(500), nearest])), rel=1e-12)
    assert noise == pytest.approx(_robust_sigma(r[sample] - r[nearest]) / np.sqrt(2), rel=1e-12)


def test_local_candidate_scores_are_the_serial_cross_validation(smooth):
    """The field's fit and its folds run side by side: the local candidate's held-out
    scores equal a plain cross-validation of the same two candidates."""
    src, dst, _, tiles = matches()
    fits = {k: f for k, f in fit_all(src, dst, 1.5, seed=0, search_radius=20.0).items() if f.meaningful}
    at = np.column_stack([g.ravel() for g in np.meshgrid(np.linspace(0, SIDE, 8), np.linspace(0, SIDE, 8))])
    choice = choose_model(fits, src, dst, tiles, 3.0, at)
    best = _global_only(fits, src, dst, tiles, at)
    inliers = fits[best].inliers

    def global_fitter(a, b, train):
        return fit(best, a[train & inliers], b[train & inliers])

    def local_fitter(a, b, train):
        return fit_local(fit(best, a[train & inliers], b[train & inliers]), a[train], b[train], tiles[train],
                         spread=False)

    serial = cross_validate({best: global_fitter, "local": local_fitter}, src, dst, spatial_blocks(src, tiles), 3.0)
    assert choice.local is not None and choice.kind == "local"
    assert choice.scores["local"].rmse_px == pytest.approx(np.sqrt(serial["local"].mean()), rel=1e-12)
    assert choice.scores[best].rmse_px == pytest.approx(np.sqrt(serial[best].mean()), rel=1e-12)


def _global_only(fits, src, dst, tiles, at) -> str:
    """The global model choose_model picks before the local field competes."""
    return choose_model(fits, src, dst, tiles, 3.0, at, local="no").kind
