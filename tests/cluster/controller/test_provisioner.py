"""The provisioner and the Slurm platform against a fake Slurm (the command-line tools' parsable
output, modelled in memory) and a real in-process Controller with a FakeClock. The real Slurm runs
in ``tests/cluster/test_slurm.py``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from iris.cluster.clock import FakeClock
from iris.cluster.controller.autoscaler import WorkerShape
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.provisioner import Provisioner, ProvisionerConfig
from iris.cluster.controller.slurm import SlurmConfig, SlurmPlatform
from iris.cluster.controller.state import ControllerState
from iris.cluster.errors import FailedPrecondition
from iris.cluster.types import ResourceSpec, WorkerId
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2
GiB = 1024**3


@dataclass
class FakeSlurm:
    """sbatch / squeue / scancel as Slurm's tools answer them (``--parsable``, ``--format``)."""

    jobs: dict[str, list[str]] = field(default_factory=dict)
    """job id -> [name, state, reason]"""
    calls: list[list[str]] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    sbatch_error: str = ""
    squeue_error: str = ""
    next_id: int = 100

    def __call__(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "sbatch":
            if self.sbatch_error:
                return subprocess.CompletedProcess(argv, 1, "", f"sbatch: error: {self.sbatch_error}\n")
            assert stdin is not None and stdin.startswith("#!/bin/sh")
            self.scripts.append(stdin)
            name = next(a.split("=", 1)[1] for a in argv if a.startswith("--job-name="))
            self.next_id += 1
            self.jobs[str(self.next_id)] = [name, "PENDING", "Resources"]
            return subprocess.CompletedProcess(argv, 0, f"{self.next_id}\n", "")
        if argv[0] == "squeue":
            if self.squeue_error:
                return subprocess.CompletedProcess(argv, 1, "", self.squeue_error)
            out = "".join(f"{i}|{n}|{s}|{r}|node1\n" for i, (n, s, r) in self.jobs.items())
            return subprocess.CompletedProcess(argv, 0, out + "7|someone-else|RUNNING|None|node1\n", "")
        if argv[0] == "scancel":
            self.jobs[argv[1]][1:] = ["CANCELLED", "None"]
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(f"unexpected command {argv}")

    def sbatches(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "sbatch"]

    def start(self, job_id: str) -> None:
        self.jobs[job_id][1:] = ["RUNNING", "None"]


@dataclass
class Rig:
    clock: FakeClock
    slurm: FakeSlurm
    controller: Controller
    provisioner: Provisioner

    def register(self, worker_id: str, cpu: int = 2) -> None:
        wire.register_worker(self.controller, T.Controller.RegisterWorkerRequest(
            worker_id=worker_id, address=f"10.0.0.9:{1000 + len(worker_id)}",
            metadata=T.WorkerMetadata(cpu_count=cpu, memory_bytes=4 * GiB), incarnation=f"inc-{worker_id}",
        ))

    def launch(self, name: str, replicas: int = 1, cpu: int = 1) -> str:
        request = T.Controller.LaunchJobRequest(
            name=name, serialized_entrypoint=T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString(),
            resources=ResourceSpec(cpu=cpu, memory="1GiB", replicas=replicas).to_proto(),
        )
        return wire.launch_job(self.controller, request)

    def allocation_of(self, worker_id: str) -> str:
        return self.provisioner.allocations()[WorkerId(worker_id)].engine_id


def make_rig(slurm: FakeSlurm, clock: FakeClock, **config: object) -> Rig:
    controller = Controller(ControllerConfig(auth=False), state=ControllerState(), clock=clock,
                            worker_clients=FakeWorkerClients())
    platform = SlurmPlatform(SlurmConfig(
        controller_address="10.0.0.1:10000", cluster_tag="tag", worker_cpus=2, worker_memory_bytes=4 * GiB,
        partition="batch", sbatch_args=("--time=1:00:00",), join_token="join-secret", python="/opt/py",
    ), runner=slurm)
    defaults: dict[str, object] = {"max_workers": 3, "idle_timeout_s": 30.0}
    defaults.update(config)
    provisioner = Provisioner(controller, platform, ProvisionerConfig(WorkerShape(2, 4 * GiB), **defaults), clock)  # type: ignore[arg-type]
    controller.attach_provisioner(provisioner)
    return Rig(clock, slurm, controller, provisioner)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make_rig(FakeSlurm(), FakeClock())
    yield r
    r.controller.stop()


def test_pending_tasks_that_fit_nowhere_are_provisioned_with_sbatch(rig: Rig) -> None:
    rig.provisioner.tick()
    assert rig.slurm.sbatches() == []  # nothing pending: nothing requested
    rig.launch("train", replicas=3)
    rig.provisioner.tick()
    calls = rig.slurm.sbatches()
    assert len(calls) == 2  # three 1-cpu tasks on 2-cpu workers
    argv = calls[0]
    assert argv[:3] == ["sbatch", "--parsable", "--no-requeue"]
    assert "--cpus-per-task=2" in argv and "--mem=4096M" in argv and "--partition=batch" in argv
    assert argv[-1] == "--time=1:00:00"  # user's sbatch args come last, so they may override
    assert all("join-secret" not in a for a in argv), "the join token never goes on a command line"
    script = rig.slurm.scripts[0]
    assert "IRIS_JOIN_TOKEN=join-secret; export IRIS_JOIN_TOKEN" in script
    assert "exec /opt/py -m iris.cli.main worker serve --controller 10.0.0.1:10000 --worker-id slurm-" in script
    assert {a.engine_state for a in rig.provisioner.allocations().values()} == {"SUBMITTED"}
    rig.provisioner.tick()
    assert len(rig.slurm.sbatches()) == 2, "starting allocations count: no second request"
    # Pending allocations are listed (no worker registered yet), with Slurm's id, state and reason.
    views = {v.worker_id: v for v in rig.controller.queries.list_workers()}
    assert len(views) == 2
    for view in views.values():
        assert not view.healthy and view.allocation is not None
        assert view.allocation.engine_state == "PENDING" and view.allocation.reason == "Resources"
    assert "2 of at most 3 workers (2 pending)" in rig.controller.queries.provisioning_summary()


def test_an_allocation_that_ends_under_a_worker_makes_its_tasks_preemptions(rig: Rig) -> None:
    job_id = rig.launch("train", replicas=2)
    rig.provisioner.tick()
    (worker_id,) = rig.provisioner.allocations()
    engine_id = rig.allocation_of(worker_id)
    rig.slurm.start(engine_id)
    rig.register(worker_id)
    rig.controller.tick_schedule()
    tasks = rig.controller.queries.list_tasks(job_id)
    assert all(t.state == T.TASK_STATE_RUNNING and t.worker_id == worker_id for t in tasks)
    rig.provisioner.tick()
    assert rig.provisioner.allocations()[worker_id].engine_state == "RUNNING"
    rig.slurm.jobs[engine_id][1:] = ["NODE_FAIL", "None"]  # the node died under the worker
    rig.provisioner.tick()
    tasks = rig.controller.queries.list_tasks(job_id)
    assert all(t.state == T.TASK_STATE_PENDING and t.preemption_count == 1 and t.failure_count == 0 for t in tasks)
    assert "allocation" in tasks[0].attempts[0].error and "NODE_FAIL" in tasks[0].attempts[0].error
    assert worker_id not in rig.provisioner.allocations()
    assert len(rig.slurm.sbatches()) == 2, "the tasks are pending again: a replacement is requested"


def test_sbatch_failures_back_off_and_are_reported_never_raised(rig: Rig) -> None:
    rig.slurm.sbatch_error = "invalid partition specified: batch"
    rig.launch("train")
    rig.provisioner.tick()
    assert "sbatch failed" in rig.controller.queries.provisioning_summary()
    assert "invalid partition" in rig.controller.queries.provisioning_summary()
    assert "next try in 2s" in rig.controller.queries.provisioning_summary()
    rig.provisioner.tick()
    assert len(rig.slurm.sbatches()) == 1, "within the back-off: no new sbatch"
    rig.clock.advance(2)
    rig.provisioner.tick()
    assert len(rig.slurm.sbatches()) == 2 and "next try in 4s" in rig.controller.queries.provisioning_summary()
    rig.slurm.sbatch_error = ""
    rig.clock.advance(4)
    rig.provisioner.tick()
    assert len(rig.provisioner.allocations()) == 1 and "error" not in rig.controller.queries.provisioning_summary()


def test_squeue_failure_changes_nothing(rig: Rig) -> None:
    rig.launch("train")
    rig.provisioner.tick()
    (worker_id,) = rig.provisioner.allocations()
    rig.slurm.squeue_error = "slurm_load_jobs error: Unable to contact slurm controller"
    for _ in range(5):
        rig.provisioner.tick()
    assert list(rig.provisioner.allocations()) == [worker_id] and len(rig.slurm.sbatches()) == 1
    assert "Unable to contact slurm controller" in rig.controller.queries.provisioning_summary()


def test_idle_worker_is_released_with_scancel_and_may_not_register_again(rig: Rig) -> None:
    job_id = rig.launch("short")
    rig.provisioner.tick()
    (worker_id,) = rig.provisioner.allocations()
    engine_id = rig.allocation_of(worker_id)
    rig.slurm.start(engine_id)
    rig.register(worker_id)
    rig.controller.tick_schedule()
    (task,) = rig.controller.queries.list_tasks(job_id)
    wire.report_task_state(rig.controller, T.Controller.ReportTaskStateRequest(
        worker_id=worker_id, updates=[T.WorkerTaskStatus(task_id=task.task_id, attempt_id=0,
                                                         state=T.TASK_STATE_SUCCEEDED)]))
    rig.provisioner.tick()  # idle from now
    rig.clock.advance(29)
    rig.provisioner.tick()
    assert ["scancel", engine_id] not in rig.slurm.calls
    rig.clock.advance(2)
    rig.provisioner.tick()
    assert ["scancel", engine_id] in rig.slurm.calls
    assert rig.provisioner.allocations()[worker_id].engine_state == "RELEASING"
    with pytest.raises(FailedPrecondition, match="released"):
        rig.register(worker_id)
    rig.provisioner.tick()  # Slurm reports it CANCELLED: gone from the list
    assert worker_id not in rig.provisioner.allocations()


def test_a_restarted_controller_adopts_its_allocations_by_name() -> None:
    slurm, clock = FakeSlurm(), FakeClock()
    slurm.jobs["55"] = ["iris-tag-slurm-0abc", "RUNNING", "None"]
    slurm.jobs["56"] = ["iris-other-slurm-0def", "RUNNING", "None"]  # another controller's
    rig = make_rig(slurm, clock)
    try:
        rig.launch("train", replicas=2)
        rig.provisioner.tick()
        assert {w: a.engine_id for w, a in rig.provisioner.allocations().items()} == {"slurm-0abc": "55"}
        assert slurm.sbatches() == [], "the adopted worker will hold the two tasks"
    finally:
        rig.controller.stop()
