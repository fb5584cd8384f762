"""Chaos: kill -9 the controller and workers, partition a worker, corrupt the store (issue "Nothing
lost", DESIGN §3 "Durability" and "Workers and failures"). Real processes, own cluster per test."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster

from .e2e import Api, T, host_pid, open_dir, pid_alive

pytestmark = pytest.mark.e2e


def test_chaos_controller_kill9_mid_job_then_restart_completes_job(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with LocalCluster(workers=2, cpu_per_worker=4, worker_timeout=5, heartbeat_interval=0.2,
                      base_dir=tmp_path / "c") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        # Task 0 fails once (history to keep); the rest wait for the gate so the crash lands mid-job.
        script = (f'if [ "$IRIS_TASK_INDEX" = 0 ] && [ "$IRIS_ATTEMPT_ID" = 0 ]; then exit 5; fi; '
                  f"while [ ! -e {gate} ]; do sleep 0.05; done")
        job_id = api.launch("fifty", ["/bin/sh", "-c", script], replicas=50, max_retries_failure=1)
        wait_until(lambda: api.job(job_id).tasks_running >= 8 and api.task(job_id, 0).current_attempt_id == 1, 30)
        before = api.task(job_id, 0)
        api.close()

        cluster.kill_controller(signal.SIGKILL)
        gate.touch()  # tasks finish while the controller is down; workers hold their reports
        cluster.start_controller()
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            job = api.wait(job_id, timeout=120)
            assert job.state == T.JOB_STATE_SUCCEEDED, job.error
            assert job.tasks_succeeded == 50 and all(t.state == T.TASK_STATE_SUCCEEDED for t in job.tasks)
            after = job.tasks[0]
            assert after.attempts[0].state == T.TASK_STATE_FAILED and after.attempts[0].exit_code == 5
            assert after.attempts[0].started_at_ms == before.attempts[0].started_at_ms
            assert after.failure_count == 1
        finally:
            api.close()


def test_chaos_controller_kill9_after_launch_before_dispatch_keeps_job(tmp_path: Path) -> None:
    with LocalCluster(workers=0, worker_timeout=5, heartbeat_interval=0.2, base_dir=tmp_path / "c") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        job_id = api.launch("acked", ["/bin/true"], replicas=3)  # no worker yet: nothing can be dispatched
        api.close()
        cluster.kill_controller(signal.SIGKILL)
        cluster.start_controller()
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            assert api.job(job_id).state == T.JOB_STATE_PENDING
            cluster.add_worker()
            assert api.wait(job_id, timeout=60).state == T.JOB_STATE_SUCCEEDED
        finally:
            api.close()


def test_chaos_worker_kill9_and_restart_same_id_retries_as_preemption(tmp_path: Path) -> None:
    pids = open_dir(tmp_path / "pids")
    with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=30, heartbeat_interval=0.2,
                      base_dir=tmp_path / "c") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            script = f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then echo $$ > {pids}/0; exec sleep 1000; fi'
            job_id = api.launch("lost", ["/bin/sh", "-c", script])
            wait_until(lambda: (pids / "0").exists() and (pids / "0").read_text().strip() != "", 30)
            orphan = host_pid(int((pids / "0").read_text()), IRIS_JOB_ID=job_id)
            cluster.kill_worker(0, signal.SIGKILL)
            cluster.start_worker(0)
            job = api.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_SUCCEEDED
            (task,) = job.tasks
            assert (task.preemption_count, task.failure_count) == (1, 0)
            assert "no longer has the task" in task.attempts[0].error
            # The restarted worker killed what its previous incarnation left running.
            wait_until(lambda: not pid_alive(orphan), 30, message="orphan of the killed worker survived")
        finally:
            api.close()


def test_chaos_partitioned_worker_is_replaced_and_its_old_attempts_killed(tmp_path: Path) -> None:
    pids = open_dir(tmp_path / "pids")
    with LocalCluster(workers=2, cpu_per_worker=1, worker_timeout=2, heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "c") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            script = (f'echo $$ > {pids}/attempt-$IRIS_ATTEMPT_ID; '
                      f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then exec sleep 1000; fi')
            job_id = api.launch("part", ["/bin/sh", "-c", script])
            wait_until(lambda: (pids / "attempt-0").exists() and (pids / "attempt-0").read_text().strip(), 30)
            old_pid = host_pid(int((pids / "attempt-0").read_text()), IRIS_JOB_ID=job_id, IRIS_ATTEMPT_ID="0")
            victim = next(w for w in cluster.workers if w.worker_id == api.task(job_id, 0).worker_id)
            # Freeze the worker daemon (its task keeps running): no heartbeat or report gets through.
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                job = api.wait(job_id, timeout=60)
            finally:
                os.kill(victim.pid, signal.SIGCONT)
            assert job.state == T.JOB_STATE_SUCCEEDED
            task = job.tasks[0]
            assert task.preemption_count == 1 and task.attempts[0].worker_id == victim.worker_id
            assert task.worker_id != victim.worker_id
            # Healed: the worker re-registers, its stale attempt is killed and its late report ignored.
            wait_until(lambda: not pid_alive(old_pid), 30, message="stale attempt still running after heal")
            wait_until(lambda: any(w.worker_id == victim.worker_id and w.healthy for w in cluster.list_workers()), 30)
            after = api.job(job_id, tasks=True)
            assert after.state == T.JOB_STATE_SUCCEEDED and after.tasks[0].current_attempt_id == 1
        finally:
            api.close()


def test_chaos_worker_sigterm_kills_its_tasks_and_they_are_retried(tmp_path: Path) -> None:
    pids = open_dir(tmp_path / "pids")
    with LocalCluster(workers=2, cpu_per_worker=1, worker_timeout=10, heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "c") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            script = f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then echo $$ > {pids}/0; exec sleep 1000; fi'
            job_id = api.launch("drain", ["/bin/sh", "-c", script])
            wait_until(lambda: (pids / "0").exists() and (pids / "0").read_text().strip(), 30)
            pid = host_pid(int((pids / "0").read_text()), IRIS_JOB_ID=job_id)
            victim = next(w for w in cluster.workers if w.worker_id == api.task(job_id, 0).worker_id)
            victim.process.terminate()  # type: ignore[union-attr]
            assert victim.process.wait(timeout=30) == 0  # type: ignore[union-attr]
            assert not pid_alive(pid)
            job = api.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_SUCCEEDED
            assert job.tasks[0].preemption_count == 1 and job.tasks[0].failure_count == 0
        finally:
            api.close()


def test_chaos_controller_sigterm_exits_cleanly_and_keeps_state(tmp_path: Path) -> None:
    with LocalCluster(workers=1, cpu_per_worker=1, base_dir=tmp_path / "c") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        job_id = api.launch("kept", ["/bin/true"])
        assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
        api.close()
        cluster.kill_controller(signal.SIGTERM)
        assert cluster._controller is not None and cluster._controller.returncode == 0
        cluster.start_controller()
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            assert api.job(job_id).state == T.JOB_STATE_SUCCEEDED
        finally:
            api.close()


def test_chaos_controller_restart_gives_running_workers_time_to_come_back(tmp_path: Path) -> None:
    """A controller that was down longer than the worker timeout declares no healthy worker dead on
    start: the workers get the timeout again to re-register, and their tasks run on untouched."""
    gate = tmp_path / "gate"
    with LocalCluster(workers=2, cpu_per_worker=2, worker_timeout=3, heartbeat_interval=0.2,
                      base_dir=tmp_path / "c") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        job_id = api.launch("survives", ["/bin/sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], replicas=3)
        wait_until(lambda: api.job(job_id).tasks_running == 3, 30)
        api.close()
        cluster.kill_controller(signal.SIGTERM)
        # The scenario itself (not a synchronisation): the controller stays down past the worker timeout.
        down_until = time.monotonic() + 4
        wait_until(lambda: time.monotonic() >= down_until, 10)
        cluster.start_controller()
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            wait_until(lambda: len([w for w in cluster.list_workers() if w.healthy]) == 2, 30)
            gate.touch()
            job = api.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_SUCCEEDED
            assert all(t.preemption_count == 0 and t.current_attempt_id == 0 for t in job.tasks), [
                [(a.worker_id, a.error) for a in t.attempts] for t in job.tasks]
        finally:
            api.close()


def _serve(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iris.cli.main", "controller", "serve", "--port", "0", "--state-dir", str(state_dir),
         "--dashboard-port", "-1"],
        capture_output=True, text=True, timeout=60,
    )


def test_chaos_corrupt_store_refuses_to_start_and_keeps_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = state_dir / "controller.sqlite3"
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    result = _serve(state_dir)
    assert result.returncode != 0
    assert "not a valid Iris state database" in result.stderr and "Traceback" not in result.stderr
    assert db.read_bytes() == garbage


def test_chaos_newer_schema_refuses_to_start_and_keeps_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with LocalCluster(workers=0, base_dir=tmp_path / "c", state_dir=state_dir):
        pass
    db = state_dir / "controller.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = db.read_bytes()
    result = _serve(state_dir)
    assert result.returncode != 0
    assert "schema version 999" in result.stderr and "Traceback" not in result.stderr
    assert db.read_bytes() == before


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs Debian's faketime (.ci/run installs it)")
def test_chaos_a_wall_clock_stepped_back_does_not_keep_a_dead_worker_alive(tmp_path: Path) -> None:
    """Issue 23 item 8: the controller's wall clock steps back an hour (libfaketime on the
    controller process only; its monotonic clock runs on, as under a real step) and then a worker
    is killed -9: it is declared dead within the timeout (before, never: 60 s watched)."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    state = tmp_path / "state"
    controller = subprocess.Popen(
        [sys.executable, "-m", "iris.cli.main", "controller", "serve", "--port", "0", "--state-dir", str(state),
         "--dashboard-port", "-1", "--worker-timeout", "3"], env=env, stdout=subprocess.PIPE, text=True)
    worker: subprocess.Popen[str] | None = None
    try:
        assert controller.stdout is not None
        address = next(line for line in controller.stdout if "controller serving on" in line
                       ).split("controller serving on ", 1)[1].split()[0]
        worker = subprocess.Popen(
            [sys.executable, "-m", "iris.cli.main", "worker", "serve", "--controller", address,
             "--join-token-file", str(state / "join.token"), "--workdir", str(tmp_path / "w"),
             "--heartbeat-interval", "0.3"], stdout=subprocess.DEVNULL)
        api = Api(address, (state / "admin.token").read_text().strip())
        try:
            def workers() -> list[T.WorkerInfo]:
                return list(api.stub.ListWorkers(T.Controller.ListWorkersRequest(), timeout=10).workers)

            wait_until(lambda: [w.healthy for w in workers()] == [True], 30, message="the worker never registered")
            offset.write_text("-1h\n")  # the controller's wall clock steps back an hour
            worker.kill()
            worker.wait(timeout=30)
            wait_until(lambda: [w.healthy for w in workers()] == [False], 30,
                       message="a worker killed -9 was never declared dead after the wall clock stepped back")
        finally:
            api.close()
    finally:
        for process in (worker, controller):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        if controller.stdout is not None:
            controller.stdout.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs for the state dir (needs root)")
def test_chaos_a_full_disk_refuses_writes_keeps_serving_and_loses_nothing(tmp_path: Path) -> None:
    """Issue 23 item 8: the disk under the state fills up: changes are refused with
    RESOURCE_EXHAUSTED naming the disk, reads and heartbeats go on (the worker stays healthy past
    its timeout), writing resumes when space returns, and what was acknowledged survives a restart
    (before: the controller exited 70 at the first failed write)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=3, heartbeat_interval=0.2,
                          base_dir=tmp_path / "c", state_dir=disk / "state") as cluster:
            api = Api(cluster.controller_address, cluster.admin_token)
            try:
                first = api.launch("before", ["/bin/true"])
                assert api.wait(first).state == T.JOB_STATE_SUCCEEDED
                filler = disk / "filler"
                with open(filler, "wb") as f:  # fill the disk to the last block
                    try:
                        while True:
                            f.write(b"\0" * (1 << 16))
                            f.flush()
                    except OSError:
                        pass
                with pytest.raises(grpc.RpcError) as refused:
                    for i in range(50):  # the first writes may still fit in SQLite's free pages
                        api.launch(f"full-{i}", ["/bin/true"])
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
                assert "is full" in refused.value.details() and "state" in refused.value.details()
                deadline = time.monotonic() + 5  # longer than the worker timeout: heartbeats go on
                while time.monotonic() < deadline:
                    assert api.job(first).state == T.JOB_STATE_SUCCEEDED  # reads go on
                    workers = api.stub.ListWorkers(T.Controller.ListWorkersRequest(), timeout=10).workers
                    assert [w.healthy for w in workers] == [True]
                    threading.Event().wait(0.5)
                assert pid_alive(cluster.controller_pid)  # it did not exit
                filler.unlink()  # space returns: so does writing
                wait_until(lambda: _launches(api, "after"), 30, message="writing did not resume")
                assert api.wait("after").state == T.JOB_STATE_SUCCEEDED
            finally:
                api.close()
            cluster.kill_controller(signal.SIGKILL)
            cluster.start_controller()
            api = Api(cluster.controller_address, cluster.admin_token)
            try:
                names = {j.job_id for j in api.stub.ListJobs(T.Controller.ListJobsRequest(), timeout=10).jobs}
                assert {"admin:before", "admin:after"} <= names  # acknowledged, then durable
            finally:
                api.close()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _launches(api: Api, name: str) -> bool:
    try:
        api.launch(name, ["/bin/true"])
        return True
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
            raise
        return False
