"""gRPC ``ControllerService``: the controller's one typed edge.

Every protobuf is turned into a typed value here (``requests.py``, ``JobSpec``, ``Observation``),
with every request field checked (``iris.cluster.validation`` and the helpers below), and every
reply is built here from what the ``Controller`` returns; the controller never sees the wire. Reads
go through the controller's ``queries``, which hand back frozen views; the protobuf is built from
them after the controller's lock was released. Who may call what is ``access.py``'s.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from iris.cluster import bands
from iris.cluster.addresses import advertise_host, host_port
from iris.cluster.auth import Principal, Role, TokenRecord, bearer
from iris.cluster.controller.access import (
    PermissionDenied,
    band_allowance,
    in_task_scope,
    may_read_secrets,
    qualify,
    require_attempt,
    require_own_worker,
    require_owner,
    require_reader,
    require_role,
    task_list_prefix,
    task_parent,
    user_of,
)
from iris.cluster.controller.backend import LocationCapacity, Observation
from iris.cluster.controller.beats import BeatServer
from iris.cluster.controller.controller import Controller
from iris.cluster.controller.requests import (
    NO_PORTS,
    EndpointRequest,
    HeartbeatReply,
    LogChunk,
    LogQuery,
    TaskLogPage,
    TaskReport,
)
from iris.cluster.controller.shareviews import TeamView, WhyView
from iris.cluster.controller.state import ControllerEndpoint, ObservedAttempt, liveness_timeout_ms
from iris.cluster.controller.views import JobView, TaskView, WorkerView
from iris.cluster.errors import InvalidArgument, IrisError, Unauthenticated
from iris.cluster.ports import check_port_range
from iris.cluster.rules import (
    CONNECTION_AGE_MS,
    FLOW_CONTROL_OPTIONS,
    IDLE_CONNECTION_MS,
    MAX_REQUEST_BYTES,
    REQUEST_GRACE_MS,
    UPLOAD_CHUNK_BYTES,
    connection_options,
)
from iris.cluster.spec import JobSpec, parse_list_filters
from iris.cluster.types import (
    BUNDLE_HASH_RE,
    OWNER_SEP,
    TASK_STATES,
    AttemptRef,
    JobId,
    TaskId,
    WorkerId,
    WorkerMetadata,
    job_state_name,
    owner_of_job_id,
    qualify_job_id,
)
from iris.cluster.validation import (
    MAX_FILTER_CHARS,
    MAX_MESSAGE_BYTES,
    Limits,
    check_endpoint,
    check_id,
    check_log_window,
    validate_launch_request,
)
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.beats import server_ssl_context
from iris.rpc.status import grpc_status
from iris.rpc.tls import server_credentials

logger = logging.getLogger(__name__)

_R = TypeVar("_R")


MESSAGE_CAPS: dict[str, int] = {
    "LaunchJob": MAX_REQUEST_BYTES,  # the entrypoint (a pickled callable) and the job's fields
    "RegisterWorker": MAX_REQUEST_BYTES,  # carries a worker's complete observed set
    "Heartbeat": MAX_REQUEST_BYTES,
    "ReportTaskState": MAX_REQUEST_BYTES,  # a callable's result (at most MAX_RESULT_BYTES)
    "PushTaskLogs": MAX_REQUEST_BYTES,
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
                size = request.ByteSize() if hasattr(request, "ByteSize") else 0  # a stream: checked per message
                if size > cap:  # never echoed back: the reply names only the sizes
                    raise InvalidArgument(f"{method.__name__}: the request is {size} bytes, over this call's cap of "
                                          f"{cap} bytes")
                principal = _AUTHENTICATED.get()
                if principal is None:  # called without the server's interceptor (in-process tests)
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
        self._queries = controller.queries
        self.beat_port = 0
        """The heartbeat port registrations advertise (0: none)."""
        self._beat_latency = controller.metrics.rpc_latency.labels("HeartbeatPort")
        self._report_latency = controller.metrics.rpc_latency.labels("ReportPort")

    # -- jobs ---------------------------------------------------------------------------------

    @_rpc(Role.ADMIN, Role.USER, Role.TASK)
    def LaunchJob(
        self, request: cluster_pb2.Controller.LaunchJobRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.LaunchJobResponse:
        owner = who.name
        if who.role is Role.TASK:  # a task's children belong to its job's owner
            request.parent_job_id = task_parent(who, qualify(who, request.parent_job_id))
            owner = self._queries.job_owner(JobId(who.job_id))
        else:
            request.parent_job_id = qualify(who, request.parent_job_id)
        if request.entrypoint_hash:  # a large entrypoint, uploaded first (the same way as a workspace)
            request.serialized_entrypoint = self._controller.workspaces.uploaded_blob(owner, request.entrypoint_hash)
        if request.bundle_blob:
            raise InvalidArgument("bundle_blob: the controller takes a workspace by UploadBundle, before the LaunchJob "
                                  "that names its bundle_hash; this client is older than the controller: upgrade it")
        spec, blob = launch_request(request, self._controller.config.limits)
        job_id = self._controller.launch_job(spec, owner=owner, bundle_blob=blob,
                                             max_priority=band_allowance(who),
                                             trusted=who.is_admin)
        return cluster_pb2.Controller.LaunchJobResponse(job_id=job_id, warning=self._queries.fit_warning(job_id))

    @_rpc(*_READERS, read=True)
    def GetJobStatus(
        self, request: cluster_pb2.Controller.GetJobStatusRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetJobStatusResponse:
        _require(request.job_id, "job_id")
        request.job_id = qualify(who, request.job_id)  # a bare name is one of the caller's own jobs
        require_reader(who, request.job_id, "GetJobStatus")
        job, tasks = self._queries.job_status(JobId(request.job_id), include_tasks=request.include_tasks,
                                                 task_offset=request.task_offset, task_limit=request.task_limit)
        reply = cluster_pb2.Controller.GetJobStatusResponse(
            job=private(job_proto(job, tasks, spec_for=may_read_secrets(who, job.job_id, job.owner)), who, job.owner))
        checkpoints = self._controller.config.checkpoint_dir(job.owner, job.job_id, job.uid)
        if checkpoints is not None:
            reply.job.checkpoint_dir = str(checkpoints)
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
        request.job_id = qualify(who, request.job_id)  # a bare name is one of the caller's own jobs
        require_owner(who, request.job_id, self._queries.job_owner(JobId(request.job_id)), "TerminateJob")
        self._controller.terminate_job(JobId(request.job_id))
        return cluster_pb2.Empty()

    @_rpc(*_HUMANS)
    def DeleteJob(
        self, request: cluster_pb2.Controller.DeleteJobRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.DeleteJobResponse:
        _require(request.job_id, "job_id")
        request.job_id = qualify(who, request.job_id)  # a bare name is one of the caller's own jobs
        require_owner(who, request.job_id, self._queries.job_owner(JobId(request.job_id)), "DeleteJob")
        removed = self._controller.delete_job(JobId(request.job_id))
        return cluster_pb2.Controller.DeleteJobResponse(deleted_job_ids=list(removed))

    @_rpc(*_READERS, read=True)
    def ListJobs(
        self, request: cluster_pb2.Controller.ListJobsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListJobsResponse:
        if who.role is Role.TASK:
            prefix = task_list_prefix(who, qualify(who, request.prefix) if request.prefix else "")
        else:
            prefix = list_prefix(who, request.prefix, request.user, request.all_users)
        page = self._queries.list_jobs(
            states=list(request.states), prefix=prefix, page_size=request.page_size, page_token=request.page_token,
            newest_first=request.newest_first, filters=spec_filters(request.filters),
        )
        jobs = page.jobs if who.role is not Role.TASK else [j for j in page.jobs if in_task_scope(who, j.job_id)]
        return cluster_pb2.Controller.ListJobsResponse(
            jobs=[private(job_proto(j), who, j.owner) for j in jobs], next_page_token=page.next_page_token
        )

    @_rpc(*_READERS, read=True)
    def GetTaskStatus(
        self, request: cluster_pb2.Controller.GetTaskStatusRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetTaskStatusResponse:
        _require(request.job_id, "job_id")
        request.job_id = qualify(who, request.job_id)  # a bare name is one of the caller's own jobs
        require_reader(who, request.job_id, "GetTaskStatus")
        task = self._queries.task_status(JobId(request.job_id), request.task_index)
        owner = self._queries.job_owner(JobId(request.job_id))
        return cluster_pb2.Controller.GetTaskStatusResponse(task=private_task(task_proto(task), who, task.job_id, owner))

    @_rpc(*_READERS, read=True)
    def ListTasks(
        self, request: cluster_pb2.Controller.ListTasksRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListTasksResponse:
        _require(request.job_id, "job_id")
        request.job_id = qualify(who, request.job_id)  # a bare name is one of the caller's own jobs
        require_reader(who, request.job_id, "ListTasks")
        tasks = self._queries.list_tasks(JobId(request.job_id))
        owner = self._queries.job_owner(JobId(request.job_id))
        return cluster_pb2.Controller.ListTasksResponse(
            tasks=[private_task(task_proto(t), who, t.job_id, owner) for t in tasks])

    @_rpc(*_READERS, read=True, exclusive=False)
    def FetchTaskLogs(
        self, request: cluster_pb2.Controller.FetchTaskLogsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.FetchTaskLogsResponse:
        _require(request.task_id, "task_id")
        request.task_id = qualify(who, request.task_id)
        job_id = request.task_id.rpartition("/task-")[0]
        if not may_read_secrets(who, job_id, self._queries.job_owner(JobId(job_id)) if job_id else ""):
            raise PermissionDenied(f"FetchTaskLogs: the logs of {job_id!r} are readable only by its owner and admins")
        return log_page_proto(self._controller.fetch_task_logs(log_query(request)))

    @_rpc(*_READERS, read=True)
    def GetTaskResult(
        self, request: cluster_pb2.Controller.GetTaskResultRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetTaskResultResponse:
        _require(request.job_id, "job_id")
        request.job_id = qualify(who, request.job_id)  # a bare name is one of the caller's own jobs
        if not may_read_secrets(who, request.job_id, self._queries.job_owner(JobId(request.job_id))):
            raise PermissionDenied(f"GetTaskResult: the results of {request.job_id!r} are readable only by its owner "
                                   "and admins")
        kept = self._queries.task_result(JobId(request.job_id), request.task_index)
        if kept is None:
            return cluster_pb2.Controller.GetTaskResultResponse(ready=False)
        return cluster_pb2.Controller.GetTaskResultResponse(ready=True, attempt_id=kept[0], result=kept[1])

    @_rpc(Role.ADMIN, Role.USER, Role.WORKER)
    def FetchBundle(
        self, request: cluster_pb2.Controller.FetchBundleRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.FetchBundleResponse:
        _require(request.bundle_hash, "bundle_hash")
        if who.role is Role.WORKER and not self._queries.worker_runs_bundle(who.name, request.bundle_hash):
            raise PermissionDenied("bundle_hash: no attempt on this worker needs that bundle")
        if who.role is Role.USER and not self._queries.user_owns_bundle(who.name, request.bundle_hash):
            raise PermissionDenied("bundle_hash: only the owners of the jobs that use a bundle may read it")
        return cluster_pb2.Controller.FetchBundleResponse(blob=self._controller.get_bundle(request.bundle_hash))

    @_rpc(Role.ADMIN, Role.USER, Role.TASK)
    def UploadBundle(
        self, requests: Iterator[cluster_pb2.Controller.UploadBundleRequest], context: grpc.ServicerContext,
        who: Principal,
    ) -> cluster_pb2.Controller.UploadBundleResponse:
        """A workspace in chunks (``uploads``): sha256 and size first, at most 1 MiB per message,
        the whole at most the bundle limit; checked before anything is stored."""
        limit = self._controller.config.limits.max_bundle_bytes
        digest, parts, total, expected, size = hashlib.sha256(), [], 0, "", 0
        for index, message in enumerate(requests):
            if index == 0:
                expected, size = message.bundle_hash.lower(), message.size
                if not BUNDLE_HASH_RE.fullmatch(expected):
                    raise InvalidArgument("bundle_hash: the first message names the sha256 (64 hex digits)")
                if not 0 < size <= limit:
                    raise InvalidArgument(f"size: a workspace bundle is 1..{limit} bytes, got {size}")
            if len(message.chunk) > UPLOAD_CHUNK_BYTES:
                raise InvalidArgument(f"chunk: at most {UPLOAD_CHUNK_BYTES} bytes per message, got {len(message.chunk)}")
            total += len(message.chunk)
            if total > size:
                raise InvalidArgument(f"chunk: more than the {size} bytes announced in size")
            digest.update(message.chunk)
            parts.append(message.chunk)
        if total != size or not parts:
            raise InvalidArgument(f"size: {size} bytes announced, {total} sent")
        if digest.hexdigest() != expected:
            raise InvalidArgument(f"bundle_hash: {expected} is not the sha256 of what was sent ({digest.hexdigest()})")
        owner = self._queries.job_owner(JobId(who.job_id)) if who.role is Role.TASK else who.name
        return cluster_pb2.Controller.UploadBundleResponse(
            bundle_hash=self._controller.workspaces.upload(b"".join(parts), owner))

    # -- workers ------------------------------------------------------------------------------

    @_rpc(Role.JOIN, Role.WORKER, Role.ADMIN)
    def RegisterWorker(
        self, request: cluster_pb2.Controller.RegisterWorkerRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.RegisterWorkerResponse:
        reply = self._controller.register_worker(registration(request, self._controller.config.limits), who)
        return cluster_pb2.Controller.RegisterWorkerResponse(
            accepted=True, kill=[_status(a) for a in reply.kill], credential=reply.credential,
            controller_token=reply.controller_token, heartbeat_interval_ms=reply.heartbeat_interval_ms,
            liveness_timeout_ms=self._liveness_timeout_ms(reply.heartbeat_interval_ms), heartbeat_port=self.beat_port)

    @_rpc(Role.WORKER, Role.ADMIN)
    def Heartbeat(
        self, request: cluster_pb2.Controller.HeartbeatRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.HeartbeatResponse:
        require_own_worker(who, request.worker_id)
        return self._response(self._controller.heartbeat(heartbeat_observation(request, self._controller.config.limits)))

    def beat_hello(self, message: bytes) -> tuple[str, str, bool, bytes]:
        """The heartbeat port's hello (``beats.BeatServer``): may this credential heartbeat (and
        report, when the hello says ``multiplex``) for that worker? Its credential, its worker id,
        whether its frames are tagged, and the reply; raises IrisError."""
        try:
            hello = cluster_pb2.Controller.BeatHello.FromString(message)
        except DecodeError:
            raise InvalidArgument("the frame is not a BeatHello message") from None
        check_id(hello.worker_id, "worker_id", self._controller.config.limits)
        self._beat_principal(hello.token, hello.worker_id, "Heartbeat")  # ReportTaskState admits the same
        return hello.token, hello.worker_id, hello.multiplex, _MULTIPLEX_OK if hello.multiplex else _BEAT_OK

    def _beat_principal(self, token: str, worker_id: str, what: str) -> Principal:
        """As ``_rpc`` admits a Heartbeat or a ReportTaskState: a worker (its own id only) or an admin."""
        who = self._controller.authenticate(token)
        require_role(who, Role.WORKER, Role.ADMIN, what=what)
        require_own_worker(who, worker_id)
        return who

    def beats(self, frames: Sequence[tuple[str, str, bytes]]) -> list[tuple[bytes, bool]]:
        """Heartbeats by the heartbeat port that arrived together, all reconciled in one change
        (``Controller.heartbeats``; ``_port_batch``)."""
        limits = self._controller.config.limits
        return self._port_batch(frames, cluster_pb2.Controller.HeartbeatRequest,
                                lambda request: heartbeat_observation(request, limits), self._controller.heartbeats,
                                lambda reply: cluster_pb2.Controller.BeatReply(heartbeat=self._response(reply)),
                                self._beat_latency)

    def reports(self, frames: Sequence[tuple[str, str, bytes]]) -> list[tuple[bytes, bool]]:
        """Report batches by the heartbeat port that arrived together, all applied in one change
        (``Controller.report_task_states``), durable before any reply (``_port_batch``)."""
        limits = self._controller.config.limits
        return self._port_batch(frames, cluster_pb2.Controller.ReportTaskStateRequest, lambda request: (
            WorkerId(request.worker_id), task_reports(request, limits), request.unfit[:MAX_UNFIT_CHARS]),
            self._controller.report_task_states,
            lambda kill: cluster_pb2.Controller.BeatReply(report=_report_response(kill)), self._report_latency)

    def _port_batch(self, frames: Sequence[tuple[str, str, bytes]], kind: Any, convert: Callable[[Any], Any],
                    apply: Callable[[list[Any]], Sequence[Any]], reply: Callable[[Any], Any], latency: Any
                    ) -> list[tuple[bytes, bool]]:
        """Frames that arrived together on the heartbeat port, each as (its connection's credential
        and worker id, the frame): each parsed as ``kind``, bound to its connection's worker,
        authenticated again (a revoked credential stops here) and checked as the RPC does
        (``convert``); those that pass are applied together (``apply``). Each frame gets its reply
        (``reply`` of its result), or a refusal (True) naming the rule."""
        started = time.perf_counter()
        what = kind.__name__.removesuffix("Request")
        checked: list[Any] = []
        for token, worker_id, message in frames:
            try:
                try:
                    request = kind.FromString(message)
                except DecodeError:
                    raise InvalidArgument(f"the frame is not a {kind.__name__} message") from None
                if request.worker_id != worker_id:
                    verb = "heartbeats" if what == "Heartbeat" else "reports"
                    raise InvalidArgument(f"worker_id: this connection {verb} for {worker_id[:64]!r}, not "
                                          f"{request.worker_id[:64]!r}")
                self._beat_principal(token, request.worker_id, what)
                checked.append(convert(request))
            except IrisError as e:
                checked.append(e)
        passed = [c for c in checked if not isinstance(c, IrisError)]
        results = iter(apply(passed) if passed else ())
        answered = [(beat_refusal(c), True) if isinstance(c, IrisError) else
                    (reply(next(results)).SerializeToString(), False) for c in checked]
        elapsed = time.perf_counter() - started
        for _ in frames:
            latency.observe(elapsed)
        return answered

    def _response(self, reply: HeartbeatReply) -> cluster_pb2.Controller.HeartbeatResponse:
        if reply.reregister:
            return cluster_pb2.Controller.HeartbeatResponse(reregister=True)
        return cluster_pb2.Controller.HeartbeatResponse(
            kill=[_status(a) for a in reply.kill], heartbeat_interval_ms=reply.heartbeat_interval_ms,
            forget_job_uids=reply.forget_job_uids, forget_bundles=reply.forget_bundles,
            liveness_timeout_ms=self._liveness_timeout_ms(reply.heartbeat_interval_ms))

    def _liveness_timeout_ms(self, interval_ms: int) -> int:
        return liveness_timeout_ms(int(self._controller.config.worker_timeout_s * 1000), interval_ms)

    @_rpc(Role.WORKER, Role.ADMIN)
    def ReportTaskState(
        self, request: cluster_pb2.Controller.ReportTaskStateRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        # Bound to its worker id: the core ignores reports of attempts not bound to that worker.
        require_own_worker(who, request.worker_id)
        return _report_response(self._controller.report_task_state(
            WorkerId(request.worker_id), task_reports(request, self._controller.config.limits),
            request.unfit[:MAX_UNFIT_CHARS]))

    @_rpc(Role.WORKER, Role.ADMIN)
    def PushTaskLogs(
        self, request: cluster_pb2.Controller.PushTaskLogsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.PushTaskLogsResponse:
        # Bound to its worker id: only attempts that ran on that worker are kept.
        require_own_worker(who, request.worker_id)
        _require(request.worker_id, "worker_id")
        offsets = self._controller.push_task_logs(WorkerId(request.worker_id),
                                                  log_chunks(request, self._controller.config.limits))
        return cluster_pb2.Controller.PushTaskLogsResponse(next_offsets=offsets)

    @_rpc(*_HUMANS, read=True)
    def ListWorkers(
        self, request: cluster_pb2.Controller.ListWorkersRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListWorkersResponse:
        return cluster_pb2.Controller.ListWorkersResponse(
            workers=[worker_proto(w) for w in self._queries.list_workers()],
            provisioning=self._queries.provisioning_summary(),
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
        require_attempt(who, request.task_id, request.attempt_id, "registers endpoints")
        request.name = endpoint_name(request.task_id, request.name)
        endpoint_id = self._controller.register_endpoint(endpoint_request(request))
        return cluster_pb2.Controller.RegisterEndpointResponse(endpoint_id=endpoint_id)

    @_rpc(Role.TASK, Role.ADMIN)
    def UnregisterEndpoint(
        self, request: cluster_pb2.Controller.UnregisterEndpointRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Empty:
        _require(request.endpoint_id, "endpoint_id")
        if who.role is Role.TASK:
            endpoint = self._queries.get_endpoint(request.endpoint_id)
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
            endpoint=endpoint_proto(self._queries.lookup_endpoint(qualify(who, request.name)))
        )

    @_rpc(*_READERS, read=True)
    def ListEndpoints(
        self, request: cluster_pb2.Controller.ListEndpointsRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListEndpointsResponse:
        return cluster_pb2.Controller.ListEndpointsResponse(
            endpoints=[endpoint_proto(e) for e in self._queries.list_endpoints(
                qualify(who, request.prefix) if request.prefix else f"{user_of(who)}{OWNER_SEP}" if user_of(who) else "")]
        )

    # -- tokens -------------------------------------------------------------------------------

    @_rpc(Role.ADMIN)
    def CreateToken(
        self, request: cluster_pb2.Controller.CreateTokenRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.CreateTokenResponse:
        role = request.role or "user"
        if role not in ("user", "admin"):
            raise InvalidArgument(f"role: must be 'user' or 'admin', got {role[:20]!r}")
        record, token = self._controller.credentials.create_token(request.name, Role(role), request.max_priority)
        return cluster_pb2.Controller.CreateTokenResponse(info=token_proto(record), token=token)

    @_rpc(Role.ADMIN, read=True)
    def ListTokens(
        self, request: cluster_pb2.Controller.ListTokensRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ListTokensResponse:
        return cluster_pb2.Controller.ListTokensResponse(tokens=[token_proto(t) for t in self._controller.credentials.list_tokens()])

    @_rpc(Role.ADMIN)
    def RevokeToken(
        self, request: cluster_pb2.Controller.RevokeTokenRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Empty:
        _require(request.token_id, "token_id")
        self._controller.credentials.revoke_token(request.token_id)
        return cluster_pb2.Empty()

    # -- sharing (issue 24) ------------------------------------------------------------------------

    @_rpc(*_READERS, read=True)
    def GetShares(
        self, request: cluster_pb2.Controller.GetSharesRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetSharesResponse:
        view = self._queries.shares(self._controller.now_ms())
        return cluster_pb2.Controller.GetSharesResponse(
            teams=[team_share_proto(t) for t in view.teams], source=view.source, half_life_ms=view.half_life_ms,
            min_lease_ms=view.min_lease_ms, max_preemptions_per_minute=view.max_preemptions_per_minute,
            fleet=amounts_wire(view.fleet), pack_delay_ms=view.pack_delay_ms, pack_max_wait_ms=view.pack_max_wait_ms,
            reserve_after_ms=view.reserve_after_ms)

    @_rpc(Role.ADMIN)
    def ReloadSharing(
        self, request: cluster_pb2.Controller.ReloadSharingRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.ReloadSharingResponse:
        config = self._controller.reload_sharing()
        return cluster_pb2.Controller.ReloadSharingResponse(source=config.source, teams=len(config.teams))

    @_rpc(*_READERS, read=True)
    def GetQueue(
        self, request: cluster_pb2.Controller.GetQueueRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetQueueResponse:
        if not 0 <= request.limit <= MAX_QUEUE_PAGE:
            raise InvalidArgument(f"limit: must be between 0 and {MAX_QUEUE_PAGE}, got {request.limit}")
        entries, total = self._queries.queue(self._controller.now_ms(), request.limit)
        return cluster_pb2.Controller.GetQueueResponse(entries=[
            cluster_pb2.Controller.QueueEntry(job_id=e.job_id, band=e.band, team=e.team, user=e.user, position=e.position,
                                              reason=e.reason, pending_tasks=e.pending_tasks,
                                              pending_since_ms=e.pending_since_ms, reserved_workers=e.reserved_workers,
                                              reservation_start_ms=e.reservation_start_ms) for e in entries],
            total=total)

    @_rpc(*_READERS, read=True)
    def GetJobWhy(
        self, request: cluster_pb2.Controller.GetJobWhyRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.GetJobWhyResponse:
        _require(request.job_id, "job_id")
        request.job_id = qualify(who, request.job_id)
        require_reader(who, request.job_id, "GetJobWhy")
        return why_proto(self._queries.why(JobId(request.job_id), self._controller.now_ms()))

    @_rpc(*_READERS, read=True)
    def GetEstimateAccuracy(
        self, request: cluster_pb2.Controller.GetEstimateAccuracyRequest, context: grpc.ServicerContext,
        who: Principal
    ) -> cluster_pb2.Controller.GetEstimateAccuracyResponse:
        if request.since_ms < 0:
            raise InvalidArgument(f"since_ms: must be >= 0, got {request.since_ms}")
        started, error_s, in_range = self._queries.estimate_accuracy(request.since_ms)
        return cluster_pb2.Controller.GetEstimateAccuracyResponse(
            started=started, median_abs_error_s=error_s or 0.0, in_range_ratio=in_range or 0.0)

    @_rpc(Role.ADMIN, Role.USER, Role.WORKER, Role.JOIN, Role.TASK)
    def WhoAmI(
        self, request: cluster_pb2.Controller.WhoAmIRequest, context: grpc.ServicerContext, who: Principal
    ) -> cluster_pb2.Controller.WhoAmIResponse:
        return cluster_pb2.Controller.WhoAmIResponse(name=who.name, role=who.role.value, job_id=who.job_id)


MAX_QUEUE_PAGE = 10_000
HIDDEN = "(hidden: another user's job)"
"""What stands for the error text of another user's job or task (Slurm's PrivateData)."""


def endpoint_name(task_id: str, name: str) -> str:
    """The name an endpoint is registered under: in its task's owner's namespace (``alice:svc``);
    a name in another user's namespace is refused."""
    owner = owner_of_job_id(task_id)
    if not owner:
        return name
    named = owner_of_job_id(name)
    if named and named != owner:
        raise PermissionDenied(f"name: {name[:64]!r} is in the namespace of user {named!r}; a task of {owner!r} registers "
                               "names of its own (a bare name)")
    return qualify_job_id(name, owner)


def list_prefix(who: Principal, prefix: str, user: str, all_users: bool) -> str:
    """Whose jobs a list shows: the caller's own by default, ``user``'s, or everyone's. A prefix
    with an owner (``bob:train``) is taken whole."""
    if prefix and OWNER_SEP in prefix.split("/", 1)[0]:
        owner = prefix.split(OWNER_SEP, 1)[0]
        if user and owner != user:
            raise InvalidArgument(f"prefix: names jobs of {owner!r}, not of user {user!r}")
        return prefix
    if all_users and not user:
        return prefix
    return qualify_job_id(prefix, user or user_of(who)) if prefix else f"{user or user_of(who)}{OWNER_SEP}"


def private(status: cluster_pb2.JobStatus, who: Principal, owner: str) -> cluster_pb2.JobStatus:
    """A job's status as ``who`` may see it: another user's job shows its existence, owner, state,
    band, team, resources and counts, not its error text (which carries the task's last output
    lines), nor its tasks' (the command, environment, logs and results are withheld elsewhere)."""
    if may_read_secrets(who, status.job_id, owner):
        return status
    if status.error:
        status.error = HIDDEN
    if status.gang_restart_cause:
        status.gang_restart_cause = HIDDEN
    for task in status.tasks:
        private_task(task, who, status.job_id, owner)
    return status


def private_task(task: cluster_pb2.TaskStatus, who: Principal, job_id: str, owner: str) -> cluster_pb2.TaskStatus:
    if may_read_secrets(who, job_id, owner):
        return task
    if task.error:
        task.error = HIDDEN
    for attempt in task.attempts:
        if attempt.error:
            attempt.error = HIDDEN
    return task


def amounts_wire(amounts: Mapping[str, float]) -> dict[str, float]:
    """Share amounts on the wire: cpu in cores (held in millicores), the rest as they are."""
    return {key: value / 1000 if key == "cpu" else float(value) for key, value in amounts.items()}


def why_proto(v: WhyView) -> cluster_pb2.Controller.GetJobWhyResponse:
    reply = cluster_pb2.Controller.GetJobWhyResponse(
        job_id=v.job_id, state=job_state_name(v.state), position=v.position, band=v.band, team=v.team, user=v.user,
        reasons=[cluster_pb2.Controller.WhyReason(code=code, message=message) for code, message in v.reasons],
        waits_behind=v.waits_behind, estimate=cluster_pb2.Controller.WhyEstimate(
            start_p50_ms=v.estimate.start_p50_ms or 0, start_p90_ms=v.estimate.start_p90_ms or 0,
            start_p10_ms=v.estimate.start_p10_ms or 0,
            unknown_reason=v.estimate.unknown_reason),
        team_guarantee=amounts_wire(v.team_guarantee), team_limit=amounts_wire(v.team_limit),
        team_running=amounts_wire(v.team_running), team_standing=v.team_standing,
        preemptible_tasks=v.preemptible_tasks, next_lease_end_ms=v.next_lease_end_ms,
        has_reservation=v.reservation is not None)
    if v.reservation is not None:
        reply.reservation.CopyFrom(cluster_pb2.Controller.WhyReservation(
            job_id=v.reservation.job_id, start_ms=v.reservation.start_ms or 0,
            workers={str(w): n for w, n in v.reservation.workers.items()}))
    return reply


def team_share_proto(t: TeamView) -> cluster_pb2.Controller.TeamShare:
    return cluster_pb2.Controller.TeamShare(
        team=t.team, weight=t.weight, guarantee=amounts_wire(t.guarantee), limit=amounts_wire(t.limit),
        running=amounts_wire(t.running), usage=t.usage, decayed_usage=t.decayed_usage, standing=t.standing,
        own=t.own, under_guarantee=t.under_guarantee, running_tasks=t.running_tasks, pending_tasks=t.pending_tasks,
        members=[cluster_pb2.Controller.ShareMember(
            user=m.user, running=amounts_wire(m.running), usage=m.usage, decayed_usage=m.decayed_usage,
            standing=m.standing, running_tasks=m.running_tasks, pending_tasks=m.pending_tasks) for m in t.members])


def token_proto(record: TokenRecord) -> cluster_pb2.Controller.TokenInfo:
    return cluster_pb2.Controller.TokenInfo(
        token_id=record.token_id, name=record.name, role=record.role.value, created_at_ms=record.created_at_ms,
        revoked_at_ms=record.revoked_at_ms or 0, max_priority=record.max_priority or (
            bands.ADMIN_ALLOWANCE if record.role is Role.ADMIN else bands.USER_ALLOWANCE),
    )


# ---------------------------------------------------------------------- wire -> typed


def spec_filters(filters: Sequence[cluster_pb2.Controller.SpecFilter]) -> list[tuple[str, str]]:
    """ListJobs' filters, checked by the fields' declarations (``spec.parse_list_filters``)."""
    if len(filters) > MAX_SPEC_FILTERS:
        raise InvalidArgument(f"filters: at most {MAX_SPEC_FILTERS}, got {len(filters)}")
    grouped: dict[str, list[str]] = {}
    for f in filters:
        grouped.setdefault(f.field, []).append(f.value)
    return parse_list_filters(grouped)


MAX_SPEC_FILTERS = 16


def registration(request: cluster_pb2.Controller.RegisterWorkerRequest, limits: Limits) -> LocationCapacity:
    check_id(request.worker_id, "worker_id", limits)
    if not request.address or ":" not in request.address or len(request.address) > MAX_FILTER_CHARS:
        raise InvalidArgument(f"address: expected HOST:PORT, got {request.address[:64]!r}")
    if request.metadata.cpu_count < 0 or request.metadata.memory_bytes < 0:
        raise InvalidArgument("metadata: cpu_count and memory_bytes must be >= 0")
    if request.metadata.port_range_start or request.metadata.port_range_end:
        check_port_range(request.metadata.port_range_start, request.metadata.port_range_end, "metadata.port_range")
    try:
        metadata = WorkerMetadata.from_proto(request.metadata)
    except ValueError as e:
        raise InvalidArgument(f"metadata.{e}") from None
    return LocationCapacity(WorkerId(request.worker_id), request.address, metadata, request.incarnation,
                            observed(request.tasks), request.sequence, request.unfit[:MAX_UNFIT_CHARS])


def launch_request(request: cluster_pb2.Controller.LaunchJobRequest, limits: Limits) -> tuple[JobSpec, bytes]:
    """A LaunchJob's checked spec and its workspace bundle."""
    return validate_launch_request(request, limits), request.bundle_blob


def heartbeat_observation(request: cluster_pb2.Controller.HeartbeatRequest, limits: Limits) -> Observation:
    check_id(request.worker_id, "worker_id", limits)
    return Observation(WorkerId(request.worker_id), observed(request.tasks), request.incarnation, request.sequence,
                       request.unfit[:MAX_UNFIT_CHARS])


MAX_UNFIT_CHARS = 1024
"""A worker's "unfit" reason is cut to this (it is shown, never parsed)."""
_BEAT_OK = cluster_pb2.Controller.BeatReply().SerializeToString()
_MULTIPLEX_OK = cluster_pb2.Controller.BeatReply(report=cluster_pb2.Controller.ReportTaskStateResponse()).SerializeToString()
"""A multiplexed hello is answered with an empty report response: the port takes reports, tagged."""


def _report_response(kill: Sequence[AttemptRef]) -> cluster_pb2.Controller.ReportTaskStateResponse:
    return cluster_pb2.Controller.ReportTaskStateResponse(kill=[
        cluster_pb2.WorkerTaskStatus(task_id=ref.task_id, attempt_id=ref.attempt_id, job_uid=ref.job_uid)
        for ref in kill])


def beat_refusal(error: IrisError) -> bytes:
    """The heartbeat port's reply refusing a frame: ``error``'s status code and message."""
    return cluster_pb2.Controller.BeatReply(code=grpc_status(error).value[0], message=str(error)).SerializeToString()


def endpoint_request(request: cluster_pb2.Controller.RegisterEndpointRequest) -> EndpointRequest:
    check_endpoint(request.name, request.address)
    return EndpointRequest(request.name, request.address, TaskId(request.task_id), request.attempt_id,
                           dict(request.metadata))


def observed(tasks: Sequence[cluster_pb2.WorkerTaskStatus]) -> list[ObservedAttempt]:
    return [
        ObservedAttempt(TaskId(t.task_id), t.attempt_id, t.state, exit_code=t.exit_code, error=t.error or None,
                        ports=tuple(t.ports.items()) if t.ports else (), job_uid=t.job_uid,
                        busy_ports=busy_ports(t.busy_ports, f"tasks[{i}].busy_ports") if t.busy_ports else ())
        for i, t in enumerate(tasks)
    ]


MAX_BUSY_PORTS = 64


def busy_ports(ports: Sequence[int], field_name: str) -> tuple[int, ...]:
    """An end report's ports held outside Iris: at most ``MAX_BUSY_PORTS``, each 1..65535."""
    if len(ports) > MAX_BUSY_PORTS:
        raise InvalidArgument(f"{field_name}: at most {MAX_BUSY_PORTS} ports, got {len(ports)}")
    for port in ports:
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"{field_name}: a port is 1..65535, got {port}")
    return tuple(ports)


def task_reports(request: cluster_pb2.Controller.ReportTaskStateRequest, limits: Limits) -> list[TaskReport]:
    check_id(request.worker_id, "worker_id", limits)
    reports = []
    for i, u in enumerate(request.updates):
        check_id(u.task_id, f"updates[{i}].task_id", limits)
        if u.state not in TASK_STATES:
            raise InvalidArgument(f"updates[{i}].state: unknown task state {u.state}")
        if u.HasField("log_size") and u.log_size < 0:
            raise InvalidArgument(f"updates[{i}].log_size: must be >= 0, got {u.log_size}")
        reports.append(TaskReport(AttemptRef(TaskId(u.task_id), u.attempt_id, u.job_uid), u.state, u.exit_code,
                                  u.error or None, dict(u.ports) if u.ports else NO_PORTS, u.result,
                                  u.log_size if u.HasField("log_size") else None,
                                  busy_ports(u.busy_ports, f"updates[{i}].busy_ports") if u.busy_ports else ()))
    return reports


def log_query(request: cluster_pb2.Controller.FetchTaskLogsRequest) -> LogQuery:
    offset = request.start_offset if request.HasField("start_offset") else None
    check_log_window(request.start_line, request.max_lines, offset)
    if request.tail_lines < 0:
        raise InvalidArgument(f"tail_lines: must be >= 0, got {request.tail_lines}")
    return LogQuery(TaskId(request.task_id), request.attempt_id if request.HasField("attempt_id") else None,
                    request.start_line, offset, request.max_lines, request.tail_lines)


def log_chunks(request: cluster_pb2.Controller.PushTaskLogsRequest, limits: Limits) -> list[LogChunk]:
    for i, chunk in enumerate(request.chunks):
        check_id(chunk.task_id, f"chunks[{i}].task_id", limits)
        if chunk.start_offset < 0:
            raise InvalidArgument(f"chunks[{i}].start_offset: must be >= 0")
    return [LogChunk(AttemptRef(TaskId(c.task_id), c.attempt_id, c.job_uid), c.start_offset, c.data, c.complete)
            for c in request.chunks]


# ---------------------------------------------------------------------- typed -> wire


def log_page_proto(page: TaskLogPage) -> cluster_pb2.Controller.FetchTaskLogsResponse:
    return cluster_pb2.Controller.FetchTaskLogsResponse(
        lines=[cluster_pb2.LogLine(data=line.data, source=line.source, timestamp_ms=line.timestamp_ms)
               for line in page.lines],
        next_line=page.next_line, next_offset=page.next_offset, attempt_finished=page.attempt_finished,
        attempt_id=page.attempt_id)


def job_proto(view: JobView, tasks: list[TaskView] | None = None, *, spec_for: bool | None = None
              ) -> cluster_pb2.JobStatus:
    """A job's status; with ``spec_for`` its spec too, whole (True: the reader may read its secrets)
    or redacted (False) as the fields' declarations say (``JobSpec.for_status``)."""
    c = view.counts
    resources = view.resources.to_proto()
    resources.replicas = view.replicas
    status = cluster_pb2.JobStatus(
        job_id=view.job_id,
        state=view.state,  # type: ignore[arg-type]
        error=view.error,
        submitted_at_ms=view.submitted_at_ms,
        started_at_ms=view.started_at_ms,
        finished_at_ms=view.finished_at_ms,
        parent_job_id=view.parent_job_id,
        num_tasks=view.num_tasks,
        tasks_pending=c[cluster_pb2.TASK_STATE_PENDING],
        tasks_running=c[cluster_pb2.TASK_STATE_RUNNING] + c[cluster_pb2.TASK_STATE_BUILDING],
        tasks_succeeded=c[cluster_pb2.TASK_STATE_SUCCEEDED],
        tasks_failed=c[cluster_pb2.TASK_STATE_FAILED] + c[cluster_pb2.TASK_STATE_WORKER_FAILED],
        tasks_killed=c[cluster_pb2.TASK_STATE_KILLED],
        tasks_worker_failed=c[cluster_pb2.TASK_STATE_WORKER_FAILED],
        tasks_unschedulable=c[cluster_pb2.TASK_STATE_UNSCHEDULABLE],
        resources=resources,
        pending_reason=view.pending_reason,
        max_task_failures=view.max_task_failures,
        max_retries_failure=view.max_retries_failure,
        max_retries_preemption=view.max_retries_preemption,
        owner=view.owner,
        job_uid=view.uid,
        gang_restarts=view.gang_restarts,
        gang_restart_cause=view.gang_restart_cause,
        priority=view.spec.priority if view.spec is not None else "",
        team=view.team,
        policy_preemptions=view.policy_preemptions,
        failures_used=view.failures_used,
        preemptions_used=view.preemptions_used,
        time=_time_proto(view.time_ms),
    )
    if tasks is not None:
        status.tasks.extend(task_proto(t) for t in tasks)
    if spec_for is not None and view.spec is not None:
        status.spec.CopyFrom(view.spec.for_status(spec_for))
    return status


def _time_proto(spent: tuple[tuple[str, int], ...]) -> cluster_pb2.TimeSpent:
    d = dict(spent)
    return cluster_pb2.TimeSpent(pending_ms=d.get("pending", 0), useful_ms=d.get("useful", 0),
                                 lost_failure_ms=d.get("failure", 0), lost_preemption_ms=d.get("preemption", 0),
                                 lost_gang_ms=d.get("gang", 0))


def task_proto(view: TaskView) -> cluster_pb2.TaskStatus:
    status = cluster_pb2.TaskStatus(
        task_id=view.task_id,
        job_id=view.job_id,
        task_index=view.task_index,
        state=view.state,  # type: ignore[arg-type]
        worker_id=view.worker_id,
        exit_code=view.exit_code,
        error=view.error,
        started_at_ms=view.started_at_ms,
        finished_at_ms=view.finished_at_ms,
        current_attempt_id=view.current_attempt_id,
        failure_count=view.failure_count,
        preemption_count=view.preemption_count,
        policy_preemptions=view.policy_preemptions,
        pending_since_ms=view.pending_since_ms,
        pending_reason=view.pending_reason,
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
                charged_to=a.charged_to,
                decided_by=a.decided_by,
                band=a.band,
            )
            for a in view.attempts
        ],
    )
    if view.worker_address:
        status.worker_address = view.worker_address
    status.max_retries_failure = view.max_retries_failure
    status.max_retries_preemption = view.max_retries_preemption
    status.retry_at_ms = view.retry_at_ms
    status.time.CopyFrom(_time_proto(view.time_ms))
    if view.ports:
        status.ports.update(dict(view.ports))
        status.port_addresses.update(view.port_addresses())
    return status


def worker_proto(view: WorkerView) -> cluster_pb2.WorkerInfo:
    info = cluster_pb2.WorkerInfo(
        worker_id=view.worker_id,
        address=view.address,
        metadata=view.metadata.to_proto(),
        healthy=view.healthy,
        last_heartbeat_ms=view.last_heartbeat_ms,
        running_tasks=list(view.running_tasks),
        committed_cpu=-(-view.committed_cpu // 1000),
        committed_cpu_millicores=view.committed_cpu,
        committed_memory_bytes=view.committed_memory,
        committed_disk_bytes=view.committed_disk,
        committed_gpus=view.committed_devices,
        registered_at_ms=view.registered_at_ms,
        draining=view.draining,
        quarantined_until_ms=view.quarantined_until_ms,
        quarantine_reason=view.quarantine_reason,
        unfit=view.unfit,
    )
    if view.allocation is not None:
        a = view.allocation
        info.provisioning.CopyFrom(cluster_pb2.WorkerAllocation(
            platform=a.platform, id=a.engine_id, state=a.engine_state, reason=a.reason, node=a.node,
            submitted_at_ms=a.submitted_at_ms,
        ))
    return info


def endpoint_proto(endpoint: ControllerEndpoint) -> cluster_pb2.Endpoint:
    return cluster_pb2.Endpoint(
        endpoint_id=endpoint.endpoint_id,
        name=endpoint.name,
        address=endpoint.address,
        job_id=endpoint.job_id,
        task_id=endpoint.task_id or "",
        attempt_id=endpoint.attempt_id,
        metadata=endpoint.metadata,
    )


def _status(attempt: ObservedAttempt) -> cluster_pb2.WorkerTaskStatus:
    return cluster_pb2.WorkerTaskStatus(task_id=attempt.task_id, attempt_id=attempt.attempt_id,
                                        state=attempt.state, job_uid=attempt.job_uid)  # type: ignore[arg-type]


def _require(value: str, field_name: str) -> None:
    if not value:
        raise InvalidArgument(f"{field_name}: must not be empty")


_AUTHENTICATED: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("iris_principal", default=None)
"""The caller ``AuthenticateFirst`` let in, for the method it runs (the same thread)."""


class AuthenticateFirst(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Credentials are checked from the call's metadata before its request is read into a message
    (issue 23, item 7): a call without a valid token is refused with UNAUTHENTICATED and its bytes
    are never parsed, so an anonymous caller can make the controller neither build a large message
    nor log a parse error; nor does its call take a turn of the read gate."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        try:
            principal = self._controller.authenticate(bearer(details.invocation_metadata))
        except Unauthenticated as e:
            self._controller.metrics.rpc_refused_unauthenticated.inc()
            return _refusal(str(e))
        handler = continuation(details)
        if handler is None:
            return handler
        kind = "unary_unary" if handler.unary_unary is not None else "stream_unary"
        behavior = getattr(handler, kind)
        if behavior is None:
            return handler

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            token = _AUTHENTICATED.set(principal)
            try:
                return behavior(request, context)
            finally:
                _AUTHENTICATED.reset(token)

        return handler._replace(**{kind: authenticated})


def _refusal(message: str) -> Any:
    """A handler that answers UNAUTHENTICATED and reads its request as raw bytes (no parse)."""

    def refuse(request: bytes, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class ControllerServer:
    """A gRPC server for a Controller on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 0, threads: int = 32,
                 tls_cert: Path | None = None, tls_key: Path | None = None, advertise: str | None = None,
                 idle_connection_ms: int = IDLE_CONNECTION_MS, connection_age_ms: int = CONNECTION_AGE_MS,
                 request_grace_ms: int = REQUEST_GRACE_MS, heartbeat_port: int | None = 0) -> None:
        """With ``tls_cert``/``tls_key`` the port speaks TLS only. ``address`` is what others dial:
        ``advertise``, else the bound host, else (bound to 0.0.0.0) the host's primary address.
        ``heartbeat_port``: where workers heartbeat without gRPC (``beats.BeatServer``, on ``host``,
        TLS as the gRPC port; 0 picks a free one); None: heartbeats come by the Heartbeat RPC only."""
        self.controller = controller
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="controller-rpc"),
            interceptors=[AuthenticateFirst(controller)],
            options=[
                # Nothing larger is read, before or after authentication: a workspace (and a large
                # entrypoint) comes by UploadBundle in 1 MiB chunks (issue 23 item 7); 256 MiB let
                # anonymous calls cost GBs.
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *connection_options(idle_connection_ms, connection_age_ms, request_grace_ms),
                *FLOW_CONTROL_OPTIONS,
            ],
        )
        service = ControllerServiceImpl(controller)
        cluster_pb2_grpc.add_ControllerServiceServicer_to_server(service, self._server)
        if tls_cert is not None and tls_key is not None:
            self.port = self._server.add_secure_port(f"{host}:{port}", server_credentials(tls_cert, tls_key))
        else:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind the controller to {host}:{port}")
        self.beats: BeatServer | None = None
        if heartbeat_port is not None:
            context = server_ssl_context(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
            self.beats = BeatServer(service.beat_hello, service.beats, beat_refusal, host, heartbeat_port, context,
                                    frame_cap=max(MESSAGE_CAPS["Heartbeat"], MESSAGE_CAPS["ReportTaskState"]),
                                    idle_s=idle_connection_ms / 1000, reports=service.reports)
            service.beat_port = self.beats.port
        self.host = host
        self.address = host_port(advertise_host(host, advertise), self.port)
        if not controller.address:
            controller.address = self.address

    def start(self) -> None:
        if self.beats is not None:
            self.beats.start()
        self._server.start()
        self.controller.start()

    def stop(self, grace: float = 2.0) -> None:
        if self.beats is not None:
            self.beats.stop()
        self._server.stop(grace).wait()
        self.controller.stop()

    def wait(self) -> None:
        self._server.wait_for_termination()
