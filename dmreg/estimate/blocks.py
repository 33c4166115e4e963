"""Blocks of matches that share their errors: the unit cross-validation holds out and
the bootstrap resamples."""

from __future__ import annotations

import numpy as np

TILE_GROUPS = 6   # with at least this many matched tiles, each tile is a block
MAX_CELLS = 4     # otherwise the matched area is cut into at most 4 x 4 cells,
MATCHES_PER_CELL = 8  # fewer when there are too few matches to give each cell about this many
MIN_BLOCKS = 3    # below this nothing can be held out or resampled; finer cells are tried first


def spatial_blocks(points: np.ndarray, tiles: np.ndarray | None = None) -> np.ndarray:
    """A block id per match: its tile when enough tiles matched, else a cell of a grid
    over the matches' bounding box. Cells hold several matches each, so that a block is
    wider than the reach of the errors neighbouring matches share; when the matches lie
    along a line, finer cells are tried until at least MIN_BLOCKS are occupied."""
    if tiles is not None and len(np.unique(tiles)) >= TILE_GROUPS:
        return np.unique(tiles, return_inverse=True)[1]
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    first = int(np.clip(np.sqrt(len(points) / MATCHES_PER_CELL), 2, MAX_CELLS))
    for cells in range(first, MAX_CELLS + 1):
        cell = np.minimum((cells * (points - lo) / span).astype(int), cells - 1)
        blocks = np.unique(cell[:, 1] * cells + cell[:, 0], return_inverse=True)[1]
        if blocks.max(initial=-1) + 1 >= MIN_BLOCKS:
            break
    return blocks
