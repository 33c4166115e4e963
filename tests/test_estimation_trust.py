"""Estimation you can trust, end to end on real imagery: no consensus by chance, the local
model, uncertainty, the --max-error flag and the orientation search.

Cases are made from bands of the sample scenes (co-registered by their provider), so
every truth is the resampling the test applies itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from dmreg.errors import RegistrationError
from dmreg.geometry.mapping import check_points
from dmreg.pipeline import RegisterOptions, estimate
from dmreg_cli.main import app
from helpers import DATA, L7, L7_BANDS, normalised, read_json, write_raster

RGBN = DATA / "rgbn.tif"  # red, green, blue, NIR


def band(path: Path, index: int) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(index).astype(np.float32)


def resampled(source: np.ndarray, to_source, size: tuple[int, int]) -> np.ndarray:
    """The image whose pixel (x, y) shows ``source`` at ``to_source(x, y)`` (pixel
    centres), 0 (nodata) outside it: the moving raster of a case whose truth is to_source."""
    xs, ys = np.meshgrid(np.arange(size[0]) + 0.5, np.arange(size[1]) + 0.5)
    sx, sy = to_source(xs, ys)
    out = cv2.remap(source, (sx - 0.5).astype(np.float32), (sy - 0.5).astype(np.float32), cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.clip(out, 1, 255)  # 0 stays the nodata value, outside the source only


def errors_against(result, truth, size: tuple[int, int], valid=None) -> np.ndarray:
    x, y = check_points(*size, n=15)
    ex, ey = result.mapping.apply(x, y)
    tx, ty = truth(x, y)
    keep = np.ones(len(x), bool) if valid is None else valid(tx, ty)
    return np.hypot(ex - tx, ey - ty)[keep]


def rotation_about(angle_deg: float, centre: tuple[float, float], shift: tuple[float, float], mirrored=False):
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    mx = -1.0 if mirrored else 1.0

    def to_ref(x, y):
        u, v = mx * (np.asarray(x, float) - 150.0), np.asarray(y, float) - 150.0
        return c * u - s * v + centre[0] + shift[0], s * u + c * v + centre[1] + shift[1]
    return to_ref


def rotated_case(tmp_path: Path, angle_deg: float, mirrored: bool = False):
    """Reference: rgbn red (pixel space). Moving: rgbn NIR, 300 x 300 px, rotated by
    ``angle_deg`` (and mirrored) about (150, 150), then shifted a few pixels: the
    corners it rotates out of the reference are nodata."""
    red, nir = band(RGBN, 1), band(RGBN, 4)
    truth = rotation_about(angle_deg, (150.0, 150.0), (6.3, -4.2), mirrored)
    ref = write_raster(tmp_path / "ref.tif", red.astype(np.uint8))
    mov = write_raster(tmp_path / f"mov_{angle_deg:g}_{int(mirrored)}.tif",
                       resampled(nir, truth, (300, 300)).astype(np.uint8), nodata=0)
    return ref, mov, truth


@pytest.mark.parametrize("angle", [0.0, 137.0, 250.0])
def test_rotated_pixel_space_pair_registers_with_the_structural_matcher(tmp_path, angle):
    ref, mov, truth = rotated_case(tmp_path, angle)
    result = estimate(str(ref), str(mov), RegisterOptions())
    orientation = result.coarse["orientation"]
    assert orientation["of"] == 24
    if angle == 0.0:  # upright: the first orientation tried dominates, and ends the search
        assert orientation["tried"] == 1 and orientation["angle_deg"] == 0.0
    err = errors_against(result, truth, (300, 300))
    assert err.max() <= 1.0, (angle, result.coarse, err.max())


def test_rotated_pixel_space_pair_registers_with_distillmatch(tmp_path, one_torch_thread):
    ref, mov, truth = rotated_case(tmp_path, 200.0)
    result = estimate(str(ref), str(mov), RegisterOptions(matcher="distillmatch"))
    assert result.coarse["orientation"]["of"] == 8
    assert errors_against(result, truth, (300, 300)).max() <= 1.0, result.coarse


def test_mirrored_pair_needs_and_gets_flip(tmp_path):
    ref, mov, truth = rotated_case(tmp_path, 30.0, mirrored=True)
    result = estimate(str(ref), str(mov), RegisterOptions(flip=True))
    assert result.coarse["orientation"]["mirrored"] is True
    assert errors_against(result, truth, (300, 300)).max() <= 1.0


def test_georeferenced_pairs_skip_the_orientation_search(shift_nir):
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), RegisterOptions())
    assert "orientation" not in result.coarse


# --- no consensus by chance -------------------------------------------------------------------------

def test_unrelated_images_fail_instead_of_registering(tmp_path):
    """Two different places (L7 and rgbn, both real): whatever the matcher returns can
    only agree by chance, so registration must fail (exit 5), never report ok."""
    l7_red = band(L7, L7_BANDS["red"])
    other = cv2.resize(band(RGBN, 2), (l7_red.shape[1], l7_red.shape[0]), interpolation=cv2.INTER_AREA)
    ref = write_raster(tmp_path / "ref.tif", l7_red.astype(np.uint8))
    mov = write_raster(tmp_path / "mov.tif", other.astype(np.uint8))
    with pytest.raises(RegistrationError):
        estimate(str(ref), str(mov), RegisterOptions(rotation_search=False))


def test_report_says_how_meaningful_and_how_predictive_each_model_is(shift_nir, tmp_path):
    report = tmp_path / "r.json"
    code = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "--report", str(report)])
    assert code.exit_code == 0, code.output
    r = read_json(report)
    models = r["models"]
    chosen = [k for k, m in models.items() if m["chosen"]]
    assert chosen == [r["model"]["type"]]
    for kind in ("translation", "affine"):
        assert models[kind]["log10_nfa"] < -10 and models[kind]["meaningful"] is True
        assert models[kind]["cv_rmse_px"] > 0 and models[kind]["cv_se_px"] >= 0
    assert r["quality"]["predicted_ce90_px"] == r["uncertainty"]["predicted_ce90_px"] > 0
    assert len(r["uncertainty"]["check_grid_error_px"]) == len(r["model"]["check_grid"])


# --- local model ------------------------------------------------------------------------------------

def bumps(x, y, shift=(2.2, -1.4)):
    """Two Gaussian bumps of 2.5 px (sigma 55 px) over a shift: local misregistration."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = 2.5 * np.exp(-((x - 130) ** 2 + (y - 120) ** 2) / (2 * 55.0 ** 2))
    dy = -2.5 * np.exp(-((x - 380) ** 2 + (y - 280) ** 2) / (2 * 55.0 ** 2))
    return x + shift[0] + dx, y + shift[1] + dy


@pytest.fixture(scope="module")
def local_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    red, green = band(RGBN, 1), band(RGBN, 2)
    size = (red.shape[1], red.shape[0])
    ref = write_raster(folder / "ref.tif", red.astype(np.uint8))
    mov = write_raster(folder / "mov.tif", resampled(green, bumps, size).astype(np.uint8), nodata=0)
    return ref, mov, size


def inside(size, margin=12):
    return lambda tx, ty: (tx > margin) & (tx < size[0] - margin) & (ty > margin) & (ty < size[1] - margin)


def test_local_model_recovers_a_known_field_no_global_model_can(local_case):
    ref, mov, size = local_case
    rms, worst = {}, {}
    for model in ("affine", "polynomial2", "local"):
        result = estimate(str(ref), str(mov), RegisterOptions(model=model, rotation_search=False))
        err = errors_against(result, bumps, size, inside(size))
        rms[model], worst[model] = float(np.sqrt(np.mean(err ** 2))), float(err.max())
    assert rms["local"] <= 0.3 and worst["local"] <= 0.6, (rms, worst)
    assert worst["affine"] > 1.5 and worst["polynomial2"] > 1.5, worst  # the bumps are 2.5 px


def test_auto_picks_the_local_model_when_it_predicts_better(local_case):
    ref, mov, size = local_case
    result = estimate(str(ref), str(mov), RegisterOptions(rotation_search=False))
    assert result.selected.kind == "local", {k: v.rmse_px for k, v in result.scores.items()}
    assert result.scores["local"].rmse_px < min(v.rmse_px for k, v in result.scores.items() if k != "local")


def test_no_local_signal_means_no_local_model(shift_nir):
    result = estimate(str(shift_nir.ref), str(shift_nir.mov), RegisterOptions())
    assert result.selected.kind != "local"


# --- uncertainty ------------------------------------------------------------------------------------

def test_uncertainty_grows_when_tiles_are_removed(shift_nir):
    ce90 = {}
    for tiles in (16, 3):
        result = estimate(str(shift_nir.ref), str(shift_nir.mov),
                          RegisterOptions(tile_size=96, tile_overlap=0, max_tiles=tiles, model="similarity"))
        ce90[tiles] = result.uncertainty.ce90_px
        assert result.uncertainty.error_px.shape == (100,)
    assert 0 < ce90[16] < ce90[3], ce90


def test_max_error_flags_register_with_exit_9_and_writes_no_raster(shift_nir, tmp_path):
    out, report = tmp_path / "out.tif", tmp_path / "report.json"
    result = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out),
                                      "--report", str(report), "--max-error", "0.0001"])
    assert result.exit_code == 9, result.output
    assert "exceeds --max-error" in normalised(result.output)
    assert not out.exists()
    r = read_json(report)
    assert r["status"] == "flagged" and "exceeds --max-error" in r["flag"]
    assert r["quality"]["predicted_ce90_px"] > 0.0001


def test_max_error_passes_an_accurate_result(shift_nir, tmp_path):
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out),
                                      "--max-error", "2"])
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_without_max_error_the_default_limit_in_working_pixels_flags(shift_nir, tmp_path, monkeypatch):
    """The default limit applies when --max-error is not given; --max-error inf lifts it."""
    import dmreg.pipeline

    monkeypatch.setattr(dmreg.pipeline, "DEFAULT_MAX_ERROR_WORKING_PX", 1e-4)
    out = tmp_path / "out.tif"
    flagged = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out)])
    assert flagged.exit_code == 9, flagged.output
    assert "exceeds the default limit of 0.0001 working pixels" in normalised(flagged.output)
    assert not out.exists()
    accepted = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out),
                                        "--max-error", "inf"])
    assert accepted.exit_code == 0, accepted.output
    assert out.exists()


def test_a_weak_consensus_is_flagged_whatever_its_predicted_error(shift_nir, tmp_path, monkeypatch):
    """A model whose consensus chance alone could give (NFA above MIN_EVIDENCE_LOG10_NFA,
    made strict here) is flagged even within --max-error; --max-error inf writes it."""
    import dmreg.pipeline

    result = estimate(str(shift_nir.ref), str(shift_nir.mov), RegisterOptions())
    nfa = result.fits[result.selected.kind].consensus.log10_nfa
    assert dmreg.pipeline.predicted_error_flag(result, RegisterOptions()) is None
    monkeypatch.setattr(dmreg.pipeline, "MIN_EVIDENCE_LOG10_NFA", nfa - 1)
    reason = dmreg.pipeline.predicted_error_flag(result, RegisterOptions(max_error_px=5.0))
    assert reason and reason.startswith("the evidence is weak") and f"10^{nfa:.1f}" in reason
    assert dmreg.pipeline.predicted_error_flag(result, RegisterOptions(max_error_px=math.inf)) is None
    out, report = tmp_path / "out.tif", tmp_path / "report.json"
    flagged = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out),
                                       "--report", str(report), "--max-error", "5"])
    assert flagged.exit_code == 9, flagged.output
    assert "evidence is weak" in read_json(report)["flag"] and not out.exists()
    written = CliRunner().invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out),
                                       "--max-error", "inf"])
    assert written.exit_code == 0, written.output
    assert out.exists()


@pytest.fixture(scope="module")
def central_patch(l7, tmp_path_factory) -> tuple[Path, Path]:
    """The red band against itself shifted by (2.3, -1.7) px, textured only within 50 px
    of the centre: every match lies in a 100 px patch of the 349 x 352 px overlap."""
    red = l7["bands"]["red"].astype(np.float32)
    h, w = red.shape
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    moving = cv2.remap(red, (xs - 0.5 + 2.3).astype(np.float32), (ys - 0.5 - 1.7).astype(np.float32),
                       cv2.INTER_CUBIC)
    patch = (np.abs(xs - w / 2) < 50) & (np.abs(ys - h / 2) < 50)
    moving = np.clip(np.where(patch, moving, np.median(moving)), 1, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("patch")
    ref = write_raster(folder / "ref.tif", l7["bands"]["red"], crs=l7["crs"], transform=l7["transform"])
    return ref, write_raster(folder / "mov.tif", moving, crs=l7["crs"], transform=l7["transform"])


def test_inliers_from_a_small_patch_of_the_overlap_are_flagged_as_unknown(central_patch, tmp_path):
    """Matches within 100 px of a 350 px overlap are one block of evidence, whatever the
    cells of their own bounding box say: the error is unknown, the result flagged with
    where the inliers lie, and --max-error inf writes it."""
    ref, mov = central_patch
    out, report = tmp_path / "out.tif", tmp_path / "report.json"
    flagged = CliRunner().invoke(app, ["register", str(ref), str(mov), "-o", str(out), "--report", str(report)])
    assert flagged.exit_code == 9, flagged.output
    flag = read_json(report)["flag"]
    assert flag.startswith("the predicted error is unknown") and "1 independent block(s)" in flag, flag
    assert read_json(report)["uncertainty"]["blocks"] == 1 and not out.exists()
    written = CliRunner().invoke(app, ["register", str(ref), str(mov), "-o", str(out), "--max-error", "inf"])
    assert written.exit_code == 0, written.output
    assert out.exists()


def test_a_local_model_is_judged_by_the_consensus_of_its_base(local_case, monkeypatch):
    import dmreg.pipeline

    ref, mov, _ = local_case
    result = estimate(str(ref), str(mov), RegisterOptions(model="local"))
    base = result.selected.transform.base.kind
    assert result.selected.consensus is None and result.fits[base].consensus is not None
    monkeypatch.setattr(dmreg.pipeline, "MIN_EVIDENCE_LOG10_NFA", result.fits[base].consensus.log10_nfa - 1)
    assert f"on the {base} model" in dmreg.pipeline.predicted_error_flag(result, RegisterOptions())


def test_batch_flags_pairs_above_max_error(shift_nir, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    (incoming / "nir.tif").write_bytes(Path(shift_nir.mov).read_bytes())
    out = tmp_path / "aligned"
    result = CliRunner().invoke(app, ["batch", str(incoming), "--reference", str(shift_nir.ref), "--out", str(out),
                                      "--max-error", "0.0001"])
    assert result.exit_code == 8, result.output
    summary = read_json(out / "summary.json")
    pair = summary["pairs"][0]
    assert pair["status"] == "flagged" and pair["exit_code"] == 9 and "max-error" in pair["error"]
    assert summary["counts"]["flagged"] == 1
    assert not (out / "nir.tif").exists()
    assert read_json(out / "nir.report.json")["status"] == "flagged"
    assert (out / "nir.qa.png").exists()
    # a rerun does not take a flagged pair for a complete one
    again = CliRunner().invoke(app, ["batch", str(incoming), "--reference", str(shift_nir.ref), "--out", str(out),
                                     "--max-error", "5"])
    assert again.exit_code == 0, again.output
    assert read_json(out / "summary.json")["pairs"][0]["status"] == "ok"
    assert (out / "nir.tif").exists()


def test_no_resample_writes_the_local_field_as_gcps_a_thin_plate_spline_follows(local_case, tmp_path):
    from rasterio.transform import GCPTransformer

    ref, mov, size = local_case
    out = tmp_path / "copy.tif"
    result = CliRunner().invoke(app, ["register", str(ref), str(mov), "-o", str(out), "--no-resample",
                                      "--model", "local", "--no-rotation-search"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        gcps, _ = ds.gcps
    assert len(gcps) == 40 * 40
    rng = np.random.default_rng(0)
    x, y = rng.uniform(30, size[0] - 30, 200), rng.uniform(30, size[1] - 30, 200)
    with GCPTransformer(gcps, tps=True) as spline:
        gx, gy = spline.xy(y, x, offset="ul")
    tx, ty = bumps(x, y)
    assert float(np.max(np.hypot(np.asarray(gx) - tx, np.asarray(gy) - ty))) <= 0.6
