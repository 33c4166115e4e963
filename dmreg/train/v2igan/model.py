"""The V2I-GAN networks: a conditional U-Net generator and a PatchGAN discriminator.

Conventions: images are float32 tensors [B x 1 x H x W] in [0, 1] (the pipeline's
1-99 percentile stretch); ``kind`` is an int64 tensor [B] of indices into ``KINDS``. H and
W must be multiples of the generator's ``stride`` (``translate`` in weights.py pads).

pix2pix (Isola et al. 2017) is the template, shrunk to train on one CPU core, with three
changes that follow from what the generator is for:

- One generator makes all three infrareds. ``kind`` picks a learned embedding that
  modulates (FiLM: per-channel scale and shift) the bottleneck and every decoder level, so
  the shared encoder learns what the scene is and the embedding says how that kind of
  sensor renders it (vegetation bright in NIR, warm bodies bright in thermal). The FiLM
  layers start at the identity, so the untrained generator is a plain U-Net.
- GroupNorm instead of BatchNorm: statistics per image, so a batch of 1 (``translate``)
  behaves as training did and there is no train/eval switch in the normalisation.
- Upsampling is bilinear then a 3x3 convolution, not a transposed convolution: no
  checkerboard pattern for the matcher to lock onto.

pix2pix's noise is dropout in the decoder, kept at test time. Here dropout is active in
training and, at inference, only when a ``torch.Generator`` is passed: the default output
is deterministic, a seeded one gives a reproducible variation (augmentation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("nir", "swir", "thermal")
"""The infrareds the generator makes: reflected near infrared (~0.8 um), reflected
short-wave infrared (1.6-2.2 um), emitted long-wave thermal infrared (8-14 um)."""

RECEPTIVE_FIELD = 70
"""Pixels one discriminator score sees (4x4 kernels, strides 2, 2, 2, 1, 1)."""


@dataclass(frozen=True)
class V2IConfig:
    """Sizes of both networks; stored in the weights card, so keys are only ever added."""

    width: int = 16            # generator channels at full resolution; doubled per level up to width_cap
    levels: int = 4            # downsamplings: the generator's stride is 2 ** levels
    width_cap: int = 128       # no generator level is wider than this
    embed_dim: int = 16        # size of the learned kind embedding that drives FiLM
    dropout: float = 0.25      # pix2pix-style noise in the two deepest decoder levels
    disc_width: int = 32       # discriminator channels after its first layer (then x2, x4, x8)

    @property
    def stride(self) -> int:
        return 2 ** self.levels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> V2IConfig:
        """Strict: an unknown key is an error (a card from a newer dmreg, or a typo)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown V2I-GAN config keys {unknown}; known: {', '.join(sorted(known))}")
        return cls(**d)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class _ConvBlock(nn.Module):
    """3x3 convolution, GroupNorm, LeakyReLU: the unit every level is made of."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        k = 4 if stride == 2 else 3  # 4x4 stride-2 as in pix2pix: every input pixel is used evenly
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=1, bias=False)
        self.norm = _norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class _FiLM(nn.Module):
    """Per-channel scale and shift from the kind embedding; zero-initialised so the
    untrained layer is the identity and the kinds diverge only as the data asks."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(emb)[:, :, None, None].chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class _SeededDropout(nn.Module):
    """Channel-wise dropout that is on in training and, in eval mode, only when given a
    ``torch.Generator``: then the masks come from it, so a seed reproduces the output."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.p <= 0.0:
            return x
        if self.training:
            return F.dropout2d(x, self.p, training=True)
        if gen is None:
            return x
        keep = torch.rand(x.shape[:2], generator=gen, device=gen.device) >= self.p
        return x * keep.to(x.dtype).to(x.device)[:, :, None, None] / (1.0 - self.p)


class _Down(nn.Module):
    """Halve the resolution (4x4, stride 2), then one 3x3 block."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.down = _ConvBlock(c_in, c_out, stride=2)
        self.conv = _ConvBlock(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.down(x))


class _Up(nn.Module):
    """Double the resolution, join the encoder's skip, modulate by kind, optional noise."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, embed_dim: int, dropout: float):
        super().__init__()
        self.up = _ConvBlock(c_in, c_out)
        self.conv = _ConvBlock(c_out + c_skip, c_out)
        self.film = _FiLM(embed_dim, c_out)
        self.drop = _SeededDropout(dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor,
                gen: torch.Generator | None) -> torch.Tensor:
        x = self.up(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        x = self.film(self.conv(torch.cat([x, skip], dim=1)), emb)
        return self.drop(x, gen)


def _level_widths(conf: V2IConfig) -> list[int]:
    """Channels at full resolution and after each downsampling."""
    return [min(conf.width * 2 ** i, conf.width_cap) for i in range(conf.levels + 1)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class V2IGenerator(nn.Module):
    """Visible [B x 1 x H x W] + kind [B] -> infrared [B x 1 x H x W], both in [0, 1]."""

    def __init__(self, conf: V2IConfig = V2IConfig()):
        super().__init__()
        self.conf = conf
        w = _level_widths(conf)
        self.embed = nn.Embedding(len(KINDS), conf.embed_dim)
        self.stem = _ConvBlock(1, w[0])
        self.downs = nn.ModuleList(_Down(w[i], w[i + 1]) for i in range(conf.levels))
        self.bottleneck = _ConvBlock(w[-1], w[-1])
        self.bottleneck_film = _FiLM(conf.embed_dim, w[-1])
        # decoder, deepest first; the two deepest levels carry the dropout noise
        self.ups = nn.ModuleList(
            _Up(w[i + 1], w[i], w[i], conf.embed_dim, conf.dropout if i >= conf.levels - 2 else 0.0)
            for i in reversed(range(conf.levels))
        )
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, visible: torch.Tensor, kind: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """``gen``: the source of inference-time noise (None: deterministic in eval mode)."""
        h, w = visible.shape[-2:]
        if h % self.conf.stride or w % self.conf.stride:
            raise ValueError(f"image size {h} x {w} is not a multiple of the generator stride {self.conf.stride}")
        emb = self.embed(kind)
        x = self.stem(visible)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.bottleneck_film(self.bottleneck(skips.pop()), emb)
        for up in self.ups:
            x = up(x, skips.pop(), emb, gen)
        return torch.sigmoid(self.head(x))


class PatchDiscriminator(nn.Module):
    """(visible, infrared, kind) -> a map of real/fake scores, one per 70 x 70 patch.

    The visible image is concatenated as a channel (the pix2pix conditional
    discriminator: it judges whether the infrared fits THIS scene, not whether it is some
    infrared) and the kind as constant one-hot planes, so a thermal-looking NIR is fake.
    Layers as pix2pix's 70 x 70 PatchGAN (4x4 convolutions, strides 2, 2, 2, 1, 1; receptive
    field 70 px), narrower. For a 128 px input the map is 14 x 14; no sigmoid (LSGAN).
    """

    def __init__(self, conf: V2IConfig = V2IConfig()):
        super().__init__()
        d = conf.disc_width
        c_in = 2 + len(KINDS)
        self.layers = nn.Sequential(
            nn.Conv2d(c_in, d, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), _norm(2 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * d, 4 * d, 4, 2, 1, bias=False), _norm(4 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * d, 8 * d, 4, 1, 1, bias=False), _norm(8 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(8 * d, 1, 4, 1, 1),
        )

    def forward(self, visible: torch.Tensor, infrared: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        planes = F.one_hot(kind, len(KINDS)).to(visible.dtype)[:, :, None, None].expand(-1, -1, *visible.shape[-2:])
        return self.layers(torch.cat([visible, infrared, planes], dim=1))


__all__ = ["KINDS", "RECEPTIVE_FIELD", "PatchDiscriminator", "V2IConfig", "V2IGenerator", "count_parameters"]
