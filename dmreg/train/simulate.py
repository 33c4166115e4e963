"""Modality simulation: stand-ins for sensors we have no co-located training data for.

These are SIMULATIONS, not models of real sensors. They give the matcher optical/X
pairs whose radiometry differs the way real cross-modal pairs differ (non-linear,
inverted, speckled, posterised) while the geometry stays exact, so the network cannot
succeed by matching intensities. Real band pairs (visible vs NIR, SWIR, thermal) are
the ground truth the simulations supplement, never replace.

Every function maps a float32 H x W image in [0, 1] to a float32 image in [0, 1] and
draws all its randomness from the ``rng`` it is given, so a seed reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Simulation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def pseudo_infrared(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A visible-to-infrared (V2I-like) stand-in.

    A random monotone tone curve, then contrast inverted over some smooth regions (in
    thermal and NIR, vegetation, water and roofs swap brightness order with respect to
    the visible, but not everywhere alike), a smooth per-region gain and offset, and a
    Gaussian blur for the coarser ground resolution of thermal sensors.
    """
    knots = np.sort(rng.random(6))
    knots = (knots - knots[0]) / max(knots[-1] - knots[0], 1e-6)
    toned = np.interp(img, np.linspace(0.0, 1.0, knots.size), knots) ** np.exp(rng.uniform(-0.5, 0.5))
    # ~0 or ~1 by region (a blend near 0.5 would flatten the region); the threshold sets
    # how much is inverted, from nothing (> 1) to most of the image
    inverted = 1.0 / (1.0 + np.exp(-12.0 * (_smooth_field(rng, img.shape) - rng.uniform(0.2, 1.2))))
    out = (1.0 - inverted) * toned + inverted * (1.0 - toned)
    out = out * (0.7 + 0.6 * _smooth_field(rng, img.shape)) + 0.1 * (_smooth_field(rng, img.shape) - 0.5)
    out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.7, 2.0))
    return _stretch(out)


def pseudo_sar(img: np.ndarray, rng: np.random.Generator, looks: int | None = None) -> np.ndarray:
    """A SAR-amplitude stand-in whose radiometry owes nothing to the optical one.

    The image is split into intensity classes, each given a random backscatter (so the
    brightness order of the optical image is scrambled); slopes of the image, read as a
    surface, facing a random look direction are brightened and those facing away dimmed
    (a crude layover/foreshortening and shadow proxy); then multiplicative gamma speckle
    of ``looks`` looks (1 to 4, random when None) and log-amplitude compression.
    """
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
    return _stretch(np.log(np.sqrt(intensity * speckle) + 1e-3))


def pseudo_map(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rendered-map stand-in: a few flat fills with thin dark boundaries.

    The smoothed image is cut into 3 to 6 classes at random quantiles; each class gets a
    random flat grey (maps colour land use, not brightness) and 1-pixel dark lines are
    drawn where the class changes.
    """
    n_classes = int(rng.integers(3, 7))
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.5)
    cuts = np.sort(rng.uniform(0.1, 0.9, n_classes - 1))
    classes = np.digitize(smooth, np.quantile(smooth, cuts)).astype(np.uint8)
    classes = cv2.medianBlur(classes, 5)  # drop specks a cartographer would not draw
    out = rng.uniform(0.25, 1.0, n_classes).astype(np.float32)[classes]
    edge = np.zeros(img.shape, bool)
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge[1:, :] |= classes[1:, :] != classes[:-1, :]
    out[edge] = rng.uniform(0.0, 0.15)
    return out


def photometric_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, gain, offset and Gaussian noise: acquisition-to-acquisition variation that
    every modality shows and that the per-tile stretch of the pipeline does not remove."""
    out = img.astype(np.float32) ** np.exp(rng.uniform(-0.4, 0.4))
    out = out * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    out += rng.normal(0.0, rng.uniform(0.0, 0.03), img.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


SIMULATIONS: dict[str, Simulation] = {
    "infrared": pseudo_infrared,
    "sar": pseudo_sar,
    "map": pseudo_map,
}
"""Modality label (a name in dmreg.matchers.base.MODALITIES) -> the simulation giving it."""


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform noise on a 5 x 5 lattice, cubic-upsampled: a field in [0, 1] that changes
    over about a quarter of the image, i.e. region by region rather than pixel by pixel."""
    coarse = rng.random((5, 5)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _stretch(img: np.ndarray) -> np.ndarray:
    """1-99 percentile stretch to [0, 1], as the pipeline does to every tile."""
    lo, hi = np.percentile(img, [1.0, 99.0])
    if hi - lo < 1e-9:
        return np.full(img.shape, 0.5, np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
