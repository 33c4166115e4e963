"""Inputs GDAL resolves itself: /vsi* paths and URLs, checked by opening them.

A raster served over HTTP by a local server on 127.0.0.1 (no outside network) is read
through /vsicurl/ and registers like the local file; an unreachable URL is an input
error (exit 3) whose message carries GDAL's reason.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from dmreg.io.raster import is_gdal_path
from dmreg_cli.main import app

from helpers import Case, read_json

runner = CliRunner()


@pytest.fixture(scope="module")
def served(shift_nir: Case):
    """Serve the folder of the shift_nir case with ``python -m http.server`` on 127.0.0.1.
    A separate process: GDAL's HTTP reads hold the GIL, so a server thread in this
    process could never answer them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(shift_nir.mov.parent)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the local HTTP server did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def test_vsicurl_input_registers_like_the_local_file(shift_nir: Case, served, tmp_path):
    remote = f"/vsicurl/{served}/{shift_nir.mov.name}"
    local_report, remote_report = tmp_path / "local.json", tmp_path / "remote.json"
    for mov, report in ((str(shift_nir.mov), local_report), (remote, remote_report)):
        result = runner.invoke(app, ["register", str(shift_nir.ref), mov, "--report", str(report), "-q"])
        assert result.exit_code == 0, result.output
    local, remote_rep = read_json(local_report), read_json(remote_report)
    assert remote_rep["status"] == "ok"
    assert remote_rep["model"]["check_grid"] == local["model"]["check_grid"]


def test_unreachable_url_is_an_input_error(shift_nir: Case, served):
    result = runner.invoke(app, ["register", str(shift_nir.ref), f"/vsicurl/{served}/missing.tif", "--dry-run"])
    assert result.exit_code == 3
    assert "missing.tif" in result.output and "cannot open it" in result.output


@pytest.mark.parametrize("path, expected", [
    ("/vsicurl/https://example.com/a.tif", True), ("https://example.com/a.tif", True), ("s3://bucket/a.tif", True),
    ("/vsizip/archive.zip/a.tif", True), ("scene.tif", False), ("/data/scene.tif", False),
])
def test_gdal_paths_are_recognised(path, expected):
    assert is_gdal_path(path) is expected


def test_batch_takes_urls_in_a_manifest_and_as_the_reference(shift_nir: Case, served, tmp_path):
    """A manifest row with a URL moving raster (named after the URL's file) and
    ``--reference URL`` over a local folder both register as the local files do."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"reference,moving\n{shift_nir.ref},{served}/{shift_nir.mov.name}\n")
    result = runner.invoke(app, ["batch", "--manifest", str(manifest), "--out", str(tmp_path / "a"), "--no-qa", "-q"])
    assert result.exit_code == 0, result.output
    report = read_json(tmp_path / "a" / f"{shift_nir.mov.stem}.report.json")
    assert report["status"] == "ok" and report["moving"]["path"].endswith(shift_nir.mov.name)

    movings = tmp_path / "movings"
    movings.mkdir()
    (movings / "m.tif").write_bytes(shift_nir.mov.read_bytes())
    result = runner.invoke(app, ["batch", str(movings), "--reference", f"/vsicurl/{served}/{shift_nir.ref.name}",
                                 "--out", str(tmp_path / "b"), "--no-qa", "-q"])
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "b" / "m.report.json")["status"] == "ok"
