"""The DistillMatch teacher: both weight layouts load to identical features; bad files are refused.

Tiny random ViTs stand in for DINOv2/DINOv3 (no weights are ever downloaded). Each is
saved in timm's safetensors layout and, by the inverse of timm's conversion written out
here, in Meta's official release layout; both must reproduce the source model exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from dmreg.errors import InputError, UsageError
from dmreg.matchers.distillmatch.teacher import TEACHERS, Teacher, TeacherWeightsError, load_teacher

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}


def tiny_teacher(name: str, seed: int = 0, **overrides: object) -> Teacher:
    """A tiny teacher with random (not init-like) weights, so a lost or misplaced tensor shows."""
    spec = TEACHERS[name]
    model = timm.create_model(spec.timm_name, pretrained=False, img_size=spec.img_size,
                              dynamic_img_size=True, num_classes=0, **{**TINY, **overrides})
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return Teacher(name, model)


def timm_state(teacher: Teacher) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in teacher.model.state_dict().items()}


def write_timm(teacher: Teacher, path: Path) -> Path:
    safetensors.torch.save_file(timm_state(teacher), path)
    return path


def official_dinov2(teacher: Teacher) -> dict[str, torch.Tensor]:
    """DINOv2 release names equal timm's; the release adds the pretraining mask token."""
    return {**timm_state(teacher), "mask_token": torch.randn(1, teacher.dim)}


DINOV3_NAMES = {"reg_token": "storage_tokens", "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma"}


def official_dinov3(teacher: Teacher) -> dict[str, torch.Tensor]:
    """DINOv3 release names: storage tokens, ls*.gamma, masked zero qkv biases, rope periods."""
    state, dim = {}, teacher.dim
    for key, value in timm_state(teacher).items():
        for timm_name, official in DINOV3_NAMES.items():
            key = key.replace(timm_name, official)
        state[key] = value
        if key.endswith("attn.qkv.weight"):
            state[key.replace("weight", "bias")] = torch.zeros(3 * dim)
            k_off = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])  # only k bias masked
            state[key.replace("weight", "bias_mask")] = k_off
    state["mask_token"] = torch.randn(1, teacher.dim)
    state["rope_embed.periods"] = torch.arange(1.0, teacher.dim // TINY["num_heads"] // 4 + 1)
    return state


def write_official(teacher: Teacher, path: Path) -> Path:
    convert = official_dinov2 if teacher.name.startswith("dinov2") else official_dinov3
    torch.save(convert(teacher), path)
    return path


def write_official_training(teacher: Teacher, path: Path) -> Path:
    """DINOv2's teacher_checkpoint.pth: the backbone beside the training heads, under 'teacher'."""
    state = {f"backbone.{k}": v for k, v in official_dinov2(teacher).items()}
    state["dino_head.last_layer.weight"] = torch.randn(16, 8)
    torch.save({"teacher": state}, path)
    return path


CASES: list[tuple[str, Callable[[Teacher, Path], Path], str]] = [
    ("dinov2_vits14", write_timm, "model.safetensors"),
    ("dinov2_vits14", write_official, "dinov2_vits14_pretrain.pth"),
    ("dinov2_vits14", write_official_training, "teacher_checkpoint.pth"),
    ("dinov3_vits16", write_timm, "model.safetensors"),
    ("dinov3_vits16", write_official, "dinov3_vits16_pretrain_lvd1689m.pth"),
    ("dinov2_vits14", write_timm, "safetensors_named.pth"),  # layout is read from content
]


@pytest.mark.parametrize(("name", "write", "filename"), CASES)
def test_both_layouts_reproduce_the_source_model(name, write, filename, tmp_path):
    source = tiny_teacher(name)
    loaded = load_teacher(name, write(source, tmp_path / filename), **TINY)
    images = torch.rand(2, 1, 45, 61)  # neither side a multiple of 14 or 16
    p = source.patch_size
    out = loaded(images)
    assert out.shape == (2, TINY["embed_dim"], 45 // p, 61 // p)
    assert torch.equal(out, source(images))
    assert (loaded.dim, loaded.patch_size) == (TINY["embed_dim"], TEACHERS[name].patch_size)


def test_features_come_from_whole_patches_only():
    teacher = tiny_teacher("dinov2_vits14")
    images = torch.rand(1, 1, 45, 61)
    cropped = images[:, :, :42, :56].clone()
    images[:, :, 42:, :] = 1.0  # the remainder must not matter
    images[:, :, :, 56:] = 0.0
    assert torch.equal(teacher(images), teacher(cropped))


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov3_vits16"])
def test_teacher_is_frozen(name):
    teacher = tiny_teacher(name)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.train() is teacher
    assert not any(m.training for m in teacher.modules())
    images = torch.rand(1, 1, 32, 32, requires_grad=True)
    out = teacher(images)
    assert not out.requires_grad and out.grad_fn is None


def test_wrong_width_is_named(tmp_path):
    path = write_timm(tiny_teacher("dinov2_vits14", embed_dim=64, num_heads=4), tmp_path / "wide.safetensors")
    with pytest.raises(TeacherWeightsError) as err:
        load_teacher("dinov2_vits14", path, **TINY)
    message = str(err.value)
    assert str(path) in message and "dinov2_vits14" in message
    assert "dim 64" in message and "expects" in message and "dim 48" in message


def test_vit_b_file_for_vit_s_teacher_says_which_teacher_fits(tmp_path):
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(768, 3, 14, 14), "mask_token": torch.zeros(1, 768)},
               path)
    with pytest.raises(TeacherWeightsError) as err:
        load_teacher("dinov2_vits14", path, depth=1)
    message = str(err.value)
    assert ("this looks like a ViT-B/14 checkpoint (dim 768) "
            "but teacher dinov2_vits14 expects ViT-S/14 (dim 384)") in message
    assert "use teacher dinov2_vitb14" in message


def test_dinov2_file_for_dinov3_teacher_is_refused(tmp_path):
    path = write_official(tiny_teacher("dinov2_vits14"), tmp_path / "dinov2.pth")
    with pytest.raises(TeacherWeightsError, match="ViT/14 checkpoint .* expects ViT/16"):
        load_teacher("dinov3_vits16", path, **TINY)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    path = tmp_path / "shallow.safetensors"
    state = timm_state(tiny_teacher("dinov2_vits14", depth=1))
    state["head.weight"] = torch.zeros(10, TINY["embed_dim"])
    safetensors.torch.save_file(state, path)
    with pytest.raises(TeacherWeightsError) as err:
        load_teacher("dinov2_vits14", path, **TINY)
    message = str(err.value)
    assert "missing keys: blocks.1.norm1.weight" in message and "more)" in message
    assert "unexpected keys: head.weight" in message


def test_nonzero_dinov3_qkv_bias_is_not_dropped(tmp_path):
    state = official_dinov3(tiny_teacher("dinov3_vits16"))
    state["blocks.0.attn.qkv.bias"][0] = 0.5
    path = tmp_path / "biased.pth"
    torch.save(state, path)
    with pytest.raises(TeacherWeightsError, match="non-zero query/value biases"):
        load_teacher("dinov3_vits16", path, **TINY)


def _truncated(tmp_path: Path, write: Callable[[Teacher, Path], Path], filename: str) -> bytes:
    data = write(tiny_teacher("dinov2_vits14"), tmp_path / filename).read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("content", [
    lambda tmp: random.Random(1).randbytes(4096),
    lambda tmp: b"dinov2_vits14 weights go here\n",
    lambda tmp: b"",
    lambda tmp: _truncated(tmp, write_timm, "full.safetensors"),
    lambda tmp: _truncated(tmp, write_official, "full.pth"),
], ids=["random-bytes", "text", "empty", "truncated-safetensors", "truncated-pth"])
def test_garbage_is_not_a_checkpoint(content, tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(content(tmp_path))
    with pytest.raises(TeacherWeightsError, match="not a PyTorch or safetensors checkpoint"):
        load_teacher("dinov2_vits14", path, **TINY)


class Payload:
    """Stands for any pickled object that weights_only loading must refuse to build."""


def test_pickled_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(TeacherWeightsError, match="not unpickled"):
        load_teacher("dinov2_vits14", path, **TINY)


def test_missing_file(tmp_path):
    with pytest.raises(TeacherWeightsError, match="not found") as err:
        load_teacher("dinov3_vitb16", tmp_path / "absent.pth")
    assert isinstance(err.value, InputError) and err.value.exit_code == 3


def test_unknown_teacher_lists_valid_names(tmp_path):
    with pytest.raises(UsageError) as err:
        load_teacher("dinov2_vitz14", tmp_path / "any.pth")
    assert all(name in str(err.value) for name in TEACHERS)


def test_a_file_named_like_an_official_release_is_checked_against_its_sha256(tmp_path, caplog):
    """A tiny model saved as dinov2_vits14_pretrain.pth is not Meta's file: it still loads
    (a user may mean it) but the log says its size and checksum are not the release's."""
    teacher = tiny_teacher("dinov2_vits14")
    path = write_official(teacher, tmp_path / "dinov2_vits14_pretrain.pth")
    with caplog.at_level("WARNING", logger="dmreg.matchers.distillmatch.teacher"):
        load_teacher("dinov2_vits14", path, **TINY)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "not the official dinov2_vits14_pretrain.pth" in message
    assert "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9" in message
    assert "expected 88,283,115" in message


def test_a_file_with_its_own_name_is_not_compared(tmp_path, caplog):
    path = write_official(tiny_teacher("dinov2_vits14"), tmp_path / "my_finetuned_dinov2.pth")
    with caplog.at_level("WARNING", logger="dmreg.matchers.distillmatch.teacher"):
        load_teacher("dinov2_vits14", path, **TINY)
    assert not caplog.records
