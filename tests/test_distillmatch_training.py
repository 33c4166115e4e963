"""DistillMatch training: the teacher sees the optical image whatever the pair order, its
target reaches the other image through the homography, inexact layers train the coarse
level only, modality rows follow their names, the matching head stays fp32 under
autocast, the real-data catalogue and its split, and runs resume from checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine

from dmreg.matchers.base import MODALITIES
from dmreg.matchers.distillmatch.config import LEGACY_MODALITIES, DistillMatchConfig
from dmreg.matchers.distillmatch.model import DistillMatch
from dmreg.errors import InputError
from dmreg.train.catalogue import ORIGINS, catalogue
from dmreg.train.data import PairDataset
from dmreg.train.modalities import simulations, with_modalities
from dmreg.train.split import is_validation
from dmreg.train.train import main as train_main
from dmreg.train.train import teacher_targets, training_step
from helpers import DATA
from helpers import write_raster as _write_raster

SMALL = DistillMatchConfig(widths=(8, 16, 32), coarse_dim=32, fine_dim=16, n_layers=1, n_heads=2,
                           teacher_dim=3, modality_dim=8, n_modalities=len(MODALITIES), modalities=MODALITIES)
OPTICAL, SAR, MAP = (MODALITIES.index(m) for m in ("optical", "sar", "map"))


def write_raster(path: Path, data: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_raster(path, data, **kwargs)


class SpyTeacher(torch.nn.Module):
    """Remembers what it saw; its 'features' are the image's 8 x 8 means, three times."""

    patch_size = 8
    dim = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen = images.clone()
        return torch.nn.functional.avg_pool2d(images, 8).expand(-1, 3, -1, -1)


def _batch(modality0: list[int], modality1: list[int], h_0to1: torch.Tensor | None = None) -> dict:
    b = len(modality0)
    gen = torch.Generator().manual_seed(0)
    return {"image0": torch.rand(b, 1, 64, 64, generator=gen), "image1": torch.rand(b, 1, 64, 64, generator=gen),
            "valid0": torch.ones(b, 64, 64, dtype=torch.bool), "valid1": torch.ones(b, 64, 64, dtype=torch.bool),
            "modality0": torch.tensor(modality0), "modality1": torch.tensor(modality1),
            "H_0to1": (torch.eye(3) if h_0to1 is None else h_0to1).expand(b, 3, 3).clone(),
            "exact": torch.ones(b, dtype=torch.bool)}


# --- the distillation target ------------------------------------------------------------

def test_teacher_sees_the_optical_image_of_each_pair_whatever_its_side():
    batch = _batch([SAR, OPTICAL, MAP, OPTICAL], [OPTICAL, SAR, SAR, OPTICAL])
    teacher = SpyTeacher()
    has, _, _ = teacher_targets(teacher, batch, (8, 8))
    assert has.tolist() == [True, True, False, True]  # SAR vs map: no optical image, no target
    expected = torch.stack([batch["image1"][0], batch["image0"][1], batch["image0"][3]])
    assert torch.equal(teacher.seen, expected)


@pytest.mark.parametrize("optical_side", [0, 1])
def test_teacher_target_reaches_the_other_image_through_the_homography(optical_side):
    """A 16 px shift of image1 against image0: the target on image1's grid is the
    teacher's map of image0 shifted by two cells, whichever image the teacher saw."""
    shift = torch.tensor([[1.0, 0.0, 16.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    modality = [[OPTICAL], [SAR]] if optical_side == 0 else [[SAR], [OPTICAL]]
    batch = _batch(*modality, h_0to1=shift)
    gradient = torch.arange(64.0).expand(64, 64)[None, None] / 64  # brightness grows with x
    batch[f"image{optical_side}"] = gradient
    has, (t0, v0), (t1, v1) = teacher_targets(SpyTeacher(), batch, (8, 8))
    seen = torch.nn.functional.avg_pool2d(gradient, 8)[0, 0]
    own, other = ((t0, v0), (t1, v1)) if optical_side == 0 else ((t1, v1), (t0, v0))
    np.testing.assert_allclose(own[0][0, 0][own[1][0]].numpy(), seen.expand(8, 8)[own[1][0]].numpy(), atol=1e-5)
    if optical_side == 0:  # image1 cell c shows image0 cell c - 2
        np.testing.assert_allclose(other[0][0, 0, :, 2:].numpy(), seen[:, :6].expand(8, 6).numpy(), atol=1e-5)
        assert not other[1][0, :, :2].any()
    else:  # image0 cell c shows image1 cell c + 2
        np.testing.assert_allclose(other[0][0, 0, :, :6].numpy(), seen[:, 2:].expand(8, 6).numpy(), atol=1e-5)
        assert not other[1][0, :, 6:].any()


def test_pairs_aligned_only_to_a_few_pixels_train_no_refinement():
    torch.manual_seed(0)
    model = DistillMatch(SMALL).train()
    batch = _batch([OPTICAL, OPTICAL], [SAR, SAR], h_0to1=torch.tensor([[1.0, 0, 2.5], [0, 1, -1.5], [0, 0, 1]]))
    exact = training_step(model, None, batch, {}, use_labels=False)
    batch["exact"][:] = False
    inexact = training_step(model, None, batch, {}, use_labels=False)
    assert exact["fine"] > 0 and inexact["fine"] == 0
    assert torch.isclose(exact["coarse"], inexact["coarse"])


def test_training_step_with_a_teacher_and_no_optical_pair_has_a_zero_distillation_loss():
    model = DistillMatch(SMALL).train()
    losses = training_step(model, SpyTeacher(), _batch([SAR, MAP], [MAP, SAR]), {}, use_labels=True)
    assert losses["distill"] == 0 and torch.isfinite(losses["total"])


# --- modality categories ----------------------------------------------------------------

def test_every_modality_category_has_training_examples_or_a_simulation():
    made = set(simulations("hand"))
    real = {s.modality for s in catalogue(DATA, DATA)}
    assert "unknown" not in MODALITIES and "thermal" in MODALITIES
    assert set(MODALITIES) - {"elevation"} <= made | real  # elevation: real DEMs, see the catalogue test
    assert "thermal" in real  # the Landsat 5 thermal band is no longer lumped with NIR


def test_legacy_weights_rows_are_carried_over_by_name():
    torch.manual_seed(0)
    legacy = DistillMatch(DistillMatchConfig(**{**SMALL.to_dict(), "modalities": LEGACY_MODALITIES}))
    new = with_modalities(legacy, MODALITIES)
    assert new.conf.modalities == MODALITIES
    for name in ("optical", "infrared", "sar", "elevation", "map"):
        assert torch.equal(new.injection.table[MODALITIES.index(name)],
                           legacy.injection.table[LEGACY_MODALITIES.index(name)])
    # thermal starts from what legacy weights learned it as: infrared
    assert torch.equal(new.injection.table[MODALITIES.index("thermal")],
                       legacy.injection.table[LEGACY_MODALITIES.index("infrared")])
    assert torch.equal(new.backbone.stem[0].weight, legacy.backbone.stem[0].weight)


def test_config_refuses_names_that_do_not_fit_the_rows():
    with pytest.raises(InputError, match="modality"):
        DistillMatchConfig(n_modalities=5, modalities=MODALITIES)


# --- precision --------------------------------------------------------------------------

def test_matching_head_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = DistillMatch(SMALL).eval()
    data = {k: v for k, v in _batch([OPTICAL], [SAR]).items() if k in ("image0", "image1")}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(data)
    assert out["coarse0"].dtype == torch.bfloat16  # the backbone did run in bf16
    assert out["log_conf"].dtype == torch.float32
    assert out["matches"]["kpts0"].dtype == torch.float32 and out["matches"]["kpts1"].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_agree_with_the_cpu():
    torch.manual_seed(0)
    model = DistillMatch(SMALL).eval()
    data = {k: v for k, v in _batch([OPTICAL], [OPTICAL]).items() if k in ("image0", "image1")}
    data["image1"] = data["image0"].clone()
    with torch.inference_mode():
        cpu = model(data)["matches"]
        gpu_model = model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu = gpu_model({k: v.cuda() for k, v in data.items()})["matches"]
    common = np.intersect1d(cpu["cells0"].numpy(), gpu["cells0"].cpu().numpy())
    assert len(common) >= 0.9 * len(cpu["cells0"])
    k_cpu = {int(c): k for c, k in zip(cpu["cells0"], cpu["kpts1"])}
    k_gpu = {int(c): k for c, k in zip(gpu["cells0"].cpu(), gpu["kpts1"].cpu())}
    diff = torch.stack([(k_cpu[c] - k_gpu[c]).abs().max() for c in common])
    assert float(diff.median()) < 0.05


# --- real data catalogue and split -------------------------------------------------------

@pytest.fixture(scope="module")
def shared_layout(tmp_path_factory) -> Path:
    """A miniature of ../shared/data: two TerraMind sites (one held out), one BigEarthNet
    patch of each split, one TNO pair of each split; textures instead of imagery."""
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    geo = {"crs": "EPSG:32622", "transform": Affine(10.0, 0, 500_000.0, 0, -10.0, 4_000_000.0)}
    texture = lambda *shape: (rng.random(shape) * 1000).astype(np.int16)  # noqa: E731
    for site in ("609U_541L_3_0", "282D_485L_3_3"):
        tm = root / "terramind_terramesh"
        write_raster(tm / "S2L2A" / f"{site}.tif", texture(12, 72, 72), **geo)
        write_raster(tm / "S1RTC" / f"{site}.tif", rng.normal(-12, 3, (2, 72, 72)).astype(np.float32), **geo)
        write_raster(tm / "DEM" / f"{site}.tif", texture(72, 72), **geo)
        write_raster(tm / "LULC" / f"{site}.tif", rng.integers(1, 6, (72, 72)).astype(np.uint8), **geo)
    for patch in ("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_37_88",   # training acquisition
                  "S2A_MSIL2A_20171101T094131_N9999_R036_T35VNJ_00_00"):  # held out
        folder = root / "bigearthnet" / "ben_v2_mock" / patch
        write_raster(folder / "s2_10m_B02_B03_B04_B08.tif", texture(4, 40, 40).astype(np.uint16))
        write_raster(folder / "s1_VV_VH_dB.tif", rng.normal(-12, 3, (40, 40)).astype(np.float32))
    for name in ("01", "03"):  # 03 is held out
        for kind in ("vi", "ir"):
            write_raster(root / "tno_cddfuse" / kind / f"{name}.tif", texture(48, 48).astype(np.uint8))
            (root / "tno_cddfuse" / kind / f"{name}.tif").rename(root / "tno_cddfuse" / kind / f"{name}.png")
    return root


def test_catalogue_reads_every_collection_with_modalities_and_frames(shared_layout, tmp_path):
    sources = [s for s in catalogue(tmp_path, tmp_path, shared_layout) if s.collection != "landsat"]
    by_collection = {c: [s for s in sources if s.collection == c] for c in ("terramind", "bigearthnet", "tno")}
    terramind = {(s.scene, s.modality, s.frame) for s in by_collection["terramind"]}
    assert ("609U_541L_3_0", "sar", "s1") in terramind and ("609U_541L_3_0", "elevation", "dem") in terramind
    assert ("609U_541L_3_0", "map", "s2") in terramind and ("609U_541L_3_0", "infrared", "s2") in terramind
    assert any(s.categorical for s in by_collection["terramind"])
    assert {s.modality for s in by_collection["bigearthnet"]} == {"optical", "infrared", "sar"}
    assert {s.modality for s in by_collection["tno"]} == {"optical", "thermal"}
    held_out = {s.scene for s in sources if s.validation}
    assert held_out == {"282D_485L_3_3", "S2A_MSIL2A_20171101T094131_N9999_R036_T35VNJ_00_00", "03"}


def test_training_pairs_leave_validation_scenes_out_and_flag_inexact_frames(shared_layout):
    sources = catalogue(DATA, DATA, shared_layout)
    ds = PairDataset(sources, crop_size=64, length=150, seed=0, simulate_prob=0.0)
    assert not any(is_validation(s.collection, s.scene) for s in sources if s.scene in ds.scenes)
    items = [ds[i] for i in range(len(ds))]
    assert {item["scene"] for item in items}.isdisjoint({"282D_485L_3_3", "03", "L7_ETMs"})
    pairs = {(frozenset({MODALITIES[int(it["modality0"])], MODALITIES[int(it["modality1"])]}), bool(it["exact"]))
             for it in items if it["scene"] == "609U_541L_3_0"}
    assert (frozenset({"optical", "sar"}), False) in pairs  # Sentinel-1 vs -2: a few pixels apart
    assert (frozenset({"optical", "elevation"}), False) in pairs
    assert (frozenset({"optical", "map"}), True) in pairs  # land cover shares the Sentinel-2 frame
    assert (frozenset({"optical", "infrared"}), True) in pairs
    assert not any(exact for kinds, exact in pairs if kinds & {"sar", "elevation"})


# --- resumable training ------------------------------------------------------------------

def test_a_stopped_run_resumes_from_its_checkpoint(tmp_path, capsys, monkeypatch):
    """A run killed after step 3 of 4 (checkpoints every 2) goes on from step 2 when the
    same command runs again, and ends with the same weights as a run never stopped."""
    import dmreg.train.train as train

    args = ["--batch", "1", "--size", "64", "--teacher", "none", "--threads", "1", "--steps", "4",
            "--save-every", "2", "--log-every", "1", "--examples-dir", str(DATA), "--bench-data-dir", str(tmp_path)]
    train_main(["--out", str(tmp_path / "whole"), *args])

    real_step, calls = train.training_step, []

    def dies_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(train, "training_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_main(["--out", str(tmp_path / "stopped"), *args])
    monkeypatch.setattr(train, "training_step", real_step)
    capsys.readouterr()
    train_main(["--out", str(tmp_path / "stopped"), *args])
    assert "at step 2" in capsys.readouterr().out
    log = json.loads((tmp_path / "stopped.trainlog").read_text())
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    card = json.loads((tmp_path / "stopped.json").read_text())
    assert card["provenance"]["data_sources"] == {"landsat": ORIGINS["landsat"]}  # the card names its data
    whole = torch.load(tmp_path / "whole.ckpt.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "stopped.ckpt.pt", weights_only=True)["model"]
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], msg=key)
    with pytest.raises(SystemExit, match="another run"):
        train_main(["--out", str(tmp_path / "stopped"), *[a if a != "4" else "5" for a in args]])
