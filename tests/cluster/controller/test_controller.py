"""The Controller shell with a FakeClock and fake worker clients: dispatch, reports, kills,
liveness, reconcile, timeouts (seed criteria 4, 5; DESIGN §3)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.requests import RegisterReply
from iris.cluster.controller.state import ControllerState
from iris.cluster.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from iris.cluster.types import AttemptRef, JobId, ResourceSpec, TaskId, WorkerId
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2


@pytest.fixture
def controller(clock: FakeClock, fake: FakeWorkerClients, core: ControllerState) -> Iterator[Controller]:
    c = Controller(ControllerConfig(worker_timeout_s=10), state=core, clock=clock, worker_clients=fake)
    yield c
    c.stop()
    core.check_invariants()


@pytest.fixture
def logged(clock: FakeClock, fake: FakeWorkerClients, tmp_path: Path) -> Iterator[Controller]:
    """A controller keeping the workers' shipped logs under ``tmp_path/logs``."""
    from iris.cluster.controller.logstore import LogStore

    c = Controller(ControllerConfig(), clock=clock, worker_clients=fake, log_store=LogStore(tmp_path / "logs"))
    yield c
    c.stop()


def log_finished(controller: Controller, task_index: int) -> bool:
    """Whether ``iris job logs`` would say the attempt's whole log is there."""
    request = T.Controller.FetchTaskLogsRequest(task_id=f"job/task-{task_index}")
    return wire.fetch_task_logs(controller, request).attempt_finished


def command(*argv: str) -> bytes:
    return T.Entrypoint(command=T.CommandEntrypoint(argv=list(argv))).SerializeToString()


def launch(controller: Controller, name: str = "job", **fields: object) -> JobId:
    resources = fields.pop("resources", ResourceSpec(cpu=1, memory="1GiB", replicas=int(fields.pop("replicas", 1))))
    request = T.Controller.LaunchJobRequest(
        name=name, serialized_entrypoint=command("true"), resources=resources.to_proto(), **fields  # type: ignore[union-attr,arg-type]
    )
    return wire.launch_job(controller, request)


def register(controller: Controller, worker_id: str = "w1", cpu: int = 4, tasks: list[T.WorkerTaskStatus] | None = None,
             incarnation: str | None = None) -> RegisterReply:
    address = f"127.0.0.1:{1000 + int(worker_id[1:])}"
    return wire.register_worker(controller,
        T.Controller.RegisterWorkerRequest(
            worker_id=worker_id,
            address=address,
            metadata=T.WorkerMetadata(cpu_count=cpu, memory_bytes=16 * 1024**3),
            tasks=tasks or [],
            incarnation=incarnation or f"inc-{address}",
        )
    )


def report(controller: Controller, worker_id: str, task_id: str, state: int, attempt: int = 0, **kw: object
           ) -> list[AttemptRef]:
    return wire.report_task_state(controller,
        T.Controller.ReportTaskStateRequest(
            worker_id=worker_id, updates=[T.WorkerTaskStatus(task_id=task_id, attempt_id=attempt, state=state, **kw)]  # type: ignore[arg-type]
        )
    )


def schedule(controller: Controller, fake: FakeWorkerClients, expect_runs: int) -> None:
    controller.tick_schedule()
    wait_until(lambda: len(fake.run_calls) >= expect_runs, 10, message=f"expected {expect_runs} RunTask calls")


def test_controller_submit_dispatch_report_success(controller: Controller, fake: FakeWorkerClients) -> None:
    register(controller)
    job_id = launch(controller, replicas=2)
    schedule(controller, fake, 2)
    assert sorted(fake.ran()) == [("job/task-0", 0), ("job/task-1", 0)]
    run = fake.run_calls[0][1]
    assert run.num_tasks == 2 and run.job_id == "job"
    for i in range(2):
        report(controller, "w1", f"job/task-{i}", T.TASK_STATE_RUNNING)
        report(controller, "w1", f"job/task-{i}", T.TASK_STATE_SUCCEEDED)
    assert controller.queries.get_job(job_id).state == T.JOB_STATE_SUCCEEDED


def test_controller_dispatch_refused_is_preemption_retried_elsewhere(
    core: ControllerState,
    controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller, "w1", cpu=1)
    fake.unreachable.add("127.0.0.1:1001")
    launch(controller)
    schedule(controller, fake, 1)
    task = core.get_task(TaskId("job/task-0"))
    assert task is not None
    wait_until(lambda: task.current_attempt_id == 1, 10)
    assert task.preemption_count == 1 and task.failure_count == 0
    assert task.attempts[0].state == T.TASK_STATE_WORKER_FAILED and "unreachable" in (task.attempts[0].error or "")
    register(controller, "w2", cpu=1)
    fake.unreachable.clear()
    controller.tick_schedule()
    wait_until(lambda: ("job/task-0", 1) in fake.ran(), 10)
    assert task.state == T.TASK_STATE_RUNNING


def test_controller_failure_domain_sends_kill_to_running_siblings(
    controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller)
    job_id = launch(controller, replicas=3)
    schedule(controller, fake, 3)
    report(controller, "w1", "job/task-1", T.TASK_STATE_FAILED, exit_code=2, error="exit code 2")
    assert controller.queries.get_job(job_id).state == T.JOB_STATE_FAILED
    wait_until(lambda: sorted(fake.killed()) == [("job/task-0", 0), ("job/task-2", 0)], 10)
    # No termination grace on the job: 0 tells the worker to use its own --kill-grace.
    assert all(req.grace_period_seconds == 0 for _, req in fake.kill_calls)


def test_controller_terminate_kills_running_tasks(controller: Controller, fake: FakeWorkerClients) -> None:
    register(controller)
    job_id = launch(controller)
    schedule(controller, fake, 1)
    assert controller.terminate_job(job_id)
    assert controller.queries.get_job(job_id).state == T.JOB_STATE_KILLED
    wait_until(lambda: fake.killed() == [("job/task-0", 0)], 10)
    with pytest.raises(NotFound):
        controller.terminate_job(JobId("nope"))


def test_controller_dead_worker_after_timeout_retries_tasks(
    core: ControllerState,
    controller: Controller, fake: FakeWorkerClients, clock: FakeClock
) -> None:
    register(controller, "w1", cpu=1)
    register(controller, "w2", cpu=1)
    launch(controller)
    schedule(controller, fake, 1)
    task = core.get_task(TaskId("job/task-0"))
    assert task is not None and task.worker_id == "w1"
    clock.advance(5)
    wire.heartbeat(controller, T.Controller.HeartbeatRequest(worker_id="w2", incarnation="inc-127.0.0.1:1002",
                                                       sequence=0))
    assert controller.tick_health() == []
    clock.advance(6)
    assert controller.tick_health() == ["w1"]
    assert task.state == T.TASK_STATE_PENDING and task.preemption_count == 1
    schedule(controller, fake, 2)
    assert task.worker_id == "w2"
    # The dead worker must register again.
    assert wire.heartbeat(controller, T.Controller.HeartbeatRequest(worker_id="w1")).reregister


def test_heartbeat_interval_grows_with_the_fleet_and_liveness_follows(clock: FakeClock, fake: FakeWorkerClients) -> None:
    """Past --max-heartbeat-rate the fleet is asked for longer intervals (Nomad-style) and a worker is
    declared dead only after three of the intervals it was asked for, never of one it was not told."""
    controller = Controller(ControllerConfig(worker_timeout_s=5, max_heartbeat_rate=2.0), clock=clock,
                            worker_clients=fake)
    try:
        beat = lambda w: wire.heartbeat(controller, T.Controller.HeartbeatRequest(  # noqa: E731
            worker_id=w, incarnation=f"inc-127.0.0.1:{1000 + int(w[1:])}"))
        assert register(controller, "w1").heartbeat_interval_ms == 0  # one worker: its own interval
        assert beat("w1").heartbeat_interval_ms == 0
        for w in ("w2", "w3", "w4", "w5", "w6"):
            register(controller, w)
        controller.tick_health()
        assert controller.heartbeat_interval_ms() == 3000  # six workers at two heartbeats a second
        for w in ("w1", "w2", "w3", "w4", "w5", "w6"):
            assert beat(w).heartbeat_interval_ms == 3000
        clock.advance(8.5)  # past --worker-timeout, within three asked intervals
        assert controller.tick_health() == []
        for w in ("w1", "w2", "w3", "w4"):
            beat(w)
        clock.advance(0.6)
        dead = controller.tick_health()
        assert sorted(dead) == ["w5", "w6"]  # 9.1 s silent > 3 x 3 s
        # The fleet shrank (four left: 2 s), but w1..w4 were told 3 s and keep 9 s until told again.
        assert controller.heartbeat_interval_ms() == 2000
        clock.advance(8.3)  # w1..w4: 8.9 s silent
        assert controller.tick_health() == []
        beat("w1")
        clock.advance(0.2)
        assert sorted(controller.tick_health()) == ["w2", "w3", "w4"]
        assert not wire.heartbeat(controller, T.Controller.HeartbeatRequest(worker_id="w5")).heartbeat_interval_ms
    finally:
        controller.stop()


def test_controller_heartbeat_reconcile_kills_stale_and_fails_missing(
    core: ControllerState,
    controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller, "w1", cpu=2)
    launch(controller, replicas=2)
    schedule(controller, fake, 2)
    wait_until(lambda: all(
        core.get_worker("w1").dispatch_acks.get(TaskId(f"job/task-{i}")) is not None  # type: ignore[union-attr]
        for i in range(2)), 10)
    response = wire.heartbeat(controller,
        T.Controller.HeartbeatRequest(
            worker_id="w1",
            incarnation="inc-127.0.0.1:1001",
            sequence=fake.sequence,
            tasks=[
                T.WorkerTaskStatus(task_id="job/task-0", attempt_id=0, state=T.TASK_STATE_RUNNING),
                T.WorkerTaskStatus(task_id="other/task-0", attempt_id=3, state=T.TASK_STATE_RUNNING),
            ],
        )
    )
    assert [(k.task_id, k.attempt_id) for k in response.kill] == [("other/task-0", 3)]
    task1 = core.get_task(TaskId("job/task-1"))
    assert task1 is not None and task1.state == T.TASK_STATE_PENDING and task1.preemption_count == 1


def test_controller_restarted_worker_reregisters_and_loses_its_tasks(
    core: ControllerState,
    controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller, "w1")
    launch(controller)
    schedule(controller, fake, 1)
    task = core.get_task(TaskId("job/task-0"))
    assert task is not None
    wait_until(lambda: core.get_worker("w1").dispatch_acks.get(task.task_id) is not None, 10)  # type: ignore[union-attr]
    register(controller, "w1", incarnation="new-incarnation")
    assert task.preemption_count == 1 and task.current_attempt_id == 1


def test_controller_finished_report_held_back_counts_as_finished(
    controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller, "w1")
    job_id = launch(controller)
    schedule(controller, fake, 1)
    done = T.WorkerTaskStatus(task_id="job/task-0", attempt_id=0, state=T.TASK_STATE_SUCCEEDED)
    register(controller, "w1", tasks=[done], incarnation="inc-127.0.0.1:1001")
    assert controller.queries.get_job(job_id).state == T.JOB_STATE_SUCCEEDED


def test_controller_stale_report_ignored_and_live_stale_attempt_killed(
    core: ControllerState,
    controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller, "w1")
    launch(controller, max_retries_failure=1)
    schedule(controller, fake, 1)
    report(controller, "w1", "job/task-0", T.TASK_STATE_FAILED, error="boom")
    schedule(controller, fake, 2)
    response = report(controller, "w1", "job/task-0", T.TASK_STATE_RUNNING, attempt=0)
    assert [(k.task_id, k.attempt_id) for k in response] == [("job/task-0", 0)]
    report(controller, "w1", "job/task-0", T.TASK_STATE_SUCCEEDED, attempt=0)
    task = core.get_task(TaskId("job/task-0"))
    assert task is not None and task.state == T.TASK_STATE_RUNNING and task.current_attempt_id == 1


def test_controller_unschedulable_after_timeout_with_pending_reason(
    controller: Controller, fake: FakeWorkerClients, clock: FakeClock
) -> None:
    register(controller, "w1", cpu=2)
    job_id = launch(controller, resources=ResourceSpec(cpu=64), scheduling_timeout_seconds=3)
    controller.tick_schedule()
    job = controller.queries.get_job(job_id)
    assert job.state == T.JOB_STATE_PENDING and job.pending_reason == "never fits: no worker has 64 cpus (largest: 2)"
    clock.advance(3.5)
    controller.tick_schedule()
    job = controller.queries.get_job(job_id)  # a view is a snapshot: read it again
    assert job.state == T.JOB_STATE_UNSCHEDULABLE
    assert job.error is not None and "no worker has 64 cpus" in job.error


def test_controller_launch_rejections_change_nothing(core: ControllerState, controller: Controller) -> None:
    launch(controller, "dup")
    with pytest.raises(AlreadyExists):
        launch(controller, "dup")
    with pytest.raises(InvalidArgument, match="name"):
        launch(controller, "bad name!")
    with pytest.raises(InvalidArgument, match="replicas"):
        launch(controller, "big", replicas=100_001)
    with pytest.raises(NotFound, match="parent_job_id"):
        launch(controller, "child", parent_job_id="missing")
    assert [j.job_id for j in core.list_jobs()] == ["dup"]


def test_controller_child_of_ended_parent_is_refused(controller: Controller) -> None:
    parent = launch(controller, "parent")
    controller.terminate_job(parent)
    with pytest.raises(FailedPrecondition):
        launch(controller, "child", parent_job_id="parent")


def test_controller_endpoints_live_with_the_attempt(controller: Controller, fake: FakeWorkerClients) -> None:
    register(controller)
    launch(controller)
    with pytest.raises(FailedPrecondition):
        wire.register_endpoint(controller, T.Controller.RegisterEndpointRequest(name="svc", address="h:1",
                                                                          task_id="job/task-0"))
    schedule(controller, fake, 1)
    endpoint_id = wire.register_endpoint(controller,
        T.Controller.RegisterEndpointRequest(name="svc", address="h:1", task_id="job/task-0", attempt_id=0)
    )
    assert controller.queries.lookup_endpoint("svc").endpoint_id == endpoint_id
    report(controller, "w1", "job/task-0", T.TASK_STATE_SUCCEEDED)
    with pytest.raises(NotFound):
        controller.queries.lookup_endpoint("svc")


def test_controller_fetch_logs_proxies_to_the_attempts_worker(controller: Controller, fake: FakeWorkerClients) -> None:
    register(controller)
    launch(controller)
    schedule(controller, fake, 1)
    fake.logs[("job/task-0", 0)] = ["hello", "world"]
    reply = wire.fetch_task_logs(controller, T.Controller.FetchTaskLogsRequest(task_id="job/task-0", start_line=1))
    assert [line.data for line in reply.lines] == ["world"] and reply.next_line == 2
    with pytest.raises(NotFound):
        wire.fetch_task_logs(controller, T.Controller.FetchTaskLogsRequest(task_id="job/task-9"))


def test_controller_scheduling_loop_wakes_on_submit(clock: FakeClock, fake: FakeWorkerClients) -> None:
    c = Controller(ControllerConfig(schedule_interval_s=3600), clock=clock, worker_clients=fake)
    c.start()
    try:
        register(c)
        launch(c)
        wait_until(lambda: fake.ran() == [("job/task-0", 0)], 10, message="submit did not wake the scheduler")
    finally:
        c.stop()


def test_controller_batches_a_pass_per_worker_and_a_refused_task_is_a_task_failure(
    core: ControllerState, controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller, "w1", cpu=3)
    fake.refuse["job/task-1"] = "resources.cpu: must be >= 0"
    launch(controller, replicas=3, max_retries_failure=1)
    schedule(controller, fake, 3)
    assert fake.batch_calls == [("127.0.0.1:1001", ["job/task-0", "job/task-1", "job/task-2"])]
    refused = core.get_task(TaskId("job/task-1"))
    assert refused is not None
    wait_until(lambda: refused.current_attempt_id == 1, 10)
    # The task's own content was refused: a real failure of the task, charged to its failure budget.
    assert refused.failure_count == 1 and refused.preemption_count == 0
    assert refused.attempts[0].state == T.TASK_STATE_FAILED and not refused.attempts[0].is_worker_failure
    assert "refused" in (refused.attempts[0].error or "") and "resources.cpu" in (refused.attempts[0].error or "")
    for i in (0, 2):
        task = core.get_task(TaskId(f"job/task-{i}"))
        assert task is not None and task.state == T.TASK_STATE_RUNNING and task.current_attempt_id == 0
    # The worker did nothing wrong: it stays healthy, uncharged, and gets the retry.
    worker = core.get_worker(WorkerId("w1"))
    assert worker is not None and worker.healthy and worker.consecutive_failures == 0
    del fake.refuse["job/task-1"]
    controller.tick_schedule()
    wait_until(lambda: ("job/task-1", 1) in fake.ran(), 10)


def test_controller_batch_to_unreachable_worker_fails_every_task_once(
    core: ControllerState, controller: Controller, fake: FakeWorkerClients
) -> None:
    register(controller, "w1", cpu=2)
    fake.unreachable.add("127.0.0.1:1001")
    launch(controller, replicas=2)
    schedule(controller, fake, 2)
    assert len(fake.batch_calls) == 1
    tasks = [core.get_task(TaskId(f"job/task-{i}")) for i in range(2)]
    wait_until(lambda: all(t is not None and t.current_attempt_id == 1 for t in tasks), 10)
    for t in tasks:
        assert t is not None and t.preemption_count == 1 and t.state == T.TASK_STATE_PENDING
        assert "unreachable" in (t.attempts[0].error or "")
    worker = core.get_worker(WorkerId("w1"))
    assert worker is not None and not worker.healthy  # UNAVAILABLE: the worker is gone


def test_controller_batches_split_by_limits(clock: FakeClock, fake: FakeWorkerClients) -> None:
    state = ControllerState()
    c = Controller(ControllerConfig(dispatch_batch_max_tasks=2), state=state, clock=clock, worker_clients=fake)
    try:
        register(c, "w1", cpu=5)
        launch(c, replicas=5)
        c.tick_schedule()
        wait_until(lambda: len(fake.run_calls) >= 5, 10)
        sizes = sorted(len(ids) for _, ids in fake.batch_calls)
        assert sizes == [1, 2, 2]
        assert sorted(fake.ran()) == [(f"job/task-{i}", 0) for i in range(5)]
    finally:
        c.stop()
        state.check_invariants()


def test_controller_list_jobs_pages_in_submission_order(controller: Controller) -> None:
    for i in range(25):
        launch(controller, f"j{i:02d}")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = controller.queries.list_jobs(page_size=10, page_token=token)
        assert len(page.jobs) <= 10
        seen.extend(j.job_id for j in page.jobs)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"j{i:02d}" for i in range(25)] and pages == 3
    assert [j.job_id for j in controller.queries.list_jobs(prefix="j1").jobs] == [f"j1{i}" for i in range(10)]


def test_controller_list_jobs_pages_newest_first(controller: Controller) -> None:
    for i in range(25):
        launch(controller, f"j{i:02d}")
    seen: list[str] = []
    token = ""
    while True:
        page = controller.queries.list_jobs(page_size=10, page_token=token, newest_first=True)
        seen.extend(j.job_id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"j{i:02d}" for i in reversed(range(25))]
    newest = controller.queries.list_jobs(page_size=3, newest_first=True, prefix="j1")
    assert [j.job_id for j in newest.jobs] == ["j19", "j18", "j17"] and newest.next_page_token


def test_controller_list_jobs_bounds_the_scan_behind_a_page(controller: Controller) -> None:
    """A filter that matches little does not make one page walk every job: the page returns short,
    with a token, after examining a bounded number of jobs; following the tokens finds everything."""
    for i in range(300):
        launch(controller, f"j{i:03d}")
    controller.terminate_job(JobId("j299"))
    first = controller.queries.list_jobs(states=[T.JOB_STATE_KILLED], page_size=1)
    assert first.jobs == [] and first.next_page_token  # 20 examined, none matched yet
    found: list[str] = []
    token = first.next_page_token
    while token:
        page = controller.queries.list_jobs(states=[T.JOB_STATE_KILLED], page_size=1, page_token=token)
        found.extend(j.job_id for j in page.jobs)
        token = page.next_page_token
    assert found == ["j299"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefix": "x" * 2000}, "prefix"),
        ({"states": [1] * 17}, "states"),
        ({"page_size": 10_000}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
    ],
)
def test_controller_list_jobs_refuses_oversized_filters(controller: Controller, kwargs: dict[str, object],
                                                        field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{field}:"):
        controller.queries.list_jobs(**kwargs)  # type: ignore[arg-type]


def test_job_status_pages_its_tasks_in_index_order(controller: Controller) -> None:
    launch(controller, "wide", replicas=250)
    _, everything = controller.queries.job_status(JobId("wide"), include_tasks=True)
    assert everything is not None and [t.task_index for t in everything] == list(range(250))
    _, page = controller.queries.job_status(JobId("wide"), include_tasks=True, task_offset=100, task_limit=100)
    assert page is not None and [t.task_index for t in page] == list(range(100, 200))
    _, tail = controller.queries.job_status(JobId("wide"), include_tasks=True, task_offset=200, task_limit=100)
    assert tail is not None and [t.task_index for t in tail] == list(range(200, 250))
    _, past = controller.queries.job_status(JobId("wide"), include_tasks=True, task_offset=900, task_limit=100)
    assert past == []
    for offset, limit, field in ((-1, 10, "task_offset"), (0, 5001, "task_limit"), (0, -1, "task_limit")):
        with pytest.raises(InvalidArgument, match=field):
            controller.queries.job_status(JobId("wide"), include_tasks=True, task_offset=offset, task_limit=limit)


def test_an_end_report_with_the_log_size_completes_the_shipped_log(logged: Controller, fake: FakeWorkerClients
                                                                   ) -> None:
    """A worker that already shipped an ended attempt's whole log says its size in the end report,
    which completes the log there (no separate PushTaskLogs call); a size that does not match what
    the controller holds completes nothing, and a negative one is refused naming the field."""
    register(logged)
    launch(logged, replicas=2)
    schedule(logged, fake, 2)
    uid = logged.queries.get_job(JobId("job")).uid
    data = b"1700000000000 o hello\n"
    for i in range(2):
        report(logged, "w1", f"job/task-{i}", T.TASK_STATE_RUNNING, job_uid=uid)
        wire.push_task_logs(logged, WorkerId("w1"), T.Controller.PushTaskLogsRequest(worker_id="w1", chunks=[
            T.LogChunk(task_id=f"job/task-{i}", attempt_id=0, job_uid=uid, start_offset=0, data=data)]))

    with pytest.raises(InvalidArgument, match=r"updates\[0\]\.log_size: must be >= 0"):
        report(logged, "w1", "job/task-0", T.TASK_STATE_SUCCEEDED, job_uid=uid, log_size=-1)
    assert logged.queries.task_status(JobId("job"), 0).state == T.TASK_STATE_RUNNING  # nothing changed
    report(logged, "w1", "job/task-0", T.TASK_STATE_SUCCEEDED, job_uid=uid, log_size=len(data))
    report(logged, "w1", "job/task-1", T.TASK_STATE_SUCCEEDED, job_uid=uid, log_size=len(data) + 5)
    assert log_finished(logged, 0) and not log_finished(logged, 1)
    lines = wire.fetch_task_logs(logged, T.Controller.FetchTaskLogsRequest(task_id="job/task-0")).lines
    assert [line.data for line in lines] == ["hello"]


def test_an_attempt_that_printed_nothing_is_complete_without_a_directory_of_its_own(
        logged: Controller, fake: FakeWorkerClients, tmp_path: Path) -> None:
    """Most short tasks print nothing: their logs' completeness is one line in the job's
    ``complete.empty``, not a directory and a file per attempt, and it outlives the controller."""
    from iris.cluster.controller.logstore import EMPTY_COMPLETE, LogStore

    register(logged)
    launch(logged, replicas=3)
    schedule(logged, fake, 3)
    uid = logged.queries.get_job(JobId("job")).uid
    data = b"1700000000000 o hello\n"
    for i in range(3):
        report(logged, "w1", f"job/task-{i}", T.TASK_STATE_RUNNING, job_uid=uid)
    wire.push_task_logs(logged, WorkerId("w1"), T.Controller.PushTaskLogsRequest(worker_id="w1", chunks=[
        T.LogChunk(task_id="job/task-1", attempt_id=0, job_uid=uid, start_offset=0, data=data)]))
    report(logged, "w1", "job/task-0", T.TASK_STATE_SUCCEEDED, job_uid=uid, log_size=0)
    report(logged, "w1", "job/task-1", T.TASK_STATE_SUCCEEDED, job_uid=uid, log_size=len(data))

    assert log_finished(logged, 0) and log_finished(logged, 1) and not log_finished(logged, 2)
    assert wire.fetch_task_logs(logged, T.Controller.FetchTaskLogsRequest(task_id="job/task-0")).lines == []
    assert sorted(os.listdir(tmp_path / "logs" / uid)) == ["1.0", EMPTY_COMPLETE]
    again = LogStore(tmp_path / "logs")  # a restarted controller's
    assert again.is_complete(uid, 0, 0) and again.is_complete(uid, 1, 0) and not again.is_complete(uid, 2, 0)
    report(logged, "w1", "job/task-2", T.TASK_STATE_FAILED, job_uid=uid, log_size=0, exit_code=1)
    assert log_finished(logged, 2)


def test_a_callable_success_seen_in_a_heartbeat_waits_for_the_report_with_its_result(
    controller: Controller, fake: FakeWorkerClients
) -> None:
    """An observed set carries no return value: a callable task's SUCCEEDED is taken from its
    report only (retried until acknowledged), so whoever sees it succeeded can read its result."""
    register(controller)
    pickled = T.Entrypoint(callable=T.CallableEntrypoint(pickled=b"fn")).SerializeToString()
    wire.launch_job(controller, T.Controller.LaunchJobRequest(
        name="fn", serialized_entrypoint=pickled, resources=ResourceSpec(cpu=1, memory="1GiB").to_proto()))
    schedule(controller, fake, 1)
    uid = controller.queries.get_job(JobId("fn")).uid
    done = T.WorkerTaskStatus(task_id="fn/task-0", attempt_id=0, state=T.TASK_STATE_SUCCEEDED, job_uid=uid)
    wire.heartbeat(controller, T.Controller.HeartbeatRequest(worker_id="w1", tasks=[done], incarnation="inc-127.0.0.1:1001",
                                                       sequence=99))
    assert controller.queries.task_status(JobId("fn"), 0).state != T.TASK_STATE_SUCCEEDED
    report(controller, "w1", "fn/task-0", T.TASK_STATE_SUCCEEDED, job_uid=uid, result=b"pickled-42")
    assert controller.queries.task_status(JobId("fn"), 0).state == T.TASK_STATE_SUCCEEDED
    assert controller.queries.task_result(JobId("fn"), 0) == (0, b"pickled-42")


def test_an_unfit_worker_gets_no_tasks_and_its_task_is_retried_elsewhere_as_a_preemption(
        controller: Controller, fake: FakeWorkerClients, core: ControllerState) -> None:
    """A worker whose cgroups vanished says so in its report (before the report's updates are taken):
    its task is a preemption, placed on another worker, and nothing more goes to it (issue 26 item 7)."""
    register(controller, "w1", cpu=1)
    launch(controller, "job", max_retries_preemption=2)
    schedule(controller, fake, 1)
    register(controller, "w2", cpu=1)
    reason = "cgroups: could not make a cgroup: read-only file system"
    wire.report_task_state(controller, T.Controller.ReportTaskStateRequest(
        worker_id="w1", unfit=reason, updates=[T.WorkerTaskStatus(
            task_id="job/task-0", attempt_id=0, state=T.TASK_STATE_WORKER_FAILED, error="cannot enforce")]))
    task = core.get_task(TaskId("job/task-0"))
    assert task is not None and (task.preemption_count, task.failure_count) == (1, 0)
    schedule(controller, fake, 2)
    assert fake.run_calls[-1][0].endswith(":1002")  # w2, not the unfit w1
    w1 = core.get_worker(WorkerId("w1"))
    assert w1 is not None and w1.unfit == reason and not w1.schedulable(0)
    # A heartbeat without it (the worker restarted, fixed) makes it fit again.
    wire.heartbeat(controller, T.Controller.HeartbeatRequest(worker_id="w1", incarnation="inc-127.0.0.1:1001"))
    assert w1.unfit == "" and w1.schedulable(0)


def test_a_negative_log_tail_is_refused_not_ignored(controller: Controller) -> None:
    with pytest.raises(InvalidArgument, match="tail_lines: must be >= 0, got -3"):
        wire.fetch_task_logs(controller, T.Controller.FetchTaskLogsRequest(task_id="job/task-0", tail_lines=-3))


def test_endpoint_names_are_not_shared_between_users_and_a_task_holds_a_bounded_number(
        clock: FakeClock, fake: FakeWorkerClients) -> None:
    """Issue 23 item 6, in part: bob's task cannot register (or overwrite) a name alice's live task
    holds; alice's other tasks may share it; past --max-endpoints-per-task, RESOURCE_EXHAUSTED."""
    from iris.cluster.errors import PermissionDenied, ResourceExhausted

    c = Controller(ControllerConfig(worker_timeout_s=10, max_endpoints_per_task=3), clock=clock, worker_clients=fake)
    try:
        register(c, cpu=8)
        entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()
        for name, owner in (("alice-job", "alice"), ("alice-other", "alice"), ("bob-job", "bob")):
            wire.launch_job(c, T.Controller.LaunchJobRequest(
                name=name, serialized_entrypoint=entry, resources=ResourceSpec(cpu=1).to_proto()), owner=owner)
        schedule(c, fake, 3)

        def add(task: str, name: str) -> str:
            owner = "bob" if task.startswith("bob") else "alice"
            return wire.register_endpoint(c, T.Controller.RegisterEndpointRequest(
                name=name, address="h:1", task_id=f"{owner}:{task}/task-0", attempt_id=0))

        # Through the service a name is in its owner's namespace (``service.endpoint_name``: bob's
        # "svc/api" is "bob:svc/api"); the state refuses a name held by another user's task anyway.
        add("alice-job", "svc/api")
        add("alice-other", "svc/api")  # the same user's tasks may serve one name together
        with pytest.raises(PermissionDenied, match="registered by another user's task"):
            add("bob-job", "svc/api")
        assert sorted(e.job_id for e in c.queries.list_endpoints("svc/")) == ["alice:alice-job", "alice:alice-other"]
        add("alice-job", "a")
        add("alice-job", "b")
        with pytest.raises(ResourceExhausted, match="at most 3 endpoints"):
            add("alice-job", "c")
    finally:
        c.stop()


def test_a_wide_dispatch_is_placed_in_slices_the_loop_running_each_next_pass_at_once(
        clock: FakeClock, fake: FakeWorkerClients) -> None:
    """``max_assignments_per_pass``: a pass stops at the limit and releases the lock; the work it
    placed wakes the scheduling loop for the next at once (not its fallback timer, an hour here)."""
    c = Controller(ControllerConfig(worker_timeout_s=10, max_assignments_per_pass=3, schedule_interval_s=3600),
                   clock=clock, worker_clients=fake)
    try:
        register(c, "w1", cpu=16)
        launch(c, replicas=10)
        summary = c.tick_schedule()
        assert summary.assigned == 3 and summary.pending == 7
        c.start()
        c.wake()
        wait_until(lambda: len(fake.ran()) == 10, 10, message="every task dispatched, slice after slice")
        assert sorted(fake.ran()) == sorted((f"job/task-{i}", 0) for i in range(10))
    finally:
        c.stop()
