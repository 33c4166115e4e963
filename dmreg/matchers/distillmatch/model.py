"""The DistillMatch network: student backbone, modality cross-injection, coarse attention
matching with dual-softmax, and sub-pixel fine refinement. Readable in one sitting:
blocks first, helpers next, the public class last.

Shapes: B batch, H x W image, h x w = H/8 x W/8 coarse grid, N = h*w coarse cells.
Coordinates follow the GDAL convention ((0, 0) is the top-left corner of the top-left
pixel), in input-image pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmreg.matchers.distillmatch.config import DistillMatchConfig

COARSE_STRIDE = 8
FINE_STRIDE = 2


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class StudentBackbone(nn.Module):
    """A small ResNet-style CNN with a feature pyramid: coarse features at 1/8 for
    matching, fine features at 1/2 for refinement. One input channel: every modality is
    a single band here, and colour would only let the student cheat on optical pairs."""

    def __init__(self, conf: DistillMatchConfig):
        super().__init__()
        c1, c2, c3 = conf.widths
        self.stem = nn.Sequential(nn.Conv2d(1, c1, 5, 2, 2, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
                                  ResidualBlock(c1, c1, 1))
        self.down4 = nn.Sequential(ResidualBlock(c1, c2, 2), ResidualBlock(c2, c2, 1))
        self.down8 = nn.Sequential(ResidualBlock(c2, c3, 2), ResidualBlock(c3, c3, 1), ResidualBlock(c3, c3, 1))
        self.coarse_out = nn.Conv2d(c3, conf.coarse_dim, 1)
        self.lateral4 = nn.Conv2d(c2, conf.coarse_dim, 1)
        self.smooth4 = nn.Sequential(nn.Conv2d(conf.coarse_dim, c2, 3, 1, 1), nn.BatchNorm2d(c2), nn.ReLU(inplace=True))
        self.lateral2 = nn.Conv2d(c1, c2, 1)
        self.fine_out = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(c2, conf.fine_dim, 1))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image [B x 1 x H x W] -> (coarse [B x D x H/8 x W/8], fine [B x Df x H/2 x W/2])."""
        x2 = self.stem(image)
        x4 = self.down4(x2)
        x8 = self.down8(x4)
        coarse = self.coarse_out(x8)
        up4 = self.smooth4(F.interpolate(coarse, size=x4.shape[-2:], mode="bilinear", align_corners=False)
                           + self.lateral4(x4))
        fine = self.fine_out(F.interpolate(up4, size=x2.shape[-2:], mode="bilinear", align_corners=False)
                             + self.lateral2(x2))
        return coarse, fine


class ModalityInjection(nn.Module):
    """Predicts each image's modality category and injects it into the OTHER image.

    The category embedding conditions the other image's coarse features by FiLM
    (per-channel scale and shift). FiLM rather than an added token: it reaches every
    feature directly instead of only through attention, costs two small linear layers,
    and is the identity at initialisation (zero-initialised), so it cannot disturb the
    distilled features before it has learned something useful.
    """

    def __init__(self, conf: DistillMatchConfig):
        super().__init__()
        d = conf.coarse_dim
        self.classifier = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(inplace=True), nn.Linear(d, conf.n_modalities))
        self.table = nn.Parameter(torch.randn(conf.n_modalities, conf.modality_dim) * 0.1)
        self.film = nn.Linear(conf.modality_dim, 2 * d)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def classify(self, feat: Tensor) -> Tensor:
        """Modality logits [B x n_modalities] from mean and max pooled coarse features."""
        pooled = torch.cat([feat.mean(dim=(2, 3)), feat.amax(dim=(2, 3))], dim=1)
        return self.classifier(pooled)

    def embed(self, logits: Tensor, label: Tensor | None) -> Tensor:
        """A given label wins; otherwise the predicted category distribution."""
        weights = F.one_hot(label, self.table.shape[0]).float() if label is not None else logits.softmax(-1)
        return weights @ self.table

    def inject(self, feat: Tensor, other_embedding: Tensor) -> Tensor:
        scale, shift = self.film(other_embedding).chunk(2, dim=-1)
        return feat * (1 + scale[..., None, None]) + shift[..., None, None]


class AttentionBlock(nn.Module):
    """Multi-head attention of x onto source, then an MLP on [x, message]; residual.

    Keys and values come from the source grid average-pooled by ``reduction`` (spatial-
    reduction attention): a 640 x 640 tile has 6400 coarse tokens, and attending to 1600
    pooled ones instead cuts the cost four-fold at little loss, since neighbouring coarse
    cells carry similar context. Queries keep full resolution.
    """

    def __init__(self, dim: int, heads: int, reduction: int):
        super().__init__()
        self.heads = heads
        self.reduction = reduction
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.merge = nn.Linear(dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(2 * dim, dim, bias=False))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, source: Tensor, hw: tuple[int, int]) -> Tensor:
        b, n, d = x.shape
        if self.reduction > 1:
            grid = source.transpose(1, 2).reshape(b, d, *hw)
            source = F.avg_pool2d(grid, self.reduction, ceil_mode=True).flatten(2).transpose(1, 2)
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        message = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(source)), split(self.v(source)))
        message = self.norm1(self.merge(message.transpose(1, 2).reshape(b, n, d)))
        return x + self.norm2(self.mlp(torch.cat([x, message], dim=-1)))


class CoarseTransformer(nn.Module):
    """Interleaved self- and cross-attention over both images' coarse tokens."""

    def __init__(self, conf: DistillMatchConfig):
        super().__init__()
        d, heads, r = conf.coarse_dim, conf.n_heads, conf.attention_reduction
        self.self_blocks = nn.ModuleList(AttentionBlock(d, heads, r) for _ in range(conf.n_layers))
        self.cross_blocks = nn.ModuleList(AttentionBlock(d, heads, r) for _ in range(conf.n_layers))

    def forward(self, f0: Tensor, f1: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        for self_block, cross_block in zip(self.self_blocks, self.cross_blocks):
            f0, f1 = self_block(f0, f0, hw), self_block(f1, f1, hw)
            f0, f1 = cross_block(f0, f1, hw), cross_block(f1, f0, hw)
        return f0, f1


def sine_positional_encoding(dim: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed 2-D sinusoidal encoding [dim x h x w]: half the channels for x, half for y."""
    quarter = dim // 4
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None, None] * freq
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :, None] * freq
    pe = torch.cat([torch.sin(xs).expand(h, w, quarter), torch.cos(xs).expand(h, w, quarter),
                    torch.sin(ys).expand(h, w, quarter), torch.cos(ys).expand(h, w, quarter)], dim=-1)
    if pe.shape[-1] < dim:
        pe = F.pad(pe, (0, dim - pe.shape[-1]))
    return pe.permute(2, 0, 1).to(dtype)


def log_dual_softmax(f0: Tensor, f1: Tensor, temperature: float, valid0: Tensor | None = None,
                     valid1: Tensor | None = None) -> Tensor:
    """Log of the confidence matrix [B x N0 x N1] = softmax over rows * softmax over
    columns, i.e. 2 * sim - logsumexp over rows - logsumexp over columns. Kept in log
    space: training gets a gradient even for pairs whose confidence underflows. Without
    autograd the matrix is updated in place, so inference holds one N0 x N1 matrix and
    saves two full passes over it (a fifth of the CPU time of a 640 px pair)."""
    sim = torch.einsum("bnd,bmd->bnm", f0 / (f0.shape[-1] * temperature), f1)
    in_place = not sim.requires_grad
    if valid0 is not None and valid1 is not None:
        mask = valid0[:, :, None] & valid1[:, None, :]
        sim = sim.masked_fill_(~mask, -1e4) if in_place else sim.masked_fill(~mask, -1e4)
    lse_cols = sim.logsumexp(dim=1, keepdim=True)
    lse_rows = sim.logsumexp(dim=2, keepdim=True)
    if in_place:
        return sim.mul_(2).sub_(lse_cols).sub_(lse_rows)
    return 2 * sim - lse_cols - lse_rows


def mutual_nearest(conf: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(batch, i0, i1, score) of cells that are each other's best match above threshold
    (any monotone score: confidence, or log-confidence with a log threshold)."""
    best = (conf == conf.amax(dim=2, keepdim=True)) & (conf == conf.amax(dim=1, keepdim=True)) & (conf > threshold)
    b, i, j = best.nonzero(as_tuple=True)
    return b, i, j, conf[b, i, j]


def fine_windows(fine: Tensor, window: int, batch: Tensor | None = None, cells: Tensor | None = None) -> Tensor:
    """Fine-feature windows centred on coarse cells: [M x window^2 x Df] for the given
    (batch, cell) pairs, or [B x N x window^2 x Df] for every cell when none are given.

    The window of cell (r, c) is centred on fine pixel (4r + 2, 4c + 2), i.e. on image
    position (8r + 5, 8c + 5) in the corner convention. Only the requested windows are
    gathered: unfolding whole maps would copy window^2 times the fine features."""
    b, d, hf, wf = fine.shape
    step = COARSE_STRIDE // FINE_STRIDE
    pad = window // 2
    grid_w = wf // step
    if batch is None or cells is None:
        n = (hf // step) * grid_w
        batch = torch.arange(b, device=fine.device).repeat_interleave(n)
        cells = torch.arange(n, device=fine.device).repeat(b)
        return fine_windows(fine, window, batch, cells).view(b, n, window * window, d)
    # window of cell (r, c) spans fine rows 4r + 2 - pad ... 4r + 2 + pad: pad so all are inside
    padded = F.pad(fine, (pad, pad, pad, pad))
    offsets = torch.arange(window, device=fine.device)
    rows = (cells // grid_w * step + 2)[:, None] + offsets  # padded coords: +pad -pad cancel
    cols = (cells % grid_w * step + 2)[:, None] + offsets
    picked = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # M x k x k x D
    return picked.reshape(len(cells), window * window, d)


def window_centres(h: int, w: int, device: torch.device) -> Tensor:
    """Image position [N x 2] (x, y) of each coarse cell's fine-window centre."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).float() * COARSE_STRIDE + 5.0


def refine(win0: Tensor, win1: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Sub-pixel offset [M x 2] (image pixels) of image0's window centre inside image1's
    window, as the expectation of a softmax heatmap, and the heatmap's spread [M]."""
    centre = win0[:, (window * window) // 2]  # M x Df
    sim = torch.einsum("md,mkd->mk", centre, win1) / math.sqrt(centre.shape[-1])
    heat = sim.softmax(dim=-1).view(-1, window, window)
    grid = torch.arange(window, device=heat.device, dtype=heat.dtype) - window // 2
    ex = (heat.sum(dim=1) * grid).sum(-1)
    ey = (heat.sum(dim=2) * grid).sum(-1)
    var = (heat.sum(dim=1) * grid**2).sum(-1) - ex**2 + (heat.sum(dim=2) * grid**2).sum(-1) - ey**2
    return torch.stack([ex, ey], dim=-1) * FINE_STRIDE, var.clamp(min=0).sqrt() * FINE_STRIDE


class DistillMatch(nn.Module):
    """Student matcher. ``forward`` takes a dict:

    - image0, image1: [B x 1 x H x W] float in [0, 1], H and W multiples of 8
    - valid0, valid1 (optional): [B x H x W] bool, usable pixels
    - modality0, modality1 (optional): [B] int64 category labels (else predicted)
    - features0 (optional, inference): image0's (coarse, fine) backbone output from an
      earlier call on the same image0; only image1 then goes through the backbone

    and returns a dict (the input is never modified):

    - coarse0, coarse1: [B x D x h x w] backbone coarse features (distillation target side)
    - modality_logits0/1: [B x n_modalities]
    - log_conf: [B x N0 x N1] log of the dual-softmax confidence
    - fine0, fine1: [B x Df x H/2 x W/2]
    - matches: dict with batch [M], kpts0 [M x 2], kpts1 [M x 2], confidence [M], spread [M]
    """

    def __init__(self, conf: DistillMatchConfig = DistillMatchConfig()):
        super().__init__()
        self.conf = conf
        self.backbone = StudentBackbone(conf)
        self.injection = ModalityInjection(conf)
        self.transformer = CoarseTransformer(conf)
        self.projector = nn.Sequential(nn.Conv2d(conf.coarse_dim, conf.coarse_dim, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(conf.coarse_dim, conf.teacher_dim, 1))

    def forward(self, data: dict[str, Tensor], match: bool = True) -> dict:
        image0, image1 = data["image0"], data["image1"]
        b = image0.shape[0]
        if "features0" in data:  # the same image0 as an earlier call: its features are known
            coarse0, fine0 = data["features0"]
            coarse1, fine1 = self.backbone(image1)
        else:
            coarse, fine = self.backbone(torch.cat([image0, image1], dim=0))
            coarse0, coarse1, fine0, fine1 = coarse[:b], coarse[b:], fine[:b], fine[b:]
        out: dict = {"coarse0": coarse0, "coarse1": coarse1, "fine0": fine0, "fine1": fine1}

        logits0, logits1 = self.injection.classify(coarse0), self.injection.classify(coarse1)
        out["modality_logits0"], out["modality_logits1"] = logits0, logits1
        emb0 = self.injection.embed(logits0, data.get("modality0"))
        emb1 = self.injection.embed(logits1, data.get("modality1"))
        f0, f1 = self.injection.inject(coarse0, emb1), self.injection.inject(coarse1, emb0)

        h, w = f0.shape[-2:]
        pe = sine_positional_encoding(f0.shape[1], h, w, f0.device, f0.dtype)
        t0 = (f0 + pe).flatten(2).transpose(1, 2)
        t1 = (f1 + pe).flatten(2).transpose(1, 2)
        t0, t1 = self.transformer(t0, t1, (h, w))
        valid0 = cell_validity(data.get("valid0"), h, w)
        valid1 = cell_validity(data.get("valid1"), h, w)
        with _full_precision(t0):  # bf16 would quantise similarities to ~1/100 of the temperature
            out["log_conf"] = log_dual_softmax(t0.float(), t1.float(), self.conf.temperature, valid0, valid1)
        if match:
            out["matches"] = self.match(out)
        return out

    def project(self, coarse: Tensor) -> Tensor:
        """Student coarse features mapped to the teacher's dimension (training only)."""
        return self.projector(coarse)

    def match(self, out: dict) -> dict[str, Tensor]:
        """Mutual nearest neighbours of the confidence matrix, refined to sub-pixel."""
        b_ids, i_ids, j_ids, score = self.coarse_matches(out["log_conf"])
        return self.refine_matches(out, b_ids, i_ids, j_ids, score)

    def coarse_matches(self, log_conf: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(batch, cell0, cell1, confidence) of the mutual nearest neighbours above the
        threshold, the ``max_matches`` most confident when there are more."""
        threshold = math.log(self.conf.match_threshold) if self.conf.match_threshold > 0 else -math.inf
        b_ids, i_ids, j_ids, score = mutual_nearest(log_conf, threshold)
        score = score.exp()
        if len(score) > self.conf.max_matches:
            keep = score.topk(self.conf.max_matches).indices
            b_ids, i_ids, j_ids, score = b_ids[keep], i_ids[keep], j_ids[keep], score[keep]
        return b_ids, i_ids, j_ids, score

    def refine_matches(self, out: dict, b_ids: Tensor, i_ids: Tensor, j_ids: Tensor,
                       score: Tensor) -> dict[str, Tensor]:
        """The matches dict of coarse cell pairs, refined to sub-pixel on ``out``'s fine
        features (fine0, fine1: [B x Df x H/2 x W/2]); ``score`` is their confidence."""
        h, w = (s // (COARSE_STRIDE // FINE_STRIDE) for s in out["fine0"].shape[-2:])
        offset0, offset1, spread = self.refine_pairs(out, b_ids, i_ids, j_ids)
        centres = window_centres(h, w, score.device)
        return {"batch": b_ids, "kpts0": centres[i_ids] + offset0, "kpts1": centres[j_ids] + offset1,
                "confidence": score, "spread": spread, "cells0": i_ids, "cells1": j_ids}

    def refine_pairs(self, out: dict, b_ids: Tensor, i_ids: Tensor,
                     j_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sub-pixel (offset0, offset1, spread): where the match sits relative to the
        window centres in each image. Refined both ways: image0's centre found in image1
        (c0 <-> c1 + forward) and image1's centre found in image0 (c0 + backward <-> c1),
        and the midpoint of the two correspondences kept. A mapping that is affine over
        the window keeps midpoints, so the midpoint is as exact as either one, while the
        bias of centre-to-window refinement (the same both ways: +0.14 px per axis on
        identical images with v0.1) falls on both ends and cancels."""
        k = self.conf.fine_window
        with _full_precision(out["fine0"]):  # sub-pixel expectations need fp32 weights and sums
            win0 = fine_windows(out["fine0"], k, b_ids, i_ids).float()
            win1 = fine_windows(out["fine1"], k, b_ids, j_ids).float()
            forward, spread = refine(win0, win1, k)
            backward, _ = refine(win1, win0, k)
        return backward / 2, forward / 2, spread


def _full_precision(like: Tensor) -> torch.autocast:
    """A region where autocast is off on ``like``'s device: the matching head (similarity,
    dual-softmax, soft-argmax refinement) runs in fp32 even when the caller autocasts the
    backbone and attention to bf16."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def cell_validity(valid: Tensor | None, h: int, w: int) -> Tensor | None:
    """A coarse cell is valid when most of its pixels are."""
    if valid is None:
        return None
    frac = F.adaptive_avg_pool2d(valid[:, None].float(), (h, w))
    return (frac > 0.5).flatten(1)
