"""Property-based tests (Hypothesis) of the geometry every registration rests on: the
global models of dmreg.estimate.models (apply, inverse, fit, composition), the
georeferencing and corrected mappings of dmreg.geometry.mapping, and the inverse of the
local model of dmreg.estimate.local.

Models are drawn well conditioned on a 2000 x 2000 pixel image: translations up to
+-500 px, rotations, scales 0.5-2, mild shear, projective terms small enough that the
horizon stays far outside the image (w in [0.6, 1.4]), quadratic coefficients of at
most 20 px (in the polynomial's normalised coordinates, +-1 at the image corners).
``derandomize=True`` makes every run draw the same examples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from dmreg.estimate.local import INVERSE_TOL, LocalTransform
from dmreg.estimate.models import KINDS, Transform, fit
from dmreg.geometry.mapping import CorrectedMapping, GeorefMapping, check_points, corrected_pixel_matrix
from dmreg.io.raster import RasterInfo

SIZE = 2000.0                 # image side, pixels
TOL = 1e-6                    # px
MATRIX_KINDS = ("translation", "similarity", "affine", "homography")
SETTINGS = settings(deadline=None, max_examples=60, derandomize=True)
SLOW_SETTINGS = settings(deadline=None, max_examples=20, derandomize=True)


def unit(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def model_params(draw) -> dict:
    return {
        "tx": draw(unit(-500, 500)), "ty": draw(unit(-500, 500)),
        "angle": draw(unit(-math.pi, math.pi)),
        "sx": draw(unit(0.5, 2.0)), "sy": draw(unit(0.5, 2.0)),
        "shear": draw(unit(-0.2, 0.2)),
        # |px| + |py| <= 2e-4: w = px x + py y + 1 stays in [0.6, 1.4] on the image
        "px": draw(unit(-1e-4, 1e-4)), "py": draw(unit(-1e-4, 1e-4)),
        "quad": draw(st.lists(unit(-20, 20), min_size=6, max_size=6)),
    }


def build(kind: str, p: dict) -> Transform:
    """A ``kind`` model from drawn parameters (the parameters a kind lacks are ignored)."""
    c, s = math.cos(p["angle"]), math.sin(p["angle"])
    rot = np.array([[c, -s], [s, c]])
    if kind == "translation":
        lin = np.eye(2)
    elif kind == "similarity":
        lin = p["sx"] * rot
    else:
        lin = rot @ np.array([[p["sx"], p["shear"] * p["sx"]], [0.0, p["sy"]]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = p["tx"], p["ty"]
    if kind == "homography":
        m[2, :2] = p["px"], p["py"]
    if kind != "polynomial2":
        return Transform(kind, matrix=m)
    # the affine part about the image centre, in the normalised coordinates of the
    # polynomial (centre 1000, spread 1000), plus quadratic coefficients of at most 20 px
    centre, spread = (SIZE / 2, SIZE / 2), SIZE / 2
    at_centre = lin @ np.array(centre) + m[:2, 2]
    q = np.asarray(p["quad"]).reshape(2, 3)
    poly = np.column_stack([at_centre, lin[:, 0] * spread, lin[:, 1] * spread, q])
    return Transform("polynomial2", poly=poly, centre=centre, spread=spread)


def image_points(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Random points inside the image, its four corners included."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(0, SIZE, n), [0, SIZE, 0, SIZE]])
    y = np.concatenate([rng.uniform(0, SIZE, n), [0, 0, SIZE, SIZE]])
    return x, y


def test_generated_models_are_as_mild_as_documented():
    """The generator's own contract: the homography's horizon is outside the image and
    the polynomial is the drawn affine at the centre; otherwise the properties below
    would test something else than they claim."""
    p = {"tx": 500, "ty": -500, "angle": 0.3, "sx": 2.0, "sy": 0.5, "shear": 0.2, "px": 1e-4, "py": -1e-4,
         "quad": [20, -20, 20, -20, 20, -20]}
    h = build("homography", p).matrix
    x, y = image_points(0)
    w = h[2, 0] * x + h[2, 1] * y + 1
    assert w.min() >= 0.6 - 1e-12 and w.max() <= 1.4 + 1e-12
    poly, affine = build("polynomial2", p), build("affine", p)
    assert np.allclose(poly.apply(1000.0, 1000.0), affine.apply(1000.0, 1000.0), atol=1e-9)
    # the quadratic terms really are there, and bounded: three terms of at most 20 px
    # each per component at the corners (normalised coordinates +-1)
    dx, dy = np.subtract(poly.apply(x, y), affine.apply(x, y))
    assert 1.0 < np.hypot(dx, dy).max() <= 3 * 20 * math.sqrt(2) + 1e-9


@SETTINGS
@given(kind=st.sampled_from(KINDS), params=model_params(), seed=st.integers(0, 2**16))
def test_inverse_undoes_apply_inside_the_image(kind, params, seed):
    t = build(kind, params)
    x, y = image_points(seed)
    u, v = t.apply(x, y)
    bx, by = t.inverse(u, v)
    err = np.hypot(bx - x, by - y)
    assert err.max() < TOL, f"{kind}: round trip off by {err.max():.3g} px"
    # and the other way round, on the images of those points
    ux, uy = t.apply(*t.inverse(u, v))
    assert np.hypot(ux - u, uy - v).max() < TOL


@SETTINGS
@given(kind_a=st.sampled_from(MATRIX_KINDS), kind_b=st.sampled_from(MATRIX_KINDS),
       a=model_params(), b=model_params(), seed=st.integers(0, 2**16))
def test_applying_a_then_b_is_the_matrix_product(kind_a, kind_b, a, b, seed):
    ta, tb = build(kind_a, a), build(kind_b, b)
    both = Transform("homography", matrix=tb.matrix @ ta.matrix)
    x, y = image_points(seed)
    cx, cy = tb.apply(*ta.apply(x, y))
    px, py = both.apply(x, y)
    assert np.hypot(cx - px, cy - py).max() < TOL
    # the inverse of the product is the inverses in reverse order
    ix, iy = ta.inverse(*tb.inverse(px, py))
    jx, jy = both.inverse(px, py)
    assert np.hypot(ix - jx, iy - jy).max() < TOL
    assert np.hypot(jx - x, jy - y).max() < TOL


@SETTINGS
@given(kind=st.sampled_from(KINDS), params=model_params(), seed=st.integers(0, 2**16),
       n=st.integers(12, 60))
def test_fit_recovers_the_model_exactly(kind, params, seed, n):
    truth = build(kind, params)
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, SIZE, (n, 2))
    dst = np.column_stack(truth.apply(src[:, 0], src[:, 1]))
    fitted = fit(kind, src, dst)
    assert fitted.kind == kind
    x, y = check_points(int(SIZE), int(SIZE))
    fx, fy = fitted.apply(x, y)
    tx, ty = truth.apply(x, y)
    err = np.hypot(fx - tx, fy - ty)
    assert err.max() < TOL, f"{kind} fit off by {err.max():.3g} px on the check grid"
    if truth.matrix is not None:
        assert fitted.matrix is not None and fitted.matrix[2, 2] == pytest.approx(1.0)


@st.composite
def geotransforms(draw) -> Affine:
    """North-up or rotated (up to 5 degrees) geotransforms, 5-60 m pixels, anywhere in a UTM zone."""
    res = draw(unit(5.0, 60.0))
    aspect = draw(unit(0.8, 1.25))
    angle = draw(unit(-5.0, 5.0))
    x0, y0 = draw(unit(200_000, 800_000)), draw(unit(1_000_000, 9_000_000))
    return Affine.translation(x0, y0) @ Affine.rotation(angle) @ Affine.scale(res, -res * aspect)


def raster(name: str, transform: Affine, crs: CRS | None = CRS.from_epsg(32633),
           size: tuple[int, int] = (1500, 1200)) -> RasterInfo:
    return RasterInfo(path=name, width=size[0], height=size[1], count=1, dtype="uint8", crs=crs,
                      transform=transform, nodata=None)


@SETTINGS
@given(mov_t=geotransforms(), offset=st.tuples(unit(-20_000, 20_000), unit(-20_000, 20_000)),
       ref_res=unit(5.0, 60.0), kind=st.sampled_from(MATRIX_KINDS), params=model_params())
def test_corrected_pixel_matrix_is_correction_after_georeferencing(mov_t, offset, ref_res, kind, params):
    ref_t = Affine.translation(mov_t.c + offset[0], mov_t.f + offset[1]) @ Affine.scale(ref_res, -ref_res)
    georef = GeorefMapping(raster("mov", mov_t), raster("ref", ref_t))
    correction = build(kind, params)
    m = corrected_pixel_matrix(georef, correction.matrix)
    assert m is not None and m.shape == (3, 3) and m[2, 2] == pytest.approx(1.0)
    mapping = CorrectedMapping(georef, correction)
    x, y = check_points(1500, 1200)
    cx, cy = mapping.apply(x, y)
    mx, my = Transform("homography", matrix=m).apply(x, y)
    assert np.hypot(cx - mx, cy - my).max() < TOL
    # the georeferencing part alone is what the two geotransforms say: moving pixel ->
    # map -> reference pixel
    gx, gy = georef.apply(x, y)
    ex, ey = ~ref_t @ (mov_t @ (x, y))
    assert np.hypot(gx - ex, gy - ey).max() < TOL
    # inverses round-trip
    bx, by = mapping.inverse(cx, cy)
    assert np.hypot(bx - x, by - y).max() < TOL
    hx, hy = georef.inverse(gx, gy)
    assert np.hypot(hx - x, hy - y).max() < TOL


@SLOW_SETTINGS
@given(mov_t=geotransforms(), params=model_params())
def test_polynomial_correction_has_no_matrix_but_its_mapping_round_trips(mov_t, params):
    ref_t = Affine.translation(mov_t.c + 1234.5, mov_t.f - 987.6) @ Affine.scale(30.0, -30.0)
    georef = GeorefMapping(raster("mov", mov_t), raster("ref", ref_t))
    correction = build("polynomial2", params)
    assert corrected_pixel_matrix(georef, correction.matrix) is None
    mapping = CorrectedMapping(georef, correction)
    x, y = check_points(1500, 1200)
    cx, cy = mapping.apply(x, y)
    ex, ey = correction.apply(*georef.apply(x, y))
    assert np.array_equal(cx, ex) and np.array_equal(cy, ey)
    bx, by = mapping.inverse(cx, cy)
    assert np.hypot(bx - x, by - y).max() < TOL


@SLOW_SETTINGS
@given(dx=unit(-3000, 3000), dy=unit(-3000, 3000), res=unit(10.0, 40.0))
def test_georef_across_crs_round_trips_and_has_no_matrix(dx, dy, res):
    """Neighbouring UTM zones: PROJ maps exactly both ways, and there is no 3 x 3 matrix
    (the reprojection is not affine)."""
    mov_t = Affine.translation(300_000 + dx, 5_000_000 + dy) @ Affine.scale(res, -res)
    ref_t = Affine.translation(770_000.0, 5_003_000.0) @ Affine.scale(30.0, -30.0)  # the same area in zone 33
    mov, ref = raster("mov", mov_t, CRS.from_epsg(32634)), raster("ref", ref_t, CRS.from_epsg(32633))
    georef = GeorefMapping(mov, ref)
    assert not georef.same_crs and georef.affine is None
    assert corrected_pixel_matrix(georef, np.eye(3)) is None
    x, y = check_points(mov.width, mov.height)
    gx, gy = georef.apply(x, y)
    assert np.isfinite(gx).all() and np.isfinite(gy).all()
    # a real reprojection: about 2 degrees of grid convergence, and not affine
    assert abs(gx[1] - gx[0]) > 0 and abs(gy[1] - gy[0]) / abs(gx[1] - gx[0]) > math.tan(math.radians(1.0))
    affine_fit = fit("affine", np.column_stack([x, y]), np.column_stack([gx, gy]))
    ax, ay = affine_fit.apply(x, y)
    assert np.hypot(ax - gx, ay - gy).max() > 1e-3
    bx, by = georef.inverse(gx, gy)
    assert np.hypot(bx - x, by - y).max() < TOL


# --- the local model ------------------------------------------------------------------

GRID_NODES = 64


def local_model(base: Transform, field: np.ndarray, origin: tuple[float, float], step: float) -> LocalTransform:
    """A LocalTransform with node values ``field`` (2, rows, cols), border ring zeroed as
    fit_local leaves it (the field is continuous with the zero outside the grid)."""
    dx, dy = (np.array(f, np.float64) for f in field)
    for g in (dx, dy):
        g[[0, -1], :] = 0.0
        g[:, [0, -1]] = 0.0
    return LocalTransform(base, origin, step, dx, dy, np.zeros_like(dx))


def field_lipschitz(model: LocalTransform) -> float:
    """A Lipschitz bound of the bilinear field (Euclidean norm): each partial derivative
    of a component is at most its largest node difference over the step."""
    d = max(np.abs(np.diff(g, axis=a)).max() for g in (model.dx, model.dy) for a in (0, 1))
    return 2.0 * d / model.step


@st.composite
def smooth_fields(draw) -> tuple[np.ndarray, float]:
    """Node values of a smooth field on a grid over [-200, 2200]^2: sums of sinusoids of
    at most 3 px and wavelengths of 300-1500 px (gradient below 0.07)."""
    step = (SIZE + 400) / (GRID_NODES - 1)
    g = -200 + step * np.arange(GRID_NODES)
    x, y = np.meshgrid(g, g)
    comps = []
    for _ in range(2):
        amp = draw(unit(0.0, 3.0))
        lx, ly = draw(unit(300, 1500)), draw(unit(300, 1500))
        ph1, ph2 = draw(unit(0, 2 * math.pi)), draw(unit(0, 2 * math.pi))
        comps.append(amp * np.sin(2 * math.pi * x / lx + ph1) * np.cos(2 * math.pi * y / ly + ph2))
    return np.stack(comps), step


@SETTINGS
@given(kind=st.sampled_from(MATRIX_KINDS + ("polynomial2",)), params=model_params(), field=smooth_fields(),
       seed=st.integers(0, 2**16))
def test_local_inverse_round_trips_for_a_smooth_field(kind, params, field, seed):
    values, step = field
    model = local_model(build(kind, params), values, (-200.0, -200.0), step)
    rng = np.random.default_rng(seed)
    # inside the image and beyond the grid (where the model is its base)
    x = rng.uniform(-400, SIZE + 400, (20, 15))
    y = rng.uniform(-400, SIZE + 400, (20, 15))
    u, v = model.apply(x, y)
    qx, qy = model.inverse(u, v)
    assert qx.shape == x.shape
    # a gentle field (gradient < 0.1 px/px against a base that shrinks at most 2x)
    # contracts strongly: every point converges
    assert np.isfinite(qx).all() and np.isfinite(qy).all()
    assert np.hypot(qx - x, qy - y).max() < 1e-4
    ax, ay = model.apply(qx, qy)
    assert np.hypot(ax - u, ay - v).max() < 1e-4


@SLOW_SETTINGS
@given(amp=unit(3.0, 30.0), seed=st.integers(0, 2**16), kind=st.sampled_from(("translation", "affine")),
       params=model_params())
def test_local_inverse_is_nan_rather_than_wrong(amp, seed, kind, params):
    """A rough field (node values of +-amp px, 10 px apart: gradients of 0.6-6) folds the
    mapping, and the fixed-point iteration need not converge. Where the inverse is
    finite it must be right: apply(inverse(p)) within the field's Lipschitz bound times
    INVERSE_TOL of p (the last step moved less than INVERSE_TOL)."""
    rng = np.random.default_rng(seed)
    base = build(kind, params)
    model = local_model(base, rng.uniform(-amp, amp, (2, GRID_NODES, GRID_NODES)), (0.0, 0.0), 10.0)
    pts = rng.uniform(-50, 10 * GRID_NODES + 50, (2, 4000))
    u, v = model.apply(*pts)
    u = u + rng.normal(0, 2.0, u.shape)   # not only images of grid points: any reference point
    v = v + rng.normal(0, 2.0, v.shape)
    qx, qy = model.inverse(u, v)
    assert np.array_equal(np.isnan(qx), np.isnan(qy))
    ok = np.isfinite(qx)
    ax, ay = model.apply(qx[ok], qy[ok])
    err = np.hypot(ax - u[ok], ay - v[ok])
    bound = max(field_lipschitz(model), 1.0) * INVERSE_TOL + 1e-9
    assert err.size == 0 or err.max() <= bound, f"finite inverse off by {err.max():.3g} px (bound {bound:.3g})"


def test_local_inverse_gives_nan_where_the_iteration_does_not_converge():
    """A deterministic rough field: a large share of points has no converging iteration
    and is NaN, the rest is right; and the smooth part of the plane (outside the grid)
    is inverted exactly as the base."""
    rng = np.random.default_rng(0)
    base = Transform("affine", matrix=np.array([[1.1, 0.05, 12.0], [-0.03, 0.95, -7.0], [0, 0, 1]]))
    model = local_model(base, rng.uniform(-10, 10, (2, GRID_NODES, GRID_NODES)), (0.0, 0.0), 10.0)
    inside = rng.uniform(20, 600, (2, 5000))
    u, v = model.apply(*inside)
    qx, qy = model.inverse(u, v)
    failed = np.isnan(qx)
    assert 0.1 < failed.mean() < 0.95, f"{failed.mean():.2f} of the points failed"
    ax, ay = model.apply(qx[~failed], qy[~failed])
    assert np.hypot(ax - u[~failed], ay - v[~failed]).max() <= field_lipschitz(model) * INVERSE_TOL
    # far from the grid the field is zero: the inverse is the base's, always finite
    far = np.array([-500.0, 2000.0, 5000.0]), np.array([3000.0, -800.0, 100.0])
    fx, fy = model.inverse(*base.apply(*far))
    assert np.allclose(fx, far[0], atol=1e-9) and np.allclose(fy, far[1], atol=1e-9)
