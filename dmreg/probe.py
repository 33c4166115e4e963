"""The read-through probe: do a matcher's matches show where the content is, or only
where its tiles were read?

Dense learned matches lean toward the offset their tiles were read at: where a tile
holds little both images share, the sub-pixel refinement keeps close to the reading.
Matches that only echo the model they were read through agree with it, whatever it is,
and a bootstrap of them looks precise. The probe reads a few of the final pass's tiles
again through the answer shifted by a known amount and measures how much of the shift
the new matches follow: matches of the content ignore it (0), echoes follow it (1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.robust import fit_all
from dmreg.geometry.mapping import PointTransform
from dmreg.result import Correspondences, ReadProbe

PROBE_SHIFT_WORKING_PX = (1.5, 1.0)
"""How far (working pixels) the probe shifts the answer: 1.8 px, inside the search a
final pass reads with, and in the range where learned refinement leans."""
PROBE_TILES = 8
"""Tiles read again, at most: each costs a tile of the final pass. On a 3039 x 1098 px
map sheet against its aerial photograph (DistillMatch 2.5 px off in mean, 6.1 px at
worst, predicted CE90 0.75 px), 4 tiles measured 65 % followed, 8 tiles 74 %, all 15
80 %: the first tiles in spread order are not the most telling ones."""
MIN_PROBE_MATCHES = 10  # fewer cannot be fitted meaningfully: the probe then says nothing
MAX_FOLLOWED = 0.7
"""A probe whose fit follows more than this share of the shift flags the result.
Measured with DistillMatch on the 144 validation pairs, over the 80 answers the other
checks let through: every answer within 2 px of its truth followed at most 59 %; the
six above 70 % were 2.0 to 8.0 px off (two map crops 2.0 px off and one 8.0 px off, a
Sentinel-1 pair 2.1 px off, two visible/thermal pairs 2.8 px off; truth tolerances 0,
2.5 and 3 px). Chosen on these same pairs."""
PROBE_FIRST_TILES = 4
CLEARLY_CONTENT = MAX_FOLLOWED / 2
"""After ``PROBE_FIRST_TILES`` tiles, a fit that followed no more than this share of
the shift (half of ``MAX_FOLLOWED``) ends the probe: more tiles would not bring it near
the limit. On the 8980 px benchmark pair DistillMatch's followed 18 %, and the probe
took 2.5 s instead of 5.5 s."""


@dataclass(frozen=True)
class Shifted:
    """``model`` followed by a shift of (dx, dy) reference pixels."""

    model: PointTransform
    dx: float
    dy: float

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px, py = self.model.apply(x, y)
        return px + self.dx, py + self.dy

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.inverse(np.asarray(x) - self.dx, np.asarray(y) - self.dy)


MatchThrough = Callable[[PointTransform, list[int]], Correspondences]
"""match_through(model, tile indices) -> the matches of those tiles read through model."""


def probe_reading(model: PointTransform, kind: str, matches: Correspondences, order: Sequence[int],
                  work_scale: float, threshold: float, search_radius: float, seed: int,
                  match_through: MatchThrough) -> ReadProbe:
    """Read ``PROBE_FIRST_TILES`` of the tiles ``matches`` came from (the first in
    ``order``, spread over the overlap), then up to ``PROBE_TILES`` unless the first
    were clear (``CLEARLY_CONTENT``), through ``model`` shifted by
    ``PROBE_SHIFT_WORKING_PX``, fit a ``kind`` model to their matches as the answer was
    fitted (RANSAC, ``threshold``), and measure the share of the shift that fit follows
    at the probed matches, less the share a fit to the final matches of the same tiles
    shows (their own departure from the whole answer there).

    Where the content lies ``c`` off the answer and the matches recover a fraction ``f``
    of any offset their tiles are read at, the final matches lie ``f c`` off it and the
    probe's ``(1 - f) shift + f c``: the difference is ``1 - f`` of the shift, whatever
    ``c``. It is measured on fits, not on the matches themselves, because the answer is
    a fit: when the echoing matches are the consistent ones, RANSAC keeps them."""
    shift = np.array(PROBE_SHIFT_WORKING_PX) * work_scale
    shifted = Shifted(model, *shift)
    matched = set(np.unique(matches.tile).tolist())
    candidates = [t for t in order if t in matched][:PROBE_TILES]

    def share(of: Correspondences) -> float | None:
        fitted = fit_all(of.pred_px, of.ref_px, threshold, kinds=(kind,), weights=of.confidence, seed=seed,
                         search_radius=search_radius).get(kind) if len(of) >= MIN_PROBE_MATCHES else None
        if fitted is None or not fitted.meaningful:
            return None
        at = of.pred_px[fitted.inliers]
        fx, fy = fitted.transform.apply(at[:, 0], at[:, 1])
        mx, my = model.apply(at[:, 0], at[:, 1])
        return float(np.mean(np.column_stack([fx - mx, fy - my]) @ shift) / (shift @ shift))

    def gap(found: Correspondences, probed: list[int]) -> float | None:
        followed, baseline = share(found), share(matches.of_tiles(probed))
        return None if followed is None or baseline is None else followed - baseline

    probed = candidates[:PROBE_FIRST_TILES]
    found = match_through(shifted, probed)
    followed = gap(found, probed)
    if len(candidates) > len(probed) and not (followed is not None and followed <= CLEARLY_CONTENT):
        found = Correspondences.concatenate([found, match_through(shifted, candidates[len(probed):])])
        probed = candidates
        followed = gap(found, probed)
    return ReadProbe((float(shift[0]), float(shift[1])), len(probed), len(found), followed)


def probe_flag(probe: ReadProbe | None) -> str | None:
    """Why a probe's result must be flagged, or None."""
    if probe is None or probe.followed is None or probe.followed <= MAX_FOLLOWED:
        return None
    return (f"the matches follow the model they are read through: read again through the answer shifted by "
            f"{math.hypot(*probe.shift_px):.1f} px, {probe.matches} matches of {probe.tiles} tile(s) moved "
            f"{probe.followed:.0%} of the way with it (above {MAX_FOLLOWED:.0%} is flagged), so they do not show "
            "where the answer is; --max-error inf writes it anyway")
