"""The worker daemon: holds task attempts, runs them through a ``Runtime``, and keeps the
controller informed.

Owns:
- the attempts this worker holds (live ones plus a bounded history of finished ones);
- registration (with the complete observed set, ``incarnation`` and ``sequence``) and
  heartbeats, re-registering when the controller forgot us or was unreachable;
- the outbox: every state change is queued, flushed at once by a sender thread (batched,
  coalesced per attempt), retried with capped exponential backoff until acknowledged;
- kills requested by RunTask/KillTask callers or by controller responses;
- per-attempt directories, environment, named ports, GPU assignment, workspace bundles.

Every loop body is a public single-pass method (``register_once``, ``heartbeat_once``,
``flush_outbox_once``); the threads around them are thin. The gRPC edge is ``service.py``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import urllib.parse
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from google.protobuf.message import DecodeError

from iris.cluster.clock import Clock, SystemClock
from iris.cluster.errors import FailedPrecondition, InvalidArgument, NotFound
from iris.cluster.types import (
    BUNDLE_HASH_RE,
    PORT_NAME_RE,
    TERMINAL_TASK_STATES,
    device_count,
    device_kind,
    gpu,
)
from iris.cluster.types import device_to_proto as _device_to_proto
from iris.cluster.worker.cgroups import CgroupLimits
from iris.cluster.worker.gpu import GpuInfo, detect_gpus
from iris.cluster.worker.runtime import (
    PROCESS_RECORD,
    AttemptKey,
    ProcessExit,
    ProcessRuntime,
    ProcessSpec,
    Runtime,
    kill_orphans,
)
from iris.rpc import cluster_pb2, cluster_pb2_grpc

logger = logging.getLogger(__name__)

_LOG_TAIL_LINES = 5
_NO_ENTRYPOINT = cluster_pb2.Entrypoint()


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    controller_address: str
    """host:port of the controller's gRPC service."""
    workdir: Path
    """Attempt directories live in ``workdir/tasks``; bundles are cached in ``workdir/bundles``."""
    worker_id: str = ""
    """Empty: ``w-<random>``."""
    host: str = "127.0.0.1"
    port: int = 0
    """Port for the worker's gRPC service; 0 picks a free one."""
    cpu: int | None = None
    """Cores to advertise; None: detected."""
    memory_bytes: int | None = None
    """Memory to advertise; None: detected."""
    heartbeat_interval_s: float = 1.0
    kill_grace_period_s: float = 5.0
    """Default time between SIGTERM and SIGKILL."""
    launcher_threads: int = 4
    """Threads that prepare and start attempts, so RunTask returns at once."""
    rpc_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    shutdown_flush_timeout_s: float = 5.0
    """On stop, how long to keep trying to deliver the final reports."""
    max_finished_attempts: int = 1000
    """Finished attempts kept for status and logs; older ones (and their directories) are dropped."""
    detect_gpus: bool = True
    use_cgroups: bool = True
    """Limit each task's cpu and memory with a cgroup when a writable one exists (else a watchdog)."""
    attributes: Mapping[str, str] = field(default_factory=dict)


def _kill_entry(status: cluster_pb2.WorkerTaskStatus) -> AttemptKey:
    return (status.task_id, status.attempt_id)


@dataclass(slots=True)
class _Attempt:
    request: cluster_pb2.Worker.RunTaskRequest
    entrypoint: cluster_pb2.Entrypoint
    sequence: int
    attempt_dir: Path
    state: int = cluster_pb2.TASK_STATE_BUILDING
    exit_code: int = 0
    error: str = ""
    started_at_ms: int = 0
    finished_at_ms: int = 0
    pid: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    gpus: list[int] = field(default_factory=list)
    kill_requested: bool = False
    kill_grace_s: float = 0.0
    process_started: bool = False

    @property
    def key(self) -> AttemptKey:
        return (self.request.task_id, self.request.attempt_id)

    @property
    def log_path(self) -> Path:
        return self.attempt_dir / "output.log"

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_TASK_STATES

    def to_proto(self) -> cluster_pb2.WorkerTaskStatus:
        status = cluster_pb2.WorkerTaskStatus(
            task_id=self.request.task_id,
            attempt_id=self.request.attempt_id,
            state=self.state,  # type: ignore[arg-type]
            exit_code=self.exit_code,
            started_at_ms=self.started_at_ms,
            finished_at_ms=self.finished_at_ms,
            pid=self.pid,
        )
        if self.error:
            status.error = self.error
        if self.ports:
            status.ports.update(self.ports)
        return status


@dataclass(frozen=True, slots=True)
class LogChunk:
    lines: list[str]
    next_line: int
    attempt_finished: bool
    attempt_id: int


def escape_task_id(task_id: str) -> str:
    """A task id as one directory name ("job/task-0" -> "job%2Ftask-0")."""
    return urllib.parse.quote(task_id, safe="")


def attempt_dir_name(task_id: str, attempt_id: int) -> str:
    """The directory of one attempt under ``<workdir>/tasks``: ``job%2Ftask-0.attempt-1``."""
    return f"{escape_task_id(task_id)}.attempt-{attempt_id}"


def process_records(tasks_dir: Path) -> Iterator[Path]:
    """The process records of every attempt directory under ``tasks_dir`` (to find orphans)."""
    return tasks_dir.glob(f"*.attempt-*/{PROCESS_RECORD}")


def _parse_entrypoint(request: cluster_pb2.Worker.RunTaskRequest) -> cluster_pb2.Entrypoint:
    try:
        entrypoint = cluster_pb2.Entrypoint.FromString(request.serialized_entrypoint)
    except DecodeError as e:
        raise InvalidArgument(f"serialized_entrypoint: not a valid iris.cluster.Entrypoint ({e})") from e
    kind = entrypoint.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("serialized_entrypoint: must set command or callable")
    if kind == "command" and not entrypoint.command.argv:
        raise InvalidArgument("serialized_entrypoint.command.argv: must not be empty")
    if kind == "command" and any(not a or "\0" in a for a in entrypoint.command.argv[:1]):
        raise InvalidArgument("serialized_entrypoint.command.argv: argv[0] must be a non-empty program name")
    if kind == "callable" and not entrypoint.callable.pickled:
        raise InvalidArgument("serialized_entrypoint.callable.pickled: must not be empty")
    return entrypoint


def validate_run_task(request: cluster_pb2.Worker.RunTaskRequest) -> cluster_pb2.Entrypoint:
    """Check a RunTask request; returns its parsed entrypoint or raises InvalidArgument."""
    if not request.task_id or "\0" in request.task_id:
        raise InvalidArgument("task_id: must be a non-empty string")
    if not request.job_id:
        raise InvalidArgument("job_id: must be a non-empty string")
    if request.attempt_id < 0:
        raise InvalidArgument(f"attempt_id: must be >= 0, got {request.attempt_id}")
    if request.task_index < 0:
        raise InvalidArgument(f"task_index: must be >= 0, got {request.task_index}")
    if request.num_tasks < 0:
        raise InvalidArgument(f"num_tasks: must be >= 0, got {request.num_tasks}")
    if request.resources.cpu < 0:
        raise InvalidArgument(f"resources.cpu: must be >= 0, got {request.resources.cpu}")
    if request.resources.memory_bytes < 0:
        raise InvalidArgument(f"resources.memory_bytes: must be >= 0, got {request.resources.memory_bytes}")
    if request.bundle_hash and not BUNDLE_HASH_RE.match(request.bundle_hash):
        raise InvalidArgument("bundle_hash: must be the sha256 hex digest of the bundle (64 lowercase hex digits)")
    seen: set[str] = set()
    for name in request.ports:
        if not PORT_NAME_RE.match(name):
            raise InvalidArgument(f"ports: {name!r} is not a valid name (letters, digits and '_')")
        if name.upper() in seen:
            raise InvalidArgument(f"ports: {name!r} is requested twice")
        seen.add(name.upper())
    for key in request.environment.env_vars:
        if not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"environment.env_vars: {key!r} is not a valid variable name")
    return _parse_entrypoint(request)


# ---------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------


class Worker:
    """See the module docstring. Start with ``start(address)``, stop with ``stop()``."""

    def __init__(
        self,
        config: WorkerConfig,
        clock: Clock | None = None,
        runtime: Runtime | None = None,
        gpus: list[GpuInfo] | None = None,
    ) -> None:
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._owns_runtime = runtime is None
        self.worker_id = config.worker_id or f"w-{secrets.token_hex(4)}"
        if runtime is None:
            limits = CgroupLimits.detect(self.worker_id) if config.use_cgroups else None
            logger.info("task limits: %s", limits or "memory watchdog (no writable cgroup)")
            runtime = ProcessRuntime(limits=limits)
        self._runtime: Runtime = runtime
        self.incarnation = secrets.token_hex(8)
        self._workdir = Path(config.workdir)
        self._tasks_dir = self._workdir / "tasks"
        self._bundles_dir = self._workdir / "bundles"
        self._gpus: list[GpuInfo] = (
            gpus if gpus is not None else (detect_gpus() if config.detect_gpus else [])
        )
        self.address = ""
        self._started_at = self._clock.monotonic()

        self._lock = threading.Lock()
        self._attempts: dict[AttemptKey, _Attempt] = {}
        self._newest: dict[str, int] = {}
        self._finished_order: deque[AttemptKey] = deque()
        self._sequence = 0
        self._stopping = False
        self._ports_in_use: set[int] = set()
        self._free_gpus: list[int] = [g.index for g in self._gpus]
        self._attempt_done = threading.Condition(self._lock)

        self._outbox_lock = threading.Lock()
        self._outbox: dict[AttemptKey, cluster_pb2.WorkerTaskStatus] = {}
        self._inflight: dict[AttemptKey, cluster_pb2.WorkerTaskStatus] = {}
        self._outbox_event = threading.Event()
        self._outbox_idle = threading.Condition(self._outbox_lock)

        self._registered = False
        self._controller_reachable = True
        self._unreachable_count = 0
        """Failed controller calls so far; a success that started before a failure is stale."""
        self._bundle_locks: dict[str, threading.Lock] = {}
        self._base_env = dict(os.environ)

        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._launcher = ThreadPoolExecutor(
            max_workers=config.launcher_threads, thread_name_prefix="iris-launch"
        )
        # Bundles can be large (the client caps them at 25 MiB by default; the controller at 100 MiB).
        self._channel = grpc.insecure_channel(
            config.controller_address,
            options=[("grpc.max_receive_message_length", 256 * 1024 * 1024),
                     ("grpc.max_send_message_length", 256 * 1024 * 1024)],
        )
        self._controller = cluster_pb2_grpc.ControllerServiceStub(self._channel)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, address: str, run_loops: bool = True) -> None:
        """Clean up after a previous incarnation, register, and start the heartbeat and outbox
        threads (``run_loops=False`` leaves driving them to the caller, e.g. tests)."""
        self.address = address
        self._cleanup_previous_incarnation()
        self._tasks_dir.mkdir(parents=True, exist_ok=True)
        self._bundles_dir.mkdir(parents=True, exist_ok=True)
        self.register_once()
        if run_loops:
            for name, target in (
                ("iris-worker-heartbeat", self._heartbeat_loop),
                ("iris-worker-outbox", self._outbox_loop),
            ):
                thread = threading.Thread(target=target, name=name)
                thread.start()
                self._threads.append(thread)
        logger.info(
            "worker started worker=%s address=%s incarnation=%s", self.worker_id, address, self.incarnation
        )

    def stop(self, kill_tasks: bool = True) -> None:
        """Refuse new tasks, kill the running ones, deliver their final reports (bounded), stop
        threads. Idempotent."""
        with self._lock:
            if self._stop_event.is_set():
                return
            self._stopping = True
            live = [a for a in self._attempts.values() if not a.finished]
        if kill_tasks:
            grace = self._config.kill_grace_period_s
            for attempt in live:
                self.kill_task(attempt.request.task_id, attempt.request.attempt_id, grace)
            self._launcher.shutdown(wait=True)
            self._wait_attempts_finished(grace + 5.0)
        else:
            self._launcher.shutdown(wait=True)
        if self._threads:
            self._wait_outbox_drained(self._config.shutdown_flush_timeout_s)
        self._stop_event.set()
        self._outbox_event.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._owns_runtime:
            self._runtime.close()
        self._channel.close()
        logger.info("worker stopped worker=%s", self.worker_id)

    # Shutdown waits are bounded in real time (Condition timeouts), not by the injected clock,
    # so a FakeClock cannot make them spin or hang.
    def _wait_attempts_finished(self, timeout_s: float) -> None:
        with self._attempt_done:
            self._attempt_done.wait_for(lambda: all(a.finished for a in self._attempts.values()), timeout_s)

    def _wait_outbox_drained(self, timeout_s: float) -> None:
        with self._outbox_idle:
            if not self._outbox_idle.wait_for(lambda: not self._outbox and not self._inflight, timeout_s):
                logger.warning("undelivered reports at shutdown: %d", len(self._outbox) + len(self._inflight))

    def _cleanup_previous_incarnation(self) -> None:
        if not self._tasks_dir.exists():
            return
        kill_orphans(process_records(self._tasks_dir))
        trash = self._workdir / f"tasks.old-{self.incarnation}"
        try:
            self._tasks_dir.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError:
            logger.warning("could not clear old task directories in %s", self._tasks_dir)

    # -- metadata -----------------------------------------------------------------------------

    def metadata(self) -> cluster_pb2.WorkerMetadata:
        cpu_count = self._config.cpu if self._config.cpu is not None else (os.cpu_count() or 1)
        memory = (
            self._config.memory_bytes
            if self._config.memory_bytes is not None
            else psutil.virtual_memory().total
        )
        try:
            disk = shutil.disk_usage(self._workdir if self._workdir.exists() else Path.cwd()).free
        except OSError:
            disk = 0
        meta = cluster_pb2.WorkerMetadata(
            hostname=socket.gethostname(),
            ip_address=self.address.rsplit(":", 1)[0] if self.address else self._config.host,
            cpu_count=cpu_count,
            memory_bytes=memory,
            disk_bytes=disk,
            attributes=dict(self._config.attributes),
        )
        if self._gpus:
            meta.device.CopyFrom(_device_to_proto(gpu(variant=self._gpus[0].variant, count=len(self._gpus))))
            meta.gpu_count = len(self._gpus)
            meta.gpu_name = self._gpus[0].name
            meta.gpu_memory_mb = self._gpus[0].memory_total_mb
        else:
            meta.device.cpu.SetInParent()
        return meta

    # -- controller: registration and heartbeats ----------------------------------------------

    def observed_set(self) -> tuple[list[cluster_pb2.WorkerTaskStatus], int]:
        """Every attempt held and not finished, plus finished ones whose report is not yet
        acknowledged; and the RunTask sequence number the set covers."""
        # Lock order: _lock, then _outbox_lock (as in _finish), so the two views are consistent.
        with self._lock:
            sequence = self._sequence
            statuses = {a.key: a.to_proto() for a in self._attempts.values() if not a.finished}
            with self._outbox_lock:
                for pending in (self._inflight, self._outbox):
                    for key, status in pending.items():
                        if status.state in TERMINAL_TASK_STATES:
                            statuses[key] = status
        return list(statuses.values()), sequence

    def register_once(self) -> bool:
        """Register with the complete observed set. True when the controller accepted."""
        failures_before = self._unreachable_count
        tasks, sequence = self.observed_set()
        request = cluster_pb2.Controller.RegisterWorkerRequest(
            worker_id=self.worker_id,
            address=self.address,
            metadata=self.metadata(),
            tasks=tasks,
            incarnation=self.incarnation,
            sequence=sequence,
        )
        try:
            response = self._controller.RegisterWorker(request, timeout=self._config.rpc_timeout_s)
        except grpc.RpcError as e:
            self._mark_unreachable(e)
            return False
        if self._unreachable_count == failures_before:
            # A call that failed while this one was in flight is newer news: stay "unreachable", so
            # the next success registers again with the set as it is then.
            self._controller_reachable = True
        self._registered = response.accepted
        logger.info(
            "registered worker=%s accepted=%s tasks=%d", self.worker_id, response.accepted, len(tasks)
        )
        self._apply_kills(response.kill)
        return bool(response.accepted)

    def heartbeat_once(self) -> bool:
        """One heartbeat (or a registration when we are not registered). True when delivered."""
        if not self._registered or not self._controller_reachable:
            return self.register_once()
        tasks, sequence = self.observed_set()
        request = cluster_pb2.Controller.HeartbeatRequest(
            worker_id=self.worker_id, tasks=tasks, incarnation=self.incarnation, sequence=sequence
        )
        try:
            response = self._controller.Heartbeat(request, timeout=self._config.rpc_timeout_s)
        except grpc.RpcError as e:
            self._mark_unreachable(e)
            return False
        self._apply_kills(response.kill)
        if response.reregister:
            logger.info("controller asked to re-register worker=%s", self.worker_id)
            self._registered = False
            return self.register_once()
        return True

    def _mark_unreachable(self, error: grpc.RpcError) -> None:
        if self._controller_reachable:
            logger.warning("controller unreachable worker=%s: %s", self.worker_id, _rpc_error_text(error))
        self._unreachable_count += 1
        self._controller_reachable = False

    def _apply_kills(self, kills: Iterable[cluster_pb2.WorkerTaskStatus]) -> None:
        for entry in kills:
            task_id, attempt_id = _kill_entry(entry)
            logger.info("controller asked to kill task=%s attempt=%d", task_id, attempt_id)
            self.kill_task(task_id, attempt_id, 0.0)

    def _heartbeat_loop(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.heartbeat_once()
            except Exception:
                logger.exception("heartbeat failed worker=%s", self.worker_id)
            if self._clock.wait(self._stop_event, self._config.heartbeat_interval_s):
                return

    # -- outbox -------------------------------------------------------------------------------

    def _report(self, status: cluster_pb2.WorkerTaskStatus) -> None:
        key = (status.task_id, status.attempt_id)
        with self._outbox_lock:
            queued = self._outbox.get(key)
            if queued is not None and queued.state in TERMINAL_TASK_STATES:
                return  # a terminal report is final; nothing may replace it
            self._outbox[key] = status
        self._outbox_event.set()

    def pending_reports(self) -> int:
        """Attempts with a report not yet acknowledged by the controller."""
        with self._outbox_lock:
            return len(self._outbox.keys() | self._inflight.keys())

    def flush_outbox_once(self) -> bool:
        """Send every pending report in one ReportTaskState. True when acknowledged (or nothing
        to send); on failure the batch goes back into the outbox, behind newer states."""
        with self._outbox_lock:
            if not self._outbox:
                return True
            batch = self._outbox
            self._outbox = {}
            self._inflight = batch
        request = cluster_pb2.Controller.ReportTaskStateRequest(
            worker_id=self.worker_id, updates=list(batch.values())
        )
        try:
            response = self._controller.ReportTaskState(request, timeout=self._config.rpc_timeout_s)
        except grpc.RpcError as e:
            with self._outbox_lock:
                merged = dict(self._inflight)
                merged.update(self._outbox)  # a newer state for the same attempt wins
                self._outbox = merged
                self._inflight = {}
            self._mark_unreachable(e)
            return False
        with self._outbox_lock:
            self._inflight = {}
            self._outbox_idle.notify_all()
        if not self._controller_reachable:
            # It is back: it may have lost us (restart), so register with the full set again.
            self._controller_reachable = True
            self._registered = False
            self.register_once()
        self._apply_kills(response.kill)
        return True

    def _outbox_loop(self) -> None:
        backoff = self._config.backoff_initial_s
        while True:
            self._outbox_event.wait()
            if self._stop_event.is_set():
                return
            self._outbox_event.clear()
            try:
                ok = self.flush_outbox_once()
            except Exception:
                logger.exception("outbox flush failed worker=%s", self.worker_id)
                ok = False
            if ok:
                backoff = self._config.backoff_initial_s
                continue
            self._outbox_event.set()  # retry even when nothing new arrives
            if self._clock.wait(self._stop_event, backoff):
                return
            backoff = min(backoff * 2, self._config.backoff_max_s)

    # -- tasks --------------------------------------------------------------------------------

    def run_task(self, request: cluster_pb2.Worker.RunTaskRequest) -> cluster_pb2.Worker.RunTaskResponse:
        """Accept an attempt and hand its start to a launcher thread. Idempotent per attempt.
        Raises InvalidArgument (bad request) or FailedPrecondition (shutting down)."""
        entrypoint = validate_run_task(request)
        with self._lock:
            response, attempt = self._accept_locked(request, entrypoint)
        if attempt is not None:
            self._submit_launch([attempt])
        return response

    def run_tasks(
        self, requests: Iterable[cluster_pb2.Worker.RunTaskRequest]
    ) -> list[cluster_pb2.Worker.RunTaskResponse]:
        """``run_task`` for several attempts in one call: each is accepted or refused on its own
        (a refusal carries its ``error``, and ``worker_stopping`` when the worker is shutting
        down). The accepted ones start in order on one launcher thread."""
        parsed: list[tuple[cluster_pb2.Worker.RunTaskRequest, cluster_pb2.Entrypoint | None, str]] = []
        for request in requests:
            try:
                parsed.append((request, validate_run_task(request), ""))
            except InvalidArgument as e:
                parsed.append((request, None, str(e)))
        responses: list[cluster_pb2.Worker.RunTaskResponse] = []
        started: list[_Attempt] = []
        with self._lock:
            for request, entrypoint, error in parsed:
                if entrypoint is None:
                    responses.append(cluster_pb2.Worker.RunTaskResponse(accepted=False, error=error))
                    continue
                try:
                    response, attempt = self._accept_locked(request, entrypoint)
                except FailedPrecondition as e:
                    response, attempt = (
                        cluster_pb2.Worker.RunTaskResponse(accepted=False, error=str(e), worker_stopping=True),
                        None,
                    )
                responses.append(response)
                if attempt is not None:
                    started.append(attempt)
        if started:
            self._submit_launch(started)
        return responses

    def _accept_locked(
        self, request: cluster_pb2.Worker.RunTaskRequest, entrypoint: cluster_pb2.Entrypoint
    ) -> tuple[cluster_pb2.Worker.RunTaskResponse, _Attempt | None]:
        """Record a validated attempt (or find it again). Returns the response and the attempt to
        launch (None when it was already held)."""
        key: AttemptKey = (request.task_id, request.attempt_id)
        existing = self._attempts.get(key)
        if existing is not None:
            return (
                cluster_pb2.Worker.RunTaskResponse(
                    accepted=True, incarnation=self.incarnation, sequence=existing.sequence
                ),
                None,
            )
        if self._stopping:
            raise FailedPrecondition("worker is shutting down and accepts no new tasks")
        self._sequence += 1
        # Keep the request without its entrypoint (a pickled callable can be large and the
        # attempt stays in the finished history); the parsed entrypoint is dropped at launch.
        stored = cluster_pb2.Worker.RunTaskRequest()
        stored.CopyFrom(request)
        stored.ClearField("serialized_entrypoint")
        attempt = _Attempt(
            request=stored,
            entrypoint=entrypoint,
            sequence=self._sequence,
            attempt_dir=self._tasks_dir / attempt_dir_name(request.task_id, request.attempt_id),
        )
        if request.resources.HasField("device") and device_kind(request.resources.device) == "gpu":
            wanted_gpus = device_count(request.resources.device)
            attempt.gpus = self._free_gpus[:wanted_gpus]
            del self._free_gpus[: len(attempt.gpus)]
        if request.ports:
            attempt.ports = {name: self._allocate_port_locked() for name in request.ports}
        self._attempts[key] = attempt
        newest = self._newest.get(request.task_id)
        if newest is None or request.attempt_id >= newest:
            self._newest[request.task_id] = request.attempt_id
        sequence = self._sequence
        logger.debug("accepted task=%s attempt=%d seq=%d", request.task_id, request.attempt_id, sequence)
        return (
            cluster_pb2.Worker.RunTaskResponse(accepted=True, incarnation=self.incarnation, sequence=sequence),
            attempt,
        )

    def _submit_launch(self, attempts: list[_Attempt]) -> None:
        """Start ``attempts`` on the launcher threads: one work item for the batch (one thread
        handoff, not one per task), except that an attempt with a workspace bundle gets its own
        (fetching a bundle may take a while and must not hold up the others)."""
        plain = [a for a in attempts if not a.request.bundle_hash]
        items = [[a] for a in attempts if a.request.bundle_hash]
        if plain:
            items.insert(0, plain)
        for item in items:
            try:
                self._launcher.submit(self._launch_all, item)
            except RuntimeError:  # launcher shut down between the check and the submit
                for attempt in item:
                    self._finish(attempt, cluster_pb2.TASK_STATE_KILLED, error="worker is shutting down")

    def _launch_all(self, attempts: list[_Attempt]) -> None:
        for attempt in attempts:
            self._launch(attempt)

    def _allocate_port_locked(self) -> int:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self._ports_in_use:
                self._ports_in_use.add(port)
                return port

    def _launch(self, attempt: _Attempt) -> None:
        try:
            self._launch_unchecked(attempt)
        except Exception as e:
            logger.exception("failed to start task=%s attempt=%d", *attempt.key)
            self._finish(attempt, cluster_pb2.TASK_STATE_FAILED, error=f"failed to start: {e}")

    def _launch_unchecked(self, attempt: _Attempt) -> None:
        request = attempt.request
        if attempt.kill_requested:
            self._finish(attempt, cluster_pb2.TASK_STATE_KILLED, error="killed before it started")
            return
        work_dir = attempt.attempt_dir / "work"
        _make_attempt_dirs(str(attempt.attempt_dir), str(work_dir))
        env = self._task_env(attempt)
        if request.bundle_hash:
            self._report(attempt.to_proto())  # BUILDING while the workspace is fetched
            try:
                self._install_bundle(request.bundle_hash, work_dir)
            except Exception as e:
                self._finish(
                    attempt, cluster_pb2.TASK_STATE_FAILED, error=f"bundle {request.bundle_hash}: {e}"
                )
                return
            existing = env.get("PYTHONPATH")
            env["PYTHONPATH"] = f"{work_dir}{os.pathsep}{existing}" if existing else str(work_dir)
        if attempt.entrypoint.WhichOneof("kind") == "callable":
            pickle_path = attempt.attempt_dir / "callable.pkl"
            pickle_path.write_bytes(attempt.entrypoint.callable.pickled)
            argv = [
                sys.executable,
                "-m",
                "iris.cluster.worker.callable_runner",
                str(pickle_path),
                str(attempt.attempt_dir / "error.txt"),
            ]
        else:
            argv = list(attempt.entrypoint.command.argv)
        attempt.entrypoint = _NO_ENTRYPOINT
        spec = ProcessSpec(
            key=attempt.key,
            argv=argv,
            cwd=work_dir,
            env=env,
            log_path=attempt.log_path,
            memory_limit_bytes=request.resources.memory_bytes,
            cpu_limit=request.resources.cpu,
            record_path=attempt.attempt_dir / PROCESS_RECORD,
        )
        with self._lock:
            if attempt.kill_requested:
                killed_early = True
            else:
                killed_early = False
                attempt.started_at_ms = self._clock.now_ms()
        if killed_early:
            self._finish(attempt, cluster_pb2.TASK_STATE_KILLED, error="killed before it started")
            return
        try:
            pid = self._runtime.start(spec, lambda exit_info: self._on_exit(attempt, exit_info))
        except OSError as e:
            self._finish(
                attempt,
                cluster_pb2.TASK_STATE_FAILED,
                exit_code=127 if isinstance(e, FileNotFoundError) else 126,
                error=f"failed to start {argv[0]!r}: {e}",
            )
            return
        with self._lock:
            attempt.pid = pid
            attempt.process_started = True
            kill_now = attempt.kill_requested
            # Queued under the lock so a fast exit's terminal report is always queued after it.
            # (If it already exited, the terminal report is queued and RUNNING is skipped.)
            if not attempt.finished:
                attempt.state = cluster_pb2.TASK_STATE_RUNNING
                self._report(attempt.to_proto())
        if kill_now:
            self._runtime.kill(attempt.key, attempt.kill_grace_s)
        logger.debug("started task=%s attempt=%d pid=%d", request.task_id, request.attempt_id, pid)

    def _task_env(self, attempt: _Attempt) -> dict[str, str]:
        request = attempt.request
        env = dict(self._base_env)
        env.update(request.environment.env_vars)
        env.update(
            {
                "IRIS_JOB_ID": request.job_id,
                "IRIS_TASK_ID": request.task_id,
                "IRIS_TASK_INDEX": str(request.task_index),
                "IRIS_NUM_TASKS": str(request.num_tasks or 1),
                "IRIS_ATTEMPT_ID": str(request.attempt_id),
                "IRIS_WORKER_ID": self.worker_id,
                "IRIS_CONTROLLER_ADDRESS": self._config.controller_address,
                "IRIS_BUNDLE_HASH": request.bundle_hash,
            }
        )
        for name, port in attempt.ports.items():
            env[f"IRIS_PORT_{name.upper()}"] = str(port)
        if self._gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in attempt.gpus)
        return env

    def _on_exit(self, attempt: _Attempt, exit_info: ProcessExit) -> None:
        code = exit_info.returncode
        if attempt.kill_requested:
            self._finish(attempt, cluster_pb2.TASK_STATE_KILLED, exit_code=code, error="killed")
        elif exit_info.limit_error:
            self._finish(attempt, cluster_pb2.TASK_STATE_FAILED, exit_code=code, error=exit_info.limit_error)
        elif code == 0:
            self._finish(attempt, cluster_pb2.TASK_STATE_SUCCEEDED)
        else:
            self._finish(
                attempt,
                cluster_pb2.TASK_STATE_FAILED,
                exit_code=code,
                error=self._failure_error(attempt, code),
            )

    def _failure_error(self, attempt: _Attempt, code: int) -> str:
        error_file = attempt.attempt_dir / "error.txt"
        if error_file.exists():
            try:
                return error_file.read_text(errors="replace")
            except OSError:
                pass
        if code < 0:
            try:
                head = f"killed by signal {code * -1} ({os_signal_name(-code)})"
            except ValueError:
                head = f"killed by signal {-code}"
        else:
            head = f"exit code {code}"
        tail = _log_tail(attempt.log_path, _LOG_TAIL_LINES)
        return f"{head}; last output:\n{tail}" if tail else head

    def _finish(self, attempt: _Attempt, state: int, exit_code: int = 0, error: str = "") -> None:
        evicted: list[Path] = []
        with self._lock:
            if attempt.finished:
                return
            attempt.state = state
            attempt.exit_code = exit_code
            attempt.error = error
            attempt.finished_at_ms = self._clock.now_ms()
            self._ports_in_use.difference_update(attempt.ports.values())
            self._free_gpus.extend(attempt.gpus)
            self._free_gpus.sort()
            self._finished_order.append(attempt.key)
            while len(self._finished_order) > self._config.max_finished_attempts:
                old_key = self._finished_order.popleft()
                old = self._attempts.pop(old_key, None)
                if old is not None:
                    evicted.append(old.attempt_dir)
                    if self._newest.get(old_key[0]) == old_key[1]:
                        del self._newest[old_key[0]]
            # Queued under the attempt lock: observed_set() must never see the attempt finished
            # but its terminal report not yet in the outbox (it would look lost).
            self._report(attempt.to_proto())
            self._attempt_done.notify_all()
        # Successes are the hot path (hundreds per second): INFO only for the ones worth reading.
        level = logging.DEBUG if state == cluster_pb2.TASK_STATE_SUCCEEDED else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "task=%s attempt=%d state=%s exit_code=%d",
                attempt.request.task_id,
                attempt.request.attempt_id,
                cluster_pb2.TaskState.Name(state),  # type: ignore[arg-type]
                exit_code,
            )
        for path in evicted:
            shutil.rmtree(path, ignore_errors=True)
            try:
                path.parent.rmdir()
            except OSError:
                pass

    def kill_task(self, task_id: str, attempt_id: int, grace_period_s: float = 0.0) -> None:
        """Kill one attempt (SIGTERM, SIGKILL after the grace; 0: the worker's default).
        Unknown or finished attempts are ignored."""
        grace = grace_period_s if grace_period_s > 0 else self._config.kill_grace_period_s
        with self._lock:
            attempt = self._attempts.get((task_id, attempt_id))
            if attempt is None or attempt.finished:
                return
            attempt.kill_requested = True
            attempt.kill_grace_s = grace
            started = attempt.process_started
        if started:
            self._runtime.kill((task_id, attempt_id), grace)
        # Not started yet: the launcher sees kill_requested and reports KILLED without starting.

    # -- queries ------------------------------------------------------------------------------

    def _get_attempt_locked(self, task_id: str, attempt_id: int | None) -> _Attempt:
        if attempt_id is None:
            newest = self._newest.get(task_id)
            if newest is None:
                raise NotFound(f"task_id: no attempt of {task_id!r} on this worker")
            attempt_id = newest
        attempt = self._attempts.get((task_id, attempt_id))
        if attempt is None:
            raise NotFound(f"attempt_id: attempt {attempt_id} of {task_id!r} is not on this worker")
        return attempt

    def task_status(self, task_id: str, attempt_id: int | None = None) -> cluster_pb2.WorkerTaskStatus:
        with self._lock:
            return self._get_attempt_locked(task_id, attempt_id).to_proto()

    def list_tasks(self) -> list[cluster_pb2.WorkerTaskStatus]:
        with self._lock:
            return [a.to_proto() for a in self._attempts.values()]

    def running_count(self) -> int:
        with self._lock:
            return sum(1 for a in self._attempts.values() if not a.finished)

    def uptime_ms(self) -> int:
        return int((self._clock.monotonic() - self._started_at) * 1000)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def fetch_logs(
        self, task_id: str, attempt_id: int | None = None, start_line: int = 0, max_lines: int = 0
    ) -> LogChunk:
        """Lines ``[start_line, start_line + max_lines)`` of an attempt's combined output. While
        the attempt runs, an unterminated last line is held back until it is complete."""
        if start_line < 0:
            raise InvalidArgument(f"start_line: must be >= 0, got {start_line}")
        if max_lines < 0:
            raise InvalidArgument(f"max_lines: must be >= 0, got {max_lines}")
        limit = min(max_lines or 1000, 10000)
        with self._lock:
            attempt = self._get_attempt_locked(task_id, attempt_id)
            finished = attempt.finished
            log_path = attempt.log_path
            found_attempt_id = attempt.request.attempt_id
        lines: list[str] = []
        try:
            with open(log_path, encoding="utf-8", errors="replace", newline="") as f:
                for index, line in enumerate(f):
                    if index < start_line:
                        continue
                    if len(lines) >= limit:
                        break
                    if not line.endswith("\n") and not finished:
                        break
                    lines.append(line.rstrip("\r\n"))
        except FileNotFoundError:
            pass
        return LogChunk(
            lines=lines,
            next_line=start_line + len(lines),
            attempt_finished=finished,
            attempt_id=found_attempt_id,
        )

    # -- bundles ------------------------------------------------------------------------------

    def _install_bundle(self, bundle_hash: str, dest: Path) -> None:
        path = self._bundle_path(bundle_hash)
        with zipfile.ZipFile(path) as archive:
            archive.extractall(dest)

    def _bundle_path(self, bundle_hash: str) -> Path:
        """The cached zip for a hash, fetched from the controller once per hash. Concurrent
        callers in this process wait on a per-hash lock; the file appears atomically (rename),
        so other processes sharing the workdir never see a partial bundle."""
        bundle_hash = bundle_hash.lower()
        path = self._bundles_dir / f"{bundle_hash}.zip"
        with self._lock:
            lock = self._bundle_locks.setdefault(bundle_hash, threading.Lock())
        with lock:
            if path.exists():
                return path
            response = self._controller.FetchBundle(
                cluster_pb2.Controller.FetchBundleRequest(bundle_hash=bundle_hash),
                timeout=max(self._config.rpc_timeout_s, 60.0),
            )
            digest = hashlib.sha256(response.blob).hexdigest()
            if len(bundle_hash) == 64 and digest != bundle_hash:
                raise ValueError(f"fetched bundle has sha256 {digest}, expected {bundle_hash}")
            self._bundles_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(response.blob)
            os.replace(tmp, path)
            return path


def _make_attempt_dirs(attempt_dir: str, work_dir: str) -> None:
    """Create ``tasks/<task>.attempt-<n>/work`` with one mkdir per level (no stat calls, no pathlib).

    The layout is flat (no directory per task) because creating an inode is the dominant cost of
    starting a task on a busy ext4 disk."""
    try:
        os.mkdir(attempt_dir)
    except FileExistsError:
        pass
    except FileNotFoundError:  # the tasks directory itself is gone
        os.makedirs(work_dir, exist_ok=True)
        return
    try:
        os.mkdir(work_dir)
    except FileExistsError:
        pass


def os_signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _log_tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _rpc_error_text(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)
