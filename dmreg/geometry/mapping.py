"""Pixel-to-pixel mappings between the moving and the reference raster.

The full corrected mapping is ``correction(georef(p))``: ``georef`` is what the two
files' georeferencing says (CRS change included, exact through PROJ), ``correction``
is the model dmreg estimates in reference pixel space. A georeferencing error of a few
pixels is thus a small translation, whatever the CRSs and resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from affine import Affine
from rasterio.warp import transform as warp_transform

from dmreg.errors import InputError
from dmreg.io.raster import RasterInfo


class PointTransform(Protocol):
    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class GeorefMapping:
    """Moving pixel -> reference pixel as the files' georeferencing states it."""

    mov: RasterInfo
    ref: RasterInfo

    def __post_init__(self) -> None:
        if self.mov.georeferenced != self.ref.georeferenced:
            has, lacks = (self.ref, self.mov) if self.ref.georeferenced else (self.mov, self.ref)
            raise InputError(
                f"{lacks.path} has no CRS but {has.path} has one ({has.crs}): "
                "assign a CRS to it (e.g. gdal_edit.py -a_srs) or register two plain images"
            )

    @property
    def same_crs(self) -> bool:
        return not self.ref.georeferenced or self.ref.crs == self.mov.crs

    @property
    def affine(self) -> Affine | None:
        """The mapping as an affine transform when it is one (two geotransforms in one
        CRS), else None."""
        if not (self.same_crs and self.ref.by_transform and self.mov.by_transform):
            return None
        return ~self.ref.transform @ self.mov.transform

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._map(x, y, self.mov, self.ref)

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._map(x, y, self.ref, self.mov)

    def _map(
        self, x: np.ndarray, y: np.ndarray, src: RasterInfo, dst: RasterInfo
    ) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        g = self.affine
        if g is not None:
            return apply_affine(g if src is self.mov else ~g, x, y)
        mx, my = src.to_map(x, y)
        if not self.same_crs:
            tx, ty = warp_transform(src.crs, dst.crs, mx.ravel(), my.ravel())
            mx, my = np.asarray(tx).reshape(x.shape), np.asarray(ty).reshape(y.shape)
        return dst.to_pixel(mx, my)


def corrected_pixel_matrix(georef: GeorefMapping, correction: np.ndarray | None) -> np.ndarray | None:
    """Moving pixel -> reference pixel as one 3 x 3 matrix, the correction after the
    georeferencing: None unless both are matrices (a model with a matrix, one CRS)."""
    g = georef.affine
    if correction is None or g is None:
        return None
    m = correction @ np.array([[g.a, g.b, g.c], [g.d, g.e, g.f], [0.0, 0.0, 1.0]])
    return m / m[2, 2]


@dataclass(frozen=True)
class CorrectedMapping:
    """Moving pixel -> reference pixel after correction: ``correction(georef(p))``."""

    georef: GeorefMapping
    correction: PointTransform

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.correction.apply(*self.georef.apply(x, y))

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.georef.inverse(*self.correction.inverse(x, y))


def apply_affine(a: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a.a * x + a.b * y + a.c, a.d * x + a.e * y + a.f


CHECK_GRID_SIZE = 10


def check_points(width: int, height: int, n: int = CHECK_GRID_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """An n x n grid of pixel centres spanning a raster, row by row: where reports and
    uncertainty maps sample a mapping."""
    xs, ys = np.meshgrid(np.linspace(0.5, width - 0.5, n), np.linspace(0.5, height - 0.5, n))
    return xs.ravel(), ys.ravel()
