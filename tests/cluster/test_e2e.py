"""End to end: a real controller and real worker processes (LocalCluster), tasks as real child
processes, every failure path of DESIGN §3 (seed criteria 4-10, issue "A running cluster")."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import grpc
import pytest

from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster
from iris.rpc import cluster_pb2

from .e2e import Api, C, T, open_dir, pid_alive, processes_with, py

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, cpu_per_worker=4, worker_timeout=3, heartbeat_interval=0.3, kill_grace=2,
                      base_dir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def api(cluster: LocalCluster) -> Iterator[Api]:
    a = Api(cluster.controller_address, cluster.admin_token)
    yield a
    a.close()


def wait_for_files(directory: Path, count: int, timeout: float = 30) -> list[Path]:
    wait_until(lambda: len(list(directory.iterdir())) >= count, timeout,
               message=f"expected {count} files in {directory}")
    return sorted(directory.iterdir())


def test_e2e_replicas_each_see_their_index_and_job_succeeds(api: Api) -> None:
    job_id = api.launch("indexes", ["/bin/sh", "-c", 'echo "index=$IRIS_TASK_INDEX of $IRIS_NUM_TASKS"'],
                        replicas=4)
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_SUCCEEDED
    assert (job.num_tasks, job.tasks_succeeded, job.tasks_failed) == (4, 4, 0)
    for i in range(4):
        assert api.logs(f"indexes/task-{i}") == [f"index={i} of 4"]


def test_e2e_task_environment_and_job_env_vars(api: Api) -> None:
    code = ("import os; print(' '.join(os.environ[k] for k in ['IRIS_JOB_ID','IRIS_TASK_ID','IRIS_ATTEMPT_ID',"
            "'IRIS_WORKER_ID','IRIS_CONTROLLER_ADDRESS','GREETING']))")
    job_id = api.launch("envs", py(code), env={"GREETING": "hi"})
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_SUCCEEDED, job.error
    (line,) = api.logs("envs/task-0")
    job_env, task_env, attempt, worker, controller, greeting = line.split()
    assert (job_env, task_env, attempt, greeting) == ("admin:envs", "admin:envs/task-0", "0", "hi")
    assert worker == job.tasks[0].worker_id and controller


def test_e2e_tasks_spread_over_workers_when_one_cannot_hold_them(api: Api, tmp_path: Path) -> None:
    # 4 cpus per worker, 6 tasks of 1 cpu that stay running until released: they cannot all fit on one.
    release = tmp_path / "release"
    job_id = api.launch("spread", ["/bin/sh", "-c", f"while [ ! -e {release} ]; do sleep 0.05; done"], replicas=6)
    wait_until(lambda: api.job(job_id).tasks_running == 6, 30)
    workers = {t.worker_id for t in api.job(job_id, tasks=True).tasks}
    release.touch()
    assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    assert len(workers) == 2


def test_e2e_task_fails_once_then_succeeds_with_one_retry(api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "failed-once"
    script = f"if [ -e {marker} ]; then echo second; exit 0; else touch {marker}; echo first; exit 7; fi"
    job_id = api.launch("retry", ["/bin/sh", "-c", script], max_retries_failure=1)
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_SUCCEEDED
    (task,) = job.tasks
    assert (task.failure_count, task.preemption_count, task.current_attempt_id) == (1, 0, 1)
    assert [(a.attempt_id, a.state) for a in task.attempts] == [
        (0, T.TASK_STATE_FAILED), (1, T.TASK_STATE_SUCCEEDED),
    ]
    assert task.attempts[0].exit_code == 7 and "exit code 7" in task.attempts[0].error
    assert api.logs("retry/task-0", attempt=0) == ["first"]
    assert api.logs("retry/task-0", attempt=1) == ["second"]


def test_e2e_max_task_failures_tolerates_one_failed_task(api: Api) -> None:
    job_id = api.launch("tolerate", ["/bin/sh", "-c", '[ "$IRIS_TASK_INDEX" != 1 ]'], replicas=3,
                        max_task_failures=1)
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_SUCCEEDED
    assert (job.tasks_succeeded, job.tasks_failed) == (2, 1)


def test_e2e_failure_kills_running_siblings_and_their_children(api: Api, tmp_path: Path) -> None:
    pids = open_dir(tmp_path / "pids")
    release = tmp_path / "release"
    # Tasks 1..3 start a background grandchild, say so, then wait; task 0 fails once released.
    script = (
        f'if [ "$IRIS_TASK_INDEX" = 0 ]; then '
        f'  while [ ! -e {release} ]; do sleep 0.05; done; exit 3; '
        f"fi; "
        f"sleep 1101 & touch {pids}/child-$IRIS_TASK_INDEX; touch {pids}/shell-$IRIS_TASK_INDEX; wait"
    )
    job_id = api.launch("domain", ["/bin/sh", "-c", script], replicas=4)
    wait_for_files(pids, 6)
    wait_until(lambda: len(processes_with("1101")) == 3, 30)
    recorded = processes_with("1101")  # the three background grandchildren
    release.touch()
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_FAILED
    assert "task 0 failed" in job.error
    assert sorted(t.state for t in job.tasks) == [T.TASK_STATE_FAILED] + [T.TASK_STATE_KILLED] * 3
    wait_until(lambda: not any(pid_alive(p) for p in recorded), 30, message="sibling processes survived")


def test_e2e_terminate_job_kills_running_processes(api: Api, tmp_path: Path) -> None:
    pids = open_dir(tmp_path / "pids")
    job_id = api.launch("stopme", ["/bin/sh", "-c", f"touch {pids}/$IRIS_TASK_INDEX; exec sleep 1102"],
                        replicas=2)
    wait_for_files(pids, 2)
    wait_until(lambda: len(processes_with("1102")) == 2, 10)
    recorded = processes_with("1102")
    api.stub.TerminateJob(C.TerminateJobRequest(job_id=job_id), timeout=30)
    job = api.job(job_id, tasks=True)
    assert job.state == T.JOB_STATE_KILLED
    assert all(t.state == T.TASK_STATE_KILLED for t in job.tasks)
    wait_until(lambda: not any(pid_alive(p) for p in recorded), 30, message="terminated tasks still run")


def test_e2e_too_big_task_is_unschedulable_with_reason(api: Api) -> None:
    job_id = api.launch("huge", ["/bin/true"], cpu=64, scheduling_timeout_seconds=2)
    wait_until(lambda: api.job(job_id).pending_reason != "", 10)
    assert api.job(job_id).pending_reason == "never fits: no worker has 64 cpus (largest: 4)"
    assert api.task(job_id, 0).pending_reason == "never fits: no worker has 64 cpus (largest: 4)"
    job = api.wait(job_id, timeout=30)
    assert job.state == T.JOB_STATE_UNSCHEDULABLE
    assert "no worker has 64 cpus" in job.error


def test_e2e_endpoint_registered_by_task_lives_while_it_runs(api: Api, tmp_path: Path) -> None:
    release = tmp_path / "release"
    code = f"""
import os, pathlib, time, grpc
from iris.rpc import cluster_pb2 as T, cluster_pb2_grpc
stub = cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(os.environ["IRIS_CONTROLLER_ADDRESS"]))
stub.RegisterEndpoint(T.Controller.RegisterEndpointRequest(
    name="svc/" + os.environ["IRIS_TASK_INDEX"], address="127.0.0.1:" + os.environ["IRIS_PORT_HTTP"],
    task_id=os.environ["IRIS_TASK_ID"], attempt_id=int(os.environ["IRIS_ATTEMPT_ID"])), timeout=10,
    metadata=(("authorization", "Bearer " + os.environ["IRIS_TOKEN"]),))
while not pathlib.Path({str(release)!r}).exists():
    time.sleep(0.05)
"""
    job_id = api.launch("served", py(code), ports=["http"])
    wait_until(lambda: len(api.endpoints("svc/")) == 1, 30)
    (endpoint,) = api.endpoints("svc/")
    assert endpoint.name == "admin:svc/0" and endpoint.task_id == "admin:served/task-0" and endpoint.job_id == job_id
    looked_up = api.stub.LookupEndpoint(C.LookupEndpointRequest(name="svc/0"), timeout=10).endpoint
    assert looked_up.address == endpoint.address
    release.touch()
    assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    assert api.endpoints("svc/") == []


def test_e2e_named_ports_are_unique_per_task(api: Api, tmp_path: Path) -> None:
    out = open_dir(tmp_path / "ports")
    script = f'echo "$IRIS_PORT_HTTP $IRIS_PORT_GRPC" > {out}/$IRIS_TASK_INDEX; while [ $(ls {out} | wc -l) -lt 4 ]; do sleep 0.05; done'
    job_id = api.launch("ports", ["/bin/sh", "-c", script], replicas=4, ports=["http", "grpc"])
    assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    ports = [int(p) for f in out.iterdir() for p in f.read_text().split()]
    assert len(ports) == 8 and len(set(ports)) == 8 and all(p > 0 for p in ports)


def test_e2e_stale_report_for_old_attempt_is_ignored(api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "once"
    release = tmp_path / "release"
    script = f"if [ ! -e {marker} ]; then touch {marker}; exit 1; fi; while [ ! -e {release} ]; do sleep 0.05; done"
    job_id = api.launch("stale", ["/bin/sh", "-c", script], max_retries_failure=1)
    wait_until(lambda: api.task(job_id, 0).current_attempt_id == 1 and
               api.task(job_id, 0).state == T.TASK_STATE_RUNNING, 30)
    task = api.task(job_id, 0)
    reply = api.stub.ReportTaskState(C.ReportTaskStateRequest(worker_id=task.worker_id, updates=[
        T.WorkerTaskStatus(task_id=task.task_id, attempt_id=0, state=T.TASK_STATE_SUCCEEDED)]), timeout=10)
    assert list(reply.kill) == []
    after = api.task(job_id, 0)
    assert (after.state, after.current_attempt_id) == (T.TASK_STATE_RUNNING, 1)
    release.touch()
    assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED


# The worker cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _add(a: int, b: int) -> int:
    print(f"sum={a + b}")
    return a + b


def _explode(message: str) -> None:
    raise ValueError(message)


def test_e2e_callable_entrypoint_returning(api: Api) -> None:
    job_id = api.launch("callable-ok", fn=_add, args=(2, 3))
    assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    assert "sum=5" in api.logs("callable-ok/task-0")


def test_e2e_callable_entrypoint_raising(api: Api) -> None:
    job_id = api.launch("callable-bad", fn=_explode, args=("kaboom",))
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_FAILED
    (task,) = job.tasks
    assert "ValueError: kaboom" in task.error and "Traceback" in task.error


def test_e2e_fetch_logs_of_unknown_task_is_not_found(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as info:
        api.stub.FetchTaskLogs(C.FetchTaskLogsRequest(task_id="nope/task-0"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- worker loss (own cluster)


def test_e2e_worker_killed_mid_task_is_retried_elsewhere_as_preemption(tmp_path: Path) -> None:
    pids = open_dir(tmp_path / "pids")
    with LocalCluster(workers=2, cpu_per_worker=2, worker_timeout=2, heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "cluster") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            script = (f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then touch {pids}/$IRIS_TASK_INDEX; exec sleep 1103; fi; '
                      f'echo "done on $IRIS_WORKER_ID"')
            job_id = api.launch("survivor", ["/bin/sh", "-c", script])
            wait_for_files(pids, 1)
            victim_id = api.task(job_id, 0).worker_id
            victim = next(w for w in cluster.workers if w.worker_id == victim_id)
            cluster.kill_worker(victim.index, signal.SIGKILL)
            job = api.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_SUCCEEDED
            (task,) = job.tasks
            assert (task.preemption_count, task.failure_count) == (1, 0)
            assert task.attempts[0].state == T.TASK_STATE_WORKER_FAILED and task.attempts[0].worker_id == victim_id
            assert task.worker_id != victim_id
            workers = {w.worker_id: w for w in cluster.list_workers()}
            assert not workers[victim_id].healthy
        finally:
            api.close()
    # The SIGKILLed worker's task died with it (its deathwatch), or at the latest with the cluster.
    wait_until(lambda: not processes_with("1103"), 10, message="the dead worker's task outlived it")


def test_e2e_restarted_worker_reregisters_and_task_is_retried(tmp_path: Path) -> None:
    pids = open_dir(tmp_path / "pids")
    with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=30, heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "cluster") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            script = f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then touch {pids}/first; exec sleep 1104; fi'
            job_id = api.launch("restart", ["/bin/sh", "-c", script])
            wait_for_files(pids, 1)
            wait_until(lambda: len(processes_with("1104")) == 1, 10)
            cluster.kill_worker(0, signal.SIGKILL)
            cluster.start_worker(0)  # same id and workdir, well inside the 30 s liveness timeout
            job = api.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_SUCCEEDED
            assert job.tasks[0].preemption_count == 1 and job.tasks[0].failure_count == 0
            # The first attempt died with the killed worker (or the restarted worker killed it).
            wait_until(lambda: not processes_with("1104"), 10)
        finally:
            api.close()


def test_e2e_local_cluster_stop_leaves_no_process(tmp_path: Path) -> None:
    cluster = LocalCluster(workers=1, cpu_per_worker=1, base_dir=tmp_path / "c").start()
    pids = [cluster.controller_pid] + [w.pid for w in cluster.workers]
    cluster.stop()
    assert not any(pid_alive(p) for p in pids)
    assert os.path.isdir(tmp_path / "c")  # a base_dir the caller owns is kept


def test_e2e_job_status_proto_roundtrip_fields(api: Api) -> None:
    job_id = api.launch("fields", ["/bin/true"], max_retries_preemption=0)
    job = api.wait(job_id)
    assert job.max_retries_preemption == 0 and job.submitted_at_ms > 0 and job.finished_at_ms >= job.started_at_ms
    assert isinstance(job, cluster_pb2.JobStatus)


def test_e2e_local_workers_split_the_machine_unless_told(tmp_path: Path) -> None:
    import psutil

    with LocalCluster(workers=2, worker_timeout=5, heartbeat_interval=0.3, base_dir=tmp_path / "split",
                      dashboard=False) as split:
        workers = split.list_workers()
        cores, memory = os.cpu_count() or 1, psutil.virtual_memory().total
        assert [w.metadata.cpu_count for w in workers] == [max(1, cores // 2)] * 2
        assert all(w.metadata.memory_bytes == memory // 2 for w in workers)
