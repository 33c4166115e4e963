"""Random homographies and image warping in dmreg's pixel convention.

Pixel coordinates are (x=col, y=row) with (0, 0) the top-left CORNER of the top-left
pixel (GDAL's convention, used throughout dmreg), so the centre of pixel (row r, col c)
is (c + 0.5, r + 0.5). OpenCV puts pixel centres on integers instead: p_cv = p - 0.5.
A homography H in dmreg's convention is therefore H_cv = T(-0.5) @ H @ T(+0.5) for
OpenCV; getting this wrong shifts every ground-truth match by up to half a pixel,
which is the size of the fine-level errors the matcher is trained to resolve.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class HomographyRange:
    """Bounds of :func:`random_homography` (see there for what each one means)."""

    max_angle_deg: float = 20.0
    max_scale: float = 1.25
    max_shift_frac: float = 0.1
    max_perspective: float = 0.1


def random_homography(
    rng: np.random.Generator,
    size: tuple[int, int],
    max_angle_deg: float,
    max_scale: float,
    max_shift_frac: float,
    max_perspective: float,
) -> np.ndarray:
    """A random 3 x 3 homography mapping image0 pixel coordinates to image1 pixel
    coordinates (corner convention), for images of ``size`` = (height, width).

    About the image centre: a perspective tilt, an isotropic scale in
    [1 / max_scale, max_scale] (log-uniform, so shrinking and enlarging are equally
    likely), a rotation in +-max_angle_deg, then a shift of up to max_shift_frac of the
    width and height. ``max_perspective`` bounds how much the homogeneous coordinate
    changes from the centre to the middle of each edge (0.1: +-10 %), whatever the
    image size. H[2, 2] is 1.
    """
    if max_scale < 1.0:
        raise ValueError(f"max_scale must be >= 1, got {max_scale}")
    h, w = size
    centre = np.array([w / 2.0, h / 2.0])
    angle = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    scale = np.exp(rng.uniform(-np.log(max_scale), np.log(max_scale)))
    shift = rng.uniform(-max_shift_frac, max_shift_frac, 2) * np.array([w, h])
    tilt = rng.uniform(-max_perspective, max_perspective, 2) / centre

    perspective = np.eye(3)
    perspective[2, :2] = tilt
    rotate_scale = np.eye(3)
    rotate_scale[:2, :2] = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    H = _translation(*(centre + shift)) @ rotate_scale @ perspective @ _translation(*-centre)
    return H / H[2, 2]


def apply_homography(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map N x 2 points (x, y) through H."""
    xy = np.asarray(xy, np.float64)
    p = np.column_stack([xy, np.ones(len(xy))]) @ np.asarray(H, np.float64).T
    return p[:, :2] / p[:, 2:]


def warp_image(
    img: np.ndarray,
    H: np.ndarray,
    out_size: tuple[int, int],
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``img`` so that warped(H p) = img(p): the content at image pixel p ends
    up at H p. ``out_size`` is (height, width).

    Returns the warped image (bilinear, float32) and its valid mask: pixels whose source
    point lies inside the image and in front of the projection, and, when ``valid``
    (the source's own mask) is given, whose bilinear neighbours are all valid. Invalid
    pixels hold 0.
    """
    out_h, out_w = out_size
    src_h, src_w = img.shape[:2]
    rows, cols = np.mgrid[0:out_h, 0:out_w]
    centres = np.column_stack([cols.ravel() + 0.5, rows.ravel() + 0.5, np.ones(out_h * out_w)])
    src = centres @ np.linalg.inv(np.asarray(H, np.float64)).T
    in_front = src[:, 2] > 1e-12
    src_xy = src[:, :2] / np.where(in_front, src[:, 2], 1.0)[:, None]
    map_x = (src_xy[:, 0] - 0.5).reshape(out_h, out_w).astype(np.float32)  # OpenCV: centres on integers
    map_y = (src_xy[:, 1] - 0.5).reshape(out_h, out_w).astype(np.float32)
    inside = (
        in_front
        & (src_xy[:, 0] >= 0.0) & (src_xy[:, 0] <= src_w)
        & (src_xy[:, 1] >= 0.0) & (src_xy[:, 1] <= src_h)
    ).reshape(out_h, out_w)

    warped = cv2.remap(img.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if valid is not None:
        weight = cv2.remap(valid.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside &= weight > 0.999
    warped[~inside] = 0.0
    return warped, inside


def _translation(tx: float, ty: float) -> np.ndarray:
    t = np.eye(3)
    t[:2, 2] = (tx, ty)
    return t
