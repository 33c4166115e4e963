"""V2I-GAN losses: adversarial (LSGAN), masked L1, and a sign-invariant gradient-structure term.

All take images [B x 1 x H x W] in [0, 1] and a validity mask [B x 1 x H x W] (bool or
float; nodata and padding are 0) and average over valid pixels only: a padded border or
a nodata hole teaches the generator nothing.

Why these three (the pix2pix recipe plus one term):

- L1 to the real infrared fixes the intensities, polarity included (in thermal, people
  and sunlit roofs are bright whatever they look like in the visible). L1 rather than L2
  because L2 blurs more and is dominated by the few large errors of misjudged objects.
- LSGAN (Mao et al. 2017; CycleGAN's choice for pix2pix-style models) rather than the
  original log loss: its gradient does not vanish when the discriminator wins early. Hinge
  would do as well in principle; LSGAN needs no extra choice of margin and its losses read
  directly (0.25 each for a discriminator that cannot tell). The adversarial term is what
  keeps texture sharp where L1 alone would average the plausible infrareds into grey.
- Structure: the matcher trained on these images needs the edges to be where the scene
  has them, but an infrared edge may have either sign with respect to the visible one
  and may vanish (shadows do not exist in thermal). SSIM compares signed intensities, so
  it punishes a correct polarity flip the same as a wrong edge and double-counts what L1
  already says. The term here compares gradient ORIENTATIONS in the doubled-angle
  representation (gx^2 - gy^2, 2 gx gy), which is the same for g and -g: a locally
  normalised correlation of these vectors is 1 where both images have edges along the
  same direction whatever their signs, about 0 where one image has an edge and the other
  is flat or textured at random, and -1 for perpendicular edges. Being normalised, it
  ignores contrast gain (well above the flat threshold), which the per-tile stretch
  changes anyway; flat areas in both images count as agreeing, a flat area against an
  edge does not. (The stabilising constant belongs inside each image's energy: placed
  once in the denominator, as a first version did, a flat output scored 1 against any
  target, and a GAN trained with it learnt within 200 steps to paint flat images.) It is also the validation metric, because it is fair to a
  baseline (the visible image itself) whose polarity is wrong by construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

STRUCTURE_SIGMA = 1.5
"""Standard deviation (px) of the Gaussian window over which gradient orientations are
compared: the scale of SSIM's window, a few pixels around each edge."""

STRUCTURE_FLAT_GRADIENT = 0.02
"""A derivative (per pixel, images in [0, 1]) below which an area counts as flat: the
stabilising constant is its 4th power (doubled-angle vectors are quadratic in the
gradient and their products quartic). 0.02 is about the noise of a stretched 8-bit band."""


def _sobel(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dx, d/dy) per pixel: Sobel divided by 8 so a ramp of slope s gives s."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=img.dtype, device=img.device) / 8.0
    kernels = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), kernels)
    return g[:, :1], g[:, 1:]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian window, reflected at the border, channels independent."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum())
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _erode(valid: torch.Tensor) -> torch.Tensor:
    """Valid pixels whose 3x3 neighbourhood is valid: the gradient at the edge of a
    nodata fill is an artefact of the fill, not of the scene."""
    return -F.max_pool2d(-valid.float(), 3, stride=1, padding=1)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return x.mean()
    w = valid.to(x.dtype).expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1.0)


def structure_similarity_map(a: torch.Tensor, b: torch.Tensor, sigma: float = STRUCTURE_SIGMA,
                             flat_gradient: float = STRUCTURE_FLAT_GRADIENT) -> torch.Tensor:
    """Per-pixel sign-invariant gradient-structure similarity of a and b, in [-1, 1]
    ([B x 1 x H x W]); the module docstring says what it measures and why."""
    ax, ay = _sobel(a)
    bx, by = _sobel(b)
    va = torch.cat([ax * ax - ay * ay, 2.0 * ax * ay], dim=1)  # doubled angle: same for g and -g
    vb = torch.cat([bx * bx - by * by, 2.0 * bx * by], dim=1)
    stats = _gaussian_blur(torch.cat([(va * vb).sum(1, keepdim=True), (va * va).sum(1, keepdim=True),
                                      (vb * vb).sum(1, keepdim=True)], dim=1), sigma)
    cross, energy_a, energy_b = stats[:, :1], stats[:, 1:2], stats[:, 2:]
    c = flat_gradient ** 4
    # c inside EACH energy (not once in the denominator): flat against flat is 1, flat
    # against edges is ~0 (an all-flat output must not score as agreeing), and by
    # Cauchy-Schwarz the value never exceeds 1
    return (cross + c) / torch.sqrt((energy_a + c) * (energy_b + c))


def structure_similarity(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``structure_similarity_map`` over valid pixels (a scalar; 1 is identical
    structure). Unchanged when either image is inverted (x -> 1 - x) or rescaled."""
    s = structure_similarity_map(a, b)
    return _masked_mean(s, None if valid is None else _erode(valid))


def structure_loss(fake: torch.Tensor, real: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1 - structure_similarity: 0 for identical edge structure, up to 2."""
    return 1.0 - structure_similarity(fake, real, valid)


def masked_l1(fake: torch.Tensor, real: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference over valid pixels."""
    return _masked_mean((fake - real).abs(), valid)


def patch_weights(valid: torch.Tensor | None, score_shape: torch.Size) -> torch.Tensor | None:
    """Valid share of the pixels under each discriminator score (area-averaged to the
    score map): a patch that is mostly padding counts for little, one with none for nothing."""
    if valid is None:
        return None
    return F.adaptive_avg_pool2d(valid.float(), score_shape[-2:])


def _weighted_mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    if w is None:
        return x.mean()
    return (x * w).sum() / w.sum().clamp_min(1e-6)


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor,
                             weights: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 [(D(real) - 1)^2 + D(fake)^2], patch-weighted."""
    return 0.5 * (_weighted_mean((real_scores - 1.0) ** 2, weights) + _weighted_mean(fake_scores ** 2, weights))


def lsgan_generator_loss(fake_scores: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(D(fake) - 1)^2, patch-weighted: the generator wants its images scored real."""
    return _weighted_mean((fake_scores - 1.0) ** 2, weights)


__all__ = ["STRUCTURE_FLAT_GRADIENT", "STRUCTURE_SIGMA", "lsgan_discriminator_loss", "lsgan_generator_loss",
           "masked_l1", "patch_weights", "structure_loss", "structure_similarity", "structure_similarity_map"]
