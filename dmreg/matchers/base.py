"""The Matcher protocol: tile pairs in, tile-pixel correspondences with confidence out.

A matcher knows nothing of rasters, CRSs or files. Coordinates follow the GDAL
convention: (x=col, y=row), (0, 0) is the top-left corner of the top-left pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

MODALITIES = ("optical", "infrared", "thermal", "sar", "elevation", "map")
"""Modality categories a user may name (``--ref-modality``) and the learned matcher knows.
"infrared" is reflected near/short-wave infrared (NIR, SWIR); "thermal" is emitted
long-wave infrared, whose contrast owes nothing to sunlight. Without a hint the
learned matcher predicts the category from the image."""


@dataclass(frozen=True)
class TilePair:
    """Two co-located tiles on the same pixel grid, roughly aligned.

    ``ref`` and ``mov`` are float32 images scaled to [0, 1]; ``*_valid`` are boolean masks
    of usable pixels. ``max_offset`` is how far (in tile pixels) a point in ``mov`` may
    lie from its match in ``ref``: a search bound for local matchers, a hint for others.
    """

    ref: np.ndarray
    mov: np.ndarray
    ref_valid: np.ndarray
    mov_valid: np.ndarray
    max_offset: float = 16.0
    ref_modality: str | None = None
    mov_modality: str | None = None


@dataclass(frozen=True)
class TileMatches:
    """Correspondences in one tile pair: ``ref_xy[i]`` matches ``mov_xy[i]`` (N x 2 each)."""

    ref_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    mov_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.confidence)


@runtime_checkable
class Matcher(Protocol):
    """Anything that matches batches of tile pairs. A matcher may also say, as
    ``rotation_step_deg``, at what step an orientation search must try rotations for it
    (default 15 degrees)."""

    name: str

    def match(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        """One TileMatches per pair, in order."""
        ...

    def describe(self) -> dict:
        """What the report records of this matcher (name, weights checksum, device)."""
        ...
