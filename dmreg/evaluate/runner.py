"""Run matchers over evaluation pairs and measure each pair's error against its truth.

Every pair goes through :func:`dmreg.pipeline.estimate`, the estimation `dmreg register`
runs, with the same options; each matcher is built once and reused for all pairs (a
learned matcher loads its weights once). The error of a pair is the distance between
the estimated and the true reference position of moving pixels: on the report's
10 x 10 check grid (:func:`dmreg.report.check_grid`) for a pair with a truth matrix, at
its check points otherwise; ``error_px`` is the mean, ``max_error_px`` the largest.
A pair whose estimation raises a :class:`DmregError` (too few matches: exit code 5, an
unreadable raster: 3, ...) is a failure with an infinite error; any other exception is
a bug and propagates. An estimate register would flag (its predicted error above
``--max-error`` or the default limit: exit code 9, no raster) is "flagged": its error is
measured, to show what the flag caught, but it scores as infinite, since the user gets
no raster. Nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import numpy as np

from dmreg import __version__
from dmreg.errors import DmregError, FlaggedError, UsageError
from dmreg.evaluate.manifest import EvalPair
from dmreg.evaluate.metrics import AUC_MAX_PX, SUCCESS_THRESHOLDS_PX, auc, median_error, success_rates
from dmreg.matchers import Matcher, get_matcher
from dmreg.pipeline import RegisterOptions, RegistrationResult, estimate, predicted_error_flag
from dmreg.geometry.mapping import CHECK_GRID_SIZE
from dmreg.report import check_grid

SCHEMA = "dmreg.evaluate/1"
ALL = "all"
"""The modalities label of the summary row over every pair of a matcher."""
WRONG_PX = 3.0
"""An "ok" pair further off than this (SR@3's threshold) beyond how exact its truth is
(``truth_tolerance_px``) is counted as a wrong answer reported as good: the defect the
predicted-error flag exists to prevent. Within the truth's own slop an answer cannot be
shown wrong."""


@dataclass(frozen=True)
class MatcherSpec:
    """A matcher to evaluate: a registered name and, for learned matchers, weights (a
    shipped name or a path). Written ``NAME`` or ``NAME@WEIGHTS``."""

    name: str
    weights: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.weights is None else f"{self.name}@{self.weights}"

    @classmethod
    def parse(cls, text: str, default_weights: str | None = None) -> MatcherSpec:
        """``"sift"`` or ``"distillmatch@distillmatch-v0.2"``; a spec without ``@``
        takes ``default_weights``."""
        name, sep, weights = text.strip().partition("@")
        if not name or (sep and not weights.strip()):
            raise UsageError(f"matcher {text!r}: expected NAME or NAME@WEIGHTS")
        return cls(name.strip(), weights.strip() if sep else default_weights)


def parse_matchers(specs: list[str], default_weights: str | None = None) -> list[MatcherSpec]:
    """Matcher specs, each given once (``--compare structural,sift`` gives two)."""
    parsed = [MatcherSpec.parse(s, default_weights) for s in specs if s.strip()]
    if not parsed:
        raise UsageError("no matcher to evaluate")
    labels = [p.label for p in parsed]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UsageError(f"matcher(s) given more than once: {', '.join(twice)}")
    return parsed


@dataclass
class PairResult:
    """One pair evaluated with one matcher. A failed pair has ``exit_code`` and
    ``error`` and no error in pixels; a flagged one has them and its error in pixels.
    Both count as infinite in the metrics."""

    name: str
    modalities: str
    matcher: str
    status: str                        # "ok", "flagged" or "failed"
    exit_code: int | None = None       # of the failure or flag
    error: str | None = None           # message of the failure or flag
    error_px: float | None = None      # mean distance to the truth over the check points
    max_error_px: float | None = None
    model: str | None = None
    inliers: int | None = None
    matches: int | None = None
    points: int = 0                    # check points the error is measured at
    time_s: float = 0.0
    truth_tolerance_px: float = 0.0
    predicted_ce90_px: float | None = None  # what register would report: the flags' evidence, for calibrating them
    probe_followed: float | None = None     # the read-through probe's share (matchers that may lean)

    @property
    def error_for_metrics(self) -> float:
        """The pair's error, +inf for a failure or flag (or a mapping that is not finite there)."""
        if self.status != "ok" or self.error_px is None or not math.isfinite(self.error_px):
            return math.inf
        return self.error_px


@dataclass
class GroupSummary:
    """The metrics of one matcher over the pairs of one modality pair (or all pairs)."""

    matcher: str
    modalities: str
    pairs: int
    failures: int
    flagged: int                       # estimated, but flagged: no raster (counted as failed in the rates)
    wrong_ok: int                      # reported ok yet more than WRONG_PX beyond the truth's tolerance
    success_rates: dict[float, float]  # threshold px -> fraction of pairs with error <= threshold
    median_error_px: float
    auc: float                         # mean success rate over thresholds 0..AUC_MAX_PX
    mean_time_s: float
    truth_tolerance_px: float          # the largest of the group's pairs

    def as_dict(self) -> dict:
        out = {"matcher": self.matcher, "modalities": self.modalities, "pairs": self.pairs,
               "failures": self.failures, "flagged": self.flagged, f"wrong_ok_{_g(WRONG_PX)}px": self.wrong_ok}
        out.update({f"sr_{_g(t)}px": _finite(v) for t, v in self.success_rates.items()})
        out.update({"median_error_px": _finite(self.median_error_px), f"auc_{_g(AUC_MAX_PX)}px": _finite(self.auc),
                    "mean_time_s": _finite(self.mean_time_s), "truth_tolerance_px": self.truth_tolerance_px})
        return out


ProgressFn = Callable[[PairResult, int, int], None]
"""Called as progress(result, done, total) after each pair."""


@dataclass
class Evaluation:
    """The rows of one run (matcher by matcher, pairs in manifest order) and their summaries."""

    rows: list[PairResult]
    summaries: list[GroupSummary]
    matchers: list[str]
    options: RegisterOptions
    info: dict = field(default_factory=dict)   # what the caller wants in the document (manifest path, filters)

    def document(self) -> dict:
        """The JSON document (schema dmreg.evaluate/1); infinities and NaN become null."""
        opts = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v  # --max-error inf: not null
                for k, v in asdict(self.options).items() if k not in ("matcher", "weights")}
        return {
            "schema": SCHEMA,
            "dmreg_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **self.info,
            "matchers": self.matchers,
            "options": opts,
            "metrics": {
                "error": f"mean distance (reference px) between estimated and true positions on a "
                         f"{CHECK_GRID_SIZE} x {CHECK_GRID_SIZE} grid of moving pixel centres, or at the pair's "
                         "check points; a failed pair counts as infinite",
                "success_thresholds_px": list(SUCCESS_THRESHOLDS_PX),
                "auc_max_px": AUC_MAX_PX,
            },
            "summary": [s.as_dict() for s in self.summaries],
            "pairs": [{k: _finite(v) if isinstance(v, float) else v for k, v in asdict(r).items()} for r in self.rows],
        }


def evaluate_pair(pair: EvalPair, options: RegisterOptions, matcher: Matcher, label: str) -> PairResult:
    """Estimate one pair with ``matcher`` and measure its error against the truth."""
    opts = replace(options, ref_band=pair.ref_band or options.ref_band, mov_band=pair.mov_band or options.mov_band)
    base = PairResult(pair.name, pair.modalities, label, status="failed", truth_tolerance_px=pair.truth_tolerance_px)
    t = time.perf_counter()
    try:
        result = estimate(pair.reference, pair.moving, opts, matcher=matcher)
    except DmregError as exc:
        return replace(base, exit_code=exc.exit_code, error=str(exc), time_s=time.perf_counter() - t)
    elapsed = time.perf_counter() - t
    errors = pair_errors(pair, result)  # an infinite distance makes the mean and the max infinite
    flag = predicted_error_flag(result, opts)
    verdict = {"status": "ok", "exit_code": 0} if flag is None else {
        "status": "flagged", "exit_code": FlaggedError.exit_code, "error": flag}
    return replace(base, **verdict, error_px=float(errors.mean()), max_error_px=float(errors.max()),
                   model=result.selected.kind, inliers=int(result.selected.n_inliers), matches=len(result.matches),
                   points=len(errors), time_s=elapsed,
                   predicted_ce90_px=result.uncertainty.ce90_px if result.uncertainty else None,
                   probe_followed=result.probe.followed if result.probe else None)


def pair_errors(pair: EvalPair, result: RegistrationResult) -> np.ndarray:
    """Distances (reference px) between the estimated and the true reference positions:
    on the report's check grid for a truth matrix, at the check points otherwise."""
    if pair.matrix is not None:
        grid = np.asarray(check_grid(result), dtype=np.float64)
        tx, ty = pair.truth(grid[:, 0], grid[:, 1])
        d = np.hypot(grid[:, 2] - tx, grid[:, 3] - ty)
    else:
        points = pair.points()
        ex, ey = result.mapping.apply(points[:, 0], points[:, 1])
        d = np.hypot(np.asarray(ex) - points[:, 2], np.asarray(ey) - points[:, 3])
    return np.where(np.isnan(d), np.inf, d)


def run_evaluation(pairs: list[EvalPair], specs: list[MatcherSpec], options: RegisterOptions,
                   progress: ProgressFn | None = None, info: dict | None = None) -> Evaluation:
    """Every pair with every matcher. Each matcher is built once, and all of them before
    the first pair, so a bad name or weights file fails at once (weights load once)."""
    matchers = [get_matcher(spec.name, spec.weights, options.device) for spec in specs]
    rows: list[PairResult] = []
    total = len(pairs) * len(specs)
    for spec, matcher in zip(specs, matchers):
        opts = replace(options, matcher=spec.name, weights=spec.weights)
        for pair in pairs:
            rows.append(evaluate_pair(pair, opts, matcher, spec.label))
            if progress:
                progress(rows[-1], len(rows), total)
    return Evaluation(rows, summarise(rows), [s.label for s in specs], options, info or {})


def summarise(rows: list[PairResult]) -> list[GroupSummary]:
    """Per matcher (in order of appearance): one summary per modality pair (in order of
    appearance), then one over all its pairs (modalities ``"all"``)."""
    out = []
    for matcher in dict.fromkeys(r.matcher for r in rows):
        mine = [r for r in rows if r.matcher == matcher]
        for modalities in dict.fromkeys(r.modalities for r in mine):
            out.append(summarise_group(matcher, modalities, [r for r in mine if r.modalities == modalities]))
        out.append(summarise_group(matcher, ALL, mine))
    return out


def summarise_group(matcher: str, modalities: str, rows: list[PairResult]) -> GroupSummary:
    errors = np.array([r.error_for_metrics for r in rows], dtype=np.float64)
    return GroupSummary(
        matcher=matcher, modalities=modalities, pairs=len(rows), failures=sum(r.status == "failed" for r in rows),
        flagged=sum(r.status == "flagged" for r in rows),
        wrong_ok=sum(r.status == "ok" and not r.error_for_metrics <= WRONG_PX + r.truth_tolerance_px for r in rows),
        success_rates=success_rates(errors), median_error_px=median_error(errors), auc=auc(errors),
        mean_time_s=float(np.mean([r.time_s for r in rows])) if rows else math.nan,
        truth_tolerance_px=max((r.truth_tolerance_px for r in rows), default=0.0),
    )


def select_pairs(pairs: list[EvalPair], contains: str | None = None, limit: int | None = None) -> list[EvalPair]:
    """The pairs whose name or modalities contain ``contains`` (case-insensitive), then
    the first ``limit`` of them."""
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    if contains:
        needle = contains.lower()
        pairs = [p for p in pairs if needle in p.name.lower() or needle in p.modalities.lower()]
    return pairs[:limit] if limit is not None else pairs


def _finite(value: float | None) -> float | None:
    """JSON has no infinity or NaN: those become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def _g(value: float) -> str:
    return f"{value:g}"
