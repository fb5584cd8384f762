"""What ``iris share`` and ``iris queue`` show (issue 24): each team and user with guarantee, limit,
weight, running use, decayed usage and standing (like ``sshare -l``), and the pending jobs in the
order the scheduler will consider them. Frozen values made from the state under its read lock.

Amounts are in the shares' units: cpu in millicores, memory in bytes, devices by ``kind:variant``
(the service turns cpu into cores on the wire).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from iris.cluster.bands import BANDS
from iris.cluster.controller.capacity import JobRequirements, fits
from iris.cluster.controller.estimate import (
    STOP_ALLOWANCE_MS,
    Estimate,
    Pending,
    RunningNow,
    WorkerRoom,
    estimate_start,
    running_times,
)
from iris.cluster.controller.fairness import PRODUCTION, FairOrder, Owner, ShareBook, task_amounts
from iris.cluster.controller.job import Job
from iris.cluster.controller.reservations import Reservation, backfills, holds_against
from iris.cluster.controller.scheduler import RESERVED_FOR_OTHER
from iris.cluster.controller.state import NEVER_FITS, ControllerState
from iris.cluster.errors import NotFound
from iris.cluster.sharing import dominant_share, guarantee_ratio, team_rows
from iris.cluster.types import PENDING, JobId, format_cpu, format_size

DEFAULT_QUEUE_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class MemberView:
    user: str
    running: Mapping[str, float]
    usage: float
    decayed_usage: float
    standing: float
    running_tasks: int
    pending_tasks: int


@dataclass(frozen=True, slots=True)
class TeamView:
    team: str
    weight: float
    guarantee: Mapping[str, float]
    limit: Mapping[str, float]
    running: Mapping[str, float]
    usage: float
    decayed_usage: float
    standing: float
    members: tuple[MemberView, ...]
    own: bool
    under_guarantee: bool
    running_tasks: int
    pending_tasks: int


@dataclass(frozen=True, slots=True)
class SharesView:
    teams: tuple[TeamView, ...]
    source: str
    half_life_ms: int
    min_lease_ms: int
    max_preemptions_per_minute: int
    fleet: Mapping[str, float]
    pack_delay_ms: int = 0
    pack_max_wait_ms: int = 0
    reserve_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class QueueEntryView:
    job_id: JobId
    band: str
    team: str
    user: str
    position: int
    reason: str
    pending_tasks: int
    pending_since_ms: int
    reserved_workers: tuple[str, ...] = ()
    """The workers a reservation holds for it (``reservations.py``)."""
    reservation_start_ms: int = 0
    """When its reservation starts (0: none, or not known)."""


def shares_view(state: ControllerState, now_ms: int) -> SharesView:
    shares = state.shares
    config = shares.config
    user_usage = shares.user_usage(now_ms)
    team_usage = shares.team_usage(now_ms)
    book = ShareBook(config, shares.fleet, dict(shares.team_held), dict(shares.user_held), team_usage, user_usage)
    tasks: dict[str, list[int]] = {}  # user -> [running, pending]
    for job in state.list_jobs():
        if job.is_finished():
            continue
        counts = tasks.setdefault(job.owner, [0, 0])
        counts[0] += job.tasks_active
        counts[1] += job.counts[PENDING]
    users = set(user_usage) | set(tasks) | {u for u, held in shares.user_held.items() if held}
    teams = []
    for policy in team_rows(config, users):
        members = sorted({*policy.members, *(u for u in users if config.team_of(u) == policy.name)})
        member_views = tuple(
            MemberView(user, dict(shares.user_held.get(user) or {}),
                       dominant_share(shares.user_held.get(user) or {}, shares.fleet), user_usage.get(user, 0.0),
                       book.user_key(user), *tasks.get(user, [0, 0]))
            for user in members)
        held = book.held(policy.name)
        teams.append(TeamView(
            policy.name, policy.weight, dict(policy.guarantee), dict(policy.limit), dict(held),
            dominant_share(held, shares.fleet), team_usage.get(policy.name, 0.0), book.standing(policy.name),
            member_views, policy.own, guarantee_ratio(held, policy.guarantee) < 1,
            sum(m.running_tasks for m in member_views), sum(m.pending_tasks for m in member_views)))
    return SharesView(tuple(teams), config.source, config.half_life_ms, config.min_lease_ms,
                      config.max_preemptions_per_minute, dict(shares.fleet), config.pack_delay_ms,
                      config.pack_max_wait_ms, config.reserve_after_ms)


def queue_view(state: ControllerState, now_ms: int, limit: int = DEFAULT_QUEUE_LIMIT) -> tuple[list[QueueEntryView], int]:
    """Pending jobs in the order a scheduling pass would consider them, as if each were placed in
    turn (so teams alternate by standing as they would while the fleet has room); and how many
    jobs wait in all."""
    shares = state.shares
    config = shares.config
    book = ShareBook(config, shares.fleet, dict(shares.team_held), dict(shares.user_held), shares.team_usage(now_ms),
                     shares.user_usage(now_ms))
    pending: dict[JobId, int] = {}
    queued = state.peek_pending_tasks()
    for task in queued:
        pending[task.job_id] = pending.get(task.job_id, 0) + 1

    def owner(job_id: JobId) -> Owner | None:
        job = state.get_job(job_id)
        return None if job is None or job.is_finished() else Owner(job.band, config.team_of(job.owner), job.owner)

    entries: list[QueueEntryView] = []
    seen: set[JobId] = set()
    reserved = {r.job_id: r for r in state.reservations}
    order = FairOrder(queued, owner, book)
    for task, who in order:
        order.drop()
        job = state.get_job(task.job_id)
        if who is None or job is None or task.job_id in seen:
            continue
        seen.add(task.job_id)
        count = pending.get(task.job_id, 0)
        amounts = task_amounts(config, job.requirements, "")
        book.take(who.team, who.user, {key: value * count for key, value in amounts.items()})
        if len(entries) < limit:
            held = reserved.get(job.job_id)
            entries.append(QueueEntryView(job.job_id, BANDS[job.band], who.team, who.user, len(seen), job.pending_reason,
                                          count, task.pending_since_ms,
                                          tuple(sorted(held.workers)) if held is not None else (),
                                          (held.start_ms or 0) if held is not None else 0))
    for job_id, reason in state.parked_jobs().items():  # they wait for a kind of worker: last
        job = state.get_job(job_id)
        if job is None or job_id in seen:
            continue
        seen.add(job_id)
        waiting = [t for t in state.get_job_tasks(job_id) if t.state == PENDING]
        if len(entries) < limit and waiting:
            entries.append(QueueEntryView(job.job_id, BANDS[job.band], config.team_of(job.owner), job.owner, len(seen),
                                          job.pending_reason or reason, len(waiting), waiting[0].pending_since_ms))
    return entries, len(seen)





# ---------------------------------------------------------------------------------------- why (issue 25)

REASON_CODES = ("insufficient_resources", "never_fits", "reserved_for_other", "over_team_limit", "behind_in_queue",
                "gang_incomplete", "backoff")


@dataclass(frozen=True, slots=True)
class WhyView:
    job_id: JobId
    state: int
    position: int
    """Rank among pending jobs in the scheduler's order (0 = next); -1 when it is not pending."""
    band: str
    team: str
    user: str
    reasons: tuple[tuple[str, str], ...]
    """(code, message), codes from ``REASON_CODES``."""
    reservation: Reservation | None
    waits_behind: str
    team_guarantee: Mapping[str, float]
    team_limit: Mapping[str, float]
    team_running: Mapping[str, float]
    team_standing: float
    preemptible_tasks: int
    next_lease_end_ms: int
    estimate: Estimate


def why_view(state: ControllerState, job_id: JobId, now_ms: int) -> WhyView:
    """Why a job waits, with numbers, and when it will start. Raises NotFound."""
    view, inputs = why_facts(state, job_id, now_ms)
    return with_estimate(state, view, inputs, now_ms)


def with_estimate(state: ControllerState, view: WhyView, inputs: EstimateInputs | None, now_ms: int) -> WhyView:
    """``view`` with its start-time estimate, run from ``inputs`` (copied values: no lock needed),
    and the estimate recorded to be scored when the job starts."""
    if inputs is None:
        return view
    model = estimate_start(*inputs, now_ms)
    estimate = state.estimates.calibrate(model, now_ms)  # the range stated: the model's, calibrated
    state.estimates.given(view.job_id, estimate, now_ms, model)
    return replace(view, estimate=estimate)


EstimateInputs = tuple[list[Pending], Pending, list[WorkerRoom], list[RunningNow]]


def why_facts(state: ControllerState, job_id: JobId, now_ms: int) -> tuple[WhyView, EstimateInputs | None]:
    """Everything ``why`` says but the estimate, and the copied inputs of the estimate (None when
    it needs none). Under the read lock: O(pending + running + workers)."""
    job = state.get_job(job_id)
    if job is None:
        raise NotFound(f"job_id: job {job_id!r} not found")
    shares = state.shares
    config = shares.config
    team = config.team_of(job.owner)
    policy = config.policy(team)
    held = shares.team_held.get(team) or {}
    book = ShareBook(config, shares.fleet, dict(shares.team_held), dict(shares.user_held), shares.team_usage(now_ms),
                     shares.user_usage(now_ms))
    pending = [t for t in state.get_job_tasks(job_id) if t.state == PENDING]
    reservation = next((r for r in state.reservations if r.job_id == job_id), None)
    if not pending:
        return WhyView(job.job_id, job.state, -1, BANDS[job.band], team, job.owner, (), None, "", dict(policy.guarantee),
                       dict(policy.limit), dict(held), book.standing(team), 0, 0,
                       Estimate(None, None, "it is not pending")), None
    entries, _ = queue_view(state, now_ms, limit=1 << 30)
    position = next((e.position - 1 for e in entries if e.job_id == job_id), -1)
    inputs = _estimate_inputs(state, entries, job, len(pending), now_ms)
    unknown = Estimate(None, None, "no worker the fleet has can hold it") if inputs is None else Estimate(None, None)
    reason_text = job.pending_reason
    reasons: list[tuple[str, str]] = []
    waits_behind = ""
    req = job.requirements
    workers = [w for w in state.list_workers() if w.healthy]
    room_now = sum(1 for w in workers if fits(req, w.snapshot().free))
    could = sum(1 for w in workers if fits(req, w.snapshot().total))
    need = _describe_req(req)
    if reason_text.startswith(NEVER_FITS):
        reasons.append(("never_fits", reason_text))
    elif reason_text.startswith(RESERVED_FOR_OTHER):
        reasons.append(("reserved_for_other", reason_text))
        waits_behind = next((r.job_id for r in state.reservations if f"reserved for {r.job_id}" in reason_text), "")
    elif reason_text.startswith("team ") and "limit" in reason_text:
        reasons.append(("over_team_limit", reason_text))
    elif reason_text.startswith("retrying in"):
        reasons.append(("backoff", reason_text))
    if job.coscheduled and not reason_text.startswith((NEVER_FITS, "retrying in")):
        reasons.append(("gang_incomplete", f"all {len(pending)} tasks must start at once; {room_now} of {len(workers)} "
                                           f"workers have room for one now ({need})"))
    if not reasons or reasons[0][0] not in ("never_fits", "backoff"):
        if room_now < len(pending):
            reasons.append(("insufficient_resources", f"{room_now} of {len(workers)} workers have room for one task "
                                                      f"now ({need}); {could} could hold one"))
    if position > 0:
        reasons.append(("behind_in_queue", f"{position} pending job{'s' if position != 1 else ''} ahead of it in the "
                                           "scheduler's order (band, then fair share, then submission)"))
    preemptible, lease_end = 0, 0
    for worker in workers:
        for task_id in worker.running_tasks:
            task = state.get_task(task_id)
            other = state.get_job(task.job_id) if task is not None else None
            if task is None or other is None or other.band <= job.band:
                continue
            preemptible += 1
            end = (task.started_at_ms or now_ms) + config.min_lease_ms
            if end > now_ms and (not lease_end or end < lease_end):
                lease_end = end
    return WhyView(job.job_id, job.state, position, BANDS[job.band], team, job.owner, tuple(reasons), reservation,
                   waits_behind, dict(policy.guarantee), dict(policy.limit), dict(held), book.standing(team),
                   preemptible, lease_end, unknown), inputs


def _estimate_inputs(state: ControllerState, entries: list[QueueEntryView], job: Job, tasks: int,
                     now_ms: int) -> EstimateInputs | None:
    """Copies of what the estimate runs forward (``estimate.estimate_start``): the jobs ahead of
    ``job``, the workers' free room, the running attempts' predicted ends (an attempt of a band
    below ``job``'s ends for it, at the latest, when its minimum lease does, or at once for
    production work: it may be preempted then)."""
    if job.pending_reason.startswith(NEVER_FITS):
        return None

    reservations = {r.job_id: r for r in state.reservations}

    def pending_of(j: Job, count: int) -> Pending:
        runtime, source = state.predicted_runtime(j)
        res = reservations.get(j.job_id)
        return Pending(j.job_id, j.requirements, count, j.coscheduled, runtime, source == "timeout",
                       tuple(res.workers) if res is not None else (), res.start_ms if res is not None else None)

    ahead: list[Pending] = []
    behind: dict[JobId, int] = {}
    met = False
    for e in entries:
        if e.job_id == job.job_id:
            met = True
        elif met:
            behind[e.job_id] = e.pending_tasks
        elif (other := state.get_job(e.job_id)) is not None:
            ahead.append(pending_of(other, e.pending_tasks))
    timeout_ms = int(job.spec.timeout_seconds * 1000)
    for r in state.reservations:
        # Ranked below it, yet its room is kept from it (``reservations``), unless it backfills
        # (its hard --timeout ends it by the reservation's start): then it starts after that job.
        other = state.get_job(r.job_id)
        if (r.job_id in behind and other is not None and r.band <= job.band
                and holds_against(r, job.submitted_at_ms) and not backfills(r, timeout_ms, now_ms)):
            ahead.append(pending_of(other, behind[r.job_id]))
    workers: list[WorkerRoom] = []
    running: list[RunningNow] = []
    min_lease_ms = 0 if job.band == PRODUCTION else state.shares.config.min_lease_ms  # production ignores it
    for w in state.get_available_workers(now_ms):
        free = w.snapshot().free
        workers.append(WorkerRoom(w.worker_id, free.cpu, free.memory, free.disk, free.devices, free.device_kind,
                                  free.device_variant))
        for task_id in w.running_tasks:
            task = state.get_task(task_id)
            other = state.get_job(task.job_id) if task is not None else None
            if task is None or other is None:
                continue
            runtime, source = state.predicted_runtime(other)
            p50, p90 = running_times(runtime, source == "timeout", now_ms - (task.started_at_ms or now_ms))
            if other.band > job.band:  # a lower band: preemptible once its minimum lease has run
                lease_left = max(0, (task.started_at_ms or now_ms) + min_lease_ms - now_ms)
                stopped = lease_left + int((other.spec.termination_grace_seconds or 0) * 1000) + STOP_ALLOWANCE_MS
                p50 = lease_left if p50 is None else min(p50, lease_left)
                p90 = stopped if p90 is None else max(p50, min(p90, stopped))
            running.append(RunningNow(w.worker_id, other.requirements, p50, p90))
    return ahead, pending_of(job, tasks), workers, running


def _describe_req(req: JobRequirements) -> str:
    parts = [f"cpu {format_cpu(req.cpu)}", f"memory {format_size(req.memory_bytes)}"]
    if req.device_kind != "cpu":
        parts.append(f"{req.device_count} {req.device_kind} {req.device_variant}".strip())
    return ", ".join(parts)


__all__ = ["DEFAULT_QUEUE_LIMIT", "REASON_CODES", "MemberView", "QueueEntryView", "SharesView", "TeamView", "WhyView",
           "queue_view", "shares_view", "why_view"]
