"""Blocks of matches that share their errors: the unit cross-validation holds out and
the bootstrap resamples."""

from __future__ import annotations

import numpy as np

TILE_GROUPS = 6   # with at least this many matched tiles, each tile is a block
MAX_CELLS = 4     # otherwise the matched area is cut into at most 4 x 4 cells,
MATCHES_PER_CELL = 8  # fewer when there are too few matches to give each cell about this many
MIN_BLOCKS = 3    # below this nothing can be held out or resampled; finer cells are tried first


def spatial_blocks(points: np.ndarray, tiles: np.ndarray | None = None,
                   area_span: np.ndarray | None = None) -> np.ndarray:
    """A block id per match: its tile when enough tiles matched, else a cell of a grid
    over the matches' bounding box. Cells hold several matches each, so that a block is
    wider than the reach of the errors neighbouring matches share; when the matches lie
    along a line, finer cells are tried until at least MIN_BLOCKS are occupied.

    ``area_span`` (x, y), the extent of the area an answer serves, bounds how small a
    cell may be: a quarter of it (``MAX_CELLS``) along each axis, the cell the whole
    area would get. A cluster of agreeing matches in a small part of that area is then
    one block, however many matches it holds: dense learned matches within a few coarse
    cells of each other share one context, and on the validation pairs such a cluster of
    false matches (30 within 60 x 104 px of a 600 x 600 px map) passed as independent blocks."""
    if tiles is not None and len(np.unique(tiles)) >= TILE_GROUPS:
        return np.unique(tiles, return_inverse=True)[1]
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    most = np.full(2, MAX_CELLS)
    if area_span is not None:  # per axis, cells no smaller than a quarter of the area's extent
        most = np.clip(np.ceil(MAX_CELLS * span / np.maximum(area_span, 1e-9) - 1e-9), 1, MAX_CELLS).astype(int)
    first = int(np.clip(np.sqrt(len(points) / MATCHES_PER_CELL), 2, MAX_CELLS))
    for cells in range(first, MAX_CELLS + 1):
        per_axis = np.minimum(cells, most)
        cell = np.minimum((per_axis * (points - lo) / span).astype(int), per_axis - 1)
        blocks = np.unique(cell[:, 1] * per_axis[0] + cell[:, 0], return_inverse=True)[1]
        if blocks.max(initial=-1) + 1 >= MIN_BLOCKS:
            break
    return blocks
