"""A structural descriptor that survives changes of modality.

Different sensors disagree on brightness, even on the sign of contrast (a road is dark
in thermal and bright in visible light), but they agree on where edges are and which
way they run. The descriptor therefore keeps only the local distribution of gradient
ORIENTATION modulo 180 degrees (so a contrast reversal changes nothing), pooled over a
Gaussian cell and normalised per pixel (so gradient strength, which depends on the
sensor, drops out). Built from first principles: soft orientation binning as in
histograms of oriented gradients, dense rather than sparse.
"""

from __future__ import annotations

import cv2
import numpy as np

N_ORIENTATIONS = 8


def oriented_gradients(img: np.ndarray, valid: np.ndarray | None = None, cell_sigma: float = 2.0,
                       n_bins: int = N_ORIENTATIONS) -> np.ndarray:
    """Dense descriptor of shape (H, W, n_bins), float32, unit L2 norm where there is structure."""
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    position = (np.arctan2(gy, gx) % np.pi) / np.pi * n_bins  # in [0, n_bins)
    channels = np.empty((*img.shape, n_bins), np.float32)
    for k in range(n_bins):
        distance = np.abs(position - k)
        distance = np.minimum(distance, n_bins - distance)  # orientations wrap around
        channels[..., k] = magnitude * np.clip(1.0 - distance, 0.0, None)
    if valid is not None:
        edge_free = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        channels[~edge_free] = 0.0  # the border of a nodata area is not a feature
    pooled = cv2.GaussianBlur(channels, (0, 0), cell_sigma)
    if pooled.ndim == 2:
        pooled = pooled[..., None]
    norm = np.sqrt((pooled * pooled).sum(axis=-1, keepdims=True))
    floor = 0.1 * float(norm.mean()) + 1e-6  # keeps noise in flat areas from being amplified
    return (pooled / (norm + floor)).astype(np.float32)


def gradient_energy(img: np.ndarray) -> np.ndarray:
    """Local gradient magnitude, used to screen out textureless templates and tiles."""
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    return np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3))


def phase_correlate(ref_desc: np.ndarray, mov_desc: np.ndarray) -> tuple[float, float, float]:
    """Translation d with ref(p + d) ~ mov(p), from all descriptor channels at once.

    Returns (dx, dy, peak) where peak is the correlation peak's height over the
    surface's spread (a z-score; above ~8 the shift is unambiguous).
    """
    h, w = ref_desc.shape[:2]
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)[..., None]
    fr = np.fft.rfft2((ref_desc - ref_desc.mean(axis=(0, 1))) * window, axes=(0, 1))
    fm = np.fft.rfft2((mov_desc - mov_desc.mean(axis=(0, 1))) * window, axes=(0, 1))
    cross = (fr * np.conj(fm)).sum(axis=-1)
    cross /= np.abs(cross) + 1e-9 * np.abs(cross).max()
    surface = np.fft.irfft2(cross, s=(h, w))
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    peak = (surface[iy, ix] - surface.mean()) / (surface.std() + 1e-12)
    sx = ix + parabola_offset(surface[iy, (ix - 1) % w], surface[iy, ix], surface[iy, (ix + 1) % w])
    sy = iy + parabola_offset(surface[(iy - 1) % h, ix], surface[iy, ix], surface[(iy + 1) % h, ix])
    dx = sx - w if sx > w / 2 else sx
    dy = sy - h if sy > h / 2 else sy
    return float(dx), float(dy), float(peak)


def parabola_offset(left: float, centre: float, right: float) -> float:
    """Sub-pixel offset of a peak from three samples around it."""
    denom = left - 2 * centre + right
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))
