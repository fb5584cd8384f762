"""How many workers to ask a platform for, and which to give back (DESIGN §8, "Provisioned
workers"). Pure: values in, a ``ScalingPlan`` out; the provisioner (``provisioner.py``) gathers the
inputs and carries the plan out.

The rule, after Ray's autoscaler: the pending tasks that fit nowhere now — neither in the free room
of a live worker nor in an allocation that is still starting (counted as an empty worker of the
configured shape) — are packed first-fit onto new workers of that shape; that many are launched,
up to ``max_workers`` allocations in all. A task bigger than the shape can never be helped by
launching and is counted as ``unfit``. A provisioned worker idle (no task) longer than the idle
timeout is released, and so is an allocation still starting for that long, when no pending task
would use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from iris.cluster.controller.capacity import JobRequirements, Room, WorkerSnapshot, fits
from iris.cluster.types import WorkerId


@dataclass(frozen=True, slots=True)
class WorkerShape:
    """What each provisioned worker offers (``--worker-cpus``, ``--worker-memory``)."""

    cpu: int
    """Whole cores (Slurm's ``--cpus-per-task``)."""
    memory_bytes: int
    disk_bytes: int = 0

    def room(self) -> Room:
        return Room(self.cpu * 1000, self.memory_bytes, self.disk_bytes or 2**62, 0, "cpu", "")


@dataclass(frozen=True, slots=True)
class Demand:
    """``count`` pending tasks that need ``requirements`` each."""

    requirements: JobRequirements
    count: int


@dataclass(frozen=True, slots=True)
class ProvisionedWorker:
    """An allocation the provisioner holds: starting (not registered yet) or serving as a worker."""

    worker_id: WorkerId
    started_ms: int
    """When it was requested."""
    registered: bool
    idle_since_ms: int | None
    """Registered and running no task since then (None: busy, or not registered)."""


@dataclass(frozen=True, slots=True)
class ScalingPlan:
    launch: int
    release: tuple[WorkerId, ...]
    unfit: int
    """Pending tasks that no worker of the shape could hold (launching more would not help)."""


def plan_scaling(
    demand: Sequence[Demand],
    live: Sequence[WorkerSnapshot],
    provisioned: Sequence[ProvisionedWorker],
    shape: WorkerShape,
    *,
    max_workers: int,
    idle_timeout_ms: int,
    now_ms: int,
) -> ScalingPlan:
    """See the module docstring. ``live``: every healthy worker (provisioned or not) with its free
    room; ``provisioned``: every allocation the provisioner holds (the ``max_workers`` budget)."""
    registered = {p.worker_id for p in provisioned if p.registered}
    rooms: list[list[int]] = [[w.free.cpu, w.free.memory, w.free.disk, w.free.devices] for w in live if w.healthy]
    kinds = [(w.free.device_kind, w.free.device_variant) for w in live if w.healthy]
    used_ids: list[WorkerId] = [w.worker_id for w in live if w.healthy]
    starting = [p for p in provisioned if not p.registered]
    empty = shape.room()
    for _ in starting:
        rooms.append([empty.cpu, empty.memory, empty.disk, empty.devices])
        kinds.append((empty.device_kind, empty.device_variant))
        used_ids.append(WorkerId(""))
    wanted: set[int] = set()
    """Indexes of rooms a pending task was placed in (those are not idle)."""
    new_rooms: list[list[int]] = []
    unfit = 0
    for item in sorted(demand, key=lambda d: (-d.requirements.cpu, -d.requirements.memory_bytes)):
        req = item.requirements
        if not fits(req, empty):
            # A job no new worker could hold: placed only on what exists, never a reason to launch.
            unfit += item.count - _place(req, item.count, rooms, kinds, wanted)
            continue
        left = item.count - _place(req, item.count, rooms, kinds, wanted)
        while left > 0:
            room = [empty.cpu, empty.memory, empty.disk, empty.devices]
            new_rooms.append(room)
            placed = _place(req, left, [room], [(empty.device_kind, empty.device_variant)], set())
            left -= max(placed, 1)
    launch = max(0, min(len(new_rooms), max_workers - len(provisioned)))
    release: list[WorkerId] = []
    index_of = {worker_id: i for i, worker_id in enumerate(used_ids) if worker_id}
    for p in provisioned:
        if p.registered:
            idle_for = now_ms - p.idle_since_ms if p.idle_since_ms is not None else -1
            i = index_of.get(p.worker_id)
            if idle_for >= idle_timeout_ms and (i is None or i not in wanted):
                release.append(p.worker_id)
    # A starting allocation no task needs any more: give it back once it waited the idle timeout.
    needed_starting = sum(1 for i in wanted if i >= len(rooms) - len(starting))
    spare = sorted((p for p in starting), key=lambda p: p.started_ms)
    for p in spare[: max(0, len(starting) - needed_starting)]:
        if now_ms - p.started_ms >= idle_timeout_ms and p.worker_id not in registered:
            release.append(p.worker_id)
    return ScalingPlan(launch, tuple(release), unfit)


def _place(req: JobRequirements, count: int, rooms: list[list[int]], kinds: Sequence[tuple[str, str]],
           wanted: set[int]) -> int:
    """First-fit ``count`` tasks of ``req`` into ``rooms`` (mutated); returns how many were placed."""
    placed = 0
    for i, room in enumerate(rooms):
        kind, variant = kinds[i]
        while placed < count and fits(req, Room(room[0], room[1], room[2], room[3], kind, variant)):
            room[0] -= req.cpu
            room[1] -= req.memory_bytes
            room[2] -= req.disk_bytes
            room[3] -= req.device_count
            wanted.add(i)
            placed += 1
        if placed == count:
            break
    return placed


def idle_since(previous: Mapping[WorkerId, int | None], worker_id: WorkerId, busy: bool, now_ms: int) -> int | None:
    """The new idle-since mark of a registered worker: kept while idle, cleared while busy."""
    if busy:
        return None
    mark = previous.get(worker_id)
    return mark if mark is not None else now_ms


__all__ = ["Demand", "ProvisionedWorker", "ScalingPlan", "WorkerShape", "idle_since", "plan_scaling"]
