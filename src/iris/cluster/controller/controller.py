"""The controller shell: owns the state, the store, the clock, the worker clients and the threads.

Decisions are made in the pure core (``state.py``, ``scheduler.py``); this module applies them:

- One lock covers "apply a change to the state, drain its effects, write them to the store". No RPC
  and no process call runs under it.
- Scheduling runs when woken (a submit, a report, a worker registering, a task ending) and on a
  fallback timer for scheduling timeouts. Dispatch (``RunTask``) goes through a bounded thread pool
  with a per-call deadline, never on the scheduling thread and never under the lock. A dispatch
  the worker did not accept is a worker failure of that attempt.
- Every task the core ends while its process may still run gets a ``KillTask`` on its worker.
- Liveness is time-based (``tick_health``); heartbeats are reconciled level-triggered.

Every loop body is a public single-pass ``tick_*`` method so tests drive it with a ``FakeClock``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import grpc

from iris.cluster.clock import Clock, SystemClock
from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.scheduler import Scheduler
from iris.cluster.controller.state import (
    ControllerEndpoint,
    ControllerState,
    ControllerWorker,
    Effects,
    KillInstruction,
    ObservedAttempt,
)
from iris.cluster.controller.task import Task
from iris.cluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from iris.cluster.types import (
    BUNDLE_HASH_RE,
    ENV_NAME_RE,
    JOB_NAME_RE,
    PORT_NAME_RE,
    TERMINAL_TASK_STATES,
    JobId,
    TaskId,
    WorkerId,
    child_job_id,
    task_state_name,
)
from iris.rpc import cluster_pb2, cluster_pb2_grpc

logger = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class ControllerConfig:
    worker_timeout_s: float = 10.0
    """A worker not heard from for this long is declared dead (DESIGN §3)."""
    schedule_interval_s: float = 0.5
    """Fallback scheduling timer; scheduling is otherwise woken by events."""
    health_interval_s: float = 0.5
    dispatch_timeout_s: float = 10.0
    """Deadline of one RunTask call."""
    kill_timeout_s: float = 5.0
    kill_grace_period_s: float = 5.0
    """SIGTERM, then SIGKILL after this long (passed to the worker)."""
    log_fetch_timeout_s: float = 10.0
    dispatch_threads: int = 16
    dispatch_batch_max_tasks: int = 128
    dispatch_batch_max_bytes: int = 1024 * 1024
    """A scheduling pass sends each worker its tasks in RunTasks calls of at most this many tasks
    and entrypoint bytes (a single task goes alone, as RunTask)."""
    max_dispatch_failures: int = 3
    """Failed RunTask calls in a row after which a worker is declared dead."""
    max_replicas: int = 100_000
    max_entrypoint_bytes: int = 16 * 1024 * 1024
    max_bundle_bytes: int = 100 * 1024 * 1024


class WorkerClients(Protocol):
    """How the controller calls workers. ``GrpcWorkerClients`` in production, a fake in tests."""

    def run_tasks(
        self, address: str, request: cluster_pb2.Worker.RunTasksRequest, timeout: float
    ) -> cluster_pb2.Worker.RunTasksResponse: ...

    def kill_task(self, address: str, request: cluster_pb2.Worker.KillTaskRequest, timeout: float) -> None: ...

    def fetch_logs(
        self, address: str, request: cluster_pb2.Worker.FetchTaskLogsRequest, timeout: float
    ) -> cluster_pb2.Worker.FetchTaskLogsResponse: ...

    def close(self) -> None: ...


class GrpcWorkerClients:
    """One cached gRPC channel per worker address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, cluster_pb2_grpc.WorkerServiceStub] = {}

    def _stub(self, address: str) -> cluster_pb2_grpc.WorkerServiceStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = grpc.insecure_channel(address)
                self._channels[address] = channel
                stub = self._stubs[address] = cluster_pb2_grpc.WorkerServiceStub(channel)
            return stub

    def run_tasks(
        self, address: str, request: cluster_pb2.Worker.RunTasksRequest, timeout: float
    ) -> cluster_pb2.Worker.RunTasksResponse:
        return self._stub(address).RunTasks(request, timeout=timeout)

    def kill_task(self, address: str, request: cluster_pb2.Worker.KillTaskRequest, timeout: float) -> None:
        self._stub(address).KillTask(request, timeout=timeout)

    def fetch_logs(
        self, address: str, request: cluster_pb2.Worker.FetchTaskLogsRequest, timeout: float
    ) -> cluster_pb2.Worker.FetchTaskLogsResponse:
        return self._stub(address).FetchTaskLogs(request, timeout=timeout)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()


class StateStore(Protocol):
    """Durable storage for the state (``store.ControllerStore``)."""

    def write(self, state: ControllerState, effects: Effects) -> None: ...

    def put_bundle(self, blob: bytes) -> str: ...

    def get_bundle(self, bundle_hash: str) -> bytes | None: ...

    def close(self) -> None: ...


class MemoryBundles:
    """Bundle storage for a controller without a store (tests)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put_bundle(self, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        self._blobs[digest] = blob
        return digest

    def get_bundle(self, bundle_hash: str) -> bytes | None:
        return self._blobs.get(bundle_hash)


@dataclass(frozen=True, slots=True)
class _Dispatch:
    task_id: TaskId
    attempt_id: int
    worker_id: WorkerId
    address: str
    request: cluster_pb2.Worker.RunTaskRequest


@dataclass(frozen=True, slots=True)
class ScheduleSummary:
    assigned: int
    timed_out: int
    pending: int


class Controller:
    def __init__(
        self,
        config: ControllerConfig | None = None,
        *,
        state: ControllerState | None = None,
        store: StateStore | None = None,
        clock: Clock | None = None,
        worker_clients: WorkerClients | None = None,
        address: str = "",
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.config = config or ControllerConfig()
        self._state = state or ControllerState()
        self._store = store
        self._bundles: MemoryBundles | StateStore = store if store is not None else MemoryBundles()
        self._clock: Clock = clock or SystemClock()
        self._workers: WorkerClients = worker_clients or GrpcWorkerClients()
        self._scheduler = Scheduler(self._state)
        self._request_templates: dict[JobId, cluster_pb2.Worker.RunTaskRequest] = {}
        """Per job, the RunTaskRequest fields all its tasks share (used under the lock)."""
        self._lock = threading.RLock()
        self._wake_event = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=self.config.dispatch_threads, thread_name_prefix="dispatch")
        self.address = address
        """The controller's own address."""
        self._on_fatal = on_fatal or _exit_process

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> ControllerState:
        return self._state

    @property
    def lock(self) -> threading.RLock:
        """Held while building a view from several objects, so it is consistent (never across I/O)."""
        return self._lock

    @property
    def clock(self) -> Clock:
        return self._clock

    def now_ms(self) -> int:
        return self._clock.now_ms()

    def start(self) -> None:
        """Start the scheduling and health loops."""
        for name, target in (("scheduling", self._run_scheduling), ("health", self._run_health)):
            thread = threading.Thread(target=target, args=(self._stop,), name=f"controller-{name}")
            thread.start()
            self._threads.append(thread)
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self._wake_event.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._workers.close()
        with self._lock:
            if self._store is not None:
                self._store.close()

    def wake(self) -> None:
        """Ask the scheduling loop for a pass now."""
        self._wake_event.set()

    def _run_scheduling(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake_event.wait(self.config.schedule_interval_s)
            self._wake_event.clear()
            if stop.is_set():
                return
            try:
                self.tick_schedule()
            except Exception:
                logger.exception("scheduling pass failed")
                self._clock.wait(stop, 0.5)

    def _run_health(self, stop: threading.Event) -> None:
        while not self._clock.wait(stop, self.config.health_interval_s):
            try:
                self.tick_health()
            except Exception:
                logger.exception("health pass failed")

    # ------------------------------------------------------------------ the lock and effects

    def _commit(self) -> Effects:
        """Drain the core's effects and persist them. Call with the lock held."""
        effects = self._state.drain_effects()
        if self._store is not None and not effects.is_empty():
            try:
                self._store.write(self._state, effects)
            except Exception:
                # Memory is now ahead of disk and the change was not acknowledged durably: serving on
                # would break "acknowledged means durable". Stop; a restart reloads the last good state.
                logger.critical("could not persist state; the controller stops", exc_info=True)
                self._on_fatal()
                raise
        return effects

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
            request = cluster_pb2.Worker.KillTaskRequest(
                task_id=kill.task_id, attempt_id=kill.attempt_id, grace_period_seconds=self.config.kill_grace_period_s
            )
            self._pool.submit(self._kill_one, worker.address, request)

    def _kill_one(self, address: str, request: cluster_pb2.Worker.KillTaskRequest) -> None:
        try:
            self._workers.kill_task(address, request, self.config.kill_timeout_s)
        except grpc.RpcError as e:
            # The next heartbeat reconcile kills it: the attempt is no longer expected there.
            logger.warning("KillTask task=%s attempt=%s at %s failed: %s", request.task_id, request.attempt_id,
                           address, _rpc_error_text(e))

    # ------------------------------------------------------------------ jobs

    def launch_job(self, request: cluster_pb2.Controller.LaunchJobRequest) -> JobId:
        """Validate and accept a job. Raises IrisError subclasses; a rejected request changes nothing."""
        _validate_launch_request(request, self.config)
        request = _copy_request(request)
        if request.bundle_blob:
            if len(request.bundle_blob) > self.config.max_bundle_bytes:
                raise InvalidArgument(
                    f"bundle_blob: {len(request.bundle_blob)} bytes exceeds the limit of {self.config.max_bundle_bytes}"
                )
            digest = hashlib.sha256(request.bundle_blob).hexdigest()
            if request.bundle_hash and request.bundle_hash != digest:
                raise InvalidArgument(f"bundle_hash: does not match the sha256 of bundle_blob ({digest})")
        with self._lock:
            if request.parent_job_id:
                parent = self._state.get_job(JobId(request.parent_job_id))
                if parent is None:
                    raise NotFound(f"parent_job_id: job {request.parent_job_id!r} not found")
                if parent.is_finished():
                    raise FailedPrecondition(f"parent_job_id: job {request.parent_job_id!r} has already ended")
                job_id = child_job_id(parent.job_id, request.name)
                if not request.bundle_hash and not request.bundle_blob and parent.bundle_hash:
                    request.bundle_hash = parent.bundle_hash  # child jobs reuse their parent's workspace
            else:
                job_id = JobId(request.name)
            if self._state.get_job(job_id) is not None:
                raise AlreadyExists(f"name: job {job_id!r} already exists")
            if request.bundle_blob:
                request.bundle_hash = self._bundles.put_bundle(request.bundle_blob)
                request.bundle_blob = b""  # kept once, content-addressed; not in every job's memory
            elif request.bundle_hash and self._bundles.get_bundle(request.bundle_hash) is None:
                raise InvalidArgument(f"bundle_hash: no bundle {request.bundle_hash} is stored; send bundle_blob")
            now = self._clock.now_ms()
            job = Job(job_id, request, now)
            self._state.add_job(job, expand_job_to_tasks(job, now))
            effects = self._commit()
        logger.info("job submitted job=%s tasks=%d", job_id, job.num_tasks)
        self._after_commit(effects)
        return job_id

    def terminate_job(self, job_id: JobId) -> bool:
        with self._lock:
            if self._state.get_job(job_id) is None:
                raise NotFound(f"job_id: job {job_id!r} not found")
            changed = self._state.terminate_job(job_id, self._clock.now_ms())
            effects = self._commit()
        self._after_commit(effects)
        return changed

    def get_job(self, job_id: JobId) -> Job:
        job = self._state.get_job(job_id)
        if job is None:
            raise NotFound(f"job_id: job {job_id!r} not found")
        return job

    def get_task(self, job_id: JobId, task_index: int) -> Task:
        tasks = self._state.get_job_tasks(self.get_job(job_id).job_id)
        if not 0 <= task_index < len(tasks):
            raise NotFound(f"task_index: job {job_id!r} has no task {task_index} (it has {len(tasks)})")
        return tasks[task_index]

    def get_bundle(self, bundle_hash: str) -> bytes:
        blob = self._bundles.get_bundle(bundle_hash)
        if blob is None:
            raise NotFound(f"bundle_hash: no bundle {bundle_hash!r}")
        return blob

    # ------------------------------------------------------------------ scheduling

    def tick_schedule(self) -> ScheduleSummary:
        """One scheduling pass: time out, assign, commit; then dispatch outside the lock."""
        with self._lock:
            dispatches, summary = self._schedule_locked()
            if summary is None:
                return ScheduleSummary(0, 0, 0)
            effects = self._commit()
        self._start_dispatches(dispatches)
        if effects.kills:
            self._send_kills(effects.kills)
        return summary

    def _schedule_locked(self) -> tuple[list[_Dispatch], ScheduleSummary | None]:
        """The scheduling pass without its commit (the caller commits it, possibly together with
        the changes that prompted it). Call with the lock held. ``None``: nothing was pending."""
        dispatches: list[_Dispatch] = []
        pending = self._state.peek_pending_tasks()
        if not pending:
            return dispatches, None
        now = self._clock.now_ms()
        tx = self._scheduler.find_assignments(pending, self._state.get_available_workers(), now)
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
                dispatches.append(
                    _Dispatch(task.task_id, task.current_attempt_id, worker.worker_id, worker.address,
                              self._run_task_request(job, task))
                )
        self._state.set_pending_reasons(reasons)
        return dispatches, ScheduleSummary(len(dispatches), len(tx.timed_out_tasks), len(pending) - len(dispatches))

    def _start_dispatches(self, dispatches: list[_Dispatch]) -> None:
        """Hand committed assignments to the dispatch pool: one RunTasks per worker (per batch)."""
        for batch in self._dispatch_batches(dispatches):
            self._pool.submit(self._dispatch_batch, batch)

    def _run_task_request(self, job: Job, task: Task) -> cluster_pb2.Worker.RunTaskRequest:
        """The job's part of the request is built once per job (a template copied in one call);
        only the task's fields are set per task."""
        template = self._request_templates.get(job.job_id)
        if template is None:
            request = job.request
            template = cluster_pb2.Worker.RunTaskRequest(
                job_id=job.job_id,
                num_tasks=job.num_tasks,
                serialized_entrypoint=request.serialized_entrypoint,
                environment=request.environment,
                bundle_hash=job.bundle_hash or request.bundle_hash,
                resources=request.resources,
                ports=request.ports,
            )
            if len(self._request_templates) >= 64:
                self._request_templates.clear()
            self._request_templates[job.job_id] = template
        run = cluster_pb2.Worker.RunTaskRequest()
        run.CopyFrom(template)
        run.task_id = task.task_id
        run.task_index = task.task_index
        run.attempt_id = task.current_attempt_id
        return run

    def _dispatch_batches(self, dispatches: list[_Dispatch]) -> list[list[_Dispatch]]:
        """Group a pass's dispatches per worker (in assignment order), split by the batch limits."""
        per_worker: dict[WorkerId, list[list[_Dispatch]]] = {}
        sizes: dict[WorkerId, int] = {}
        max_tasks = self.config.dispatch_batch_max_tasks
        max_bytes = self.config.dispatch_batch_max_bytes
        for d in dispatches:
            size = len(d.request.serialized_entrypoint)
            chunks = per_worker.setdefault(d.worker_id, [])
            if not chunks or len(chunks[-1]) >= max_tasks or sizes[d.worker_id] + size > max_bytes:
                chunks.append([])
                sizes[d.worker_id] = 0
            chunks[-1].append(d)
            sizes[d.worker_id] += size
        return [chunk for chunks in per_worker.values() for chunk in chunks]

    def _dispatch_batch(self, batch: list[_Dispatch]) -> None:
        """One RunTasks call for several tasks on one worker. Each task the worker did not accept
        (refused, or the call failed) is a worker failure of that attempt, as with RunTask; a failed
        call counts as one failed dispatch toward ``max_dispatch_failures``."""
        first = batch[0]
        call_error: str | None = None
        call_worker_gone = False
        results: list[cluster_pb2.Worker.RunTaskResponse] = []
        try:
            response = self._workers.run_tasks(
                first.address,
                cluster_pb2.Worker.RunTasksRequest(tasks=[d.request for d in batch]),
                self.config.dispatch_timeout_s,
            )
            results = list(response.results)
            if len(results) != len(batch):
                call_error = (f"dispatch to worker {first.worker_id} failed: {len(results)} results for "
                              f"{len(batch)} tasks")
        except grpc.RpcError as e:
            call_error = f"dispatch to worker {first.worker_id} failed: {_rpc_error_text(e)}"
            call_worker_gone = e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
        except Exception as e:  # a bug in a fake or client must not leave the tasks stuck RUNNING
            logger.exception("dispatch of %d tasks to %s crashed", len(batch), first.worker_id)
            call_error = f"dispatch to worker {first.worker_id} failed: {e}"
        if call_error is not None:
            logger.warning("%d tasks (first %s): %s", len(batch), first.task_id, call_error)
        failed = False
        with self._lock:
            now = self._clock.now_ms()
            for i, d in enumerate(batch):
                if call_error is not None:
                    self._state.dispatch_failed(
                        d.task_id, d.attempt_id, now, call_error, worker_gone=call_worker_gone,
                        max_consecutive_failures=self.config.max_dispatch_failures,
                        count_failure=i == len(batch) - 1,
                    )
                    failed = True
                    continue
                result = results[i]
                if result.accepted:
                    self._state.ack_dispatch(d.task_id, d.attempt_id, result.incarnation, result.sequence)
                    continue
                error = f"worker {d.worker_id} refused the task" + (f": {result.error}" if result.error else "")
                logger.warning("task=%s attempt=%d: %s", d.task_id, d.attempt_id, error)
                self._state.dispatch_failed(d.task_id, d.attempt_id, now, error,
                                            worker_gone=result.worker_stopping,
                                            max_consecutive_failures=self.config.max_dispatch_failures)
                failed = True
            effects = self._commit() if failed else None
        if effects is not None:
            self._after_commit(effects)

    # ------------------------------------------------------------------ workers

    def tick_health(self) -> list[WorkerId]:
        """Declare workers dead that were not heard from within ``worker_timeout_s``."""
        with self._lock:
            now = self._clock.now_ms()
            dead = self._state.find_dead_workers(now, int(self.config.worker_timeout_s * 1000))
            for worker_id in dead:
                logger.warning("worker %s not heard from for %.1fs: declared dead", worker_id,
                               self.config.worker_timeout_s)
                self._state.mark_worker_dead(
                    worker_id, now, reason=f"not heard from for {self.config.worker_timeout_s:g}s"
                )
            effects = self._commit()
        self._after_commit(effects)
        return dead

    def register_worker(
        self, request: cluster_pb2.Controller.RegisterWorkerRequest
    ) -> cluster_pb2.Controller.RegisterWorkerResponse:
        if not request.worker_id:
            raise InvalidArgument("worker_id: must not be empty")
        if not request.address or ":" not in request.address:
            raise InvalidArgument(f"address: expected HOST:PORT, got {request.address!r}")
        if request.metadata.cpu_count < 0 or request.metadata.memory_bytes < 0:
            raise InvalidArgument("metadata: cpu_count and memory_bytes must be >= 0")
        observed = _observed(request.tasks)
        with self._lock:
            now = self._clock.now_ms()
            worker = ControllerWorker(
                worker_id=WorkerId(request.worker_id),
                address=request.address,
                metadata=request.metadata,
                last_heartbeat_ms=now,
                registered_at_ms=now,
                incarnation=request.incarnation,
            )
            self._state.add_worker(worker)
            self._state.log_action("worker_registered", now_ms=now, worker_id=request.worker_id,
                                   details=request.address)
            result = self._state.reconcile_worker(worker.worker_id, observed, request.incarnation,
                                                  request.sequence, now)
            effects = self._commit()
        logger.info("worker registered worker=%s address=%s", request.worker_id, request.address)
        self._after_commit(effects)
        self.wake()
        return cluster_pb2.Controller.RegisterWorkerResponse(accepted=True, kill=[_status(a) for a in result.kill])

    def heartbeat(self, request: cluster_pb2.Controller.HeartbeatRequest) -> cluster_pb2.Controller.HeartbeatResponse:
        if not request.worker_id:
            raise InvalidArgument("worker_id: must not be empty")
        observed = _observed(request.tasks)
        with self._lock:
            now = self._clock.now_ms()
            worker_id = WorkerId(request.worker_id)
            if not self._state.heartbeat(worker_id, now):
                return cluster_pb2.Controller.HeartbeatResponse(reregister=True)
            result = self._state.reconcile_worker(worker_id, observed, request.incarnation, request.sequence, now)
            effects = self._commit()
        self._after_commit(effects)
        return cluster_pb2.Controller.HeartbeatResponse(kill=[_status(a) for a in result.kill])

    def report_task_state(
        self, request: cluster_pb2.Controller.ReportTaskStateRequest
    ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        """Apply a batch of reports from one worker. Stale or duplicate reports are no-ops; a live
        attempt the controller no longer expects is sent back to be killed."""
        if not request.worker_id:
            raise InvalidArgument("worker_id: must not be empty")
        for i, update in enumerate(request.updates):
            if not update.task_id:
                raise InvalidArgument(f"updates[{i}].task_id: must not be empty")
            if update.state not in cluster_pb2.TaskState.values():
                raise InvalidArgument(f"updates[{i}].state: unknown task state {update.state}")
        kill: list[cluster_pb2.WorkerTaskStatus] = []
        worker_id = WorkerId(request.worker_id)
        with self._lock:
            now = self._clock.now_ms()
            self._state.heartbeat(worker_id, now)
            for update in request.updates:
                task_id = TaskId(update.task_id)
                changed = self._state.apply_report(
                    worker_id, task_id, update.attempt_id, update.state, now,
                    exit_code=update.exit_code, error=update.error or None,
                )
                if not changed and update.state not in TERMINAL_TASK_STATES:
                    task = self._state.get_task(task_id)
                    if task is None or task.current_attempt_id != update.attempt_id or task.worker_id != worker_id \
                            or task.is_finished():
                        kill.append(cluster_pb2.WorkerTaskStatus(task_id=update.task_id,
                                                                 attempt_id=update.attempt_id))
            effects = self._commit()
        # Wakes the scheduling loop, which coalesces the wakes of several report batches into one
        # pass (running the pass here, per batch, was measured slower).
        self._after_commit(effects)
        return cluster_pb2.Controller.ReportTaskStateResponse(kill=kill)

    # ------------------------------------------------------------------ endpoints

    def register_endpoint(self, request: cluster_pb2.Controller.RegisterEndpointRequest) -> str:
        if not request.name:
            raise InvalidArgument("name: must not be empty")
        if not request.address:
            raise InvalidArgument("address: must not be empty")
        with self._lock:
            task = self._state.get_task(TaskId(request.task_id))
            if task is None:
                raise NotFound(f"task_id: task {request.task_id!r} not found")
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
                raise NotFound(f"endpoint_id: endpoint {endpoint_id!r} not found")
            effects = self._commit()
        self._after_commit(effects)

    def lookup_endpoint(self, name: str) -> ControllerEndpoint:
        found = self._state.lookup_endpoints(name)
        if not found:
            raise NotFound(f"name: no endpoint named {name!r}")
        return found[0]

    # ------------------------------------------------------------------ logs

    def fetch_task_logs(
        self, request: cluster_pb2.Controller.FetchTaskLogsRequest
    ) -> cluster_pb2.Controller.FetchTaskLogsResponse:
        task = self._state.get_task(TaskId(request.task_id))
        if task is None:
            raise NotFound(f"task_id: task {request.task_id!r} not found")
        if request.start_line < 0 or request.max_lines < 0:
            raise InvalidArgument("start_line and max_lines: must be >= 0")
        with self._lock:
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
        if worker_id is None:
            return cluster_pb2.Controller.FetchTaskLogsResponse(attempt_id=attempt_id, attempt_finished=False,
                                                                next_line=request.start_line)
        if worker is None:
            raise Unavailable(f"logs of attempt {attempt_id} are on worker {worker_id}, which is unknown")
        try:
            reply = self._workers.fetch_logs(
                worker.address,
                cluster_pb2.Worker.FetchTaskLogsRequest(
                    task_id=task.task_id, attempt_id=attempt_id, start_line=request.start_line,
                    max_lines=request.max_lines,
                ),
                self.config.log_fetch_timeout_s,
            )
        except grpc.RpcError as e:
            raise Unavailable(
                f"logs of attempt {attempt_id} are on worker {worker_id}, which did not answer: {_rpc_error_text(e)}"
            ) from e
        return cluster_pb2.Controller.FetchTaskLogsResponse(
            lines=reply.lines,
            next_line=reply.next_line,
            attempt_finished=reply.attempt_finished or attempt_finished,
            attempt_id=attempt_id,
        )


# ---------------------------------------------------------------------- helpers


def _exit_process() -> None:
    os._exit(70)


def _rpc_error_text(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{code.name if code is not None else 'ERROR'}: {details}"


def _observed(tasks: Sequence[cluster_pb2.WorkerTaskStatus]) -> list[ObservedAttempt]:
    return [
        ObservedAttempt(TaskId(t.task_id), t.attempt_id, t.state, exit_code=t.exit_code, error=t.error or None)
        for t in tasks
    ]


def _status(attempt: ObservedAttempt) -> cluster_pb2.WorkerTaskStatus:
    return cluster_pb2.WorkerTaskStatus(task_id=attempt.task_id, attempt_id=attempt.attempt_id, state=attempt.state)  # type: ignore[arg-type]


def _copy_request(request: cluster_pb2.Controller.LaunchJobRequest) -> cluster_pb2.Controller.LaunchJobRequest:
    copy = cluster_pb2.Controller.LaunchJobRequest()
    copy.CopyFrom(request)
    return copy


def _validate_launch_request(request: cluster_pb2.Controller.LaunchJobRequest, config: ControllerConfig) -> None:
    """Field rules of LaunchJob. Raises InvalidArgument naming the field and the rule."""
    if not request.name:
        raise InvalidArgument("name: must not be empty")
    if not JOB_NAME_RE.match(request.name):
        raise InvalidArgument(
            f"name: {request.name!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if request.parent_job_id and len(request.parent_job_id) > 1024:
        raise InvalidArgument("parent_job_id: longer than 1024 characters")
    res = request.resources
    if res.replicas < 0:
        raise InvalidArgument(f"resources.replicas: must be >= 0, got {res.replicas}")
    if res.replicas > config.max_replicas:
        raise InvalidArgument(f"resources.replicas: must be <= {config.max_replicas}, got {res.replicas}")
    if res.cpu < 0:
        raise InvalidArgument(f"resources.cpu: must be >= 0, got {res.cpu}")
    if res.memory_bytes < 0:
        raise InvalidArgument(f"resources.memory_bytes: must be >= 0, got {res.memory_bytes}")
    if res.disk_bytes < 0:
        raise InvalidArgument(f"resources.disk_bytes: must be >= 0, got {res.disk_bytes}")
    kind = res.device.WhichOneof("device")
    if kind == "gpu" and res.device.gpu.count < 0:
        raise InvalidArgument(f"resources.device.gpu.count: must be >= 0, got {res.device.gpu.count}")
    if kind == "tpu" and res.device.tpu.count < 0:
        raise InvalidArgument(f"resources.device.tpu.count: must be >= 0, got {res.device.tpu.count}")
    for field_name in ("max_task_failures", "max_retries_failure"):
        if getattr(request, field_name) < 0:
            raise InvalidArgument(f"{field_name}: must be >= 0, got {getattr(request, field_name)}")
    if request.HasField("max_retries_preemption") and request.max_retries_preemption < 0:
        raise InvalidArgument(f"max_retries_preemption: must be >= 0, got {request.max_retries_preemption}")
    timeout = request.scheduling_timeout_seconds
    if math.isnan(timeout) or timeout < 0 or math.isinf(timeout):
        raise InvalidArgument(f"scheduling_timeout_seconds: must be a finite number >= 0, got {timeout}")
    if len(request.serialized_entrypoint) > config.max_entrypoint_bytes:
        raise InvalidArgument(
            f"serialized_entrypoint: {len(request.serialized_entrypoint)} bytes exceeds the limit of "
            f"{config.max_entrypoint_bytes}"
        )
    try:
        entrypoint = cluster_pb2.Entrypoint.FromString(request.serialized_entrypoint)
    except Exception as e:
        raise InvalidArgument(f"serialized_entrypoint: not a valid iris.cluster.Entrypoint: {e}") from e
    which = entrypoint.WhichOneof("kind")
    if which is None:
        raise InvalidArgument("serialized_entrypoint: must hold a command or a callable")
    if which == "command" and (not entrypoint.command.argv or not entrypoint.command.argv[0]):
        raise InvalidArgument("serialized_entrypoint.command.argv: must not be empty")
    if which == "callable" and not entrypoint.callable.pickled:
        raise InvalidArgument("serialized_entrypoint.callable.pickled: must not be empty")
    seen: set[str] = set()
    for port in request.ports:
        if not PORT_NAME_RE.match(port):
            raise InvalidArgument(f"ports: {port!r} must be an identifier (letters, digits, '_')")
        if port.upper() in seen:
            raise InvalidArgument(f"ports: {port!r} is listed twice")
        seen.add(port.upper())
    for key in request.environment.env_vars:
        if not ENV_NAME_RE.match(key):
            raise InvalidArgument(f"environment.env_vars: {key!r} is not a valid variable name")
    if request.bundle_hash and not BUNDLE_HASH_RE.match(request.bundle_hash):
        raise InvalidArgument("bundle_hash: must be a sha256 hex digest")
