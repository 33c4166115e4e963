"""`dmreg register` exit codes, one-line messages, no tracebacks, failure reports."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from dmreg.errors import EXIT_CODES
from dmreg_cli.main import app
from helpers import L7, Case, normalised, read_json, sha256, write_raster


def run(*args) -> tuple[int, str]:
    """Invoke the CLI; (exit code, stdout+stderr with whitespace collapsed)."""
    result = CliRunner().invoke(app, ["register", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, normalised(result.output)


def assert_clean_error(code: int, text: str, expected_code: int, fragment: str) -> None:
    assert code == expected_code, text
    assert fragment.lower() in text.lower(), text
    assert "error:" in text
    assert "Traceback" not in text, "a traceback was printed without --debug"


# --- inputs made on the fly ---------------------------------------------------------

@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="module")
def truncated(bad_dir):
    """A GeoTIFF cut to half its bytes."""
    path = bad_dir / "truncated.tif"
    shutil.copyfile(L7, path)
    os.truncate(path, path.stat().st_size // 2)
    return path


@pytest.fixture(scope="module")
def no_crs_tif(l7, bad_dir):
    return write_raster(bad_dir / "no_crs.tif", l7["bands"]["nir"])


@pytest.fixture(scope="module")
def no_crs_png(l7, bad_dir):
    path = bad_dir / "plain.png"
    assert cv2.imwrite(str(path), l7["bands"]["nir"])
    return path


@pytest.fixture(scope="module")
def far_away(l7, bad_dir):
    """Same pixels and CRS, geotransform moved 100 km east: no overlap."""
    return write_raster(bad_dir / "far.tif", l7["bands"]["nir"], crs=l7["crs"],
                        transform=Affine.translation(100_000, 0) @ l7["transform"])


@pytest.fixture(scope="module")
def noise(l7, bad_dir):
    rng = np.random.default_rng(1234)
    data = rng.integers(0, 256, (l7["height"], l7["width"]), dtype=np.uint8)
    return write_raster(bad_dir / "noise.tif", data, crs=l7["crs"], transform=l7["transform"])


@pytest.fixture(scope="module")
def constant(l7, bad_dir):
    data = np.full((l7["height"], l7["width"]), 100, np.uint8)
    return write_raster(bad_dir / "constant.tif", data, crs=l7["crs"], transform=l7["transform"])


# --- 0 -------------------------------------------------------------------------------

def test_exit_0_on_success(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    code, text = run(shift_nir.ref, shift_nir.mov, "-o", out)
    assert code == 0, text
    assert out.exists()
    assert "Traceback" not in text and "error:" not in text
    assert "translation" in text or "affine" in text or "similarity" in text  # the summary names the model


def test_version(tmp_path):
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert "dmreg 0." in result.output


def test_exit_codes_are_documented():
    assert set(EXIT_CODES) == {0, 2, 3, 4, 5, 6, 7, 8, 9, 10}


# --- 2: usage --------------------------------------------------------------------------

def test_exit_2_unknown_model(shift_nir: Case, tmp_path):
    code, text = run(shift_nir.ref, shift_nir.mov, "--dry-run", "--model", "spline9")
    assert_clean_error(code, text, 2, "unknown model 'spline9'")


@pytest.mark.parametrize("bad", ["COMPRESS", "=DEFLATE"])
def test_exit_2_bad_creation_option(shift_nir: Case, tmp_path, bad):
    out = tmp_path / "aligned.tif"
    code, text = run(shift_nir.ref, shift_nir.mov, "-o", out, "--co", bad)
    assert_clean_error(code, text, 2, "expected NAME=VALUE")
    assert not out.exists()


def test_exit_2_nothing_to_write(shift_nir: Case):
    code, text = run(shift_nir.ref, shift_nir.mov)
    assert_clean_error(code, text, 2, "nothing to write")


def test_exit_2_unknown_matcher(shift_nir: Case):
    code, text = run(shift_nir.ref, shift_nir.mov, "--dry-run", "--matcher", "nope")
    assert_clean_error(code, text, 2, "unknown matcher 'nope'")


@pytest.mark.parametrize("args, fragment", [
    (["--grid", "moving", "--no-resample"], "--no-resample"),
    (["--grid", "sideways"], "unknown grid 'sideways'"),
    (["--resampling", "sinc"], "unknown resampling 'sinc'"),
    (["--tile-size", "16"], "--tile-size"),
    (["--ransac-threshold", "0"], "--ransac-threshold"),
    (["--mov-modality", "lidar"], "--mov-modality 'lidar'"),
])
def test_exit_2_bad_option_values(shift_nir: Case, tmp_path, args, fragment):
    out = tmp_path / "aligned.tif"
    code, text = run(shift_nir.ref, shift_nir.mov, "-o", out, *args)
    assert_clean_error(code, text, 2, fragment)
    assert not out.exists()


def test_exit_2_output_would_replace_an_input(shift_nir: Case, tmp_path):
    mov = tmp_path / "mov.tif"
    shutil.copyfile(shift_nir.mov, mov)
    before = sha256(mov)
    code, text = run(shift_nir.ref, mov, "-o", mov, "--overwrite")
    assert_clean_error(code, text, 2, "replace an input")
    assert sha256(mov) == before


def test_exit_2_same_file_for_two_outputs(shift_nir: Case, tmp_path):
    same = tmp_path / "out.json"
    code, text = run(shift_nir.ref, shift_nir.mov, "--report", same, "--tiepoints", same)
    assert_clean_error(code, text, 2, "different files")
    assert not same.exists()


# --- 3: inputs ---------------------------------------------------------------------------

def test_exit_3_truncated_file(shift_nir: Case, truncated):
    code, text = run(shift_nir.ref, truncated, "--dry-run")
    assert_clean_error(code, text, 3, "truncated.tif")
    assert "truncated" in text.lower() or "unreadable" in text.lower() or "not a readable raster" in text.lower()


def test_exit_3_missing_file(shift_nir: Case, tmp_path):
    missing = tmp_path / "does_not_exist.tif"
    code, text = run(shift_nir.ref, missing, "--dry-run")
    assert_clean_error(code, text, 3, "no such file")
    assert "does_not_exist.tif" in text


@pytest.mark.parametrize("fixture", ["no_crs_tif", "no_crs_png"])
def test_exit_3_moving_without_crs(shift_nir: Case, fixture, request):
    plain = request.getfixturevalue(fixture)
    code, text = run(shift_nir.ref, plain, "--dry-run")
    assert_clean_error(code, text, 3, "has no CRS")
    assert plain.name in text


def test_exit_3_reference_without_crs(shift_nir: Case, no_crs_png):
    code, text = run(no_crs_png, shift_nir.mov, "--dry-run")
    assert_clean_error(code, text, 3, "has no CRS")


def test_exit_3_band_out_of_range(shift_nir: Case):
    code, text = run(shift_nir.ref, shift_nir.mov, "--dry-run", "--mov-band", "7")
    assert_clean_error(code, text, 3, "band 7")


# --- 4: no overlap -------------------------------------------------------------------------

def test_exit_4_no_overlap(shift_nir: Case, far_away):
    code, text = run(shift_nir.ref, far_away, "--dry-run")
    assert_clean_error(code, text, 4, "do not overlap")


# --- 5: registration failed ----------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["noise", "constant"])
def test_exit_5_nothing_to_match(shift_nir: Case, fixture, request, tmp_path):
    mov = request.getfixturevalue(fixture)
    out = tmp_path / "aligned.tif"
    code, text = run(shift_nir.ref, mov, "-o", out)
    assert_clean_error(code, text, 5, "matches")
    assert not out.exists(), "a failed registration must not leave an output raster"


# --- 6: outputs exist ------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["-o", "--report", "--tiepoints"])
def test_exit_6_output_exists_and_is_untouched(shift_nir: Case, tmp_path, flag):
    existing = tmp_path / ("aligned.tif" if flag == "-o" else "existing.json")
    existing.write_bytes(b"precious bytes, not to be replaced\n")
    before = sha256(existing)
    code, text = run(shift_nir.ref, shift_nir.mov, flag, existing)
    assert_clean_error(code, text, 6, "--overwrite")
    assert existing.name in text
    assert sha256(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing.name], "temporary files were left behind"


def test_overwrite_replaces_existing_output(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    out.write_bytes(b"old")
    code, text = run(shift_nir.ref, shift_nir.mov, "-o", out, "--overwrite")
    assert code == 0, text
    with rasterio.open(out) as ds:
        assert ds.count == 1 and ds.crs is not None


def test_output_exists_is_checked_before_any_work(shift_nir: Case, tmp_path, constant):
    """An existing output fails with 6 at once, even when registration would fail (5)."""
    out = tmp_path / "aligned.tif"
    out.write_bytes(b"old")
    code, text = run(shift_nir.ref, constant, "-o", out)
    assert_clean_error(code, text, 6, "exists")


# --- tracebacks and failure reports -------------------------------------------------------------

def test_debug_shows_traceback(shift_nir: Case, far_away):
    code, text = run(shift_nir.ref, far_away, "--dry-run", "--debug")
    assert code == 4
    assert "Traceback" in text
    assert "do not overlap" in text


@pytest.mark.parametrize("fixture, expected_code, error_type", [
    ("constant", 5, "RegistrationError"),
    ("far_away", 4, "NoOverlapError"),
])
def test_failure_writes_failed_report(shift_nir: Case, tmp_path, request, fixture, expected_code, error_type):
    mov = request.getfixturevalue(fixture)
    rep, out = tmp_path / "report.json", tmp_path / "aligned.tif"
    code, text = run(shift_nir.ref, mov, "-o", out, "--report", rep)
    assert code == expected_code, text
    report = read_json(rep)
    assert report["schema"] == "dmreg.report/1"
    assert report["status"] == "failed"
    assert report["error"]["code"] == expected_code
    assert report["error"]["type"] == error_type
    assert report["error"]["message"] and report["error"]["message"] in text
    assert report["reference"]["path"] == str(shift_nir.ref)
    assert report["moving"]["path"] == str(mov)
    assert not out.exists()


def test_failure_report_for_unreadable_input(shift_nir: Case, tmp_path, truncated):
    rep = tmp_path / "report.json"
    code, text = run(shift_nir.ref, truncated, "--report", rep)
    assert code == 3, text
    report = read_json(rep)
    assert report["status"] == "failed"
    assert report["error"]["code"] == 3
