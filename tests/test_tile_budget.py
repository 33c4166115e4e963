"""The adaptive tile budget: a pass stops matching tiles once the model is pinned down.

A 1047 x 1056 raster (the Landsat 7 sample upsampled 3x) in 128-pixel tiles gives a plan
of 64 tiles. Registering a band to itself (shifted geotransform) is easy: the predicted
error falls below the target after the first check and most tiles are never read. The
same band with strong noise added is hard: every match is noisy, the target is reached
late or never, and many more tiles are read. With ``target_error_px=0`` every planned
tile is matched, as before the budget existed.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from affine import Affine
from shapely.geometry import box

from dmreg.geometry.tiling import Grid, plan_tiles, spread_order
from dmreg.options import RegisterOptions
from dmreg.pipeline import estimate

from helpers import SHIFT, write_raster

UPSAMPLE = 3
OPTIONS = RegisterOptions(tile_size=128, tile_overlap=0)


@pytest.fixture(scope="module")
def large_pair(l7, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("budget")
    red = l7["bands"]["red"]
    size = (red.shape[1] * UPSAMPLE, red.shape[0] * UPSAMPLE)
    big = cv2.resize(red, size, interpolation=cv2.INTER_CUBIC)
    transform = l7["transform"] @ Affine.scale(1 / UPSAMPLE)
    noisy = np.clip(big.astype(np.float32) + np.random.default_rng(0).normal(0, 40, big.shape), 0, 255)
    ref = write_raster(folder / "ref.tif", big, crs=l7["crs"], transform=transform)
    moved = transform @ Affine.translation(*SHIFT)
    easy = write_raster(folder / "easy.tif", big, crs=l7["crs"], transform=moved)
    hard = write_raster(folder / "hard.tif", noisy.astype(np.uint8), crs=l7["crs"], transform=moved)
    return {"ref": str(ref), "easy": str(easy), "hard": str(hard)}


def _error(result) -> float:
    """Check-grid error against the truth (identity: the pixels were not moved)."""
    xs, ys = np.meshgrid(np.linspace(0.5, result.mov.width - 0.5, 10), np.linspace(0.5, result.mov.height - 0.5, 10))
    x, y = result.mapping.apply(xs.ravel(), ys.ravel())
    return float(np.max(np.hypot(x - xs.ravel(), y - ys.ravel())))


def test_budget_stops_early_on_an_easy_pair_and_reads_more_on_a_hard_one(large_pair):
    easy = estimate(large_pair["ref"], large_pair["easy"], OPTIONS)
    hard = estimate(large_pair["ref"], large_pair["hard"], OPTIONS)
    assert easy.tiles == hard.tiles == 81  # 1047 x 1056 px in 128-px tiles, the last ones overlapping
    assert easy.passes[-1]["stopped_early"]
    assert easy.passes[-1]["tiles_read"] <= 24, easy.passes
    easy_read = sum(p["tiles_read"] for p in easy.passes)
    hard_read = sum(p["tiles_read"] for p in hard.passes)
    assert hard_read >= 2 * easy_read, (easy.passes, hard.passes)
    assert _error(easy) < 0.05
    assert _error(hard) < 0.3
    assert hard.uncertainty.ce90_px > easy.uncertainty.ce90_px


def test_zero_target_matches_every_planned_tile(large_pair):
    result = estimate(large_pair["ref"], large_pair["easy"], RegisterOptions(tile_size=128, tile_overlap=0,
                                                                               target_error_px=0))
    assert all(p["tiles_read"] == 81 and not p["stopped_early"] for p in result.passes)
    assert _error(result) < 0.05


def test_negative_target_is_refused():
    from dmreg.errors import UsageError

    with pytest.raises(UsageError, match="--target-error"):
        RegisterOptions(target_error_px=-1)


def test_spread_order_puts_the_centre_first_then_spreads():
    tiles = plan_tiles(box(0, 0, 1000, 1000), 1.0, 100, 0, 1000)
    order = spread_order(tiles)
    assert sorted(order) == list(range(len(tiles)))
    centre = tiles[order[0]]
    assert abs(centre.x0 + 50 - 500) <= 50 and abs(centre.y0 + 50 - 500) <= 50
    quadrants = {(t.x0 >= 500, t.y0 >= 500) for t in (tiles[i] for i in order[1:5])}
    assert len(quadrants) == 4, "the four tiles after the centre lie in the four corners' quadrants"


def test_spread_order_of_one_or_no_tile():
    assert spread_order([]) == []
    assert spread_order([Grid(0, 0, 1.0, 10, 10)]) == [0]


def test_a_first_pass_that_does_not_move_the_model_becomes_the_final_one(large_pair):
    """The shift is whole pixels of the georeferencing, which the coarse stage already
    finds to well under the structural matcher's tolerance: the first pass is promoted at
    its first check and no tile is read twice. A matcher that tolerates no movement
    reads them again in a refinement pass, for no better answer."""
    from dmreg.fine import FINAL_FIRST_CHECK
    from dmreg.matchers.structural import StructuralMatcher

    promoted = estimate(large_pair["ref"], large_pair["easy"], OPTIONS)
    assert len(promoted.passes) == 1, promoted.passes
    assert promoted.passes[0]["moved_px"] <= StructuralMatcher.refine_tolerance_px
    assert FINAL_FIRST_CHECK <= promoted.passes[0]["tiles_read"] <= 24 and promoted.passes[0]["stopped_early"]
    assert promoted.passes[0]["promoted"]
    strict = estimate(large_pair["ref"], large_pair["easy"], OPTIONS,
                      matcher=StructuralMatcher(refine_tolerance_px=0, reread_within_px=0))
    assert len(strict.passes) == 2, strict.passes
    assert strict.passes[0]["tiles_read"] == 8  # the first check, at three times the target, stopped it
    assert not any(p["promoted"] for p in strict.passes)
    assert _error(promoted) <= _error(strict) + 0.01


def test_tiles_are_never_read_past_the_check_that_ends_a_pass(large_pair, monkeypatch):
    """The read-ahead thread stops at the next budget check: a pass that stops there
    leaves no tile read for nothing."""
    from dmreg.coarse import TileReader

    fine_reads = []
    read = TileReader.pair

    def counting(self, grid, *args, **kwargs):
        if grid.shape == (128, 128):  # the fine tiles; the coarse grid is larger
            fine_reads.append(grid)
        return read(self, grid, *args, **kwargs)

    monkeypatch.setattr(TileReader, "pair", counting)
    result = estimate(large_pair["ref"], large_pair["easy"], OPTIONS)
    assert result.passes[-1]["stopped_early"]
    assert len(fine_reads) == sum(p["tiles_read"] for p in result.passes) < result.tiles


def test_a_promoted_pass_searches_its_remaining_tiles_as_narrowly_as_a_refinement(large_pair):
    """A coarse level of 256 px leaves the first pass a wide search; once its first check
    promotes it, the tiles still to match were read through a model found good to a
    fraction of a pixel, so they are searched within the refinement bound."""
    from dmreg.fine import PROMOTION_CHECK, REFINED_OFFSET
    from dmreg.matchers.structural import StructuralMatcher

    offsets = []

    class Recording(StructuralMatcher):
        def match(self, pairs):
            offsets.extend(p.max_offset for p in pairs if p.ref.shape == (128, 128))
            return super().match(pairs)

    result = estimate(large_pair["ref"], large_pair["easy"], RegisterOptions(tile_size=128, tile_overlap=0,
                                                                               coarse_size=256), matcher=Recording())
    assert len(result.passes) == 1 and result.passes[0]["promoted"], result.passes
    first, rest = offsets[:PROMOTION_CHECK], offsets[PROMOTION_CHECK:]
    assert min(first) > REFINED_OFFSET and rest and set(rest) == {REFINED_OFFSET}, offsets
    assert _error(result) < 0.05


def test_a_first_pass_whose_model_moved_a_little_reads_on_through_it(large_pair, monkeypatch):
    """A coarse level of 128 px leaves the model a quarter of a pixel off, beyond the
    structural matcher's tolerance but within its ``reread_within_px``: the first check
    makes the pass final, the remaining tiles are read through its model and the four
    matched before it are read again. That is four reads more than a promoted pass,
    where a refinement pass reads every tile it needs again, for the same answer."""
    from dmreg.coarse import TileReader
    from dmreg.fine import FINAL_FIRST_CHECK, PROMOTION_CHECK
    from dmreg.matchers.structural import StructuralMatcher

    reads = []
    read = TileReader.pair

    def recording(self, grid, *args, **kwargs):
        if grid.shape == (128, 128):
            reads.append((grid.x0, grid.y0))
        return read(self, grid, *args, **kwargs)

    monkeypatch.setattr(TileReader, "pair", recording)
    options = RegisterOptions(tile_size=128, tile_overlap=0, coarse_size=128)
    reread = estimate(large_pair["ref"], large_pair["easy"], options)
    [only] = reread.passes
    assert only["promoted"] and only["tiles_reread"] == PROMOTION_CHECK and only["stopped_early"], only
    assert only["moved_px"] <= StructuralMatcher.refine_tolerance_px
    assert only["tiles_read"] == len(reads) == FINAL_FIRST_CHECK + PROMOTION_CHECK, only
    assert only["tiles_matched"] == FINAL_FIRST_CHECK == len(set(reads))
    assert reads[PROMOTION_CHECK:2 * PROMOTION_CHECK] == reads[:PROMOTION_CHECK]  # read again, first

    reads.clear()
    refined = estimate(large_pair["ref"], large_pair["easy"], options, matcher=StructuralMatcher(reread_within_px=0))
    assert len(refined.passes) == 2 and not refined.passes[0]["promoted"], refined.passes
    assert len(reads) > only["tiles_read"]
    assert _error(reread) <= _error(refined) + 0.01


def test_a_pass_whose_inliers_crowd_into_one_corner_reads_on():
    """The budget cuts blocks as the reported error will: 300 precise matches of a shift
    within 60 x 100 px of a 1000 px overlap, from four tiles, are not yet enough, while
    cells of their own bounding box would have stopped the pass."""
    from dmreg.fine import TileBudget
    from dmreg.geometry.mapping import check_points
    from dmreg.result import Correspondences

    rng = np.random.default_rng(4)
    pred = rng.uniform([200, 150], [260, 250], (300, 2))
    ref = pred + [2.0, -1.0] + rng.normal(0, 0.05, pred.shape)
    matches = Correspondences(pred, pred, ref, np.ones(300), np.repeat(np.arange(4), 75))
    at = np.column_stack(check_points(1000, 1000))

    def budget(area_span):
        return TileBudget("translation", 1.0, 10.0, RegisterOptions(), at, 0.5, True, {"fit": 0.0},
                          area_span=area_span)

    assert budget(None).enough(matches)
    crowded = budget(np.array([1000.0, 1000.0]))
    assert not crowded.enough(matches) and crowded.ce90_px == np.inf
