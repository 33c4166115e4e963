"""The shipped DistillMatch weights register the shipped cross-modal example end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from dmreg.matchers.distillmatch.weights import DEFAULT_WEIGHTS, available
from dmreg_cli.main import app

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"


def test_default_weights_are_shipped_with_provenance():
    cards = {c.name: c for c in available()}
    assert DEFAULT_WEIGHTS in cards
    provenance = cards[DEFAULT_WEIGHTS].provenance
    for key in ("teacher", "data", "held_out_scenes", "steps", "hardware"):
        assert provenance.get(key), key
    assert "L7_ETMs" in provenance["held_out_scenes"] and "L7_ETMs" not in provenance["data"]


def test_register_example_with_distillmatch(tmp_path):
    """L7 SWIR2 with its geotransform shifted by (15, -9.5) px onto L7 red (a scene the
    weights never saw): the corrected mapping must be the identity within 1 px."""
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, [
        "register", str(DATA / "L7_ETMs.tif"), str(DATA / "L7_SWIR2_offset.tif"), "--ref-band", "3",
        "--matcher", "distillmatch", "--device", "cpu", "--dry-run", "--report", str(report), "-q",
    ])
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    grid = np.array(r["model"]["check_grid"])
    error = np.hypot(grid[:, 2] - grid[:, 0], grid[:, 3] - grid[:, 1])
    assert error.max() < 1.0
    assert r["matcher"]["name"] == "distillmatch" and len(r["matcher"]["weights_sha256"]) == 64
    assert r["quality"]["inliers"] >= 100
    probe = r["read_probe"]  # its matches were read again through the answer shifted: they stayed with the content
    assert probe["tiles"] >= 1 and probe["matches"] > 0 and probe["followed"] < 0.35, probe
    assert "probe" in r["timings_s"]
