"""The worker's attempt lifecycle as one pure state machine (after dask's worker state machine).

Events come in (``Accepted``, ``Prepared``, ``ProcessStarted``, ``ProcessExited``,
``KillRequested``, ``ReportsAcknowledged``, ...), the machine updates its records and hands back
instructions (``Prepare``, ``Start``, ``Kill``, ``Report``, ``Release``, ``Discard``) for the
shell (``worker.py``) to carry out. No threads, no processes, no clock: time comes in on the
events as ``now_ms``. Every move is in one table, ``_TRANSITIONS``: a (phase, event) pair that is
not there is a stale or duplicate event and changes nothing.

Phases of an attempt::

    ACCEPTED --Prepare--> PREPARING --Prepared--> STARTING --ProcessStarted--> RUNNING
        |                    |  \\--PreparationFailed--> ENDED          |  \\--ProcessExited--> ENDED
        |                    \\--Prepared while killed--> ENDED (KILLED)  \\--StartFailed / ProcessExited--> ENDED
        \\--LaunchAbandoned--> ENDED (KILLED)
    ENDED --ReportsAcknowledged--> ACKED   (kept for queries, the oldest discarded past the cap)

Beside its phase, each attempt's record holds what was sent to run it (``launch``: its entrypoint
dropped once the process is prepared) and how far its log has reached the controller
(``log_shipped``, ``log_phase``): ``ship_logs`` hands out ``ShipLog(key, from_offset)``
instructions, and the replies come back as ``LogShipped`` / ``LogRefused`` events. An ended
attempt's log may instead be claimed complete by its end report (``claim_logs``: the report
carries the log's size), which is done once that report is acknowledged. Forgetting an attempt
(history cap, a deleted job, an id reused by a new job) is one ``Discard``: nothing about it is kept
anywhere else.

The protocol state a phase reports: ACCEPTED, PREPARING and STARTING are BUILDING; RUNNING is
RUNNING; ENDED and ACKED hold the terminal state (SUCCEEDED, FAILED, KILLED). An attempt's
terminal report is queued the moment it ends, and the attempt stays in the observed set (live or
ENDED) until the controller acknowledged that report, so a heartbeat never makes a finished
attempt look lost. A kill asked for before the process exists is remembered and honoured when
preparation ends (no process is started) or as soon as the process exists.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from iris.cluster.spec import Entrypoint, JobSpec
from iris.cluster.types import BUILDING as BUILDING
from iris.cluster.types import FAILED as FAILED
from iris.cluster.types import KILLED as KILLED
from iris.cluster.types import RUNNING as RUNNING
from iris.cluster.types import SUCCEEDED as SUCCEEDED
from iris.cluster.types import WORKER_FAILED as WORKER_FAILED
from iris.cluster.types import GpuDevice

AttemptKey = tuple[str, int]
"""(task id, attempt id)."""

TERMINAL = frozenset({SUCCEEDED, FAILED, KILLED, WORKER_FAILED})
"""The ends an attempt can reach on a worker (WORKER_FAILED: the worker could not run it as it must,
e.g. its cgroup could not be made: a preemption, not the task's failure)."""


class Phase(Enum):
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    STARTING = "starting"
    RUNNING = "running"
    ENDED = "ended"
    ACKED = "acked"


LIVE_PHASES = frozenset({Phase.ACCEPTED, Phase.PREPARING, Phase.STARTING, Phase.RUNNING})


class LogPhase(Enum):
    SHIPPING = "shipping"
    """The controller lacks some of the log, or does not know it is complete."""
    CLAIMED = "claimed"
    """The controller holds all of it; the end report (carrying its size) completes it there."""
    DONE = "done"
    """The controller has the whole log and knows it (or keeps none of it: a deleted job)."""


@dataclass(frozen=True, slots=True)
class TaskLaunch:
    """One attempt to run, as the controller sent it (``RunTaskRequest``, typed by ``service.py``):
    the task's place in its job and the job fields a worker sees (``spec``)."""

    job_id: str
    task_id: str
    task_index: int
    num_tasks: int
    attempt_id: int
    spec: JobSpec
    task_token: str = ""
    previous_state: int = 0
    previous_exit_code: int = 0
    previous_error: str = ""
    rendezvous_env: Mapping[str, str] = field(default_factory=dict)
    job_uid: str = ""
    worker_id: str = ""
    checkpoint_dir: str = ""
    """The job's directory on the shared dir, the same on every worker ("": none)."""
    ports: Mapping[str, int] = field(default_factory=dict)
    """Named ports the controller allocated from this worker's range (empty: the worker picks them)."""
    coordinator_port: int = 0
    """On a gang's lead: its rendezvous port (checked free just before the start, with ``ports``)."""
    run_as: tuple[int, str] = (0, "")
    """Who the controller says it runs as: its owner's uid (0: none sent), or a Unix user's name."""

    @property
    def key(self) -> AttemptKey:
        return (self.task_id, self.attempt_id)

    @property
    def checked_ports(self) -> list[int]:
        """The controller's ports for it, checked free just before the start."""
        return [*self.ports.values(), *([self.coordinator_port] if self.coordinator_port else [])]

    @property
    def gpus_wanted(self) -> int:
        device = self.spec.resources.device
        return device.count if isinstance(device, GpuDevice) else 0

    @property
    def building(self) -> bool:
        """Slow preparation ahead (a workspace to fetch, an environment to build)."""
        return bool(self.spec.bundle_hash or self.spec.with_packages)

    def without_entrypoint(self) -> TaskLaunch:
        """What the record keeps once the process is prepared (a pickled callable can be large)."""
        return dataclasses.replace(self, spec=self.spec.replace(entrypoint=_NO_ENTRYPOINT))


_NO_ENTRYPOINT = Entrypoint()


@dataclass(frozen=True, slots=True)
class Acceptance:
    """The worker's answer to one launch."""

    accepted: bool
    incarnation: str = ""
    sequence: int = 0
    error: str = ""
    worker_stopping: bool = False


@dataclass(frozen=True, slots=True)
class AttemptStatus:
    """One attempt as reported to the controller (plain data; the shell makes the protobuf)."""

    task_id: str
    attempt_id: int
    state: int
    exit_code: int = 0
    error: str = ""
    started_at_ms: int = 0
    finished_at_ms: int = 0
    pid: int = 0
    ports: Mapping[str, int] = field(default_factory=dict)
    job_uid: str = ""
    """The job incarnation it was sent for (echoed to the controller)."""
    busy_ports: tuple[int, ...] = ()
    """It never started: these of its ports were held by something outside Iris."""

    @property
    def key(self) -> AttemptKey:
        return (self.task_id, self.attempt_id)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass(slots=True)
class Attempt:
    """The machine's record of one attempt."""

    key: AttemptKey
    sequence: int
    phase: Phase = Phase.ACCEPTED
    state: int = BUILDING
    exit_code: int = 0
    error: str = ""
    started_at_ms: int = 0
    finished_at_ms: int = 0
    pid: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    gpus: list[int] = field(default_factory=list)
    kill_requested: bool = False
    kill_grace_s: float = 0.0
    job_uid: str = ""
    launch: TaskLaunch | None = None
    """What was sent to run it (without its entrypoint once prepared)."""
    log_shipped: int = 0
    """The log offset the controller holds up to."""
    log_phase: LogPhase = LogPhase.SHIPPING
    log_claim: int = 0
    """With ``LogPhase.CLAIMED``: the size its end report says."""
    busy_ports: tuple[int, ...] = ()
    returns_result: bool = False
    """A callable: its success carries the pickled return value it left in its directory."""

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def status(self) -> AttemptStatus:
        return AttemptStatus(self.key[0], self.key[1], self.state, self.exit_code, self.error, self.started_at_ms,
                             self.finished_at_ms, self.pid, dict(self.ports), self.job_uid, self.busy_ports)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Accepted:
    key: AttemptKey
    gpus_wanted: int = 0
    ports: Mapping[str, int] = field(default_factory=dict)
    job_uid: str = ""
    launch: TaskLaunch | None = None


@dataclass(frozen=True, slots=True)
class PreparationStarted:
    key: AttemptKey
    building: bool
    """Slow preparation ahead (a workspace to fetch): tell the controller the task is BUILDING."""


@dataclass(frozen=True, slots=True)
class Prepared:
    key: AttemptKey
    now_ms: int


@dataclass(frozen=True, slots=True)
class PreparationFailed:
    key: AttemptKey
    error: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class ProcessStarted:
    key: AttemptKey
    pid: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    key: AttemptKey
    exit_code: int
    error: str
    now_ms: int
    busy_ports: tuple[int, ...] = ()
    """Not started because something outside Iris holds these of its ports."""
    worker_fault: bool = False
    """Not started because of the worker, not the task (ends WORKER_FAILED)."""


def ports_held_outside(key: AttemptKey, busy: list[int], now_ms: int) -> StartFailed:
    """Not started: something outside Iris holds these of its ports (the controller places it again)."""
    listed = ", ".join(map(str, busy))
    return StartFailed(key, 0, f"port {listed} in use on this host by a process outside Iris: placed again with "
                               "other ports", now_ms, busy_ports=tuple(busy))


def start_failed(key: AttemptKey, error: OSError, program: str, worker_fault: bool, now_ms: int) -> StartFailed:
    """Its process could not be started: 127 for a program not found, else 126 (as a shell says);
    ``worker_fault`` (its limits could not be set up) ends it WORKER_FAILED, a preemption."""
    if worker_fault:
        return StartFailed(key, 0, f"the worker cannot enforce the task's limits: {error}", now_ms, worker_fault=True)
    code = 127 if isinstance(error, FileNotFoundError) else 126
    return StartFailed(key, code, f"failed to start {program!r}: {error}", now_ms)


@dataclass(frozen=True, slots=True)
class ProcessExited:
    key: AttemptKey
    exit_code: int
    now_ms: int
    error: str = ""
    """What the shell found for a non-zero exit (the task's error file or its last lines)."""
    limit_error: str = ""
    """Set when the runtime killed it for exceeding a limit (memory): a failure whatever the code."""


@dataclass(frozen=True, slots=True)
class KillRequested:
    key: AttemptKey
    grace_s: float
    job_uid: str = ""
    """When given, only an attempt of that job incarnation is killed (another's is not ours to stop)."""


@dataclass(frozen=True, slots=True)
class LaunchAbandoned:
    key: AttemptKey
    error: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class ReportsAcknowledged:
    """The controller acknowledged these reports (key and the state that was reported)."""

    reports: tuple[tuple[AttemptKey, int], ...]


@dataclass(frozen=True, slots=True)
class LogShipped:
    """The controller now holds the attempt's log up to ``offset``; ``complete``: all of an ended
    attempt's log, and it was told so."""

    key: AttemptKey
    offset: int
    complete: bool = False


@dataclass(frozen=True, slots=True)
class LogRefused:
    """The controller keeps none of this attempt's log (its job was deleted)."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class JobsDeleted:
    """The controller deleted these job incarnations and bundles: their ended attempts go, and
    cached bundles no live attempt needs."""

    job_uids: tuple[str, ...]
    bundle_hashes: tuple[str, ...] = ()


Event = (
    Accepted | PreparationStarted | Prepared | PreparationFailed | ProcessStarted | StartFailed | ProcessExited
    | KillRequested | LaunchAbandoned | ReportsAcknowledged | LogShipped | LogRefused | JobsDeleted
)


# ---------------------------------------------------------------------------- instructions


@dataclass(frozen=True, slots=True)
class Prepare:
    """Prepare the attempt (directories, workspace, environment) on a launcher thread."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class Start:
    """Start the prepared attempt's process (the thread that prepared it does this next)."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGTERM the attempt's processes, SIGKILL after ``grace_s``."""

    key: AttemptKey
    grace_s: float


@dataclass(frozen=True, slots=True)
class Report:
    """Queue this status for the controller (delivered through the outbox until acknowledged)."""

    status: AttemptStatus


@dataclass(frozen=True, slots=True)
class Release:
    """The attempt ended: give back what the shell holds for it (its ports)."""

    key: AttemptKey
    ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Discard:
    """The attempt left the machine (history cap, deleted job, reused id): remove its directory.
    Nothing else about it is held anywhere."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class ShipLog:
    """Send the controller the attempt's log from ``from_offset`` (``complete`` once an ended
    attempt's last byte is in the chunk)."""

    key: AttemptKey
    from_offset: int
    finished: bool
    job_uid: str = ""


@dataclass(frozen=True, slots=True)
class DropBundle:
    """Remove a cached workspace bundle no attempt here needs any more."""

    bundle_hash: str


Instruction = Prepare | Start | Kill | Report | Release | Discard | ShipLog | DropBundle


class WorkerStopping(Exception):
    """The worker is shutting down and accepts no new attempts."""


# ---------------------------------------------------------------------------- the machine


class AttemptMachine:
    """Every attempt the worker holds, and the moves between phases. Not thread-safe: the shell
    calls it under one lock and carries out the instructions after releasing it."""

    def __init__(self, gpus: Iterable[int] = (), max_finished: int = 1000) -> None:
        self.attempts: dict[AttemptKey, Attempt] = {}
        self._newest: dict[str, int] = {}
        self._history: OrderedDict[AttemptKey, None] = OrderedDict()
        """Acknowledged attempts, oldest first (bounded by ``max_finished``)."""
        self._free_gpus: list[int] = sorted(gpus)
        self._max_finished = max_finished
        self.sequence = 0
        """Accepted attempts so far: an observed set taken at ``sequence`` covers every attempt
        accepted up to it."""
        self.stopping = False

    # -- the one entry point ------------------------------------------------------------------

    def handle(self, event: Event) -> list[Instruction]:
        if isinstance(event, Accepted):
            return self._accept(event)
        if isinstance(event, ReportsAcknowledged):
            return self._acknowledge(event)
        if isinstance(event, JobsDeleted):
            return self._jobs_deleted(event)
        attempt = self.attempts.get(event.key)
        if attempt is None:
            return []
        if isinstance(event, LogShipped | LogRefused):
            return self._log_progress(attempt, event)
        if isinstance(event, KillRequested) and event.job_uid and attempt.job_uid and event.job_uid != attempt.job_uid:
            return []  # an attempt of another job incarnation under the same id
        handler = _TRANSITIONS.get((attempt.phase, type(event)))
        if handler is None:
            return []  # stale or duplicate: nothing changes
        return handler(self, attempt, event)

    def stop(self, grace_s: float, kill: bool = True) -> list[Instruction]:
        """Refuse new attempts from now on and, with ``kill``, stop every live one (SIGTERM, then
        SIGKILL after ``grace_s``)."""
        self.stopping = True
        out: list[Instruction] = []
        if kill:
            for attempt in list(self.attempts.values()):
                if attempt.phase in LIVE_PHASES:
                    out += self.handle(KillRequested(attempt.key, grace_s))
        return out

    def forget(self, key: AttemptKey) -> list[Instruction]:
        """Drop an ended attempt now (its job was deleted, or the id is used by a new job): its
        directory goes. A live attempt is not forgotten (returns [])."""
        attempt = self.attempts.get(key)
        if attempt is None or attempt.phase in LIVE_PHASES:
            return []
        self._history.pop(key, None)
        return self._discard(key)

    def _discard(self, key: AttemptKey) -> list[Instruction]:
        """The one way an attempt leaves the machine (the history's cap, a deleted job, a reused id)."""
        del self.attempts[key]
        if self._newest.get(key[0]) == key[1]:
            older = [a for (t, a) in self.attempts if t == key[0]]
            if older:
                self._newest[key[0]] = max(older)
            else:
                del self._newest[key[0]]
        return [Discard(key)]

    def _jobs_deleted(self, event: JobsDeleted) -> list[Instruction]:
        uids = set(event.job_uids)
        out: list[Instruction] = []
        for key in [a.key for a in self.attempts.values() if a.job_uid in uids and a.finished]:
            out += self.forget(key)
        in_use = {a.launch.spec.bundle_hash for a in self.attempts.values()
                  if a.launch is not None and not a.finished}
        return out + [DropBundle(h) for h in event.bundle_hashes if h not in in_use]

    # -- logs ---------------------------------------------------------------------------------

    def ship_logs(self, only: Collection[AttemptKey] | None = None) -> list[ShipLog]:
        """What to send the controller of each attempt's log (``only`` those attempts)."""
        return [ShipLog(a.key, a.log_shipped, a.finished, a.job_uid) for a in self.attempts.values()
                if a.log_phase is LogPhase.SHIPPING and (only is None or a.key in only)]

    def claim_logs(self, ends: Mapping[AttemptKey, int]) -> tuple[dict[AttemptKey, int], set[AttemptKey]]:
        """Before ended attempts' reports go: ``ends`` is each one's log size now. Returns the sizes
        the reports may carry (the controller already holds all of those logs: the acknowledged
        report completes them) and the attempts whose logs must be shipped first."""
        sizes: dict[AttemptKey, int] = {}
        lacking: set[AttemptKey] = set()
        for key, end in ends.items():
            attempt = self.attempts.get(key)
            if attempt is None or attempt.log_phase is LogPhase.DONE:
                continue
            if attempt.log_shipped >= end:
                attempt.log_phase, attempt.log_claim = LogPhase.CLAIMED, end
                sizes[key] = end
            else:
                lacking.add(key)
        return sizes, lacking

    def _log_progress(self, attempt: Attempt, event: LogShipped | LogRefused) -> list[Instruction]:
        if isinstance(event, LogRefused):
            attempt.log_phase = LogPhase.DONE  # the controller keeps none of it
        else:
            attempt.log_shipped = max(attempt.log_shipped, event.offset)
            if event.complete:
                attempt.log_phase = LogPhase.DONE
        return []

    # -- queries ------------------------------------------------------------------------------

    def get(self, task_id: str, attempt_id: int | None = None) -> Attempt | None:
        if attempt_id is None:
            newest = self._newest.get(task_id)
            if newest is None:
                return None
            attempt_id = newest
        return self.attempts.get((task_id, attempt_id))

    def ports(self, key: AttemptKey) -> dict[str, int]:
        """The named ports the attempt was given ({} when unknown)."""
        attempt = self.attempts.get(key)
        return dict(attempt.ports) if attempt is not None else {}

    def returns_result(self, key: AttemptKey) -> bool:
        """Whether the attempt is a callable's (its success carries a result). A dict read: no lock needed."""
        attempt = self.attempts.get(key)
        return attempt is not None and attempt.returns_result

    def observed(self) -> list[AttemptStatus]:
        """Every attempt not yet acknowledged as ended: live ones and ended ones whose terminal
        report the controller has not acknowledged (DESIGN §3's observed set)."""
        return [a.status() for a in self.attempts.values() if a.phase is not Phase.ACKED]

    def live_count(self) -> int:
        return sum(1 for a in self.attempts.values() if a.phase in LIVE_PHASES)

    def all_finished(self) -> bool:
        return all(a.finished for a in self.attempts.values())

    # -- moves --------------------------------------------------------------------------------

    def _accept(self, event: Accepted) -> list[Instruction]:
        if event.key in self.attempts:
            return []  # idempotent: the same attempt sent again
        if self.stopping:
            raise WorkerStopping("worker is shutting down and accepts no new tasks")
        self.sequence += 1
        attempt = Attempt(event.key, self.sequence, ports=dict(event.ports), job_uid=event.job_uid,
                          launch=event.launch,
                          returns_result=event.launch is not None and bool(event.launch.spec.entrypoint.pickled))
        if event.gpus_wanted:
            attempt.gpus = self._free_gpus[: event.gpus_wanted]
            del self._free_gpus[: len(attempt.gpus)]
        self.attempts[event.key] = attempt
        task_id, attempt_id = event.key
        if attempt_id >= self._newest.get(task_id, -1):
            self._newest[task_id] = attempt_id
        return [Prepare(event.key)]

    def _preparing(self, attempt: Attempt, event: PreparationStarted) -> list[Instruction]:
        attempt.phase = Phase.PREPARING
        if attempt.launch is not None:  # the shell took the entrypoint to prepare it: the record keeps the rest
            attempt.launch = attempt.launch.without_entrypoint()
        return [Report(attempt.status())] if event.building else []

    def _prepared(self, attempt: Attempt, event: Prepared) -> list[Instruction]:
        if attempt.kill_requested:
            return self._end(attempt, KILLED, event.now_ms, error="killed before it started")
        attempt.phase = Phase.STARTING
        attempt.started_at_ms = event.now_ms
        return [Start(attempt.key)]

    def _preparation_failed(self, attempt: Attempt, event: PreparationFailed) -> list[Instruction]:
        if attempt.kill_requested:
            return self._end(attempt, KILLED, event.now_ms, error="killed before it started")
        return self._end(attempt, FAILED, event.now_ms, error=event.error)

    def _started(self, attempt: Attempt, event: ProcessStarted) -> list[Instruction]:
        attempt.phase = Phase.RUNNING
        attempt.state = RUNNING
        attempt.pid = event.pid
        out: list[Instruction] = [Report(attempt.status())]
        if attempt.kill_requested:
            out.append(Kill(attempt.key, attempt.kill_grace_s))
        return out

    def _start_failed(self, attempt: Attempt, event: StartFailed) -> list[Instruction]:
        attempt.busy_ports = event.busy_ports
        return self._end(attempt, WORKER_FAILED if event.worker_fault else FAILED, event.now_ms, exit_code=event.exit_code, error=event.error)

    def _exited(self, attempt: Attempt, event: ProcessExited) -> list[Instruction]:
        code = event.exit_code
        if attempt.kill_requested:
            return self._end(attempt, KILLED, event.now_ms, exit_code=code, error="killed")
        if event.limit_error:
            return self._end(attempt, FAILED, event.now_ms, exit_code=code, error=event.limit_error)
        if code == 0:
            return self._end(attempt, SUCCEEDED, event.now_ms)
        return self._end(attempt, FAILED, event.now_ms, exit_code=code, error=event.error or f"exit code {code}")

    def _kill_requested(self, attempt: Attempt, event: KillRequested) -> list[Instruction]:
        if attempt.kill_requested:
            return []
        attempt.kill_requested = True
        attempt.kill_grace_s = event.grace_s
        # Not started yet: preparation ends it (no process is started) or ProcessStarted kills it.
        return [Kill(attempt.key, event.grace_s)] if attempt.phase is Phase.RUNNING else []

    def _abandoned(self, attempt: Attempt, event: LaunchAbandoned) -> list[Instruction]:
        return self._end(attempt, KILLED, event.now_ms, error=event.error)

    def _end(self, attempt: Attempt, state: int, now_ms: int, *, exit_code: int = 0, error: str = ""
             ) -> list[Instruction]:
        attempt.phase = Phase.ENDED
        attempt.state = state
        attempt.exit_code = exit_code
        attempt.error = error
        attempt.finished_at_ms = now_ms
        if attempt.gpus:
            self._free_gpus.extend(attempt.gpus)
            self._free_gpus.sort()
        return [Release(attempt.key, tuple(attempt.ports.values())), Report(attempt.status())]

    def _acknowledge(self, event: ReportsAcknowledged) -> list[Instruction]:
        out: list[Instruction] = []
        for key, state in event.reports:
            attempt = self.attempts.get(key)
            if attempt is None or attempt.phase is not Phase.ENDED or state not in TERMINAL:
                continue
            attempt.phase = Phase.ACKED
            if attempt.log_phase is LogPhase.CLAIMED:
                attempt.log_phase = LogPhase.DONE  # the acknowledged report completed its log there
            self._history[key] = None
        while len(self._history) > self._max_finished:
            old_key, _ = self._history.popitem(last=False)
            if old_key in self.attempts:
                out += self._discard(old_key)
        return out


_Handler = Callable[[AttemptMachine, Attempt, "Event"], list[Instruction]]

_TRANSITIONS: dict[tuple[Phase, type], _Handler] = {
    (Phase.ACCEPTED, PreparationStarted): AttemptMachine._preparing,  # type: ignore[dict-item]
    (Phase.ACCEPTED, Prepared): AttemptMachine._prepared,  # type: ignore[dict-item]
    (Phase.ACCEPTED, PreparationFailed): AttemptMachine._preparation_failed,  # type: ignore[dict-item]
    (Phase.ACCEPTED, KillRequested): AttemptMachine._kill_requested,  # type: ignore[dict-item]
    (Phase.ACCEPTED, LaunchAbandoned): AttemptMachine._abandoned,  # type: ignore[dict-item]
    (Phase.PREPARING, Prepared): AttemptMachine._prepared,  # type: ignore[dict-item]
    (Phase.PREPARING, PreparationFailed): AttemptMachine._preparation_failed,  # type: ignore[dict-item]
    (Phase.PREPARING, KillRequested): AttemptMachine._kill_requested,  # type: ignore[dict-item]
    (Phase.STARTING, ProcessStarted): AttemptMachine._started,  # type: ignore[dict-item]
    (Phase.STARTING, StartFailed): AttemptMachine._start_failed,  # type: ignore[dict-item]
    # The process may exit before its ProcessStarted event is handled:
    (Phase.STARTING, ProcessExited): AttemptMachine._exited,  # type: ignore[dict-item]
    (Phase.STARTING, KillRequested): AttemptMachine._kill_requested,  # type: ignore[dict-item]
    (Phase.RUNNING, ProcessExited): AttemptMachine._exited,  # type: ignore[dict-item]
    (Phase.RUNNING, KillRequested): AttemptMachine._kill_requested,  # type: ignore[dict-item]
}
"""Every allowed move. Anything else (a kill for an ended attempt, a second exit, a start after
an exit) is a no-op."""
