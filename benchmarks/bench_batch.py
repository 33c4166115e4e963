#!/usr/bin/env python
"""Throughput and memory of `dmreg batch` with 1, 2 and 4 worker processes.

The pairs are real cross-band pairs from the shipped examples (bands of one scene are
co-registered by the provider, so the truth is known): Landsat 7 ETM+ red vs blue,
green, NIR, SWIR1, SWIR2 and rgbn.tif red vs green, blue, NIR, at the original size and
upsampled x2 (cv2 bicubic), some moving rasters finer than their reference. Every
moving raster's geotransform is shifted by a seeded random offset of up to MAX_SHIFT
pixels. One manifest (reference,moving,output) mixes the references.

Each worker count runs `dmreg batch --manifest` once, in a fresh child process and a
fresh output folder. Memory is sampled every 0.1 s over the whole process tree (the
child and its descendants, from /proc/PID/task/*/children): the peak of the summed RSS
and of the summed PSS (shared pages counted once, split between their users), and the
largest single process's high-water mark (VmHWM; os.wait4's ru_maxrss as a check). CPU
seconds of the tree (os.wait4) give the cores it used; CPU seconds the rest of the machine
used meanwhile (/proc/stat) tell a disturbed timing from a slow one. Each pair's report
check_grid is compared with the truth and with the same pair's check_grid in the first
run, which shows that the results do not depend on the worker count.

Usage: python benchmarks/bench_batch.py [--workers 1,2,4] [--pairs 20] [--matcher structural] [-- BATCH_OPTIONS]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine

from bench_register import errors, write_single
from common import find_dmreg

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples" / "data"
DATA = HERE / "data" / "batch"
RESULTS = HERE / "results" / "batch"
SEED = 20240611
MAX_SHIFT = 5.0      # largest applied geotransform error, moving pixels, per axis
SAMPLE_S = 0.1

L7, L7_RED = EXAMPLES / "L7_ETMs.tif", 3
RGBN, RGBN_RED = EXAMPLES / "rgbn.tif", 1


@dataclass(frozen=True)
class Spec:
    """One pair: band ``band`` of ``source`` upsampled ``mov_up`` times, against the
    source's red band upsampled ``ref_up`` times."""

    source: Path
    red: int
    band: int
    mov_up: int
    ref_up: int


@dataclass(frozen=True)
class PairCase:
    name: str
    reference: Path
    moving: Path
    scale: float                 # true mapping: reference pixel = moving pixel * scale
    shift: tuple[float, float]   # applied georeferencing error, moving pixels

    def truth(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(x, float) * self.scale, np.asarray(y, float) * self.scale


SPECS = (
    [Spec(L7, L7_RED, b, 1, 1) for b in (4, 5, 6, 1, 2)]
    + [Spec(L7, L7_RED, b, 2, 2) for b in (4, 5, 6, 1, 2)]
    + [Spec(RGBN, RGBN_RED, b, 1, 1) for b in (4, 2, 3)]
    + [Spec(RGBN, RGBN_RED, b, 2, 2) for b in (4, 2, 3)]
    + [Spec(L7, L7_RED, b, 2, 1) for b in (4, 5, 6)]
    + [Spec(RGBN, RGBN_RED, 4, 2, 1)]
)


# --------------------------------------------------------------------------- data

def upsampled(source: Path, band: int, up: int) -> tuple[np.ndarray, dict]:
    """Band ``band`` of ``source`` enlarged ``up`` times (bicubic), with its profile's
    transform refined to match. cv2.resize keeps pixel-corner alignment, so a pixel
    (x, y) of the result shows the source at (x / up, y / up) in dmreg's convention."""
    with rasterio.open(source) as ds:
        data, profile = ds.read(band), ds.profile.copy()
    if up > 1:
        data = cv2.resize(data, (data.shape[1] * up, data.shape[0] * up), interpolation=cv2.INTER_CUBIC)
    profile["transform"] = profile["transform"] * Affine.scale(1.0 / up)
    return data, profile


def write_band(path: Path, source: Path, band: int, up: int, shift: tuple[float, float] = (0.0, 0.0)) -> None:
    """A single-band GeoTIFF of the enlarged band, its geotransform moved by ``shift`` pixels."""
    data, profile = upsampled(source, band, up)
    write_single(path, data, profile, transform=profile["transform"] * Affine.translation(*shift))


def build_pairs(count: int) -> tuple[Path, list[PairCase]]:
    """Write ``count`` pairs (the specs in turn, each with its own random shift) and the
    manifest that lists them; the same seed gives the same files."""
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    references: dict[tuple[Path, int], Path] = {}
    cases = []
    for i in range(count):
        spec = SPECS[i % len(SPECS)]
        key = (spec.source, spec.ref_up)
        if key not in references:
            references[key] = DATA / f"ref_{spec.source.stem}_b{spec.red}_x{spec.ref_up}.tif"
            write_band(references[key], spec.source, spec.red, spec.ref_up)
        shift = (float(rng.uniform(-MAX_SHIFT, MAX_SHIFT)), float(rng.uniform(-MAX_SHIFT, MAX_SHIFT)))
        name = f"p{i:02d}_{spec.source.stem}_b{spec.band}_x{spec.mov_up}_on_x{spec.ref_up}"
        moving = DATA / f"{name}.tif"
        write_band(moving, spec.source, spec.band, spec.mov_up, shift)
        cases.append(PairCase(name, references[key], moving, spec.ref_up / spec.mov_up, shift))
    manifest = DATA / "pairs.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reference", "moving", "output"])
        writer.writerows([c.reference.name, c.moving.name, f"{c.name}.tif"] for c in cases)
    return manifest, cases


# --------------------------------------------------------------------------- memory of a process tree

def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return found


def status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/PID/status in kB (empty once the process has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(line.split()[1]) for line in text.splitlines() for k in keys if line.startswith(k + ":")}


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (forked, libraries) split between the processes using them."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)


@dataclass
class TreeMemory:
    """Peaks over the samples of one run, in kB."""

    rss_sum: int = 0
    pss_sum: int = 0
    hwm_max: int = 0
    processes: int = 0

    def sample(self, root: int) -> None:
        pids = descendants(root)
        stats = [status_kb(p, ("VmRSS", "VmHWM")) for p in pids]
        self.rss_sum = max(self.rss_sum, sum(s.get("VmRSS", 0) for s in stats))
        self.pss_sum = max(self.pss_sum, sum(pss_kb(p) for p in pids))
        self.hwm_max = max([self.hwm_max] + [s.get("VmHWM", 0) for s in stats])
        self.processes = max(self.processes, sum(1 for s in stats if s))


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), whoever used them."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One child process: exit code, wall time, memory peaks, and CPU seconds of its tree
    (os.wait4: the child and its waited-for descendants) and of the whole machine."""

    rc: int
    wall_s: float
    memory: TreeMemory
    ru_maxrss_mb: float
    tree_cpu_s: float
    machine_cpu_s: float


def run_sampled(cmd: list[str], log: Path) -> Run:
    """Run ``cmd``, sampling its process tree every SAMPLE_S seconds."""
    memory = TreeMemory()
    busy = machine_busy_s()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while True:
            memory.sample(proc.pid)
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here, for its rusage
            if done:
                break
            time.sleep(SAMPLE_S)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(proc.returncode, wall, memory, usage.ru_maxrss / 1024.0,
               usage.ru_utime + usage.ru_stime, machine_busy_s() - busy)


# --------------------------------------------------------------------------- one run

def check_grids(out: Path, summary: dict) -> dict[str, np.ndarray]:
    """Each ok pair's check_grid from its report, by pair name."""
    grids = {}
    for record in summary.get("pairs", []):
        report_path = (record.get("outputs") or {}).get("report")
        if record.get("status") == "ok" and report_path and (out / report_path).is_file():
            report = json.loads((out / report_path).read_text())
            grids[record["pair"]] = np.asarray(report["model"]["check_grid"], float)
    return grids


def run_batch(dmreg: str, manifest: Path, cases: list[PairCase], workers: int, matcher: str,
              extra: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """One `dmreg batch` run into a fresh folder: its row and its pairs' check grids."""
    out = RESULTS / f"workers_{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [dmreg, "batch", "--manifest", str(manifest), "--out", str(out), "--workers", str(workers),
           "--matcher", matcher, "-q", *extra]
    run = run_sampled(cmd, RESULTS / f"workers_{workers}.log")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    grids = check_grids(out, summary)
    row = {"workers": workers, "command": " ".join(cmd), **run_numbers(run, len(cases)),
           **result_numbers(summary, grids, cases)}
    row["all_ok"] = run.rc == 0 and row["counts"].get("ok") == len(cases)
    return row, grids


def run_numbers(run: Run, pairs: int) -> dict:
    """Time, CPU and memory of one run."""
    return {"rc": run.rc, "wall_s": run.wall_s, "pairs": pairs, "pairs_per_min": 60.0 * pairs / run.wall_s,
            "cores_used": run.tree_cpu_s / run.wall_s, "others_cpu_s": max(0.0, run.machine_cpu_s - run.tree_cpu_s),
            "peak_tree_rss_mb": run.memory.rss_sum / 1024.0, "peak_tree_pss_mb": run.memory.pss_sum / 1024.0,
            "max_process_rss_mb": run.memory.hwm_max / 1024.0, "ru_maxrss_mb": run.ru_maxrss_mb,
            "max_processes": run.memory.processes}


def result_numbers(summary: dict, grids: dict[str, np.ndarray], cases: list[PairCase]) -> dict:
    """Pair counts, each ok pair's check-grid error against the truth, and the mean RMSE."""
    truth = {c.name: c for c in cases}
    errs = {name: errors(g[:, 2], g[:, 3], truth[name].truth, g[:, 0], g[:, 1])[0] for name, g in grids.items()}
    rmse = [r["rmse_px"] for r in summary.get("pairs", []) if r.get("status") == "ok" and r.get("rmse_px") is not None]
    return {"counts": summary.get("counts", {}), "max_error_px": max(errs.values()) if errs else None,
            "mean_rmse_px": float(np.mean(rmse)) if rmse else None, "error_px": errs}


def same_results(grids: dict[str, np.ndarray], first: dict[str, np.ndarray]) -> float | None:
    """Largest difference between this run's check grids and the first run's (0.0: identical);
    None when the two runs did not finish the same pairs."""
    if grids.keys() != first.keys():
        return None
    return max((float(np.abs(grids[k] - first[k]).max()) for k in grids), default=0.0)


# --------------------------------------------------------------------------- table

def fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


COLUMNS = (  # header, width, format, value of a row (``base``: the first row's wall time)
    ("workers", 7, "d", lambda r, base: r["workers"]),
    ("wall_s", 7, ".1f", lambda r, base: r["wall_s"]),
    ("pairs/min", 9, ".1f", lambda r, base: r["pairs_per_min"]),
    ("speed-up", 8, ".2f", lambda r, base: base / r["wall_s"]),
    ("cores", 5, ".2f", lambda r, base: r["cores_used"]),
    ("others_s", 8, ".1f", lambda r, base: r["others_cpu_s"]),
    ("tree_RSS_MB", 11, ".0f", lambda r, base: r["peak_tree_rss_mb"]),
    ("tree_PSS_MB", 11, ".0f", lambda r, base: r["peak_tree_pss_mb"]),
    ("max_proc_MB", 11, ".0f", lambda r, base: r["max_process_rss_mb"]),
    ("procs", 5, "d", lambda r, base: r["max_processes"]),
    ("all_ok", 8, "s", lambda r, base: f"{r['counts'].get('ok', 0)}/{r['pairs']}" if r["all_ok"] else f"NO {r['rc']}"),
    ("max_err_px", 10, ".3f", lambda r, base: r["max_error_px"]),
    ("mean_rmse", 9, ".3f", lambda r, base: r["mean_rmse_px"]),
    ("vs_first", 8, ".1e", lambda r, base: r["vs_first_px"]),
)


def table(rows: list[dict]) -> str:
    head = " ".join(f"{name:>{width}}" for name, width, _, _ in COLUMNS)
    base = rows[0]["wall_s"] if rows else 0.0
    lines = [" ".join(f"{fmt(value(r, base), spec):>{width}}" for _, width, spec, value in COLUMNS) for r in rows]
    return "\n".join([head, "-" * len(head), *lines])


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts (default: %(default)s)")
    ap.add_argument("--pairs", type=int, default=20, help="number of pairs (default: %(default)s)")
    ap.add_argument("--matcher", default="structural", choices=("structural", "sift", "distillmatch"),
                    help="matcher for every pair (default: %(default)s)")
    ap.add_argument("extra", nargs="*", help="after --: more `dmreg batch` options (e.g. -- --no-qa --device cpu)")
    args = ap.parse_args()
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        ap.error(f"--workers {args.workers!r}: expected comma-separated integers")
    if args.pairs < 1 or not args.workers or min(args.workers) < 1:
        ap.error("--pairs and every --workers count must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    dmreg = find_dmreg("bench_batch")
    RESULTS.mkdir(parents=True, exist_ok=True)
    manifest, cases = build_pairs(args.pairs)
    setting = (f"{len(cases)} pairs, matcher {args.matcher}, {os.cpu_count()} CPUs"
               + (f", options {' '.join(args.extra)}" if args.extra else ""))
    print(f"{setting}; manifest {manifest}", flush=True)
    rows: list[dict] = []
    first: dict[str, np.ndarray] | None = None
    for workers in args.workers:
        row, grids = run_batch(dmreg, manifest, cases, workers, args.matcher, args.extra)
        first = grids if first is None else first
        row["vs_first_px"] = same_results(grids, first)
        rows.append(row)
        print(f"  {workers} workers: rc {row['rc']}, {row['wall_s']:.1f} s, counts {row['counts']}", flush=True)
    text = table(rows)
    print("\nspeed-up = wall(first row) / wall, same run; cores = CPU seconds of dmreg's process tree / wall;")
    print("others_s = CPU seconds the rest of the machine used meanwhile (well above 0: timings disturbed);")
    print("tree_RSS/PSS = peak of the sum over the process tree;")
    print("max_proc = largest single-process VmHWM; max_err_px = worst check-grid error vs the truth (reference px);")
    print("vs_first = largest check-grid difference from the first row's run (0: identical results).\n")
    print(text)
    (RESULTS / "bench_batch.txt").write_text(f"{setting}\n\n{text}\n")
    (RESULTS / "bench_batch.json").write_text(json.dumps({"setting": setting, "runs": rows}, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_batch.txt'} and .json; outputs and logs in {RESULTS}")
    return 0 if all(r["all_ok"] and r["vs_first_px"] == 0.0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
