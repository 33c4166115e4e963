"""run_batch(): pairs in, outputs and a summary out, under the output folder's lock."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dmreg.batch.executors import EXECUTORS, run_dask, run_local
from dmreg.batch.jobs import PairJob
from dmreg.batch.lock import OutputLock
from dmreg.batch.outputs import PairOutputs, completed_report, remove_temp_files
from dmreg.batch.pairing import Pair
from dmreg.batch.resume import batch_key, why_redo
from dmreg.batch.summary import PairRecord, counts, now, write_summary
from dmreg.errors import UsageError
from dmreg.pipeline import OutputOptions, RegisterOptions

log = logging.getLogger("dmreg")

ProgressFn = Callable[[PairRecord, int, int], None]
"""Called as progress(record, done, total) each time a pair is settled."""


@dataclass(frozen=True)
class BatchOptions:
    out_dir: Path
    workers: int = 1
    executor: str = "local"         # local | dask
    scheduler: str | None = None    # dask: scheduler address; None starts a LocalCluster
    fail_fast: bool = False
    overwrite: bool = False         # redo pairs that are already complete
    qa: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.executor not in EXECUTORS:
            raise UsageError(f"unknown executor {self.executor!r}; choose one of: {', '.join(EXECUTORS)}")
        if self.scheduler and self.executor != "dask":
            raise UsageError("--scheduler needs --executor dask")


@dataclass
class BatchResult:
    records: list[PairRecord]
    summary: Path

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.records)

    @property
    def all_ok(self) -> bool:
        return all(r.status in ("ok", "skipped") for r in self.records)


def run_batch(pairs: list[Pair], options: RegisterOptions, output_options: OutputOptions, batch: BatchOptions,
              progress: ProgressFn | None = None) -> BatchResult:
    """Register every pair into ``batch.out_dir``. Complete pairs from earlier runs are
    skipped, partial and failed ones redone; one pair's failure never stops the others
    unless ``fail_fast``. The summary is rewritten after each pair."""
    out_dir = batch.out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot create the output folder ({exc})") from None
    with OutputLock(out_dir):
        for tmp in remove_temp_files(out_dir):
            log.info("removed %s, left by an interrupted run", tmp.name)
        header = {"started": now(), "finished": None, "out": str(out_dir.resolve()), "executor": batch.executor,
                  "workers": batch.workers, "options": dataclasses.asdict(options)}
        records, jobs, slots = _plan(pairs, options, output_options, batch)
        write_summary(out_dir, header, records)
        settled = 0

        def settle(record: PairRecord) -> None:
            nonlocal settled
            settled += 1
            if progress:
                progress(record, settled, len(records))

        for record in records:
            if record.status != "not run":
                settle(record)

        def on_result(i: int, record: PairRecord) -> bool:
            records[slots[i]] = record
            write_summary(out_dir, header, records)
            settle(record)
            return batch.fail_fast and record.status == "failed"

        stopped = batch.fail_fast and any(r.status == "failed" for r in records)
        if jobs and not stopped:
            if batch.executor == "dask":
                run_dask(jobs, batch.workers, batch.scheduler, on_result)
            else:
                run_local(jobs, batch.workers, on_result)
        header["finished"] = now()
        summary = write_summary(out_dir, header, records)
    return BatchResult(records, summary)


def _plan(pairs: list[Pair], options: RegisterOptions, output_options: OutputOptions,
          batch: BatchOptions) -> tuple[list[PairRecord], list[PairJob], list[int]]:
    """A record per pair (skipped and known failures settled now) and the jobs to run,
    with the record slot each job fills."""
    records, jobs, slots = [], [], []
    devices = _devices(options, len(pairs))
    threads = max(1, (os.cpu_count() or 1) // batch.workers) if not batch.scheduler else 0
    for pair in pairs:
        outputs = PairOutputs.for_pair(batch.out_dir, pair.name, batch.qa)
        record = PairRecord(pair.name, pair.reference, pair.moving, outputs=outputs.relative_to(batch.out_dir))
        if pair.error_code is not None:
            records.append(dataclasses.replace(record, status="failed", exit_code=pair.error_code, error=pair.error))
            continue
        key = batch_key(options, output_options, pair.reference, pair.moving)
        report = None if batch.overwrite else completed_report(outputs, pair.reference, pair.moving)
        reason = why_redo(report.get("batch_key"), key) if report else None
        if report and reason is None:
            record = PairRecord.from_report(record, report, status="skipped")
        else:
            if reason:
                log.info("%s: redone: %s", pair.name, reason)
            job_options = dataclasses.replace(options, device=next(devices))
            jobs.append(PairJob(pair, outputs, job_options, output_options, record, threads, key))
            slots.append(len(records))
        records.append(record)
    return records, jobs, slots


def _devices(options: RegisterOptions, n: int) -> Iterator[str]:
    """Learned-matcher jobs spread round-robin over the CUDA devices when there are
    several; with one device, every worker process shares it (the model is small)."""
    gpus = 0
    if options.matcher == "distillmatch" and options.device in ("auto", "cuda"):
        import torch

        gpus = torch.cuda.device_count()
    for i in range(n):
        yield f"cuda:{i % gpus}" if gpus > 1 else options.device
