"""Tie points as a GeoPackage or FlatGeobuf layer that GDAL/OGR (what QGIS reads with)
opens: one point per match, in the reference CRS, with the GeoJSON's attributes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmreg.errors import UsageError
from dmreg.options import OutputOptions
from dmreg_cli.main import app
from tests.helpers import DATA

pyogrio = pytest.importorskip("pyogrio")

PAIR = [str(DATA / "L7_ETMs.tif"), str(DATA / "L7_SWIR2_offset.tif"), "--ref-band", "6"]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tiepoints")
    paths = {ext: str(folder / f"tp.{ext}") for ext in ("geojson", "gpkg", "fgb")}
    for path in paths.values():
        result = CliRunner().invoke(app, ["register", *PAIR, "--dry-run", "--tiepoints", path])
        assert result.exit_code == 0, result.output
    return paths


@pytest.mark.parametrize("ext", ["gpkg", "fgb"])
def test_ogr_reads_the_tie_points_in_the_reference_crs(written, ext):
    from pyogrio import read_info
    from pyogrio.raw import read

    geojson = json.loads(open(written["geojson"]).read())["features"]
    info = read_info(written[ext])
    assert info["geometry_type"] == "Point" and info["features"] == len(geojson) > 12
    assert info["crs"] == "EPSG:31985"
    meta, _, geometry, fields = read(written[ext], return_fids=False)
    columns = dict(zip(meta["fields"], fields))
    assert {"ref_x", "ref_y", "mov_x", "mov_y", "residual_px", "inlier", "confidence", "tile", "map_x",
            "map_y"} <= set(columns)
    import shapely

    points = shapely.get_coordinates(shapely.from_wkb(geometry))
    np.testing.assert_allclose(points, np.column_stack([columns["map_x"], columns["map_y"]]))
    order = np.argsort(columns["ref_x"])
    expected = sorted(geojson, key=lambda f: f["properties"]["ref_x"])
    np.testing.assert_allclose(columns["map_x"][order], [f["properties"]["map_x"] for f in expected])
    assert list(columns["inlier"][order].astype(bool)) == [f["properties"]["inlier"] for f in expected]


def test_an_unknown_tie_point_extension_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="the extension says which"):
        OutputOptions(tiepoints=str(tmp_path / "tp.shp"))
    result = CliRunner().invoke(app, ["register", *PAIR, "--dry-run", "--tiepoints", str(tmp_path / "tp.kml")])
    assert result.exit_code == 2 and not (tmp_path / "tp.kml").exists()


def test_ogr_reads_the_geojson_as_wgs84_points(written):
    from pyogrio import read_info

    info = read_info(written["geojson"])
    assert info["geometry_type"] == "Point" and info["crs"] == "EPSG:4326"
    assert info["features"] == read_info(written["gpkg"])["features"]
