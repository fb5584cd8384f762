"""The controller shell: owns the state, the store, the clock, the task backend and the threads.

Decisions are made in the pure core (``state.py``, ``scheduler.py``); this module applies them:

- One lock covers "apply a change to the state, drain its effects, prepare their store rows". The
  rows are written after the lock is released, in the order they were prepared, several callers'
  in one transaction (``commits.py``); a caller leaving the lock waits until its rows are durable
  before it replies, kills or launches anything. No RPC and no process call runs under the lock.
  Nothing outside this class holds it: readers go through the read methods below, which copy a
  bounded number of objects per lock hold into frozen views (``views.py``) and build their replies
  after releasing it.
- Requests are checked by ``iris.cluster.validation`` (the rules the workers apply too) before
  anything changes.
- Scheduling runs when woken (a submit, a report, a worker registering, a task ending) and on a
  fallback timer for scheduling timeouts. Launches go to the ``TaskBackend`` through a bounded
  thread pool, never on the scheduling thread and never under the lock. A launch the backend could
  not deliver is a preemption of that attempt; one refused for the task's own content is a
  failure of the task, and the worker stays healthy.
- Every task the core ends while its process may still run gets a kill through the backend.
- Liveness is time-based (``tick_health``); observed sets (heartbeats, or a polling backend's
  ``observe``) are reconciled level-triggered.

Every loop body is a public single-pass ``tick_*`` method so tests drive it with a ``FakeClock``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from iris.cluster.auth import (
    TASK_TOKEN_PREFIX,
    Principal,
    Role,
    TokenRecord,
    derive,
    generate_token,
    hash_token,
    new_token_id,
    parse_task_token,
    same_hash,
    task_token,
)
from iris.cluster.clock import Clock, SystemClock
from iris.cluster.controller.access import ANONYMOUS_LOCAL, PermissionDenied, Unauthenticated
from iris.cluster.controller.autoscaler import Demand
from iris.cluster.controller.backend import (
    AttemptKill,
    AttemptLaunch,
    BackendUnavailable,
    LaunchOutcome,
    LaunchResult,
    LocationCapacity,
    LogPage,
    LogRequest,
    Observation,
    TaskBackend,
    WorkerClients,
    WorkerDaemonBackend,
    WorkerDaemonTimeouts,
)
from iris.cluster.controller.capacity import WorkerSnapshot
from iris.cluster.controller.commits import DurableLock, GroupCommit, StoreFailed
from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.logstore import LogStore, job_key
from iris.cluster.controller.metrics import ControllerMetrics
from iris.cluster.controller.reads import DEFAULT_BURST_S, DEFAULT_SHARE, ReadGate
from iris.cluster.controller.scheduler import Scheduler
from iris.cluster.controller.state import (
    ActionLogEntry,
    ControllerEndpoint,
    ControllerState,
    ControllerWorker,
    Effects,
    KillInstruction,
    ObservedAttempt,
)
from iris.cluster.controller.views import (
    ClusterCounts,
    JobView,
    TaskView,
    WorkerView,
    allocation_view,
    job_view,
    task_view,
    worker_view,
)
from iris.cluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from iris.cluster.rendezvous import Member, gang_env
from iris.cluster.types import (
    TERMINAL_TASK_STATES,
    JobId,
    TaskId,
    WorkerId,
    WorkerMetadata,
    child_job_id,
    job_state_name,
    task_state_name,
)
from iris.cluster.validation import DEFAULT_LIMITS, Limits, check_id, validate_launch_request
from iris.rpc import cluster_pb2

if TYPE_CHECKING:
    from iris.cluster.controller.provisioner import Provisioner
    from iris.cluster.controller.store import PreparedWrite

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000
MAX_FILTER_CHARS = 1024
MAX_FILTER_STATES = 16
_TASK_STATES = frozenset(cluster_pb2.TaskState.values())
MAX_FORGET_PER_WORKER = 10_000
"""Deleted job incarnations (and bundles) a worker is told about at its next heartbeat, at most;
past that (or a lost reply) its copies leave with its attempt history."""
READ_CHUNK = 1000
"""Objects copied per lock hold by a reader; between chunks the lock is free for writers."""
SCAN_PER_PAGE = 20
"""A list page examines at most this many times its size of objects before it returns (possibly
short, with a token to go on), so a filter that matches little still costs O(page)."""


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    worker_timeout_s: float = 10.0
    """A worker not heard from for this long is declared dead (DESIGN §3); a fleet whose heartbeat
    interval grows past a third of it gets three intervals (``max_heartbeat_rate``)."""
    max_heartbeat_rate: float = 250.0
    """Heartbeats per second the whole fleet may send (``--max-heartbeat-rate``). Each worker is asked
    to heartbeat no more often than every ``workers / rate`` seconds (its own interval when that is
    longer), as Nomad sizes its heartbeat TTLs: the controller's cost stays flat as the fleet grows,
    and failure detection slows instead (10,000 workers: every 40 s, declared dead after 120 s)."""
    schedule_interval_s: float = 0.5
    """Fallback scheduling timer; scheduling is otherwise woken by events."""
    health_interval_s: float = 0.5
    dispatch_timeout_s: float = 10.0
    """Deadline of one RunTasks call."""
    kill_timeout_s: float = 5.0
    kill_grace_period_s: float = 0.0
    """SIGTERM, then SIGKILL after this long, for jobs that set no ``termination_grace_seconds``
    (0: the worker's ``--kill-grace``)."""
    max_termination_grace_s: float = 600.0
    """The most grace a job may ask for (``--max-termination-grace``)."""
    quarantine_after: int = 5
    """Attempts failing quickly in a row on one worker, of two owners' jobs that succeed
    elsewhere, before it is quarantined (``--quarantine-after``; 0: never)."""
    log_fetch_timeout_s: float = 10.0
    dispatch_threads: int = 16
    dispatch_batch_max_tasks: int = 128
    dispatch_batch_max_bytes: int = 1024 * 1024
    """A scheduling pass sends each worker its tasks in calls of at most this many tasks and
    request bytes (a task bigger than that goes alone)."""
    max_dispatch_failures: int = 3
    """Failed launch calls in a row after which a worker is declared dead."""
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    """Size limits of a job; the workers apply the same (``iris.cluster.validation``)."""
    auth: bool = True
    """Every call needs a credential (DESIGN §7). False only for ``--auth none`` on loopback."""
    finished_job_ttl_s: float = 7 * 24 * 3600.0
    """Ended jobs are deleted this long after they ended (``--finished-job-ttl``; 0: never by age)."""
    max_finished_jobs: int = 10_000
    """At most this many ended jobs (without a parent) are kept; the oldest go first
    (``--max-finished-jobs``; 0: no limit)."""
    read_share: float = DEFAULT_SHARE
    """Of one core, what reads (job lists and statuses, logs, the dashboard) may use over time, one
    read at a time, so that no reader stalls heartbeats and dispatch (``--read-share``;
    ``iris.cluster.controller.reads``)."""
    read_burst_s: float = DEFAULT_BURST_S
    """CPU-seconds of reading that run at once from a full bucket (a lone user listing every job
    is not slowed); beyond it reads run at ``read_share``."""


class StateStore(Protocol):
    """Durable storage for the state (``store.ControllerStore``)."""

    def write(self, state: ControllerState, effects: Effects) -> None: ...

    def prepare(self, state: ControllerState, effects: Effects) -> PreparedWrite | None: ...

    def apply(self, writes: Sequence[PreparedWrite]) -> None: ...

    def put_bundle(self, blob: bytes) -> str: ...

    def delete_bundle(self, bundle_hash: str) -> None: ...

    def delete_results(self, task_ids: Iterable[str]) -> None: ...

    def get_bundle(self, bundle_hash: str) -> bytes | None: ...

    def put_result(self, task_id: str, attempt_id: int, data: bytes) -> None: ...

    def get_result(self, task_id: str) -> tuple[int, bytes] | None: ...

    def close(self) -> None: ...


class MemoryBundles:
    """Bundle storage for a controller without a store (tests)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._results: dict[str, tuple[int, bytes]] = {}

    def put_bundle(self, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        self._blobs[digest] = blob
        return digest

    def get_bundle(self, bundle_hash: str) -> bytes | None:
        return self._blobs.get(bundle_hash)

    def delete_bundle(self, bundle_hash: str) -> None:
        self._blobs.pop(bundle_hash, None)

    def delete_results(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._results.pop(task_id, None)

    def put_result(self, task_id: str, attempt_id: int, data: bytes) -> None:
        self._results[task_id] = (attempt_id, data)

    def get_result(self, task_id: str) -> tuple[int, bytes] | None:
        return self._results.get(task_id)


@dataclass(frozen=True, slots=True)
class ScheduleSummary:
    assigned: int
    timed_out: int
    pending: int


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobView]
    next_page_token: str


class Controller:
    def __init__(
        self,
        config: ControllerConfig | None = None,
        *,
        state: ControllerState | None = None,
        store: StateStore | None = None,
        clock: Clock | None = None,
        backend: TaskBackend | None = None,
        worker_clients: WorkerClients | None = None,
        address: str = "",
        on_fatal: Callable[[], None] | None = None,
        secret: bytes | None = None,
        log_store: LogStore | None = None,
    ) -> None:
        """``backend`` runs the tasks; by default Iris's worker daemons over gRPC
        (``worker_clients`` replaces their transport, e.g. with a fake in tests)."""
        self.config = config or ControllerConfig()
        self._state = state if state is not None else ControllerState()
        self._store = store
        self._bundles: MemoryBundles | StateStore = store if store is not None else MemoryBundles()
        self._clock: Clock = clock or SystemClock()
        if backend is not None and worker_clients is not None:
            raise ValueError("pass a backend or worker_clients, not both")
        self._backend: TaskBackend = backend or WorkerDaemonBackend(
            worker_clients,
            WorkerDaemonTimeouts(self.config.dispatch_timeout_s, self.config.kill_timeout_s,
                                 self.config.log_fetch_timeout_s),
        )
        self._state.quarantine_after = self.config.quarantine_after
        self.reads = ReadGate(share=self.config.read_share, burst_s=self.config.read_burst_s, clock=self._clock)
        """Admission of reads (``iris.cluster.controller.reads``): the service's read RPCs and the
        dashboard pass through it; heartbeats, reports and dispatch never do."""
        self.metrics = ControllerMetrics()
        """Prometheus metrics (``/metrics``): latencies observed here and by the service, counts at scrape."""
        self.metrics.observe_state(self.counts, self.lost_seconds)
        self.metrics.observe_reads(self.reads)
        self._scheduler = Scheduler(self._state)
        self._launch_bytes: dict[JobId, int] = {}
        """Per job (recent ones), the request bytes one of its launches takes (for batching)."""
        self._commits: GroupCommit[PreparedWrite] | None = (
            GroupCommit(store.apply, self._store_failed) if store is not None else None)
        """Store writes, prepared under the lock and applied after it (several per transaction)."""
        self._lock = DurableLock(self._commits)
        """Leaving a block that committed waits until its writes are durable."""
        self._wake_event = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=self.config.dispatch_threads, thread_name_prefix="dispatch")
        self.address = address
        """The controller's own address."""
        self._on_fatal = on_fatal or _exit_process
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        """Derives the task tokens and the credential the controller presents to workers; kept in
        the state dir by ``iris controller serve`` so both survive a restart."""
        self._worker_credentials: dict[str, str] = {}
        self._provisioner: Provisioner | None = None
        self._forget: dict[WorkerId, tuple[set[str], set[str]]] = {}
        """Per worker, what deleted jobs left there: (job uids, bundle hashes), sent with its next
        heartbeat reply so it drops their attempt directories (logs) and cached bundles."""
        self._logs: LogStore | None = log_store
        """The controller's copy of every attempt's log (``logstore``), when it has a state dir."""
        self._retired: set[WorkerId] = set()
        """Provisioned workers given back to their platform: they may not register again."""
        self._heartbeat_interval_ms = 0
        self._size_heartbeats(self._state.healthy_worker_count())  # workers reloaded after a restart

    # ------------------------------------------------------------------ lifecycle

    @property
    def clock(self) -> Clock:
        return self._clock

    def now_ms(self) -> int:
        return self._clock.now_ms()

    def attach_provisioner(self, provisioner: Provisioner) -> None:
        """Provision workers through ``provisioner`` (started and stopped with the controller)."""
        self._provisioner = provisioner

    @property
    def provisioner(self) -> Provisioner | None:
        return self._provisioner

    def start(self) -> None:
        """Start the scheduling and health loops (and the provisioner, if any)."""
        if self._provisioner is not None:
            self._provisioner.start()
        for name, target in (("scheduling", self._run_scheduling), ("health", self._run_health)):
            thread = threading.Thread(target=target, args=(self._stop,), name=f"controller-{name}")
            thread.start()
            self._threads.append(thread)
        self.wake()

    def stop(self) -> None:
        if self._provisioner is not None:
            self._provisioner.stop()
        self._stop.set()
        self._wake_event.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._backend.close()
        try:
            if self._commits is not None:
                self._commits.flush()
            with self._lock:
                if self._store is not None:
                    self._store.close()
        except StoreFailed:  # already reported (and fatal) where it failed
            logger.debug("store writes failed before stop", exc_info=True)

    def wake(self) -> None:
        """Ask the scheduling loop for a pass now."""
        self._wake_event.set()

    def _run_scheduling(self, stop: threading.Event) -> None:
        last_full = self._clock.monotonic()
        while not stop.is_set():
            woken = self._wake_event.wait(self.config.schedule_interval_s)
            self._wake_event.clear()
            if stop.is_set():
                return
            try:
                # A pass woken by an event stops once no worker has room; every schedule_interval_s
                # a full pass also times tasks out and explains every job still waiting.
                now = self._clock.monotonic()
                full = not woken or now - last_full >= self.config.schedule_interval_s
                if full:
                    last_full = now
                self.tick_schedule(bounded=not full)
            except Exception:
                logger.exception("scheduling pass failed")
                self._clock.wait(stop, 0.5)

    def _run_health(self, stop: threading.Event) -> None:
        while not self._clock.wait(stop, self.config.health_interval_s):
            try:
                self.tick_health()
                self.tick_observe()
                self.tick_retention()
            except Exception:
                logger.exception("health pass failed")

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the pool; an exception inside it is logged, never lost."""
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:  # shut down
            logger.debug("pool is shut down; dropped %s", getattr(fn, "__name__", fn))
            return
        future.add_done_callback(_log_failure)

    # ------------------------------------------------------------------ the lock and effects

    def _commit(self) -> Effects:
        """Drain the core's effects and queue their store write. Call with the lock held; leaving
        the lock waits until the write is durable."""
        effects = self._state.drain_effects()
        if self._store is not None and self._commits is not None and not effects.is_empty():
            try:
                prepared = self._store.prepare(self._state, effects)
            except Exception as e:
                self._store_failed(e)
                raise
            if prepared is not None:
                # Written after the lock is released, before the caller goes on (DurableLock).
                self._commits.submit(prepared)
        return effects

    def _store_failed(self, error: BaseException) -> None:
        # Memory is now ahead of disk and the change was not acknowledged durably: serving on would
        # break "acknowledged means durable". Stop; a restart reloads the last good state.
        logger.critical("could not persist state; the controller stops", exc_info=error)
        self._on_fatal()

    def _after_commit(self, effects: Effects) -> None:
        """Act on effects outside the lock: kill processes, wake the scheduler."""
        if effects.kills:
            self._send_kills(effects.kills)
        if effects.dirty_tasks or effects.dirty_workers:
            self.wake()

    def _send_kills(self, kills: Iterable[KillInstruction]) -> None:
        for kill in kills:
            worker = self._state.get_worker(kill.worker_id)
            if worker is None:
                continue
            job_uid = kill.job_uid
            if job_uid is None:
                task = self._state.get_task(kill.task_id)
                job = self._state.get_job(task.job_id) if task is not None else None
                job_uid = job.uid if job is not None else ""
            self._submit(self._kill_one, AttemptKill(
                kill.worker_id, worker.address, kill.task_id, kill.attempt_id, self._grace_for(kill.task_id),
                self.controller_token(kill.worker_id) if self.config.auth else "", job_uid,
            ))

    def _grace_for(self, task_id: TaskId) -> float:
        """SIGTERM-to-SIGKILL for a task Iris stops: its job's ``termination_grace_seconds``, capped
        by ``max_termination_grace_s``; unset, the controller's default (0: the worker's own)."""
        task = self._state.get_task(task_id)
        job = self._state.get_job(task.job_id) if task is not None else None
        grace = job.spec.termination_grace_seconds if job is not None else None
        if grace is None:
            return self.config.kill_grace_period_s
        return min(grace, self.config.max_termination_grace_s)

    def _kill_one(self, kill: AttemptKill) -> None:
        try:
            self._backend.kill(kill)
        except BackendUnavailable as e:
            # The next observation reconciles it: the attempt is no longer expected there.
            logger.warning("kill task=%s attempt=%s on %s failed: %s", kill.task_id, kill.attempt_id,
                           kill.worker_id, e)

    # ------------------------------------------------------------------ who is calling

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a presented token. Raises Unauthenticated (missing, malformed, unknown,
        revoked, or a task token of an attempt that ended)."""
        if not self.config.auth:
            return ANONYMOUS_LOCAL
        if not token:
            raise Unauthenticated("no credential: send 'authorization: Bearer <token>' (see `iris login`)")
        if token.startswith(TASK_TOKEN_PREFIX):
            parsed = parse_task_token(self._secret, token)
            if parsed is None:
                raise Unauthenticated("the task token is not one this controller issued")
            task_id, attempt_id, job_uid = parsed
            with self._lock:
                task = self._state.get_task(TaskId(task_id))
                job = self._state.get_job(task.job_id) if task is not None else None
                live = (task is not None and task.is_active() and task.current_attempt_id == attempt_id
                        and job is not None and job.uid == job_uid)
                job_id = task.job_id if task is not None else ""
            if not live:
                raise Unauthenticated(f"the task token of {task_id} attempt {attempt_id} ended with its attempt")
            return Principal(Role.TASK, task_id, job_id=job_id, attempt_id=attempt_id)
        token_hash = hash_token(token)
        # No lock: a dict read, and a record is replaced whole (a revocation is a new record), so an
        # RPC never waits for the controller's lock just to be let in.
        record = self._state.token_by_hash(token_hash)
        if record is None or not same_hash(record.token_hash, token_hash):
            raise Unauthenticated("unknown token")
        if record.revoked:
            raise Unauthenticated(f"token {record.token_id} was revoked")
        return Principal(record.role, record.name, token_id=record.token_id)

    def task_token(self, task_id: str, attempt_id: int, job_uid: str = "") -> str:
        return task_token(self._secret, task_id, attempt_id, job_uid)

    def controller_token(self, worker_id: str) -> str:
        """The credential the controller presents to one worker (derived: the same after a restart;
        computed once per worker)."""
        token = self._worker_credentials.get(worker_id)
        if token is None:
            token = derive(self._secret, "controller", worker_id)
            self._worker_credentials[worker_id] = token
        return token

    def create_token(self, name: str, role: Role) -> tuple[TokenRecord, str]:
        """A new token (returned once, in clear) for ``name``; only its hash is kept."""
        if not name or len(name) > 128 or not name.isprintable() or name.strip() != name:
            raise InvalidArgument(f"name: must be 1-128 printable characters without surrounding spaces, got "
                                  f"{name[:40]!r}")
        token = generate_token()
        with self._lock:
            record = TokenRecord(new_token_id(), hash_token(token), name, role, self._clock.now_ms())
            self._state.add_token(record)
            self._commit()
        return record, token

    def revoke_token(self, token_id: str) -> TokenRecord:
        with self._lock:
            record = self._state.revoke_token(token_id, self._clock.now_ms())
            if record is None:
                raise NotFound(f"token_id: no token {token_id[:40]!r}")
            self._commit()
        return record

    def list_tokens(self) -> list[TokenRecord]:
        with self._lock:
            return self._state.list_tokens()

    def bootstrap_tokens(self) -> dict[Role, str]:
        """On a fresh state: an admin token and a worker join token, returned in clear so the
        caller can hand them out (``iris controller serve`` writes them to files). Roles that
        already have an active token get none."""
        with self._lock:
            active = {t.role for t in self._state.list_tokens() if not t.revoked}
        made: dict[Role, str] = {}
        for role, name in ((Role.ADMIN, "admin"), (Role.JOIN, "workers")):
            if role not in active:
                made[role] = self.create_token(name, role)[1]
        return made

    def job_owner(self, job_id: JobId) -> str:
        """Who owns a job (its root's submitter). Raises NotFound."""
        with self._lock:
            return self._job_locked(job_id).owner

    def worker_runs_bundle(self, worker_id: str, bundle_hash: str) -> bool:
        """Whether an attempt bound to ``worker_id`` needs ``bundle_hash`` (a worker may fetch only those)."""
        with self._lock:
            worker = self._state.get_worker(WorkerId(worker_id))
            if worker is None:
                return False
            for task_id in worker.running_tasks:
                task = self._state.get_task(task_id)
                job = self._state.get_job(task.job_id) if task is not None else None
                if job is not None and job.bundle_hash == bundle_hash:
                    return True
        return False

    def user_owns_bundle(self, user: str, bundle_hash: str) -> bool:
        """Whether ``user`` owns a job that uses ``bundle_hash`` (a scan of the jobs, in chunks;
        bundle reads by users are rare: workers fetch bundles)."""
        after = 0
        while True:
            with self._lock:
                chunk = self._state.jobs_after(after, READ_CHUNK)
                if any(j.owner == user and j.bundle_hash == bundle_hash for j in chunk):
                    return True
            if not chunk:
                return False
            after = chunk[-1].submit_seq

    def get_endpoint(self, endpoint_id: str) -> ControllerEndpoint:
        with self._lock:
            endpoint = self._state.get_endpoint(endpoint_id)
        if endpoint is None:
            raise NotFound(f"endpoint_id: endpoint {endpoint_id[:128]!r} not found")
        return endpoint

    # ------------------------------------------------------------------ jobs

    def launch_job(self, request: cluster_pb2.Controller.LaunchJobRequest, owner: str = "") -> JobId:
        """Validate and accept a job for ``owner``. Raises IrisError subclasses; a rejected request
        changes nothing."""
        spec = validate_launch_request(request, self.config.limits)
        blob = request.bundle_blob
        if blob:
            digest = hashlib.sha256(blob).hexdigest()
            if spec.bundle_hash and spec.bundle_hash != digest:
                raise InvalidArgument(f"bundle_hash: does not match the sha256 of bundle_blob ({digest})")
        with self._lock:
            if spec.parent_job_id:
                parent = self._state.get_job(JobId(spec.parent_job_id))
                if parent is None:
                    raise NotFound(f"parent_job_id: job {spec.parent_job_id!r} not found")
                if parent.is_finished():
                    raise FailedPrecondition(f"parent_job_id: job {spec.parent_job_id!r} has already ended")
                job_id = child_job_id(parent.job_id, spec.name)
                check_id(job_id, "name", self.config.limits)
                owner = parent.owner or owner  # a child job belongs to its parent's owner
                if not spec.bundle_hash and not blob and parent.bundle_hash:
                    spec = spec.replace(bundle_hash=parent.bundle_hash)  # child jobs reuse the parent's workspace
            else:
                job_id = JobId(spec.name)
            if self._state.get_job(job_id) is not None:
                raise AlreadyExists(f"name: job {job_id!r} already exists")
            if blob:
                spec = spec.replace(bundle_hash=self._bundles.put_bundle(blob))  # stored once, content-addressed
            elif spec.bundle_hash and self._bundles.get_bundle(spec.bundle_hash) is None:
                raise InvalidArgument(f"bundle_hash: no bundle {spec.bundle_hash} is stored; send bundle_blob")
            now = self._clock.now_ms()
            job = Job(job_id, spec, now, owner=owner, uid=secrets.token_hex(8))
            self._state.add_job(job, expand_job_to_tasks(job, now))
            effects = self._commit()
        logger.debug("job submitted job=%s tasks=%d", job_id, job.num_tasks)  # and in the action log
        self._after_commit(effects)
        return job_id

    def delete_job(self, job_id: JobId) -> list[JobId]:
        """Remove an ended job with its child jobs, tasks, attempts, endpoints, results, logs and
        any workspace bundle no other job uses; its name may be used again. Raises NotFound, or
        FailedPrecondition while it runs or an attempt Iris stopped may still run on a worker."""
        with self._lock:
            job = self._job_locked(job_id)
            if not job.is_finished():
                raise FailedPrecondition(
                    f"job_id: job {job_id!r} is {job_state_name(job.state)}; stop it first (iris job stop {job_id})")
            worker = self._state.still_stopping(job_id)
            if worker:
                raise FailedPrecondition(f"job_id: an attempt of job {job_id!r} is still stopping on worker {worker}; "
                                         "try again in a few seconds")
            removed = self._delete_locked(job_id)
        logger.info("deleted jobs %s", ", ".join(removed))
        return removed

    def _delete_locked(self, job_id: JobId) -> list[JobId]:
        """Delete one ended job (and children) from memory, the store, the log store and the bundle
        store. Call with the lock held."""
        tree = [job for job in (self._state.get_job(j) for j in self._job_tree(job_id)) if job is not None]
        tasks = [t for job in tree for t in self._state.get_job_tasks(job.job_id)]
        log_keys = [job_key(job.job_id, job.uid) for job in tree]
        ran_on: dict[WorkerId, set[str]] = {}  # worker -> uids of the deleted jobs it ran attempts of
        uid_of = {job.job_id: job.uid for job in tree}
        for task in tasks:
            workers = {a.worker_id for a in task.attempts if a.worker_id} | ({task.worker_id} if task.worker_id else set())
            for worker_id in workers:
                if uid_of.get(task.job_id):
                    ran_on.setdefault(WorkerId(worker_id), set()).add(uid_of[task.job_id])
        removed = self._state.delete_job(job_id)
        effects = self._commit()
        self._bundles.delete_results([t.task_id for t in tasks])
        gone_bundles = set()
        for bundle_hash in effects.deleted_bundles:
            if not self._state.bundle_in_use(bundle_hash):  # checked under the lock: no launch races it
                self._bundles.delete_bundle(bundle_hash)
                gone_bundles.add(bundle_hash)
        for worker_id, uids in ran_on.items():
            pending_uids, pending_bundles = self._forget.setdefault(worker_id, (set(), set()))
            if len(pending_uids) + len(pending_bundles) < MAX_FORGET_PER_WORKER:
                pending_uids.update(uids)
                pending_bundles.update(gone_bundles)
        for removed_id in removed:
            self._launch_bytes.pop(removed_id, None)
        if self._logs is not None:
            for key in log_keys:
                self._logs.delete_job(key)
        return removed

    def _job_tree(self, job_id: JobId) -> list[JobId]:
        out, pending = [], [job_id]
        while pending:
            current = pending.pop()
            out.append(current)
            pending.extend(self._state.get_child_jobs(current))
        return out

    def tick_retention(self) -> int:
        """Delete ended jobs past ``finished_job_ttl_s`` or beyond ``max_finished_jobs`` (oldest
        first, children with their parent; a job whose stopped attempts may still run waits).
        Bounded work per call. Returns how many jobs (children counted) were deleted."""
        cfg = self.config
        deleted = 0
        with self._lock:
            now = self._clock.now_ms()
            candidates = self._state.prunable_jobs(now, int(cfg.finished_job_ttl_s * 1000), cfg.max_finished_jobs)
            for job_id in candidates:
                if self._state.still_stopping(job_id):
                    break  # keep the order: the oldest goes first, once its processes are gone
                deleted += len(self._delete_locked(job_id))
        if deleted:
            logger.info("retention deleted %d ended jobs", deleted)
        return deleted

    def terminate_job(self, job_id: JobId) -> bool:
        with self._lock:
            if self._state.get_job(job_id) is None:
                raise NotFound(f"job_id: job {job_id!r} not found")
            changed = self._state.terminate_job(job_id, self._clock.now_ms())
            effects = self._commit()
        self._after_commit(effects)
        return changed

    def get_job(self, job_id: JobId) -> JobView:
        """A snapshot of one job. Raises NotFound."""
        with self._lock:
            return job_view(self._job_locked(job_id))

    def _worker_locked(self, worker_id: WorkerId) -> ControllerWorker:
        worker = self._state.get_worker(worker_id)
        if worker is None:
            raise NotFound(f"worker_id: no worker {worker_id[:128]!r}")
        return worker

    def _job_locked(self, job_id: JobId) -> Job:
        job = self._state.get_job(job_id)
        if job is None:
            raise NotFound(f"job_id: job {job_id!r} not found")
        return job

    def get_bundle(self, bundle_hash: str) -> bytes:
        blob = self._bundles.get_bundle(bundle_hash)
        if blob is None:
            raise NotFound(f"bundle_hash: no bundle {bundle_hash!r}")
        return blob

    # ------------------------------------------------------------------ reads

    def list_jobs(
        self, *, states: Sequence[int] = (), prefix: str = "", page_size: int = 0, page_token: str = "",
        newest_first: bool = False,
    ) -> JobPage:
        """One page of jobs in submission order (``newest_first``: the reverse). Each lock hold copies at most ``READ_CHUNK`` jobs,
        and a page examines at most ``SCAN_PER_PAGE`` x its size, so no filter can make a read
        hold up the control plane."""
        if len(prefix) > MAX_FILTER_CHARS:
            raise InvalidArgument(f"prefix: longer than {MAX_FILTER_CHARS} characters ({len(prefix)})")
        if len(states) > MAX_FILTER_STATES:
            raise InvalidArgument(f"states: at most {MAX_FILTER_STATES} states, got {len(states)}")
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size: must be between 0 and {MAX_PAGE_SIZE}, got {page_size}")
        after = _parse_token(page_token)
        size = page_size or DEFAULT_PAGE_SIZE
        wanted = set(states)
        budget = size * SCAN_PER_PAGE
        out: list[JobView] = []
        step = self._state.jobs_before if newest_first else self._state.jobs_after
        while len(out) < size and budget > 0:
            with self._lock:
                chunk = step(after, min(READ_CHUNK, budget))
                for job in chunk:
                    after = job.submit_seq
                    budget -= 1
                    if (not wanted or job.state in wanted) and job.job_id.startswith(prefix):
                        out.append(job_view(job))
                        if len(out) >= size:
                            break
            if len(chunk) == 0:
                return JobPage(out, "")
        with self._lock:
            more = bool(step(after, 1)) if after else False
        return JobPage(out, str(after) if more else "")

    def job_status(self, job_id: JobId, include_tasks: bool = False, task_offset: int = 0,
                   task_limit: int = 0) -> tuple[JobView, list[TaskView] | None]:
        """A job's snapshot and, when asked, its tasks (copied ``READ_CHUNK`` at a time): those from
        index ``task_offset``, at most ``task_limit`` of them (0: all). O(page)."""
        if task_offset < 0:
            raise InvalidArgument(f"task_offset: must be >= 0, got {task_offset}")
        if not 0 <= task_limit <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"task_limit: must be 0 (all) to {MAX_PAGE_SIZE}, got {task_limit}")
        with self._lock:
            job = self._job_locked(job_id)
            view = job_view(job)
        if not include_tasks:
            return view, None
        stop = task_offset + task_limit if task_limit else job.num_tasks
        return view, self._task_views(job, task_offset, stop)

    def _task_views(self, job: Job, start: int = 0, stop: int | None = None) -> list[TaskView]:
        views: list[TaskView] = []
        end = job.num_tasks if stop is None else min(stop, job.num_tasks)
        while start < end:
            with self._lock:
                tasks = self._state.job_tasks_slice(job.job_id, start, min(end, start + READ_CHUNK))
                views.extend(task_view(t, job, self._address_of(t.worker_id)) for t in tasks)
            if not tasks:
                break
            start += len(tasks)
        return views

    def _address_of(self, worker_id: WorkerId | None) -> str:
        worker = self._state.get_worker(worker_id) if worker_id is not None else None
        return worker.address if worker is not None else ""

    def list_tasks(self, job_id: JobId) -> list[TaskView]:
        with self._lock:
            job = self._job_locked(job_id)
        return self._task_views(job)

    def task_status(self, job_id: JobId, task_index: int) -> TaskView:
        with self._lock:
            job = self._job_locked(job_id)
            tasks = self._state.get_job_tasks(job.job_id)
            if not 0 <= task_index < len(tasks):
                raise NotFound(f"task_index: job {job_id!r} has no task {task_index} (it has {len(tasks)})")
            task = tasks[task_index]
            return task_view(task, job, self._address_of(task.worker_id))

    def list_workers(self) -> list[WorkerView]:
        """Registered workers, and (with a provisioner) allocations whose worker has not registered
        yet, each with its platform id and state."""
        allocations = self._provisioner.allocations() if self._provisioner is not None else {}
        with self._lock:
            views = [worker_view(w, allocations.get(w.worker_id)) for w in self._state.list_workers()]
        known = {v.worker_id for v in views}
        views += [allocation_view(a) for worker_id, a in sorted(allocations.items()) if worker_id not in known]
        return views

    def provisioning_summary(self) -> str:
        return self._provisioner.summary() if self._provisioner is not None else ""

    # ------------------------------------------------------------------ provisioning (``provisioner.py``)

    def provisioning_inputs(self) -> tuple[list[Demand], list[WorkerSnapshot], set[WorkerId]]:
        """Pending tasks grouped by job, the healthy workers' room, and which of them run tasks."""
        with self._lock:
            counts: dict[JobId, int] = {}
            for task in self._state.peek_pending_tasks():
                counts[task.job_id] = counts.get(task.job_id, 0) + 1
            demand = []
            for job_id, count in counts.items():
                job = self._state.get_job(job_id)
                if job is not None:
                    demand.append(Demand(job.requirements, count))
            workers = self._state.get_available_workers(self._clock.now_ms())  # quarantined ones hold nothing
            return demand, [w.snapshot() for w in workers], {w.worker_id for w in workers if w.running_tasks}

    def worker_lost(self, worker_id: WorkerId, reason: str) -> None:
        """The platform says the worker's allocation ended: its tasks are preemptions now, without
        waiting for the heartbeat timeout."""
        with self._lock:
            lost = self._state.mark_worker_dead(worker_id, self._clock.now_ms(), reason=reason)
            effects = self._commit()
        if lost:
            logger.warning("worker %s lost with %d tasks: %s", worker_id, len(lost), reason)
        self._after_commit(effects)

    def forget_worker(self, worker_id: WorkerId) -> None:
        """The worker's allocation is gone for good: drop its record once it holds nothing."""
        with self._lock:
            if self._state.remove_worker(worker_id):
                self._retired.discard(worker_id)
            effects = self._commit()
        self._after_commit(effects)

    def retire_worker(self, worker_id: WorkerId, reason: str) -> bool:
        """Take an idle provisioned worker out for good before its allocation is given back. False
        (nothing changed) when a task was placed on it meanwhile."""
        with self._lock:
            worker = self._state.get_worker(worker_id)
            if worker is not None and worker.running_tasks:
                return False
            self._retired.add(worker_id)
            if worker is not None:
                self._state.mark_worker_dead(worker_id, self._clock.now_ms(), reason=reason)
            effects = self._commit()
        self._after_commit(effects)
        return True

    def drain_worker(self, worker_id: WorkerId) -> int:
        """``iris worker drain``: no new tasks on the worker; its tasks are stopped (SIGTERM, their
        job's grace) and retried elsewhere as preemptions. Returns how many were stopped."""
        with self._lock:
            self._worker_locked(worker_id)
            stopped = self._state.drain_worker(worker_id, self._clock.now_ms())
            effects = self._commit()
        self._after_commit(effects)
        return stopped

    def release_worker(self, worker_id: WorkerId) -> None:
        """``iris worker release``: end a worker's drain or quarantine."""
        with self._lock:
            self._worker_locked(worker_id)
            self._state.release_worker(worker_id, self._clock.now_ms())
            effects = self._commit()
        self._after_commit(effects)

    def lost_seconds(self) -> dict[str, float]:
        """Attempt time by how attempts ended, all jobs (``/metrics``)."""
        with self._lock:
            return {cause: ms / 1000 for cause, ms in self._state.lost_ms.items()}

    def note_provisioned(self, worker_id: WorkerId, details: str) -> None:
        with self._lock:
            self._state.log_action("worker_requested", now_ms=self._clock.now_ms(), worker_id=worker_id,
                                   details=details)
            self._commit()

    def list_endpoints(self, prefix: str = "") -> list[ControllerEndpoint]:
        if len(prefix) > MAX_FILTER_CHARS:
            raise InvalidArgument(f"prefix: longer than {MAX_FILTER_CHARS} characters ({len(prefix)})")
        with self._lock:
            return self._state.list_endpoints(prefix)

    def recent_actions(self, limit: int = 100) -> list[ActionLogEntry]:
        return self._state.recent_actions(limit)

    def counts(self) -> ClusterCounts:
        """Jobs and tasks by state, workers by health (for ``/metrics``), counted in chunks."""
        jobs_by_state: dict[int, int] = {s: 0 for s in cluster_pb2.JobState.values()}
        tasks_by_state: dict[int, int] = {s: 0 for s in cluster_pb2.TaskState.values()}
        after = 0
        while True:
            with self._lock:
                chunk = self._state.jobs_after(after, READ_CHUNK)
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

    # ------------------------------------------------------------------ scheduling

    def tick_schedule(self, bounded: bool = False) -> ScheduleSummary:
        """One scheduling pass: time out, assign, commit; then launch outside the lock. ``bounded``:
        end the pass once no worker has room (``Scheduler.find_assignments``)."""
        with self._lock:
            launches, summary = self._schedule_locked(bounded)
            if summary is None:
                return ScheduleSummary(0, 0, 0)
            effects = self._commit()
        self._start_launches(launches)
        if effects.kills:
            self._send_kills(effects.kills)
        return summary

    def _schedule_locked(self, bounded: bool = False) -> tuple[list[AttemptLaunch], ScheduleSummary | None]:
        """The scheduling pass without its commit. Call with the lock held. ``None``: nothing was
        pending."""
        launches: list[AttemptLaunch] = []
        pending = self._state.peek_pending_tasks()
        if not pending:
            return launches, None
        now = self._clock.now_ms()
        tx = self._scheduler.find_assignments(pending, self._state.get_available_workers(now), now, bounded=bounded)
        for task in tx.timed_out_tasks:
            job = self._state.get_job(task.job_id)
            reason = job.pending_reason if job is not None else ""
            timeout_s = job.scheduling_timeout_ms / 1000 if job is not None else 0
            self._state.transition_task(
                task.task_id,
                cluster_pb2.TASK_STATE_UNSCHEDULABLE,
                now,
                error=f"not scheduled within {timeout_s:g}s" + (f": {reason}" if reason else ""),
            )
        reasons = dict(tx.pending_reasons)
        for task, worker in tx.assignments:
            if task.job_id not in reasons:
                reasons[task.job_id] = ""
            if self._state.commit_assignment(task.task_id, worker.worker_id, now):
                job = self._state.get_job(task.job_id)
                assert job is not None
                # Tokens are added on the dispatch pool (``_launch_batch``), outside this lock.
                previous = task.attempts[-1] if task.attempts else None
                launches.append(AttemptLaunch(job.job_id, task.task_id, task.task_index, job.num_tasks,
                                              task.current_attempt_id, job.spec, worker.worker_id, worker.address,
                                              previous=previous, job_uid=job.uid))
        launches = _with_rendezvous(launches)
        self._state.set_pending_reasons(reasons)
        return launches, ScheduleSummary(len(launches), len(tx.timed_out_tasks), len(pending) - len(launches))

    def _start_launches(self, launches: list[AttemptLaunch]) -> None:
        """Hand committed assignments to the pool: one backend call per worker (per batch)."""
        for batch in self._batches(launches):
            self._submit(self._launch_batch, batch)

    def _launch_size(self, spec_job: AttemptLaunch) -> int:
        size = self._launch_bytes.get(spec_job.job_id)
        if size is None:
            spec = spec_job.spec
            size = (len(spec.entrypoint.pickled) + sum(len(a) + 1 for a in spec.entrypoint.argv)
                    + sum(len(k) + len(v) + 2 for k, v in spec.env.items()) + 256)
            if len(self._launch_bytes) >= 256:
                self._launch_bytes.clear()
            self._launch_bytes[spec_job.job_id] = size
        return size

    def _batches(self, launches: list[AttemptLaunch]) -> list[list[AttemptLaunch]]:
        """Group a pass's launches per worker (in assignment order), split by the batch limits."""
        per_worker: dict[WorkerId, list[list[AttemptLaunch]]] = {}
        sizes: dict[WorkerId, int] = {}
        max_tasks = self.config.dispatch_batch_max_tasks
        max_bytes = self.config.dispatch_batch_max_bytes
        for launch in launches:
            size = self._launch_size(launch)
            chunks = per_worker.setdefault(launch.worker_id, [])
            if not chunks or len(chunks[-1]) >= max_tasks or sizes[launch.worker_id] + size > max_bytes:
                chunks.append([])
                sizes[launch.worker_id] = 0
            chunks[-1].append(launch)
            sizes[launch.worker_id] += size
        return [chunk for chunks in per_worker.values() for chunk in chunks]

    def _launch_batch(self, batch: list[AttemptLaunch]) -> None:
        """One backend call for several attempts on one worker, and what each result means:
        ACCEPTED is acknowledged; TASK_REFUSED is a failure of that task (the worker stays
        healthy); BACKEND_FAILED is a preemption, and the call counts once toward
        ``max_dispatch_failures`` of the worker."""
        if self.config.auth:
            credential = self.controller_token(batch[0].worker_id)
            batch = [dataclasses.replace(launch, task_token=self.task_token(launch.task_id, launch.attempt_id, launch.job_uid),
                                         credential=credential) for launch in batch]
        try:
            results = self._backend.submit(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"backend gave {len(results)} results for {len(batch)} launches")
        except Exception as e:  # a bug in a backend must not leave the tasks stuck RUNNING
            logger.exception("launch of %d tasks to %s crashed", len(batch), batch[0].worker_id)
            results = [LaunchResult(LaunchOutcome.BACKEND_FAILED, f"dispatch to worker {batch[0].worker_id} "
                                    f"failed: {e}")] * len(batch)
        self.apply_launch_results(batch, results)

    def apply_launch_results(self, batch: Sequence[AttemptLaunch], results: Sequence[LaunchResult]) -> None:
        """Apply what the backend said about each launch of one call."""
        changed = False
        failed_last = max((i for i, r in enumerate(results) if r.outcome is LaunchOutcome.BACKEND_FAILED),
                          default=-1)
        with self._lock:
            now = self._clock.now_ms()
            for i, (launch, result) in enumerate(zip(batch, results, strict=True)):
                if result.outcome is LaunchOutcome.ACCEPTED:
                    self._state.ack_dispatch(launch.task_id, launch.attempt_id, result.incarnation, result.sequence)
                    continue
                changed = True
                logger.warning("task=%s attempt=%d: %s", launch.task_id, launch.attempt_id, result.error)
                if result.outcome is LaunchOutcome.TASK_REFUSED:
                    self._state.dispatch_refused(launch.task_id, launch.attempt_id, now, result.error)
                else:
                    self._state.dispatch_failed(
                        launch.task_id, launch.attempt_id, now, result.error, worker_gone=result.location_gone,
                        max_consecutive_failures=self.config.max_dispatch_failures, count_failure=i == failed_last,
                    )
            effects = self._commit() if changed else None
        if effects is not None:
            self._after_commit(effects)

    # ------------------------------------------------------------------ workers

    def heartbeat_interval_ms(self) -> int:
        """How often each worker is asked to heartbeat at most: the fleet's share of
        ``max_heartbeat_rate`` (0 while the fleet is small enough for the workers' own intervals)."""
        return self._heartbeat_interval_ms

    def _size_heartbeats(self, healthy: int) -> None:
        rate = self.config.max_heartbeat_rate
        self._heartbeat_interval_ms = int(healthy * 1000 / rate) if rate > 0 else 0

    def tick_health(self) -> list[WorkerId]:
        """Declare workers dead that were not heard from within ``worker_timeout_s`` (or three of the
        heartbeat intervals they were asked for, when longer); fail attempts that ran past their
        job's ``timeout_seconds``; size the fleet's heartbeat interval."""
        with self._lock:
            now = self._clock.now_ms()
            self._state.expire_timeouts(now)
            self._size_heartbeats(self._state.healthy_worker_count())
            timeout_ms = int(self.config.worker_timeout_s * 1000)
            dead = self._state.find_dead_workers(now, timeout_ms, self._heartbeat_interval_ms)
            for worker_id in dead:
                worker = self._state.get_worker(worker_id)
                silent_s = (now - worker.last_heartbeat_ms) / 1000 if worker is not None else 0.0
                logger.warning("worker %s not heard from for %.1fs: declared dead", worker_id, silent_s)
                self._state.mark_worker_dead(worker_id, now, reason=f"not heard from for {silent_s:.0f}s")
            if dead:
                self._size_heartbeats(self._state.healthy_worker_count())
            effects = self._commit()
        self._after_commit(effects)
        return dead

    def tick_observe(self) -> None:
        """Pull what a polling backend knows (new capacity, complete observed sets) and apply it
        exactly as registrations and heartbeats are applied. A push backend returns nothing."""
        for location in self._backend.capacity():
            with self._lock:
                known = self._state.get_worker(location.worker_id)
                fresh = known is None or not known.healthy or known.incarnation != location.incarnation
            if fresh:  # a known, live location is kept alive by its observations
                self._register(location)
        for observation in self._backend.observe():
            kills = self.apply_observation(observation)
            for attempt in kills or ():
                self._send_kills([KillInstruction(observation.worker_id, attempt.task_id, attempt.attempt_id,
                                                  attempt.job_uid)])

    def register_worker(
        self, request: cluster_pb2.Controller.RegisterWorkerRequest, principal: Principal = ANONYMOUS_LOCAL
    ) -> cluster_pb2.Controller.RegisterWorkerResponse:
        """Register (or re-register) a worker. With the join token (or as an admin) the worker gets a
        credential of its own, bound to its id; an id whose worker is alive cannot be taken over by
        another credential. A worker credential may register only its own id; an admin may register
        any (no credential is issued)."""
        check_id(request.worker_id, "worker_id", self.config.limits)
        if not request.address or ":" not in request.address or len(request.address) > MAX_FILTER_CHARS:
            raise InvalidArgument(f"address: expected HOST:PORT, got {request.address[:64]!r}")
        if request.metadata.cpu_count < 0 or request.metadata.memory_bytes < 0:
            raise InvalidArgument("metadata: cpu_count and memory_bytes must be >= 0")
        try:
            metadata = WorkerMetadata.from_proto(request.metadata)
        except ValueError as e:
            raise InvalidArgument(f"metadata.{e}") from None
        worker_id = WorkerId(request.worker_id)
        credential = ""
        if principal.role is Role.WORKER:
            if principal.name != worker_id:
                raise PermissionDenied(f"worker_id: this credential belongs to worker {principal.name!r}, "
                                       f"not {worker_id!r}")
        elif principal.role is Role.JOIN:
            credential = self._issue_worker_credential(worker_id)
        elif principal.role is not Role.ADMIN:  # an admin (or --auth none) registers without a credential
            raise PermissionDenied(f"RegisterWorker: needs the join token or a worker credential, not a "
                                   f"{principal.role.value} token")
        location = LocationCapacity(worker_id, request.address, metadata, request.incarnation,
                                    _observed(request.tasks), request.sequence)
        kill = self._register(location)
        return cluster_pb2.Controller.RegisterWorkerResponse(
            accepted=True, kill=[_status(a) for a in kill], credential=credential,
            controller_token=self.controller_token(worker_id) if self.config.auth else "",
            heartbeat_interval_ms=self._heartbeat_interval_ms,
        )

    def _issue_worker_credential(self, worker_id: WorkerId) -> str:
        """A worker credential for ``worker_id``; refused while a worker of that id is alive (it may be
        taken over only once that worker was declared dead). Earlier credentials of the id are revoked."""
        token = generate_token()
        with self._lock:
            worker = self._state.get_worker(worker_id)
            if worker is not None and worker.healthy:
                raise PermissionDenied(f"worker_id: worker {worker_id!r} is registered and alive; its id cannot be "
                                       "taken over with the join token")
            now = self._clock.now_ms()
            for old in self._state.tokens_named(worker_id):
                if old.role is Role.WORKER and not old.revoked:
                    self._state.revoke_token(old.token_id, now)
            self._state.add_token(TokenRecord(new_token_id(), hash_token(token), worker_id, Role.WORKER, now))
            self._commit()
        return token

    def _register(self, location: LocationCapacity) -> list[ObservedAttempt]:
        if location.worker_id in self._retired:
            raise FailedPrecondition(f"worker_id: worker {location.worker_id!r} was released to its platform; "
                                     "it may not register again")
        with self._lock:
            now = self._clock.now_ms()
            worker = ControllerWorker(
                worker_id=location.worker_id,
                address=location.address,
                metadata=location.metadata,
                last_heartbeat_ms=now,
                registered_at_ms=now,
                incarnation=location.incarnation,
            )
            self._state.add_worker(worker)
            self._state.heartbeat(worker.worker_id, now, self._heartbeat_interval_ms)
            self._state.log_action("worker_registered", now_ms=now, worker_id=location.worker_id,
                                   details=location.address)
            result = self._state.reconcile_worker(worker.worker_id, location.attempts, location.incarnation,
                                                  location.sequence, now)
            effects = self._commit()
        logger.info("worker registered worker=%s address=%s", location.worker_id, location.address)
        self._after_commit(effects)
        self.wake()
        return result.kill

    def heartbeat(self, request: cluster_pb2.Controller.HeartbeatRequest) -> cluster_pb2.Controller.HeartbeatResponse:
        check_id(request.worker_id, "worker_id", self.config.limits)
        observation = Observation(WorkerId(request.worker_id), _observed(request.tasks), request.incarnation,
                                  request.sequence)
        interval_ms = self._heartbeat_interval_ms
        kill = self.apply_observation(observation, interval_ms)
        if kill is None:
            return cluster_pb2.Controller.HeartbeatResponse(reregister=True)
        response = cluster_pb2.Controller.HeartbeatResponse(kill=[_status(a) for a in kill],
                                                            heartbeat_interval_ms=interval_ms)
        if self._forget:
            with self._lock:
                forget = self._forget.pop(WorkerId(request.worker_id), None)
            if forget is not None:
                response.forget_job_uids.extend(sorted(forget[0]))
                response.forget_bundles.extend(sorted(forget[1]))
        return response

    def apply_observation(self, observation: Observation, interval_ms: int = 0) -> list[ObservedAttempt] | None:
        """Reconcile one location's complete observed set (a heartbeat, or a backend's poll; a
        heartbeat's reply asks for the next one ``interval_ms`` later at the earliest). Returns the
        attempts to kill there, or None when the location is unknown or was declared dead (it must
        register again)."""
        with self._lock:
            now = self._clock.now_ms()
            if not self._state.heartbeat(observation.worker_id, now, interval_ms):
                return None
            result = self._state.reconcile_worker(observation.worker_id, observation.attempts,
                                                  observation.incarnation, observation.sequence, now)
            effects = self._commit()
        self._after_commit(effects)
        return result.kill

    def report_task_state(
        self, request: cluster_pb2.Controller.ReportTaskStateRequest
    ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        """Apply a batch of reports from one worker. Stale or duplicate reports are no-ops; a live
        attempt the controller no longer expects is sent back to be killed."""
        check_id(request.worker_id, "worker_id", self.config.limits)
        for i, update in enumerate(request.updates):
            check_id(update.task_id, f"updates[{i}].task_id", self.config.limits)
            if update.state not in _TASK_STATES:
                raise InvalidArgument(f"updates[{i}].state: unknown task state {update.state}")
            if update.HasField("log_size") and update.log_size < 0:
                raise InvalidArgument(f"updates[{i}].log_size: must be >= 0, got {update.log_size}")
        kill: list[cluster_pb2.WorkerTaskStatus] = []
        worker_id = WorkerId(request.worker_id)
        self._complete_logs(worker_id, request.updates)
        with self._lock:
            now = self._clock.now_ms()
            self._state.heartbeat(worker_id, now)
            for update in request.updates:
                task_id = TaskId(update.task_id)
                if update.result and update.state == cluster_pb2.TASK_STATE_SUCCEEDED:
                    self._keep_result(worker_id, task_id, update.attempt_id, update.result, update.job_uid)
                changed = self._state.apply_report(
                    worker_id, task_id, update.attempt_id, update.state, now,
                    exit_code=update.exit_code, error=update.error or None, ports=update.ports,
                    job_uid=update.job_uid,
                )
                if changed and update.state == cluster_pb2.TASK_STATE_RUNNING:
                    task = self._state.get_task(task_id)
                    if task is not None and task.started_at_ms is not None:
                        waited = max(0, task.started_at_ms - task.pending_since_ms)
                        self.metrics.scheduling_latency.observe(waited / 1000)
                if not changed and update.state not in TERMINAL_TASK_STATES:
                    task = self._state.get_task(task_id)
                    if task is None or task.current_attempt_id != update.attempt_id or task.worker_id != worker_id \
                            or task.is_finished() or not self._state.job_uid_matches(task_id, update.job_uid):
                        kill.append(cluster_pb2.WorkerTaskStatus(task_id=update.task_id,
                                                                 attempt_id=update.attempt_id,
                                                                 job_uid=update.job_uid))
            effects = self._commit()
        # Wakes the scheduling loop, which coalesces the wakes of several report batches into one
        # pass (running the pass here, per batch, was measured slower).
        self._after_commit(effects)
        return cluster_pb2.Controller.ReportTaskStateResponse(kill=kill)

    def _keep_result(self, worker_id: WorkerId, task_id: TaskId, attempt_id: int, data: bytes,
                     job_uid: str = "") -> None:
        """Store a succeeding attempt's result before its success is committed. Call with the lock."""
        task = self._state.get_task(task_id)
        if task is None or task.current_attempt_id != attempt_id or task.worker_id != worker_id \
                or not task.is_active() or not self._state.job_uid_matches(task_id, job_uid):
            return  # a stale or duplicate report: its result is not the task's
        self._bundles.put_result(task_id, attempt_id, data)

    def task_result(self, job_id: JobId, task_index: int) -> tuple[int, bytes] | None:
        """A succeeded task's result: (attempt, cloudpickle bytes), or None when it has none (yet)."""
        with self._lock:
            job = self._job_locked(job_id)
            tasks = self._state.get_job_tasks(job.job_id)
            if not 0 <= task_index < len(tasks):
                raise NotFound(f"task_index: job {job_id!r} has no task {task_index} (it has {len(tasks)})")
            task = tasks[task_index]
            if task.state != cluster_pb2.TASK_STATE_SUCCEEDED:
                return None
        kept = self._bundles.get_result(task.task_id)
        return kept if kept is not None and kept[0] == task.current_attempt_id else None

    # ------------------------------------------------------------------ endpoints

    def register_endpoint(self, request: cluster_pb2.Controller.RegisterEndpointRequest) -> str:
        if not request.name:
            raise InvalidArgument("name: must not be empty")
        if len(request.name) > MAX_FILTER_CHARS:
            raise InvalidArgument(f"name: longer than {MAX_FILTER_CHARS} characters")
        if not request.address:
            raise InvalidArgument("address: must not be empty")
        if len(request.address) > MAX_FILTER_CHARS:
            raise InvalidArgument(f"address: longer than {MAX_FILTER_CHARS} characters")
        with self._lock:
            task = self._state.get_task(TaskId(request.task_id))
            if task is None:
                raise NotFound(f"task_id: task {request.task_id[:128]!r} not found")
            endpoint = ControllerEndpoint(
                endpoint_id=uuid.uuid4().hex[:16],
                name=request.name,
                address=request.address,
                job_id=task.job_id,
                metadata=dict(request.metadata),
                attempt_id=request.attempt_id,
            )
            if not self._state.add_endpoint(endpoint, task.task_id):
                raise FailedPrecondition(
                    f"task_id: task {request.task_id} attempt {request.attempt_id} is not running "
                    f"(state {task_state_name(task.state)}, current attempt {task.current_attempt_id})"
                )
            effects = self._commit()
        self._after_commit(effects)
        return endpoint.endpoint_id

    def unregister_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            if self._state.remove_endpoint(endpoint_id) is None:
                raise NotFound(f"endpoint_id: endpoint {endpoint_id[:128]!r} not found")
            effects = self._commit()
        self._after_commit(effects)

    def lookup_endpoint(self, name: str) -> ControllerEndpoint:
        if len(name) > MAX_FILTER_CHARS:
            raise InvalidArgument(f"name: longer than {MAX_FILTER_CHARS} characters")
        with self._lock:
            found = self._state.lookup_endpoints(name)
        if not found:
            raise NotFound(f"name: no endpoint named {name!r}")
        return found[0]

    # ------------------------------------------------------------------ logs

    def fetch_task_logs(
        self, request: cluster_pb2.Controller.FetchTaskLogsRequest
    ) -> cluster_pb2.Controller.FetchTaskLogsResponse:
        if request.start_line < 0 or request.max_lines < 0:
            raise InvalidArgument("start_line and max_lines: must be >= 0")
        if request.HasField("start_offset") and request.start_offset < 0:
            raise InvalidArgument(f"start_offset: must be >= 0, got {request.start_offset}")
        with self._lock:
            task = self._state.get_task(TaskId(request.task_id))
            if task is None:
                raise NotFound(f"task_id: task {request.task_id[:128]!r} not found")
            attempt_id = request.attempt_id if request.HasField("attempt_id") else task.current_attempt_id
            worker_id: WorkerId | None = None
            attempt_finished = True
            if attempt_id == task.current_attempt_id and task.worker_id is not None:
                worker_id = task.worker_id
                attempt_finished = task.is_finished()
            else:
                for attempt in task.attempts:
                    if attempt.attempt_id == attempt_id:
                        worker_id = attempt.worker_id
                        break
                else:
                    if not 0 <= attempt_id <= task.current_attempt_id:
                        raise NotFound(f"attempt_id: task {task.task_id} has no attempt {attempt_id}")
            worker = self._state.get_worker(worker_id) if worker_id is not None else None
            task_id = task.task_id
            job = self._state.get_job(task.job_id)
            key = job_key(job.job_id, job.uid) if job is not None else ""
            worker_gone = worker is None or not worker.healthy
            task_index = task.task_index
        offset = request.start_offset if request.HasField("start_offset") else None
        ships = bool(getattr(self._backend, "ships_logs", False))
        if self._logs is not None and key and (ships or self._logs.has(key, task_index, attempt_id)):
            # The controller's own copy: it outlives the worker, and costs the worker nothing.
            log = self._logs.attempt_log(key, task_index, attempt_id)
            if offset is None:
                offset = log.tail_offset(request.tail_lines) if request.tail_lines > 0 else 0
                if request.start_line and not request.tail_lines:
                    offset = log.offset_of_record(request.start_line)
            stored = log.read(offset, request.max_lines)
            complete = self._logs.is_complete(key, task_index, attempt_id)
            return cluster_pb2.Controller.FetchTaskLogsResponse(
                lines=[cluster_pb2.LogLine(data=r.text, source=r.source, timestamp_ms=r.timestamp_ms)
                       for r in stored.records],
                next_line=request.start_line + len(stored.records),
                next_offset=stored.next_offset,
                attempt_finished=attempt_finished and stored.next_offset >= stored.end_offset and (
                    complete or worker_gone),
                attempt_id=attempt_id,
            )
        if worker_id is None:
            return cluster_pb2.Controller.FetchTaskLogsResponse(
                attempt_id=attempt_id, attempt_finished=False, next_line=request.start_line,
                next_offset=offset or 0,
            )
        if worker is None:
            raise Unavailable(f"logs of attempt {attempt_id} are on worker {worker_id}, which is unknown")
        try:
            page: LogPage = self._backend.fetch_logs(LogRequest(
                worker_id, worker.address, task_id, attempt_id, request.start_line, offset, request.max_lines,
                self.controller_token(worker_id) if self.config.auth else "",
            ))
        except BackendUnavailable as e:
            raise Unavailable(f"logs of attempt {attempt_id} are on worker {worker_id}, which did not answer: {e}"
                              ) from e
        return cluster_pb2.Controller.FetchTaskLogsResponse(
            lines=[cluster_pb2.LogLine(data=line.data, source=line.source, timestamp_ms=line.timestamp_ms)
                   for line in page.lines],
            next_line=page.next_line,
            next_offset=page.next_offset,
            attempt_finished=page.attempt_finished or attempt_finished,
            attempt_id=attempt_id,
        )


    def push_task_logs(self, worker_id: WorkerId, request: cluster_pb2.Controller.PushTaskLogsRequest
                       ) -> cluster_pb2.Controller.PushTaskLogsResponse:
        """Keep the log chunks a worker ships, for attempts that ran on that worker only. A chunk of
        an attempt the controller does not know (deleted job, another worker's) is answered -1."""
        offsets: list[int] = []
        for i, chunk in enumerate(request.chunks):
            check_id(chunk.task_id, f"chunks[{i}].task_id", self.config.limits)
            if chunk.start_offset < 0:
                raise InvalidArgument(f"chunks[{i}].start_offset: must be >= 0")
        for chunk in request.chunks:
            target = self._log_target(worker_id, chunk.task_id, chunk.attempt_id, chunk.job_uid)
            if target is None or self._logs is None:
                offsets.append(-1)
                continue
            key, index = target
            log = self._logs.attempt_log(key, index, chunk.attempt_id)
            end = log.append_at(chunk.start_offset, chunk.data) if chunk.data else log.end_offset()
            if chunk.complete and end >= chunk.start_offset + len(chunk.data):
                self._logs.mark_complete(key, index, chunk.attempt_id)
            offsets.append(end)
        return cluster_pb2.Controller.PushTaskLogsResponse(next_offsets=offsets)

    def _log_target(self, worker_id: WorkerId, task_id: str, attempt_id: int, job_uid: str) -> tuple[str, int] | None:
        """Where the log of an attempt that ran on ``worker_id`` is kept (job key, task index); None
        when no such attempt ran there (a deleted job, another worker's attempt)."""
        with self._lock:
            task = self._state.get_task(TaskId(task_id))
            job = self._state.get_job(task.job_id) if task is not None else None
            if task is None or job is None or not self._state.job_uid_matches(task.task_id, job_uid):
                return None
            if not ((task.current_attempt_id == attempt_id and task.worker_id == worker_id)
                    or any(a.attempt_id == attempt_id and a.worker_id == worker_id for a in task.attempts)):
                return None
            return job_key(job.job_id, job.uid), task.task_index

    def _complete_logs(self, worker_id: WorkerId, updates: Sequence[cluster_pb2.WorkerTaskStatus]) -> None:
        """Ended attempts reported with ``log_size``: their whole log was shipped; complete it here
        when the controller holds exactly that much (before their end is applied and seen)."""
        if self._logs is None:
            return
        for update in updates:
            if not update.HasField("log_size") or update.state not in TERMINAL_TASK_STATES:
                continue
            target = self._log_target(worker_id, update.task_id, update.attempt_id, update.job_uid)
            if target is None:
                continue
            log = self._logs.attempt_log(target[0], target[1], update.attempt_id)
            if log.end_offset() == update.log_size:
                self._logs.mark_complete(target[0], target[1], update.attempt_id)

    def attach_log_store(self, logs: LogStore) -> None:
        self._logs = logs


# ---------------------------------------------------------------------- helpers




def _with_rendezvous(launches: list[AttemptLaunch]) -> list[AttemptLaunch]:
    """Give every task of each coscheduled gang placed in this pass its rendezvous variables."""
    gangs: dict[JobId, list[AttemptLaunch]] = {}
    for launch in launches:
        if launch.spec.coscheduled:
            gangs.setdefault(launch.job_id, []).append(launch)
    if not gangs:
        return launches
    envs: dict[tuple[JobId, int], dict[str, str]] = {}
    for job_id, members in gangs.items():
        spec = members[0].spec
        per_task = gang_env(job_id, members[0].num_tasks,
                            [Member(m.task_index, m.attempt_id, m.address) for m in members], spec.env)
        for index, env in per_task.items():
            envs[(job_id, index)] = env
    return [dataclasses.replace(launch, rendezvous=tuple(sorted(envs[(launch.job_id, launch.task_index)].items())))
            if (launch.job_id, launch.task_index) in envs else launch for launch in launches]


def _exit_process() -> None:
    os._exit(70)


def _log_failure(future: Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        logger.error("background controller work failed", exc_info=error)


def _parse_token(token: str) -> int:
    if not token:
        return 0
    if len(token) > 20 or not token.isdigit():
        raise InvalidArgument(f"page_token: not a token this controller issued ({token[:24]!r})")
    return int(token)


def _observed(tasks: Sequence[cluster_pb2.WorkerTaskStatus]) -> list[ObservedAttempt]:
    return [
        ObservedAttempt(TaskId(t.task_id), t.attempt_id, t.state, exit_code=t.exit_code, error=t.error or None,
                        ports=tuple(t.ports.items()) if t.ports else (), job_uid=t.job_uid)
        for t in tasks
    ]


def _status(attempt: ObservedAttempt) -> cluster_pb2.WorkerTaskStatus:
    return cluster_pb2.WorkerTaskStatus(task_id=attempt.task_id, attempt_id=attempt.attempt_id, state=attempt.state,  # type: ignore[arg-type]
                                        job_uid=attempt.job_uid)
