"""DistillMatch through ONNX Runtime on the CPU, from a graph `dmreg models export` wrote.

No PyTorch here: a deployment needs onnxruntime and NumPy only. Tiles are prepared
and matches filtered by the same code as the PyTorch matcher's (``tiles``), so the two
give the same matches; only the network runs elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

from dmreg.errors import InputError
from dmreg.matchers.base import TileMatches, TilePair
from dmreg.matchers.distillmatch.onnx_format import OUTPUTS, PREDICT_MODALITY, OnnxCard
from dmreg.matchers.distillmatch.tiles import (
    BALANCED_TILES,
    MAX_SIDE,
    ROTATION_STEP_DEG,
    batch_shape,
    match_in_batches,
    modality_labels,
    padded_stack,
    select_matches,
)
from dmreg.runtime import thread_count
from dmreg.weightfiles import file_sha256


@dataclass
class OnnxDistillMatchMatcher:
    """Matches tile pairs, one at a time (the graph has batch 1), with an exported
    DistillMatch graph (reference = image0)."""

    path: str | Path
    max_side: int = MAX_SIDE
    name: str = "distillmatch"
    rotation_step_deg: float = ROTATION_STEP_DEG
    balanced_tiles: bool = BALANCED_TILES
    _session: ort.InferenceSession = field(init=False, repr=False)
    _card: OnnxCard = field(init=False, repr=False)
    _sha256: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        path = Path(self.path)
        if not path.is_file():
            raise InputError(f"DistillMatch ONNX file {path} not found (--weights)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count()
        options.inter_op_num_threads = 1  # one graph, run by one caller at a time: the threads go to its operators
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as exc:
            raise InputError(f"{path}: not a readable ONNX file ({exc})") from exc
        self._card = OnnxCard.from_metadata(self._session.get_modelmeta().custom_metadata_map, str(path))
        self._sha256 = file_sha256(path)

    def describe(self) -> dict:
        """The weights the graph was exported from, so reports name the same weights
        whichever backend ran them, and the graph file itself."""
        return {"name": self.name, "weights": self._card.weights, "weights_sha256": self._card.weights_sha256,
                "device": "cpu", "runtime": f"onnxruntime {ort.__version__}", "onnx_sha256": self._sha256}

    def match(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        """Tiles larger than ``max_side`` are matched at a reduced size and the matches
        scaled back, as by the PyTorch matcher."""
        return match_in_batches(pairs, 1, self.max_side, self._match_pair)

    def _match_pair(self, pairs: Sequence[TilePair]) -> list[TileMatches]:
        h, w = batch_shape(pairs, self._card.coarse_stride)
        feeds = {
            "image0": padded_stack([p.ref for p in pairs], h, w)[:, None],
            "image1": padded_stack([p.mov for p in pairs], h, w)[:, None],
            "valid0": padded_stack([p.ref_valid for p in pairs], h, w).astype(bool),
            "valid1": padded_stack([p.mov_valid for p in pairs], h, w).astype(bool),
        }
        known = self._card.config.modalities
        for key, attr in (("modality0", "ref_modality"), ("modality1", "mov_modality")):
            feeds[key] = np.array(modality_labels(pairs, attr, known) or [PREDICT_MODALITY], dtype=np.int64)
        log_confidence, _, mutual, kpts0, kpts1 = self._session.run(list(OUTPUTS), feeds)
        config = self._card.config
        cells = select_cells(log_confidence, mutual, config.match_threshold, config.max_matches)
        return select_matches(pairs, np.zeros(len(cells), dtype=np.int64), kpts0[cells].astype(np.float64),
                              kpts1[cells].astype(np.float64), np.exp(log_confidence[cells]).astype(np.float64),
                              self._card.coarse_stride)


def select_cells(log_confidence: np.ndarray, mutual: np.ndarray, threshold: float, max_matches: int) -> np.ndarray:
    """The image0 cells that match, as DistillMatch.match selects them: mutual nearest
    neighbours above ``threshold`` (ascending cell order), or, when more than
    ``max_matches``, the most confident ones in decreasing confidence (as torch.topk)."""
    log_threshold = np.float32(math.log(threshold)) if threshold > 0 else -np.inf
    cells = np.flatnonzero(mutual & (log_confidence > log_threshold))
    if len(cells) > max_matches:
        cells = cells[np.argsort(-log_confidence[cells], kind="stable")[:max_matches]]
    return cells
