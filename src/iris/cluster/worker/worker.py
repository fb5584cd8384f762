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
everything slow (preparing, starting, killing, removing directories, shipping logs) happens after
it is released, on the caller's thread or a launcher thread. The machine holds all of an
attempt's state (what was sent to run it, how far its log reached the controller); the worker
holds none beside it. What the controller says comes back through the link as the machine's
events (``on_event``). ``Worker``'s API is typed (``TaskLaunch``, ``Acceptance``,
``AttemptStatus``); the gRPC edge, with every protobuf and its checks
(``iris.cluster.validation``, the rules the controller applied), is ``service.py``.

Every loop body is a public single-pass method (``register_once``, ``heartbeat_once``,
``flush_outbox_once``, ``ship_logs_once``); the threads around them are thin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import logging
import secrets
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from iris.cluster.addresses import advertise_host
from iris.cluster.clock import Clock, SystemClock
from iris.cluster.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from iris.cluster.ports import default_port_range, ephemeral_range
from iris.cluster.types import BUNDLE_HASH_RE, WorkerMetadata
from iris.cluster.validation import Limits, check_log_window
from iris.cluster.worker import attempts as am
from iris.cluster.worker.attempts import (
    Acceptance,
    AttemptKey,
    AttemptMachine,
    AttemptStatus,
    TaskLaunch,
    WorkerStopping,
)
from iris.cluster.worker.cgroups import (
    CGROUP_NAME_FILE,
    CgroupLimits,
    CgroupUnavailable,
    remove_cgroups_named_in,
)
from iris.cluster.worker.config import (
    CREDENTIAL_FILE,
    SHUTDOWN_SIGNALS,
    SIGNAL_SETTLE_S,
    LogChunk,
    log_failure,
)
from iris.cluster.worker.config import WorkerConfig as WorkerConfig
from iris.cluster.worker.deathwatch import DeathWatch
from iris.cluster.worker.gpu import GpuInfo, detect_gpus
from iris.cluster.worker.hardware import probe_metadata
from iris.cluster.worker.link import ControllerLink, LinkConfig
from iris.cluster.worker.logship import LogShipper
from iris.cluster.worker.prepare import (
    AttemptPreparer,
    PreparationError,
    attempt_dir_name,
    escape_task_id,
    process_records,
)
from iris.cluster.worker.runtime import ProcessExit, ProcessRuntime, Runtime
from iris.rpc.tls import channel_credentials

logger = logging.getLogger(__name__)

__all__ = [
    "LogChunk",
    "Worker",
    "WorkerConfig",
    "attempt_dir_name",
    "escape_task_id",
    "process_records",
]


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
        self.incarnation = secrets.token_hex(8)
        self.cgroup_name = f"{self.worker_id}-{self.incarnation[:8]}"
        """Its cgroups are ``iris-<cgroup_name>``: unique per worker process on the host, so no other
        worker (another local cluster's ``worker-0``) removes them when it cleans up."""
        if runtime is None:
            limits = CgroupLimits.detect(self.cgroup_name, max_pids=config.max_task_pids) if config.use_cgroups else None
            logger.info("task limits: %s", limits or "memory watchdog (no writable cgroup)")
            runtime = ProcessRuntime(limits=limits, deathwatch=DeathWatch(config.kill_grace_period_s))
        self._runtime: Runtime = runtime
        self._workdir = Path(config.workdir)
        self._gpus: list[GpuInfo] = gpus if gpus is not None else (detect_gpus() if config.detect_gpus else [])
        self.port_range = config.port_range or default_port_range(ephemeral_range())
        """The ports the controller may give tasks here (declared at registration)."""
        self._unfit = ""
        """Why this worker cannot run tasks as it promised ("": it can): told to the controller, which
        then places nothing here (its cgroups could not be made: limits would go unenforced)."""
        self._started_at = self._clock.monotonic()

        self._lock = threading.Lock()
        self._machine = AttemptMachine(gpus=[g.index for g in self._gpus], max_finished=config.max_finished_attempts)
        self._attempt_done = threading.Condition(self._lock)
        self._link = ControllerLink(
            LinkConfig(config.controller_address, config.rpc_timeout_s, config.backoff_initial_s,
                       config.backoff_max_s, join_token=config.join_token,
                       credential_path=self._workdir / CREDENTIAL_FILE,
                       channel_credentials=channel_credentials(config.tls_ca) if config.tls_ca else None,
                       fence_after_s=config.fence_after_s, tls_ca=config.tls_ca),
            self._clock, worker_id=self.worker_id, incarnation=self.incarnation, worker=self,
        )
        self._preparer = AttemptPreparer(config.preparer(self.worker_id, self.advertise_host, bool(self._gpus)),
                                         self._link.fetch_bundle)
        self.logs = LogShipper(self._ship_log_instructions, self.on_event, self._preparer, self._link, self._clock)
        """Ships every attempt's log to the controller as the machine's ShipLog instructions say."""
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

    @property
    def limits(self) -> Limits:
        """The job rules the worker checks (the controller's)."""
        return self._config.limits

    def check_addressee(self, worker_id: str) -> None:
        """A request the controller addressed to another worker (this address was that worker's
        before a restart, or many simulated workers share it) is refused: FailedPrecondition, which
        the controller takes as "that worker is gone"."""
        if worker_id and worker_id != self.worker_id:
            raise FailedPrecondition(f"worker_id: the request is for worker {worker_id[:128]!r}; this is worker "
                                     f"{self.worker_id!r}")

    def check_caller(self, token: str | None) -> None:
        """Only the controller may call a worker: until its registration was accepted (waited for up
        to ``rpc_timeout_s``) it serves nothing; with authentication, calls carry the credential the
        controller gave at registration. Raises Unauthenticated otherwise."""
        if not self._link.await_registered(self._config.rpc_timeout_s):
            raise Unauthenticated("this worker has not registered with its controller: it runs nothing yet")
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
        return self._queue_reports(self._machine.handle(event))

    def _queue_reports(self, instructions: Iterable[am.Instruction]) -> list[am.Instruction]:
        """Queue the reports among ``instructions`` (call with the lock held); return the others."""
        out: list[am.Instruction] = []
        for instruction in instructions:
            if isinstance(instruction, am.Report):
                self._link.report(instruction.status)
                if instruction.status.finished:
                    self._attempt_done.notify_all()
            else:
                out.append(instruction)
        return out

    def _carry_out(self, instructions: Iterable[am.Instruction]) -> None:
        """Act on the machine's instructions, outside the lock (Start is handled by ``_launch``,
        ShipLog by ``ship_logs_once``)."""
        for instruction in instructions:
            if isinstance(instruction, am.Kill):
                self._runtime.kill(instruction.key, instruction.grace_s)
            elif isinstance(instruction, am.Release):
                if instruction.ports:
                    self._preparer.release_ports(instruction.ports)
                self._preparer.release(instruction.key)
            elif isinstance(instruction, am.Discard):
                self._preparer.discard(instruction.key)  # the record left with the machine's
            elif isinstance(instruction, am.Prepare):
                self._submit_launch([instruction.key])
            elif isinstance(instruction, am.DropBundle) and BUNDLE_HASH_RE.fullmatch(instruction.bundle_hash):
                with contextlib.suppress(FileNotFoundError):
                    (self._preparer.bundles_dir / f"{instruction.bundle_hash}.zip").unlink()

    def on_event(self, event: am.Event) -> None:
        """What the controller said (through the link), as the machine's event; a kill without a
        grace gets the worker's."""
        if isinstance(event, am.KillRequested) and event.grace_s <= 0:
            event = am.KillRequested(event.key, self._config.kill_grace_period_s, event.job_uid)
        self._carry_out(self._handle(event))

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, address: str, run_loops: bool = True) -> None:
        """Clean up after a previous incarnation, register, and start the heartbeat, outbox and log
        threads (``run_loops=False`` leaves driving them to the caller, e.g. tests)."""
        self._link.address = address
        self._preparer.clear_previous_incarnation(self.incarnation)
        if self._config.use_cgroups:
            remove_cgroups_named_in(self._workdir)  # the previous incarnation's, once its tasks are gone
            self._workdir.mkdir(parents=True, exist_ok=True)
            (self._workdir / CGROUP_NAME_FILE).write_text(self.cgroup_name + "\n")
        self._preparer.tasks_dir.mkdir(parents=True, exist_ok=True)
        self._preparer.bundles_dir.mkdir(parents=True, exist_ok=True)
        self.register_once()
        if run_loops:
            for name, target, args in (
                ("iris-worker-heartbeat", self._link.heartbeat_loop,
                 (self._stop_event, self._config.heartbeat_interval_s)),
                ("iris-worker-outbox", self._link.outbox_loop, (self._stop_event,)),
                ("iris-worker-logs", self.logs.loop,
                 (self._stop_event, min(self._config.log_ship_interval_s, self._config.heartbeat_interval_s))),
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
            instructions = self._queue_reports(self._machine.stop(grace, kill=kill_tasks))
        self._stopping_recorded.set()
        self._link.leave()
        if kill_tasks:
            self._carry_out(instructions)
        self._launcher.shutdown(wait=True)
        if kill_tasks:
            with self._attempt_done:  # bounded in real time: a FakeClock cannot make it spin or hang
                self._attempt_done.wait_for(self._machine.all_finished, grace + 5.0)
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

    # -- what the link sends (``link.LinkSide``) ----------------------------------------------

    def metadata(self) -> WorkerMetadata:
        probed = WorkerMetadata.from_proto(probe_metadata(
            address=self.address, host=self.advertise_host, workdir=self._workdir, cpu=self._config.cpu,
            memory_bytes=self._config.memory_bytes, gpus=self._gpus, attributes=self._config.attributes,
        ))
        return dataclasses.replace(probed, port_range=self.port_range)

    def unfit(self) -> str:
        return self._unfit

    def observed(self) -> tuple[list[AttemptStatus], int]:
        """Every attempt held and not finished, plus finished ones whose report is not yet
        acknowledged; and the RunTask sequence number the set covers."""
        with self._lock:
            return self._machine.observed(), self._machine.sequence

    def result_of(self, key: AttemptKey) -> bytes:
        return self._preparer.result_or_nothing(key) if self._machine.returns_result(key) else b""

    def before_end_reports(self, keys: list[AttemptKey]) -> dict[AttemptKey, int]:
        """Before these attempts' ends are reported: ship what the controller lacks of their logs
        (those go complete in their last chunk). Returns the size of each log the controller
        already holds whole; the report carries it and so completes the log without a call."""
        ends = {key: self._preparer.attempt_log(key).end_offset() for key in keys}
        with self._lock:
            sizes, lacking = self._machine.claim_logs(ends)
        if lacking:
            self.logs.ship_once(only=lacking, until_done=True)
        return sizes

    def _ship_log_instructions(self, only: set[AttemptKey] | None) -> list[am.ShipLog]:
        with self._lock:
            return self._machine.ship_logs(only)

    def ship_logs_once(self, max_bytes: int = 4 * 1024 * 1024, only: set[AttemptKey] | None = None) -> int:
        """One pass of log shipping (``LogShipper.ship_once``)."""
        return self.logs.ship_once(max_bytes, only)

    def register_once(self) -> bool:
        return self._link.register_once()

    def heartbeat_once(self) -> bool:
        return self._link.heartbeat_once()

    def flush_outbox_once(self) -> bool:
        return self._link.flush_once()

    def pending_reports(self) -> int:
        return self._link.pending_reports()

    # -- tasks --------------------------------------------------------------------------------

    def run_task(self, launch: TaskLaunch) -> Acceptance:
        """Accept an attempt (checked at the edge: ``service.task_launch``) and hand its start to a
        launcher thread. Idempotent per attempt. Raises InvalidArgument or FailedPrecondition
        (shutting down)."""
        response, key = self._accept(launch)
        if key is not None:
            self._submit_launch([key])
        return response

    def run_tasks(self, launches: Iterable[TaskLaunch | InvalidArgument]) -> list[Acceptance]:
        """``run_task`` for several attempts in one call: each is accepted or refused on its own (one
        the edge refused comes as its error; a refusal carries ``worker_stopping`` when the worker
        is shutting down). The accepted ones start in order on one launcher thread."""
        responses: list[Acceptance] = []
        started: list[AttemptKey] = []
        for launch in launches:
            try:
                if isinstance(launch, InvalidArgument):
                    raise launch
                response, key = self._accept(launch)
            except InvalidArgument as e:
                responses.append(Acceptance(False, error=str(e)))
                continue
            except FailedPrecondition as e:
                responses.append(Acceptance(False, error=str(e), worker_stopping=True))
                continue
            responses.append(response)
            if key is not None:
                started.append(key)
        if started:
            self._submit_launch(started)
        return responses

    def _accept(self, launch: TaskLaunch) -> tuple[Acceptance, AttemptKey | None]:
        """Record an attempt (or find it again). Returns the answer and the attempt to launch (None
        when it was already held)."""
        key = launch.key
        with self._lock:
            existing = self._machine.attempts.get(key)
            if existing is not None and existing.job_uid != launch.job_uid and launch.job_uid:
                # The same task id and attempt of another job incarnation (a deleted job's name
                # reused): an ended one is forgotten; a live one still runs here. Under the lock (a
                # rare path): nothing may read the old attempt's files as the new one's.
                forgotten = self._machine.forget(key)
                if not forgotten:
                    raise InvalidArgument(f"task_id: attempt {key[1]} of an earlier job named like {key[0]!r} is "
                                          "still stopping on this worker")
                self._carry_out(forgotten)
                existing = None
            if existing is not None:
                return self._accepted(existing.sequence), None
            if self._machine.stopping:
                raise FailedPrecondition("worker is shutting down and accepts no new tasks")
            # The controller allocates ports from our range; a controller that did not (an older
            # one) leaves them to us.
            ports = dict(launch.ports) if launch.ports else (
                self._preparer.allocate_ports(launch.spec.ports) if launch.spec.ports else {})
            try:
                self._handle_locked(am.Accepted(key, launch.gpus_wanted, ports, launch.job_uid, launch))
            except WorkerStopping as e:
                self._preparer.release_ports(ports.values())
                raise FailedPrecondition(str(e)) from None
            sequence = self._machine.attempts[key].sequence
        logger.debug("accepted task=%s attempt=%d seq=%d", key[0], key[1], sequence)
        return self._accepted(sequence), key

    def _accepted(self, sequence: int) -> Acceptance:
        return Acceptance(True, incarnation=self.incarnation, sequence=sequence)

    def _submit_launch(self, keys: Sequence[AttemptKey]) -> None:
        """Start attempts on the launcher threads: one work item for a batch (one thread handoff,
        not one per task), except that an attempt with a workspace bundle gets its own (fetching
        it may take a while and must not hold up the others)."""
        with self._lock:
            with_bundle = {k for k in keys if (a := self._machine.attempts.get(k)) is not None
                           and a.launch is not None and a.launch.spec.bundle_hash}
        plain = [k for k in keys if k not in with_bundle]
        items = [[k] for k in keys if k in with_bundle]
        if plain:
            items.insert(0, plain)
        for item in items:
            try:
                self._launcher.submit(self._launch_all, item).add_done_callback(log_failure)
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
            attempt = self._machine.attempts.get(key)
            if attempt is None or attempt.launch is None:
                return
            launch, ports, gpus = attempt.launch, dict(attempt.ports), list(attempt.gpus)
            self._handle_locked(am.PreparationStarted(key, launch.building))  # the record drops the entrypoint
        try:
            if not (launch.spec.entrypoint.argv or launch.spec.entrypoint.pickled):
                raise PreparationError("the attempt's entrypoint is gone (launched twice?)")
            spec = self._preparer.prepare(launch, ports, gpus)
        except PreparationError as e:
            self._carry_out(self._handle(am.PreparationFailed(key, str(e), self._clock.now_ms())))
            return
        instructions = self._handle(am.Prepared(key, self._clock.now_ms()))
        if not any(isinstance(i, am.Start) for i in instructions):
            self._carry_out(instructions)
            return
        self._carry_out(i for i in instructions if not isinstance(i, am.Start))
        busy = self._preparer.ports_held(launch.checked_ports)  # just before the start (issue 26 item 1)
        if busy:
            self._carry_out(self._handle(am.ports_held_outside(key, busy, self._clock.now_ms())))
            return
        try:
            pid = self._runtime.start(spec, lambda exit_info: self._on_exit(key, exit_info))
        except OSError as e:
            if isinstance(e, CgroupUnavailable):  # no task may run here without its limits: say so, take none
                self._unfit = f"cgroups: {e}; restart the worker once the cgroup hierarchy is writable again"
                logger.error("task=%s attempt=%d not started: %s", key[0], key[1], self._unfit)
            self._carry_out(self._handle(am.start_failed(key, e, spec.argv[0], isinstance(e, CgroupUnavailable),
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
        if code not in SHUTDOWN_SIGNALS:
            return
        with self._lock:
            attempt = self._machine.get(*key)
            if attempt is None or attempt.kill_requested or self._machine.stopping:
                return
        if self._leaving.wait(SIGNAL_SETTLE_S):
            self._stopping_recorded.wait(SIGNAL_SETTLE_S)

    def _on_exit(self, key: AttemptKey, exit_info: ProcessExit) -> None:
        code, limit_error = exit_info.returncode, exit_info.limit_error
        self._settle_signal_death(key, code)
        if code == 0 and not limit_error and self._machine.returns_result(key):
            limit_error = self._preparer.result_problem(key)  # its return value, checked as a task's file
        error = "" if code == 0 or limit_error else self._preparer.failure_error(key, code, self._machine.ports(key))
        self._carry_out(self._handle(am.ProcessExited(key, code, self._clock.now_ms(), error=error,
                                                      limit_error=limit_error)))
        # Clean exits are the hot path (hundreds per second): INFO only for the ones worth reading.
        level = logging.DEBUG if code == 0 and not limit_error else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(level, "task=%s attempt=%d exited with code %d%s", key[0], key[1], code,
                       f" ({limit_error})" if limit_error else "")

    def kill_task(self, task_id: str, attempt_id: int, grace_period_s: float = 0.0, job_uid: str = "") -> None:
        """Kill one attempt (SIGTERM, SIGKILL after the grace; 0: the worker's default).
        Unknown or finished attempts, and with ``job_uid`` those of another job incarnation, are
        ignored."""
        self.on_event(am.KillRequested((task_id, attempt_id), grace_period_s, job_uid))

    # -- queries ------------------------------------------------------------------------------

    def _get_locked(self, task_id: str, attempt_id: int | None) -> am.Attempt:
        attempt = self._machine.get(task_id, attempt_id)
        if attempt is None:
            if attempt_id is None:
                raise NotFound(f"task_id: no attempt of {task_id[:128]!r} on this worker")
            raise NotFound(f"attempt_id: attempt {attempt_id} of {task_id[:128]!r} is not on this worker")
        return attempt

    def task_status(self, task_id: str, attempt_id: int | None = None) -> AttemptStatus:
        with self._lock:
            return self._get_locked(task_id, attempt_id).status()

    def list_tasks(self) -> list[AttemptStatus]:
        with self._lock:
            return [a.status() for a in self._machine.attempts.values()]

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
        check_log_window(start_line, max_lines, start_offset)
        with self._lock:
            attempt = self._get_locked(task_id, attempt_id)
            finished = attempt.finished
            key = attempt.key
        log = self._preparer.attempt_log(key)
        offset = start_offset if start_offset is not None else log.offset_of_record(start_line)
        page = log.read(offset, max_lines)
        return LogChunk(page.records, start_line + len(page.records), finished, key[1], page.next_offset)
