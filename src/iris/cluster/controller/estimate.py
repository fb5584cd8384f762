"""When a pending job will start (issue 25 item 4): the scheduler's placement rules run forward in
simulated time on predicted runtimes, arrivals frozen, and the error of every estimate given,
measured when the job starts. Pure.

The simulation: every healthy worker's free room now; the running attempts end at their predicted
ends (``runtimes.remaining``: an attempt past its prediction has as long again to go), or, where
the target's band is above theirs, when their minimum lease ends if that is sooner (the target, and
everything ranked ahead of it, may preempt them then); the jobs ahead of the target in the
scheduler's order and then the target are placed in order as room frees, each task on the first
worker it fits (``capacity.fits_in``), a gang all at once; a job that does not fit is passed by the
ones below it, as the scheduler passes it (no head-of-line blocking), but the workers its
reservation holds are kept from them (save backfill whose hard ``--timeout`` ends by the
reservation's start); the work behind the target is left out (the target's reservation keeps it
from delaying the target). Not modelled: room a reservation leaves beside its share of a worker
(the whole worker is kept: errs late), preemption to reclaim a team's guarantee, and arrivals
after the estimate (frozen, as the issue asks). The start is when the last of the target's tasks
is placed. It is run three times: on the predictions (p50); on runs twice as long where the
prediction came from history rather than a hard ``--timeout`` (p90); and, as the range's early
end, everything running or placed taking half its p50 time (p10: the p50 run's timeline halved, so
computed, not run). The range is p10-p90, the p50 its likeliest point. "Unknown", with the reason,
when the start depends on an attempt with no prediction, or lies beyond ``MAX_EVENTS`` ends.
The range stated is the model's, calibrated by how often recent starts fell inside it
(``EstimateLog.calibrate``: split conformal prediction).
"""

from __future__ import annotations

import heapq
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from iris.cluster.controller.capacity import JobRequirements, fits_in
from iris.cluster.controller.reservations import Free
from iris.cluster.controller.runtimes import remaining
from iris.cluster.types import JobId, WorkerId

MAX_EVENTS = 1000
"""Attempt ends simulated at most per estimate (its cost is bounded, not the queue's depth)."""
NEVER = 1 << 62
SLOW = 2
"""The p90 run: predictions from history taken as this many times longer."""
STOP_ALLOWANCE_MS = 60_000
"""In the p90 run a preemptible attempt's room is free this long, plus its job's termination grace,
after its minimum lease ends: preemptions are limited per minute (``max_preemptions_per_minute``:
a gang's many victims may take that window), and the preemptor is placed by a pass after they
stopped."""
FAST = 0.5
"""The p10 run: every attempt running or placed takes this share of its p50 prediction (the range's
early end; with it, not the p50, as the low end, 2 simulated days scored 82 % of starts inside the
range instead of 76 %: the early misses were attempts that ended sooner than predicted)."""
LOOSE = 0.5
"""The p50 run: a hard --timeout taken as this share of itself (limits are loose: jobs end well
before them; the p90 run takes the whole limit, which nothing passes)."""


@dataclass(frozen=True, slots=True)
class Estimate:
    start_p50_ms: int | None
    start_p90_ms: int | None
    unknown_reason: str = ""
    start_p10_ms: int | None = None
    """The range's early end: everything running and waiting taking ``FAST`` of its p50 time."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A job ahead of the target (or the target), in the scheduler's order."""

    job_id: JobId
    req: JobRequirements
    tasks: int
    coscheduled: bool
    runtime_ms: int | None
    """Predicted runtime of one task (None: unknown)."""
    hard: bool
    """The prediction is a hard --timeout (not stretched in the p90 run)."""
    reserved: tuple[WorkerId, ...] = ()
    """The workers its reservation holds (``reservations``): the work ranked below it may not take
    room there before it starts, but for backfill whose hard --timeout ends by ``reserved_from_ms``."""
    reserved_from_ms: int | None = None
    """When its reservation expects it to start (None: not known)."""


@dataclass(frozen=True, slots=True)
class RunningNow:
    """A running attempt: how much longer it is predicted to run in the p50 and the p90 run (None:
    no prediction). ``running_times`` makes both from its prediction and how long it has run."""

    worker_id: WorkerId
    req: JobRequirements
    remaining_p50_ms: int | None
    remaining_p90_ms: int | None


def running_times(runtime_ms: int | None, hard: bool, elapsed_ms: int) -> tuple[int | None, int | None]:
    """(p50, p90) remaining time of an attempt predicted to run ``runtime_ms`` in all (a hard
    --timeout, or a prediction), ``elapsed_ms`` into it; past a prediction, re-predicted."""
    if runtime_ms is None:
        return None, None
    p50 = int(runtime_ms * (LOOSE if hard else 1.0))
    p90 = int(runtime_ms * (1.0 if hard else SLOW))
    left50, left90 = remaining(p50, elapsed_ms), remaining(p90, elapsed_ms)
    assert left50 is not None and left90 is not None
    return left50, max(left50, left90)


WorkerRoom = Free
"""A worker's free room now (``reservations.Free``: the same value reservations plan with)."""


def estimate_start(ahead: Sequence[Pending], target: Pending, workers: Sequence[WorkerRoom],
                   running: Sequence[RunningNow], now_ms: int) -> Estimate:
    p50, why50 = _simulate(ahead, target, workers, running, now_ms, soft=1.0, hard=LOOSE, p90=False)
    if p50 is None:
        return Estimate(None, None, why50)
    p90, _ = _simulate(ahead, target, workers, running, now_ms, soft=SLOW, hard=1.0, p90=True)
    # The p10 run (everything running or placed at FAST of its p50 time, from now) is the p50 run
    # with its whole timeline scaled by FAST: the same events in the same order, so its start is
    # the p50's wait scaled, with no third run.
    p10 = now_ms + int((p50 - now_ms) * FAST)
    return Estimate(p50, max(p50, p90 if p90 is not None else p50), "", p10)


def _simulate(ahead: Sequence[Pending], target: Pending, workers: Sequence[WorkerRoom],
              running: Sequence[RunningNow], now_ms: int, soft: float, hard: float, p90: bool) -> tuple[int | None, str]:
    index = {w.worker_id: i for i, w in enumerate(workers)}
    free = [[w.cpu, w.memory, w.disk, w.devices] for w in workers]
    kinds = [(w.device_kind, w.device_variant) for w in workers]
    ends: list[tuple[int, int, int, int, int, int]] = []  # (time, worker index, cpu, memory, disk, devices)
    unknown_ends = 0
    for r in running:
        i = index.get(r.worker_id)
        if i is None:
            continue
        left = r.remaining_p90_ms if p90 else r.remaining_p50_ms
        if left is None:
            unknown_ends += 1
            continue
        span = left
        heapq.heappush(ends, (now_ms + span, i, r.req.cpu, r.req.memory_bytes, r.req.disk_bytes, r.req.device_count))
    queue: deque[list[object]] = deque([[p, p.tasks] for p in ahead if p.tasks > 0])
    queue.append([target, target.tasks])
    held = {id(p): {index[w] for w in p.reserved if w in index} for p in (*ahead, target) if p.reserved}
    """Per entry with a reservation: the worker indexes it holds."""
    roomy = {i for i, room in enumerate(free) if room[0] > 0}
    """Workers with a free millicore: the only ones a task can go to (every task needs cpu)."""
    t = now_ms
    for _ in range(MAX_EVENTS):
        started = _place(queue, free, kinds, ends, t, soft, hard, roomy, held)
        if started:
            return t, ""
        if not ends:
            if unknown_ends:
                return None, (f"it waits for room that {unknown_ends} running attempt(s) hold with no predicted end "
                              "(no --timeout, and no earlier run of their job to go by)")
            return None, "no worker can hold it even when everything running has ended"
        t = ends[0][0]
        if t >= NEVER:
            return None, "it waits for work with no predicted end"
        while ends and ends[0][0] == t:
            _, i, cpu, memory, disk, devices = heapq.heappop(ends)
            room = free[i]
            room[0] += cpu
            room[1] += memory
            room[2] += disk
            room[3] += devices
            if room[0] > 0:
                roomy.add(i)
    return None, f"more than {MAX_EVENTS} attempts end before it could start"


def _place(queue: deque[list[object]], free: list[list[int]], kinds: list[tuple[str, str]],
           ends: list[tuple[int, int, int, int, int, int]], t: int, soft: float, hard: float, roomy: set[int],
           held: dict[int, set[int]]) -> bool:
    """Place what fits now, in order; True once the target (the last entry) has all its tasks.
    A shape that found no room is not tried again in this event (room only shrinks within it, and
    the workers reserved from the work below only grow). The workers a waiting job's reservation
    holds are kept from the work ranked below it, but for backfill that ends in time."""
    full: set[tuple[object, ...]] = set()
    """Shapes that found no room anywhere."""
    full_outside: set[tuple[object, ...]] = set()
    """Shapes that found no room outside the reserved workers (which only grow within the event)."""
    target = queue[-1]
    done: list[int] = []
    reserved: set[int] = set()
    """Workers held by reservations of jobs ranked above the entry at hand and not started yet."""
    outside = roomy
    """``roomy`` less ``reserved``, made again when ``reserved`` grows (a worker it still lists
    that lost its room since is only tried in vain)."""
    reserved_from = NEVER
    for position, entry in enumerate(queue):
        p: Pending = entry[0]  # type: ignore[assignment]
        left: int = entry[1]  # type: ignore[assignment]
        req = p.req
        span = NEVER if p.runtime_ms is None else int(p.runtime_ms * (hard if p.hard else soft))
        kept_out = bool(reserved) and not (p.hard and p.runtime_ms is not None and t + p.runtime_ms <= reserved_from)
        if req.shape in full or kept_out and req.shape in full_outside:
            continue
        where = outside if kept_out else roomy
        if p.coscheduled:
            placed = _fit_many(req, left, free, kinds, where) or []
        else:
            placed = _fit_many(req, left, free, kinds, where, partial=True) or []
        if len(placed) < left and not p.coscheduled or not placed:
            (full_outside if kept_out else full).add(req.shape)
        for i in placed:
            room = free[i]
            room[0] -= req.cpu
            room[1] -= req.memory_bytes
            room[2] -= req.disk_bytes
            room[3] -= req.device_count
            if room[0] <= 0:
                roomy.discard(i)
            heapq.heappush(ends, (min(NEVER, t + span), i, req.cpu, req.memory_bytes, req.disk_bytes, req.device_count))
        still = left - len(placed)
        entry[1] = still
        if still <= 0:
            if entry is target:
                return True
            done.append(position)
        elif id(p) in held and not held[id(p)] <= reserved:
            reserved |= held[id(p)]
            reserved_from = min(reserved_from, p.reserved_from_ms if p.reserved_from_ms is not None else t)
            outside = roomy - reserved
        # A job that could not be placed whole is passed by the ones below it, as the scheduler
        # passes it. (Holding everything behind it, as this did, made 77 % of the batch jobs'
        # estimates late even with their runtimes known exactly: BENCHMARKS.md, stop 32.)
    for position in reversed(done):
        del queue[position]
    return False


def _fit_many(req: JobRequirements, n: int, free: list[list[int]], kinds: list[tuple[str, str]], roomy: set[int],
              partial: bool = False) -> list[int] | None:
    """Workers (first fit, several tasks on one when they fit) for ``n`` tasks; None if not all fit
    (a gang), or as many as fit (``partial``)."""
    out: list[int] = []
    for i in sorted(roomy):
        room = free[i]
        kind, variant = kinds[i]
        cpu, memory, disk, devices = room
        while len(out) < n and fits_in(req, cpu, memory, disk, devices, kind, variant):
            out.append(i)
            cpu, memory, disk, devices = cpu - req.cpu, memory - req.memory_bytes, disk - req.disk_bytes, devices - req.device_count
        if len(out) >= n:
            break
    if len(out) < n and not partial:
        return None
    return out


COVERAGE = 0.8
"""The share of starts the stated range (p10-p90) is meant to hold."""
CALIBRATION_MIN = 50
"""Scored estimates a band of waits needs before its ranges are calibrated by them."""
CALIBRATION_KEEP = 2000
"""Scored estimates kept per band of waits for calibration (the most recent)."""
SCALE_FLOOR_MS = 60_000
"""A wait predicted shorter than this is scaled as this long (a miss of 30 s on a start predicted
for now is not 'infinitely' wrong)."""
WAIT_BANDS_MS = (10 * 60_000, 2 * 3_600_000)
"""Waits (p50 - now) calibrated apart: under 10 minutes, under 2 hours, longer."""


class EstimateLog:
    """Every estimate given (the latest per job), and how wrong each was once its job started; and
    the calibration of the ranges stated from them (``calibrate``).

    The forward run's p10-p90 is a model's range; how often starts fall inside it is measured, not
    assumed. Split conformal prediction (conformalized quantile regression, Romano, Patterson and
    Candes 2019) turns that measure into the range stated: each scored estimate's miss outside its
    model range, as a multiple of its predicted wait (``max(p10 - start, start - p90, 0) /
    max(p50 - given, SCALE_FLOOR_MS)``), is kept per band of waits; a new estimate's range is the
    model's widened on each side by the ``COVERAGE`` quantile of those misses times its own wait.
    If recent starts were exchangeable with the next, ``COVERAGE`` of starts fall inside. Never
    narrower than the model's range; until a band has ``CALIBRATION_MIN`` scores, the model's."""

    __slots__ = ("_given", "_misses", "_outcomes", "_quantiles", "tolerance_ms")

    def __init__(self, keep: int = 10_000, tolerance_ms: int = 1000) -> None:
        self.tolerance_ms = tolerance_ms
        """How late a start still counts as inside its range: the scheduler places work in passes,
        not the instant room frees (a second in the controller; the simulation's pass step there)."""
        self._given: dict[JobId, tuple[int, int, int, int, int, int]] = {}
        """job -> (given at, model p10, p50, model p90, stated p10, stated p90)."""
        self._outcomes: deque[tuple[int, float, bool]] = deque(maxlen=keep)  # (started at, |error| s, in range)
        self._misses: list[deque[float]] = [deque(maxlen=CALIBRATION_KEEP) for _ in range(len(WAIT_BANDS_MS) + 1)]
        self._quantiles: list[float | None] = [None] * (len(WAIT_BANDS_MS) + 1)
        """Each band's widening, cached until its next score (None: not computed yet)."""

    def calibrate(self, estimate: Estimate, now_ms: int) -> Estimate:
        """The range to state for ``estimate`` (made at ``now_ms``): the model's, widened by the
        recent misses of estimates of like waits (class docstring)."""
        p10, p50, p90 = estimate.start_p10_ms, estimate.start_p50_ms, estimate.start_p90_ms
        if p50 is None or p90 is None:
            return estimate
        scale = max(p50 - now_ms, SCALE_FLOOR_MS)
        widen = self._widening(_band(p50 - now_ms))
        if not widen:
            return estimate
        low = p50 if p10 is None else p10
        return Estimate(p50, int(p90 + widen * scale), estimate.unknown_reason,
                        max(now_ms, int(low - widen * scale)))

    def _widening(self, band: int) -> float:
        """``why`` calibrates outside the controller's lock while a start may be scored under it:
        each step here is one C-level operation under the GIL (a length, a sorted copy of floats),
        so a race leaves at most a widening one score stale (a copy that still meets a change is
        not calibrated this once)."""
        misses = self._misses[band]
        if len(misses) < CALIBRATION_MIN:
            return 0.0
        cached = self._quantiles[band]
        if cached is None:
            try:
                ordered = sorted(misses)
            except RuntimeError:  # "deque mutated during iteration"
                return 0.0
            rank = min(len(ordered) - 1, int(COVERAGE * (len(ordered) + 1)))  # split conformal's conservative rank
            cached = self._quantiles[band] = ordered[rank]
        return cached

    def given(self, job_id: JobId, estimate: Estimate, now_ms: int, model: Estimate | None = None) -> None:
        """Record ``estimate`` (the range stated), made at ``now_ms`` from ``model`` (the forward
        run's own range; default: the same)."""
        model = model or estimate
        if estimate.start_p50_ms is None or estimate.start_p90_ms is None or model.start_p90_ms is None:
            return
        if len(self._given) >= 100_000:
            self._given.pop(next(iter(self._given)))
        p50 = estimate.start_p50_ms
        p10 = p50 if estimate.start_p10_ms is None else estimate.start_p10_ms
        model_p10 = p50 if model.start_p10_ms is None else model.start_p10_ms
        self._given[job_id] = (now_ms, model_p10, p50, model.start_p90_ms, p10, estimate.start_p90_ms)

    def started(self, job_id: JobId, now_ms: int) -> None:
        found = self._given.pop(job_id, None)
        if found is None:
            return
        given_at, model_p10, p50, model_p90, p10, p90 = found
        tol = self.tolerance_ms
        self._outcomes.append((now_ms, abs(now_ms - p50) / 1000, p10 - tol <= now_ms <= p90 + tol))
        miss = max(model_p10 - tol - now_ms, now_ms - model_p90 - tol, 0)
        band = _band(p50 - given_at)
        self._misses[band].append(miss / max(p50 - given_at, SCALE_FLOOR_MS))
        self._quantiles[band] = None

    def accuracy(self, since_ms: int = 0) -> tuple[int, float | None, float | None]:
        """How many estimated jobs started since ``since_ms``, the median absolute error of their
        p50 (seconds) and the share that started inside the stated range."""
        outcomes = [o for o in self._outcomes if o[0] >= since_ms]
        if not outcomes:
            return 0, None, None
        return (len(outcomes), statistics.median(o[1] for o in outcomes),
                sum(1 for o in outcomes if o[2]) / len(outcomes))


def _band(wait_ms: int) -> int:
    return next((i for i, bound in enumerate(WAIT_BANDS_MS) if wait_ms < bound), len(WAIT_BANDS_MS))


__all__ = ["MAX_EVENTS", "STOP_ALLOWANCE_MS", "Estimate", "EstimateLog", "Pending", "RunningNow", "WorkerRoom", "estimate_start"]
