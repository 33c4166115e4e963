"""Where the jobs run: this process, a pool of local processes, or a Dask cluster.
Each calls ``on_result(index, record)`` in this process as pairs finish; a True return
stops the run (--fail-fast): jobs not started are cancelled, running ones finish."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from dmreg.batch.jobs import PairJob, run_pair
from dmreg.batch.summary import PairRecord

OnResult = Callable[[int, PairRecord], bool]
EXECUTORS = ("local", "dask")


def run_local(jobs: Sequence[PairJob], workers: int, on_result: OnResult) -> None:
    """One worker runs the jobs in this process; more run them in spawned processes
    (not forked: torch and GDAL hold threads and handles that a fork would copy)."""
    if workers <= 1:
        for i, job in enumerate(jobs):
            if on_result(i, run_pair(job)):
                return
        return
    stop = False
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))
    interrupted = True
    try:
        futures = {pool.submit(run_pair, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            if future.cancelled():
                continue
            i = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # the worker process died (killed, out of memory)
                record = _crashed(jobs[i], exc)
            if on_result(i, record) and not stop:
                stop = True
                for pending in futures:
                    pending.cancel()
        interrupted = False
    finally:  # interrupted (SIGTERM, Ctrl-C): do not wait for the running pairs
        pool.shutdown(wait=not interrupted, cancel_futures=True)


def run_dask(jobs: Sequence[PairJob], workers: int, scheduler: str | None, on_result: OnResult) -> None:
    """Jobs as Dask futures on the cluster at ``scheduler``, or on a LocalCluster of
    ``workers`` single-threaded processes. Workers must see the same paths (a shared
    file system) and have dmreg installed."""
    from distributed import Client, LocalCluster, as_completed as dask_completed

    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                 dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            futures = client.map(run_pair, list(jobs), pure=False)
            index = {future.key: i for i, future in enumerate(futures)}
            for future in dask_completed(futures):
                i = index[future.key]
                try:
                    record = future.result()
                except Exception as exc:
                    record = _crashed(jobs[i], exc)
                if on_result(i, record):
                    client.cancel([f for f in futures if not f.done()])
                    return
    finally:
        if cluster is not None:
            cluster.close()


def _exit_with_parent(parent: int) -> None:
    """Worker initialiser: a thread that ends the worker once the batch process is gone
    (killed, even with SIGKILL), instead of leaving it to run on, orphaned, forever."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="dmreg-parent-watch").start()


def _crashed(job: PairJob, exc: Exception) -> PairRecord:
    return dataclasses.replace(job.record, status="failed", exit_code=1,
                               error=f"worker failed: {type(exc).__name__}: {exc}")
