"""Modality simulation: stand-ins for sensors we have no co-located training data for.

These are SIMULATIONS, not models of real sensors. They give the matcher optical/X
pairs whose radiometry differs the way real cross-modal pairs differ (non-linear,
inverted, speckled, posterised) while the geometry stays exact (``pseudo_sar`` alone adds a
zero-mean layover warp of at most 2 px, see there), so the network cannot succeed by
matching intensities. Real band pairs (visible vs NIR, SWIR, thermal) are the ground truth
the simulations supplement, never replace.

Every function maps a float32 H x W image in [0, 1] to a float32 image in [0, 1] and
draws all its randomness from the ``rng`` it is given, so a seed reproduces it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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


def pseudo_sar(img: np.ndarray, rng: np.random.Generator, looks: float | None = None) -> np.ndarray:
    """A Sentinel-1-GRD-like stand-in (stretched dB) whose radiometry owes little to the optical.

    Modelled in this order (``_sar_layers`` does the work and keeps every stage):

    1. Backscatter: the smoothed optical intensity (1-3 random quantile classes) crossed
       with its local texture (smooth / textured) gives up to 6 classes; each class gets a
       land cover drawn at random (water -25 to -18 dB, bare/low -17 to -12, vegetation
       -11 to -7, built-up -7 to 0; textured classes lean to vegetation and built-up,
       smooth ones to water and bare), the cover's level drawn once per image and varied
       a little per class, plus a smooth variation over the image and an image-wide
       offset (VV- to VH-like). Brightness order in the optical says little about it.
    2. Terrain: the blurred optical image read as a height surface, seen from a random look
       direction at a random incidence angle (30-46 deg, the IW swath): local-incidence
       modulation, radar shadow (self and cast), then layover: each pixel shows the ground
       displaced towards the sensor by its height over tan(incidence), scaled down to at
       most ``_SarRanges.layover_max_px`` and made exactly zero-mean over the image.
    3. Sparse bright scatterers in the built-up cover (plus a few anywhere): points and
       short azimuth lines, spread by a sinc^2 point-spread function along range and
       azimuth, whose sidelobes draw the bright crosses of corner reflectors.
    4. Speckle on intensity: gamma with shape ``looks`` (any number >= 1) and mean 1
       (``looks`` uniform in 1.5-5.5 when None; Sentinel-1 IW GRDH is about 4.4), spatially
       correlated like GRD speckle (pixel spacing is half the resolution), multiplying the
       distributed backscatter plus a thermal-noise floor; point scatterers are
       deterministic and added to it.
    5. dB (10 log10 intensity) and the 1-99 percentile stretch to [0, 1] that dmreg gives
       every tile (``_stretch`` = ``dmreg.io.sampling.normalise_contrast`` on a tile without
       nodata), as real SAR in dB gets.

    Geometry: everything but the layover keeps the optical pixel grid. The layover is a
    smooth warp of at most 2 px, zero-mean over the image, so a training pair's homography
    stays exact on average and the warp acts as label noise (2 px at the highest and lowest
    points, a fraction of a pixel on average); ``_sar_layers(...).displacement`` gives the
    field exactly, for a caller that wants to account for it.

    The random ranges are in ``_SarRanges``, each with the statistic of
    ``benchmarks/sar_statistics.py`` (real Sentinel-1 from BigEarthNet and TerraMind,
    pooled over all patches and both polarisations) it was checked against.
    """
    return _sar_layers(img, rng, looks).image


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
    return draw_classes(classes, n_classes, rng)


def draw_classes(classes: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class numbers 0..n_classes-1 drawn as a map draws them: a random flat grey per
    class (maps colour land use, not brightness) and dark 1-pixel lines where the class
    changes."""
    out = rng.uniform(0.25, 1.0, n_classes).astype(np.float32)[classes]
    edge = np.zeros(classes.shape, bool)
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


# --- pseudo-SAR internals --------------------------------------------------------------------

@dataclass(frozen=True)
class _Cover:
    """A land cover of the pseudo-SAR backscatter model: its backscatter range (dB, VV-like)
    and the odds that a smooth or a textured optical class gets it."""

    name: str
    db: tuple[float, float]
    p_smooth: float
    p_textured: float


_COVERS = (
    _Cover("water", (-25.0, -18.0), 0.10, 0.02),      # calm to wind-roughened water, tarmac
    _Cover("bare", (-17.0, -12.0), 0.25, 0.10),       # bare soil, grassland, low crops
    _Cover("vegetation", (-11.0, -7.0), 0.60, 0.78),  # tall crops, forest (volume scattering)
    _Cover("built-up", (-7.0, 0.0), 0.05, 0.10),      # settlements (double bounce)
)
_BUILT_UP = 3
"""Index of the built-up cover in _COVERS: where the scatterers go."""


@dataclass(frozen=True)
class _SarRanges:
    """Random ranges of ``pseudo_sar``, one uniform draw per image unless said otherwise.
    Each says which statistic of ``benchmarks/sar_statistics.py`` (real Sentinel-1 VV and
    VH pooled over all 65 BigEarthNet and TerraMind patches, medians over images; never one
    file) it was tuned or checked against, or that it comes from the product and was not
    tuned. The covers' ranges and odds (_COVERS) were tuned against the histogram (W1, KS),
    the skewness and the optical correlation."""

    looks: tuple[float, float] = (1.5, 5.5)
    """Speckle looks: ENL of the most homogeneous 7 x 7 windows (with the correlation below),
    skewness and kurtosis (fewer looks, heavier dark tail); Sentinel-1 IW GRDH's nominal 4.4
    is inside."""
    speckle_corr_px: tuple[float, float] = (0.95, 1.3)
    """Blur (px) of the Gaussian field that orders the speckle: lag-1 autocorrelation, the
    real speckle's own autocorrelation (about 0.7 at lag 1, 0.3 at lag 2, high-passed dB) and
    the ENL (correlated speckle looks smoother in a window)."""
    intensity_classes: tuple[int, int] = (1, 3)
    """Optical intensity classes (inclusive), each split smooth/textured: lag-3
    autocorrelation and the optical correlation."""
    textured_quantile: tuple[float, float] = (0.6, 0.9)
    """Texture quantile above which an optical class counts as textured (not tuned)."""
    class_db: tuple[float, float] = (0.0, 1.0)
    """Standard deviation of each class's level around its cover's level (dB; two crops,
    two forests differ): optical correlation, skewness, kurtosis."""
    variation_db: tuple[float, float] = (0.5, 1.5)
    """Standard deviation of the smooth within-image backscatter variation (dB): histogram
    (W1, KS) and kurtosis."""
    pol_offset_db: tuple[float, float] = (-7.0, 0.0)
    """Image-wide offset, VV-like (0) to VH-like (-7 dB): how close the dark covers come to
    the noise floor (as for the noise floor, little effect on the statistics)."""
    noise_floor_db: tuple[float, float] = (-30.0, -22.0)
    """Thermal noise floor: Sentinel-1 IW's NESZ is -22 dB at worst, lower after the
    products' thermal-noise removal; the histogram's dark tail and the skewness (a floor
    of -25 to -21 dB cut the dark tail short)."""
    relief_px: tuple[float, float] = (0.0, 1.5)
    """Standard deviation of the height surface (px): kurtosis and histogram (shadow and
    foreslope brightening widen the tails)."""
    relief_blur_px: tuple[float, float] = (2.0, 6.0)
    """Blur turning the optical image into a height surface (px; not tuned)."""
    incidence_deg: tuple[float, float] = (30.0, 46.0)
    """Sentinel-1 IW incidence angles (taken from the product, not tuned)."""
    cos_power: tuple[float, float] = (1.0, 2.0)
    """Backscatter ~ cos(local incidence)^p (not tuned)."""
    area_weight: tuple[float, float] = (0.0, 1.0)
    """0: terrain-flattened (RTC, as TerraMind's); 1: ellipsoid-calibrated GRD (as
    BigEarthNet's), whose foreslopes brighten by sin(incidence) / sin(local incidence)
    (not tuned)."""
    layover_gain: tuple[float, float] = (0.0, 1.0)
    """Share of the full layover (height / tan(incidence)) before the cap (not tuned: no
    statistic of the benchmark sees it)."""
    layover_max_px: float = 2.0
    """Cap on the layover displacement (px): label noise, kept small."""
    psf_resolution_px: tuple[float, float] = (1.6, 2.4)
    """Resolution of the point-spread function (px; IW GRDH is about 20 x 22 m on a 10 m
    grid; not tuned); its main lobe also blurs the distributed backscatter."""
    sidelobe_db: tuple[float, float] = (-8.0, 0.0)
    """Sidelobe attenuation on top of the sinc^2's -13 dB (Sentinel-1 windows its spectrum;
    not tuned)."""
    points_per_built_up_px: tuple[float, float] = (0.0, 0.002)
    """Density of point scatterers in the built-up cover: kurtosis and the histogram's
    bright tail."""
    points_per_px: tuple[float, float] = (0.0, 1e-4)
    """Density of isolated point scatterers anywhere (pylons, bridges, vehicles): as above."""
    lines_per_built_up_px: tuple[float, float] = (0.0, 5e-4)
    """Density of short bright lines (walls facing the sensor) in the built-up cover: as above."""
    point_db: tuple[float, float] = (5.0, 20.0)
    """Peak backscatter of a point scatterer (dB, VV-like), per point: as above."""
    line_db: tuple[float, float] = (-3.0, 8.0)
    """Backscatter of a line scatterer (dB per pixel, VV-like), per line (not tuned)."""


_SAR_RANGES = _SarRanges()

_PSF_HALF_WIDTH = 8
"""The point-spread function is sampled over (2 * 8 + 1)^2 px: crosses at most 8 px long."""

_MAX_SHADOW_STEPS = 32
"""Cast shadows are traced at most this many pixels towards the sensor."""


class _SarLayers(NamedTuple):
    """Every stage of one pseudo-SAR draw (H x W float32 unless said otherwise)."""

    image: np.ndarray
    """The result: stretched dB in [0, 1]."""
    db: np.ndarray
    """10 log10 of ``intensity``."""
    intensity: np.ndarray
    """Linear intensity: (clutter + noise floor) * speckle + scatterers."""
    backscatter_db: np.ndarray
    """Step 1: the backscatter map (dB) on the optical grid."""
    cover: np.ndarray
    """Step 1: the land-cover index (into _COVERS) of each pixel, int, on the optical grid."""
    shadow: np.ndarray
    """Step 2: radar shadow (bool), on the SAR grid."""
    displacement: np.ndarray
    """Step 2, the layover: H x W x 2 (dx, dy); SAR pixel (col, row) shows the optical
    content at (col + dx, row + dy). Zero-mean over the image by construction."""
    scatterers: np.ndarray
    """Step 3: point and line scatterers (intensity) after the point-spread function."""
    speckle: np.ndarray
    """Step 4: the speckle (gamma of shape ``looks``, mean 1, spatially correlated)."""
    looks: float


def _sar_layers(img: np.ndarray, rng: np.random.Generator, looks: float | None = None,
                ranges: _SarRanges | None = None) -> _SarLayers:
    """``pseudo_sar`` keeping every stage (for tests, the benchmark, and a caller that wants
    the exact layover displacement); ``ranges`` replaces the default random ranges."""
    r = _SAR_RANGES if ranges is None else ranges
    img = np.asarray(img, np.float32)
    if img.ndim != 2:
        raise ValueError(f"pseudo_sar takes one H x W band, got shape {img.shape}")
    if looks is None:
        looks = rng.uniform(*r.looks)
    looks = float(looks)
    if not (np.isfinite(looks) and looks >= 1.0):
        raise ValueError(f"looks must be a number >= 1, got {looks}")
    shape = img.shape
    rows, cols = np.indices(shape, dtype=np.float32)

    # 1. backscatter (dB): a cover and a level per optical class, VV-like, then the offset
    classes, class_cover = _optical_classes(img, rng, r)
    cover_db = np.array([rng.uniform(*c.db) for c in _COVERS], np.float32)  # one level per cover...
    class_db = (cover_db[class_cover]  # ...varied by class
                + rng.normal(0.0, rng.uniform(*r.class_db), class_cover.size).astype(np.float32))
    cover = class_cover[classes]
    pol_offset = rng.uniform(*r.pol_offset_db)
    backscatter_db = class_db[classes] + pol_offset + rng.uniform(*r.variation_db) * _unit_field(rng, shape)

    # 2. terrain: the image as a height surface (px) seen along ``look`` (ground range
    # increasing) at ``incidence`` from the vertical
    heading = rng.uniform(0.0, 2.0 * math.pi)
    look = (math.cos(heading), math.sin(heading))
    incidence = math.radians(rng.uniform(*r.incidence_deg))  # Python floats keep the arrays float32
    height = cv2.GaussianBlur(img, (0, 0), rng.uniform(*r.relief_blur_px))
    height = (height - height.mean()) / max(float(height.std()), 1e-6)
    height = (height * rng.uniform(*r.relief_px) * rng.choice([-1.0, 1.0])).astype(np.float32)
    gy, gx = np.gradient(height)
    # cosine of the local incidence: unit normal (-gx, -gy, 1) / n dot the unit vector to the sensor
    rising = gx * look[0] + gy * look[1]  # height gained per px away from the sensor: a slope facing it
    cos_local = (rising * math.sin(incidence) + math.cos(incidence)) / np.sqrt(1.0 + gx * gx + gy * gy)
    sin_local = np.sqrt(np.clip(1.0 - cos_local ** 2, math.sin(math.radians(5.0)) ** 2, 1.0))
    terrain = ((np.clip(cos_local, 0.0, None) / math.cos(incidence)) ** rng.uniform(*r.cos_power)
               * (math.sin(incidence) / sin_local) ** rng.uniform(*r.area_weight))
    shadow = (cos_local <= 0.0) | _cast_shadow(height, look, incidence, rows, cols)
    clutter = 10.0 ** (backscatter_db / 10.0) * np.minimum(terrain, 10.0) * ~shadow

    # layover: a point of height h shows h / tan(incidence) px nearer the sensor; scaled to
    # at most layover_max_px and made zero-mean, then SAR pixel q shows ground q + delta(q) look
    delta = rng.uniform(*r.layover_gain) * height / math.tan(incidence)
    peak = float(np.abs(delta).max())
    if peak > r.layover_max_px:
        delta *= r.layover_max_px / peak
    delta = (delta - delta.mean()).astype(np.float32)
    displacement = np.stack([delta * look[0], delta * look[1]], axis=-1).astype(np.float32)
    map_x, map_y = cols + displacement[..., 0], rows + displacement[..., 1]
    clutter = cv2.remap(clutter.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    shadow = _remap_mask(shadow, map_x, map_y)
    built_up = _remap_mask(cover == _BUILT_UP, map_x, map_y) & ~shadow

    # 3. sparse point and line scatterers through the point-spread function, whose main
    # lobe also blurs the distributed backscatter (Gaussian of the same half-power width)
    resolution = rng.uniform(*r.psf_resolution_px)
    psf = _point_spread(look, resolution, 10.0 ** (rng.uniform(*r.sidelobe_db) / 10.0))
    clutter = cv2.GaussianBlur(clutter, (0, 0), resolution / 2.355)
    impulses = _scatterer_impulses(built_up, look, pol_offset, rng, r)
    scatterers = (np.maximum(cv2.filter2D(impulses, -1, psf, borderType=cv2.BORDER_CONSTANT), 0.0)
                  if impulses.any() else impulses)

    # 4. speckle on intensity: the distributed backscatter and the noise floor, not the
    # deterministic point targets
    speckle = _speckle(rng, shape, looks, rng.uniform(*r.speckle_corr_px))
    noise = 10.0 ** (rng.uniform(*r.noise_floor_db) / 10.0)
    intensity = ((clutter + noise) * speckle + scatterers).astype(np.float32)

    # 5. dB and the pipeline's stretch
    db = (10.0 * np.log10(np.maximum(intensity, 1e-12))).astype(np.float32)
    return _SarLayers(_stretch(db), db, intensity, backscatter_db.astype(np.float32), cover, shadow,
                      displacement, scatterers.astype(np.float32), speckle, looks)


def _optical_classes(img: np.ndarray, rng: np.random.Generator, r: _SarRanges) -> tuple[np.ndarray, np.ndarray]:
    """Classes of the optical image (random intensity quantiles x smooth/textured) and a
    land cover (index into _COVERS) drawn for each: (H x W class index, cover per class)."""
    smooth = cv2.GaussianBlur(img, (0, 0), 1.5)
    mean = cv2.GaussianBlur(img, (0, 0), 2.0)
    texture = np.sqrt(np.clip(cv2.GaussianBlur(img * img, (0, 0), 2.0) - mean * mean, 0.0, None))
    n_levels = int(rng.integers(r.intensity_classes[0], r.intensity_classes[1] + 1))
    cuts = np.sort(rng.uniform(0.1, 0.9, n_levels - 1))
    level = np.digitize(smooth, np.quantile(smooth, cuts))
    textured = texture > np.quantile(texture, rng.uniform(*r.textured_quantile))
    classes = cv2.medianBlur((2 * level + textured).astype(np.uint8), 3)  # no one-pixel classes
    odds = {False: np.array([c.p_smooth for c in _COVERS]), True: np.array([c.p_textured for c in _COVERS])}
    class_cover = np.array([rng.choice(len(_COVERS), p=odds[k % 2 == 1] / odds[k % 2 == 1].sum())
                            for k in range(2 * n_levels)])
    return classes, class_cover


def _cast_shadow(height: np.ndarray, look: tuple[float, float], incidence: float,
                 rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels hidden from the sensor by terrain nearer to it: the ray to the sensor rises
    1 / tan(incidence) px per px; ground t px nearer that stands higher than the ray hides."""
    rise = 1.0 / math.tan(incidence)
    steps = min(int(np.ceil(float(height.max() - height.min()) / rise)), _MAX_SHADOW_STEPS)
    hidden = np.zeros(height.shape, bool)
    for t in range(1, steps + 1):
        nearer = cv2.remap(height, cols - t * look[0], rows - t * look[1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        hidden |= nearer > height + t * rise + 1e-3
    return hidden


def _remap_mask(mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    return cv2.remap(mask.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT) > 0


def _point_spread(look: tuple[float, float], resolution: float, sidelobe_gain: float) -> np.ndarray:
    """Intensity impulse response, peak 1: sinc^2 along range (``look``) times sinc^2 along
    azimuth, ``resolution`` px wide, sidelobes (beyond the main lobe) scaled by
    ``sidelobe_gain``; its -13 dB sidelobes on the two axes are the bright cross."""
    k = np.arange(-_PSF_HALF_WIDTH, _PSF_HALF_WIDTH + 1, dtype=np.float64)
    y, x = np.meshgrid(k, k, indexing="ij")
    along = (x * look[0] + y * look[1]) / resolution
    across = (-x * look[1] + y * look[0]) / resolution

    def lobe(u: np.ndarray) -> np.ndarray:
        return np.sinc(u) ** 2 * np.where(np.abs(u) < 1.0, 1.0, sidelobe_gain)

    return (lobe(along) * lobe(across)).astype(np.float32)


def _scatterer_impulses(built_up: np.ndarray, look: tuple[float, float], pol_offset: float,
                        rng: np.random.Generator, r: _SarRanges) -> np.ndarray:
    """Sparse impulses (linear intensity) for the point-spread function: points mostly in the
    built-up cover, a few anywhere, and short lines across the look direction (walls facing
    the sensor) in the built-up cover."""
    out = np.zeros(built_up.shape, np.float32)
    candidates = np.flatnonzero(built_up)
    n_built = int(rng.poisson(rng.uniform(*r.points_per_built_up_px) * candidates.size))
    n_any = int(rng.poisson(rng.uniform(*r.points_per_px) * out.size))
    where = np.concatenate([rng.choice(candidates, min(n_built, candidates.size), replace=False)
                            if candidates.size else np.zeros(0, np.int64),
                            rng.choice(out.size, min(n_any, out.size), replace=False)])
    out.ravel()[where] = 10.0 ** ((rng.uniform(*r.point_db, where.size) + pol_offset) / 10.0)  # ravel: a view
    n_lines = int(rng.poisson(rng.uniform(*r.lines_per_built_up_px) * candidates.size))
    for start in rng.choice(candidates, n_lines) if candidates.size else ():
        row, col = divmod(int(start), built_up.shape[1])
        length = rng.uniform(3.0, 10.0)
        end = (round(col - look[1] * length), round(row + look[0] * length))  # along azimuth
        value = float(10.0 ** ((rng.uniform(*r.line_db) + pol_offset) / 10.0))
        cv2.line(out, (col, row), end, value, 1)
    return out


def _speckle(rng: np.random.Generator, shape: tuple[int, ...], looks: float, corr_px: float) -> np.ndarray:
    """Multiplicative speckle: exactly gamma-distributed (shape ``looks``, mean 1, so
    mean^2 / variance = looks) with a Gaussian spatial correlation of ``corr_px`` px. The
    correlation comes from a blurred Gaussian field whose ranks order the gamma draws (a
    Gaussian copula): real GRD pixels are half the resolution cell, so neighbours share
    speckle."""
    field = rng.standard_normal(shape).astype(np.float32)
    if corr_px > 0:
        field = cv2.GaussianBlur(field, (0, 0), corr_px)
    values = np.sort(rng.standard_gamma(looks, field.size, dtype=np.float32)) / np.float32(looks)
    out = np.empty(field.size, np.float32)
    out[np.argsort(field, axis=None)] = values
    return out.reshape(shape)


def _unit_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth zero-mean, unit-variance random field varying over a sixth to a half of the
    image: Gaussian noise on a random coarse lattice, cubic-upsampled."""
    cells = int(rng.integers(3, 7))
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / max(float(field.std()), 1e-6)
