"""Matchers and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable

from dmreg.errors import UsageError
from dmreg.matchers.base import MODALITIES, Matcher, TileMatches, TilePair
from dmreg.matchers.sift import SiftMatcher
from dmreg.matchers.structural import StructuralMatcher


def _distillmatch(weights: str | None, device: str) -> Matcher:
    if weights is not None and weights.lower().endswith(".onnx"):
        return _distillmatch_onnx(weights, device)
    try:
        from dmreg.matchers.distillmatch.matcher import DistillMatchMatcher
    except ImportError as exc:  # torch is an optional dependency
        raise UsageError(f"the distillmatch matcher needs PyTorch: pip install 'dmreg[distillmatch]' ({exc})") from exc
    return DistillMatchMatcher(weights=weights, device=device)


def _distillmatch_onnx(path: str, device: str) -> Matcher:
    """An exported graph (`dmreg models export`) runs through ONNX Runtime, without PyTorch."""
    if device not in ("auto", "cpu"):
        raise UsageError(f"--device {device}: an ONNX DistillMatch graph runs on the CPU; use --device cpu or auto")
    try:
        from dmreg.matchers.distillmatch.onnx_matcher import OnnxDistillMatchMatcher
    except ImportError as exc:
        raise UsageError(f"running {path} needs ONNX Runtime: pip install 'dmreg[onnx]' ({exc})") from exc
    return OnnxDistillMatchMatcher(path)


MATCHERS: dict[str, Callable[[str | None, str], Matcher]] = {
    "structural": lambda weights, device: StructuralMatcher(),
    "sift": lambda weights, device: SiftMatcher(),
    "distillmatch": _distillmatch,
}
MATCHER_DESCRIPTIONS = {
    "structural": "classical, cross-modal: oriented-gradient templates with multi-channel ZNCC (CPU)",
    "sift": "classical, same modality only: SIFT, ratio test, mutual check (CPU)",
    "distillmatch": "learned, cross-modal: DistillMatch student network (CPU or CUDA; needs weights; "
                    "--weights FILE.onnx runs an exported graph through ONNX Runtime)",
}


def get_matcher(name: str, weights: str | None = None, device: str = "auto") -> Matcher:
    """A matcher by name; UsageError listing the valid names otherwise. ``weights`` and
    ``device`` matter to learned matchers only."""
    try:
        factory = MATCHERS[name]
    except KeyError:
        raise UsageError(f"unknown matcher {name!r}; choose one of: {', '.join(MATCHERS)}") from None
    return factory(weights, device)


__all__ = ["MATCHERS", "MATCHER_DESCRIPTIONS", "MODALITIES", "Matcher", "TileMatches", "TilePair", "get_matcher"]
