"""The structural matcher's vectorised parts against direct computations, and its thread
pool against matching pair by pair. Correctness only: the speed itself is not tested."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import rasterio

from dmreg.matchers.base import TilePair
from dmreg.matchers.structural import StructuralMatcher, _peaks, _window_energy
from dmreg.matchers.structure import oriented_gradients
from dmreg.runtime import set_thread_count
from helpers import L7, L7_BANDS

SHIFT = (1.3, -0.7)  # pixels, moving relative to reference


@pytest.fixture(scope="module")
def red() -> np.ndarray:
    with rasterio.open(L7) as ds:
        return ds.read(L7_BANDS["red"]).astype(np.float32) / 255


def shifted(img: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """img moved by shift: what is at p in img is at p + shift in the result."""
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def pair(ref: np.ndarray, mov: np.ndarray, max_offset: float) -> TilePair:
    ok = np.ones(ref.shape, bool)
    return TilePair(ref, mov, ok, ok, max_offset=max_offset)


def reference_descriptor(img: np.ndarray, n_bins: int = 8) -> np.ndarray:
    """oriented_gradients the slow, obvious way: np.arctan2 and one full pass per bin."""
    smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    position = (np.arctan2(gy, gx) % np.pi) / np.pi * n_bins
    planes = []
    for k in range(n_bins):
        distance = np.abs(position - k)
        distance = np.minimum(distance, n_bins - distance)
        planes.append(cv2.GaussianBlur(magnitude * np.clip(1.0 - distance, 0.0, None), (0, 0), 2.0))
    pooled = np.stack(planes)
    norm = np.sqrt((pooled * pooled).sum(axis=0))
    return pooled / (norm + 0.1 * norm.mean() + 1e-6)


def test_descriptor_equals_the_direct_computation(red):
    crop = red[40:200, 60:230]
    assert np.abs(oriented_gradients(crop) - reference_descriptor(crop)).max() < 1e-5
    # orientation modulo 180 degrees: a contrast reversal changes nothing
    assert np.abs(oriented_gradients(1 - crop) - oriented_gradients(crop)).max() < 1e-5


def test_window_energies_equal_a_direct_computation():
    rng = np.random.default_rng(3)
    planes = rng.random((3, 23, 19), dtype=np.float32)
    size, h = 7, 3
    energy = _window_energy(planes, size)
    for y in range(h, planes.shape[1] - h):
        for x in range(h, planes.shape[2] - h):
            window = planes[:, y - h:y + h + 1, x - h:x + h + 1].astype(np.float64)
            direct = ((window - window.mean(axis=(1, 2), keepdims=True)) ** 2).sum()
            assert energy[y, x] == pytest.approx(direct, rel=1e-5)


def test_peaks_equal_a_surface_by_surface_search():
    rng = np.random.default_rng(5)
    surfaces = np.stack([cv2.GaussianBlur(s, (0, 0), 1.5) for s in rng.random((40, 13, 13), dtype=np.float32)])
    surfaces[0, 0, 4] = surfaces[1, 6, 12] = 2.0  # peaks on the edge: no position
    px, py, score, margin = _peaks(surfaces)
    assert np.isnan(px[:2]).all() and np.isnan(score[:2]).all()
    for k in range(2, len(surfaces)):
        s = surfaces[k].astype(np.float64)
        iy, ix = np.unravel_index(np.argmax(s), s.shape)
        if min(iy, ix) == 0 or iy == s.shape[0] - 1 or ix == s.shape[1] - 1:
            assert np.isnan(px[k])
            continue
        others = s.copy()
        others[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3] = -np.inf
        assert score[k] == s[iy, ix] and margin[k] == s[iy, ix] - others.max()
        for found, at, left, right in ((px[k], ix, s[iy, ix - 1], s[iy, ix + 1]),
                                       (py[k], iy, s[iy - 1, ix], s[iy + 1, ix])):
            curvature = left - 2 * s[iy, ix] + right
            expected = at + (np.clip(0.5 * (left - right) / curvature, -0.5, 0.5) if curvature < 0 else 0.0)
            assert found == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("max_offset, shift", [(4, SHIFT), (30, (12.4, -7.6))])
@pytest.mark.parametrize("inverted", [False, True])
def test_recovers_a_known_sub_pixel_shift(red, max_offset, shift, inverted):
    mov = shifted(red, shift)
    found = StructuralMatcher().match([pair(red, 1 - mov if inverted else mov, max_offset)])[0]
    assert len(found) > 50
    offset = np.median(found.ref_xy - found.mov_xy, axis=0)
    assert np.abs(offset + np.array(shift)).max() < 0.05


def test_thread_pool_gives_the_results_of_pair_by_pair_matching_in_order(red):
    pairs = [pair(red, shifted(red, (dx, -0.4 * dx)), 4) for dx in (0.3, 1.6, -2.2)]
    pairs += [pair(red, 1 - shifted(red, (-0.8, 1.1)), 4), pair(red, shifted(red, (9.6, 5.3)), 20)]
    matcher = StructuralMatcher()
    alone = [matcher.match([p])[0] for p in pairs]
    set_thread_count(3)
    try:
        pooled = matcher.match(pairs)
    finally:
        set_thread_count(None)
    assert len(pooled) == len(pairs)
    for a, b in zip(alone, pooled):
        assert len(a) > 0
        np.testing.assert_array_equal(a.ref_xy, b.ref_xy)
        np.testing.assert_array_equal(a.mov_xy, b.mov_xy)
        np.testing.assert_array_equal(a.confidence, b.confidence)


def test_a_lone_pair_split_over_threads_gives_the_single_thread_result(red):
    matcher = StructuralMatcher()
    for p in (pair(red, shifted(red, (0.7, -1.3)), 4), pair(red, 1 - shifted(red, (9.6, 5.3)), 20)):
        set_thread_count(1)
        try:
            single = matcher.match([p])[0]
            set_thread_count(3)
            split = matcher.match([p])[0]
        finally:
            set_thread_count(None)
        assert len(single) > 0
        np.testing.assert_array_equal(single.ref_xy, split.ref_xy)
        np.testing.assert_array_equal(single.confidence, split.confidence)


@pytest.mark.parametrize("shape", [(233, 307), (256, 256)])  # 233 and 307 are prime: padded to fast sizes
def test_phase_correlation_finds_the_shift_with_or_without_a_pool(red, shape):
    from concurrent.futures import ThreadPoolExecutor

    from dmreg.matchers.structure import phase_correlate

    crop = red[:shape[0], :shape[1]]
    ref_d, mov_d = oriented_gradients(crop), oriented_gradients(shifted(crop, (-7.3, 4.6)))
    alone = phase_correlate(ref_d, mov_d)
    with ThreadPoolExecutor(2) as pool:
        shared = phase_correlate(ref_d, mov_d, pool)
    assert np.allclose(alone, shared, rtol=1e-4, atol=1e-4)
    assert abs(alone[0] - 7.3) < 0.3 and abs(alone[1] + 4.6) < 0.3, alone
    assert alone[2] > 8
