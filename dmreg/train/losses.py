"""DistillMatch training losses: coarse matching, fine refinement, distillation, modality.

Ground truth comes from the known homography between the two images of a pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmreg.matchers.distillmatch.model import (COARSE_STRIDE, FINE_STRIDE, DistillMatch, cell_validity,
                                              window_centres)


def warp_points(h: Tensor, pts: Tensor) -> Tensor:
    """Apply homographies [B x 3 x 3] to points [B x N x 2] (corner convention both sides)."""
    ones = torch.ones_like(pts[..., :1])
    p = torch.cat([pts, ones], dim=-1) @ h.transpose(1, 2)
    return p[..., :2] / p[..., 2:].clamp(min=1e-8)


def cell_centres(h: int, w: int, device: torch.device) -> Tensor:
    """Image position [N x 2] (x, y) of each coarse cell's centre (8c + 4): one pixel
    before the refinement window's centre, which sits on a whole fine pixel."""
    return window_centres(h, w, device) - 1.0


def coarse_ground_truth(h_0to1: Tensor, valid0: Tensor, valid1: Tensor, grid_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(batch, cell0, cell1) for every valid image0 cell whose centre lands on a valid
    image1 pixel: the cell pairs the coarse level must find."""
    gh, gw = grid_hw
    b = h_0to1.shape[0]
    cells0, cells1 = cell_validity(valid0, gh, gw), cell_validity(valid1, gh, gw)
    centres = cell_centres(gh, gw, h_0to1.device)
    warped = warp_points(h_0to1, centres.expand(b, -1, -1))
    hgt, wid = valid1.shape[-2:]
    col1, row1 = warped[..., 0].floor().long(), warped[..., 1].floor().long()
    inside = (col1 >= 0) & (row1 >= 0) & (col1 < wid) & (row1 < hgt)
    c0 = centres.long()
    ok0 = valid0[:, c0[:, 1], c0[:, 0]]
    ok1 = torch.zeros_like(inside)
    bi, ni = inside.nonzero(as_tuple=True)
    ok1[bi, ni] = valid1[bi, row1[bi, ni], col1[bi, ni]]
    keep = inside & ok0 & ok1 & cells0
    bb, i0 = keep.nonzero(as_tuple=True)
    i1 = (row1[bb, i0] // COARSE_STRIDE) * gw + (col1[bb, i0] // COARSE_STRIDE)
    matchable = cells1[bb, i1]  # the model masks cells that are mostly invalid
    return bb[matchable], i0[matchable], i1[matchable]


def coarse_loss(log_conf: Tensor, gt: tuple[Tensor, Tensor, Tensor], gamma: float = 2.0) -> Tensor:
    """Focal negative log-likelihood of the dual-softmax confidence at true cell pairs,
    from log-confidences so that no pair's gradient vanishes."""
    b, i0, i1 = gt
    if len(b) == 0:
        return log_conf.sum() * 0.0
    log_p = log_conf[b, i0, i1]
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


def fine_loss(model: DistillMatch, out: dict, h_0to1: Tensor, gt: tuple[Tensor, Tensor, Tensor],
              max_pairs: int = 2048) -> Tensor:
    """Euclidean error (pixels) of the refined correspondence the matcher outputs (the
    midpoint of both refinement directions, see DistillMatch.refine_pairs) for true
    cell pairs whose exact target lies inside the refinement window: training and
    inference use the same estimate."""
    b, i0, i1 = gt
    if len(b) > max_pairs:
        keep = torch.randperm(len(b), device=b.device)[:max_pairs]
        b, i0, i1 = b[keep], i0[keep], i1[keep]
    gh, gw = out["coarse0"].shape[-2:]
    centres = window_centres(gh, gw, b.device)
    target = warp_points(h_0to1[b], centres[i0][:, None])[:, 0]
    reach = (model.conf.fine_window // 2) * FINE_STRIDE
    usable = ((target - centres[i1]).abs() <= reach).all(dim=-1)
    if not usable.any():
        return out["fine0"].sum() * 0.0
    b, i0, i1 = b[usable], i0[usable], i1[usable]
    offset0, offset1, _ = model.refine_pairs(out, b, i0, i1)
    kpts0_in_1 = warp_points(h_0to1[b], (centres[i0] + offset0)[:, None])[:, 0]
    return (centres[i1] + offset1 - kpts0_in_1).norm(dim=-1).mean()


def distillation_loss(projected: Tensor, teacher: Tensor, valid_cells: Tensor | None = None) -> Tensor:
    """1 - cosine similarity between projected student features and teacher features
    resampled to the student grid. Cosine rather than L2: teacher feature norms differ
    between models and layers and carry little meaning, their directions carry the
    semantics; a scale-free loss also lets one recipe serve every teacher."""
    target = F.interpolate(teacher, size=projected.shape[-2:], mode="bilinear", align_corners=False)
    cos = F.cosine_similarity(projected, target, dim=1)  # B x h x w
    if valid_cells is not None:
        return (1 - cos)[valid_cells].mean() if valid_cells.any() else cos.sum() * 0.0
    return (1 - cos).mean()


def warp_features(feat: Tensor, h_0to1: Tensor, out_hw: tuple[int, int], stride: int) -> tuple[Tensor, Tensor]:
    """Resample image0-frame features [B x D x h x w] (cells of ``stride`` pixels) onto
    image1's coarse grid (out_hw cells of COARSE_STRIDE pixels); returns (features,
    valid cells). This makes the teacher's view of the visible image the target for the
    other modality too: the same ground should get the same semantic feature."""
    b = feat.shape[0]
    oh, ow = out_hw
    centres1 = cell_centres(oh, ow, feat.device)
    pts0 = warp_points(torch.linalg.inv(h_0to1), centres1.expand(b, -1, -1))
    fh, fw = feat.shape[-2:]
    grid = torch.stack([pts0[..., 0] / (fw * stride) * 2 - 1, pts0[..., 1] / (fh * stride) * 2 - 1], dim=-1)
    sampled = F.grid_sample(feat, grid.view(b, oh, ow, 2), mode="bilinear", align_corners=False)
    valid = (grid.abs() <= 1).all(dim=-1).view(b, oh, ow)
    return sampled, valid


def modality_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels)
