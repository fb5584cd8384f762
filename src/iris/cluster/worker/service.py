"""gRPC edge of the worker: ``WorkerService`` over a ``Worker``, plus ``serve_worker`` which
binds the server and starts the worker.

Every protobuf the worker receives is checked and typed here (``task_launch``: the worker-visible
job fields' rules, ``iris.cluster.validation.validate_run_task``) and every reply is built here
(``Worker`` takes and returns typed values). Validation errors become INVALID_ARGUMENT /
NOT_FOUND / FAILED_PRECONDITION naming the field; nothing a caller sends can crash the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from iris.cluster.addresses import host_port
from iris.cluster.auth import bearer
from iris.cluster.clock import Clock
from iris.cluster.errors import InvalidArgument, IrisError, Unauthenticated
from iris.cluster.rules import FLOW_CONTROL_OPTIONS, connection_options
from iris.cluster.spec import WORKER_FIELDS, JobSpec
from iris.cluster.validation import MAX_MESSAGE_BYTES, Limits, validate_run_task
from iris.cluster.worker.attempts import Acceptance, TaskLaunch
from iris.cluster.worker.gpu import GpuInfo
from iris.cluster.worker.link import status_proto
from iris.cluster.worker.runtime import Runtime
from iris.cluster.worker.worker import Worker, WorkerConfig
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.status import grpc_status
from iris.rpc.tls import server_credentials

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

def _abort(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    if not isinstance(error, IrisError):
        logger.exception("unexpected error in worker service")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error}")
    context.abort(grpc_status(error), str(error))
    raise AssertionError("unreachable")  # context.abort raises


def _call(context: grpc.ServicerContext, fn: Callable[[], _T], worker: Worker | None = None) -> _T:
    try:
        if worker is not None:
            worker.check_caller(bearer(context.invocation_metadata()))
        return fn()
    except Exception as e:
        _abort(context, e)


class AuthenticateFirst(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """The controller's credential is checked from a call's metadata before its request is read
    into a message (issue 23 item 7): anything else is UNAUTHENTICATED, its bytes never parsed."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        try:
            self._worker.check_caller(bearer(details.invocation_metadata))
        except Unauthenticated as e:
            message = str(e)

            def refuse(request: bytes, context: grpc.ServicerContext) -> None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

            return grpc.unary_unary_rpc_method_handler(refuse)
        return continuation(details)


def task_launch(request: cluster_pb2.Worker.RunTaskRequest, limits: Limits) -> TaskLaunch:
    """A RunTaskRequest, checked by the rules of the job fields a worker sees, as a ``TaskLaunch``."""
    entrypoint = validate_run_task(request, limits)
    fields = {f.name: f.get(request) for f in WORKER_FIELDS if f.name != "entrypoint"}
    spec = JobSpec(name=request.job_id.rpartition("/")[2], entrypoint=entrypoint, replicas=request.num_tasks or 1,
                   **fields)
    return TaskLaunch(request.job_id, request.task_id, request.task_index, request.num_tasks, request.attempt_id,
                      spec, request.task_token, request.previous_state, request.previous_exit_code,
                      request.previous_error, dict(request.rendezvous_env), request.job_uid, request.worker_id,
                      request.checkpoint_dir, allocated_ports(request), request.coordinator_port,
                      run_as(request))


def run_as(request: cluster_pb2.Worker.RunTaskRequest) -> tuple[int, str]:
    """Who the controller says the task runs as: (its owner's uid, or 0; a Unix user's name, or "")."""
    uid = request.run_as_uid
    if uid and not 1 <= uid <= 2**32 - 2:
        raise InvalidArgument(f"run_as_uid: a uid is 1..{2**32 - 2}, got {uid}")
    if len(request.run_as_user) > 64:
        raise InvalidArgument("run_as_user: at most 64 characters")
    return uid, request.run_as_user


def allocated_ports(request: cluster_pb2.Worker.RunTaskRequest) -> dict[str, int]:
    """The named ports the controller allocated: each one of the job's ``ports``, each 1..65535."""
    if request.coordinator_port and not 1 <= request.coordinator_port <= 65535:
        raise InvalidArgument(f"coordinator_port: a port is 1..65535, got {request.coordinator_port}")
    if not request.allocated_ports:
        return {}
    names = set(request.ports)
    for name, port in request.allocated_ports.items():
        if name not in names:
            raise InvalidArgument(f"allocated_ports: {name[:64]!r} is not one of the job's ports")
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"allocated_ports[{name!r}]: a port is 1..65535, got {port}")
    return dict(request.allocated_ports)


def _launch_or_refusal(request: cluster_pb2.Worker.RunTaskRequest, limits: Limits) -> TaskLaunch | InvalidArgument:
    try:
        return task_launch(request, limits)
    except InvalidArgument as e:
        return e


def acceptance_proto(acceptance: Acceptance) -> cluster_pb2.Worker.RunTaskResponse:
    return cluster_pb2.Worker.RunTaskResponse(
        accepted=acceptance.accepted, incarnation=acceptance.incarnation, sequence=acceptance.sequence,
        error=acceptance.error, worker_stopping=acceptance.worker_stopping)


class WorkerServiceImpl(cluster_pb2_grpc.WorkerServiceServicer):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def RunTask(
        self, request: cluster_pb2.Worker.RunTaskRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Worker.RunTaskResponse:
        _call(context, lambda: self._worker.check_addressee(request.worker_id))
        return acceptance_proto(_call(context, lambda: self._worker.run_task(task_launch(request, self._worker.limits)),
                                      self._worker))

    def RunTasks(
        self, request: cluster_pb2.Worker.RunTasksRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Worker.RunTasksResponse:
        _call(context, lambda: self._worker.check_addressee(request.worker_id))
        results = _call(context, lambda: self._worker.run_tasks(
            [_launch_or_refusal(t, self._worker.limits) for t in request.tasks]), self._worker)
        return cluster_pb2.Worker.RunTasksResponse(results=[acceptance_proto(r) for r in results])

    def GetTaskStatus(
        self, request: cluster_pb2.Worker.GetTaskStatusRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Worker.GetTaskStatusResponse:
        attempt_id = request.attempt_id if request.HasField("attempt_id") else None
        status = _call(context, lambda: self._worker.task_status(request.task_id, attempt_id), self._worker)
        return cluster_pb2.Worker.GetTaskStatusResponse(task=status_proto(status))

    def ListTasks(
        self, request: cluster_pb2.Worker.ListTasksRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Worker.ListTasksResponse:
        statuses = _call(context, self._worker.list_tasks, self._worker)
        return cluster_pb2.Worker.ListTasksResponse(tasks=[status_proto(s) for s in statuses])

    def FetchTaskLogs(
        self, request: cluster_pb2.Worker.FetchTaskLogsRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Worker.FetchTaskLogsResponse:
        attempt_id = request.attempt_id if request.HasField("attempt_id") else None
        chunk = _call(
            context,
            lambda: self._worker.fetch_logs(
                request.task_id, attempt_id, request.start_line, request.max_lines,
                request.start_offset if request.HasField("start_offset") else None,
            ),
            self._worker,
        )
        return cluster_pb2.Worker.FetchTaskLogsResponse(
            lines=[cluster_pb2.LogLine(source=r.source, data=r.text, timestamp_ms=r.timestamp_ms) for r in chunk.lines],
            next_line=chunk.next_line,
            next_offset=chunk.next_offset,
            attempt_finished=chunk.attempt_finished,
            attempt_id=chunk.attempt_id,
        )

    def KillTask(
        self, request: cluster_pb2.Worker.KillTaskRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Empty:
        _call(context, lambda: self._worker.check_caller(bearer(context.invocation_metadata())))
        _call(context, lambda: self._worker.check_addressee(request.worker_id))
        if request.grace_period_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "grace_period_seconds: must be >= 0")
        _call(
            context,
            lambda: self._worker.kill_task(request.task_id, request.attempt_id, request.grace_period_seconds,
                                           request.job_uid),
        )
        return cluster_pb2.Empty()

    def HealthCheck(
        self, request: cluster_pb2.Worker.HealthCheckRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Worker.HealthCheckResponse:
        _call(context, lambda: self._worker.check_caller(bearer(context.invocation_metadata())))
        return cluster_pb2.Worker.HealthCheckResponse(
            healthy=not self._worker.stopping,
            worker_id=self._worker.worker_id,
            running_tasks=self._worker.running_count(),
            uptime_ms=self._worker.uptime_ms(),
        )


@dataclass(slots=True)
class ServingWorker:
    """A worker with its gRPC server bound and its loops running."""

    worker: Worker
    server: grpc.Server
    address: str

    def stop(self, kill_tasks: bool = True) -> None:
        """Stop the worker (kills its tasks, flushes their reports), then the server."""
        self.worker.stop(kill_tasks=kill_tasks)
        self.server.stop(grace=1.0).wait()


def serve_worker(
    config: WorkerConfig,
    clock: Clock | None = None,
    runtime: Runtime | None = None,
    gpus: list[GpuInfo] | None = None,
    rpc_threads: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> ServingWorker:
    """Build a Worker, bind its gRPC service on ``config.host:config.port`` (0: a free port),
    and start it. The caller owns the result and must ``stop()`` it."""
    worker = Worker(config, clock=clock, runtime=runtime, gpus=gpus)
    # The receive limit is set explicitly: at least what the controller accepts in one dispatch.
    server = grpc.server(
        ThreadPoolExecutor(max_workers=rpc_threads, thread_name_prefix="iris-worker-rpc"),
        interceptors=[AuthenticateFirst(worker)],
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 *connection_options(), *FLOW_CONTROL_OPTIONS],
    )
    cluster_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServiceImpl(worker), server)
    if tls_cert is not None and tls_key is not None:
        port = server.add_secure_port(f"{config.host}:{config.port}", server_credentials(tls_cert, tls_key))
    else:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    server.start()
    address = host_port(worker.advertise_host, port)
    try:
        worker.start(address)
    except Exception:
        server.stop(grace=None)
        raise
    return ServingWorker(worker=worker, server=server, address=address)
