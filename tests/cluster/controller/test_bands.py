"""Priority bands (issue 24 item 1) through the controller: bands come first in the queue order;
a band above the caller's allowance, or a child above its parent, is refused naming the rule; a
child takes its parent's band; the band an attempt ran under is stamped on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iris.cluster import bands
from iris.cluster.auth import Role
from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.access import band_allowance
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.state import ControllerState
from iris.cluster.errors import InvalidArgument, PermissionDenied
from iris.cluster.spec import Entrypoint, JobSpec
from iris.cluster.types import JobId, ResourceSpec, TaskId
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2


@pytest.fixture
def controller(fake: FakeWorkerClients, core: ControllerState) -> Iterator[Controller]:
    c = Controller(ControllerConfig(worker_timeout_s=10, auth=False), state=core, clock=FakeClock(),
                   worker_clients=fake)
    yield c
    c.stop()
    core.check_invariants()


def spec(name: str, priority: str = "", parent: str = "", replicas: int = 1) -> JobSpec:
    return JobSpec(name=name, entrypoint=Entrypoint.from_command("true"), resources=ResourceSpec(cpu=1, memory="1GiB"),
                   replicas=replicas, priority=priority, parent_job_id=parent)


def register(controller: Controller, cpu: int) -> None:
    wire.register_worker(controller, T.Controller.RegisterWorkerRequest(
        worker_id="w1", address="127.0.0.1:1001", incarnation="i1",
        metadata=T.WorkerMetadata(cpu_count=cpu, memory_bytes=16 * 1024**3)))


def placed(controller: Controller, fake: FakeWorkerClients, count: int) -> list[str]:
    controller.tick_schedule()
    wait_until(lambda: len(fake.run_calls) >= count, 10, message=f"expected {count} launches")
    return [request.job_id for _, request in fake.run_calls]


def test_bands_come_first_in_the_queue_then_submission_order(controller: Controller, fake: FakeWorkerClients,
                                                             core: ControllerState) -> None:
    controller.launch_job(spec("batch-1", "batch"))
    controller.launch_job(spec("inter-1"))  # unset: interactive
    controller.launch_job(spec("batch-2", "batch"))
    controller.launch_job(spec("prod-1", "production"))
    controller.launch_job(spec("inter-2", "interactive"))
    assert [t.job_id for t in core.peek_pending_tasks()] == ["prod-1", "inter-1", "inter-2", "batch-1", "batch-2"]
    register(controller, cpu=2)
    assert placed(controller, fake, 2) == ["prod-1", "inter-1"]
    task = core.get_task(TaskId("prod-1/task-0"))
    assert task is not None and task.band == "production"
    wire.report_task_state(controller, T.Controller.ReportTaskStateRequest(worker_id="w1", updates=[
        T.WorkerTaskStatus(task_id="prod-1/task-0", attempt_id=0, state=T.TASK_STATE_SUCCEEDED)]))
    assert task.attempts[0].band == "production"  # stamped on the attempt it ran
    assert placed(controller, fake, 3)[-1] == "inter-2"


def test_a_band_above_the_allowance_is_refused_naming_the_rule(controller: Controller, core: ControllerState) -> None:
    with pytest.raises(PermissionDenied, match=r"priority: production is above what this token allows "
                                               r"\(interactive\).*--max-priority production"):
        controller.launch_job(spec("p", "production"), owner="bob", max_priority=bands.USER_ALLOWANCE)
    assert core.get_job(JobId("p")) is None  # nothing changed
    controller.launch_job(spec("p", "production"), owner="bob", max_priority="production")
    controller.launch_job(spec("b", "batch"), owner="bob", max_priority="batch")
    with pytest.raises(PermissionDenied):
        controller.launch_job(spec("i"), owner="bob", max_priority="batch")  # the default band is above it too


def test_a_child_takes_its_parent_s_band_and_may_only_go_lower(controller: Controller, core: ControllerState) -> None:
    controller.launch_job(spec("parent", "batch"))
    child = controller.launch_job(spec("child", parent="parent"))
    job = core.get_job(child)
    assert job is not None and job.spec.priority == "batch"
    with pytest.raises(PermissionDenied, match="above its parent's"):
        controller.launch_job(spec("up", "interactive", parent="parent"))
    controller.launch_job(spec("top", "interactive"))
    low = core.get_job(controller.launch_job(spec("low", "batch", parent="top")))
    assert low is not None and low.spec.priority == "batch"


def test_a_token_s_allowance_and_a_bad_band(controller: Controller, fake: FakeWorkerClients) -> None:
    secured = Controller(ControllerConfig(), clock=FakeClock(), worker_clients=fake)  # authentication on
    try:
        def allowance(name: str, role: Role, max_priority: str = "") -> str:
            _, token = secured.create_token(name, role, max_priority)
            return band_allowance(secured.authenticate(token))

        assert allowance("carol", Role.USER, "production") == "production"
        assert allowance("dave", Role.USER) == "interactive"
        assert allowance("root", Role.ADMIN) == "production"
        assert allowance("intern", Role.ADMIN, "batch") == "batch"
    finally:
        secured.stop()
    with pytest.raises(InvalidArgument, match="max_priority: must be one of production, interactive, batch"):
        controller.create_token("eve", Role.USER, "urgent")
    with pytest.raises(InvalidArgument, match="priority: must be one of"):
        wire.launch_job(controller, T.Controller.LaunchJobRequest(
            name="x", serialized_entrypoint=Entrypoint.from_command("true").to_proto().SerializeToString(),
            resources=ResourceSpec(cpu=1).to_proto(), priority="urgent"))
