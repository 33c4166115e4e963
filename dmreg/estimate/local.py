"""A smooth local displacement field on top of a global model.

Terrain, push-broom jitter and SAR foreshortening leave misregistration that varies
over tens to hundreds of pixels; no global model removes it. The field here is the
Gaussian-process (kriging) posterior of the global model's residuals, with a
zero-mean squared-exponential prior: away from the matches it decays to zero, so the
model extrapolates as the global one. Hyperparameters maximise the marginal
likelihood, and when that evidence does not clearly beat "no local signal" the field
is exactly zero, so the local model then IS the global one.

For speed the matches are averaged into at most ``MAX_CENTRES`` cells (the solve is
cubic in their number) and the posterior is stored on a grid of at most
``MAX_NODES`` per side, which ``apply`` samples bilinearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dmreg.estimate.models import Transform, fit

Extent = tuple[float, float, float, float]
"""(xmin, ymin, xmax, ymax) in source pixels."""

MAX_CENTRES = 600        # kernel centres of the final posterior: its eigendecomposition takes ~50 ms
SEARCH_CENTRES = 300     # fewer for the fits that only screen matches or rank hyperparameters
ROBUST_PER_CELL = 8      # matches per cell at least, so cell medians resist outliers
MAX_NODES = 64           # grid nodes per side, so reports stay small
MIN_MATCHES = 20         # fewer cannot tell a local field from noise
MARGIN_L = 3.0           # the grid reaches this many length scales beyond the extent
EVIDENCE_MARGIN = 2.0    # nats a local field must gain over "no local signal"
REJECT_SIGMAS = 3.5
N_LENGTHS = 6            # first search; the final one refines by factors of √2 around its choice
NN_SAMPLE = 500          # matches sampled to measure spacing and noise
NN_CHUNK = 200_000       # squared distances computed at a time (1.6 MB)
TILE_PRIOR = 10          # a tile's noise scale is shrunk toward the global one as if by this many matches
MIN_SIGMA = 0.05         # px; no matcher is more precise: a floor for noise and rejection scales
INVERSE_ITERATIONS = 10
INVERSE_TOL = 1e-3       # px; a point whose last step moved it more has not converged
CONVERGED_PX = 1e-4      # px; steps this small stop the iteration early (the error is then ~1e-5 px)


@dataclass(frozen=True, eq=False)
class LocalTransform:
    """``base`` plus a displacement field on a grid over source coordinates.

    ``dx``, ``dy`` (rows = y) are the field at nodes ``origin + step * (col, row)``; the
    field is zero outside the grid, whose border nodes are zero. ``sd`` is the radial
    posterior standard deviation of the field, sqrt(var_x + var_y). The fit's matches
    used, length scale and signal and noise scales (px, per component) are kept for reports.
    """

    base: Transform
    origin: tuple[float, float]
    step: float
    dx: np.ndarray
    dy: np.ndarray
    sd: np.ndarray
    n_used: int = 0
    length_scale: float = 0.0
    sigma_f: float = 0.0
    sigma_n: float = 0.0

    @property
    def kind(self) -> str:
        return "local"

    @property
    def matrix(self) -> None:
        return None

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bx, by = self.base.apply(x, y)
        fx, fy = self.field_at(x, y)
        return bx + fx, by + fy

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fixed-point iteration q <- base⁻¹(p - d(q)); it contracts because the field's
        gradient is small. Points still moving after ``INVERSE_ITERATIONS`` become NaN."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        qx, qy = self.base.inverse(x, y)
        if not (self.dx.any() or self.dy.any()):
            return qx, qy
        for _ in range(INVERSE_ITERATIONS):
            fx, fy = self.field_at(qx, qy)
            nx, ny = self.base.inverse(x - fx, y - fy)
            change = np.hypot(nx - qx, ny - qy)
            qx, qy = nx, ny
            if not (change > CONVERGED_PX).any():
                break
        failed = ~(change <= INVERSE_TOL)
        return np.where(failed, np.nan, qx), np.where(failed, np.nan, qy)

    def field_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The local part alone, zero outside the grid."""
        fx, fy = _bilinear(np.stack([self.dx, self.dy]), self.origin, self.step, x, y, clamp=False)
        return fx, fy

    def std_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Radial posterior std of the local part (px). Beyond the grid it keeps the
        border value, the prior's: the field is unknown there, not known to be zero."""
        return _bilinear(self.sd[None], self.origin, self.step, x, y, clamp=True)[0]

    def as_dict(self) -> dict:
        return {"kind": self.kind, "base": self.base.as_dict(),
                "grid": {"origin": [float(v) for v in self.origin], "step": float(self.step),
                         "dx": self.dx.round(4).tolist(), "dy": self.dy.round(4).tolist()}}


def fit_local(base: Transform, src: np.ndarray, dst: np.ndarray, tiles: np.ndarray | None = None, *,
              extent: Extent | None = None, seed: int = 0, spread: bool = True) -> LocalTransform:
    """Fit the residuals of ``base`` (dst - base(src)) with a Gaussian process.

    ``tiles`` (a tile id per match) lets each tile have its own noise scale: matches of a
    tile the matcher found hard weigh less and are rejected at a wider threshold.
    ``extent`` (xmin, ymin, xmax, ymax, source pixels) is the area the grid must cover,
    by default the matches' bounding box; ``seed`` fixes the sample used to measure the
    match spacing. ``spread=False`` leaves the posterior spread ``sd`` NaN: a fit that is
    only applied (a cross-validation fold) need not pay for it, a fifth of the fit.
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    r = dst - np.column_stack(base.apply(src[:, 0], src[:, 1]))
    if extent is None:
        extent = (*src.min(axis=0), *src.max(axis=0)) if len(src) else (0.0, 0.0, 1.0, 1.0)
    extent = tuple(float(v) for v in extent)
    l_min = _min_length(extent)
    if len(src) < MIN_MATCHES:
        return _local_transform(base, extent, None, _Hyper(l_min, 0.0, MIN_SIGMA), len(src))
    spacing, noise = _spacing_and_noise(src, r, np.random.default_rng(seed))
    lengths = _lengths(max(l_min, 3 * spacing), extent)
    first, keep, weights, sigma = _screen_outliers(src, r, tiles, lengths, noise)
    s, rk, wk = src[keep], r[keep], weights[keep]
    # the screening fits ranked all length scales; on the clean matches, refine around their choice
    near = np.unique(np.clip(first.length * np.sqrt(2.0) ** np.arange(-1, 2), lengths[0], lengths[-1]))
    hyper = _search(_thin(s, rk, wk, SEARCH_CENTRES), near, _signal_grid(rk), _noise_grid(sigma))
    post = _posterior(_thin(s, rk, wk, MAX_CENTRES), hyper)
    return _local_transform(base, extent, post, hyper, int(keep.sum()), spread)


def refitted_prediction(model: LocalTransform, src: np.ndarray, dst: np.ndarray,
                        at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``model``, refitted to other matches (its base kind by least squares, the
    field with the same hyperparameters, no new search), puts the points ``at``: one
    bootstrap replicate, at a fraction of a fit's cost."""
    base = fit(model.base.kind, src, dst)
    bx, by = base.apply(at[:, 0], at[:, 1])
    if model.sigma_f == 0:
        return bx, by
    r = dst - np.column_stack(base.apply(src[:, 0], src[:, 1]))
    hyper = _Hyper(model.length_scale, model.sigma_f, model.sigma_n)
    field = _posterior(_thin(src, r, np.ones(len(src)), SEARCH_CENTRES), hyper).mean(at)
    return bx + field[:, 0], by + field[:, 1]


def _screen_outliers(src: np.ndarray, r: np.ndarray, tiles: np.ndarray | None, lengths: np.ndarray,
                     noise: float) -> tuple[_Hyper, np.ndarray, np.ndarray, float]:
    """Two rounds of rejection: against a fit to cell medians (which outliers barely
    move), then against a fit to the means of what the first round kept. Returns the
    first fit's hyperparameters, the matches kept, their weights and the noise scale."""
    coarse = _thin(src, r, np.ones(len(src)), min(SEARCH_CENTRES, max(len(src) // ROBUST_PER_CELL, 1)),
                   robust=True)
    hyper = _search(coarse, lengths, _signal_grid(r), _noise_grid(noise))
    keep, weights, _ = _screen(r - _posterior(coarse, hyper).mean(src), tiles)
    post = _posterior(_thin(src[keep], r[keep], weights[keep], SEARCH_CENTRES), hyper)
    return (hyper, *_screen(r - post.mean(src), tiles))


@dataclass(frozen=True)
class _Centres:
    """Cell averages: position, residual, and precision weight (relative to sigma_n⁻²)."""

    xy: np.ndarray
    r: np.ndarray
    w: np.ndarray


@dataclass(frozen=True)
class _Hyper:
    length: float
    sigma_f: float
    sigma_n: float


@dataclass(frozen=True)
class _Posterior:
    """The GP posterior given the centres; ``b`` factors K⁻¹ = b bᵀ."""

    centres: _Centres
    hyper: _Hyper
    alpha: np.ndarray
    b: np.ndarray

    def mean(self, pts: np.ndarray) -> np.ndarray:
        if self.hyper.sigma_f == 0:
            return np.zeros((len(pts), 2))
        return self._cross(pts) @ self.alpha

    def variance(self, pts: np.ndarray) -> np.ndarray:
        """Per component; the same for x and y as they share the hyperparameters."""
        if self.hyper.sigma_f == 0:
            return np.zeros(len(pts))
        v = self._cross(pts) @ self.b
        return np.maximum(self.hyper.sigma_f ** 2 - (v * v).sum(axis=1), 0.0)

    def _cross(self, pts: np.ndarray) -> np.ndarray:
        return self.hyper.sigma_f ** 2 * _kernel(pts, self.centres.xy, self.hyper.length)


def _kernel(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """Squared-exponential kernel matrix, built in place: the cross kernels of thousands
    of points with hundreds of centres are the local fit's largest arrays."""
    k = a @ b.T
    k *= -2.0
    k += (a * a).sum(1)[:, None]
    k += (b * b).sum(1)[None, :]
    np.maximum(k, 0.0, out=k)
    k *= -1.0 / (2 * length * length)
    return np.exp(k, out=k)


def _eigen(c: _Centres, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of W^½ K W^½: with it, every (sigma_f, sigma_n) pair of one
    length scale costs O(m) instead of a new factorisation."""
    sw = np.sqrt(c.w)
    return np.linalg.eigh(sw[:, None] * _kernel(c.xy, c.xy, length) * sw[None, :])


def _log_evidence(lam: np.ndarray, z: np.ndarray, w: np.ndarray, sigmas_f: np.ndarray,
                  sigmas_n: np.ndarray) -> np.ndarray:
    """Log marginal likelihood of both components for every (sigma_n, sigma_f) pair
    (rows, columns), K = sf² K_l + sn² W⁻¹, where z = Uᵀ W^½ r projects the residuals
    on the eigenvectors. All pairs at once: a search scores dozens per length scale."""
    v = (sigmas_f[None, :, None] ** 2 * np.maximum(lam, 0.0)[None, None, :]
         + sigmas_n[:, None, None] ** 2)
    quad = ((z * z).sum(axis=1) / v).sum(axis=2)
    logdet = 2 * (np.log(v).sum(axis=2) - float(np.log(w).sum()))
    return -0.5 * (quad + logdet + 2 * len(w) * math.log(2 * math.pi))


def _search(c: _Centres, lengths: np.ndarray, sigmas_f: np.ndarray, sigmas_n: np.ndarray) -> _Hyper:
    """The grid point of greatest evidence (the first of equals, lengths outermost, then
    sigma_n, then sigma_f); the null model (sigma_f = 0) unless a local field beats it by
    ``EVIDENCE_MARGIN``."""
    best, best_score, null, null_score = None, -math.inf, None, -math.inf
    for length in lengths:
        lam, u = _eigen(c, length)
        z = u.T @ (np.sqrt(c.w)[:, None] * c.r)
        scores = _log_evidence(lam, z, c.w, np.concatenate([[0.0], sigmas_f]), sigmas_n)
        i_null = int(np.argmax(scores[:, 0]))
        if scores[i_null, 0] > null_score:
            null, null_score = _Hyper(float(length), 0.0, float(sigmas_n[i_null])), float(scores[i_null, 0])
        i_n, i_f = np.unravel_index(int(np.argmax(scores[:, 1:])), scores[:, 1:].shape)
        if scores[i_n, i_f + 1] > best_score:
            best = _Hyper(float(length), float(sigmas_f[i_f]), float(sigmas_n[i_n]))
            best_score = float(scores[i_n, i_f + 1])
    return best if best_score > null_score + EVIDENCE_MARGIN else null


def _posterior(c: _Centres, h: _Hyper) -> _Posterior:
    lam, u = _eigen(c, h.length)
    v = h.sigma_f ** 2 * np.maximum(lam, 0.0) + h.sigma_n ** 2
    b = np.sqrt(c.w)[:, None] * u / np.sqrt(v)[None, :]
    return _Posterior(c, h, b @ (b.T @ c.r), b)


def _cell_keys(pts: np.ndarray, cell: float) -> np.ndarray:
    g = np.floor((pts - pts.min(axis=0)) / cell).astype(np.int64)
    return g[:, 1] * (int(g[:, 0].max()) + 1) + g[:, 0]


def _thin(src: np.ndarray, r: np.ndarray, w: np.ndarray, max_cells: int, robust: bool = False) -> _Centres:
    """Average the matches within square cells, at most ``max_cells`` of them: the
    weighted mean, or for the first, outlier-laden pass the median, of the residuals."""
    span = np.maximum(np.ptp(src, axis=0), 1.0)
    cell = math.sqrt(span[0] * span[1] / max_cells)
    while len(np.unique(_cell_keys(src, cell))) > max_cells:
        cell *= 1.25
    _, inv = np.unique(_cell_keys(src, cell), return_inverse=True)
    m = int(inv.max()) + 1
    wsum = np.bincount(inv, w, m)
    xy = np.column_stack([np.bincount(inv, w * src[:, k], m) for k in (0, 1)]) / wsum[:, None]
    if robust:
        return _Centres(xy, _group_median(r, inv, m), wsum)
    values = np.column_stack([np.bincount(inv, w * r[:, k], m) for k in (0, 1)]) / wsum[:, None]
    return _Centres(xy, values, wsum)


def _group_median(values: np.ndarray, groups: np.ndarray, m: int) -> np.ndarray:
    """Per group (0..m-1, none empty) the median of each column, as np.median gives it
    (the mean of the two middle values of an even count), without a call per group."""
    counts = np.bincount(groups, minlength=m)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lower = starts + (counts - 1) // 2
    upper = starts + counts // 2
    out = np.empty((m, values.shape[1]))
    for k in range(values.shape[1]):
        ranked = values[np.lexsort((values[:, k], groups)), k]
        out[:, k] = (ranked[lower] + ranked[upper]) / 2
    return out


def _robust_sigma(e: np.ndarray) -> float:
    """Per-component scale of zero-centred 2-D errors from their median radius (a
    Rayleigh median is sigma·√(2 ln 2)); radial, so an error-free component, such as
    jitter along one axis only, cannot shrink it."""
    return max(float(np.median(np.hypot(e[:, 0], e[:, 1]))) / math.sqrt(2 * math.log(2)), MIN_SIGMA)


def _screen(e: np.ndarray, tiles: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Matches to keep (error within ``REJECT_SIGMAS`` of their noise scale), their
    precision weights relative to the global scale, and that scale."""
    scale, sigma = _match_scales(e, tiles)
    return np.hypot(e[:, 0], e[:, 1]) <= REJECT_SIGMAS * scale, (sigma / scale) ** 2, sigma


def _match_scales(e: np.ndarray, tiles: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Each match's noise scale (its tile's, shrunk toward the global one and at least
    half of it) and the global scale."""
    sigma = _robust_sigma(e)
    if tiles is None:
        return np.full(len(e), sigma), sigma
    ids, inv = np.unique(np.asarray(tiles), return_inverse=True)
    counts = np.bincount(inv, minlength=len(ids))
    own = np.array([_robust_sigma(e[inv == t]) for t in range(len(ids))])
    shrunk = np.sqrt((counts * own ** 2 + TILE_PRIOR * sigma ** 2) / (counts + TILE_PRIOR))
    return np.maximum(shrunk, sigma / 2)[inv], sigma


def _spacing_and_noise(src: np.ndarray, r: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Median nearest-neighbour spacing, and a first noise scale from the residual
    differences of neighbours (an overestimate where the field is steep; the evidence
    search spans a range around it)."""
    sample = rng.choice(len(src), min(NN_SAMPLE, len(src)), replace=False)
    nearest, d2_nearest = np.empty(len(sample), np.intp), np.empty(len(sample))
    chunk = max(1, min(len(sample), NN_CHUNK // len(src)))  # rows of squared distances at a time: in cache
    d2, dy = np.empty((chunk, len(src))), np.empty((chunk, len(src)))
    for i in range(0, len(sample), chunk):
        rows = sample[i:i + chunk]
        k = np.arange(len(rows))
        a, b = d2[:len(rows)], dy[:len(rows)]
        np.square(np.subtract.outer(src[rows, 0], src[:, 0], out=a), out=a)
        a += np.square(np.subtract.outer(src[rows, 1], src[:, 1], out=b), out=b)
        a[k, rows] = np.inf
        nearest[i:i + len(rows)] = a.argmin(axis=1)
        d2_nearest[i:i + len(rows)] = a[k, nearest[i:i + len(rows)]]
    spacing = float(np.sqrt(np.median(d2_nearest)))
    return spacing, _robust_sigma(r[sample] - r[nearest]) / math.sqrt(2)


def _min_length(extent: Extent) -> float:
    """The shortest length scale the grid resolves with two nodes per length: the step
    is (E + 2·MARGIN_L·l) / (MAX_NODES - 1) for the extent's larger side E."""
    side = max(extent[2] - extent[0], extent[3] - extent[1], 1.0)
    return 2 * side / (MAX_NODES - 1 - 4 * MARGIN_L)


def _lengths(l_min: float, extent: Extent) -> np.ndarray:
    """From the shortest resolvable scale to half the extent's diagonal."""
    half_diagonal = 0.5 * math.hypot(extent[2] - extent[0], extent[3] - extent[1])
    return np.geomspace(l_min, half_diagonal, N_LENGTHS) if half_diagonal > l_min else np.array([l_min])


def _signal_grid(r: np.ndarray) -> np.ndarray:
    """Signal scales around the residuals' robust scale, which bounds the field's."""
    return _robust_sigma(r) * 2.0 ** np.arange(-4, 1.5, 0.5)


def _noise_grid(sigma: float) -> np.ndarray:
    return sigma * 2.0 ** np.arange(-2, 1.5, 0.5)


def _local_transform(base: Transform, extent: Extent, post: _Posterior | None,
                     hyper: _Hyper, n_used: int, spread: bool = True) -> LocalTransform:
    """Sample the posterior on a grid over the extent plus ``MARGIN_L`` length scales; the
    border ring is set to zero so the field is continuous with the zero outside."""
    origin, step, shape = _node_grid(extent, hyper.length)
    gx, gy = np.meshgrid(origin[0] + step * np.arange(shape[1]), origin[1] + step * np.arange(shape[0]))
    nodes = np.column_stack([gx.ravel(), gy.ravel()])
    if post is None or hyper.sigma_f == 0:
        mean, var = np.zeros((len(nodes), 2)), np.zeros(len(nodes))
    else:
        mean, var = post.mean(nodes), (post.variance(nodes) if spread else np.full(len(nodes), np.nan))
    dx, dy = (mean[:, k].reshape(shape) for k in (0, 1))
    for grid in (dx, dy):
        grid[[0, -1], :] = 0.0
        grid[:, [0, -1]] = 0.0
    return LocalTransform(base, origin, step, dx, dy, np.sqrt(2 * var).reshape(shape), n_used,
                          hyper.length, hyper.sigma_f, hyper.sigma_n)


def _node_grid(extent: Extent, length: float) -> tuple[tuple[float, float], float, tuple[int, int]]:
    """Origin, step and (rows, cols) of a grid over the extent plus the margin, at most
    ``MAX_NODES`` per side."""
    margin = MARGIN_L * length
    x0, y0 = extent[0] - margin, extent[1] - margin
    width, height = extent[2] + margin - x0, extent[3] + margin - y0
    step = max(width, height) / (MAX_NODES - 1)
    nx, ny = (min(MAX_NODES, int(math.ceil(s / step - 1e-9)) + 1) for s in (width, height))
    return (x0, y0), step, (ny, nx)


def _bilinear(grids: np.ndarray, origin: tuple[float, float], step: float, x: np.ndarray, y: np.ndarray,
              clamp: bool) -> np.ndarray:
    """Sample a stack of grids (k, rows, cols) at (x, y): shape (k, *x.shape). Outside the
    grid: the nearest border value with ``clamp``, else zero."""
    fx = (np.asarray(x, np.float64) - origin[0]) / step
    fy = (np.asarray(y, np.float64) - origin[1]) / step
    ny, nx = grids.shape[1:]
    inside = (fx >= 0) & (fx <= nx - 1) & (fy >= 0) & (fy <= ny - 1)
    finite = np.isfinite(fx) & np.isfinite(fy)
    fx = np.clip(np.where(finite, fx, 0.0), 0, nx - 1)
    fy = np.clip(np.where(finite, fy, 0.0), 0, ny - 1)
    ix = np.minimum(fx.astype(np.intp), nx - 2)
    iy = np.minimum(fy.astype(np.intp), ny - 2)
    tx, ty = fx - ix, fy - iy
    corners = [(iy * nx + ix, (1 - tx) * (1 - ty)), (iy * nx + ix + 1, tx * (1 - ty)),
               ((iy + 1) * nx + ix, (1 - tx) * ty), ((iy + 1) * nx + ix + 1, tx * ty)]
    out = np.stack([sum(g.take(i) * w for i, w in corners) for g in grids.reshape(len(grids), -1)])
    return np.where(finite, out, np.nan) if clamp else np.where(inside, out, 0.0)
