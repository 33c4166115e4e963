"""The read-through probe: matches that only echo the model they were read through are
caught, matches of the content pass.

The unit tests drive :func:`dmreg.probe.probe_reading` with synthetic matchers that
recover a known fraction of any reading offset; the end-to-end tests register the L7
NIR band (geotransform shifted, truth the identity) with a matcher that echoes its
reading, and with the structural matcher treated as one that may lean.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from dmreg.estimate.models import Transform
from dmreg.matchers.base import TileMatches, TilePair
from dmreg.matchers.structural import StructuralMatcher
from dmreg.pipeline import RegisterOptions, estimate, predicted_error_flag
from dmreg.probe import (CLEARLY_CONTENT, MAX_FOLLOWED, PROBE_FIRST_TILES, PROBE_SHIFT_WORKING_PX, PROBE_TILES,
                         probe_flag, probe_reading)
from dmreg.result import Correspondences, ReadProbe

ANSWER = Transform("translation", matrix=np.array([[1, 0, 2.0], [0, 1, -1.0], [0, 0, 1.0]]))
CONTENT_OFF = np.array([0.8, 0.5])  # where the content truly lies, relative to the answer
TILE_SIDE = 100.0


def _points(tiles: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """300 points per tile; tile k spans x in [100 k, 100 k + 100)."""
    pred = np.concatenate([rng.uniform([TILE_SIDE * t, 0], [TILE_SIDE * (t + 1), 300], (300, 2)) for t in tiles])
    return pred, np.repeat(tiles, 300)


def _matches_through(reading, recovery: float, rng: np.random.Generator, tiles: list[int]) -> Correspondences:
    """Matches of a matcher that recovers ``recovery`` of the offset between the content
    and the model its tiles are read through (1: content only, 0: an echo)."""
    pred, tile = _points(tiles, rng)
    content = np.column_stack(ANSWER.apply(*pred.T)) + CONTENT_OFF
    read = np.column_stack(reading.apply(*pred.T))
    ref = read + recovery * (content - read) + rng.normal(0, 0.1, pred.shape)
    return Correspondences(pred, pred, ref, np.ones(len(pred)), tile)


@pytest.mark.parametrize("recovery", [1.0, 0.6, 0.2, 0.0])
def test_the_probe_measures_the_share_of_the_shift_the_answer_follows(recovery):
    rng = np.random.default_rng(3)
    final = _matches_through(ANSWER, recovery, rng, list(range(PROBE_TILES + 3)))
    order = [int(t) for t in rng.permutation(PROBE_TILES + 4)]  # one tile of the plan has no matches
    probed_tiles = []

    def match_through(model, tiles):
        probed_tiles.extend(tiles)
        return _matches_through(model, recovery, rng, tiles)

    probe = probe_reading(ANSWER, "translation", final, order, 1.0, 1.5, 6.0, 0, match_through)
    # the first matched tiles in the spread order; four more unless the first four were clear
    read = PROBE_FIRST_TILES if 1 - recovery <= CLEARLY_CONTENT else PROBE_TILES
    assert probed_tiles == [t for t in order if t < PROBE_TILES + 3][:read]
    assert probe.shift_px == PROBE_SHIFT_WORKING_PX and probe.tiles == read and probe.matches == 300 * read
    # the content lying off the answer (CONTENT_OFF) cancels: only the reading's pull is left
    assert probe.followed == pytest.approx(1 - recovery, abs=0.05)
    assert (probe_flag(probe) is not None) == (1 - recovery > MAX_FOLLOWED)


def test_a_probe_without_a_meaningful_fit_is_unknown_and_flags_nothing():
    rng = np.random.default_rng(5)
    final = _matches_through(ANSWER, 1.0, rng, [0, 1])
    probe = probe_reading(ANSWER, "translation", final, [0, 1], 1.0, 1.5, 6.0, 0,
                          lambda model, tiles: Correspondences.empty())
    assert probe.followed is None and probe_flag(probe) is None


def test_the_flag_says_how_far_the_matches_followed():
    flag = probe_flag(ReadProbe((1.5, 1.0), 4, 800, 0.93))
    assert flag is not None and "93%" in flag and "1.8 px" in flag and "--max-error inf" in flag
    assert probe_flag(ReadProbe((1.5, 1.0), 4, 800, MAX_FOLLOWED)) is None
    assert probe_flag(None) is None


class EchoMatcher:
    """Finds a match at every 12th pixel, exactly where the tile was read: what dense
    learned matches do where nothing in the tile pins them down."""

    name = "echo"

    def describe(self) -> dict:
        return {"name": self.name, "weights_sha256": None, "device": "cpu"}

    def match(self, pairs: list[TilePair]) -> list[TileMatches]:
        rng = np.random.default_rng(0)
        out = []
        for pair in pairs:
            ys, xs = np.mgrid[6:pair.mov.shape[0] - 6:12, 6:pair.mov.shape[1] - 6:12]
            mov = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
            out.append(TileMatches(mov + rng.normal(0, 0.05, mov.shape), mov, np.full(len(mov), 0.9)))
        return out


OPTIONS = RegisterOptions(tile_size=128, tile_overlap=0)


def _error(result, case) -> float:
    xs, ys = np.meshgrid(np.linspace(0.5, result.mov.width - 0.5, 10), np.linspace(0.5, result.mov.height - 0.5, 10))
    x, y = result.mapping.apply(xs.ravel(), ys.ravel())
    tx, ty = case.truth(xs.ravel(), ys.ravel())
    return float(np.max(np.hypot(x - tx, y - ty)))


def test_an_answer_that_only_echoes_its_reading_is_flagged(shift_nir):
    """The echo matcher agrees perfectly with the georeferencing it is read through, 4.3 px
    off the truth: a consensus no chance could give and a tiny predicted error. Only the
    probe shows that the matches would have agreed with any reading."""
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), OPTIONS, matcher=EchoMatcher())
    assert _error(result, shift_nir) > 4.0
    assert result.probe is not None and result.probe.followed > 0.95, result.probe
    assert predicted_error_flag(dataclasses.replace(result, probe=None), OPTIONS) is None  # nothing else catches it
    flag = predicted_error_flag(result, OPTIONS)
    assert flag is not None and flag.startswith("the matches follow the model they are read through")
    assert predicted_error_flag(result, dataclasses.replace(OPTIONS, max_error_px=math.inf)) is None


def test_matches_of_the_content_pass_the_probe(shift_nir):
    """The structural matcher, told it may lean (``reread_within_px=0``), is probed too:
    its matches stay with the content."""
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), OPTIONS, matcher=StructuralMatcher(reread_within_px=0))
    assert result.probe is not None and abs(result.probe.followed) < 0.2, result.probe
    assert predicted_error_flag(result, OPTIONS) is None
    assert _error(result, shift_nir) < 0.5
    assert "probe" in result.timings_s


def test_a_matcher_that_tolerates_read_offsets_is_not_probed(shift_nir):
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), OPTIONS)
    assert result.probe is None and "probe" not in result.timings_s
