"""Classical cross-modal matcher: oriented-gradient templates, multi-channel ZNCC.

For each template (a square of the moving tile's descriptor on a regular grid) the
zero-mean normalised cross-correlation over all descriptor channels is computed at every
offset within the search radius; the peak is refined to sub-pixel by parabola fits, and
its height and margin over the best competing peak give the match confidence. Offsets
larger than the radius are first removed by phase correlation of the whole tile.

Only the correlation itself is done template by template (cv2.matchTemplate, one call
each); the window energies come from box filters over the whole tile, and the peaks are
found for all templates at once. Tiles of a batch are matched in a thread pool: OpenCV and
numpy release the GIL in their heavy calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from dmreg.matchers.base import TileMatches, TilePair
from dmreg.matchers.structure import parabola_offset, gradient_energy, oriented_gradients, phase_correlate
from dmreg.runtime import thread_count


@dataclass
class StructuralMatcher:
    """Template matching on :func:`oriented_gradients` descriptors."""

    template_radius: int = 20       # templates are (2r+1)^2 pixels
    step: int = 24                  # grid spacing of templates
    local_radius: int = 8           # search radius used after a global shift
    min_score: float = 0.3          # minimum ZNCC at the peak
    min_margin: float = 0.02        # minimum lead of the peak over the runner-up
    min_texture: float = 0.02       # minimum mean gradient of a template (images in [0, 1])
    name: str = "structural"
    rotation_step_deg: float = 15.0  # finds rotations up to about 10 deg (measured): half a step with room
    refine_tolerance_px: float = 0.2
    """Tiles read 0.2 px away from the true offset bias the parabola peaks by 0.012-0.017 px
    (medians over tiles and directions, ``benchmarks/peak_bias.py``: Landsat 8 B4/B2 and
    B4/B3, Landsat 7 red/SWIR2), a third of the default target: no refinement pass is
    needed. Red against NIR, whose contrast inverts over vegetation, was biased by
    0.055 px on the small Landsat 7 example (42 matches per tile, 0.016 px of noise): on
    such pairs a promoted pass may keep about the target's error."""
    reread_within_px: float = 1.0
    """Read 0.5-1 px off, the peaks stay as little biased as at 0.2 px (medians 0.006-0.015 px
    on the Landsat pairs above, 0.046-0.064 px on red/NIR): a first pass whose four-tile
    model moved this little is read on through that model, which is then within a tenth
    of the tolerance of the truth, and its first tiles are read again."""

    def describe(self) -> dict:
        return {"name": self.name, "weights_sha256": None, "device": "cpu"}

    def match(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        """Pairs in parallel, one thread each; a lone pair (the coarse level, a batch's
        last tile) is itself split over the threads."""
        threads = thread_count()
        if len(pairs) == 1 or threads <= 1:
            return [self._match_pair(p, threads) for p in pairs]
        with ThreadPoolExecutor(max_workers=min(threads, len(pairs)), thread_name_prefix="structural") as pool:
            return list(pool.map(self._match_pair, pairs))

    def _match_pair(self, pair: TilePair, threads: int = 1) -> TileMatches:
        if threads <= 1:
            return self._match_descriptors(pair, oriented_gradients(pair.ref, pair.ref_valid),
                                           oriented_gradients(pair.mov, pair.mov_valid), None)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="structural-pair") as pool:
            ref_job = pool.submit(oriented_gradients, pair.ref, pair.ref_valid)  # planes (n, H, W)
            mov_d = oriented_gradients(pair.mov, pair.mov_valid)
            ref_d = ref_job.result()
            return self._match_descriptors(pair, ref_d, mov_d, _Split(pool, threads))

    def _match_descriptors(self, pair: TilePair, ref_d: np.ndarray, mov_d: np.ndarray,
                           split: _Split | None) -> TileMatches:
        shift = np.zeros(2)
        radius = int(np.ceil(pair.max_offset)) + 2
        if radius > self.local_radius + 2:
            dx, dy, _ = phase_correlate(ref_d, mov_d, split.pool if split else None)
            if np.hypot(dx, dy) <= pair.max_offset * 1.5:
                shift = np.round([dx, dy])
                radius = self.local_radius
        radius = max(radius, 4)
        return self._match_templates(pair, ref_d, mov_d, shift.astype(int), radius, split)

    def _match_templates(self, pair: TilePair, ref_d: np.ndarray, mov_d: np.ndarray,
                         shift: np.ndarray, radius: int, split: _Split | None) -> TileMatches:
        rows, cols = pair.mov.shape
        # small tiles get smaller templates on a denser grid, so they still yield matches
        h = min(self.template_radius, max(6, min(rows, cols) // 6))
        step = min(self.step, max(6, min(rows, cols) // 8))
        xs, ys = self._template_centres(pair, ref_d.shape[1:], h, step, shift, radius)
        # top-left corner of each template's search area in ref
        x0, y0 = xs + shift[0] - h - radius, ys + shift[1] - h - radius
        surfaces, t_energy = _correlations(_interleaved(ref_d), _interleaved(mov_d), xs, ys, x0, y0, h, radius,
                                           split)
        textured = t_energy >= 1e-6  # the others have no surface
        if not textured.any():
            return TileMatches()
        xs, ys, x0, y0, surfaces, t_energy = (a[textured] for a in (xs, ys, x0, y0, surfaces, t_energy))
        w_energy = _search_energies(ref_d, x0, y0, h, radius)
        zncc = surfaces / np.sqrt(t_energy.astype(np.float32)[:, None, None] * w_energy)
        px, py, score, margin = _peaks(zncc)
        good = (score >= self.min_score) & (margin >= self.min_margin)  # False where no peak (NaN)
        if not good.any():
            return TileMatches()
        mov_xy = np.stack([xs[good] + 0.5, ys[good] + 0.5], axis=1)
        ref_xy = np.stack([x0[good] + px[good] + h + 0.5, y0[good] + py[good] + h + 0.5], axis=1)
        conf = np.minimum(1.0, score[good] * margin[good] / 0.2)
        return TileMatches(ref_xy, mov_xy, conf)

    def _template_centres(self, pair: TilePair, ref_shape: tuple[int, ...], h: int, step: int,
                          shift: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres (x, y) in mov of the grid templates worth matching: search area inside
        ref, template and search area valid, template textured. Row by row."""
        rows, cols = pair.mov.shape
        size = 2 * h + 1
        ys, xs = (g.ravel() for g in np.meshgrid(np.arange(h, rows - h, step), np.arange(h, cols - h, step),
                                                   indexing="ij"))
        cx, cy = xs + shift[0], ys + shift[1]  # expected centre in ref
        reach = h + radius
        inside = (cx >= reach) & (cy >= reach) & (cx + reach < ref_shape[1]) & (cy + reach < ref_shape[0])
        xs, ys, cx, cy = xs[inside], ys[inside], cx[inside], cy[inside]
        texture = cv2.boxFilter(gradient_energy(pair.mov), -1, (size, size), normalize=True)
        mov_ok = cv2.boxFilter(pair.mov_valid.astype(np.float32), -1, (size, size), normalize=True)
        ref_ok = cv2.boxFilter(pair.ref_valid.astype(np.float32), -1, (size + 2 * radius,) * 2, normalize=True)
        usable = (mov_ok[ys, xs] >= 0.95) & (ref_ok[cy, cx] >= 0.9) & (texture[ys, xs] >= self.min_texture)
        return xs[usable], ys[usable]


def _correlations(ref_d: np.ndarray, mov_d: np.ndarray, xs: np.ndarray, ys: np.ndarray, x0: np.ndarray,
                  y0: np.ndarray, h: int, radius: int, split: _Split | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cross-correlation surfaces (N, 2r+1, 2r+1) of each zero-mean template, centred on
    (xs, ys) in mov, over its search area from (x0, y0) in ref; and each template's energy.
    A template without energy (below 1e-6) is not correlated: its surface is left undefined.

    Both descriptors are (H, W, n) viewed as single planes (H, W * n): the correlation at
    every n-th column of those planes is the sum over channels, and cv2.matchTemplate is
    faster on one plane than on n channels. numpy also subtracts a template's channel
    means far faster from such a 2-D block than from a 3-D view. With a ``split`` the
    templates are shared out among its threads (OpenCV releases the GIL).
    """
    channels = mov_d.shape[2]
    size, span = 2 * h + 1, 2 * (h + radius) + 1
    ref_rows, mov_rows = ref_d.reshape(ref_d.shape[0], -1), mov_d.reshape(mov_d.shape[0], -1)
    surfaces = np.empty((len(xs), 2 * radius + 1, 2 * radius + 1), np.float32)
    energy = np.empty(len(xs))

    def correlate(ks: np.ndarray) -> None:
        for k in ks.tolist():
            x, y, xa, ya = int(xs[k]), int(ys[k]), int(x0[k]), int(y0[k])
            block = mov_rows[y - h:y + h + 1, (x - h) * channels:(x + h + 1) * channels]
            column_means = cv2.reduce(block, 0, cv2.REDUCE_AVG, dtype=cv2.CV_64F).reshape(size, channels)
            means = cv2.reduce(column_means, 0, cv2.REDUCE_AVG).astype(np.float32)  # (1, channels)
            tpl = block - cv2.repeat(means, 1, size)
            energy[k] = cv2.norm(tpl, cv2.NORM_L2SQR)
            if energy[k] >= 1e-6:
                area = ref_rows[ya:ya + span, xa * channels:(xa + span) * channels]
                surfaces[k] = cv2.matchTemplate(area, tpl, cv2.TM_CCORR)[:, ::channels]

    everything = np.arange(len(xs))
    if split is None:
        correlate(everything)
    else:
        list(split.pool.map(correlate, np.array_split(everything, split.threads)))
    return surfaces, energy


@dataclass(frozen=True)
class _Split:
    """A pool to share one pair's templates out among ``threads`` threads."""

    pool: ThreadPoolExecutor
    threads: int


def _interleaved(planes: np.ndarray) -> np.ndarray:
    """(H, W, n) from (n, H, W), for :func:`_correlations`."""
    return cv2.merge(list(planes)).reshape(*planes.shape[1:], len(planes))


def _search_energies(ref_d: np.ndarray, x0: np.ndarray, y0: np.ndarray, h: int, radius: int) -> np.ndarray:
    """Zero-mean energy (N, 2r+1, 2r+1) of the ref window under each template at each offset
    of its search area from (x0, y0); at least 1e-9, so ZNCC never divides by zero."""
    n_off = 2 * radius + 1
    energy = _window_energy(ref_d, 2 * h + 1)  # by window centre
    return np.maximum(np.lib.stride_tricks.sliding_window_view(energy, (n_off, n_off))[y0 + h, x0 + h], 1e-9)


def _window_energy(planes: np.ndarray, size: int) -> np.ndarray:
    """Zero-mean energy, summed over the planes (n, H, W), of the (size x size) window
    centred on each pixel. It is a small difference of large sums, so these are float64."""
    box = (size, size)
    shape = planes.shape[1:]
    squares, sums_squared, sums = np.zeros(shape), np.zeros(shape), np.empty(shape)
    for plane in planes:
        cv2.accumulateSquare(plane, squares)
        cv2.boxFilter(plane, cv2.CV_64F, box, dst=sums, normalize=False)
        cv2.accumulateSquare(sums, sums_squared)
    energy = cv2.boxFilter(squares, -1, box, normalize=False)
    energy -= sums_squared / (size * size)
    return energy.astype(np.float32)


def _peaks(surfaces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel peak (x, y) of each surface (N, h, w), its score and its margin over the
    best peak 3+ pixels away.

    NaN where the peak lies on the edge of the search area: the true offset may be
    outside it, so the position cannot be trusted.
    """
    n, h, w = surfaces.shape
    flat = surfaces.reshape(n, -1)
    best = np.argmax(flat, axis=1)
    iy, ix = np.divmod(best, w)
    score = flat[np.arange(n), best].astype(np.float64)
    near_row = np.abs(np.arange(h)[None, :, None] - iy[:, None, None]) <= 2
    near_col = np.abs(np.arange(w)[None, None, :] - ix[:, None, None]) <= 2
    near = near_row & near_col
    runner_up = np.where(near, -np.inf, surfaces).max(axis=(1, 2)).astype(np.float64)
    runner_up[~np.isfinite(runner_up)] = -1.0
    inside = (ix > 0) & (iy > 0) & (ix < w - 1) & (iy < h - 1)
    k, x, y = np.arange(n)[inside], ix[inside], iy[inside]
    centre = surfaces[k, y, x]
    px, py = np.full(n, np.nan), np.full(n, np.nan)
    px[inside] = x + parabola_offset(surfaces[k, y, x - 1], centre, surfaces[k, y, x + 1])
    py[inside] = y + parabola_offset(surfaces[k, y - 1, x], centre, surfaces[k, y + 1, x])
    score[~inside] = np.nan
    return px, py, score, score - runner_up
