"""Report JSON (schema dmreg.report/1) and tie points (GeoJSON, GeoPackage, FlatGeobuf)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from dmreg import __version__
from dmreg.errors import DmregError
from dmreg.estimate.uncertainty import finite_or_none
from dmreg.geometry.mapping import CHECK_GRID_SIZE, check_points, corrected_pixel_matrix
from dmreg.io.raster import RasterInfo
from dmreg.io.vector import vector_driver, write_points
from dmreg.io.writing import write_text

WGS84 = CRS.from_epsg(4326)  # RFC 7946: GeoJSON coordinates are WGS 84 longitude, latitude

if TYPE_CHECKING:
    from dmreg.result import RegistrationResult

SCHEMA = "dmreg.report/1"


def raster_entry(path: str, info: RasterInfo | None) -> dict:
    if info is None:
        return {"path": str(path), "crs": None, "georeferencing": None, "transform": None, "width": None,
                "height": None}
    return {
        "path": str(path),
        "crs": _crs_string(info),
        "georeferencing": info.georeferencing,
        "transform": list(info.transform)[:6] if info.by_transform else None,
        "width": info.width,
        "height": info.height,
    }


def check_grid(result: RegistrationResult, n: int = CHECK_GRID_SIZE) -> list[list[float]]:
    """The corrected mapping evaluated on an n x n grid of moving pixel centres."""
    xs, ys = check_points(result.mov.width, result.mov.height, n)
    rx, ry = result.mapping.apply(xs, ys)
    return [[float(a), float(b), float(c), float(d)] for a, b, c, d in zip(xs, ys, rx, ry)]


def build_report(result: RegistrationResult, ref_path: str, mov_path: str, status: str = "ok",
                 flag: str | None = None) -> dict:
    """The report of an estimate: "ok", or "flagged" with the reason it is not trusted."""
    matrix = corrected_pixel_matrix(result.georef, result.correction.matrix)
    sel = result.selected
    flagged = {"flag": flag} if flag else {}
    return {
        "schema": SCHEMA,
        "dmreg_version": __version__,
        "status": status,
        **flagged,
        "reference": raster_entry(ref_path, result.ref),
        "moving": raster_entry(mov_path, result.mov),
        "matcher": result.matcher,
        "model": {
            "type": sel.kind,
            "pixel_matrix": matrix.tolist() if matrix is not None else None,
            "check_grid": check_grid(result),
            "correction": sel.transform.as_dict(),
            "same_crs": result.georef.same_crs,
        },
        "quality": {
            "tiles": result.tiles,
            "tiles_matched": result.tiles_matched,
            "matches": len(result.matches),
            "inliers": sel.n_inliers,
            "rmse_px": finite_or_none(sel.rmse_px),
            "ce90_px": finite_or_none(sel.ce90_px),
            "predicted_ce90_px": finite_or_none(result.uncertainty.ce90_px) if result.uncertainty else None,
        },
        "uncertainty": result.uncertainty.as_dict() if result.uncertainty else None,
        "read_probe": result.probe.as_dict() if result.probe else None,
        "models": models_section(result),
        "coarse": result.coarse,
        "passes": result.passes,
        "warnings": result.warnings,
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
    }


def models_section(result: RegistrationResult) -> dict:
    """Every candidate: its robust fit (inliers, RMSE, a-contrario NFA) and its held-out
    error, the number the choice was made on."""
    fits = {**result.fits, result.selected.kind: result.selected}
    out = {}
    for kind in dict.fromkeys([*fits, *result.scores]):
        entry = {**fits[kind].summary(), "meaningful": fits[kind].meaningful} if kind in fits else {}
        if kind in result.scores:
            entry.update(result.scores[kind].as_dict())
        entry["chosen"] = kind == result.selected.kind
        out[kind] = entry
    return out


def build_failure_report(ref_path: str, mov_path: str, error: DmregError,
                         ref: RasterInfo | None = None, mov: RasterInfo | None = None) -> dict:
    """The report of a failed run: same keys where known, and the error."""
    return {
        "schema": SCHEMA,
        "dmreg_version": __version__,
        "status": "failed",
        "error": {"code": error.exit_code, "type": type(error).__name__, "message": str(error)},
        "reference": raster_entry(ref_path, ref),
        "moving": raster_entry(mov_path, mov),
    }


def tie_point_fields(result: RegistrationResult) -> dict[str, np.ndarray]:
    """Per match: where it lies in both rasters, its residual, inlier flag, confidence
    and tile, and (georeferenced pairs) its reference CRS coordinates ``map_x``/``map_y``."""
    m = result.matches
    fields = {"ref_x": m.ref_px[:, 0], "ref_y": m.ref_px[:, 1], "mov_x": m.mov_px[:, 0], "mov_y": m.mov_px[:, 1],
              "residual_px": result.residuals_px(), "inlier": result.selected.inliers,
              "confidence": m.confidence, "tile": m.tile}
    if result.ref.georeferenced:
        fields["map_x"], fields["map_y"] = result.ref.to_map(m.ref_px[:, 0], m.ref_px[:, 1])
    return {name: np.asarray(values) for name, values in fields.items()}


def tie_points_geojson(result: RegistrationResult) -> dict:
    """Every match as a point at its reference location, with residual and inlier flag.

    RFC 7946 GeoJSON: geometry in WGS 84 longitude/latitude (no ``crs`` member), the
    reference CRS coordinates as ``map_x``/``map_y`` properties and the CRS itself in
    ``map_crs``. A pixel-space pair has no geography: its points are reference pixels,
    which the collection says in ``coordinates: "reference pixels"`` (a foreign member)."""
    fields = tie_point_fields(result)
    crs = _crs_string(result.ref)
    if crs:
        lon, lat = (np.asarray(v) for v in warp_transform(result.ref.crs, WGS84, fields["map_x"], fields["map_y"]))
    else:
        lon, lat = fields["ref_x"], fields["ref_y"]
    columns = {name: values.tolist() for name, values in fields.items()}  # Python floats, ints and bools
    features = [{"type": "Feature",
                 "geometry": {"type": "Point", "coordinates": [round(float(lon[i]), 9), round(float(lat[i]), 9)]},
                 "properties": {name: values[i] for name, values in columns.items()}}
                for i in range(len(lon))]
    collection: dict = {"type": "FeatureCollection", "features": features}
    if crs:
        collection["map_crs"] = crs
    else:
        collection["coordinates"] = "reference pixels"
    return collection


def write_tie_points(path: str, result: RegistrationResult, overwrite: bool) -> None:
    """GeoJSON (RFC 7946) or, by the extension, a GeoPackage or FlatGeobuf layer in the
    reference CRS (pixel-space pairs: reference pixels, no CRS)."""
    if vector_driver(path) is None:
        write_text(path, to_json(tie_points_geojson(result)), overwrite)
        return
    fields = tie_point_fields(result)
    x, y = (fields["map_x"], fields["map_y"]) if "map_x" in fields else (fields["ref_x"], fields["ref_y"])
    write_points(path, x, y, fields, _crs_string(result.ref), overwrite)


def to_json(obj: dict) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def _crs_string(info: RasterInfo) -> str | None:
    if info.crs is None:
        return None
    epsg = info.crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else info.crs.to_wkt()
