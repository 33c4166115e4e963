"""One `dmreg batch` run per output folder: a lock file created atomically, holding
the owner's host, pid and process start time, so that a lock left by a killed run is
recognised as stale instead of blocking every later cron run."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from dmreg.errors import LockedError

log = logging.getLogger("dmreg")

LOCK_NAME = ".dmreg-batch.lock"
UNREADABLE_GRACE_S = 60.0
"""A lock file that cannot be parsed is a run caught between creating and writing it,
unless it is older than this."""


class OutputLock:
    """``with OutputLock(folder):`` holds the folder's lock or raises LockedError."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._owner = _this_process()

    def __enter__(self) -> OutputLock:
        for _ in range(2):
            if self._create():
                return self
            holder = _read(self.path)
            reason = stale_reason(holder, self.path)
            if reason is None:
                raise LockedError(_held_message(self.path, holder))
            log.warning("removing a stale lock %s (%s)", self.path, reason)
            self.path.unlink(missing_ok=True)
        raise LockedError(f"{self.path}: another run took the lock at the same moment; try again")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if _read(self.path) == self._owner:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._owner, f)
            f.flush()
            os.fsync(f.fileno())
        return True


def stale_reason(holder: dict | None, path: Path) -> str | None:
    """Why the lock described by ``holder`` is stale, or None while its owner may run.
    Only a process on this host can be checked; another host's lock is trusted."""
    if holder is None:
        age = time.time() - path.stat().st_mtime if path.exists() else UNREADABLE_GRACE_S
        return f"unreadable and {age:.0f} s old" if age >= UNREADABLE_GRACE_S else None
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return f"process {pid} is not running"
    started = _process_start(pid)
    if started is not None and holder.get("process_start") not in (None, started):
        return f"process {pid} is another program now (the pid was reused)"
    return None


def _this_process() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _read(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux /proc), which tells a
    reused pid from the original owner; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _held_message(path: Path, holder: dict | None) -> str:
    if holder is None:
        return f"{path.parent} is locked by a run that is starting ({path}); try again in a minute"
    return (f"{path.parent} is being processed by another dmreg batch run (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('since')}); if no such run exists, delete {path}")
