"""DistillMatch benchmark: size, speed (CPU, and GPU when there is one) and cross-modal
accuracy against the classical matchers on a scene no weight file was trained on.

    python benchmarks/bench_distillmatch.py [--weights NAME_OR_PATH] [--pairs 40]

Accuracy protocol: pairs from the held-out Landsat 7 scene (red vs NIR, SWIR1, SWIR2;
real bands, co-registered by the provider), the second image warped by a known random
homography. Each matcher's matches are fitted with RANSAC (homography, 3 px) and the
mean error of the fitted mapping at the four crop corners is the pair's error
(HPatches-style). Reported: success rate at 3 px and median corner error, for a
"fine-stage" warp range (what tiles look like after dmreg's coarse alignment) and a
"wide" range (no prior alignment). Timing: median of repeated runs of one 640 x 640
tile pair, fp32 on 2 CPU threads; on CUDA bf16 autocast at batch 1 and 16 with peak
memory. Everything is measured in this process, so ratios between rows are fair.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dmreg.estimate.robust import ransac
from dmreg.matchers import TilePair, get_matcher
from dmreg.matchers.distillmatch.matcher import DistillMatchMatcher
from dmreg.train.catalogue import catalogue
from dmreg.train.data import PairDataset
from dmreg.train.homography import HomographyRange, apply_homography
from dmreg.train.split import HELD_OUT_SCENES

REPO = Path(__file__).resolve().parents[1]
RANGES = {
    "fine-stage": HomographyRange(max_angle_deg=3.0, max_scale=1.03, max_shift_frac=0.03, max_perspective=0.01),
    "wide": HomographyRange(max_angle_deg=20.0, max_scale=1.25, max_shift_frac=0.1, max_perspective=0.05),
}


def corner_error(h_true: np.ndarray, ref_xy: np.ndarray, mov_xy: np.ndarray, size: int) -> float:
    """Mean corner error (px) of the mapping fitted from matches; inf when none fits."""
    if len(ref_xy) < 8:
        return float("inf")
    fit = ransac("homography", ref_xy, mov_xy, threshold=3.0, seed=0)
    if fit is None or fit.n_inliers < 8:
        return float("inf")
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], float)
    est = np.column_stack(fit.transform.apply(corners[:, 0], corners[:, 1]))
    return float(np.linalg.norm(est - apply_homography(h_true, corners), axis=1).mean())


def accuracy(matchers: dict, pairs: int, size: int, seed: int) -> list[dict]:
    sources = catalogue(REPO / "examples" / "data", REPO / "benchmarks" / "data")
    rows = []
    for range_name, warp in RANGES.items():
        data = PairDataset(sources, scenes=HELD_OUT_SCENES, crop_size=size, length=pairs, seed=seed,
                           simulate_prob=0.0, warp=warp, jitter=False)
        errors = {name: [] for name in matchers}
        times = {name: [] for name in matchers}
        for i in range(pairs):
            item = data[i]
            pair = TilePair(item["image0"][0].numpy(), item["image1"][0].numpy(), item["valid0"].numpy(),
                            item["valid1"].numpy(), max_offset=0.3 * size if range_name == "wide" else 16.0)
            h = item["H_0to1"].numpy().astype(np.float64)
            for name, matcher in matchers.items():
                t = time.perf_counter()
                found = matcher.match([pair])[0]
                times[name].append(time.perf_counter() - t)
                errors[name].append(corner_error(h, found.ref_xy, found.mov_xy, size))
        for name in matchers:
            e = np.array(errors[name])
            rows.append({"range": range_name, "matcher": name, "pairs": pairs,
                         "success@3px": round(float((e < 3).mean()), 3),
                         "median_px": round(float(np.median(e)), 3) if np.isfinite(np.median(e)) else None,
                         "time_s": round(statistics.median(times[name]), 3)})
    return rows


def speed(matcher: DistillMatchMatcher, batch: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    img = rng.random((640, 640), dtype=np.float32)
    ok = np.ones_like(img, bool)
    pairs = [TilePair(img, np.roll(img, 3, axis=1), ok, ok, max_offset=64.0)] * batch
    matcher.match(pairs)  # warm-up
    dev = matcher._device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        matcher.match(pairs)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t)
    out = {"device": str(dev), "batch": batch, "ms_per_pair": round(1000 * statistics.median(times) / batch, 1)}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    torch.set_num_threads(2)
    dm = DistillMatchMatcher(weights=args.weights, device="cpu", batch_size=1)
    params = sum(p.numel() for n, p in dm._model.named_parameters() if not n.startswith("projector."))
    results: dict = {"weights": dm.describe(), "inference_params": params}
    results["speed"] = [speed(dm, 1, args.repeats)]
    structural = get_matcher("structural")
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    img = rng.random((640, 640), dtype=np.float32)
    ok = np.ones_like(img, bool)
    for _ in range(args.repeats):
        structural.match([TilePair(img, np.roll(img, 3, axis=1), ok, ok, max_offset=8.0)])
    results["speed"].append({"device": "cpu", "matcher": "structural", "batch": 1,
                             "ms_per_pair": round(1000 * (time.perf_counter() - t) / args.repeats, 1)})
    if torch.cuda.is_available():
        gpu = DistillMatchMatcher(weights=args.weights, device="cuda", batch_size=16)
        results["speed"] += [speed(gpu, 1, args.repeats), speed(gpu, 16, args.repeats)]
    matchers = {"distillmatch": dm, "structural": structural, "sift": get_matcher("sift")}
    results["accuracy"] = accuracy(matchers, args.pairs, args.size, args.seed)

    print(f"weights {results['weights']['weights']} ({results['weights']['weights_sha256'][:12]}), "
          f"{params / 1e6:.2f} M inference parameters")
    for s in results["speed"]:
        print(f"speed  {s.get('matcher', 'distillmatch'):12s} {s['device']:6s} batch {s['batch']:2d}: "
              f"{s['ms_per_pair']:8.1f} ms/pair" + (f", peak {s['peak_gpu_mb']} MB" if "peak_gpu_mb" in s else ""))
    print(f"{'range':11s} {'matcher':13s} {'pairs':>5s} {'succ@3px':>9s} {'median_px':>10s} {'time_s':>7s}")
    for r in results["accuracy"]:
        med = "-" if r["median_px"] is None else f"{r['median_px']:.3f}"
        print(f"{r['range']:11s} {r['matcher']:13s} {r['pairs']:5d} {r['success@3px']:9.3f} {med:>10s} {r['time_s']:7.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
