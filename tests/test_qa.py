"""QA pictures, the batch overview sheet and `dmreg report`, on the shipped example pair."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import cv2
import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from matplotlib.quiver import Quiver
from typer.testing import CliRunner

from dmreg.errors import OutputExistsError
from dmreg.estimate.local import fit_local
from dmreg.estimate.robust import summarise_fit
from dmreg.estimate.uncertainty import Uncertainty
from dmreg.pipeline import RegisterOptions, estimate
from dmreg.batch.sheet import SHEET_CAPTION_IN, SHEET_CELL_IN, SHEET_HEADER_IN, write_overview_sheet
from dmreg.qa import (DPI, ERROR_CMAP, ERROR_PANEL, FIELD_COLOUR, QA_WIDTH_IN, UNKNOWN_COLOURS, qa_figure,
                      read_preview, write_qa_picture)
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
    inliers, residual = example.selected.inliers, example.residuals_px()
    assert inliers.sum() >= 0.8 * len(example.matches), "the example's matches are mostly inliers"
    assert residual[~inliers].min(initial=np.inf) >= residual[inliers].max(), "inliers are the closest matches"
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


# --- the predicted error panel -----------------------------------------------------------

BUMP_PX = 3.0      # the artificial local shift (x) added to the reference positions of the matches
BUMP_SIGMA = 50.0  # its width, reference pixels


@pytest.fixture(scope="module")
def preview(example):
    return read_preview(example, ref_band=RED)


@pytest.fixture(scope="module")
def local_result(example):
    """The example with a local model fitted to its matches plus a Gaussian bump in x."""
    src, dst = example.matches.pred_px, example.matches.ref_px.copy()
    centre = dst.mean(axis=0)
    dst[:, 0] += BUMP_PX * np.exp(-((dst - centre) ** 2).sum(axis=1) / (2 * BUMP_SIGMA ** 2))
    model = fit_local(example.selected.transform, src, dst)
    assert np.abs(model.dx).max() > 1.0, "the bump should give a local field"
    fit = summarise_fit(model, src, dst, threshold=1.5)
    return dataclasses.replace(example, correction=model, selected=fit)


def with_errors(result, error_px: np.ndarray, ce90: float):
    return dataclasses.replace(result, uncertainty=Uncertainty(error_px, ce90, 100, 9))


def rendered(fig) -> np.ndarray:
    """The figure as an RGB float image, rows top to bottom."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def panel(img: np.ndarray, ax, inset: int = 3) -> np.ndarray:
    """The pixels inside an axes' frame (display coordinates start at the bottom)."""
    box = ax.get_window_extent()
    rows = img.shape[0]
    return img[round(rows - box.y1) + inset:round(rows - box.y0) - inset, round(box.x0) + inset:round(box.x1) - inset]


def error_axes(fig):
    (ax,) = [ax for ax in fig.axes if ax.get_label() == ERROR_PANEL]
    return ax


def image_panels(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def saturation(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=-1) - pixels.min(axis=-1)


def colormap_position(pixels: np.ndarray) -> np.ndarray:
    """Where on the error colour map (0..1) each pixel's colour is nearest."""
    lut = colormaps[ERROR_CMAP](np.linspace(0, 1, 256))[:, :3]
    d = ((pixels.reshape(-1, 1, 3) - lut[None]) ** 2).sum(axis=-1)
    return (d.argmin(axis=1) / 255.0).reshape(pixels.shape[:-1])


def test_qa_figure_has_the_predicted_error_panel(example, preview):
    assert example.uncertainty is not None and math.isfinite(example.uncertainty.ce90_px)
    fig = qa_figure(example, preview, title="example pair", ref_band=RED)
    panels = image_panels(fig)
    assert [ax.get_title()[:3] for ax in panels] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    assert len(fig.axes) == len(panels) + 1, "the error panel has a colour bar"
    ax = error_axes(fig)
    predicted = f"predicted CE90 {example.uncertainty.ce90_px:.2f} px"
    assert predicted in ax.get_title()
    assert predicted in fig.get_suptitle() and "RMSE" in fig.get_suptitle()
    img = rendered(fig)
    error, ties = panel(img, ax), panel(img, panels[3])
    assert saturation(error).mean() > 0.2 > saturation(ties).mean() + 0.1, "the error map is not in colour"
    # the translation's expected error is nearly uniform: the panel shows its colour, low on a 0.5 px scale
    expected = np.median(example.uncertainty.error_px) / 0.5
    assert abs(float(np.median(colormap_position(error))) - expected) < 0.05


def test_error_map_follows_the_check_grid(example, preview):
    """Errors rising left to right, the top three check-grid rows unknown."""
    error_px = np.tile(np.linspace(0.1, 2.0, 10), 10)
    error_px[:30] = math.inf
    fig = qa_figure(with_errors(example, error_px, math.inf), preview, ref_band=RED)
    ax = error_axes(fig)
    assert "predicted error unknown" in ax.get_title() and "predicted error unknown" in fig.get_suptitle()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["unknown"]
    pixels = panel(rendered(fig), ax)
    top, bottom = pixels[:pixels.shape[0] // 5], pixels[pixels.shape[0] // 2:]
    assert saturation(top).max() < 0.05, "the unknown area is not grey"
    for grey in UNKNOWN_COLOURS:
        assert (np.abs(top - grey).max(axis=-1) < 0.03).mean() > 0.2, "the unknown area is not hatched"
    position = colormap_position(bottom).mean(axis=0)
    columns = np.arange(len(position))
    assert np.corrcoef(columns, position)[0, 1] > 0.98
    assert position[:5].mean() < 0.15 and position[-5:].mean() > 0.85


def test_qa_picture_with_all_errors_unknown(example, tmp_path):
    result = with_errors(example, np.full(100, math.inf), math.inf)
    write_qa_picture(result, tmp_path / "qa.png", ref_band=RED)
    img = assert_picture(tmp_path / "qa.png")
    assert img.shape[1] == int(QA_WIDTH_IN * DPI)


def test_qa_figure_without_uncertainty(example, preview):
    fig = qa_figure(dataclasses.replace(example, uncertainty=None), preview, ref_band=RED)
    ax = error_axes(fig)
    assert len(image_panels(fig)) == 5 and len(fig.axes) == 5, "no colour bar without an estimate"
    assert "no uncertainty estimate" in ax.get_title() and "no uncertainty estimate" in fig.get_suptitle()
    assert [t.get_text() for t in ax.texts] == ["no uncertainty estimate"]
    assert saturation(panel(rendered(fig), ax)).mean() < 0.02, "a map was drawn without an estimate"


def test_qa_figure_shows_the_local_field(example, local_result, preview, tmp_path):
    fig = qa_figure(local_result, preview, ref_band=RED)
    ax = error_axes(fig)
    (arrows,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert arrows.get_label().startswith("local correction x")
    assert arrows.get_label() in [t.get_text() for t in ax.get_legend().get_texts()]
    length = np.hypot(arrows.U, arrows.V)
    assert length.max() > 5, "the arrows are too short to see (preview pixels)"
    # the largest arrows point +x, near the bump
    big = length > 0.5 * length.max()
    assert (arrows.U[big] > 0).all() and np.abs(arrows.V[big]).max() < 0.3 * length.max()
    tails = arrows.get_offsets()[big]
    grid = preview.grid
    bump = (local_result.matches.ref_px.mean(axis=0) - (grid.x0, grid.y0)) / grid.scale
    assert np.hypot(*(tails - bump).T).max() < 2.5 * BUMP_SIGMA / grid.scale

    def pink(f) -> int:
        pixels = panel(rendered(f), error_axes(f))
        return int((np.abs(pixels - to_rgb(FIELD_COLOUR)).max(axis=-1) < 0.1).sum())

    assert pink(fig) > 50 and pink(qa_figure(example, preview, ref_band=RED)) == 0
    write_qa_picture(local_result, tmp_path / "qa.png", ref_band=RED)
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
