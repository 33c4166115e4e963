"""How many threads dmreg's own stages use: one number for the matcher's tile pool,
the reading pool, GDAL's warper and its compressor.

Order of precedence: :func:`set_thread_count` (``--threads``, or ``dmreg batch`` giving
each worker its share), then the ``DMREG_THREADS`` environment variable, then the CPUs
this process may run on (which honours ``taskset`` and container CPU sets).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from threadpoolctl import threadpool_limits

from dmreg.errors import UsageError

THREADS_ENV = "DMREG_THREADS"

_override: int | None = None


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_count() -> int:
    """The number of threads a stage may use."""
    if _override is not None:
        return _override
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return available_cpus()
    try:
        count = int(value)
    except ValueError:
        raise UsageError(f"{THREADS_ENV}={value!r}: expected a whole number of threads") from None
    if count < 1:
        raise UsageError(f"{THREADS_ENV}={value!r}: at least one thread is needed")
    return count


def set_thread_count(count: int | None) -> None:
    """Fix the thread count for this process (None: back to the environment's)."""
    global _override
    if count is not None and count < 1:
        raise UsageError("--threads must be at least 1")
    _override = count


def serial_blas() -> AbstractContextManager:
    """One BLAS thread while the block is running. dmreg's linear algebra is thousands of
    small least-squares fits (9 columns), where OpenBLAS's thread hand-offs cost ten times
    the arithmetic and fight the tile pool for the cores; the parallelism is the pool's."""
    return threadpool_limits(limits=1, user_api="blas")
