"""The worker daemon: the shell around the attempt state machine.

The pieces, each in its own module:

- ``attempts.AttemptMachine`` (pure): the lifecycle of every attempt, events in and instructions
  out; the single source of what the worker holds and of its observed set;
- ``link.ControllerLink``: registration, heartbeats and the outbox of reports;
- ``prepare.AttemptPreparer``: attempt directories, workspace bundles, environment, ports, argv;
- ``runtime.Runtime``: the processes (``ProcessRuntime``: process groups, cgroups, SIGTERM/SIGKILL);
- ``hardware``: what the worker offers; ``logs``: log pages by byte offset.

``Worker`` feeds events to the machine under one lock and carries out the instructions it gets
back: reports are queued under that lock (so a report can never overtake the one before it),
everything slow (preparing, starting, killing, removing directories) happens after it is
released, on the caller's thread or a launcher thread. Requests are checked by
``iris.cluster.validation``, the same rules the controller applied.

Every loop body is a public single-pass method (``register_once``, ``heartbeat_once``,
``flush_outbox_once``); the threads around them are thin. The gRPC edge is ``service.py``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from iris.cluster.addresses import advertise_host, is_wildcard
from iris.cluster.clock import Clock, SystemClock
from iris.cluster.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from iris.cluster.logfile import DEFAULT_LOG_CAP_BYTES, Record
from iris.cluster.spec import Entrypoint
from iris.cluster.types import BUNDLE_HASH_RE, device_count, device_kind
from iris.cluster.validation import DEFAULT_LIMITS, Limits, validate_run_task
from iris.cluster.worker import attempts as am
from iris.cluster.worker.attempts import AttemptKey, AttemptMachine, AttemptStatus, WorkerStopping
from iris.cluster.worker.cgroups import CgroupLimits
from iris.cluster.worker.gpu import GpuInfo, detect_gpus
from iris.cluster.worker.hardware import probe_metadata
from iris.cluster.worker.link import ControllerLink, LinkConfig, status_proto
from iris.cluster.worker.prepare import (
    DEFAULT_MAX_BUNDLE_FILES,
    DEFAULT_MAX_BUNDLE_UNPACKED_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    AttemptPreparer,
    PreparationError,
    PreparerConfig,
    attempt_dir_name,
    escape_task_id,
    process_records,
)
from iris.cluster.worker.pyenv import find_uv
from iris.cluster.worker.runtime import ProcessExit, ProcessRuntime, Runtime, kill_orphans
from iris.rpc import cluster_pb2
from iris.rpc.tls import channel_credentials

logger = logging.getLogger(__name__)

_LOG_TAIL_LINES = 5

__all__ = [
    "LogChunk",
    "Worker",
    "WorkerConfig",
    "attempt_dir_name",
    "escape_task_id",
    "process_records",
]


CREDENTIAL_FILE = "credential"
"""The worker's own credential, in its workdir (mode 0600)."""
_WORKER_SECRETS = ("IRIS_JOIN_TOKEN", "IRIS_TOKEN")
"""The worker's credentials in its own environment: never passed on to a task."""


SIGNAL_SETTLE_S = 2.0
"""How long a task's death by SIGTERM/SIGKILL/SIGHUP/SIGINT waits to see whether its worker is being
stopped by the same signal (both die together when a batch system cancels the allocation)."""
_SHUTDOWN_SIGNALS = frozenset({-signal.SIGTERM, -signal.SIGKILL, -signal.SIGHUP, -signal.SIGINT})


def _task_base_env(tls_ca: Path | None = None) -> dict[str, str]:
    """The worker's environment minus its secrets; with TLS, the CA that verifies the controller
    (so a task's client reaches the controller as the worker does)."""
    env = {k: v for k, v in os.environ.items() if k not in _WORKER_SECRETS}
    # A task's `python` is the worker's own interpreter (which can import iris), whatever PATH the
    # worker was started with (`.venv/bin/iris worker serve` without `uv run` or an activated venv).
    bin_dir = os.path.dirname(sys.executable)
    path = env.get("PATH", os.defpath)
    if bin_dir and path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = bin_dir + os.pathsep + path
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    if tls_ca is not None:
        env["IRIS_TLS_CA"] = str(tls_ca.resolve())
    return env


def _log_failure(future: Future[None]) -> None:
    """A launcher thread's exception is logged, never lost."""
    if not future.cancelled() and future.exception() is not None:
        logger.error("attempt launch failed", exc_info=future.exception())


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    controller_address: str
    """host:port of the controller's gRPC service."""
    workdir: Path
    """Attempt directories live in ``workdir/tasks``; bundles are cached in ``workdir/bundles``."""
    worker_id: str = ""
    """Empty: ``w-<random>``."""
    host: str = "127.0.0.1"
    """Address the worker's gRPC service binds, and tasks are told to bind (IRIS_BIND_HOST)."""
    port: int = 0
    """Port for the worker's gRPC service; 0 picks a free one."""
    advertise_host: str | None = None
    """What other hosts dial for this worker and its tasks (IRIS_ADVERTISE_HOST); None: the bound
    address, or the host's primary address when bound to 0.0.0.0 (``iris.cluster.addresses``)."""
    cpu: float | None = None
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
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    """The job rules the worker checks (the controller's, so it refuses nothing the controller took)."""
    join_token: str = ""
    """The cluster's join token (``--join-token-file`` / ``$IRIS_JOIN_TOKEN``); empty: no authentication
    (a controller run with ``--auth none``)."""
    tls_ca: Path | None = None
    """Verify the controller's certificate against this CA (None: plaintext)."""
    max_bundle_unpacked_bytes: int = DEFAULT_MAX_BUNDLE_UNPACKED_BYTES
    max_bundle_files: int = DEFAULT_MAX_BUNDLE_FILES
    task_user: str | None = None
    """Run tasks as this user (the worker must be root), so a task cannot read the worker's files."""
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    """The largest pickled return value of a callable task (``--max-result-size``)."""
    max_log_bytes: int = DEFAULT_LOG_CAP_BYTES
    """One attempt's log keeps at most this much: its first and last halves (``--max-log-size``)."""
    log_ship_interval_s: float = 1.0
    """How often running attempts' new log lines are shipped to the controller."""
    uv: str | None = None
    """The uv binary for jobs with ``uv.lock`` or ``--with`` (None: ``$UV``, PATH, beside Python)."""
    uv_offline: bool = False
    """Build task environments from uv's cache only (``--offline-envs``)."""


@dataclass(frozen=True, slots=True)
class LogChunk:
    lines: list[Record]
    next_line: int
    attempt_finished: bool
    attempt_id: int
    next_offset: int = 0


@dataclass(slots=True)
class _Held:
    """What the shell keeps for one attempt beside the machine's record."""

    request: cluster_pb2.Worker.RunTaskRequest
    """Without its entrypoint (a pickled callable can be large)."""
    entrypoint: Entrypoint | None


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
        self.advertise_host = advertise_host(config.host, config.advertise_host)
        if runtime is None:
            limits = CgroupLimits.detect(self.worker_id) if config.use_cgroups else None
            logger.info("task limits: %s", limits or "memory watchdog (no writable cgroup)")
            runtime = ProcessRuntime(limits=limits)
        self._runtime: Runtime = runtime
        self.incarnation = secrets.token_hex(8)
        self._workdir = Path(config.workdir)
        self._gpus: list[GpuInfo] = gpus if gpus is not None else (detect_gpus() if config.detect_gpus else [])
        self._started_at = self._clock.monotonic()

        self._lock = threading.Lock()
        self._machine = AttemptMachine(gpus=[g.index for g in self._gpus], max_finished=config.max_finished_attempts)
        self._held: dict[AttemptKey, _Held] = {}
        self._attempt_done = threading.Condition(self._lock)
        self._logs_shipped: dict[AttemptKey, int] = {}
        """Per attempt: the log offset the controller holds up to."""
        self._logs_done: set[AttemptKey] = set()
        self._log_claims: dict[AttemptKey, int] = {}
        """Ended attempts whose report carries their log's size: done once it is acknowledged."""
        """Attempts whose whole log the controller has (or keeps none of)."""

        self._link = ControllerLink(
            LinkConfig(config.controller_address, config.rpc_timeout_s, config.backoff_initial_s,
                       config.backoff_max_s, join_token=config.join_token,
                       credential_path=self._workdir / CREDENTIAL_FILE,
                       channel_credentials=channel_credentials(config.tls_ca) if config.tls_ca else None),
            self._clock,
            worker_id=self.worker_id,
            incarnation=self.incarnation,
            observed=self._observed,
            metadata=self.metadata,
            on_kill=lambda key, job_uid: self.kill_task(key[0], key[1], 0.0, job_uid),
            on_acknowledged=self._acknowledged,
            result_of=self._result_of,
            on_forget=self._forget_deleted,
            before_end_reports=self._ship_ended_logs,
        )
        self._preparer = AttemptPreparer(
            PreparerConfig(self._workdir, self.worker_id, config.controller_address, _task_base_env(config.tls_ca),
                           has_gpus=bool(self._gpus),
                           bind_host="0.0.0.0" if is_wildcard(config.host) else config.host,
                           advertise_host=self.advertise_host,
                           max_bundle_unpacked_bytes=config.max_bundle_unpacked_bytes,
                           max_bundle_files=config.max_bundle_files, task_user=config.task_user,
                           max_result_bytes=config.max_result_bytes, max_log_bytes=config.max_log_bytes,
                           uv=find_uv(config.uv), uv_offline=config.uv_offline),
            self._fetch_bundle,
        )
        self._stop_event = threading.Event()
        self._leaving = threading.Event()
        """Set by ``begin_stop``/``stop``: the worker is going away."""
        self._stopping_recorded = threading.Event()
        """Set once the attempt machine knows it is stopping (its running attempts end as stopped)."""
        self._threads: list[threading.Thread] = []
        self._launcher = ThreadPoolExecutor(max_workers=config.launcher_threads, thread_name_prefix="iris-launch")

    @property
    def address(self) -> str:
        return self._link.address

    def _result_of(self, key: AttemptKey) -> bytes:
        """A succeeded callable attempt's pickled return value (b"": none)."""
        try:
            return self._preparer.result_path(key).read_bytes()
        except OSError:
            return b""

    def check_addressee(self, worker_id: str) -> None:
        """A request the controller addressed to another worker (this address was that worker's
        before a restart, or many simulated workers share it) is refused: FailedPrecondition, which
        the controller takes as "that worker is gone"."""
        if worker_id and worker_id != self.worker_id:
            raise FailedPrecondition(f"worker_id: the request is for worker {worker_id[:128]!r}; this is worker "
                                     f"{self.worker_id!r}")

    def check_caller(self, token: str | None) -> None:
        """Only the controller may call a worker that takes part in authentication: its calls carry
        the credential it gave us at registration. Raises Unauthenticated otherwise."""
        if not self._link.auth:
            return
        expected = self._link.controller_token
        if not token or not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            raise Unauthenticated("this worker runs only what its controller sends (missing or wrong credential)")

    # -- the machine --------------------------------------------------------------------------

    def _handle(self, event: am.Event) -> list[am.Instruction]:
        """Feed one event to the machine; queue its reports under the lock, return the rest."""
        with self._lock:
            return self._handle_locked(event)

    def _handle_locked(self, event: am.Event) -> list[am.Instruction]:
        out: list[am.Instruction] = []
        for instruction in self._machine.handle(event):
            if isinstance(instruction, am.Report):
                self._link.report(instruction.status)
                if instruction.status.finished:
                    self._attempt_done.notify_all()
            else:
                out.append(instruction)
        return out

    def _carry_out(self, instructions: Iterable[am.Instruction]) -> None:
        """Act on the machine's instructions, outside the lock (Start is handled by ``_launch``)."""
        for instruction in instructions:
            if isinstance(instruction, am.Kill):
                self._runtime.kill(instruction.key, instruction.grace_s)
            elif isinstance(instruction, am.Release):
                if instruction.ports:
                    self._preparer.release_ports(instruction.ports)
                self._preparer.release(instruction.key)
            elif isinstance(instruction, am.Discard):
                with self._lock:
                    self._held.pop(instruction.key, None)
                    self._logs_shipped.pop(instruction.key, None)
                    self._logs_done.discard(instruction.key)
                    self._log_claims.pop(instruction.key, None)
                self._preparer.discard(instruction.key)
            elif isinstance(instruction, am.Prepare):
                self._submit_launch([instruction.key])

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, address: str, run_loops: bool = True) -> None:
        """Clean up after a previous incarnation, register, and start the heartbeat and outbox
        threads (``run_loops=False`` leaves driving them to the caller, e.g. tests)."""
        self._link.address = address
        self._cleanup_previous_incarnation()
        self._preparer.tasks_dir.mkdir(parents=True, exist_ok=True)
        self._preparer.bundles_dir.mkdir(parents=True, exist_ok=True)
        self.register_once()
        if run_loops:
            for name, target, args in (
                ("iris-worker-heartbeat", self._link.heartbeat_loop,
                 (self._stop_event, self._config.heartbeat_interval_s)),
                ("iris-worker-outbox", self._link.outbox_loop, (self._stop_event,)),
                ("iris-worker-logs", self._ship_logs_loop, (self._stop_event,)),
            ):
                thread = threading.Thread(target=target, args=args, name=name)
                thread.start()
                self._threads.append(thread)
        logger.info("worker started worker=%s address=%s incarnation=%s", self.worker_id, address, self.incarnation)

    def stop(self, kill_tasks: bool = True) -> None:
        """Refuse new tasks, kill the running ones, deliver their final reports (bounded), stop
        threads. Idempotent."""
        grace = self._config.kill_grace_period_s
        self._leaving.set()
        with self._lock:
            if self._stop_event.is_set():
                return
            instructions = self._handle_stop_locked(grace, kill_tasks)
        self._stopping_recorded.set()
        self._link.leave()
        if kill_tasks:
            self._carry_out(instructions)
            self._launcher.shutdown(wait=True)
            self._wait_attempts_finished(grace + 5.0)
        else:
            self._launcher.shutdown(wait=True)
        if self._threads:
            self._link.wait_drained(self._config.shutdown_flush_timeout_s)
        self._stop_event.set()
        self._link.outbox_event.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._owns_runtime:
            self._runtime.close()
        self._link.close()
        logger.info("worker stopped worker=%s", self.worker_id)

    def _handle_stop_locked(self, grace: float, kill_tasks: bool) -> list[am.Instruction]:
        out: list[am.Instruction] = []
        for instruction in self._machine.stop(grace, kill=kill_tasks):
            if isinstance(instruction, am.Report):
                self._link.report(instruction.status)
            else:
                out.append(instruction)
        return out

    # Shutdown waits are bounded in real time (Condition timeouts), not by the injected clock,
    # so a FakeClock cannot make them spin or hang.
    def _wait_attempts_finished(self, timeout_s: float) -> None:
        with self._attempt_done:
            self._attempt_done.wait_for(self._machine.all_finished, timeout_s)

    def _cleanup_previous_incarnation(self) -> None:
        tasks_dir = self._preparer.tasks_dir
        if not tasks_dir.exists():
            return
        kill_orphans(process_records(tasks_dir))
        trash = self._workdir / f"tasks.old-{self.incarnation}"
        try:
            tasks_dir.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError:
            logger.warning("could not clear old task directories in %s", tasks_dir)

    # -- the controller -----------------------------------------------------------------------

    def metadata(self) -> cluster_pb2.WorkerMetadata:
        return probe_metadata(
            address=self.address, host=self.advertise_host, workdir=self._workdir, cpu=self._config.cpu,
            memory_bytes=self._config.memory_bytes, gpus=self._gpus, attributes=self._config.attributes,
        )

    def _observed(self) -> tuple[list[AttemptStatus], int]:
        with self._lock:
            return self._machine.observed(), self._machine.sequence

    def observed_set(self) -> tuple[list[cluster_pb2.WorkerTaskStatus], int]:
        """Every attempt held and not finished, plus finished ones whose report is not yet
        acknowledged; and the RunTask sequence number the set covers."""
        statuses, sequence = self._observed()
        return [status_proto(s) for s in statuses], sequence

    def _acknowledged(self, statuses: list[AttemptStatus]) -> None:
        with self._lock:
            for status in statuses:
                if self._log_claims.pop(status.key, None) is not None:
                    self._logs_done.add(status.key)  # the report completed its log at the controller
        instructions = self._handle(am.ReportsAcknowledged(tuple((s.key, s.state) for s in statuses)))
        self._carry_out(instructions)

    def register_once(self) -> bool:
        return self._link.register_once()

    def heartbeat_once(self) -> bool:
        return self._link.heartbeat_once()

    def flush_outbox_once(self) -> bool:
        return self._link.flush_once()

    def pending_reports(self) -> int:
        return self._link.pending_reports()

    def _fetch_bundle(self, bundle_hash: str) -> bytes:
        response = self._link.stub.FetchBundle(
            cluster_pb2.Controller.FetchBundleRequest(bundle_hash=bundle_hash), metadata=self._link.metadata(),
            timeout=max(self._config.rpc_timeout_s, 60.0),
        )
        return bytes(response.blob)

    # -- tasks --------------------------------------------------------------------------------

    def run_task(self, request: cluster_pb2.Worker.RunTaskRequest) -> cluster_pb2.Worker.RunTaskResponse:
        """Accept an attempt and hand its start to a launcher thread. Idempotent per attempt.
        Raises InvalidArgument (bad request) or FailedPrecondition (shutting down)."""
        entrypoint = validate_run_task(request, self._config.limits)
        response, key = self._accept(request, entrypoint)
        if key is not None:
            self._submit_launch([key])
        return response

    def run_tasks(
        self, requests: Iterable[cluster_pb2.Worker.RunTaskRequest]
    ) -> list[cluster_pb2.Worker.RunTaskResponse]:
        """``run_task`` for several attempts in one call: each is accepted or refused on its own
        (a refusal carries its ``error``, and ``worker_stopping`` when the worker is shutting
        down). The accepted ones start in order on one launcher thread."""
        responses: list[cluster_pb2.Worker.RunTaskResponse] = []
        started: list[AttemptKey] = []
        for request in requests:
            try:
                entrypoint = validate_run_task(request, self._config.limits)
                response, key = self._accept(request, entrypoint)
            except InvalidArgument as e:
                responses.append(cluster_pb2.Worker.RunTaskResponse(accepted=False, error=str(e)))
                continue
            except FailedPrecondition as e:
                responses.append(cluster_pb2.Worker.RunTaskResponse(accepted=False, error=str(e),
                                                                    worker_stopping=True))
                continue
            responses.append(response)
            if key is not None:
                started.append(key)
        if started:
            self._submit_launch(started)
        return responses

    def _accept(
        self, request: cluster_pb2.Worker.RunTaskRequest, entrypoint: Entrypoint
    ) -> tuple[cluster_pb2.Worker.RunTaskResponse, AttemptKey | None]:
        """Record a validated attempt (or find it again). Returns the response and the attempt to
        launch (None when it was already held)."""
        key: AttemptKey = (request.task_id, request.attempt_id)
        gpus = 0
        if request.resources.HasField("device") and device_kind(request.resources.device) == "gpu":
            gpus = device_count(request.resources.device)
        with self._lock:
            existing = self._machine.attempts.get(key)
            if existing is not None and existing.job_uid != request.job_uid and request.job_uid:
                # The same task id and attempt of another job incarnation (a deleted job's name
                # reused): an ended one is forgotten; a live one still runs here.
                if not self._machine.forget(key):
                    raise InvalidArgument(f"task_id: attempt {key[1]} of an earlier job named like {key[0]!r} is "
                                          "still stopping on this worker")
                self._held.pop(key, None)
                self._logs_shipped.pop(key, None)
                self._logs_done.discard(key)
                self._log_claims.pop(key, None)
                # Under the lock (a rare path): nothing may read the old attempt's files as the new one's.
                self._preparer.discard(key)
                existing = None
            if existing is not None:
                return self._accepted(existing.sequence), None
            if self._machine.stopping:
                raise FailedPrecondition("worker is shutting down and accepts no new tasks")
            ports = self._preparer.allocate_ports(request.ports) if request.ports else {}
            try:
                self._handle_locked(am.Accepted(key, gpus, ports, request.job_uid))
            except WorkerStopping as e:
                self._preparer.release_ports(ports.values())
                raise FailedPrecondition(str(e)) from None
            stored = cluster_pb2.Worker.RunTaskRequest()
            stored.CopyFrom(request)
            stored.ClearField("serialized_entrypoint")
            self._held[key] = _Held(stored, entrypoint)
            sequence = self._machine.attempts[key].sequence
        logger.debug("accepted task=%s attempt=%d seq=%d", key[0], key[1], sequence)
        return self._accepted(sequence), key

    def _accepted(self, sequence: int) -> cluster_pb2.Worker.RunTaskResponse:
        return cluster_pb2.Worker.RunTaskResponse(accepted=True, incarnation=self.incarnation, sequence=sequence)

    def _submit_launch(self, keys: Sequence[AttemptKey]) -> None:
        """Start attempts on the launcher threads: one work item for a batch (one thread handoff,
        not one per task), except that an attempt with a workspace bundle gets its own (fetching
        it may take a while and must not hold up the others)."""
        with self._lock:
            with_bundle = {k for k in keys if k in self._held and self._held[k].request.bundle_hash}
        plain = [k for k in keys if k not in with_bundle]
        items = [[k] for k in keys if k in with_bundle]
        if plain:
            items.insert(0, plain)
        for item in items:
            try:
                self._launcher.submit(self._launch_all, item).add_done_callback(_log_failure)
            except RuntimeError:  # the launcher shut down between the check and the submit
                for key in item:
                    self._carry_out(self._handle(am.LaunchAbandoned(key, "worker is shutting down",
                                                                    self._clock.now_ms())))

    def _launch_all(self, keys: list[AttemptKey]) -> None:
        for key in keys:
            try:
                self._launch(key)
            except Exception as e:
                logger.exception("failed to start task=%s attempt=%d", *key)
                self._carry_out(self._handle(am.StartFailed(key, 126, f"failed to start: {e}", self._clock.now_ms())))

    def _launch(self, key: AttemptKey) -> None:
        with self._lock:
            held = self._held.get(key)
            attempt = self._machine.attempts.get(key)
            if held is None or attempt is None:
                return
            building = bool(held.request.bundle_hash or held.request.with_packages)
            ports, gpus = dict(attempt.ports), list(attempt.gpus)
            self._handle_locked(am.PreparationStarted(key, building))
        entrypoint = held.entrypoint
        held.entrypoint = None  # dropped once used: the record outlives the launch
        try:
            if entrypoint is None:
                raise PreparationError("the attempt's entrypoint is gone (launched twice?)")
            spec = self._preparer.prepare(held.request, entrypoint, ports, gpus)
        except PreparationError as e:
            self._carry_out(self._handle(am.PreparationFailed(key, str(e), self._clock.now_ms())))
            return
        instructions = self._handle(am.Prepared(key, self._clock.now_ms()))
        if not any(isinstance(i, am.Start) for i in instructions):
            self._carry_out(instructions)
            return
        self._carry_out(i for i in instructions if not isinstance(i, am.Start))
        try:
            pid = self._runtime.start(spec, lambda exit_info: self._on_exit(key, exit_info))
        except OSError as e:
            code = 127 if isinstance(e, FileNotFoundError) else 126
            self._carry_out(self._handle(am.StartFailed(key, code, f"failed to start {spec.argv[0]!r}: {e}",
                                                        self._clock.now_ms())))
            return
        self._carry_out(self._handle(am.ProcessStarted(key, pid)))
        logger.debug("started task=%s attempt=%d pid=%d", key[0], key[1], pid)

    def begin_stop(self) -> None:
        """The worker was told to go (SIGTERM): say so at once, before ``stop()`` runs, so a task
        killed by the same signal (a Slurm scancel, a node shutdown signals every process) is
        reported as stopped with its worker, a preemption, not as its own failure."""
        self._leaving.set()

    def _settle_signal_death(self, key: AttemptKey, code: int) -> None:
        """A task died of a signal Iris did not send: if its worker is being stopped too, let the
        stop be recorded first (bounded), so the attempt ends as stopped with its worker."""
        if code not in _SHUTDOWN_SIGNALS:
            return
        with self._lock:
            attempt = self._machine.get(*key)
            if attempt is None or attempt.kill_requested or self._machine.stopping:
                return
        if self._leaving.wait(SIGNAL_SETTLE_S):
            self._stopping_recorded.wait(SIGNAL_SETTLE_S)

    def _on_exit(self, key: AttemptKey, exit_info: ProcessExit) -> None:
        code = exit_info.returncode
        self._settle_signal_death(key, code)
        error = "" if code == 0 or exit_info.limit_error else self._failure_error(key, code)
        instructions = self._handle(am.ProcessExited(key, code, self._clock.now_ms(), error=error,
                                                     limit_error=exit_info.limit_error))
        self._carry_out(instructions)
        # Clean exits are the hot path (hundreds per second): INFO only for the ones worth reading.
        level = logging.DEBUG if code == 0 and not exit_info.limit_error else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(level, "task=%s attempt=%d exited with code %d%s", key[0], key[1], code,
                       f" ({exit_info.limit_error})" if exit_info.limit_error else "")

    def _failure_error(self, key: AttemptKey, code: int) -> str:
        error_file = self._preparer.error_path(key)
        if error_file.exists():
            try:
                return error_file.read_text(errors="replace")
            except OSError:
                pass
        if code < 0:
            try:
                head = f"killed by signal {-code} ({signal.Signals(-code).name})"
            except ValueError:
                head = f"killed by signal {-code}"
        else:
            head = f"exit code {code}"
        log = self._preparer.attempt_log(key)
        records = log.read(log.tail_offset(_LOG_TAIL_LINES), _LOG_TAIL_LINES).records
        tail = "\n".join(r.text for r in records if r.source != "iris")[-4096:]
        return f"{head}; last output:\n{tail}" if tail else head

    def kill_task(self, task_id: str, attempt_id: int, grace_period_s: float = 0.0, job_uid: str = "") -> None:
        """Kill one attempt (SIGTERM, SIGKILL after the grace; 0: the worker's default).
        Unknown or finished attempts, and with ``job_uid`` those of another job incarnation, are
        ignored."""
        if job_uid:
            with self._lock:
                held = self._machine.attempts.get((task_id, attempt_id))
                if held is not None and held.job_uid and held.job_uid != job_uid:
                    return
        grace = grace_period_s if grace_period_s > 0 else self._config.kill_grace_period_s
        self._carry_out(self._handle(am.KillRequested((task_id, attempt_id), grace)))

    # -- queries ------------------------------------------------------------------------------

    def _get_locked(self, task_id: str, attempt_id: int | None) -> am.Attempt:
        attempt = self._machine.get(task_id, attempt_id)
        if attempt is None:
            if attempt_id is None:
                raise NotFound(f"task_id: no attempt of {task_id[:128]!r} on this worker")
            raise NotFound(f"attempt_id: attempt {attempt_id} of {task_id[:128]!r} is not on this worker")
        return attempt

    def task_status(self, task_id: str, attempt_id: int | None = None) -> cluster_pb2.WorkerTaskStatus:
        with self._lock:
            status = self._get_locked(task_id, attempt_id).status()
        return status_proto(status)

    def list_tasks(self) -> list[cluster_pb2.WorkerTaskStatus]:
        with self._lock:
            statuses = [a.status() for a in self._machine.attempts.values()]
        return [status_proto(s) for s in statuses]

    def running_count(self) -> int:
        with self._lock:
            return self._machine.live_count()

    def uptime_ms(self) -> int:
        return int((self._clock.monotonic() - self._started_at) * 1000)

    @property
    def stopping(self) -> bool:
        return self._machine.stopping

    def fetch_logs(
        self, task_id: str, attempt_id: int | None = None, start_line: int = 0, max_lines: int = 0,
        start_offset: int | None = None,
    ) -> LogChunk:
        """Lines ``[start_line, start_line + max_lines)`` of an attempt's combined output, read from
        ``start_offset`` when given (O(page)). While the attempt runs, an unterminated last line
        is held back until it is complete."""
        if start_line < 0:
            raise InvalidArgument(f"start_line: must be >= 0, got {start_line}")
        if max_lines < 0:
            raise InvalidArgument(f"max_lines: must be >= 0, got {max_lines}")
        if start_offset is not None and start_offset < 0:
            raise InvalidArgument(f"start_offset: must be >= 0, got {start_offset}")
        with self._lock:
            attempt = self._get_locked(task_id, attempt_id)
            finished = attempt.finished
            key = attempt.key
        log = self._preparer.attempt_log(key)
        offset = start_offset if start_offset is not None else log.offset_of_record(start_line)
        page = log.read(offset, max_lines)
        return LogChunk(page.records, start_line + len(page.records), finished, key[1], page.next_offset)

    # -- logs to the controller ---------------------------------------------------------------

    def _ship_logs_loop(self, stop: threading.Event) -> None:
        interval = min(self._config.log_ship_interval_s, self._config.heartbeat_interval_s)
        while not self._clock.wait(stop, interval):
            try:
                self.ship_logs_once()
            except Exception:
                logger.exception("log shipping failed")

    def ship_logs_once(self, max_bytes: int = 4 * 1024 * 1024, only: set[AttemptKey] | None = None,
                       until_done: bool = False) -> int:
        """Send the controller what it lacks of each held attempt's log (``only`` those), and once
        an attempt ended and all of it is there, that it is complete; with ``until_done``, call by
        call until those attempts are complete or the controller stops answering. Returns the
        bytes sent."""
        sent = 0
        while True:
            sent_now, pending = self._ship_logs(max_bytes, only)
            sent += sent_now
            if not until_done or not pending or sent_now < 0:
                return max(sent, 0)

    def _ship_logs(self, max_bytes: int, only: set[AttemptKey] | None) -> tuple[int, bool]:
        """One PushTaskLogs call: (bytes sent or -1 when it failed, whether anything is left)."""
        with self._lock:
            attempts = [(a.key, a.finished, a.job_uid) for a in self._machine.attempts.values()
                        if a.key not in self._logs_done and (only is None or a.key in only)]
        chunks: list[cluster_pb2.LogChunk] = []
        ends: list[tuple[AttemptKey, int]] = []
        budget = max_bytes
        for key, finished, job_uid in attempts:
            if budget <= 0:
                break
            log = self._preparer.attempt_log(key)
            end = log.end_offset()  # after reading ``finished``: an ended attempt's log is whole
            shipped = self._logs_shipped.get(key, 0)
            if shipped >= end and not finished:
                continue
            start, data = log.read_bytes(shipped, min(budget, 1024 * 1024)) if shipped < end else (end, b"")
            budget -= len(data)
            chunks.append(cluster_pb2.LogChunk(task_id=key[0], attempt_id=key[1], job_uid=job_uid, start_offset=start,
                                               data=data, complete=finished and start + len(data) >= end))
            ends.append((key, end))
        if not chunks:
            return 0, False
        offsets = self._link.push_logs(chunks)
        if offsets is None:
            return -1, True
        left = False
        with self._lock:
            for chunk, (key, end), held in zip(chunks, ends, offsets, strict=False):
                if held < 0:
                    self._logs_done.add(key)  # the controller keeps none of it (its job was deleted)
                    continue
                self._logs_shipped[key] = held
                if chunk.complete and held >= end:
                    self._logs_done.add(key)
                else:
                    left = True
        return sum(len(c.data) for c in chunks), left or budget <= 0

    def _ship_ended_logs(self, keys: list[AttemptKey]) -> dict[AttemptKey, int]:
        """Before these attempts' ends are reported: ship what the controller lacks of their logs
        (those go complete in their last chunk). Returns the size of each log the controller
        already holds whole; the report carries it and so completes the log without a call."""
        sizes: dict[AttemptKey, int] = {}
        lacking: set[AttemptKey] = set()
        for key in keys:
            end = self._preparer.attempt_log(key).end_offset()
            with self._lock:
                if key in self._logs_done:
                    continue
                if self._logs_shipped.get(key, 0) >= end:
                    sizes[key] = end
                    self._log_claims[key] = end
                else:
                    lacking.add(key)
        if lacking:
            self.ship_logs_once(only=lacking, until_done=True)
        return sizes

    def _forget_deleted(self, job_uids: list[str], hashes: list[str]) -> None:
        """The controller deleted jobs: drop their ended attempts here (directories and logs) and
        cached bundles no attempt here needs any more."""
        uids = set(job_uids)
        with self._lock:
            keys = [a.key for a in self._machine.attempts.values() if a.job_uid in uids and a.finished]
            for key in keys:
                if self._machine.forget(key):
                    self._held.pop(key, None)
                    self._logs_shipped.pop(key, None)
                    self._logs_done.discard(key)
                    self._log_claims.pop(key, None)
                    self._preparer.discard(key)
        self._forget_bundles(hashes)

    def _forget_bundles(self, hashes: list[str]) -> None:
        """The controller deleted these bundles' last jobs: drop cached copies no attempt here needs."""
        with self._lock:
            in_use = {h.request.bundle_hash for k, h in self._held.items()
                      if (a := self._machine.attempts.get(k)) is not None and not a.finished}
        for bundle_hash in hashes:
            if bundle_hash not in in_use and BUNDLE_HASH_RE.fullmatch(bundle_hash):
                with contextlib.suppress(FileNotFoundError):
                    (self._preparer.bundles_dir / f"{bundle_hash}.zip").unlink()
