"""``IrisClient``: submit jobs to an Iris controller and watch them, from a laptop or from inside a
running task; ``Job``: a handle on one submitted job.

Every call is one controller RPC with a deadline; gRPC errors become ``iris.client.errors``
exceptions with one-line messages, and replies become the dataclasses of ``iris.client.models``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import cloudpickle
import grpc

from iris.client.bundle import Bundle, build_bundle
from iris.client.credentials import find_token
from iris.client.errors import (
    ControllerUnavailableError,
    InvalidRequestError,
    IrisError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    error_from_rpc,
)
from iris.client.job_info import get_job_info
from iris.client.models import (
    EndpointInfo,
    JobState,
    JobStatus,
    LogLine,
    TaskLogLine,
    TaskState,
    TaskStatus,
    WorkerInfo,
    parse_job_state,
)
from iris.cluster.clock import SystemClock
from iris.cluster.rules import FLOW_CONTROL_OPTIONS, INLINE_ENTRYPOINT_BYTES, UPLOAD_CHUNK_BYTES
from iris.cluster.spec import Entrypoint, JobSpec, parse_list_filters, spec_fields
from iris.cluster.types import JobId, ResourceSpec, parse_size, task_id_for
from iris.cluster.validation import MAX_MESSAGE_BYTES, validate_job_spec
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.tls import channel_credentials

DEFAULT_CONTROLLER_ADDRESS = "127.0.0.1:10000"
CONTROLLER_ENV = "IRIS_CONTROLLER"
TLS_CA_ENV = "IRIS_TLS_CA"
DEFAULT_RPC_TIMEOUT_S = 30.0
_LOG_PAGE_LINES = 5000

T = TypeVar("T")


def default_controller_address() -> str:
    """``$IRIS_CONTROLLER`` when set, else ``127.0.0.1:10000``."""
    return os.environ.get(CONTROLLER_ENV, "").strip() or DEFAULT_CONTROLLER_ADDRESS


def normalize_address(address: str) -> str:
    """``"http://host:port/"`` -> ``"host:port"``; a bare host gets port 10000."""
    text = address.strip()
    for scheme in ("http://", "https://", "grpc://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if not text:
        raise ControllerUnavailableError("controller address is empty; pass --controller HOST:PORT")
    if ":" not in text:
        text += ":10000"
    return text


def generate_job_name(prefix: str = "job") -> str:
    """A fresh job name such as ``job-20250101-120000-3fa2``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    name: str
    role: str
    job_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    name: str
    role: str
    created_at_ms: int
    revoked: bool
    max_priority: str
    """The highest priority band its jobs may ask for."""


@dataclass(frozen=True, slots=True)
class MemberShare:
    """One user within a team (``iris share``). Amounts: cpu in cores, memory in bytes, devices by
    ``kind:variant``."""

    user: str
    running: dict[str, float]
    usage: float
    """Share of the fleet its running attempts hold now (dominant resource, 0..1)."""
    decayed_usage: float
    """Share-seconds, decayed with the half-life."""
    standing: float
    running_tasks: int
    pending_tasks: int


@dataclass(frozen=True, slots=True)
class TeamShare:
    """One team (a user no team lists is a team of one: ``own``)."""

    team: str
    weight: float
    guarantee: dict[str, float]
    limit: dict[str, float]
    """Empty: the whole fleet."""
    running: dict[str, float]
    usage: float
    decayed_usage: float
    standing: float
    """(usage + share of all decayed usage) / weight: lower goes first."""
    members: list[MemberShare]
    own: bool
    under_guarantee: bool
    running_tasks: int
    pending_tasks: int

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A pending job, where the scheduler will consider it (``iris queue``)."""

    job_id: str
    band: str
    team: str
    user: str
    position: int
    reason: str
    pending_tasks: int
    pending_since_ms: int
    reserved_workers: list[str] = dataclasses.field(default_factory=list)
    """The workers a reservation holds for it (the highest-ranked jobs that do not fit now)."""
    reservation_start_ms: int = 0

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class CreatedToken(TokenInfo):
    token: str


@dataclass(frozen=True, slots=True)
class LogChunk:
    """One page of a task attempt's log."""

    lines: list[LogLine]
    next_line: int
    attempt_finished: bool
    attempt_id: int
    next_offset: int | None = None
    """Byte offset of ``next_line``: pass it back with it so the next page costs O(page)."""


_READ_METHODS = ("GetJobStatus", "ListJobs", "GetTaskStatus", "ListTasks", "GetTaskResult", "FetchTaskLogs",
                 "ListWorkers", "ListEndpoints", "ListTokens")
_READ_RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "iris.cluster.ControllerService", "method": m} for m in _READ_METHODS],
    # The controller refuses a read with RESOURCE_EXHAUSTED when too many wait for their turn (its
    # read gate); gRPC retries it after a jittered backoff, as clients of Kubernetes retry a 429.
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]},
}]})


class IrisClient:
    """A connection to an Iris controller.

    Create one with ``IrisClient.remote(address)``, ``IrisClient.local(workers=N)`` (which starts
    a local cluster and stops it on ``close()``), or ``IrisClient.from_env()`` inside a task (jobs it
    submits become children of the task's job and die with it). Use it as a context manager.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_RPC_TIMEOUT_S,
        parent_job_id: str = "",
        parent_bundle_hash: str = "",
        cluster: Any = None,
        token: str | None = None,
        token_file: Path | str | None = None,
        tls_ca: Path | str | None = None,
    ) -> None:
        """``token``: the credential to present; None: found as ``credentials.find_token`` says
        (``token_file``, ``$IRIS_TOKEN``, the stored login for this address). ``tls_ca``: verify the
        controller's TLS certificate against this CA (default ``$IRIS_TLS_CA``; unset: plaintext)."""
        self._address = normalize_address(address)
        self._token = token if token is not None else find_token(self._address, token_file)
        self._metadata = (("authorization", f"Bearer {self._token}"),) if self._token else None
        self._timeout = timeout
        self._parent_job_id = parent_job_id
        self._parent_bundle_hash = parent_bundle_hash
        self._cluster = cluster
        options = [
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _READ_RETRY_CONFIG),
            *FLOW_CONTROL_OPTIONS,
        ]
        ca = tls_ca if tls_ca is not None else os.environ.get(TLS_CA_ENV, "").strip() or None
        if ca:
            self._channel = grpc.secure_channel(self._address, channel_credentials(Path(ca)), options=options)
        else:
            self._channel = grpc.insecure_channel(self._address, options=options)
        self._stub = cluster_pb2_grpc.ControllerServiceStub(self._channel)
        self._closed = False

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def remote(cls, address: str | None = None, *, timeout: float = DEFAULT_RPC_TIMEOUT_S,
               token: str | None = None, token_file: Path | str | None = None,
               tls_ca: Path | str | None = None) -> IrisClient:
        """Connect to the controller at ``address`` (default ``$IRIS_CONTROLLER`` or 127.0.0.1:10000).

        Connecting is lazy: an unreachable controller raises ``ControllerUnavailableError`` on the
        first call.
        """
        return cls(address or default_controller_address(), timeout=timeout, token=token, token_file=token_file,
                   tls_ca=tls_ca)

    @classmethod
    def local(cls, workers: int = 2, **cluster_kwargs: Any) -> IrisClient:
        """Start a ``LocalCluster`` of ``workers`` worker processes and connect to it.

        ``cluster_kwargs`` go to ``LocalCluster`` (``cpu_per_worker``, ``memory_per_worker``,
        ``state_dir``, ``worker_timeout``). ``close()`` stops the cluster.
        """
        from iris.cluster.local import LocalCluster

        if workers < 1:
            raise InvalidRequestError(f"workers: must be >= 1, got {workers}")
        cluster = LocalCluster(workers=workers, **cluster_kwargs).start()
        try:
            return cls(cluster.controller_address, cluster=cluster, token=cluster.admin_token or None,
                       tls_ca=cluster.tls_ca)
        except BaseException:
            cluster.stop()
            raise

    @classmethod
    def from_env(cls, *, timeout: float = DEFAULT_RPC_TIMEOUT_S) -> IrisClient:
        """A client for code running inside an Iris task.

        Connects to ``$IRIS_CONTROLLER_ADDRESS``; jobs submitted through it are children of the
        task's job (id ``"{parent}/{name}"``, killed when the parent ends) and reuse its workspace
        bundle. Outside a task it falls back to ``$IRIS_CONTROLLER`` with no parent.
        """
        info = get_job_info()
        if info is None:
            return cls.remote(timeout=timeout)
        address = info.controller_address or default_controller_address()
        return cls(address, timeout=timeout, parent_job_id=info.job_id, parent_bundle_hash=info.bundle_hash)

    @property
    def address(self) -> str:
        """The controller's ``HOST:PORT``."""
        return self._address

    @property
    def cluster(self) -> Any:
        """The ``LocalCluster`` this client started, or None."""
        return self._cluster

    def close(self) -> None:
        """Close the connection, and stop the local cluster when this client started one."""
        if self._closed:
            return
        self._closed = True
        self._channel.close()
        if self._cluster is not None:
            self._cluster.stop()

    def __enter__(self) -> IrisClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IrisClient({self._address!r})"

    # -- RPC plumbing ---------------------------------------------------------------------------

    def _call(self, rpc: Callable[..., T], request: object, what: str = "", timeout: float | None = None) -> T:
        try:
            return rpc(request, timeout=timeout or self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self._address, what) from None

    # -- jobs -----------------------------------------------------------------------------------

    def submit(
        self,
        entrypoint: Entrypoint | Callable[..., Any],
        name: str | None = None,
        resources: ResourceSpec | None = None,
        replicas: int | None = None,
        *,
        workspace: Path | str | None = None,
        bundle_max_bytes: int | str | None = None,
        **fields: Any,
    ) -> Job:
        """Submit a job of ``replicas`` tasks and return its handle at once.

        Args:
            entrypoint: ``Entrypoint.from_command(...)`` / ``Entrypoint.from_callable(...)``, or
                a plain callable (called with no arguments).
            name: job name (letters, digits, ``.``, ``_``, ``-``); generated when omitted. A child
                job's id is ``"{parent}/{name}"``.
            resources: what each task needs (cpu, memory, disk, device).
            replicas: number of tasks; overrides ``resources.replicas``; must be >= 1.
            workspace: a directory to zip and ship as every attempt's working directory (on
                ``PYTHONPATH``). Inside a task, omitted means "reuse the parent's bundle".
            bundle_max_bytes: size cap for the workspace ("100MiB"); default ``$IRIS_BUNDLE_MAX_SIZE``
                or 25 MiB.
            **fields: any other job field by its ``JobSpec`` name, e.g. ``max_retries_failure=3``,
                ``env={"K": "V"}``, ``ports=["http"]``, ``coscheduled=True``, ``timeout_seconds=60``,
                ``on_exit=["2=fail-job"]`` (for ``exit_rules``); each field's declaration in
                ``iris.cluster.spec`` says what it means (``iris job run --help`` shows the same).
                Inside a task, ``parent_job_id`` defaults to the task's own job.

        Raises:
            InvalidRequestError: a bad argument (the message names it), also from the controller.
            AlreadyExistsError: a job with this name exists.
            BundleTooLargeError: the workspace exceeds the size cap.
            ControllerUnavailableError: the controller cannot be reached.
        """
        spec = self.build_spec(entrypoint, name=name, resources=resources, replicas=replicas, **fields)
        return self.submit_spec(spec, workspace=workspace, bundle_max_bytes=bundle_max_bytes)

    def submit_spec(
        self, spec: JobSpec, *, workspace: Path | str | None = None, bundle_max_bytes: int | str | None = None
    ) -> Job:
        """Submit a ready ``JobSpec`` (what ``submit`` and the CLI build), with an optional workspace."""
        request = self.launch_request(spec, workspace=workspace, bundle_max_bytes=bundle_max_bytes)
        if request.bundle_blob:  # the workspace goes first, in chunks; the LaunchJob names its hash
            self.upload_bundle(request.bundle_blob, request.bundle_hash)
            request.ClearField("bundle_blob")
        if len(request.serialized_entrypoint) > INLINE_ENTRYPOINT_BYTES:  # so does a large callable
            entrypoint = request.serialized_entrypoint
            request.entrypoint_hash = self.upload_bundle(entrypoint, hashlib.sha256(entrypoint).hexdigest())
            request.ClearField("serialized_entrypoint")
        response = self._call(self._stub.LaunchJob, request, f"job {request.name}", timeout=max(self._timeout, 120))
        return Job(self, response.job_id, response.warning)

    def upload_bundle(self, blob: bytes, bundle_hash: str) -> str:
        """Upload a zipped workspace (``UploadBundle``: its sha256 and size, then 1 MiB chunks); a
        LaunchJob of this caller may name its hash for the next hour. Returns the hash."""
        def messages() -> Iterator[cluster_pb2.Controller.UploadBundleRequest]:
            for offset in range(0, len(blob), UPLOAD_CHUNK_BYTES):
                first = offset == 0
                yield cluster_pb2.Controller.UploadBundleRequest(
                    bundle_hash=bundle_hash if first else "", size=len(blob) if first else 0,
                    chunk=blob[offset:offset + UPLOAD_CHUNK_BYTES])

        reply = self._call(self._stub.UploadBundle, messages(), f"workspace {bundle_hash[:12]}",
                           timeout=max(self._timeout, 300))
        return str(reply.bundle_hash)

    def build_spec(
        self,
        entrypoint: Entrypoint | Callable[..., Any],
        *,
        name: str | None = None,
        resources: ResourceSpec | None = None,
        replicas: int | None = None,
        **fields: Any,
    ) -> JobSpec:
        """The ``JobSpec`` of ``submit``'s arguments, checked by the shared validator (no RPC).
        Inside a task, the parent job and its workspace bundle are filled in."""
        if not isinstance(entrypoint, Entrypoint):
            if not callable(entrypoint):
                raise InvalidRequestError(
                    f"entrypoint: expected an Entrypoint or a callable, got {type(entrypoint).__name__}"
                )
            entrypoint = Entrypoint.from_callable(entrypoint)
        spec_resources = resources if resources is not None else ResourceSpec()
        if not isinstance(spec_resources, ResourceSpec):
            raise InvalidRequestError(f"resources: expected a ResourceSpec, got {type(spec_resources).__name__}")
        values = spec_fields({k: v for k, v in fields.items() if v is not None})  # None: the field's default
        for structural in ("entrypoint", "resources", "replicas", "name"):
            if structural in values:
                raise InvalidRequestError(f"{structural}: pass it as submit's own argument")
        spec = JobSpec(
            name=generate_job_name() if name is None else name,
            entrypoint=entrypoint,
            resources=spec_resources,
            replicas=spec_resources.replicas if replicas is None else replicas,
            **values,
        )
        return validate_job_spec(self.in_task(spec, adopt="parent_job_id" not in values))

    def in_task(self, spec: JobSpec, *, adopt: bool = True) -> JobSpec:
        """Inside a task (``from_env()``): a spec with no parent job becomes a child of the task's
        own job (``adopt``), and a child of it reuses its workspace bundle. Elsewhere, the spec as it is."""
        if not self._parent_job_id:
            return spec
        if adopt and not spec.parent_job_id:
            spec = spec.replace(parent_job_id=self._parent_job_id)
        if spec.parent_job_id == self._parent_job_id and not spec.bundle_hash and self._parent_bundle_hash:
            spec = spec.replace(bundle_hash=self._parent_bundle_hash)
        return spec

    def launch_request(
        self, spec: JobSpec, *, workspace: Path | str | None = None, bundle_max_bytes: int | str | None = None
    ) -> cluster_pb2.Controller.LaunchJobRequest:
        """The LaunchJob request for ``spec`` (its workspace zipped in when given). No RPC."""
        validate_job_spec(spec)
        if workspace is None:
            return spec.to_proto()
        limit = parse_size(bundle_max_bytes, "bundle_max_bytes") if bundle_max_bytes is not None else None
        bundle: Bundle = build_bundle(Path(workspace), limit)
        return spec.replace(bundle_hash=bundle.bundle_hash).to_proto(bundle_blob=bundle.blob)

    def build_launch_request(
        self,
        entrypoint: Entrypoint | Callable[..., Any],
        *,
        workspace: Path | str | None = None,
        bundle_max_bytes: int | str | None = None,
        **fields: Any,
    ) -> cluster_pb2.Controller.LaunchJobRequest:
        """Validate the arguments of ``submit`` and build its LaunchJob request (no RPC)."""
        return self.launch_request(self.build_spec(entrypoint, **fields), workspace=workspace,
                                   bundle_max_bytes=bundle_max_bytes)

    # -- who am I, tokens ----------------------------------------------------------------------

    def whoami(self) -> TokenIdentity:
        """Who the controller takes this client for (its token's name and role)."""
        reply = self._call(self._stub.WhoAmI, cluster_pb2.Controller.WhoAmIRequest(), "whoami")
        return TokenIdentity(name=reply.name, role=reply.role, job_id=reply.job_id)

    def create_token(self, name: str, role: str = "user", max_priority: str = "") -> CreatedToken:
        """Admin only: a new token for ``name`` (shown once). ``max_priority``: the highest band its
        jobs may ask for ("": interactive for a user, production for an admin)."""
        reply = self._call(self._stub.CreateToken, cluster_pb2.Controller.CreateTokenRequest(
            name=name, role=role, max_priority=max_priority), "token")
        return CreatedToken(reply.info.token_id, reply.info.name, reply.info.role, reply.info.created_at_ms, False,
                            reply.info.max_priority, reply.token)

    def list_tokens(self) -> list[TokenInfo]:
        """Admin only: every token (never their values)."""
        reply = self._call(self._stub.ListTokens, cluster_pb2.Controller.ListTokensRequest(), "tokens")
        return [TokenInfo(t.token_id, t.name, t.role, t.created_at_ms, bool(t.revoked_at_ms), t.max_priority)
                for t in reply.tokens]

    def revoke_token(self, token_id: str) -> None:
        """Admin only: revoke a token by id."""
        self._call(self._stub.RevokeToken, cluster_pb2.Controller.RevokeTokenRequest(token_id=token_id),
                   f"token {token_id}")

    def shares(self) -> tuple[list[TeamShare], dict[str, object]]:
        """Every team and user with guarantee, limit, weight, running use, decayed usage and
        standing; and the policy (its file, half-life, minimum lease, preemption rate, the fleet)."""
        reply = self._call(self._stub.GetShares, cluster_pb2.Controller.GetSharesRequest(), "shares")
        teams = [TeamShare(t.team, t.weight, dict(t.guarantee), dict(t.limit), dict(t.running), t.usage,
                           t.decayed_usage, t.standing,
                           [MemberShare(m.user, dict(m.running), m.usage, m.decayed_usage, m.standing, m.running_tasks,
                                        m.pending_tasks) for m in t.members],
                           t.own, t.under_guarantee, t.running_tasks, t.pending_tasks) for t in reply.teams]
        return teams, {"source": reply.source, "half_life_ms": reply.half_life_ms, "min_lease_ms": reply.min_lease_ms,
                       "max_preemptions_per_minute": reply.max_preemptions_per_minute, "fleet": dict(reply.fleet),
                       "pack_delay_ms": reply.pack_delay_ms, "pack_max_wait_ms": reply.pack_max_wait_ms,
                       "reserve_after_ms": reply.reserve_after_ms}

    def reload_sharing(self) -> tuple[str, int]:
        """Admin only: the controller reads its --sharing file again (a bad file changes nothing).
        Returns the file and how many teams it names."""
        reply = self._call(self._stub.ReloadSharing, cluster_pb2.Controller.ReloadSharingRequest(), "sharing")
        return reply.source, reply.teams

    def queue(self, limit: int = 0) -> tuple[list[QueueEntry], int]:
        """Pending jobs in the order the scheduler will consider them (at most ``limit``; 0: 1000),
        and how many wait in all."""
        reply = self._call(self._stub.GetQueue, cluster_pb2.Controller.GetQueueRequest(limit=limit), "queue")
        return [QueueEntry(e.job_id, e.band, e.team, e.user, e.position, e.reason, e.pending_tasks,
                           e.pending_since_ms, list(e.reserved_workers), e.reservation_start_ms)
                for e in reply.entries], reply.total

    def why(self, job_id: str) -> dict[str, Any]:
        """Why a pending job waits, structured (``iris job why --json``): ``position`` (its rank among
        pending jobs, 0 = next; -1 when not pending), ``reasons`` (``code`` and ``message`` each),
        ``reservation`` (or None), ``estimate`` (``start_p10_ms``-``start_p90_ms`` and ``start_p50_ms``, or None with
        ``unknown_reason``), its band, team and the team's guarantee, limit and use."""
        r = self._call(self._stub.GetJobWhy, cluster_pb2.Controller.GetJobWhyRequest(job_id=job_id), f"job {job_id}")
        estimate: dict[str, Any] | None = None
        if r.estimate.start_p50_ms:
            estimate = {"start_p50_ms": r.estimate.start_p50_ms, "start_p90_ms": r.estimate.start_p90_ms,
                        "start_p10_ms": r.estimate.start_p10_ms or r.estimate.start_p50_ms}
        return {
            "job_id": r.job_id, "state": r.state, "position": r.position, "band": r.band, "team": r.team,
            "user": r.user, "reasons": [{"code": x.code, "message": x.message} for x in r.reasons],
            "reservation": {"start_ms": r.reservation.start_ms or None, "workers": dict(r.reservation.workers)}
            if r.has_reservation else None,
            "waits_behind": r.waits_behind or None,
            "estimate": estimate, "unknown_reason": r.estimate.unknown_reason if estimate is None else None,
            "team_guarantee": dict(r.team_guarantee), "team_limit": dict(r.team_limit),
            "team_running": dict(r.team_running), "team_standing": r.team_standing,
            "preemptible_tasks": r.preemptible_tasks, "next_lease_end_ms": r.next_lease_end_ms or None,
        }

    def estimate_accuracy(self, since_ms: int = 0) -> dict[str, Any]:
        """How good the start-time estimates were (``iris queue accuracy``): ``started`` (estimated
        jobs that started since ``since_ms``), ``median_abs_error_s``, ``in_range_ratio``."""
        r = self._call(self._stub.GetEstimateAccuracy,
                       cluster_pb2.Controller.GetEstimateAccuracyRequest(since_ms=since_ms), "estimates")
        return {"started": r.started, "median_abs_error_s": r.median_abs_error_s if r.started else None,
                "in_range_ratio": r.in_range_ratio if r.started else None}

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (no RPC; ``status()`` raises when it does not exist)."""
        return Job(self, job_id)

    def job_status(self, job_id: str, include_tasks: bool = False, *, task_offset: int = 0,
                   task_limit: int = 0) -> JobStatus:
        """The job's status; with ``include_tasks`` its tasks too (from ``task_offset``, at most
        ``task_limit`` of them: a page of a wide job; 0: all). Raises ``JobNotFoundError``."""
        request = cluster_pb2.Controller.GetJobStatusRequest(job_id=job_id, include_tasks=include_tasks,
                                                             task_offset=task_offset, task_limit=task_limit)
        response = self._call(self._stub.GetJobStatus, request, f"job {job_id}")
        return JobStatus.from_proto(response.job)

    def terminate(self, job_id: str) -> None:
        """Kill the job, its tasks and its child jobs. Raises ``JobNotFoundError``."""
        request = cluster_pb2.Controller.TerminateJobRequest(job_id=job_id)
        self._call(self._stub.TerminateJob, request, f"job {job_id}")

    def delete_job(self, job_id: str) -> list[str]:
        """Remove an ended job with its child jobs, tasks, logs and results; its name can then be
        used again. Returns the ids deleted. Raises ``JobNotFoundError``, or ``IrisError`` (failed
        precondition) while the job runs: stop it first."""
        request = cluster_pb2.Controller.DeleteJobRequest(job_id=job_id)
        return list(self._call(self._stub.DeleteJob, request, f"job {job_id}").deleted_job_ids)

    def list_jobs(
        self, state: JobState | str | Iterable[JobState | str] | None = None, prefix: str = "", *,
        limit: int | None = None, newest_first: bool = False, where: Mapping[str, Iterable[str]] | None = None,
        user: str = "", all_users: bool = False,
    ) -> list[JobStatus]:
        """Your jobs (``user``: another user's; ``all_users``: everyone's, others' without their
        error text), optionally only those in ``state`` (one or several), whose id starts with
        ``prefix`` (a bare name is one of yours: ``train`` means ``<you>:train``) and whose spec
        passes ``where`` (a filterable job field and the texts it must match, e.g.
        ``{"labels": ["team=ml"]}``); in submission order, or ``newest_first``; at most ``limit``
        of them (None: all), fetched page by page."""
        return [JobStatus.from_proto(j) for j in self.list_job_protos(state, prefix, limit=limit,
                                                                       newest_first=newest_first, where=where,
                                                                       user=user, all_users=all_users)]

    def list_job_protos(
        self, state: JobState | str | Iterable[JobState | str] | None = None, prefix: str = "", *,
        limit: int | None = None, newest_first: bool = False, where: Mapping[str, Iterable[str]] | None = None,
        user: str = "", all_users: bool = False,
    ) -> list[cluster_pb2.JobStatus]:
        """``list_jobs`` as the wire's ``JobStatus`` messages (no conversion: for a long table)."""
        if limit is not None and limit < 0:
            raise InvalidRequestError(f"limit: must be >= 0, got {limit}")
        filters = [cluster_pb2.Controller.SpecFilter(field=name, value=value)
                   for name, value in parse_list_filters({k: list(v) for k, v in (where or {}).items()})]
        if state is None:
            states: list[JobState] = []
        elif isinstance(state, str):
            states = [self._parse_state(state)]
        else:
            states = [self._parse_state(s) for s in state]
        jobs: list[cluster_pb2.JobStatus] = []
        token = ""
        while True:  # page by page: each RPC is bounded by its page
            page_size = min(500, limit - len(jobs)) if limit is not None else 0
            if limit is not None and page_size <= 0:
                return jobs
            request = cluster_pb2.Controller.ListJobsRequest(
                states=[s.to_proto() for s in states], prefix=prefix, page_token=token, page_size=page_size,
                newest_first=newest_first, filters=filters, user=user, all_users=all_users,
            )
            response = self._call(self._stub.ListJobs, request, "jobs")
            jobs.extend(response.jobs)
            token = response.next_page_token
            if not token:
                return jobs if limit is None else jobs[:limit]

    @staticmethod
    def _parse_state(value: JobState | str) -> JobState:
        try:
            return parse_job_state(value)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from None

    def list_tasks(self, job_id: str) -> list[TaskStatus]:
        """The job's tasks in index order. Raises ``JobNotFoundError``."""
        request = cluster_pb2.Controller.ListTasksRequest(job_id=job_id)
        response = self._call(self._stub.ListTasks, request, f"job {job_id}")
        return sorted((TaskStatus.from_proto(t) for t in response.tasks), key=lambda t: t.task_index)

    def task_status(self, job_id: str, task_index: int) -> TaskStatus:
        """One task of a job. Raises ``NotFoundError`` for an unknown job or index."""
        request = cluster_pb2.Controller.GetTaskStatusRequest(job_id=job_id, task_index=task_index)
        response = self._call(self._stub.GetTaskStatus, request, f"job {job_id} task {task_index}")
        return TaskStatus.from_proto(response.task)

    # -- logs -----------------------------------------------------------------------------------

    def fetch_logs(
        self, task_id: str, attempt_id: int | None = None, start_line: int = 0, max_lines: int = 0,
        start_offset: int | None = None, tail_lines: int = 0,
    ) -> LogChunk:
        """One page of a task attempt's log (``attempt_id`` None: the current attempt). With
        ``start_offset`` (the ``next_offset`` of the previous page, for ``start_line``) the page is
        read from that byte on; without it the worker counts lines from the start."""
        request = cluster_pb2.Controller.FetchTaskLogsRequest(
            task_id=task_id, start_line=start_line, max_lines=max_lines
        )
        if attempt_id is not None:
            request.attempt_id = attempt_id
        if start_offset is not None:
            request.start_offset = start_offset
        elif tail_lines > 0:
            request.tail_lines = tail_lines
        response = self._call(self._stub.FetchTaskLogs, request, f"task {task_id}")
        return LogChunk(
            lines=[LogLine.from_proto(line) for line in response.lines],
            next_line=response.next_line,
            attempt_finished=response.attempt_finished,
            attempt_id=response.attempt_id,
            next_offset=response.next_offset,
        )

    def task_logs(self, job_id: str, task_index: int, attempt: int | None = None, *, tail: int = 0) -> list[LogLine]:
        """Every line the task's attempt has written so far (``attempt`` None: the current one);
        with ``tail`` only the last that many."""
        return [line for page in self.iter_task_logs(job_id, task_index, attempt, tail=tail) for line in page]

    def iter_task_logs(self, job_id: str, task_index: int, attempt: int | None = None, *,
                       tail: int = 0) -> Iterator[list[LogLine]]:
        """The task attempt's log a page at a time (each page read from where the last ended, so
        nothing is held but one page); with ``tail`` from the last that many lines."""
        task_id = task_id_for(JobId(job_id), task_index)
        start = 0
        offset: int | None = None if tail > 0 else 0
        while True:
            chunk = self.fetch_logs(task_id, attempt, start, _LOG_PAGE_LINES, start_offset=offset, tail_lines=tail)
            if chunk.lines:
                yield chunk.lines
            if not chunk.lines or chunk.next_line <= start:
                return
            start = chunk.next_line
            offset = chunk.next_offset
            if attempt is None:
                attempt = chunk.attempt_id  # stay on one attempt across pages

    # -- workers and endpoints ------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """Every registered worker, healthy or not, and every provisioned one still starting."""
        return self.worker_report()[0]

    def worker_report(self) -> tuple[list[WorkerInfo], str]:
        """``workers()`` and the provisioner's one-line summary ("" without a provisioner)."""
        response = self._call(self._stub.ListWorkers, cluster_pb2.Controller.ListWorkersRequest(), "workers")
        workers = sorted((WorkerInfo.from_proto(w) for w in response.workers), key=lambda w: w.worker_id)
        return workers, response.provisioning

    def drain_worker(self, worker_id: str) -> int:
        """Admin: no new tasks on the worker; its tasks are stopped (SIGTERM, their job's grace) and
        retried elsewhere as preemptions. Returns how many were stopped."""
        request = cluster_pb2.Controller.DrainWorkerRequest(worker_id=worker_id)
        return self._call(self._stub.DrainWorker, request, f"worker {worker_id}").tasks_stopped

    def release_worker(self, worker_id: str) -> None:
        """Admin: end a worker's drain or quarantine."""
        self._call(self._stub.ReleaseWorker, cluster_pb2.Controller.ReleaseWorkerRequest(worker_id=worker_id),
                   f"worker {worker_id}")

    def register_endpoint(
        self,
        name: str,
        address: str,
        metadata: Mapping[str, str] | None = None,
        *,
        task_id: str | None = None,
        attempt_id: int | None = None,
    ) -> str:
        """Register ``name -> address`` for the running task (defaults: this task's id and attempt).

        Returns the endpoint id. The endpoint goes away when the attempt ends.
        """
        info = get_job_info()
        if task_id is None:
            if info is None:
                raise InvalidRequestError("task_id: not running inside an Iris task; pass task_id and attempt_id")
            task_id = info.task_id
        if attempt_id is None:
            attempt_id = info.attempt_id if info is not None and info.task_id == task_id else 0
        request = cluster_pb2.Controller.RegisterEndpointRequest(
            name=name, address=address, task_id=task_id, attempt_id=attempt_id, metadata=dict(metadata or {})
        )
        response = self._call(self._stub.RegisterEndpoint, request, f"endpoint {name}")
        return response.endpoint_id

    def unregister_endpoint(self, endpoint_id: str) -> None:
        request = cluster_pb2.Controller.UnregisterEndpointRequest(endpoint_id=endpoint_id)
        self._call(self._stub.UnregisterEndpoint, request, f"endpoint {endpoint_id}")

    def lookup_endpoint(self, name: str) -> EndpointInfo | None:
        """The endpoint registered under ``name``, or None."""
        request = cluster_pb2.Controller.LookupEndpointRequest(name=name)
        try:
            response = self._call(self._stub.LookupEndpoint, request, f"endpoint {name}")
        except NotFoundError:
            return None
        if not response.HasField("endpoint") or not response.endpoint.name:
            return None
        return EndpointInfo.from_proto(response.endpoint)

    def list_endpoints(self, prefix: str = "") -> list[EndpointInfo]:
        """Endpoints whose name starts with ``prefix``."""
        request = cluster_pb2.Controller.ListEndpointsRequest(prefix=prefix)
        response = self._call(self._stub.ListEndpoints, request, "endpoints")
        return sorted((EndpointInfo.from_proto(e) for e in response.endpoints), key=lambda e: e.name)


@dataclass(slots=True)
class _LogCursor:
    attempt_id: int = 0
    next_line: int = 0
    next_offset: int | None = 0
    done: bool = False
    tail: int = 0
    """Start at the last this many lines (the first read only)."""


@dataclass(slots=True)
class LogFollower:
    """Reads every task's output of one job incrementally, across retries (attempt 0, 1, ...).

    Call ``poll(tasks)`` with fresh task statuses as often as you like; it returns the lines
    written since the last call. After the job has finished, ``poll(tasks, final=True)`` drains
    what is left and never waits for a log that cannot come.
    """

    client: IrisClient
    job_id: str
    task_indices: frozenset[int] | None = None
    first_attempt: int | None = 0
    """Attempt to start each task at; None: the task's current attempt when first seen."""
    tail: int = 0
    """Start each task's first attempt read at its last this many lines (0: from the start)."""
    final_grace_s: float = 10.0
    """After the job ended, how long ``poll(final=True)`` waits for the last lines of each attempt
    to reach the controller (workers ship logs about once a second)."""
    _cursors: dict[int, _LogCursor] = field(default_factory=dict)

    def poll(self, tasks: Iterable[TaskStatus], final: bool = False) -> list[TaskLogLine]:
        if not final:
            return self._poll_once(tasks, False)
        tasks = list(tasks)
        out = self._poll_once(tasks, False)
        clock = SystemClock()
        pause = threading.Event()
        deadline = clock.monotonic() + self.final_grace_s
        while clock.monotonic() < deadline and any(
                _has_started(t) and (c := self._cursors.get(t.task_index)) is not None and not c.done
                for t in tasks if self.task_indices is None or t.task_index in self.task_indices):
            clock.wait(pause, 0.1)
            out += self._poll_once(tasks, False)
        return out + self._poll_once(tasks, True)

    def _poll_once(self, tasks: Iterable[TaskStatus], final: bool) -> list[TaskLogLine]:
        out: list[TaskLogLine] = []
        for task in sorted(tasks, key=lambda t: t.task_index):
            if self.task_indices is not None and task.task_index not in self.task_indices:
                continue
            if not _has_started(task):
                continue
            cursor = self._cursors.get(task.task_index)
            if cursor is None:
                first = task.current_attempt_id if self.first_attempt is None else self.first_attempt
                cursor = self._cursors[task.task_index] = _LogCursor(
                    attempt_id=first, next_offset=None if self.tail > 0 else 0, tail=self.tail)
            if not cursor.done:
                self._read_task(task, cursor, final, out)
        return out

    def _read_task(self, task: TaskStatus, cursor: _LogCursor, final: bool, out: list[TaskLogLine]) -> None:
        task_finished = task.state.is_finished
        while not cursor.done:
            try:
                chunk = self.client.fetch_logs(task.task_id, cursor.attempt_id, cursor.next_line, _LOG_PAGE_LINES,
                                               start_offset=cursor.next_offset, tail_lines=cursor.tail)
            except IrisError:
                # Not started yet, or its worker is gone or slow. A finished attempt whose log
                # cannot be read is skipped; otherwise try again on the next poll. (A controller
                # that is really down shows up in the status poll.)
                if cursor.attempt_id < task.current_attempt_id or task_finished or final:
                    if not self._advance(task, cursor, task_finished):
                        return
                    continue
                return
            out.extend(TaskLogLine(task.task_index, cursor.attempt_id, line) for line in chunk.lines)
            if cursor.next_offset is None:  # a tail read: go on from where it ended
                cursor.next_offset = chunk.next_offset
                cursor.tail = 0
            if chunk.lines:
                cursor.next_line = max(chunk.next_line, cursor.next_line + len(chunk.lines))
                cursor.next_offset = chunk.next_offset
                if len(chunk.lines) >= _LOG_PAGE_LINES:
                    continue
            if chunk.lines and not chunk.attempt_finished and not final:
                return
            if chunk.attempt_finished or final or cursor.attempt_id < task.current_attempt_id:
                if chunk.lines:
                    continue  # read until an empty page so nothing written at the end is lost
                if not self._advance(task, cursor, task_finished):
                    return
                continue
            return

    @staticmethod
    def _advance(task: TaskStatus, cursor: _LogCursor, task_finished: bool) -> bool:
        """Move to the next attempt; False (and maybe done) when there is none yet."""
        if cursor.attempt_id < task.current_attempt_id:
            cursor.attempt_id += 1
            cursor.next_line = 0
            cursor.next_offset = 0
            return True
        if task_finished:
            cursor.done = True
        return False


def _has_started(task: TaskStatus) -> bool:
    """True once the task has had an attempt that may have written output."""
    if task.attempts or task.current_attempt_id > 0:
        return True
    if task.state in (TaskState.PENDING, TaskState.UNSCHEDULABLE):
        return False
    if task.state is TaskState.KILLED and not task.worker_id and not task.started_at_ms:
        return False
    return True


def _failed_tasks(tasks: Sequence[TaskStatus]) -> list[TaskStatus]:
    bad = [t for t in tasks if t.state in (TaskState.FAILED, TaskState.WORKER_FAILED, TaskState.UNSCHEDULABLE)]
    return bad or [t for t in tasks if t.state is not TaskState.SUCCEEDED]


class Job:
    """A handle on a submitted job. Cheap to create; every method asks the controller."""

    def __init__(self, client: IrisClient, job_id: str, warning: str = "") -> None:
        self._client = client
        self._job_id = job_id
        self.warning = warning
        """What the controller said at submission, e.g. that no worker can hold one task ("never
        fits: ..."): the job waits until such a worker joins."""

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def client(self) -> IrisClient:
        return self._client

    def __repr__(self) -> str:
        return f"Job({self._job_id!r})"

    def status(self, include_tasks: bool = False) -> JobStatus:
        """The job's current status (``include_tasks``: with every task)."""
        return self._client.job_status(self._job_id, include_tasks=include_tasks)

    @property
    def state(self) -> JobState:
        return self.status().state

    def tasks(self) -> list[TaskStatus]:
        """Every task of the job, in index order."""
        return self._client.list_tasks(self._job_id)

    def task(self, index: int) -> TaskStatus:
        return self._client.task_status(self._job_id, index)

    def logs(self, task_index: int = 0, attempt: int | None = None) -> list[LogLine]:
        """What task ``task_index`` wrote in ``attempt`` (None: its current attempt)."""
        return self._client.task_logs(self._job_id, task_index, attempt)

    def terminate(self) -> None:
        """Kill the job: its tasks stop and it ends KILLED."""
        self._client.terminate(self._job_id)

    def delete(self) -> list[str]:
        """Remove the ended job (and its children, tasks, logs, results); see ``IrisClient.delete_job``."""
        return self._client.delete_job(self._job_id)

    def follow(
        self,
        on_line: Callable[[TaskLogLine], None] | None = None,
        on_status: Callable[[JobStatus], None] | None = None,
        *,
        include_tasks: bool = False,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        stop: threading.Event | None = None,
        unavailable_grace: float = 30.0,
    ) -> JobStatus:
        """Poll until the job finishes, calling ``on_line`` for each new log line of every task
        and ``on_status`` with each status seen (with its tasks when ``include_tasks`` or
        following logs). Returns the final status. Raises ``JobTimeoutError`` after ``timeout``
        seconds; returns early with the last status when ``stop`` is set. A controller that is
        unreachable for longer than ``unavailable_grace`` seconds raises
        ``ControllerUnavailableError``.
        """
        follower = LogFollower(self._client, self._job_id) if on_line is not None else None
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = stop or threading.Event()
        interval = min(0.05, poll_interval)
        unreachable_since: float | None = None
        while True:
            try:
                status = self.status(include_tasks=include_tasks or follower is not None)
            except ControllerUnavailableError:
                # Ride out a controller restart (its state is durable) for a while.
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > unavailable_grace or (deadline is not None and now >= deadline):
                    raise
                if waiter.wait(min(1.0, poll_interval * 2)):
                    raise
                continue
            unreachable_since = None
            if on_status is not None:
                on_status(status)
            if follower is not None and on_line is not None:
                for line in follower.poll(status.tasks, final=status.is_finished):
                    on_line(line)
            if status.is_finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(
                    f"job {self._job_id} still {status.state.value} after {timeout:g}s "
                    f"({status.counts.succeeded}/{status.num_tasks} tasks succeeded); it keeps running"
                )
            wait_for = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
            if waiter.wait(wait_for):
                return status
            interval = min(poll_interval, interval * 1.5)

    def wait(
        self,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        stream_logs: bool = False,
        poll_interval: float = 0.5,
    ) -> JobStatus:
        """Block until the job finishes and return its final status.

        Args:
            timeout: seconds to wait (None: forever); ``JobTimeoutError`` when exceeded.
            raise_on_failure: raise ``JobFailedError`` (with the job's error and failed tasks)
                unless the job SUCCEEDED.
            stream_logs: print every task's output to stdout as ``[index] line`` while waiting.
        """
        on_line = _print_line if stream_logs else None
        status = self.follow(on_line, timeout=timeout, poll_interval=poll_interval)
        if raise_on_failure and status.state is not JobState.SUCCEEDED:
            tasks = status.tasks or tuple(self.status(include_tasks=True).tasks)
            raise JobFailedError(status, _failed_tasks(tasks))
        return status


    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return task 0's return value (a callable job; cloudpickle).

        Raises ``JobFailedError`` when the job did not succeed: its ``remote_type``,
        ``remote_message`` and ``remote_traceback`` are the exception the callable raised."""
        return self.results(timeout=timeout, tasks=[0])[0]

    def results(self, timeout: float | None = None, tasks: Sequence[int] | None = None) -> list[Any]:
        """Wait for the job and return every task's return value, by task index (``tasks``: only
        these). A task that returned nothing Iris kept (a command) gives None."""
        status = self.wait(timeout=timeout)
        indexes = list(range(status.num_tasks)) if tasks is None else list(tasks)
        out: list[Any] = []
        for index in indexes:
            request = cluster_pb2.Controller.GetTaskResultRequest(job_id=self._job_id, task_index=index)
            reply = self._client._call(self._client._stub.GetTaskResult, request, f"job {self._job_id}")  # noqa: SLF001
            out.append(cloudpickle.loads(reply.result) if reply.ready else None)
        return out


def _print_line(line: TaskLogLine) -> None:
    # Iris's own notes (the environment build) go to stderr, beside the task's output.
    (sys.stderr if line.line.source == "iris" else sys.stdout).write(f"[{line.task_index}] {line.line.data}\n")
    sys.stdout.flush()
