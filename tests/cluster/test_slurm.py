"""Workers provisioned by a real Slurm (a private single-node one, ``tests/slurm_cluster.py``).

``.ci/run`` installs slurm-wlm and munge, starts the private Slurm and exports
``IRIS_TEST_SLURM_CONF``; without it the tests start their own when Slurm is installed and they
run as root, and are skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iris.cluster.clock import wait_until
from iris.rpc import cluster_pb2

from .. import slurm_cluster
from .e2e import Api, T

pytestmark = pytest.mark.e2e

C = cluster_pb2.Controller
_SERVING = re.compile(r"controller serving on (\S+)")


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    conf = os.environ.get("IRIS_TEST_SLURM_CONF", "")
    if conf:
        yield {"SLURM_CONF": conf}
        return
    why = slurm_cluster.unavailable()
    if why is not None:
        pytest.skip(f"Slurm test {why}")
    root = Path(tempfile.mkdtemp(prefix="iris-slurm-"))
    slurm = slurm_cluster.PrivateSlurm(root)
    try:
        slurm.start()
        yield slurm.env
    finally:
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class SlurmController:
    process: subprocess.Popen[bytes]
    address: str
    token: str
    env: dict[str, str]
    log: Path

    def squeue(self) -> dict[str, str]:
        """Job id -> state of every job in the private Slurm."""
        out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T"], env=self.env,
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return dict(line.split("|", 1) for line in out.split())

    def workers(self, api: Api) -> tuple[list[cluster_pb2.WorkerInfo], str]:
        reply = api.stub.ListWorkers(C.ListWorkersRequest(), timeout=30)
        return list(reply.workers), reply.provisioning


@pytest.fixture
def start_controller(slurm_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    started: list[SlurmController] = []
    env = {**os.environ, **slurm_env}

    def start(*flags: str) -> SlurmController:
        state = tmp_path / f"state-{len(started)}"
        log = tmp_path / f"controller-{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "iris.cli.main", "controller", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--state-dir", str(state), "--dashboard-port", "-1", "--worker-timeout", "5", "--platform", "slurm",
                 *flags], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)

        def address() -> str | None:
            match = _SERVING.search(log.read_text(errors="replace"))
            if match is None and process.poll() is not None:
                raise AssertionError(f"controller exited {process.returncode}:\n{log.read_text()}")
            return match.group(1) if match else None

        wait_until(lambda: address() is not None, 60, message="controller did not start")
        controller = SlurmController(process, address() or "", (state / "admin.token").read_text().strip(), env, log)
        started.append(controller)
        return controller

    yield start
    for controller in started:
        if controller.process.poll() is None:
            controller.process.send_signal(signal.SIGTERM)
            controller.process.wait(timeout=30)
    # Whatever the controllers left in Slurm is cancelled (the workers kill their tasks on SIGTERM).
    subprocess.run(["scancel", "--user", str(os.getuid())], env=env, capture_output=True, timeout=30)
    wait_until(lambda: not started or not any(s in ("RUNNING", "PENDING", "COMPLETING")
                                              for s in started[0].squeue().values()), 60,
               message="Slurm jobs left running")


def test_six_tasks_on_slurm_workers_survive_a_cancelled_allocation(start_controller, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctrl: SlurmController = start_controller("--max-workers", "3", "--worker-cpus", "2", "--worker-memory", "1GiB",
                                             "--idle-timeout", "3")
    api = Api(ctrl.address, ctrl.token)
    try:
        workers, summary = ctrl.workers(api)
        assert workers == [] and summary.startswith("slurm: 0 of at most 3 workers"), summary
        gate = tmp_path / "gate"
        script = f"while [ ! -e {gate} ]; do sleep 0.05; done"
        job_id = api.launch("six", ["/bin/sh", "-c", script], replicas=6, cpu=1, memory="64MiB")
        # Every worker comes from sbatch: three 2-cpu workers hold the six tasks.
        wait_until(lambda: api.job(job_id).tasks_running == 6, 120, message="six tasks never ran on Slurm workers")
        # The allocation's state is Slurm's word as last polled (every second): a worker may
        # register and run tasks before the next poll says RUNNING.
        wait_until(lambda: all(w.provisioning.state == "RUNNING" for w in ctrl.workers(api)[0]), 30,
                   message="the workers' allocations were never seen RUNNING")
        workers, _ = ctrl.workers(api)
        jobs = ctrl.squeue()
        assert len(workers) == 3
        for w in workers:
            assert w.provisioning.platform == "slurm" and jobs[w.provisioning.id] == "RUNNING", w
            assert w.provisioning.state == "RUNNING" and w.healthy
        # Cancel one worker's allocation mid-task: its tasks are preemptions, retried on a new worker.
        victim = next(w for w in workers if len(w.running_tasks) == 2)
        lost = set(victim.running_tasks)
        subprocess.run(["scancel", victim.provisioning.id], env=ctrl.env, check=True, timeout=30)

        def retried() -> bool:
            tasks = api.job(job_id, tasks=True).tasks
            moved = [t for t in tasks if t.task_id in lost and t.preemption_count == 1
                     and t.state == T.TASK_STATE_RUNNING and t.worker_id != victim.worker_id]
            return len(moved) == 2

        try:
            wait_until(retried, 120)
        except TimeoutError:
            tasks = api.job(job_id, tasks=True).tasks
            seen = [(t.task_id, T.TaskState.Name(t.state), t.worker_id, t.preemption_count,
                     [(a.worker_id, a.error) for a in t.attempts]) for t in tasks if t.task_id in lost]
            raise AssertionError(f"tasks of the cancelled allocation were not retried: {seen}\n"
                                 f"workers: {ctrl.workers(api)}\n{ctrl.log.read_text()[-4000:]}") from None
        gate.touch()
        job = api.wait(job_id, timeout=120)
        assert job.state == T.JOB_STATE_SUCCEEDED, job.error
        for task in job.tasks:
            if task.task_id in lost:
                assert task.preemption_count == 1 and task.failure_count == 0
                assert task.attempts[0].worker_id == victim.worker_id and task.attempts[0].is_worker_failure
            else:
                assert task.preemption_count == 0 and not task.attempts[0].is_worker_failure
        # Idle workers are released: their Slurm jobs end and the list empties.
        ids = {w.provisioning.id for w in ctrl.workers(api)[0]}

        def released() -> bool:
            states = ctrl.squeue()
            return all(states.get(i, "GONE") not in ("RUNNING", "PENDING", "COMPLETING") for i in ids) \
                and not [w for w in ctrl.workers(api)[0] if w.healthy or w.provisioning.state in ("RUNNING", "PENDING")]

        wait_until(released, 90, message="idle Slurm workers were not released")
        assert ctrl.process.poll() is None
    finally:
        api.close()


def test_pending_allocation_shows_slurms_reason_and_sbatch_failures_back_off(start_controller) -> None:  # type: ignore[no-untyped-def]
    held: SlurmController = start_controller("--max-workers", "1", "--worker-cpus", "1", "--worker-memory", "256MiB",
                                             "--sbatch-arg=--begin=now+3600")
    broken: SlurmController = start_controller("--max-workers", "2", "--worker-cpus", "1", "--worker-memory",
                                               "256MiB", "--slurm-partition", "no-such-partition")
    api, api2 = Api(held.address, held.token), Api(broken.address, broken.token)
    try:
        api.launch("waits", ["/bin/true"])
        never = api2.launch("never", ["/bin/true"])

        def pending() -> cluster_pb2.WorkerInfo | None:
            workers, _ = held.workers(api)
            return next((w for w in workers if w.provisioning.state == "PENDING" and w.provisioning.reason), None)

        wait_until(lambda: pending() is not None, 60, message="no pending allocation with a reason")
        worker = pending()
        assert worker is not None and worker.provisioning.reason == "BeginTime" and not worker.healthy
        assert held.squeue()[worker.provisioning.id] == "PENDING"
        # sbatch refuses the partition: reported, retried with a growing delay, the controller serves on.
        wait_until(lambda: "next try in 4s" in broken.workers(api2)[1], 60, message="sbatch failure not backed off")
        summary = broken.workers(api2)[1]
        assert "sbatch failed" in summary and "partition" in summary.lower(), summary
        assert broken.workers(api2)[0] == [] and broken.process.poll() is None
        assert api2.job(never).state == T.JOB_STATE_PENDING
    finally:
        api.close()
        api2.close()
