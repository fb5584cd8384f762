"""Task-to-worker matching. Pure: no threads, dispatch or state mutation; time comes in as ``now_ms``.

``Scheduler.find_assignments(pending_tasks, workers, now_ms)`` keeps the seed's name and argument
shape, but decides from values taken at its boundary: each healthy worker's free room is copied from
its counters (with its frozen total, ``ControllerWorker.total``) into a private working copy, and each
job is its ``JobRequirements`` (derived once from the job's frozen spec). It returns a
``SchedulingTransaction`` value: assignments in queue order, tasks whose scheduling timeout passed,
and a readable reason for each job that could not be placed. Committing the assignments is the shell's job.

- A task fits a worker when ``capacity.fits_in`` says so (the one fit rule); capacity is deducted on
  a private per-call copy of the workers' free room.
- No head-of-line blocking: a job that does not fit is skipped for the rest of the pass, and the
  jobs behind it are still placed.
- First fit with a cursor per requirement shape: capacities only shrink during a pass, so a worker
  that could not take a task of some shape cannot take the next one of the same shape either. This
  keeps a pass O(tasks + workers x shapes).
- A coscheduled job's pending tasks are placed all in one pass or not at all.
- Whole workers to whole work (with sharing, on a fleet with devices; ``_Packing``): a task that
  needs part of a worker's devices and fits only wholly free workers is placed after the work that
  takes them whole, within its band until it has waited ``pack_max_wait``, across bands for its
  first ``pack_delay``.
- The scheduling timeout counts from when the task last became PENDING (DESIGN §4.5).
- A failure retry is not placed before its ``not_before_ms`` (``--retry-backoff``); a gang waits for
  its latest member.
- Deterministic: the same inputs give the same result.
- ``bounded=True`` (the passes woken by events): the pass ends as soon as no worker has a free
  millicore left (every task needs one), so its cost follows what changed (the capacity freed, the
  tasks placed), not the depth of the queue; such a pass neither times tasks out nor explains the
  jobs it did not reach. The periodic full pass does both.
- ``max_assignments``: a pass stops once it placed that many tasks (``SchedulingTransaction.capped``),
  as a bounded one does, so that a fleet-wide dispatch is placed in slices with the controller's
  lock released in between (heartbeats and reports are answered while it goes on); the shell runs
  the next pass at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from iris.cluster.bands import BANDS
from iris.cluster.controller.capacity import JobRequirements, Room, fits_in, unmet_everywhere
from iris.cluster.controller.fairness import (
    Candidate,
    FairInputs,
    FairOrder,
    Owner,
    Preemption,
    ShareBook,
    find_preemptions,
    task_amounts,
)
from iris.cluster.controller.fairness import Room as FairRoom
from iris.cluster.controller.job import Job
from iris.cluster.controller.reservations import (
    NEVER,
    Free,
    Reservation,
    Running,
    backfills,
    holds_against,
    may_use,
    plan,
)
from iris.cluster.controller.state import NEVER_FITS, ControllerState, ControllerWorker
from iris.cluster.controller.task import Task
from iris.cluster.sharing import SharingConfig
from iris.cluster.types import JobId, WorkerId

_Shape = tuple[int, int, int, str, str, int]
RESERVED_FOR_OTHER = "reserved for another job"
"""The start of the pending reason of work kept off room a reservation holds."""


@dataclass(slots=True)
class _Working:
    """The scheduler's private, shrinking copy of one worker's free capacity during a pass."""

    worker: ControllerWorker
    total: Room
    """What the worker offers in all."""
    cpu: int
    memory: int
    disk: int
    devices: int
    device_kind: str
    device_variant: str

    def deduct(self, req: JobRequirements) -> None:
        self.cpu -= req.cpu
        self.memory -= req.memory_bytes
        self.disk -= req.disk_bytes
        self.devices -= req.device_count

    def whole(self) -> bool:
        """All its devices are free (a worker without devices never is: nothing to keep whole)."""
        return self.devices == self.total.devices > 0

    def restore(self, req: JobRequirements) -> None:
        self.cpu += req.cpu
        self.memory += req.memory_bytes
        self.disk += req.disk_bytes
        self.devices += req.device_count


class _Packing:
    """Whole workers to whole work (DESIGN "Sharing", packing). A task that needs part of a worker's
    devices and finds room only on workers with all their devices free is held out of the order and
    placed later in the same pass: after the rest of its band's work while it has waited less than
    ``pack_max_wait``, and, while less than ``pack_delay`` (and it is not production work), after
    every band's. Work that takes such a worker whole (an 8-GPU task, a gang of them) gets it first,
    and the small task fills partly used room when some frees. Without it the fair order lets the
    small tasks of the team first in line split the workers a big job waits for, and the pieces sit
    idle once no small work is left to fill them (``bench_sharing.py``: 2-4 points of utilization).
    A held task that finds no room when its turn comes waits like any other, but one held past every
    band does not preempt: it is the one that chose to wait."""

    __slots__ = ("band_held", "delay_ms", "first_whole", "held_jobs", "late", "max_wait_ms", "phase")

    def __init__(self, config: SharingConfig) -> None:
        self.delay_ms = config.pack_delay_ms
        self.max_wait_ms = max(config.pack_max_wait_ms, config.pack_delay_ms)
        self.band_held: list[tuple[Task, Owner | None]] = []
        self.late: list[tuple[Task, Owner | None]] = []
        self.held_jobs: set[JobId] = set()
        self.phase = 0
        """0: the order itself; 1: its band's held tasks, at its band's end; 2: the young ones, at the end."""
        self.first_whole: dict[_Shape, tuple[int, JobRequirements]] = {}
        """Per shape: the first wholly free worker it fits, known to fit no partly used one (until a
        placement splits a wholly free worker into room it fits: the only way a partly used
        worker appears in a pass)."""

    def yields(self, task: Task, req: JobRequirements, now_ms: int) -> bool:
        return self.phase == 0 and req.device_count > 0 and now_ms - task.pending_since_ms < self.max_wait_ms

    def hold(self, task: Task, owner: Owner | None, now_ms: int) -> None:
        self.held_jobs.add(task.job_id)
        young = now_ms - task.pending_since_ms < self.delay_ms and owner is not None and owner.band > 0
        (self.late if young else self.band_held).append((task, owner))

    def split(self, cap: _Working) -> None:
        """``cap`` was wholly free and is now partly used: shapes its room fits may use it."""
        for shape, (_, req) in list(self.first_whole.items()):
            if fits_in(req, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind, cap.device_variant):
                del self.first_whole[shape]

    def tasks(self, order: FairOrder) -> Iterator[tuple[Task, Owner | None]]:
        """The order, with each band's held tasks at its end and the young ones after every band."""
        band = None
        for task, owner in order:
            if self.band_held and owner is not None and owner.band != band:
                yield from self._flush(self.band_held, 1)
            if owner is not None:
                band = owner.band
            yield task, owner
        if self.band_held:
            yield from self._flush(self.band_held, 1)
        if self.late:
            self.late.sort(key=lambda held: held[1].band if held[1] is not None else -1)
            yield from self._flush(self.late, 2)

    def _flush(self, held: list[tuple[Task, Owner | None]], phase: int) -> Iterator[tuple[Task, Owner | None]]:
        items = list(held)
        held.clear()
        self.phase = phase
        yield from items
        self.phase = 0


@dataclass(slots=True)
class SchedulingTransaction:
    """The result of one scheduling pass: a value, never applied to state by the scheduler."""

    state: ControllerState | None = None
    assignments: list[tuple[Task, ControllerWorker]] = field(default_factory=list)
    timed_out_tasks: list[Task] = field(default_factory=list)
    pending_reasons: dict[JobId, str] = field(default_factory=dict)
    """Why a job's tasks are still waiting, e.g. "no worker has 64 cpus"."""
    reservations: list[Reservation] | None = None
    """A full pass's reservations for the highest-ranked jobs held back by room (None: a bounded
    pass, which keeps the ones it was given)."""
    never_fit: dict[JobId, str] = field(default_factory=dict)
    """Jobs no worker the fleet has (nor one a provisioner could add) can hold, and why: the shell
    parks them (``BandQueue.park``) until capacity of their kind appears."""
    preemptions: list[Preemption] = field(default_factory=list)
    """Running attempts to stop so that waiting work can run (``fairness.find_preemptions``)."""
    fleet: dict[str, float] = field(default_factory=dict)
    """The healthy fleet's totals as shares count them (with sharing on)."""
    capped: bool = False
    """The pass stopped at ``max_assignments``: there may be more to place now."""
    packed: set[JobId] = field(default_factory=set)
    """Jobs whose tasks left wholly free workers to whole work in this pass (``_Packing``): a stated
    cause of waiting, as a higher band or a team over its share is."""

    def tentatively_assign(self, task: Task, worker: ControllerWorker) -> None:
        self.assignments.append((task, worker))

    def rollback_assignment(self, task: Task, worker: ControllerWorker) -> None:
        self.assignments = [(t, w) for (t, w) in self.assignments if t is not task]


class Scheduler:
    """Matches pending tasks to workers. Looks jobs up through ``state`` (or ``get_job``) but never
    changes anything."""

    def __init__(self, state: ControllerState | None = None, *, get_job: Callable[[JobId], Job | None] | None = None,
                 max_assignments: int = 0) -> None:
        """``max_assignments``: a pass stops once it placed that many tasks (0: no limit)."""
        if get_job is None:
            if state is None:
                raise ValueError("Scheduler needs a state or a get_job function")
            get_job = state.get_job
        self._state = state
        self._get_job = get_job
        self._max_assignments = max_assignments

    def find_assignments(
        self,
        pending_tasks: Sequence[Task],
        workers: Sequence[ControllerWorker],
        now_ms: int,
        *,
        bounded: bool = False,
        sharing: FairInputs | None = None,
        possible: Sequence[Room] = (),
    ) -> SchedulingTransaction:
        """``possible``: workers a provisioner could add (work that would fit one is not "never fits")."""
        max_assignments = self._max_assignments
        transaction = SchedulingTransaction(self._state)
        working: list[_Working] = []
        for w in workers:
            if w.healthy:
                total = w.total()
                working.append(_Working(w, total, total.cpu - w.committed_cpu, total.memory - w.committed_memory,
                                        total.disk - w.committed_disk, total.devices - w.committed_devices,
                                        total.device_kind, total.device_variant))
        room = sum(1 for cap in working if cap.cpu > 0)
        """Workers with a free millicore: none left, and nothing more can be placed in this pass."""
        cursors: dict[_Shape, int] = {}
        exhausted: set[JobId] = set()
        reqs: dict[JobId, JobRequirements | None] = {}
        coscheduled_done: set[JobId] = set()
        get_job = self._get_job
        book: ShareBook | None = None
        config = None
        if sharing is not None:
            config = sharing.config
            book = ShareBook(config, _fleet(config, working), dict(sharing.team_held), dict(sharing.user_held),
                             sharing.team_usage, sharing.user_usage)
            transaction.fleet = dict(book.fleet)
        limits = book is not None and book.has_limits()
        """Some team has a limit: each placement is checked against it."""
        owners: dict[JobId, Owner | None] = {}

        def owner_of(job_id: JobId) -> Owner | None:
            if job_id not in owners:
                job = get_job(job_id)
                owners[job_id] = None if job is None else Owner(
                    job.band, config.team_of(job.owner) if config is not None else "", job.owner)
            return owners[job_id]

        def amounts_of(job_id: JobId) -> Mapping[str, float]:
            job = get_job(job_id)
            return task_amounts(config, job.requirements, "") if job is not None and config is not None else {}

        order = FairOrder(pending_tasks, owner_of if book is not None else (lambda job_id: None), book, amounts_of)
        guard = Guard(sharing, working, get_job, transaction, now_ms) if sharing is not None else None
        if sharing is not None and guard is not None and not bounded and sharing.config.reserve_after_ms:
            after = sharing.config.reserve_after_ms
            guard.first_in_line(_waited_longest(pending_tasks, now_ms - after, sharing.max_reservations, get_job), owner_of)
        never_cache: dict[_Shape, str] = {}
        totals: list[Room] = []

        def never_fits(req: JobRequirements) -> str:
            """Why no worker the fleet has or could add holds one task of ``req`` ("" if one does);
            once per shape and pass, and only for work that did not fit."""
            found = never_cache.get(req.shape)
            if found is None:
                if not totals:
                    totals.extend([cap.total for cap in working] + list(possible))
                found = never_cache[req.shape] = unmet_everywhere(req, totals)
            return found

        per_job: dict[JobId, tuple[str, Mapping[str, float]]] = {}
        """What one task of a job holds on the last worker variant it was placed on (the same on
        every worker of that variant)."""
        candidates: list[Candidate] = []
        """Work that found no room in this pass, in order: what preemption may make room for."""

        packing = (_Packing(config) if config is not None and config.pack_max_wait_ms + config.pack_delay_ms > 0
                   and any(cap.total.devices for cap in working) else None)
        """Whole workers to whole work: only a fleet with devices has workers to keep whole."""

        def drop() -> None:
            if packing is None or packing.phase == 0:  # a held task's job is not the order's current one
                order.drop()

        for task, owner in (packing.tasks(order) if packing is not None else order):
            job_id = task.job_id
            if bounded and room == 0:
                break
            if max_assignments and len(transaction.assignments) >= max_assignments:
                transaction.capped = True
                break
            if job_id in reqs:
                req = reqs[job_id]
            else:
                if guard is not None:
                    guard.reach(job_id)  # the jobs met so far rank above it: its reservation binds from here on
                job = get_job(job_id)
                req = reqs[job_id] = None if job is None or job.is_finished() else job.requirements
            if req is None:
                drop()
                continue
            timeout_ms = req.scheduling_timeout_ms
            if timeout_ms > 0 and now_ms - task.pending_since_ms > timeout_ms:
                transaction.timed_out_tasks.append(task)
                continue
            if job_id in exhausted:
                if timeout_ms <= 0:
                    drop()
                continue
            if req.coscheduled:
                if job_id not in coscheduled_done:
                    coscheduled_done.add(job_id)
                    gang = order.gang()
                    waiting = max(gang, key=lambda t: t.not_before_ms)
                    if waiting.not_before_ms > now_ms:  # a retry backs off: the whole gang waits for it
                        transaction.pending_reasons[job_id] = _backoff_reason(waiting, now_ms)
                        exhausted.add(job_id)
                    elif book is not None and owner is not None and (
                            limit := book.over_limit(owner.team, _times(task_amounts(book.config, req, ""), len(gang)))):
                        exhausted.add(job_id)
                        transaction.pending_reasons[job_id] = limit
                    elif not _place_gang(gang, req, working, transaction, book, owner,
                                         guard.for_job(job_id, req, owner, now_ms) if guard else None):
                        exhausted.add(job_id)
                        transaction.pending_reasons[job_id] = _explain(req, working, gang=len(gang))
                        if never := never_fits(req):
                            transaction.never_fit[job_id] = never
                            transaction.pending_reasons[job_id] = f"{NEVER_FITS}: {never}"
                        if owner is not None and not bounded and not never_fits(req):
                            candidates.append(Candidate(gang, req, owner))
                            if guard is not None:
                                guard.reserve(job_id, req, len(gang), owner.band, now_ms)
                    else:
                        room = sum(1 for cap in working if cap.cpu > 0)
                        if packing is not None:
                            packing.first_whole.clear()  # its members may have split a wholly free worker
                if timeout_ms <= 0:
                    drop()
                continue

            if task.not_before_ms > now_ms:  # a failure retry backing off (--retry-backoff)
                transaction.pending_reasons.setdefault(job_id, _backoff_reason(task, now_ms))
                continue
            shape = req.shape
            yielding = packing is not None and packing.yields(task, req, now_ms)
            if yielding:
                known = packing.first_whole.get(shape)  # type: ignore[union-attr]
                if known is not None:
                    cap = working[known[0]]
                    if cap.whole() and fits_in(req, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind,
                                               cap.device_variant):
                        packing.hold(task, owner, now_ms)  # type: ignore[union-attr]
                        continue
                    del packing.first_whole[shape]  # type: ignore[union-attr]
            start = cursors.get(shape, 0)
            placed = False
            limited = ""
            held_for: Reservation | None = None
            """A reservation that kept it off a worker it fits (then the shape's cursor stays there)."""
            guarded = len(working)
            whole = -1
            """The first wholly free worker it fits and leaves to whole work (``_Packing``)."""
            scan = _Scan(start, len(working)) if guard else None
            """Only where a reservation holds workers: their room is tried last."""
            for idx in scan if scan is not None else range(start, len(working)):
                cap = working[idx]
                if fits_in(req, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind, cap.device_variant):
                    if yielding and cap.whole() and req.device_count < cap.devices:
                        if whole < 0:
                            whole = idx
                        continue
                    if scan is not None and guard is not None and scan.first_round \
                            and (h := guard.holder_of(cap.worker.worker_id)) is not None and h.job_id != job_id:
                        scan.defer(idx)  # room another job's reservation holds is used last
                        continue
                    if guard and not guard.allows(cap.worker.worker_id, job_id, req, owner, now_ms):
                        held_for = held_for or guard.holder_of(cap.worker.worker_id)
                        guarded = min(guarded, idx)
                        continue  # reserved for a higher-ranked job (``reservations``)
                    if book is not None and owner is not None:
                        last = per_job.get(job_id)
                        if last is not None and last[0] == cap.device_variant:
                            amounts = last[1]
                        else:
                            amounts = task_amounts(book.config, req, cap.device_variant)
                            per_job[job_id] = (cap.device_variant, amounts)
                        if limits:
                            limited = book.over_limit(owner.team, amounts)
                            if limited:
                                break
                        book.take_one(owner.team, owner.user, amounts)
                    split = packing is not None and 0 < req.device_count < cap.devices and cap.whole()
                    cap.deduct(req)
                    if split:
                        packing.split(cap)  # type: ignore[union-attr]
                    if cap.cpu <= 0:
                        room -= 1
                    transaction.tentatively_assign(task, cap.worker)
                    first = idx if scan is None or scan.later < 0 else min(idx, scan.later)  # passed over, fits
                    cursors[shape] = min(first, guarded) if whole < 0 else min(whole, guarded, first)
                    placed = True
                    break
            if not placed and whole >= 0 and not limited:
                packing.first_whole[shape] = (whole, req)  # type: ignore[union-attr]
                packing.hold(task, owner, now_ms)  # type: ignore[union-attr]
                cursors[shape] = min(whole, guarded)  # no worker before these fits it, wholly free or not
                continue
            if not placed:
                exhausted.add(job_id)
                if limited:
                    transaction.pending_reasons[job_id] = limited
                elif held_for is not None:
                    cursors[shape] = min(cursors.get(shape, guarded), guarded)
                    start_at = "" if held_for.start_ms is None else f", from {max(0, held_for.start_ms - now_ms) // 1000}s on"
                    transaction.pending_reasons[job_id] = (f"{RESERVED_FOR_OTHER}: the room it fits is reserved for "
                                                           f"{held_for.job_id}{start_at}")
                else:
                    cursors[shape] = len(working)
                    reason = transaction.pending_reasons[job_id] = _explain(req, working)
                    if never := never_fits(req):
                        transaction.never_fit[job_id] = never
                        reason = transaction.pending_reasons[job_id] = f"{NEVER_FITS}: {never}"
                    if owner is not None and not bounded and reason.startswith("waiting for free") and sharing:
                        # Each of its waiting tasks may preempt (as many as the rate limit allows).
                        held = packing.phase if packing is not None else 0
                        if held < 2:  # one held past every band chose to wait: it neither preempts nor reserves
                            candidates.extend(Candidate([t], req, owner)
                                              for t in ([task] if held else order.gang()[:sharing.budget]))
                            if guard is not None:
                                guard.reserve(job_id, req, 1, owner.band, now_ms)
                if timeout_ms <= 0:
                    drop()
        if candidates and sharing is not None and book is not None and sharing.budget > 0:
            self._preempt(transaction, candidates, working, sharing, book, now_ms)
        if guard is not None and not bounded:
            transaction.reservations = guard.made
        if packing is not None:
            transaction.packed = packing.held_jobs
            for job_id in packing.held_jobs:  # the cause is stated: why, status and the queue show it
                reason = transaction.pending_reasons.get(job_id, "")
                if reason.startswith("waiting for free"):
                    transaction.pending_reasons[job_id] = (f"{reason}; it left wholly free workers to work that "
                                                           "takes them whole (pack_delay, pack_max_wait)")
        return transaction

    def _preempt(self, transaction: SchedulingTransaction, candidates: list[Candidate], working: list[_Working],
                 sharing: FairInputs, book: ShareBook, now_ms: int) -> None:
        """Ask for the preemptions that let waiting work run (``fairness.find_preemptions``)."""
        waiting = [c for c in candidates if c.tasks[0].task_id not in sharing.nominated]
        if not waiting:
            return
        holders = sharing.holders()
        if not holders:
            return
        rooms = {cap.worker.worker_id: FairRoom(cap.worker.worker_id, cap.cpu, cap.memory, cap.disk, cap.devices,
                                                cap.device_kind, cap.device_variant)
                 for cap in working if cap.worker.schedulable(now_ms)}
        preemptions = find_preemptions(waiting, rooms, holders, book, now_ms, sharing.budget)
        transaction.preemptions = preemptions
        by_job: dict[JobId, list[Preemption]] = {}
        for p in preemptions:
            by_job.setdefault(p.by.job_id, []).append(p)
        for job_id, items in by_job.items():
            transaction.pending_reasons[job_id] = (f"preempting {len(items)} task{'s' if len(items) != 1 else ''} "
                                                   f"({items[0].why}); placed once they stop")


class Guard:
    """The reservations a pass keeps whole (``reservations.may_use``): the last full pass's, and on
    a full pass the ones it makes as it meets the highest-ranked jobs held back by room (so the
    work after them in the same pass already leaves their room). A last pass's gang reservation
    binds all work of its band or lower from the pass's start, any reservation binds work submitted
    after it was made (see ``reservations``). Each reserved worker's room at its reservation's start
    is kept up to date as the pass places work."""

    __slots__ = ("_at_start", "_base", "_by_worker", "_get_job", "_holders", "_now_ms", "_reached", "_seen",
                 "_sharing", "_submitted", "_timeouts", "_transaction", "_unsettled", "_waited", "_working", "made")

    def __init__(self, sharing: FairInputs, working: list[_Working], get_job: Callable[[JobId], Job | None],
                 transaction: SchedulingTransaction, now_ms: int) -> None:
        self._sharing = sharing
        self._working = working
        self._get_job = get_job
        self._by_worker: dict[WorkerId, Reservation] = {}
        self._at_start: dict[WorkerId, Free] = {}
        self._unsettled: set[WorkerId] = set()
        """Workers of the last full pass's reservations whose room at the start does not count yet what
        ends before it (counted when first asked: a pass whose only waiting job is the reserved one
        never lists the running tasks)."""
        self._base: dict[WorkerId, list[Running]] | None = None
        self._holders: dict[WorkerId, list[Running]] | None = None
        self._timeouts: dict[JobId, int] = {}
        self._submitted: dict[JobId, int] = {}
        self._transaction = transaction
        self._seen = 0
        """Assignments of this pass already counted as running (they are read when a reservation is planned)."""
        self._now_ms = now_ms
        self._reached: set[JobId] = set()
        """Jobs the pass has met: work met before a reserved one ranks above it (held back only as
        ``reservations.holds_against`` says)."""
        self.made: list[Reservation] = []
        self._waited: dict[JobId, int] = {}
        """Jobs past ``reserve_after`` (at most ``max_reservations``, the oldest) -> their band: first
        in line for a reservation (``first_in_line``)."""
        for reservation in sharing.reservations:
            self._install(reservation, settle=False)

    def __bool__(self) -> bool:
        return bool(self._by_worker)

    def _running_before(self) -> dict[WorkerId, list[Running]]:
        """What ran where and until when as the pass began (listed once, and only when asked)."""
        if self._base is None:
            self._base = {}
            for h in self._sharing.holders():
                self._base.setdefault(h.worker_id, []).append(Running(h.worker_id, h.req, h.ends_ms))
        return self._base

    def _running(self) -> dict[WorkerId, list[Running]]:
        """What runs where and until when, this pass's placements included (read lazily: only a
        pass that plans a reservation pays for it)."""
        if self._holders is None:
            self._holders = {worker_id: list(runs) for worker_id, runs in self._running_before().items()}
        assignments = self._transaction.assignments
        for task, worker in assignments[self._seen:]:
            job = self._get_job(task.job_id)
            if job is not None:
                timeout = int(job.spec.timeout_seconds * 1000)
                self._holders.setdefault(worker.worker_id, []).append(
                    Running(worker.worker_id, job.requirements, self._now_ms + timeout if timeout > 0 else NEVER))
        self._seen = len(assignments)
        return self._holders

    def _install(self, reservation: Reservation, settle: bool = True) -> None:
        """Hold ``reservation``'s workers: each one's room at its start is its free room now plus
        what runs there and ends before then (counted at once, or for ``settle=False`` when first
        asked, from what ran as the pass began)."""
        running = self._running() if settle else {}
        for cap in self._working:
            worker_id = cap.worker.worker_id
            if worker_id not in reservation.workers or worker_id in self._by_worker:
                continue
            room = Free(worker_id, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind, cap.device_variant)
            self._by_worker[worker_id] = reservation
            self._at_start[worker_id] = room
            if settle:
                self._unsettled.discard(worker_id)  # this pass's own reservation replaced the last one
                self._count_ending(room, reservation, running.get(worker_id, ()))
            else:
                self._unsettled.add(worker_id)

    @staticmethod
    def _count_ending(room: Free, reservation: Reservation, running: Sequence[Running]) -> None:
        for r in running:
            if reservation.start_ms is not None and r.ends_ms <= reservation.start_ms:
                room.cpu += r.req.cpu
                room.memory += r.req.memory_bytes
                room.disk += r.req.disk_bytes
                room.devices += r.req.device_count

    def _room_at_start(self, worker_id: WorkerId, reservation: Reservation) -> Free:
        room = self._at_start[worker_id]
        if worker_id in self._unsettled:
            self._unsettled.discard(worker_id)
            self._count_ending(room, reservation, self._running_before().get(worker_id, ()))
        return room

    def reserve(self, job_id: JobId, req: JobRequirements, members: int, band: int, now_ms: int) -> None:
        """A reservation for a job held back by room, on workers no other reservation holds."""
        if len(self.made) >= self._sharing.max_reservations or any(r.job_id == job_id for r in self.made):
            return
        if job_id not in self._waited:
            owed = sum(1 for j, b in self._waited.items() if b <= band and j not in self._reached)
            if len(self.made) + owed >= self._sharing.max_reservations:
                return  # the rest are owed to jobs of its band or a higher one that waited past reserve_after
        free = [Free(cap.worker.worker_id, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind,
                     cap.device_variant) for cap in self._working
                if cap.worker.worker_id not in self._by_worker or self._by_worker[cap.worker.worker_id].job_id == job_id]
        reservation = plan(job_id, band, req, members, free, self._running(), now_ms)
        if reservation is not None:
            before = next((r for r in self._sharing.reservations if r.job_id == job_id), None)
            reservation = replace(reservation, since_ms=before.since_ms if before is not None else now_ms)
            self._reached.add(job_id)
            self.made.append(reservation)
            for worker_id in reservation.workers:
                if self._by_worker.get(worker_id) is not None and self._by_worker[worker_id].job_id == job_id:
                    del self._by_worker[worker_id]  # last pass's reservation of this job: this one replaces it
            self._install(reservation)

    def first_in_line(self, jobs: Sequence[JobId], owner_of: Callable[[JobId], Owner | None]) -> None:
        """``jobs`` (waiting past ``reserve_after``, the oldest first) go first in line for this
        pass's reservations: work of their band or a lower one met before them gets none of the
        slots they may need (they still take none unless they do not fit)."""
        self._waited = {j: owner.band if (owner := owner_of(j)) is not None else len(BANDS) for j in jobs}

    def reach(self, job_id: JobId) -> None:
        """The pass meets ``job_id``: a reservation of its binds what the pass meets after."""
        self._reached.add(job_id)

    def holder_of(self, worker_id: WorkerId) -> Reservation | None:
        return self._by_worker.get(worker_id)

    def _submitted_at(self, job_id: JobId) -> int:
        submitted = self._submitted.get(job_id)
        if submitted is None:
            job = self._get_job(job_id)
            submitted = self._submitted[job_id] = job.submitted_at_ms if job is not None else 0
        return submitted

    def for_job(self, job_id: JobId, req: JobRequirements, owner: Owner | None,
                now_ms: int) -> Callable[[WorkerId], bool]:
        return lambda worker_id: self.allows(worker_id, job_id, req, owner, now_ms)

    def allows(self, worker_id: WorkerId, job_id: JobId, req: JobRequirements, owner: Owner | None,
               now_ms: int) -> bool:
        res = self._by_worker.get(worker_id)
        if res is None or res.job_id == job_id:
            return True  # not reserved, or its own
        if res.job_id not in self._reached and not holds_against(res, self._submitted_at(job_id)):
            return True  # it ranks above the reserved job in this pass, which is not a gang, and was waiting already
        timeout = self._timeouts.get(job_id)
        if timeout is None:
            job = self._get_job(job_id)
            timeout = self._timeouts[job_id] = int(job.spec.timeout_seconds * 1000) if job is not None else 0
        room = self._room_at_start(worker_id, res)
        if not may_use(res, room, req, owner.band if owner is not None else len(BANDS), timeout, now_ms):
            return False
        if not backfills(res, timeout, now_ms):
            room.cpu -= req.cpu  # it still runs at the start: it takes room the reservation counted on
            room.memory -= req.memory_bytes
            room.disk -= req.disk_bytes
            room.devices -= req.device_count
        return True


class _Scan:
    """The workers from ``start`` on, in order; those ``defer``-red in that round are tried again
    after it, from the first of them. A task takes room another job's reservation holds only when
    nothing else fits it: room a reservation holds may go to a higher band, to backfill, or beyond
    the reservation's share, but drained for a gang it was, in a saturated fleet, the only free room,
    and each production or interactive task landed there as it freed (2 simulated days with every
    reservation kept pass after pass: gangs that held one in every pass still waited up to 14 h,
    production work holding about a third of their reserved workers' room meanwhile)."""

    __slots__ = ("end", "first_round", "later", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.later = -1
        """The first worker deferred (-1: none)."""
        self.first_round = True

    def defer(self, idx: int) -> None:
        if self.later < 0:
            self.later = idx

    def __iter__(self) -> Iterator[int]:
        yield from range(self.start, self.end)
        if self.later >= 0:
            self.first_round = False
            yield from range(self.later, self.end)


def _waited_longest(pending_tasks: Sequence[Task], cutoff_ms: int, most: int,
                    get_job: Callable[[JobId], Job | None]) -> list[JobId]:
    """The ``most`` jobs whose tasks have waited for room since ``cutoff_ms`` or before, the oldest
    first (one task per queue run read, where the queue gives its runs). Only jobs the last pass
    left waiting for room: not one held by its team's limit or backing off, which a reservation
    would not help."""
    since: dict[JobId, int] = {}
    runs = getattr(pending_tasks, "runs", None)
    firsts: Iterable[Task] = (next(iter(run.tasks.values())) for run in runs if run.tasks) if runs is not None \
        else pending_tasks
    for task in firsts:
        waited = task.pending_since_ms or task.submitted_at_ms
        if waited <= cutoff_ms and waited < since.get(task.job_id, cutoff_ms + 1):
            since[task.job_id] = waited
    oldest = sorted(since, key=since.__getitem__)
    return [j for j in oldest if (job := get_job(j)) is not None
            and job.pending_reason.startswith(_WAITING_FOR_ROOM)][:most]


_WAITING_FOR_ROOM = ("waiting for", RESERVED_FOR_OTHER)
"""The pending reasons of work a reservation would help (no room, or room another job holds)."""


def _fleet(config: SharingConfig, working: list[_Working]) -> dict[str, float]:
    """The healthy fleet's totals, as shares count them."""
    fleet: dict[str, float] = {"cpu": 0, "memory": 0}
    for cap in working:
        total = cap.total
        fleet["cpu"] += total.cpu
        fleet["memory"] += total.memory
        if total.device_kind != "cpu" and total.devices:
            key = config.charge_key(total.device_kind, total.device_variant)
            fleet[key] = fleet.get(key, 0) + total.devices
    return fleet


def _times(amounts: Mapping[str, float], n: int) -> dict[str, float]:
    return {key: value * n for key, value in amounts.items()}


def _backoff_reason(task: Task, now_ms: int) -> str:
    seconds = -(-(task.not_before_ms - now_ms) // 1000)
    return f"retrying in {seconds}s (attempt {task.current_attempt_id})"


def _place_gang(gang: list[Task], req: JobRequirements, working: list[_Working],
                transaction: SchedulingTransaction, book: ShareBook | None = None, owner: Owner | None = None,
                allowed: Callable[[WorkerId], bool] | None = None) -> bool:
    placed: list[tuple[Task, _Working]] = []
    start = 0  # capacities only shrink within the gang, so each search resumes where the last one stopped
    for task in gang:
        for idx in range(start, len(working)):
            cap = working[idx]
            if fits_in(req, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind, cap.device_variant) and (
                    allowed is None or allowed(cap.worker.worker_id)):
                cap.deduct(req)
                placed.append((task, cap))
                start = idx
                break
        else:
            for _, cap in placed:
                cap.restore(req)
            return False
    for task, cap in placed:
        transaction.tentatively_assign(task, cap.worker)
        if book is not None and owner is not None:
            book.take(owner.team, owner.user, task_amounts(book.config, req, cap.device_variant))
    return True


def _explain(req: JobRequirements, working: list[_Working], gang: int = 0) -> str:
    """Why a job could not be placed: what no worker has at all, or that all are busy."""
    totals: list[Room] = [w.total for w in working]
    if not totals:
        return "no healthy workers"
    missing = unmet_everywhere(req, totals)
    if missing:
        return missing
    if gang:
        return f"waiting for room for all {gang} coscheduled tasks at once"
    return f"waiting for free resources: none of {len(totals)} workers has room right now"
