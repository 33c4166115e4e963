"""A validation set for `dmreg evaluate`, made from the held-out scenes only.

    python -m dmreg.train.validation_pairs --data ../shared/data --out DIR [--rotate] [--seed N]

Conventions first. Pixel coordinates are (x=col, y=row) with (0, 0) the top-left
CORNER of the top-left pixel (GDAL's convention, used throughout dmreg); a truth
matrix M maps MOVING pixels to REFERENCE pixels. OpenCV puts pixel centres on integers
(p_cv = p - 0.5), so M becomes M_cv = T(-0.5) @ M @ T(+0.5) for OpenCV, and
``cv2.warpPerspective(src, M_cv, flags=WARP_INVERSE_MAP)`` gives moving(q) = src(M q):
the moving pixel q shows what the source shows at reference pixel M q.

Each pair is a reference (an optical band) and a moving image made from another
modality of the same scene, provider-co-registered or pixel-aligned with the
reference, warped with a known random similarity (seeded per pair name, so adding a
source never changes another pair): a shift of 2-20 px, rotation within +-3 degrees
and scale within 0.97-1.03 ("-shift" pairs); with ``--rotate`` also a second copy with
rotation up to 30 degrees and scale 0.8-1.25 ("-rot" pairs). BigEarthNet patches are
120 px: their warps stay modest (shift 1-6 px, +-2 degrees, 0.98-1.02; rotated copies
up to 15 degrees and 0.9-1.1) so that they remain registrable. Moving pixels whose
source point falls outside the source are nodata: 0 in uint8 images (valid data is
raised to at least 1), NaN in float32 images. The files are GeoTIFFs without
georeferencing, so dmreg registers them in pixel space. Land cover (a categorical map)
is warped with nearest neighbour, everything else bilinearly.

Which scenes are held out comes from :mod:`dmreg.train.split` (never decided here):

| collection | pairs (reference optical band vs moving) | truth_tolerance_px |
|---|---|---|
| Landsat 7 `L7_ETMs` (examples/data) | red vs NIR, SWIR1, SWIR2, blue | 0 (one provider grid) |
| TerraMind validation sites | S2 L2A red vs S1 RTC VV (sar), DEM, land cover (map) | 2.5 for S1 and DEM, 0 for land cover |
| BigEarthNet validation acquisitions | S2 red vs S1 VV (sar), S2 red vs NIR | 2.5 for S1, 0 for NIR |
| TNO validation pairs | visible (optical) vs thermal, band 1 | 3 (two cameras: see ``VIS_THERMAL_TOLERANCE_PX``) |
| RoadScene (validation only) | a seeded sample of 20 visible vs thermal | 3 (likewise) |
| QGIS Swellendam (validation only) | 600 px crops of aerial RGB vs rendered roads and buildings | 0 (same grid) |

``truth_tolerance_px`` is how far the source pair itself may be misaligned (Sentinel-1
and Sentinel-2 agree only within 2-3 px): an error below it is not meaningful. Every
entry of ``manifest.json`` (schema dmreg.pairs/1) names the public origin of its files
(see ../shared/data/README.md) and the warp that made the moving image.
"""

from __future__ import annotations

import argparse
import json
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from dmreg.evaluate.manifest import SCHEMA
from dmreg.io.writing import atomic_path, write_text
from dmreg.train.split import (BIGEARTHNET_VALIDATION_ACQUISITIONS, HELD_OUT_SCENES, TERRAMIND_VALIDATION_SITES,
                               TNO_VALIDATION_PAIRS, bigearthnet_acquisition, is_validation)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"

SEED = 20261201
ROADSCENE_SAMPLE = 20       # images, drawn once with ROADSCENE_SEED (not --seed): a fixed sample
ROADSCENE_SEED = 20261201
QGIS_CROP = 600            # side of the QGIS crops in pixels
QGIS_CROPS = 4             # how many crops (the ones with most map content, overlapping at most 25 %)
S1_S2_TOLERANCE_PX = 2.5   # Sentinel-1 vs Sentinel-2, and DEM vs Sentinel-2: real alignment within 2-3 px
SMALL_SIDE = 160           # images smaller than this (BigEarthNet, 120 px) get modest warps
MIN_SIDE = 64              # dmreg's smallest tile side: nothing smaller is written

# 1-based bands
L7_BANDS = {"blue": 1, "red": 3, "nir": 4, "swir1": 5, "swir2": 6}
S2L2A_RED = 4              # B01, B02, B03, B04, ... (12 bands)
BEN_10M = {"red": 3, "nir": 4}  # s2_10m_B02_B03_B04_B08.tif

ORIGINS = {
    "landsat": ("R package stars, tif/L7_ETMs.tif (Debian r-cran-stars); dmreg examples/data/L7_ETMs.tif",
                "Landsat data public domain (USGS); package Apache-2.0"),
    "terramind": ("GitHub IBM/terramind at commit 8090b5c, examples/{layer}/{site}.tif", "Apache-2.0"),
    "ben_mock": ("PyPI configilm==0.7.1, configilm/extra/mock_data/BENv{version}/*.lmdb, patch {patch} unpacked to "
                 "TIFF ({file})", "data CDLA-Permissive-1.0 (Copernicus); package MIT"),
    "ben_geotiff": ("PyPI bigearthnet-common==2.8.0, bigearthnet_common/BigEarthNet-{sensor}-Example.tar.bz2, "
                    "{file}", "data CDLA-Permissive-1.0 (Copernicus); package Apache-2.0"),
    "tno": ("GitHub Zhaozixiang1228/MMIF-CDDFuse at commit fd8da1f, test_img/TNO/{kind}/{pair}.png "
            "(TNO Multiband Image Data Collection, Toet 2017)", "CC BY 4.0"),
    "roadscene": ("GitHub hanna-xu/RoadScene at commit ab71420, {folder}/{image}", "no licence stated "
                  "(FLIR ADAS derived): validation only"),
    "qgis": ("GitHub qgis/QGIS-Training-Data, exercise_data/raster/{tile}.tif; map: roads and buildings of "
             "exercise_data/training_data.gpkg rendered on that grid; crop x {x}, y {y}, {size} px",
             "GPL-2.0: validation only"),
}


@dataclass(frozen=True)
class WarpRange:
    """Bounds of a random similarity about the image centre."""

    min_shift_px: float
    max_shift_px: float
    max_angle_deg: float
    min_scale: float
    max_scale: float


WARPS = {
    ("shift", False): WarpRange(2.0, 20.0, 3.0, 0.97, 1.03),
    ("rot", False): WarpRange(2.0, 20.0, 30.0, 0.8, 1.25),
    ("shift", True): WarpRange(1.0, 6.0, 2.0, 0.98, 1.02),
    ("rot", True): WarpRange(1.0, 6.0, 15.0, 0.9, 1.1),
}
"""(variant, small image) -> the range its random warp is drawn from."""


@dataclass(frozen=True)
class SourcePair:
    """Two pixel-aligned images of one scene before any warp: ``ref`` an optical band,
    ``mov`` another modality; both 2-D. ``ref_key`` names the reference file (shared by
    the pairs of a scene)."""

    collection: str            # as dmreg.train.split names it
    scene: str
    tag: str                   # e.g. "red_sar"
    modalities: str
    ref_key: str
    ref: np.ndarray
    mov: np.ndarray
    tolerance_px: float
    origin: dict
    categorical: bool = False  # warp with nearest neighbour (class maps)


def random_similarity(rng: np.random.Generator, size: tuple[int, int], warp: WarpRange) -> tuple[np.ndarray, dict]:
    """A similarity (moving pixel -> reference pixel, corner convention) about the centre
    of an image of ``size`` = (height, width): rotation in +-max_angle_deg, scale
    log-uniform in [min_scale, max_scale], then a shift whose length is uniform in
    [min_shift_px, max_shift_px] in a uniform direction. Also returns its parameters."""
    h, w = size
    angle = rng.uniform(-warp.max_angle_deg, warp.max_angle_deg)
    scale = float(np.exp(rng.uniform(np.log(warp.min_scale), np.log(warp.max_scale))))
    length, direction = rng.uniform(warp.min_shift_px, warp.max_shift_px), rng.uniform(0.0, 2.0 * np.pi)
    shift = length * np.array([np.cos(direction), np.sin(direction)])
    a = np.deg2rad(angle)
    centre = np.array([w / 2.0, h / 2.0])
    m = np.eye(3)
    m[:2, :2] = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m[:2, 2] = centre + shift - m[:2, :2] @ centre
    return m, {"angle_deg": round(float(angle), 4), "scale": round(scale, 6),
               "shift_px": [round(float(v), 4) for v in shift]}


def warp_moving(src: np.ndarray, matrix: np.ndarray, nearest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The moving image of the same size as ``src`` with moving(q) = src(matrix @ q)
    (corner convention), as float32, and its valid mask: pixels whose source point lies
    inside ``src`` with all interpolation neighbours valid (finite)."""
    h, w = src.shape
    to_cv, from_cv = _translation(-0.5, -0.5), _translation(0.5, 0.5)
    m_cv = to_cv @ np.asarray(matrix, np.float64) @ from_cv   # p_cv = p - 0.5
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    data = src.astype(np.float32)
    finite = np.isfinite(data)
    warped = cv2.warpPerspective(np.where(finite, data, 0).astype(np.float32), m_cv, (w, h), flags=flags,
                                 borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpPerspective(finite.astype(np.float32), m_cv, (w, h), flags=flags,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = weight > 0.999
    return np.where(valid, warped, np.float32(0)), valid


def make_pairs(data: Path, out: Path, examples: Path = EXAMPLES, *, rotate: bool = False, seed: int = SEED,
               overwrite: bool = False) -> dict:
    """Write the validation set into ``out`` and return its manifest (also written as
    ``out/manifest.json``). An existing set is replaced only with ``overwrite``."""
    for folder in (data, examples):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not overwrite:
        raise FileExistsError(f"{manifest_path} exists; pass --overwrite to replace the set")
    entries = []
    written_refs: set[str] = set()
    for source in sources(data, examples):
        if source.ref_key not in written_refs:
            _write_image(out / source.ref_key, source.ref, nodata=None, overwrite=overwrite)
            written_refs.add(source.ref_key)
        small = min(source.ref.shape) < SMALL_SIDE
        for variant in ("shift", "rot") if rotate else ("shift",):
            name = f"{source.collection}-{source.scene}-{source.tag}-{variant}"
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            matrix, params = random_similarity(rng, source.mov.shape, WARPS[variant, small])
            moved, valid = warp_moving(source.mov, matrix, nearest=source.categorical)
            mov_rel = f"{Path(source.ref_key).parent.as_posix()}/{source.tag.split('_', 1)[1]}-{variant}.tif"
            _write_moving(out / mov_rel, moved, valid, source.mov.dtype, overwrite)
            entries.append({
                "name": name, "reference": source.ref_key, "moving": mov_rel, "modalities": source.modalities,
                "matrix": [[round(float(v), 10) for v in row] for row in matrix],
                "truth_tolerance_px": source.tolerance_px, "origin": source.origin,
                "warp": {"variant": variant, **params, "about": "image centre",
                         "interpolation": "nearest" if source.categorical else "bilinear",
                         "valid_fraction": round(float(valid.mean()), 4)},
            })
    manifest = {
        "schema": SCHEMA,
        "generator": "python -m dmreg.train.validation_pairs" + (" --rotate" if rotate else ""),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "split": "dmreg/train/split.py: held-out scenes only",
        "conventions": "matrix maps moving pixels to reference pixels; (0, 0) is the top-left corner of the "
                       "top-left pixel",
        "pairs": entries,
    }
    write_text(manifest_path, json.dumps(manifest, indent=1) + "\n", overwrite)
    return manifest


def sources(data: Path, examples: Path = EXAMPLES) -> Iterator[SourcePair]:
    """Every held-out source pair, collection by collection, in a fixed order."""
    yield from _landsat(examples)
    yield from _terramind(data / "terramind_terramesh")
    yield from _bigearthnet(data / "bigearthnet")
    yield from _tno(data / "tno_cddfuse")
    yield from _roadscene(data / "roadscene")
    yield from _qgis(data / "qgis_swellendam_map")


def _landsat(examples: Path) -> Iterator[SourcePair]:
    for scene in HELD_OUT_SCENES:
        assert is_validation("landsat", scene)
        path = examples / f"{scene}.tif"
        origin, licence = ORIGINS["landsat"]
        bands = {name: _read(path, band) for name, band in L7_BANDS.items()}
        for other, modalities in (("nir", "optical-nir"), ("swir1", "optical-swir"), ("swir2", "optical-swir"),
                                  ("blue", "optical-optical")):
            yield SourcePair("landsat", scene, f"red_{other}", modalities, f"landsat/{scene}/red.tif",
                             bands["red"], bands[other], 0.0,
                             {"reference": f"{origin}, band {L7_BANDS['red']} (red)",
                              "moving": f"{origin}, band {L7_BANDS[other]} ({other})", "licence": licence})


def _terramind(root: Path) -> Iterator[SourcePair]:
    template, licence = ORIGINS["terramind"]
    for site in TERRAMIND_VALIDATION_SITES:
        assert is_validation("terramind", site)
        red = _read(root / "S2L2A" / f"{site}.tif", S2L2A_RED)
        ref_origin = template.format(layer="S2L2A", site=site) + f", band {S2L2A_RED} (B04, red)"
        for layer, band, tag, modalities, tolerance, categorical in (
                ("S1RTC", 1, "red_sar", "optical-sar", S1_S2_TOLERANCE_PX, False),
                ("DEM", 1, "red_dem", "optical-elevation", S1_S2_TOLERANCE_PX, False),
                ("LULC", 1, "red_lulc", "optical-map", 0.0, True)):
            yield SourcePair("terramind", site, tag, modalities, f"terramind/{site}/red.tif", red,
                             _read(root / layer / f"{site}.tif", band), tolerance,
                             {"reference": ref_origin, "moving": template.format(layer=layer, site=site)
                              + f", band {band}", "licence": licence}, categorical=categorical)


def _bigearthnet(root: Path) -> Iterator[SourcePair]:
    template, licence = ORIGINS["ben_mock"]
    for version in ("1", "2"):
        folder = root / f"ben_v{version}_mock"
        for patch in sorted(p for p in folder.iterdir() if p.is_dir()):
            if bigearthnet_acquisition(patch.name) not in BIGEARTHNET_VALIDATION_ACQUISITIONS:
                continue
            assert is_validation("bigearthnet", patch.name)
            s2 = patch / "s2_10m_B02_B03_B04_B08.tif"
            s1 = patch / "s1_VV_VH_dB.tif"

            def origin(file: str, p: Path = patch, v: str = version) -> str:
                return template.format(version=v, patch=p.name, file=file)

            yield from _ben_pairs(f"v{version}-{patch.name}", _read(s2, BEN_10M["red"]), _read(s2, BEN_10M["nir"]),
                                  _read(s1, 1), origin(f"{s2.name}, band {BEN_10M['red']} (B04, red)"),
                                  origin(f"{s2.name}, band {BEN_10M['nir']} (B08, NIR)"),
                                  origin(f"{s1.name}, band 1 (VV dB)"), licence)
    template, licence = ORIGINS["ben_geotiff"]
    s1_root, s2_root = root / "ben_common_geotiff" / "BigEarthNet-S1-Example", root / "ben_common_geotiff" / \
        "BigEarthNet-S2-Example"
    partners = {}
    for s1 in sorted(p for p in s1_root.iterdir() if p.is_dir()):
        meta = json.loads(next(s1.glob("*_labels_metadata.json")).read_text(encoding="utf-8"))
        partners[meta["corresponding_s2_patch"]] = s1
    for s2 in sorted(p for p in s2_root.iterdir() if p.is_dir()):
        if bigearthnet_acquisition(s2.name) not in BIGEARTHNET_VALIDATION_ACQUISITIONS or s2.name not in partners:
            continue
        s1 = partners[s2.name]
        files = {"red": s2 / f"{s2.name}_B04.tif", "nir": s2 / f"{s2.name}_B08.tif", "vv": s1 / f"{s1.name}_VV.tif"}
        yield from _ben_pairs(
            f"geotiff-{s2.name}", _read(files["red"], 1), _read(files["nir"], 1), _read(files["vv"], 1),
            template.format(sensor="S2", file=f"{s2.name}/{files['red'].name}"),
            template.format(sensor="S2", file=f"{s2.name}/{files['nir'].name}"),
            template.format(sensor="S1", file=f"{s1.name}/{files['vv'].name}"), licence)


def _ben_pairs(scene: str, red: np.ndarray, nir: np.ndarray, vv: np.ndarray, red_origin: str, nir_origin: str,
               vv_origin: str, licence: str) -> Iterator[SourcePair]:
    ref_key = f"bigearthnet/{scene}/red.tif"
    yield SourcePair("bigearthnet", scene, "red_sar", "optical-sar", ref_key, red, vv, S1_S2_TOLERANCE_PX,
                     {"reference": red_origin, "moving": vv_origin, "licence": licence})
    yield SourcePair("bigearthnet", scene, "red_nir", "optical-nir", ref_key, red, nir, 0.0,
                     {"reference": red_origin, "moving": nir_origin, "licence": licence})


VIS_THERMAL_TOLERANCE_PX = 3.0
"""TNO and RoadScene call their visible/thermal pairs pixel-aligned, but two cameras see
scenes with depth, so no one mapping aligns them exactly. Measured on the 18 validation
pairs both matchers registered: on the 7 where the structural matcher and DistillMatch
agreed within 1 px (mean over the check grid; TNO 18 within 0.08 px), both were 1.4-4.2 px
(median 1.7) from the truth, up to 8.7 px at the corners."""


def _tno(root: Path) -> Iterator[SourcePair]:
    template, licence = ORIGINS["tno"]
    for pair in TNO_VALIDATION_PAIRS:
        assert is_validation("tno", pair)
        yield SourcePair("tno", pair, "vis_thermal", "optical-thermal", f"tno/{pair}/vis.tif",
                         _read(root / "vi" / f"{pair}.png", 1), _read(root / "ir" / f"{pair}.png", 1),
                         VIS_THERMAL_TOLERANCE_PX,
                         {"reference": template.format(kind="vi", pair=pair) + ", band 1",
                          "moving": template.format(kind="ir", pair=pair) + ", band 1", "licence": licence})


def _roadscene(root: Path) -> Iterator[SourcePair]:
    assert is_validation("roadscene", "")
    template, licence = ORIGINS["roadscene"]
    names = sorted(p.name for p in (root / "crop_LR_visible").glob("*.jpg")
                   if (root / "cropinfrared" / p.name).is_file())
    rng = np.random.default_rng(ROADSCENE_SEED)
    chosen = sorted(str(n) for n in rng.choice(names, size=min(ROADSCENE_SAMPLE, len(names)), replace=False))
    for image in chosen:
        scene = Path(image).stem
        yield SourcePair("roadscene", scene, "vis_thermal", "optical-thermal", f"roadscene/{scene}/vis.tif",
                         _grey(root / "crop_LR_visible" / image), _grey(root / "cropinfrared" / image),
                         VIS_THERMAL_TOLERANCE_PX,
                         {"reference": template.format(folder="crop_LR_visible", image=image) + ", luminance",
                          "moving": template.format(folder="cropinfrared", image=image) + ", luminance",
                          "licence": licence})


def _qgis(root: Path) -> Iterator[SourcePair]:
    assert is_validation("qgis_swellendam_map", "")
    template, licence = ORIGINS["qgis"]
    tiles = sorted(p.name.removesuffix("_map.png") for p in root.glob("*_map.png"))
    maps = {t: _grey(root / f"{t}_map.png") for t in tiles}
    for tile, y, x in _map_crops(maps):
        optical = _grey(root / f"{tile}_optical.png")[y:y + QGIS_CROP, x:x + QGIS_CROP]
        drawn = maps[tile][y:y + QGIS_CROP, x:x + QGIS_CROP]
        scene = f"{tile.split('_')[0]}_x{x}_y{y}"
        origin = template.format(tile=tile, x=x, y=y, size=QGIS_CROP)
        yield SourcePair("qgis_swellendam_map", scene, "optical_map", "optical-map",
                         f"qgis_swellendam_map/{scene}/optical.tif", optical, drawn, 0.0,
                         {"reference": f"{origin} ({tile}_optical.png, luminance)",
                          "moving": f"{origin} ({tile}_map.png, luminance)", "licence": licence})


def _map_crops(maps: dict[str, np.ndarray]) -> list[tuple[str, int, int]]:
    """The QGIS_CROPS crops with most drawn map content (pixels darker than the
    background), on a 100 px grid, overlapping each other by at most a quarter."""
    candidates = []
    for tile, img in maps.items():
        drawn = img < np.median(img) - 8
        h, w = img.shape
        for y in range(0, h - QGIS_CROP + 1, 100):
            for x in range(0, w - QGIS_CROP + 1, 100):
                candidates.append((float(drawn[y:y + QGIS_CROP, x:x + QGIS_CROP].mean()), tile, y, x))
    chosen: list[tuple[str, int, int]] = []
    for _, tile, y, x in sorted(candidates, key=lambda c: (-c[0], c[1], c[2], c[3])):
        overlaps = [max(0, QGIS_CROP - abs(y - cy)) * max(0, QGIS_CROP - abs(x - cx)) / QGIS_CROP ** 2
                    for ct, cy, cx in chosen if ct == tile]
        if all(o <= 0.25 for o in overlaps):
            chosen.append((tile, y, x))
        if len(chosen) == QGIS_CROPS:
            break
    return chosen


def _read(path: Path, band: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            data = ds.read(band)
    return data.astype(np.float32) if data.dtype == np.float64 else data


def _grey(path: Path) -> np.ndarray:
    """Luminance (uint8) of an RGB image, or its only band."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            data = ds.read()
    if data.shape[0] == 1:
        return data[0]
    return cv2.cvtColor(np.ascontiguousarray(data[:3].transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)


def _write_moving(path: Path, moved: np.ndarray, valid: np.ndarray, src_dtype: np.dtype, overwrite: bool) -> None:
    """uint8 sources stay uint8 with nodata 0 (valid data raised to >= 1); others are
    float32 with NaN nodata."""
    if np.dtype(src_dtype) == np.uint8:
        data = np.where(valid, np.clip(np.rint(moved), 1, 255), 0).astype(np.uint8)
        _write_image(path, data, nodata=0, overwrite=overwrite)
    else:
        _write_image(path, np.where(valid, moved, np.nan).astype(np.float32), nodata=float("nan"), overwrite=overwrite)


def _write_image(path: Path, data: np.ndarray, nodata: float | None, overwrite: bool) -> None:
    """A single-band GeoTIFF without georeferencing, written atomically."""
    h, w = data.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{path}: {w} x {h} px is smaller than dmreg's smallest tile ({MIN_SIDE} px)")
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=w, height=h, count=1, dtype=data.dtype.name, compress="deflate")
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings(), atomic_path(path, overwrite) as tmp:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data, 1)


def _translation(tx: float, ty: float) -> np.ndarray:
    t = np.eye(3)
    t[:2, 2] = (tx, ty)
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dmreg.train.validation_pairs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="The shared data folder (../shared/data).")
    parser.add_argument("--out", type=Path, required=True, help="Output folder (created if missing).")
    parser.add_argument("--examples", type=Path, default=EXAMPLES, help="dmreg's examples/data (the Landsat 7 scene).")
    parser.add_argument("--rotate", action="store_true", help="Also a copy of every pair with up to 30 degrees "
                        "rotation and 0.8-1.25 scale.")
    parser.add_argument("--seed", type=int, default=SEED, help="Seed of the random warps.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing set in --out.")
    args = parser.parse_args(argv)
    try:
        manifest = make_pairs(args.data, args.out, args.examples, rotate=args.rotate, seed=args.seed,
                              overwrite=args.overwrite)
    except OSError as exc:  # an existing set, a missing source file
        parser.exit(1, f"error: {exc}\n")
    counts: dict[str, int] = {}
    for entry in manifest["pairs"]:
        counts[entry["modalities"]] = counts.get(entry["modalities"], 0) + 1
    print(f"{len(manifest['pairs'])} pairs in {args.out / 'manifest.json'}: "
          + ", ".join(f"{n} {k}" for k, n in counts.items()))


if __name__ == "__main__":
    main()
