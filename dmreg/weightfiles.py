"""Weight files as dmreg writes them: a pair ``NAME.safetensors`` (the tensors) and
``NAME.json`` (the card) named by one path stem, hashed with sha256, written atomically.

Standard library only: the matchers' weight modules and the training code's share it
(``dmreg.matchers`` never imports ``dmreg.train``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

SUFFIXES = (".json", ".safetensors")
"""The suffixes of a pair's two files, stripped from a path to give its stem."""


def path_stem(path: str | Path) -> Path:
    """The stem of either file of a pair (or of the stem itself). Only our own suffixes
    are stripped: a dot elsewhere in a name is part of the name."""
    p = Path(path)
    for suffix in SUFFIXES:
        if p.name.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


def pair_paths(stem: Path) -> tuple[Path, Path]:
    """(tensors, card) paths of a stem."""
    return stem.with_name(f"{stem.name}.safetensors"), stem.with_name(f"{stem.name}.json")


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it into place: a
    crash never leaves half a file. The file gets the mode the umask allows (safetensors'
    ``save_file`` would make it owner-only)."""
    tmp = path.with_name(f"{path.name}.dmreg-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def state_mismatch(expected: Mapping, state: Mapping) -> str | None:
    """How a loaded state dict fails to fit a network's ``expected`` one (the first
    three keys missing, unexpected and of a wrong shape), or None when every tensor fits:
    weights load strictly, never with silently missing keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}"
    return None


__all__ = ["SUFFIXES", "file_sha256", "pair_paths", "path_stem", "state_mismatch", "write_atomic"]
