"""The DistillMatch student: shapes, geometry helpers, gradients, modality injection, a
one-pair overfit, the Matcher wrapper, weight files and the CLI around them.

Everything runs on the CPU with a tiny network (SMALL) and images of 64-128 pixels;
no weights are ever downloaded (tiny random ViTs stand in for the DINOv2 teacher).
Coordinates follow dmreg's convention: (x=col, y=row), (0, 0) is the top-left corner
of the top-left pixel.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import safetensors.torch
import timm
import torch
from typer.testing import CliRunner

from dmreg.errors import InputError, UsageError
from dmreg.io.sampling import normalise_contrast
from dmreg.matchers import MATCHERS, TileMatches, TilePair, get_matcher
from dmreg.matchers.distillmatch import weights as weights_module
from dmreg.matchers.distillmatch.config import DistillMatchConfig
from dmreg.matchers.distillmatch.matcher import DistillMatchMatcher, resolve_device
from dmreg.matchers.distillmatch.model import (
    COARSE_STRIDE,
    FINE_STRIDE,
    DistillMatch,
    ModalityInjection,
    StudentBackbone,
    cell_validity,
    log_dual_softmax,
    fine_windows,
    mutual_nearest,
    refine,
    window_centres,
)
from dmreg.matchers.distillmatch.teacher import TEACHERS, load_teacher
from dmreg.matchers.distillmatch.weights import WeightsError, load_model, read_card, save_weights
from dmreg.train.homography import apply_homography, warp_image
from dmreg.train.losses import coarse_ground_truth
from dmreg.train.train import training_step
from dmreg_cli.main import app

REPO = Path(__file__).resolve().parents[1]
L7 = REPO / "examples" / "data" / "L7_ETMs.tif"
L7_SWIR2_OFFSET = REPO / "examples" / "data" / "L7_SWIR2_offset.tif"
RED, NIR = 3, 4  # 1-based bands of L7_ETMs.tif

TINY_TEACHER = {"depth": 2, "embed_dim": 48, "num_heads": 3}
SMALL = DistillMatchConfig(widths=(8, 16, 32), coarse_dim=32, fine_dim=16, n_layers=1, n_heads=2,
                           teacher_dim=TINY_TEACHER["embed_dim"], modality_dim=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(seed: int = 0, **changes: object) -> DistillMatch:
    torch.manual_seed(seed)
    conf = DistillMatchConfig(**{**SMALL.to_dict(), **changes})
    return DistillMatch(conf)


def l7_crop(band: int, size: int, row: int = 100, col: int = 100) -> np.ndarray:
    """A contrast-stretched crop of one L7 band, float32 in [0, 1]."""
    with rasterio.open(L7) as ds:
        values = ds.read(band)[row:row + size, col:col + size].astype(np.float32)
    return normalise_contrast(values, np.ones(values.shape, bool))


def rotation_shift(size: int, angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
    """image0 -> image1 pixel homography (corner convention): a rotation about the image
    centre, then a shift."""
    a = np.deg2rad(angle_deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([size / 2.0, size / 2.0])
    h = np.eye(3)
    h[:2, :2] = r
    h[:2, 2] = c - r @ c + np.asarray(shift)
    return h


def real_pair(size: int, H: np.ndarray) -> dict[str, torch.Tensor]:
    """A training batch of one: red (image0) and NIR warped by H (image1), as PairDataset makes them."""
    red, nir = l7_crop(RED, size), l7_crop(NIR, size)
    img1, valid1 = warp_image(nir, H, (size, size))
    img1[~valid1] = float(np.median(img1[valid1]))
    return {
        "image0": torch.from_numpy(red)[None, None],
        "image1": torch.from_numpy(img1)[None, None],
        "valid0": torch.ones(1, size, size, dtype=torch.bool),
        "valid1": torch.from_numpy(valid1)[None],
        "H_0to1": torch.from_numpy(H.astype(np.float32))[None],
        "modality0": torch.tensor([0]),  # optical
        "modality1": torch.tensor([1]),  # infrared
    }


def model_input(batch: dict) -> dict:
    return {k: batch[k] for k in ("image0", "image1", "valid0", "valid1")}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- 1. shapes and the geometry helpers -----------------------------------------------

def test_backbone_shapes():
    conf = SMALL
    torch.manual_seed(0)
    coarse, fine = StudentBackbone(conf)(torch.rand(3, 1, 64, 96))
    assert coarse.shape == (3, conf.coarse_dim, 64 // COARSE_STRIDE, 96 // COARSE_STRIDE)
    assert fine.shape == (3, conf.fine_dim, 64 // FINE_STRIDE, 96 // FINE_STRIDE)
    assert coarse.dtype == fine.dtype == torch.float32


def test_forward_shapes_and_match_consistency():
    model = small_model(match_threshold=0.0).eval()  # every mutual nearest neighbour is a match
    b, h, w = 2, 64, 96
    torch.manual_seed(1)
    data = {"image0": torch.rand(b, 1, h, w), "image1": torch.rand(b, 1, h, w)}
    given = {k: v.clone() for k, v in data.items()}
    with torch.no_grad():
        out = model(data)
    assert data.keys() == given.keys() and all(torch.equal(data[k], given[k]) for k in data)  # input untouched
    gh, gw, n = h // 8, w // 8, (h // 8) * (w // 8)
    assert {"coarse0", "coarse1", "fine0", "fine1", "modality_logits0", "modality_logits1", "log_conf",
            "matches"} <= out.keys()
    assert out["coarse0"].shape == out["coarse1"].shape == (b, SMALL.coarse_dim, gh, gw)
    assert out["fine0"].shape == out["fine1"].shape == (b, SMALL.fine_dim, h // 2, w // 2)
    assert out["modality_logits0"].shape == out["modality_logits1"].shape == (b, SMALL.n_modalities) == (b, 6)
    assert out["log_conf"].exp().shape == (b, n, n) and out["log_conf"].exp().dtype == torch.float32
    assert torch.isfinite(out["log_conf"].exp()).all() and (out["log_conf"].exp() >= 0).all() and (out["log_conf"].exp() <= 1).all()

    m = out["matches"]
    k = len(m["batch"])
    assert k > 0
    assert m["batch"].shape == m["confidence"].shape == m["spread"].shape == m["cells0"].shape == (k,)
    assert m["kpts0"].shape == m["kpts1"].shape == (k, 2)
    assert m["batch"].dtype == m["cells0"].dtype == m["cells1"].dtype == torch.int64
    assert all(m[key].dtype == torch.float32 for key in ("kpts0", "kpts1", "confidence", "spread"))
    assert set(m["batch"].tolist()) <= set(range(b))
    # each keypoint lies within half a refinement window of its matched cell's window centre
    centres = window_centres(gh, gw, torch.device("cpu"))
    half_reach = (SMALL.fine_window // 2) * FINE_STRIDE / 2
    assert ((m["kpts0"] - centres[m["cells0"]]).abs() <= half_reach + 1e-5).all()
    assert ((m["kpts1"] - centres[m["cells1"]]).abs() <= half_reach + 1e-5).all()
    assert (m["spread"] >= 0).all()
    assert torch.equal(m["confidence"], out["log_conf"].exp()[m["batch"], m["cells0"], m["cells1"]])


@pytest.mark.parametrize("shift", [(0.4, -0.3), (-0.25, 0.45)])
def test_refinement_recovers_a_known_sub_pixel_shift(shift):
    """The moving tile is the reference moved by a sub-pixel shift (cubic interpolation):
    matched with the shipped weights, the refined offsets must be that shift, which the
    coarse cells alone (offset 0) or a one-sided, biased refinement would miss."""
    base = l7_crop(RED, 200, row=80, col=80)
    moved = cv2.warpAffine(base, np.float32([[1, 0, -shift[0]], [0, 1, -shift[1]]]), (200, 200),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)  # moved(p) = base(p + shift)
    ref, mov = base[20:180, 20:180], np.ascontiguousarray(moved[20:180, 20:180])
    ok = np.ones(ref.shape, bool)
    (found,) = DistillMatchMatcher(weights="distillmatch-v0.2", device="cpu").match(
        [TilePair(ref, mov, ok, ok, max_offset=8)])
    offset = np.median(found.ref_xy - found.mov_xy, axis=0)
    assert len(found) >= 100
    assert np.abs(offset - shift).max() < 0.2, offset
    assert (np.sign(offset) == np.sign(shift)).all() and (np.abs(offset) > 0.5 * np.abs(shift)).all(), offset


def coordinate_map(b: int, hf: int, wf: int) -> torch.Tensor:
    """A fine map whose channel 0 holds row + 1 and channel 1 col + 1 (0 marks padding)."""
    rows = torch.arange(hf, dtype=torch.float32)[:, None].expand(hf, wf) + 1
    cols = torch.arange(wf, dtype=torch.float32)[None, :].expand(hf, wf) + 1
    return torch.stack([rows, cols])[None].repeat(b, 1, 1, 1)


@pytest.mark.parametrize("window", [3, 5, 7])
def test_fine_windows_are_centred_on_the_cell_centre(window):
    gh, gw = 3, 5
    hf, wf = gh * 4, gw * 4  # fine maps are at 1/2, coarse cells at 1/8
    fine = coordinate_map(2, hf, wf)
    wins = fine_windows(fine, window)
    assert wins.shape == (2, gh * gw, window * window, 2)
    half = window // 2
    for r in range(gh):
        for c in range(gw):
            cell = r * gw + c
            centre = wins[1, cell, (window * window) // 2]
            assert centre.tolist() == [4 * r + 2 + 1, 4 * c + 2 + 1], (r, c)
            for j in range(window * window):
                y, x = 4 * r + 2 + j // window - half, 4 * c + 2 + j % window - half
                inside = 0 <= y < hf and 0 <= x < wf
                expected = [y + 1, x + 1] if inside else [0.0, 0.0]
                assert wins[0, cell, j].tolist() == expected, (r, c, j)


def test_window_centres_are_the_fine_pixel_centres_in_image_pixels():
    gh, gw = 3, 4
    centres = window_centres(gh, gw, torch.device("cpu"))
    assert centres.shape == (gh * gw, 2) and centres.dtype == torch.float32
    for r in range(gh):
        for c in range(gw):
            assert centres[r * gw + c].tolist() == [8 * c + 5, 8 * r + 5]
            # fine pixel (4r+2, 4c+2) covers image pixels [8c+4, 8c+6): its centre is 8c+5
            assert centres[r * gw + c].tolist() == [FINE_STRIDE * (4 * c + 2) + 1, FINE_STRIDE * (4 * r + 2) + 1]


def test_refine_finds_a_peak_and_its_spread():
    torch.manual_seed(0)
    k, d = 5, 16
    win0 = torch.randn(4, k * k, d)
    win1 = -win0[:, (k * k) // 2, None].repeat(1, k * k, 1)  # every position dissimilar ...
    peaks = [(0, 0), (1, -2), (-2, 2), (2, 1)]  # (dx, dy) in fine pixels
    for m, (dx, dy) in enumerate(peaks):
        win1[m, (dy + 2) * k + (dx + 2)] = 30 * win0[m, (k * k) // 2]  # ... but one, very similar
    offset, spread = refine(win0, win1, k)
    expected = torch.tensor(peaks, dtype=torch.float32) * FINE_STRIDE
    assert torch.allclose(offset, expected, atol=1e-3)
    assert (spread < 1e-2).all()
    flat_offset, flat_spread = refine(win0, torch.zeros(4, k * k, d), k)  # no information: the window centre
    assert torch.allclose(flat_offset, torch.zeros(4, 2), atol=1e-6)
    assert torch.allclose(flat_spread, torch.full((4,), 2.0 * FINE_STRIDE), atol=1e-4)  # uniform over 5x5


def test_dual_softmax_sums_and_masking():
    torch.manual_seed(0)
    f0, f1 = torch.randn(2, 12, 8), torch.randn(2, 10, 8)
    conf = log_dual_softmax(f0, f1, 0.1).exp()
    assert conf.shape == (2, 12, 10)
    assert (conf >= 0).all() and (conf.sum(dim=2) <= 1 + 1e-5).all() and (conf.sum(dim=1) <= 1 + 1e-5).all()

    valid0 = torch.ones(2, 12, dtype=torch.bool)
    valid1 = torch.ones(2, 10, dtype=torch.bool)
    valid0[0, [1, 5]] = False
    valid1[0, [0, 9]] = False
    valid1[1, 3] = False
    masked = log_dual_softmax(f0, f1, 0.1, valid0, valid1).exp()
    assert (masked.sum(dim=2) <= 1 + 1e-5).all() and (masked.sum(dim=1) <= 1 + 1e-5).all()
    one_invalid = valid0[:, :, None] ^ valid1[:, None, :]
    assert (masked[one_invalid] < 1e-12).all()
    both_invalid = ~valid0[:, :, None] & ~valid1[:, None, :]
    assert (masked[both_invalid] <= 1.0 / (12 * 10) + 1e-9).all()
    # the valid block is what the valid cells alone would give: masking removes the rest
    for b in range(2):
        alone = log_dual_softmax(f0[b:b + 1, valid0[b]], f1[b:b + 1, valid1[b]], 0.1).exp()[0]
        assert torch.allclose(masked[b][valid0[b]][:, valid1[b]], alone, atol=1e-6)


def test_mutual_nearest_keeps_mutual_maxima_above_threshold_only():
    conf = torch.tensor([[[0.50, 0.10, 0.00, 0.00],
                          [0.60, 0.05, 0.00, 0.00],   # row max at col 0, but col 0's max is row 1 -> mutual
                          [0.00, 0.30, 0.00, 0.10],   # mutual (col 1's max is row 2)
                          [0.00, 0.00, 0.15, 0.12]]])  # mutual, but under the threshold
    b, i, j, score = mutual_nearest(conf, threshold=0.2)
    assert sorted(zip(i.tolist(), j.tolist())) == [(1, 0), (2, 1)]
    assert b.tolist() == [0, 0]
    assert torch.equal(score, conf[b, i, j])
    assert len(mutual_nearest(conf, threshold=0.7)[0]) == 0

    torch.manual_seed(0)
    conf = torch.rand(3, 20, 17) ** 4
    b, i, j, score = mutual_nearest(conf, threshold=0.05)
    expected = {(bb, ii, int(conf[bb, ii].argmax())) for bb in range(3) for ii in range(20)
                if int(conf[bb, :, int(conf[bb, ii].argmax())].argmax()) == ii and conf[bb, ii].max() > 0.05}
    assert set(zip(b.tolist(), i.tolist(), j.tolist())) == expected
    assert (score > 0.05).all()


# --- 2. gradients reach the student, never the teacher --------------------------------

def tiny_dinov2(tmp_path: Path):
    spec = TEACHERS["dinov2_vits14"]
    vit = timm.create_model(spec.timm_name, pretrained=False, img_size=spec.img_size, dynamic_img_size=True,
                            num_classes=0, **TINY_TEACHER)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0.0, 0.2)
    path = tmp_path / "tiny_dinov2.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return load_teacher("dinov2_vits14", path, **TINY_TEACHER)


@pytest.mark.parametrize("use_labels", [True, False])
def test_training_step_gradients_reach_the_student_only(tmp_path, use_labels):
    teacher = tiny_dinov2(tmp_path)
    assert teacher.dim == SMALL.teacher_dim
    model = small_model().train()
    batch = real_pair(64, rotation_shift(64, 1.0, (2.6, -1.4)))
    losses = training_step(model, teacher, batch, {}, use_labels=use_labels)
    assert {"coarse", "fine", "modality", "distill", "total"} <= losses.keys()
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()

    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"

    def norm(module_params) -> float:
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in module_params)))

    parts = {
        "backbone (coarse)": model.backbone.down8.parameters(),
        "backbone (fine)": model.backbone.fine_out.parameters(),
        "transformer": model.transformer.parameters(),
        "projector": model.projector.parameters(),
        "injection classifier": model.injection.classifier.parameters(),
        "injection FiLM": model.injection.film.parameters(),
    }  # (the category table's gradient passes through FiLM, zero at initialisation: it is zero here)
    for part, params in parts.items():
        assert norm(list(params)) > 0, f"no gradient reaches the {part}"
    for name, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, name


# --- 3. modality injection goes to the OTHER image ------------------------------------

def randomise_film(injection: ModalityInjection, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        injection.film.weight.normal_(0.0, 1.0)
        injection.film.bias.normal_(0.0, 0.5)


def test_injection_module_conditions_the_other_image():
    torch.manual_seed(0)
    inj = ModalityInjection(SMALL)
    coarse0, coarse1 = torch.randn(2, SMALL.coarse_dim, 4, 5), torch.randn(2, SMALL.coarse_dim, 4, 5)
    logits0, logits1 = inj.classify(coarse0), inj.classify(coarse1)
    assert logits0.shape == (2, SMALL.n_modalities)
    label0 = torch.tensor([0, 0])
    # at initialisation FiLM is zero: injection is exactly the identity
    for label1 in (torch.tensor([1, 2]), torch.tensor([3, 4])):
        assert torch.equal(inj.inject(coarse0, inj.embed(logits1, label1)), coarse0)
    # a given label wins over the prediction
    assert torch.equal(inj.embed(logits1, torch.tensor([2, 5])), inj.table[[2, 5]])
    assert torch.allclose(inj.embed(logits1, None), logits1.softmax(-1) @ inj.table)

    randomise_film(inj)
    emb0 = inj.embed(logits0, label0)
    own1 = [inj.inject(coarse1, emb0) for _ in (1, 2)]  # image1's features depend on image0's label only
    into0 = [inj.inject(coarse0, inj.embed(logits1, torch.tensor([m, m]))) for m in (1, 2)]
    assert torch.equal(own1[0], own1[1])
    assert not torch.allclose(into0[0], into0[1])


def capture_transformer_inputs(model: DistillMatch, data: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
    seen = []
    handle = model.transformer.register_forward_pre_hook(lambda mod, args: seen.append((args[0].clone(),
                                                                                      args[1].clone())))
    try:
        with torch.no_grad():
            out = model(data, match=False)
    finally:
        handle.remove()
    return out, *seen[0]


@pytest.fixture(scope="module")
def images64() -> dict:
    return {"image0": torch.from_numpy(l7_crop(RED, 64))[None, None],
            "image1": torch.from_numpy(l7_crop(NIR, 64, row=104, col=97))[None, None]}


def test_model_injects_each_label_into_the_other_image(images64):
    model = small_model().eval()
    randomise_film(model.injection)
    base = {**images64, "modality0": torch.tensor([0]), "modality1": torch.tensor([1])}
    out_a, t0_a, t1_a = capture_transformer_inputs(model, base)
    out_b, t0_b, t1_b = capture_transformer_inputs(model, {**base, "modality1": torch.tensor([2])})
    for key in ("coarse0", "coarse1", "fine0", "fine1", "modality_logits0", "modality_logits1"):
        assert torch.equal(out_a[key], out_b[key]), f"{key} changed with image1's label"
    assert not torch.allclose(t0_a, t0_b), "image1's label did not reach image0's features"
    assert torch.equal(t1_a, t1_b), "image1's label changed image1's own features"
    assert not torch.allclose(out_a["log_conf"], out_b["log_conf"])

    _, t0_c, t1_c = capture_transformer_inputs(model, {**base, "modality0": torch.tensor([3])})
    assert torch.equal(t0_a, t0_c) and not torch.allclose(t1_a, t1_c)


def test_injection_is_the_identity_at_initialisation(images64):
    model = small_model().eval()
    outs = [capture_transformer_inputs(model, {**images64, **labels}) for labels in (
        {}, {"modality0": torch.tensor([0]), "modality1": torch.tensor([1])},
        {"modality0": torch.tensor([5]), "modality1": torch.tensor([3])})]
    for out, t0, t1 in outs[1:]:
        assert torch.equal(out["log_conf"].exp(), outs[0][0]["log_conf"].exp())
        assert torch.equal(t0, outs[0][1]) and torch.equal(t1, outs[0][2])


# --- 4. overfitting one real cross-modal pair -----------------------------------------

OVERFIT_SIZE = 128
OVERFIT_STEPS = 150
OVERFIT_SHIFT = (5.3, -3.7)
OVERFIT_ANGLE_DEG = 2.0


@pytest.fixture(scope="module")
def overfit() -> dict:
    """The small model trained on ONE red/NIR pair (NIR warped by a known homography) with
    the coarse and fine losses of training_step. Trained once per module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # set up before the autouse one_thread fixture
    H = rotation_shift(OVERFIT_SIZE, OVERFIT_ANGLE_DEG, OVERFIT_SHIFT)
    batch = real_pair(OVERFIT_SIZE, H)
    model = small_model(seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    weights = {"coarse": 1.0, "fine": 1.0, "modality": 0.0}
    history = []
    start = time.perf_counter()
    for _ in range(OVERFIT_STEPS):
        losses = training_step(model, None, batch, weights, use_labels=False)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        out = model(model_input(batch))
    torch.set_num_threads(threads)
    return {"model": model, "batch": batch, "H": H, "history": history, "out": out, "seconds": seconds}


def test_overfit_one_real_pair_gives_accurate_matches(overfit):
    history, out, H = overfit["history"], overfit["out"], overfit["H"]
    first, last = history[0], np.mean([h["total"] for h in history[-10:]])
    assert last < 0.2 * first["total"], (first, history[-1])
    assert np.mean([h["fine"] for h in history[-10:]]) < 0.25 * first["fine"], (first, history[-1])

    m = out["matches"]
    k0, k1 = m["kpts0"].numpy().astype(np.float64), m["kpts1"].numpy().astype(np.float64)
    error = np.hypot(*(apply_homography(H, k0) - k1).T)
    summary = (f"{len(k0)} matches, {(error < 2).sum()} within 2 px, median error "
               f"{np.median(error) if len(error) else float('nan'):.3f} px, "
               f"{OVERFIT_STEPS} steps in {overfit['seconds']:.1f} s")
    print(summary)
    assert (error < 2).sum() >= 20, summary
    assert (error < 2).mean() >= 0.9, summary
    assert np.median(error) < 1.5, summary


def test_overfit_learns_every_true_cell_pair(overfit):
    """Every true cell pair the model can see becomes a confident match once the pair is
    learnt by heart. (A true pair whose dual-softmax confidence is below 1e-6 lies in the
    flat part of coarse_loss's clamp(1e-6, 1): it gets no gradient and never recovers.)"""
    batch, out = overfit["batch"], overfit["out"]
    gh, gw = out["coarse0"].shape[-2:]
    b, i0, i1 = coarse_ground_truth(batch["H_0to1"], batch["valid0"], batch["valid1"], (gh, gw))
    visible = cell_validity(batch["valid0"], gh, gw)[b, i0] & cell_validity(batch["valid1"], gh, gw)[b, i1]
    p = out["log_conf"].exp()[b[visible], i0[visible], i1[visible]]
    learnt = p > overfit["model"].conf.match_threshold
    assert learnt.float().mean() >= 0.99, (
        f"{int((~learnt).sum())} of {len(p)} true cell pairs stay unmatched, "
        f"{int((p < 1e-6).sum())} of them with confidence < 1e-6; coarse loss "
        f"{overfit['history'][0]['coarse']:.3f} -> {overfit['history'][-1]['coarse']:.3f}")


def test_ground_truth_pairs_are_cells_the_model_can_match():
    """coarse_ground_truth must not ask for a cell pair that dual_softmax masks out: its
    confidence is ~0 whatever the network does, so its loss is a constant."""
    size = 64
    H = rotation_shift(size, 0.0, (5.3, -3.7))
    valid0 = torch.ones(1, size, size, dtype=torch.bool)
    _, valid1 = warp_image(np.zeros((size, size), np.float32), H, (size, size))
    valid1 = torch.from_numpy(valid1)[None]
    grid = (size // 8, size // 8)
    b, i0, i1 = coarse_ground_truth(torch.from_numpy(H.astype(np.float32))[None], valid0, valid1, grid)
    assert len(b) > 0
    cells0, cells1 = cell_validity(valid0, *grid), cell_validity(valid1, *grid)
    bad = ~(cells0[b, i0] & cells1[b, i1])
    assert not bad.any(), (f"{int(bad.sum())} of {len(b)} ground-truth pairs use a cell masked out by the model, "
                           f"e.g. image1 cells {sorted({divmod(int(j), grid[1]) for j in i1[bad]})[:4]} (row, col)")


# --- 5. the Matcher wrapper -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A small random model saved as a weights pair; low threshold so it matches something."""
    model = small_model(seed=3, match_threshold=0.01).eval()
    stem = tmp_path_factory.mktemp("weights") / "tiny"
    save_weights(model, stem, {"teacher": "none", "steps": 0, "note": "random, for tests"})
    return stem


def tile_pairs() -> list[TilePair]:
    ref0, mov0 = l7_crop(RED, 64), l7_crop(RED, 64, row=102, col=99)
    ref_valid0, mov_valid0 = np.ones((64, 64), bool), np.ones((64, 64), bool)
    mov_valid0[:, :12] = False
    mov0[~mov_valid0] = float(np.median(mov0[mov_valid0]))
    ref1, mov1 = l7_crop(RED, 72, row=150)[:60, :70], l7_crop(NIR, 72, row=151, col=102)[:60, :70]
    ref_valid1, mov_valid1 = np.ones((60, 70), bool), np.ones((60, 70), bool)
    ref_valid1[20:40, 30:50] = False
    mov_valid1[50:, :] = False
    return [TilePair(ref0, mov0, ref_valid0, mov_valid0, ref_modality="optical", mov_modality="optical"),
            TilePair(np.ascontiguousarray(ref1), np.ascontiguousarray(mov1), ref_valid1, mov_valid1)]


def check_inside_valid(xy: np.ndarray, valid: np.ndarray) -> None:
    h, w = valid.shape
    assert ((xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)).all()
    assert valid[np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)].all()


def test_matcher_is_deterministic_and_stays_on_valid_pixels(tiny_weights):
    matcher = DistillMatchMatcher(weights=str(tiny_weights), device="cpu")
    pairs = tile_pairs()
    first, second = matcher.match(pairs), matcher.match(pairs)
    assert len(first) == len(pairs)
    for a, b, pair in zip(first, second, pairs):
        assert isinstance(a, TileMatches)
        assert np.array_equal(a.ref_xy, b.ref_xy) and np.array_equal(a.mov_xy, b.mov_xy)
        assert np.array_equal(a.confidence, b.confidence)
        assert a.ref_xy.shape == a.mov_xy.shape == (len(a), 2) and a.confidence.shape == (len(a),)
        assert len(a) > 0
        check_inside_valid(a.ref_xy, pair.ref_valid)
        check_inside_valid(a.mov_xy, pair.mov_valid)
        assert (a.confidence > 0.01).all() and (a.confidence <= 1).all()


def test_matcher_shrinks_large_tiles_and_scales_back(tiny_weights):
    matcher = DistillMatchMatcher(weights=str(tiny_weights), device="cpu", max_side=40)  # 64 px -> factor 2
    pair = tile_pairs()[0]
    (found,) = matcher.match([pair])
    assert len(found) > 0
    check_inside_valid(found.ref_xy, pair.ref_valid)
    check_inside_valid(found.mov_xy, pair.mov_valid)


def test_shrunk_tiles_give_the_true_offset_in_tile_pixels():
    """A 160 px tile matched at half size (max_side 80) must still report the true
    offset (8, 12) px, not the (4, 6) of the shrunk images: the scale-back is what this
    checks, with the shipped weights on a pair whose answer is known."""
    ref, mov = l7_crop(RED, 160, row=90, col=90), l7_crop(RED, 160, row=102, col=98)  # ref = mov + (8, 12)
    ok = np.ones((160, 160), bool)
    matcher = DistillMatchMatcher(weights="distillmatch-v0.2", device="cpu", max_side=80)
    (found,) = matcher.match([TilePair(ref, mov, ok, ok, max_offset=24)])
    offset = np.median(found.ref_xy - found.mov_xy, axis=0)
    assert len(found) >= 20
    assert np.hypot(*(offset - (8.0, 12.0))) < 2.0, offset
    assert np.hypot(*(offset - (4.0, 6.0))) > 4.0, offset


# --- 6. weight files ------------------------------------------------------------------

def test_save_and_read_card_round_trip(tmp_path):
    model = small_model(seed=1, temperature=0.05)
    provenance = {"teacher": "dinov2_vits14", "data": ["rgbn"], "steps": 7, "hardware": "CPU"}
    card = save_weights(model, tmp_path / "round", provenance)
    tensors, card_json = tmp_path / "round.safetensors", tmp_path / "round.json"
    assert tensors.is_file() and card_json.is_file()
    again = read_card(tmp_path / "round")
    for c in (card, again):
        assert c.config == model.conf
        assert c.sha256 == sha256(tensors)
        assert c.provenance == provenance
        assert c.name == "round" and c.tensors == tensors
    assert json.loads(card_json.read_text())["sha256"] == sha256(tensors)

    # plain safetensors, no pickle: the file loads without dmreg and holds the state dict
    state = safetensors.torch.load_file(tensors)
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)

    loaded, loaded_card = load_model(tmp_path / "round.safetensors")  # either file of the pair
    assert not loaded.training and loaded.conf == model.conf and loaded_card.sha256 == card.sha256
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert load_model(tmp_path / "round.json")[1].sha256 == card.sha256


def test_card_config_that_does_not_fit_the_tensors(tmp_path):
    save_weights(small_model(), tmp_path / "w", {})
    card_path = tmp_path / "w.json"
    card = json.loads(card_path.read_text())
    card["config"]["coarse_dim"] = 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="does not fit the network") as err:
        load_model(tmp_path / "w")
    assert "w.safetensors" in str(err.value) and "wrong shape" in str(err.value)
    assert err.value.exit_code == 3


def test_missing_weights_name_the_option(tmp_path):
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path / "absent")
    assert isinstance(err.value, InputError) and err.value.exit_code == 3
    message = str(err.value)
    assert "not found" in message and "--weights" in message and "absent" in message
    (tmp_path / "half.json").write_text("{}")  # a card without its tensors
    with pytest.raises(WeightsError, match="half.safetensors"):
        load_model(tmp_path / "half")


def test_unknown_config_key_is_refused(tmp_path):
    save_weights(small_model(), tmp_path / "w", {})
    card_path = tmp_path / "w.json"
    card = json.loads(card_path.read_text())
    card["config"]["n_experts"] = 8
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match="unknown DistillMatch config keys: n_experts") as err:
        load_model(tmp_path / "w")
    assert err.value.exit_code == 3


@pytest.mark.parametrize("content", [
    "not json at all",
    json.dumps({"format": "dmreg.distillmatch/0", "config": {}}),
    json.dumps({"format": "dmreg.distillmatch/1", "name": "w"}),  # no config
    json.dumps(["dmreg.distillmatch/1"]),                          # not an object
], ids=["not-json", "other-format", "no-config", "not-an-object"])
def test_malformed_card_is_an_input_error(tmp_path, content):
    """A broken card is a user's input error (exit 3), not an internal error (exit 1)."""
    save_weights(small_model(), tmp_path / "w", {})
    (tmp_path / "w.json").write_text(content)
    with pytest.raises(InputError) as err:
        load_model(tmp_path / "w")
    assert "w.json" in str(err.value)


def test_available_lists_each_card_once(tmp_path, monkeypatch):
    """Other JSON beside a card (a training log named like it) is not a second card."""
    save_weights(small_model(), tmp_path / "dm-v0", {})
    (tmp_path / "dm-v0.log.json").write_text(json.dumps([{"step": 25, "coarse": 12.0}]))
    monkeypatch.setattr(weights_module, "WEIGHTS_DIR", tmp_path)
    assert [c.name for c in weights_module.available()] == ["dm-v0"]


def test_shipped_card_without_tensors_is_skipped(tmp_path, monkeypatch):
    """A card whose .safetensors is absent (e.g. an install that left it out) is not
    available, and asking for other weights still says what is shipped."""
    save_weights(small_model(), tmp_path / "good", {})
    (tmp_path / "orphan.json").write_text((tmp_path / "good.json").read_text())
    monkeypatch.setattr(weights_module, "WEIGHTS_DIR", tmp_path)
    assert [c.name for c in weights_module.available()] == ["good"]
    with pytest.raises(WeightsError, match="shipped weights: good"):
        load_model("orphan")


# --- 7. the registry and the device ---------------------------------------------------

def test_get_matcher_describes_weights_and_device(tiny_weights):
    assert "distillmatch" in MATCHERS
    matcher = get_matcher("distillmatch", weights=str(tiny_weights), device="cpu")
    info = matcher.describe()
    assert info["name"] == matcher.name == "distillmatch"
    assert info["weights_sha256"] == sha256(tiny_weights.with_suffix(".safetensors"))
    assert info["device"] == "cpu"
    assert info["weights"] == "tiny"
    json.dumps(info)  # goes into the report as is


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_cuda_is_a_usage_error():
    for device in ("cuda", "cuda:0"):
        with pytest.raises(UsageError, match="CUDA is not available") as err:
            resolve_device(device)
        assert err.value.exit_code == 2
    assert resolve_device("auto") == torch.device("cpu")


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    for bogus in ("bogus", "gpu", "meta"):
        with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bogus)


# --- 8. the CLI -----------------------------------------------------------------------

def test_register_with_missing_weights_exits_3(tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, [
        "register", str(L7), str(L7_SWIR2_OFFSET), "--matcher", "distillmatch", "--weights", "/nonexistent",
        "--device", "cpu", "--ref-band", "3", "--dry-run", "--report", str(report)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.output
    assert result.exit_code == 3, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error:"), text
    assert "nonexistent" in errors[0] and "--weights" in errors[0] and "not found" in errors[0]
    failed = json.loads(report.read_text())  # the failure report says what went wrong
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == 3 and failed["error"]["type"] == "WeightsError"
    assert "--weights" in failed["error"]["message"]


def test_models_json_lists_the_matchers():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert set(listing["matchers"]) == {"structural", "sift", "distillmatch"}
    assert all(isinstance(text, str) and text for text in listing["matchers"].values())
    assert isinstance(listing["weights"], list)
    for w in listing["weights"]:
        assert {"name", "path", "sha256", "provenance"} <= w.keys()
