"""QA pictures, the batch overview sheet and `dmreg report`, on the shipped example pair."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from dmreg.errors import OutputExistsError
from dmreg.pipeline import RegisterOptions, estimate
from dmreg.qa import (DPI, QA_WIDTH_IN, SHEET_CAPTION_IN, SHEET_CELL_IN, SHEET_HEADER_IN, read_preview,
                      write_overview_sheet, write_qa_picture)
from dmreg_cli.main import app
from helpers import DATA, L7, Case, normalised, sha256

OFFSET_MOV = DATA / "L7_SWIR2_offset.tif"    # SWIR2 with its geotransform shifted by (+15.0, -9.5) px
RED = 3
FRAME_PX = 3000                              # red pixels of a failed cell's frame (a QA thumbnail has < 300)


@pytest.fixture(scope="module")
def example():
    return estimate(str(L7), str(OFFSET_MOV), RegisterOptions(ref_band=RED))


@pytest.fixture(scope="module")
def qa_png(example, tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "example.qa.png"
    write_qa_picture(example, path, ref_band=RED, title="example pair")
    return path


def assert_picture(path, width: int | None = None) -> np.ndarray:
    """The PNG opens, has the expected size order and is not blank."""
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    if width is not None:
        assert img.shape[1] == width
    assert 0.5 * img.shape[1] < img.shape[0] < 2 * img.shape[1], img.shape
    assert img[..., :3].std() > 0.1, "the picture is (nearly) blank"
    return img


def red_pixels(img: np.ndarray) -> np.ndarray:
    return (img[..., 0] > 0.7) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if "dmreg-tmp" in p.name]


# --- the QA picture -----------------------------------------------------------------------

def test_qa_picture_is_written(example, qa_png):
    assert example.selected.n_inliers == len(example.matches), "the example is expected to have no outliers"
    assert_picture(qa_png, width=int(QA_WIDTH_IN * DPI))
    assert leftovers(qa_png.parent) == []


def test_preview_agrees_after_correction(example):
    p = read_preview(example, ref_band=RED)
    assert max(p.ref.shape) <= 700
    assert p.ref_ok.mean() > 0.9

    def corr(mov, ok):
        both = p.ref_ok & ok
        return float(np.corrcoef(p.ref[both], mov[both])[0, 1])

    before, after = corr(p.before, p.before_ok), corr(p.after, p.after_ok)
    assert after > 0.5 and before < 0.4, f"correlation with the reference: before {before:.2f}, after {after:.2f}"
    # the raw georeferencing leaves a 15 px strip of the reference uncovered; the correction fills it
    assert (~p.before_ok).mean() > (~p.after_ok).mean() + 0.02


def test_qa_picture_refuses_overwrite(example, qa_png, tmp_path):
    target = tmp_path / "qa.png"
    shutil.copyfile(qa_png, target)
    before = sha256(target)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_qa_picture(example, target, ref_band=RED)
    assert sha256(target) == before
    write_qa_picture(example, target, ref_band=RED, mov_band=1, overwrite=True)
    assert_picture(target)
    assert leftovers(tmp_path) == []


def test_qa_picture_in_pixel_space(l7, tmp_path):
    """Two plain PNG crops (no georeferencing), 7 px apart."""
    ref_path, mov_path = tmp_path / "red.png", tmp_path / "nir.png"
    assert cv2.imwrite(str(ref_path), l7["bands"]["red"][24:312, 24:312])
    assert cv2.imwrite(str(mov_path), l7["bands"]["nir"][19:307, 31:319])
    result = estimate(str(ref_path), str(mov_path))
    assert not result.ref.georeferenced
    write_qa_picture(result, tmp_path / "qa.png")
    assert_picture(tmp_path / "qa.png")


def test_qa_picture_other_crs_with_nodata(crs_swir2: Case, tmp_path):
    result = estimate(str(crs_swir2.ref), str(crs_swir2.mov))
    assert not result.georef.same_crs and result.mov.nodata == 0
    write_qa_picture(result, tmp_path / "qa.png")
    assert_picture(tmp_path / "qa.png")


# --- the overview sheet -------------------------------------------------------------------

def make_summary(folder, qa_png) -> dict:
    """A batch summary (schema dmreg.batch/1) in ``folder``: an ok pair with a QA picture,
    an ok pair whose QA picture is missing, and a failed pair."""
    shutil.copyfile(qa_png, folder / "scene_a.qa.png")

    def ok(name):
        return {"pair": name, "reference": str(L7), "moving": str(OFFSET_MOV), "status": "ok", "exit_code": 0,
                "model": "translation", "rmse_px": 0.27, "inliers": 122, "matches": 122, "time_s": 0.6,
                "error": None, "outputs": {"raster": f"{name}.tif", "report": f"{name}.report.json",
                                           "tiepoints": f"{name}.tiepoints.geojson", "qa": f"{name}.qa.png"}}

    failed = {"pair": "scene_c", "reference": str(L7), "moving": "/data/c.tif", "status": "failed", "exit_code": 5,
              "model": None, "rmse_px": None, "inliers": None, "matches": None, "time_s": 0.3,
              "error": "only 3 matches were found (at least 12 needed) [Errno 0]", "outputs": {}}
    return {"schema": "dmreg.batch/1", "dmreg_version": "0.1.0", "started": "2026-11-26T08:00:00+00:00",
            "finished": "2026-11-26T08:01:05+00:00", "out": str(folder), "executor": "local", "workers": 2,
            "counts": {"ok": 2, "skipped": 0, "failed": 1, "not run": 0},
            "pairs": [ok("scene_a"), ok("scene_b"), failed]}


def test_overview_sheet(qa_png, tmp_path):
    summary = make_summary(tmp_path, qa_png)
    sheet = tmp_path / "overview.png"
    write_overview_sheet(summary, tmp_path, sheet)
    img = imread(sheet)[..., :3]
    assert img.shape[:2] == (round((SHEET_HEADER_IN + SHEET_CELL_IN + SHEET_CAPTION_IN) * DPI),
                             round(3 * SHEET_CELL_IN * DPI))
    cell = img[round(SHEET_HEADER_IN * DPI):round((SHEET_HEADER_IN + SHEET_CELL_IN) * DPI)]
    width = round(SHEET_CELL_IN * DPI)
    assert cell[:, :width].std() > 0.1, "the ok pair's QA picture is not on the sheet"
    red = red_pixels(cell)
    assert red[:, 2 * width:].sum() > FRAME_PX, "the failed pair has no red frame"
    assert red[:, :2 * width].sum() < FRAME_PX / 3
    with pytest.raises(OutputExistsError):
        write_overview_sheet(summary, tmp_path, sheet)
    assert leftovers(tmp_path) == []


def test_overview_sheet_caps_pairs_keeping_failed(qa_png, tmp_path):
    summary = make_summary(tmp_path, qa_png)
    summary["pairs"] = summary["pairs"][:1] * 9 + summary["pairs"][2:]
    sheet = tmp_path / "overview.png"
    write_overview_sheet(summary, tmp_path, sheet, max_pairs=4)
    img = imread(sheet)[..., :3]
    assert img.shape[0] == round((SHEET_HEADER_IN + SHEET_CELL_IN + SHEET_CAPTION_IN) * DPI), "one row of four"
    cell = img[round(SHEET_HEADER_IN * DPI):round((SHEET_HEADER_IN + SHEET_CELL_IN) * DPI)]
    assert red_pixels(cell).sum() > FRAME_PX, "the failed pair, last in the summary, was left out"


# --- dmreg report ---------------------------------------------------------------------------

def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["report", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, normalised(result.output)


@pytest.fixture
def summary_file(qa_png, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(make_summary(tmp_path, qa_png)), encoding="utf-8")
    return path


def test_report_prints_the_table(summary_file):
    code, text = run(summary_file)
    assert code == 0, text
    for fragment in ("2 ok", "1 failed", "scene_a", "scene_c", "translation", "0.270", "122/122",
                     "only 3 matches", "[Errno 0]"):
        assert fragment in text, fragment


def test_report_writes_the_sheet_quietly(summary_file, tmp_path):
    sheet = tmp_path / "sheet.png"
    code, text = run(summary_file, "-o", sheet, "-q")
    assert code == 0, text
    assert text == ""
    assert imread(sheet)[..., :3].std() > 0.1


def test_report_refuses_to_overwrite_the_sheet(summary_file, tmp_path):
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"not a png")
    code, text = run(summary_file, "-o", sheet)
    assert code == 6, text
    assert "--overwrite" in text and "Traceback" not in text
    assert sheet.read_bytes() == b"not a png"
    code, text = run(summary_file, "-o", sheet, "--overwrite", "-q")
    assert code == 0, text
    assert imread(sheet).shape[0] > 100


@pytest.mark.parametrize("content, fragment", [
    ('{"schema": "dmreg.batch/1", "pairs": [', "not valid JSON"),
    ('{"schema": "dmreg.report/1", "status": "ok"}', "not a dmreg batch summary"),
    ('[1, 2]', "not a dmreg batch summary"),
    ('{"schema": "dmreg.batch/1", "pairs": {}}', "'pairs' must be a list"),
    (None, "no such file"),
])
def test_report_exit_3_on_a_bad_summary(tmp_path, content, fragment):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, text = run(path, "-o", tmp_path / "sheet.png")
    assert code == 3, text
    assert fragment in text and "error:" in text and "Traceback" not in text
    assert not (tmp_path / "sheet.png").exists()
