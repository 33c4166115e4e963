#!/usr/bin/env python
"""Peak bias against read offset: how far a matcher's sub-pixel offsets move when the
moving tile is read a fraction of a pixel away from the truth.

A first pass is promoted to final, with no refinement pass, when its model stays within
the matcher's ``refine_tolerance_px`` of the model its tiles were read through
(``dmreg/fine.py``), or within its ``reread_within_px`` if it then reads its first
tiles again. That is only safe while tiles read that far off bias the peaks by much
less than the target error. This script measures it on bands of one scene, which
the provider registered to each other, so the true offset is the same at every read
offset:

- tiles lie where neither band has nodata (at most four per pair);
- the reference tile is read at whole pixels, the moving one by bilinear interpolation
  (as dmreg reads through a model) at an offset ``f`` along 0, 90, 180 and 270 degrees;
- per tile the offset measured is the median over its matches, minus ``f``;
- the bias at ``f`` is its distance from the same tile's value at ``f = 0``.

Pairs: Landsat 8 224078 B4 against B2 and B3 (``fetch_data.sh``; 384 px tiles),
Landsat 7 red against NIR and SWIR2 (``examples/data``, 349 x 352 px, 309 px tiles).
Small scenes give few templates per tile, so their medians are noisy: the table also
gives the bias at the smallest offset, which on an unbiased matcher is mostly that noise.

Output: a table per pair (median and largest bias over tiles and directions at each
offset, templates matched per tile) on stdout and as JSON in
``benchmarks/results/peak_bias/peak_bias.json``.

Usage: python benchmarks/peak_bias.py [--matcher structural] [--offsets 0.05,0.1,0.2,0.3,0.5,0.75,1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import rasterio

from dmreg.io.sampling import normalise_contrast
from dmreg.matchers import get_matcher
from dmreg.matchers.base import TilePair

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
EXAMPLES = ROOT.parent / "examples" / "data"
RESULTS = ROOT / "results" / "peak_bias"
TILE = 384
DIRECTIONS_DEG = (0.0, 90.0, 180.0, 270.0)


def band(path: Path, index: int = 1) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(index).astype(np.float32)


def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Co-registered band pairs that are on this machine."""
    found = []
    l8 = DATA / "LC08_L1TP_224078_20200518_20200518_01_RT_{}.TIF"
    if Path(str(l8).format("B4")).exists():
        red = band(Path(str(l8).format("B4")))
        for other in ("B2", "B3"):
            found.append((f"L8 B4/{other}", red, band(Path(str(l8).format(other)))))
    etm = EXAMPLES / "L7_ETMs.tif"
    red = band(etm, 3)
    found.append(("L7 red/NIR", red, band(etm, 4)))
    found.append(("L7 red/SWIR2", red, band(etm, 6)))
    return found


def tile_origins(ref: np.ndarray, mov: np.ndarray, side: int) -> list[tuple[int, int]]:
    """(row, col) of up to four tiles of ``side`` px, 20 px in from the edges, on a 3 x 3
    lattice, where neither band has a nodata (zero) pixel: a scene's nodata corners give
    few matches and noisy medians."""
    rows, cols = ref.shape
    lattice = [(int(r), int(c)) for r in np.linspace(20, rows - side - 20, 3)
               for c in np.linspace(20, cols - side - 20, 3)]
    full = [(r, c) for r, c in lattice
            if (ref[r:r + side, c:c + side] > 0).all() and (mov[r:r + side, c:c + side] > 0).all()]
    return full[:4]


def measured_offset(matcher, ref_full: np.ndarray, mov_full: np.ndarray, origin: tuple[int, int], side: int,
                    shift: np.ndarray) -> tuple[np.ndarray, int]:
    """Median (x, y) offset of the matches between the reference tile at ``origin`` and the
    moving tile read ``shift`` px further, minus ``shift``; and how many matches."""
    r0, c0 = origin
    gx, gy = np.meshgrid(np.arange(side, dtype=np.float32) + c0, np.arange(side, dtype=np.float32) + r0)
    ref = cv2.remap(ref_full, gx, gy, cv2.INTER_LINEAR)
    mov = cv2.remap(mov_full, gx + np.float32(shift[0]), gy + np.float32(shift[1]), cv2.INTER_LINEAR)
    ok = np.ones((side, side), bool)
    found = matcher.match([TilePair(normalise_contrast(ref, ok), normalise_contrast(mov, ok), ok, ok,
                                    max_offset=4.0)])[0]
    if len(found) == 0:
        return np.full(2, np.nan), 0
    return np.median(found.ref_xy - found.mov_xy, axis=0) - shift, len(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matcher", default="structural")
    ap.add_argument("--offsets", default="0.05,0.1,0.2,0.3,0.5,0.75,1", help="read offsets in px (comma list)")
    args = ap.parse_args()
    offsets = [float(v) for v in args.offsets.split(",")]
    matcher = get_matcher(args.matcher)
    rows = []
    print(f"peak bias of {args.matcher} (px) against read offset; median / largest over tiles and directions")
    print(f"{'pair':14s} {'templates':>9s} " + " ".join(f"{f:>13.2f}" for f in offsets))
    for name, ref_full, mov_full in pairs():
        side = min(TILE, ref_full.shape[0] - 40, ref_full.shape[1] - 40)
        origins = tile_origins(ref_full, mov_full, side)
        if not origins:
            print(f"{name:14s} skipped: no {side} px tile free of nodata", flush=True)
            continue
        bias = {f: [] for f in offsets}
        counts = []
        for origin in origins:
            at_zero, n = measured_offset(matcher, ref_full, mov_full, origin, side, np.zeros(2))
            counts.append(n)
            for f in offsets:
                for angle in np.radians(DIRECTIONS_DEG):
                    shift = f * np.array([np.cos(angle), np.sin(angle)])
                    offset, _ = measured_offset(matcher, ref_full, mov_full, origin, side, shift)
                    bias[f].append(float(np.hypot(*(offset - at_zero))))
        row = {"pair": name, "tile_px": side, "tiles": len(counts), "matches_per_tile": int(np.median(counts)),
               "bias_px": {str(f): {"median": float(np.nanmedian(v)), "max": float(np.nanmax(v))}
                           for f, v in bias.items()}}
        rows.append(row)
        cells = " ".join(f"{row['bias_px'][str(f)]['median']:6.3f}/{row['bias_px'][str(f)]['max']:6.3f}"
                         for f in offsets)
        print(f"{name:14s} {row['matches_per_tile']:9d} {cells}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "peak_bias.json"
    out.write_text(json.dumps({"matcher": args.matcher, "offsets_px": offsets, "pairs": rows}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
