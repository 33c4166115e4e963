"""Errors a user can cause, each mapped to a documented exit code.

Every error derives from :class:`DmregError` and from the closest builtin, so callers
may catch either (``except FileExistsError`` works on :class:`OutputExistsError`).
"""

from __future__ import annotations


class DmregError(Exception):
    """Root of all dmreg errors; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(DmregError, ValueError):
    """Options that contradict each other or are out of range."""

    exit_code = 2


class InputError(DmregError, OSError):
    """An input raster is missing, unreadable, truncated or lacks what is needed (e.g. a CRS)."""

    exit_code = 3


class NoOverlapError(DmregError, ValueError):
    """The two rasters do not cover a common area."""

    exit_code = 4


class RegistrationError(DmregError, RuntimeError):
    """Too few reliable matches, or a transform that the matches do not support."""

    exit_code = 5


class FlaggedError(RegistrationError):
    """A mapping was estimated but its predicted error exceeds ``--max-error`` (or its default),
    is unknown, or rests on a weak consensus: nothing is written as if it were good.
    ``result`` holds the estimate for inspection."""

    exit_code = 9

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class OutputExistsError(DmregError, FileExistsError):
    """An output exists and ``overwrite`` was not asked for."""

    exit_code = 6


class LockedError(DmregError, BlockingIOError):
    """Another `dmreg batch` run is writing to the same output folder."""

    exit_code = 7


class OutputWriteError(DmregError, OSError):
    """An output could not be written (disk full, file size limit, permissions): the
    partial file is removed and anything already in its place is left untouched."""

    exit_code = 10


PAIRS_FAILED = 8
"""`dmreg batch` exit code when at least one pair failed (each pair's code is in the summary)."""

EXIT_CODES: dict[int, str] = {
    0: "success",
    2: "usage error (bad option or option combination)",
    3: "input unreadable or invalid (missing, truncated, no CRS where one is needed)",
    4: "the rasters do not overlap",
    5: "registration failed (too few inliers, unstable transform)",
    6: "an output exists and --overwrite was not given",
    7: "dmreg batch: another run holds the output folder's lock",
    PAIRS_FAILED: "dmreg batch: one or more pairs failed or were flagged (their codes are in summary.csv/json)",
    9: "flagged: the predicted error (CE90) exceeds --max-error (default 2 working pixels) or is unknown, "
       "the consensus is weak, or the matches follow the model they were read through; no raster written, the "
       "report says why",
    10: "an output could not be written (disk full, file size limit, permissions); no partial file is left",
}
