"""Classical cross-modal matcher: oriented-gradient templates, multi-channel ZNCC.

For each template (a square of the moving tile's descriptor on a regular grid) the
zero-mean normalised cross-correlation over all descriptor channels is computed at every
offset within the search radius; the peak is refined to sub-pixel by parabola fits, and
its height and margin over the best competing peak give the match confidence. Offsets
larger than the radius are first removed by phase correlation of the whole tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dmreg.matchers.base import TileMatches, TilePair
from dmreg.matchers.structure import parabola_offset, gradient_energy, oriented_gradients, phase_correlate


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

    def describe(self) -> dict:
        return {"name": self.name, "weights_sha256": None, "device": "cpu"}

    def match(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        return [self._match_pair(p) for p in pairs]

    def _match_pair(self, pair: TilePair) -> TileMatches:
        ref_d = oriented_gradients(pair.ref, pair.ref_valid)
        mov_d = oriented_gradients(pair.mov, pair.mov_valid)
        shift = np.zeros(2)
        radius = int(np.ceil(pair.max_offset)) + 2
        if radius > self.local_radius + 2:
            dx, dy, _ = phase_correlate(ref_d, mov_d)
            if np.hypot(dx, dy) <= pair.max_offset * 1.5:
                shift = np.round([dx, dy])
                radius = self.local_radius
        radius = max(radius, 4)
        return self._match_templates(pair, ref_d, mov_d, shift.astype(int), radius)

    def _match_templates(self, pair: TilePair, ref_d: np.ndarray, mov_d: np.ndarray,
                         shift: np.ndarray, radius: int) -> TileMatches:
        rows, cols = pair.mov.shape
        # small tiles get smaller templates on a denser grid, so they still yield matches
        h = min(self.template_radius, max(6, min(rows, cols) // 6))
        step = min(self.step, max(6, min(rows, cols) // 8))
        size = 2 * h + 1
        n = float(size * size)
        texture = cv2.boxFilter(gradient_energy(pair.mov), -1, (size, size), normalize=True)
        mov_ok = cv2.boxFilter(pair.mov_valid.astype(np.float32), -1, (size, size), normalize=True)
        ref_ok = cv2.boxFilter(pair.ref_valid.astype(np.float32), -1, (size + 2 * radius,) * 2, normalize=True)
        sum1, sum2 = _integrals(ref_d)

        ref_pts, mov_pts, conf = [], [], []
        for y in range(h, rows - h, step):
            for x in range(h, cols - h, step):
                cx, cy = x + shift[0], y + shift[1]  # expected centre in ref
                x0, y0 = cx - h - radius, cy - h - radius
                x1, y1 = cx + h + radius + 1, cy + h + radius + 1
                if x0 < 0 or y0 < 0 or x1 > ref_d.shape[1] or y1 > ref_d.shape[0]:
                    continue
                if mov_ok[y, x] < 0.95 or ref_ok[cy, cx] < 0.9 or texture[y, x] < self.min_texture:
                    continue
                tpl = mov_d[y - h:y + h + 1, x - h:x + h + 1]
                tpl = tpl - tpl.mean(axis=(0, 1))
                t_energy = float((tpl * tpl).sum())
                if t_energy < 1e-6:
                    continue
                num = cv2.matchTemplate(ref_d[y0:y1, x0:x1], tpl, cv2.TM_CCORR)
                w_energy = _window_energy(sum1, sum2, x0, y0, 2 * radius + 1, size, n)
                zncc = num / np.sqrt(t_energy * np.maximum(w_energy, 1e-9))
                found = _peak(zncc)
                if found is None:
                    continue
                px, py, score, margin = found
                if score < self.min_score or margin < self.min_margin:
                    continue
                mov_pts.append((x + 0.5, y + 0.5))
                ref_pts.append((x0 + px + h + 0.5, y0 + py + h + 0.5))
                conf.append(min(1.0, score * margin / 0.2))
        if not conf:
            return TileMatches()
        return TileMatches(np.array(ref_pts), np.array(mov_pts), np.array(conf))


def _integrals(desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Summed-area tables of each channel and of the squared norm (float64, padded)."""
    s1 = np.zeros((desc.shape[0] + 1, desc.shape[1] + 1, desc.shape[2]))
    s1[1:, 1:] = desc.cumsum(0, dtype=np.float64).cumsum(1)
    s2 = np.zeros((desc.shape[0] + 1, desc.shape[1] + 1))
    s2[1:, 1:] = (desc * desc).sum(-1).cumsum(0, dtype=np.float64).cumsum(1)
    return s1, s2


def _window_energy(s1: np.ndarray, s2: np.ndarray, x0: int, y0: int, n_off: int, size: int,
                   n: float) -> np.ndarray:
    """Zero-mean energy of every (size x size) window at n_off x n_off offsets from (x0, y0)."""
    ys = slice(y0, y0 + n_off)
    xs = slice(x0, x0 + n_off)
    ye = slice(y0 + size, y0 + size + n_off)
    xe = slice(x0 + size, x0 + size + n_off)
    sq = s2[ye, xe] - s2[ys, xe] - s2[ye, xs] + s2[ys, xs]
    lin = s1[ye, xe] - s1[ys, xe] - s1[ye, xs] + s1[ys, xs]
    return (sq - (lin * lin).sum(-1) / n).astype(np.float32)


def _peak(surface: np.ndarray) -> tuple[float, float, float, float] | None:
    """Sub-pixel peak (x, y), its score and margin over the best peak 3+ pixels away.

    None when the peak lies on the edge of the search area: the true offset may be
    outside it, so the position cannot be trusted.
    """
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    h, w = surface.shape
    if ix == 0 or iy == 0 or ix == w - 1 or iy == h - 1:
        return None
    score = float(surface[iy, ix])
    others = surface.copy()
    others[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3] = -np.inf
    runner_up = float(others.max()) if np.isfinite(others).any() else -1.0
    dx = parabola_offset(surface[iy, ix - 1], score, surface[iy, ix + 1])
    dy = parabola_offset(surface[iy - 1, ix], score, surface[iy + 1, ix])
    return ix + dx, iy + dy, score, score - runner_up
