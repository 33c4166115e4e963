"""Helpers shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_dmreg(script: str) -> str:
    """The dmreg console script beside this Python, else on PATH; exit with a message."""
    exe = Path(sys.executable).with_name("dmreg")
    if exe.exists():
        return str(exe)
    found = shutil.which("dmreg")
    if not found:
        sys.exit(f"{script}: the dmreg console script is not on PATH nor beside this Python")
    return found
