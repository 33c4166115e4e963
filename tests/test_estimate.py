"""Unit tests of dmreg.estimate: model fits, apply/inverse, RANSAC, model selection."""

from __future__ import annotations

import numpy as np
import pytest

from dmreg.estimate.models import KINDS, MIN_SAMPLES, Transform, _apply_h, _normaliser, fit, residuals
from dmreg.estimate.acontrario import best_consensus
from dmreg.estimate.robust import fit_all, ransac
from dmreg.estimate.blocks import spatial_blocks
from dmreg.estimate.selection import choose, choose_model

W, H = 1000.0, 800.0   # a raster-sized domain, pixels


def _matrix_transform(kind: str) -> Transform:
    a = np.deg2rad(2.0)
    if kind == "translation":
        m = [[1, 0, 5.5], [0, 1, -3.25], [0, 0, 1]]
    elif kind == "similarity":
        s = 1.03
        m = [[s * np.cos(a), -s * np.sin(a), 12.0], [s * np.sin(a), s * np.cos(a), -7.0], [0, 0, 1]]
    elif kind == "affine":
        m = [[1.02, 0.015, 4.0], [-0.01, 0.985, 9.0], [0, 0, 1]]
    elif kind == "homography":
        m = [[1.01, 0.02, 3.0], [-0.015, 0.99, -6.0], [2e-5, -1.5e-5, 1]]
    else:
        raise AssertionError(kind)
    return Transform(kind, matrix=np.array(m, dtype=float))


def true_mapping(kind: str):
    """A known mapping of each kind as a function of raw pixel coordinates."""
    if kind == "polynomial2":
        def f(x, y):
            x, y = np.asarray(x, float), np.asarray(y, float)
            return (3.0 + 1.01 * x + 0.02 * y + 2e-5 * x * x - 1e-5 * x * y + 1.5e-5 * y * y,
                    -4.0 - 0.015 * x + 0.99 * y - 1e-5 * x * x + 2e-5 * x * y + 1e-5 * y * y)
        return f
    return _matrix_transform(kind).apply


def points(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0, W, n), rng.uniform(0, H, n)])


def apply_pts(f, pts: np.ndarray) -> np.ndarray:
    x, y = f(pts[:, 0], pts[:, 1])
    return np.column_stack([x, y])


# --- fit, apply, inverse ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_fit_recovers_exact_mapping(kind):
    truth = true_mapping(kind)
    src = points(40, seed=1)
    t = fit(kind, src, apply_pts(truth, src))
    assert t.kind == kind
    check = points(200, seed=2)   # points not used in the fit
    assert np.abs(apply_pts(t.apply, check) - apply_pts(truth, check)).max() < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_apply_inverse_round_trip(kind):
    truth = true_mapping(kind)
    src = points(40, seed=3)
    t = fit(kind, src, apply_pts(truth, src))
    p = points(300, seed=4)
    forward = apply_pts(t.apply, p)
    assert np.abs(apply_pts(t.inverse, forward) - p).max() < 1e-6
    assert np.abs(apply_pts(t.apply, apply_pts(t.inverse, p)) - p).max() < 1e-6


def test_polynomial2_inverse_is_not_the_linear_part():
    """The polynomial2 inverse must undo the quadratic terms, not only the linear ones."""
    truth = true_mapping("polynomial2")
    src = points(60, seed=5)
    t = fit("polynomial2", src, apply_pts(truth, src))
    assert t.matrix is None and t.poly is not None and t.poly.shape == (2, 6)
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H], [W / 2, H / 2]])
    mapped = apply_pts(t.apply, corners)
    # the quadratic part moves the far corner by several pixels, so this is a real test
    linear = fit("affine", src, apply_pts(truth, src))
    assert np.abs(apply_pts(linear.apply, corners) - mapped).max() > 2.0
    assert np.abs(apply_pts(t.inverse, mapped) - corners).max() < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_apply_preserves_shape(kind):
    truth = true_mapping(kind)
    src = points(40, seed=6)
    t = fit(kind, src, apply_pts(truth, src))
    xs, ys = np.meshgrid(np.linspace(0, W, 7), np.linspace(0, H, 5))
    for fn in (t.apply, t.inverse):
        x, y = fn(xs, ys)
        assert x.shape == xs.shape and y.shape == ys.shape


@pytest.mark.parametrize("kind", ["translation", "similarity", "affine", "homography"])
def test_matrix_kinds_have_normalised_matrix(kind):
    truth = _matrix_transform(kind)
    src = points(30, seed=7)
    t = fit(kind, src, apply_pts(truth.apply, src))
    assert t.matrix.shape == (3, 3)
    assert t.matrix[2, 2] == pytest.approx(1.0)
    assert np.allclose(t.matrix, truth.matrix, rtol=1e-6, atol=1e-8)
    assert t.as_dict() == {"kind": kind, "matrix": t.matrix.tolist()}


def test_similarity_fit_has_no_shear():
    """A similarity fitted to affine data stays a similarity (a = e, b = -d)."""
    src = points(50, seed=8)
    t = fit("similarity", src, apply_pts(_matrix_transform("affine").apply, src))
    m = t.matrix
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])


def test_translation_fit_is_mean_offset():
    rng = np.random.default_rng(9)
    src = points(50, seed=9)
    dst = src + np.array([2.0, -1.0]) + rng.normal(0, 0.3, src.shape)
    t = fit("translation", src, dst)
    # a translation has no linear part: exactly the identity, whatever the noise
    assert np.allclose(t.matrix[:2, :2], np.eye(2), rtol=0, atol=1e-12), f"translation fit has a linear part:\n{t.matrix}"
    assert t.matrix[:2, 2] == pytest.approx((dst - src).mean(axis=0), abs=1e-9)


def test_homography_fit_is_well_conditioned_with_large_coordinates():
    """Map-sized coordinates (1e5 px) must not break the fit (Hartley normalisation)."""
    truth = _matrix_transform("homography")
    src = points(30, seed=10) + 1e5
    m = truth.matrix.copy()
    m[2, :2] *= 1e-3   # keep the perspective gentle that far from the origin
    t_true = Transform("homography", matrix=m)
    t = fit("homography", src, apply_pts(t_true.apply, src))
    check = points(50, seed=11) + 1e5
    assert np.abs(apply_pts(t.apply, check) - apply_pts(t_true.apply, check)).max() < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_fit_needs_minimum_samples(kind):
    src = points(MIN_SAMPLES[kind] - 1, seed=12) if MIN_SAMPLES[kind] > 1 else np.zeros((0, 2))
    with pytest.raises(ValueError):
        fit(kind, src, src + 1.0)


def test_fit_unknown_kind():
    with pytest.raises(ValueError, match="unknown model"):
        fit("spline", points(10), points(10))


def test_residuals():
    t = _matrix_transform("translation")
    src = np.array([[0.0, 0.0], [10.0, 10.0]])
    dst = np.array([[5.5, -3.25], [10.0 + 5.5 + 3.0, 10.0 - 3.25 + 4.0]])
    assert residuals(t, src, dst) == pytest.approx([0.0, 5.0])


# --- RANSAC --------------------------------------------------------------------------------------------

def contaminated(kind_or_fn, n: int, outlier_fraction: float, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    f = true_mapping(kind_or_fn) if isinstance(kind_or_fn, str) else kind_or_fn
    src = points(n, seed=seed + 100)
    dst = apply_pts(f, src) + rng.normal(0, noise, src.shape)
    outlier = np.zeros(n, bool)
    outlier[rng.choice(n, int(round(outlier_fraction * n)), replace=False)] = True
    dst[outlier] = np.column_stack([rng.uniform(0, W, outlier.sum()), rng.uniform(0, H, outlier.sum())])
    return src, dst, outlier, f


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ransac_recovers_affine_with_30_percent_outliers(seed):
    src, dst, outlier, truth = contaminated("affine", 200, 0.3, noise=0.2, seed=seed)
    result = ransac("affine", src, dst, threshold=1.0, seed=seed)
    assert result is not None and result.kind == "affine"
    grid = np.column_stack([g.ravel() for g in np.meshgrid(np.linspace(0, W, 11), np.linspace(0, H, 11))])
    err = np.abs(apply_pts(result.transform.apply, grid) - apply_pts(truth, grid)).max()
    assert err < 0.15, f"recovered affine is {err:.3f} px off"
    # the inlier set is the true one (an outlier may land within the threshold by chance)
    assert (result.inliers & outlier).sum() <= 2
    assert (~result.inliers & ~outlier).sum() <= 2  # 5 sigma of 0.2 px noise is the threshold
    assert result.rmse_px == pytest.approx(0.2 * np.sqrt(2), rel=0.3)
    assert result.rmse_px <= result.ce90_px * 1.5


def test_ransac_is_reproducible():
    src, dst, _, _ = contaminated("affine", 150, 0.3, noise=0.3, seed=5)
    a = ransac("affine", src, dst, threshold=1.0, seed=7)
    b = ransac("affine", src, dst, threshold=1.0, seed=7)
    assert np.array_equal(a.inliers, b.inliers)
    assert np.array_equal(a.transform.matrix, b.transform.matrix)


def test_ransac_with_weights_still_recovers():
    src, dst, outlier, truth = contaminated("affine", 200, 0.3, noise=0.2, seed=11)
    weights = np.where(outlier, 0.2, 1.0)
    result = ransac("affine", src, dst, threshold=1.0, weights=weights)
    assert (result.inliers & outlier).sum() <= 2
    assert residuals(result.transform, src[~outlier], apply_pts(truth, src[~outlier])).max() < 0.2


def test_ransac_too_few_points():
    src = points(3)
    assert ransac("affine", src, src + 1.0, threshold=1.0) is None


def test_ransac_polynomial2_with_outliers():
    src, dst, outlier, truth = contaminated("polynomial2", 200, 0.3, noise=0.2, seed=13)
    result = ransac("polynomial2", src, dst, threshold=1.0)
    assert result is not None
    assert (result.inliers & outlier).sum() <= 2
    check = points(100, seed=14)
    assert np.abs(apply_pts(result.transform.apply, check) - apply_pts(truth, check)).max() < 0.3


def test_fit_all_covers_every_kind_on_good_data():
    src, dst, _, _ = contaminated("affine", 120, 0.2, noise=0.2, seed=15)
    fits = fit_all(src, dst, threshold=1.0)
    # translation cannot explain a 2 % scale over 1000 px within 1 px: too few inliers
    assert {"affine", "homography", "polynomial2"} <= set(fits)
    for kind, f in fits.items():
        assert f.kind == kind and f.inliers.dtype == bool and len(f.inliers) == len(src)


# --- a-contrario validation ---------------------------------------------------------------------------

def test_random_matches_are_not_meaningful():
    """Matches that fall anywhere in the search disk: any consensus is chance."""
    rng = np.random.default_rng(3)
    src = points(50, seed=4)
    radius = 8.0
    angle, dist = rng.uniform(0, 2 * np.pi, 50), radius * np.sqrt(rng.uniform(0, 1, 50))
    dst = src + np.column_stack([dist * np.cos(angle), dist * np.sin(angle)])
    for kind in ("translation", "affine", "homography"):
        result = ransac(kind, src, dst, threshold=1.5, search_radius=radius, n_tests=5, seed=1)
        assert result is not None and not result.meaningful, (kind, result.summary())


def test_true_consensus_is_meaningful_among_outliers():
    src, dst, outlier, _ = contaminated("affine", 60, 0.5, noise=0.4, seed=8)
    result = ransac("affine", src, dst, threshold=1.5, search_radius=2000.0, n_tests=5)
    assert result.meaningful and result.consensus.log10_nfa < -10
    assert (result.inliers & outlier).sum() <= 1


def test_a_contrario_threshold_follows_the_noise():
    f = _matrix_transform("translation").apply
    thresholds = []
    for noise in (0.1, 0.5):
        src, dst, _, _ = contaminated(f, 150, 0.2, noise=noise, seed=2)
        thresholds.append(ransac("translation", src, dst, threshold=3.0, search_radius=40.0).consensus.threshold_px)
    assert thresholds[0] < 0.6 < thresholds[1] <= 3.0


def test_consensus_threshold_never_exceeds_the_maximum():
    r = np.linspace(0.0, 5.0, 100)
    found = best_consensus(r, "affine", search_radius_px=50.0, max_threshold_px=1.0)
    assert found.threshold_px <= 1.0 and found.inliers <= (r <= 1.0).sum()


# --- model selection by cross-validation ----------------------------------------------------------------

def tiles_of(src: np.ndarray, per_side: int = 4) -> np.ndarray:
    """A tile id per point, as the pipeline's tiling would give."""
    col = np.minimum((src[:, 0] / W * per_side).astype(int), per_side - 1)
    row = np.minimum((src[:, 1] / H * per_side).astype(int), per_side - 1)
    return row * per_side + col


def chosen(src: np.ndarray, dst: np.ndarray, threshold: float = 1.5, seed: int = 0, tiles=None):
    fits = fit_all(src, dst, threshold, seed=seed, search_radius=50.0)
    at = np.column_stack([g.ravel() for g in np.meshgrid(np.linspace(0, src[:, 0].max(), 10),
                                                         np.linspace(0, src[:, 1].max(), 10))])
    choice = choose_model({k: f for k, f in fits.items() if f.meaningful}, src, dst,
                          tiles_of(src) if tiles is None else tiles, 2 * threshold, at, local="no", seed=seed)
    return choice.kind, choice.scores


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_noisy_translation_stays_translation(seed):
    f = _matrix_transform("translation").apply
    src, dst, _, _ = contaminated(f, 150, 0.2, noise=0.4, seed=seed)
    kind, scores = chosen(src, dst, seed=seed)
    assert kind == "translation", scores
    assert {"translation", "affine", "homography"} <= set(scores)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_few_very_noisy_matches_stay_translation(seed):
    """The Sentinel-1 case: ~45 matches with 0.65 px noise in one small tile."""
    f = _matrix_transform("translation").apply
    rng = np.random.default_rng(seed)
    src = np.column_stack([rng.uniform(0, 224, 45), rng.uniform(0, 224, 45)])
    dst = apply_pts(f, src) + rng.normal(0, 0.65, src.shape)
    kind, scores = chosen(src, dst, seed=seed, tiles=np.zeros(45, int))
    assert kind == "translation", scores


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_real_affine_is_found(seed):
    src, dst, _, _ = contaminated("affine", 150, 0.2, noise=0.3, seed=seed)
    kind, scores = chosen(src, dst, seed=seed)
    assert kind == "affine", scores
    assert scores["affine"].rmse_px < scores["translation"].rmse_px


def test_real_warp_is_found():
    src, dst, _, _ = contaminated("polynomial2", 200, 0.2, noise=0.2, seed=21)
    kind, _ = chosen(src, dst)
    assert kind == "polynomial2"


def test_blocks_are_tiles_when_many_tiles_matched_else_cells():
    src = points(200, seed=9)
    assert len(np.unique(spatial_blocks(src, tiles_of(src)))) == 16
    one_tile = spatial_blocks(src, np.zeros(200, int))
    assert 9 <= len(np.unique(one_tile)) <= 16


def test_matches_crowded_into_a_corner_of_the_area_are_one_block():
    """Blocks are cut no finer than a quarter of the area served: 60 agreeing matches
    within 60 x 100 px of a 1000 x 800 px overlap are one piece of evidence, not the
    four cells their own bounding box would give."""
    rng = np.random.default_rng(3)
    corner = np.column_stack([rng.uniform(270, 330, 60), rng.uniform(230, 330, 60)])
    alone = np.zeros(60, int)
    assert len(np.unique(spatial_blocks(corner, alone))) >= 3
    assert len(np.unique(spatial_blocks(corner, alone, np.array([W, H])))) == 1
    spread = points(200, seed=9)
    assert np.array_equal(spatial_blocks(spread, np.zeros(200, int), np.array([W, H])),
                          spatial_blocks(spread, np.zeros(200, int)))


def test_choose_keeps_the_simplest_when_no_candidate_could_be_cross_validated():
    """Every candidate failed to fit without some block: nothing showed more is needed."""
    losses = {"translation": np.array([np.inf, 1.0, 2.0]), "affine": np.array([1.0, np.inf, 1.0])}
    assert choose(losses, ("translation", "affine")) == ("translation", {})


@pytest.mark.parametrize("bad", [0.0, np.nan, -1.0])
def test_ransac_survives_zero_nan_or_negative_confidences(bad):
    src, dst, outlier, truth = contaminated("affine", 200, 0.3, noise=0.2, seed=11)
    weights = np.ones(len(src))
    weights[::2] = bad
    result = ransac("affine", src, dst, threshold=1.0, weights=weights)
    assert result is not None and (result.inliers & outlier).sum() <= 2
    assert ransac("affine", src, dst, threshold=1.0, weights=np.full(len(src), bad)) is not None


def test_two_point_similarity_is_exact_and_refuses_coincident_points():
    """RANSAC's minimal similarity sample is solved in closed form: it takes both
    points exactly where they go (what least squares gives for two points)."""
    from dmreg.estimate.models import fit

    rng = np.random.default_rng(11)
    for _ in range(50):
        src, dst = rng.uniform(-5000, 5000, (2, 2)), rng.uniform(-5000, 5000, (2, 2))
        model = fit("similarity", src, dst)
        np.testing.assert_allclose(np.column_stack(model.apply(src[:, 0], src[:, 1])), dst, atol=1e-7)
        m = model.matrix
        assert m[0, 0] == m[1, 1] and m[0, 1] == -m[1, 0]
    with pytest.raises(np.linalg.LinAlgError):
        fit("similarity", np.array([[3.0, 4.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [1.0, 1.0]]))


def test_homography_least_squares_fit_equals_the_svd_solution():
    """Over-determined fits take the least eigenvector of AᵀA: on noisy points it is the
    DLT's SVD solution to far below a pixel's thousandth."""
    rng = np.random.default_rng(13)
    t_true = _matrix_transform("homography")
    src = points(400, seed=14)
    dst = apply_pts(t_true.apply, src) + rng.normal(0, 0.5, src.shape)
    t = fit("homography", src, dst)
    ts, td = _normaliser(src), _normaliser(dst)
    a, b = _apply_h(ts, src), _apply_h(td, dst)
    x, y, u, v = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    o, z = np.ones(len(a)), np.zeros(len(a))
    dlt = np.vstack([np.column_stack([x, y, o, z, z, z, -u * x, -u * y, -u]),
                     np.column_stack([z, z, z, x, y, o, -v * x, -v * y, -v])])
    h = np.linalg.inv(td) @ np.linalg.svd(dlt, full_matrices=False)[2][-1].reshape(3, 3) @ ts
    svd = Transform("homography", matrix=h / h[2, 2])
    check = points(50, seed=15)
    assert np.abs(apply_pts(t.apply, check) - apply_pts(svd.apply, check)).max() < 1e-6
