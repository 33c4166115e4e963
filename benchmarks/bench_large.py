#!/usr/bin/env python
"""Large-raster benchmark: time, peak memory and accuracy of `dmreg register` on
~9000 x 8200 pixel rasters.

Input: Landsat 8 scene 224078 (2041 x 1860 px, 30 m, from fetch_data.sh), red (B4) as
reference and blue (B2) as moving, both upsampled 4.4x (-> 8980 x 8184 px, ~6.8 m) and
written block by block as tiled (512) DEFLATE GeoTIFFs, so neither this script nor
anything else ever holds a whole raster. Landsat fill (0) becomes nodata. The moving
raster's geotransform is shifted by (12.3, -7.6) pixels; its pixels are on the same
grid as the reference's, so the true moving -> reference pixel mapping is the identity.

The CLI runs in a fresh child process, writing the aligned raster on the reference
grid; its peak RSS is the child's ru_maxrss (os.wait4). A watchdog kills the child if
its RSS passes --rss-cap-mb (default 4000 MB), to protect a shared machine.

Usage: python benchmarks/bench_large.py [--regenerate] [--band B2|B3]
       [--rss-cap-mb N] [--tag NAME] [-- extra dmreg register options]
e.g.   python benchmarks/bench_large.py --tag affine -- --model affine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from common import compile_bytecode, find_dmreg

HERE = Path(__file__).resolve().parent
SRC_DIR = HERE / "data"
DATA = HERE / "data" / "large"
RESULTS = HERE / "results" / "large"
SCENE = "LC08_L1TP_224078_20200518_20200518_01_RT"
FACTOR = 4.4
SHIFT = (12.3, -7.6)
BLOCK = 512
RSS_LIMIT_MB = 1500.0
GRID_N = 10


# --------------------------------------------------------------------------- data

def ensure_sources(bands: list[str]) -> dict[str, Path]:
    paths = {b: SRC_DIR / f"{SCENE}_{b}.TIF" for b in bands}
    if not all(p.exists() for p in paths.values()):
        print("bench_large: Landsat 8 sources missing, running fetch_data.sh", flush=True)
        subprocess.run(["bash", str(HERE / "fetch_data.sh")], check=True)
    return paths


def upsampled_block(src: rasterio.io.DatasetReader, win: Window, sx: float, sy: float) -> np.ndarray:
    """Output window ``win`` of the upsampled raster: bilinear, fill (0) kept as 0.

    Output pixel centre (c + 0.5, r + 0.5) lies at source pixel (c + 0.5) * sx, (r + 0.5) * sy
    (pixel-corner convention); cv2 wants pixel-centre coordinates, hence the - 0.5.
    """
    cols = np.arange(win.col_off, win.col_off + win.width) + 0.5
    rows = np.arange(win.row_off, win.row_off + win.height) + 0.5
    fx, fy = cols * sx - 0.5, rows * sy - 0.5
    x0 = max(int(np.floor(fx.min())) - 2, 0)
    y0 = max(int(np.floor(fy.min())) - 2, 0)
    x1 = min(int(np.ceil(fx.max())) + 3, src.width)
    y1 = min(int(np.ceil(fy.max())) + 3, src.height)
    data = src.read(1, window=Window(x0, y0, x1 - x0, y1 - y0)).astype(np.float32)
    valid = (data > 0).astype(np.float32)
    map_x = np.broadcast_to((fx - x0).astype(np.float32)[None, :], (win.height, win.width))
    map_y = np.broadcast_to((fy - y0).astype(np.float32)[:, None], (win.height, win.width))
    map_x, map_y = np.ascontiguousarray(map_x), np.ascontiguousarray(map_y)
    vals = cv2.remap(data, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.remap(valid, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.where(weight > 0.999, np.clip(np.rint(vals), 1, 65535), 0).astype(np.uint16)


def upsample(src_path: Path, dst_path: Path, shift: tuple[float, float]) -> tuple[int, int]:
    """Write the 4.4x upsampled raster block by block; geotransform moved by ``shift`` px."""
    with rasterio.open(src_path) as src:
        width, height = round(src.width * FACTOR), round(src.height * FACTOR)
        sx, sy = src.width / width, src.height / height
        transform = src.transform * Affine.scale(sx, sy) * Affine.translation(*shift)
        profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint16", nodata=0,
                       crs=src.crs, transform=transform, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                       compress="deflate", predictor=2)
        tmp = dst_path.with_suffix(".tmp.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            for _, win in dst.block_windows(1):
                dst.write(upsampled_block(src, win, sx, sy), 1, window=win)
        os.replace(tmp, dst_path)
        return width, height


def ensure_inputs(band: str = "B2", regenerate: bool = False) -> tuple[Path, Path, dict[str, Path]]:
    """``DATA/ref.tif`` (B4) and ``DATA/mov.tif`` (``band``, geotransform shifted by SHIFT),
    generated when missing, stale (``inputs.json`` differs) or ``regenerate``; also the
    Landsat 8 source paths by band."""
    DATA.mkdir(parents=True, exist_ok=True)
    sources = ensure_sources(["B4", band])
    ref, mov = DATA / "ref.tif", DATA / "mov.tif"
    stamp = DATA / "inputs.json"
    wanted = {"ref": sources["B4"].name, "mov": sources[band].name, "factor": FACTOR, "shift": SHIFT}
    current = json.loads(stamp.read_text()) if stamp.exists() else None
    if regenerate or current != json.loads(json.dumps(wanted)) or not (ref.exists() and mov.exists()):
        stamp.unlink(missing_ok=True)
        t = time.perf_counter()
        w, h = upsample(sources["B4"], ref, (0.0, 0.0))
        upsample(sources[band], mov, SHIFT)
        stamp.write_text(json.dumps(wanted))
        gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(f"generated {ref.name} and {mov.name}: {w} x {h} px each, {time.perf_counter() - t:.1f} s, "
              f"generator peak RSS {gen_rss:.0f} MB", flush=True)
    return ref, mov, sources


# --------------------------------------------------------------------------- running

def run_child(cmd: list[str], log: Path, cap_mb: float) -> dict:
    """Run ``cmd`` in a fresh process; wall time, ru_maxrss and a sampled RSS timeline."""
    samples: list[tuple[float, float]] = []
    killed = threading.Event()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

        def watch() -> None:
            status = Path(f"/proc/{proc.pid}/status")
            while proc.returncode is None:
                try:
                    line = next(l for l in status.read_text().splitlines() if l.startswith("VmRSS:"))
                except (OSError, StopIteration):
                    return
                rss = int(line.split()[1]) / 1024.0
                samples.append((time.perf_counter() - t0, rss))
                if rss > cap_mb and not killed.is_set():
                    killed.set()
                    proc.kill()
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        watcher.join(1.0)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_mb": usage.ru_maxrss / 1024.0,
            "killed_by_watchdog": killed.is_set(), "rss_samples": samples,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def check_points(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.linspace(0.5, width - 0.5, GRID_N), np.linspace(0.5, height - 0.5, GRID_N))
    return xs.ravel(), ys.ravel()


def content_check(aligned: Path, mov_src: Path, n: int = 6) -> dict:
    """Aligned output vs the unshifted upsampled moving band on a few 512 blocks: the
    mean absolute difference (DN) of valid pixels, and the same for the unaligned
    moving raster read on the reference grid, for scale."""
    rng = np.random.default_rng(0)
    mad_aligned, mad_raw, valid_frac = [], [], []
    with rasterio.open(aligned) as out, rasterio.open(mov_src) as src, \
            rasterio.open(DATA / "mov.tif") as mov:
        sx, sy = src.width / out.width, src.height / out.height
        dx, dy = round(SHIFT[0]), round(SHIFT[1])
        for _ in range(n):
            col = int(rng.integers(BLOCK, out.width - 2 * BLOCK))
            row = int(rng.integers(BLOCK, out.height - 2 * BLOCK))
            win = Window(col, row, BLOCK, BLOCK)
            truth = upsampled_block(src, win, sx, sy).astype(np.float32)
            got = out.read(1, window=win).astype(np.float32)
            # the unaligned moving raster seen on the reference grid (nearest whole-pixel shift)
            raw = mov.read(1, window=Window(col - dx, row - dy, BLOCK, BLOCK)).astype(np.float32)
            ok = (truth > 0) & (got > 0) & (raw > 0)
            valid_frac.append(float(ok.mean()))
            if ok.any():
                mad_aligned.append(float(np.abs(got - truth)[ok].mean()))
                mad_raw.append(float(np.abs(raw - truth)[ok].mean()))
    return {"blocks": n, "mad_aligned_dn": float(np.mean(mad_aligned)) if mad_aligned else None,
            "mad_unaligned_dn": float(np.mean(mad_raw)) if mad_raw else None,
            "valid_fraction": float(np.mean(valid_frac))}


def matcher_lines(rep: dict) -> list[str]:
    """The fine passes' matcher throughput (the coarse level is one more, larger tile of
    its own and is left out) and, on a GPU, the peak memory the matching took."""
    matcher = rep.get("matcher") or {}
    tiles = sum(p.get("tiles_read", 0) for p in rep.get("passes") or [])
    match_s = (rep.get("timings_s") or {}).get("match")
    lines = [f"matcher              {matcher.get('name')} on {matcher.get('device')}"]
    if tiles and match_s:
        lines.append(f"fine tiles           {tiles} read over {len(rep['passes'])} pass(es): {match_s / tiles:.3f} s per "
                     f"tile, {tiles / match_s:.2f} tiles/s")
    if matcher.get("peak_memory_mb") is not None:
        lines.append(f"peak GPU memory      {matcher['peak_memory_mb']:.0f} MB")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regenerate", action="store_true", help="rewrite the upsampled inputs")
    ap.add_argument("--band", default="B2", choices=("B2", "B3"), help="moving band (default %(default)s)")
    ap.add_argument("--rss-cap-mb", type=float, default=4000.0, help="kill dmreg above this RSS (default %(default)s)")
    ap.add_argument("--tag", default="default", help="results go to results/large/TAG/ (default %(default)s)")
    ap.add_argument("--matcher", help="dmreg's --matcher (default: dmreg's own)")
    ap.add_argument("--device", help="dmreg's --device, e.g. cuda (default: dmreg's own)")
    ap.add_argument("extra", nargs="*", help="extra `dmreg register` options (after --)")
    args = ap.parse_args()

    dmreg = find_dmreg("bench_large")
    compile_bytecode()
    RESULTS.mkdir(parents=True, exist_ok=True)
    ref, mov, sources = ensure_inputs(args.band, args.regenerate)
    with rasterio.open(ref) as r, rasterio.open(mov) as m:
        width, height, res = r.width, r.height, r.transform.a
        mov_w, mov_h = m.width, m.height
    in_mb = (ref.stat().st_size + mov.stat().st_size) / 1e6
    print(f"reference: {ref} ({width} x {height}, {res:.3f} m, B4 red)")
    print(f"moving:    {mov} ({mov_w} x {mov_h}, {args.band}, geotransform shifted by {SHIFT} px)")
    print(f"inputs on disk: {in_mb:.1f} MB (DEFLATE, 512 tiles)", flush=True)

    results = RESULTS / args.tag
    results.mkdir(parents=True, exist_ok=True)
    out, report, log = results / "aligned.tif", results / "report.json", results / "dmreg.log"
    for p in (out, report):
        p.unlink(missing_ok=True)
    cmd = [dmreg, "register", str(ref), str(mov), "-o", str(out), "--of", "GTiff", "--report", str(report),
           "--overwrite", "-v", *(["--matcher", args.matcher] if args.matcher else []),
           *(["--device", args.device] if args.device else []), *args.extra]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    run = run_child(cmd, log, args.rss_cap_mb)

    xs, ys = check_points(mov_w, mov_h)
    base = float(np.hypot(*SHIFT))  # raw georeferencing puts every pixel SHIFT away
    lines = [f"exit code            {run['rc']}" + ("  (killed by the RSS watchdog)" if run["killed_by_watchdog"] else ""),
             f"wall time            {run['wall_s']:.1f} s  (CPU {run['cpu_s']:.1f} s)",
             f"peak RSS             {run['peak_mb']:.0f} MB  -> "
             f"{'PASS' if run['peak_mb'] < RSS_LIMIT_MB else 'FAIL'} (limit {RSS_LIMIT_MB:.0f} MB)"]
    summary: dict = {"command": " ".join(cmd), **{k: v for k, v in run.items() if k != "rss_samples"}}
    rep = json.loads(report.read_text()) if report.exists() else None
    if run["rc"] == 0 and rep and rep.get("status") == "ok":
        grid = np.asarray(rep["model"]["check_grid"], float)
        err = np.hypot(grid[:, 2] - grid[:, 0], grid[:, 3] - grid[:, 1])  # truth: identity
        assert np.allclose(grid[:, 0], xs) and np.allclose(grid[:, 1], ys)
        q = rep["quality"]
        size_mb = out.stat().st_size / 1e6
        with rasterio.open(out) as o:
            out_desc = f"{o.width} x {o.height} x {o.count} {o.dtypes[0]}, {o.compression.name if o.compression else 'none'}, blocks {o.block_shapes[0]}"
        check = content_check(out, sources[args.band])
        lines += [
            "dmreg timings (s)    " + ", ".join(f"{k} {v}" for k, v in rep["timings_s"].items()),
            f"model                {rep['model']['type']}  (coarse: {rep['coarse'].get('model')}, "
            f"{rep['coarse'].get('matches')} matches)",
            f"tiles matched        {q['tiles_matched']} / {q['tiles']}; matches {q['matches']}, inliers {q['inliers']}, "
            f"rmse {q['rmse_px']} px",
            f"error before         max {base:.3f} px, mean {base:.3f} px (raw georeferencing)",
            f"error after          max {err.max():.3f} px, mean {err.mean():.3f} px (check_grid vs truth)",
            f"gain                 max {base / max(err.max(), 1e-9):.1f}x, mean {base / max(err.mean(), 1e-9):.1f}x",
            f"output               {out} : {size_mb:.1f} MB, {out_desc}",
            f"content check        mean |aligned - truth| {check['mad_aligned_dn']:.1f} DN vs unaligned "
            f"{check['mad_unaligned_dn']:.1f} DN over {check['blocks']} random 512 blocks",
        ]
        lines += matcher_lines(rep)
        if rep.get("warnings"):
            lines.append(f"warnings             {'; '.join(rep['warnings'])}")
        summary.update(model=rep["model"]["type"], max_px=float(err.max()), mean_px=float(err.mean()),
                       baseline_px=base, quality=q, timings_s=rep["timings_s"], output_mb=size_mb, content=check)
    else:
        tail = log.read_text().strip().splitlines()[-3:]
        lines.append("registration         " + ("failed" if run["rc"] == 5 else f"error rc={run['rc']}"))
        lines += [f"  {l}" for l in tail]
    samples = run["rss_samples"]
    if samples:
        peak_t = max(samples, key=lambda s: s[1])[0]
        lines.append(f"RSS samples          {len(samples)} (every 0.2 s), sampled max {max(s[1] for s in samples):.0f} MB "
                     f"at t={peak_t:.0f} s of {run['wall_s']:.0f} s")
    text = "\n".join(lines)
    print(text)
    (results / "bench_large.txt").write_text(text + "\n")
    (results / "bench_large.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (results / "rss_timeline.csv").write_text("t_s,rss_mb\n" + "".join(f"{t:.2f},{r:.1f}\n" for t, r in samples))
    print(f"\nwritten: {results / 'bench_large.txt'}, .json, rss_timeline.csv; dmreg log {log}")
    return 0 if run["rc"] == 0 and run["peak_mb"] < RSS_LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
