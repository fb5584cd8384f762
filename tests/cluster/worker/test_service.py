"""WorkerService over real gRPC, with real processes and the fake controller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from iris.cluster.clock import wait_until
from iris.cluster.worker.service import ServingWorker, serve_worker
from iris.cluster.worker.worker import WorkerConfig
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from tests.cluster.worker.conftest import RunningFakeController, command_request

W = cluster_pb2.Worker


@pytest.fixture
def serving(fake_controller: RunningFakeController, tmp_path: Path) -> Iterator[ServingWorker]:
    config = WorkerConfig(
        controller_address=fake_controller.address,
        workdir=tmp_path / "wd",
        worker_id="w-svc",
        heartbeat_interval_s=0.05,
        kill_grace_period_s=2.0,
    )
    running = serve_worker(config, gpus=[])
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def stub(serving: ServingWorker) -> Iterator[cluster_pb2_grpc.WorkerServiceStub]:
    with grpc.insecure_channel(serving.address) as channel:
        yield cluster_pb2_grpc.WorkerServiceStub(channel)


def _code(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.Call)
    return call.code()


def test_serve_worker_registers_with_its_address(
    serving: ServingWorker, fake_controller: RunningFakeController
) -> None:
    registration = fake_controller.servicer.state.registrations[0]
    assert registration.worker_id == "w-svc"
    assert registration.address == serving.address
    assert serving.address.startswith("127.0.0.1:")
    wait_until(lambda: fake_controller.servicer.state.heartbeats, 30)


def test_run_task_over_grpc_to_success_with_logs(
    stub: cluster_pb2_grpc.WorkerServiceStub, fake_controller: RunningFakeController
) -> None:
    response = stub.RunTask(command_request(["/bin/sh", "-c", "echo hello; echo world >&2"]), timeout=10)
    assert response.accepted and response.sequence == 1 and response.incarnation
    wait_until(lambda: fake_controller.servicer.terminal_update("job/task-0") is not None, 30)
    status = stub.GetTaskStatus(W.GetTaskStatusRequest(task_id="job/task-0"), timeout=10).task
    assert status.state == cluster_pb2.TASK_STATE_SUCCEEDED
    logs = stub.FetchTaskLogs(W.FetchTaskLogsRequest(task_id="job/task-0", attempt_id=0), timeout=10)
    # Two pipes: each line keeps its stream and time; their order across streams is the reader's.
    assert sorted((line.data, line.source) for line in logs.lines) == [("hello", "stdout"), ("world", "stderr")]
    assert all(line.timestamp_ms > 0 for line in logs.lines)
    assert logs.next_line == 2 and logs.attempt_finished and logs.attempt_id == 0
    more = stub.FetchTaskLogs(
        W.FetchTaskLogsRequest(task_id="job/task-0", start_line=1, max_lines=1), timeout=10
    )
    assert [line.data for line in more.lines] == ["world"]
    listed = stub.ListTasks(W.ListTasksRequest(), timeout=10).tasks
    assert [(t.task_id, t.state) for t in listed] == [("job/task-0", cluster_pb2.TASK_STATE_SUCCEEDED)]


def test_kill_task_over_grpc(
    stub: cluster_pb2_grpc.WorkerServiceStub, fake_controller: RunningFakeController
) -> None:
    stub.RunTask(command_request(["/bin/sleep", "1000"]), timeout=10)
    wait_until(
        lambda: (
            stub.GetTaskStatus(W.GetTaskStatusRequest(task_id="job/task-0"), timeout=10).task.state
            == cluster_pb2.TASK_STATE_RUNNING
        ),
        30,
    )
    health = stub.HealthCheck(W.HealthCheckRequest(), timeout=10)
    assert health.healthy and health.worker_id == "w-svc" and health.running_tasks == 1
    stub.KillTask(W.KillTaskRequest(task_id="job/task-0", attempt_id=0, grace_period_seconds=1), timeout=10)
    stub.KillTask(W.KillTaskRequest(task_id="job/task-0", attempt_id=0), timeout=10)
    wait_until(lambda: fake_controller.servicer.terminal_update("job/task-0") is not None, 30)
    update = fake_controller.servicer.terminal_update("job/task-0")
    assert update is not None and update.state == cluster_pb2.TASK_STATE_KILLED


def test_kill_unknown_attempt_is_ok(stub: cluster_pb2_grpc.WorkerServiceStub) -> None:
    stub.KillTask(W.KillTaskRequest(task_id="nope/task-0", attempt_id=3), timeout=10)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (W.RunTaskRequest(), "task_id"),
        (
            W.RunTaskRequest(task_id="j/task-0", job_id="j", serialized_entrypoint=b"\x01\x02garbage"),
            "serialized_entrypoint",
        ),
        (W.RunTaskRequest(task_id="j/task-0", job_id="j"), "serialized_entrypoint"),
    ],
)
def test_run_task_bad_input_is_invalid_argument(
    stub: cluster_pb2_grpc.WorkerServiceStub, request_: cluster_pb2.Worker.RunTaskRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.RunTask(request_, timeout=10)
    assert _code(error.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(error.value.details())
    assert stub.ListTasks(W.ListTasksRequest(), timeout=10).tasks == []


def test_queries_for_unknown_task_are_not_found(stub: cluster_pb2_grpc.WorkerServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.GetTaskStatus(W.GetTaskStatusRequest(task_id="nope/task-0"), timeout=10)
    assert _code(error.value) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        stub.FetchTaskLogs(W.FetchTaskLogsRequest(task_id="nope/task-0"), timeout=10)
    assert _code(error.value) == grpc.StatusCode.NOT_FOUND


def test_bad_log_range_and_grace_are_invalid_argument(
    stub: cluster_pb2_grpc.WorkerServiceStub, fake_controller: RunningFakeController
) -> None:
    stub.RunTask(command_request(["/bin/true"]), timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        stub.FetchTaskLogs(W.FetchTaskLogsRequest(task_id="job/task-0", start_line=-3), timeout=10)
    assert _code(error.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        stub.KillTask(W.KillTaskRequest(task_id="job/task-0", grace_period_seconds=-1), timeout=10)
    assert _code(error.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_run_task_while_shutting_down_is_failed_precondition(
    serving: ServingWorker, stub: cluster_pb2_grpc.WorkerServiceStub
) -> None:
    serving.worker.stop()
    with pytest.raises(grpc.RpcError) as error:
        stub.RunTask(command_request(["/bin/true"]), timeout=10)
    assert _code(error.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert not stub.HealthCheck(W.HealthCheckRequest(), timeout=10).healthy


def test_many_concurrent_tasks_all_succeed(
    stub: cluster_pb2_grpc.WorkerServiceStub, fake_controller: RunningFakeController
) -> None:
    futures = [
        stub.RunTask.future(command_request(["/bin/true"], f"many/task-{i}"), timeout=30) for i in range(100)
    ]
    sequences = sorted(f.result().sequence for f in futures)
    assert sequences == list(range(1, 101))
    wait_until(
        lambda: all(
            fake_controller.servicer.terminal_update(f"many/task-{i}") is not None for i in range(100)
        ),
        60,
    )
    assert {fake_controller.servicer.terminal_update(f"many/task-{i}").state for i in range(100)} == {  # type: ignore[union-attr]
        cluster_pb2.TASK_STATE_SUCCEEDED
    }


def test_run_tasks_over_grpc_runs_every_accepted_task(
    stub: cluster_pb2_grpc.WorkerServiceStub, fake_controller: RunningFakeController
) -> None:
    bad = command_request(["/bin/true"], "batch/task-1")
    bad.serialized_entrypoint = b"\x01\x02garbage"
    response = stub.RunTasks(
        W.RunTasksRequest(tasks=[command_request(["/bin/true"], "batch/task-0"), bad,
                                 command_request(["/bin/sh", "-c", "exit 3"], "batch/task-2")]),
        timeout=10,
    )
    assert [r.accepted for r in response.results] == [True, False, True]
    assert "serialized_entrypoint" in response.results[1].error
    wait_until(lambda: fake_controller.servicer.terminal_update("batch/task-2") is not None, 30)
    wait_until(lambda: fake_controller.servicer.terminal_update("batch/task-0") is not None, 30)
    done = fake_controller.servicer.terminal_update("batch/task-0")
    failed = fake_controller.servicer.terminal_update("batch/task-2")
    assert done is not None and done.state == cluster_pb2.TASK_STATE_SUCCEEDED
    assert failed is not None and failed.state == cluster_pb2.TASK_STATE_FAILED and failed.exit_code == 3


def test_a_request_addressed_to_another_worker_is_refused_and_runs_nothing(
    stub: cluster_pb2_grpc.WorkerServiceStub,
) -> None:
    """An address reused by another worker (after a restart, or simulated workers sharing one):
    FAILED_PRECONDITION, which the controller takes as "the worker it meant is gone"."""
    for call, request in (
        (stub.RunTasks, W.RunTasksRequest(tasks=[command_request(["/bin/true"])], worker_id="someone-else")),
        (stub.RunTask, W.RunTaskRequest(task_id="job/task-0", job_id="job", worker_id="someone-else")),
        (stub.KillTask, W.KillTaskRequest(task_id="job/task-0", attempt_id=0, worker_id="someone-else")),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        assert _code(error.value) == grpc.StatusCode.FAILED_PRECONDITION
        assert "someone-else" in str(error.value.details())
    assert stub.ListTasks(W.ListTasksRequest(), timeout=10).tasks == []
    addressed = stub.RunTasks(W.RunTasksRequest(tasks=[command_request(["/bin/true"])], worker_id="w-svc"), timeout=10)
    assert addressed.results[0].accepted
