"""The controller shell: owns the state, the store, the clock, the task backend and the threads.

Decisions are made in the pure core (``state.py``, ``scheduler.py``); this module applies them,
through one typed edge: ``service.py`` converts every protobuf to a typed value
(``requests.py``, ``spec.JobSpec``, ``backend.Observation``) and back, and checks every request
field; no public method here takes or returns a protobuf.

- Every change is one transaction (``changes.Changes``): ``with self._change() as tx`` takes the
  lock, and leaving it drains the core's effects, queues their store rows (written after the lock,
  several callers' in one transaction), waits until they are durable, then acts: launches, kills,
  a scheduler wake. No RPC and no process call runs under the lock. Readers copy a bounded number
  of objects per lock hold into frozen views (``views.py``) and build replies after releasing it.
- Collaborators take the transaction object, not the controller: ``credentials.Credentials`` (who
  is calling, the tokens it issues), ``tasklogs.TaskLogs`` (the logs workers ship, pages of them),
  ``dispatch.Dispatcher`` (launches and kills through the ``TaskBackend``).
- Scheduling runs when woken (a submit, a report, a worker registering, a task ending) and on a
  fallback timer for scheduling timeouts. A launch the backend could not deliver is a preemption of
  that attempt; one refused for the task's own content is a failure of the task.
- Liveness is time-based (``tick_health``); observed sets (heartbeats, or a polling backend's
  ``observe``) are reconciled level-triggered.

Every loop body is a public single-pass ``tick_*`` method so tests drive it with a ``FakeClock``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from iris.cluster import bands
from iris.cluster.auth import Principal, Role, TokenRecord
from iris.cluster.clock import Clock, SystemClock
from iris.cluster.controller.access import ANONYMOUS_LOCAL, registration_gets_credential
from iris.cluster.controller.autoscaler import Demand
from iris.cluster.controller.backend import (
    AttemptLaunch,
    LocationCapacity,
    Observation,
    TaskBackend,
    WorkerClients,
    WorkerDaemonBackend,
    WorkerDaemonTimeouts,
)
from iris.cluster.controller.bundles import MemoryBundles, StateStore
from iris.cluster.controller.capacity import WorkerSnapshot
from iris.cluster.controller.changes import Change, Changes
from iris.cluster.controller.commits import StoreFailed, StoreFull
from iris.cluster.controller.config import ControllerConfig as ControllerConfig  # the public name
from iris.cluster.controller.credentials import Credentials
from iris.cluster.controller.dispatch import DispatchConfig, Dispatcher, commit_launch
from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.logstore import LogStore, job_key
from iris.cluster.controller.metrics import ControllerMetrics
from iris.cluster.controller.queries import ProvisionerHandle, Queries, job_of, worker_of
from iris.cluster.controller.reads import ReadGate
from iris.cluster.controller.requests import (
    EndpointRequest,
    HeartbeatReply,
    LogChunk,
    LogQuery,
    RegisterReply,
    TaskLogPage,
    TaskReport,
)
from iris.cluster.controller.scheduler import Scheduler
from iris.cluster.controller.state import (
    ControllerEndpoint,
    ControllerState,
    ControllerWorker,
    Effects,
    KillInstruction,
    ObservedAttempt,
)
from iris.cluster.controller.tasklogs import TaskLogs
from iris.cluster.controller.workspaces import Workspaces
from iris.cluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from iris.cluster.sharing import SharingConfig, SharingConfigError, load_sharing
from iris.cluster.spec import JobSpec
from iris.cluster.types import (
    RUNNING,
    SUCCEEDED,
    TERMINAL_TASK_STATES,
    AttemptRef,
    JobId,
    WorkerId,
    child_job_id,
    job_state_name,
    root_job_id,
    task_state_name,
)
from iris.cluster.validation import check_id

logger = logging.getLogger(__name__)

MAX_FORGET_PER_WORKER = 10_000
"""Deleted job incarnations (and bundles) a worker is told about at its next heartbeat, at most;
past that (or a lost reply) its copies leave with its attempt history."""


@dataclass(frozen=True, slots=True)
class ScheduleSummary:
    assigned: int
    timed_out: int
    pending: int


class Controller:
    def __init__(self, config: ControllerConfig | None = None, *, state: ControllerState | None = None,
                 store: StateStore | None = None, clock: Clock | None = None, backend: TaskBackend | None = None,
                 worker_clients: WorkerClients | None = None, address: str = "",
                 on_fatal: Callable[[], None] | None = None, secret: bytes | None = None,
                 log_store: LogStore | None = None) -> None:
        """``backend`` runs the tasks; by default Iris's worker daemons over gRPC
        (``worker_clients`` replaces their transport, e.g. with a fake in tests)."""
        self.config = cfg = config or ControllerConfig()
        self._state = state if state is not None else ControllerState()
        self._state.quarantine_after = cfg.quarantine_after
        self._state.gang_blame_window_ms = int(cfg.gang_blame_window_s * 1000)
        self._state.max_endpoints_per_task = cfg.max_endpoints_per_task
        self._state.max_reservations = cfg.max_reservations
        self._store = store
        self._bundles: MemoryBundles | StateStore = store if store is not None else MemoryBundles()
        self._clock: Clock = clock or SystemClock()
        if backend is not None and worker_clients is not None:
            raise ValueError("pass a backend or worker_clients, not both")
        self._backend: TaskBackend = backend or WorkerDaemonBackend(
            worker_clients, WorkerDaemonTimeouts(cfg.dispatch_timeout_s, cfg.kill_timeout_s, cfg.log_fetch_timeout_s))
        self._on_fatal = on_fatal or _exit_process
        self._changes = Changes(self._state, store, self._clock, self._store_failed)
        self._changes.on_effects = self._act
        self._change = self._changes.change
        """The one transaction (``changes.py``): ``with self._change() as tx``."""
        self.credentials = Credentials(self._changes, secret if secret is not None else secrets.token_bytes(32),
                                       cfg.auth)
        """Who is calling; the tokens and derived credentials this controller issues."""
        self.dispatch = Dispatcher(self._changes, self._backend, self.credentials, DispatchConfig(
            cfg.dispatch_threads, cfg.dispatch_batch_max_tasks, cfg.dispatch_batch_max_bytes,
            cfg.max_dispatch_failures, cfg.kill_grace_period_s, cfg.max_termination_grace_s))
        self.logs = TaskLogs(self._changes, self._backend, self.credentials, log_store)
        self.queries = Queries(self._changes, self._bundles, lambda: self._provisioner)
        """The reads (``queries.py``): bounded copies into frozen views."""
        self.reads = ReadGate(share=cfg.read_share, burst_s=cfg.read_burst_s, clock=self._clock)
        """Admission of reads (``iris.cluster.controller.reads``): the service's read RPCs and the
        dashboard pass through it; heartbeats, reports and dispatch never do."""
        self.metrics = ControllerMetrics()
        """Prometheus metrics (``/metrics``): latencies observed here and by the service, counts at scrape."""
        self.metrics.observe_state(self.queries.counts, self.queries.lost_seconds)
        self.metrics.observe_reads(self.reads)
        self.metrics.observe_sharing(self.queries.sharing_counts)
        self._scheduler = Scheduler(self._state, max_assignments=self.config.max_assignments_per_pass)
        self.workspaces = Workspaces(self._changes, self._bundles)  # uploads awaiting their LaunchJob
        self._wake_event = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.address = address
        """The controller's own address."""
        self._provisioner: ProvisionerHandle | None = None
        self._forget: dict[WorkerId, tuple[set[str], set[str]]] = {}
        """Per worker, what deleted jobs left there (job uids, bundle hashes): sent with its next reply."""
        self._retired: set[WorkerId] = set()
        """Provisioned workers given back to their platform: they may not register again."""
        self._heartbeat_interval_ms = 0
        self._size_heartbeats(self._state.healthy_worker_count())  # workers reloaded after a restart
        self._state.restart_liveness(int(self._clock.monotonic() * 1000))
        self._state.configure_sharing(cfg.sharing, self._clock.now_ms())
        self._state.uids.configure(cfg.task_uid_range, cfg.task_users)

    # ------------------------------------------------------------------ lifecycle

    @property
    def clock(self) -> Clock:
        return self._clock

    def now_ms(self) -> int:
        return self._clock.now_ms()

    def attach_provisioner(self, provisioner: ProvisionerHandle) -> None:
        """Provision workers through ``provisioner`` (started and stopped with the controller)."""
        self._provisioner = provisioner

    @property
    def provisioner(self) -> ProvisionerHandle | None:
        return self._provisioner

    def attach_log_store(self, logs: LogStore) -> None:
        self.logs.store = logs

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
        self.dispatch.stop()
        self._backend.close()
        try:
            self._changes.flush_and_close()
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
                # A pass woken by an event stops once no worker has room; a full one (every
                # schedule_interval_s) also times tasks out and explains every job still waiting. A
                # pass that placed work wakes the next itself (``_act``): a fleet-wide dispatch goes
                # in slices of max_assignments_per_pass, the lock released in between.
                now = self._clock.monotonic()
                full = not woken or now - last_full >= self.config.schedule_interval_s
                if full:
                    last_full = now
                self._changes.after_waiters()  # heartbeats and reports get their turn between slices
                self.tick_schedule(bounded=not full)
            except StoreFull:  # nothing can be placed durably: wait for space (RPCs say why)
                self._clock.wait(stop, 1.0)
            except Exception:
                logger.exception("scheduling pass failed")
                self._clock.wait(stop, 0.5)

    def _run_health(self, stop: threading.Event) -> None:
        while not self._clock.wait(stop, self.config.health_interval_s):
            try:
                self.tick_health()
                self.tick_observe()
                self.tick_retention()
            except StoreFull:
                pass  # workers cannot be declared dead, nor anything retired, until there is space
            except Exception:
                logger.exception("health pass failed")

    def _store_failed(self, error: BaseException) -> None:
        # Memory is now ahead of disk and the change was not acknowledged durably: serving on would
        # break "acknowledged means durable". Stop; a restart reloads the last good state.
        logger.critical("could not persist state; the controller stops", exc_info=error)
        self._on_fatal()

    def _act(self, effects: Effects) -> None:
        """Act on a durable change's effects outside the lock: kill processes, wake the scheduler."""
        if effects.kills:
            self.dispatch.send_kills(effects.kills)
        if effects.dirty_tasks or effects.dirty_workers:
            self.wake()

    # ------------------------------------------------------------------ who is calling (``credentials.py``)

    def authenticate(self, token: str | None) -> Principal:
        return self.credentials.authenticate(token)

    def task_token(self, task_id: str, attempt_id: int, job_uid: str = "") -> str:
        return self.credentials.task_token(task_id, attempt_id, job_uid)

    def controller_token(self, worker_id: str) -> str:
        return self.credentials.controller_token(worker_id)

    def create_token(self, name: str, role: Role, max_priority: str = "") -> tuple[TokenRecord, str]:
        return self.credentials.create_token(name, role, max_priority)

    def bootstrap_tokens(self) -> dict[Role, str]:
        return self.credentials.bootstrap_tokens()

    # ------------------------------------------------------------------ jobs

    def launch_job(self, spec: JobSpec, owner: str = "", bundle_blob: bytes = b"",
                   max_priority: str = bands.ADMIN_ALLOWANCE, trusted: bool = True) -> JobId:
        """Accept a validated job for ``owner`` (``service.py`` checked every field), with its
        workspace bundle when it brings one. Its band (``spec.priority``) is resolved here: unset, a
        child's parent's, else interactive; above ``max_priority`` (the caller's token's allowance)
        or above a child's parent's, PermissionDenied. Not ``trusted`` (a user, not an admin): the
        parent must be one of ``owner``'s jobs, and a ``bundle_hash`` sent without its bundle one
        that a job of ``owner`` uses. Raises IrisError subclasses; a refusal changes nothing."""
        if bundle_blob:
            digest = hashlib.sha256(bundle_blob).hexdigest()
            if spec.bundle_hash and spec.bundle_hash != digest:
                raise InvalidArgument(f"bundle_hash: does not match the sha256 of bundle_blob ({digest})")
        with self._change() as tx:
            if spec.parent_job_id:
                parent = tx.state.get_job(JobId(spec.parent_job_id))
                if parent is None:
                    raise NotFound(f"parent_job_id: job {spec.parent_job_id!r} not found")
                if parent.is_finished():
                    raise FailedPrecondition(f"parent_job_id: job {spec.parent_job_id!r} has already ended")
                if not trusted and parent.owner != owner:
                    raise PermissionDenied(f"parent_job_id: job {spec.parent_job_id!r} is not yours; a child job "
                                           "may be submitted only under one's own job")
                job_id = child_job_id(parent.job_id, spec.name)
                check_id(job_id, "name", self.config.limits)
                owner = parent.owner or owner  # a child job belongs to its parent's owner
                band = bands.effective_band(spec.priority, parent.spec.priority or bands.DEFAULT_BAND, max_priority)
                if not spec.bundle_hash and not bundle_blob and parent.bundle_hash:
                    spec = spec.replace(bundle_hash=parent.bundle_hash)  # child jobs reuse the parent's workspace
            else:
                job_id = root_job_id(owner, spec.name)  # names are unique per owner: "alice:train"
                band = bands.effective_band(spec.priority, None, max_priority)
            if band != spec.priority:
                spec = spec.replace(priority=band)  # stored resolved: status and the queue read it
            if tx.state.get_job(job_id) is not None:
                raise AlreadyExists(f"name: job {job_id!r} already exists")
            if bundle_blob:
                spec = spec.replace(bundle_hash=self._bundles.put_bundle(bundle_blob))  # content-addressed
            elif spec.bundle_hash and (self._bundles.get_bundle(spec.bundle_hash) is None or not trusted and not (
                    tx.state.bundle_used_by(spec.bundle_hash, owner) or self.workspaces.uploaded(owner, spec, tx))):
                # Another user's workspace is theirs: naming its hash is not enough (the same answer
                # as for an unknown one, so a hash seen in IRIS_BUNDLE_HASH proves nothing).
                raise InvalidArgument(f"bundle_hash: no bundle {spec.bundle_hash} of yours is stored; upload it first")
            job = Job(job_id, spec, tx.now_ms, owner=owner, uid=secrets.token_hex(8))
            tx.state.add_job(job, expand_job_to_tasks(job, tx.now_ms))
            self.workspaces.used(owner, spec.bundle_hash)
        logger.debug("job submitted job=%s tasks=%d", job_id, job.num_tasks)  # and in the action log
        self.config.make_checkpoint_dir(job.owner, job_id, job.uid)  # before its first attempt can start
        return job_id

    def delete_job(self, job_id: JobId) -> list[JobId]:
        """Remove an ended job with its child jobs, tasks, attempts, endpoints, results, logs and
        any workspace bundle no other job uses; its name may be used again. Raises NotFound, or
        FailedPrecondition while it runs or an attempt Iris stopped may still run on a worker."""
        with self._change() as tx:
            job = job_of(tx.state, job_id)
            if not job.is_finished():
                raise FailedPrecondition(
                    f"job_id: job {job_id!r} is {job_state_name(job.state)}; stop it first (iris job stop {job_id})")
            worker = tx.state.still_stopping(job_id)
            if worker:
                raise FailedPrecondition(f"job_id: an attempt of job {job_id!r} is still stopping on worker {worker}; "
                                         "try again in a few seconds")
            removed = self._delete(tx, job_id)
        logger.info("deleted jobs %s", ", ".join(removed))
        return removed

    def _delete(self, tx: Change, job_id: JobId) -> list[JobId]:
        """Delete one ended job (and children) from memory, the store, the log store and the bundle
        store, inside ``tx``."""
        state = tx.state
        tree = [job for job in (state.get_job(j) for j in state.job_tree(job_id)) if job is not None]
        tasks = [t for job in tree for t in state.get_job_tasks(job.job_id)]
        uid_of = {job.job_id: job.uid for job in tree}
        ran_on: dict[WorkerId, set[str]] = {}  # worker -> uids of the deleted jobs it ran attempts of
        for task in tasks:
            workers = {a.worker_id for a in task.attempts if a.worker_id} | ({task.worker_id} if task.worker_id else set())
            for worker_id in workers:
                if uid_of.get(task.job_id):
                    ran_on.setdefault(WorkerId(worker_id), set()).add(uid_of[task.job_id])
        removed = state.delete_job(job_id)
        effects = tx.commit()
        self._bundles.delete_results([t.task_id for t in tasks])
        gone_bundles = set()
        for bundle_hash in effects.deleted_bundles:
            if not state.bundle_in_use(bundle_hash) and not self.workspaces.pending(bundle_hash):  # under the lock
                self._bundles.delete_bundle(bundle_hash)
                gone_bundles.add(bundle_hash)
        for worker_id, uids in ran_on.items():
            pending_uids, pending_bundles = self._forget.setdefault(worker_id, (set(), set()))
            if len(pending_uids) + len(pending_bundles) < MAX_FORGET_PER_WORKER:
                pending_uids.update(uids)
                pending_bundles.update(gone_bundles)
        self.dispatch.forget_jobs(removed)
        gone = [d for d in (self.config.checkpoint_dir(job.owner, job.job_id, job.uid) for job in tree) if d is not None]
        if gone:
            tx.then(lambda: _remove_dirs(gone))  # after the lock: a job's checkpoints may be large
        if self.logs.store is not None:
            for job in tree:
                self.logs.store.delete_job(job_key(job.job_id, job.uid))
        return removed

    def tick_retention(self) -> int:
        """Delete ended jobs past ``finished_job_ttl_s`` or beyond ``max_finished_jobs`` (oldest
        first, children with their parent; a job whose stopped attempts may still run waits).
        Bounded work per call. Returns how many jobs (children counted) were deleted."""
        cfg = self.config
        deleted = 0
        with self._change() as tx:
            self.workspaces.expire(tx.state, tx.now_ms)  # uploaded, never launched
            candidates = tx.state.prunable_jobs(tx.now_ms, int(cfg.finished_job_ttl_s * 1000), cfg.max_finished_jobs)
            for job_id in candidates:
                if tx.state.still_stopping(job_id):
                    break  # keep the order: the oldest goes first, once its processes are gone
                deleted += len(self._delete(tx, job_id))
        if deleted:
            logger.info("retention deleted %d ended jobs", deleted)
        return deleted

    def reload_sharing(self) -> SharingConfig:
        """``iris share reload`` or SIGHUP: read ``--sharing`` again and apply it; running work is
        counted again under it, never stopped by the reload. A bad file changes nothing."""
        if self.config.sharing_file is None:
            raise FailedPrecondition("the controller was started without --sharing FILE: nothing to reload")
        try:
            config = load_sharing(self.config.sharing_file)
        except SharingConfigError as e:
            raise InvalidArgument(str(e)) from None
        with self._change() as tx:
            tx.state.configure_sharing(config, tx.now_ms)
        return config

    def terminate_job(self, job_id: JobId) -> bool:
        with self._change() as tx:
            job_of(tx.state, job_id)
            return tx.state.terminate_job(job_id, tx.now_ms)

    def get_bundle(self, bundle_hash: str) -> bytes:
        if (blob := self._bundles.get_bundle(bundle_hash)) is None:
            raise NotFound(f"bundle_hash: no bundle {bundle_hash!r}")
        return blob

    # ------------------------------------------------------------------ provisioning (``provisioner.py``)

    def provisioning_inputs(self) -> tuple[list[Demand], list[WorkerSnapshot], set[WorkerId]]:
        return self.queries.provisioning_inputs(self._clock.now_ms())

    def worker_lost(self, worker_id: WorkerId, reason: str) -> None:
        """The platform says the worker's allocation ended: its tasks are preemptions now."""
        with self._change() as tx:
            lost = tx.state.mark_worker_dead(worker_id, tx.now_ms, reason=reason)
        if lost:
            logger.warning("worker %s lost with %d tasks: %s", worker_id, len(lost), reason)

    def forget_worker(self, worker_id: WorkerId) -> None:
        """The worker's allocation is gone for good: drop its record once it holds nothing."""
        with self._change() as tx:
            if tx.state.remove_worker(worker_id):
                self._retired.discard(worker_id)

    def retire_worker(self, worker_id: WorkerId, reason: str) -> bool:
        """Take an idle provisioned worker out for good before its allocation is given back. False
        (nothing changed) when a task was placed on it meanwhile."""
        with self._change() as tx:
            worker = tx.state.get_worker(worker_id)
            if worker is not None and worker.running_tasks:
                return False
            self._retired.add(worker_id)
            if worker is not None:
                tx.state.mark_worker_dead(worker_id, tx.now_ms, reason=reason)
        return True

    def drain_worker(self, worker_id: WorkerId) -> int:
        """``iris worker drain``: no new tasks on the worker; its tasks are stopped (SIGTERM, their
        job's grace) and retried elsewhere as preemptions. Returns how many were stopped."""
        with self._change() as tx:
            worker_of(tx.state, worker_id)
            return tx.state.drain_worker(worker_id, tx.now_ms)

    def release_worker(self, worker_id: WorkerId) -> None:
        """``iris worker release``: end a worker's drain or quarantine."""
        with self._change() as tx:
            worker_of(tx.state, worker_id)
            tx.state.release_worker(worker_id, tx.now_ms)

    def note_provisioned(self, worker_id: WorkerId, details: str) -> None:
        with self._change() as tx:
            tx.state.log_action("worker_requested", now_ms=tx.now_ms, worker_id=worker_id, details=details)

    # ------------------------------------------------------------------ scheduling

    def tick_schedule(self, bounded: bool = False) -> ScheduleSummary:
        """One scheduling pass: time out, assign, commit; then launch outside the lock (before the
        pass's kills). ``bounded``: end the pass once no worker has room (``Scheduler.find_assignments``)."""
        with self._change() as tx:
            launches, summary = self._apply_schedule_result(tx, bounded)
            tx.then(lambda: self.dispatch.start(launches))
        return summary

    def _apply_schedule_result(self, tx: Change, bounded: bool) -> tuple[list[AttemptLaunch], ScheduleSummary]:
        state, now = tx.state, tx.now_ms
        possible = [self._provisioner.worker_room()] if self._provisioner is not None else []
        pending = state.before_pass(now, bounded, possible)  # work that fits nowhere is parked (``queue.py``)
        timed_out = state.parked_timeouts(now) if not bounded else []
        if not pending and not timed_out:
            return [], ScheduleSummary(0, 0, 0)
        result = self._scheduler.find_assignments(pending, state.get_available_workers(now), now, bounded=bounded,
                                                  sharing=state.fair_inputs(now), possible=possible)
        state.after_pass(now, timed_out + result.timed_out_tasks, result.preemptions, result.never_fit, result.fleet,
                         result.reservations)
        reasons = dict(result.pending_reasons)
        launches: list[AttemptLaunch] = []
        for task, worker in result.assignments:
            reasons.setdefault(task.job_id, "")
            launch = commit_launch(state, task.task_id, worker, now, self.config.checkpoint_dir)
            if launch is not None:
                launches.append(launch)
        state.set_pending_reasons(reasons)
        return launches, ScheduleSummary(len(launches), len(result.timed_out_tasks), len(pending) - len(launches))

    # ------------------------------------------------------------------ workers

    def heartbeat_interval_ms(self) -> int:
        """Each worker's heartbeat interval at least: its share of ``max_heartbeat_rate`` (0: its own)."""
        return self._heartbeat_interval_ms

    def _size_heartbeats(self, healthy: int) -> None:
        rate = self.config.max_heartbeat_rate
        self._heartbeat_interval_ms = int(healthy * 1000 / rate) if rate > 0 else 0

    def tick_health(self) -> list[WorkerId]:
        """Declare workers dead that were not heard from within ``worker_timeout_s`` (or three of the
        heartbeat intervals they were asked for, when longer); fail attempts that ran past their
        job's ``timeout_seconds``; size the fleet's heartbeat interval."""
        with self._change() as tx:
            state, now = tx.state, tx.now_ms
            state.expire_timeouts(now)
            state.settle_gangs(now)
            self._size_heartbeats(state.healthy_worker_count())
            dead = state.find_dead_workers(tx.mono_ms, int(self.config.worker_timeout_s * 1000),
                                           self._heartbeat_interval_ms)
            for worker_id in dead:
                worker = state.get_worker(worker_id)
                silent_s = (tx.mono_ms - state.heard_ms(worker)) / 1000 if worker is not None else 0.0
                logger.warning("worker %s not heard from for %.1fs: declared dead", worker_id, silent_s)
                state.mark_worker_dead(worker_id, now, reason=f"not heard from for {silent_s:.0f}s")
            if dead:
                self._size_heartbeats(state.healthy_worker_count())
        return dead

    def tick_observe(self) -> None:
        """Pull what a polling backend knows (new capacity, complete observed sets) and apply it
        exactly as registrations and heartbeats are applied. A push backend returns nothing."""
        for location in self._backend.capacity():
            with self._changes.read() as state:
                known = state.get_worker(location.worker_id)
                fresh = known is None or not known.healthy or known.incarnation != location.incarnation
            if fresh:  # a known, live location is kept alive by its observations
                self._register(location)
        for observation in self._backend.observe():
            kills = self.apply_observation(observation)
            self.dispatch.send_kills(KillInstruction(observation.worker_id, a.task_id, a.attempt_id, a.job_uid)
                                     for a in kills or ())

    def register_worker(self, location: LocationCapacity, principal: Principal = ANONYMOUS_LOCAL) -> RegisterReply:
        """Register (or re-register) a worker. With the join token (or as an admin) the worker gets a
        credential of its own, bound to its id; an id whose worker is alive cannot be taken over by
        another credential. A worker credential may register only its own id; an admin may register
        any (no credential is issued)."""
        worker_id = location.worker_id
        credential = ""
        if registration_gets_credential(principal, worker_id):
            credential = self.credentials.issue_worker_credential(worker_id)
        kill = self._register(location)
        return RegisterReply(kill, credential, self.credentials.controller_token(worker_id), self._heartbeat_interval_ms)

    def _register(self, location: LocationCapacity) -> list[ObservedAttempt]:
        if location.worker_id in self._retired:
            raise FailedPrecondition(f"worker_id: worker {location.worker_id!r} was released to its platform; "
                                     "it may not register again")
        with self._change() as tx:
            now = tx.now_ms
            worker = tx.state.add_worker(ControllerWorker(
                worker_id=location.worker_id, address=location.address, metadata=location.metadata,
                last_heartbeat_ms=now, registered_at_ms=now, incarnation=location.incarnation,
            ))
            tx.state.heartbeat(worker.worker_id, now, self._heartbeat_interval_ms, tx.mono_ms)
            tx.state.set_unfit(worker.worker_id, location.unfit, now)
            tx.state.log_action("worker_registered", now_ms=now, worker_id=location.worker_id, details=location.address)
            result = tx.state.reconcile_worker(worker.worker_id, location.attempts, location.incarnation,
                                               location.sequence, now)
        logger.info("worker registered worker=%s address=%s", location.worker_id, location.address)
        self.wake()
        return result.kill

    def heartbeat(self, observation: Observation) -> HeartbeatReply:
        """A worker's heartbeat: its complete observed set, reconciled. The reply says what to kill,
        when to beat next, and what deleted jobs left there; or that it must register again."""
        return self.heartbeats([observation])[0]

    def heartbeats(self, observations: Sequence[Observation]) -> list[HeartbeatReply]:
        """Heartbeats that arrived together (the heartbeat port's), reconciled in one change, each as ``heartbeat``."""
        interval_ms = self._heartbeat_interval_ms
        kills = self.apply_observations(observations, interval_ms)
        forget: dict[WorkerId, tuple[set[str], set[str]]] = {}
        if self._forget:  # one turn of the lock for the batch
            with self._changes.read():
                forget = {o.worker_id: self._forget.pop(o.worker_id) for o, kill in zip(observations, kills, strict=True)
                          if kill is not None and o.worker_id in self._forget}
        return [HeartbeatReply(True) if kill is None else HeartbeatReply(
            False, kill, interval_ms, *(sorted(f) for f in forget.get(o.worker_id, (set(), set()))))
            for o, kill in zip(observations, kills, strict=True)]

    def apply_observation(self, observation: Observation, interval_ms: int = 0) -> list[ObservedAttempt] | None:
        """Reconcile one location's complete observed set (a heartbeat, or a backend's poll; a reply
        asks for the next ``interval_ms`` later at the earliest). Returns the attempts to kill there,
        or None when the location is unknown or was declared dead (it must register again)."""
        return self.apply_observations([observation], interval_ms)[0]

    def apply_observations(self, observations: Sequence[Observation], interval_ms: int = 0
                           ) -> list[list[ObservedAttempt] | None]:
        if self._changes.full:  # the disk is full: alive, nothing decided (reconciled when space returns)
            return [self._changes.heard(o.worker_id, interval_ms) for o in observations]
        kills: list[list[ObservedAttempt] | None] = []
        with self._changes.change(quiet=True) as tx:  # nothing to kill and nothing written: no wait for others
            for observation in observations:
                if not tx.state.heartbeat(observation.worker_id, tx.now_ms, interval_ms, tx.mono_ms):
                    kills.append(None)
                    continue
                tx.state.set_unfit(observation.worker_id, observation.unfit, tx.now_ms)
                kills.append(tx.state.reconcile_worker(observation.worker_id, observation.attempts,
                                                       observation.incarnation, observation.sequence, tx.now_ms).kill)
        if any(kills):
            tx.settle()
        return kills

    def report_task_state(self, worker_id: WorkerId, reports: Sequence[TaskReport], unfit: str = ""
                          ) -> list[AttemptRef]:
        return self.report_task_states([(worker_id, reports, unfit)])[0]

    def report_task_states(self, batches: Sequence[tuple[WorkerId, Sequence[TaskReport], str]]) -> list[list[AttemptRef]]:
        """Apply batches of reports, each (a worker, its reports, ``unfit``: what it says of its
        fitness, taken first: a retry is not placed back on an unfit worker), in one change (the
        heartbeat port's arrive together). Stale or duplicate reports are no-ops; a live attempt
        the controller no longer expects is returned in its batch's list, to be killed there."""
        kills: list[list[AttemptRef]] = []
        with self._change() as tx:
            state, now = tx.state, tx.now_ms
            for worker_id, reports, unfit in batches:
                kill: list[AttemptRef] = []
                kills.append(kill)
                self.logs.complete(state, worker_id, reports)
                state.heartbeat(worker_id, now, heard_ms=tx.mono_ms)
                state.set_unfit(worker_id, unfit, now)
                for report in reports:
                    ref = report.ref
                    if report.result and report.state == SUCCEEDED and state.live_attempt(ref, worker_id) is not None:
                        # Kept before the success is committed; a stale or duplicate report's is not the task's.
                        self._bundles.put_result(ref.task_id, ref.attempt_id, report.result)
                    changed = state.apply_report(worker_id, ref.task_id, ref.attempt_id, report.state, now,
                                                 exit_code=report.exit_code, error=report.error, ports=report.ports,
                                                 job_uid=ref.job_uid, busy_ports=report.busy_ports)
                    task = state.get_task(ref.task_id)
                    if changed and report.state == RUNNING and task is not None and task.started_at_ms is not None:
                        self.metrics.observe_wait(task.band, max(0, task.started_at_ms - task.pending_since_ms) / 1000)
                    if not changed and report.state not in TERMINAL_TASK_STATES and state.live_attempt(ref, worker_id) is None:
                        kill.append(ref)
        # The scheduling loop coalesces the wakes of several report batches into one pass.
        return kills

    # ------------------------------------------------------------------ endpoints

    def register_endpoint(self, request: EndpointRequest) -> str:
        endpoint = ControllerEndpoint(endpoint_id=uuid.uuid4().hex[:16], name=request.name, address=request.address,
                                      job_id=JobId(""), metadata=dict(request.metadata), attempt_id=request.attempt_id)
        with self._change() as tx:
            task = tx.state.get_task(request.task_id)
            if task is None:
                raise NotFound(f"task_id: task {request.task_id[:128]!r} not found")
            endpoint.job_id = task.job_id
            if not tx.state.add_endpoint(endpoint, task.task_id):
                raise FailedPrecondition(
                    f"task_id: task {request.task_id} attempt {request.attempt_id} is not running "
                    f"(state {task_state_name(task.state)}, current attempt {task.current_attempt_id})")
        return endpoint.endpoint_id

    def unregister_endpoint(self, endpoint_id: str) -> None:
        with self._change() as tx:
            if tx.state.remove_endpoint(endpoint_id) is None:
                raise NotFound(f"endpoint_id: endpoint {endpoint_id[:128]!r} not found")

    # ------------------------------------------------------------------ logs (``tasklogs.py``)

    def fetch_task_logs(self, query: LogQuery) -> TaskLogPage:
        return self.logs.fetch(query)

    def push_task_logs(self, worker_id: WorkerId, chunks: Sequence[LogChunk]) -> list[int]:
        return self.logs.push(worker_id, chunks)


# ---------------------------------------------------------------------- helpers


def _remove_dirs(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _exit_process() -> None:
    os._exit(70)
