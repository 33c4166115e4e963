"""The bootstrap's replicates of a least-squares model come from summed per-block
normal equations: the same predictions as refitting every replicate on its matches."""

from __future__ import annotations

import numpy as np
import pytest

from dmreg.estimate import uncertainty
from dmreg.estimate.models import fit


@pytest.mark.parametrize("kind", uncertainty.LINEAR_KINDS)
def test_normal_equation_replicates_equal_refits(kind):
    rng = np.random.default_rng(4)
    src = rng.uniform(0, 6000, (1500, 2))
    dst = src + [4.2, -1.3] + 4e-4 * src[:, ::-1] + 2e-8 * src ** 2 + rng.normal(0, 0.3, src.shape)
    blocks = (src[:, 0] // 1500).astype(int) * 4 + (src[:, 1] // 1500).astype(int)
    members = [np.flatnonzero(blocks == b) for b in range(16)]
    draws = list(rng.integers(0, 16, (40, 16)))
    at = rng.uniform(-500, 6500, (30, 2))
    model = fit(kind, src, dst)
    refitted = uncertainty._refits(model, kind, src, dst, members, draws, at)
    summed = uncertainty._linear_refits(kind, src, dst, blocks, 16, draws, at)
    assert len(summed) == len(refitted) == 40
    np.testing.assert_allclose(np.array(summed), np.array(refitted), atol=1e-8)
    spread = np.ptp(np.array(summed), axis=0).max()
    assert spread > 0.01  # the replicates differ: the test compares something


def test_singular_normal_equations_fall_back_to_refits():
    """Every match on one line: an affine fit has no unique answer there."""
    x = np.linspace(0, 1000, 200)
    src = np.column_stack([x, 2 * x])
    dst = src + 1.0
    blocks = (np.arange(200) // 20).astype(int)
    draws = list(np.random.default_rng(0).integers(0, 10, (5, 10)))
    assert uncertainty._linear_refits("affine", src, dst, blocks, 10, draws, src[:3]) is None
