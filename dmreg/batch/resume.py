"""What makes an earlier result still valid: the options that change results and the
identity of both inputs, stored in each pair's report as ``batch_key``.

Comparing paths alone would skip a pair rerun with another ``--matcher`` or ``--model``,
or whose input was replaced at the same path; the key catches both, and says which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from dmreg.options import OutputOptions, RegisterOptions

HEADER_BYTES = 65536   # the part of a file hashed: its header (size, layout, georeferencing) and first data
NOT_RESULTS = ("device", "batch_size")  # where and how fast, not what comes out


def batch_key(options: RegisterOptions, outputs: OutputOptions, reference: str | None, moving: str) -> dict:
    """The options' hash and each input's identity (size, modification time, header hash)."""
    steer = {k: v for k, v in dataclasses.asdict(options).items() if k not in NOT_RESULTS}
    resampling = outputs.resampling.name if outputs.resampling else "auto"
    write = {"grid": outputs.grid, "resample": outputs.resample, "resampling": resampling,
             "nodata": outputs.nodata, "creation_options": outputs.creation_options}
    text = json.dumps({"register": steer, "write": write}, sort_keys=True, default=str)
    return {"options_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "reference": _identity(reference), "moving": _identity(moving)}


def why_redo(stored: object, current: dict) -> str | None:
    """Why a report made under ``stored`` no longer stands for ``current``, or None."""
    if not isinstance(stored, dict):
        return "its report has no batch key (an older dmreg made it)"
    if stored.get("options_sha256") != current["options_sha256"]:
        return "the options that change results differ from the earlier run's"
    for role in ("reference", "moving"):
        if stored.get(role) != current[role]:
            return f"the {role} raster changed since the earlier run (size, time or header)"
    return None


def _identity(path: str | None) -> dict | None:
    """Size, modification time and the hash of the first bytes: a file replaced or
    rewritten at the same path differs in at least one."""
    if path is None:
        return None
    p = Path(path)
    try:
        stat = p.stat()
        with p.open("rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError:  # /vsi paths and the like: no local identity to compare
        return {"path": str(path)}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "header_sha256": hashlib.sha256(head).hexdigest()}
