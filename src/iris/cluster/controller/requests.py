"""The controller's typed edge: what ``service.py`` hands the ``Controller`` and gets back.

``service.py`` converts every protobuf to one of these (checking each request field on the way,
with ``iris.cluster.validation``) and every one of these back to a protobuf; the controller never
sees the wire. Values are plain and frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from iris.cluster.controller.backend import LogPage
from iris.cluster.controller.state import ObservedAttempt
from iris.cluster.types import AttemptRef, TaskId

NO_PORTS: Mapping[str, int] = MappingProxyType({})


class TaskReport(NamedTuple):
    """One attempt's state as its worker reports it (``ReportTaskState``; a named tuple: two per
    task run)."""

    ref: AttemptRef
    state: int
    exit_code: int | None = None
    error: str | None = None
    ports: Mapping[str, int] = NO_PORTS
    result: bytes = b""
    """A callable's pickled return value, with its SUCCEEDED report."""
    log_size: int | None = None
    """With an end: the bytes of log the worker shipped for the attempt (its whole log)."""
    busy_ports: tuple[int, ...] = ()
    """With an end: ports something outside Iris held, so the attempt never started."""


@dataclass(frozen=True, slots=True)
class RegisterReply:
    kill: list[ObservedAttempt]
    credential: str
    """A worker credential of its own, issued to a worker that registered with the join token."""
    controller_token: str
    heartbeat_interval_ms: int


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    reregister: bool
    kill: list[ObservedAttempt] = field(default_factory=list)
    heartbeat_interval_ms: int = 0
    forget_job_uids: list[str] = field(default_factory=list)
    """Deleted job incarnations whose attempt directories the worker drops."""
    forget_bundles: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    """A task attempt's endpoint to register."""

    name: str
    address: str
    task_id: TaskId
    attempt_id: int
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogQuery:
    """A page of one attempt's log: from a byte offset, a record number, or the last lines."""

    task_id: TaskId
    attempt_id: int | None = None
    """None: the task's current attempt."""
    start_line: int = 0
    start_offset: int | None = None
    max_lines: int = 0
    tail_lines: int = 0


@dataclass(frozen=True, slots=True)
class TaskLogPage(LogPage):
    """A backend's page of an attempt's log, and which attempt it is (the current one unless asked)."""

    attempt_id: int = 0


class LogChunk(NamedTuple):
    """Bytes of one attempt's log a worker ships, at ``start_offset``; ``complete``: its last chunk."""

    ref: AttemptRef
    start_offset: int
    data: bytes
    complete: bool = False

