"""Worker daemon: bookkeeping, outbox, heartbeats and reconcile, with a fake runtime where real
processes are not the point, and with real processes where they are."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import psutil
import pytest

from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.errors import FailedPrecondition, InvalidArgument, NotFound
from iris.cluster.worker.gpu import GpuInfo
from iris.cluster.worker.prepare import THREAD_VARS
from iris.cluster.worker.runtime import AttemptKey, ExitCallback, ProcessExit, ProcessSpec
from iris.cluster.worker.worker import Worker, WorkerConfig
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from tests.cluster.e2e import host_pid
from tests.cluster.worker.conftest import RunningFakeController, command_request, launch, launches

RUNNING = cluster_pb2.TASK_STATE_RUNNING
SUCCEEDED = cluster_pb2.TASK_STATE_SUCCEEDED
FAILED = cluster_pb2.TASK_STATE_FAILED
KILLED = cluster_pb2.TASK_STATE_KILLED
BUILDING = cluster_pb2.TASK_STATE_BUILDING


class FakeRuntime:
    """Records starts; tests end processes with ``exit``. A kill ends the process at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.specs: dict[AttemptKey, ProcessSpec] = {}
        self.callbacks: dict[AttemptKey, ExitCallback] = {}
        self.kills: list[tuple[AttemptKey, float]] = []
        self.fail_start: OSError | None = None

    def start(self, spec: ProcessSpec, on_exit: ExitCallback) -> int:
        if self.fail_start is not None:
            raise self.fail_start
        if spec.log is not None:  # what a real runtime's pipes would have written
            spec.log.append_line(1, "stdout", b"line one")
            spec.log.append_line(2, "stdout", b"line two")
        else:
            spec.log_path.write_text("line one\nline two\n")
        with self.lock:
            self.specs[spec.key] = spec
            self.callbacks[spec.key] = on_exit
        return 4242

    def exit(self, key: AttemptKey, returncode: int, limit_error: str = "") -> None:
        with self.lock:
            callback = self.callbacks.pop(key)
        callback(ProcessExit(key=key, pid=4242, returncode=returncode, limit_error=limit_error))

    def kill(self, key: AttemptKey, grace_period_s: float) -> None:
        with self.lock:
            self.kills.append((key, grace_period_s))
            present = key in self.callbacks
        if present:
            self.exit(key, -15)

    def close(self) -> None:
        pass

    def spec(self, key: AttemptKey) -> ProcessSpec:
        wait_until(lambda: key in self.specs, 30, message=f"{key} never started")
        return self.specs[key]


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def make_worker(fake_controller: RunningFakeController, tmp_path: Path) -> Iterator[WorkerFactory]:
    workers: list[Worker] = []

    def make(run_loops: bool = True, **kwargs: Any) -> Worker:
        runtime = kwargs.pop("runtime", None)
        gpus = kwargs.pop("gpus", [])
        clock = kwargs.pop("clock", None)
        config = WorkerConfig(
            controller_address=fake_controller.address,
            workdir=kwargs.pop("workdir", tmp_path / f"worker{len(workers)}"),
            heartbeat_interval_s=kwargs.pop("heartbeat_interval_s", 0.05),
            backoff_initial_s=0.01,
            backoff_max_s=0.1,
            shutdown_flush_timeout_s=2.0,
            **kwargs,
        )
        worker = Worker(config, clock=clock, runtime=runtime, gpus=gpus)
        worker.start("127.0.0.1:1", run_loops=run_loops)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


def _terminal(
    controller: RunningFakeController, task_id: str, attempt: int = 0
) -> cluster_pb2.WorkerTaskStatus:
    wait_until(lambda: controller.servicer.terminal_update(task_id, attempt) is not None, 30)
    update = controller.servicer.terminal_update(task_id, attempt)
    assert update is not None
    return update


# -- RunTask bookkeeping --------------------------------------------------------------------------


def test_run_task_accepts_with_incarnation_and_increasing_sequence(make_worker: WorkerFactory) -> None:
    worker = make_worker(runtime=FakeRuntime())
    first = worker.run_task(launch(command_request(["/bin/true"], "job/task-0")))
    second = worker.run_task(launch(command_request(["/bin/true"], "job/task-1")))
    assert first.accepted and second.accepted
    assert first.incarnation == worker.incarnation == second.incarnation
    assert (first.sequence, second.sequence) == (1, 2)


def test_run_task_duplicate_attempt_is_idempotent(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    first = worker.run_task(launch(command_request(["/bin/true"])))
    again = worker.run_task(launch(command_request(["/bin/true"])))
    assert again.accepted and again.sequence == first.sequence
    runtime.spec(("job/task-0", 0))
    assert len(worker.list_tasks()) == 1
    assert len(runtime.specs) == 1


def _bad(field: str) -> cluster_pb2.Worker.RunTaskRequest:
    request = command_request(["/bin/true"])
    if field == "task_id":
        request.task_id = ""
    elif field == "job_id":
        request.job_id = ""
    elif field == "attempt_id":
        request.attempt_id = -1
    elif field == "serialized_entrypoint":
        request.serialized_entrypoint = b"\xff\xff\xff"
    elif field == "serialized_entrypoint.command.argv":
        request.serialized_entrypoint = cluster_pb2.Entrypoint(
            command=cluster_pb2.CommandEntrypoint()
        ).SerializeToString()
    elif field == "ports":
        request.ports.append("not a name")
    elif field == "resources.memory_bytes":
        request.resources.memory_bytes = -5
    elif field == "bundle_hash":
        request.bundle_hash = "../../etc/passwd"
    elif field == "environment.env_vars":
        request.environment.env_vars["A=B"] = "x"
    return request


@pytest.mark.parametrize(
    "field",
    [
        "task_id",
        "job_id",
        "attempt_id",
        "serialized_entrypoint",
        "serialized_entrypoint.command.argv",
        "ports",
        "resources.memory_bytes",
        "bundle_hash",
        "environment.env_vars",
    ],
)
def test_run_task_malformed_request_names_the_field(make_worker: WorkerFactory, field: str) -> None:
    worker = make_worker(runtime=FakeRuntime())
    with pytest.raises(InvalidArgument, match=field):
        worker.run_task(launch(_bad(field)))
    assert worker.list_tasks() == []


def test_task_thread_pools_are_sized_to_its_cpu_request_unless_the_job_sets_them(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    fractional = command_request(["/bin/true"], "job/task-0")
    fractional.resources.cpu_millicores = 1500
    worker.run_task(launch(fractional))
    env = runtime.spec(("job/task-0", 0)).env
    assert {env[v] for v in THREAD_VARS} == {"2"}  # 1.5 cores: rounded up
    small = command_request(["/bin/true"], "job/task-1")
    small.resources.cpu_millicores = 100
    small.environment.env_vars["OMP_NUM_THREADS"] = "8"  # the job's own choice wins
    worker.run_task(launch(small))
    env = runtime.spec(("job/task-1", 0)).env
    assert env["OMP_NUM_THREADS"] == "8" and env["MKL_NUM_THREADS"] == "1"  # at least one


def test_run_task_environment_ports_and_gpus(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    gpus = [
        GpuInfo(
            index=i,
            name="NVIDIA H200",
            uuid=f"GPU-{i}",
            memory_total_mb=143771,
            memory_used_mb=0,
            utilization_pct=0,
        )
        for i in range(4)
    ]
    worker = make_worker(runtime=runtime, gpus=gpus, worker_id="w-env")
    request = command_request(["/bin/true"], "job/task-3", attempt_id=2, ports=["http", "grpc_port"])
    request.num_tasks = 8
    request.environment.env_vars["USER_VAR"] = "value"
    request.resources.device.gpu.count = 2
    worker.run_task(launch(request))
    other = command_request(["/bin/true"], "job/task-4", ports=["http"])
    worker.run_task(launch(other))

    env = runtime.spec(("job/task-3", 2)).env
    assert env["IRIS_JOB_ID"] == "job"
    assert env["IRIS_TASK_ID"] == "job/task-3"
    assert env["IRIS_TASK_INDEX"] == "3"
    assert env["IRIS_NUM_TASKS"] == "8"
    assert env["IRIS_ATTEMPT_ID"] == "2"
    assert env["IRIS_WORKER_ID"] == "w-env"
    assert env["IRIS_CONTROLLER_ADDRESS"] == worker._config.controller_address  # noqa: SLF001
    # A worker bound to loopback tells its tasks to bind and advertise loopback.
    assert env["IRIS_BIND_HOST"] == "127.0.0.1" and env["IRIS_ADVERTISE_HOST"] == "127.0.0.1"
    assert env["USER_VAR"] == "value"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    other_env = runtime.spec(("job/task-4", 0)).env
    assert other_env["CUDA_VISIBLE_DEVICES"] == ""
    ports = {env["IRIS_PORT_HTTP"], env["IRIS_PORT_GRPC_PORT"], other_env["IRIS_PORT_HTTP"]}
    assert len(ports) == 3, "a port was handed to two live tasks"
    status = worker.task_status("job/task-3")
    assert set(status.ports) == {"http", "grpc_port"}


def test_run_task_after_stop_is_refused(make_worker: WorkerFactory) -> None:
    worker = make_worker(runtime=FakeRuntime())
    worker.stop()
    with pytest.raises(FailedPrecondition):
        worker.run_task(launch(command_request(["/bin/true"])))


# -- reports and the outbox ----------------------------------------------------------------------


def test_task_lifecycle_is_reported_running_then_succeeded(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker_task = ("job/task-0", 0)
    worker = make_worker(runtime=runtime)
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(worker_task)
    wait_until(lambda: RUNNING in fake_controller.servicer.states_of("job/task-0"), 30)
    runtime.exit(worker_task, 0)
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == SUCCEEDED
    assert update.started_at_ms > 0 and update.finished_at_ms >= update.started_at_ms
    assert worker.task_status("job/task-0").state == SUCCEEDED


def test_nonzero_exit_reports_failed_with_exit_code_and_output(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    make_worker(runtime=runtime).run_task(launch(command_request(["prog"])))
    runtime.spec(("job/task-0", 0))
    runtime.exit(("job/task-0", 0), 3)
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == FAILED and update.exit_code == 3
    assert update.error.startswith("exit code 3")
    assert "line two" in update.error


def test_memory_limit_kill_is_a_task_failure_with_its_reason(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    make_worker(runtime=runtime).run_task(launch(command_request(["prog"])))
    runtime.spec(("job/task-0", 0))
    reason = "killed: memory 612MiB exceeded the task's limit of 512MiB"
    runtime.exit(("job/task-0", 0), -9, limit_error=reason)
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == FAILED and update.error == reason


def test_start_failure_reports_failed(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    runtime.fail_start = FileNotFoundError(2, "No such file or directory")
    make_worker(runtime=runtime).run_task(launch(command_request(["/no/such/program"])))
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == FAILED
    assert "/no/such/program" in update.error


def test_a_task_whose_cgroup_cannot_be_made_is_a_preemption_and_the_worker_says_it_takes_no_more(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    from iris.cluster.worker.cgroups import CgroupUnavailable

    runtime = FakeRuntime()
    runtime.fail_start = CgroupUnavailable("could not make a cgroup under /sys/fs/cgroup/iris-w: read-only")
    worker = make_worker(runtime=runtime)
    worker.run_task(launch(command_request(["/bin/true"])))
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == cluster_pb2.TASK_STATE_WORKER_FAILED  # the worker's fault, not the task's
    assert "cannot enforce the task's limits" in update.error
    assert worker.unfit().startswith("cgroups: could not make a cgroup")
    # Every message it sends says so: the report itself and each heartbeat after it.
    report = next(r for r in fake_controller.servicer.state.reports if any(u.task_id == "job/task-0" for u in r.updates))
    assert report.unfit == worker.unfit()
    wait_until(lambda: any(h.unfit for h in fake_controller.servicer.state.heartbeats), 30)


def test_outbox_coalesces_to_latest_state_in_one_batch(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker = make_worker(run_loops=False, runtime=runtime)
    for i in range(3):
        worker.run_task(launch(command_request(["/bin/true"], f"job/task-{i}")))
        runtime.spec((f"job/task-{i}", 0))
        runtime.exit((f"job/task-{i}", 0), 0)
    wait_until(lambda: all(s.state == SUCCEEDED for s in worker.list_tasks()), 30)
    assert worker.flush_outbox_once()
    reports = fake_controller.servicer.state.reports
    assert len(reports) == 1
    assert sorted((u.task_id, u.state) for u in reports[0].updates) == [
        ("job/task-0", SUCCEEDED),
        ("job/task-1", SUCCEEDED),
        ("job/task-2", SUCCEEDED),
    ]
    assert worker.pending_reports() == 0


def test_outbox_retries_until_controller_is_back_and_never_loses_terminal_report(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    fake_controller.servicer.unavailable = True
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(("job/task-0", 0))
    runtime.exit(("job/task-0", 0), 0)
    wait_until(lambda: worker.task_status("job/task-0").state == SUCCEEDED, 30)
    # The worker has tried to deliver the report and seen the controller down.
    wait_until(lambda: "ReportTaskState" in fake_controller.servicer.rejected, 30)
    # While undelivered, the finished attempt stays in the observed set.
    tasks, _ = worker.observed()
    assert [(t.task_id, t.state) for t in tasks] == [("job/task-0", SUCCEEDED)]
    assert worker.pending_reports() == 1
    registrations_before = len(fake_controller.servicer.state.registrations)

    fake_controller.servicer.unavailable = False
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == SUCCEEDED
    wait_until(lambda: worker.pending_reports() == 0, 30)
    assert worker.observed()[0] == []
    # Coming back after being unreachable, the worker registers again with its full set.
    wait_until(lambda: len(fake_controller.servicer.state.registrations) > registrations_before, 30)


def test_outbox_retries_past_a_slow_controller_and_delivers(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    """A controller slower than the report deadline: the call times out, the report stays in the
    outbox and is retried; once the controller answers, it is delivered (a duplicate delivery is
    harmless: the controller ignores reports for tasks that already ended)."""
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime, rpc_timeout_s=0.2)
    fake_controller.servicer.reports_released.clear()
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(("job/task-0", 0))
    runtime.exit(("job/task-0", 0), 0)
    wait_until(lambda: fake_controller.servicer.blocked_reports >= 2, 30)  # timed out and retried
    assert worker.pending_reports() >= 1
    fake_controller.servicer.reports_released.set()
    # Released handlers finish in any order, so an old RUNNING batch may be recorded last (a real
    # controller ignores it: the task has ended); what matters is that SUCCEEDED arrived.
    wait_until(lambda: SUCCEEDED in fake_controller.servicer.states_of("job/task-0"), 30)
    wait_until(lambda: worker.pending_reports() == 0, 30)


def test_flush_failure_keeps_batch_and_newer_state_wins(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker = make_worker(run_loops=False, runtime=runtime)
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(("job/task-0", 0))
    wait_until(lambda: worker.task_status("job/task-0").state == RUNNING, 30)
    fake_controller.servicer.unavailable = True
    assert not worker.flush_outbox_once()
    runtime.exit(("job/task-0", 0), 0)
    assert worker.pending_reports() == 1
    fake_controller.servicer.unavailable = False
    assert worker.flush_outbox_once()
    assert [u.state for u in fake_controller.servicer.updates()] == [SUCCEEDED]


# -- registration, heartbeats and controller kills ------------------------------------------------


def test_register_carries_metadata_incarnation_and_observed_set(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker = make_worker(run_loops=False, runtime=runtime, cpu=3, memory_bytes=2 * 1024**3)
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(("job/task-0", 0))
    assert worker.register_once()
    registration = fake_controller.servicer.state.registrations[-1]
    assert registration.worker_id == worker.worker_id
    assert registration.address == "127.0.0.1:1"
    assert registration.incarnation == worker.incarnation
    assert registration.sequence == 1
    assert registration.metadata.cpu_count == 3
    assert registration.metadata.memory_bytes == 2 * 1024**3
    assert registration.metadata.hostname
    assert registration.metadata.device.WhichOneof("device") == "cpu"
    assert [(t.task_id, t.attempt_id) for t in registration.tasks] == [("job/task-0", 0)]


def test_gpu_metadata_reported(make_worker: WorkerFactory, fake_controller: RunningFakeController) -> None:
    gpus = [
        GpuInfo(
            index=i,
            name="NVIDIA H200",
            uuid=f"GPU-{i}",
            memory_total_mb=143771,
            memory_used_mb=0,
            utilization_pct=0,
        )
        for i in range(2)
    ]
    make_worker(run_loops=False, runtime=FakeRuntime(), gpus=gpus)
    meta = fake_controller.servicer.state.registrations[-1].metadata
    assert meta.device.gpu.variant == "H200" and meta.device.gpu.count == 2
    assert (meta.gpu_count, meta.gpu_name, meta.gpu_memory_mb) == (2, "NVIDIA H200", 143771)


def test_heartbeat_reregister_sends_full_registration(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    worker = make_worker(run_loops=False, runtime=FakeRuntime(), clock=FakeClock())
    assert worker.heartbeat_once()
    assert len(fake_controller.servicer.state.heartbeats) == 1
    fake_controller.servicer.reregister_next = True
    registrations = len(fake_controller.servicer.state.registrations)
    assert worker.heartbeat_once()
    assert len(fake_controller.servicer.state.registrations) == registrations + 1


def test_heartbeats_follow_the_longer_interval_the_controller_asks_for(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    """A big fleet is asked to heartbeat less often (DESIGN §3): the worker waits that long (spread
    by up to 10 %), not its own --heartbeat-interval."""
    fake_controller.servicer.heartbeat_interval_ms = 60_000
    clock = FakeClock()
    make_worker(run_loops=True, runtime=FakeRuntime(), clock=clock, heartbeat_interval_s=0.05)
    wait_until(lambda: any(w >= 54 for w in clock.pending_waits()), 30,
               message=f"no heartbeat wait of about a minute: {clock.pending_waits()}")
    assert max(clock.pending_waits()) <= 66
    beats = len(fake_controller.servicer.state.heartbeats)
    clock.advance(67)
    wait_until(lambda: len(fake_controller.servicer.state.heartbeats) > beats, 30)


def test_a_stopping_worker_never_registers_again(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    """Declared dead while it shuts down (it stopped its tasks), a worker must not come back and be
    given new tasks it would refuse."""
    worker = make_worker(run_loops=False, runtime=FakeRuntime(), clock=FakeClock())
    registrations = len(fake_controller.servicer.state.registrations)
    worker._link.leave()  # noqa: SLF001 -- what stop() does first, while its loops still run
    fake_controller.servicer.reregister_next = True
    assert not worker.heartbeat_once()
    assert len(fake_controller.servicer.state.registrations) == registrations


def test_heartbeat_while_unreachable_registers_again_when_back(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    worker = make_worker(run_loops=False, runtime=FakeRuntime(), clock=FakeClock())
    fake_controller.servicer.unavailable = True
    assert not worker.heartbeat_once()
    fake_controller.servicer.unavailable = False
    registrations = len(fake_controller.servicer.state.registrations)
    assert worker.heartbeat_once()
    assert len(fake_controller.servicer.state.registrations) == registrations + 1


def test_heartbeat_kill_list_kills_attempt(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker = make_worker(run_loops=False, runtime=runtime)
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(("job/task-0", 0))
    wait_until(lambda: worker.task_status("job/task-0").state == RUNNING, 30)
    fake_controller.servicer.kills = [("job/task-0", 0), ("other/task-9", 4)]
    worker.heartbeat_once()
    assert worker.task_status("job/task-0").state == KILLED
    assert [k for k, _ in runtime.kills] == [("job/task-0", 0)]


def test_heartbeat_sequence_covers_accepted_tasks(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    worker = make_worker(run_loops=False, runtime=FakeRuntime())
    worker.run_task(launch(command_request(["/bin/true"], "job/task-0")))
    worker.run_task(launch(command_request(["/bin/true"], "job/task-1")))
    worker.heartbeat_once()
    heartbeat = fake_controller.servicer.state.heartbeats[-1]
    assert heartbeat.sequence == 2 and heartbeat.incarnation == worker.incarnation
    assert sorted(t.task_id for t in heartbeat.tasks) == ["job/task-0", "job/task-1"]


# -- kills and shutdown --------------------------------------------------------------------------


def test_kill_task_unknown_or_repeated_is_harmless(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    worker.kill_task("nope/task-0", 3)
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(("job/task-0", 0))
    wait_until(lambda: worker.task_status("job/task-0").state == RUNNING, 30)
    worker.kill_task("job/task-0", 0, 1.5)
    worker.kill_task("job/task-0", 0, 1.5)
    assert worker.task_status("job/task-0").state == KILLED
    assert runtime.kills[0] == (("job/task-0", 0), 1.5)


def test_stop_kills_running_tasks_and_reports_them(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    worker.run_task(launch(command_request(["/bin/true"])))
    runtime.spec(("job/task-0", 0))
    worker.stop()
    update = fake_controller.servicer.terminal_update("job/task-0")
    assert update is not None and update.state == KILLED


# -- queries -------------------------------------------------------------------------------------


def test_an_ended_attempt_whose_log_was_shipped_reports_its_size_instead_of_another_log_call(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    """The whole log reaches the controller before the end report; when nothing is left to ship,
    the report says the log's size (completing it there) and no PushTaskLogs call is made; when
    output is left, it goes in one call whose last chunk is complete, before the report."""
    runtime = FakeRuntime()
    worker = make_worker(run_loops=False, runtime=runtime, clock=FakeClock())
    state = fake_controller.servicer.state
    for i in range(2):
        worker.run_task(launch(command_request(["/bin/true"], task_id=f"job/task-{i}")))
        runtime.spec((f"job/task-{i}", 0))
    wait_until(lambda: all(worker.task_status(f"job/task-{i}").state == RUNNING for i in range(2)), 30)
    worker.ship_logs_once(only={("job/task-0", 0)})  # task 0's output is at the controller already
    worker.flush_outbox_once()
    shipped = sum(len(c.data) for c in state.log_chunks if c.task_id == "job/task-0")
    calls = len(state.log_chunks)
    runtime.exit(("job/task-0", 0), 0)
    runtime.exit(("job/task-1", 0), 0)
    wait_until(lambda: worker.pending_reports() >= 2, 30)
    assert worker.flush_outbox_once()
    ended = {u.task_id: u for r in state.reports for u in r.updates if u.state == SUCCEEDED}
    assert ended["job/task-0"].HasField("log_size") and ended["job/task-0"].log_size == shipped > 0
    assert not ended["job/task-1"].HasField("log_size")
    later = state.log_chunks[calls:]
    assert [c.task_id for c in later] == ["job/task-1"] and later[0].complete and later[0].data
    worker.ship_logs_once()  # both logs are complete at the controller: nothing more to send
    assert len(state.log_chunks) == calls + 1


def test_fetch_logs_by_line_and_newest_attempt(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    worker.run_task(launch(command_request(["/bin/true"], attempt_id=0)))
    worker.run_task(launch(command_request(["/bin/true"], attempt_id=1)))
    runtime.spec(("job/task-0", 1))
    runtime.exit(("job/task-0", 1), 0)
    chunk = worker.fetch_logs("job/task-0")
    assert chunk.attempt_id == 1 and chunk.attempt_finished
    assert [r.text for r in chunk.lines] == ["line one", "line two"] and chunk.next_line == 2
    tail = worker.fetch_logs("job/task-0", 1, start_line=1, max_lines=5)
    assert [r.text for r in tail.lines] == ["line two"] and tail.next_line == 2
    assert worker.fetch_logs("job/task-0", 1, start_line=2).lines == []
    with pytest.raises(NotFound):
        worker.fetch_logs("job/task-0", 7)
    with pytest.raises(InvalidArgument, match="start_line"):
        worker.fetch_logs("job/task-0", start_line=-1)


def test_finished_history_is_bounded(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime, max_finished_attempts=2)
    for i in range(4):
        worker.run_task(launch(command_request(["/bin/true"], f"job/task-{i}")))
        runtime.spec((f"job/task-{i}", 0))
        runtime.exit((f"job/task-{i}", 0), 0)
    wait_until(lambda: len(worker.list_tasks()) == 2, 30)
    assert sorted(t.task_id for t in worker.list_tasks()) == ["job/task-2", "job/task-3"]
    with pytest.raises(NotFound):
        worker.task_status("job/task-0")


# -- real processes through the worker -----------------------------------------------------------


def _callable_request(
    fn: Callable[..., object], *args: object, task_id: str = "job/task-0"
) -> cluster_pb2.Worker.RunTaskRequest:
    entrypoint = cluster_pb2.Entrypoint(
        callable=cluster_pb2.CallableEntrypoint(pickled=cloudpickle.dumps((fn, args, {})))
    )
    return cluster_pb2.Worker.RunTaskRequest(
        job_id="job", task_id=task_id, num_tasks=1, serialized_entrypoint=entrypoint.SerializeToString()
    )


def test_callable_success_and_exception(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    # Local functions: cloudpickle sends them by value (the child cannot import this test module).
    def _say(text: str) -> None:
        print(text, flush=True)

    def _boom(text: str) -> None:
        raise RuntimeError(text)

    worker = make_worker()
    worker.run_task(launch(_callable_request(_say, "hi from callable", task_id="job/task-0")))
    worker.run_task(launch(_callable_request(_boom, "kaboom", task_id="job/task-1")))
    ok = _terminal(fake_controller, "job/task-0")
    assert ok.state == SUCCEEDED
    assert [r.text for r in worker.fetch_logs("job/task-0").lines] == ["hi from callable"]
    bad = _terminal(fake_controller, "job/task-1")
    assert bad.state == FAILED and bad.exit_code == 1
    assert "Traceback" in bad.error and "RuntimeError: kaboom" in bad.error
    assert any("RuntimeError: kaboom" in r.text for r in worker.fetch_logs("job/task-1").lines)


def test_command_task_env_and_exit_code_with_real_process(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    worker = make_worker()
    worker.run_task(launch(
        command_request(["/bin/sh", "-c", 'echo "$IRIS_TASK_ID $IRIS_PORT_WEB"; exit 4'], ports=["web"])
    ))
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == FAILED and update.exit_code == 4
    line = worker.fetch_logs("job/task-0").lines[0].text
    assert line == f"job/task-0 {update.ports['web']}"
    assert "exit code 4" in update.error and line in update.error


def test_kill_real_task_leaves_no_grandchild(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    worker = make_worker()
    worker.run_task(launch(command_request(["/bin/sh", "-c", "sleep 1000 & echo $!; wait"])))
    wait_until(lambda: worker.fetch_logs("job/task-0").lines, 30)
    grandchild = int(worker.fetch_logs("job/task-0").lines[0].text)
    worker.kill_task("job/task-0", 0, 5)
    assert _terminal(fake_controller, "job/task-0").state == KILLED
    wait_until(
        lambda: (
            not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        ),
        30,
    )


def _zip(files: dict[str, str]) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    blob = buffer.getvalue()
    return blob, hashlib.sha256(blob).hexdigest()


def test_bundle_fetched_once_unpacked_and_importable(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    blob, bundle_hash = _zip({"mypkg/__init__.py": "GREETING = 'from bundle'\n", "data.txt": "payload\n"})
    fake_controller.servicer.bundles[bundle_hash] = blob
    worker = make_worker()
    code = "import mypkg; print(mypkg.GREETING); print(open('data.txt').read().strip())"
    for i in range(3):
        worker.run_task(launch(
            command_request([sys.executable, "-c", code], f"job/task-{i}", bundle_hash=bundle_hash)
        ))
    for i in range(3):
        update = _terminal(fake_controller, f"job/task-{i}")
        assert update.state == SUCCEEDED, update.error
        assert [r.text for r in worker.fetch_logs(f"job/task-{i}").lines] == ["from bundle", "payload"]
    assert fake_controller.servicer.state.bundle_fetches == [bundle_hash]


def test_unknown_bundle_fails_the_task(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    worker = make_worker()
    worker.run_task(launch(command_request(["/bin/true"], bundle_hash="ab" * 32)))
    update = _terminal(fake_controller, "job/task-0")
    assert update.state == FAILED and "bundle" in update.error


def test_worker_serve_cli_restart_kills_orphans_of_previous_incarnation(
    fake_controller: RunningFakeController, tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"

    def serve() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from iris.cli.main import main; main()",
                "worker",
                "serve",
                "--controller",
                fake_controller.address,
                "--workdir",
                str(workdir),
                "--heartbeat-interval",
                "0.1",
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        return proc, proc.stdout.readline()

    first, line = serve()
    try:
        assert " serving on 127.0.0.1:" in line and line.startswith("worker w-")
        wait_until(lambda: fake_controller.servicer.state.registrations, 30)
        address = fake_controller.servicer.state.registrations[-1].address
        assert line.strip().endswith(address)
        with grpc.insecure_channel(address) as channel:
            stub = cluster_pb2_grpc.WorkerServiceStub(channel)
            # A root worker runs the task as the uid the controller sends (this fake one sends it here).
            stub.RunTask(command_request(["/bin/sh", "-c", "sleep 1000 & echo $!; wait"], run_as_uid=200_000),
                         timeout=10)
            wait_until(
                lambda: (
                    stub.FetchTaskLogs(
                        cluster_pb2.Worker.FetchTaskLogsRequest(task_id="job/task-0"), timeout=10
                    ).lines
                ),
                30,
            )
            grandchild = host_pid(int(  # the pid it has inside its sandbox, seen from here
                stub.FetchTaskLogs(cluster_pb2.Worker.FetchTaskLogsRequest(task_id="job/task-0"), timeout=10)
                .lines[0]
                .data
            ), IRIS_TASK_ID="job/task-0")
        os.kill(first.pid, signal.SIGKILL)  # a crash: its deathwatch or its next incarnation cleans up
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        assert first.stdout is not None
        first.stdout.close()

    second, line = serve()
    try:
        wait_until(
            lambda: (
                not psutil.pid_exists(grandchild)
                or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
            ),
            30,
            message="orphan of the crashed worker survived its restart",
        )
        # Graceful shutdown: the running task is killed and reported KILLED, and the worker exits 0.
        with grpc.insecure_channel(line.split()[-1]) as channel:
            stub = cluster_pb2_grpc.WorkerServiceStub(channel)
            stub.RunTask(command_request(["/bin/sleep", "1000"], "job2/task-0", run_as_uid=200_000), timeout=10)
            wait_until(lambda: RUNNING in fake_controller.servicer.states_of("job2/task-0"), 30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
        update = fake_controller.servicer.terminal_update("job2/task-0")
        assert update is not None and update.state == KILLED
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
        assert second.stdout is not None
        second.stdout.close()


def test_run_tasks_accepts_each_on_its_own_and_starts_them_in_order(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    bad = command_request(["/bin/true"], "job/task-1")
    bad.ClearField("serialized_entrypoint")
    already = worker.run_task(launch(command_request(["/bin/true"], "job/task-3")))
    results = worker.run_tasks(launches(
        [command_request(["/bin/true"], "job/task-0"), bad, command_request(["/bin/true"], "job/task-2"),
         command_request(["/bin/true"], "job/task-3")]
    ))
    assert [r.accepted for r in results] == [True, False, True, True]
    assert "serialized_entrypoint" in results[1].error and not results[1].worker_stopping
    assert results[3].sequence == already.sequence  # idempotent, as RunTask
    assert [r.sequence for r in results if r.accepted][:2] == [2, 3]
    assert all(r.incarnation == worker.incarnation for r in results if r.accepted)
    for key in (("job/task-0", 0), ("job/task-2", 0), ("job/task-3", 0)):
        runtime.spec(key)
    assert ("job/task-1", 0) not in runtime.specs
    spec = runtime.spec(("job/task-0", 0))
    assert spec.cwd.name == "work" and spec.cwd.is_dir() and spec.cwd.parent.name.endswith(".attempt-0")


def test_run_tasks_while_stopping_refuses_with_worker_stopping(make_worker: WorkerFactory) -> None:
    worker = make_worker(runtime=FakeRuntime())
    worker.stop()
    results = worker.run_tasks(launches([command_request(["/bin/true"], "job/task-0")]))
    assert not results[0].accepted and results[0].worker_stopping and "shutting down" in results[0].error


def test_tasks_bind_every_interface_and_advertise_the_worker_address(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime, host="0.0.0.0", advertise_host="10.20.30.40")
    worker.run_task(launch(command_request(["/bin/true"], "job/task-0", ports=["coord"])))
    env = runtime.spec(("job/task-0", 0)).env
    assert env["IRIS_BIND_HOST"] == "0.0.0.0" and env["IRIS_ADVERTISE_HOST"] == "10.20.30.40"


def test_a_retry_is_told_how_the_previous_attempt_ended(make_worker: WorkerFactory) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    request = command_request(["/bin/true"], "job/task-0", attempt_id=1)
    request.previous_state = cluster_pb2.TASK_STATE_FAILED
    request.previous_exit_code = 3
    request.previous_error = "ValueError: bad batch"
    worker.run_task(launch(request))
    env = runtime.spec(("job/task-0", 1)).env
    assert (env["IRIS_PREVIOUS_ATTEMPT_STATE"], env["IRIS_PREVIOUS_EXIT_CODE"], env["IRIS_PREVIOUS_ERROR"]) == (
        "FAILED", "3", "ValueError: bad batch")
    worker.run_task(launch(command_request(["/bin/true"], "job/task-1")))
    assert "IRIS_PREVIOUS_ATTEMPT_STATE" not in runtime.spec(("job/task-1", 0)).env


def test_a_task_killed_by_the_signal_that_stops_its_worker_is_reported_stopped_not_failed(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    """A batch system cancelling the allocation signals every process: the task's SIGTERM death
    is its worker's going away (a preemption at the controller), not the task's own failure."""
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    worker.run_task(launch(command_request(["/bin/sleep", "100"], "job/task-0")))
    runtime.spec(("job/task-0", 0))
    worker.begin_stop()  # the worker's SIGTERM handler
    dying = threading.Thread(target=runtime.exit, args=(("job/task-0", 0), -15))
    dying.start()  # the task died of the same signal, before the worker's stop() got going
    worker.stop()
    dying.join(10)
    wait_until(lambda: cluster_pb2.TASK_STATE_KILLED in fake_controller.servicer.states_of("job/task-0"), 10)
    assert cluster_pb2.TASK_STATE_FAILED not in fake_controller.servicer.states_of("job/task-0")


def test_a_task_killed_by_a_stray_signal_while_its_worker_stays_is_a_failure(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    worker.run_task(launch(command_request(["/bin/sleep", "100"], "job/task-0")))
    runtime.spec(("job/task-0", 0))
    runtime.exit(("job/task-0", 0), -15)  # waits (bounded) to see whether the worker is going too
    wait_until(lambda: cluster_pb2.TASK_STATE_FAILED in fake_controller.servicer.states_of("job/task-0"), 10)


def test_reports_over_the_batch_size_go_out_in_several_calls(
    make_worker: WorkerFactory, fake_controller: RunningFakeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iris.cluster.worker import link

    monkeypatch.setattr(link, "REPORT_BATCH_BYTES", 1)  # every report alone
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime)
    keys = [(f"job/task-{i}", 0) for i in range(3)]
    for task_id, _ in keys:
        worker.run_task(launch(command_request(["/bin/true"], task_id)))
    for key in keys:
        runtime.spec(key)
        runtime.exit(key, 0)
    for task_id, _ in keys:
        wait_until(lambda t=task_id: cluster_pb2.TASK_STATE_SUCCEEDED in fake_controller.servicer.states_of(t), 10)
    assert all(len(r.updates) == 1 for r in fake_controller.servicer.state.reports)


def test_a_call_from_the_controller_that_overtakes_its_registration_reply_is_not_refused(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    """The controller may dispatch the moment it registered a worker, before the reply carrying its
    token reached the worker: the worker waits for that reply instead of refusing the call."""
    fake_controller.servicer.controller_token = "controller-secret"
    fake_controller.servicer.unavailable = True  # its first registration fails: it is not registered yet
    worker = make_worker(run_loops=False, join_token="join-secret")
    outcome: list[object] = []
    caller = threading.Thread(target=lambda: outcome.append(worker.check_caller("controller-secret") or "ok"))
    caller.start()
    fake_controller.servicer.unavailable = False
    assert worker.register_once()
    caller.join(10)
    assert outcome == ["ok"]
    from iris.cluster.errors import Unauthenticated

    with pytest.raises(Unauthenticated):
        worker.check_caller("someone-else")


def test_a_worker_that_never_registered_serves_nothing(make_worker: WorkerFactory,
                                                       fake_controller: RunningFakeController) -> None:
    """A worker started without a join token (or refused) never got its controller's word: it runs
    nothing, even a call that brings no token at all to a worker that expects none (issue 23 item 9)."""
    from iris.cluster.errors import Unauthenticated

    fake_controller.servicer.unavailable = True  # its registration fails
    worker = make_worker(run_loops=False, rpc_timeout_s=0.2)
    with pytest.raises(Unauthenticated, match="has not registered"):
        worker.check_caller(None)
    fake_controller.servicer.unavailable = False
    assert worker.register_once()
    worker.check_caller(None)  # registered with a controller that runs without authentication


def test_a_worker_cut_off_from_its_controller_stops_its_tasks_after_the_fence(
    make_worker: WorkerFactory, fake_controller: RunningFakeController
) -> None:
    """Issue 23 item 5: the controller has declared a silent worker dead and retried its tasks
    elsewhere; past the fence the worker stops them too, so two copies never run for long."""
    runtime = FakeRuntime()
    worker = make_worker(runtime=runtime, fence_after_s=0.5)
    worker.run_task(launch(command_request(["/bin/sleep", "100"])))
    runtime.spec(("job/task-0", 0))
    fake_controller.servicer.unavailable = True  # a partition: nothing gets through
    wait_until(lambda: runtime.kills, 30, message="the fence never stopped the task")
    assert [key for key, _ in runtime.kills] == [("job/task-0", 0)]
    status = worker.task_status("job/task-0", 0)
    assert status.state == KILLED


def test_the_default_fence_lies_beyond_the_controller_s_timeout() -> None:
    from iris.cluster.worker.link import fence_after

    assert fence_after(10.0) == 20.0  # +10 s at least: a controller restart of a few seconds kills nothing
    assert fence_after(60.0) == 90.0  # and half again for the long timeouts of big fleets
