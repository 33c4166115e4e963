"""Rules that keep an estimate within its evidence and a read within its memory bound.

1. dmreg.fine._drop_unsupported: homography and polynomial2 extrapolate wildly from
   clustered points, so in model choice (auto/local) they are kept only when their
   inliers' convex hull spans at least a quarter of the overlap.
2. dmreg.io.sampling.sample_onto_grid: "Memory therefore depends on the grid size, never
   on the raster size" -- a read holds at most MAX_READ_RATIO source pixels per output
   pixel, however far the mapping stretches one output block over the source.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import box

from dmreg.estimate.models import Transform
from dmreg.estimate.robust import ModelFit, fit_all
from dmreg.fine import _drop_unsupported, fit_models, points_inside
from dmreg.io.sampling import MAX_READ_RATIO, sample_onto_grid
from dmreg.options import RegisterOptions
from dmreg.result import Correspondences

# --- 1. models the matches cannot support are dropped ----------------------------------

OVERLAP = box(0.0, 0.0, 1000.0, 1000.0)
THRESHOLD = 1.5
SEARCH_RADIUS = 6.0
NOISE = 0.3


def shift(x, y):
    return x + 2.3, y - 1.7


def rotation(x, y, angle_deg=0.3, scale=1.001):
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return c * x - s * y + 2.0, s * x + c * y - 1.0


HOMOGRAPHY = Transform("homography", matrix=np.array([[1.0, 0.01, 3.0], [-0.01, 1.0, -2.0], [2e-5, -1.5e-5, 1.0]]))


def correspondences(src: np.ndarray, truth, seed: int) -> Correspondences:
    """Matches from ``truth`` plus NOISE px of Gaussian noise, tiles of 250 px."""
    rng = np.random.default_rng(seed)
    dst = np.column_stack(truth(src[:, 0], src[:, 1])) + rng.normal(0, NOISE, src.shape)
    tiles = (src[:, 0] // 250).astype(int) + 4 * (src[:, 1] // 250).astype(int)
    return Correspondences(src.copy(), src, dst, np.ones(len(src)), tiles)


def max_error(model, truth, pts: np.ndarray) -> float:
    mx, my = model.apply(pts[:, 0], pts[:, 1])
    tx, ty = truth(pts[:, 0], pts[:, 1])
    return float(np.hypot(mx - tx, my - ty).max())


def strip(seed: int = 0) -> np.ndarray:
    """300 matches in a 20 px strip across the overlap: 2 % of its area."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0, 1000, 300), rng.uniform(490, 510, 300)])


def cluster(seed: int = 0) -> np.ndarray:
    """200 matches in one 150 px square: 2.25 % of the overlap."""
    return np.random.default_rng(seed).uniform(100, 250, (200, 2))


@pytest.mark.parametrize("where, truth, expected", [
    (strip, shift, ("translation", "similarity")),
    (cluster, rotation, ("similarity",)),
], ids=["strip-shift", "cluster-rotation"])
def test_higher_order_models_are_dropped_when_matches_span_little(where, truth, expected):
    src = where()
    matches = correspondences(src, truth, seed=1)
    # every kind has a consensus on these matches, and the dropped ones would extrapolate badly
    raw = fit_all(matches.pred_px, matches.ref_px, THRESHOLD, search_radius=SEARCH_RADIUS)
    assert {"homography", "polynomial2"} <= set(raw)
    everywhere = points_inside(OVERLAP)
    assert max_error(raw["polynomial2"].transform, truth, everywhere) > 5.0

    fits, selected, _ = fit_models(matches, OVERLAP, THRESHOLD, SEARCH_RADIUS, RegisterOptions())
    assert "homography" not in fits and "polynomial2" not in fits
    assert {"translation", "similarity", "affine"} & set(fits)
    assert selected.kind in expected
    # right where the evidence is, and sane where it is not
    assert max_error(selected.transform, truth, src) < 0.3
    assert max_error(selected.transform, truth, everywhere) < 1.5


def test_higher_order_models_compete_when_matches_span_the_overlap():
    """The control: the same rule keeps a homography that the matches pin down."""
    src = np.random.default_rng(0).uniform(0, 1000, (400, 2))
    matches = correspondences(src, HOMOGRAPHY.apply, seed=0)
    fits, selected, _ = fit_models(matches, OVERLAP, THRESHOLD, SEARCH_RADIUS, RegisterOptions())
    assert {"homography", "polynomial2"} <= set(fits)
    assert selected.kind == "homography"
    assert max_error(selected.transform, HOMOGRAPHY.apply, points_inside(OVERLAP)) < 0.15


def _fit(kind: str, inliers: np.ndarray) -> ModelFit:
    return ModelFit(Transform(kind, matrix=np.eye(3)), inliers, 0.1, 0.2)


@pytest.mark.parametrize("fraction, kept", [(0.24, False), (0.26, True)])
def test_the_rule_is_a_quarter_of_the_overlap_by_the_inliers_hull(fraction, kept):
    """Inliers on a square whose hull covers ``fraction`` of a 100 x 100 overlap; every
    other match spread over the whole of it (those are not inliers and must not count)."""
    side = 100 * math.sqrt(fraction)
    g = np.linspace(0, side, 8)
    square = np.column_stack([a.ravel() for a in np.meshgrid(g, g)])
    spread = np.random.default_rng(0).uniform(0, 100, (200, 2))
    src = np.vstack([square, spread])
    inliers = np.arange(len(src)) < len(square)
    fits = {k: _fit(k, inliers) for k in ("translation", "similarity", "affine", "homography", "polynomial2")}
    result = _drop_unsupported(fits, src, box(0, 0, 100, 100))
    assert {"translation", "similarity", "affine"} <= set(result)   # never dropped
    assert ("homography" in result) is kept and ("polynomial2" in result) is kept
    # the same inliers judged against a larger overlap: always too small
    assert "homography" not in _drop_unsupported(fits, src, box(0, 0, 200, 200))


# --- 2. a read is bounded by the output block, not by the source ------------------------

BLOCK = 512
CONSTANT = 7


class ReadSpy:
    """Wraps a dataset and records the out_shape (or, without one, the window size) of
    every pixel read."""

    def __init__(self, ds):
        self._ds = ds
        self.reads: list[tuple[Window | None, tuple[int, ...] | None]] = []

    def read(self, *args, **kwargs):
        self.reads.append((kwargs.get("window"), kwargs.get("out_shape")))
        return self._ds.read(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def pixels_read(self) -> list[int]:
        """Pixels each read returned (per band)."""
        out = []
        for window, shape in self.reads:
            if shape is not None:
                out.append(int(np.prod(shape[-2:])))
            elif window is not None:
                out.append(int(window.width * window.height))
            else:
                out.append(self._ds.width * self._ds.height)
        return out


def big_raster(path, side: int, dtype: str, sparse: bool) -> str:
    """A ``side`` x ``side`` tiled DEFLATE GeoTIFF that costs almost nothing on disk:
    every block CONSTANT, or (``sparse``) no block written at all (read as zeros)."""
    profile = dict(driver="GTiff", width=side, height=side, count=1, dtype=dtype, tiled=True,
                   blockxsize=512, blockysize=512, compress="DEFLATE", crs="EPSG:32633",
                   transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0))
    if sparse:
        profile["sparse_ok"] = True
    with rasterio.open(path, "w", **profile) as ds:
        if not sparse:
            block = np.full((512, 512), CONSTANT, dtype)
            for row in range(0, side, 512):
                for col in range(0, side, 512):
                    w = Window(col, row, min(512, side - col), min(512, side - row))
                    ds.write(block[:w.height, :w.width], 1, window=w)
    return str(path)


def near_horizon(side: int):
    """A homography whose horizon runs just right of a 512-pixel output block: w = 1 -
    0.0019 x falls from 1 at the block's left edge to 0.03 at its right, so source pixels
    per output pixel grow from 1 to about 1000 across the block and its far corner lands
    ~17500 / 20000 of the raster's side away. Scaled to a raster of ``side`` pixels."""
    h = Transform("homography", matrix=np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.0019, 0, 1.0]]))
    s = side / 20_000

    def coords(x, y):
        u, v = h.apply(x, y)
        return u * s, v * s

    return coords


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> str:
    return big_raster(tmp_path_factory.mktemp("huge") / "huge.tif", 20_000, "uint8", sparse=False)


def traced(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_homography_near_its_horizon_reads_a_bounded_decimation(huge):
    with rasterio.open(huge) as ds:
        spy = ReadSpy(ds)
        (values, valid), peak = traced(lambda: sample_onto_grid(spy, [1], near_horizon(ds.width), (BLOCK, BLOCK)))
    window, _ = spy.reads[0]
    assert window.width > 15_000 and window.height > 15_000, "the mapping did not stretch the block"
    assert max(spy.pixels_read()) <= MAX_READ_RATIO * BLOCK * BLOCK
    assert valid.mean() > 0.9 and np.all(values[0][valid] == CONSTANT)
    # an unbounded read would hold >= 17500^2 bytes (306 MB) as uint8, 4x that as float32;
    # the bounded one a few float32 and mask copies of at most MAX_READ_RATIO pixels per output pixel
    assert peak < 40 * MAX_READ_RATIO * BLOCK * BLOCK, f"peak {peak / 1e6:.0f} MB"


def test_a_hundredfold_scale_reads_a_decimated_window(huge):
    """Output pixels of 100 x 100 source pixels: the block spans 51200 source pixels,
    the window is clipped to the raster and read decimated 100x."""
    with rasterio.open(huge) as ds:
        spy = ReadSpy(ds)
        (values, valid), peak = traced(
            lambda: sample_onto_grid(spy, [1], lambda x, y: (100 * x, 100 * y), (BLOCK, BLOCK)))
    assert max(spy.pixels_read()) <= MAX_READ_RATIO * BLOCK * BLOCK
    assert max(spy.pixels_read()) <= (20_000 // 100 + 1) ** 2
    # inside the raster where 100 x < 20000
    assert valid[:195, :195].all() and not valid[:, 201:].any() and not valid[201:, :].any()
    assert np.all(values[0][valid] == CONSTANT)
    assert peak < 40 * MAX_READ_RATIO * BLOCK * BLOCK


@pytest.mark.parametrize("dtype", [
    "uint8",
    "complex64",  # multilooked in strips of whole output rows
])
def test_peak_memory_does_not_grow_with_the_raster(tmp_path, dtype):
    """The same output block stretched over an 8000^2 and a 16000^2 raster: both reads
    are decimated to the same 1818 x 1818 pixels (factor 4 and 8), so the memory they
    hold must be the same, whatever the source's size (sparse rasters: reading them
    costs no decompression)."""
    peaks, shapes = {}, {}
    for side in (8_000, 16_000):
        path = big_raster(tmp_path / f"r{side}.tif", side, dtype, sparse=True)
        with rasterio.open(path) as ds:
            spy = ReadSpy(ds)
            (values, valid), peaks[side] = traced(
                lambda ds=ds, spy=spy: sample_onto_grid(spy, [1], near_horizon(ds.width), (BLOCK, BLOCK)))
        assert valid.mean() > 0.9 and np.all(values[0][valid] == 0)
        shapes[side] = spy.pixels_read()
    assert all(n <= MAX_READ_RATIO * BLOCK * BLOCK for n in shapes[16_000])
    grown = peaks[16_000] - peaks[8_000]
    assert grown < 8e6, (f"peak {peaks[8_000] / 1e6:.0f} MB for 8000^2, {peaks[16_000] / 1e6:.0f} MB "
                         f"for 16000^2 with the same output block")


@pytest.mark.parametrize("factor", [8, 16])
def test_strongly_decimated_reads_keep_the_block_edges_valid(tmp_path, factor):
    """Output pixels of factor x factor source pixels, all well inside a 2000^2 raster
    (source 500 to 500 + 40 factor): every one is valid."""
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (2000, 2000)).astype(np.float32)
    path = tmp_path / "f.tif"
    with rasterio.open(path, "w", driver="GTiff", width=2000, height=2000, count=1, dtype="float32",
                       crs="EPSG:32633", transform=Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_000.0)) as ds:
        ds.write(data, 1)
    with rasterio.open(path) as ds:
        values, valid = sample_onto_grid(ds, [1], lambda x, y: (factor * x + 500, factor * y + 500), (40, 40))
    assert valid.all(), f"{(~valid).sum()} invalid output pixels"
