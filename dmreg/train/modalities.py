"""Modality categories in training: which simulation makes which category, and weights
made with another list of categories brought onto the current one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dmreg.matchers.distillmatch.model import DistillMatch
from dmreg.train.simulate import SIMULATIONS, Simulation, pseudo_infrared

PSEUDO_INFRARED = ("hand", "gan", "mixed")
"""How simulated infrared and thermal images are made: dmreg.train.simulate's tone model,
the learned V2I-GAN (dmreg.train.v2igan), or each at random half of the time."""

_FALLBACK = {"thermal": "infrared"}
"""A category new to a weight file starts from its nearest old one (legacy weights
learned thermal as infrared)."""


def simulations(pseudo_infrared_kind: str = "hand") -> dict[str, Simulation]:
    """Modality label -> the simulation that makes it from an optical image."""
    if pseudo_infrared_kind not in PSEUDO_INFRARED:
        raise ValueError(f"pseudo infrared {pseudo_infrared_kind!r}: choose one of {', '.join(PSEUDO_INFRARED)}")
    out = dict(SIMULATIONS)
    if pseudo_infrared_kind == "hand":
        out["infrared"] = out["thermal"] = pseudo_infrared
        return out
    from dmreg.train.v2igan.weights import translate  # torch-only, loaded when asked for

    def gan(kinds: Sequence[str]) -> Simulation:
        def make(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            if pseudo_infrared_kind == "mixed" and rng.random() < 0.5:
                return pseudo_infrared(img, rng)
            return translate(img, kinds[rng.integers(len(kinds))], rng)
        return make

    out["infrared"], out["thermal"] = gan(("nir", "swir")), gan(("thermal",))
    return out


def with_modalities(model: DistillMatch, names: Sequence[str]) -> DistillMatch:
    """``model`` with its category rows (embedding table, classifier outputs) reordered
    to ``names``: rows of categories the model knows are kept, a new category starts
    from its fallback's row (or a fresh one), dropped categories go."""
    names = tuple(names)
    old = model.conf.modalities
    if old == names:
        return model
    conf = dataclasses.replace(model.conf, modalities=names, n_modalities=len(names))
    new = DistillMatch(conf)
    state = new.state_dict()
    source = model.state_dict()
    last = f"injection.classifier.{len(model.injection.classifier) - 1}"
    rows = ("injection.table", f"{last}.weight", f"{last}.bias")
    for key, value in source.items():
        if key not in rows:
            state[key] = value
    for i, name in enumerate(names):
        j = old.index(name) if name in old else old.index(_FALLBACK[name]) if _FALLBACK.get(name) in old else None
        if j is not None:
            for key in rows:
                state[key][i] = source[key][j]
    new.load_state_dict(state, strict=True)
    return new.to(next(model.parameters()).device).train(model.training)
