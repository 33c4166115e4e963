"""The coarse stage's grids: an overlap larger than the coarse grid is first matched on
a grid half as fine, kept when its model dominates its matches; the full grid is read
otherwise, and always for a matcher whose peaks lean toward the offset they were read at."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from affine import Affine
from shapely.geometry import box

from dmreg import coarse
from dmreg.coarse import coarse_grids
from dmreg.geometry.tiling import grid_over
from dmreg.matchers.structural import StructuralMatcher
from dmreg.options import RegisterOptions
from dmreg.pipeline import estimate

from helpers import SHIFT, write_raster

UPSAMPLE = 3  # the 349 x 352 Landsat 7 sample becomes 1047 x 1056 px: more than the default 1024 px grid
OPTIONS = RegisterOptions()


@pytest.fixture(scope="module")
def pair(l7, tmp_path_factory) -> dict:
    """Landsat 7 red and green upsampled on one grid, the green's geotransform shifted by
    SHIFT pixels."""
    folder = tmp_path_factory.mktemp("coarse")
    transform = l7["transform"] @ Affine.scale(1 / UPSAMPLE)
    paths = {}
    for role, band in (("ref", "red"), ("mov", "green")):
        data = l7["bands"][band]
        big = cv2.resize(data, (data.shape[1] * UPSAMPLE, data.shape[0] * UPSAMPLE), interpolation=cv2.INTER_CUBIC)
        shift = Affine.translation(*SHIFT) if role == "mov" else Affine.identity()
        paths[role] = str(write_raster(folder / f"{band}.tif", big, crs=l7["crs"], transform=transform @ shift))
    return paths


def _error(result) -> float:
    """Largest check-grid distance from the truth (the pixels were not moved)."""
    xs, ys = np.meshgrid(np.linspace(0.5, result.mov.width - 0.5, 10), np.linspace(0.5, result.mov.height - 0.5, 10))
    x, y = result.mapping.apply(xs.ravel(), ys.ravel())
    return float(np.max(np.hypot(x - xs.ravel(), y - ys.ravel())))


def test_an_overlap_larger_than_the_coarse_grid_is_first_matched_on_a_half_grid():
    overlap = box(0, 0, 2000, 1500)
    half, full = coarse_grids(overlap, 1024, 1.0)
    assert (full.width, full.height) == (1024, 768) and (half.width, half.height) == (512, 384)
    assert half.scale == pytest.approx(2 * full.scale)
    assert coarse_grids(overlap, 1024, 1.0, half_first=False) == [full]
    small = box(0, 0, 900, 700)
    assert coarse_grids(small, 1024, 1.0) == [grid_over(small, 1024)]
    # 2000 reference px are 1000 working px at 2 reference px each: the coarse grid holds them
    assert len(coarse_grids(overlap, 1024, 2.0)) == 1


def test_a_dominant_half_grid_model_is_kept_and_a_weak_one_falls_back_to_the_full_grid(pair, monkeypatch):
    kept = estimate(pair["ref"], pair["mov"], OPTIONS)
    assert max(kept.coarse["size"]) == 512 and "coarser_grids_tried" not in kept.coarse, kept.coarse
    assert kept.coarse["inliers"] >= max(coarse.MIN_SKIP_INLIERS, coarse.DOMINANT_SHARE * kept.coarse["matches"])

    monkeypatch.setattr(coarse, "MIN_SKIP_INLIERS", 10 ** 6)  # no half-grid model is enough
    full = estimate(pair["ref"], pair["mov"], OPTIONS)
    assert max(full.coarse["size"]) == 1024, full.coarse
    [tried] = full.coarse["coarser_grids_tried"]
    assert tried == {k: kept.coarse[k] for k in ("size", "matches", "inliers")}
    # red against green carries the bands' own misregistration, about 0.2 px here, either way
    assert _error(full) < 0.25 and _error(kept) <= _error(full) + 0.01, (_error(kept), _error(full))


def test_a_matcher_whose_peaks_lean_toward_the_read_offset_starts_from_the_full_grid(pair):
    leaning = estimate(pair["ref"], pair["mov"], OPTIONS, matcher=StructuralMatcher(reread_within_px=0))
    assert max(leaning.coarse["size"]) == 1024 and "coarser_grids_tried" not in leaning.coarse, leaning.coarse
