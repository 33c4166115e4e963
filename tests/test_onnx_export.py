"""DistillMatch exported to ONNX and run through ONNX Runtime: the graph takes any tile
size, gives PyTorch's matches on real tiles, carries its provenance, is written safely,
runs without PyTorch, and `dmreg models export` drives it all.

The shipped weights are exported once per module (about 4 s); tiles come from the L7
example scene: red as reference, SWIR2 (L7_SWIR2_offset.tif, same pixel grid) as moving.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from shapely.geometry import box
from typer.testing import CliRunner

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from dmreg.errors import InputError, OutputExistsError, UsageError  # noqa: E402
from dmreg.fine import _tile_size  # noqa: E402
from dmreg.io.sampling import normalise_contrast  # noqa: E402
from dmreg.matchers import TilePair, get_matcher  # noqa: E402
from dmreg.matchers.distillmatch.config import DistillMatchConfig  # noqa: E402
from dmreg.matchers.distillmatch.matcher import DistillMatchMatcher  # noqa: E402
from dmreg.matchers.distillmatch.model import mutual_nearest  # noqa: E402
from dmreg.matchers.distillmatch.onnx_export import compare_matches, export_onnx  # noqa: E402
from dmreg.matchers.distillmatch.onnx_format import FORMAT, INPUTS, OUTPUTS  # noqa: E402
from dmreg.matchers.distillmatch.onnx_matcher import OnnxDistillMatchMatcher, select_cells  # noqa: E402
from dmreg.matchers.distillmatch.weights import load_model  # noqa: E402
from dmreg.options import RegisterOptions  # noqa: E402
from dmreg_cli.main import app  # noqa: E402
from helpers import DATA, L7, normalised, sha256  # noqa: E402

WEIGHTS = "distillmatch-v0.3"
MAX_DIFF_PX = 0.05  # measured: at most 2.6e-05 px on these tiles, identical match counts (torch 2.14 CPU, ORT 1.32)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "distillmatch.onnx"
    export_onnx(WEIGHTS, path)
    return path


@pytest.fixture(scope="module")
def bands() -> tuple[np.ndarray, np.ndarray]:
    """(red, SWIR2) of the L7 scene, float32."""
    with rasterio.open(L7) as red_ds, rasterio.open(DATA / "L7_SWIR2_offset.tif") as swir_ds:
        return red_ds.read(3).astype(np.float32), swir_ds.read(1).astype(np.float32)


def stretched(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    return normalise_contrast(values, np.ones(values.shape, bool) if valid is None else valid)


def l7_pairs(red: np.ndarray, swir2: np.ndarray) -> list[TilePair]:
    """Aligned 256 px tiles with modality hints; 256 px tiles where reference = moving +
    (3, -5) px and the moving one has a nodata strip; and a 192 x 229 pair (width padded
    to 232)."""
    ok = np.ones((256, 256), bool)
    hinted = TilePair(stretched(red[:256, :256]), stretched(swir2[:256, :256]), ok, ok,
                      ref_modality="optical", mov_modality="infrared")
    strip = ok.copy()
    strip[:, :20] = False
    shifted = TilePair(stretched(red[96:352, 90:346]), stretched(swir2[91:347, 93:349], strip), ok, strip,
                       max_offset=12)
    small = TilePair(stretched(red[160:352, 120:349]), stretched(swir2[160:352, 120:349]),
                     np.ones((192, 229), bool), np.ones((192, 229), bool))
    return [hinted, shifted, small]


# --- the graph ------------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(256, 256), (320, 384)])
def test_graph_takes_any_tile_size_and_computes_what_pytorch_does(exported, bands, h, w):
    """The graph's best match and confidence per image0 cell are the PyTorch network's,
    at two sizes that are not the size the graph was traced at."""
    red, swir2 = (np.pad(b, ((0, max(0, h - b.shape[0])), (0, max(0, w - b.shape[1]))), mode="reflect")[:h, :w]
                  for b in bands)
    image0, image1 = stretched(red)[None, None], stretched(swir2)[None, None]
    valid = np.ones((1, h, w), bool)
    feeds = dict(zip(INPUTS, (image0, image1, valid, valid, np.array([-1]), np.array([-1]))))
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    log_conf, best1, mutual, kpts0, kpts1 = session.run(list(OUTPUTS), feeds)
    n = (h // 8) * (w // 8)
    assert log_conf.shape == best1.shape == mutual.shape == (n,)
    assert kpts0.shape == kpts1.shape == (n, 2)

    model, _ = load_model(WEIGHTS)
    with torch.inference_mode():
        out = model({"image0": torch.from_numpy(image0), "image1": torch.from_numpy(image1),
                     "valid0": torch.from_numpy(valid), "valid1": torch.from_numpy(valid)}, match=False)
    score, best = out["log_conf"][0].max(dim=1)
    assert np.abs(log_conf - score.numpy()).max() < 1e-3
    assert (best1 == best.numpy()).mean() > 0.99


def test_selection_is_pytorchs_mutual_nearest_with_its_cap():
    """select_cells (NumPy, on the graph's per-cell outputs) keeps the cells that
    mutual_nearest keeps, and under the cap the same most confident ones, in topk order."""
    rng = np.random.default_rng(0)
    log_conf = torch.from_numpy(rng.normal(size=(1, 300, 280)).astype(np.float32) * 3).log_softmax(dim=2)
    score, best = log_conf[0].max(dim=1)
    mutual = (score == log_conf[0].amax(dim=0)[best]).numpy()
    threshold = 0.02
    _, i_ids, _, kept = mutual_nearest(log_conf, np.log(threshold))
    assert np.array_equal(select_cells(score.numpy(), mutual, threshold, 10_000), i_ids.numpy())
    top = i_ids[kept.exp().topk(5).indices].numpy()
    assert np.array_equal(select_cells(score.numpy(), mutual, threshold, 5), top)


# --- matches on real tiles ------------------------------------------------------------

@pytest.mark.parametrize("max_side", [640, 96], ids=["full-size", "shrunk"])
def test_onnx_matches_equal_pytorch_matches_on_real_tiles(exported, bands, max_side):
    pairs = l7_pairs(*bands)
    torch_found = DistillMatchMatcher(weights=WEIGHTS, device="cpu", max_side=max_side).match(pairs)
    onnx_found = OnnxDistillMatchMatcher(exported, max_side=max_side).match(pairs)
    for a, b in zip(torch_found, onnx_found, strict=True):
        assert len(a) > 50 and abs(len(a) - len(b)) <= 0.01 * len(a)
        common, max_diff = compare_matches(a, b)
        assert common >= 0.99 * max(len(a), len(b))
        assert max_diff < MAX_DIFF_PX
        assert b.ref_xy.dtype == b.mov_xy.dtype == b.confidence.dtype == np.float64
        assert (b.confidence > 0.2).all() and (b.confidence <= 1).all()


def test_get_matcher_runs_the_onnx_file(exported, bands):
    matcher = get_matcher("distillmatch", weights=str(exported))
    assert isinstance(matcher, OnnxDistillMatchMatcher)
    info = matcher.describe()
    reference = DistillMatchMatcher(weights=WEIGHTS, device="cpu").describe()
    assert info["weights"] == reference["weights"] == WEIGHTS
    assert info["weights_sha256"] == reference["weights_sha256"]
    assert info["onnx_sha256"] == sha256(exported) and info["device"] == "cpu"
    assert matcher.rotation_step_deg == DistillMatchMatcher.rotation_step_deg
    assert matcher.balanced_tiles == DistillMatchMatcher.balanced_tiles
    (found,) = matcher.match(l7_pairs(*bands)[:1])  # same pixels of both bands: the truth is no offset
    error = np.hypot(*(found.ref_xy - found.mov_xy).T)
    assert len(found) > 500 and (error < 1.0).mean() > 0.8, np.percentile(error, [25, 50, 75])
    with pytest.raises(UsageError, match="runs on the CPU"):
        get_matcher("distillmatch", weights=str(exported), device="cuda")


def test_the_fine_stage_plans_the_same_tiles_for_onnx_as_for_pytorch(exported):
    """An 800 px overlap is covered by 2 x 2 tiles of 416 px for either backend, not 512
    (the attention and the confidence matrix cost the square of a tile's area)."""
    overlap = box(0, 0, 800, 800)
    sides = {type(m).__name__: _tile_size(m, overlap, 1.0, RegisterOptions())
             for m in (OnnxDistillMatchMatcher(exported), DistillMatchMatcher(weights=WEIGHTS, device="cpu"))}
    assert set(sides.values()) == {416}, sides


def test_onnx_matcher_runs_without_pytorch(exported, tmp_path):
    """A deployment without PyTorch: with torch made unimportable the ONNX file still
    matches (through get_matcher, as `dmreg register --weights FILE.onnx` builds it)."""
    script = f"""
import json, sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from dmreg.matchers import TilePair, get_matcher
rng = np.random.default_rng(0)
image = np.repeat(np.repeat(rng.random((24, 24), dtype=np.float32), 4, axis=0), 4, axis=1)
ok = np.ones(image.shape, bool)
(found,) = get_matcher("distillmatch", weights={str(exported)!r}).match([TilePair(image, image, ok, ok)])
print(json.dumps({{"matches": len(found), "torch": sys.modules["torch"] is not None}}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"matches": result["matches"], "torch": False} and result["matches"] > 0


# --- the file -------------------------------------------------------------------------

def test_metadata_carries_the_provenance(exported):
    _, card = load_model(WEIGHTS)
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert meta["format"] == FORMAT and meta["weights"] == WEIGHTS
    assert meta["weights_sha256"] == card.sha256 == sha256(card.tensors)
    assert meta["opset"] == "17" and "TorchScript" in meta["exporter"]
    assert json.loads(meta["provenance"]) == card.provenance
    assert DistillMatchConfig.from_dict(json.loads(meta["config"])) == card.config
    assert onnx.load(str(exported)).opset_import[0].version == 17


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_onnx(WEIGHTS, target)
    assert target.read_bytes() == b"keep me"
    export_onnx(WEIGHTS, target, overwrite=True)
    assert OnnxDistillMatchMatcher(target).describe()["weights"] == WEIGHTS
    assert [p.name for p in tmp_path.iterdir()] == ["taken.onnx"]  # no temporary file left


def test_bad_requests_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="opsets 14 to 20"):
        export_onnx(WEIGHTS, tmp_path / "a.onnx", opset=11)
    tensor = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    other = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "identity", [tensor],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(other), str(tmp_path / "other.onnx"))
    with pytest.raises(InputError, match="not a DistillMatch ONNX export"):
        OnnxDistillMatchMatcher(tmp_path / "other.onnx")
    with pytest.raises(InputError, match="not found"):
        get_matcher("distillmatch", weights=str(tmp_path / "absent.onnx"))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UsageError, match=re.escape("pip install 'dmreg[onnx]'")):
        export_onnx(WEIGHTS, tmp_path / "b.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.delitem(sys.modules, "dmreg.matchers.distillmatch.onnx_matcher")
    with pytest.raises(UsageError, match=re.escape("pip install 'dmreg[onnx]'")):
        get_matcher("distillmatch", weights=str(tmp_path / "b.onnx"))
    assert not list(tmp_path.glob("[ab].onnx"))


# --- the command line -----------------------------------------------------------------

def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, normalised(result.output)


def test_cli_models_export_with_check(tmp_path):
    out = tmp_path / "dm.onnx"
    code, text = invoke("models", "export", WEIGHTS, "--onnx", str(out))
    assert code == 0, text
    assert out.is_file() and f"from {WEIGHTS}" in text
    found = re.search(r"PyTorch (\d+) matches .* ONNX Runtime (\d+) matches .* (\d+) in common, "
                      r"largest coordinate difference (\S+) px", text)
    assert found, text
    n_torch, n_onnx, common = map(int, found.groups()[:3])
    assert n_torch > 1000 and abs(n_torch - n_onnx) <= 0.01 * n_torch and common >= 0.99 * n_torch
    assert float(found.group(4)) < MAX_DIFF_PX

    code, text = invoke("models", "export", WEIGHTS, "--onnx", str(out), "--no-check")
    assert code == 6 and "--overwrite" in text, text
    code, text = invoke("models", "export", WEIGHTS, "--onnx", str(out), "--overwrite", "--no-check", "--opset", "18")
    assert code == 0 and "check on" not in text, text
    assert onnx.load(str(out)).opset_import[0].version == 18


def test_cli_models_export_errors(tmp_path, monkeypatch):
    out = tmp_path / "dm.onnx"
    code, text = invoke("models", "export", "no-such-weights", "--onnx", str(out))
    assert code == 3 and "error: DistillMatch weights" in text and "shipped weights:" in text, text
    code, text = invoke("models", "export", WEIGHTS, "--onnx", str(out), "--opset", "11")
    assert code == 2 and "opsets 14 to 20" in text, text
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, text = invoke("models", "export", WEIGHTS, "--onnx", str(out))
    assert code == 2 and "pip install 'dmreg[onnx]'" in text and "--no-check" in text, text
    assert not out.exists() and "Traceback" not in text


def test_cli_models_still_lists():
    _, card = load_model(WEIGHTS)
    code, text = invoke("models")
    assert code == 0 and "distillmatch weights" in text and card.sha256[:12] in text, text
    code, text = invoke("models", "--json")
    assert code == 0 and json.loads(text)["matchers"].keys() == {"structural", "sift", "distillmatch"}
