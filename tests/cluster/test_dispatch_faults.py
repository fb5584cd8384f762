"""Whose fault is a failed dispatch? With real controller and worker processes (DESIGN §3):

- a worker that refuses a task for the task's own content (here: a request over the worker's
  receive limit) fails *that task* as a real failure, stays healthy, and still runs the other tasks
  of the same batch — no innocent task is preempted;
- a worker that is itself at fault (frozen, so it stops answering) is declared dead and its tasks
  are preemptions, retried elsewhere.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster

from .e2e import Api, T

pytestmark = pytest.mark.e2e


def test_dispatch_refused_for_the_tasks_content_fails_only_that_task(tmp_path: Path) -> None:
    # Workers that receive at most 256 KiB: a task whose environment is bigger cannot reach them,
    # although the controller (which allows 1 MiB of command and environment) accepted the job.
    with LocalCluster(workers=0, cpu_per_worker=4, worker_timeout=5, heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "cluster", worker_args=["--max-message-size", "256KiB"]) as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            big_env = {f"BLOB_{i}": "x" * 100_000 for i in range(4)}
            big = api.launch("big", ["/bin/true"], env=big_env, max_retries_failure=1)
            small = api.launch("small", ["/bin/sh", "-c", "echo ran"], replicas=3)
            # Both jobs are pending when the worker arrives: one pass sends them in one batch.
            cluster.add_worker(wait=True)
            big_job = api.wait(big, timeout=60)
            small_job = api.wait(small, timeout=60)
            assert small_job.state == T.JOB_STATE_SUCCEEDED
            assert all(t.preemption_count == 0 and t.failure_count == 0 for t in small_job.tasks)
            assert big_job.state == T.JOB_STATE_FAILED
            (task,) = big_job.tasks
            assert (task.failure_count, task.preemption_count) == (2, 0)  # two attempts, both charged as failures
            assert [a.state for a in task.attempts] == [T.TASK_STATE_FAILED, T.TASK_STATE_FAILED]
            assert "refused" in task.error and "RESOURCE_EXHAUSTED" in task.error
            (worker,) = cluster.list_workers()
            assert worker.healthy  # the worker did nothing wrong
            # ...and keeps taking work.
            after = api.wait(api.launch("after", ["/bin/true"]), timeout=60)
            assert after.state == T.JOB_STATE_SUCCEEDED
        finally:
            api.close()


def test_dispatch_to_a_frozen_worker_is_its_fault_and_a_preemption(tmp_path: Path) -> None:
    with LocalCluster(workers=2, cpu_per_worker=1, worker_timeout=2, heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "cluster") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        victim = cluster.workers[0]
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGSTOP)
        try:
            job_id = api.launch("moved", ["/bin/sh", "-c", "echo done"], replicas=2)
            job = api.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_SUCCEEDED
            assert all(t.failure_count == 0 for t in job.tasks)
            # One task was sent to the frozen worker (one cpu each): it came back as a preemption.
            assert sorted(t.preemption_count for t in job.tasks) == [0, 1]
            assert all(t.worker_id == cluster.workers[1].worker_id for t in job.tasks)
            wait_until(lambda: not {w.worker_id: w for w in cluster.list_workers()}[victim.worker_id].healthy, 30)
        finally:
            os.kill(victim.process.pid, signal.SIGCONT)
            api.close()
