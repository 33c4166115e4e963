"""V2I-GAN generator weights (safetensors + a JSON card) and ``translate``, the augmentation.

A weight file is a pair ``NAME.safetensors`` (the generator's tensors; the discriminator
is a training tool and is not shipped) and ``NAME.json`` (format, config, sha256 of the
tensors, provenance: data with licences, steps, hardware, losses, validation numbers).
No pickle: the pair can be inspected and loaded without running code. Shipped weights
live in ``weights/`` beside this file.

``translate`` turns a visible image into a NIR, SWIR or thermal rendering of it, for the
matcher's training: a learned counterpart of ``dmreg.train.simulate.pseudo_infrared``.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from dmreg.errors import InputError
from dmreg.io.sampling import normalise_contrast
from dmreg.train.v2igan.model import KINDS, V2IConfig, V2IGenerator
from dmreg.weightfiles import file_sha256, pair_paths, path_stem, state_mismatch, write_atomic

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = "v2igan-v1"
FORMAT = "dmreg.v2igan/1"


class V2IWeightsError(InputError):
    """A V2I-GAN weight file is missing, unreadable or does not fit the generator."""


@dataclass(frozen=True)
class V2ICard:
    """What a weight file says about itself."""

    name: str
    tensors: Path
    sha256: str
    config: V2IConfig
    provenance: dict


def save_generator(generator: V2IGenerator, path: str | Path, provenance: dict) -> V2ICard:
    """Write ``<path>.safetensors`` and ``<path>.json``, each through a temporary file
    renamed into place (a crash never leaves half a weight file)."""
    stem = path_stem(path)
    tensors, card_path = pair_paths(stem)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    write_atomic(tensors, save(state, metadata={"format": FORMAT}))
    card = {"format": FORMAT, "name": stem.name, "config": generator.conf.to_dict(), "sha256": file_sha256(tensors),
            "provenance": provenance}
    write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode("utf-8"))
    return read_card(stem)


def resolve(weights: str | Path | None) -> Path:
    """A shipped weights name (or None: the default) or a user path -> the path stem."""
    stem = path_stem(weights if weights is not None else DEFAULT_WEIGHTS)
    if stem.parent != Path(".") or any(p.exists() for p in pair_paths(stem)):
        return stem
    return WEIGHTS_DIR / stem.name


def read_card(stem: str | Path) -> V2ICard:
    stem = Path(stem)
    tensors, card_path = pair_paths(stem)
    if not card_path.exists() or not tensors.exists():
        raise V2IWeightsError(
            f"V2I-GAN weights {stem} not found (need {card_path.name} and {tensors.name}); train some with "
            "`python -m dmreg.train.v2igan --out PATH` or pass the path of a pair"
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} card")
        config = V2IConfig.from_dict(card["config"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise V2IWeightsError(f"{card_path}: not a readable {FORMAT} weights card ({exc})") from exc
    return V2ICard(name=card.get("name", stem.name), tensors=tensors, sha256=file_sha256(tensors), config=config,
                   provenance=card.get("provenance", {}))


def load_generator(weights: str | Path | None = None) -> tuple[V2IGenerator, V2ICard]:
    """The generator with its trained weights, in eval mode, on the CPU; every tensor
    must fit (no silently missing keys)."""
    card = read_card(resolve(weights))
    generator = V2IGenerator(card.config)
    try:
        state = load_file(str(card.tensors))
    except (SafetensorError, OSError) as exc:
        raise V2IWeightsError(f"{card.tensors}: not a readable safetensors file ({exc})") from exc
    if (mismatch := state_mismatch(generator.state_dict(), state)) is not None:
        raise V2IWeightsError(f"{card.tensors} does not fit the generator of its card: {mismatch}")
    generator.load_state_dict(state, strict=True)
    return generator.eval(), card


@functools.lru_cache(maxsize=4)
def _cached_generator(stem: str, mtime_ns: int, size: int) -> V2IGenerator:
    """One generator per process and weight file (its time stamp and size in the key: a
    file retrained under the same name is reloaded, without hashing it on every call)."""
    return load_generator(stem)[0]


_LOCK = threading.Lock()


def generate(generator: V2IGenerator, img: np.ndarray, kind: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """``translate`` with a given generator: pad (reflect) to a multiple of the stride,
    run, crop back, stretch like the pipeline's tiles. ``rng`` None: deterministic;
    else the decoder's dropout noise is drawn from it (a varied, reproducible output)."""
    if kind not in KINDS:
        raise ValueError(f"unknown infrared kind {kind!r}; choose one of: {', '.join(KINDS)}")
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"translate takes one H x W image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("translate needs finite pixel values (fill nodata first)")
    h, w = img.shape
    stride = generator.conf.stride
    pad_h, pad_w = -h % stride, -w % stride
    x = torch.from_numpy(np.clip(img, 0.0, 1.0))[None, None]
    # reflect needs a pad smaller than the side; replicate covers tiny images
    x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if pad_h < h and pad_w < w else "replicate")
    gen = None
    if rng is not None:
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    device = next(generator.parameters()).device
    with torch.inference_mode():
        out = generator(x.to(device), torch.tensor([KINDS.index(kind)], device=device), gen)
    out = out[0, 0, :h, :w].float().cpu().numpy()
    return normalise_contrast(out, np.ones(out.shape, bool))


def translate(img: np.ndarray, kind: str, rng: np.random.Generator | None = None, *,
              weights: str | Path | None = None) -> np.ndarray:
    """A visible image (float32 H x W in [0, 1], any size) rendered as ``kind`` infrared
    (nir, swir or thermal), float32 H x W in [0, 1] after the pipeline's 1-99 percentile
    stretch. ``weights``: a weight-file path, or None for the shipped ``DEFAULT_WEIGHTS``;
    the generator is loaded once per process. Runs on the CPU with torch's thread setting.
    """
    stem = resolve(weights)
    tensors = pair_paths(stem)[0]
    if not tensors.is_file():
        read_card(stem)  # raises the error that says what to do
    stat = tensors.stat()
    generator = _cached_generator(str(stem), stat.st_mtime_ns, stat.st_size)
    with _LOCK:  # one forward at a time per process: the cached module is shared
        return generate(generator, img, kind, rng)


__all__ = ["DEFAULT_WEIGHTS", "V2ICard", "V2IWeightsError", "generate", "load_generator", "read_card", "resolve",
           "save_generator", "translate"]
