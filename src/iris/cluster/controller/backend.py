"""The seam between the controller and what runs tasks (DESIGN §8).

A ``TaskBackend`` takes plain data in and gives plain data out; it holds no job definitions, no
retry budgets and no durable state (the controller owns those). Five verbs:

- ``submit(launches)``: start attempts on one execution location (a worker). Each launch gets a
  ``LaunchResult``: ``ACCEPTED``; ``TASK_REFUSED`` (the task's own content cannot run there — a
  real failure of the task, the location stays healthy); ``BACKEND_FAILED`` (the location did not
  answer, timed out or is going away — a preemption, and a mark against the location).
- ``kill(kill)``: stop one attempt (SIGTERM, grace, SIGKILL). Best effort: the next observation
  reconciles whatever a lost kill left running.
- ``observe()``: the complete observed set of every location the backend polls, reconciled
  level-triggered by the controller exactly like a worker's heartbeat (DESIGN §3). A push-based
  backend (worker daemons heartbeat on their own) returns ``[]`` and its pushes take the same path.
- ``fetch_logs(request)``: one page of an attempt's log, by byte offset.
- ``capacity()``: locations the backend knows of and what each offers; the controller registers a
  new one (or one declared dead, or of another incarnation) like a worker registration, and keeps
  known ones alive through their observations. A backend whose locations register themselves
  returns ``[]``.

Mapping back (DESIGN §8): a lost node, preemption, eviction or time limit is a preemption; a
non-zero exit or OOM is a failure; an observation error is neither. Engine-side retries are off.
``WorkerDaemonBackend`` is the first implementation: Iris's own worker daemons over gRPC.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

import grpc

from iris.cluster.controller.state import ObservedAttempt
from iris.cluster.controller.task import TaskAttempt
from iris.cluster.failures import last_line
from iris.cluster.rules import FLOW_CONTROL_OPTIONS
from iris.cluster.spec import JobSpec
from iris.cluster.types import JobId, TaskId, WorkerId, WorkerMetadata
from iris.cluster.validation import MAX_MESSAGE_BYTES
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.tls import channel_credentials

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptLaunch:
    """Start this attempt of this task at this location."""

    job_id: JobId
    task_id: TaskId
    task_index: int
    num_tasks: int
    attempt_id: int
    spec: JobSpec
    worker_id: WorkerId
    address: str
    task_token: str = ""
    """The attempt's own token (the task gets it as IRIS_TOKEN)."""
    credential: str = ""
    """What the controller presents to the location (its proof to a worker daemon)."""
    previous: TaskAttempt | None = None
    """How the task's previous attempt ended (the task gets IRIS_PREVIOUS_*)."""
    rendezvous: tuple[tuple[str, str], ...] = ()
    """A coscheduled task's rendezvous variables (``iris.cluster.rendezvous``)."""
    job_uid: str = ""
    """The job incarnation (echoed in the attempt's reports)."""
    checkpoint_dir: str = ""
    """The job's directory on the shared dir (``IRIS_CHECKPOINT_DIR``); "": none."""
    ports: tuple[tuple[str, int], ...] = ()
    """Named ports allocated from the location's range (empty: it declares none; it picks them)."""
    coordinator_port: int = 0
    """The gang's rendezvous port, on the gang's lead only (the location checks it is free)."""
    run_as: tuple[int, str] = (0, "")
    """Its owner's task uid and mapped Unix user (``uids.TaskUids.run_as``)."""

    def with_credentials(self, task_token: str, credential: str) -> AttemptLaunch:
        """This launch with its tokens (``dataclasses.replace`` of the two, without its
        introspection: this is once per launch)."""
        return AttemptLaunch(self.job_id, self.task_id, self.task_index, self.num_tasks, self.attempt_id, self.spec,
                             self.worker_id, self.address, task_token, credential, self.previous, self.rendezvous,
                             self.job_uid, self.checkpoint_dir, self.ports, self.coordinator_port, self.run_as)


class LaunchOutcome(Enum):
    ACCEPTED = "accepted"
    TASK_REFUSED = "task_refused"
    BACKEND_FAILED = "backend_failed"


@dataclass(frozen=True, slots=True)
class LaunchResult:
    outcome: LaunchOutcome
    error: str = ""
    incarnation: str = ""
    """For ACCEPTED: the worker process that accepted it, and the sequence it accepted it under
    (an observed set taken before that sequence may lack it without it being lost)."""
    sequence: int = 0
    location_gone: bool = False
    """For BACKEND_FAILED: the location said it is going away (or cannot be reached at all)."""


@dataclass(frozen=True, slots=True)
class AttemptKill:
    worker_id: WorkerId
    address: str
    task_id: TaskId
    attempt_id: int
    grace_period_s: float
    credential: str = ""
    job_uid: str = ""


@dataclass(frozen=True, slots=True)
class LogRequest:
    worker_id: WorkerId
    address: str
    task_id: TaskId
    attempt_id: int
    start_line: int
    start_offset: int | None
    """Byte offset where the page starts (O(page)); None: count ``start_line`` lines from the start."""
    max_lines: int
    credential: str = ""


@dataclass(frozen=True, slots=True)
class LogLine:
    data: str
    source: str = "output"
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class LogPage:
    lines: list[LogLine]
    next_line: int
    next_offset: int
    attempt_finished: bool


@dataclass(frozen=True, slots=True)
class Observation:
    """The complete set of attempts one location holds, as of ``sequence`` in ``incarnation``."""

    worker_id: WorkerId
    attempts: list[ObservedAttempt]
    incarnation: str
    sequence: int
    unfit: str = ""
    """Non-empty: the location cannot run tasks as it promised (why); nothing is placed there."""


@dataclass(frozen=True, slots=True)
class LocationCapacity:
    """A location the backend offers, as a registration would describe it."""

    worker_id: WorkerId
    address: str
    metadata: WorkerMetadata
    incarnation: str = ""
    attempts: list[ObservedAttempt] = field(default_factory=list)
    sequence: int = 0
    unfit: str = ""
    """As ``Observation.unfit``."""


class BackendUnavailable(Exception):
    """The backend could not do what was asked (e.g. the worker holding a log did not answer)."""


class TaskBackend(Protocol):
    ships_logs: bool
    """Whether its locations push every attempt's log to the controller as it is written
    (``PushTaskLogs``): then the controller serves logs from its own copy only; else a page is
    fetched from the backend while the controller holds no copy."""

    def submit(self, launches: Sequence[AttemptLaunch]) -> list[LaunchResult]:
        """Start attempts that all go to one location; results[i] answers launches[i]."""
        ...

    def kill(self, kill: AttemptKill) -> None:
        """Stop one attempt. Raises BackendUnavailable when it could not be delivered."""
        ...

    def observe(self) -> list[Observation]: ...

    def fetch_logs(self, request: LogRequest) -> LogPage:
        """Raises BackendUnavailable when the log's location does not answer."""
        ...

    def capacity(self) -> list[LocationCapacity]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------- worker daemons


class WorkerClients(Protocol):
    """The gRPC transport to worker daemons (``GrpcWorkerClients``; tests substitute a fake)."""

    def run_tasks(
        self, address: str, request: cluster_pb2.Worker.RunTasksRequest, timeout: float, credential: str = ""
    ) -> cluster_pb2.Worker.RunTasksResponse: ...

    def kill_task(self, address: str, request: cluster_pb2.Worker.KillTaskRequest, timeout: float,
                  credential: str = "") -> None: ...

    def fetch_logs(
        self, address: str, request: cluster_pb2.Worker.FetchTaskLogsRequest, timeout: float, credential: str = ""
    ) -> cluster_pb2.Worker.FetchTaskLogsResponse: ...

    def close(self) -> None: ...


class GrpcWorkerClients:
    """One cached gRPC channel per worker address (TLS, verified against ``tls_ca``, when given)."""

    def __init__(self, tls_ca: Path | None = None) -> None:
        self._credentials = channel_credentials(tls_ca) if tls_ca is not None else None
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, cluster_pb2_grpc.WorkerServiceStub] = {}

    def _stub(self, address: str) -> cluster_pb2_grpc.WorkerServiceStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                           ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), *FLOW_CONTROL_OPTIONS]
                if self._credentials is not None:
                    channel = grpc.secure_channel(address, self._credentials, options=options)
                else:
                    channel = grpc.insecure_channel(address, options=options)
                self._channels[address] = channel
                stub = self._stubs[address] = cluster_pb2_grpc.WorkerServiceStub(channel)
            return stub

    def run_tasks(
        self, address: str, request: cluster_pb2.Worker.RunTasksRequest, timeout: float, credential: str = ""
    ) -> cluster_pb2.Worker.RunTasksResponse:
        return self._stub(address).RunTasks(request, timeout=timeout, metadata=_bearer(credential))

    def kill_task(self, address: str, request: cluster_pb2.Worker.KillTaskRequest, timeout: float,
                  credential: str = "") -> None:
        self._stub(address).KillTask(request, timeout=timeout, metadata=_bearer(credential))

    def fetch_logs(
        self, address: str, request: cluster_pb2.Worker.FetchTaskLogsRequest, timeout: float, credential: str = ""
    ) -> cluster_pb2.Worker.FetchTaskLogsResponse:
        return self._stub(address).FetchTaskLogs(request, timeout=timeout, metadata=_bearer(credential))

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()


def _bearer(credential: str) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {credential}"),) if credential else None


_CONTENT_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
"""A whole call refused for what it carried (a field the worker rejects, a message over its
receive limit): the fault of a task in it, not of the worker."""
_GONE = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)


def rpc_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def rpc_error_text(error: grpc.RpcError) -> str:
    code = rpc_code(error)
    details = getattr(error, "details", None)
    text = details() if callable(details) else str(error)
    return f"{code.name if code is not None else 'ERROR'}: {text}"


@dataclass(frozen=True, slots=True)
class WorkerDaemonTimeouts:
    dispatch_s: float = 10.0
    kill_s: float = 5.0
    logs_s: float = 10.0


class WorkerDaemonBackend:
    """Iris worker daemons: they register and heartbeat themselves (push), so ``observe`` and
    ``capacity`` are empty and their RPCs reach the controller directly."""

    _TEMPLATE_CACHE = 64
    ships_logs = True
    """The workers ship every attempt's log to the controller (``PushTaskLogs``): with a log store the
    controller reads logs from its own copy and never asks a worker."""

    def __init__(self, clients: WorkerClients | None = None, timeouts: WorkerDaemonTimeouts | None = None) -> None:
        self._clients: WorkerClients = clients or GrpcWorkerClients()
        self._timeouts = timeouts or WorkerDaemonTimeouts()
        self._templates: OrderedDict[tuple[JobId, str], cluster_pb2.Worker.RunTaskRequest] = OrderedDict()
        """Per job incarnation (id, uid): a deleted job's name reused is another job."""
        self._templates_lock = threading.Lock()

    def submit(self, launches: Sequence[AttemptLaunch]) -> list[LaunchResult]:
        if not launches:
            return []
        first = launches[0]
        request = cluster_pb2.Worker.RunTasksRequest(tasks=[self._run_task_request(launch) for launch in launches],
                                                     worker_id=first.worker_id)
        try:
            response = self._clients.run_tasks(first.address, request, self._timeouts.dispatch_s, first.credential)
        except grpc.RpcError as e:
            code = rpc_code(e)
            text = f"dispatch to worker {first.worker_id} failed: {rpc_error_text(e)}"
            if code in _CONTENT_REFUSALS:
                if len(launches) > 1:
                    # One of them made the worker refuse the call: find it by sending each alone, so
                    # the others still run and the worker is not blamed.
                    return [result for launch in launches for result in self.submit([launch])]
                return [LaunchResult(LaunchOutcome.TASK_REFUSED, f"worker {first.worker_id} refused the task: "
                                     f"{rpc_error_text(e)}")]
            gone = code in _GONE
            return [LaunchResult(LaunchOutcome.BACKEND_FAILED, text, location_gone=gone)] * len(launches)
        results = list(response.results)
        if len(results) != len(launches):
            text = f"dispatch to worker {first.worker_id} failed: {len(results)} results for {len(launches)} tasks"
            return [LaunchResult(LaunchOutcome.BACKEND_FAILED, text)] * len(launches)
        out: list[LaunchResult] = []
        for launch, result in zip(launches, results, strict=True):
            if result.accepted:
                out.append(LaunchResult(LaunchOutcome.ACCEPTED, incarnation=result.incarnation,
                                        sequence=result.sequence))
            elif result.worker_stopping:
                out.append(LaunchResult(LaunchOutcome.BACKEND_FAILED,
                                        f"worker {launch.worker_id} is shutting down: {result.error}",
                                        location_gone=True))
            else:
                out.append(LaunchResult(LaunchOutcome.TASK_REFUSED,
                                        f"worker {launch.worker_id} refused the task: {result.error}"))
        return out

    def _run_task_request(self, launch: AttemptLaunch) -> cluster_pb2.Worker.RunTaskRequest:
        """The job's part of the request is built once per job (a template copied in one call);
        only the task's fields are set per task."""
        with self._templates_lock:
            template = self._templates.get((launch.job_id, launch.job_uid))
            if template is None:
                template = cluster_pb2.Worker.RunTaskRequest(job_id=launch.job_id, num_tasks=launch.num_tasks,
                                                             checkpoint_dir=launch.checkpoint_dir)
                launch.spec.to_run_task(template)  # the fields declared worker-visible, by their declarations
                template.run_as_uid, template.run_as_user = launch.run_as
                template.resources.replicas = launch.spec.replicas
                self._templates[(launch.job_id, launch.job_uid)] = template
                if len(self._templates) > self._TEMPLATE_CACHE:
                    self._templates.popitem(last=False)
            else:
                self._templates.move_to_end((launch.job_id, launch.job_uid))
        run = cluster_pb2.Worker.RunTaskRequest()
        run.CopyFrom(template)
        run.task_id = launch.task_id
        run.task_index = launch.task_index
        run.attempt_id = launch.attempt_id
        if launch.job_uid:
            run.job_uid = launch.job_uid
        if launch.task_token:
            run.task_token = launch.task_token
        if launch.rendezvous:
            run.rendezvous_env.update(dict(launch.rendezvous))
        if launch.ports:
            run.allocated_ports.update(dict(launch.ports))
        if launch.coordinator_port:
            run.coordinator_port = launch.coordinator_port
        previous = launch.previous
        if previous is not None:
            run.previous_state = previous.state  # type: ignore[assignment]
            run.previous_exit_code = previous.exit_code or 0
            run.previous_error = last_line(previous.error)
        return run

    def kill(self, kill: AttemptKill) -> None:
        request = cluster_pb2.Worker.KillTaskRequest(
            task_id=kill.task_id, attempt_id=kill.attempt_id, grace_period_seconds=kill.grace_period_s,
            job_uid=kill.job_uid, worker_id=kill.worker_id,
        )
        try:
            self._clients.kill_task(kill.address, request, self._timeouts.kill_s, kill.credential)
        except grpc.RpcError as e:
            raise BackendUnavailable(rpc_error_text(e)) from e

    def observe(self) -> list[Observation]:
        return []

    def capacity(self) -> list[LocationCapacity]:
        return []

    def fetch_logs(self, request: LogRequest) -> LogPage:
        proto = cluster_pb2.Worker.FetchTaskLogsRequest(
            task_id=request.task_id, attempt_id=request.attempt_id, start_line=request.start_line,
            max_lines=request.max_lines,
        )
        if request.start_offset is not None:
            proto.start_offset = request.start_offset
        try:
            reply = self._clients.fetch_logs(request.address, proto, self._timeouts.logs_s, request.credential)
        except grpc.RpcError as e:
            raise BackendUnavailable(rpc_error_text(e)) from e
        return LogPage(
            lines=[LogLine(line.data, line.source, line.timestamp_ms) for line in reply.lines],
            next_line=reply.next_line,
            next_offset=reply.next_offset,
            attempt_finished=reply.attempt_finished,
        )

    def close(self) -> None:
        self._clients.close()


__all__ = [
    "AttemptKill",
    "AttemptLaunch",
    "BackendUnavailable",
    "GrpcWorkerClients",
    "LaunchOutcome",
    "LaunchResult",
    "LocationCapacity",
    "LogLine",
    "LogPage",
    "LogRequest",
    "Observation",
    "TaskBackend",
    "WorkerClients",
    "WorkerDaemonBackend",
    "WorkerDaemonTimeouts",
]
