"""The client against a small in-process fake controller: the LaunchJob request it builds, child
jobs from inside a task, and how gRPC errors become client exceptions."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from iris.client import (
    AlreadyExistsError,
    ControllerUnavailableError,
    Entrypoint,
    InvalidRequestError,
    IrisClient,
    JobNotFoundError,
    ResourceSpec,
    UnavailableError,
)
from iris.rpc import cluster_pb2, cluster_pb2_grpc

C = cluster_pb2.Controller


class FakeController(cluster_pb2_grpc.ControllerServiceServicer):
    """Records LaunchJob requests; answers with the status code set in ``fail_with``."""

    def __init__(self) -> None:
        self.launched: list[C.LaunchJobRequest] = []
        self.uploaded: dict[str, bytes] = {}
        self.fail_with: tuple[grpc.StatusCode, str] | None = None
        self.busy_answers = 0
        """Calls answered RESOURCE_EXHAUSTED (as the controller's read gate does) before the next succeeds."""
        self.calls: list[str] = []

    def _busy(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls.append(method)
        if self.busy_answers > 0:
            self.busy_answers -= 1
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{method}: 16 reads waiting (at most 16); retry")

    def LaunchJob(self, request: C.LaunchJobRequest, context: grpc.ServicerContext) -> C.LaunchJobResponse:
        self._busy("LaunchJob", context)
        if self.fail_with:
            context.abort(*self.fail_with)
        self.launched.append(request)
        job_id = f"{request.parent_job_id}/{request.name}" if request.parent_job_id else request.name
        return C.LaunchJobResponse(job_id=job_id)

    def UploadBundle(self, requests: Iterator[C.UploadBundleRequest], context: grpc.ServicerContext
                     ) -> C.UploadBundleResponse:
        messages = list(requests)
        blob = b"".join(m.chunk for m in messages)
        assert messages[0].size == len(blob) and all(len(m.chunk) <= 1 << 20 for m in messages)
        self.uploaded[messages[0].bundle_hash] = blob
        return C.UploadBundleResponse(bundle_hash=messages[0].bundle_hash)

    def GetJobStatus(self, request: C.GetJobStatusRequest, context: grpc.ServicerContext) -> C.GetJobStatusResponse:
        self._busy("GetJobStatus", context)
        if self.fail_with:
            context.abort(*self.fail_with)
        return C.GetJobStatusResponse(job=cluster_pb2.JobStatus(job_id=request.job_id))


@pytest.fixture
def fake() -> Iterator[tuple[FakeController, str]]:
    servicer = FakeController()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cluster_pb2_grpc.add_ControllerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_submit_sends_every_field(fake: tuple[FakeController, str], tmp_path: Path) -> None:
    servicer, address = fake
    (tmp_path / "train.py").write_text("print(1)\n")
    with IrisClient.remote(address) as client:
        job = client.submit(
            Entrypoint.from_command("python", "train.py"),
            "train",
            resources=ResourceSpec(cpu=2, memory="1GiB"),
            replicas=4,
            max_task_failures=1,
            max_retries_failure=2,
            max_retries_preemption=0,
            scheduling_timeout_seconds=30,
            ports=["http"],
            env={"K": "V"},
            coscheduled=True,
            workspace=tmp_path,
        )
    assert job.job_id == "train"
    (request,) = servicer.launched
    entry = cluster_pb2.Entrypoint.FromString(request.serialized_entrypoint)
    assert list(entry.command.argv) == ["python", "train.py"]
    assert (request.resources.cpu, request.resources.memory_bytes, request.resources.replicas) == (2, 1 << 30, 4)
    assert (request.max_task_failures, request.max_retries_failure) == (1, 2)
    assert request.HasField("max_retries_preemption") and request.max_retries_preemption == 0
    assert request.scheduling_timeout_seconds == 30
    assert list(request.ports) == ["http"] and dict(request.environment.env_vars) == {"K": "V"}
    assert request.coscheduled and request.parent_job_id == ""
    # The workspace went first, by UploadBundle; the LaunchJob names it and carries no bytes.
    assert not request.bundle_blob and request.bundle_hash in servicer.uploaded
    assert request.bundle_hash == hashlib.sha256(servicer.uploaded[request.bundle_hash]).hexdigest()


def test_submit_defaults_generate_a_name_and_keep_preemption_retries(fake: tuple[FakeController, str]) -> None:
    servicer, address = fake
    with IrisClient.remote(address) as client:
        job = client.submit(Entrypoint.from_callable(print, "hi"))
    (request,) = servicer.launched
    assert job.job_id == request.name and request.name.startswith("job-")
    assert request.max_retries_preemption == 100 and request.resources.replicas == 1
    assert cluster_pb2.Entrypoint.FromString(request.serialized_entrypoint).WhichOneof("kind") == "callable"
    assert not request.bundle_blob and not request.bundle_hash


def test_client_from_env_submits_child_jobs_reusing_the_parent_bundle(
    fake: tuple[FakeController, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, address = fake
    monkeypatch.setenv("IRIS_JOB_ID", "parent")
    monkeypatch.setenv("IRIS_TASK_ID", "parent/task-0")
    monkeypatch.setenv("IRIS_CONTROLLER_ADDRESS", address)
    monkeypatch.setenv("IRIS_BUNDLE_HASH", "c" * 64)
    with IrisClient.from_env() as client:
        child = client.submit(Entrypoint.from_command("true"), "child")
    assert child.job_id == "parent/child"
    (request,) = servicer.launched
    assert request.parent_job_id == "parent"
    assert request.bundle_hash == "c" * 64 and request.bundle_blob == b""


@pytest.mark.parametrize(
    ("replicas", "name", "message"),
    [(0, "ok", "replicas"), (-1, "ok", "replicas"), (1, "has/slash", "name"), (1, "", "name")],
)
def test_bad_submit_arguments_are_refused_before_any_rpc(
    fake: tuple[FakeController, str], replicas: int, name: str, message: str
) -> None:
    servicer, address = fake
    with IrisClient.remote(address) as client, pytest.raises(InvalidRequestError, match=message):
        client.submit(Entrypoint.from_command("true"), name, replicas=replicas)
    assert servicer.launched == []


def test_empty_command_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        Entrypoint.from_command()


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.NOT_FOUND, JobNotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
    ],
)
def test_status_codes_become_client_errors_with_the_server_message(
    fake: tuple[FakeController, str], code: grpc.StatusCode, error_type: type[Exception]
) -> None:
    servicer, address = fake
    servicer.fail_with = (code, "job_id: job 'x' says why")
    with IrisClient.remote(address) as client, pytest.raises(error_type, match="says why"):
        client.job_status("x")


def test_server_side_unavailable_is_not_reported_as_an_unreachable_controller(
    fake: tuple[FakeController, str],
) -> None:
    servicer, address = fake
    servicer.fail_with = (grpc.StatusCode.UNAVAILABLE, "logs of attempt 0 are on worker w-1, which did not answer")
    with IrisClient.remote(address) as client, pytest.raises(UnavailableError) as info:
        client.job_status("x")
    assert not isinstance(info.value, ControllerUnavailableError)
    assert "worker w-1" in str(info.value)


def test_unreachable_controller_raises_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: nothing answers
        with IrisClient.remote(f"127.0.0.1:{port}", timeout=5) as client:
            with pytest.raises(ControllerUnavailableError, match=f"cannot reach the Iris controller at 127.0.0.1:{port}"):
                client.list_jobs()


def test_a_read_the_controller_is_too_busy_for_is_retried_and_a_write_is_not(
    fake: tuple[FakeController, str],
) -> None:
    servicer, address = fake
    servicer.busy_answers = 2
    with IrisClient.remote(address) as client:
        assert client.job_status("x").job_id == "x"
        assert servicer.calls == ["GetJobStatus"] * 3  # two refusals, retried after a backoff
        servicer.calls.clear()
        servicer.busy_answers = 1
        with pytest.raises(UnavailableError, match="retry"):
            client.submit(Entrypoint.from_command("true"), "job")
        assert servicer.calls == ["LaunchJob"]  # a write is never sent twice by the transport
