"""Rasters georeferenced by ground control points or by RPCs register as their
geotransform twins do, as moving and as reference rasters, and their outputs carry
georeferencing that GDAL reads back to the right place."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.rpc import RPC
from rasterio.warp import transform as warp_transform
from typer.testing import CliRunner

from dmreg.io.raster import describe
from dmreg.options import OutputOptions, RegisterOptions
from dmreg.pipeline import register
from dmreg_cli.main import app
from tests.helpers import DATA

WGS84 = CRS.from_epsg(4326)
MOVING = DATA / "L7_SWIR2_offset.tif"   # band 6 of L7_ETMs.tif, pixel for pixel; its geotransform is off
REFERENCE = DATA / "L7_ETMs.tif"
AT = (np.array([50.5, 300.5, 170.0]), np.array([40.5, 320.5, 200.0]))
PARALLAX = 0.004
"""Columns of displacement per metre of height in the test RPCs (a side-looking view)."""


def _source() -> tuple[np.ndarray, Affine, CRS]:
    with rasterio.open(MOVING) as ds:
        return ds.read(1), ds.transform, ds.crs


def _gcps(transform: Affine, crs: CRS, to: CRS, width: int, height: int, n: int = 6) -> list[GroundControlPoint]:
    cols, rows = np.meshgrid(np.linspace(0, width, n), np.linspace(0, height, n))
    x, y = transform @ (cols.ravel(), rows.ravel())
    if to != crs:
        x, y = warp_transform(crs, to, x, y)
    return [GroundControlPoint(row=float(r), col=float(c), x=float(a), y=float(b), id=str(i))
            for i, (c, r, a, b) in enumerate(zip(cols.ravel(), rows.ravel(), x, y))]


def _rpc(transform: Affine, crs: CRS, width: int, height: int) -> RPC:
    """Cubic RPCs (denominators 1) fitted to the geotransform, with a height term that
    moves the sample by PARALLAX columns per metre. RPC samples and lines count from the
    first pixel's centre (GDAL's convention), dmreg's coordinates from its corner."""
    cols, rows = np.meshgrid(np.linspace(0, width, 20), np.linspace(0, height, 20))
    lon, lat = (np.asarray(v) for v in warp_transform(crs, WGS84, *(transform @ (cols.ravel(), rows.ravel()))))
    lon_off, lat_off = lon.mean(), lat.mean()
    lon_scale, lat_scale = np.ptp(lon) / 2, np.ptp(lat) / 2
    L, P = (lon - lon_off) / lon_scale, (lat - lat_off) / lat_scale
    terms = np.column_stack([np.ones_like(L), L, P, L * P, L * L, P * P, L ** 3, L * P * P, L * L * P, P ** 3])
    slots = [0, 1, 2, 4, 7, 8, 11, 12, 14, 15]  # those terms' places among the 20 RPC coefficients
    height_scale = 1000.0

    def coefficients(values: np.ndarray, scale: float, height_term: float = 0.0) -> list[float]:
        c = np.zeros(20)
        c[slots] = np.linalg.lstsq(terms, values / scale, rcond=None)[0]
        c[3] = height_term
        return c.tolist()

    one = [1.0] + [0.0] * 19
    return RPC(height_off=0.0, height_scale=height_scale, lat_off=lat_off, lat_scale=lat_scale,
               long_off=lon_off, long_scale=lon_scale, err_bias=-1.0, err_rand=-1.0,
               samp_off=width / 2, samp_scale=width / 2, line_off=height / 2, line_scale=height / 2,
               samp_num_coeff=coefficients(cols.ravel() - 0.5 - width / 2, width / 2,
                                           PARALLAX * height_scale / (width / 2)),
               samp_den_coeff=one, line_num_coeff=coefficients(rows.ravel() - 0.5 - height / 2, height / 2),
               line_den_coeff=one)


def _write(path, image: np.ndarray, **georef) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=1,
                       dtype=image.dtype) as dst:
        dst.write(image, 1)
        for name, value in georef.items():
            setattr(dst, name, value)
    return str(path)


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("georef")
    image, transform, crs = _source()
    h, w = image.shape
    return {
        "gcps_projected": _write(folder / "gcps_utm.tif", image, gcps=(_gcps(transform, crs, crs, w, h), crs)),
        "gcps_lonlat": _write(folder / "gcps_ll.tif", image, gcps=(_gcps(transform, crs, WGS84, w, h), WGS84)),
        "rpcs": _write(folder / "rpc.tif", image, rpcs=_rpc(transform, crs, w, h)),
    }


def _error(result) -> float:
    """The content of moving pixel p lies at reference pixel p."""
    x, y = result.mapping.apply(*AT)
    return float(np.hypot(x - AT[0], y - AT[1]).max())


@pytest.mark.parametrize("kind", ["gcps_projected", "gcps_lonlat", "rpcs"])
def test_a_gcp_or_rpc_moving_raster_registers_like_its_geotransform_twin(twins, kind, tmp_path):
    twin = register(str(REFERENCE), str(MOVING), RegisterOptions(ref_band=6))
    result = register(str(REFERENCE), twins[kind], RegisterOptions(ref_band=6),
                      OutputOptions(raster=str(tmp_path / "out.tif"), report=str(tmp_path / "r.json")))
    assert result.mov.georeferencing == kind.split("_")[0]
    assert _error(result) < 0.05 and abs(_error(result) - _error(twin)) < 0.01  # measured 0.0027 both
    with rasterio.open(tmp_path / "out.tif") as out, rasterio.open(REFERENCE) as ref:
        assert out.transform == ref.transform and out.crs == ref.crs
        valid = out.read_masks(1) > 0
        assert valid.mean() > 0.8
        diff = np.abs(out.read(1).astype(float) - ref.read(6).astype(float))[valid]
    assert diff.mean() < 0.5  # the moving band is the reference's own band 6


def test_a_gcp_reference_gives_its_gcps_to_the_output(tmp_path):
    with rasterio.open(REFERENCE) as ds:
        image, transform, crs = ds.read(6), ds.transform, ds.crs
    h, w = image.shape
    reference = _write(tmp_path / "ref_gcps.tif", image, gcps=(_gcps(transform, crs, WGS84, w, h), WGS84))
    result = register(reference, str(MOVING), RegisterOptions(),
                      OutputOptions(raster=str(tmp_path / "out.tif"), tiepoints=str(tmp_path / "t.geojson")))
    assert result.ref.georeferencing == "gcps" and _error(result) < 0.05
    with rasterio.open(tmp_path / "out.tif") as out:
        gcps, gcp_crs = out.gcps
        assert len(gcps) == 36 and gcp_crs == WGS84
        valid = out.read_masks(1) > 0
        assert np.abs(out.read(1).astype(float) - image)[valid].mean() < 0.5


def test_no_resample_writes_refined_gcps(twins, tmp_path):
    """The pixels are copied; the corrected mapping, sampled as GCPs in the reference
    CRS, puts each pixel where it belongs."""
    register(str(REFERENCE), twins["gcps_lonlat"], RegisterOptions(ref_band=6),
             OutputOptions(raster=str(tmp_path / "copy.tif"), resample=False))
    with rasterio.open(tmp_path / "copy.tif") as out, rasterio.open(REFERENCE) as ref:
        info = describe(out)
        assert info.georeferencing == "gcps" and info.crs == ref.crs
        mx, my = info.to_map(*AT)
        col, row = ~ref.transform @ (mx, my)
    assert np.hypot(col - AT[0], row - AT[1]).max() < 0.05


def test_rpc_height_and_dem_agree(twins, tmp_path):
    """A constant height and a DEM of that height give one mapping, PARALLAX columns per
    metre away from the mapping at height 0."""
    with rasterio.open(twins["rpcs"]) as ds:
        flat, raised = describe(ds), describe(ds, rpc_height=250.0)
        lon, lat = flat.to_map(*AT)
    dem = np.full((50, 50), 250.0, np.float32)
    west, north = lon.min() - 0.05, lat.max() + 0.05
    dem_path = tmp_path / "dem.tif"
    with rasterio.open(dem_path, "w", driver="GTiff", width=50, height=50, count=1, dtype="float32", crs=WGS84,
                       transform=Affine(0.004, 0, west, 0, -0.004, north)) as dst:
        dst.write(dem, 1)
    with rasterio.open(twins["rpcs"]) as ds:
        on_dem = describe(ds, dem=str(dem_path))
    x_raised, y_raised = raised.to_pixel(lon, lat)
    x_dem, y_dem = on_dem.to_pixel(lon, lat)
    np.testing.assert_allclose(x_raised - AT[0], PARALLAX * 250.0, atol=0.01)
    np.testing.assert_allclose(np.column_stack([x_dem, y_dem]), np.column_stack([x_raised, y_raised]), atol=0.01)


def test_dem_and_rpc_height_are_checked():
    runner = CliRunner()
    args = ["register", str(REFERENCE), str(MOVING), "--dry-run"]
    assert runner.invoke(app, [*args, "--dem", "/no/such/dem.tif"]).exit_code == 2
    assert runner.invoke(app, [*args, "--dem", str(REFERENCE), "--rpc-height", "10"]).exit_code == 2


def test_gcp_tps_passes_through_every_gcp_where_the_polynomial_smooths(tmp_path):
    """GCPs with a local bump (relief): the thin-plate spline is exact at each of them,
    GDAL's polynomial is not."""
    image, transform, crs = _source()
    h, w = image.shape
    gcps = _gcps(transform, crs, crs, w, h)
    bumped = [GroundControlPoint(row=g.row, col=g.col, x=g.x + (90.0 if i == 14 else 0.0), y=g.y, id=g.id)
              for i, g in enumerate(gcps)]
    path = _write(tmp_path / "bumped.tif", image, gcps=(bumped, crs))
    cols, rows = np.array([g.col for g in bumped]), np.array([g.row for g in bumped])
    truth = np.array([[g.x, g.y] for g in bumped])
    with rasterio.open(path) as ds:
        spline = np.column_stack(describe(ds, gcp_tps=True).to_map(cols, rows))
        polynomial = np.column_stack(describe(ds).to_map(cols, rows))
    np.testing.assert_allclose(spline, truth, atol=1e-3)
    assert np.abs(polynomial - truth).max() > 10.0  # metres: the bump is smoothed away
