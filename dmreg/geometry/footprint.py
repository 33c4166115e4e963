"""Where the two rasters overlap, in reference pixel coordinates."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon, box

from dmreg.errors import NoOverlapError
from dmreg.geometry.mapping import GeorefMapping, PointTransform

MIN_OVERLAP_PX = 16


def moving_footprint(mapping: GeorefMapping | PointTransform, width: int, height: int) -> Polygon:
    """The moving raster's outline mapped into reference pixels (densified, so that a
    CRS change bends the edges as it should)."""
    n = 64
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    xs = np.concatenate([t * width, np.full(n, width), (1 - t) * width, np.zeros(n)])
    ys = np.concatenate([np.zeros(n), t * height, np.full(n, height), (1 - t) * height])
    px, py = mapping.apply(xs, ys)
    poly = Polygon(np.column_stack([px, py]))
    return poly if poly.is_valid else poly.buffer(0)


def overlap_in_reference(
    mapping: GeorefMapping | PointTransform, mov_size: tuple[int, int], ref_size: tuple[int, int]
) -> Polygon:
    """Intersection of both rasters in reference pixels; NoOverlapError when too small."""
    ref_box = box(0, 0, ref_size[0], ref_size[1])
    overlap = moving_footprint(mapping, *mov_size).intersection(ref_box)
    minx, miny, maxx, maxy = overlap.bounds if not overlap.is_empty else (0, 0, 0, 0)
    if overlap.is_empty or maxx - minx < MIN_OVERLAP_PX or maxy - miny < MIN_OVERLAP_PX:
        raise NoOverlapError(
            "the rasters do not overlap (their footprints share less than "
            f"{MIN_OVERLAP_PX}x{MIN_OVERLAP_PX} reference pixels); check that they cover the same area"
        )
    return overlap


def extent(area: Polygon) -> np.ndarray:
    """Width and height of ``area``'s bounds."""
    x0, y0, x1, y1 = area.bounds
    return np.array([x1 - x0, y1 - y0])
