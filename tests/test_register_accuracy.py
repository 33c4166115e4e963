"""End-to-end accuracy against ground truth: shift, affine, other CRS, thermal."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from dmreg.errors import RegistrationError
from dmreg.pipeline import OutputOptions, RegisterOptions, register
from dmreg_cli.main import app
from helpers import Case, check_grid_errors, mean_abs_diff, read_json

MAX_ERROR_PX = 0.5
L7_CASES = ["shift_swir2", "shift_nir", "affine_swir2", "affine_nir", "crs_swir2", "crs_nir"]


def assert_on_reference_grid(raster, reference) -> None:
    with rasterio.open(raster) as out, rasterio.open(reference) as ref:
        assert out.crs == ref.crs
        assert out.transform.almost_equals(ref.transform, precision=1e-9)
        assert (out.width, out.height) == (ref.width, ref.height)


def assert_accurate(report: dict, case: Case, min_points: int) -> np.ndarray:
    assert report["status"] == "ok"
    errors, inside = check_grid_errors(report["model"]["check_grid"], case.truth, case.ref_size)
    # the check is meaningful only if most of the grid lands inside the reference
    assert inside.sum() >= min_points, f"only {inside.sum()} check points inside the reference"
    print(f"{case.name}: model {report['model']['type']}, max error {errors.max():.3f} px")
    assert errors.max() < MAX_ERROR_PX, (
        f"{case.name}: max check-grid error {errors.max():.3f} px (mean {errors.mean():.3f}) "
        f"with model {report['model']['type']}"
    )
    return errors


def assert_content_aligned(raster, case: Case) -> None:
    """The aligned raster shows the moving content where it truly belongs: on the
    reference grid it must resemble the band the moving raster was made from much more
    closely than that band resembles itself moved by one pixel."""
    with rasterio.open(raster) as out:
        aligned = out.read(1)
        valid = out.read_masks(1) > 0
    src = case.source_band.astype(np.float64)
    interior = np.zeros_like(valid)
    interior[8:-8, 8:-8] = True
    mask = valid & interior
    assert mask.mean() > 0.5, "the aligned raster is mostly nodata"
    err = mean_abs_diff(aligned, src, mask)
    one_px = mean_abs_diff(np.roll(src, 1, axis=1), src, mask)
    print(f"content: {err:.2f} vs {one_px:.2f}")
    assert err < 0.5 * one_px, f"aligned differs from truth by {err:.2f} DN; a 1 px shift gives {one_px:.2f}"


@pytest.mark.parametrize("case_name", L7_CASES)
def test_library_register_accuracy(case_name, request, tmp_path):
    case: Case = request.getfixturevalue(case_name)
    out, rep = tmp_path / "aligned.tif", tmp_path / "report.json"
    result = register(str(case.ref), str(case.mov), RegisterOptions(), OutputOptions(raster=str(out), report=str(rep)))
    report = read_json(rep)
    min_points = 100 if case_name.startswith("shift") else 50
    assert_accurate(report, case, min_points)
    assert report["model"]["type"] == result.selected.kind
    assert_on_reference_grid(out, case.ref)
    assert_content_aligned(out, case)


def test_report_check_grid_is_the_full_mapping(shift_swir2, tmp_path):
    """check_grid columns: moving pixel centres over the whole moving raster, then the
    corrected reference position (not the correction alone, nor the georeferencing alone)."""
    rep = tmp_path / "r.json"
    result = register(str(shift_swir2.ref), str(shift_swir2.mov), RegisterOptions(), OutputOptions(report=str(rep)))
    g = np.asarray(read_json(rep)["model"]["check_grid"])
    assert g.shape == (100, 4)
    assert np.isclose(g[:, 0].min(), 0.5) and np.isclose(g[:, 0].max(), result.mov.width - 0.5)
    assert np.isclose(g[:, 1].min(), 0.5) and np.isclose(g[:, 1].max(), result.mov.height - 0.5)
    # the georeferencing alone is 3.4 / -2.7 px off; the corrected mapping is not
    georef_x, georef_y = result.georef.apply(g[:, 0], g[:, 1])
    assert np.allclose(georef_x - g[:, 0], 3.4) and np.allclose(georef_y - g[:, 1], -2.7)
    assert np.abs(g[:, 2] - g[:, 0]).max() < MAX_ERROR_PX
    assert np.abs(g[:, 3] - g[:, 1]).max() < MAX_ERROR_PX


@pytest.mark.parametrize("case_name", ["shift_swir2", "crs_nir"])
def test_cli_register_accuracy(case_name, request, tmp_path):
    case: Case = request.getfixturevalue(case_name)
    out, rep = tmp_path / "aligned.tif", tmp_path / "report.json"
    result = CliRunner().invoke(app, ["register", str(case.ref), str(case.mov), "-o", str(out), "--report", str(rep)])
    assert result.exit_code == 0, result.output
    assert_accurate(read_json(rep), case, min_points=50)
    assert_on_reference_grid(out, case.ref)
    assert_content_aligned(out, case)


def test_affine_case_selects_a_model_with_rotation_and_scale(affine_swir2, tmp_path):
    """A real 1.5 deg rotation and 2 % scale cannot be fitted by a translation."""
    result = register(str(affine_swir2.ref), str(affine_swir2.mov), RegisterOptions(), OutputOptions())
    assert result.selected.kind != "translation"
    m = result.correction.matrix
    assert m is not None
    scale = np.sqrt(abs(np.linalg.det(m[:2, :2])))
    angle = np.degrees(np.arctan2(m[1, 0], m[0, 0]))
    assert scale == pytest.approx(1.02, abs=0.004)
    assert angle == pytest.approx(1.5, abs=0.15)


@pytest.mark.xfail(reason="Landsat 5 thermal (120 m, resampled to 30 m) on a 101x101 scene has too little "
                          "shared structure with the red band for the structural matcher (0 matches)",
                   raises=(RegistrationError, AssertionError), strict=False)
def test_thermal_to_red_small_scene(thermal, tmp_path):
    rep = tmp_path / "report.json"
    register(str(thermal.ref), str(thermal.mov), RegisterOptions(), OutputOptions(report=str(rep)))
    errors, inside = check_grid_errors(read_json(rep)["model"]["check_grid"], thermal.truth, thermal.ref_size)
    assert inside.sum() >= 50
    assert errors.max() < 1.0, f"thermal: max check-grid error {errors.max():.3f} px"
