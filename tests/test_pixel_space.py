"""Two plain images (PNG, no georeferencing) register in pixel space, with a warning."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from typer.testing import CliRunner

from dmreg.pipeline import OutputOptions, RegisterOptions, register
from dmreg_cli.main import app
from helpers import check_grid_errors, normalised, read_json

OFFSET = 24          # crop origin of the reference in the scene
SIZE = 288           # both images are SIZE x SIZE
DX, DY = 7, -5       # the moving crop starts (DX, DY) scene pixels from the reference crop
MAX_ERROR_PX = 0.5


def truth(x, y):
    """Moving pixel p shows scene pixel p + OFFSET + (DX, DY), which is reference pixel p + (DX, DY)."""
    return np.asarray(x, float) + DX, np.asarray(y, float) + DY


@pytest.fixture(scope="module")
def plain_pair(l7, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    red, nir = l7["bands"]["red"], l7["bands"]["nir"]
    ref = red[OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE]
    mov = nir[OFFSET + DY:OFFSET + DY + SIZE, OFFSET + DX:OFFSET + DX + SIZE]
    assert ref.shape == mov.shape == (SIZE, SIZE)
    ref_path, mov_path = folder / "red.png", folder / "nir.png"
    assert cv2.imwrite(str(ref_path), ref) and cv2.imwrite(str(mov_path), mov)
    return ref_path, mov_path, nir


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.crs, ds.transform, ds.gcps[0], ds.read(1), ds.read_masks(1) > 0, (ds.width, ds.height)


def test_library_registers_plain_images(plain_pair, tmp_path):
    ref, mov, _ = plain_pair
    rep = tmp_path / "report.json"
    result = register(str(ref), str(mov), RegisterOptions(), OutputOptions(report=str(rep)))
    assert any("pixel space" in w for w in result.warnings), result.warnings
    report = read_json(rep)
    assert report["status"] == "ok"
    assert report["reference"]["crs"] is None and report["moving"]["crs"] is None
    assert any("pixel space" in w for w in report["warnings"])
    errors, inside = check_grid_errors(report["model"]["check_grid"], truth, (SIZE, SIZE))
    assert inside.sum() >= 80
    print(f"pixel space: {report['model']['type']}, max error {errors.max():.3f} px")
    assert errors.max() < MAX_ERROR_PX, f"max error {errors.max():.3f} px with {report['model']['type']}"


def test_cli_registers_plain_images_and_writes_without_crs(plain_pair, tmp_path):
    ref, mov, nir = plain_pair
    out, rep, tie = tmp_path / "aligned.tif", tmp_path / "report.json", tmp_path / "tie.geojson"
    result = CliRunner().invoke(app, ["register", str(ref), str(mov), "-o", str(out), "--report", str(rep),
                                      "--tiepoints", str(tie)])
    assert result.exit_code == 0, result.output
    assert "pixel space" in normalised(result.output)
    errors, _ = check_grid_errors(read_json(rep)["model"]["check_grid"], truth, (SIZE, SIZE))
    assert errors.max() < MAX_ERROR_PX
    crs, transform, gcps, aligned, valid, size = _read(out)
    assert crs is None and not gcps
    assert transform.is_identity
    assert size == (SIZE, SIZE)
    # on the reference grid, the aligned NIR shows the NIR scene at the reference crop
    expected = nir[OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE].astype(float)
    mask = valid.copy()
    mask[:12], mask[-12:], mask[:, :12], mask[:, -12:] = False, False, False, False
    assert mask.mean() > 0.8
    err = np.abs(aligned.astype(float) - expected)[mask].mean()
    one_px = np.abs(np.roll(expected, 1, axis=1) - expected)[mask].mean()
    assert err < 0.5 * one_px, f"{err:.2f} DN off; a 1 px shift gives {one_px:.2f}"
    # tie points are in reference pixels, with no CRS member
    gj = read_json(tie)
    assert "crs" not in gj and gj["coordinates"] == "reference pixels" and "map_crs" not in gj
    xy = np.array([f["geometry"]["coordinates"] for f in gj["features"]])
    assert len(xy) and (xy >= 0).all() and (xy <= SIZE).all()
