"""Training pairs for DistillMatch: what data there is, and a torch Dataset of pairs.

Each item is a crop of one scene in two modalities with an exact geometric relation:
either two bands of the scene (the provider co-registers them, so a visible/NIR/SWIR/
thermal band pair is a real cross-modal pair with ground truth), or an optical band and
a simulated infrared, SAR or map rendering of it (dmreg.train.simulate). Image1 is then
warped by a random homography H_0to1, the ground truth of the pair.

Scenes in HELD_OUT_SCENES are for evaluation only: a dataset leaves them out unless
they are asked for by name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset

from dmreg.io.sampling import normalise_contrast
from dmreg.matchers.base import MODALITIES
from dmreg.train.homography import HomographyRange, random_homography, warp_image
from dmreg.train.simulate import SIMULATIONS, photometric_jitter

log = logging.getLogger(__name__)

HELD_OUT_SCENES = ("L7_ETMs",)
"""Never trained on: the scene the accuracy tests and the evaluation use."""

CROP_TRIES = 8
"""Crop windows drawn before settling for one with little valid data (Landsat L1
scenes have wide nodata borders around their tilted footprint)."""

MIN_VALID_FRAC = 0.5
"""A crop is accepted when its valid fraction reaches this share of what the scene can
give (scenes smaller than the crop cannot fill it)."""


@dataclass(frozen=True)
class BandSource:
    """One band of one raster, its modality (a name in MODALITIES) and its scene: bands
    of one scene are co-registered, bands of different scenes are not.

    ``nodata`` overrides the file's nodata tag: Landsat L1 GeoTIFFs fill their border
    with 0 without tagging it.
    """

    path: str
    band: int
    modality: str
    scene: str
    nodata: float | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; choose one of: {', '.join(MODALITIES)}")


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
    ("LT05_167055_20000309", "LT05_167055_20000309_B6.tif", 1, "infrared", None),  # thermal
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


def catalogue(examples_dir: str | Path, bench_data_dir: str | Path) -> list[BandSource]:
    """Every band the training data can use, from the sample data (examples/data) and the
    benchmark data (benchmarks/data, fetched by benchmarks/fetch_data.sh).

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
    return sources


class PairDataset(Dataset):
    """Cross-modal training pairs, item i a pure function of (seed, i).

    Item i picks a scene uniformly, then with probability ``simulate_prob`` one of its
    optical bands and a simulation of it (infrared, SAR or map, equally likely), else
    two different bands; the order of the two is random. Both are read from the same
    random ``crop_size`` window, stretched like the pipeline's tiles (1-99 percentile
    of valid pixels), photometrically jittered (``jitter``), and image1 is warped by a
    random homography within ``warp``.

    Scenes smaller than the crop are PADDED, not upsampled: they land at a random place
    in the crop and the rest is invalid. Upsampling would invent a ground resolution no
    sensor has; the matcher has to handle nodata anyway.

    ``scenes`` None means every scene of ``sources`` but HELD_OUT_SCENES; naming scenes
    (e.g. ``scenes=HELD_OUT_SCENES`` with ``simulate_prob=0, jitter=False`` for
    evaluation) uses exactly those. Files are opened lazily, once per process, so
    DataLoader workers each get their own handles; every read is a window of the crop.

    An item is a dict: image0, image1 [1 x S x S] float32 in [0, 1]; valid0, valid1
    [S x S] bool (invalid pixels hold the valid median); H_0to1 [3 x 3] float32 mapping
    image0 pixel coordinates to image1 pixel coordinates (corner convention, see
    dmreg.train.homography); modality0, modality1 int64 indices into MODALITIES; scene.
    """

    def __init__(
        self,
        sources: Sequence[BandSource],
        scenes: Sequence[str] | None = None,
        crop_size: int = 256,
        length: int = 10_000,
        seed: int = 0,
        simulate_prob: float = 0.3,
        warp: HomographyRange = HomographyRange(),
        jitter: bool = True,
    ):
        if crop_size <= 0 or crop_size % 8:
            raise ValueError(f"crop_size must be a positive multiple of 8 (coarse features are at 1/8), "
                             f"got {crop_size}")
        if not 0.0 <= simulate_prob <= 1.0:
            raise ValueError(f"simulate_prob must be in [0, 1], got {simulate_prob}")
        available = sorted({s.scene for s in sources})
        if scenes is None:
            scenes = [s for s in available if s not in HELD_OUT_SCENES]
        missing = sorted(set(scenes) - set(available))
        if missing or not scenes:
            raise ValueError(f"no sources for scenes {missing or '(none left)'}; available: {', '.join(available)}")
        self.scenes = tuple(dict.fromkeys(scenes))
        self._bands = {scene: [s for s in sources if s.scene == scene] for scene in self.scenes}
        for scene, bands in self._bands.items():
            if len(bands) < 2 or (simulate_prob > 0 and not any(b.modality == "optical" for b in bands)):
                raise ValueError(f"scene {scene} needs two bands, and an optical one to simulate from")
        self.crop_size = crop_size
        self.length = length
        self.seed = seed
        self.simulate_prob = simulate_prob
        self.warp = warp
        self.jitter = jitter
        self._handles: dict[str, rasterio.io.DatasetReader] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        scene = self.scenes[rng.integers(len(self.scenes))]
        bands = self._bands[scene]
        if rng.random() < self.simulate_prob:
            optical = [b for b in bands if b.modality == "optical"]
            modality = list(SIMULATIONS)[rng.integers(len(SIMULATIONS))]
            origin, img, valid = self._random_crop(optical[rng.integers(len(optical))], rng)
            pair = [(img, valid, "optical"), (SIMULATIONS[modality](img, rng), valid, modality)]
            if rng.random() < 0.5:
                pair.reverse()
        else:
            a, b = rng.choice(len(bands), 2, replace=False)
            origin, img_a, valid_a = self._random_crop(bands[a], rng)
            img_b, valid_b = self._read(bands[b], origin)
            pair = [(img_a, valid_a, bands[a].modality), (img_b, valid_b, bands[b].modality)]
        (img0, valid0, modality0), (img1, valid1, modality1) = pair
        if self.jitter:
            img0, img1 = photometric_jitter(img0, rng), photometric_jitter(img1, rng)

        size = (self.crop_size, self.crop_size)
        H = random_homography(rng, size, **asdict(self.warp))
        img1, valid1 = warp_image(img1, H, size, valid=valid1)
        img0, img1 = _fill_invalid(img0, valid0), _fill_invalid(img1, valid1)
        return {
            "image0": torch.from_numpy(img0)[None],
            "image1": torch.from_numpy(img1)[None],
            "valid0": torch.from_numpy(valid0),
            "valid1": torch.from_numpy(valid1),
            "H_0to1": torch.from_numpy(H.astype(np.float32)),
            "modality0": torch.tensor(MODALITIES.index(modality0), dtype=torch.int64),
            "modality1": torch.tensor(MODALITIES.index(modality1), dtype=torch.int64),
            "scene": scene,
        }

    def __getstate__(self) -> dict:
        """Pickled for spawned DataLoader workers without the open files: each worker
        opens its own."""
        return {**self.__dict__, "_handles": {}}

    def _random_crop(
        self, source: BandSource, rng: np.random.Generator
    ) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
        """A crop origin (row, col) with enough valid pixels, and the stretched crop."""
        ds = self._open(source.path)
        s = self.crop_size
        enough = MIN_VALID_FRAC * min(ds.height, s) * min(ds.width, s) / s**2
        for _ in range(CROP_TRIES):
            origin = (_crop_offset(rng, ds.height, s), _crop_offset(rng, ds.width, s))
            img, valid = self._read(source, origin)
            if valid.mean() >= enough:
                break
        return origin, img, valid

    def _read(self, source: BandSource, origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The crop at ``origin`` (row, col; negative or overhanging where the scene is
        smaller than the crop), stretched to [0, 1], and its valid mask; one windowed
        read of the part inside the raster."""
        ds = self._open(source.path)
        s, (row0, col0) = self.crop_size, origin
        r0, c0 = max(row0, 0), max(col0, 0)
        r1, c1 = min(row0 + s, ds.height), min(col0 + s, ds.width)
        block = ds.read(source.band, window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
        nodata = source.nodata if source.nodata is not None else ds.nodata
        values, valid = np.zeros((s, s), np.float32), np.zeros((s, s), bool)
        inner = (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
        values[inner] = block
        valid[inner] = np.isfinite(block) & (block != nodata if nodata is not None else True)
        return normalise_contrast(values, valid), valid

    def _open(self, path: str) -> rasterio.io.DatasetReader:
        """The open dataset of ``path`` in this process; handles inherited through fork
        are dropped, never shared between processes."""
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            self._handles[path] = rasterio.open(path)
        return self._handles[path]


def _crop_offset(rng: np.random.Generator, n: int, s: int) -> int:
    """A crop start along an axis of n pixels: inside the scene when it is at least s
    long, else such that the whole scene lies inside the crop."""
    return int(rng.integers(0, n - s + 1)) if n >= s else int(rng.integers(n - s, 1))


def _fill_invalid(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Invalid pixels get the valid median, as in the pipeline's tiles."""
    img = img.copy()
    img[~valid] = float(np.median(img[valid])) if valid.any() else 0.0
    return img
