"""Shared fixtures for worker tests: a real in-process fake controller and command builders."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from iris.cluster.errors import InvalidArgument
from iris.cluster.validation import DEFAULT_LIMITS
from iris.cluster.worker.attempts import TaskLaunch
from iris.cluster.worker.service import task_launch
from iris.rpc import cluster_pb2, cluster_pb2_grpc


@dataclass
class FakeControllerState:
    registrations: list[cluster_pb2.Controller.RegisterWorkerRequest] = field(default_factory=list)
    heartbeats: list[cluster_pb2.Controller.HeartbeatRequest] = field(default_factory=list)
    reports: list[cluster_pb2.Controller.ReportTaskStateRequest] = field(default_factory=list)
    bundle_fetches: list[str] = field(default_factory=list)
    log_chunks: list[cluster_pb2.LogChunk] = field(default_factory=list)


class FakeController(cluster_pb2_grpc.ControllerServiceServicer):
    """Records what workers send; can be scripted to fail with UNAVAILABLE, to ask for
    re-registration, or to send kill lists."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = FakeControllerState()
        self.unavailable = False
        self.reports_released = threading.Event()
        self.reports_released.set()
        """Cleared: ReportTaskState handlers block until it is set again (a slow controller)."""
        self.blocked_reports = 0
        self.rejected: list[str] = []
        """Methods called (and failed) while ``unavailable``."""
        self.reregister_next = False
        self.heartbeat_interval_ms = 0
        self.kills: list[tuple[str, int]] = []
        self.bundles: dict[str, bytes] = {}
        self.controller_token = ""
        """What registration tells workers the controller presents on its calls ("": none)."""

    # -- scripting ----------------------------------------------------------------------------

    def _maybe_fail(self, context: grpc.ServicerContext, method: str) -> None:
        if self.unavailable:
            self.rejected.append(method)
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake controller is down")

    def _take_kills(self) -> list[cluster_pb2.WorkerTaskStatus]:
        kills = [cluster_pb2.WorkerTaskStatus(task_id=t, attempt_id=a) for t, a in self.kills]
        self.kills = []
        return kills

    # -- queries ------------------------------------------------------------------------------

    def updates(self) -> list[cluster_pb2.WorkerTaskStatus]:
        with self.lock:
            return [u for r in self.state.reports for u in r.updates]

    def states_of(self, task_id: str, attempt_id: int = 0) -> list[int]:
        return [u.state for u in self.updates() if u.task_id == task_id and u.attempt_id == attempt_id]

    def last_update(self, task_id: str, attempt_id: int = 0) -> cluster_pb2.WorkerTaskStatus | None:
        found = [u for u in self.updates() if u.task_id == task_id and u.attempt_id == attempt_id]
        return found[-1] if found else None

    def terminal_update(self, task_id: str, attempt_id: int = 0) -> cluster_pb2.WorkerTaskStatus | None:
        update = self.last_update(task_id, attempt_id)
        if update is not None and update.state >= cluster_pb2.TASK_STATE_SUCCEEDED:
            return update
        return None

    # -- service ------------------------------------------------------------------------------

    def RegisterWorker(
        self, request: cluster_pb2.Controller.RegisterWorkerRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.RegisterWorkerResponse:
        with self.lock:
            self._maybe_fail(context, "RegisterWorker")
            self.state.registrations.append(request)
            return cluster_pb2.Controller.RegisterWorkerResponse(accepted=True, kill=self._take_kills(),
                                                                 controller_token=self.controller_token)

    def Heartbeat(
        self, request: cluster_pb2.Controller.HeartbeatRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.HeartbeatResponse:
        with self.lock:
            self._maybe_fail(context, "Heartbeat")
            self.state.heartbeats.append(request)
            reregister, self.reregister_next = self.reregister_next, False
            return cluster_pb2.Controller.HeartbeatResponse(reregister=reregister, kill=self._take_kills(),
                                                            heartbeat_interval_ms=self.heartbeat_interval_ms)

    def ReportTaskState(
        self, request: cluster_pb2.Controller.ReportTaskStateRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        if not self.reports_released.is_set():
            with self.lock:
                self.blocked_reports += 1
            self.reports_released.wait(30)
        with self.lock:
            self._maybe_fail(context, "ReportTaskState")
            self.state.reports.append(request)
            return cluster_pb2.Controller.ReportTaskStateResponse(kill=self._take_kills())

    def PushTaskLogs(
        self, request: cluster_pb2.Controller.PushTaskLogsRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.PushTaskLogsResponse:
        with self.lock:
            self._maybe_fail(context, "PushTaskLogs")
            self.state.log_chunks.extend(request.chunks)
            return cluster_pb2.Controller.PushTaskLogsResponse(
                next_offsets=[c.start_offset + len(c.data) for c in request.chunks])

    def FetchBundle(
        self, request: cluster_pb2.Controller.FetchBundleRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.FetchBundleResponse:
        with self.lock:
            self._maybe_fail(context, "FetchBundle")
            self.state.bundle_fetches.append(request.bundle_hash)
            blob = self.bundles.get(request.bundle_hash)
        if blob is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"bundle_hash: unknown bundle {request.bundle_hash}")
        return cluster_pb2.Controller.FetchBundleResponse(blob=blob)


@dataclass
class RunningFakeController:
    servicer: FakeController
    address: str


@pytest.fixture
def fake_controller() -> Iterator[RunningFakeController]:
    servicer = FakeController()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    cluster_pb2_grpc.add_ControllerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield RunningFakeController(servicer=servicer, address=f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None).wait()


def command_request(
    argv: Sequence[str],
    task_id: str = "job/task-0",
    attempt_id: int = 0,
    **kwargs: object,
) -> cluster_pb2.Worker.RunTaskRequest:
    entrypoint = cluster_pb2.Entrypoint(command=cluster_pb2.CommandEntrypoint(argv=list(argv)))
    job_id = task_id.rsplit("/task-", 1)[0]
    return cluster_pb2.Worker.RunTaskRequest(
        job_id=job_id,
        task_id=task_id,
        task_index=int(task_id.rsplit("-", 1)[1]),
        num_tasks=1,
        attempt_id=attempt_id,
        serialized_entrypoint=entrypoint.SerializeToString(),
        **kwargs,  # type: ignore[arg-type]
    )


def launch(request: cluster_pb2.Worker.RunTaskRequest) -> TaskLaunch:
    """A RunTaskRequest through the worker's edge (``service.task_launch``), as a RunTask call gets it."""
    return task_launch(request, DEFAULT_LIMITS)


def launches(requests: Sequence[cluster_pb2.Worker.RunTaskRequest]) -> list[TaskLaunch | InvalidArgument]:
    """RunTasks' requests through the worker's edge: a bad one becomes its refusal."""
    out: list[TaskLaunch | InvalidArgument] = []
    for request in requests:
        try:
            out.append(launch(request))
        except InvalidArgument as e:
            out.append(e)
    return out
