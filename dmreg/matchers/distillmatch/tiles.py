"""Tile handling shared by the PyTorch and the ONNX Runtime DistillMatch matchers.

NumPy only, no PyTorch: a deployment that runs the network through ONNX Runtime must
prepare tiles and filter matches exactly as the PyTorch matcher does, without torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from dmreg.matchers.base import TileMatches, TilePair

MAX_SIDE = 640
"""Tiles with a longer side are matched at a reduced size: the confidence matrix grows
with the fourth power of the side."""
ROTATION_STEP_DEG = 45.0
"""Trained on rotations up to 30 deg; measured to hold at 35."""
BALANCED_TILES = True
"""Fine tiles no larger than covering the overlap with as many needs (the fine stage's
``balanced_tiles``): the attention and the confidence matrix cost the square of a tile's
area. Both backends ask for it; without it an 800 px pair gets 512 px tiles instead of
416 and takes about twice as long."""

BatchFn = Callable[[Sequence[TilePair]], list[TileMatches]]


def match_in_batches(pairs: Sequence[TilePair], batch_size: int, max_side: int,
                     match_batch: BatchFn) -> list[TileMatches]:
    """``match_batch`` over batches of ``batch_size`` pairs; a batch with a side over
    ``max_side`` is matched shrunk by an integer factor and its matches scaled back."""
    out: list[TileMatches] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        factor = max(1, -(-max(max(p.ref.shape + p.mov.shape) for p in chunk) // max_side))
        found = match_batch([shrink(p, factor) for p in chunk] if factor > 1 else chunk)
        out.extend(TileMatches(m.ref_xy * factor, m.mov_xy * factor, m.confidence) if factor > 1 else m
                   for m in found)
    return out


def batch_shape(pairs: Sequence[TilePair], stride: int) -> tuple[int, int]:
    """(height, width) every tile of the batch is padded to: the largest, rounded up to
    the network's coarse stride."""
    h = max(max(p.ref.shape[0], p.mov.shape[0]) for p in pairs)
    w = max(max(p.ref.shape[1], p.mov.shape[1]) for p in pairs)
    return _round_up(h, stride), _round_up(w, stride)


def padded_stack(arrays: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    """[B x h x w] float32, each array zero-padded at its bottom and right."""
    return np.stack([np.pad(np.asarray(a, dtype=np.float32), ((0, h - a.shape[0]), (0, w - a.shape[1])))
                     for a in arrays])


def modality_labels(pairs: Sequence[TilePair], attr: str, known: Sequence[str]) -> list[int] | None:
    """The weights' category row of each pair's ``attr`` modality; None unless every pair
    names one the weights know (then the network predicts the category)."""
    labels = [getattr(p, attr) for p in pairs]
    if all(label in known for label in labels):
        return [list(known).index(label) for label in labels]
    return None


def window_key(pair: TilePair) -> bytes:
    """Identifies a pair's reference tile (its pixels, validity and both tiles' shapes):
    what the network computed for it may serve a later call that reads the same tile."""
    digest = hashlib.blake2b(digest_size=16)
    ref = np.ascontiguousarray(pair.ref, dtype=np.float32)
    digest.update(repr((ref.shape, np.shape(pair.mov), pair.ref_modality)).encode())
    digest.update(ref.data)
    digest.update(np.ascontiguousarray(pair.ref_valid, dtype=bool).data)
    return digest.digest()


def select_matches(pairs: Sequence[TilePair], batch: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                   confidence: np.ndarray, stride: int) -> list[TileMatches]:
    """One TileMatches per pair: its matches on valid pixels of both tiles and within the
    search bound (1.5 x ``max_offset`` and two coarse cells of slack)."""
    results = []
    for i, pair in enumerate(pairs):
        sel = (batch == i) & _inside(kpts0, pair.ref_valid) & _inside(kpts1, pair.mov_valid)
        sel &= np.hypot(*(kpts1 - kpts0).T) <= 1.5 * pair.max_offset + 2 * stride
        results.append(TileMatches(kpts0[sel], kpts1[sel], confidence[sel]))
    return results


def shrink(pair: TilePair, factor: int) -> TilePair:
    """The pair reduced by an integer factor (area averaging; a cell is valid only if
    all its pixels are), so coordinates scale back exactly by ``factor``."""
    def area(img: np.ndarray) -> np.ndarray:
        h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
        return img[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))

    return TilePair(area(pair.ref).astype(np.float32), area(pair.mov).astype(np.float32),
                    area(pair.ref_valid.astype(np.float32)) == 1.0, area(pair.mov_valid.astype(np.float32)) == 1.0,
                    max_offset=pair.max_offset / factor, ref_modality=pair.ref_modality,
                    mov_modality=pair.mov_modality)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _inside(xy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Points that fall on valid pixels of their tile."""
    col = np.floor(xy[:, 0]).astype(int)
    row = np.floor(xy[:, 1]).astype(int)
    ok = (col >= 0) & (row >= 0) & (col < valid.shape[1]) & (row < valid.shape[0])
    ok[ok] = valid[row[ok], col[ok]]
    return ok
