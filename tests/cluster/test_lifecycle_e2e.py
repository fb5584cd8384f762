"""Logs that outlive workers, deletion with name reuse, and retention, on real processes."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from iris.client import Entrypoint, IrisClient, JobNotFoundError, JobState, TaskState
from iris.client.credentials import store_login
from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster
from tests.cli.conftest import iris

pytestmark = pytest.mark.e2e


def py(code: str) -> Entrypoint:
    return Entrypoint.from_command(sys.executable, "-u", "-c", code)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, cpu_per_worker=2, worker_timeout=3, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path_factory.mktemp("lifecycle"),
                      # The controller keeps its own copy under its own cap: the same one here, or a copy
                      # shipped while the task still wrote (under load) keeps the middle the worker dropped.
                      worker_args=("--max-log-size", "64KiB"), controller_args=("--max-log-size", "64KiB")) as c:
        store_login(c.controller_address, c.admin_token)
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[IrisClient]:
    c = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
    yield c
    c.close()


def test_logs_carry_time_and_stream_and_the_cli_filters_them(cluster: LocalCluster, client: IrisClient) -> None:
    code = "import sys\nfor i in range(5):\n    print('out', i)\n    print('err', i, file=sys.stderr)\n"
    job = client.submit(py(code), "logs-streams")
    job.wait(timeout=120)
    lines = client.task_logs("logs-streams", 0)
    assert sorted(line.data for line in lines if line.source == "stdout") == [f"out {i}" for i in range(5)]
    assert sorted(line.data for line in lines if line.source == "stderr") == [f"err {i}" for i in range(5)]
    assert all(line.timestamp_ms > 0 for line in lines)

    address = cluster.controller_address
    only_err = iris("job", "logs", "logs-streams", "--stderr", controller=address)
    assert only_err.returncode == 0 and sorted(only_err.stdout.splitlines()) == [f"[0] err {i}" for i in range(5)]
    tail = iris("job", "logs", "logs-streams", "--task", "0", "--tail", "2", controller=address)
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 2
    stamped = iris("job", "logs", "logs-streams", "--timestamps", "--stdout", controller=address)
    assert all(line.startswith("[0] 20") and line.endswith(tuple(f"out {i}" for i in range(5)))
               for line in stamped.stdout.splitlines()), stamped.stdout
    recent = iris("job", "logs", "logs-streams", "--since", "10m", controller=address)
    assert len(recent.stdout.splitlines()) == 10
    old = iris("job", "logs", "logs-streams", "--since", "0s", controller=address)
    assert old.returncode == 0 and old.stdout.strip() == ""
    as_json = json.loads(iris("job", "logs", "logs-streams", "--json", controller=address).stdout)
    assert {(r["source"], r["task_index"]) for r in as_json} == {("stdout", 0), ("stderr", 0)}
    bad = iris("job", "logs", "logs-streams", "--since", "soon", controller=address)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_a_log_over_the_cap_keeps_head_and_tail_and_says_what_was_dropped(client: IrisClient) -> None:
    code = "for i in range(20000):\n    print(f'line {i:05d} ' + 'x' * 40)\n"
    client.submit(py(code), "logs-capped").wait(timeout=120)
    lines = [line.data for line in client.task_logs("logs-capped", 0)]
    assert lines[0].startswith("line 00000") and lines[-1].startswith("line 19999")
    assert any("bytes of output dropped" in line for line in lines)
    assert len(lines) < 5000  # 64 KiB keeps ~1,300 of these lines, not 20,000
    assert [line.data[:10] for line in client.task_logs("logs-capped", 0, tail=2)] == ["line 19998", "line 19999"]


def test_logs_stay_readable_after_the_worker_is_killed_for_good(cluster: LocalCluster, client: IrisClient) -> None:
    extra = cluster.add_worker()
    others = [w for w in cluster.workers if w is not extra]
    for worker in others:  # only the new worker takes the task
        client_admin = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
        try:
            client_admin.drain_worker(worker.worker_id)
        finally:
            client_admin.close()
    try:
        code = "import time\nprint('before the crash', flush=True)\ntime.sleep(600)\n"
        job = client.submit(py(code), "logs-outlive", max_retries_preemption=0)
        wait_until(lambda: [line.data for line in client.task_logs("logs-outlive", 0)] == ["before the crash"], 60,
                   message="the running task's line never reached the controller")
        cluster.kill_worker(extra.index)  # kill -9, never restarted
        status = job.wait(timeout=120, raise_on_failure=False)
        assert status.state is JobState.FAILED
        task = client.task_status("logs-outlive", 0)
        assert task.state is TaskState.WORKER_FAILED
        assert [line.data for line in client.task_logs("logs-outlive", 0, attempt=0)] == ["before the crash"]
        followed = iris("job", "logs", "logs-outlive", "--follow", controller=cluster.controller_address)
        assert followed.returncode == 0 and followed.stdout.splitlines() == ["[0] before the crash"]
    finally:
        admin = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
        try:
            for worker in others:
                admin.release_worker(worker.worker_id)
        finally:
            admin.close()


def test_delete_removes_everything_and_the_name_can_be_used_again(cluster: LocalCluster, client: IrisClient,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("payload\n")
    first = client.submit(py("print(open('data.txt').read().strip())"), "reused", workspace=tmp_path)
    first.wait(timeout=120)
    uid = client.job_status("reused").job_uid
    state_dir = cluster.state_dir
    assert state_dir is not None
    bundle_files = list((state_dir / "bundles").glob("*.zip"))
    assert bundle_files and (state_dir / "logs" / uid).is_dir()
    result_job = client.submit(Entrypoint.from_callable(lambda a, b: a + b, 2, 3), "reused-result")
    assert result_job.result(timeout=120) == 5

    running = client.submit(py("import time; time.sleep(600)"), "still-running")
    wait_until(lambda: client.job_status("still-running").state is JobState.RUNNING, 60)
    refused = iris("job", "delete", "still-running", controller=cluster.controller_address)
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    running.terminate()

    def on_workers() -> list[Path]:
        """What the deleted jobs left on the workers: attempt directories (logs) and cached bundles."""
        left: list[Path] = []
        for worker in cluster.workers:
            left += [p for p in (worker.workdir / "tasks").glob("reused*") if p.is_dir()]
            left += [worker.workdir / "bundles" / b.name for b in bundle_files
                     if (worker.workdir / "bundles" / b.name).exists()]
        return left

    assert on_workers(), "the jobs ran: their attempt directories and bundle are on a worker"
    deleted = iris("job", "delete", "reused", "reused-result", controller=cluster.controller_address)
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted job reused" in deleted.stderr
    with pytest.raises(JobNotFoundError):
        client.job_status("reused")
    assert not (state_dir / "logs" / uid).exists()
    assert not any(p.exists() for p in bundle_files), "the bundle no other job uses is gone"
    with sqlite3.connect(state_dir / "controller.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs WHERE job_id LIKE 'reused%'").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM results WHERE task_id LIKE 'reused-result/%'").fetchone() == (0,)

    wait_until(lambda: not on_workers(), 30, message="the workers kept what the deleted jobs left")

    again = client.submit(py("print('second life')"), "reused")
    again.wait(timeout=120)
    assert client.job_status("reused").job_uid != uid
    assert [line.data for line in client.task_logs("reused", 0)] == ["second life"]
    missing = iris("job", "delete", "nope", controller=cluster.controller_address)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_a_user_cannot_delete_another_users_job(cluster: LocalCluster, client: IrisClient) -> None:
    client.submit(py("pass"), "admins-job").wait(timeout=120)
    from iris.rpc import cluster_pb2, cluster_pb2_grpc
    from tests.cluster.e2e import Api

    admin = Api(cluster.controller_address, cluster.admin_token)
    try:
        token = admin.stub.CreateToken(cluster_pb2.Controller.CreateTokenRequest(name="mallory", role="user"),
                                       timeout=10).token
    finally:
        admin.close()
    mallory = Api(cluster.controller_address, token)
    try:
        stub: cluster_pb2_grpc.ControllerServiceStub = mallory.stub
        with pytest.raises(grpc.RpcError) as error:
            stub.DeleteJob(cluster_pb2.Controller.DeleteJobRequest(job_id="admin:admins-job"), timeout=10)
        assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        mallory.close()
    assert client.job_status("admins-job").state is JobState.SUCCEEDED


def test_retention_keeps_memory_and_the_state_file_bounded(tmp_path: Path) -> None:
    with LocalCluster(workers=1, cpu_per_worker=4, worker_timeout=5, heartbeat_interval=0.3, base_dir=tmp_path,
                      controller_args=("--max-finished-jobs", "5")) as cluster:
        client = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
        try:
            sizes = []
            for round_ in range(3):
                jobs = [client.submit(Entrypoint.from_command("/bin/true"), f"stream-{round_}-{i}", )
                        for i in range(15)]
                for job in jobs:
                    try:
                        job.wait(timeout=120, raise_on_failure=False)
                    except JobNotFoundError:
                        pass  # it ended, and retention already deleted it
                wait_until(lambda: len(client.list_jobs()) <= 5, 60, message="retention never pruned")
                assert state_dir_jobs(cluster) <= 5
                sizes.append((cluster.state_dir / "controller.sqlite3").stat().st_size)  # type: ignore[operator]
            kept = [j.job_id for j in client.list_jobs()]
            assert all(job_id.startswith("admin:stream-2-") for job_id in kept), kept  # the oldest went first
            assert sizes[2] <= sizes[0] * 1.5 + 65536, sizes
        finally:
            client.close()


def state_dir_jobs(cluster: LocalCluster) -> int:
    assert cluster.state_dir is not None
    with sqlite3.connect(cluster.state_dir / "controller.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def test_a_task_python_can_import_iris_whatever_path_the_worker_was_started_with(tmp_path: Path) -> None:
    # As `.venv/bin/iris cluster start --local` without `uv run`: the venv is not on PATH.
    with LocalCluster(workers=1, cpu_per_worker=1, worker_timeout=5, heartbeat_interval=0.3, base_dir=tmp_path,
                      env={"PATH": "/usr/local/bin:/usr/bin:/bin"}) as cluster:
        client = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
        try:
            job = client.submit(Entrypoint.from_command("python", "-c", "import iris, sys; print(sys.executable)"),
                                "which-python")
            job.wait(timeout=120)
            [line] = [line.data for line in client.task_logs("which-python", 0)]
            assert Path(line).parent == Path(sys.executable).parent
        finally:
            client.close()
