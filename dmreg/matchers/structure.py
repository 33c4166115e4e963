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

from concurrent.futures import Executor

import cv2
import numpy as np

N_ORIENTATIONS = 8


def oriented_gradients(img: np.ndarray, valid: np.ndarray | None = None, cell_sigma: float = 2.0,
                       n_bins: int = N_ORIENTATIONS) -> np.ndarray:
    """Dense descriptor as planes, shape (n_bins, H, W), float32, unit L2 norm over the planes
    where there is structure. Planes, not interleaved channels: OpenCV's filters and
    transforms are fastest on single planes."""
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy)  # not cv2.magnitude: its last bit varies when threads run it at once
    if valid is not None:  # the border of a nodata area is not a feature
        magnitude *= cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8))
    position = _orientation(gx, gy, magnitude)
    position *= np.float32(n_bins / np.pi)  # orientation in bins, modulo n_bins
    pooled = _pool(_soft_bins(position, magnitude, n_bins), cell_sigma)
    norm = np.sqrt(np.einsum("kij,kij->ij", pooled, pooled))
    floor = 0.1 * float(norm.mean()) + 1e-6  # keeps noise in flat areas from being amplified
    norm += np.float32(floor)
    pooled /= norm
    return pooled


def _orientation(gx: np.ndarray, gy: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Gradient angle in radians, to float32 precision, within 2e-4 of [0, 2 pi).

    np.arctan2 is slow (a third of the time of the rest of the descriptor); cv2.phase is fast
    but only good to 2e-4 rad, so one Newton step, angle += sin(true angle - angle), brings
    it to float32 precision.
    """
    angle = cv2.phase(gx, gy)
    residual = np.cos(angle)
    residual *= gy
    residual -= gx * np.sin(angle)  # magnitude * sin(true angle - angle)
    np.divide(residual, magnitude, out=residual, where=magnitude > 0)
    angle += residual
    return angle


def _pool(votes: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each plane of votes (n_bins, H, W), not in place: OpenCV's in-place
    blur has had bugs."""
    pooled = np.empty_like(votes)
    for plane, out in zip(votes, pooled):
        cv2.GaussianBlur(plane, (0, 0), sigma, dst=out)
    return pooled


def _soft_bins(position: np.ndarray, magnitude: np.ndarray, n_bins: int) -> np.ndarray:
    """Votes (n_bins, H, W): each pixel splits its magnitude between the two bins next to
    its position (in bins, taken modulo n_bins), linearly by distance."""
    lower = np.floor(position)
    upper_share = magnitude * (position - lower)
    lower_share = magnitude - upper_share
    lower -= n_bins * np.floor(lower / n_bins)  # 0 .. n_bins - 1: orientations wrap around
    votes = np.empty((n_bins, *position.shape), np.float32)
    for k, plane in enumerate(votes):
        np.multiply(lower_share, lower == k, out=plane)
        plane += upper_share * (lower == (k - 1) % n_bins)
    return votes


def gradient_energy(img: np.ndarray) -> np.ndarray:
    """Local gradient magnitude, used to screen out textureless templates and tiles."""
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    return np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3))


def phase_correlate(ref_desc: np.ndarray, mov_desc: np.ndarray,
                    pool: Executor | None = None) -> tuple[float, float, float]:
    """Translation d with ref(p + d) ~ mov(p), from all descriptor planes (n, H, W) at once.

    Returns (dx, dy, peak) where peak is the correlation peak's height over the
    surface's spread (a z-score; above ~8 the shift is unambiguous). The windowed planes
    are zero-padded to sizes the DFT is fast at (a side with a large prime factor costs
    twice as much); with a ``pool``, half of the planes are transformed in it.
    """
    n, h, w = ref_desc.shape
    size = (cv2.getOptimalDFTSize(h), cv2.getOptimalDFTSize(w))
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)

    def cross_power(planes: range) -> np.ndarray:  # summed over the planes, as OpenCV holds spectra
        padded, cross = np.zeros(size, np.float32), np.zeros((*size, 2), np.float32)
        for k in planes:
            padded[:h, :w] = (ref_desc[k] - ref_desc[k].mean()) * window
            fr = cv2.dft(padded, flags=cv2.DFT_COMPLEX_OUTPUT)
            padded[:h, :w] = (mov_desc[k] - mov_desc[k].mean()) * window
            cross += cv2.mulSpectrums(fr, cv2.dft(padded, flags=cv2.DFT_COMPLEX_OUTPUT), 0, conjB=True)
        return cross

    half = n // 2 if pool else n
    other = pool.submit(cross_power, range(half, n)) if pool else None
    cross = cross_power(range(half))
    if other:
        cross += other.result()
    spectrum = cross.view(np.complex64)[..., 0]
    amplitude = np.abs(spectrum)
    spectrum /= amplitude + 1e-9 * amplitude.max()
    surface = cv2.dft(cross, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    rows, cols = size  # the surface wraps around at the padded size
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    peak = (surface[iy, ix] - surface.mean()) / (surface.std() + 1e-12)
    sx = ix + parabola_offset(surface[iy, (ix - 1) % cols], surface[iy, ix], surface[iy, (ix + 1) % cols])
    sy = iy + parabola_offset(surface[(iy - 1) % rows, ix], surface[iy, ix], surface[(iy + 1) % rows, ix])
    dx = sx - cols if sx > cols / 2 else sx
    dy = sy - rows if sy > rows / 2 else sy
    return float(dx), float(dy), float(peak)


def parabola_offset(left: np.ndarray | float, centre: np.ndarray | float,
                    right: np.ndarray | float) -> np.ndarray:
    """Sub-pixel offset of a peak from three samples around it (each a number or an array)."""
    denom = np.asarray(left - 2 * centre + right)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.clip(0.5 * (left - right) / denom, -0.5, 0.5)
    return np.where(denom < 0, offset, 0.0)
