"""The moving raster's metadata that stays true on the aligned output, and the
resampling its values allow.

Resampling moves values without changing what they mean, so per band the scale and
offset, unit, description, colour interpretation, colour table and band tags are
carried, except the STATISTICS_* tags: they summarise pixels the output no longer has.
Only the default metadata domain is copied: the others (RPC, GEOLOCATION,
IMAGE_STRUCTURE...) describe the moving file's sensor geometry or layout, which the
output does not share. Of the default dataset tags (acquisition time, sensor...) only
AREA_OR_POINT describes the grid rather than the scene: it
holds where the output keeps the moving raster's own pixel grid under a geotransform.
On any other grid it is dropped, so the GeoTIFF default (Area) applies. A copy
georeferenced by GCPs drops it too: GDAL (3.10) moves the GCPs of a PixelIsPoint file
when writing and again when reading, while dmreg's GCPs are already in the
pixel-corner convention.

Class codes (a colour table, or a band marked thematic) must not be interpolated, which
would invent classes at every boundary: unless the caller chose a resampling, such a
raster is resampled with nearest neighbour.
"""

from __future__ import annotations

import rasterio
from rasterio.enums import ColorInterp, Resampling

from dmreg.io.raster import dtype_kind

GRID_TAG = "AREA_OR_POINT"
STALE_BAND_TAG_PREFIX = "STATISTICS_"
DEFAULT_RESAMPLING = Resampling.bilinear


def is_categorical(src: rasterio.io.DatasetReader) -> bool:
    """Whether any band holds class codes: paletted, or tagged LAYER_TYPE=thematic
    (as Erdas Imagine, KEA and the tools that write them mark class rasters). A raster
    attribute table alone is not seen: rasterio does not expose it."""
    return any(
        interp == ColorInterp.palette or _has_colormap(src, i) or
        src.tags(i).get("LAYER_TYPE", "").lower() == "thematic"
        for i, interp in enumerate(src.colorinterp, start=1)
    )


def output_resampling(src: rasterio.io.DatasetReader, requested: Resampling | None) -> Resampling:
    """The caller's choice; else nearest for class codes and bilinear for the rest
    (one method serves every band: any class band decides it)."""
    if requested is not None:
        return requested
    return Resampling.nearest if is_categorical(src) else DEFAULT_RESAMPLING


def copy_metadata(src: rasterio.io.DatasetReader, dst: rasterio.io.DatasetWriter, *, keeps_grid: bool) -> None:
    """Copy onto ``dst`` what stays true of ``src``'s metadata; ``keeps_grid``: the
    output has ``src``'s own pixel grid, georeferenced by a geotransform."""
    dst.update_tags(**{k: v for k, v in src.tags().items() if keeps_grid or k != GRID_TAG})
    dst.scales, dst.offsets = _scales_offsets(src, dst)
    for i in range(1, src.count + 1):
        if src.descriptions[i - 1]:
            dst.set_band_description(i, src.descriptions[i - 1])
        if src.units[i - 1]:
            dst.set_band_unit(i, src.units[i - 1])
        if _has_colormap(src, i):
            dst.write_colormap(i, src.colormap(i))
        dst.update_tags(i, **{k: v for k, v in src.tags(i).items() if not k.startswith(STALE_BAND_TAG_PREFIX)})
    dst.colorinterp = src.colorinterp


def _scales_offsets(src: rasterio.io.DatasetReader,
                    dst: rasterio.io.DatasetWriter) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``src``'s, unless complex values were written as amplitude: |s z + o| is |s| |z|
    only without an offset, so a band with one is left unscaled."""
    if dtype_kind(src.dtypes[0]) != "c" or dtype_kind(dst.dtypes[0]) == "c":
        return src.scales, src.offsets
    scales = tuple(abs(s) if o == 0 else 1.0 for s, o in zip(src.scales, src.offsets))
    return scales, (0.0,) * src.count


def _has_colormap(src: rasterio.io.DatasetReader, band: int) -> bool:
    try:
        src.colormap(band)
    except ValueError:  # rasterio's answer for a band without a colour table
        return False
    return True
