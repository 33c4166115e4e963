"""What makes DistillMatch fast on the CPU gives the matches the full network gives.

The learned matcher keeps, per reference tile, what the network computed for it: the
backbone features (the orientation search matches one reference grid against eight
turns of the moving raster) and, within the fine stage, the coarse matches, which a
refinement pass whose model moved by less than ``reuse_within_px`` refines again on the
re-read tiles instead of running the whole network. Its fine tiles are as small as
covering the overlap with as many tiles allows. These tests check correctness only,
never timings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import box

from dmreg.fine import _tile_size
from dmreg.geometry.tiling import plan_tiles
from dmreg.io.sampling import normalise_contrast
from dmreg.matchers import TileMatches, TilePair
from dmreg.matchers.distillmatch.config import DistillMatchConfig
from dmreg.matchers.distillmatch.matcher import DistillMatchMatcher
from dmreg.matchers.distillmatch.model import DistillMatch
from dmreg.matchers.structural import StructuralMatcher
from dmreg.options import RegisterOptions
from dmreg.pipeline import estimate

from helpers import L7, L7_BANDS

SIZE = 160
SAME_PX = 1e-3  # float rounding of a batch of one against a batch of two through the backbone


def _band(name: str, row: int = 90, col: int = 100, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    with rasterio.open(L7) as ds:
        values = ds.read(L7_BANDS[name]).astype(np.float32)
    if shift != (0.0, 0.0):  # content moved by ``shift`` px (x, y), sub-pixel
        values = cv2.warpAffine(values, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), values.shape[::-1],
                                flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    crop = values[row:row + SIZE, col:col + SIZE]
    return normalise_contrast(crop, np.ones(crop.shape, bool))


def _pair(ref: np.ndarray, mov: np.ndarray) -> TilePair:
    ok = np.ones(ref.shape, bool)
    return TilePair(ref, mov, ok, ok.copy(), max_offset=8.0)


@pytest.fixture(scope="module")
def tiles() -> dict[str, TilePair]:
    red, swir2 = _band("red"), _band("swir2")
    return {"pair": _pair(red, swir2), "nir": _pair(red, _band("nir")),
            "moved": _pair(red, _band("swir2", shift=(0.5, -0.3))),
            "other_ref": _pair(_band("red", row=150), swir2)}


@pytest.fixture(scope="module")
def matcher() -> DistillMatchMatcher:
    return DistillMatchMatcher(device="cpu")


@pytest.fixture(scope="module")
def plain() -> DistillMatchMatcher:
    """Another matcher that is never told anything: the full network on every call."""
    return DistillMatchMatcher(device="cpu")


@dataclass
class Calls:
    """Backbone batch sizes and transformer runs of a matcher's network since reset."""

    backbone: list[int] = field(default_factory=list)
    transformer: int = 0


@pytest.fixture
def calls(matcher, monkeypatch) -> Calls:
    record = Calls()
    model = matcher._model
    backbone, transformer = model.backbone.forward, model.transformer.forward

    def counted_backbone(image):
        record.backbone.append(image.shape[0])
        return backbone(image)

    def counted_transformer(*args):
        record.transformer += 1
        return transformer(*args)

    monkeypatch.setattr(model.backbone, "forward", counted_backbone)
    monkeypatch.setattr(model.transformer, "forward", counted_transformer)
    matcher.fine_pass(None, True)  # nothing kept from another test
    matcher.feature_cache_mb, matcher.reuse_within_px = 64.0, 1.0
    yield record
    matcher.fine_pass(None, True)


def _same(a: TileMatches, b: TileMatches, tol: float = SAME_PX) -> None:
    assert len(a) == len(b) > 50
    np.testing.assert_allclose(a.ref_xy, b.ref_xy, atol=tol)
    np.testing.assert_allclose(a.mov_xy, b.mov_xy, atol=tol)
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-3, atol=1e-5)


def test_model_given_the_reference_features_computes_what_it_computes_without(tiles):
    torch.manual_seed(0)
    conf = DistillMatchConfig(widths=(8, 16, 32), coarse_dim=32, fine_dim=16, n_layers=1, n_heads=2,
                              match_threshold=0.0)
    model = DistillMatch(conf).eval()
    pair = tiles["pair"]
    data = {"image0": torch.from_numpy(pair.ref)[None, None], "image1": torch.from_numpy(pair.mov)[None, None]}
    with torch.inference_mode():
        full = model(data)
        given = model({**data, "features0": model.backbone(data["image0"])})
    for key in ("coarse0", "coarse1", "fine0", "fine1", "log_conf"):
        torch.testing.assert_close(given[key], full[key], rtol=1e-4, atol=1e-4)
    assert torch.equal(given["matches"]["cells0"], full["matches"]["cells0"])
    torch.testing.assert_close(given["matches"]["kpts1"], full["matches"]["kpts1"], rtol=0, atol=SAME_PX)


def test_the_same_reference_tile_reuses_its_features_with_the_same_matches(matcher, plain, tiles, calls):
    """The orientation search's pattern: one reference tile, another moving tile each call."""
    matcher.match([tiles["pair"]])
    found = matcher.match([tiles["nir"]])[0]
    assert calls.backbone == [2, 1]  # the reference went through the backbone once
    _same(found, plain.match([tiles["nir"]])[0])
    matcher.match([tiles["other_ref"]])
    assert calls.backbone == [2, 1, 2]


def test_a_pass_through_an_unmoved_model_refines_the_same_cells_to_the_same_matches(matcher, tiles, calls):
    matcher.fine_pass(None, False)
    first = matcher.match([tiles["pair"]])[0]
    matcher.fine_pass(0.0, True)
    again = matcher.match([tiles["pair"]])[0]
    assert calls.transformer == 1  # the second pass ran the backbone on the moving tile only
    assert calls.backbone == [2, 1]
    assert not matcher._previous and not matcher._kept  # handed over once; a final pass keeps nothing
    _same(again, first)


def test_a_pass_through_a_slightly_moved_model_measures_the_offsets_again(matcher, plain, tiles, calls):
    """Moving content 0.5 px right and 0.3 px up: the kept cells, refined on the new
    tile, find the move, as the full network does on it."""
    matcher.fine_pass(None, False)
    first = matcher.match([tiles["pair"]])[0]
    matcher.fine_pass(0.6, True)
    refined = matcher.match([tiles["moved"]])[0]
    assert calls.transformer == 1
    np.testing.assert_array_equal(refined.ref_xy.shape, first.ref_xy.shape)
    full = plain.match([tiles["moved"]])[0]
    for found in (refined, full):
        # image0's refinement sees the moving tile too: compare the displacements
        moved = np.median((found.mov_xy - found.ref_xy), axis=0) - np.median(first.mov_xy - first.ref_xy, axis=0)
        np.testing.assert_allclose(moved, (0.5, -0.3), atol=0.15)


def test_a_pass_through_a_model_moved_beyond_the_tolerance_runs_the_whole_network(matcher, plain, tiles, calls):
    matcher.fine_pass(None, False)
    matcher.match([tiles["pair"]])
    matcher.fine_pass(matcher.reuse_within_px + 0.5, True)
    found = matcher.match([tiles["moved"]])[0]
    assert calls.transformer == 2
    assert calls.backbone == [2, 1]  # the reference features were still kept
    _same(found, plain.match([tiles["moved"]])[0])


def test_small_moves_add_up_until_the_cells_are_found_again(matcher, tiles, calls):
    matcher.fine_pass(None, False)
    matcher.match([tiles["pair"]])
    matcher.fine_pass(0.6, False)
    matcher.match([tiles["moved"]])
    assert calls.transformer == 1
    matcher.fine_pass(0.6, True)  # 1.2 px since the cells were found
    matcher.match([tiles["moved"]])
    assert calls.transformer == 2


def test_cells_are_kept_only_for_the_same_reference_tile(matcher, tiles, calls):
    matcher.fine_pass(None, False)
    matcher.match([tiles["pair"]])
    matcher.fine_pass(0.0, True)
    matcher.match([tiles["other_ref"]])
    assert calls.transformer == 2 and calls.backbone == [2, 2]


def test_nothing_is_kept_after_the_final_pass_or_for_a_first_pass(matcher, tiles, calls):
    matcher.fine_pass(None, True)  # a single (final) pass keeps nothing for later
    matcher.match([tiles["pair"]])
    matcher.fine_pass(0.0, True)
    matcher.match([tiles["moved"]])
    assert calls.transformer == 2
    matcher.fine_pass(None, False)
    matcher.match([tiles["pair"]])
    matcher.fine_pass(None, True)  # what the fine stage says when it is done
    assert not matcher._kept and not matcher._previous and not matcher._recent
    matcher.match([tiles["moved"]])
    assert calls.transformer == 4 and calls.backbone == [2, 2, 2, 2]


def test_without_room_for_features_the_kept_cells_give_the_same_matches(matcher, tiles, calls):
    matcher.feature_cache_mb = 0.0
    matcher.fine_pass(None, False)
    first = matcher.match([tiles["pair"]])[0]
    assert all(w.features0 is None and w.cells is not None for w in matcher._kept.values())
    matcher.fine_pass(0.0, True)
    again = matcher.match([tiles["pair"]])[0]
    assert calls.transformer == 1 and calls.backbone == [2, 2]
    _same(again, first)


# --------------------------------------------------------------------------- tile size

@dataclass
class _Balanced:
    balanced_tiles: bool = True


@pytest.mark.parametrize("size,gap", [(512, 32), (256, 0), (384, 64)])
def test_balanced_tiles_are_no_more_and_no_larger(size, gap):
    rng = np.random.default_rng(1)
    options = RegisterOptions(tile_size=size, tile_overlap=gap, max_tiles=1000)
    for _ in range(200):
        scale = float(rng.choice([1.0, 1.0, 2.5, 0.37, 4.4]))
        w, h = rng.uniform(50, 3000, 2) * scale
        area = box(10.0, -5.0, 10.0 + w, -5.0 + h)
        side = _tile_size(_Balanced(), area, scale, options)
        assert 64 <= side <= size or side == size
        plain = plan_tiles(area, scale, size, gap, options.max_tiles)
        balanced = plan_tiles(area, scale, side, gap, options.max_tiles)
        assert len(balanced) == len(plain)
        assert max(max(t.width, t.height) for t in balanced) <= side
        if side > 64:  # as small as it could be: one pixel less needs another tile
            assert len(plan_tiles(area, scale, side - 1, gap, options.max_tiles)) > len(plain)


def test_balanced_tiles_over_800_px_and_only_for_a_matcher_that_asks():
    options = RegisterOptions()  # 512 px tiles, 32 px overlap
    area = box(0, 0, 800, 800)
    assert _tile_size(_Balanced(), area, 1.0, options) == 416
    assert _tile_size(StructuralMatcher(), area, 1.0, options) == 512
    assert _tile_size(_Balanced(balanced_tiles=False), area, 1.0, options) == 512
    assert _tile_size(_Balanced(), box(0, 0, 300, 200), 1.0, options) == 300  # one tile: the overlap itself


# --------------------------------------------------------------------------- the fine stage tells the matcher

class _Told(StructuralMatcher):
    """The structural matcher, recording what the fine stage tells it."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.told: list[tuple[float | None, bool]] = []
        self.fail_after = fail_after

    def fine_pass(self, moved_px: float | None, final: bool) -> None:
        self.told.append((moved_px, final))

    def match(self, pairs):
        if self.fail_after is not None and len(self.told) > self.fail_after:
            raise RuntimeError("matching failed")
        return super().match(pairs)


def test_the_fine_stage_says_how_far_each_pass_moved_and_when_it_is_done(shift_swir2):
    matcher = _Told()
    options = RegisterOptions(refinements=2, target_error_px=0.0)
    result = estimate(str(shift_swir2.ref), str(shift_swir2.mov), options, matcher=matcher)
    passes = result.passes
    assert matcher.told[0] == (None, False)
    for k in range(1, len(passes)):
        moved, final = matcher.told[k]
        assert math.isclose(moved, passes[k - 1]["moved_px"], abs_tol=1e-4)  # work scale 1 here
        assert final == (k == options.refinements)
    assert len(matcher.told) == len(passes) + 1 and matcher.told[-1] == (None, True)


def test_the_matcher_is_told_to_forget_when_a_pass_fails(shift_swir2):
    matcher = _Told(fail_after=0)
    with pytest.raises(RuntimeError, match="matching failed"):
        estimate(str(shift_swir2.ref), str(shift_swir2.mov), RegisterOptions(), matcher=matcher)
    assert matcher.told == [(None, False), (None, True)]


def test_the_matcher_keeps_to_the_thread_count_dmreg_is_given(matcher, tiles):
    from dmreg.runtime import set_thread_count

    before = torch.get_num_threads()
    try:
        set_thread_count(1)
        matcher.match([tiles["pair"]])
        assert torch.get_num_threads() == 1
        set_thread_count(before + 4)  # more than torch chose: torch's choice stands
        torch.set_num_threads(before)
        matcher.match([tiles["pair"]])
        assert torch.get_num_threads() == before
    finally:
        set_thread_count(None)
        torch.set_num_threads(before)
