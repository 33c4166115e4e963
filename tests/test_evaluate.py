"""`dmreg evaluate`: metrics, manifests, the command end to end, and the warps of the
validation-set generator. Needs no ../shared data: images are cut from examples/data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmreg.errors import InputError, UsageError
from dmreg.evaluate import (WRONG_PX, EvalPair, MatcherSpec, PairResult, auc, load_manifest, median_error,
                            parse_matchers, select_pairs, success_rate, success_rates, summarise)
from dmreg.train.validation_pairs import WARPS, random_similarity, warp_moving
from dmreg_cli.main import app
from helpers import normalised, read_json, write_raster

INF = math.inf
OFFSET, SIZE = 40, 224      # the reference is the red band's [OFFSET:OFFSET+SIZE] square
DX, DY = 7, -5              # the moving crop starts (DX, DY) scene pixels from the reference crop
TRUE = [[1, 0, DX], [0, 1, DY], [0, 0, 1]]
WRONG = [[1, 0, DX + 20], [0, 1, DY], [0, 0, 1]]   # the truth off by 20 px


# --- metrics ---------------------------------------------------------------------------

def test_success_rates_count_errors_at_or_below_the_threshold_and_failures_never():
    errors = [0.2, 1.0, 2.9, 4.0, 12.0, INF]
    assert success_rate(errors, 1) == pytest.approx(2 / 6)
    assert success_rates(errors) == pytest.approx({1.0: 2 / 6, 3.0: 3 / 6, 5.0: 4 / 6, 10.0: 4 / 6})
    assert math.isnan(success_rate([], 3))


def test_median_error_with_failures():
    assert median_error([3.0, 1.0, 2.0]) == 2.0
    assert median_error([4.0, 1.0, 2.0, INF]) == 3.0      # (2 + 4) / 2
    assert median_error([1.0, 2.0, INF, INF]) == INF       # half failed: no finite median
    assert median_error([1.0, INF, INF]) == INF


def test_auc_is_the_exact_area_under_the_step_recall_curve():
    # each pair adds max(0, 10 - e) to the area: (10 + 5 + 0 + 0) / 4 / 10
    assert auc([0.0, 5.0, INF, 20.0]) == pytest.approx(0.375)
    assert auc([2.5]) == pytest.approx(0.75)
    assert auc([INF, INF]) == 0.0
    assert auc([0.0, 0.0]) == 1.0
    # the mean of SR(t) over t in [0, 10], by brute force
    errors = np.array([0.3, 1.7, 4.2, 9.9, 11.0, INF])
    t = np.linspace(0, 10, 200_001)
    curve = (errors[None, :] <= t[:, None]).mean(axis=1)
    assert auc(errors) == pytest.approx(np.trapezoid(curve, t) / 10, abs=1e-4)


def test_metrics_refuse_nan_and_negative_errors():
    with pytest.raises(ValueError, match="NaN"):
        auc([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-negative"):
        success_rate([-1.0], 3)


# --- manifests -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair_dir(l7, tmp_path_factory):
    """Reference = red crop, moving = SWIR2 crop starting (DX, DY) away: moving pixel p
    shows reference pixel p + (DX, DY). Plus a textureless moving image (no match)."""
    folder = tmp_path_factory.mktemp("evalpairs")
    red, swir2 = l7["bands"]["red"], l7["bands"]["swir2"]
    write_raster(folder / "red.tif", np.ascontiguousarray(red[OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE]))
    write_raster(folder / "swir2.tif",
                 np.ascontiguousarray(swir2[OFFSET + DY:OFFSET + DY + SIZE, OFFSET + DX:OFFSET + DX + SIZE]))
    write_raster(folder / "flat.tif", np.full((SIZE, SIZE), 90, np.uint8))
    return folder


def _json_manifest(folder, pairs, name="manifest.json"):
    (folder / name).write_text(json.dumps({"schema": "dmreg.pairs/1", "pairs": pairs}), encoding="utf-8")
    return folder / name


def _entry(name="a", **extra):
    entry = {"name": name, "reference": "red.tif", "moving": "swir2.tif", "modalities": "optical-swir",
             "matrix": TRUE}
    entry.update(extra)
    return {k: v for k, v in entry.items() if v is not None}


def test_csv_manifest_with_relative_paths_matrix_and_check_points(pair_dir, tmp_path):
    sub = tmp_path / "set"
    sub.mkdir()
    (sub / "points.csv").write_text("x_mov,y_mov,x_ref,y_ref\n10,20,17,15\n100.5,50,107.5,45\n", encoding="utf-8")
    rel = Path(os.path.relpath(pair_dir, sub)).as_posix()   # relative to the manifest's folder
    assert rel.startswith("..")
    (sub / "manifest.csv").write_text(
        "name,reference,moving,modalities,matrix,check_points,ref_band,truth_tolerance_px\n"
        f"grid,{rel}/red.tif,{rel}/swir2.tif,optical-swir,1 0 7  0 1 -5  0 0 1,,,\n"
        f"points,{pair_dir / 'red.tif'},{rel}/swir2.tif,optical-swir,,points.csv,1,2.5\n",
        encoding="utf-8")
    grid, points = load_manifest(sub)      # the folder: manifest.csv is found in it
    assert grid.reference == str((pair_dir / "red.tif").resolve())
    assert grid.moving == points.moving == str((pair_dir / "swir2.tif").resolve())
    assert grid.matrix == ((1, 0, 7), (0, 1, -5), (0, 0, 1)) and grid.check_points is None
    assert grid.ref_band is None and grid.truth_tolerance_px == 0.0
    x, y = grid.truth(np.array([0.0, 10.5]), np.array([0.0, 3.0]))
    assert x.tolist() == [7.0, 17.5] and y.tolist() == [-5.0, -2.0]
    assert points.matrix is None and points.ref_band == 1 and points.truth_tolerance_px == 2.5
    assert points.points().tolist() == [[10, 20, 17, 15], [100.5, 50, 107.5, 45]]
    with pytest.raises(ValueError, match="check points"):
        points.truth(np.zeros(1), np.zeros(1))


def test_json_manifest_homography_truth_and_metadata(pair_dir):
    h = [[1.0, 0.0, 2.0], [0.0, 2.0, 0.0], [0.001, 0.0, 1.0]]
    path = _json_manifest(pair_dir, [
        _entry("h", matrix=h, origin={"reference": "somewhere"}, warp={"angle_deg": 0}, mov_band=1),
        _entry("p", matrix=None, check_points=[[1, 2, 8, -3]]),
    ], name="homography.json")
    h_pair, p_pair = load_manifest(path)
    x, y = h_pair.truth(np.array([100.0]), np.array([50.0]))
    assert x[0] == pytest.approx(102 / 1.1) and y[0] == pytest.approx(100 / 1.1)
    assert h_pair.mov_band == 1 and json.loads(h_pair.origin) == {"reference": "somewhere"}
    assert p_pair.check_points == ((1, 2, 8, -3),)


@pytest.mark.parametrize("pairs, message", [
    ([_entry(matrix=[[1, 0, 0], [0, 1, 0]])], "matrix must be 9 numbers"),
    ([_entry(matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 0]])], "singular"),
    ([_entry(matrix=None)], "give the truth as matrix or as check_points"),
    ([_entry(check_points=[[1, 2, 3, 4]])], "not both"),
    ([_entry(modalities=None)], "modalities is required"),
    ([_entry(comment="x")], "unknown key(s) comment"),
    ([_entry(ref_band=0)], "ref_band must be a band number"),
    ([_entry("a"), _entry("a")], "used more than once: a"),
    ([], "lists no pairs"),
])
def test_bad_json_manifest_is_a_usage_error(pair_dir, tmp_path, pairs, message):
    path = _json_manifest(tmp_path, [{**p, "reference": str(pair_dir / p["reference"]),
                                      "moving": str(pair_dir / p["moving"])} for p in pairs])
    result = CliRunner().invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 2, result.output
    assert message in normalised(result.output)


@pytest.mark.parametrize("text, message", [
    ("name,reference,moving,matrix\na,red.tif,swir2.tif,1 0 0 0 1 0 0 0 1\n", "header lacks modalities"),
    ("name,reference,moving,modalities\na,red.tif,swir2.tif,o-s\n", "header lacks matrix or check_points"),
    ("name,reference,moving,modalities,matrix\na,red.tif,swir2.tif,o-s,1 0 0 0 1 0 0 0\n",
     "matrix must be 9 numbers"),
    ("name,reference,moving,modalities,matrix\na,red.tif,swir2.tif,o-s,1 0 0 0 1 0 0 0 x\n",
     "is not a list of numbers"),
    ("name,reference,moving,modalities,matrix,notes\na,red.tif,swir2.tif,o-s,1 0 0 0 1 0 0 0 1,hi\n",
     "unknown or repeated column(s) notes"),
])
def test_bad_csv_manifest_is_a_usage_error(pair_dir, text, message):
    path = pair_dir / "bad.csv"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 2, result.output
    assert message in normalised(result.output)


def test_missing_image_manifest_or_check_points_is_an_input_error(pair_dir, tmp_path):
    cases = [
        (_json_manifest(tmp_path, [_entry(moving=str(pair_dir / "nope.tif"), reference=str(pair_dir / "red.tif"))]),
         "moving image"),
        (tmp_path / "no-such-folder", "no such file or folder"),
        (tmp_path / "empty", "no manifest.json or manifest.csv"),
    ]
    (tmp_path / "empty").mkdir()
    points = tmp_path / "points.csv"
    points.write_text(f"name,reference,moving,modalities,check_points\na,{pair_dir / 'red.tif'},"
                      f"{pair_dir / 'swir2.tif'},o-s,missing.csv\n", encoding="utf-8")
    cases.append((points, "check-point file"))
    for path, message in cases:
        result = CliRunner().invoke(app, ["evaluate", str(path)])
        assert result.exit_code == 3, (path, result.output)
        assert message in normalised(result.output)
    with pytest.raises(InputError):
        load_manifest(tmp_path / "no-such-folder")


def test_matcher_specs_and_option_errors(pair_dir):
    assert parse_matchers(["structural", "distillmatch@v1.json", "distillmatch"], "shipped") == [
        MatcherSpec("structural", "shipped"), MatcherSpec("distillmatch", "v1.json"),
        MatcherSpec("distillmatch", "shipped")]
    assert MatcherSpec.parse("distillmatch@distillmatch-v0.2").label == "distillmatch@distillmatch-v0.2"
    for specs, message in ((["sift", "sift"], "more than once"), (["sift@"], "NAME@WEIGHTS"), ([""], "no matcher")):
        with pytest.raises(UsageError, match=message):
            parse_matchers(specs)
    _json_manifest(pair_dir, [_entry()], name="one.json")
    runner = CliRunner()
    for args, message in ((["--matcher", "sift", "--compare", "structural,sift"], "not both"),
                          (["--matcher", "nope"], "unknown matcher 'nope'"),
                          (["--limit", "0"], "--limit must be at least 1"),
                          (["--filter", "thermal"], "no pair of")):
        result = runner.invoke(app, ["evaluate", str(pair_dir / "one.json"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in normalised(result.output)


def test_select_pairs_filters_then_limits():
    def pair(name, modalities):
        return EvalPair(name, "r", "m", modalities, matrix=((1, 0, 0), (0, 1, 0), (0, 0, 1)))

    pairs = [pair("a-rot", "optical-sar"), pair("b", "optical-thermal"), pair("c-rot", "optical-THERMAL")]
    assert [p.name for p in select_pairs(pairs, "thermal")] == ["b", "c-rot"]
    assert [p.name for p in select_pairs(pairs, "ROT", limit=1)] == ["a-rot"]
    assert select_pairs(pairs, limit=5) == pairs


# --- end to end ------------------------------------------------------------------------

def test_evaluate_compares_matchers_and_measures_error_against_the_truth(pair_dir, tmp_path):
    (pair_dir / "points.csv").write_text("5,5,12,0\n200.5,10,207.5,5\n150,200,157,195\n", encoding="utf-8")
    (pair_dir / "manifest.csv").write_text(
        "name,reference,moving,modalities,matrix,check_points\n"
        f"red-swir2,red.tif,swir2.tif,optical-swir,{' '.join(str(v) for row in TRUE for v in row)},\n"
        "red-swir2-points,red.tif,swir2.tif,optical-swir,,points.csv\n"
        f"wrong-truth,red.tif,swir2.tif,optical-wrong,{' '.join(str(v) for row in WRONG for v in row)},\n"
        f"flat,red.tif,flat.tif,optical-flat,{' '.join(str(v) for row in TRUE for v in row)},\n",
        encoding="utf-8")
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["evaluate", str(pair_dir), "--compare", "structural,sift", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = read_json(out)
    assert doc["schema"] == "dmreg.evaluate/1" and doc["matchers"] == ["structural", "sift"]
    rows = {(r["matcher"], r["name"]): r for r in doc["pairs"]}
    assert len(rows) == 8
    good = rows["structural", "red-swir2"]
    print(f"structural red vs SWIR2: {good['error_px']:.3f} px (max {good['max_error_px']:.3f})")
    assert good["status"] == "ok" and good["exit_code"] == 0 and good["points"] == 100
    assert good["error_px"] < 0.5 and good["max_error_px"] < 1.0
    assert good["model"] and good["inliers"] >= 12 and good["time_s"] > 0
    assert rows["structural", "red-swir2-points"]["points"] == 3
    # the flags' evidence: CE90 for every estimate; the read-through probe for SIFT, not for structural
    assert 0 < good["predicted_ce90_px"] < 1.0 and good["probe_followed"] is None
    assert abs(rows["sift", "red-swir2"]["probe_followed"]) < 0.35
    assert rows["structural", "red-swir2-points"]["error_px"] < 0.5
    assert rows["structural", "wrong-truth"]["error_px"] == pytest.approx(20, abs=0.5)
    flat = rows["structural", "flat"]
    assert flat["status"] == "failed" and flat["exit_code"] == 5 and flat["error"] and flat["error_px"] is None

    summary = {(s["matcher"], s["modalities"]): s for s in doc["summary"]}
    swir = summary["structural", "optical-swir"]
    assert swir["pairs"] == 2 and swir["failures"] == 0
    assert swir["sr_1px"] == swir["sr_3px"] == 1.0 and swir["median_error_px"] < 0.5 and swir["auc_10px"] > 0.95
    wrong = summary["structural", "optical-wrong"]
    assert wrong["sr_10px"] == 0.0 and wrong["auc_10px"] == 0.0 and wrong["failures"] == 0
    assert wrong["wrong_ok_3px"] == 1 and wrong["flagged"] == 0 and swir["wrong_ok_3px"] == 0
    assert summary["structural", "optical-flat"]["failures"] == 1
    assert summary["structural", "optical-flat"]["median_error_px"] is None          # infinite
    total = summary["structural", "all"]
    assert total["pairs"] == 4 and total["failures"] == 1 and total["sr_3px"] == 0.5
    assert summary["sift", "optical-swir"]["sr_3px"] == 1.0                            # same modality enough
    # the table on stdout, one row per matcher and modality pair
    table = normalised(result.stdout)
    assert "optical-wrong" in table and "SR@3" in table and "AUC" in table and "sift" in table
    assert "flag" in table and "wrong" in table
    # the JSON output is not replaced without --overwrite
    again = CliRunner().invoke(app, ["evaluate", str(pair_dir), "--json", str(out), "--limit", "1"])
    assert again.exit_code == 6, again.output


def test_a_wrong_answer_is_one_beyond_what_its_truth_can_tell():
    """An ok pair counts as wrong when it is more than WRONG_PX off beyond its truth's
    tolerance; flagged and failed pairs never do."""
    rows = [PairResult("a", "m", "x", "ok", error_px=4.0), PairResult("b", "m", "x", "ok", error_px=4.0,
                                                                    truth_tolerance_px=2.5),
            PairResult("c", "m", "x", "ok", error_px=6.0, truth_tolerance_px=2.5),
            PairResult("d", "m", "x", "flagged", error_px=30.0), PairResult("e", "m", "x", "failed")]
    total = summarise(rows)[-1]
    assert (total.wrong_ok, total.flagged, total.failures) == (2, 1, 1)
    assert WRONG_PX == 3.0


def test_evaluate_scores_a_flagged_estimate_as_register_delivers_it(pair_dir, tmp_path):
    """An estimate register would flag (predicted error above --max-error: exit 9, no
    raster) is "flagged": its error is measured, but it scores as a failure."""
    (pair_dir / "manifest.csv").write_text(
        "name,reference,moving,modalities,matrix\n"
        f"red-swir2,red.tif,swir2.tif,optical-swir,{' '.join(str(v) for row in TRUE for v in row)}\n",
        encoding="utf-8")
    out, lifted = tmp_path / "flagged.json", tmp_path / "lifted.json"
    strict = CliRunner().invoke(app, ["evaluate", str(pair_dir), "--max-error", "1e-6", "--json", str(out)])
    assert strict.exit_code == 0, strict.output
    doc = read_json(out)
    row, total = doc["pairs"][0], doc["summary"][-1]
    assert row["status"] == "flagged" and row["exit_code"] == 9 and "--max-error 1e-06 px" in row["error"]
    assert row["error_px"] < 0.5                                   # measured all the same
    assert total["flagged"] == 1 and total["failures"] == 0 and total["wrong_ok_3px"] == 0
    assert total["sr_10px"] == 0.0 and total["median_error_px"] is None
    relaxed = CliRunner().invoke(app, ["evaluate", str(pair_dir), "--max-error", "inf", "--json", str(lifted)])
    assert relaxed.exit_code == 0, relaxed.output
    again = read_json(lifted)
    assert again["pairs"][0]["status"] == "ok" and again["summary"][-1]["sr_1px"] == 1.0
    assert again["options"]["max_error_px"] == "inf" and doc["options"]["max_error_px"] == 1e-6
    assert again["pairs"][0]["error_px"] == pytest.approx(row["error_px"])


# --- the validation-set generator's warps ----------------------------------------------

def test_warp_moving_integer_shift_is_a_crop():
    src = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    m = np.array([[1.0, 0, 3], [0, 1, -2], [0, 0, 1]])        # moving pixel p shows source pixel p + (3, -2)
    moved, valid = warp_moving(src, m)
    assert np.array_equal(moved[2:, :47], src[:38, 3:])
    assert valid[2:, :47].all() and not valid[:2].any() and not valid[:, 47:].any()


def test_warp_moving_uses_the_corner_pixel_convention():
    """A quarter turn about the image centre maps pixel centres onto pixel centres only
    if the half-pixel shift between dmreg's and OpenCV's conventions is right."""
    src = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    c = 16.0
    m = np.array([[0.0, -1, 2 * c], [1, 0, 0], [0, 0, 1]])     # rotation by 90 degrees about (c, c)
    assert (m @ [0.5, 0.5, 1.0])[:2].tolist() == [31.5, 0.5]  # moving pixel (0, 0) shows source pixel (31, 0)
    moved, valid = warp_moving(src, m)
    assert valid.all()
    assert np.allclose(moved, np.rot90(src, k=1), atol=1e-6)
    assert moved[0, 0] == src[0, 31]


def test_random_similarity_stays_in_its_range():
    for (variant, small), warp in WARPS.items():
        for seed in range(20):
            m, params = random_similarity(np.random.default_rng(seed), (120, 120) if small else (400, 300), warp)
            assert abs(params["angle_deg"]) <= warp.max_angle_deg
            assert warp.min_scale <= params["scale"] <= warp.max_scale
            assert warp.min_shift_px <= math.hypot(*params["shift_px"]) <= warp.max_shift_px + 1e-9
            scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))
            assert scale == pytest.approx(params["scale"])
