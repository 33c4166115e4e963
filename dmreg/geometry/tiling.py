"""Grids of pixels in reference space and tiling plans over the overlap."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import Polygon, box


@dataclass(frozen=True)
class Grid:
    """A raster grid aligned with the reference: grid pixel (u, v) covers reference
    pixels ``[x0 + u*scale, x0 + (u+1)*scale)`` (and likewise in y)."""

    x0: float
    y0: float
    scale: float
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def to_ref(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x0 + np.asarray(u) * self.scale, self.y0 + np.asarray(v) * self.scale



def grid_over(area: Polygon, max_size: int, min_scale: float = 1.0) -> Grid:
    """One grid over the bounds of ``area`` whose larger side has at most ``max_size``
    pixels, each at least ``min_scale`` reference pixels wide."""
    minx, miny, maxx, maxy = area.bounds
    scale = max(min_scale, max(maxx - minx, maxy - miny) / max_size)
    return Grid(minx, miny, scale, max(1, int(math.ceil((maxx - minx) / scale))),
                max(1, int(math.ceil((maxy - miny) / scale))))


def plan_tiles(area: Polygon, scale: float, tile_size: int, overlap: int, max_tiles: int,
               min_coverage: float = 0.5) -> list[Grid]:
    """Tiles of ``tile_size`` grid pixels (each ``scale`` reference pixels) over ``area``.

    Tiles that the overlap covers less than ``min_coverage`` are dropped; if more than
    ``max_tiles`` remain, an evenly spread subset is kept so matches still span the area.
    """
    if overlap >= tile_size:
        raise ValueError("tile overlap must be smaller than the tile size")
    minx, miny, maxx, maxy = area.bounds
    span = tile_size * scale
    stride = (tile_size - overlap) * scale

    def starts(lo: float, hi: float) -> list[float]:
        if hi - lo <= span:
            return [lo]
        n = int(math.ceil((hi - lo - span) / stride)) + 1
        return list(np.linspace(lo, hi - span, n))

    tiles = []
    for y in starts(miny, maxy):
        for x in starts(minx, maxx):
            w = min(span, maxx - x)
            h = min(span, maxy - y)
            cell = box(x, y, x + w, y + h)
            if cell.intersection(area).area >= min_coverage * cell.area:
                tiles.append(Grid(x, y, scale, max(1, int(round(w / scale))), max(1, int(round(h / scale)))))
    if len(tiles) > max_tiles:
        keep = np.unique(np.round(np.linspace(0, len(tiles) - 1, max_tiles)).astype(int))
        tiles = [tiles[i] for i in keep]
    return tiles


def spread_order(tiles: list[Grid]) -> list[int]:
    """Tile indices ordered so that every prefix spreads over the area: the tile nearest
    the centre first, then always the tile farthest from those already taken. Matching
    can then stop after any prefix and still constrain the whole mapping."""
    if not tiles:
        return []
    centres = np.array([(t.x0 + t.width * t.scale / 2, t.y0 + t.height * t.scale / 2) for t in tiles])
    first = int(np.argmin(np.hypot(*(centres - centres.mean(axis=0)).T)))
    order = [first]
    distance = np.hypot(*(centres - centres[first]).T)
    distance[first] = -np.inf
    for _ in range(len(tiles) - 1):
        pick = int(np.argmax(distance))
        order.append(pick)
        distance = np.minimum(distance, np.hypot(*(centres - centres[pick]).T))
        distance[order] = -np.inf
    return order
