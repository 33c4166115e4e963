"""The package layering (written down in pyproject.toml, [tool.importlinter]) holds:
the library never imports the command line, matchers know nothing of rasters, I/O and
estimation never import matchers, only training and the CLI import training, and no
two modules of dmreg import each other in a circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.exit(lint_imports_command())",
         "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "5 kept, 0 broken" in run.stdout, run.stdout[-2000:]
