"""DistillMatch as a dmreg Matcher: batched tiles, device choice, autocast on CUDA only.

What the network computed for a reference tile is kept for the next call that reads the
same tile: its backbone features (the orientation search matches one reference grid
against eight turns of the moving raster), and, within the fine stage, its coarse
matches, so that a refinement pass that read its tiles through a model moved by less
than a pixel only measures the sub-pixel offsets again (:meth:`DistillMatchMatcher.fine_pass`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dmreg.errors import UsageError
from dmreg.matchers.base import TileMatches, TilePair
from dmreg.matchers.distillmatch.model import COARSE_STRIDE, DistillMatch
from dmreg.matchers.distillmatch.tiles import (
    BALANCED_TILES,
    MAX_SIDE,
    ROTATION_STEP_DEG,
    batch_shape,
    match_in_batches,
    modality_labels,
    padded_stack,
    select_matches,
    window_key,
)
from dmreg.matchers.distillmatch.weights import WeightsCard, load_model
from dmreg.runtime import thread_count

REUSE_WITHIN_PX = 1.0
"""A fine pass reuses the coarse matches an earlier pass found in the same tile window
while the moving tiles' content has moved by at most this much (tile pixels) since: an
eighth of a coarse cell, well inside the +-4 px the sub-pixel refinement reaches, so
the same cells still match and only their offsets are measured again."""
FEATURE_CACHE_MB = 64.0
"""Reference-tile backbone features kept for a later fine pass, at most (a 416 px tile's
take 12 MB, a 512 px tile's 19 MB); beyond it a reused window computes them again."""


@dataclass
class _Window:
    """What matching one tile window leaves for a later call on the same reference tile."""

    shape: tuple[int, int]  # the padded (H, W) of the batch it was computed in
    features0: tuple[torch.Tensor, torch.Tensor] | None  # the reference tile's (coarse, fine) backbone output
    cells: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # cell0, cell1, confidence
    drift_px: float = 0.0  # how far the moving tile's content moved since the cells were found

    @property
    def feature_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.features0) if self.features0 else 0


def resolve_device(device: str) -> torch.device:
    """auto -> the first CUDA device if any, else CPU; an unavailable CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return dev


@dataclass
class DistillMatchMatcher:
    """Matches tile pairs with trained DistillMatch weights (reference = image0)."""

    weights: str | None = None
    device: str = "auto"
    batch_size: int | None = None  # tiles per forward pass; None: 8 on CUDA, 1 on the CPU, where batching
                                   # gains no speed and holds one N x N confidence matrix per tile
    max_side: int = MAX_SIDE
    name: str = "distillmatch"
    rotation_step_deg: float = ROTATION_STEP_DEG
    balanced_tiles: bool = BALANCED_TILES
    reuse_within_px: float = REUSE_WITHIN_PX
    feature_cache_mb: float = FEATURE_CACHE_MB
    refine_tolerance_px: float = 0.05
    """The soft-argmax refinement (at half resolution) recovers only half to three
    quarters of a sub-pixel offset (measured on bilinear reads of 512 px Landsat 8 B4/B2
    tiles: 0.05 px is found as 0.025, 0.1 px as 0.06, 0.5 px as 0.37): a pass whose model
    moved further than 0.05 px is refined by another, read through the new model."""
    _model: DistillMatch = field(init=False, repr=False)
    _card: WeightsCard = field(init=False, repr=False)
    _device: torch.device = field(init=False, repr=False)
    _previous: dict[bytes, _Window] = field(init=False, repr=False, default_factory=dict)  # usable in this pass
    _kept: dict[bytes, _Window] = field(init=False, repr=False, default_factory=dict)  # for the next pass
    _recent: dict[bytes, _Window] = field(init=False, repr=False, default_factory=dict)  # the last batch's
    _keep: bool = field(init=False, repr=False, default=False)
    _moved_px: float | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self._device = resolve_device(self.device)
        if self.batch_size is None:
            self.batch_size = 8 if self._device.type == "cuda" else 1
        model, self._card = load_model(self.weights)
        # channels-last convolutions: about a fifth faster on CPU (oneDNN) and on GPU tensor cores
        self._model = model.to(self._device, memory_format=torch.channels_last)

    def describe(self) -> dict:
        """What the report records; on a GPU also the peak memory the matching took."""
        out = {"name": self.name, "weights": self._card.name, "weights_sha256": self._card.sha256,
               "device": str(self._device)}
        if self._device.type == "cuda":
            out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(self._device) / 2**20, 1)
        return out

    def match(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        """Tiles larger than ``max_side`` are matched at a reduced size and the matches
        scaled back."""
        return match_in_batches(pairs, self.batch_size, self.max_side, self._match_batch)

    def fine_pass(self, moved_px: float | None, final: bool) -> None:
        """The fine stage says a pass over its tile windows begins. ``moved_px``: how far
        at most (tile pixels) the moving tiles' content has moved since the previous pass
        read the same windows (None: there was none). ``final``: no later pass reads them.

        A window read before keeps its reference tile's backbone features (those that fit
        in ``feature_cache_mb``); one whose coarse matches were found no more than
        ``reuse_within_px`` of movement ago keeps them too: only the moving tile's
        backbone features are computed again, and the same cell pairs refined on them.
        ``fine_pass(None, True)`` forgets everything kept."""
        later = moved_px is not None
        self._previous = self._kept if later else {}
        self._moved_px = moved_px if later and moved_px <= self.reuse_within_px else None
        self._kept, self._keep, self._recent = {}, not final, {}

    @torch.inference_mode()
    def _match_batch(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        if self._device.type == "cpu" and torch.get_num_threads() > (limit := thread_count()):
            torch.set_num_threads(limit)  # --threads / DMREG_THREADS; never more than torch's own choice
        h, w = batch_shape(pairs, COARSE_STRIDE)
        keys = [window_key(p) for p in pairs]
        earlier = [self._earlier(key, (h, w)) for key in keys]
        known_cells = self._moved_px is not None and all(
            e is not None and e.cells is not None and e.drift_px + self._moved_px <= self.reuse_within_px
            for e in earlier)
        # bf16 for the backbone and attention only: the model keeps its matching head in fp32
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._device.type == "cuda"):
            if known_cells:
                matches, windows = self._refine_known(pairs, earlier, h, w)
            else:
                matches, windows = self._match_afresh(pairs, earlier, h, w)
        self._remember(keys, windows)
        batch = matches["batch"].cpu().numpy()
        k0 = matches["kpts0"].float().cpu().numpy().astype(np.float64)
        k1 = matches["kpts1"].float().cpu().numpy().astype(np.float64)
        conf = matches["confidence"].float().cpu().numpy().astype(np.float64)
        return select_matches(pairs, batch, k0, k1, conf, COARSE_STRIDE)

    def _match_afresh(self, pairs: Sequence[TilePair], earlier: list[_Window | None], h: int,
                      w: int) -> tuple[dict[str, torch.Tensor], list[_Window]]:
        """The whole network (the reference backbone only when its features are not known)."""
        data = {
            "image0": self._images([p.ref for p in pairs], h, w),
            "image1": self._images([p.mov for p in pairs], h, w),
            "valid0": self._stack([p.ref_valid for p in pairs], h, w).bool(),
            "valid1": self._stack([p.mov_valid for p in pairs], h, w).bool(),
        }
        known = self._model.conf.modalities  # the weights' own category rows, by name
        for key, attr in (("modality0", "ref_modality"), ("modality1", "mov_modality")):
            if (labels := modality_labels(pairs, attr, known)) is not None:  # else the network predicts it
                data[key] = torch.tensor(labels, device=self._device)
        if all(e is not None and e.features0 is not None for e in earlier):
            data["features0"] = tuple(torch.cat(parts) for parts in zip(*(e.features0 for e in earlier)))
        out = self._model(data)
        matches = out["matches"]
        windows = []
        for k in range(len(pairs)):
            sel = matches["batch"] == k
            windows.append(_Window((h, w), _own(out["coarse0"][k:k + 1], out["fine0"][k:k + 1]),
                                   (matches["cells0"][sel], matches["cells1"][sel], matches["confidence"][sel])))
        return matches, windows

    def _refine_known(self, pairs: Sequence[TilePair], earlier: list[_Window], h: int,
                      w: int) -> tuple[dict[str, torch.Tensor], list[_Window]]:
        """The earlier passes' cell pairs refined on the tiles as read now."""
        image1 = self._images([p.mov for p in pairs], h, w)
        if all(e.features0 is not None for e in earlier):
            features0 = tuple(torch.cat(parts) for parts in zip(*(e.features0 for e in earlier)))
            _, fine1 = self._model.backbone(image1)
        else:
            image0 = self._images([p.ref for p in pairs], h, w)
            coarse, fine = self._model.backbone(torch.cat([image0, image1]))
            b = len(pairs)
            features0, fine1 = (coarse[:b], fine[:b]), fine[b:]
        cells = [e.cells for e in earlier]
        b_ids = torch.cat([torch.full_like(c[0], k) for k, c in enumerate(cells)])
        i_ids, j_ids, score = (torch.cat(parts) for parts in zip(*cells))
        matches = self._model.refine_matches({"fine0": features0[1], "fine1": fine1}, b_ids, i_ids, j_ids, score)
        windows = [_Window((h, w), e.features0 or _own(features0[0][k:k + 1], features0[1][k:k + 1]), e.cells,
                           e.drift_px + self._moved_px) for k, e in enumerate(earlier)]
        return matches, windows

    def _earlier(self, key: bytes, shape: tuple[int, int]) -> _Window | None:
        """What an earlier call left for this reference tile at this padded shape. The
        previous pass's is handed over once (a pass reads each window once): what this
        pass keeps of it is kept anew, the rest freed as the pass goes."""
        window = self._previous.pop(key, None)
        if window is None:
            window = self._recent.get(key)
        return window if window is not None and window.shape == shape else None

    def _remember(self, keys: list[bytes], windows: list[_Window]) -> None:
        """The last batch's reference features, for a next call on the same reference
        tiles; in a fine pass that another follows, each window's coarse matches, with
        its features while they fit in ``feature_cache_mb``."""
        self._recent = {key: _Window(w.shape, w.features0) for key, w in zip(keys, windows)}
        if not self._keep:
            return
        budget = self.feature_cache_mb * 2**20 - sum(w.feature_bytes for w in self._kept.values())
        for key, window in zip(keys, windows):
            if window.feature_bytes > budget:
                window = _Window(window.shape, None, window.cells, window.drift_px)
            budget -= window.feature_bytes
            self._kept[key] = window

    def _images(self, arrays: list[np.ndarray], h: int, w: int) -> torch.Tensor:
        return self._stack(arrays, h, w)[:, None].contiguous(memory_format=torch.channels_last)

    def _stack(self, arrays: list[np.ndarray], h: int, w: int) -> torch.Tensor:
        return torch.from_numpy(padded_stack(arrays, h, w)).to(self._device)


def _own(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Copies that hold no more memory than their own (a slice of a batch would keep the
    whole batch, the moving tiles' features with it)."""
    return tuple(t.clone() for t in tensors)
