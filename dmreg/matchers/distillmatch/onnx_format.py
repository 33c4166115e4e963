"""What a DistillMatch ONNX file holds: the graph's inputs and outputs and the metadata
that ties it to the weights it was exported from.

Standard library only (and the torch-free config): the exporter writes this contract,
the ONNX Runtime matcher reads it, and neither side needs the other's dependencies.

The graph (batch 1, tile height and width any multiples of the coarse stride) takes

- image0, image1: float32 [1 x 1 x H x W] in [0, 1]
- valid0, valid1: bool [1 x H x W], usable pixels
- modality0, modality1: int64 [1], the weights' category row, or PREDICT_MODALITY

and gives, for every coarse cell i of image0 (N = H/8 * W/8 cells):

- log_confidence: float32 [N], the best dual-softmax log-confidence in its row
- best1: int64 [N], the image1 cell that has it
- mutual: bool [N], whether cell i is also best1[i]'s best in its column
- kpts0, kpts1: float32 [N x 2], the refined match (image pixels, corner convention)

Selecting matches (mutual, above the threshold, at most max_matches) is left to the
caller: a variable number of matches is not a shape the graph can have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from dmreg.errors import InputError
from dmreg.matchers.distillmatch.config import DistillMatchConfig

FORMAT = "dmreg.distillmatch.onnx/1"
DEFAULT_OPSET = 17
OPSETS = range(14, 21)
"""Opsets a graph can be exported at: 14 brought the attention's operators, 20 is the last
of torch's TorchScript exporter."""
INPUTS = ("image0", "image1", "valid0", "valid1", "modality0", "modality1")
OUTPUTS = ("log_confidence", "best1", "mutual", "kpts0", "kpts1")
PREDICT_MODALITY = -1
"""The modality label that asks the network to predict the category itself."""


@dataclass(frozen=True)
class OnnxCard:
    """The provenance an exported graph carries in its ONNX metadata_props."""

    weights: str
    weights_sha256: str
    opset: int
    exporter: str
    coarse_stride: int
    config: DistillMatchConfig
    provenance: dict

    def metadata(self) -> dict[str, str]:
        """ONNX metadata_props: string keys to string values."""
        return {"format": FORMAT, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "opset": str(self.opset), "exporter": self.exporter, "coarse_stride": str(self.coarse_stride),
                "config": json.dumps(self.config.to_dict()), "provenance": json.dumps(self.provenance)}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str) -> OnnxCard:
        """The card of an exported graph; InputError for any other ONNX file."""
        if meta.get("format") != FORMAT:
            raise InputError(f"{source}: not a DistillMatch ONNX export (metadata format {meta.get('format')!r}, "
                             f"expected {FORMAT!r}); make one with `dmreg models export NAME --onnx PATH`")
        try:
            return cls(weights=meta["weights"], weights_sha256=meta["weights_sha256"], opset=int(meta["opset"]),
                       exporter=meta["exporter"], coarse_stride=int(meta["coarse_stride"]),
                       config=DistillMatchConfig.from_dict(json.loads(meta["config"])),
                       provenance=json.loads(meta["provenance"]))
        except (KeyError, ValueError, TypeError, InputError) as exc:
            raise InputError(f"{source}: incomplete or invalid DistillMatch ONNX metadata ({exc!r})") from exc
