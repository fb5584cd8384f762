"""ControllerService over real in-process gRPC: status codes that name the field, and bad input that
never changes state or stops the server."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from iris.cluster.auth import Role
from iris.cluster.clock import FakeClock
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.service import ControllerServer
from iris.cluster.controller.state import ControllerState
from iris.cluster.types import ResourceSpec
from iris.cluster.validation import Limits
from iris.rpc import cluster_pb2, cluster_pb2_grpc

from ..e2e import authed_channel
from .fakes import FakeWorkerClients

T = cluster_pb2
C = cluster_pb2.Controller


@pytest.fixture
def server() -> Iterator[ControllerServer]:
    state = ControllerState()
    controller = Controller(ControllerConfig(limits=Limits(max_replicas=1000)), state=state, clock=FakeClock(),
                            worker_clients=FakeWorkerClients())
    for role in (Role.ADMIN, Role.JOIN):
        _, TOKENS[role] = controller.create_token(role.value, role)
    srv = ControllerServer(controller, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop(grace=0)
    state.check_invariants()


TOKENS: dict[Role, str] = {}


@pytest.fixture
def stub(server: ControllerServer) -> Iterator[cluster_pb2_grpc.ControllerServiceStub]:
    with authed_channel(server.address, TOKENS[Role.ADMIN]) as channel:
        yield cluster_pb2_grpc.ControllerServiceStub(channel)


def entry(*argv: str) -> bytes:
    return T.Entrypoint(command=T.CommandEntrypoint(argv=list(argv))).SerializeToString()


def good_request(name: str = "job", **kw: object) -> cluster_pb2.Controller.LaunchJobRequest:
    return C.LaunchJobRequest(name=name, serialized_entrypoint=entry("true"),
                              resources=ResourceSpec(cpu=1, replicas=2).to_proto(), **kw)  # type: ignore[arg-type]


def code_and_details(fn: object, request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=10)  # type: ignore[operator]
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


def test_service_launch_and_status_counts(stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    assert stub.LaunchJob(good_request("train")).job_id == "admin:train"  # names are unique per owner
    job = stub.GetJobStatus(C.GetJobStatusRequest(job_id="train", include_tasks=True)).job  # a bare name: mine
    assert (job.job_id, job.state, job.num_tasks, job.tasks_pending) == ("admin:train", T.JOB_STATE_PENDING, 2, 2)
    assert [t.task_id for t in job.tasks] == ["admin:train/task-0", "admin:train/task-1"]
    assert stub.GetTaskStatus(C.GetTaskStatusRequest(job_id="train", task_index=1)).task.task_index == 1
    assert len(stub.ListTasks(C.ListTasksRequest(job_id="train")).tasks) == 2


def test_service_replicas_zero_means_one_task(stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    request = good_request("one")
    request.resources.replicas = 0
    stub.LaunchJob(request)
    assert stub.GetJobStatus(C.GetJobStatusRequest(job_id="one")).job.num_tasks == 1


def _mutate(field: str) -> cluster_pb2.Controller.LaunchJobRequest:
    r = good_request("bad")
    if field == "name-empty":
        r.name = ""
    elif field == "name-slash":
        r.name = "a/b"
    elif field == "replicas-negative":
        r.resources.replicas = -1
    elif field == "replicas-absurd":
        r.resources.replicas = 10**9
    elif field == "cpu-negative":
        r.resources.cpu = -2
    elif field == "memory-negative":
        r.resources.memory_bytes = -1
    elif field == "entrypoint-garbage":
        r.serialized_entrypoint = b"\xff\xff\xff"
    elif field == "entrypoint-empty-command":
        r.serialized_entrypoint = entry()
    elif field == "max-task-failures-negative":
        r.max_task_failures = -1
    elif field == "preemption-negative":
        r.max_retries_preemption = -1
    elif field == "timeout-negative":
        r.scheduling_timeout_seconds = -5
    elif field == "port-name":
        r.ports.append("not a port")
    elif field == "bundle-hash":
        r.bundle_hash = "zzz"
    return r


def test_service_an_entrypoint_over_the_limit_is_refused_also_when_uploaded(
        stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    """Over 6 MiB no request is read at all; a larger entrypoint comes by UploadBundle and is then
    held to the entrypoint limit (16 MiB) like an inline one, naming the field."""
    import hashlib

    big = entry("x" * (17 * 1024 * 1024))
    inline = good_request("inline")
    inline.serialized_entrypoint = big
    assert code_and_details(stub.LaunchJob, inline)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    digest = hashlib.sha256(big).hexdigest()
    chunks = [big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20)]
    stub.UploadBundle(iter([C.UploadBundleRequest(bundle_hash=digest, size=len(big), chunk=chunks[0])]
                           + [C.UploadBundleRequest(chunk=c) for c in chunks[1:]]))
    named = good_request("named")
    named.ClearField("serialized_entrypoint")
    named.entrypoint_hash = digest
    code, details = code_and_details(stub.LaunchJob, named)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("serialized_entrypoint"), details
    unknown = good_request("unknown")
    unknown.entrypoint_hash = "0" * 64
    code, details = code_and_details(stub.LaunchJob, unknown)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("entrypoint_hash"), details
    assert list(stub.ListJobs(C.ListJobsRequest()).jobs) == []


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("name-empty", "name"),
        ("name-slash", "name"),
        ("replicas-negative", "resources.replicas"),
        ("replicas-absurd", "resources.replicas"),
        ("cpu-negative", "resources.cpu"),
        ("memory-negative", "resources.memory_bytes"),
        ("entrypoint-garbage", "serialized_entrypoint"),
        ("entrypoint-empty-command", "serialized_entrypoint.command.argv"),
        ("max-task-failures-negative", "max_task_failures"),
        ("preemption-negative", "max_retries_preemption"),
        ("timeout-negative", "scheduling_timeout_seconds"),
        ("port-name", "ports"),
        ("bundle-hash", "bundle_hash"),
    ],
)
def test_service_invalid_launch_names_the_field_and_changes_nothing(
    stub: cluster_pb2_grpc.ControllerServiceStub, case: str, names: str
) -> None:
    code, details = code_and_details(stub.LaunchJob, _mutate(case))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(names)
    assert list(stub.ListJobs(C.ListJobsRequest()).jobs) == []


def test_service_duplicate_and_unknown(stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    stub.LaunchJob(good_request("dup"))
    assert code_and_details(stub.LaunchJob, good_request("dup"))[0] == grpc.StatusCode.ALREADY_EXISTS
    assert code_and_details(stub.GetJobStatus, C.GetJobStatusRequest(job_id="nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_and_details(stub.GetTaskStatus, C.GetTaskStatusRequest(job_id="dup", task_index=7))[0] == \
        grpc.StatusCode.NOT_FOUND
    assert code_and_details(stub.TerminateJob, C.TerminateJobRequest(job_id="nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_and_details(stub.LaunchJob, good_request("c", parent_job_id="nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_and_details(stub.FetchBundle, C.FetchBundleRequest(bundle_hash="ab"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_and_details(stub.LookupEndpoint, C.LookupEndpointRequest(name="x"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_and_details(stub.ListTasks, C.ListTasksRequest(job_id=""))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert [j.job_id for j in stub.ListJobs(C.ListJobsRequest()).jobs] == ["admin:dup"]


def test_service_list_jobs_filters_by_state_and_prefix(stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    for name in ("train-a", "train-b", "eval"):
        stub.LaunchJob(good_request(name))
    stub.TerminateJob(C.TerminateJobRequest(job_id="train-b"))
    jobs = stub.ListJobs(C.ListJobsRequest(prefix="train")).jobs
    assert sorted(j.job_id for j in jobs) == ["admin:train-a", "admin:train-b"]
    jobs = stub.ListJobs(C.ListJobsRequest(states=[T.JOB_STATE_KILLED])).jobs
    assert [j.job_id for j in jobs] == ["admin:train-b"]


def test_service_bundle_roundtrip_and_child_reuses_parent_bundle(stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    import hashlib

    blob = b"PK fake zip bytes" * 100_000  # 1.7 MB: two chunks
    digest = hashlib.sha256(blob).hexdigest()

    def upload(bundle_hash: str, size: int, data: bytes) -> C.UploadBundleResponse:
        chunks = [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
        return stub.UploadBundle(iter([C.UploadBundleRequest(bundle_hash=bundle_hash, size=size, chunk=chunks[0])]
                                      + [C.UploadBundleRequest(chunk=c) for c in chunks[1:]]))

    assert upload(digest, len(blob), blob).bundle_hash == digest
    stub.LaunchJob(good_request("parent", bundle_hash=digest))
    assert stub.FetchBundle(C.FetchBundleRequest(bundle_hash=digest)).blob == blob
    for bad_hash, size, data, rule in (("0" * 64, len(blob), blob, "is not the sha256"),
                                       (digest, len(blob) + 1, blob, "announced"),
                                       (digest, 10, blob, "more than the 10 bytes"),
                                       ("nope", len(blob), blob, "64 hex digits")):
        with pytest.raises(grpc.RpcError) as refused:
            upload(bad_hash, size, data)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and rule in refused.value.details()
    # An older client's LaunchJob that still carries the bundle: a clear error, nothing launched.
    old = good_request("other", bundle_blob=b"PK", bundle_hash=hashlib.sha256(b"PK").hexdigest())
    code, details = code_and_details(stub.LaunchJob, old)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "UploadBundle" in details and "upgrade" in details
    assert stub.LaunchJob(good_request("child", parent_job_id="parent")).job_id == "admin:parent/child"


def test_service_survives_malformed_bytes_on_every_rpc(
    server: ControllerServer, stub: cluster_pb2_grpc.ControllerServiceStub
) -> None:
    stub.LaunchJob(good_request("keep"))
    with grpc.insecure_channel(server.address) as channel:
        for method in ("LaunchJob", "GetJobStatus", "ReportTaskState", "RegisterWorker", "Heartbeat",
                       "RegisterEndpoint", "FetchTaskLogs", "TerminateJob"):
            call = channel.unary_unary(f"/iris.cluster.ControllerService/{method}",
                                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError):
                call(b"\x0a\xff\xff\xff\xff\xff", timeout=10)
    assert [j.job_id for j in stub.ListJobs(C.ListJobsRequest()).jobs] == ["admin:keep"]


def test_service_report_and_register_validation(stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    code, details = code_and_details(stub.RegisterWorker, C.RegisterWorkerRequest(worker_id="", address="h:1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("worker_id")
    code, details = code_and_details(stub.RegisterWorker, C.RegisterWorkerRequest(worker_id="w", address="nohost"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("address")
    bad = C.ReportTaskStateRequest(worker_id="w", updates=[T.WorkerTaskStatus(task_id="", attempt_id=0)])
    code, details = code_and_details(stub.ReportTaskState, bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("updates[0].task_id")
    # A report for an unknown task is ignored (and its process, if live, sent back to be killed).
    reply = stub.ReportTaskState(C.ReportTaskStateRequest(
        worker_id="w", updates=[T.WorkerTaskStatus(task_id="ghost/task-0", state=T.TASK_STATE_RUNNING)]))
    assert [k.task_id for k in reply.kill] == ["ghost/task-0"]


def test_service_job_status_pages_tasks_and_says_where_the_next_page_starts(
        stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    stub.LaunchJob(C.LaunchJobRequest(name="wide", serialized_entrypoint=entry("true"),
                                      resources=ResourceSpec(cpu=1, replicas=25).to_proto()))
    seen: list[int] = []
    offset = 0
    while True:
        reply = stub.GetJobStatus(C.GetJobStatusRequest(job_id="wide", include_tasks=True, task_offset=offset,
                                                        task_limit=10))
        seen += [t.task_index for t in reply.job.tasks]
        if not reply.next_task_offset:
            break
        offset = reply.next_task_offset
    assert seen == list(range(25)) and reply.job.num_tasks == 25
    code, details = code_and_details(stub.GetJobStatus, C.GetJobStatusRequest(job_id="wide", include_tasks=True,
                                                                             task_limit=100_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("task_limit")


def test_service_job_status_carries_its_spec_redacted_for_other_users(
        server: ControllerServer, stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    _, alice = server.controller.create_token("alice", Role.USER)
    _, bob = server.controller.create_token("bob", Role.USER)
    request = good_request("secretive", environment=T.EnvironmentConfig(env_vars={"API_KEY": "s3cret"}),
                           max_retries_failure=2, ports=["http"])
    with authed_channel(server.address, alice) as channel:
        as_alice = cluster_pb2_grpc.ControllerServiceStub(channel)
        as_alice.LaunchJob(request)
        own = as_alice.GetJobStatus(C.GetJobStatusRequest(job_id="secretive")).job.spec
    assert dict(own.environment.env_vars) == {"API_KEY": "s3cret"} and own.serialized_entrypoint
    with authed_channel(server.address, bob) as channel:
        other = cluster_pb2_grpc.ControllerServiceStub(channel).GetJobStatus(
            C.GetJobStatusRequest(job_id="alice:secretive")).job.spec
    assert not other.environment.env_vars and not other.serialized_entrypoint
    assert (other.max_retries_failure, list(other.ports)) == (2, ["http"])
    # Lists stay lean: no spec per job.
    assert not stub.ListJobs(C.ListJobsRequest(all_users=True)).jobs[0].HasField("spec")


def test_service_list_filters_name_the_field_and_the_rule(stub: cluster_pb2_grpc.ControllerServiceStub) -> None:
    code, details = code_and_details(stub.ListJobs, C.ListJobsRequest(filters=[C.SpecFilter(field="env", value="A")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("filters: jobs cannot be filtered by 'env'")
    code, details = code_and_details(stub.ListJobs, C.ListJobsRequest(
        filters=[C.SpecFilter(field="x", value="y")] * 17))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 16" in details


def test_bare_names_are_the_callers_own_and_an_owner_prefix_is_taken_whole() -> None:
    """Issue 24 item 5: '<user>:<name>' ids; a bare name (a job, child, task or endpoint) is the
    caller's own; a list shows one's own jobs unless it names a user or asks for all users; a task
    registers endpoint names in its owner's namespace only."""
    from iris.cluster.auth import Principal
    from iris.cluster.controller.access import qualify
    from iris.cluster.controller.service import endpoint_name, list_prefix
    from iris.cluster.errors import InvalidArgument, PermissionDenied
    from iris.cluster.types import owner_of_job_id, qualify_job_id, root_job_id

    alice = Principal(Role.USER, "alice")
    task = Principal(Role.TASK, "alice:train/task-0", job_id="alice:train", attempt_id=0)
    assert root_job_id("alice", "train") == "alice:train" and root_job_id("", "train") == "train"
    assert owner_of_job_id("alice:train/child/task-3") == "alice" and owner_of_job_id("train/task-0") == ""
    assert qualify_job_id("train/task-0", "bob") == "bob:train/task-0"
    assert qualify(alice, "train") == "alice:train" and qualify(alice, "bob:train") == "bob:train"
    assert qualify(task, "train/child") == "alice:train/child"  # a task's bare names are its owner's
    assert list_prefix(alice, "", "", False) == "alice:" and list_prefix(alice, "tr", "", False) == "alice:tr"
    assert list_prefix(alice, "", "bob", False) == "bob:" and list_prefix(alice, "", "", True) == ""
    assert list_prefix(alice, "bob:x", "", False) == "bob:x"
    with pytest.raises(InvalidArgument, match="prefix: names jobs of 'bob', not of user 'carol'"):
        list_prefix(alice, "bob:x", "carol", False)
    assert endpoint_name("alice:train/task-0", "svc") == "alice:svc"
    assert endpoint_name("alice:train/task-0", "alice:svc") == "alice:svc"
    with pytest.raises(PermissionDenied, match="in the namespace of user 'bob'"):
        endpoint_name("alice:train/task-0", "bob:svc")


def test_an_idle_connection_is_closed() -> None:
    """Issue 23 item 9: a connection that makes no call is closed by the server after its idle
    limit (before, 600 of 600 idle connections stayed open); one that keeps calling is not."""
    import socket

    controller = Controller(ControllerConfig(), clock=FakeClock(), worker_clients=FakeWorkerClients())
    srv = ControllerServer(controller, "127.0.0.1", 0, idle_connection_ms=300)
    srv.start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            # The HTTP/2 client preface and an empty SETTINGS frame: a connection, no call on it.
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            received = b""
            while True:
                chunk = sock.recv(65536)  # the timeout above bounds each wait
                if not chunk:
                    break  # closed by the server
                received += chunk
        assert b"\x07" in received  # a GOAWAY frame (type 7) came before the close
    finally:
        srv.stop(grace=0)
        controller.stop()


def test_a_request_sent_too_slowly_is_cut_when_its_connection_ages_out() -> None:
    """Issue 23 item 9's per-request deadline: a connection ends at its age (a GOAWAY), and a call
    still on it gets the grace to finish, then the connection is closed. An upload that stalls
    after its first chunk holds the server no longer; a fresh call afterwards is served."""
    import threading

    controller = Controller(ControllerConfig(auth=False), clock=FakeClock(), worker_clients=FakeWorkerClients())
    srv = ControllerServer(controller, "127.0.0.1", 0, connection_age_ms=300, request_grace_ms=300)
    srv.start()
    release = threading.Event()

    def stalled() -> Iterator[cluster_pb2.Controller.UploadBundleRequest]:
        yield cluster_pb2.Controller.UploadBundleRequest(bundle_hash="0" * 64, size=2, chunk=b"x")
        release.wait(60)  # the rest never comes (until the test ends)

    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    try:
        stub = cluster_pb2_grpc.ControllerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as cut:
            stub.UploadBundle(stalled(), timeout=30)  # far longer than the age and grace
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE  # the server closed it; not our deadline
        reply = stub.ListWorkers(cluster_pb2.Controller.ListWorkersRequest(), timeout=30)
        assert list(reply.workers) == []
    finally:
        release.set()
        channel.close()
        srv.stop(grace=0)
        controller.stop()
