"""The controller's reads: bounded copies of the state into frozen views (``views.py``).

Each lock hold copies at most ``READ_CHUNK`` objects; between chunks the lock is free for writers,
so no read can stall a heartbeat or a dispatch. A list is paged, a page examines a bounded number of
jobs, and filter arguments have length limits. Replies are built from the views after the lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from iris.cluster.controller.autoscaler import Demand
from iris.cluster.controller.bundles import MemoryBundles, StateStore
from iris.cluster.controller.capacity import Room, WorkerSnapshot
from iris.cluster.controller.changes import Changes
from iris.cluster.controller.job import Job
from iris.cluster.controller.metrics import SharingCounts
from iris.cluster.controller.shareviews import (
    DEFAULT_QUEUE_LIMIT,
    QueueEntryView,
    SharesView,
    WhyView,
    queue_view,
    shares_view,
    why_facts,
    with_estimate,
)
from iris.cluster.controller.state import (
    ActionLogEntry,
    ControllerEndpoint,
    ControllerState,
    ControllerWorker,
)
from iris.cluster.controller.task import Task
from iris.cluster.controller.views import (
    AllocationInfo,
    ClusterCounts,
    JobView,
    TaskView,
    WorkerView,
    allocation_view,
    job_view,
    task_view,
    worker_view,
)
from iris.cluster.errors import InvalidArgument, NotFound
from iris.cluster.sharing import dominant_share
from iris.cluster.spec import matches_filters
from iris.cluster.types import JOB_STATES, SUCCEEDED, TASK_STATES, JobId, WorkerId
from iris.cluster.validation import check_filter, check_job_list, check_task_page

DEFAULT_PAGE_SIZE = 500
READ_CHUNK = 1000
"""Objects copied per lock hold by a reader; between chunks the lock is free for writers."""
SCAN_PER_PAGE = 20
"""A list page examines at most this many times its size of objects before it returns (possibly
short, with a token to go on), so a filter that matches little still costs O(page)."""


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobView]
    next_page_token: str


class ProvisionerHandle(Protocol):
    """What the controller needs of a provisioner (``provisioner.Provisioner``): started and stopped
    with it, and asked what it has allocated."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def allocations(self) -> dict[WorkerId, AllocationInfo]: ...

    def summary(self) -> str: ...

    def worker_room(self) -> Room:
        """What one worker it could add offers (work that fits it is not "never fits")."""
        ...


class Queries:
    def __init__(self, changes: Changes, bundles: MemoryBundles | StateStore,
                 provisioner: Callable[[], ProvisionerHandle | None]) -> None:
        self._changes = changes
        self._bundles = bundles
        self._provisioner = provisioner

    def provisioning_inputs(self, now_ms: int) -> tuple[list[Demand], list[WorkerSnapshot], set[WorkerId]]:
        """Pending tasks grouped by job, the healthy workers' room, and which of them run tasks."""
        with self._changes.read() as state:
            counts: dict[JobId, int] = {}
            for task in state.peek_pending_tasks():
                counts[task.job_id] = counts.get(task.job_id, 0) + 1
            jobs = [(state.get_job(job_id), count) for job_id, count in counts.items()]
            demand = [Demand(job.requirements, count) for job, count in jobs if job is not None]
            workers = state.get_available_workers(now_ms)  # quarantined ones hold nothing
            return demand, [w.snapshot() for w in workers], {w.worker_id for w in workers if w.running_tasks}

    def shares(self, now_ms: int) -> SharesView:
        """``iris share``: every team and user with guarantee, limit, weight, use and standing."""
        with self._changes.read() as state:
            return shares_view(state, now_ms)

    def queue(self, now_ms: int, limit: int) -> tuple[list[QueueEntryView], int]:
        """``iris queue``: pending jobs in the order the scheduler will consider them, and their count."""
        with self._changes.read() as state:
            return queue_view(state, now_ms, limit or DEFAULT_QUEUE_LIMIT)

    def why(self, job_id: JobId, now_ms: int) -> WhyView:
        """``iris job why``: why a job waits, structured (``shareviews.why_view``). Raises NotFound."""
        with self._changes.read() as state:
            view, inputs = why_facts(state, job_id, now_ms)
        return with_estimate(self._changes.state, view, inputs, now_ms)  # the simulation runs outside the lock

    def estimate_accuracy(self, since_ms: int = 0) -> tuple[int, float | None, float | None]:
        """``iris queue accuracy``: how many estimated jobs started, the median absolute error of
        the p50 start (seconds), and the share inside the stated range."""
        with self._changes.read() as state:
            return state.estimates.accuracy(since_ms)

    def fit_warning(self, job_id: JobId) -> str:
        """What LaunchJob warns of: no kind of worker can hold one task (``ControllerState.fit_warning``)."""
        with self._changes.read() as state:
            return state.fit_warning(job_id)

    def job_owner(self, job_id: JobId) -> str:
        """Who owns a job (its root's submitter). Raises NotFound."""
        with self._changes.read() as state:
            return job_of(state, job_id).owner

    def worker_runs_bundle(self, worker_id: str, bundle_hash: str) -> bool:
        """Whether an attempt bound to ``worker_id`` needs ``bundle_hash`` (a worker may fetch only those)."""
        with self._changes.read() as state:
            worker = state.get_worker(WorkerId(worker_id))
            for task_id in worker.running_tasks if worker is not None else ():
                task = state.get_task(task_id)
                job = state.get_job(task.job_id) if task is not None else None
                if job is not None and job.bundle_hash == bundle_hash:
                    return True
        return False

    def user_owns_bundle(self, user: str, bundle_hash: str) -> bool:
        """Whether ``user`` owns a job that uses ``bundle_hash`` (a scan of the jobs, in chunks;
        bundle reads by users are rare: workers fetch bundles)."""
        after = 0
        while True:
            with self._changes.read() as state:
                chunk = state.jobs_after(after, READ_CHUNK)
                if any(j.owner == user and j.bundle_hash == bundle_hash for j in chunk):
                    return True
            if not chunk:
                return False
            after = chunk[-1].submit_seq

    def get_job(self, job_id: JobId) -> JobView:
        """A snapshot of one job. Raises NotFound."""
        with self._changes.read() as state:
            return job_view(job := job_of(state, job_id), state.shares.config.team_of(job.owner))

    def task_result(self, job_id: JobId, task_index: int) -> tuple[int, bytes] | None:
        """A succeeded task's result: (attempt, cloudpickle bytes), or None when it has none (yet)."""
        with self._changes.read() as state:
            task = task_of(state, job_id, task_index)
            if task.state != SUCCEEDED:
                return None
        kept = self._bundles.get_result(task.task_id)
        return kept if kept is not None and kept[0] == task.current_attempt_id else None

    def list_jobs(
        self, *, states: Sequence[int] = (), prefix: str = "", page_size: int = 0, page_token: str = "",
        newest_first: bool = False, filters: Sequence[tuple[str, str]] = (),
    ) -> JobPage:
        """One page of jobs in submission order (``newest_first``: the reverse). Each lock hold copies
        at most ``READ_CHUNK`` jobs, and a page examines at most ``SCAN_PER_PAGE`` x its size, so no
        filter can make a read hold up the control plane."""
        check_job_list(prefix, len(states), page_size)  # the rule is validation.py's; every reader gets it
        after = parse_page_token(page_token)
        size = page_size or DEFAULT_PAGE_SIZE
        wanted = set(states)
        budget = size * SCAN_PER_PAGE
        out: list[JobView] = []
        step = self._changes.state.jobs_before if newest_first else self._changes.state.jobs_after
        while len(out) < size and budget > 0:
            with self._changes.read():
                chunk = step(after, min(READ_CHUNK, budget))
                for job in chunk:
                    after = job.submit_seq
                    budget -= 1
                    if (not wanted or job.state in wanted) and job.job_id.startswith(prefix) and (
                            not filters or matches_filters(job.spec, filters)):
                        out.append(job_view(job, self._changes.state.shares.config.team_of(job.owner)))
                        if len(out) >= size:
                            break
            if len(chunk) == 0:
                return JobPage(out, "")
        with self._changes.read():
            more = bool(step(after, 1)) if after else False
        return JobPage(out, str(after) if more else "")

    def job_status(self, job_id: JobId, include_tasks: bool = False, task_offset: int = 0,
                   task_limit: int = 0) -> tuple[JobView, list[TaskView] | None]:
        """A job's snapshot and, when asked, its tasks (copied ``READ_CHUNK`` at a time): those from
        index ``task_offset``, at most ``task_limit`` of them (0: all). O(page)."""
        check_task_page(task_offset, task_limit)
        with self._changes.read() as state:
            job = job_of(state, job_id)
            view = job_view(job, state.shares.config.team_of(job.owner))
        if not include_tasks:
            return view, None
        stop = task_offset + task_limit if task_limit else job.num_tasks
        return view, self._task_views(job, task_offset, stop)

    def _task_views(self, job: Job, start: int = 0, stop: int | None = None) -> list[TaskView]:
        views: list[TaskView] = []
        end = job.num_tasks if stop is None else min(stop, job.num_tasks)
        while start < end:
            with self._changes.read() as state:
                tasks = state.job_tasks_slice(job.job_id, start, min(end, start + READ_CHUNK))
                views.extend(task_view(t, job, self._address_of(t.worker_id)) for t in tasks)
            if not tasks:
                break
            start += len(tasks)
        return views

    def _address_of(self, worker_id: WorkerId | None) -> str:
        worker = self._changes.state.get_worker(worker_id) if worker_id is not None else None
        return worker.address if worker is not None else ""

    def list_tasks(self, job_id: JobId) -> list[TaskView]:
        with self._changes.read() as state:
            job = job_of(state, job_id)
        return self._task_views(job)

    def task_status(self, job_id: JobId, task_index: int) -> TaskView:
        with self._changes.read() as state:
            task = task_of(state, job_id, task_index)
            return task_view(task, state.get_job(task.job_id), self._address_of(task.worker_id))

    def list_workers(self) -> list[WorkerView]:
        """Registered workers, and (with a provisioner) allocations whose worker has not registered
        yet, each with its platform id and state."""
        allocations = self._provisioner().allocations() if self._provisioner() is not None else {}  # type: ignore[union-attr]
        with self._changes.read() as state:
            views = [worker_view(w, allocations.get(w.worker_id)) for w in state.list_workers()]
        known = {v.worker_id for v in views}
        views += [allocation_view(a) for worker_id, a in sorted(allocations.items()) if worker_id not in known]
        return views

    def provisioning_summary(self) -> str:
        provisioner = self._provisioner()
        return provisioner.summary() if provisioner is not None else ""

    def sharing_counts(self) -> SharingCounts:
        """Usage and running share by team, policy preemptions by team and band (``/metrics``)."""
        with self._changes.read() as state:
            shares = state.shares
            now = self._changes.clock.now_ms()
            running = {team: dominant_share(held, shares.fleet) for team, held in shares.team_held.items()}
            _, error_s, in_range = state.estimates.accuracy()
            return SharingCounts(shares.team_usage(now), running, dict(shares.policy_preemptions), error_s, in_range)

    def lost_seconds(self) -> dict[str, float]:
        """Attempt time by how attempts ended, all jobs (``/metrics``)."""
        with self._changes.read() as state:
            return {cause: ms / 1000 for cause, ms in state.lost_ms.items()}

    def list_endpoints(self, prefix: str = "") -> list[ControllerEndpoint]:
        check_filter("prefix", prefix)
        with self._changes.read() as state:
            return state.list_endpoints(prefix)

    def recent_actions(self, limit: int = 100) -> list[ActionLogEntry]:
        return self._changes.state.recent_actions(limit)

    def counts(self) -> ClusterCounts:
        """Jobs and tasks by state, workers by health (for ``/metrics``), counted in chunks."""
        jobs_by_state: dict[int, int] = dict.fromkeys(JOB_STATES, 0)
        tasks_by_state: dict[int, int] = dict.fromkeys(TASK_STATES, 0)
        after = 0
        while True:
            with self._changes.read() as state:
                chunk = state.jobs_after(after, READ_CHUNK)
                for job in chunk:
                    jobs_by_state[job.state] += 1
                    for s, n in enumerate(job.counts):
                        tasks_by_state[s] += n
            if not chunk:
                break
            after = chunk[-1].submit_seq
        workers = self.list_workers()
        return ClusterCounts(
            jobs_by_state, tasks_by_state,
            sum(1 for w in workers if w.healthy), sum(1 for w in workers if not w.healthy),
            sum(w.committed_cpu for w in workers if w.healthy),
        )

    def get_endpoint(self, endpoint_id: str) -> ControllerEndpoint:
        with self._changes.read() as state:
            endpoint = state.get_endpoint(endpoint_id)
        if endpoint is None:
            raise NotFound(f"endpoint_id: endpoint {endpoint_id[:128]!r} not found")
        return endpoint

    def lookup_endpoint(self, name: str) -> ControllerEndpoint:
        check_filter("name", name)
        with self._changes.read() as state:
            found = state.lookup_endpoints(name)
        if not found:
            raise NotFound(f"name: no endpoint named {name!r}")
        return found[0]


def job_of(state: ControllerState, job_id: JobId) -> Job:
    job = state.get_job(job_id)
    if job is None:
        raise NotFound(f"job_id: job {job_id!r} not found")
    return job


def task_of(state: ControllerState, job_id: JobId, task_index: int) -> Task:
    tasks = state.get_job_tasks(job_of(state, job_id).job_id)
    if not 0 <= task_index < len(tasks):
        raise NotFound(f"task_index: job {job_id!r} has no task {task_index} (it has {len(tasks)})")
    return tasks[task_index]


def worker_of(state: ControllerState, worker_id: WorkerId) -> ControllerWorker:
    worker = state.get_worker(worker_id)
    if worker is None:
        raise NotFound(f"worker_id: no worker {worker_id[:128]!r}")
    return worker


def parse_page_token(token: str) -> int:
    if not token:
        return 0
    if len(token) > 20 or not token.isdigit():
        raise InvalidArgument(f"page_token: not a token this controller issued ({token[:24]!r})")
    return int(token)
