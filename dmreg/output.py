"""The aligned raster: the moving raster on the reference grid, on its own grid, or
copied unresampled with corrected georeferencing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import Resampling

from dmreg.io.band_metadata import output_resampling
from dmreg.io.raster import RasterInfo, open_raster
from dmreg.geometry.mapping import corrected_pixel_matrix
from dmreg.io.cog import INTERMEDIATE_OPTIONS, copy_as_cog, intermediate_geotiff
from dmreg.io.writing import check_output, gdal_can_warp, write_copy, write_resampled, write_warped

if TYPE_CHECKING:
    from dmreg.result import RegistrationResult

GRIDS = ("reference", "moving")
FORMATS = ("GTiff", "COG")
AFFINE_KINDS = ("translation", "similarity", "affine")
GCP_GRID = 20         # GCPs per side for the global models: exact on them, smooth between
LOCAL_GCP_GRID = 40   # the local model varies over tens of pixels: GDAL's thin-plate spline needs more


def write_aligned(result: RegistrationResult, path: str | Path, *, grid: str = "reference",
                  resample: bool = True, resampling: Resampling | None = None,
                  nodata: float | None = None, creation_options: dict[str, str] | None = None,
                  overwrite: bool = False, driver: str = "COG") -> None:
    """Write the co-registered moving raster (all bands) to ``path``.

    ``grid="reference"``: same CRS, transform and size as the reference. ``grid="moving"``:
    the moving raster's own CRS, resolution and extent, content moved to where it belongs.
    ``resample=False``: pixels copied untouched, georeferencing replaced by the corrected
    geotransform (affine-family models, same CRS) or by GCPs (other models).
    ``driver="COG"``: a cloud-optimised GeoTIFF with overviews (``creation_options`` are
    then the COG driver's). ``resampling=None``: nearest for class codes, else bilinear.
    """
    if driver == "COG":
        check_output(path, overwrite)
        with intermediate_geotiff(path) as tmp:
            write_aligned(result, tmp, grid=grid, resample=resample, resampling=resampling, nodata=nodata,
                          creation_options=INTERMEDIATE_OPTIONS, driver="GTiff")
            copy_as_cog(tmp, path, creation_options or {}, overwrite)
        return
    co = creation_options or {}
    ref, mov, mapping = result.ref, result.mov, result.mapping
    with open_raster(mov.path) as src:
        if not resample:
            transform, gcps = corrected_georeferencing(result)
            write_copy(src, path, crs=ref.crs, transform=transform, gcps=gcps,
                       creation_options=co, overwrite=overwrite)
            return
        resampling = output_resampling(src, resampling)
        fill = nodata if nodata is not None else mov.nodata
        warp_transform = _gdal_warp_transform(result, grid) if gdal_can_warp(src) else None
        if warp_transform is not None:
            target = ref if grid == "reference" else mov
            write_warped(src, path, dst_crs=target.crs, dst_transform=target.transform,
                         warp_transform=warp_transform, dst_size=(target.width, target.height),
                         resampling=resampling, nodata=fill, creation_options=co, overwrite=overwrite)
        elif grid == "reference":
            write_resampled(src, path, **_grid_of(ref), dst_coords=mapping.inverse,
                            resampling=resampling, nodata=fill, creation_options=co, overwrite=overwrite)
        else:
            def coords(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return mapping.inverse(*result.georef.apply(x, y))

            write_resampled(src, path, **_grid_of(mov), dst_coords=coords,
                            resampling=resampling, nodata=fill, creation_options=co, overwrite=overwrite)


def _grid_of(info: RasterInfo) -> dict:
    """A raster's grid as the writer takes it: size, CRS, and a geotransform or the GCPs
    or RPCs it is georeferenced by."""
    return dict(dst_size=(info.width, info.height), dst_crs=info.crs, dst_transform=info.transform,
                dst_gcps=info.gcps, dst_rpcs=info.rpcs)


def _gdal_warp_transform(result: RegistrationResult, grid: str) -> Affine | None:
    """The output grid's transform as GDAL's warper must see it to apply the correction
    (see :func:`dmreg.io.writing.write_warped`), or None where the whole mapping is not
    affine: a non-affine correction, a change of CRS (GDAL approximates the reprojection
    to about 0.1 px; dmreg's resampler is exact) or a pair without georeferencing.

    With georef = G and correction = C, output pixel p on the reference grid must show
    moving pixel G⁻¹ C⁻¹ p, hence ``ref.transform * C⁻¹``; pixel q on the moving grid
    shows G⁻¹ C⁻¹ G q, hence ``ref.transform * C⁻¹ * G``.
    """
    correction, georef = result.correction, result.georef.affine
    if (correction.kind not in AFFINE_KINDS or correction.matrix is None or georef is None
            or not result.ref.georeferenced):
        return None
    m = np.linalg.inv(correction.matrix)
    inverse = Affine(*m[0], *m[1])
    return result.ref.transform @ inverse @ (Affine.identity() if grid == "reference" else georef)


def corrected_georeferencing(result: RegistrationResult) -> tuple[Affine | None, list[GroundControlPoint] | None]:
    """(geotransform, None) when the corrected mapping is affine, else (None, GCPs).

    The geotransform maps moving pixels straight to reference map coordinates, so the
    unresampled copy is in the reference CRS. GCPs (a grid, exact on the model) carry
    the other models; GDAL warps them with a polynomial or, for the local model, a
    thin-plate spline (``gdalwarp -tps``).
    """
    m = corrected_pixel_matrix(result.georef, result.correction.matrix)
    if result.correction.kind in AFFINE_KINDS and m is not None:
        return result.ref.transform @ Affine(*m[0], *m[1]), None
    n = LOCAL_GCP_GRID if result.correction.kind == "local" else GCP_GRID
    xs, ys = np.meshgrid(np.linspace(0, result.mov.width, n), np.linspace(0, result.mov.height, n))
    rx, ry = result.mapping.apply(xs.ravel(), ys.ravel())
    mx, my = result.ref.to_map(rx, ry)
    gcps = [GroundControlPoint(row=float(r), col=float(c), x=float(x), y=float(y), id=str(i))
            for i, (c, r, x, y) in enumerate(zip(xs.ravel(), ys.ravel(), mx, my))]
    return None, gcps
