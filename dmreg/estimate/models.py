"""Geometric models in pixel space and their least-squares fits.

Every fitted model is a :class:`Transform`: apply, inverse, and a 3x3 matrix where the
model has one. Fits are in normalised coordinates (centred, unit spread) so that
homographies and polynomials stay well conditioned on rasters of any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("translation", "similarity", "affine", "homography", "polynomial2")
MIN_SAMPLES = {"translation": 1, "similarity": 2, "affine": 3, "homography": 4, "polynomial2": 6}
INVERSE_TOLERANCE_PX = 1e-3
"""A polynomial inverse whose image misses the target by more than this has not converged."""
N_PARAMS = {"translation": 2, "similarity": 4, "affine": 6, "homography": 8, "polynomial2": 12}


@dataclass(frozen=True)
class Transform:
    """A fitted model. ``matrix`` is 3x3 (homogeneous) for all kinds but polynomial2,
    whose coefficients ``poly`` (2x6, terms 1, x, y, x², xy, y²) act on source
    coordinates normalised by ``centre`` and ``spread``."""

    kind: str
    matrix: np.ndarray | None = None
    poly: np.ndarray | None = None
    centre: tuple[float, float] = (0.0, 0.0)
    spread: float = 1.0

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        if self.matrix is not None:
            m = self.matrix
            w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
            if m[2, 0] or m[2, 1]:  # a homography: points past its horizon have no image
                w = np.where(w * m[2, 2] > 0, w, np.nan)
            return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w
        terms = _poly_terms(*self._normalise(x, y))
        return np.tensordot(self.poly[0], terms, 1), np.tensordot(self.poly[1], terms, 1)

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        if self.matrix is not None:
            inverse = np.linalg.inv(self.matrix)
            return Transform(self.kind, matrix=inverse / inverse[2, 2]).apply(x, y)
        return self._poly_inverse(x, y)

    def as_dict(self) -> dict:
        if self.matrix is not None:
            return {"kind": self.kind, "matrix": self.matrix.tolist()}
        return {"kind": self.kind, "coefficients": self.poly.tolist(),
                "centre": list(self.centre), "spread": self.spread}

    def _normalise(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x - self.centre[0]) / self.spread, (y - self.centre[1]) / self.spread

    def _poly_inverse(self, x: np.ndarray, y: np.ndarray, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Newton's method from the inverse of the linear part: a polynomial2 correction is
        a gentle warp, so this converges to machine precision in a few steps. Far from the
        data a quadratic can fold over itself: where the last step still misses by more
        than ``INVERSE_TOLERANCE_PX`` there is no inverse, and the answer is NaN."""
        c = self.poly
        s = self.spread
        lin = np.array([[c[0, 1], c[0, 2]], [c[1, 1], c[1, 2]]]) / s
        inv_lin = np.linalg.inv(lin)
        fx0, fy0 = self.apply(np.array(self.centre[0]), np.array(self.centre[1]))
        dx, dy = x - fx0, y - fy0
        u = self.centre[0] + inv_lin[0, 0] * dx + inv_lin[0, 1] * dy
        v = self.centre[1] + inv_lin[1, 0] * dx + inv_lin[1, 1] * dy
        for _ in range(iterations):
            fx, fy = self.apply(u, v)
            ex, ey = fx - x, fy - y
            nu, nv = self._normalise(u, v)
            # Jacobian of the normalised polynomial, divided by spread for raw coordinates
            j00 = (c[0, 1] + 2 * c[0, 3] * nu + c[0, 4] * nv) / s
            j01 = (c[0, 2] + c[0, 4] * nu + 2 * c[0, 5] * nv) / s
            j10 = (c[1, 1] + 2 * c[1, 3] * nu + c[1, 4] * nv) / s
            j11 = (c[1, 2] + c[1, 4] * nu + 2 * c[1, 5] * nv) / s
            det = j00 * j11 - j01 * j10
            u = u - (j11 * ex - j01 * ey) / det
            v = v - (-j10 * ex + j00 * ey) / det
        fx, fy = self.apply(u, v)
        missed = ~(np.hypot(fx - x, fy - y) <= INVERSE_TOLERANCE_PX)
        return np.where(missed, np.nan, u), np.where(missed, np.nan, v)


def fit(kind: str, src: np.ndarray, dst: np.ndarray) -> Transform:
    """Least-squares fit of ``kind`` mapping ``src`` (N x 2) onto ``dst`` (N x 2)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(KINDS)}")
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if len(src) < MIN_SAMPLES[kind]:
        raise ValueError(f"{kind} needs at least {MIN_SAMPLES[kind]} points, got {len(src)}")
    if kind == "polynomial2":
        return _fit_polynomial2(src, dst)
    if kind == "translation":  # separate src/dst normalisers would add a scale
        return Transform(kind, matrix=_fit_translation(src, dst))
    if kind == "similarity" and len(src) == 2:
        return Transform(kind, matrix=_similarity_through(src, dst))
    ts, td = _normaliser(src), _normaliser(dst)
    a, b = _apply_h(ts, src), _apply_h(td, dst)
    m = {"similarity": _fit_similarity,
         "affine": _fit_affine, "homography": _fit_homography}[kind](a, b)
    full = np.linalg.inv(td) @ m @ ts
    return Transform(kind, matrix=full / full[2, 2])


def residuals(t: Transform, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Euclidean error of ``t(src)`` against ``dst``, in destination pixels."""
    x, y = t.apply(src[:, 0], src[:, 1])
    return np.hypot(x - dst[:, 0], y - dst[:, 1])


def _normaliser(pts: np.ndarray) -> np.ndarray:
    """Hartley normalisation: centroid to the origin, mean distance sqrt(2)."""
    c = pts.mean(axis=0)
    s = float(np.sqrt(((pts - c) ** 2).sum(axis=1).mean()) / np.sqrt(2)) or 1.0
    return np.array([[1 / s, 0, -c[0] / s], [0, 1 / s, -c[1] / s], [0, 0, 1.0]])


def _apply_h(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _fit_translation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = (b - a).mean(axis=0)
    return np.array([[1.0, 0, t[0]], [0, 1.0, t[1]], [0, 0, 1.0]])


def _fit_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = len(a)
    A = np.zeros((2 * n, 4))
    A[0::2] = np.column_stack([a[:, 0], -a[:, 1], np.ones(n), np.zeros(n)])
    A[1::2] = np.column_stack([a[:, 1], a[:, 0], np.zeros(n), np.ones(n)])
    p, *_ = np.linalg.lstsq(A, b.reshape(-1), rcond=None)
    return np.array([[p[0], -p[1], p[2]], [p[1], p[0], p[3]], [0, 0, 1.0]])


def _similarity_through(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity taking two points exactly onto two others (RANSAC's minimal
    sample, thousands of times per search): in complex numbers z -> q z + t with
    q = (d1 - d0) / (s1 - s0). Coincident source points determine no similarity."""
    s0, s1 = complex(*src[0]), complex(*src[1])
    d0, d1 = complex(*dst[0]), complex(*dst[1])
    if abs(s1 - s0) < 1e-12 * max(1.0, abs(s0)):
        raise np.linalg.LinAlgError("coincident points")
    q = (d1 - d0) / (s1 - s0)
    t = d0 - q * s0
    return np.array([[q.real, -q.imag, t.real], [q.imag, q.real, t.imag], [0.0, 0.0, 1.0]])


def _fit_affine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    A = np.column_stack([a, np.ones(len(a))])
    p, *_ = np.linalg.lstsq(A, b, rcond=None)
    return np.vstack([p.T, [0, 0, 1.0]])


def _fit_homography(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = len(a)
    x, y, u, v = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    o, z = np.ones(n), np.zeros(n)
    A = np.vstack([
        np.column_stack([x, y, o, z, z, z, -u * x, -u * y, -u]),
        np.column_stack([z, z, z, x, y, o, -v * x, -v * y, -v]),
    ])
    if A.shape[0] < A.shape[1]:  # a minimal sample (8 x 9): the null vector is V's 9th row
        h = np.linalg.svd(A)[2][-1].reshape(3, 3)
    else:  # the least eigenvector of AᵀA (9 x 9): on Hartley-normalised points within 1e-12 px
        h = np.linalg.eigh(A.T @ A)[1][:, 0].reshape(3, 3)  # of the SVD's, at a ninth of its cost
    if abs(h[2, 2]) < 1e-12:
        raise np.linalg.LinAlgError("degenerate homography")
    return h / h[2, 2]


def _poly_terms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y])


def _fit_polynomial2(src: np.ndarray, dst: np.ndarray) -> Transform:
    centre = src.mean(axis=0)
    spread = float(np.abs(src - centre).max()) or 1.0
    terms = _poly_terms((src[:, 0] - centre[0]) / spread, (src[:, 1] - centre[1]) / spread)
    coef, _, rank, _ = np.linalg.lstsq(terms.T, dst, rcond=None)
    if rank < 6:
        raise np.linalg.LinAlgError("points too degenerate for a polynomial2 fit")
    return Transform("polynomial2", poly=coef.T.copy(), centre=(float(centre[0]), float(centre[1])),
                     spread=spread)
