"""Pseudo-SAR against real Sentinel-1: do the simulated images have the statistics of real ones?

    python benchmarks/sar_statistics.py --data ../shared/data [--draws 8] [--seed 0] [--json PATH]

Real data (``--data`` is the shared data folder; nothing is downloaded, and every file group
names its public origin in ``SOURCES``): Sentinel-1 VV and VH backscatter in dB with the
co-located Sentinel-2 L2A red band (B04) of the same patch, from BigEarthNet (the
``bigearthnet-common`` example patches and the ``configilm`` mock patches, 120 x 120 px) and
TerraMind's TerraMesh examples (S1 RTC and S2 L2A, 224 x 224 px), all at 10 m.

For every patch the red band is stretched as dmreg stretches tiles
(``dmreg.io.sampling.normalise_contrast``, 1-99 percentiles) and turned into pseudo-SAR
``--draws`` times by the OLD simulation (a verbatim copy of ``pseudo_sar`` before the
rewrite, kept only here) and by the NEW one (``dmreg.train.simulate``). The real SAR bands
are stretched the same way from dB. Statistics, the same code for real and simulated:

- ENL: equivalent number of looks, mean^2 / variance of LINEAR intensity in the 10% of the
  7 x 7 windows with the lowest coefficient of variation (the homogeneous ones); per image,
  then the median over images. The selection and the spatial correlation of real speckle
  both push it above the product's nominal ENL (4.4 for IW GRDH): compare columns, not
  with the nominal number.
- Histogram of the stretched [0, 1] values, pooled over all images: Wasserstein-1 distance
  and Kolmogorov-Smirnov statistic to the pooled real histogram (0 = identical).
- Skewness and excess kurtosis of the dB values (before the stretch; both are unchanged by
  an affine map, so log-amplitude and dB agree); median over images.
- Lag-1 and lag-3 autocorrelation of the stretched image (mean of the row and column
  directions); median over images. Lag 1 mixes speckle correlation (real GRD pixels are
  half the resolution cell) with scene structure; lag 3 is mostly scene structure.
- Optical correlation: Pearson correlation between the stretched red band and the stretched
  SAR image, median of its absolute value over images. Real S1 vs S2 is weakly correlated;
  a simulation strongly correlated with its optical input lets a matcher match intensities.

"real" pools VV and VH (dmreg registers either); the VV and VH columns are for reference
(their W1 and KS to the pooled real histogram show how far one real polarisation already
is: a floor for what "close" can mean).
"closer" says which simulation is nearer to "real" on each row, or "tie" when the two differ
by less than twice the standard error of that difference over the draws (each draw's
summary computed alone; "se new" is the new simulation's). Table on stdout, JSON in
``benchmarks/results/sar_statistics.json`` (or ``--json``). Takes about 20 s on 2 cores.

Data layout notes: the configilm mock ``s1_VV_VH_dB.tif`` files hold VV and VH as two TIFF
pages (tifffile wrote a 2 x 120 x 120 array), so GDAL opens them as ONE band; both pages are
read here through their ``GTIFF_DIR:n:`` subdatasets (page 1 VV, page 2 VH).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from dmreg.io.sampling import normalise_contrast
from dmreg.train import simulate

REPO = Path(__file__).resolve().parents[1]

SOURCES = {
    "ben_common": "PyPI bigearthnet-common==2.8.0, bigearthnet_common/BigEarthNet-S{1,2}-Example.tar.bz2 "
                  "(data CDLA-Permissive-1.0, Copernicus)",
    "ben_v1_mock": "PyPI configilm==0.7.1, configilm/extra/mock_data/BENv1/*.lmdb, unpacked to TIFF "
                   "(data CDLA-Permissive-1.0, Copernicus)",
    "ben_v2_mock": "PyPI configilm==0.7.1, configilm/extra/mock_data/BENv2/*.lmdb, unpacked to TIFF "
                   "(data CDLA-Permissive-1.0, Copernicus)",
    "terramind": "GitHub IBM/terramind at commit 8090b5c, examples/{S1RTC,S2L2A}/*.tif (Apache-2.0)",
}
"""File group -> the public origin of its files (see the data folder's README.md)."""

ENL_WINDOW = 7
ENL_FRACTION = 0.1
HIST_BINS = 1000


@dataclass(frozen=True)
class Patch:
    """One real S1/S2 patch: S1 bands in dB by polarisation and the S2 red band (raw DN)."""

    group: str
    name: str
    s1_db: dict[str, np.ndarray]
    red: np.ndarray


def _read(path: str | Path, band: int = 1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the mock TIFFs carry no georeferencing
        with rasterio.open(path) as ds:
            return ds.read(band).astype(np.float64)


def load_patches(data: Path) -> list[Patch]:
    """Every S1/S2 patch pair of the data folder that this benchmark knows how to read."""
    patches = []
    ben = data / "bigearthnet"
    for s1_dir in sorted((ben / "ben_common_geotiff" / "BigEarthNet-S1-Example").glob("*")):
        meta = json.loads(next(s1_dir.glob("*_labels_metadata.json")).read_text())
        s2_name = meta["corresponding_s2_patch"]
        red = ben / "ben_common_geotiff" / "BigEarthNet-S2-Example" / s2_name / f"{s2_name}_B04.tif"
        s1 = {pol: _read(next(s1_dir.glob(f"*_{pol}.tif"))) for pol in ("VV", "VH")}
        patches.append(Patch("ben_common", s1_dir.name, s1, _read(red)))
    for group in ("ben_v1_mock", "ben_v2_mock"):
        for d in sorted((ben / group).glob("*/")):
            s1_path = d / "s1_VV_VH_dB.tif"
            if not s1_path.exists():
                continue
            # two TIFF pages, VV then VH: GDAL sees one band per page
            s1 = {pol: _read(f"GTIFF_DIR:{page}:{s1_path}") for page, pol in ((1, "VV"), (2, "VH"))}
            red = _read(d / "s2_10m_B02_B03_B04_B08.tif", band=3)
            patches.append(Patch(group, d.name, s1, red))
    tm = data / "terramind_terramesh"
    for s1_path in sorted((tm / "S1RTC").glob("*.tif")):
        s1 = {pol: _read(s1_path, band=b) for b, pol in ((1, "VV"), (2, "VH"))}
        patches.append(Patch("terramind", s1_path.stem, s1, _read(tm / "S2L2A" / s1_path.name, band=4)))
    return patches


def old_pseudo_sar(img: np.ndarray, rng: np.random.Generator, looks: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``dmreg.train.simulate.pseudo_sar`` as it was before the rewrite (commit 90165e0),
    copied verbatim except that it also returns its linear intensity and its log image:
    (stretched image, linear intensity, log amplitude)."""
    if looks is None:
        looks = int(rng.integers(1, 5))
    if not 1 <= looks <= 4:
        raise ValueError(f"looks must be 1 to 4, got {looks}")
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    relief = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 2.0)  # the image read as a surface
    n_classes = int(rng.integers(3, 7))
    classes = np.digitize(smooth, np.quantile(smooth, np.linspace(0.0, 1.0, n_classes + 1)[1:-1]))
    backscatter = cv2.GaussianBlur(rng.uniform(0.05, 1.0, n_classes).astype(np.float32)[classes], (0, 0), 1.0)

    theta = rng.uniform(0.0, 2.0 * np.pi)
    gx = cv2.Sobel(relief, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(relief, cv2.CV_32F, 0, 1, ksize=3)
    slope = gx * np.cos(theta) + gy * np.sin(theta)
    slope /= max(float(np.percentile(np.abs(slope), 99)), 1e-6)
    facing, away = np.clip(slope, 0.0, 1.0), np.clip(-slope, 0.0, 1.0)
    intensity = (backscatter + rng.uniform(0.3, 1.0) * facing) * (1.0 - 0.7 * away)

    speckle = rng.gamma(looks, 1.0 / looks, img.shape).astype(np.float32)
    log_amp = np.log(np.sqrt(intensity * speckle) + 1e-3)
    return simulate._stretch(log_amp), intensity * speckle, log_amp


def new_pseudo_sar(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The current simulation: (stretched image, linear intensity, dB). Through the private
    ``_sar_layers``, which ``pseudo_sar`` calls, because the ENL needs the linear intensity
    that the stretched output no longer holds."""
    layers = simulate._sar_layers(img, rng)
    return layers.image, layers.intensity, layers.db


# --- statistics ---------------------------------------------------------------------------

def enl(intensity: np.ndarray, window: int = ENL_WINDOW, fraction: float = ENL_FRACTION) -> float:
    """Equivalent number of looks in the most homogeneous windows (lowest coefficient of
    variation) of a linear-intensity image; windows lie wholly inside the image."""
    x = intensity.astype(np.float64)
    n = window * window
    half = window // 2
    inside = (slice(half, x.shape[0] - half), slice(half, x.shape[1] - half))
    mean = cv2.blur(x, (window, window))[inside]
    var = (cv2.blur(x * x, (window, window))[inside] - mean ** 2) * n / (n - 1)
    ok = (mean > 0) & (var > 0)
    mean, var = mean[ok], var[ok]
    cv = np.sqrt(var) / mean
    pick = cv <= np.quantile(cv, fraction)
    return float(np.median(mean[pick] ** 2 / var[pick]))


def moments(values: np.ndarray) -> tuple[float, float]:
    """Skewness and excess kurtosis."""
    x = values.astype(np.float64).ravel()
    z = (x - x.mean()) / max(x.std(), 1e-12)
    return float(np.mean(z ** 3)), float(np.mean(z ** 4) - 3.0)


def autocorrelation(img: np.ndarray, lag: int) -> float:
    """Pearson correlation of the image with itself shifted by ``lag`` pixels, mean of the
    row and column directions."""
    x = img.astype(np.float64)
    pairs = ((x[:, :-lag], x[:, lag:]), (x[:-lag, :], x[lag:, :]))
    return float(np.mean([_pearson(a, b) for a, b in pairs]))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def histogram(values: np.ndarray) -> np.ndarray:
    return np.histogram(np.clip(values, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))[0].astype(np.float64)


def histogram_distances(h: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Wasserstein-1 distance (on [0, 1]) and Kolmogorov-Smirnov statistic between two
    histograms over the same bins."""
    cdf, cdf_ref = np.cumsum(h) / h.sum(), np.cumsum(ref) / ref.sum()
    return float(np.abs(cdf - cdf_ref).sum() / HIST_BINS), float(np.abs(cdf - cdf_ref).max())


def image_stats(stretched: np.ndarray, intensity: np.ndarray, db: np.ndarray, red: np.ndarray) -> dict:
    skew, kurt = moments(db)
    return {"enl": enl(intensity), "skewness": skew, "kurtosis": kurt,
            "acf1": autocorrelation(stretched, 1), "acf3": autocorrelation(stretched, 3),
            "optical_corr": abs(_pearson(stretched, red))}


STATS = ("enl", "w1", "ks", "skewness", "kurtosis", "acf1", "acf3", "optical_corr")
LABELS = {
    "enl": "ENL (7x7, 10% most homogeneous)",
    "w1": "histogram W1 to real",
    "ks": "histogram KS to real",
    "skewness": "skewness of dB",
    "kurtosis": "excess kurtosis of dB",
    "acf1": "lag-1 autocorrelation",
    "acf3": "lag-3 autocorrelation",
    "optical_corr": "|corr(optical red, SAR)|",
}


def summarise(rows: list[dict], hist: np.ndarray) -> dict:
    out = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    out["n_images"] = len(rows)
    out["_hist"] = hist
    return out


def collect(patches: list[Patch], draws: int, seed: int) -> dict[str, dict]:
    """Per-image statistics for the real bands and both simulations, summarised; for the
    simulations also the standard error of each summary over the draws (``se``)."""
    real: dict[str, list[dict]] = {"real": [], "VV": [], "VH": []}
    real_hists = {k: np.zeros(HIST_BINS) for k in real}
    sims = {name: [[] for _ in range(draws)] for name in ("old", "new")}
    sim_hists = {name: [np.zeros(HIST_BINS) for _ in range(draws)] for name in sims}
    for i, p in enumerate(patches):
        red = normalise_contrast(p.red, np.isfinite(p.red))
        for pol, db in p.s1_db.items():
            stretched = normalise_contrast(db, np.isfinite(db))
            s = image_stats(stretched, 10.0 ** (db / 10.0), db, red)
            h = histogram(stretched)
            for key in ("real", pol):
                real[key].append(s)
                real_hists[key] += h
        for name, fn in (("old", old_pseudo_sar), ("new", new_pseudo_sar)):
            for d in range(draws):
                rng = np.random.default_rng([seed, i, d])
                stretched, intensity, db = fn(red, rng)
                sims[name][d].append(image_stats(stretched, intensity, db, red))
                sim_hists[name][d] += histogram(stretched)

    summary = {k: summarise(v, real_hists[k]) for k, v in real.items()}
    ref = summary["real"]["_hist"]
    for k in summary:
        summary[k]["w1"], summary[k]["ks"] = histogram_distances(summary[k]["_hist"], ref)
    for name in sims:
        pooled = summarise([r for rows in sims[name] for r in rows], np.sum(sim_hists[name], axis=0))
        pooled["w1"], pooled["ks"] = histogram_distances(pooled["_hist"], ref)
        per_draw = [summarise(rows, h) for rows, h in zip(sims[name], sim_hists[name])]
        for one in per_draw:
            one["w1"], one["ks"] = histogram_distances(one["_hist"], ref)
        pooled["se"] = {k: float(np.std([one[k] for one in per_draw], ddof=1) / np.sqrt(draws)) if draws > 1
                        else float("nan") for k in STATS}
        summary[name] = pooled
    return summary


def closer(real: float, old: float, new: float, se_old: float, se_new: float) -> str:
    """Which simulation is nearer the real value: "tie" when the two distances differ by
    less than twice the standard error of their difference over the draws."""
    d_old, d_new = abs(old - real), abs(new - real)
    noise = 2.0 * np.hypot(se_old, se_new)
    if not np.isfinite(noise):
        noise = 0.02 * max(abs(real), 1e-3)
    if abs(d_old - d_new) <= noise:
        return "tie"
    return "new" if d_new < d_old else "old"


def table(summary: dict[str, dict]) -> tuple[str, list[dict]]:
    cols = ("real", "old", "new", "VV", "VH")
    head = f"{'statistic':34s}" + "".join(f"{c:>9s}" for c in cols) + f"{'se new':>9s}   closer"
    lines, records = [head, "-" * len(head)], []
    for k in STATS:
        vals = {c: summary[c][k] for c in cols}
        se = {c: summary[c]["se"][k] for c in ("old", "new")}
        who = closer(vals["real"], vals["old"], vals["new"], se["old"], se["new"])
        lines.append(f"{LABELS[k]:34s}" + "".join(f"{vals[c]:9.3f}" for c in cols) + f"{se['new']:9.3f}   {who}")
        records.append({"statistic": k, "label": LABELS[k], **vals, "se_old": se["old"], "se_new": se["new"],
                        "closer": who})
    n = {c: summary[c]["n_images"] for c in cols}
    lines.append(f"{'images':34s}" + "".join(f"{n[c]:9d}" for c in cols))
    return "\n".join(lines), records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the shared data folder (holds bigearthnet/, terramind_terramesh/)")
    ap.add_argument("--draws", type=int, default=8, help="simulations per optical patch and per method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "sar_statistics.json")
    args = ap.parse_args(argv)
    if not (args.data / "bigearthnet").is_dir() and not (args.data / "terramind_terramesh").is_dir():
        print(f"sar_statistics: no bigearthnet/ nor terramind_terramesh/ under {args.data}: "
              "pass the shared data folder with --data", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    patches = load_patches(args.data)
    groups = {g: sum(p.group == g for p in patches) for g in SOURCES}
    print("real Sentinel-1/Sentinel-2 patches read:", file=sys.stderr)
    for g, n in groups.items():
        print(f"  {g:12s} {n:3d} patches  from {SOURCES[g]}", file=sys.stderr)
    summary = collect(patches, args.draws, args.seed)
    text, records = table(summary)
    print(text)
    elapsed = time.perf_counter() - t0
    print(f"({len(patches)} patches x 2 polarisations real; {args.draws} draws per patch per simulation; "
          f"{elapsed:.0f} s)", file=sys.stderr)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["python", "benchmarks/sar_statistics.py", *(argv if argv is not None else sys.argv[1:])]),
        "sources": {g: {"origin": SOURCES[g], "patches": n} for g, n in groups.items()},
        "draws": args.draws, "seed": args.seed,
        "statistics": records,
        "per_method": {k: {s: v for s, v in d.items() if not s.startswith("_")} for k, d in summary.items()},
        "seconds": elapsed,
    }
    args.json.write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
