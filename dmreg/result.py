"""What an estimation produces: the matches and the registration result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dmreg.estimate.models import Transform
from dmreg.estimate.robust import ModelFit
from dmreg.estimate.selection import CVScore
from dmreg.estimate.uncertainty import Uncertainty
from dmreg.geometry.mapping import CorrectedMapping, GeorefMapping
from dmreg.io.raster import RasterInfo


@dataclass
class Correspondences:
    """All matches in full-resolution pixels: ``mov_px`` (moving raster), ``pred_px``
    (where the georeferencing puts them in the reference) and ``ref_px`` (where they
    matched in the reference)."""

    mov_px: np.ndarray
    pred_px: np.ndarray
    ref_px: np.ndarray
    confidence: np.ndarray
    tile: np.ndarray

    @classmethod
    def empty(cls) -> Correspondences:
        z = np.zeros((0, 2))
        return cls(z, z, z, np.zeros(0), np.zeros(0, int))

    FIELDS = ("mov_px", "pred_px", "ref_px", "confidence", "tile")

    @classmethod
    def concatenate(cls, parts: list[Correspondences]) -> Correspondences:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.FIELDS))

    def of_tiles(self, tiles: list[int]) -> Correspondences:
        """The matches found in ``tiles``."""
        keep = np.isin(self.tile, tiles)
        return Correspondences(*(getattr(self, f)[keep] for f in self.FIELDS))

    def __len__(self) -> int:
        return len(self.confidence)


@dataclass(frozen=True)
class ReadProbe:
    """What the read-through probe (:mod:`dmreg.probe`) found: the shift (reference px),
    the tiles read again and their matches, and the share of the shift a fit to those
    matches followed (None: no meaningful fit to tell)."""

    shift_px: tuple[float, float]
    tiles: int
    matches: int
    followed: float | None

    def as_dict(self) -> dict:
        return {"shift_px": [round(v, 3) for v in self.shift_px], "tiles": self.tiles, "matches": self.matches,
                "followed": None if self.followed is None else round(self.followed, 3)}


@dataclass
class RegistrationResult:
    ref: RasterInfo
    mov: RasterInfo
    georef: GeorefMapping
    correction: Transform
    selected: ModelFit
    fits: dict[str, ModelFit]
    scores: dict[str, CVScore]
    matches: Correspondences
    matcher: dict
    tiles: int
    tiles_matched: int
    coarse: dict
    passes: list[dict] = field(default_factory=list)  # per fine pass: tiles read and matched, early stop
    uncertainty: Uncertainty | None = None  # at the report's check grid
    probe: ReadProbe | None = None  # whether the matches follow the reading (matchers that lean only)
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def mapping(self) -> CorrectedMapping:
        """Moving pixel -> reference pixel, corrected."""
        return CorrectedMapping(self.georef, self.correction)

    def residuals_px(self) -> np.ndarray:
        x, y = self.correction.apply(self.matches.pred_px[:, 0], self.matches.pred_px[:, 1])
        return np.hypot(x - self.matches.ref_px[:, 0], y - self.matches.ref_px[:, 1])
