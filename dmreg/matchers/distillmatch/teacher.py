"""The frozen DINOv2/DINOv3 teacher whose patch features the DistillMatch student learns.

Used in training only. Weights come from a local file, never from the network, in
either the official Meta release layout (``.pth``) or timm's safetensors layout; the
layout is read from the file's content, and timm's own checkpoint filters convert the
official names. Any file that does not fit the chosen teacher exactly is refused with
a :class:`TeacherWeightsError` saying what is wrong and what to pass instead.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.eva import Eva
from timm.models.eva import checkpoint_filter_fn as eva_filter
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter
from torch import Tensor

from dmreg.errors import InputError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSpec:
    """A supported teacher: the timm architecture and what its weights file should be.

    ``img_size`` is the training resolution, passed to timm so that DINOv2's learned
    position embeddings load without resampling (other sizes are interpolated per call).
    """

    name: str
    timm_name: str
    patch_size: int
    dim: int
    description: str
    img_size: int


TEACHERS: dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in (
        TeacherSpec("dinov2_vits14", "vit_small_patch14_dinov2", 14, 384,
                    "DINOv2 ViT-S/14: official dinov2_vits14_pretrain.pth, or the model.safetensors "
                    "of timm's vit_small_patch14_dinov2.lvd142m", 518),
        TeacherSpec("dinov2_vitb14", "vit_base_patch14_dinov2", 14, 768,
                    "DINOv2 ViT-B/14: official dinov2_vitb14_pretrain.pth, or the model.safetensors "
                    "of timm's vit_base_patch14_dinov2.lvd142m", 518),
        TeacherSpec("dinov3_vits16", "vit_small_patch16_dinov3", 16, 384,
                    "DINOv3 ViT-S/16: official dinov3_vits16_pretrain_lvd1689m-08c60483.pth, or the "
                    "model.safetensors of timm's vit_small_patch16_dinov3.lvd1689m", 256),
        TeacherSpec("dinov3_vitb16", "vit_base_patch16_dinov3", 16, 768,
                    "DINOv3 ViT-B/16: official dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth, or the "
                    "model.safetensors of timm's vit_base_patch16_dinov3.lvd1689m", 256),
    )
}

OFFICIAL_FILES: dict[str, tuple[int | None, str]] = {
    "dinov2_vits14_pretrain.pth": (88_283_115, "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9"),
    "dinov2_vitb14_pretrain.pth": (346_378_731, "0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73"),
    "dinov2_vitb14_reg4_pretrain.pth": (None, "73182a088cf94833c94b1666d1c99e02fe87e2007bff57b564fb6206e25dba71"),
    "dinov2_vitl14_pretrain.pth": (1_217_586_395, "d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428"),
    "model.safetensors": (88_249_960, "ae1e99fcefd534ed978cdeb8326f08030c96e28b7a81ffcbc98a857c84d14be1"),  # HF dinov2-small
}
"""Official releases by file name: (size in bytes or None, sha256). A file of one of these
names with another checksum is not the release it claims to be (truncated, re-saved or
another model): training goes on, with a warning, since a user may mean it."""

_FILTERS = {VisionTransformer: vit_filter, Eva: eva_filter}
_VIT_SIZES = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H", 1536: "g"}
_WRAPPERS = ("teacher", "model", "state_dict")  # official training checkpoints nest the weights
_PREFIXES = ("teacher.backbone.", "backbone.")  # ... and prefix the backbone next to its heads
_SHOWN = 3  # keys listed per kind of mismatch


class TeacherWeightsError(InputError):
    """A teacher weights file is missing, unreadable, or made for another architecture."""


class Teacher(torch.nn.Module):
    """A frozen ViT mapping grayscale images to its final normalised patch tokens on a grid.

    Frozen means no parameter needs a gradient and the module never leaves eval mode,
    so the distillation targets are deterministic whatever the training loop calls.
    """

    def __init__(self, name: str, model: torch.nn.Module) -> None:
        super().__init__()
        self.name = name
        self.model = model.requires_grad_(False)
        self.dim: int = model.embed_dim
        self.patch_size: int = model.patch_embed.patch_size[0]
        self.register_buffer("mean", _rgb(IMAGENET_DEFAULT_MEAN), persistent=False)
        self.register_buffer("std", _rgb(IMAGENET_DEFAULT_STD), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Stay in eval mode whatever ``mode`` says: a frozen teacher must not turn on dropout."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Features ``[B, dim, H // patch, W // patch]`` of images ``[B, 1, H, W]`` in [0, 1].

        The bottom rows and right columns beyond the last whole patch (fewer than
        ``patch_size``) are cropped, not padded, so feature cell (i, j) covers exactly the
        pixels ``[i*patch, (i+1)*patch) x [j*patch, (j+1)*patch)`` and no padding leaks in.
        The gray band is replicated to RGB and normalised with the ImageNet statistics
        the teachers were trained with; cls and register tokens are dropped.
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"teacher input must be [B, 1, H, W], got {list(images.shape)}")
        p = self.patch_size
        rows, cols = images.shape[2] // p, images.shape[3] // p
        if rows == 0 or cols == 0:
            raise ValueError(f"teacher input {list(images.shape)} is smaller than one {p}x{p} patch")
        x = images[:, :, : rows * p, : cols * p].to(self.mean.dtype)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(len(images), self.dim, rows, cols)


def _rgb(values: tuple[float, float, float]) -> Tensor:
    """A per-channel statistic shaped to broadcast over [B, 3, H, W]."""
    return torch.tensor(values).view(1, 3, 1, 1)


def load_teacher(name: str, weights: str | Path, **overrides: object) -> Teacher:
    """The frozen teacher ``name`` with the weights of a local file.

    ``overrides`` go to ``timm.create_model`` (tests use them to build tiny models).
    Raises UsageError for an unknown name and TeacherWeightsError for a file that is
    missing, is not a checkpoint, or does not fit the architecture exactly.
    """
    spec = teacher_spec(name)
    path = Path(weights)
    if not path.is_file():
        raise TeacherWeightsError(f"teacher weights {path} not found; {name} needs {spec.description}")
    verify_official(path)
    state = _unwrap(_read(path, spec), path, spec)
    model = timm.create_model(spec.timm_name, pretrained=False, **{
        "img_size": spec.img_size, "dynamic_img_size": True, "num_classes": 0, **overrides})
    _check_patch_embed(state, model, path, spec)
    state = _to_timm(state, model, path, spec)
    _check_fits(state, model, path, spec)
    model.load_state_dict(state, strict=True)
    return Teacher(name, model)


def verify_official(path: Path) -> str:
    """The file's sha256; a warning when its name is an official release's and its size
    or checksum is not."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    if path.name in OFFICIAL_FILES:
        size, official = OFFICIAL_FILES[path.name]
        if sha256 != official:
            actual = path.stat().st_size
            what = f"{actual:,} bytes, expected {size:,}" if size is not None and actual != size else "same size"
            log.warning("teacher weights %s are not the official %s: sha256 %s, expected %s (%s); "
                        "training goes on with this file", path, path.name, sha256, official, what)
    return sha256


def teacher_spec(name: str) -> TeacherSpec:
    """The spec of a teacher by name; UsageError listing the valid names otherwise."""
    try:
        return TEACHERS[name]
    except KeyError:
        raise UsageError(f"unknown teacher {name!r}; choose one of: {', '.join(TEACHERS)}") from None


def _read(path: Path, spec: TeacherSpec) -> object:
    """The file's content, by what its bytes are rather than by its extension."""
    hint = f"teacher {spec.name} needs {spec.description}"
    kind = _container(path)
    try:
        if kind == "safetensors":
            return safetensors.torch.load_file(path)
        if kind == "torch":
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" (e.g. {found.group(1)})" if found else ""
        raise TeacherWeightsError(
            f"{path} holds Python objects besides tensors{what}, which are not unpickled for safety; "
            f"re-save it as a plain state dict of tensors; {hint}") from None
    except Exception as exc:
        raise TeacherWeightsError(
            f"{path} is not a PyTorch or safetensors checkpoint, or is truncated "
            f"({_first_line(exc)}); {hint}") from None
    raise TeacherWeightsError(f"{path} is not a PyTorch or safetensors checkpoint, or is truncated; {hint}")


def _container(path: Path) -> str | None:
    """'safetensors' (a u64 header length, then a JSON header), 'torch' (a zip archive or a
    legacy pickle) or None, from the file's first bytes."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return "safetensors"
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":
        return "torch"
    return None


def _first_line(exc: Exception) -> str:
    """The gist of a loader's error; some run to many lines of advice."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _unwrap(content: object, path: Path, spec: TeacherSpec) -> dict[str, object]:
    """The backbone's state dict out of a bare, nested or training checkpoint."""
    state = content
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TeacherWeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors; pass {spec.description}")
    for prefix in _PREFIXES:
        if prefix + "patch_embed.proj.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _describe(dim: int, patch: int) -> str:
    """'ViT-B/14' and the like: how the releases name their architectures."""
    size = _VIT_SIZES.get(dim)
    return f"ViT-{size}/{patch}" if size else f"ViT/{patch}"


def _check_patch_embed(state: dict[str, object], model: torch.nn.Module, path: Path,
                       spec: TeacherSpec) -> None:
    """Name the architecture of a file made for another teacher, before timm would resample it."""
    found = state.get("patch_embed.proj.weight")
    expected = model.patch_embed.proj.weight
    if not isinstance(found, Tensor) or found.shape == expected.shape:
        return
    dim, patch = found.shape[0], found.shape[-1]
    fits = [t.name for t in TEACHERS.values() if (t.dim, t.patch_size) == (dim, patch)]
    advice = f"use teacher {' or '.join(fits)} for it, or " if fits else ""
    raise TeacherWeightsError(
        f"{path}: this looks like a {_describe(dim, patch)} checkpoint (dim {dim}) but teacher {spec.name} "
        f"expects {_describe(expected.shape[0], expected.shape[-1])} (dim {expected.shape[0]}); "
        f"{advice}pass {spec.description}")


def _to_timm(state: dict[str, object], model: torch.nn.Module, path: Path,
             spec: TeacherSpec) -> dict[str, object]:
    """timm's names for the official layout (a timm-layout state passes through unchanged)."""
    if isinstance(model, Eva) and "storage_tokens" in state:
        state = _drop_zero_qkv_bias(state, model, path, spec)
    try:
        return _FILTERS[type(model)](state, model)
    except Exception as exc:
        raise TeacherWeightsError(
            f"{path} could not be converted for teacher {spec.name} ({_first_line(exc)}); "
            f"pass {spec.description}") from None


def _drop_zero_qkv_bias(state: dict[str, object], model: torch.nn.Module, path: Path,
                        spec: TeacherSpec) -> dict[str, object]:
    """Drop DINOv3's q/k/v biases where timm's bias-free model has none, only if they are zero.

    The released DINOv3 S/B weights carry all-zero q and v biases (the k bias is masked
    out), which is why timm models them without; a non-zero one would be silently lost.
    """
    if any(k.endswith("attn.q_bias") for k in model.state_dict()):
        return state
    kept = {}
    for key, value in state.items():
        if key.endswith("attn.qkv.bias") and isinstance(value, Tensor):
            q, _, v = value.chunk(3)
            if q.any() or v.any():
                raise TeacherWeightsError(
                    f"{path}: {key} has non-zero query/value biases, which {spec.timm_name} has no "
                    f"parameters for; pass {spec.description}")
            continue
        kept[key] = value
    return kept


def _check_fits(state: dict[str, object], model: torch.nn.Module, path: Path, spec: TeacherSpec) -> None:
    """Refuse a state that does not cover the model exactly: a partial teacher is a wrong teacher."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {_shape(state[k])} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and _shape(state[k]) != tuple(v.shape)]
    problems = [f"{label}: {_first_few(keys)}" for label, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches (file vs teacher)", wrong)) if keys]
    if problems:
        raise TeacherWeightsError(
            f"{path} does not fit teacher {spec.name} ({spec.timm_name}): {'; '.join(problems)}; "
            f"pass {spec.description}")


def _first_few(keys: list[str]) -> str:
    """Enough keys to recognise the problem without flooding the terminal."""
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _shape(value: object) -> tuple[int, ...] | str:
    """A comparable shape, or the type name of a value that is not a tensor at all."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
