"""The controller's in-memory state: jobs, tasks, workers, endpoints and the pending queue.

Pure: no threads, sockets, sleeps or clock reads; time comes in as ``now_ms``. Every cost on the
hot path is O(1): a task transition, a queue removal (the queue is an insertion-ordered dict),
a job-state update (per-job counts), committed resources (per-worker counters).

Side effects leave through an outbox (``drain_effects``): the processes the shell must kill
(worker, task, attempt) and the rows the store must write. Every path that ends a task releases
it everywhere: out of the queue, out of its worker's ``running_tasks`` and committed resources,
its endpoints removed, and a kill instruction when its process may still run (DESIGN §3).
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from threading import RLock

from iris.cluster.auth import TokenRecord
from iris.cluster.bands import BANDS, DEFAULT_BAND
from iris.cluster.controller import policies
from iris.cluster.controller.capacity import (
    JobRequirements,
    Resources,
    Room,
    TaskShape,
    WorkerSnapshot,
    fits_in,
    unmet_everywhere,
)
from iris.cluster.controller.estimate import EstimateLog
from iris.cluster.controller.fairness import FairInputs, Holder, Preemption, task_amounts
from iris.cluster.controller.job import Job
from iris.cluster.controller.policies import StreakEntry
from iris.cluster.controller.queue import BandQueue, QueuedTasks
from iris.cluster.controller.reservations import DEFAULT_MAX_RESERVATIONS, NEVER, Reservation
from iris.cluster.controller.runtimes import RuntimeHistory, predict
from iris.cluster.controller.shares import NOMINATION_SLACK_MS, Shares
from iris.cluster.controller.task import (
    BUILDING,
    GANG_RESTART,
    KILLED,
    PENDING,
    PREEMPTED,
    RUNNING,
    SUCCEEDED,
    TIME_CAUSES,
    WORKER_FAILED,
    Task,
    TaskAttempt,
    TaskTransitionResult,
)
from iris.cluster.controller.uids import TaskUids
from iris.cluster.errors import PermissionDenied, ResourceExhausted
from iris.cluster.failures import failure_signature
from iris.cluster.ports import PortBook
from iris.cluster.sharing import SharingConfig
from iris.cluster.types import (
    ACTIVE_TASK_STATES,
    TERMINAL_TASK_STATES,
    UNSCHEDULABLE,
    AttemptRef,
    EndpointId,
    JobId,
    TaskId,
    WorkerId,
    WorkerMetadata,
    cores,
    split_host,
)
from iris.rpc import cluster_pb2

logger = logging.getLogger(__name__)

PORT_IN_USE = "port in use"
"""``decided_by`` of an attempt sent back because a port it was given was held outside Iris."""
NEVER_FITS = "never fits"
"""The start of a parked job's pending reason: no worker the fleet has (or could add) holds one task."""
POLICY_PREEMPTION = "preempted"
"""``decided_by`` of an attempt the sharing policy stopped (it ended PREEMPTED)."""
DEFAULT_MAX_ENDPOINTS_PER_TASK = 16
ACTION_LOG_SIZE = 1000
DEFAULT_QUARANTINE_AFTER = 5


@dataclass(slots=True)
class ControllerWorker:
    """A registered worker, its capacity and what it runs.

    ``metadata`` is the typed ``WorkerMetadata``; the seed's callers may pass the protobuf, which
    is converted here, at the boundary."""

    worker_id: WorkerId
    address: str
    metadata: WorkerMetadata
    healthy: bool = True
    consecutive_failures: int = 0
    last_heartbeat_ms: int = 0
    registered_at_ms: int = 0
    heard_ms: int = -1
    """When it was last heard from on the liveness clock (the shell's monotonic milliseconds: a
    wall clock stepped back must not keep a dead worker alive); -1: ``last_heartbeat_ms``."""
    running_tasks: set[TaskId] = field(default_factory=set)
    """Tasks whose current attempt is bound to this worker and has not ended."""
    incarnation: str = ""
    heartbeat_interval_ms: int = 0
    """The heartbeat interval this worker was last asked for (0: its own); it is declared dead after
    three of them when that is longer than the controller's worker timeout."""
    committed_cpu: int = 0
    """Millicores its running tasks and stopping attempts hold (``hold`` / ``give_back``)."""
    committed_memory: int = 0
    committed_disk: int = 0
    committed_devices: int = 0
    stopping: dict[tuple[TaskId, int], Resources] = field(default_factory=dict)
    """Attempts Iris stopped whose processes may still run: their resources stay committed until
    the worker confirms they are gone (a report or an observed set without them) or the worker is
    declared dead, so nothing new lands on resources a dying attempt holds."""
    draining: bool = False
    """``iris worker drain``: no new tasks."""
    quarantined_until_ms: int = 0
    quarantine_reason: str = ""
    quarantines: int = 0
    """How many times it was quarantined (the cool-down doubles each time)."""
    streak: list[StreakEntry] = field(default_factory=list)
    """Attempts that failed to start or failed quickly here, in a row (task, attempt, job, owner)."""
    dispatch_acks: dict[TaskId, tuple[str, int] | None] = field(default_factory=dict)
    """Per running task: None while RunTask is in flight, then (incarnation, sequence) the worker
    accepted it under. Tasks missing here (e.g. reloaded after a controller restart) count as
    accepted long ago."""
    port_holds: dict[TaskId, tuple[int, ...]] = field(default_factory=dict)
    """Per running task with ports: the ports its attempt holds on this host (``ControllerState.ports``)."""
    stopping_ports: dict[tuple[TaskId, int], tuple[int, ...]] = field(default_factory=dict)
    """The ports of ``stopping`` attempts, held until they are confirmed gone."""
    port_cursor: int = 0
    """Where the next port search in its range starts (next-fit)."""
    unfit: str = ""
    """The worker said it cannot run tasks as promised (why, e.g. its cgroups vanished): none are placed here."""
    _total: tuple[WorkerMetadata, Room] | None = field(default=None, repr=False, compare=False)
    """``total()``'s value and the metadata it was made from (made again when the metadata is replaced)."""

    @property
    def host(self) -> str:
        """The host part of its advertised address: workers sharing one share its ports."""
        return split_host(self.address)

    def __post_init__(self) -> None:
        if isinstance(self.metadata, cluster_pb2.WorkerMetadata):
            self.metadata = WorkerMetadata.from_proto(self.metadata)

    @property
    def committed(self) -> Resources:
        """What its running tasks and stopping attempts hold."""
        return Resources(self.committed_cpu, self.committed_memory, self.committed_disk, self.committed_devices)

    def hold(self, r: Resources) -> None:
        """Commit ``r`` (a task bound here). The one place the counters grow (no value is made)."""
        self.committed_cpu += r.cpu
        self.committed_memory += r.memory
        self.committed_disk += r.disk
        self.committed_devices += r.devices

    def give_back(self, r: Resources) -> None:
        """Release ``r`` (a task unbound, or a stopped attempt confirmed gone)."""
        self.committed_cpu -= r.cpu
        self.committed_memory -= r.memory
        self.committed_disk -= r.disk
        self.committed_devices -= r.devices

    def schedulable(self, now_ms: int) -> bool:
        """Healthy, not draining and not quarantined: new tasks may be placed here."""
        return self.healthy and not self.draining and not self.unfit and self.quarantined_until_ms <= now_ms

    def total(self) -> Room:
        """What it offers in all, as a frozen value (made once per metadata it reports)."""
        meta = self.metadata
        cached = self._total
        if cached is not None and cached[0] is meta:
            return cached[1]
        total = Room(meta.cpu_millicores, meta.memory_bytes, meta.disk_bytes, meta.device_count, meta.device_kind,
                     meta.device_variant)
        self._total = (meta, total)
        return total

    def snapshot(self) -> WorkerSnapshot:
        """The worker's capacity as a frozen value. O(1): counters."""
        total = self.total()
        free = Room(total.cpu - self.committed_cpu, total.memory - self.committed_memory,
                    total.disk - self.committed_disk, total.devices - self.committed_devices, total.device_kind,
                    total.device_variant)
        return WorkerSnapshot(self.worker_id, self.healthy, free, total)


@dataclass(slots=True)
class ControllerEndpoint:
    """A named address registered by a running task."""

    endpoint_id: str
    name: str
    address: str
    job_id: JobId
    metadata: dict[str, str] = field(default_factory=dict)
    task_id: TaskId | None = None
    attempt_id: int = 0


@dataclass(frozen=True, slots=True)
class KillInstruction:
    """Stop this attempt's process on this worker (SIGTERM, then SIGKILL after the grace period)."""

    worker_id: WorkerId
    task_id: TaskId
    attempt_id: int
    job_uid: str | None = None
    """The job incarnation; None: the one the state holds for ``task_id``."""


@dataclass(frozen=True, slots=True)
class ActionLogEntry:
    timestamp_ms: int
    action: str
    job_id: str = ""
    task_id: str = ""
    worker_id: str = ""
    details: str = ""


@dataclass(slots=True)
class Effects:
    """What the shell must do after a batch of state changes."""

    kills: list[KillInstruction] = field(default_factory=list)
    dirty_jobs: set[JobId] = field(default_factory=set)
    dirty_tasks: set[TaskId] = field(default_factory=set)
    dirty_workers: set[WorkerId] = field(default_factory=set)
    added_endpoints: list[ControllerEndpoint] = field(default_factory=list)
    removed_endpoints: list[ControllerEndpoint] = field(default_factory=list)
    actions: list[ActionLogEntry] = field(default_factory=list)
    deleted_jobs: list[JobId] = field(default_factory=list)
    """Jobs removed from the state with their tasks, attempts and endpoints (children listed too)."""
    dirty_tokens: set[str] = field(default_factory=set)
    """Token ids created or revoked."""
    dirty_usage: set[str] = field(default_factory=set)
    """Users whose decayed usage was charged (``Shares``)."""
    dirty_runtimes: set[str] = field(default_factory=set)
    """Job ids (owner and name) whose runtime history changed (``runtimes.RuntimeHistory``); and those dropped:"""
    forgotten_runtimes: set[str] = field(default_factory=set)
    dirty_uids: set[str] = field(default_factory=set)
    """Users given a task uid (``uids.TaskUids``)."""
    deleted_bundles: list[str] = field(default_factory=list)
    """Workspace bundles no job uses any more (their last job was deleted): remove the files."""

    def is_empty(self) -> bool:
        return not (
            self.deleted_jobs
            or self.deleted_bundles
            or self.dirty_tokens
            or self.dirty_usage
            or self.dirty_runtimes
            or self.forgotten_runtimes
            or self.dirty_uids
            or self.kills
            or self.dirty_jobs
            or self.dirty_tasks
            or self.dirty_workers
            or self.added_endpoints
            or self.removed_endpoints
            or self.actions
        )


NO_EFFECTS = Effects()
"""What ``drain_effects`` hands back when nothing happened (shared: read it, never change it)."""


@dataclass(frozen=True, slots=True)
class ObservedAttempt:
    """One attempt as a worker reports holding it (heartbeat / registration)."""

    task_id: TaskId
    attempt_id: int
    state: int
    exit_code: int | None = None
    error: str | None = None
    ports: tuple[tuple[str, int], ...] = ()
    """The attempt's named ports (name, port)."""
    job_uid: str = ""
    """The job incarnation the worker ran it for ("" from an older worker: not checked)."""
    busy_ports: tuple[int, ...] = ()
    """An ended attempt's ports that something outside Iris held (it never started)."""

    @property
    def ref(self) -> AttemptRef:
        return AttemptRef(self.task_id, self.attempt_id, self.job_uid)


@dataclass(slots=True)
class GangHold:
    """A coscheduled job's members' failures, collected until ``until_ms`` (the blame window)."""

    until_ms: int
    ends: list[policies.MemberEnd] = field(default_factory=list)

    def holds(self, task_id: TaskId) -> bool:
        return any(end.task_id == task_id for end in self.ends)


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    kill: list[ObservedAttempt]
    """Attempts the worker holds that the controller does not expect: stop them."""
    missing: list[TaskId]
    """Attempts the controller expected that the worker lost: each became a worker failure."""


def liveness_timeout_ms(timeout_ms: int, interval_ms: int) -> int:
    """How long a worker may be silent before it is declared dead: the controller's timeout, or
    three heartbeat intervals when that is longer (also told to the worker, whose fence lies beyond)."""
    return max(timeout_ms, 3 * interval_ms)


class ControllerState:
    """Authoritative in-memory state. Thread-safe through one re-entrant lock, but the shell
    holds its own lock across "apply, drain effects, persist"; pure tests call it directly."""

    def __init__(self, quarantine_after: int = DEFAULT_QUARANTINE_AFTER,
                 gang_blame_window_ms: int = policies.GANG_BLAME_WINDOW_MS) -> None:
        self._lock = RLock()
        self._jobs: dict[JobId, Job] = {}
        self._tasks: dict[TaskId, Task] = {}
        self._tasks_by_job: dict[JobId, tuple[Task, ...]] = {}
        self._children: dict[JobId, list[JobId]] = {}
        self._workers: dict[WorkerId, ControllerWorker] = {}
        self._task_queue = BandQueue(lambda task: self._jobs[task.job_id].band)
        """PENDING tasks in queue order: by priority band, then as they entered. O(1) append, removal
        and membership; a pass reads it as runs of one job's tasks (``before_pass``)."""
        self._endpoints: dict[str, ControllerEndpoint] = {}
        self._endpoints_by_task: dict[TaskId, set[str]] = {}
        self._actions: deque[ActionLogEntry] = deque(maxlen=ACTION_LOG_SIZE)
        self._effects = Effects()
        self._order_seqs: list[int] = []
        """``submit_seq`` of every job, ascending (submission order); parallel to ``_order_ids``."""
        self._order_ids: list[JobId] = []
        self._next_submit_seq = 1
        self.uids = TaskUids()
        """Each user's task uid (``uids``), given at their first job."""
        self._tokens: dict[str, TokenRecord] = {}
        """By token id. Only hashes are held (``auth.hash_token``)."""
        self._token_ids_by_hash: dict[str, str] = {}
        self._token_ids_by_name: dict[str, list[str]] = {}
        """Token ids per holder name (a worker's credentials: found at its registration in O(its own))."""
        self.quarantine_after = quarantine_after
        """Attempts failing quickly in a row on one worker before it is quarantined (0: never)."""
        self._deadlines: list[tuple[int, TaskId, int]] = []
        """A heap of (deadline, task, attempt) for jobs with ``timeout_seconds``."""
        self.lost_ms: dict[str, int] = {cause: 0 for cause in TIME_CAUSES}
        """Milliseconds of attempts by how they ended (``/metrics``), all jobs."""
        self._bundle_refs: dict[str, int] = {}
        self._bundle_users: dict[str, dict[str, int]] = {}
        """Bundle hash -> owner -> that owner's jobs using it (a bundle is reused only by its users)."""
        """Workspace bundle hash -> jobs using it; a bundle whose count drops to 0 is deleted."""
        self._finished_roots: dict[JobId, int] = {}
        """Ended jobs without a parent, in the order they ended (-> finished_at_ms): retention
        prunes from the front (``prunable_jobs``)."""
        self.ports = PortBook()
        """Ports handed to attempts, per host (``iris.cluster.ports``)."""
        self.max_endpoints_per_task = DEFAULT_MAX_ENDPOINTS_PER_TASK
        """Endpoints one task attempt may hold at once (``--max-endpoints-per-task``)."""
        self.gang_blame_window_ms = gang_blame_window_ms
        """How long a gang's first failure waits for the others' ends (``policies.gang_cause``; 0: none)."""
        self._gang_holds: dict[JobId, GangHold] = {}
        """Coscheduled jobs whose members' failures are being collected before the restart is decided."""
        self._ended_in_hold: frozenset[TaskId] = frozenset()
        """While a held gang is settled: its members whose processes already ended (no kill needed)."""
        self.shares = Shares()
        """Teams, what they hold and have used, policy preemptions (issue 24, ``shares.py``)."""
        self.estimates = EstimateLog()
        """Start-time estimates given (``iris job why``) and, once their jobs started, how wrong they were."""
        self.runtimes = RuntimeHistory()
        """The last successful task runtimes per (owner, job name), for start-time estimates (``runtimes.py``)."""
        self.reservations: list[Reservation] = []
        """Room held for the highest-ranked jobs that do not fit now (``reservations.py``), made by
        the last full pass and kept whole by every pass."""
        self.max_reservations = DEFAULT_MAX_RESERVATIONS
        self.fleet_kinds: frozenset[Room] = frozenset()
        """The distinct total capacities of the healthy workers, as of the last full pass."""
        self.possible_kinds: tuple[Room, ...] = ()
        """What a worker a provisioner could add offers (as of the last full pass)."""
        self._parked: dict[TaskShape, tuple[JobRequirements, dict[JobId, str]]] = {}
        """Jobs whose tasks are parked because they fit no worker (``BandQueue.park``), by shape:
        checked once per shape and pass, and back in their bands as soon as one fits."""

    def _index_job(self, job: Job) -> None:
        job.submit_seq = self._next_submit_seq
        self._next_submit_seq += 1
        self._order_seqs.append(job.submit_seq)
        self._order_ids.append(job.job_id)

    # ------------------------------------------------------------------ jobs and tasks

    def add_job(self, job: Job, tasks: list[Task] | None = None) -> None:
        """Add a job and its tasks (all PENDING, queued in index order)."""
        if tasks is None:
            from iris.cluster.controller.job import expand_job_to_tasks

            tasks = expand_job_to_tasks(job, job.submitted_at_ms)
        with self._lock:
            if job.job_id in self._jobs:
                raise ValueError(f"job {job.job_id} already exists")
            if job.owner and not self.uids.uid_of(job.owner):
                self.uids.ensure(job.owner)  # ResourceExhausted before anything changed
                self._effects.dirty_uids.add(job.owner)
            self._jobs[job.job_id] = job
            self._index_job(job)
            self._tasks_by_job[job.job_id] = tuple(tasks)
            job.add_tasks(len(tasks))
            for task in tasks:
                self._tasks[task.task_id] = task
            self._task_queue.extend(tasks, job.band)
            self._effects.dirty_tasks.update(t.task_id for t in tasks)
            self._effects.dirty_jobs.add(job.job_id)
            if job.bundle_hash:
                self._hold_bundle(job)
            if job.parent_job_id is not None:
                self._children.setdefault(job.parent_job_id, []).append(job.job_id)
            self.log_action("job_submitted", now_ms=job.submitted_at_ms, job_id=job.job_id,
                            details=f"tasks={len(tasks)}")

    def restore_job(self, job: Job, tasks: list[Task]) -> None:
        """Re-insert a job whose tasks and counts were loaded from the store (no effects)."""
        with self._lock:
            self._jobs[job.job_id] = job
            self._index_job(job)
            self._tasks_by_job[job.job_id] = tuple(tasks)
            timeout_ms = int(job.spec.timeout_seconds * 1000)
            gang_restarts: set[int] = set()
            """When the gang restarts happened: each stopped the others' attempts at that moment."""
            for task in tasks:
                self._tasks[task.task_id] = task
                if task.is_active():
                    task.band = job.spec.priority or DEFAULT_BAND  # a job's band never changes
                job.pending_ms += task.time_spent()["pending"]
                for attempt in task.attempts:
                    self._account(job, attempt)
                    job.policy_preemptions += attempt.state == PREEMPTED
                    if attempt.decided_by == GANG_RESTART:
                        gang_restarts.add(attempt.finished_at_ms or 0)
                        prefix = f"{GANG_RESTART}: started by "
                        if (attempt.finished_at_ms or 0) >= max(gang_restarts) and (attempt.error or "").startswith(
                                prefix):
                            job.gang_restart_cause = (attempt.error or "").removeprefix(prefix)
                    elif attempt.state == SUCCEEDED and attempt.worker_id is not None:
                        job.note_success(attempt.worker_id)
                    elif attempt.charged_to == "failure" and attempt.state == cluster_pb2.TASK_STATE_FAILED \
                            and job.spec.max_similar_failures:
                        signature = failure_signature(attempt.error) or f"exit code {attempt.exit_code}"
                        job.similar_tasks(signature).add(task.task_index)
                if timeout_ms and task.is_active() and task.started_at_ms is not None:
                    heapq.heappush(self._deadlines, (task.started_at_ms + timeout_ms, task.task_id,
                                                     task.current_attempt_id))
            job.gang_restarts = len(gang_restarts)
            if job.bundle_hash:
                self._hold_bundle(job)
            if job.parent_job_id is not None:
                self._children.setdefault(job.parent_job_id, []).append(job.job_id)
            elif job.is_finished():
                self._finished_roots[job.job_id] = job.finished_at_ms or 0

    def order_finished_roots(self) -> None:
        """After a load: the ended root jobs in the order they ended (retention prunes oldest first)."""
        with self._lock:
            self._finished_roots = dict(sorted(self._finished_roots.items(), key=lambda item: item[1]))

    def restore_queue(self, task_ids: Iterable[TaskId]) -> None:
        with self._lock:
            for tid in task_ids:
                self._task_queue[tid] = self._tasks[tid]

    def get_job(self, job_id: JobId) -> Job | None:
        return self._jobs.get(job_id)

    def list_jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def jobs_after(self, submit_seq: int, limit: int) -> list[Job]:
        """Up to ``limit`` jobs submitted after the one numbered ``submit_seq``, oldest first.
        O(log jobs + limit): a page of a list is bounded by the page."""
        with self._lock:
            start = bisect.bisect_right(self._order_seqs, submit_seq)
            return [self._jobs[j] for j in self._order_ids[start:start + limit]]

    def jobs_before(self, submit_seq: int, limit: int) -> list[Job]:
        """Up to ``limit`` jobs submitted before the one numbered ``submit_seq`` (0: the newest),
        newest first. O(log jobs + limit)."""
        with self._lock:
            end = len(self._order_seqs) if submit_seq <= 0 else bisect.bisect_left(self._order_seqs, submit_seq)
            start = max(0, end - limit)
            return [self._jobs[j] for j in reversed(self._order_ids[start:end])]

    def delete_job(self, job_id: JobId) -> list[JobId]:
        """Remove an ended job, its child jobs (which ended with it), their tasks, attempts and
        endpoints. Returns the ids removed (children first); ``[]`` when the job is unknown or
        has not ended. The store deletes the same rows (``Effects.deleted_jobs``)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.is_finished():
                return []
            removed: list[JobId] = []
            for child_id in list(self._children.get(job_id, ())):
                removed.extend(self.delete_job(child_id))
            for task in self._tasks_by_job.pop(job_id, []):
                self._tasks.pop(task.task_id, None)
                self._task_queue.pop(task.task_id, None)
                self._remove_endpoints_for_task(task.task_id)
            self._children.pop(job_id, None)
            if job.parent_job_id is not None:
                siblings = self._children.get(job.parent_job_id)
                if siblings is not None and job_id in siblings:
                    siblings.remove(job_id)
            del self._jobs[job_id]
            self._finished_roots.pop(job_id, None)
            if job.bundle_hash:
                users = self._bundle_users.get(job.bundle_hash, {})
                if users.get(job.owner, 0) > 1:
                    users[job.owner] -= 1
                else:
                    users.pop(job.owner, None)
                left = self._bundle_refs.get(job.bundle_hash, 1) - 1
                if left > 0:
                    self._bundle_refs[job.bundle_hash] = left
                else:
                    self._bundle_refs.pop(job.bundle_hash, None)
                    self._bundle_users.pop(job.bundle_hash, None)
                    self._effects.deleted_bundles.append(job.bundle_hash)
            index = bisect.bisect_left(self._order_seqs, job.submit_seq)
            if index < len(self._order_seqs) and self._order_ids[index] == job_id:
                del self._order_seqs[index]
                del self._order_ids[index]
            self._effects.dirty_jobs.discard(job_id)
            self._effects.deleted_jobs.append(job_id)
            removed.append(job_id)
            return removed

    def job_tree(self, job_id: JobId) -> list[JobId]:
        """The job and its descendants, parents before children."""
        with self._lock:
            out, pending = [], [job_id]
            while pending:
                current = pending.pop()
                out.append(current)
                pending.extend(self._children.get(current, ()))
            return out

    def still_stopping(self, job_id: JobId) -> str:
        """A worker on which an attempt of this job (or a child job) that Iris stopped may still
        run, else "". Such a job is not deleted yet: its processes hold resources under its ids."""
        with self._lock:
            keys: set[tuple[TaskId, int]] = set()
            pending = [job_id]
            while pending:
                current = pending.pop()
                pending.extend(self._children.get(current, ()))
                for task in self._tasks_by_job.get(current, ()):
                    keys.update((task.task_id, a) for a in range(task.current_attempt_id + 1))
            for worker in self._workers.values():
                if worker.stopping and any(key in keys for key in worker.stopping):
                    return worker.worker_id
            return ""

    def prunable_jobs(self, now_ms: int, ttl_ms: int, max_finished: int, limit: int = 100) -> list[JobId]:
        """Ended root jobs that retention removes now, oldest first: those that ended more than
        ``ttl_ms`` ago (0: no age limit) and the oldest beyond ``max_finished`` ended root jobs
        (0: no count limit). At most ``limit``; O(result): the index is in the order jobs ended."""
        with self._lock:
            excess = len(self._finished_roots) - max_finished if max_finished > 0 else 0
            out: list[JobId] = []
            for job_id, finished_at_ms in self._finished_roots.items():
                if len(out) >= limit:
                    break
                if len(out) < excess or (ttl_ms > 0 and finished_at_ms <= now_ms - ttl_ms):
                    out.append(job_id)
                else:
                    break
            return out

    def finished_root_count(self) -> int:
        return len(self._finished_roots)

    def bundle_in_use(self, bundle_hash: str) -> bool:
        return bundle_hash in self._bundle_refs

    def bundle_used_by(self, bundle_hash: str, owner: str) -> bool:
        """Whether a job of ``owner`` uses this workspace bundle (so ``owner`` may name it again)."""
        return owner in self._bundle_users.get(bundle_hash, ())

    def _hold_bundle(self, job: Job) -> None:
        self._bundle_refs[job.bundle_hash] = self._bundle_refs.get(job.bundle_hash, 0) + 1
        users = self._bundle_users.setdefault(job.bundle_hash, {})
        users[job.owner] = users.get(job.owner, 0) + 1

    def get_child_jobs(self, job_id: JobId) -> list[JobId]:
        return list(self._children.get(job_id, ()))

    def get_task(self, task_id: TaskId) -> Task | None:
        return self._tasks.get(task_id)

    def get_job_tasks(self, job_id: JobId) -> list[Task]:
        with self._lock:
            return list(self._tasks_by_job.get(job_id, ()))

    def job_tasks_slice(self, job_id: JobId, start: int, stop: int) -> list[Task]:
        """Tasks ``[start, stop)`` of a job in index order: O(stop - start), not O(tasks)."""
        with self._lock:
            return list(self._tasks_by_job.get(job_id, ())[start:stop])

    def peek_pending_tasks(self) -> list[Task]:
        """All PENDING tasks in queue order."""
        with self._lock:
            return list(self._task_queue.values())

    def queue_tail(self, members: set[TaskId]) -> list[TaskId]:
        """Per priority band, the longest tail of the band's queue made only of ``members``, in queue
        order (the bands one after the other).

        Tasks that (re)entered the queue in a batch were appended to their band, so they form its
        tail; walking it backwards costs O(batch), not O(queue). The store numbers them with it
        (restored, each goes back to its band in that order).
        """
        with self._lock:
            return self._task_queue.tails(members)

    def queue_order(self) -> list[TaskId]:
        with self._lock:
            return list(self._task_queue)

    # ------------------------------------------------------------------ workers

    def add_worker(self, worker: ControllerWorker) -> ControllerWorker:
        """Register a worker, or refresh a known one (same id): new address, metadata, healthy."""
        with self._lock:
            existing = self._workers.get(worker.worker_id)
            if existing is None:
                self._workers[worker.worker_id] = worker
                existing = worker
            else:
                if split_host(worker.address) != existing.host:  # its attempts' ports move with it
                    held = [p for ports in (*existing.port_holds.values(), *existing.stopping_ports.values())
                            for p in ports]
                    self.ports.give_back(existing.host, held)
                    self.ports.hold(split_host(worker.address), held)
                existing.address = worker.address
                existing.metadata = worker.metadata
                existing.healthy = True
                existing.consecutive_failures = 0
                existing.last_heartbeat_ms = worker.last_heartbeat_ms
                existing.registered_at_ms = worker.registered_at_ms
                existing.incarnation = worker.incarnation
            self._effects.dirty_workers.add(worker.worker_id)
            return existing

    def get_worker(self, worker_id: WorkerId) -> ControllerWorker | None:
        return self._workers.get(worker_id)

    def list_workers(self) -> list[ControllerWorker]:
        with self._lock:
            return list(self._workers.values())

    def get_available_workers(self, now_ms: int | None = None) -> list[ControllerWorker]:
        """Healthy workers that take new tasks (not draining; with ``now_ms``, not quarantined), in
        registration order."""
        with self._lock:
            if now_ms is None:
                return [w for w in self._workers.values() if w.healthy and not w.draining]
            return [w for w in self._workers.values() if w.schedulable(now_ms)]

    def get_committed_resources(self, worker: ControllerWorker) -> tuple[float | int, int, int]:
        """(cpu in cores, memory_bytes, devices) committed to the worker's running tasks (the seed's
        view; ``committed_cpu`` itself counts millicores). O(1): counters."""
        return cores(worker.committed_cpu), worker.committed_memory, worker.committed_devices

    def can_fit(self, worker: ControllerWorker, job: Job) -> bool:
        """Whether ``worker`` is healthy and its free resources cover one task of ``job``."""
        meta = worker.metadata
        return worker.healthy and not worker.draining and fits_in(
            job.requirements, meta.cpu_millicores - worker.committed_cpu, meta.memory_bytes - worker.committed_memory,
            meta.disk_bytes - worker.committed_disk, meta.device_count - worker.committed_devices,
            meta.device_kind, meta.device_variant)

    def heartbeat(self, worker_id: WorkerId, now_ms: int, interval_ms: int | None = None,
                  heard_ms: int | None = None) -> bool:
        """Record that the worker was heard from at ``now_ms`` (wall; ``heard_ms`` on the liveness
        clock, else ``now_ms``) and, when given, the heartbeat interval it was just asked for. False
        when the worker is unknown or was declared dead (it must register again)."""
        worker = self._workers.get(worker_id)
        if worker is None or not worker.healthy:
            return False
        worker.last_heartbeat_ms = now_ms
        worker.heard_ms = now_ms if heard_ms is None else heard_ms
        if interval_ms is not None:
            worker.heartbeat_interval_ms = interval_ms
        return True

    def healthy_worker_count(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers.values() if w.healthy)

    def find_dead_workers(self, now_ms: int, timeout_ms: int, interval_ms: int = 0) -> list[WorkerId]:
        """Healthy workers not heard from for longer than ``timeout_ms``, or than three heartbeat
        intervals when that is longer: the one each was last asked for, or ``interval_ms`` (the
        fleet's now) if that is longer, so a worker never dies of an interval it was not told yet.
        ``now_ms`` is on the liveness clock (``ControllerWorker.heard_ms``)."""
        with self._lock:
            base = liveness_timeout_ms(timeout_ms, interval_ms)
            return [
                w.worker_id
                for w in self._workers.values()
                if w.healthy and now_ms - self.heard_ms(w) > max(base, 3 * w.heartbeat_interval_ms)
            ]

    @staticmethod
    def heard_ms(worker: ControllerWorker) -> int:
        """When ``worker`` was last heard from, on the liveness clock."""
        return worker.heard_ms if worker.heard_ms >= 0 else worker.last_heartbeat_ms

    def restart_liveness(self, heard_ms: int) -> None:
        """Every healthy worker counts as heard from at ``heard_ms`` (the liveness clock at a start:
        loaded workers get the whole timeout to report back)."""
        with self._lock:
            for worker in self._workers.values():
                if worker.healthy:
                    worker.heard_ms = heard_ms

    def mark_worker_dead(self, worker_id: WorkerId, now_ms: int, reason: str = "worker timed out") -> list[TaskId]:
        """Declare a worker dead: every task on it becomes a worker failure. Returns those tasks."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None or not worker.healthy:
                return []
            worker.healthy = False
            self._effects.dirty_workers.add(worker_id)
            for key in list(worker.stopping):
                self._confirm_stopped(worker, key)  # a dead worker's processes hold nothing we can place on
            self.log_action("worker_dead", now_ms=now_ms, worker_id=worker_id, details=reason)
            lost = sorted(worker.running_tasks)
            for task_id in lost:
                if task_id not in worker.running_tasks:
                    continue  # already moved with its gang (a gang restart of an earlier one)
                self.transition_task(
                    task_id,
                    WORKER_FAILED,
                    now_ms,
                    is_worker_failure=True,
                    error=f"worker {worker_id} failed: {reason}",
                )
            return lost

    def set_unfit(self, worker_id: WorkerId, reason: str, now_ms: int) -> None:
        """What the worker says of its own fitness ("": fit); a change is logged."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None or worker.unfit == reason:
                return
            worker.unfit = reason
            self._effects.dirty_workers.add(worker_id)
            if reason:
                logger.error("worker %s takes no tasks: %s", worker_id, reason)
            self.log_action("worker_unfit" if reason else "worker_fit", now_ms=now_ms, worker_id=worker_id,
                            details=reason)

    def remove_worker(self, worker_id: WorkerId) -> bool:
        """Forget a dead worker that holds no task (its allocation is gone for good: a released or
        ended provisioned worker). Ended attempts keep its id. Returns whether it was removed."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None or worker.healthy or worker.running_tasks or worker.stopping:
                return False
            del self._workers[worker_id]
            self._effects.dirty_workers.add(worker_id)
            return True

    # ------------------------------------------------------------------ dispatch

    def assign_task_to_worker(self, worker_id: WorkerId, task_id: TaskId, now_ms: int | None = None) -> bool:
        """Bind a queued task to a worker: RUNNING there, in its ``running_tasks``, resources committed,
        out of the queue. Works after the seed's ``task.mark_dispatched(worker_id, now_ms)`` or alone.

        Returns False (changing nothing) when the task or worker is unknown, or the task is not
        waiting in the queue.
        """
        with self._lock:
            worker = self._workers.get(worker_id)
            task = self._tasks.get(task_id)
            if worker is None or task is None or task_id not in self._task_queue:
                return False
            if task.state == PENDING:
                task.mark_dispatched(worker_id, task.pending_since_ms if now_ms is None else now_ms)
            elif task.worker_id != worker_id or task.state not in (RUNNING, BUILDING):
                return False
            del self._task_queue[task_id]
            job = self._jobs[task.job_id]
            job.pending_ms += max(0, (task.started_at_ms or task.pending_since_ms) - task.pending_since_ms)
            task.band = job.spec.priority or DEFAULT_BAND  # the band this attempt is placed under
            self._bind(worker, task, job)
            job.on_task_transition(PENDING, task.state, task.started_at_ms or 0, task)
            self._effects.dirty_tasks.add(task_id)
            self._effects.dirty_jobs.add(job.job_id)
            return True

    def commit_assignment(self, task_id: TaskId, worker_id: WorkerId, now_ms: int) -> bool:
        """The shell's dispatch commit: re-check that the task still waits, the worker is still healthy
        and fits, then assign. The dispatch is recorded as in flight until ``ack_dispatch``."""
        with self._lock:
            task = self._tasks.get(task_id)
            worker = self._workers.get(worker_id)
            if task is None or worker is None or task.state != PENDING or task_id not in self._task_queue:
                return False
            job = self._jobs[task.job_id]
            if job.is_finished() or not self.can_fit(worker, job):
                return False
            if not self._take_ports(worker, task, job, now_ms):
                return False
            ok = self.assign_task_to_worker(worker_id, task_id, now_ms)
            if not ok:
                self._give_back_ports(worker, task_id)
            if ok:
                worker.dispatch_acks[task_id] = None
                self.estimates.started(task.job_id, now_ms)
                self.shares.nominated.pop(task_id, None)  # a preemptor placed: its claim is done
                if job.spec.timeout_seconds > 0:
                    heapq.heappush(self._deadlines, (now_ms + int(job.spec.timeout_seconds * 1000), task_id,
                                                     task.current_attempt_id))
            return ok

    def ack_dispatch(self, task_id: TaskId, attempt_id: int, incarnation: str, sequence: int) -> None:
        """The worker accepted RunTask for this attempt under (incarnation, sequence)."""
        with self._lock:
            task = self._live(task_id, attempt_id)
            if task is None or task.worker_id is None:
                return
            worker = self._workers.get(task.worker_id)
            if worker is not None:
                worker.consecutive_failures = 0
                if task_id in worker.dispatch_acks:
                    worker.dispatch_acks[task_id] = (incarnation, sequence)

    def dispatch_failed(
        self,
        task_id: TaskId,
        attempt_id: int,
        now_ms: int,
        error: str,
        *,
        worker_gone: bool = False,
        max_consecutive_failures: int = 3,
        count_failure: bool = True,
    ) -> TaskTransitionResult:
        """The worker never accepted RunTask: a worker failure of that attempt (DESIGN §3).

        The worker is declared dead when it said it is going away (``worker_gone``) or after
        ``max_consecutive_failures`` failed dispatches in a row; otherwise the retried task would be
        sent straight back to the same unreachable worker and burn its preemption budget in a loop.
        A live worker that was declared dead re-registers on its next heartbeat.
        ``count_failure=False``: this attempt shares one failed call with others (a RunTasks batch)
        and only one of them counts toward ``max_consecutive_failures``.
        """
        with self._lock:
            task = self._live(task_id, attempt_id)
            if task is None:
                return TaskTransitionResult.IGNORED
            worker_id = task.worker_id
            result, _ = self.transition_task(task_id, WORKER_FAILED, now_ms, is_worker_failure=True, error=error)
            worker = self._workers.get(worker_id) if worker_id is not None else None
            if worker is not None and worker.healthy:
                if count_failure:
                    worker.consecutive_failures += 1
                if worker_gone or worker.consecutive_failures >= max_consecutive_failures:
                    self.mark_worker_dead(worker.worker_id, now_ms, reason=f"dispatch failed: {error}")
            return result

    def dispatch_refused(self, task_id: TaskId, attempt_id: int, now_ms: int, error: str) -> TaskTransitionResult:
        """The worker refused the attempt because of the task's own content (a request it cannot
        run): a real failure of the task, charged to ``max_retries_failure``; the worker answered
        and stays healthy (DESIGN §3)."""
        with self._lock:
            task = self._live(task_id, attempt_id)
            if task is None:
                return TaskTransitionResult.IGNORED
            worker = self._workers.get(task.worker_id) if task.worker_id is not None else None
            if worker is not None:
                worker.consecutive_failures = 0
            result, _ = self.transition_task(task_id, cluster_pb2.TASK_STATE_FAILED, now_ms, error=error)
            return result

    def _take_ports(self, worker: ControllerWorker, task: Task, job: Job, now_ms: int) -> bool:
        """Allocate the attempt's named ports, and a coscheduled task's rendezvous port (used if it
        leads the gang), from the worker's range; False (nothing taken) when the range has too few
        free. A location that declares no range gets none: it picks named ports itself."""
        names = job.spec.ports
        count = len(names) + (1 if job.coscheduled else 0)
        port_range = worker.metadata.port_range
        if not count or port_range is None:
            return True
        taken = self.ports.take(worker.host, port_range[0], port_range[1], count, worker.port_cursor, now_ms)
        if taken is None:
            logger.warning("worker %s has fewer than %d free ports in %d-%d: task %s waits", worker.worker_id,
                           count, port_range[0], port_range[1], task.task_id)
            return False
        ports, worker.port_cursor = taken
        worker.port_holds[task.task_id] = tuple(ports)
        if names:
            task.ports = dict(zip(names, ports, strict=False))
        if job.coscheduled:
            task.coordinator_port = ports[-1]
        return True

    def _give_back_ports(self, worker: ControllerWorker, task_id: TaskId, hold_attempt: int | None = None) -> None:
        """The task's attempt left this worker: its ports are free again, or with ``hold_attempt``
        held until the stopped attempt is confirmed gone."""
        ports = worker.port_holds.pop(task_id, None)
        if ports is None:
            return
        if hold_attempt is not None:
            worker.stopping_ports[(task_id, hold_attempt)] = ports
        else:
            self.ports.give_back(worker.host, ports)

    def _bind(self, worker: ControllerWorker, task: Task, job: Job) -> None:
        worker.running_tasks.add(task.task_id)
        worker.hold(job.task_resources)
        self.shares.bind(task.task_id, job.owner, job.requirements, worker.metadata.device_variant)

    def _release(self, worker_id: WorkerId | None, task: Task, job: Job, hold_attempt: int | None = None) -> None:
        """Unbind a task from its worker. ``hold_attempt``: Iris is stopping that attempt, whose
        process may still run: its resources stay committed (``worker.stopping``) until confirmed."""
        if worker_id is None:
            return
        worker = self._workers.get(worker_id)
        if worker is None or task.task_id not in worker.running_tasks:
            return
        worker.running_tasks.discard(task.task_id)
        worker.dispatch_acks.pop(task.task_id, None)
        self.shares.release(task.task_id)
        if hold_attempt is not None and worker.healthy:
            worker.stopping[(task.task_id, hold_attempt)] = job.task_resources
            if worker.port_holds:
                self._give_back_ports(worker, task.task_id, hold_attempt)
            return
        worker.give_back(job.task_resources)
        if worker.port_holds:
            self._give_back_ports(worker, task.task_id)

    def _confirm_stopped(self, worker: ControllerWorker, key: tuple[TaskId, int]) -> bool:
        """A stopped attempt's processes are gone: give its resources (and ports) back."""
        if worker.stopping_ports:
            ports = worker.stopping_ports.pop(key, None)
            if ports is not None:
                self.ports.give_back(worker.host, ports)
        held = worker.stopping.pop(key, None)
        if held is None:
            return False
        worker.give_back(held)
        self._effects.dirty_workers.add(worker.worker_id)
        return True

    # ------------------------------------------------------------------ transitions

    def transition_task(
        self,
        task_id: TaskId,
        new_state: int,
        now_ms: int,
        *,
        is_worker_failure: bool = False,
        error: str | None = None,
        exit_code: int | None = None,
        force_kill: bool = False,
        decided_by: str = "",
    ) -> tuple[TaskTransitionResult, list[ControllerEndpoint]]:
        """Transition a task and apply every side effect: queue, worker, resources, endpoints, job
        counts and state, failure-domain cascade, and the failure rules (DESIGN §4): exit rules and
        retry backoff (in ``Task.transition``), gang restart, correlated-failure fail-fast, worker
        quarantine. A task that has already ended never changes. ``force_kill``: the process may
        still run although the new state is an end the worker did not report (a timeout).

        Returns the task's result and the endpoints removed because its attempt ended.
        """
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return TaskTransitionResult.IGNORED, []
            job = self._jobs[task.job_id]
            old_state = task.state
            old_worker = task.worker_id
            old_attempt = task.current_attempt_id
            was_active = task.is_active()
            ended_before = len(task.attempts)

            spec = job.spec
            result = task.transition(
                new_state, now_ms, is_worker_failure=is_worker_failure, error=error, exit_code=exit_code,
                rules=spec.exit_rules, backoff_s=spec.retry_backoff_seconds, decided_by=decided_by,
            )
            if result is TaskTransitionResult.IGNORED:
                return result, []
            effects = self._effects
            effects.dirty_tasks.add(task_id)
            effects.dirty_jobs.add(job.job_id)

            removed: list[ControllerEndpoint] = []
            attempt_ended = result is TaskTransitionResult.SHOULD_RETRY or task.state in TERMINAL_TASK_STATES
            if attempt_ended:
                if was_active:
                    kill = old_worker is not None and (
                        force_kill or self._should_kill(new_state, is_worker_failure, old_worker))
                    self._release(old_worker, task, job, hold_attempt=old_attempt if kill else None)
                    removed = self._remove_endpoints_for_task(task_id)
                    if kill:
                        assert old_worker is not None
                        effects.kills.append(KillInstruction(old_worker, task_id, old_attempt))
                    if old_worker is not None:
                        effects.dirty_workers.add(old_worker)
                else:
                    self._task_queue.pop(task_id, None)

            if result is TaskTransitionResult.SHOULD_RETRY:
                self._task_queue[task_id] = task
                self.log_action(
                    "task_retry",
                    now_ms=now_ms,
                    job_id=task.job_id,
                    task_id=task_id,
                    worker_id=old_worker or "",
                    details=f"{task.attempts[-1].charged_to if len(task.attempts) > ended_before else 'failure'}"
                    f" attempt={old_attempt}: {error or ''}",
                )
            new_job_state = job.on_task_transition(old_state, task.state, now_ms, task)
            ended: list[TaskAttempt] = task.attempts[ended_before:] if len(task.attempts) > ended_before else []
            for attempt in ended:
                self._account(job, attempt, charge_usage=True)
                self._on_attempt_ended(job, task, attempt, now_ms)
            if task.state in TERMINAL_TASK_STATES and task.state not in (SUCCEEDED, KILLED):
                self.log_action(
                    "task_ended",
                    now_ms=now_ms,
                    job_id=task.job_id,
                    task_id=task_id,
                    details=f"{cluster_pb2.TaskState.Name(task.state)}: {task.error or ''}",  # type: ignore[arg-type]
                )
            if new_job_state is not None and job.is_finished():
                self._on_job_finished(job, now_ms)
            elif ended and not job.is_finished() and (
                    task.fail_job or job.spec.max_similar_failures or job.coscheduled):
                self._apply_job_rules(job, task, result, ended, now_ms)
            return result, removed

    # ------------------------------------------------------------------ failure rules (DESIGN §4)

    def _account(self, job: Job, attempt: TaskAttempt, charge_usage: bool = False) -> None:
        """Add an ended attempt's running time to its job's and the cluster's lost/useful time, and
        (``charge_usage``: it just ended) its resources x time to its owner's usage."""
        if charge_usage and attempt.started_at_ms is not None and attempt.finished_at_ms is not None:
            worker = self._workers.get(attempt.worker_id) if attempt.worker_id is not None else None
            variant = worker.metadata.device_variant if worker is not None else ""
            self.shares.charge(job.owner, task_amounts(self.shares.config, job.requirements, variant),
                               attempt.started_at_ms, attempt.finished_at_ms)
        cause = attempt.time_cause()
        if cause is None or attempt.started_at_ms is None:
            return
        job.charge(cause)
        ms = attempt.running_ms()
        job.add_time(cause, ms)
        self.lost_ms[cause] += ms

    def _on_attempt_ended(self, job: Job, task: Task, attempt: TaskAttempt, now_ms: int) -> None:
        """Worker quarantine bookkeeping (``policies.extends_streak``, ``policies.quarantine``)."""
        if attempt.state == SUCCEEDED and attempt.worker_id is not None:
            job.note_success(attempt.worker_id)
            self.runtimes.record(job.job_id, attempt.running_ms())
        worker = self._workers.get(attempt.worker_id) if attempt.worker_id is not None else None
        if worker is None:
            return
        extends = policies.extends_streak(attempt, now_ms)
        if extends is False:
            worker.streak.clear()
        if not extends or not self.quarantine_after:
            return
        worker.streak.append(policies.StreakEntry(task.task_id, attempt.attempt_id, job.job_id, job.owner))
        if len(worker.streak) > max(policies.STREAK_CAP, 4 * self.quarantine_after):
            del worker.streak[0]  # bounded memory; the oldest entries matter least
        if worker.quarantined_until_ms <= now_ms:
            self._apply_quarantine(worker, now_ms)

    def _apply_quarantine(self, worker: ControllerWorker, now_ms: int) -> None:
        vindicated = set()
        for entry in worker.streak:
            job = self._jobs.get(entry.job_id)
            if job is not None and job.succeeded_elsewhere(worker.worker_id):
                vindicated.add(entry.owner)
        fleet = [w for w in self._workers.values() if w.healthy and not w.draining]
        decision = policies.quarantine(worker.streak, vindicated, self.quarantine_after, worker.quarantines,
                                       len(fleet), sum(1 for w in fleet if w.quarantined_until_ms > now_ms), now_ms)
        if decision is None:
            return
        worker.quarantines += 1
        worker.quarantined_until_ms = decision.until_ms
        worker.quarantine_reason = decision.message
        self._effects.dirty_workers.add(worker.worker_id)
        self.log_action("worker_quarantined", now_ms=now_ms, worker_id=worker.worker_id, details=decision.message)
        for entry in decision.forgiven:  # the worker is blamed: those failures are charged to no budget
            task = self._tasks.get(entry.task_id)
            for attempt in task.attempts if task is not None else ():
                if attempt.attempt_id == entry.attempt_id and attempt.charged_to == "failure":
                    assert task is not None
                    attempt.charged_to = "none"
                    job_of = self._jobs.get(task.job_id)
                    if job_of is not None:
                        job_of.charge("failure", -1)
                    attempt.decided_by = f"quarantined worker {worker.worker_id}"
                    if not task.is_finished() and task.failure_count > 0:
                        task.failure_count -= 1
                        task.not_before_ms = 0
                        self._effects.dirty_tasks.add(entry.task_id)
        worker.streak.clear()

    def _apply_job_rules(self, job: Job, task: Task, result: TaskTransitionResult, ended: list[TaskAttempt],
                         now_ms: int) -> None:
        """After a task's move in a job that is still running: an exit rule's fail-job, the
        correlated-failure fail-fast, and a coscheduled job's gang restart (``policies``)."""
        last = ended[-1] if ended else None
        decision: policies.FailJob | policies.RestartGang | None = policies.exit_rule(task.fail_job, task.error)
        k = job.spec.max_similar_failures
        if decision is None and k and policies.counts_as_similar(last, bool(job.counts[SUCCEEDED])):
            assert last is not None
            seen = job.similar_tasks(policies.failure_key(last))
            decision = policies.similar_failures(k, last, task.task_index, seen, job.num_tasks, False)
            seen.add(task.task_index)
        if decision is None:
            decision = policies.gang_restart(job.coscheduled, result is TaskTransitionResult.SHOULD_RETRY, task.task_id)
        if isinstance(decision, policies.FailJob):
            job.finish(cluster_pb2.JOB_STATE_FAILED, now_ms, decision.error)
            self._on_job_finished(job, now_ms)
        elif isinstance(decision, policies.RestartGang):
            self._gang_restart(job, task, now_ms)

    def _gang_restart(self, job: Job, trigger: Task, now_ms: int) -> None:
        """One task of a gang will be retried: stop the gang's other running attempts (KILLED,
        "gang restart", no budget charged) so the whole gang is placed again together."""
        self._gang_holds.pop(job.job_id, None)  # decided: ends held in the blame window go with the rest
        last = trigger.attempts[-1] if trigger.attempts else None
        cause = f"task {trigger.task_index}: " + (policies.describe_end(last.exit_code, last.error) if last else "ended")
        error = f"{GANG_RESTART}: started by {cause}"
        restarted = 0
        for other in self._tasks_by_job[job.job_id]:
            if other is not trigger and other.is_active() and self._restart_uncharged(
                    job, other, now_ms, GANG_RESTART, error=error, kill=other.task_id not in self._ended_in_hold):
                restarted += 1
        if restarted:
            job.gang_restart_cause = cause
            job.gang_restarts += 1
            self.log_action("gang_restart", now_ms=now_ms, job_id=job.job_id, task_id=trigger.task_id,
                            details=f"stopped {restarted} running tasks")

    def _restart_uncharged(self, job: Job, task: Task, now_ms: int, reason: str, *, kill: bool = True,
                           error: str | None = None, end_state: int = KILLED) -> bool:
        """End the task's live attempt KILLED with ``reason``, charged to no budget, and queue it
        again. ``kill``: its process may still run (stop it; its resources stay held until it is
        confirmed gone). False when the task is not active."""
        worker_id, attempt_id, old_state = task.worker_id, task.current_attempt_id, task.state
        ended_before = len(task.attempts)
        if not task.restart_attempt(now_ms, reason, error, end_state):
            return False
        self._release(worker_id, task, job, hold_attempt=attempt_id if kill else None)
        self._remove_endpoints_for_task(task.task_id)
        if worker_id is not None:
            if kill:
                self._effects.kills.append(KillInstruction(worker_id, task.task_id, attempt_id))
            self._effects.dirty_workers.add(worker_id)
        self._task_queue[task.task_id] = task
        self._effects.dirty_tasks.add(task.task_id)
        self._effects.dirty_jobs.add(job.job_id)
        job.on_task_transition(old_state, PENDING, now_ms, task)
        for attempt in task.attempts[ended_before:]:
            self._account(job, attempt, charge_usage=True)
        return True

    # ------------------------------------------------------------------ a scheduling pass's bookkeeping

    def before_pass(self, now_ms: int, bounded: bool, possible: Sequence[Room] = ()) -> QueuedTasks:
        """The tasks a pass reads. A full pass first puts back parked work that now fits a worker
        (or one a provisioner could add: ``possible``). O(parked shapes x workers), not O(parked)."""
        with self._lock:
            if not bounded:
                self.fleet_kinds = frozenset(w.total() for w in self._workers.values() if w.healthy)
                self.possible_kinds = tuple(possible)
            if self._parked and not bounded:
                totals = [*self.fleet_kinds, *possible]
                for shape, (req, jobs) in list(self._parked.items()):
                    if not unmet_everywhere(req, totals):
                        del self._parked[shape]
                        back = [t.task_id for t in self._task_queue.parked() if t.job_id in jobs]
                        self._task_queue.unpark(back)
                        for job_id in jobs:
                            self.log_action("job_unparked", now_ms=now_ms, job_id=job_id,
                                            details="capacity of its kind appeared")
            return self._task_queue.runs()

    def after_pass(self, now_ms: int, timed_out: Sequence[Task], preemptions: Sequence[Preemption],
                   never_fit: Mapping[JobId, str], fleet: Mapping[str, float],
                   reservations: list[Reservation] | None = None) -> None:
        """Carry out a pass's decisions but placements: tasks past their scheduling timeout end
        UNSCHEDULABLE, policy preemptions are made, jobs that fit no worker are parked, a full
        pass's reservations replace the last ones."""
        with self._lock:
            if reservations is not None:
                self.reservations = reservations
            if fleet:
                self.shares.fleet = dict(fleet)
            for p in preemptions:  # the sharing policy's (``fairness``): SIGTERM, grace, requeued
                self.preempt(p.victim.task_id, p.by.task_id, p.why, now_ms)
            for task in timed_out:
                job = self._jobs.get(task.job_id)
                reason = job.pending_reason if job is not None else ""
                timeout_s = job.scheduling_timeout_ms / 1000 if job is not None else 0
                self.transition_task(task.task_id, UNSCHEDULABLE, now_ms,
                                     error=f"not scheduled within {timeout_s:g}s" + (f": {reason}" if reason else ""))
            for job_id, reason in never_fit.items():
                job = self._jobs.get(job_id)
                if job is None or job.is_finished():
                    continue
                req = job.requirements
                self._parked.setdefault(req.shape, (req, {}))[1][job_id] = reason
                self._task_queue.park([t.task_id for t in self._tasks_by_job[job_id] if t.state == PENDING])
                job.pending_reason = f"{NEVER_FITS}: {reason}"

    def parked_timeouts(self, now_ms: int) -> list[Task]:
        """Parked tasks past their job's scheduling timeout (a pass does not read parked tasks)."""
        with self._lock:
            out: list[Task] = []
            for _, jobs in self._parked.values():
                for job_id in jobs:
                    job = self._jobs.get(job_id)
                    timeout = job.scheduling_timeout_ms if job is not None else 0
                    if timeout > 0:
                        out.extend(t for t in self._tasks_by_job[job_id]
                                   if t.state == PENDING and now_ms - t.pending_since_ms > timeout)
            return out

    def predicted_runtime(self, job: Job) -> tuple[int | None, str]:
        """A task's predicted runtime and its source (``runtimes.predict``): the job's --timeout, the
        owner's last runs of this name (its own finished tasks among them), or unknown."""
        return predict(int(job.spec.timeout_seconds * 1000), self.runtimes.predict(job.job_id), None)

    def fit_warning(self, job_id: JobId) -> str:
        """"never fits: ..." when no kind of worker the fleet has (or a provisioner could add) can
        hold one task of the job, as of the last full pass; else "". O(kinds of worker)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not (self.fleet_kinds or self.possible_kinds):
                return ""  # no worker yet: one may register any moment (a cluster starting)
            missing = unmet_everywhere(job.requirements, [*self.fleet_kinds, *self.possible_kinds])
            return f"{NEVER_FITS}: {missing}" if missing else ""

    def parked_jobs(self) -> dict[JobId, str]:
        """Jobs waiting for a kind of worker the fleet does not have, and why."""
        with self._lock:
            return {job_id: reason for _, jobs in self._parked.values() for job_id, reason in jobs.items()
                    if (job := self._jobs.get(job_id)) is not None and not job.is_finished()}

    # ------------------------------------------------------------------ sharing (issue 24, ``shares.py``)

    def configure_sharing(self, config: SharingConfig, now_ms: int) -> None:
        """Use a (new) sharing policy: running attempts are counted again under it, none stopped."""
        with self._lock:
            running = []
            for worker in self._workers.values():
                for task_id in worker.running_tasks:
                    job = self._jobs.get(self._tasks[task_id].job_id)
                    if job is not None:
                        running.append((task_id, job.owner, job.requirements, worker.metadata.device_variant))
            self.shares.reconfigure(config, running, now_ms)
            self.shares.set_fleet(w.snapshot() for w in self._workers.values())
            self.log_action("sharing_configured", now_ms=now_ms, details=config.source or "built-in default")

    def fair_inputs(self, now_ms: int) -> FairInputs:
        """What a scheduling pass needs to share the fleet (running attempts only if asked for), and
        the reservations still standing (a job that started or ended has none)."""
        inputs = self.shares.inputs(now_ms, lambda: self._holders(now_ms))
        self.reservations = [r for r in self.reservations
                             if (job := self._jobs.get(r.job_id)) is not None and not job.is_finished()
                             and job.counts[PENDING] > 0]
        inputs.reservations = self.reservations
        inputs.max_reservations = self.max_reservations
        return inputs

    def _holders(self, now_ms: int) -> list[Holder]:
        out: list[Holder] = []
        for worker in self._workers.values():
            if not worker.healthy:
                continue
            for task_id in worker.running_tasks:
                task = self._tasks[task_id]
                job = self._jobs[task.job_id]
                holding = self.shares.holding(task_id)
                if holding is None:
                    continue
                started = task.started_at_ms or now_ms
                timeout = int(job.spec.timeout_seconds * 1000)
                out.append(Holder(task, job.job_id, worker.worker_id, job.band, holding.team, holding.user, started,
                                  holding.amounts, job.requirements, job.coscheduled,
                                  started + timeout if timeout > 0 else NEVER))
        return out

    def preempt(self, victim_id: TaskId, by_task_id: TaskId, why: str, now_ms: int) -> bool:
        """Stop a running attempt for the sharing policy: it ends PREEMPTED (SIGTERM, its job's grace,
        SIGKILL), charged to no budget, and its task is queued again; its next attempt is told by
        whom and why (IRIS_PREVIOUS_*). ``by_task_id`` waits for it without preempting again."""
        with self._lock:
            task = self._tasks.get(victim_id)
            by = self._tasks.get(by_task_id)
            if task is None or by is None or not task.is_active():
                return False
            job = self._jobs[task.job_id]
            team = self.shares.config.team_of(job.owner)
            error = f"preempted by {by.job_id} ({why})"
            if not self._restart_uncharged(job, task, now_ms, POLICY_PREEMPTION, error=error, end_state=PREEMPTED):
                return False
            self.shares.preempted(now_ms, team, BANDS[job.band])
            job.policy_preemptions += 1
            grace_ms = int((job.spec.termination_grace_seconds or 0) * 1000)
            self.shares.nominate(by_task_id, now_ms + grace_ms + NOMINATION_SLACK_MS)
            self.log_action("task_preempted", now_ms=now_ms, job_id=job.job_id, task_id=victim_id,
                            details=error)
            return True

    def restore_usage(self, user: str, value: float, as_of_ms: int) -> None:
        self.shares.ledger.restore(user, value, as_of_ms)

    def _ports_held_outside(self, worker: ControllerWorker, task: Task, busy: tuple[int, ...], now_ms: int) -> bool:
        """The worker found ports it was to give this attempt held by something outside Iris: avoid
        them on that host for a while and place the task again with others, charged to no budget
        (its gang with it)."""
        job = self._jobs[task.job_id]
        self.ports.held_outside(worker.host, busy, now_ms)
        listed = ", ".join(str(p) for p in busy[:8])
        reason = f"port {listed} in use on {worker.host} by a process outside Iris: placed again with other ports"
        if not self._restart_uncharged(job, task, now_ms, PORT_IN_USE, error=reason, kill=False):
            return False
        self.log_action("ports_busy", now_ms=now_ms, job_id=job.job_id, task_id=task.task_id,
                        worker_id=worker.worker_id, details=reason)
        if job.coscheduled:
            self._gang_restart(job, task, now_ms)
        return True

    def expire_timeouts(self, now_ms: int) -> list[TaskId]:
        """Attempts running past their job's ``timeout_seconds``: FAILED "timed out" (a failure),
        their processes killed. O(log n) per attempt (a heap of deadlines)."""
        expired: list[TaskId] = []
        with self._lock:
            heap = self._deadlines
            while heap and heap[0][0] <= now_ms:
                _, task_id, attempt_id = heapq.heappop(heap)
                task = self._live(task_id, attempt_id)
                if task is None:
                    continue
                job = self._jobs[task.job_id]
                seconds = job.spec.timeout_seconds
                self.transition_task(task_id, cluster_pb2.TASK_STATE_FAILED, now_ms, force_kill=True,
                                     error=f"timed out after {seconds:g}s", decided_by=f"timed out (--timeout {seconds:g})")
                expired.append(task_id)
        return expired

    def drain_worker(self, worker_id: WorkerId, now_ms: int) -> int:
        """No new tasks on the worker; its tasks are stopped (SIGTERM and grace) as preemptions.
        Returns how many were stopped. Raises KeyError for an unknown worker."""
        with self._lock:
            worker = self._workers[worker_id]
            worker.draining = True
            self._effects.dirty_workers.add(worker_id)
            self.log_action("worker_drained", now_ms=now_ms, worker_id=worker_id)
            stopped = 0
            for task_id in sorted(worker.running_tasks):
                if task_id not in worker.running_tasks:
                    continue  # already moved with its gang
                result, _ = self.transition_task(task_id, WORKER_FAILED, now_ms, is_worker_failure=True,
                                                 error=f"worker {worker_id} drained", decided_by="worker drain")
                stopped += result is not TaskTransitionResult.IGNORED
            return stopped

    def release_worker(self, worker_id: WorkerId, now_ms: int) -> None:
        """End a worker's drain or quarantine. Raises KeyError for an unknown worker."""
        with self._lock:
            worker = self._workers[worker_id]
            worker.draining = False
            worker.quarantined_until_ms = 0
            worker.quarantine_reason = ""
            worker.streak.clear()
            self._effects.dirty_workers.add(worker_id)
            self.log_action("worker_released", now_ms=now_ms, worker_id=worker_id)

    def _should_kill(self, new_state: int, is_worker_failure: bool, worker_id: WorkerId) -> bool:
        """Whether the process of an attempt that just ended may still be running.

        A worker reporting SUCCEEDED/FAILED has seen its process end. A KILLED transition is ours, and a
        worker failure while the worker still looks healthy (e.g. RunTask timed out) may have left the
        process running; a dead worker cannot be reached, and reconcile handles it if it returns.
        """
        if new_state == KILLED:
            return True
        if is_worker_failure or new_state == WORKER_FAILED:
            worker = self._workers.get(worker_id)
            return worker is not None and worker.healthy
        return False

    def _on_job_finished(self, job: Job, now_ms: int) -> None:
        """Failure domain: kill every task of the job that has not ended, then end its children."""
        self._effects.dirty_jobs.add(job.job_id)
        self._gang_holds.pop(job.job_id, None)
        if job.parent_job_id is None:
            self._finished_roots[job.job_id] = job.finished_at_ms or now_ms
        self.log_action(
            "job_finished",
            now_ms=now_ms,
            job_id=job.job_id,
            details=f"{cluster_pb2.JobState.Name(job.state)}{': ' + job.error if job.error else ''}",  # type: ignore[arg-type]
        )
        if job.tasks_finished < job.num_tasks:
            reason = f"job {job.job_id} ended {cluster_pb2.JobState.Name(job.state)}"  # type: ignore[arg-type]
            for task in self._tasks_by_job[job.job_id]:
                if not task.is_finished():
                    self.transition_task(task.task_id, KILLED, now_ms, error=reason)
        for child_id in self._children.get(job.job_id, ()):
            self.terminate_job(child_id, now_ms, reason=f"parent job {job.job_id} ended")

    def terminate_job(self, job_id: JobId, now_ms: int, reason: str = "terminated by user") -> bool:
        """End a job KILLED: kill its live tasks and terminate its children. False if it had ended."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.is_finished():
                return False
            job.finish(cluster_pb2.JOB_STATE_KILLED, now_ms, reason)
            self._on_job_finished(job, now_ms)
            return True

    def set_pending_reasons(self, reasons: Mapping[JobId, str]) -> None:
        for job_id, reason in reasons.items():
            job = self._jobs.get(job_id)
            if job is not None:
                job.pending_reason = reason

    # ------------------------------------------------------------------ reports and reconcile

    def apply_report(
        self,
        worker_id: WorkerId,
        task_id: TaskId,
        attempt_id: int,
        state: int,
        now_ms: int,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        ports: Mapping[str, int] | None = None,
        job_uid: str = "",
        busy_ports: tuple[int, ...] = (),
    ) -> bool:
        """Apply one state report from a worker. Stale attempts, reports for ended tasks, reports
        from a worker the attempt is not bound to, reports of another incarnation of the job (one
        deleted, its name used again), and illegal moves are ignored (idempotent).

        A KILLED report for an attempt the controller did not kill means the worker stopped it
        because it is shutting down: a worker failure, retried as a preemption, and the worker is
        taken out of scheduling. An end with ``busy_ports`` (its ports were held by something
        outside Iris, so it never started) is placed again, charged to no budget.
        Returns whether anything changed.
        """
        with self._lock:
            if state in TERMINAL_TASK_STATES:
                worker = self._workers.get(worker_id)
                if worker is not None and worker.stopping and self.job_uid_matches(task_id, job_uid):
                    self._confirm_stopped(worker, (task_id, attempt_id))  # a stopped attempt is gone
            task = self._live(task_id, attempt_id, job_uid, worker_id)
            if task is None:
                return False
            if ports:
                task.ports = dict(ports)
            if busy_ports and state in TERMINAL_TASK_STATES:
                worker = self._workers.get(worker_id)
                if worker is not None:
                    return self._ports_held_outside(worker, task, busy_ports, now_ms)
            if state == KILLED:
                # Only a departing worker stops a task the controller did not kill: take the worker out
                # of scheduling too, so the retry is not sent straight back to it. If it stays, its next
                # heartbeat re-registers it.
                result, _ = self.transition_task(
                    task_id, WORKER_FAILED, now_ms, is_worker_failure=True,
                    error=error or f"worker {worker_id} stopped the task",
                )
                self.mark_worker_dead(worker_id, now_ms, reason="it stopped its tasks (shutting down)")
                return result is not TaskTransitionResult.IGNORED
            if state not in (BUILDING, RUNNING, SUCCEEDED, cluster_pb2.TASK_STATE_FAILED, WORKER_FAILED):
                logger.warning("ignoring report task=%s attempt=%s with state %s", task_id, attempt_id, state)
                return False
            if state == cluster_pb2.TASK_STATE_FAILED and self._hold_gang_end(task, exit_code, error, now_ms):
                return True
            result, _ = self.transition_task(
                task_id, state, now_ms, is_worker_failure=state == WORKER_FAILED, error=error, exit_code=exit_code
            )
            if self._gang_holds and task.job_id in self._gang_holds and not task.is_active():
                self._settle_if_all_ended(self._jobs[task.job_id], now_ms)  # one fewer member to hear from
            return result is not TaskTransitionResult.IGNORED

    # ------------------------------------------------------------------ gang blame (DESIGN §4)

    def _hold_gang_end(self, task: Task, exit_code: int | None, error: str | None, now_ms: int) -> bool:
        """A member of a coscheduled job failed while others run: hold the end for the blame window
        (``policies.gang_cause``) instead of deciding the gang restart now. False: decide now (not
        a gang, no window, or no other member left to hear from)."""
        job = self._jobs[task.job_id]
        if not job.coscheduled or not self.gang_blame_window_ms or job.is_finished():
            return False
        hold = self._gang_holds.get(job.job_id)
        members = self._tasks_by_job[job.job_id]
        if hold is None:
            if not any(other is not task and other.is_active() for other in members):
                return False
            hold = self._gang_holds[job.job_id] = GangHold(now_ms + self.gang_blame_window_ms)
        if not hold.holds(task.task_id):
            hold.ends.append(policies.MemberEnd(task.task_id, task.task_index, task.current_attempt_id,
                                                exit_code, error))
        self._settle_if_all_ended(job, now_ms)
        return True

    def _settle_if_all_ended(self, job: Job, now_ms: int) -> None:
        hold = self._gang_holds.get(job.job_id)
        if hold is not None and all(hold.holds(t.task_id) for t in self._tasks_by_job[job.job_id] if t.is_active()):
            self._settle_gang(job, now_ms)  # every live member has ended: nothing more to wait for

    def holds_end(self, task_id: TaskId) -> bool:
        """Whether this task's failure is held in its gang's blame window (it ended on its worker)."""
        task = self._tasks.get(task_id)
        hold = self._gang_holds.get(task.job_id) if task is not None else None
        return hold is not None and hold.holds(task_id)

    def settle_gangs(self, now_ms: int) -> int:
        """Decide the gang restarts whose blame window has passed. Returns how many."""
        with self._lock:
            due = [job_id for job_id, hold in self._gang_holds.items() if hold.until_ms <= now_ms]
            for job_id in due:
                job = self._jobs.get(job_id)
                if job is None:
                    self._gang_holds.pop(job_id, None)
                else:
                    self._settle_gang(job, now_ms)
            return len(due)

    def _settle_gang(self, job: Job, now_ms: int) -> None:
        """Charge the cause's failure (``policies.gang_cause``): the gang restart it starts stops the
        others, their held ends included, KILLED with the cause and charged to nobody."""
        hold = self._gang_holds.pop(job.job_id, None)
        if hold is None:
            return
        ends = [end for end in hold.ends if (t := self._tasks.get(end.task_id)) is not None and t.is_active()
                and t.current_attempt_id == end.attempt_id]
        if not ends:
            return
        cause = policies.gang_cause(ends)
        self._ended_in_hold = frozenset(end.task_id for end in ends)
        try:
            self.transition_task(cause.task_id, cluster_pb2.TASK_STATE_FAILED, now_ms, exit_code=cause.exit_code,
                                 error=cause.error)
        finally:
            self._ended_in_hold = frozenset()

    def reconcile_worker(
        self,
        worker_id: WorkerId,
        observed: list[ObservedAttempt],
        incarnation: str,
        sequence: int,
        now_ms: int,
    ) -> ReconcileResult:
        """Level-triggered reconcile of a worker's complete observed set (DESIGN §3).

        - An observed attempt that is the task's current attempt on this worker: its end, if it ended,
          is applied (live states arrive through the worker's ordered reports).
        - An observed live attempt the controller does not expect (stale attempt, ended task, unknown
          task, another worker's): kill it.
        - An expected attempt the set lacks is a worker failure, unless its RunTask is still in flight
          or was accepted after the set was taken (same incarnation, higher sequence). A finished
          attempt whose report was lost is in the set with its terminal state, so it is not retried.
        """
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                return ReconcileResult(kill=[a for a in observed if a.state not in TERMINAL_TASK_STATES], missing=[])
            kill: list[ObservedAttempt] = []
            seen: set[TaskId] = set()
            for attempt in observed:
                task = self.live_attempt(attempt.ref, worker_id)
                if task is not None:
                    seen.add(attempt.task_id)
                    if attempt.ports and task.ports != dict(attempt.ports):
                        task.ports = dict(attempt.ports)
                    if attempt.ports and attempt.task_id not in worker.port_holds:
                        # Known again after a controller restart: nothing else gets them on this host.
                        held = tuple(port for _, port in attempt.ports)
                        worker.port_holds[attempt.task_id] = held
                        self.ports.hold(worker.host, held)
                    # Only an end is taken from an observed set: a live state (BUILDING, RUNNING) comes
                    # through the worker's ordered reports, and a set taken before the newest report may
                    # arrive after it (it must not move RUNNING back to BUILDING).
                    # A callable's success is taken from its report only, which carries its return value
                    # (retried until acknowledged): taken from a set, the task would be SUCCEEDED
                    # without a result, and the report bringing it would then be stale.
                    ended = attempt.state in TERMINAL_TASK_STATES and attempt.state != task.state
                    if ended and not (attempt.state == SUCCEEDED and self._returns_result(task)):
                        self.apply_report(
                            worker_id, attempt.task_id, attempt.attempt_id, attempt.state, now_ms,
                            exit_code=attempt.exit_code, error=attempt.error, job_uid=attempt.job_uid,
                            busy_ports=attempt.busy_ports,
                        )
                elif attempt.state not in TERMINAL_TASK_STATES:
                    kill.append(attempt)
            missing: list[TaskId] = []
            for task_id in sorted(worker.running_tasks - seen):
                ack = worker.dispatch_acks.get(task_id, ("", -1))
                if ack is None:
                    continue  # RunTask still in flight
                if self._gang_holds and self.holds_end(task_id):
                    continue  # it ended (its report was taken): its gang's restart is being decided
                ack_incarnation, ack_sequence = ack
                if ack_incarnation == incarnation and ack_sequence > sequence:
                    continue  # accepted after this set was taken
                missing.append(task_id)
            for task_id in missing:
                if task_id not in worker.running_tasks:
                    continue  # already moved with its gang
                self.transition_task(
                    task_id, WORKER_FAILED, now_ms, is_worker_failure=True,
                    error=f"worker {worker_id} no longer has the task",
                )
            if worker.stopping:
                # Attempts Iris stopped that the set shows ended, or no longer holds: they are gone.
                live = {(a.task_id, a.attempt_id) for a in observed if a.state not in TERMINAL_TASK_STATES
                        or not self.job_uid_matches(a.task_id, a.job_uid)}
                for key in [k for k in worker.stopping if k not in live]:
                    self._confirm_stopped(worker, key)
            return ReconcileResult(kill=kill, missing=missing)

    def live_attempt(self, ref: AttemptRef, worker_id: WorkerId | None = None) -> Task | None:
        """The task whose current attempt ``ref`` names, while that attempt is live (the task not
        ended), of the same job incarnation, and bound to ``worker_id`` when one is given; else None.
        The one "is this the task's current attempt?" check of the controller."""
        return self._live(ref[0], ref[1], ref[2], worker_id)

    def _live(self, task_id: TaskId, attempt_id: int, job_uid: str = "", worker_id: WorkerId | None = None
              ) -> Task | None:
        """``live_attempt`` over the ref's fields (hot callers make no ref)."""
        task = self._tasks.get(task_id)
        if task is None or task.current_attempt_id != attempt_id or task.state not in ACTIVE_TASK_STATES:
            return None
        if worker_id is not None and task.worker_id != worker_id:
            return None
        return task if not job_uid or self._same_incarnation(task, job_uid) else None

    def ran_attempt(self, ref: AttemptRef, worker_id: WorkerId) -> Task | None:
        """The task of ``ref`` when that attempt (current or ended) ran on ``worker_id`` for this
        incarnation of its job; else None (a deleted job, another worker's attempt)."""
        task = self._tasks.get(ref.task_id)
        if task is None or not self._same_incarnation(task, ref.job_uid):
            return None
        if task.current_attempt_id == ref.attempt_id and task.worker_id == worker_id:
            return task
        if any(a.attempt_id == ref.attempt_id and a.worker_id == worker_id for a in task.attempts):
            return task
        return None

    def job_uid_matches(self, task_id: TaskId, job_uid: str) -> bool:
        """Whether an attempt of ``task_id`` reported with ``job_uid`` may belong to the job held
        under that task id (unknown task: True; nothing of it is held)."""
        task = self._tasks.get(task_id)
        return task is None or self._same_incarnation(task, job_uid)

    def _returns_result(self, task: Task) -> bool:
        job = self._jobs.get(task.job_id)
        return job is not None and bool(job.spec.entrypoint.pickled)

    def _same_incarnation(self, task: Task, job_uid: str) -> bool:
        """Whether a worker's word about ``task`` is about this incarnation of its job ("" on either
        side: an older peer or a job stored before incarnations, not checked)."""
        if not job_uid:
            return True
        job = self._jobs.get(task.job_id)
        return job is not None and (not job.uid or job.uid == job_uid)

    # ------------------------------------------------------------------ endpoints

    def add_endpoint(self, endpoint: ControllerEndpoint, task_id: TaskId) -> bool:
        """Register an endpoint for a running task attempt. Refused (False) when the task is not
        running or ``endpoint.attempt_id`` is not its current attempt. A name another user's live
        endpoint holds is PermissionDenied (nobody registers over another user's name); past
        ``max_endpoints_per_task``, ResourceExhausted."""
        with self._lock:
            task = self._live(task_id, endpoint.attempt_id)
            if task is None:
                return False
            owner = self._jobs[task.job_id].owner
            for other in self._endpoints.values():
                holder = self._jobs.get(other.job_id) if other.name == endpoint.name else None
                if holder is not None and holder.owner != owner:
                    raise PermissionDenied(f"name: {endpoint.name[:128]!r} is registered by another user's task; "
                                           "choose another name (endpoint names are not shared between users)")
            if len(self._endpoints_by_task.get(task_id, ())) >= self.max_endpoints_per_task:
                raise ResourceExhausted(f"name: a task may hold at most {self.max_endpoints_per_task} endpoints "
                                        "(--max-endpoints-per-task)")
            endpoint.task_id = task_id
            self._endpoints[endpoint.endpoint_id] = endpoint
            self._endpoints_by_task.setdefault(task_id, set()).add(endpoint.endpoint_id)
            self._effects.added_endpoints.append(endpoint)
            return True

    def restore_endpoint(self, endpoint: ControllerEndpoint) -> None:
        with self._lock:
            self._endpoints[endpoint.endpoint_id] = endpoint
            if endpoint.task_id is not None:
                self._endpoints_by_task.setdefault(endpoint.task_id, set()).add(endpoint.endpoint_id)

    def remove_endpoint(self, endpoint_id: str) -> ControllerEndpoint | None:
        with self._lock:
            endpoint = self._endpoints.pop(endpoint_id, None)
            if endpoint is None:
                return None
            if endpoint.task_id is not None:
                ids = self._endpoints_by_task.get(endpoint.task_id)
                if ids is not None:
                    ids.discard(endpoint_id)
                    if not ids:
                        del self._endpoints_by_task[endpoint.task_id]
            self._effects.removed_endpoints.append(endpoint)
            return endpoint

    def get_endpoint(self, endpoint_id: EndpointId | str) -> ControllerEndpoint | None:
        return self._endpoints.get(endpoint_id)

    def lookup_endpoints(self, name: str) -> list[ControllerEndpoint]:
        """Endpoints registered under exactly ``name``."""
        with self._lock:
            return [e for e in self._endpoints.values() if e.name == name]

    def list_endpoints(self, prefix: str = "") -> list[ControllerEndpoint]:
        """Endpoints whose name starts with ``prefix``, sorted by name."""
        with self._lock:
            return sorted(
                (e for e in self._endpoints.values() if e.name.startswith(prefix)),
                key=lambda e: (e.name, e.endpoint_id),
            )

    def _remove_endpoints_for_task(self, task_id: TaskId) -> list[ControllerEndpoint]:
        ids = self._endpoints_by_task.pop(task_id, None)
        if not ids:
            return []
        removed = []
        for eid in ids:
            endpoint = self._endpoints.pop(eid, None)
            if endpoint is not None:
                removed.append(endpoint)
        self._effects.removed_endpoints.extend(removed)
        return removed

    # ------------------------------------------------------------------ tokens

    def add_token(self, record: TokenRecord) -> None:
        with self._lock:
            self.restore_token(record)
            self._effects.dirty_tokens.add(record.token_id)

    def restore_token(self, record: TokenRecord) -> None:
        with self._lock:
            if record.token_id not in self._tokens:
                self._token_ids_by_name.setdefault(record.name, []).append(record.token_id)
            self._tokens[record.token_id] = record
            self._token_ids_by_hash[record.token_hash] = record.token_id

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        token_id = self._token_ids_by_hash.get(token_hash)
        return self._tokens.get(token_id) if token_id is not None else None

    def get_token(self, token_id: str) -> TokenRecord | None:
        return self._tokens.get(token_id)

    def tokens_named(self, name: str) -> list[TokenRecord]:
        """The tokens issued to ``name`` (e.g. a worker id), oldest first."""
        with self._lock:
            return [self._tokens[token_id] for token_id in self._token_ids_by_name.get(name, ())]

    def list_tokens(self) -> list[TokenRecord]:
        with self._lock:
            return sorted(self._tokens.values(), key=lambda t: (t.created_at_ms, t.token_id))

    def revoke_token(self, token_id: str, now_ms: int) -> TokenRecord | None:
        """Revoke a token: every call made with it is refused from now on. None when unknown;
        revoking twice keeps the first time."""
        with self._lock:
            record = self._tokens.get(token_id)
            if record is None:
                return None
            if not record.revoked:
                record = replace(record, revoked_at_ms=now_ms)
                self._tokens[token_id] = record
                self._effects.dirty_tokens.add(token_id)
            return record

    # ------------------------------------------------------------------ effects and action log

    def drain_effects(self) -> Effects:
        """Hand the accumulated effects to the shell and start a new batch (nothing happened: the
        one shared empty batch, nothing allocated; it is never changed)."""
        with self._lock:
            if self.shares.dirty_users:
                self._effects.dirty_usage |= self.shares.dirty_users
                self.shares.dirty_users.clear()
            if self.runtimes.dirty or self.runtimes.forgotten:
                self._effects.dirty_runtimes |= self.runtimes.dirty
                self._effects.forgotten_runtimes |= self.runtimes.forgotten
                self.runtimes.dirty.clear()
                self.runtimes.forgotten.clear()
            if self._effects.is_empty():
                return NO_EFFECTS
            effects, self._effects = self._effects, Effects()
            return effects

    def log_action(
        self,
        action: str,
        *,
        now_ms: int,
        job_id: str = "",
        task_id: str = "",
        worker_id: str = "",
        details: str = "",
    ) -> None:
        entry = ActionLogEntry(now_ms, action, job_id, task_id, worker_id, details)
        self._actions.append(entry)
        self._effects.actions.append(entry)

    def restore_actions(self, entries: Iterable[ActionLogEntry]) -> None:
        self._actions.extend(entries)

    def recent_actions(self, limit: int = 100) -> list[ActionLogEntry]:
        with self._lock:
            items = list(self._actions)
            return items[-limit:]

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        """Assert the state's internal consistency (for tests and benchmarks; O(everything)).

        - job counts equal a recount of its tasks' states;
        - the queue holds exactly the PENDING tasks;
        - a task is in a worker's ``running_tasks`` exactly when it is active and bound to it;
        - committed-resource counters equal a recount;
        - no ended job has a live task; endpoints belong to active tasks.
        """
        with self._lock:
            pending = {tid for tid, t in self._tasks.items() if t.state == PENDING}
            assert pending == set(self._task_queue), "queue != PENDING tasks"
            for job_id, job in self._jobs.items():
                recount = [0] * len(job.counts)
                for t in self._tasks_by_job[job_id]:
                    recount[t.state] += 1
                assert recount == job.counts, f"job {job_id} counts {job.counts} != recount {recount}"
                assert job.num_tasks == len(self._tasks_by_job[job_id])
                if job.is_finished():
                    live = [t.task_id for t in self._tasks_by_job[job_id] if not t.is_finished()]
                    assert not live, f"ended job {job_id} has live tasks {live[:5]}"
            bound: dict[WorkerId, set[TaskId]] = {}
            for tid, t in self._tasks.items():
                if t.is_active():
                    assert t.worker_id is not None, f"active task {tid} has no worker"
                    bound.setdefault(t.worker_id, set()).add(tid)
            for wid, w in self._workers.items():
                assert w.running_tasks == bound.get(wid, set()), f"worker {wid} running_tasks mismatch"
                held = Resources.total(w.stopping.values()) + Resources.total(
                    self._jobs[self._tasks[tid].job_id].task_resources for tid in w.running_tasks)
                assert w.committed == held, f"worker {wid} committed resources drifted"
            unknown_workers = set(bound) - set(self._workers)
            assert not unknown_workers, f"tasks bound to unknown workers {unknown_workers}"
            for eid, e in self._endpoints.items():
                assert e.task_id is not None and self._tasks[e.task_id].is_active(), f"endpoint {eid} outlived task"
