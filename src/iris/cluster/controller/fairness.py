"""Who goes first and who gives way (issue 24): the order a scheduling pass considers pending work
in, and the preemptions it may ask for. Pure: values in, values out; the scheduler calls it.

Order (``FairOrder``): band first (production, interactive, batch); within a band, teams under
their guarantee before teams over it, then by the team's standing, then the user's standing within
the team, then submission. A standing is (the dominant share of the fleet held now + the share of
all decayed usage) / weight, re-evaluated as the pass places work, so a pass that starts from an
empty fleet splits it by weight and a long-saturated fleet drifts to weights over time.

Preemption (``find_preemptions``), only for two reasons, as Kueue and Slurm state them:

- band: a pending task of a higher band that fits nowhere may evict lower-band work;
- reclaim: a team below its guarantee (still within it once the task is placed) may evict work, of
  its band or lower, of another team running beyond its guarantee, never taking that team below
  its guarantee.

Victims: lowest band first, then the team furthest over its share, then the youngest attempt; a
coscheduled job is a victim as a whole gang, and a gang can preempt (all its members placed or
none). An attempt younger than ``min_lease`` is not preempted, except by production work; at most
``budget`` tasks are preempted in one pass (the shell's per-minute rate limit).

No loops (DESIGN "Sharing"): a band victim is in a strictly lower band than its preemptor, so it
can never band-preempt it back, and a band never reclaims from a higher one; a reclaim victim's
team stays at or above its guarantee, and it was strictly above it, while the preemptor's team
ends at or below its own, so neither can reclaim from the other afterwards. Each reclaim strictly
reduces the excess of teams over their guarantees; each band preemption moves work up a band:
repeated passes with no new arrivals reach a fixed point (tested as a Hypothesis property).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, groupby, islice
from operator import attrgetter
from typing import Any

from iris.cluster.bands import BANDS
from iris.cluster.controller.capacity import JobRequirements, fits_in
from iris.cluster.controller.queue import QueuedTasks
from iris.cluster.controller.task import Task
from iris.cluster.sharing import (
    SharingConfig,
    add_amounts,
    dominant_share,
    guarantee_ratio,
    within,
)
from iris.cluster.types import JobId, TaskId, WorkerId

PRODUCTION = 0
Amounts = dict[str, float]
_AMOUNTS: dict[tuple[tuple[int, int, int, str, str, int], str, str], Amounts] = {}


def forget_amounts() -> None:
    """A new sharing policy may count devices under other keys: compute amounts afresh."""
    _AMOUNTS.clear()


def task_amounts(config: SharingConfig, req: JobRequirements, worker_variant: str) -> Amounts:
    """What one task of ``req`` holds on a worker of ``worker_variant``, as shares count it."""
    key = (req.shape, worker_variant, config.source)
    found = _AMOUNTS.get(key)
    if found is None:
        found = {"cpu": req.cpu, "memory": req.memory_bytes}
        if req.device_kind != "cpu" and req.device_count:
            found[config.charge_key(req.device_kind, worker_variant or req.device_variant)] = req.device_count
        if len(_AMOUNTS) > 4096:
            _AMOUNTS.clear()
        _AMOUNTS[key] = found
    return found


@dataclass(slots=True)
class ShareBook:
    """Standings during one pass: what each team and user holds (tentative placements and
    evictions included), their decayed usage, the fleet's totals."""

    config: SharingConfig
    fleet: Mapping[str, float]
    team_held: dict[str, Amounts] = field(default_factory=dict)
    user_held: dict[str, Amounts] = field(default_factory=dict)
    team_usage: Mapping[str, float] = field(default_factory=dict)
    user_usage: Mapping[str, float] = field(default_factory=dict)
    total_usage: float = 0.0
    _unlimited: bool | None = None
    """No team has a limit (known on first use): ``over_limit`` is one comparison."""
    _later: list[Any] | None = None
    """[team, user, amounts, n]: ``take_one`` placements not added yet (every read adds them first)."""

    def __post_init__(self) -> None:
        self.team_held = {team: dict(held) for team, held in self.team_held.items()}
        self.user_held = {user: dict(held) for user, held in self.user_held.items()}
        self.total_usage = sum(self.team_usage.values())

    def held(self, team: str) -> Amounts:
        if self._later is not None:
            self._settle()
        return self.team_held.get(team) or {}

    def under_guarantee(self, team: str) -> bool:
        return guarantee_ratio(self.held(team), self.config.policy(team).guarantee) < 1

    def standing(self, team: str) -> float:
        """(Share of the fleet held + share of all decayed usage) / weight: lower goes first."""
        usage = self.team_usage.get(team, 0.0) / self.total_usage if self.total_usage > 0 else 0.0
        return (dominant_share(self.held(team), self.fleet) + usage) / self.config.policy(team).weight

    def team_key(self, team: str) -> tuple[int, float]:
        return (0 if self.under_guarantee(team) else 1, self.standing(team))

    def user_key(self, user: str) -> float:
        if self._later is not None:
            self._settle()
        usage = self.user_usage.get(user, 0.0) / self.total_usage if self.total_usage > 0 else 0.0
        return dominant_share(self.user_held.get(user) or {}, self.fleet) + usage

    def team_room(self, team: str, amounts: Mapping[str, float], next_key: tuple[int, float] | None) -> int:
        """How many more tasks of ``amounts`` the team may take before its key passes ``next_key``
        (the next team's) or it crosses its guarantee: the pass checks the key again only then
        (keys only grow as a team is given work, so this is exact up to one task)."""
        if next_key is None:
            return _UNBOUNDED
        held = self.held(team)
        policy = self.config.policy(team)
        room = _UNBOUNDED
        tier = 0 if guarantee_ratio(held, policy.guarantee) < 1 else 1
        if tier == 0:
            for key, guaranteed in policy.guarantee.items():
                amount = amounts.get(key, 0)
                if amount > 0:
                    room = min(room, int((guaranteed - held.get(key, 0)) // amount) + 1)
            if next_key[0] == 1:
                return max(1, room)
        usage = self.team_usage.get(team, 0.0) / self.total_usage if self.total_usage > 0 else 0.0
        allowed = next_key[1] * policy.weight - usage
        return max(1, min(room, _share_room(held, amounts, self.fleet, allowed)))

    def user_room(self, user: str, amounts: Mapping[str, float], next_user_key: float) -> int:
        """Like ``team_room``, for a user within a team against the next user's standing."""
        if self._later is not None:
            self._settle()
        usage = self.user_usage.get(user, 0.0) / self.total_usage if self.total_usage > 0 else 0.0
        return max(1, _share_room(self.user_held.get(user) or {}, amounts, self.fleet, next_user_key - usage))

    def take_one(self, team: str, user: str, amounts: Mapping[str, float]) -> None:
        """One placement of ``amounts``, the hot path of a pass: the run of placements of one
        job by one user is added as a count, once, when something next reads the book (exact:
        amounts are whole numbers)."""
        later = self._later
        if later is not None and later[2] is amounts and later[0] is team and later[1] is user:
            later[3] += 1
            return
        if later is not None:
            self._settle()
        self._later = [team, user, amounts, 1]

    def _settle(self) -> None:
        team, user, amounts, n = self._later  # type: ignore[misc]
        self._later = None
        self.take(team, user, {key: amount * n for key, amount in amounts.items()} if n > 1 else amounts)

    def take(self, team: str, user: str, amounts: Mapping[str, float], sign: int = 1) -> None:
        if self._later is not None:
            self._settle()
        if sign < 0:
            add_amounts(self.team_held.setdefault(team, {}), amounts, sign)
            add_amounts(self.user_held.setdefault(user, {}), amounts, sign)
            return
        team_held = self.team_held.get(team)
        if team_held is None:
            team_held = self.team_held[team] = {}
        user_held = self.user_held.get(user)
        if user_held is None:
            user_held = self.user_held[user] = {}
        for key, amount in amounts.items():  # the hot path of a pass: one placement
            team_held[key] = team_held.get(key, 0) + amount
            user_held[key] = user_held.get(key, 0) + amount

    def has_limits(self) -> bool:
        """Whether any team has a limit (a pass with none skips ``over_limit`` per placement)."""
        if self._unlimited is None:
            self._unlimited = not self.config.default.limit and not any(t.limit for t in self.config.teams.values())
        return not self._unlimited

    def over_limit(self, team: str, amounts: Mapping[str, float]) -> str:
        """"" when the team may hold ``amounts`` more, else a reason naming the limit."""
        if not self.has_limits():
            return ""
        limit = self.config.policy(team).limit
        if not limit:
            return ""
        after = dict(self.held(team))
        add_amounts(after, amounts)
        key = within(after, limit)
        if not key:
            return ""
        amount = limit[key]
        shown = f"{amount / 1000:g}" if key == "cpu" else f"{amount / 2**30:g}GiB" if key == "memory" else f"{amount:g}"
        return f"team {team} is at its limit ({key} {shown})"


_UNBOUNDED = 1 << 30
SLACK = 0.002
"""How far (in standing: a share of the fleet, over weight) a team may get ahead of the next one
before the pass turns to it: 0.2 % of the fleet, so a big fleet is shared in runs of tasks, not one
task per team in turn (a heap operation per task), and a small one still task by task."""


def _share_room(held: Mapping[str, float], amounts: Mapping[str, float], fleet: Mapping[str, float],
                allowed: float) -> int:
    """Tasks of ``amounts`` that fit before the dominant share of ``held`` passes ``allowed``, plus one."""
    room = _UNBOUNDED
    for key, amount in amounts.items():
        total = fleet.get(key, 0)
        if amount > 0 and total > 0:
            room = min(room, int((allowed * total - held.get(key, 0)) // amount) + 1)
    return room


@dataclass(slots=True)
class FairInputs:
    """What a scheduling pass needs to share: the policy, what teams and users hold and have used,
    the running attempts (built only if some waiting work may preempt), the preemption budget left
    this minute, and the tasks that already preempted and wait for their victims to stop."""

    config: SharingConfig
    team_held: Mapping[str, Amounts]
    user_held: Mapping[str, Amounts]
    team_usage: Mapping[str, float]
    user_usage: Mapping[str, float]
    holders: Callable[[], list[Holder]] = list
    budget: int = 0
    nominated: frozenset[TaskId] | set[TaskId] = frozenset()
    reservations: Sequence[Any] = ()
    """The reservations the last full pass made (``reservations.Reservation``): every pass keeps them whole."""
    max_reservations: int = 0


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose a job is, for ordering: its band's rank, team and user."""

    band: int
    team: str
    user: str


class _Run:
    """One job's consecutive pending tasks, read from the front as a pass takes them (lazily: a pass
    that stops early never walks the rest of a long run)."""

    __slots__ = ("head", "it", "job_id", "left")

    def __init__(self, job_id: JobId, parts: list[Collection[Task]]) -> None:
        self.job_id = job_id
        self.left = sum(len(part) for part in parts)
        """Tasks from ``head`` on. The readers' hot loops step it inline: ``left -= 1`` and
        ``head = next(it, None)`` (no method call per task)."""
        self.it: Iterator[Task] = chain.from_iterable(parts) if len(parts) > 1 else iter(parts[0])
        self.head: Task = next(self.it) if self.left else None  # type: ignore[assignment]

    def rest(self) -> list[Task]:
        """The tasks from the head on (the run keeps its place)."""
        if not self.left:
            return []
        out = [self.head, *islice(self.it, self.left - 1)]
        self.it = iter(out)
        self.head = next(self.it)
        return out


def _runs(pending: Sequence[Task]) -> list[_Run]:
    """The pending tasks as runs of one job's consecutive tasks: O(runs) for the queue's own view
    (``queue.QueuedTasks``), O(tasks) for any other sequence."""
    out: list[_Run] = []
    if isinstance(pending, QueuedTasks):
        parts: list[Collection[Task]] = []
        job_id: JobId | None = None
        for run in pending.runs:
            if run.job_id != job_id and parts:
                out.append(_Run(job_id, parts))  # type: ignore[arg-type]
                parts = []
            job_id = run.job_id
            parts.append(run.tasks.values())
        if parts:
            out.append(_Run(job_id, parts))  # type: ignore[arg-type]
        return out
    return [_Run(job_id, [list(tasks)]) for job_id, tasks in groupby(pending, key=attrgetter("job_id"))]


class FairOrder:
    """The pending tasks in the order a pass considers them, as (task, its job's owner). ``drop()``
    skips the rest of the job last yielded; ``gang()`` is that job's pending tasks from the one
    yielded on. ``book`` None is plain queue order (band, then submission), read lazily: a pass
    that stops early reads no further. Placements are told to the book by the scheduler;
    standings are re-read after each."""

    __slots__ = ("_amounts", "_book", "_dropped", "_gang", "_owner", "_pending")

    def __init__(self, pending: Sequence[Task], owner: Callable[[JobId], Owner | None], book: ShareBook | None,
                 amounts: Callable[[JobId], Mapping[str, float]] | None = None) -> None:
        """``amounts``: what one task of a job holds (for checking standings only as often as they
        can change the order)."""
        self._pending = pending
        self._owner = owner
        self._book = book
        self._amounts = amounts
        self._dropped = False
        self._gang: Callable[[], list[Task]] = list

    def drop(self) -> None:
        self._dropped = True

    def gang(self) -> list[Task]:
        return self._gang()

    def __iter__(self) -> Iterator[tuple[Task, Owner | None]]:
        if self._book is None:
            yield from self._fifo()
            return
        bands: dict[int, dict[str, dict[str, list[_Run]]]] = {}
        orphans: list[_Run] = []
        owners: dict[JobId, Owner | None] = {}
        for run in _runs(self._pending):
            job_id = run.job_id
            owner = owners.get(job_id)
            if job_id not in owners:
                owner = owners[job_id] = self._owner(job_id)
            if owner is None:
                orphans.append(run)
                continue
            bands.setdefault(owner.band, {}).setdefault(owner.team, {}).setdefault(owner.user, []).append(run)
        for run in orphans:  # ended jobs: the scheduler drops them
            self._gang = run.rest
            self._dropped = False
            yield run.head, None
        book = self._book
        for band in sorted(bands):
            teams = bands[band]
            heap = [(book.team_key(team), team) for team in teams]
            heapq.heapify(heap)
            while heap:
                key, team = heapq.heappop(heap)
                now_key = book.team_key(team)
                if now_key != key and heap and now_key > heap[0][0]:
                    heapq.heappush(heap, (now_key, team))
                    continue
                users = teams[team]
                if len(users) > 1:
                    ranked = sorted(users, key=book.user_key)
                    user, next_user = ranked[0], book.user_key(ranked[1]) + SLACK
                else:
                    user, next_user = next(iter(users)), None
                queue = users[user]
                run = queue[0]
                owner = Owner(band, team, user)
                self._gang = run.rest
                # Take this team's tasks while it stays the best team (a heap operation per switch,
                # not per task), reading standings again only when they may have passed the next.
                next_key = (heap[0][0][0], heap[0][0][1] + SLACK) if heap else None
                amounts = self._amounts(run.job_id) if self._amounts is not None else {}
                checks = 1
                while run.left:
                    self._dropped = False
                    yield run.head, owner
                    if self._dropped:
                        run.left = 0
                        break
                    run.left -= 1
                    run.head = next(run.it, None)  # type: ignore[assignment]
                    checks -= 1
                    if checks > 0:
                        continue
                    if next_key is not None and book.team_key(team) > next_key:
                        break
                    if next_user is not None and book.user_key(user) > next_user:
                        break
                    checks = book.team_room(team, amounts, next_key) if amounts else 1
                    if next_user is not None and amounts:
                        checks = min(checks, book.user_room(user, amounts, next_user))
                if not run.left:
                    queue.pop(0)
                    if not queue:
                        del users[user]
                if users:
                    heapq.heappush(heap, (book.team_key(team), team))

    def _fifo(self) -> Iterator[tuple[Task, Owner | None]]:
        if not isinstance(self._pending, QueuedTasks):
            yield from self._fifo_tasks()
            return
        runs = _runs(self._pending)
        skip: JobId | None = None
        """A job none of whose remaining tasks can change anything in this pass: its later runs
        are passed over whole."""
        for r, run in enumerate(runs):
            job_id = run.job_id
            if job_id == skip:
                continue
            owner = self._owner(job_id)
            self._gang = lambda run=run, r=r: run.rest() + [  # type: ignore[misc]
                t for later in runs[r + 1:] if later.job_id == run.job_id for t in later.rest()]
            while run.left:
                self._dropped = False
                yield run.head, owner
                if self._dropped:
                    skip = job_id
                    break
                run.left -= 1
                run.head = next(run.it, None)  # type: ignore[assignment]

    def _fifo_tasks(self) -> Iterator[tuple[Task, Owner | None]]:
        pending = self._pending
        skip: JobId | None = None
        """A job none of whose remaining tasks can change anything in this pass: its run of tasks
        in the queue costs one comparison each."""
        owner: Owner | None = None
        last: JobId | None = None
        for i, task in enumerate(pending):
            job_id = task.job_id
            if job_id == skip:
                continue
            if job_id != last:
                owner, last = self._owner(job_id), job_id
            self._dropped = False
            self._gang = lambda i=i, job_id=job_id: [t for t in pending[i:] if t.job_id == job_id]  # type: ignore[misc]
            yield task, owner
            if self._dropped:
                skip = job_id


# ---------------------------------------------------------------------------------------- preemption


@dataclass(slots=True)
class Holder:
    """A running attempt, as preemption sees it."""

    task: Task
    job_id: JobId
    worker_id: WorkerId
    band: int
    team: str
    user: str
    started_ms: int
    amounts: Amounts
    req: JobRequirements
    coscheduled: bool
    ends_ms: int = 1 << 62
    """When it must end: its start plus its job's ``--timeout`` (else never: ``reservations.NEVER``)."""


@dataclass(frozen=True, slots=True)
class Preemption:
    """Stop ``victim``'s attempt (SIGTERM, its grace, SIGKILL) so that ``by`` can run; ``why`` says
    which rule ("band" or "reclaim") in words."""

    victim: Task
    by: Task
    why: str


@dataclass(slots=True)
class Candidate:
    """Pending work that found no room: a task, or a coscheduled job's whole gang."""

    tasks: list[Task]
    req: JobRequirements
    owner: Owner


class Room:
    """A worker's room during the preemption search: its free capacity now, and its device kind."""

    __slots__ = ("cpu", "device_kind", "device_variant", "devices", "disk", "memory", "worker_id")

    def __init__(self, worker_id: WorkerId, cpu: int, memory: int, disk: int, devices: int, kind: str,
                 variant: str) -> None:
        self.worker_id, self.cpu, self.memory, self.disk, self.devices = worker_id, cpu, memory, disk, devices
        self.device_kind, self.device_variant = kind, variant

    def fits(self, req: JobRequirements, extra: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bool:
        return fits_in(req, self.cpu + extra[0], self.memory + extra[1], self.disk + extra[2], self.devices + extra[3],
                       self.device_kind, self.device_variant)

    def add(self, req: JobRequirements, sign: int) -> None:
        self.cpu += sign * req.cpu
        self.memory += sign * req.memory_bytes
        self.disk += sign * req.disk_bytes
        self.devices += sign * req.device_count


def find_preemptions(candidates: Sequence[Candidate], rooms: Mapping[WorkerId, Room], holders: Sequence[Holder],
                     book: ShareBook, now_ms: int, budget: int) -> list[Preemption]:
    """The preemptions that let pending ``candidates`` run, in their order, at most ``budget``
    victims in all. Pure; updates ``book`` and ``rooms`` as if the victims had stopped and the
    candidates been placed (so later candidates see earlier decisions)."""
    out: list[Preemption] = []
    if budget <= 0 or not candidates or not holders:
        return out
    min_lease = book.config.min_lease_ms
    gangs: dict[JobId, list[Holder]] = {}
    by_worker: dict[WorkerId, list[Holder]] = {}
    for holder in holders:
        if holder.coscheduled:
            gangs.setdefault(holder.job_id, []).append(holder)
        by_worker.setdefault(holder.worker_id, []).append(holder)
    taken: set[TaskId] = set()
    lowest_running = max(h.band for h in holders)
    hopeless: set[tuple[object, ...]] = set()
    """(shape, gang size, band, team) of candidates no preemption could place in this pass: the
    candidates after them alike are not searched again (a pass may see hundreds of each)."""
    for cand in candidates:
        if budget <= 0:
            break
        band, team = cand.owner.band, cand.owner.team
        if band >= lowest_running and not book.under_guarantee(team):
            continue  # no band below it runs anything, and it may not reclaim
        alike = (cand.req.shape, len(cand.tasks), band, team)
        if alike in hopeless:
            continue

        def victims_of(holder: Holder, lost: Mapping[str, Amounts], band: int = band, team: str = team
                       ) -> tuple[list[Holder], str] | None:
            """The unit ``holder`` is evicted as (its gang, or itself), and the rule, if allowed;
            ``lost``: what each team already gives up to this candidate."""
            unit = gangs.get(holder.job_id, [holder]) if holder.coscheduled else [holder]
            if any(h.task.task_id in taken for h in unit):
                return None
            if band != PRODUCTION and any(now_ms - h.started_ms < min_lease for h in unit):
                return None
            if all(h.band > band for h in unit):
                return unit, f"{BANDS[band]} work over {BANDS[unit[0].band]}"
            if any(h.band < band or h.team == team for h in unit):
                return None
            victim_team = unit[0].team
            policy = book.config.policy(victim_team)
            held = dict(book.held(victim_team))
            add_amounts(held, lost.get(victim_team, {}), -1)
            ratio = guarantee_ratio(held, policy.guarantee)
            if ratio <= 1:
                return None  # not running beyond its guarantee
            after = dict(held)
            for h in unit:
                add_amounts(after, h.amounts, -1)
            if guarantee_ratio(after, policy.guarantee) < 1:
                return None  # would take it below its guarantee
            return unit, f"team {team} reclaiming its guarantee from team {victim_team}"

        plan = _plan(cand, rooms, by_worker, victims_of, book, budget)
        if plan is None:
            hopeless.add(alike)
            continue
        placements, units = plan
        for unit, why in units:
            for h in unit:
                taken.add(h.task.task_id)
                out.append(Preemption(h.task, cand.tasks[0], why))
                book.take(h.team, h.user, h.amounts, -1)
                budget -= 1
                room = rooms.get(h.worker_id)
                if room is not None:
                    room.add(h.req, +1)
        for worker_id, amounts in placements:
            rooms[worker_id].add(cand.req, -1)
            book.take(team, cand.owner.user, amounts)
    return out


def _plan(cand: Candidate, rooms: Mapping[WorkerId, Room], by_worker: Mapping[WorkerId, list[Holder]],
          victims_of: Callable[[Holder, Mapping[str, Amounts]], tuple[list[Holder], str] | None], book: ShareBook, budget: int,
          ) -> tuple[list[tuple[WorkerId, Amounts]], list[tuple[list[Holder], str]]] | None:
    """Where each of the candidate's tasks would go and whom it would evict, or None (all or none)."""
    req, team = cand.req, cand.owner.team
    config = book.config
    freed: dict[WorkerId, list[int]] = {}
    chosen: dict[TaskId, tuple[list[Holder], str]] = {}
    lost: dict[str, Amounts] = {}
    placements: list[tuple[WorkerId, Amounts]] = []
    held_after = dict(book.held(team))
    policy = config.policy(team)
    reclaiming = guarantee_ratio(held_after, policy.guarantee) < 1
    for _ in cand.tasks:
        best: tuple[tuple[int, int, int], WorkerId, list[tuple[list[Holder], str]]] | None = None
        for worker_id, room in rooms.items():
            extra = freed.get(worker_id, [0, 0, 0, 0])
            if room.fits(req, tuple(extra)):  # type: ignore[arg-type]
                best = ((0, 0, 0), worker_id, [])
                break
            options = []
            for holder in by_worker.get(worker_id, ()):
                if holder.task.task_id in chosen:
                    continue
                found = victims_of(holder, lost)
                if found is not None:
                    options.append((found, holder))
            if not options:
                continue
            options.sort(key=lambda o: o[1].task.task_id, reverse=True)  # ties: the later task is the younger
            options.sort(key=lambda o: (-o[1].band, -book.standing(o[1].team), -o[1].started_ms))
            add = list(extra)
            picked: list[tuple[list[Holder], str]] = []
            count = 0
            so_far: dict[str, Amounts] = {team: dict(amounts) for team, amounts in lost.items()}
            for (unit, why), holder in options:
                if any(h.task.task_id in chosen for h in unit) or any(u is unit for u, _ in picked):
                    continue
                if why.startswith("team ") and victims_of(holder, so_far) is None:
                    continue  # with the victims already picked here, this one would take its team below
                for h in unit:
                    add_amounts(so_far.setdefault(h.team, {}), h.amounts)
                picked.append((unit, why))
                count += len(unit)
                for h in unit:
                    if h.worker_id == worker_id:
                        add[0] += h.req.cpu
                        add[1] += h.req.memory_bytes
                        add[2] += h.req.disk_bytes
                        add[3] += h.req.device_count
                if room.fits(req, tuple(add)):  # type: ignore[arg-type]
                    break
            else:
                continue
            if count + len(chosen) > budget:
                continue
            cost = (-min(u[0].band for u, _ in picked), count, sum(now_age(u) for u, _ in picked))
            if best is None or cost < best[0]:
                best = (cost, worker_id, picked)
        if best is None:
            return None
        _, worker_id, picked = best
        amounts = task_amounts(config, req, rooms[worker_id].device_variant)
        if any(why.startswith("team ") for _, why in picked):
            # A reclaim: the team must still be within its guarantee with this task placed.
            add_amounts(held_after, amounts)
            if not reclaiming or guarantee_ratio(held_after, policy.guarantee) > 1:
                return None
        else:
            add_amounts(held_after, amounts)
        extra = freed.setdefault(worker_id, [0, 0, 0, 0])
        for unit, why in picked:
            for h in unit:
                chosen[h.task.task_id] = (unit, why)
                add_amounts(lost.setdefault(h.team, {}), h.amounts)
                if h.worker_id == worker_id:
                    extra[0] += h.req.cpu
                    extra[1] += h.req.memory_bytes
                    extra[2] += h.req.disk_bytes
                    extra[3] += h.req.device_count
        extra[0] -= req.cpu
        extra[1] -= req.memory_bytes
        extra[2] -= req.disk_bytes
        extra[3] -= req.device_count
        placements.append((worker_id, amounts))
    units: list[tuple[list[Holder], str]] = []
    seen: set[int] = set()
    for unit, why in chosen.values():
        if id(unit) not in seen:
            seen.add(id(unit))
            units.append((unit, why))
    if not units:
        return None  # it fits without evicting anyone: the next pass places it
    return placements, units


def now_age(unit: list[Holder]) -> int:
    """Work lost by evicting ``unit``: its members' start times, negated (older = more lost)."""
    return -sum(h.started_ms for h in unit)


__all__ = ["Candidate", "FairInputs", "FairOrder", "Holder", "Owner", "Preemption", "Room", "ShareBook", "find_preemptions",
           "forget_amounts", "task_amounts"]
