"""`dmreg batch`: pairing modes, resume after a crash, the lock, failures that stay
alone, fail-fast, and the Dask executor giving the same reports as the local one.

The moving rasters are real L7 bands (NIR, SWIR1, SWIR2) written with geotransforms
shifted by known amounts: the true mapping to the red band's grid is the identity."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from dmreg.batch.lock import LOCK_NAME
from dmreg.batch.pairing import find_rasters, pairs_by_footprint, pairs_from_manifest, pairs_with_reference
from dmreg.errors import InputError, UsageError
from dmreg_cli.main import app
from helpers import L7, L7_BANDS, check_grid_errors, read_json, write_raster

SHIFTS = {"nir": (2.5, -1.5), "swir1": (-3.0, 2.0), "swir2": (1.0, 3.5)}


@pytest.fixture(scope="module")
def scene() -> dict:
    with rasterio.open(L7) as ds:
        return {"bands": {n: ds.read(i) for n, i in L7_BANDS.items()}, "crs": ds.crs, "transform": ds.transform}


def shifted_band(scene: dict, band: str, path: Path, shift: tuple[float, float], window=None) -> Path:
    data = scene["bands"][band]
    transform = scene["transform"]
    if window is not None:
        rows, cols = window
        data = data[rows, cols]
        transform = transform @ Affine.translation(cols.start, rows.start)
    return write_raster(path, data, crs=scene["crs"], transform=transform @ Affine.translation(*shift))


@pytest.fixture
def incoming(tmp_path: Path, scene: dict) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    for band, shift in SHIFTS.items():
        shifted_band(scene, band, folder / f"{band}.tif", shift)
    return folder


def corrupt_copy(path: Path) -> Path:
    """The sample raster cut short: the header opens, the pixels do not."""
    path.write_bytes(L7.read_bytes()[:5000])
    return path


def batch(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["batch", *map(str, args)])
    return result.exit_code, result.output


def assert_registered(out: Path, name: str, shift_tolerance_px: float = 0.5) -> dict:
    """The pair's outputs exist and its mapping is the identity (the truth) within tolerance."""
    report = read_json(out / f"{name}.report.json")
    assert report["status"] == "ok"
    errors, _ = check_grid_errors(report["model"]["check_grid"], lambda x, y: (x, y), (349, 352))
    assert errors.max() < shift_tolerance_px, f"{name}: max error {errors.max():.3f} px"
    with rasterio.open(out / f"{name}.tif") as ds:
        assert ds.shape == (352, 349)
    assert (out / f"{name}.tiepoints.geojson").stat().st_size > 0
    assert (out / f"{name}.qa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


def processes_in_group(pgid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


# --- pairing --------------------------------------------------------------------------

def test_folder_mode_registers_every_raster(incoming: Path, tmp_path: Path):
    out = tmp_path / "aligned"
    code, text = batch(incoming, "--reference", L7, "--ref-band", 3, "--out", out)
    assert code == 0, text
    for band in SHIFTS:
        assert_registered(out, band)
    summary = read_json(out / "summary.json")
    assert summary["schema"] == "dmreg.batch/1"
    assert summary["counts"] == {"ok": 3, "skipped": 0, "flagged": 0, "failed": 0, "not run": 0}
    assert summary["finished"] is not None
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["pair"] for r in rows] == ["nir", "swir1", "swir2"]
    assert all(r["status"] == "ok" and r["exit_code"] == "0" and float(r["rmse_px"]) < 1.0 for r in rows)
    assert not (out / LOCK_NAME).exists(), "the lock is released at the end"
    assert "nir" in text and "ok" in text  # the final table


def test_glob_regex_and_subfolders(tmp_path: Path, incoming: Path, scene: dict):
    (incoming / "notes.txt").write_text("not a raster")
    (incoming / ".hidden.tif").write_bytes(b"")
    sub = incoming / "2026"
    sub.mkdir()
    shifted_band(scene, "nir", sub / "nir.tif", (1, 1))
    assert [p.name for p in find_rasters(incoming)] == ["nir.tif", "swir1.tif", "swir2.tif"]
    assert [p.name for p in find_rasters(incoming, regex=r"^swir")] == ["swir1.tif", "swir2.tif"]
    found = find_rasters(incoming, recursive=True)
    pairs = pairs_with_reference(found, L7, incoming)
    assert sorted(p.name for p in pairs) == ["2026__nir", "nir", "swir1", "swir2"]
    assert pairs_with_reference(found + [L7], L7, incoming) == pairs, "the reference is never its own moving"
    with pytest.raises(UsageError, match="regex"):
        find_rasters(incoming, regex="(")
    with pytest.raises(InputError):
        find_rasters(tmp_path / "missing")


def test_manifest_with_relative_paths_and_named_outputs(tmp_path: Path, incoming: Path):
    manifest = incoming / "pairs.csv"
    manifest.write_text(f"reference,moving,output\n{L7},nir.tif,site_a_nir.tif\n"
                        f"{L7},swir2.tif,\n# a comment line\n{L7},missing.tif,gone.tif\n")
    pairs = pairs_from_manifest(manifest)
    assert [p.name for p in pairs] == ["site_a_nir", "swir2", "gone"]
    assert pairs[0].moving == str((incoming / "nir.tif").resolve())
    out = tmp_path / "out"
    code, text = batch("--manifest", manifest, "--ref-band", 3, "--out", out, "-q")
    assert code == 8, text  # one pair failed
    assert_registered(out, "site_a_nir")
    assert_registered(out, "swir2")
    rows = {r["pair"]: r for r in read_json(out / "summary.json")["pairs"]}
    assert rows["gone"]["status"] == "failed" and rows["gone"]["exit_code"] == 3
    assert read_json(out / "gone.report.json")["status"] == "failed"


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("a,b\nx,y\n", "reference,moving"),
    ("reference,moving\nref.tif,\n", "line 2"),
    ("reference,moving,output\nr.tif,m.tif,sub/x.tif\n", "file name"),
])
def test_bad_manifest_exits_3(tmp_path: Path, content: str, message: str):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(content)
    code, text = batch("--manifest", manifest, "--out", tmp_path / "out")
    assert code == 3 and message in text, text


def test_duplicate_output_names_are_a_usage_error(tmp_path: Path):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"reference,moving\n{L7},x.tif\nother.tif,x.tif\n")  # one moving, two references
    code, text = batch("--manifest", manifest, "--out", tmp_path / "out")
    assert code == 2 and "output column" in text, text


def test_reference_dir_picks_the_best_overlapping_reference(tmp_path: Path, scene: dict):
    refs = tmp_path / "basemaps"
    refs.mkdir()
    shifted_band(scene, "red", refs / "west.tif", (0, 0), window=(slice(0, 352), slice(0, 200)))
    shifted_band(scene, "red", refs / "east.tif", (0, 0), window=(slice(0, 352), slice(150, 349)))
    (refs / "broken.tif").write_bytes(b"not a tiff")
    movers = tmp_path / "incoming"
    movers.mkdir()
    shifted_band(scene, "swir1", movers / "east_swir1.tif", (2.0, -1.0), window=(slice(40, 300), slice(180, 340)))
    shifted_band(scene, "swir1", movers / "west_swir1.tif", (-1.5, 1.0), window=(slice(40, 300), slice(10, 170)))
    shifted_band(scene, "swir1", movers / "far_away.tif", (100000, 0))  # 2850 km east: no reference there
    pairs = {p.name: p for p in pairs_by_footprint(find_rasters(movers), refs, movers)}
    assert Path(pairs["east_swir1"].reference).name == "east.tif"
    assert Path(pairs["west_swir1"].reference).name == "west.tif"
    assert pairs["far_away"].reference is None and pairs["far_away"].error_code == 4

    out = tmp_path / "out"
    code, text = batch(movers, "--reference-dir", refs, "--out", out, "-q")
    assert code == 8, text
    rows = {r["pair"]: r for r in read_json(out / "summary.json")["pairs"]}
    assert rows["far_away"]["exit_code"] == 4 and rows["far_away"]["status"] == "failed"
    for name in ("east_swir1", "west_swir1"):
        assert rows[name]["status"] == "ok", rows[name]
        report = read_json(out / f"{name}.report.json")
        assert Path(report["reference"]["path"]).name == ("east.tif" if name.startswith("east") else "west.tif")


# --- failures -------------------------------------------------------------------------

def test_a_corrupt_input_fails_alone(incoming: Path, tmp_path: Path):
    corrupt_copy(incoming / "corrupt.tif")
    out = tmp_path / "out"
    code, text = batch(incoming, "--reference", L7, "--ref-band", 3, "--out", out, "--workers", 2)
    assert code == 8, text
    rows = {r["pair"]: r for r in read_json(out / "summary.json")["pairs"]}
    assert rows["corrupt"]["status"] == "failed" and rows["corrupt"]["exit_code"] == 3
    assert "corrupt.tif" in rows["corrupt"]["error"]
    assert all(rows[b]["status"] == "ok" for b in SHIFTS)
    for band in SHIFTS:
        assert_registered(out, band)
    assert not (out / "corrupt.tif").exists()


def test_fail_fast_stops_at_the_first_failure(incoming: Path, tmp_path: Path):
    corrupt_copy(incoming / "a_corrupt.tif")  # sorted first
    out = tmp_path / "out"
    code, _ = batch(incoming, "--reference", L7, "--ref-band", 3, "--out", out, "--fail-fast", "-q")
    assert code == 8
    statuses = [r["status"] for r in read_json(out / "summary.json")["pairs"]]
    assert statuses == ["failed", "not run", "not run", "not run"]


@pytest.mark.parametrize("args, message", [
    (["--manifest", "x.csv", "--reference", "r.tif"], "exactly one"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--executor dask"),
    (["--workers", "0"], "--workers"),
    (["--executor", "slurm"], "executor"),
])
def test_usage_errors_exit_2(incoming: Path, tmp_path: Path, args: list, message: str):
    base = [] if "--manifest" in args else [incoming, "--reference", L7]
    code, text = batch(*base, *args, "--out", tmp_path / "out")
    assert code == 2 and message in text, text


# --- resume and lock ------------------------------------------------------------------

def test_rerun_skips_complete_pairs_and_redoes_partial_ones(incoming: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = (incoming, "--reference", L7, "--ref-band", 3, "--out", out, "-q")
    assert batch(*args)[0] == 0
    kept = (out / "swir2.tif").stat().st_mtime_ns
    # a crash: nir's report never written, swir1's raster cut short, a temp file and a
    # COG's intermediate folder left behind
    (out / "nir.report.json").unlink()
    (out / "swir1.tif").write_bytes((out / "swir1.tif").read_bytes()[:3000])
    leftover = out / ".nir.tif.abc123.dmreg-tmp"
    leftover.write_bytes(b"partial")
    folder = out / ".swir1.tif.def456.dmreg-tmp"
    folder.mkdir()
    (folder / "intermediate.tif").write_bytes(b"partial")

    code, text = batch(*args)
    assert code == 0, text
    rows = {r["pair"]: r for r in read_json(out / "summary.json")["pairs"]}
    assert rows["nir"]["status"] == "ok" and rows["swir1"]["status"] == "ok"
    assert rows["swir2"]["status"] == "skipped" and rows["swir2"]["model"] and rows["swir2"]["rmse_px"] is not None
    assert (out / "swir2.tif").stat().st_mtime_ns == kept, "a complete pair is not touched"
    assert not leftover.exists() and not folder.exists()
    for band in SHIFTS:
        assert_registered(out, band)

    assert batch(*args, "--overwrite")[0] == 0
    assert (out / "swir2.tif").stat().st_mtime_ns != kept
    assert read_json(out / "summary.json")["counts"]["ok"] == 3


def test_rerun_redoes_pairs_whose_options_or_inputs_changed(incoming: Path, tmp_path: Path, scene: dict):
    """Paths alone do not make a result valid: another --model, or an input replaced at
    the same path, redoes the pair (and the log says why); the same run skips it."""
    out = tmp_path / "out"
    args = (incoming, "--reference", L7, "--ref-band", 3, "--out", out, "-q")
    assert batch(*args)[0] == 0
    key = read_json(out / "nir.report.json")["batch_key"]
    assert set(key) == {"options_sha256", "reference", "moving"} and key["moving"]["size"] > 0

    statuses = lambda: {r["pair"]: r["status"] for r in read_json(out / "summary.json")["pairs"]}  # noqa: E731
    assert batch(*args)[0] == 0
    assert set(statuses().values()) == {"skipped"}

    log = tmp_path / "batch.log"
    assert batch(*args, "--model", "translation", "--log-file", log)[0] == 0
    assert set(statuses().values()) == {"ok"}, "another --model is another result"
    assert "nir: redone: the options that change results differ" in log.read_text()
    assert read_json(out / "nir.report.json")["model"]["type"] == "translation"

    time.sleep(0.01)
    shifted_band(scene, "nir", incoming / "nir.tif", (-2.0, 1.0))  # replaced at the same path
    assert batch(*args, "--model", "translation", "--log-file", log)[0] == 0
    assert statuses() == {"nir": "ok", "swir1": "skipped", "swir2": "skipped"}
    assert "nir: redone: the moving raster changed" in log.read_text()


def test_a_live_lock_refuses_a_second_run(incoming: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": "2026-11-26T02:30:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    with open(out / LOCK_NAME) as held:  # a running batch holds the OS lock on the file
        fcntl.flock(held, fcntl.LOCK_EX)
        code, text = batch(incoming, "--reference", L7, "--ref-band", 3, "--out", out)
    assert code == 7, text
    assert f"pid {os.getpid()}" in text
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], "nothing written"


def test_a_stale_lock_from_a_dead_process_is_replaced(incoming: Path, tmp_path: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "process_start": 1}))
    code, text = batch(incoming, "--reference", L7, "--ref-band", 3, "--out", out, "--no-qa")
    assert code == 0, text
    assert "stale lock" in text
    assert not (out / LOCK_NAME).exists()
    assert read_json(out / "summary.json")["counts"]["ok"] == 3


RACE_SCRIPT = """
import os, sys, time
from pathlib import Path
from dmreg.batch.lock import OutputLock
from dmreg.errors import LockedError
folder, marker = Path(sys.argv[1]), Path(sys.argv[1]) / "inside"
taken = overlaps = 0
for _ in range(1000):
    try:
        with OutputLock(folder):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                overlaps += 1
                continue
            taken += 1
            time.sleep(0.0005)
            os.close(fd)
            os.unlink(marker)
    except LockedError:
        pass
print(taken, overlaps)
"""


def test_two_runs_racing_for_a_stale_lock_never_both_hold_it(tmp_path: Path):
    """Two processes take and release the lock 1000 times each, starting from a stale lock
    left by a dead run: never do both hold it at once, and both get it."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": 999_999_999}))
    runs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [tuple(map(int, run.communicate(timeout=120)[0].split())) for run in runs]
    assert all(taken > 0 for taken, _ in results), results
    assert sum(overlaps for _, overlaps in results) == 0, results
    assert not (tmp_path / LOCK_NAME).exists()


# --- executors ------------------------------------------------------------------------

def comparable(report: dict) -> dict:
    return {"model": report["model"], "quality": report["quality"], "models": report["models"]}


def test_dask_local_cluster_gives_the_same_reports_as_local_processes(incoming: Path, tmp_path: Path):
    distributed = pytest.importorskip("distributed")
    local, dask = tmp_path / "local", tmp_path / "dask"
    assert batch(incoming, "--reference", L7, "--ref-band", 3, "--out", local, "--workers", 2, "-q")[0] == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        code, text = batch(incoming, "--reference", L7, "--ref-band", 3, "--out", dask,
                           "--executor", "dask", "--scheduler", cluster.scheduler_address, "-q")
    assert code == 0, text
    assert read_json(dask / "summary.json")["executor"] == "dask"
    for band in SHIFTS:
        assert comparable(read_json(local / f"{band}.report.json")) == comparable(read_json(dask / f"{band}.report.json"))
        assert (dask / f"{band}.qa.png").exists()


def test_log_file_and_an_empty_folder(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    log = tmp_path / "run.log"
    code, text = batch(empty, "--reference", L7, "--out", tmp_path / "out", "--log-file", log)
    assert code == 0, text
    assert "no pairs" in text and "no pairs" in log.read_text()
    assert read_json(tmp_path / "out" / "summary.json")["pairs"] == []


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def batch_stopped_mid_run(incoming: Path, out: Path, scene: dict, stop) -> subprocess.Popen:
    """A `dmreg batch --workers 2` child process (own process group), stopped by
    ``stop(child)`` once its first pair is complete; returns it after it has exited and
    every process of its group is gone (or 60 s passed)."""
    for i in range(4):  # more pairs, so the stop lands mid-run
        shifted_band(scene, "swir2", incoming / f"more{i}.tif", (0.5 * i, -1.0))
    cmd = [sys.executable, "-m", "dmreg_cli.main", "batch", str(incoming), "--reference", str(L7), "--ref-band", "3",
           "--out", str(out), "--workers", "2", "-q"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.qa.png")) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    stop(child)
    child.wait(timeout=60)
    deadline = time.monotonic() + 60  # orphaned workers end themselves (after their current pair)
    while processes_in_group(child.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return child


@LINUX_PROC
def test_kill_9_mid_run_loses_nothing_written(incoming: Path, tmp_path: Path, scene: dict):
    out = tmp_path / "out"
    child = batch_stopped_mid_run(incoming, out, scene, lambda c: c.kill())  # SIGKILL: no cleanup of any kind
    assert processes_in_group(child.pid) == [], "orphaned worker processes"
    done = list(out.glob("*.qa.png"))
    assert done and len(done) < 7, "the kill should land after the first pair and before the last"
    for path in out.iterdir():  # whatever was renamed into place is whole
        if path.suffix == ".tif":
            with rasterio.open(path) as ds:
                ds.read(1)
        elif path.suffix in (".json", ".geojson") or path.name == LOCK_NAME:
            json.loads(path.read_text())
    summary = read_json(out / "summary.json")  # whole, and never claims more than was done
    assert summary["finished"] is None and {r["status"] for r in summary["pairs"]} <= {"ok", "not run"}

    code, text = batch(incoming, "--reference", L7, "--ref-band", 3, "--out", out)
    assert code == 0, text
    assert "stale lock" in text
    rows = read_json(out / "summary.json")["pairs"]
    assert {r["status"] for r in rows} <= {"ok", "skipped"}
    assert sum(r["status"] == "skipped" for r in rows) >= len(done)  # the QA picture is written last
    assert not list(out.glob(".*.dmreg-tmp"))


@LINUX_PROC
def test_sigterm_releases_the_lock_and_leaves_no_workers(incoming: Path, tmp_path: Path, scene: dict):
    out = tmp_path / "out"
    child = batch_stopped_mid_run(incoming, out, scene, lambda c: c.terminate())
    assert child.returncode == 143
    assert not (out / LOCK_NAME).exists()
    assert processes_in_group(child.pid) == [], "orphaned worker processes"
    assert {r["status"] for r in read_json(out / "summary.json")["pairs"]} <= {"ok", "not run"}
