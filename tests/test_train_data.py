"""dmreg.train: homography pixel convention, modality simulations, the band catalogue
and the training-pair dataset (determinism, held-out scene, shapes, ground truth)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from dmreg.io.sampling import normalise_contrast
from dmreg.matchers.base import MODALITIES
from dmreg.train.catalogue import BandSource, catalogue
from dmreg.train.data import PairDataset
from dmreg.train.split import HELD_OUT_SCENES
from dmreg.train.homography import HomographyRange, apply_homography, random_homography, warp_image
from dmreg.train.simulate import SIMULATIONS, photometric_jitter, pseudo_sar
from helpers import DATA, write_raster

BENCH_DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"
LT05_SCENE = "LT05_167055_20000309"


@pytest.fixture(scope="module")
def sources() -> list[BandSource]:
    return catalogue(DATA, BENCH_DATA)


@pytest.fixture(scope="module")
def optical_crop() -> np.ndarray:
    with rasterio.open(DATA / "rgbn.tif") as ds:
        values = ds.read(1, window=Window(100, 100, 128, 128)).astype(np.float32)
    return normalise_contrast(values, np.ones(values.shape, bool))


def _centroid(img: np.ndarray, around: np.ndarray, radius: int = 8) -> np.ndarray:
    """Intensity centroid (corner convention: pixel centres at +0.5) near ``around``."""
    rows, cols = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    near = (np.abs(cols + 0.5 - around[0]) <= radius) & (np.abs(rows + 0.5 - around[1]) <= radius)
    w = np.where(near, img, 0.0)
    return np.array([(w * (cols + 0.5)).sum(), (w * (rows + 0.5)).sum()]) / w.sum()


# --- homography convention -------------------------------------------------------------

def test_bright_pixel_scaled_by_two_lands_at_H_of_its_centre():
    """Pixel (row 10, col 20) covers [20, 21] x [10, 11]; doubling coordinates about the
    corner (0, 0) puts its centre (20.5, 10.5) at (41, 21). Treating OpenCV's integer
    pixel centres as dmreg coordinates would put it at (40.5, 20.5)."""
    img = np.zeros((32, 32), np.float32)
    img[10, 20] = 1.0
    H = np.diag([2.0, 2.0, 1.0])
    warped, valid = warp_image(img, H, (64, 64))
    expected = apply_homography(H, np.array([[20.5, 10.5]]))[0]
    np.testing.assert_allclose(expected, [41.0, 21.0])
    np.testing.assert_allclose(_centroid(warped, expected), expected, atol=0.02)
    assert valid.all()


@pytest.mark.parametrize("seed", range(5))
def test_dot_moves_to_H_of_it_under_random_homographies(seed):
    rng = np.random.default_rng(seed)
    size = (128, 160)
    H = random_homography(rng, size, max_angle_deg=30, max_scale=1.25, max_shift_frac=0.1, max_perspective=0.05)
    dot = np.array([70.3, 58.7])  # (x, y), corner convention
    rows, cols = np.mgrid[0:size[0], 0:size[1]]
    img = np.exp(-((cols + 0.5 - dot[0]) ** 2 + (rows + 0.5 - dot[1]) ** 2) / (2 * 1.5**2)).astype(np.float32)
    warped, valid = warp_image(img, H, size)
    expected = apply_homography(H, dot[None])[0]
    assert valid[int(expected[1]), int(expected[0])]
    assert np.linalg.norm(_centroid(warped, expected) - expected) < 0.1


def test_valid_mask_is_where_the_source_is_inside_and_valid():
    img = np.ones((64, 64), np.float32)
    H = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, -5.0], [0.0, 0.0, 1.0]])
    warped, valid = warp_image(img, H, (64, 64))
    expected = np.zeros((64, 64), bool)
    expected[:59, 10:] = True
    np.testing.assert_array_equal(valid, expected)
    assert (warped[valid] == 1.0).all() and (warped[~valid] == 0.0).all()

    src_valid = np.ones((64, 64), bool)
    src_valid[20, 30] = False
    _, valid = warp_image(img, H, (64, 64), valid=src_valid)
    assert not valid[15, 40] and valid[15, 42] and valid[13, 40]


def test_random_homography_without_range_is_identity_and_respects_bounds():
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(random_homography(rng, (64, 64), 0, 1, 0, 0), np.eye(3), atol=1e-12)
    for _ in range(20):
        H = random_homography(rng, (100, 200), 10, 1.2, 0.1, 0.0)
        a = H[:2, :2]
        scale = np.sqrt(abs(np.linalg.det(a)))
        assert 1 / 1.2 - 1e-9 <= scale <= 1.2 + 1e-9 and np.linalg.det(a) > 0
        assert abs(np.degrees(np.arctan2(a[1, 0], a[0, 0]))) <= 10 + 1e-9
        shift = apply_homography(H, np.array([[100.0, 50.0]]))[0] - [100.0, 50.0]
        assert abs(shift[0]) <= 20 + 1e-9 and abs(shift[1]) <= 10 + 1e-9
    with pytest.raises(ValueError):
        random_homography(rng, (64, 64), 0, 0.9, 0, 0)


# --- simulations ------------------------------------------------------------------------

SIMULATION_FNS = {**SIMULATIONS, "jitter": photometric_jitter}


@pytest.mark.parametrize("name", SIMULATION_FNS)
def test_simulation_in_unit_range_differs_and_is_reproducible(name, optical_crop):
    fn = SIMULATION_FNS[name]
    out = fn(optical_crop, np.random.default_rng(7))
    assert out.dtype == np.float32 and out.shape == optical_crop.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - optical_crop).mean() > 0.02
    np.testing.assert_array_equal(out, fn(optical_crop, np.random.default_rng(7)))
    assert not np.array_equal(out, fn(optical_crop, np.random.default_rng(8)))


def test_sar_looks_are_bounded(optical_crop):
    for looks in (1, 4):
        assert pseudo_sar(optical_crop, np.random.default_rng(0), looks=looks).shape == optical_crop.shape
    with pytest.raises(ValueError):
        pseudo_sar(optical_crop, np.random.default_rng(0), looks=0.5)


# --- catalogue --------------------------------------------------------------------------

def test_catalogue_lists_the_sample_bands_with_their_modalities(sources):
    by_key = {(Path(s.path).name, s.band): s for s in sources}
    assert by_key[("LT05_167055_20000309_B6.tif", 1)].modality == "thermal"
    assert by_key[("LT05_167055_20000309_B3.tif", 1)].modality == "optical"
    assert [by_key[("L7_ETMs.tif", b)].modality for b in range(1, 7)] == ["optical"] * 3 + ["infrared"] * 3
    assert [by_key[("rgbn.tif", b)].modality for b in range(1, 5)] == ["optical"] * 3 + ["infrared"]
    assert all(s.modality in MODALITIES for s in sources)


def test_catalogue_skips_missing_benchmark_files_with_a_log_line(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dmreg.train.catalogue"):
        sources = catalogue(DATA, tmp_path)
    assert sources and not any(s.scene.startswith("LC08") for s in sources)
    missing = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(missing) == 6 and all("LC08_L1TP_2240" in m for m in missing)


def test_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="modality"):
        BandSource("x.tif", 1, "lidar", "x")


# --- dataset ----------------------------------------------------------------------------

def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_item_shapes_dtypes_and_ranges(sources):
    ds = PairDataset(sources, crop_size=64, length=30, seed=0, simulate_prob=0.5)
    for i in range(len(ds)):
        item = ds[i]
        for key in ("image0", "image1"):
            assert item[key].shape == (1, 64, 64) and item[key].dtype == torch.float32
            assert 0.0 <= item[key].min() and item[key].max() <= 1.0
        for key in ("valid0", "valid1"):
            assert item[key].shape == (64, 64) and item[key].dtype == torch.bool
        assert item["H_0to1"].shape == (3, 3) and item["H_0to1"].dtype == torch.float32
        for key in ("modality0", "modality1"):
            assert item[key].dtype == torch.int64 and 0 <= int(item[key]) < len(MODALITIES)
        assert isinstance(item["scene"], str)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_items_are_a_function_of_seed_and_index(sources):
    a = PairDataset(sources, crop_size=64, length=20, seed=3, simulate_prob=0.5)
    b = PairDataset(sources, crop_size=64, length=20, seed=3, simulate_prob=0.5)
    for i in (7, 0, 7, 19):
        _assert_items_equal(a[i], b[i])
    other = PairDataset(sources, crop_size=64, length=20, seed=4, simulate_prob=0.5)
    assert not torch.equal(a[7]["image0"], other[7]["image0"])


def test_dataloader_workers_give_the_same_items(sources):
    """Workers open their own files (the parent's handles are not shared) and yield
    exactly the items of the main process."""
    ds = PairDataset(sources, crop_size=64, length=8, seed=1, simulate_prob=0.5)
    direct = [ds[i] for i in range(len(ds))]  # opens handles in this process first
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    for i, item in enumerate(direct):
        batch = batches[i // 4]
        assert batch["scene"][i % 4] == item["scene"]
        assert torch.equal(batch["image1"][i % 4], item["image1"])
        assert torch.equal(batch["H_0to1"][i % 4], item["H_0to1"])


def test_held_out_scene_never_in_training_data_but_available_for_evaluation(sources):
    train = PairDataset(sources, crop_size=64, length=200, seed=0)
    assert not set(train.scenes) & set(HELD_OUT_SCENES)
    assert {train[i]["scene"] for i in range(len(train))}.isdisjoint(HELD_OUT_SCENES)

    evaluation = PairDataset(sources, scenes=HELD_OUT_SCENES, crop_size=64, length=10, seed=0,
                             simulate_prob=0.0, jitter=False)
    items = [evaluation[i] for i in range(len(evaluation))]
    assert {item["scene"] for item in items} == set(HELD_OUT_SCENES)
    assert all(item["valid0"].all() for item in items)


def test_unknown_scene_is_refused(sources):
    with pytest.raises(ValueError, match="nope"):
        PairDataset(sources, scenes=["nope"])


def test_scene_smaller_than_the_crop_is_padded_invalid(sources):
    ds = PairDataset(sources, scenes=[LT05_SCENE], crop_size=256, length=5, seed=0, simulate_prob=0.0)
    for i in range(len(ds)):
        valid0 = ds[i]["valid0"].numpy()
        rows, cols = np.nonzero(valid0)
        assert np.ptp(rows) < 101 and np.ptp(cols) < 101
        assert 0.5 * 101 * 101 <= valid0.sum() <= 101 * 101


def test_H_0to1_maps_image0_onto_image1(tmp_path):
    """With two identical bands, no jitter and no simulation, image1 is image0 warped by
    H_0to1 exactly: the returned H has the right direction and pixel convention."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.random((200, 180)).astype(np.float32), (0, 0), 2.0)
    band = (texture * 200 / texture.max()).astype(np.uint8)
    path = write_raster(tmp_path / "twin.tif", np.stack([band, band]), crs="EPSG:32618",
                        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0))
    sources = [BandSource(str(path), b, m, "twin") for b, m in ((1, "optical"), (2, "infrared"))]
    ds = PairDataset(sources, scenes=["twin"], crop_size=96, length=4, seed=0, simulate_prob=0.0,
                     jitter=False, warp=HomographyRange(max_perspective=0.05))
    for i in range(len(ds)):
        item = ds[i]
        expected, valid = warp_image(item["image0"][0].numpy(), item["H_0to1"].numpy().astype(np.float64), (96, 96))
        both = valid & item["valid1"].numpy()
        assert both.mean() > 0.5
        np.testing.assert_allclose(item["image1"][0].numpy()[both], expected[both], atol=2e-3)
