"""What `dmreg register` writes: the aligned raster in its variants, the report, tie points;
and what it must not touch: its inputs, and the output folder beyond its outputs."""

from __future__ import annotations

import math
import shutil

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform
from typer.testing import CliRunner

from dmreg.pipeline import OutputOptions, RegisterOptions, register
from dmreg_cli.main import app
from helpers import CROP, HOLE, MULTI_NODATA, SHIFT, Case, check_grid_errors, mean_abs_diff, read_json, sha256, write_raster

MAX_ERROR_PX = 0.5


def cli(*args) -> str:
    result = CliRunner().invoke(app, ["register", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def full_run(multiband: Case, tmp_path_factory):
    """One CLI run of the 3-band moving raster with every output; inputs are private
    copies whose hashes and folder listing are recorded before the run."""
    inputs = tmp_path_factory.mktemp("inputs")
    ref = shutil.copyfile(multiband.ref, inputs / "ref.tif")
    mov = shutil.copyfile(multiband.mov, inputs / "mov.tif")
    before = {p.name: sha256(p) for p in inputs.iterdir()}
    out_dir = tmp_path_factory.mktemp("outputs")
    paths = {"raster": out_dir / "aligned.tif", "report": out_dir / "report.json",
             "tiepoints": out_dir / "tiepoints.geojson"}
    cli(ref, mov, "-o", paths["raster"], "--report", paths["report"], "--tiepoints", paths["tiepoints"])
    return {"ref": ref, "mov": mov, "inputs": inputs, "hashes": before, "out_dir": out_dir,
            "case": multiband, **paths}


# --- the aligned raster ----------------------------------------------------------------------

def test_default_raster_is_tiled_compressed_with_all_bands(full_run):
    with rasterio.open(full_run["raster"]) as out, rasterio.open(full_run["mov"]) as mov:
        profile = out.profile
        assert out.count == mov.count == 3
        assert out.dtypes == mov.dtypes
        assert profile["tiled"] is True
        assert out.compression is not None and out.compression.name.lower() == "deflate"
        assert all(bx == by and bx >= 16 and bx % 16 == 0 for bx, by in out.block_shapes)


def test_raster_is_on_reference_grid(full_run):
    with rasterio.open(full_run["raster"]) as out, rasterio.open(full_run["ref"]) as ref:
        assert out.crs == ref.crs
        assert out.transform.almost_equals(ref.transform, precision=1e-9)
        assert (out.width, out.height) == (ref.width, ref.height)


def _inside_crop(shape, margin: int) -> np.ndarray:
    """Reference pixels at least ``margin`` px inside the moving raster's true footprint
    and at least ``margin`` px away from its nodata hole."""
    mask = np.zeros(shape, bool)
    mask[CROP[0].start + margin:CROP[0].stop - margin, CROP[1].start + margin:CROP[1].stop - margin] = True
    mask[HOLE[0].start - margin:HOLE[0].stop + margin, HOLE[1].start - margin:HOLE[1].stop + margin] = False
    return mask


def test_every_band_is_aligned(full_run):
    """Every output band resembles its source band where the moving raster has data."""
    source = full_run["case"].source_band.astype(np.float64)
    with rasterio.open(full_run["raster"]) as out:
        data = out.read()
        valid = out.read_masks(1) > 0
    mask = _inside_crop(valid.shape, margin=4)
    assert valid[mask].all(), "pixels well inside the moving footprint must not be nodata"
    for i in range(3):
        err = mean_abs_diff(data[i], source[i], mask)
        one_px = mean_abs_diff(np.roll(source[i], 1, axis=1), source[i], mask)
        assert err < 0.5 * one_px, f"band {i + 1}: {err:.2f} DN off; a 1 px shift gives {one_px:.2f}"


def test_nodata_is_preserved(full_run):
    with rasterio.open(full_run["raster"]) as out:
        assert out.nodata == MULTI_NODATA
        data = out.read()
    nodata = (data == MULTI_NODATA).all(axis=0)
    # outside the moving raster's true footprint (not where its shifted geotransform says)
    assert nodata[:, :CROP[1].start].all(), "left of the moving footprint must be nodata"
    assert nodata[:CROP[0].start, :].all(), "above the moving footprint must be nodata"
    assert nodata[CROP[0].stop:, :].all(), "below the moving footprint must be nodata"
    # the moving raster's own nodata hole stays nodata (1 px tolerance for the estimate)
    assert nodata[HOLE[0].start + 1:HOLE[0].stop - 1, HOLE[1].start + 1:HOLE[1].stop - 1].all(), \
        "the moving raster's nodata hole must stay nodata"
    # and nodata does not spread into the data
    assert not nodata[_inside_crop(nodata.shape, margin=2)].any()


def test_creation_options_are_applied(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    cli(shift_nir.ref, shift_nir.mov, "-o", out, "--of", "GTiff", "--co", "COMPRESS=LZW", "--co", "BLOCKXSIZE=256",
        "--co", "BLOCKYSIZE=256")
    with rasterio.open(out) as ds:
        assert ds.compression.name.lower() == "lzw"
        assert ds.block_shapes[0] == (256, 256)


def test_the_default_output_is_a_cog_with_the_cog_drivers_options(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    cli(shift_nir.ref, shift_nir.mov, "-o", out, "--co", "BLOCKSIZE=256", "--co", "COMPRESS=LZW")
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.compression.name.lower() == "lzw" and ds.block_shapes[0] == (256, 256)


def test_an_option_the_driver_does_not_take_is_refused_before_any_work(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    result = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out),
                                      "--co", "BLOCKXSIZE=256"])
    assert result.exit_code == 2 and "BLOCKXSIZE" in result.output and "--of GTiff" in result.output
    assert not out.exists()


def test_grid_moving_keeps_moving_grid(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned_moving_grid.tif"
    cli(shift_nir.ref, shift_nir.mov, "-o", out, "--grid", "moving")
    with rasterio.open(out) as ds, rasterio.open(shift_nir.mov) as mov:
        assert ds.crs == mov.crs
        assert ds.transform.almost_equals(mov.transform, precision=1e-9)
        assert (ds.width, ds.height) == (mov.width, mov.height)
        aligned = ds.read(1).astype(np.float64)
        valid = ds.read_masks(1) > 0
        moving = mov.read(1).astype(np.float64)
    # moving-grid pixel p lies at reference pixel p + SHIFT, which truly shows source(p + SHIFT)
    src = shift_nir.source_band.astype(np.float32)
    rows, cols = np.mgrid[0:src.shape[0], 0:src.shape[1]].astype(np.float32)
    expected = cv2.remap(src, cols + SHIFT[0], rows + SHIFT[1], cv2.INTER_LINEAR).astype(np.float64)
    mask = valid.copy()
    mask[:8], mask[-8:], mask[:, :8], mask[:, -8:] = False, False, False, False
    assert mask.mean() > 0.8
    err = mean_abs_diff(aligned, expected, mask)
    unaligned = mean_abs_diff(moving, expected, mask)
    assert err < 0.25 * unaligned, f"moving-grid output is {err:.2f} DN off; the input is {unaligned:.2f} off"


@pytest.mark.parametrize("case_name", ["shift_swir2", "affine_swir2"])
def test_no_resample_copies_pixels_and_corrects_geotransform(case_name, request, tmp_path):
    case: Case = request.getfixturevalue(case_name)
    out = tmp_path / "copy.tif"
    cli(case.ref, case.mov, "-o", out, "--no-resample", "--model", "affine")
    with rasterio.open(out) as ds, rasterio.open(case.mov) as mov, rasterio.open(case.ref) as ref:
        assert (ds.width, ds.height, ds.count) == (mov.width, mov.height, mov.count)
        assert ds.dtypes == mov.dtypes
        assert np.array_equal(ds.read(), mov.read()), "pixels must be copied untouched"
        assert ds.nodata == mov.nodata
        assert ds.crs == ref.crs
        assert not ds.gcps[0], "an affine model is carried by the geotransform, not by GCPs"
        transform, ref_t = ds.transform, ref.transform
    xs, ys = np.meshgrid(np.linspace(0.5, case.ref_size[0] - 0.5, 10), np.linspace(0.5, case.ref_size[1] - 0.5, 10))
    xs, ys = xs.ravel(), ys.ravel()
    # the new geotransform puts moving pixel p on the map where the reference shows it
    rx, ry = ~ref_t @ (transform @ (xs, ys))
    grid = np.column_stack([xs, ys, rx, ry])
    errors, inside = check_grid_errors(grid, case.truth, case.ref_size)
    assert inside.sum() >= 50
    assert errors.max() < MAX_ERROR_PX, f"corrected geotransform is {errors.max():.3f} px off"


def test_dry_run_writes_no_raster(shift_nir: Case, tmp_path):
    out, rep = tmp_path / "aligned.tif", tmp_path / "report.json"
    text = cli(shift_nir.ref, shift_nir.mov, "-o", out, "--report", rep, "--dry-run")
    assert not out.exists()
    assert read_json(rep)["status"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert "estimate only" in text


def test_library_without_outputs_writes_nothing(shift_nir: Case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = register(str(shift_nir.ref), str(shift_nir.mov), RegisterOptions(), OutputOptions())
    assert result.selected.n_inliers >= 12
    assert list(tmp_path.iterdir()) == []


# --- the report -----------------------------------------------------------------------------------

def test_report_has_every_schema_key(full_run):
    report = read_json(full_run["report"])
    assert report["schema"] == "dmreg.report/1"
    assert isinstance(report["dmreg_version"], str) and report["dmreg_version"]
    assert report["status"] == "ok"
    for key, path in (("reference", full_run["ref"]), ("moving", full_run["mov"])):
        entry = report[key]
        assert set(entry) >= {"path", "crs", "transform", "width", "height"}
        assert entry["path"] == str(path)
        with rasterio.open(path) as ds:
            assert entry["crs"] == f"EPSG:{ds.crs.to_epsg()}"
            assert entry["transform"] == pytest.approx(list(ds.transform)[:6])
            assert (entry["width"], entry["height"]) == (ds.width, ds.height)
    assert set(report["matcher"]) >= {"name", "weights_sha256", "device"}
    assert report["matcher"]["name"] == "structural"
    model = report["model"]
    assert set(model) >= {"type", "pixel_matrix", "check_grid"}
    assert model["type"] in ("translation", "similarity", "affine", "homography", "polynomial2")
    assert np.asarray(model["pixel_matrix"], dtype=float).shape == (3, 3)
    check_grid = np.asarray(model["check_grid"], dtype=float)
    assert check_grid.shape == (100, 4) and np.isfinite(check_grid).all()
    quality = report["quality"]
    assert set(quality) >= {"tiles", "tiles_matched", "matches", "inliers", "rmse_px", "ce90_px"}
    assert 1 <= quality["tiles_matched"] <= quality["tiles"]
    assert 12 <= quality["inliers"] <= quality["matches"]
    # inliers lie within the default 1.5 px RANSAC threshold
    assert 0 <= quality["rmse_px"] < 1.5 and 0 <= quality["ce90_px"] < 1.5
    timings = report["timings_s"]
    assert set(timings) >= {"total", "read", "match", "fit", "write"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in timings.values())
    for part in ("read", "match", "fit", "write"):
        assert timings[part] <= timings["total"] + 1e-3


def test_report_pixel_matrix_agrees_with_check_grid(full_run):
    """Same CRS and an affine-family model: the 3x3 pixel matrix is the whole mapping."""
    report = read_json(full_run["report"])
    g = np.asarray(report["model"]["check_grid"])
    m = np.asarray(report["model"]["pixel_matrix"])
    if report["model"]["type"] == "polynomial2":
        pytest.skip("polynomial2 has no matrix")
    w = m[2, 0] * g[:, 0] + m[2, 1] * g[:, 1] + m[2, 2]
    x = (m[0, 0] * g[:, 0] + m[0, 1] * g[:, 1] + m[0, 2]) / w
    y = (m[1, 0] * g[:, 0] + m[1, 1] * g[:, 1] + m[1, 2]) / w
    assert np.allclose(x, g[:, 2], atol=1e-6) and np.allclose(y, g[:, 3], atol=1e-6)
    errors, _ = check_grid_errors(g, full_run["case"].truth, full_run["case"].ref_size)
    assert errors.max() < MAX_ERROR_PX


# --- tie points -----------------------------------------------------------------------------------

def test_tiepoints_geojson(full_run):
    gj = read_json(full_run["tiepoints"])
    report = read_json(full_run["report"])
    assert gj["type"] == "FeatureCollection"
    features = gj["features"]
    assert len(features) == report["quality"]["matches"] > 0
    assert "crs" not in gj, "RFC 7946 drops the crs member: coordinates are WGS 84"
    with rasterio.open(full_run["ref"]) as ref:
        left, bottom, right, top = ref.bounds
        assert gj["map_crs"] == f"EPSG:{ref.crs.to_epsg()}"
        ref_crs = ref.crs
    lon, lat = np.array([f["geometry"]["coordinates"] for f in features]).T
    assert np.all((-180 <= lon) & (lon <= 180) & (-90 <= lat) & (lat <= 90))
    back_x, back_y = warp_transform("EPSG:4326", ref_crs, lon, lat)
    n_inliers = 0
    for i, f in enumerate(features):
        assert f["type"] == "Feature"
        assert f["geometry"]["type"] == "Point"
        props = f["properties"]
        x, y = props["map_x"], props["map_y"]
        assert left <= x <= right and bottom <= y <= top, "tie points lie on the reference, in its CRS"
        assert abs(back_x[i] - x) < 0.01 and abs(back_y[i] - y) < 0.01, "longitude/latitude are the same point"
        assert isinstance(props["inlier"], bool)
        assert isinstance(props["residual_px"], float) and math.isfinite(props["residual_px"])
        assert props["residual_px"] >= 0
        if props["inlier"]:
            n_inliers += 1
            assert props["residual_px"] < 1.5  # the default RANSAC threshold
    assert n_inliers == report["quality"]["inliers"]


# --- what must not change ---------------------------------------------------------------------------

def test_inputs_are_not_modified(full_run):
    after = {p.name: sha256(p) for p in full_run["inputs"].iterdir()}
    assert after == full_run["hashes"], "inputs were modified, or files were written beside them"


def test_no_temp_files_in_output_folder(full_run):
    names = sorted(p.name for p in full_run["out_dir"].iterdir())
    assert names == ["aligned.tif", "report.json", "tiepoints.geojson"]


def test_no_temp_files_after_failure(shift_nir: Case, l7, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    flat = write_raster(inputs / "flat.tif", np.full((l7["height"], l7["width"]), 7, np.uint8),
                        crs=l7["crs"], transform=l7["transform"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(flat), "-o", str(out_dir / "a.tif"),
                                      "--tiepoints", str(out_dir / "t.geojson"), "--report", str(out_dir / "r.json")])
    assert result.exit_code == 5, result.output
    assert sorted(p.name for p in out_dir.iterdir()) == ["r.json"]
    assert sorted(p.name for p in inputs.iterdir()) == ["flat.tif"]
