"""The V2I-GAN: networks, losses, data split, a tiny training run, resuming, weights and translate.

Everything runs on examples/data (the repository's sample rasters); the TNO part of the
data test runs only where ../shared/data exists. CPU, a few seconds in all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmreg.train.split import HELD_OUT_SCENES, TNO_VALIDATION_PAIRS
from dmreg.train.v2igan.data import PairCrops, catalogue, split
from dmreg.train.v2igan.losses import (lsgan_discriminator_loss, lsgan_generator_loss, masked_l1, structure_loss,
                                       structure_similarity)
from dmreg.train.v2igan.model import KINDS, PatchDiscriminator, V2IConfig, V2IGenerator
from dmreg.train.v2igan.train import run, training_step
from dmreg.train.v2igan.weights import V2IWeightsError, generate, load_generator, read_card, translate

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "data"
SHARED = REPO.parent / "shared" / "data"
SMALL = V2IConfig(width=8, levels=3, width_cap=32, embed_dim=4, disc_width=8)
TINY_RUN = ["--examples-dir", str(EXAMPLES), "--size", "32", "--batch", "2", "--width", "8", "--levels", "3",
            "--disc-width", "8", "--val-crops", "1", "--log-every", "1", "--save-every", "1", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(n, 1, size, size, dtype=torch.bool)
    valid[0, :, :, : size // 4] = False  # a padded strip
    return {"visible": torch.rand(n, 1, size, size, generator=g), "infrared": torch.rand(n, 1, size, size, generator=g),
            "valid": valid, "kind": torch.arange(n) % len(KINDS)}


def test_generator_and_discriminator_shapes_and_range():
    torch.manual_seed(0)
    gen, disc = V2IGenerator(SMALL), PatchDiscriminator(SMALL)
    b = _batch(3, 48)
    with torch.no_grad():
        out = gen(b["visible"], b["kind"])
    assert out.shape == (3, 1, 48, 48)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with torch.no_grad():
        scores = disc(b["visible"], out, b["kind"])
    assert scores.shape[:2] == (3, 1) and scores.shape[-1] == 48 // 8 - 2
    with pytest.raises(ValueError, match="multiple of the generator stride"):
        gen(torch.rand(1, 1, 36, 36), torch.zeros(1, dtype=torch.int64))


def test_kind_changes_the_output_once_film_is_trained():
    torch.manual_seed(0)
    gen = V2IGenerator(SMALL).eval()
    x = torch.rand(1, 1, 32, 32)
    nir, thermal = gen(x, torch.tensor([0])), gen(x, torch.tensor([2]))
    assert torch.equal(nir, thermal)  # FiLM starts at the identity
    for name, p in gen.named_parameters():
        if "film" in name:
            torch.nn.init.normal_(p, std=0.5)
    assert not torch.equal(gen(x, torch.tensor([0])), gen(x, torch.tensor([2])))


def test_losses_finite_and_structure_ignores_contrast_inversion():
    b = _batch()
    a, r, v = b["visible"], b["infrared"], b["valid"]
    for loss in (masked_l1(a, r, v), structure_loss(a, r, v), lsgan_generator_loss(torch.randn(2, 1, 4, 4)),
                 lsgan_discriminator_loss(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4))):
        assert torch.isfinite(loss)
    smooth = torch.nn.functional.avg_pool2d(a, 3, 1, 1)  # an image with real edges
    assert structure_similarity(smooth, 1.0 - smooth).item() == pytest.approx(1.0, abs=1e-5)
    assert structure_similarity(smooth, r, v).item() == pytest.approx(structure_similarity(smooth, 1.0 - r, v).item(),
                                                                      abs=1e-5)
    assert structure_similarity(smooth, 0.7 * smooth + 0.2).item() > 0.99  # gain, edges above the flat threshold
    flat = torch.full_like(a, 0.5)
    assert structure_loss(flat, flat).item() == pytest.approx(0.0, abs=1e-6)
    assert structure_similarity(flat, smooth).item() < 0.1  # a flat output is no match for edges
    assert masked_l1(a, a + 1.0 * ~v, v).item() == pytest.approx(0.0, abs=1e-7)  # invalid pixels do not count


def test_one_training_step_stays_finite():
    torch.manual_seed(0)
    gen, disc = V2IGenerator(SMALL).train(), PatchDiscriminator(SMALL).train()
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), 2e-4), torch.optim.Adam(disc.parameters(), 2e-4)
    batch = PairCrops(catalogue(EXAMPLES, None), 32, seed=0).batch(1, 2)
    losses = training_step(gen, disc, opt_g, opt_d, batch, {"adversarial": 1.0, "l1": 50.0, "structure": 10.0})
    assert all(np.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p).all() for p in [*gen.parameters(), *disc.parameters()])


def test_data_split_and_crops():
    sources = catalogue(EXAMPLES, None)
    assert {s.kind for s in sources} == set(KINDS)
    assert not any(s.scene in HELD_OUT_SCENES for s in sources)
    data = PairCrops(sources, 128, seed=3)
    b1, b2 = data.batch(7, 4), data.batch(7, 4)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)  # a batch is a function of (seed, step)
    assert b1["visible"].shape == (4, 1, 128, 128) and b1["valid"].dtype == torch.bool
    assert 0.0 <= float(b1["infrared"].min()) and float(b1["infrared"].max()) <= 1.0
    if not (SHARED / "tno_cddfuse").is_dir():
        pytest.skip("../shared/data absent: TNO split not checked")
    train, val = split(catalogue(EXAMPLES, SHARED))
    assert sorted(s.scene for s in val) == sorted(TNO_VALIDATION_PAIRS)
    assert {s.collection for s in train} == {"landsat", "tno"}
    assert not {s.scene for s in train} & set(TNO_VALIDATION_PAIRS)


def test_tiny_run_writes_weights_that_translate(tmp_path):
    out = tmp_path / "tiny"
    summary = run(["--out", str(out), "--steps", "3", *TINY_RUN])
    assert summary["resumed_from"] == 0 and summary["step"] == 3
    card = read_card(out)
    assert card.config == V2IConfig(width=8, levels=3, disc_width=8)
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert prov["steps"] == 3 and prov["parameters"]["generator"] > 0 and prov["data"]
    assert {"l1", "structure"} <= set(prov["validation"]["train_scenes_nir_crops (not held out)"]["v2igan"])
    assert out.with_name("tiny.samples.png").stat().st_size > 0
    assert len(out.with_name("tiny.log.jsonl").read_text().splitlines()) == 3

    gen, _ = load_generator(out)
    img = np.random.default_rng(0).random((37, 45)).astype(np.float32)  # not a multiple of the stride
    for kind in KINDS:
        ir = translate(img, kind, weights=out)
        assert ir.shape == img.shape and ir.dtype == np.float32
        assert 0.0 <= ir.min() and ir.max() <= 1.0
    assert np.array_equal(translate(img, "thermal", weights=out), generate(gen, img, "thermal"))  # deterministic
    a = translate(img, "nir", np.random.default_rng(1), weights=out)
    assert np.array_equal(a, translate(img, "nir", np.random.default_rng(1), weights=out))  # seeded noise
    with pytest.raises(ValueError, match="unknown infrared kind"):
        translate(img, "sar", weights=out)
    with pytest.raises(V2IWeightsError, match="not found"):
        translate(img, "nir", weights=tmp_path / "nothing")


def test_resume_continues_from_the_checkpoint(tmp_path):
    out = tmp_path / "resumed"
    assert run(["--out", str(out), "--steps", "2", *TINY_RUN])["resumed_from"] == 0
    ckpt = torch.load(out.with_name("resumed.ckpt.pt"), weights_only=True)
    assert ckpt["step"] == 2
    with open(out.with_name("resumed.log.jsonl"), "a") as f:  # a line past the checkpoint, as a kill leaves
        f.write(json.dumps({"step": 3}) + "\n")
    summary = run(["--out", str(out), "--steps", "4", *TINY_RUN])
    assert summary["resumed_from"] == 2 and summary["steps_run"] == 2 and summary["step"] == 4
    steps = [json.loads(line)["step"] for line in out.with_name("resumed.log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert torch.load(out.with_name("resumed.ckpt.pt"), weights_only=True)["step"] == 4
    with pytest.raises(SystemExit, match="other settings"):
        run(["--out", str(out), "--steps", "5", *TINY_RUN[:-2], "--threads", "1", "--batch", "3"])
