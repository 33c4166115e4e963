#!/usr/bin/env python
"""Cross-modal registration accuracy, time and memory of `dmreg register`.

Every case pairs two bands of one scene. The provider co-registers the bands of a
scene, so the true moving -> reference pixel mapping is known exactly: the identity,
or the warp this script applies itself. A known misregistration is then applied (a
shifted geotransform, a rotation + scale, a change of CRS) and dmreg must undo it.

For each case the script prints one baseline row ("none": the error of the raw
georeferencing, i.e. an identity correction) and one row per matcher. Errors are
measured on the report's ``model.check_grid`` (10 x 10 moving pixel centres, mapped
moving pixel -> reference pixel by dmreg) against the truth, in reference pixels;
``gain`` is error before / error after, both measured in this run.

Each registration runs the CLI in a fresh child process; its peak memory is that
child's ru_maxrss (os.wait4), which, unlike tracemalloc, includes GDAL and OpenCV.

Usage: python benchmarks/bench_register.py [--cases a,b] [--matchers structural,sift[,structural:translation]]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import calculate_default_transform, transform as warp_transform

from common import find_dmreg

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples" / "data"
DATA = HERE / "data" / "register"
RESULTS = HERE / "results" / "register"
SHIFT = (3.4, -2.7)          # applied geotransform error in moving pixels (x, y)
LARGE_SHIFT = (32.0, -24.0)  # 40 px
GRID_N = 10                  # dmreg.report.CHECK_GRID_SIZE

L7 = EXAMPLES / "L7_ETMs.tif"
RGBN = EXAMPLES / "rgbn.tif"
LT05_B3 = EXAMPLES / "LT05_167055_20000309_B3.tif"
LT05_B6 = EXAMPLES / "LT05_167055_20000309_B6.tif"

Truth = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- cases

@dataclass
class Case:
    name: str
    description: str
    ref: Path
    ref_band: int
    mov: Path
    truth: Truth                      # moving pixel (x, y) -> reference pixel (x, y), true
    mov_band: int = 1
    extra_args: list[str] = field(default_factory=list)


def read_band(path: Path, band: int) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        profile = ds.profile.copy()
        return ds.read(band), profile


def write_single(path: Path, data: np.ndarray, profile: dict, *, transform: Affine,
                 crs=None, nodata=None) -> None:
    prof = {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled", "interleave")}
    prof.update(driver="GTiff", count=1, dtype=data.dtype.name, width=data.shape[1], height=data.shape[0],
                transform=transform, crs=crs or profile["crs"], nodata=nodata if nodata is not None else profile.get("nodata"),
                compress="deflate")
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data, 1)


def shifted_copy(src: Path, band: int, out: Path, shift: tuple[float, float]) -> Truth:
    """``out`` = band ``band`` of ``src`` with the geotransform moved by ``shift`` pixels.
    Same pixels, same grid: the true mapping to ``src``'s grid is the identity."""
    data, profile = read_band(src, band)
    write_single(out, data, profile, transform=profile["transform"] * Affine.translation(*shift))
    return lambda x, y: (np.asarray(x, float), np.asarray(y, float))


def affine_warped_copy(src: Path, band: int, out: Path, angle_deg: float, scale: float,
                       shift: tuple[float, float]) -> Truth:
    """Band rotated by ``angle_deg`` and scaled by ``scale`` about the image centre
    (cv2.warpAffine), written with a geotransform shifted by ``shift`` pixels.

    cv2 puts pixel centres at integer coordinates, dmreg at +0.5: p_cv = p - 0.5.
    warpAffine fills dst(q_cv) from src(M^-1 q_cv), so the moving pixel q shows the
    reference content at M^-1 (q - 0.5) + 0.5.
    """
    data, profile = read_band(src, band)
    h, w = data.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, scale)
    warped = cv2.warpAffine(data.astype(np.float32), m, (w, h), flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weight = cv2.warpAffine(np.ones((h, w), np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = weight > 0.999
    out_data = np.where(valid, np.clip(np.rint(warped), 1, 255), 0).astype(np.uint8)
    write_single(out, out_data, profile, transform=profile["transform"] * Affine.translation(*shift), nodata=0)
    minv = cv2.invertAffineTransform(m)

    def truth(x, y):
        xc, yc = np.asarray(x, float) - 0.5, np.asarray(y, float) - 0.5
        return (minv[0, 0] * xc + minv[0, 1] * yc + minv[0, 2] + 0.5,
                minv[1, 0] * xc + minv[1, 1] * yc + minv[1, 2] + 0.5)
    return truth


def reprojected_copy(src: Path, band: int, out: Path, dst_crs: str, shift: tuple[float, float]) -> Truth:
    """Band resampled (bicubic, exact per-pixel PROJ transform, no approximation) onto a
    north-up grid of the same resolution in ``dst_crs``, written with a geotransform
    shifted by ``shift`` pixels. Truth: moving pixel -> dst_crs -> src CRS -> src pixel."""
    data, profile = read_band(src, band)
    src_crs, src_tf = profile["crs"], profile["transform"]
    h, w = data.shape
    left, top = src_tf * (0, 0)
    right, bottom = src_tf * (w, h)
    dst_tf, dw, dh = calculate_default_transform(src_crs, CRS.from_user_input(dst_crs), w, h,
                                                 left=left, bottom=bottom, right=right, top=top,
                                                 resolution=abs(src_tf.a))

    def to_src_px(x, y):
        mx, my = dst_tf * (np.asarray(x, float).ravel(), np.asarray(y, float).ravel())
        sx, sy = warp_transform(dst_crs, src_crs, mx, my)
        px, py = ~src_tf * (np.asarray(sx), np.asarray(sy))
        return np.asarray(px).reshape(np.shape(x)), np.asarray(py).reshape(np.shape(x))

    cols, rows = np.meshgrid(np.arange(dw) + 0.5, np.arange(dh) + 0.5)
    sx, sy = to_src_px(cols, rows)
    map_x, map_y = (sx - 0.5).astype(np.float32), (sy - 0.5).astype(np.float32)
    vals = cv2.remap(data.astype(np.float32), map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weight = cv2.remap(np.ones_like(data, np.float32), map_x, map_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out_data = np.where(weight > 0.999, np.clip(np.rint(vals), 1, 255), 0).astype(np.uint8)
    write_single(out, out_data, profile, transform=dst_tf * Affine.translation(*shift),
                 crs=CRS.from_user_input(dst_crs), nodata=0)
    return to_src_px


def build_cases() -> list[Case]:
    DATA.mkdir(parents=True, exist_ok=True)
    s = f"shift ({SHIFT[0]}, {SHIFT[1]}) px"
    cases = [
        Case("l7_red_red", f"L7 ETM+ red vs red (control, same band), {s}", L7, 3,
             DATA / "l7_b3_shift.tif", shifted_copy(L7, 3, DATA / "l7_b3_shift.tif", SHIFT)),
        Case("l7_red_swir2", f"L7 ETM+ red (b3) vs SWIR2 (b6), {s}", L7, 3,
             DATA / "l7_b6_shift.tif", shifted_copy(L7, 6, DATA / "l7_b6_shift.tif", SHIFT)),
        Case("l7_red_nir", f"L7 ETM+ red (b3) vs NIR (b4), {s}", L7, 3,
             DATA / "l7_b4_shift.tif", shifted_copy(L7, 4, DATA / "l7_b4_shift.tif", SHIFT)),
        Case("l7_red_swir1", f"L7 ETM+ red (b3) vs SWIR1 (b5), {s}", L7, 3,
             DATA / "l7_b5_shift.tif", shifted_copy(L7, 5, DATA / "l7_b5_shift.tif", SHIFT)),
        Case("l7_red_swir2_affine", f"L7 red vs SWIR2 rotated 1.5 deg, scaled 1.02, {s}", L7, 3,
             DATA / "l7_b6_affine.tif",
             affine_warped_copy(L7, 6, DATA / "l7_b6_affine.tif", 1.5, 1.02, SHIFT)),
        Case("l7_red_swir2_off40", f"L7 red vs SWIR2, shift {LARGE_SHIFT} px (|40| px)", L7, 3,
             DATA / "l7_b6_shift40.tif", shifted_copy(L7, 6, DATA / "l7_b6_shift40.tif", LARGE_SHIFT)),
        Case("l7_red_swir2_crs", f"L7 red (EPSG:31985) vs SWIR2 reprojected to EPSG:31984, {s}", L7, 3,
             DATA / "l7_b6_31984.tif", reprojected_copy(L7, 6, DATA / "l7_b6_31984.tif", "EPSG:31984", SHIFT)),
        Case("lt05_red_thermal", f"LT05 red (B3) vs thermal (B6), 101x101, {s}", LT05_B3, 1,
             DATA / "lt05_b6_shift.tif", shifted_copy(LT05_B6, 1, DATA / "lt05_b6_shift.tif", SHIFT)),
        Case("rgbn_red_nir", f"rgbn.tif red (b1) vs NIR (b4), 5 m, {s}", RGBN, 1,
             DATA / "rgbn_b4_shift.tif", shifted_copy(RGBN, 4, DATA / "rgbn_b4_shift.tif", SHIFT)),
    ]
    return cases


# --------------------------------------------------------------------------- measuring

def check_points(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The moving pixel centres dmreg's report evaluates (report.check_grid)."""
    xs, ys = np.meshgrid(np.linspace(0.5, width - 0.5, GRID_N), np.linspace(0.5, height - 0.5, GRID_N))
    return xs.ravel(), ys.ravel()


def georef_mapping(mov: Path, ref: Path) -> Truth:
    """Moving pixel -> reference pixel as the files' georeferencing says (no dmreg code)."""
    with rasterio.open(mov) as m, rasterio.open(ref) as r:
        mt, mc, rt, rc = m.transform, m.crs, r.transform, r.crs

    def apply(x, y):
        mx, my = mt * (np.asarray(x, float), np.asarray(y, float))
        if mc != rc:
            mx, my = (np.asarray(v) for v in warp_transform(mc, rc, mx, my))
        return ~rt * (mx, my)
    return apply


def errors(mapped_x, mapped_y, truth: Truth, xs, ys) -> tuple[float, float]:
    tx, ty = truth(xs, ys)
    e = np.hypot(np.asarray(mapped_x) - tx, np.asarray(mapped_y) - ty)
    return float(e.max()), float(e.mean())


def run_child(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` in a fresh process: (exit code, wall seconds, peak RSS in MB)."""
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    return proc.returncode, wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def register_case(dmreg: str, case: Case, spec: str) -> dict:
    """One registration; ``spec`` is a matcher name, optionally ``name@weights`` for learned
    weights (a shipped name or a path) and ``:model`` to force a model."""
    matcher, _, model = spec.partition(":")
    matcher, _, weights = matcher.partition("@")
    tag = f"{case.name}_{matcher}" + (f"_{Path(weights).name}" if weights else "") + (f"_{model}" if model else "")
    report = RESULTS / f"{tag}.json"
    output = RESULTS / f"{tag}.tif"
    for p in (report, output):
        p.unlink(missing_ok=True)
    cmd = [dmreg, "register", str(case.ref), str(case.mov), "-o", str(output), "--report", str(report),
           "--ref-band", str(case.ref_band), "--mov-band", str(case.mov_band), "--matcher", matcher,
           "--overwrite", "-q", *(["--model", model] if model else []), *(["--weights", weights] if weights else []),
           *case.extra_args]
    rc, wall, peak_mb = run_child(cmd, RESULTS / f"{tag}.log")
    row = {"case": case.name, "matcher": spec, "rc": rc, "wall_s": wall, "peak_mb": peak_mb,
           "command": " ".join(cmd)}
    rep = json.loads(report.read_text()) if report.exists() else None
    if rc != 0 or rep is None or rep.get("status") != "ok":
        row["status"] = "failed" if rc == 5 else f"error rc={rc}"
        if rep and rep.get("error"):
            row["message"] = rep["error"]["message"]
        else:
            lines = (RESULTS / f"{tag}.log").read_text().strip().splitlines()
            row["message"] = lines[-1] if lines else ""
        return row
    grid = np.asarray(rep["model"]["check_grid"], float)
    row["max_px"], row["mean_px"] = errors(grid[:, 2], grid[:, 3], case.truth, grid[:, 0], grid[:, 1])
    row.update(status="ok", model=rep["model"]["type"], inliers=rep["quality"]["inliers"],
               matches=rep["quality"]["matches"], rmse_px=rep["quality"]["rmse_px"],
               dmreg_s=rep["timings_s"].get("total"), warnings=rep.get("warnings", []))
    return row


def baseline(case: Case) -> dict:
    with rasterio.open(case.mov) as m:
        xs, ys = check_points(m.width, m.height)
    gx, gy = georef_mapping(case.mov, case.ref)(xs, ys)
    mx, mean = errors(gx, gy, case.truth, xs, ys)
    return {"case": case.name, "matcher": "none", "status": "ok", "model": "georef", "max_px": mx, "mean_px": mean}


# --------------------------------------------------------------------------- table

def fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'case':<20} {'matcher':<22} {'model':<12} {'max_px':>8} {'mean_px':>8} {'gain_max':>8} "
            f"{'gain_mean':>9} {'inliers':>7} {'t_dmreg_s':>9} {'wall_s':>7} {'peak_MB':>8}")
    lines = [head, "-" * len(head)]
    base: dict[str, dict] = {}
    for r in rows:
        if r["matcher"] == "none":
            base[r["case"]] = r
        b = base.get(r["case"])
        if r["status"] != "ok":
            lines.append(f"{r['case']:<20} {r['matcher']:<22} {r['status']:<12} {'':>8} {'':>8} {'':>8} {'':>9} "
                         f"{'':>7} {'':>9} {fmt(r.get('wall_s'), '.2f'):>7} {fmt(r.get('peak_mb'), '.0f'):>8}")
            continue
        gmax = b["max_px"] / max(r["max_px"], 1e-6) if b else None
        gmean = b["mean_px"] / max(r["mean_px"], 1e-6) if b else None
        lines.append(
            f"{r['case']:<20} {r['matcher']:<22} {r['model']:<12} {fmt(r['max_px'], '.3f'):>8} "
            f"{fmt(r['mean_px'], '.3f'):>8} {fmt(gmax, '.1f'):>8} {fmt(gmean, '.1f'):>9} "
            f"{fmt(r.get('inliers'), 'd'):>7} {fmt(r.get('dmreg_s'), '.2f'):>9} {fmt(r.get('wall_s'), '.2f'):>7} "
            f"{fmt(r.get('peak_mb'), '.0f'):>8}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--matchers", default="structural,sift",
                    help="comma-separated matchers, each optionally NAME@WEIGHTS (learned weights) and "
                         "NAME:MODEL to force a model (e.g. structural:translation, "
                         "distillmatch@distillmatch-v0.2); default: %(default)s")
    args = ap.parse_args()

    dmreg = find_dmreg("bench_register")
    RESULTS.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {c.name for c in cases}
        if unknown:
            ap.error(f"unknown case(s): {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in cases)}")
        cases = [c for c in cases if c.name in wanted]
    matchers = [m for m in args.matchers.split(",") if m]

    rc, wall, floor_mb = run_child([dmreg, "--version"], RESULTS / "version.log")
    print(f"dmreg: {dmreg}  ({(RESULTS / 'version.log').read_text().strip()}); "
          f"import floor (dmreg --version): {floor_mb:.0f} MB peak RSS, {wall:.2f} s")

    rows: list[dict] = []
    for case in cases:
        print(f"\n[{case.name}] {case.description}", flush=True)
        rows.append(baseline(case))
        for matcher in matchers:
            row = register_case(dmreg, case, matcher)
            rows.append(row)
            if row["status"] == "ok":
                extra = f"{row['model']}, max {row['max_px']:.3f} px, {row['inliers']} inliers, {row['wall_s']:.1f} s"
                if row["warnings"]:
                    extra += f", warnings: {'; '.join(row['warnings'])}"
            else:
                extra = f"{row['status']}: {row.get('message', '')}"
            print(f"  {matcher:<22} {extra}", flush=True)

    text = table(rows)
    print()
    print("Errors in reference pixels over the report's 10x10 check grid, vs the known truth;")
    print("'none' = raw georeferencing (identity correction); gain = error(none) / error(matcher).")
    print("t_dmreg_s = report timings_s.total; wall_s = whole CLI process; peak_MB = child max RSS.\n")
    print(text)
    (RESULTS / "bench_register.txt").write_text(text + "\n")
    (RESULTS / "bench_register.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_register.txt'} and .json; per-run reports, logs and rasters in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
