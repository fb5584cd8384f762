"""Reservations and backfill (issue 25 item 1): so a gang, or any job too big for the room left
between small jobs, never starves behind a stream of smaller work. Pure.

The highest-ranked jobs (by the sharing order) that do not fit now, up to ``max_reservations``,
each get a reservation: the workers where they can start earliest, judged by when what runs there
must end. Only a hard ``--timeout`` says when an attempt must end (a history-based guess could be
overrun, and undoing an overrun would take a preemption), so an attempt without one counts as
ending never; the start is then unknown, and the reservation still keeps the room it needs from
being taken as it frees.

On a reserved worker, other work of the same or a lower band may take room only if it leaves the
reservation whole at its start (the room beyond what the reservation needs), or if its own
``--timeout`` ends it before the reservation starts (backfill). A higher band is not held back.
Which work is bound: in the pass that makes a reservation, the work ranked below its job; from the
next pass on, also work submitted after the reservation was first made (``since_ms``), whatever its
standing, and, for a gang's reservation (more than one task), all work of its band or lower. Fair
share moves standings from pass to pass; without this a gang's room went, pass after pass, to
whichever job ranked first at that moment, and its start estimate (made with the queue as it stood)
was passed by hours (2 simulated days: 15 of 148 gangs started after their stated p90, 6 of 141
with it). A single task's reservation still gives way to work that was waiting and now ranks above
it: the next task to end frees room for it again, and shares then follow standings, not who
reserved first.
Who gets the ``max_reservations`` slots: the jobs a full pass meets first that do not fit, except
that jobs waiting for room longer than the sharing file's ``reserve_after`` (the oldest first) are
first in line: work of their band or a lower one met before them takes none of the slots they may
need (``scheduler.Guard.first_in_line``).
A reservation is made again on every full pass (so it follows the queue) and dropped when its job
starts, ends or is stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from iris.cluster.controller.capacity import JobRequirements, fits_in
from iris.cluster.types import JobId, WorkerId

NEVER = 1 << 62
"""The end of an attempt with no ``--timeout``: not known to end."""
DEFAULT_MAX_RESERVATIONS = 4


@dataclass(frozen=True, slots=True)
class Reservation:
    job_id: JobId
    band: int
    start_ms: int | None
    """When every member can start, by the hard timeouts of what runs there (None: not known)."""
    workers: Mapping[WorkerId, int] = field(default_factory=dict)
    """Reserved worker -> how many of the job's tasks it is to hold."""
    req: JobRequirements | None = None
    since_ms: int = 0
    """When its job first got a reservation (kept as later passes plan it again). Work of its band or
    lower submitted after then never takes its room, whatever its standing: the job's start estimate
    was made with arrivals frozen, and a reservation keeps that promise to it."""

    def members(self) -> int:
        return sum(self.workers.values())


@dataclass(frozen=True, slots=True)
class Running:
    """What one running attempt holds on a worker and when it must end (``NEVER`` without a timeout)."""

    worker_id: WorkerId
    req: JobRequirements
    ends_ms: int


@dataclass(slots=True)
class Free:
    """A worker's free room now (a private copy)."""

    worker_id: WorkerId
    cpu: int
    memory: int
    disk: int
    devices: int
    device_kind: str
    device_variant: str


def plan(job_id: JobId, band: int, req: JobRequirements, members: int, free: Sequence[Free],
         running: Mapping[WorkerId, Sequence[Running]], now_ms: int) -> Reservation | None:
    """Where ``members`` tasks of ``req`` can start earliest, and when (None when the fleet cannot
    hold them even once everything running has ended)."""
    options: list[tuple[int, int, WorkerId]] = []  # (time, members that fit by then, worker)
    for room in free:
        ends = sorted(running.get(room.worker_id, ()), key=lambda r: r.ends_ms)
        cpu, memory, disk, devices = room.cpu, room.memory, room.disk, room.devices
        counted = 0
        time = now_ms
        for i in range(len(ends) + 1):
            if i:
                r = ends[i - 1]
                cpu, memory, disk, devices = (cpu + r.req.cpu, memory + r.req.memory_bytes, disk + r.req.disk_bytes,
                                              devices + r.req.device_count)
                time = max(now_ms, r.ends_ms)
                if i < len(ends) and ends[i].ends_ms == r.ends_ms:
                    continue  # ends at the same moment: count them together
            fit = _how_many(req, cpu, memory, disk, devices, room.device_kind, room.device_variant, members)
            if fit > counted:
                options.append((time, fit, room.worker_id))
                counted = fit
            if counted >= members:
                break
    options.sort(key=lambda o: (o[0], -o[1]))
    chosen: dict[WorkerId, int] = {}
    start = now_ms
    for time, fit, worker_id in options:
        chosen[worker_id] = fit
        start = time
        if sum(chosen.values()) >= members:
            break
    else:
        return None
    total = 0
    out: dict[WorkerId, int] = {}
    for worker_id, fit in chosen.items():  # only as many as the job needs
        take = min(fit, members - total)
        if take > 0:
            out[worker_id] = take
            total += take
    return Reservation(job_id, band, None if start >= NEVER else start, out, req)


def _how_many(req: JobRequirements, cpu: int, memory: int, disk: int, devices: int, kind: str, variant: str,
              most: int) -> int:
    n = 0
    while n < most and fits_in(req, cpu, memory, disk, devices, kind, variant):
        cpu, memory, disk, devices = cpu - req.cpu, memory - req.memory_bytes, disk - req.disk_bytes, devices - req.device_count
        n += 1
    return n


def backfills(reservation: Reservation, timeout_ms: int, now_ms: int) -> bool:
    """Whether work whose hard ``--timeout`` is ``timeout_ms`` (0: none), started now, ends by the
    reservation's start."""
    return timeout_ms > 0 and reservation.start_ms is not None and now_ms + timeout_ms <= reservation.start_ms


def holds_against(reservation: Reservation, submitted_ms: int) -> bool:
    """Whether the reservation keeps its room from work of its band or lower that ranks above its
    job: a gang's always, any other's from work submitted after it was first made."""
    return reservation.members() > 1 or submitted_ms > reservation.since_ms


def may_use(reservation: Reservation, room_at_start: Free, req: JobRequirements, band: int, timeout_ms: int,
            now_ms: int) -> bool:
    """Whether a task of another job (``req``, its band, its hard timeout, 0 for none) may take room
    on a worker ``reservation`` holds: a higher band may; backfill that ends by the start may;
    otherwise only if the worker's room at the start (free now plus what must end by then), less
    this task, still holds the reservation's share of that worker."""
    if band < reservation.band:
        return True
    if backfills(reservation, timeout_ms, now_ms):
        return True
    held = reservation.req
    share = reservation.workers.get(room_at_start.worker_id, 0)
    if held is None or not share:
        return True
    r = room_at_start
    left = (r.cpu - req.cpu, r.memory - req.memory_bytes, r.disk - req.disk_bytes, r.devices - req.device_count)
    if min(left) < 0:
        return False
    return _how_many(held, *left, r.device_kind, r.device_variant, share) >= share


__all__ = ["DEFAULT_MAX_RESERVATIONS", "NEVER", "Free", "Reservation", "Running", "backfills", "holds_against", "may_use",
           "plan"]
