"""One `dmreg batch` run per output folder, held with an OS lock on a lock file.

The operating system releases the lock when its process ends, however it ends, so a
killed run never blocks the next one and two runs can never both take over a lock left
behind (a check-then-replace on a file's content always has that race). The file's
content, the holder's host, pid and start, only serves the messages.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from dmreg.errors import LockedError

log = logging.getLogger("dmreg")

LOCK_NAME = ".dmreg-batch.lock"
HOLDER_BYTES = 512
"""The holder is written padded to this size in one write, so the file never holds a
half-written or shorter-than-before record (JSON ignores the trailing spaces)."""
TAKE_ATTEMPTS = 5


class OutputLock:
    """``with OutputLock(folder):`` holds the folder's lock or raises LockedError."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        for _ in range(TAKE_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockedError(_held_message(self.path, _read(self.path))) from None
            if _same_file(fd, self.path):  # not a file the previous holder unlinked as we opened it
                self._fd = fd
                self._write_holder(_read(self.path))
                return self
            os.close(fd)
        raise LockedError(f"{self.path}: other runs keep taking and releasing the lock; try again")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: a waiter then sees another file
        os.close(self._fd)
        self._fd = None

    def _write_holder(self, previous: dict | None) -> None:
        if previous:
            log.warning("replacing a stale lock %s: pid %s on %s no longer holds it", self.path,
                        previous.get("pid"), previous.get("host"))
        record = json.dumps(_this_process()).ljust(HOLDER_BYTES).encode()
        os.pwrite(self._fd, record, 0)
        os.ftruncate(self._fd, len(record))
        os.fsync(self._fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _read(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _held_message(path: Path, holder: dict | None) -> str:
    if holder is None:
        return f"{path.parent} is locked by a run that is starting ({path}); try again in a minute"
    return (f"{path.parent} is being processed by another dmreg batch run (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('since')})")
