"""Training checkpoints a stopped run resumes from: written atomically, read without pickle.

A checkpoint holds only tensors, plain numbers, strings, lists and dicts (state dicts of
models, optimisers and schedulers, the step, the log), so ``torch.load(...,
weights_only=True)`` reads it back without running code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def checkpoint_path(out: str | Path) -> Path:
    """Where the checkpoint of the run writing weights stem ``out`` lives."""
    out = Path(out)
    return out.with_name(f"{out.name}.ckpt.pt")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary name and rename: a run killed while saving keeps the last
    complete checkpoint."""
    tmp = path.with_name(f"{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path``, or None when there is none yet."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
