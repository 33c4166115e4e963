"""Training pairs for DistillMatch: a torch Dataset of co-located cross-modal crops.

Each item is a crop of one scene in two modalities with a known geometric relation:
either two bands of the scene (a visible/NIR/SWIR/thermal band pair of one sensor, or a
Sentinel-2/Sentinel-1/DEM/land-cover layer of one site: real cross-modal pairs), or an
optical band and a simulated rendering of it (dmreg.train.simulate, or the V2I-GAN).
Image1 is then warped by a random homography H_0to1, the ground truth of the pair.

What data there is lives in dmreg.train.catalogue, which scenes are held out in
dmreg.train.split: a dataset leaves validation scenes out unless asked for them by name.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from torch.utils.data import Dataset

from dmreg.io.sampling import normalise_contrast
from dmreg.matchers.base import MODALITIES
from dmreg.train.catalogue import BandSource
from dmreg.train.homography import HomographyRange, random_homography, warp_image
from dmreg.train.simulate import SIMULATIONS, Simulation, draw_classes, photometric_jitter

log = logging.getLogger(__name__)

CROP_TRIES = 8
"""Crop windows drawn before settling for one with little valid data (Landsat L1
scenes have wide nodata borders around their tilted footprint)."""

MIN_VALID_FRAC = 0.5
"""A crop is accepted when its valid fraction reaches this share of what the scene can
give (scenes smaller than the crop cannot fill it)."""


class PairDataset(Dataset):
    """Cross-modal training pairs, item i a pure function of (seed, i).

    Item i picks a collection uniformly (Landsat, TerraMind, BigEarthNet, TNO: so that
    sixty small patches do not drown six large scenes), a scene of it uniformly, and an
    optical band of the scene as the anchor. With probability ``simulate_prob`` the
    partner is a simulation of the anchor (a modality of ``simulations`` drawn
    uniformly), else another band of the scene (a modality present in the scene drawn
    uniformly, then a band of it). The order of the two is random. Both are read from
    the same random ``crop_size`` window, stretched like the pipeline's tiles (1-99
    percentile of valid pixels; categorical bands get a random grey per class),
    photometrically jittered (``jitter``), and image1 is warped by a random homography
    within ``warp``.

    Scenes smaller than the crop are PADDED, not upsampled: they land at a random place
    in the crop and the rest is invalid. Upsampling would invent a ground resolution no
    sensor has; the matcher has to handle nodata anyway.

    ``scenes`` None means every scene of ``sources`` that dmreg.train.split does not
    hold out; naming scenes (e.g. ``scenes=HELD_OUT_SCENES`` with ``simulate_prob=0,
    jitter=False`` for evaluation) uses exactly those. Files are opened lazily, once per
    process, so DataLoader workers each get their own handles; every read is a window of
    the crop.

    An item is a dict: image0, image1 [1 x S x S] float32 in [0, 1]; valid0, valid1
    [S x S] bool (invalid pixels hold the valid median); H_0to1 [3 x 3] float32 mapping
    image0 pixel coordinates to image1 pixel coordinates (corner convention, see
    dmreg.train.homography); modality0, modality1 int64 indices into MODALITIES; exact
    bool, false when the two layers are only aligned to catalogue.FRAME_TOLERANCE_PX
    (no sub-pixel label); scene.
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
        simulations: Mapping[str, Simulation] = SIMULATIONS,
    ):
        if crop_size <= 0 or crop_size % 8:
            raise ValueError(f"crop_size must be a positive multiple of 8 (coarse features are at 1/8), "
                             f"got {crop_size}")
        if not 0.0 <= simulate_prob <= 1.0:
            raise ValueError(f"simulate_prob must be in [0, 1], got {simulate_prob}")
        unknown = sorted(set(simulations) - set(MODALITIES))
        if unknown or (simulate_prob > 0 and not simulations):
            raise ValueError(f"simulations must name modalities in {MODALITIES}, got {sorted(simulations)}")
        available = sorted({s.scene for s in sources})
        if scenes is None:
            scenes = sorted({s.scene for s in sources if not s.validation})
        missing = sorted(set(scenes) - set(available))
        if missing or not scenes:
            raise ValueError(f"no sources for scenes {missing or '(none left)'}; available: {', '.join(available)}")
        self.scenes = tuple(dict.fromkeys(scenes))
        self._bands = {scene: [s for s in sources if s.scene == scene] for scene in self.scenes}
        for scene, bands in self._bands.items():
            if len(bands) < 2 or not any(b.modality == "optical" for b in bands):
                raise ValueError(f"scene {scene} needs two bands, one of them optical (the anchor of its pairs)")
        self._collections: dict[str, list[str]] = {}
        for scene in self.scenes:
            self._collections.setdefault(self._bands[scene][0].collection, []).append(scene)
        self.crop_size = crop_size
        self.length = length
        self.seed = seed
        self.simulate_prob = simulate_prob
        self.simulations = dict(simulations)
        self.warp = warp
        self.jitter = jitter
        self._handles: dict[str, rasterio.io.DatasetReader] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.length

    @property
    def collections(self) -> list[str]:
        return sorted(self._collections)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        collections = self.collections
        in_collection = self._collections[collections[rng.integers(len(collections))]]
        scene = in_collection[rng.integers(len(in_collection))]
        bands = self._bands[scene]
        optical = [b for b in bands if b.modality == "optical"]
        anchor = optical[rng.integers(len(optical))]
        origin, img, valid = self._random_crop(anchor, rng)
        exact = True
        if rng.random() < self.simulate_prob:
            names = sorted(self.simulations)
            modality = names[rng.integers(len(names))]
            partner = (self.simulations[modality](img, rng), valid, modality)
        else:
            others = [b for b in bands if b != anchor]
            present = sorted({b.modality for b in others})
            modality = present[rng.integers(len(present))]
            candidates = [b for b in others if b.modality == modality]
            source = candidates[rng.integers(len(candidates))]
            partner = (*self._read(source, origin, rng), source.modality)
            exact = source.frame == anchor.frame
        pair = [(img, valid, "optical"), partner]
        if rng.random() < 0.5:
            pair.reverse()
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
            "exact": torch.tensor(exact),
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
            img, valid = self._read(source, origin, rng)
            if valid.mean() >= enough:
                break
        return origin, img, valid

    def _read(self, source: BandSource, origin: tuple[int, int],
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The crop at ``origin`` (row, col; negative or overhanging where the scene is
        smaller than the crop), stretched to [0, 1] (categorical bands: drawn), and its
        valid mask; one windowed read of the part inside the raster."""
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
        if source.categorical:
            return _draw_categories(values, valid, rng), valid
        return normalise_contrast(values, valid), valid

    def _open(self, path: str) -> rasterio.io.DatasetReader:
        """The open dataset of ``path`` in this process; handles inherited through fork
        are dropped, never shared between processes."""
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            with warnings.catch_warnings():  # PNG pairs and mock patches carry no georeferencing
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._handles[path] = rasterio.open(path)
        return self._handles[path]


def _crop_offset(rng: np.random.Generator, n: int, s: int) -> int:
    """A crop start along an axis of n pixels: inside the scene when it is at least s
    long, else such that the whole scene lies inside the crop."""
    return int(rng.integers(0, n - s + 1)) if n >= s else int(rng.integers(n - s, 1))


def _draw_categories(classes: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A land-cover band drawn like a map (the numbering of classes carries no
    brightness order), its class numbers shifted to start at 0."""
    ids = np.where(valid, classes, 0).astype(np.int64)
    ids -= ids.min()
    return draw_classes(ids, int(ids.max()) + 1, rng)


def _fill_invalid(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Invalid pixels get the valid median, as in the pipeline's tiles."""
    img = img.copy()
    img[~valid] = float(np.median(img[valid])) if valid.any() else 0.0
    return img
