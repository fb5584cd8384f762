"""gRPC ``ControllerService``: validate, call the Controller, map errors to status codes.

Protobuf stays at this edge: ``job_to_proto`` / ``task_to_proto`` build status messages from the
core's objects and per-job counts (never by scanning a job's tasks for counts).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc

from iris.cluster.controller.controller import Controller
from iris.cluster.controller.job import Job
from iris.cluster.controller.state import ControllerEndpoint, ControllerWorker
from iris.cluster.controller.task import Task
from iris.cluster.errors import InvalidArgument, IrisError
from iris.cluster.types import JobId
from iris.rpc import cluster_pb2, cluster_pb2_grpc

logger = logging.getLogger(__name__)

T = cluster_pb2
_R = TypeVar("_R")


def job_to_proto(job: Job, tasks: list[Task] | None = None, worker_address: Callable[[str], str] | None = None
                 ) -> cluster_pb2.JobStatus:
    c = job.counts
    status = cluster_pb2.JobStatus(
        job_id=job.job_id,
        state=job.state,  # type: ignore[arg-type]
        error=job.error or "",
        submitted_at_ms=job.submitted_at_ms,
        started_at_ms=job.started_at_ms or 0,
        finished_at_ms=job.finished_at_ms or 0,
        parent_job_id=job.parent_job_id or "",
        num_tasks=job.num_tasks,
        tasks_pending=c[T.TASK_STATE_PENDING],
        tasks_running=c[T.TASK_STATE_RUNNING] + c[T.TASK_STATE_BUILDING],
        tasks_succeeded=c[T.TASK_STATE_SUCCEEDED],
        tasks_failed=c[T.TASK_STATE_FAILED] + c[T.TASK_STATE_WORKER_FAILED],
        tasks_killed=c[T.TASK_STATE_KILLED],
        tasks_worker_failed=c[T.TASK_STATE_WORKER_FAILED],
        tasks_unschedulable=c[T.TASK_STATE_UNSCHEDULABLE],
        resources=job.request.resources,
        pending_reason=job.pending_reason if c[T.TASK_STATE_PENDING] and not job.is_finished() else "",
        max_task_failures=job.max_task_failures,
        max_retries_failure=job.max_retries_failure,
        max_retries_preemption=job.max_retries_preemption,
    )
    if tasks is not None:
        status.tasks.extend(task_to_proto(t, job, worker_address) for t in tasks)
    return status


def task_to_proto(task: Task, job: Job | None = None, worker_address: Callable[[str], str] | None = None
                  ) -> cluster_pb2.TaskStatus:
    status = cluster_pb2.TaskStatus(
        task_id=task.task_id,
        job_id=task.job_id,
        task_index=task.task_index,
        state=task.state,  # type: ignore[arg-type]
        worker_id=task.worker_id or "",
        exit_code=task.exit_code or 0,
        error=task.error or "",
        started_at_ms=task.started_at_ms or 0,
        finished_at_ms=task.finished_at_ms or 0,
        current_attempt_id=task.current_attempt_id,
        failure_count=task.failure_count,
        preemption_count=task.preemption_count,
        pending_since_ms=task.pending_since_ms,
        pending_reason=job.pending_reason if job is not None and task.state == T.TASK_STATE_PENDING else "",
        attempts=[
            cluster_pb2.TaskAttempt(
                attempt_id=a.attempt_id,
                worker_id=a.worker_id or "",
                state=a.state,  # type: ignore[arg-type]
                exit_code=a.exit_code or 0,
                error=a.error or "",
                started_at_ms=a.started_at_ms or 0,
                finished_at_ms=a.finished_at_ms or 0,
                is_worker_failure=a.is_worker_failure,
            )
            for a in task.attempts
        ],
    )
    if task.worker_id and worker_address is not None:
        status.worker_address = worker_address(task.worker_id)
    return status


def worker_to_proto(worker: ControllerWorker) -> cluster_pb2.WorkerInfo:
    return cluster_pb2.WorkerInfo(
        worker_id=worker.worker_id,
        address=worker.address,
        metadata=worker.metadata,
        healthy=worker.healthy,
        last_heartbeat_ms=worker.last_heartbeat_ms,
        running_tasks=sorted(worker.running_tasks),
        committed_cpu=worker.committed_cpu,
        committed_memory_bytes=worker.committed_memory,
        committed_disk_bytes=worker.committed_disk,
        committed_gpus=worker.committed_devices,
        registered_at_ms=worker.registered_at_ms,
    )


def endpoint_to_proto(endpoint: ControllerEndpoint) -> cluster_pb2.Endpoint:
    return cluster_pb2.Endpoint(
        endpoint_id=endpoint.endpoint_id,
        name=endpoint.name,
        address=endpoint.address,
        job_id=endpoint.job_id,
        task_id=endpoint.task_id or "",
        attempt_id=endpoint.attempt_id,
        metadata=endpoint.metadata,
    )


def _rpc(method: Callable[..., _R]) -> Callable[..., _R]:
    """Map IrisError to its status code; any other exception to INTERNAL with a log line.
    Either way the server keeps serving and state is unchanged by a rejected request."""

    @functools.wraps(method)
    def wrapper(self: ControllerServiceImpl, request: Any, context: grpc.ServicerContext) -> _R:
        try:
            return method(self, request, context)
        except IrisError as e:
            context.abort(e.code, str(e))
        except Exception as e:
            logger.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error: {e}")
        raise AssertionError("unreachable")  # context.abort raises

    return wrapper


class ControllerServiceImpl(cluster_pb2_grpc.ControllerServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def _worker_address(self, worker_id: str) -> str:
        from iris.cluster.types import WorkerId

        worker = self._controller.state.get_worker(WorkerId(worker_id))
        return worker.address if worker is not None else ""

    @_rpc
    def LaunchJob(
        self, request: cluster_pb2.Controller.LaunchJobRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.LaunchJobResponse:
        return cluster_pb2.Controller.LaunchJobResponse(job_id=self._controller.launch_job(request))

    @_rpc
    def GetJobStatus(
        self, request: cluster_pb2.Controller.GetJobStatusRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.GetJobStatusResponse:
        with self._controller.lock:
            _require(request.job_id, "job_id")
            job = self._controller.get_job(JobId(request.job_id))
            tasks = self._controller.state.get_job_tasks(job.job_id) if request.include_tasks else None
            return cluster_pb2.Controller.GetJobStatusResponse(job=job_to_proto(job, tasks, self._worker_address))

    @_rpc
    def TerminateJob(
        self, request: cluster_pb2.Controller.TerminateJobRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Empty:
        _require(request.job_id, "job_id")
        self._controller.terminate_job(JobId(request.job_id))
        return cluster_pb2.Empty()

    @_rpc
    def ListJobs(
        self, request: cluster_pb2.Controller.ListJobsRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ListJobsResponse:
        with self._controller.lock:
            states = set(request.states)
            jobs = [
                job_to_proto(job)
                for job in self._controller.state.list_jobs()
                if (not states or job.state in states) and job.job_id.startswith(request.prefix)
            ]
            return cluster_pb2.Controller.ListJobsResponse(jobs=jobs)

    @_rpc
    def GetTaskStatus(
        self, request: cluster_pb2.Controller.GetTaskStatusRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.GetTaskStatusResponse:
        with self._controller.lock:
            _require(request.job_id, "job_id")
            task = self._controller.get_task(JobId(request.job_id), request.task_index)
            job = self._controller.get_job(JobId(request.job_id))
            return cluster_pb2.Controller.GetTaskStatusResponse(task=task_to_proto(task, job, self._worker_address))

    @_rpc
    def ListTasks(
        self, request: cluster_pb2.Controller.ListTasksRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ListTasksResponse:
        with self._controller.lock:
            _require(request.job_id, "job_id")
            job = self._controller.get_job(JobId(request.job_id))
            tasks = self._controller.state.get_job_tasks(job.job_id)
            return cluster_pb2.Controller.ListTasksResponse(
                tasks=[task_to_proto(t, job, self._worker_address) for t in tasks]
            )

    @_rpc
    def RegisterWorker(
        self, request: cluster_pb2.Controller.RegisterWorkerRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.RegisterWorkerResponse:
        return self._controller.register_worker(request)

    @_rpc
    def Heartbeat(
        self, request: cluster_pb2.Controller.HeartbeatRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.HeartbeatResponse:
        return self._controller.heartbeat(request)

    @_rpc
    def ListWorkers(
        self, request: cluster_pb2.Controller.ListWorkersRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ListWorkersResponse:
        with self._controller.lock:
            return cluster_pb2.Controller.ListWorkersResponse(
                workers=[worker_to_proto(w) for w in self._controller.state.list_workers()]
            )

    @_rpc
    def ReportTaskState(
        self, request: cluster_pb2.Controller.ReportTaskStateRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        return self._controller.report_task_state(request)

    @_rpc
    def RegisterEndpoint(
        self, request: cluster_pb2.Controller.RegisterEndpointRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.RegisterEndpointResponse:
        return cluster_pb2.Controller.RegisterEndpointResponse(endpoint_id=self._controller.register_endpoint(request))

    @_rpc
    def UnregisterEndpoint(
        self, request: cluster_pb2.Controller.UnregisterEndpointRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Empty:
        _require(request.endpoint_id, "endpoint_id")
        self._controller.unregister_endpoint(request.endpoint_id)
        return cluster_pb2.Empty()

    @_rpc
    def LookupEndpoint(
        self, request: cluster_pb2.Controller.LookupEndpointRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.LookupEndpointResponse:
        _require(request.name, "name")
        return cluster_pb2.Controller.LookupEndpointResponse(
            endpoint=endpoint_to_proto(self._controller.lookup_endpoint(request.name))
        )

    @_rpc
    def ListEndpoints(
        self, request: cluster_pb2.Controller.ListEndpointsRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ListEndpointsResponse:
        with self._controller.lock:
            return cluster_pb2.Controller.ListEndpointsResponse(
                endpoints=[endpoint_to_proto(e) for e in self._controller.state.list_endpoints(request.prefix)]
            )

    @_rpc
    def FetchTaskLogs(
        self, request: cluster_pb2.Controller.FetchTaskLogsRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.FetchTaskLogsResponse:
        _require(request.task_id, "task_id")
        return self._controller.fetch_task_logs(request)

    @_rpc
    def FetchBundle(
        self, request: cluster_pb2.Controller.FetchBundleRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.FetchBundleResponse:
        _require(request.bundle_hash, "bundle_hash")
        return cluster_pb2.Controller.FetchBundleResponse(blob=self._controller.get_bundle(request.bundle_hash))


def _require(value: str, field_name: str) -> None:
    if not value:
        raise InvalidArgument(f"{field_name}: must not be empty")


MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ControllerServer:
    """A gRPC server for a Controller on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 0, threads: int = 32) -> None:
        self.controller = controller
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="controller-rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        cluster_pb2_grpc.add_ControllerServiceServicer_to_server(ControllerServiceImpl(controller), self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind the controller to {host}:{port}")
        self.host = host
        self.address = f"{host}:{self.port}"
        if not controller.address:
            controller.address = self.address

    def start(self) -> None:
        self._server.start()
        self.controller.start()

    def stop(self, grace: float = 2.0) -> None:
        self._server.stop(grace).wait()
        self.controller.stop()

    def wait(self) -> None:
        self._server.wait_for_termination()
