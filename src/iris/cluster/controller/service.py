"""gRPC ``ControllerService``: validate, call the Controller, map errors to status codes.

Reads go through the controller's read methods, which hand back frozen views; the protobuf is built
from them here (``views.py``), after the controller's lock was released.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc

from iris.cluster.addresses import advertise_host, host_port
from iris.cluster.auth import Principal, Role, TokenRecord, bearer
from iris.cluster.controller.access import (
    PermissionDenied,
    in_task_scope,
    may_read_secrets,
    require_owner,
    require_reader,
    require_role,
)
from iris.cluster.controller.controller import Controller
from iris.cluster.controller.views import endpoint_proto, job_proto, task_proto, worker_proto
from iris.cluster.errors import InvalidArgument, IrisError
from iris.cluster.types import JobId, WorkerId
from iris.cluster.validation import MAX_MESSAGE_BYTES, check_id
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.status import grpc_status
from iris.rpc.tls import server_credentials

logger = logging.getLogger(__name__)

_R = TypeVar("_R")


MESSAGE_CAPS: dict[str, int] = {
    "LaunchJob": MAX_MESSAGE_BYTES,  # carries the workspace bundle
    "RegisterWorker": 64 * 1024 * 1024,  # carries a worker's complete observed set
    "Heartbeat": 64 * 1024 * 1024,
    "ReportTaskState": 64 * 1024 * 1024,
}
DEFAULT_MESSAGE_CAP = 1024 * 1024
"""Every other request is small: over this it is refused with INVALID_ARGUMENT naming the cap."""

_HUMANS = (Role.ADMIN, Role.USER)
_READERS = (Role.ADMIN, Role.USER, Role.TASK)


def _rpc(*roles: Role, read: bool = False, exclusive: bool = True) -> Callable[[Callable[..., _R]], Callable[..., _R]]:
    """Authenticate the caller, admit only ``roles`` (there is no default: every RPC names them),
    hand the method the ``Principal``; map IrisError to its status code and any other exception to
    INTERNAL with a log line. Either way the server keeps serving and a rejected request changes
    nothing. A ``read`` runs through the controller's read gate (``iris.cluster.controller.reads``):
    within the reads' share of the CPU and, when ``exclusive``, one at a time (a read that may wait
    on a worker, as a log fetch does, is only paced)."""
    if not roles:
        raise ValueError("an RPC must name the roles it admits")

    def decorate(method: Callable[..., _R]) -> Callable[..., _R]:
        cap = MESSAGE_CAPS.get(method.__name__, DEFAULT_MESSAGE_CAP)

        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: ControllerServiceImpl, request: Any, context: grpc.ServicerContext) -> _R:
            with self._controller.metrics.rpc_latency.labels(name).time():
                return call(self, request, context)

        def call(self: ControllerServiceImpl, request: Any, context: grpc.ServicerContext) -> _R:
            try:
                size = request.ByteSize()
                if size > cap:  # never echoed back: the reply names only the sizes
                    raise InvalidArgument(f"{method.__name__}: the request is {size} bytes, over this call's cap of "
                                          f"{cap} bytes")
                principal = self._controller.authenticate(bearer(context.invocation_metadata()))
                if principal.role not in roles:
                    require_role(principal, *roles, what=method.__name__)
                if read:
                    with self._controller.reads.admit(name, exclusive=exclusive):
                        return method(self, request, context, principal)
                return method(self, request, context, principal)
            except IrisError as e:
                context.abort(grpc_status(e), str(e))
            except Exception as e:
                logger.exception("%s failed", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error: {e}")
            raise AssertionError("unreachable")  # context.abort raises

        return wrapper

    return decorate


class ControllerServiceImpl(cluster_pb2_grpc.ControllerServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    # -- jobs ---------------------------------------------------------------------------------

    @_rpc(Role.ADMIN, Role.USER, Role.TASK)
    def LaunchJob(
        self, request: cluster_pb2.Controller.LaunchJobRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.LaunchJobResponse:
        if who.role is Role.TASK:
            # A task submits only children of its own job; they belong to that job's owner.
            if request.parent_job_id and request.parent_job_id != who.job_id:
                raise PermissionDenied(f"parent_job_id: a task of {who.job_id!r} may submit only its own children")
            request.parent_job_id = who.job_id
            owner = self._controller.job_owner(JobId(who.job_id))
        else:
            owner = who.name
        return cluster_pb2.Controller.LaunchJobResponse(job_id=self._controller.launch_job(request, owner=owner))

    @_rpc(*_READERS, read=True)
    def GetJobStatus(
        self, request: cluster_pb2.Controller.GetJobStatusRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetJobStatusResponse:
        _require(request.job_id, "job_id")
        require_reader(who, request.job_id, "GetJobStatus")
        job, tasks = self._controller.job_status(JobId(request.job_id), include_tasks=request.include_tasks,
                                                 task_offset=request.task_offset, task_limit=request.task_limit)
        reply = cluster_pb2.Controller.GetJobStatusResponse(job=job_proto(job, tasks))
        if request.include_tasks and request.task_limit and tasks:
            end = request.task_offset + len(tasks)
            if end < job.num_tasks:
                reply.next_task_offset = end
        return reply

    @_rpc(*_HUMANS)
    def TerminateJob(
        self, request: cluster_pb2.Controller.TerminateJobRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Empty:
        _require(request.job_id, "job_id")
        require_owner(who, request.job_id, self._controller.job_owner(JobId(request.job_id)), "TerminateJob")
        self._controller.terminate_job(JobId(request.job_id))
        return cluster_pb2.Empty()

    @_rpc(*_HUMANS)
    def DeleteJob(
        self, request: cluster_pb2.Controller.DeleteJobRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.DeleteJobResponse:
        _require(request.job_id, "job_id")
        require_owner(who, request.job_id, self._controller.job_owner(JobId(request.job_id)), "DeleteJob")
        removed = self._controller.delete_job(JobId(request.job_id))
        return cluster_pb2.Controller.DeleteJobResponse(deleted_job_ids=list(removed))

    @_rpc(*_READERS, read=True)
    def ListJobs(
        self, request: cluster_pb2.Controller.ListJobsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListJobsResponse:
        prefix = request.prefix
        if who.role is Role.TASK:  # a task lists its own job and the jobs under it
            if prefix and not (prefix.startswith(who.job_id) or who.job_id.startswith(prefix)):
                raise PermissionDenied(f"prefix: a task of {who.job_id!r} may list only its own jobs")
            if len(prefix) < len(who.job_id):
                prefix = who.job_id
        page = self._controller.list_jobs(
            states=list(request.states), prefix=prefix, page_size=request.page_size, page_token=request.page_token,
            newest_first=request.newest_first,
        )
        jobs = page.jobs if who.role is not Role.TASK else [j for j in page.jobs if in_task_scope(who, j.job_id)]
        return cluster_pb2.Controller.ListJobsResponse(
            jobs=[job_proto(j) for j in jobs], next_page_token=page.next_page_token
        )

    @_rpc(*_READERS, read=True)
    def GetTaskStatus(
        self, request: cluster_pb2.Controller.GetTaskStatusRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetTaskStatusResponse:
        _require(request.job_id, "job_id")
        require_reader(who, request.job_id, "GetTaskStatus")
        task = self._controller.task_status(JobId(request.job_id), request.task_index)
        return cluster_pb2.Controller.GetTaskStatusResponse(task=task_proto(task))

    @_rpc(*_READERS, read=True)
    def ListTasks(
        self, request: cluster_pb2.Controller.ListTasksRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListTasksResponse:
        _require(request.job_id, "job_id")
        require_reader(who, request.job_id, "ListTasks")
        tasks = self._controller.list_tasks(JobId(request.job_id))
        return cluster_pb2.Controller.ListTasksResponse(tasks=[task_proto(t) for t in tasks])

    @_rpc(*_READERS, read=True, exclusive=False)
    def FetchTaskLogs(
        self, request: cluster_pb2.Controller.FetchTaskLogsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.FetchTaskLogsResponse:
        _require(request.task_id, "task_id")
        job_id = request.task_id.rpartition("/task-")[0]
        if not may_read_secrets(who, job_id, self._controller.job_owner(JobId(job_id)) if job_id else ""):
            raise PermissionDenied(f"FetchTaskLogs: the logs of {job_id!r} are readable only by its owner and admins")
        return self._controller.fetch_task_logs(request)

    @_rpc(*_READERS, read=True)
    def GetTaskResult(
        self, request: cluster_pb2.Controller.GetTaskResultRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetTaskResultResponse:
        _require(request.job_id, "job_id")
        if not may_read_secrets(who, request.job_id, self._controller.job_owner(JobId(request.job_id))):
            raise PermissionDenied(f"GetTaskResult: the results of {request.job_id!r} are readable only by its owner "
                                   "and admins")
        kept = self._controller.task_result(JobId(request.job_id), request.task_index)
        if kept is None:
            return cluster_pb2.Controller.GetTaskResultResponse(ready=False)
        return cluster_pb2.Controller.GetTaskResultResponse(ready=True, attempt_id=kept[0], result=kept[1])

    @_rpc(Role.ADMIN, Role.USER, Role.WORKER)
    def FetchBundle(
        self, request: cluster_pb2.Controller.FetchBundleRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.FetchBundleResponse:
        _require(request.bundle_hash, "bundle_hash")
        if who.role is Role.WORKER and not self._controller.worker_runs_bundle(who.name, request.bundle_hash):
            raise PermissionDenied("bundle_hash: no attempt on this worker needs that bundle")
        if who.role is Role.USER and not self._controller.user_owns_bundle(who.name, request.bundle_hash):
            raise PermissionDenied("bundle_hash: only the owners of the jobs that use a bundle may read it")
        return cluster_pb2.Controller.FetchBundleResponse(blob=self._controller.get_bundle(request.bundle_hash))

    # -- workers ------------------------------------------------------------------------------

    @_rpc(Role.JOIN, Role.WORKER, Role.ADMIN)
    def RegisterWorker(
        self, request: cluster_pb2.Controller.RegisterWorkerRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.RegisterWorkerResponse:
        return self._controller.register_worker(request, who)

    @_rpc(Role.WORKER, Role.ADMIN)
    def Heartbeat(
        self, request: cluster_pb2.Controller.HeartbeatRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.HeartbeatResponse:
        _own_worker(who, request.worker_id)
        return self._controller.heartbeat(request)

    @_rpc(Role.WORKER, Role.ADMIN)
    def ReportTaskState(
        self, request: cluster_pb2.Controller.ReportTaskStateRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        # Bound to its worker id: the core ignores reports of attempts not bound to that worker.
        _own_worker(who, request.worker_id)
        return self._controller.report_task_state(request)

    @_rpc(Role.WORKER, Role.ADMIN)
    def PushTaskLogs(
        self, request: cluster_pb2.Controller.PushTaskLogsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.PushTaskLogsResponse:
        # Bound to its worker id: only attempts that ran on that worker are kept.
        _own_worker(who, request.worker_id)
        _require(request.worker_id, "worker_id")
        return self._controller.push_task_logs(WorkerId(request.worker_id), request)

    @_rpc(*_HUMANS, read=True)
    def ListWorkers(
        self, request: cluster_pb2.Controller.ListWorkersRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListWorkersResponse:
        return cluster_pb2.Controller.ListWorkersResponse(
            workers=[worker_proto(w) for w in self._controller.list_workers()],
            provisioning=self._controller.provisioning_summary(),
        )

    @_rpc(Role.ADMIN)
    def DrainWorker(
        self, request: cluster_pb2.Controller.DrainWorkerRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.DrainWorkerResponse:
        check_id(request.worker_id, "worker_id", self._controller.config.limits)
        stopped = self._controller.drain_worker(WorkerId(request.worker_id))
        return cluster_pb2.Controller.DrainWorkerResponse(tasks_stopped=stopped)

    @_rpc(Role.ADMIN)
    def ReleaseWorker(
        self, request: cluster_pb2.Controller.ReleaseWorkerRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Empty:
        check_id(request.worker_id, "worker_id", self._controller.config.limits)
        self._controller.release_worker(WorkerId(request.worker_id))
        return cluster_pb2.Empty()

    # -- endpoints ----------------------------------------------------------------------------

    @_rpc(Role.TASK, Role.ADMIN)
    def RegisterEndpoint(
        self, request: cluster_pb2.Controller.RegisterEndpointRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.RegisterEndpointResponse:
        if who.role is Role.TASK and (request.task_id != who.name or request.attempt_id != who.attempt_id):
            raise PermissionDenied(f"task_id: a task token registers endpoints only for its own attempt "
                                   f"({who.name} attempt {who.attempt_id})")
        return cluster_pb2.Controller.RegisterEndpointResponse(endpoint_id=self._controller.register_endpoint(request))

    @_rpc(Role.TASK, Role.ADMIN)
    def UnregisterEndpoint(
        self, request: cluster_pb2.Controller.UnregisterEndpointRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Empty:
        _require(request.endpoint_id, "endpoint_id")
        if who.role is Role.TASK:
            endpoint = self._controller.get_endpoint(request.endpoint_id)
            if endpoint.task_id != who.name:
                raise PermissionDenied("endpoint_id: a task token removes only its own endpoints")
        self._controller.unregister_endpoint(request.endpoint_id)
        return cluster_pb2.Empty()

    @_rpc(*_READERS)
    def LookupEndpoint(
        self, request: cluster_pb2.Controller.LookupEndpointRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.LookupEndpointResponse:
        _require(request.name, "name")
        return cluster_pb2.Controller.LookupEndpointResponse(
            endpoint=endpoint_proto(self._controller.lookup_endpoint(request.name))
        )

    @_rpc(*_READERS, read=True)
    def ListEndpoints(
        self, request: cluster_pb2.Controller.ListEndpointsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListEndpointsResponse:
        return cluster_pb2.Controller.ListEndpointsResponse(
            endpoints=[endpoint_proto(e) for e in self._controller.list_endpoints(request.prefix)]
        )

    # -- tokens -------------------------------------------------------------------------------

    @_rpc(Role.ADMIN)
    def CreateToken(
        self, request: cluster_pb2.Controller.CreateTokenRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.CreateTokenResponse:
        role = request.role or "user"
        if role not in ("user", "admin"):
            raise InvalidArgument(f"role: must be 'user' or 'admin', got {role[:20]!r}")
        record, token = self._controller.create_token(request.name, Role(role))
        return cluster_pb2.Controller.CreateTokenResponse(info=token_proto(record), token=token)

    @_rpc(Role.ADMIN, read=True)
    def ListTokens(
        self, request: cluster_pb2.Controller.ListTokensRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListTokensResponse:
        return cluster_pb2.Controller.ListTokensResponse(tokens=[token_proto(t) for t in self._controller.list_tokens()])

    @_rpc(Role.ADMIN)
    def RevokeToken(
        self, request: cluster_pb2.Controller.RevokeTokenRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Empty:
        _require(request.token_id, "token_id")
        self._controller.revoke_token(request.token_id)
        return cluster_pb2.Empty()

    @_rpc(Role.ADMIN, Role.USER, Role.WORKER, Role.JOIN, Role.TASK)
    def WhoAmI(
        self, request: cluster_pb2.Controller.WhoAmIRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.WhoAmIResponse:
        return cluster_pb2.Controller.WhoAmIResponse(name=who.name, role=who.role.value, job_id=who.job_id)


def token_proto(record: TokenRecord) -> cluster_pb2.Controller.TokenInfo:
    return cluster_pb2.Controller.TokenInfo(
        token_id=record.token_id, name=record.name, role=record.role.value, created_at_ms=record.created_at_ms,
        revoked_at_ms=record.revoked_at_ms or 0,
    )


def _own_worker(who: Principal, worker_id: str) -> None:
    if who.role is Role.WORKER and who.name != worker_id:
        raise PermissionDenied(f"worker_id: this credential belongs to worker {who.name!r}, not {worker_id[:64]!r}")


def _require(value: str, field_name: str) -> None:
    if not value:
        raise InvalidArgument(f"{field_name}: must not be empty")


class ControllerServer:
    """A gRPC server for a Controller on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 0, threads: int = 32,
                 tls_cert: Path | None = None, tls_key: Path | None = None, advertise: str | None = None) -> None:
        """With ``tls_cert``/``tls_key`` the port speaks TLS only. ``address`` is what others dial:
        ``advertise``, else the bound host, else (bound to 0.0.0.0) the host's primary address."""
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
        if tls_cert is not None and tls_key is not None:
            self.port = self._server.add_secure_port(f"{host}:{port}", server_credentials(tls_cert, tls_key))
        else:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind the controller to {host}:{port}")
        self.host = host
        self.address = host_port(advertise_host(host, advertise), self.port)
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
