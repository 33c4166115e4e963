"""One pair's work, as a picklable job that runs the same in this process, in a
worker process or on a Dask worker: it never raises, it returns a PairRecord."""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass

import cv2

from dmreg.batch.outputs import PairOutputs
from dmreg.batch.pairing import Pair
from dmreg.batch.summary import PairRecord
from dmreg.errors import DmregError, FlaggedError
from dmreg.matchers import Matcher, get_matcher
from dmreg.pipeline import OutputOptions, RegisterOptions, RegistrationResult, register
from dmreg.runtime import set_thread_count

log = logging.getLogger("dmreg")

_MATCHERS: dict[tuple[str, str | None, str], Matcher] = {}
"""Matchers built in this process, kept for its next pairs (learned weights load once)."""


@dataclass(frozen=True)
class PairJob:
    pair: Pair
    outputs: PairOutputs
    options: RegisterOptions
    output_options: OutputOptions   # how to write; its paths are filled in per pair
    record: PairRecord              # the pair's record before it runs (names, relative outputs)
    threads: int = 0                # CPU threads for this process's numeric libraries; 0: leave as is
    key: dict | None = None         # the batch key its report records, so a rerun knows what it was made with


def run_pair(job: PairJob) -> PairRecord:
    """Register one pair and draw its QA picture; failures become a failed record."""
    start = time.perf_counter()
    base = job.record
    _limit_threads(job.threads, job.options.matcher)
    try:
        job.outputs.clear()
        outputs = dataclasses.replace(job.output_options, raster=str(job.outputs.raster),
                                      report=str(job.outputs.report), tiepoints=str(job.outputs.tiepoints),
                                      overwrite=False, report_extra={"batch_key": job.key} if job.key else {})
        try:
            result = register(job.pair.reference, job.pair.moving, job.options, outputs,
                              matcher=_matcher(job.options))
        except FlaggedError as flagged:
            _qa(job, flagged.result)
            return dataclasses.replace(_record(base, flagged.result, start), status="flagged",
                                       exit_code=flagged.exit_code, error=str(flagged))
        _qa(job, result)
    except DmregError as exc:
        return _failed(base, exc.exit_code, str(exc), start)
    except Exception as exc:  # a bug: this pair fails, the others go on
        log.debug("pair %s: %s", job.pair.name, traceback.format_exc())
        return _failed(base, 1, f"internal error: {type(exc).__name__}: {exc}", start)
    return dataclasses.replace(_record(base, result, start), status="ok", exit_code=0)


def _record(base: PairRecord, result: RegistrationResult, start: float) -> PairRecord:
    sel = result.selected
    return dataclasses.replace(base, model=sel.kind, rmse_px=round(float(sel.rmse_px), 4),
                               inliers=int(sel.n_inliers), matches=len(result.matches),
                               time_s=round(time.perf_counter() - start, 3))


def _qa(job: PairJob, result: RegistrationResult) -> None:
    if job.outputs.want_qa:
        from dmreg.qa import write_qa_picture  # matplotlib: 0.6 s to import, only for pictures

        write_qa_picture(result, job.outputs.qa, ref_band=job.options.ref_band, mov_band=job.options.mov_band,
                         title=job.pair.name)


def _failed(base: PairRecord, code: int, message: str, start: float) -> PairRecord:
    return dataclasses.replace(base, status="failed", exit_code=code, error=message,
                               time_s=round(time.perf_counter() - start, 3))


def _matcher(options: RegisterOptions) -> Matcher:
    key = (options.matcher, options.weights, options.device)
    if key not in _MATCHERS:
        _MATCHERS[key] = get_matcher(*key)
    return _MATCHERS[key]


def _limit_threads(threads: int, matcher: str) -> None:
    """Workers sharing a machine each get their share of its cores: N processes that
    each start one thread per core only fight over them."""
    if threads <= 0:
        return
    set_thread_count(threads)
    cv2.setNumThreads(threads)
    if matcher == "distillmatch":
        import torch  # only the learned matcher needs it

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
