"""DistillMatch as a dmreg Matcher: batched tiles, device choice, autocast on CUDA only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dmreg.errors import UsageError
from dmreg.matchers.base import TileMatches, TilePair
from dmreg.matchers.distillmatch.model import COARSE_STRIDE, DistillMatch
from dmreg.matchers.distillmatch.weights import WeightsCard, load_model


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
    max_side: int = 640
    name: str = "distillmatch"
    rotation_step_deg: float = 45.0  # trained on rotations up to 30 deg; measured to hold at 35
    _model: DistillMatch = field(init=False, repr=False)
    _card: WeightsCard = field(init=False, repr=False)
    _device: torch.device = field(init=False, repr=False)

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
        scaled back: the confidence matrix grows with the fourth power of the side."""
        out: list[TileMatches] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            factor = max(1, -(-max(max(p.ref.shape + p.mov.shape) for p in chunk) // self.max_side))
            found = self._match_batch([_shrink(p, factor) for p in chunk] if factor > 1 else chunk)
            out.extend(TileMatches(m.ref_xy * factor, m.mov_xy * factor, m.confidence) if factor > 1 else m
                       for m in found)
        return out

    @torch.inference_mode()
    def _match_batch(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        h = max(max(p.ref.shape[0], p.mov.shape[0]) for p in pairs)
        w = max(max(p.ref.shape[1], p.mov.shape[1]) for p in pairs)
        h, w = _round_up(h, COARSE_STRIDE), _round_up(w, COARSE_STRIDE)
        data = {
            "image0": self._stack([p.ref for p in pairs], h, w)[:, None].contiguous(memory_format=torch.channels_last),
            "image1": self._stack([p.mov for p in pairs], h, w)[:, None].contiguous(memory_format=torch.channels_last),
            "valid0": self._stack([p.ref_valid for p in pairs], h, w).bool(),
            "valid1": self._stack([p.mov_valid for p in pairs], h, w).bool(),
        }
        known = self._model.conf.modalities  # the weights' own category rows, by name
        for key, attr in (("modality0", "ref_modality"), ("modality1", "mov_modality")):
            labels = [getattr(p, attr) for p in pairs]
            if all(label in known for label in labels):  # else the network predicts the category
                data[key] = torch.tensor([known.index(label) for label in labels], device=self._device)
        # bf16 for the backbone and attention only: the model keeps its matching head in fp32
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._device.type == "cuda"):
            matches = self._model(data)["matches"]
        batch = matches["batch"].cpu().numpy()
        k0 = matches["kpts0"].float().cpu().numpy().astype(np.float64)
        k1 = matches["kpts1"].float().cpu().numpy().astype(np.float64)
        conf = matches["confidence"].float().cpu().numpy().astype(np.float64)
        results = []
        for i, pair in enumerate(pairs):
            sel = (batch == i) & _inside(k0, pair.ref_valid) & _inside(k1, pair.mov_valid)
            sel &= np.hypot(*(k1 - k0).T) <= 1.5 * pair.max_offset + 2 * COARSE_STRIDE
            results.append(TileMatches(k0[sel], k1[sel], conf[sel]))
        return results

    def _stack(self, arrays: list[np.ndarray], h: int, w: int) -> torch.Tensor:
        tensors = [F.pad(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)),
                         (0, w - a.shape[1], 0, h - a.shape[0])) for a in arrays]
        return torch.stack(tensors).to(self._device)


def _shrink(pair: TilePair, factor: int) -> TilePair:
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
