"""A write that fails (disk full, file too large) is exit 10 with no partial file left.

The child process runs under a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored, so
writes past it fail with EFBIG as they would with ENOSPC on a full disk).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

from helpers import Case

LIMIT_BYTES = 20_000  # the uncompressed aligned band (349 x 352 uint8, ~123 kB) needs more


def _limited() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def test_a_write_past_the_file_size_limit_is_exit_10_and_leaves_nothing(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    cmd = [sys.executable, "-c", "from dmreg_cli.main import app; app()", "register", str(shift_nir.ref),
           str(shift_nir.mov), "-o", str(out), "--co", "COMPRESS=NONE"]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limited, timeout=300)
    assert done.returncode == 10, done.stderr
    assert "cannot write it" in done.stderr
    assert list(tmp_path.iterdir()) == [], "neither the output nor a temporary file is left"


def test_an_existing_output_survives_a_failed_overwrite(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    out.write_bytes(b"the previous result")
    cmd = [sys.executable, "-c", "from dmreg_cli.main import app; app()", "register", str(shift_nir.ref),
           str(shift_nir.mov), "-o", str(out), "--co", "COMPRESS=NONE", "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limited, timeout=300)
    assert done.returncode == 10, done.stderr
    assert out.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned.tif"]
