"""Drive a ``Controller`` with protobufs, through the service's edge functions (``service.py``):
the same field checks and conversions a gRPC call gets, without a server. For tests that build
requests as a worker or client would."""

from __future__ import annotations

from iris.cluster.auth import Principal
from iris.cluster.controller import service as edge
from iris.cluster.controller.access import ANONYMOUS_LOCAL
from iris.cluster.controller.controller import Controller
from iris.cluster.controller.requests import HeartbeatReply, RegisterReply, TaskLogPage
from iris.cluster.types import AttemptRef, JobId, WorkerId
from iris.rpc import cluster_pb2

C = cluster_pb2.Controller


def launch_job(controller: Controller, request: C.LaunchJobRequest, owner: str = "") -> JobId:
    spec, blob = edge.launch_request(request, controller.config.limits)
    return controller.launch_job(spec, owner=owner, bundle_blob=blob)


def register_worker(controller: Controller, request: C.RegisterWorkerRequest,
                    principal: Principal = ANONYMOUS_LOCAL) -> RegisterReply:
    return controller.register_worker(edge.registration(request, controller.config.limits), principal)


def heartbeat(controller: Controller, request: C.HeartbeatRequest) -> HeartbeatReply:
    return controller.heartbeat(edge.heartbeat_observation(request, controller.config.limits))


def report_task_state(controller: Controller, request: C.ReportTaskStateRequest) -> list[AttemptRef]:
    """The attempts the controller wants killed."""
    return controller.report_task_state(WorkerId(request.worker_id),
                                        edge.task_reports(request, controller.config.limits), request.unfit)


def fetch_task_logs(controller: Controller, request: C.FetchTaskLogsRequest) -> TaskLogPage:
    return controller.fetch_task_logs(edge.log_query(request))


def push_task_logs(controller: Controller, worker_id: WorkerId, request: C.PushTaskLogsRequest) -> list[int]:
    return controller.push_task_logs(worker_id, edge.log_chunks(request, controller.config.limits))


def register_endpoint(controller: Controller, request: C.RegisterEndpointRequest) -> str:
    return controller.register_endpoint(edge.endpoint_request(request))
