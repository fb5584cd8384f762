"""gRPC ``ControllerService``: validate, call the Controller, map errors to status codes.

Reads go through the controller's read methods, which hand back frozen views; the protobuf is built
from them here (``views.py``), after the controller's lock was released.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc

from iris.cluster.controller.controller import Controller
from iris.cluster.controller.views import endpoint_proto, job_proto, task_proto, worker_proto
from iris.cluster.errors import InvalidArgument, IrisError
from iris.cluster.types import JobId
from iris.cluster.validation import MAX_MESSAGE_BYTES
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.status import grpc_status

logger = logging.getLogger(__name__)

_R = TypeVar("_R")


def _rpc(method: Callable[..., _R]) -> Callable[..., _R]:
    """Map IrisError to its status code; any other exception to INTERNAL with a log line.
    Either way the server keeps serving and state is unchanged by a rejected request."""

    @functools.wraps(method)
    def wrapper(self: ControllerServiceImpl, request: Any, context: grpc.ServicerContext) -> _R:
        try:
            return method(self, request, context)
        except IrisError as e:
            context.abort(grpc_status(e), str(e))
        except Exception as e:
            logger.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error: {e}")
        raise AssertionError("unreachable")  # context.abort raises

    return wrapper


class ControllerServiceImpl(cluster_pb2_grpc.ControllerServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    @_rpc
    def LaunchJob(
        self, request: cluster_pb2.Controller.LaunchJobRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.LaunchJobResponse:
        return cluster_pb2.Controller.LaunchJobResponse(job_id=self._controller.launch_job(request))

    @_rpc
    def GetJobStatus(
        self, request: cluster_pb2.Controller.GetJobStatusRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.GetJobStatusResponse:
        _require(request.job_id, "job_id")
        job, tasks = self._controller.job_status(JobId(request.job_id), include_tasks=request.include_tasks)
        return cluster_pb2.Controller.GetJobStatusResponse(job=job_proto(job, tasks))

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
        page = self._controller.list_jobs(
            states=list(request.states), prefix=request.prefix, page_size=request.page_size,
            page_token=request.page_token,
        )
        return cluster_pb2.Controller.ListJobsResponse(
            jobs=[job_proto(j) for j in page.jobs], next_page_token=page.next_page_token
        )

    @_rpc
    def GetTaskStatus(
        self, request: cluster_pb2.Controller.GetTaskStatusRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.GetTaskStatusResponse:
        _require(request.job_id, "job_id")
        task = self._controller.task_status(JobId(request.job_id), request.task_index)
        return cluster_pb2.Controller.GetTaskStatusResponse(task=task_proto(task))

    @_rpc
    def ListTasks(
        self, request: cluster_pb2.Controller.ListTasksRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ListTasksResponse:
        _require(request.job_id, "job_id")
        tasks = self._controller.list_tasks(JobId(request.job_id))
        return cluster_pb2.Controller.ListTasksResponse(tasks=[task_proto(t) for t in tasks])

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
        return cluster_pb2.Controller.ListWorkersResponse(
            workers=[worker_proto(w) for w in self._controller.list_workers()]
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
            endpoint=endpoint_proto(self._controller.lookup_endpoint(request.name))
        )

    @_rpc
    def ListEndpoints(
        self, request: cluster_pb2.Controller.ListEndpointsRequest, context: grpc.ServicerContext
    ) -> cluster_pb2.Controller.ListEndpointsResponse:
        return cluster_pb2.Controller.ListEndpointsResponse(
            endpoints=[endpoint_proto(e) for e in self._controller.list_endpoints(request.prefix)]
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
