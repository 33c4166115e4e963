"""Export DistillMatch to one ONNX graph, and check it against PyTorch.

The exporter is torch.onnx's TorchScript one (``dynamo=False``): it needs only the
``onnx`` package, exports the network in seconds, and exists in every torch dmreg
supports (>= 2.2). The torch.export-based exporter (torch's default since 2.9) needs
onnxscript, spent some 45 s on this network and then failed to translate the
fine-window gather's remainder by a symbolic size (torch 2.14, onnxscript 0.7).

What the graph computes and gives is written down in ``onnx_format``: everything but
the data-dependent match selection, which the ONNX Runtime matcher does in NumPy.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmreg.errors import OutputExistsError, UsageError
from dmreg.matchers import get_matcher
from dmreg.matchers.base import TileMatches, TilePair
from dmreg.matchers.distillmatch.model import (
    COARSE_STRIDE,
    FINE_STRIDE,
    DistillMatch,
    ModalityInjection,
    refine,
    window_centres,
)
from dmreg.matchers.distillmatch.onnx_format import DEFAULT_OPSET, INPUTS, OPSETS, OUTPUTS, OnnxCard
from dmreg.matchers.distillmatch.weights import load_model
from dmreg.weightfiles import write_atomic

MAX_DIFF_PX = 0.05
"""The largest coordinate difference between the backends' shared matches a check accepts."""
COUNT_TOLERANCE = 0.01
"""The share of matches the backends may disagree on (near-threshold or near-tie cells)."""
SAME_MATCH_PX = 1.0
"""Matches of the two backends within this distance in both images are the same match:
distinct matches lie on distinct coarse cells of image0, at least 4 px apart."""


class _LabelOrPredicted(ModalityInjection):
    """Modality injection whose label -1 means "predict the category": the graph has
    fixed inputs, so one graph must serve both hinted and unhinted pairs."""

    def embed(self, logits: Tensor, label: Tensor | None) -> Tensor:
        known = F.one_hot(label.clamp(min=0), self.table.shape[0]).float()
        weights = torch.where((label >= 0)[:, None], known, logits.softmax(-1))
        return weights @ self.table


class _MatchGraph(nn.Module):
    """DistillMatch for one tile pair, up to the best match of every image0 cell and its
    refinement: the outputs listed in ``onnx_format``."""

    def __init__(self, model: DistillMatch):
        super().__init__()
        injection = _LabelOrPredicted(model.conf)
        injection.load_state_dict(model.injection.state_dict())
        model.injection = injection
        self.model = model

    def forward(self, image0: Tensor, image1: Tensor, valid0: Tensor, valid1: Tensor, modality0: Tensor,
                modality1: Tensor) -> tuple[Tensor, ...]:
        out = self.model({"image0": image0, "image1": image1, "valid0": valid0, "valid1": valid1,
                          "modality0": modality0, "modality1": modality1}, match=False)
        log_conf = out["log_conf"][0]
        score, best = log_conf.max(dim=1)
        mutual = score == log_conf.amax(dim=0)[best]
        k = self.model.conf.fine_window
        win0 = _windows(out["fine0"], k, torch.arange(log_conf.shape[0], device=log_conf.device))
        win1 = _windows(out["fine1"], k, best)
        forward, _ = refine(win0, win1, k)
        backward, _ = refine(win1, win0, k)
        centres = window_centres(*out["coarse0"].shape[-2:], log_conf.device)
        # the midpoint of both refinements, as DistillMatch.refine_pairs keeps it
        return score, best, mutual, centres + backward / 2, centres[best] + forward / 2


def _windows(fine: Tensor, window: int, cells: Tensor) -> Tensor:
    """The fine windows [N x window^2 x Df] of ``cells`` in a batch of one, the same
    values as model.fine_windows gathers. Gathered through flat indices here: the
    model's version sizes its result with ``len(cells)``, which tracing would freeze."""
    step = COARSE_STRIDE // FINE_STRIDE
    pad = window // 2
    padded = F.pad(fine, (pad, pad, pad, pad))
    grid_w = fine.shape[3] // step
    offsets = torch.arange(window, device=fine.device)
    rows = (cells // grid_w * step + step // 2)[:, None] + offsets
    cols = (cells % grid_w * step + step // 2)[:, None] + offsets
    flat = (rows[:, :, None] * padded.shape[3] + cols[:, None, :]).reshape(-1)
    picked = padded.flatten(2)[0].index_select(1, flat)
    return picked.view(fine.shape[1], -1, window * window).permute(1, 2, 0)


@contextlib.contextmanager
def _cell_pooling(opset: int) -> Iterator[None]:
    """Export the model's cell validity (adaptive average pooling of the pixel mask onto
    the coarse grid) as an average pool of the coarse stride. The TorchScript exporter
    refuses adaptive pooling to a size known only at run time; the graph's inputs are
    multiples of the stride, so the fixed pool is the same operation."""
    def symbolic(g, mask, output_size):  # noqa: ANN001: the exporter's calling convention
        return g.op("AveragePool", mask, kernel_shape_i=[COARSE_STRIDE] * 2, strides_i=[COARSE_STRIDE] * 2)

    torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::adaptive_avg_pool2d", opset)


def export_onnx(weights: str | Path | None, path: str | Path, opset: int = DEFAULT_OPSET,
                overwrite: bool = False) -> dict:
    """Write DistillMatch ``weights`` (a shipped name or a path; None: the default) as
    one ONNX graph with dynamic tile height and width, its provenance in the metadata.
    The file appears whole or not at all; an existing one is kept unless ``overwrite``."""
    target = Path(path)
    if opset not in OPSETS:
        raise UsageError(f"--opset {opset}: DistillMatch exports at opsets {OPSETS.start} to {OPSETS.stop - 1}")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent}: output folder does not exist")
    try:
        import onnx
    except ImportError as exc:
        raise UsageError(f"exporting to ONNX needs the onnx package: pip install 'dmreg[onnx]' ({exc})") from exc
    model, card = load_model(weights)
    buffer = io.BytesIO()
    h, w = 12 * COARSE_STRIDE, 16 * COARSE_STRIDE  # any size: every one is dynamic in the graph
    example = (torch.rand(1, 1, h, w), torch.rand(1, 1, h, w), torch.ones(1, h, w, dtype=torch.bool),
               torch.ones(1, h, w, dtype=torch.bool), torch.tensor([0]), torch.tensor([-1]))
    pixels, cells = {1: "height", 2: "width"}, {0: "cells"}
    dynamic = {"image0": {2: "height", 3: "width"}, "image1": {2: "height", 3: "width"}, "valid0": pixels,
               "valid1": pixels, **{name: cells for name in OUTPUTS}}
    with torch.no_grad(), _cell_pooling(opset), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # only on sizes that are fixed: channels
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's: see the docstring
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(_MatchGraph(model).eval(), example, buffer, dynamo=False, opset_version=opset,
                          input_names=list(INPUTS), output_names=list(OUTPUTS), dynamic_axes=dynamic)
    proto = onnx.load_from_string(buffer.getvalue())
    provenance = OnnxCard(weights=card.name, weights_sha256=card.sha256, opset=opset,
                          exporter=f"torch.onnx TorchScript exporter, torch {torch.__version__}",
                          coarse_stride=COARSE_STRIDE, config=card.config, provenance=card.provenance)
    onnx.helper.set_model_props(proto, provenance.metadata())
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_atomic(target, data)
    return {"path": str(target), "weights": card.name, "weights_sha256": card.sha256, "opset": opset,
            "bytes": len(data)}


def check_export(weights: str | Path | None, onnx_path: str | Path, pairs: Sequence[TilePair]) -> dict:
    """Match ``pairs`` with the PyTorch weights and the exported graph, both on the CPU:
    each backend's match count and time (first call, set-up included), the matches they
    share, the largest coordinate difference between those, and whether that all lies
    within MAX_DIFF_PX and COUNT_TOLERANCE."""
    backends = {"torch": get_matcher("distillmatch", str(weights) if weights else None, "cpu"),
                "onnx": get_matcher("distillmatch", str(onnx_path), "cpu")}
    found, seconds = {}, {}
    for key, matcher in backends.items():
        start = time.perf_counter()
        found[key] = matcher.match(pairs)
        seconds[key] = time.perf_counter() - start
    compared = [compare_matches(a, b) for a, b in zip(found["torch"], found["onnx"])]
    counts = {key: sum(len(m) for m in found[key]) for key in found}
    common = sum(c for c, _ in compared)
    max_diff = max((d for _, d in compared), default=0.0)
    allowed = COUNT_TOLERANCE * max(counts.values())
    return {"pairs": len(pairs), "matches_torch": counts["torch"], "matches_onnx": counts["onnx"], "common": common,
            "max_diff_px": max_diff, "seconds_torch": seconds["torch"], "seconds_onnx": seconds["onnx"],
            "agrees": max_diff <= MAX_DIFF_PX and max(counts.values()) - common <= allowed}


def compare_matches(a: TileMatches, b: TileMatches) -> tuple[int, float]:
    """(how many of ``a``'s matches ``b`` has too, the largest distance in either image
    between two such): the same match is ``b``'s nearest one, if within SAME_MATCH_PX."""
    if not len(a) or not len(b):
        return 0, 0.0
    gap = np.maximum(_distances(a.ref_xy, b.ref_xy), _distances(a.mov_xy, b.mov_xy))
    nearest = gap.min(axis=1)
    same = nearest <= SAME_MATCH_PX
    return int(same.sum()), float(nearest[same].max(initial=0.0))


def _distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.linalg.norm(p[:, None, :] - q[None, :, :], axis=-1)
