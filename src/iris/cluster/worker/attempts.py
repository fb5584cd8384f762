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

The protocol state a phase reports: ACCEPTED, PREPARING and STARTING are BUILDING; RUNNING is
RUNNING; ENDED and ACKED hold the terminal state (SUCCEEDED, FAILED, KILLED). An attempt's
terminal report is queued the moment it ends, and the attempt stays in the observed set (live or
ENDED) until the controller acknowledged that report, so a heartbeat never makes a finished
attempt look lost. A kill asked for before the process exists is remembered and honoured when
preparation ends (no process is started) or as soon as the process exists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from iris.rpc import cluster_pb2

AttemptKey = tuple[str, int]
"""(task id, attempt id)."""

BUILDING = cluster_pb2.TASK_STATE_BUILDING
RUNNING = cluster_pb2.TASK_STATE_RUNNING
SUCCEEDED = cluster_pb2.TASK_STATE_SUCCEEDED
FAILED = cluster_pb2.TASK_STATE_FAILED
KILLED = cluster_pb2.TASK_STATE_KILLED
TERMINAL = frozenset({SUCCEEDED, FAILED, KILLED})


class Phase(Enum):
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    STARTING = "starting"
    RUNNING = "running"
    ENDED = "ended"
    ACKED = "acked"


LIVE_PHASES = frozenset({Phase.ACCEPTED, Phase.PREPARING, Phase.STARTING, Phase.RUNNING})


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

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def status(self) -> AttemptStatus:
        return AttemptStatus(self.key[0], self.key[1], self.state, self.exit_code, self.error, self.started_at_ms,
                             self.finished_at_ms, self.pid, dict(self.ports), self.job_uid)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Accepted:
    key: AttemptKey
    gpus_wanted: int = 0
    ports: Mapping[str, int] = field(default_factory=dict)
    job_uid: str = ""


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


@dataclass(frozen=True, slots=True)
class LaunchAbandoned:
    key: AttemptKey
    error: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class ReportsAcknowledged:
    """The controller acknowledged these reports (key and the state that was reported)."""

    reports: tuple[tuple[AttemptKey, int], ...]


Event = (
    Accepted | PreparationStarted | Prepared | PreparationFailed | ProcessStarted | StartFailed | ProcessExited
    | KillRequested | LaunchAbandoned | ReportsAcknowledged
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
    """The attempt left the history: remove its directory and the shell's record."""

    key: AttemptKey


Instruction = Prepare | Start | Kill | Report | Release | Discard


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
        attempt = self.attempts.get(event.key)
        if attempt is None:
            return []
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
        """Drop an ended attempt from the history now (its job was deleted and the id is used by a
        new job): its directory goes. A live attempt is not forgotten (returns [])."""
        attempt = self.attempts.get(key)
        if attempt is None or attempt.phase in LIVE_PHASES:
            return []
        del self.attempts[key]
        self._history.pop(key, None)
        if self._newest.get(key[0]) == key[1]:
            older = [a for (t, a) in self.attempts if t == key[0]]
            if older:
                self._newest[key[0]] = max(older)
            else:
                del self._newest[key[0]]
        return [Discard(key)]

    # -- queries ------------------------------------------------------------------------------

    def get(self, task_id: str, attempt_id: int | None = None) -> Attempt | None:
        if attempt_id is None:
            newest = self._newest.get(task_id)
            if newest is None:
                return None
            attempt_id = newest
        return self.attempts.get((task_id, attempt_id))

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
        attempt = Attempt(event.key, self.sequence, ports=dict(event.ports), job_uid=event.job_uid)
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
        return self._end(attempt, FAILED, event.now_ms, exit_code=event.exit_code, error=event.error)

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
            self._history[key] = None
        while len(self._history) > self._max_finished:
            old_key, _ = self._history.popitem(last=False)
            self.attempts.pop(old_key, None)
            if self._newest.get(old_key[0]) == old_key[1]:
                del self._newest[old_key[0]]
            out.append(Discard(old_key))
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
