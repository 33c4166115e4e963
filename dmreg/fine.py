"""The fine stage: full-resolution tiles matched in passes, each read through the model
the previous one fitted, until the model is pinned down.

Tiles are taken in an order that spreads over the overlap and read a batch ahead of the
matcher; a pass stops once the model fitted to its matches so far is precise enough
(:class:`TileBudget`). A second pass removes the bias of sub-pixel peaks measured away
from zero offset, and runs only when the first one moved the model further than the
matcher's peaks are biased by: a first pass that turns out not to move it becomes the
final one while it runs, and searches its remaining tiles as narrowly as a refinement
pass would, reading them through the model its first tiles fitted. One that moves it
a little further than that (within the matcher's ``reread_within_px``) becomes final
too, and reads those first tiles again: a few tiles more instead of a whole second
pass.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.geometry import MultiPoint, Polygon

from dmreg.coarse import SEARCH_SPREAD, TileReader
from dmreg.errors import RegistrationError
from dmreg.estimate.models import KINDS, Transform
from dmreg.estimate.robust import ModelFit, fit_all, summarise_fit
from dmreg.estimate.selection import CVScore, choose_model
from dmreg.estimate.uncertainty import bootstrap_uncertainty
from dmreg.geometry.footprint import extent
from dmreg.geometry.mapping import CHECK_GRID_SIZE, CorrectedMapping, GeorefMapping, PointTransform
from dmreg.geometry.tiling import Grid, plan_tiles, spread_order
from dmreg.matchers import Matcher, TilePair
from dmreg.options import RegisterOptions
from dmreg.probe import PROBE_SHIFT_WORKING_PX, probe_reading
from dmreg.result import Correspondences, ReadProbe

log = logging.getLogger("dmreg")

ProgressFn = Callable[[int, int], None]
"""Called as progress(done, total) after each tile."""

FIRST_PASS_SLACK = 3.0
"""A pass that a refinement pass follows only has to bring the sub-pixel peaks near zero
offset: it stops at three times the target error."""

REFINE_TOLERANCE_PX = 0.05
"""Working pixels: a pass whose model moved no further than this from the one its tiles
were read through needs no refinement pass (the sub-pixel peaks were already measured
near zero offset). A matcher that knows how little its peaks are biased says so in its
``refine_tolerance_px``."""

FINAL_FIRST_CHECK = 16
"""Tiles the final pass matches before its first check: a bootstrap over fewer blocks
underestimates the spread."""

FIRST_CHECK = 8
"""Tiles a pass that a refinement follows matches before its first check of precision."""

PROMOTION_CHECK = 4
"""Tiles a first pass matches before it first asks whether it can be promoted: a global
model fitted to four tiles spread over the overlap already shows whether the one its
tiles are read through is off by more than the tolerance, and a promotion this early
narrows the search of the tiles after them. Whether it has matched enough waits for
``FIRST_CHECK``."""

REREAD_WITHIN_PX = 0.0
"""Working pixels: by default a first pass whose model moved beyond the matcher's
tolerance is never promoted (see ``TileBudget``). A matcher whose peaks stay nearly
unbiased over a wider range of read offsets says how wide in its ``reread_within_px``."""

REFINED_OFFSET = 4.0
"""Working pixels: the search bound of tiles read through a model the fine stage fitted
(a refinement pass, or the rest of a promoted one): their content is already within a
fraction of a pixel, and this leaves room for local distortion."""


@dataclass
class FineResult:
    """The last pass's matches and fits, and what every pass did (for the report)."""

    matches: Correspondences
    fits: dict[str, ModelFit]
    selected: ModelFit
    scores: dict[str, CVScore]
    tiles: int
    tiles_matched: int
    passes: list[dict]
    unsettled_px: np.ndarray | None = None
    """Per check point, how far the last pass moved the answer from the model it read its
    tiles through, when that model came from an earlier pass (None after one pass)."""
    probe: ReadProbe | None = None
    """Whether the matches follow the reading (:mod:`dmreg.probe`), for a matcher that
    does not tolerate read offsets; None for one that does."""


def fine_passes(reader: TileReader, matcher: Matcher, georef: GeorefMapping, overlap: Polygon, initial: Transform,
                coarse: dict, fine_offset: float, work_scale: float, at: np.ndarray, options: RegisterOptions,
                progress: ProgressFn | None, timings: dict[str, float]) -> FineResult:
    """Match and fit up to ``1 + options.refinements`` passes; ``at`` (reference px) is
    where the budget judges the model's precision, ``fine_offset`` the first pass's
    search bound (working px). A matcher with a ``fine_pass`` method (the learned one)
    is told before each pass how far the tiles' content moved since the previous pass
    read the same windows, so it may reuse what it found there."""
    tiles = plan_tiles(overlap, work_scale, _tile_size(matcher, overlap, work_scale, options), options.tile_overlap,
                       options.max_tiles)
    order = spread_order(tiles)
    threshold = options.ransac_threshold_px * work_scale
    passes: list[dict] = []
    told: Callable[[float | None, bool], None] | None = getattr(matcher, "fine_pass", None)
    tolerance = getattr(matcher, "refine_tolerance_px", REFINE_TOLERANCE_PX) * work_scale
    reread_within = max(_reread_within(matcher) * work_scale, tolerance)
    moved: float | None = None
    probing = not tolerates_read_offsets(matcher)  # the final pass keeps what the probe may reuse
    try:
        for refinement in range(1 + options.refinements):
            radius = SEARCH_SPREAD * fine_offset * work_scale
            final = refinement == options.refinements
            budget = TileBudget(_budget_kind(options, passes, coarse), threshold, radius, options, at,
                                options.target_error_px * work_scale, final, timings,
                                None if final else _Promotion(initial, overlap, tolerance, reread_within),
                                area_span=extent(overlap))
            if told:  # tile pixels: how far the model this pass reads through moved from the last one's
                told(None if moved is None else moved / work_scale, final and not probing)
            matches, n_matched, read_through = _match_tiles(reader, matcher, georef, initial, tiles, order,
                                                            fine_offset, progress, timings, budget)
            log.info("pass %d: %d matches in %d of %d tiles read (%d planned)%s", refinement + 1, len(matches),
                     n_matched, budget.tiles_read, len(tiles),
                     f"; stopped at predicted CE90 {budget.ce90_px:.3f} px" if budget.stopped else "")
            t = time.perf_counter()
            fits, selected, scores = fit_models(matches, overlap, threshold, radius, options)
            timings["fit"] += time.perf_counter() - t
            moved = largest_distance(read_through, selected.transform, overlap)
            passes.append({"tiles_read": budget.tiles_read, "tiles_matched": n_matched, "matches": len(matches),
                           "stopped_early": budget.stopped, "promoted": budget.final and not final,
                           "tiles_reread": budget.tiles_reread, "model": selected.kind,
                           "moved_px": round(moved, 4)})
            initial, fine_offset = selected.transform, REFINED_OFFSET
            precise = not budget.stopped or budget.ce90_px <= options.target_error_px * work_scale
            if moved <= tolerance and precise and not final:
                log.info("pass %d moved the model by %.3f px at most: no further pass needed", refinement + 1,
                         moved)
                break
        probe = _probe(reader, matcher, georef, tiles, order, selected, matches, work_scale, threshold, at, options,
                       timings) if probing else None
    finally:
        if told:
            told(None, True)  # no pass follows: whatever the matcher kept for one can go
    unsettled = _apart(read_through, selected.transform, at) if len(passes) > 1 else None
    return FineResult(matches, fits, selected, scores, len(tiles), n_matched, passes, unsettled, probe)


def _probe(reader: TileReader, matcher: Matcher, georef: GeorefMapping, tiles: list[Grid], order: list[int],
           selected: ModelFit, matches: Correspondences, work_scale: float, threshold: float, at: np.ndarray,
           options: RegisterOptions, timings: dict[str, float]) -> ReadProbe:
    """The read-through probe of the final answer; its seconds go to ``timings["probe"]``
    (its reads to "read"), not to the passes' matching."""
    t = time.perf_counter()
    told = getattr(matcher, "fine_pass", None)
    if told:  # the tiles' content moves by the shift: only what does not depend on it is reused
        told(math.hypot(*PROBE_SHIFT_WORKING_PX), True)

    search_radius = SEARCH_SPREAD * REFINED_OFFSET * work_scale

    def match_through(model: PointTransform, probed: list[int]) -> Correspondences:
        aside = {"match": 0.0, "fit": 0.0}
        never_stops = TileBudget(selected.kind, threshold, search_radius, options, at, 0.0, True, aside)
        return _match_tiles(reader, matcher, georef, model, tiles, probed, REFINED_OFFSET, None, aside,
                            never_stops)[0]

    kind = selected.kind if selected.kind in KINDS else selected.transform.base.kind  # local: its global base
    probe = probe_reading(selected.transform, kind, matches, order, work_scale, threshold, search_radius,
                          options.seed, match_through)
    timings["probe"] = time.perf_counter() - t
    log.info("read-through probe: %d matches of %d tiles followed %s of a %.1f px shift", probe.matches, probe.tiles,
             "?" if probe.followed is None else f"{probe.followed:.0%}", math.hypot(*probe.shift_px))
    return probe


def _reread_within(matcher: Matcher) -> float:
    return getattr(matcher, "reread_within_px", REREAD_WITHIN_PX)


def tolerates_read_offsets(matcher: Matcher) -> bool:
    """Whether the matcher's peaks stay nearly unbiased when its tiles are read some way
    off (``reread_within_px``): then how precisely the fine passes start does not
    change their answer, only how many tiles they read. Dense learned matches lean
    toward the offset they were read at, so for them it does."""
    return _reread_within(matcher) > 0


def _tile_size(matcher: Matcher, overlap: Polygon, work_scale: float, options: RegisterOptions) -> int:
    """``--tile-size``; for a matcher that asks for ``balanced_tiles`` (a learned one,
    whose attention and confidence matrix cost the square of a tile's area), the
    smallest side at which as many tiles cover the overlap with ``--tile-overlap``: two
    512 px tiles across 800 px overlap by 224 px, two of 416 px by the 32 asked for."""
    size, gap = options.tile_size, options.tile_overlap
    if not getattr(matcher, "balanced_tiles", False):
        return size
    x0, y0, x1, y1 = overlap.bounds

    def count(extent: float, side: int) -> int:  # tiles along one axis, computed as plan_tiles does
        span, stride = side * work_scale, (side - gap) * work_scale
        return 1 if extent <= span else int(math.ceil((extent - span) / stride)) + 1

    balanced = gap + 1
    for extent in (x1 - x0, y1 - y0):
        n = count(extent, size)
        side = max(math.ceil((extent / work_scale + (n - 1) * gap) / n), gap + 1)
        while count(extent, side) > n:  # rounding: never a tile more than --tile-size gives
            side += 1
        balanced = max(balanced, side)
    return min(size, max(balanced, 64))


@dataclass(frozen=True)
class _Promotion:
    """What makes a first pass the final one: its model stays within ``tolerance`` of
    ``initial``, the model its tiles were read through, everywhere in ``overlap``; or
    within ``reread_within`` (no less than ``tolerance``), and the tiles read so far are
    read again through the new model."""

    initial: Transform
    overlap: Polygon
    tolerance: float
    reread_within: float


class TileBudget:
    """When a pass has matched enough tiles: once the model ``kind`` fitted to its matches
    so far has a predicted CE90 at the check grid no larger than the target. The final
    pass is first checked after ``FINAL_FIRST_CHECK`` tiles; a pass a refinement follows
    after ``FIRST_CHECK``, against ``FIRST_PASS_SLACK`` x the target, as its peaks are
    measured again. Then each time 1.5 x as many have been read, so the checks cost a
    bounded share of the pass. A hard pair never gets there and is matched over every
    planned tile.

    A first pass whose model, at a check (the first after ``PROMOTION_CHECK`` tiles),
    has not moved beyond the ``promotion`` tolerance needs no refinement: it becomes the
    final pass there and then (the full target, checked from ``FINAL_FIRST_CHECK`` tiles
    on), which saves a second reading of the tiles it already matched. Its remaining
    tiles are read through that model (:attr:`read_through`) and searched within
    ``REFINED_OFFSET`` (:attr:`search_offset`), as a refinement pass's would be.

    A model that moved beyond the tolerance but within the promotion's ``reread_within``
    bound promotes the pass too, and the tiles matched so far are then read again
    through it (:attr:`reread`: their reads were off by more than the tolerance). This
    costs the tiles read before the check, where a refinement pass would read every
    tile again; it needs a matcher whose peaks, read that far off, still give a model
    well within its tolerance of the truth."""

    GROWTH = 1.5

    def __init__(self, kind: str, threshold: float, search_radius: float, options: RegisterOptions,
                 at: np.ndarray, target_px: float, final: bool, timings: dict[str, float],
                 promotion: _Promotion | None = None, area_span: np.ndarray | None = None):
        self.threshold, self.search_radius, self.options, self.at = threshold, search_radius, options, at
        self.area_span = area_span  # blocks as the reported error will cut them: a cluster is not yet enough
        self.final_target_px, self.timings, self.kind, self.promotion = target_px, timings, kind, promotion
        self.final = final
        self.target_px = target_px if final else target_px * FIRST_PASS_SLACK
        first = FINAL_FIRST_CHECK if final else PROMOTION_CHECK if promotion else FIRST_CHECK
        self.next_check = first if target_px > 0 else math.inf
        self.tiles_read = 0
        self.stopped = False
        self.ce90_px = math.inf
        self.search_offset: float | None = None  # working px; None: the pass's own bound
        self.read_through: Transform | None = None  # the model later tiles are read through; None: the pass's own
        self.reread = False  # whether the tiles read before that model are read again through it
        self.tiles_reread = 0  # of tiles_read

    @property
    def due(self) -> bool:
        """Whether enough tiles have been read since the last check for another one."""
        return self.tiles_read >= self.next_check

    @property
    def horizon(self) -> float:
        """How many tiles may be read before the next check decides whether more are
        needed (at least one more than so far: a check only runs once there are matches)."""
        return max(self.next_check, self.tiles_read + 1)

    def enough(self, matches: Correspondences) -> bool:
        """Check the matches so far (call when :attr:`due`)."""
        promotion_only = not self.final and self.tiles_read < FIRST_CHECK
        self.next_check = FIRST_CHECK if promotion_only else math.ceil(self.tiles_read * self.GROWTH)
        t = time.perf_counter()
        try:
            fitted = fit_all(matches.pred_px, matches.ref_px, self.threshold, kinds=(self.kind,),
                             weights=matches.confidence, seed=self.options.seed,
                             search_radius=self.search_radius).get(self.kind)
            if fitted is None or not fitted.meaningful or fitted.n_inliers < self.options.min_inliers:
                return False
            if (not self.final and self._promoted(fitted.transform)) or promotion_only:
                return False
            self.ce90_px = bootstrap_uncertainty(fitted.transform, matches.pred_px, matches.ref_px,
                                                 fitted.inliers, matches.tile, self.at, seed=self.options.seed,
                                                 area_span=self.area_span).ce90_px
        finally:
            self.timings["fit"] += time.perf_counter() - t
        log.debug("%d tiles read: %s model, predicted CE90 %.4f px (target %.4f)", self.tiles_read, self.kind,
                  self.ce90_px, self.target_px)
        self.stopped = self.ce90_px <= self.target_px
        return self.stopped

    def _promoted(self, model: Transform) -> bool:
        """Whether this check made the pass final and its next check is still to come."""
        p = self.promotion
        moved = math.inf if p is None else largest_distance(p.initial, model, p.overlap)
        if not moved <= p.reread_within:
            return False
        self.final, self.target_px, self.search_offset = True, self.final_target_px, REFINED_OFFSET
        self.read_through, self.reread = model, moved > p.tolerance
        log.debug("%d tiles read: the model moved %.3f px (tolerance %.3f): this pass is final, reads on through "
                  "it%s", self.tiles_read, moved, p.tolerance, " and reads those tiles again" if self.reread else "")
        self.next_check = max(self.next_check, FINAL_FIRST_CHECK)
        return self.tiles_read < FINAL_FIRST_CHECK or self.reread  # matches read again are not judged yet


def _budget_kind(options: RegisterOptions, passes: list[dict], coarse: dict) -> str:
    """The model whose precision decides when a pass has enough tiles: the one asked for,
    else the global model the previous pass chose, else the coarse stage's, else affine
    (its spread bounds that of its special cases, translation and similarity)."""
    if options.model not in ("auto", "local"):
        return options.model
    previous = passes[-1]["model"] if passes else coarse.get("model", "affine")
    return previous if previous in KINDS else "affine"


def _match_tiles(reader: TileReader, matcher: Matcher, georef: GeorefMapping, initial: Transform,
                 tiles: list[Grid], order: list[int], max_offset: float, progress: ProgressFn | None,
                 timings: dict[str, float], budget: TileBudget) -> tuple[Correspondences, int, Transform]:
    """Match tiles in ``order`` until every one is matched or the budget says the
    matches so far pin the model down. Returns the matches, how many tiles they came
    from, and the model the pass read its tiles through in the end: ``initial``, or the
    budget's :attr:`~TileBudget.read_through` once it promotes the pass (the tiles read
    before are read again through it when the budget says so)."""
    mapping = CorrectedMapping(georef, initial)
    found: dict[int, Correspondences] = {}  # by tile
    queue = deque(order)
    batch: list[tuple[int, TilePair, Transform]] = []

    def flush() -> None:
        t = time.perf_counter()
        results = matcher.match([p for _, p, _ in batch])
        timings["match"] += time.perf_counter() - t
        for (index, _, through), matched in zip(batch, results):
            if len(matched) == 0:
                continue
            grid = tiles[index]
            ref_px = np.column_stack(grid.to_ref(matched.ref_xy[:, 0], matched.ref_xy[:, 1]))
            tile_ref = grid.to_ref(matched.mov_xy[:, 0], matched.mov_xy[:, 1])
            pred_px = np.column_stack(through.inverse(*tile_ref))
            mov_px = np.column_stack(georef.inverse(pred_px[:, 0], pred_px[:, 1]))
            found[index] = Correspondences(mov_px, pred_px, ref_px, matched.confidence,
                                           np.full(len(matched), index))
        batch.clear()

    with closing(_read_ahead(reader, tiles, queue, lambda: mapping, max_offset, lambda: budget.horizon)) as pairs:
        for done, (index, pair, read_by) in enumerate(pairs, start=1):
            budget.tiles_read = done
            if pair is not None and read_by is not mapping and budget.reread:  # read too far off: again
                queue.appendleft(index)
                budget.next_check += 1
                budget.tiles_reread += 1
            elif pair is not None:
                if budget.search_offset is not None and budget.search_offset < pair.max_offset:
                    pair = replace(pair, max_offset=budget.search_offset)
                batch.append((index, pair, read_by.correction))
            if len(batch) >= reader.options.batch_size or (batch and budget.due):
                flush()
                if found and budget.due and budget.enough(Correspondences.concatenate(list(found.values()))):
                    break
                if budget.read_through is not None and budget.read_through is not mapping.correction:
                    mapping = CorrectedMapping(georef, budget.read_through)
                    if budget.reread:
                        queue.extendleft(reversed(found))  # first, in the order they were matched
                        budget.next_check += len(found)  # the check still comes after as many distinct tiles
                        budget.tiles_reread += len(found)
                        found.clear()
            if progress:
                progress(min(done, len(tiles)), len(tiles))
    if batch:
        flush()
    if progress:
        progress(len(tiles), len(tiles))
    if not found:
        return Correspondences.empty(), 0, mapping.correction
    return Correspondences.concatenate(list(found.values())), len(found), mapping.correction


def _read_ahead(reader: TileReader, tiles: list[Grid], queue: deque[int], mapping: Callable[[], CorrectedMapping],
                max_offset: float, horizon: Callable[[], float]) -> Iterator[tuple[int, TilePair | None,
                                                                                  CorrectedMapping]]:
    """The tile pairs whose indices the caller leaves at the front of ``queue``, each
    with the mapping it was read through (``mapping()`` when its read was started),
    read by a background thread up to a batch ahead of the matcher, so that reading and
    matching overlap, but never beyond ``horizon()`` tiles: a read past the check that
    ends the pass would be wasted. Reads still queued when the caller stops are
    cancelled and running ones finished before returning: the next pass must not read
    the same datasets from two threads at once."""
    pending: deque[tuple[int, CorrectedMapping, Future]] = deque()
    submitted = 0
    with ThreadPoolExecutor(1, thread_name_prefix="dmreg-tiles") as pool:
        def fill() -> None:
            nonlocal submitted
            while queue and len(pending) < reader.options.batch_size and submitted < horizon():
                index, through = queue.popleft(), mapping()
                pending.append((index, through, pool.submit(reader.pair, tiles[index], through.inverse,
                                                            max_offset)))
                submitted += 1

        try:
            fill()
            while pending:
                index, through, read = pending.popleft()
                fill()
                yield index, read.result(), through
                fill()  # the caller may have checked the budget, and moved its horizon or the queue
        finally:
            for _, _, read in pending:
                read.cancel()


def _apart(a: Transform, b: Transform, at: np.ndarray) -> np.ndarray:
    """How far apart two models put each point of ``at``."""
    ax, ay = a.apply(at[:, 0], at[:, 1])
    bx, by = b.apply(at[:, 0], at[:, 1])
    return np.hypot(bx - ax, by - ay)


def largest_distance(a: Transform, b: Transform, area: Polygon) -> float:
    """How far apart two models put points of ``area``, at most."""
    return float(np.max(_apart(a, b, points_inside(area))))


def fit_models(matches: Correspondences, overlap: Polygon, threshold: float, search_radius: float,
         options: RegisterOptions) -> tuple[dict[str, ModelFit], ModelFit, dict[str, CVScore]]:
    """Robust fits, kept only when meaningful a contrario, then the model chosen by
    blocked cross-validation (or the one asked for). The local field competes in every
    pass: the next pass then reads its tiles through it, so sub-pixel peaks are measured
    near zero offset everywhere, the distorted areas included."""
    if len(matches) < options.min_inliers:
        raise RegistrationError(
            f"only {len(matches)} matches were found (at least {options.min_inliers} needed); "
            "check that the rasters show the same area, or try another --matcher or a larger --max-tiles"
        )
    kinds = KINDS if options.model in ("auto", "local") else (options.model,)
    src, dst = matches.pred_px, matches.ref_px
    fits = fit_all(src, dst, threshold, kinds=kinds, weights=matches.confidence, seed=options.seed,
                   search_radius=search_radius)
    if options.model in ("auto", "local"):
        fits = _drop_unsupported(fits, src, overlap)
    meaningful = {k: f for k, f in fits.items() if f.meaningful}
    if not meaningful:
        raise RegistrationError(_no_meaningful_model(fits, len(matches), options.model))
    choice = choose_model(meaningful, src, dst, matches.tile, 2 * threshold, points_inside(overlap),
                          seed=options.seed, local={"auto": "candidate", "local": "always"}.get(options.model, "no"))
    chosen = (summarise_fit(choice.local, src, dst, threshold) if choice.kind == "local"
              else meaningful[choice.kind])
    if chosen.n_inliers < options.min_inliers:
        raise RegistrationError(
            f"only {chosen.n_inliers} inliers for the {chosen.kind} model (at least {options.min_inliers} needed)"
        )
    return fits, chosen, choice.scores


def _no_meaningful_model(fits: dict[str, ModelFit], n_matches: int, model: str) -> str:
    which = "geometric" if model in ("auto", "local") else model
    if not fits:
        return f"no {which} model is consistent with the {n_matches} matches"
    best = min(fits.values(), key=lambda f: f.consensus.log10_nfa)
    return (f"no {which} model is meaningful: the best consensus ({best.n_inliers} of {n_matches} matches for "
            f"{best.kind}) could arise from random matches (NFA 10^{best.consensus.log10_nfa:.1f} >= 1); "
            "the evidence is too weak to register")


def points_inside(area: Polygon, n: int = CHECK_GRID_SIZE) -> np.ndarray:
    """An n x n grid over ``area``'s bounds, kept where inside it: the output area the
    model choice must serve, matched or not."""
    x0, y0, x1, y1 = area.bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, n + 2)[1:-1], np.linspace(y0, y1, n + 2)[1:-1])
    pts = np.column_stack([xs.ravel(), ys.ravel()])
    inside = shapely.contains_xy(area, pts[:, 0], pts[:, 1])
    return pts[inside] if inside.any() else pts


def _drop_unsupported(fits: dict[str, ModelFit], src: np.ndarray, overlap: Polygon) -> dict[str, ModelFit]:
    """Homography and polynomial2 extrapolate wildly from clustered points: keep them
    only when the inliers span at least a quarter of the overlap."""
    kept = {}
    for kind, f in fits.items():
        if kind in ("homography", "polynomial2"):
            hull = MultiPoint(src[f.inliers]).convex_hull
            if hull.area < 0.25 * overlap.area:
                continue
        kept[kind] = f
    return kept


