"""What ``iris share`` and ``iris queue`` show (issue 24): each team and user with guarantee, limit,
weight, running use, decayed usage and standing (like ``sshare -l``), and the pending jobs in the
order the scheduler will consider them. Frozen values made from the state under its read lock.

Amounts are in the shares' units: cpu in millicores, memory in bytes, devices by ``kind:variant``
(the service turns cpu into cores on the wire).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from iris.cluster.bands import BANDS
from iris.cluster.controller.fairness import FairOrder, Owner, ShareBook, task_amounts
from iris.cluster.controller.state import ControllerState
from iris.cluster.sharing import dominant_share, guarantee_ratio, team_rows
from iris.cluster.types import PENDING, JobId

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
                      config.max_preemptions_per_minute, dict(shares.fleet))


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
            entries.append(QueueEntryView(job.job_id, BANDS[job.band], who.team, who.user, len(seen), job.pending_reason,
                                          count, task.pending_since_ms))
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


__all__ = ["DEFAULT_QUEUE_LIMIT", "MemberView", "QueueEntryView", "SharesView", "TeamView", "queue_view", "shares_view"]
