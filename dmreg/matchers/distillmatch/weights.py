"""DistillMatch weights: safetensors tensors + a JSON card (config, version, provenance).

No pickle anywhere: a weight file can be inspected and loaded without running code.
Weights shipped with dmreg live in ``weights/`` beside this file; users may point at
their own pair of files with ``--weights PATH`` (either file of the pair).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from dmreg.errors import InputError
from dmreg.matchers.distillmatch.config import DistillMatchConfig
from dmreg.matchers.distillmatch.model import DistillMatch
from dmreg.weightfiles import file_sha256, pair_paths, path_stem, state_mismatch, write_atomic

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = "distillmatch-v0.2"
FORMAT = "dmreg.distillmatch/1"


class WeightsError(InputError):
    """A weight file is missing, unreadable or does not fit the network."""


@dataclass(frozen=True)
class WeightsCard:
    """What a weight file says about itself."""

    name: str
    tensors: Path
    sha256: str
    config: DistillMatchConfig
    provenance: dict

    def summary(self) -> dict:
        return {"name": self.name, "path": str(self.tensors), "sha256": self.sha256, "provenance": self.provenance}


def save_weights(model: DistillMatch, path: str | Path, provenance: dict) -> WeightsCard:
    """Write ``<path>.safetensors`` and ``<path>.json``, each through a temporary file
    renamed into place; ``provenance`` says what data, teacher, steps and hardware made
    the weights."""
    stem = path_stem(path)
    tensors, card_path = pair_paths(stem)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(tensors, save(state, metadata={"format": FORMAT}))
    card = {"format": FORMAT, "name": stem.name, "config": model.conf.to_dict(), "sha256": file_sha256(tensors),
            "provenance": provenance}
    write_atomic(card_path, (json.dumps(card, indent=2) + "\n").encode("utf-8"))
    return read_card(stem)


def resolve(weights: str | Path | None) -> Path:
    """A shipped weights name or a user path -> the path stem of the pair."""
    if weights is None:
        weights = DEFAULT_WEIGHTS
    stem = path_stem(weights)
    if stem.parent != Path(".") or any(p.exists() for p in pair_paths(stem)):
        return stem
    return WEIGHTS_DIR / stem.name


def read_card(stem: str | Path) -> WeightsCard:
    stem = Path(stem)
    tensors, card_path = pair_paths(stem)
    if not card_path.exists() or not tensors.exists():
        shipped = ", ".join(p.name[: -len(".json")] for p in _shipped_pairs()) or "none"
        raise WeightsError(
            f"DistillMatch weights {stem} not found (need {card_path.name} and {tensors.name}); "
            f"shipped weights: {shipped}. Train some with `python -m dmreg.train.train` or pass --weights PATH"
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{card_path}: not a readable weights card ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != FORMAT or not isinstance(card.get("config"), dict):
        raise WeightsError(f"{card_path}: not a {FORMAT} weights card (needs 'format' and a 'config' object)")
    try:
        config = DistillMatchConfig.from_dict(card["config"])
    except (InputError, TypeError) as exc:
        raise WeightsError(f"{card_path}: {exc}") from exc
    return WeightsCard(name=card.get("name", stem.name), tensors=tensors, sha256=file_sha256(tensors),
                       config=config, provenance=card.get("provenance", {}))


def load_model(weights: str | Path | None = None) -> tuple[DistillMatch, WeightsCard]:
    """The student network with trained weights, in eval mode; WeightsError otherwise."""
    card = read_card(resolve(weights))
    model = DistillMatch(card.config)
    try:
        state = load_file(str(card.tensors))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{card.tensors}: not a readable safetensors file ({exc})") from exc
    if (mismatch := state_mismatch(model.state_dict(), state)) is not None:
        raise WeightsError(
            f"{card.tensors} does not fit the network in {card.tensors.with_suffix('.json').name}: {mismatch}")
    model.load_state_dict(state, strict=True)
    return model.eval(), card


def available() -> list[WeightsCard]:
    """Every shipped weights card that parses and has its tensors beside it."""
    cards = []
    for card_path in _shipped_pairs():
        try:
            cards.append(read_card(path_stem(card_path)))
        except InputError:
            continue
    return cards


def _shipped_pairs() -> list[Path]:
    return [p for p in sorted(WEIGHTS_DIR.glob("*.json")) if pair_paths(path_stem(p))[0].exists()]


__all__ = ["DEFAULT_WEIGHTS", "WeightsCard", "WeightsError", "available", "load_model", "save_weights"]
