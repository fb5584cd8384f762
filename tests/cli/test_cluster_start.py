"""``iris cluster start --local`` as a fleet in miniature: a worker that dies takes only its own tasks
(retried elsewhere, as preemptions), the cluster says so and starts a new worker in its place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from iris.client import Entrypoint, IrisClient, ResourceSpec, TaskState
from iris.cluster.clock import wait_until

pytestmark = pytest.mark.e2e


def test_a_dead_worker_is_a_preemption_and_is_replaced_while_the_cluster_goes_on(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "iris.cli.main", "cluster", "start", "--local", "--workers", "2",
         "--cpu-per-worker", "1", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=stream, sink=sink: sink.extend(iter(s.readline, "")), daemon=True)
               for stream, sink in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    client: IrisClient | None = None
    try:
        wait_until(lambda: any(line.startswith("controller:") for line in out), 90, message="the cluster never started")
        address = next(line.split()[1] for line in out if line.startswith("controller:"))
        client = IrisClient.remote(address)  # the cluster logged us in
        job = client.submit(Entrypoint.from_command("sleep", "600"), "sleepers", resources=ResourceSpec(cpu=1),
                            replicas=2)
        wait_until(lambda: all(t.state is TaskState.RUNNING for t in job.tasks()), 60, message="tasks never ran")
        victim = next(t for t in job.tasks() if t.worker_id == "worker-1")
        (worker_pid,) = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                         if "serve" in p.cmdline() and "worker-1" in p.cmdline()]
        psutil.Process(worker_pid).send_signal(signal.SIGKILL)  # a process this test started, by its PID

        wait_until(lambda: any("worker worker-1 died" in line for line in err), 30, message="the death went unsaid")
        wait_until(lambda: any("worker worker-1 restarted" in line for line in err), 60, message="never restarted")
        assert proc.poll() is None  # the controller and the other worker go on

        def retried() -> bool:
            task = job.task(victim.task_index)
            return task.current_attempt_id == 1 and task.state is TaskState.RUNNING

        wait_until(retried, 90, message="the dead worker's task was not retried")
        task = job.task(victim.task_index)
        assert task.preemption_count == 1 and task.failure_count == 0  # a preemption, not the task's failure
        other = job.task(1 - victim.task_index)
        assert other.current_attempt_id == 0 and other.state is TaskState.RUNNING  # untouched
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    assert proc.returncode == 0


def test_a_second_local_cluster_stopping_leaves_the_firsts_cgroups_alone(tmp_path: Path) -> None:
    """Cgroups are named per worker incarnation: two clusters' ``worker-0`` share nothing, so one
    stopping (and cleaning up after itself) never lifts the other's memory limit."""
    from iris.cluster.local import LocalCluster
    from iris.cluster.worker.cgroups import CgroupLimits

    probe = CgroupLimits.detect(f"probe-{os.getpid()}")
    if probe is None:
        pytest.skip("needs a writable memory cgroup (root on a cgroup v1 or v2 host; CI has one)")
    code = "x = []\nfor _ in range(60):\n    x.append(bytearray(8 << 20))\nprint('survived', flush=True)\n"
    hog = Entrypoint.from_command(sys.executable, "-c", code)
    limited = ResourceSpec(cpu=1, memory="64MiB")
    with LocalCluster(workers=1, cpu_per_worker=1, base_dir=tmp_path / "a", dashboard=False) as first:
        client = IrisClient.remote(first.controller_address, token=first.admin_token)
        try:
            # A first task leaves an empty cgroup of its shape for the next one to reuse.
            client.submit(Entrypoint.from_command("true"), "warm", resources=limited).wait(timeout=120)
            with LocalCluster(workers=1, cpu_per_worker=1, base_dir=tmp_path / "b", dashboard=False):
                pass  # started and stopped beside the first: its worker-0 cleans up its own cgroups
            job = client.submit(hog, "hog", resources=limited)
            status = job.wait(timeout=120, raise_on_failure=False)
            task = job.task(0)
        finally:
            client.close()
    assert status.state.value == "FAILED", status
    assert "out of memory, the task exceeded its limit" in task.error, task.error  # the cgroup's, not the watchdog's
