"""Ports allocated by the controller, not guessed (``iris.cluster.ports``; issue 26 item 1): every
named port and a gang's rendezvous port comes from the range of the worker a task goes to, at
placement; no two live attempts on one host share one; a port held outside Iris sends the attempt
back, charged to no budget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iris.cluster.clock import FakeClock
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.state import ControllerState
from iris.cluster.errors import InvalidArgument
from iris.cluster.ports import (
    OUTSIDE_HOLD_MS,
    PortBook,
    default_port_range,
    parse_port_range,
)
from iris.cluster.types import JobId, ResourceSpec, TaskId
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2
RANGE = (24000, 24011)


# -- the pure parts ---------------------------------------------------------------------------


def test_the_default_range_lies_outside_the_ephemeral_range() -> None:
    assert default_port_range((32768, 60999)) == (24576, 32767)  # Linux's default: just below it
    assert default_port_range((1024, 40000)) == (40001, 48192)  # no room below: just above
    assert default_port_range((1100, 65000)) == (65001, 65535)
    with pytest.raises(ValueError, match="--port-range"):
        default_port_range((1024, 65535))


def test_a_port_range_is_checked_and_named() -> None:
    assert parse_port_range("20000-20100") == (20000, 20100)
    for bad in ("20000", "a-b", "20100-20000", "0-10", "1-70000", ""):
        with pytest.raises(InvalidArgument, match="--port-range"):
            parse_port_range(bad, "--port-range")


def test_the_book_hands_out_next_fit_per_host_and_avoids_ports_held_outside() -> None:
    book = PortBook()
    got = book.take("h", 10, 13, 2, 10, 0)
    assert got == ([10, 11], 12)
    assert book.take("h", 10, 13, 3, 12, 0) is None  # only 12 and 13 are free: nothing taken
    assert book.take("other", 10, 13, 1, 10, 0) == ([10], 11)  # another host has its own ports
    book.give_back("h", [10])
    assert book.take("h", 10, 13, 1, 12, 0) == ([12], 13)  # next-fit: 10 is not reused at once
    book.held_outside("h", [13], now_ms=0)
    assert book.take("h", 10, 13, 1, 13, 0) == ([10], 11)  # 13 is skipped while held outside
    assert book.take("h", 10, 13, 1, 13, 1) is None
    assert book.take("h", 10, 13, 1, 13, OUTSIDE_HOLD_MS) == ([13], 10)  # and handed out after the hold


# -- through the controller -------------------------------------------------------------------


@pytest.fixture
def controller(fake: FakeWorkerClients, core: ControllerState) -> Iterator[Controller]:
    c = Controller(ControllerConfig(worker_timeout_s=10), state=core, clock=FakeClock(), worker_clients=fake)
    yield c
    c.stop()
    core.check_invariants()


def register(controller: Controller, worker_id: str, port_range: tuple[int, int] = RANGE, cpu: int = 2) -> None:
    """Workers w1, w2... on one host (127.0.0.1), all declaring the same range."""
    wire.register_worker(controller, T.Controller.RegisterWorkerRequest(
        worker_id=worker_id, address=f"127.0.0.1:{1000 + int(worker_id[1:])}", incarnation=f"inc-{worker_id}",
        metadata=T.WorkerMetadata(cpu_count=cpu, memory_bytes=16 * 1024**3, port_range_start=port_range[0],
                                  port_range_end=port_range[1])))


def launch(controller: Controller, name: str, replicas: int, **fields: object) -> JobId:
    entrypoint = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()
    return wire.launch_job(controller, T.Controller.LaunchJobRequest(
        name=name, serialized_entrypoint=entrypoint,
        resources=ResourceSpec(cpu=1, memory="1GiB", replicas=replicas).to_proto(), **fields))  # type: ignore[arg-type]


def runs(controller: Controller, fake: FakeWorkerClients, count: int) -> list[T.Worker.RunTaskRequest]:
    """Run a scheduling pass; the RunTask requests it sent (all of them so far: ``count``)."""
    controller.tick_schedule()
    from iris.cluster.clock import wait_until

    wait_until(lambda: len(fake.run_calls) >= count, 10, message=f"expected {count} RunTask calls")
    return [request for _, request in fake.run_calls]


def host_ports(request: T.Worker.RunTaskRequest) -> list[int]:
    return [*request.allocated_ports.values(), *([request.coordinator_port] if request.coordinator_port else [])]


def test_two_gangs_on_one_host_get_their_ports_from_the_range_and_never_share_one(
        controller: Controller, fake: FakeWorkerClients) -> None:
    for worker_id in ("w1", "w2"):
        register(controller, worker_id)
    launch(controller, "a", 2, coscheduled=True, ports=["http"])
    launch(controller, "b", 2, coscheduled=True, ports=["http"])
    sent = runs(controller, fake, 4)
    used = [port for request in sent for port in host_ports(request)]
    assert len(used) == len(set(used)), f"a port was handed out twice on one host: {used}"
    assert all(RANGE[0] <= port <= RANGE[1] for port in used)
    for job in ("a", "b"):
        gang = sorted((r for r in sent if r.job_id == job), key=lambda r: r.task_index)
        lead = gang[0]
        assert lead.coordinator_port and not gang[1].coordinator_port  # only the lead's is checked
        for member in gang:  # every rank is told the lead's allocated port at dispatch
            assert member.rendezvous_env["MASTER_PORT"] == str(lead.coordinator_port)
            assert member.rendezvous_env["IRIS_COORDINATOR_ADDRESS"] == f"127.0.0.1:{lead.coordinator_port}"
            assert set(member.allocated_ports) == {"http"}


def test_ports_come_back_when_an_attempt_ends_and_a_range_too_small_makes_the_task_wait(
        controller: Controller, fake: FakeWorkerClients, core: ControllerState) -> None:
    register(controller, "w1", port_range=(24000, 24002), cpu=8)
    job = launch(controller, "named", 4, ports=["a"])  # one port each, three ports in the range
    sent = runs(controller, fake, 3)
    assert sorted(r.allocated_ports["a"] for r in sent) == [24000, 24001, 24002]
    assert core.get_task(TaskId(f"{job}/task-3")).state == T.TASK_STATE_PENDING  # type: ignore[union-attr]
    wire.report_task_state(controller, T.Controller.ReportTaskStateRequest(worker_id="w1", updates=[
        T.WorkerTaskStatus(task_id=sent[0].task_id, attempt_id=0, state=T.TASK_STATE_SUCCEEDED)]))
    last = runs(controller, fake, 4)[-1]
    assert last.task_id == f"{job}/task-3" and last.allocated_ports["a"] == sent[0].allocated_ports["a"]


def test_a_port_held_outside_iris_sends_the_gang_back_charged_to_nobody(
        controller: Controller, fake: FakeWorkerClients, core: ControllerState) -> None:
    for worker_id in ("w1", "w2"):
        register(controller, worker_id)
    job = launch(controller, "g", 2, coscheduled=True)
    first = runs(controller, fake, 2)
    lead = next(r for r in first if r.coordinator_port)
    worker_of = {r.task_id: address for address, r in fake.run_calls}
    lead_worker = f"w{int(worker_of[lead.task_id].rsplit(':', 1)[1]) - 1000}"
    for r in first:
        if r is not lead:  # the other rank started
            other_worker = f"w{int(worker_of[r.task_id].rsplit(':', 1)[1]) - 1000}"
            wire.report_task_state(controller, T.Controller.ReportTaskStateRequest(worker_id=other_worker, updates=[
                T.WorkerTaskStatus(task_id=r.task_id, attempt_id=0, state=T.TASK_STATE_RUNNING)]))
    wire.report_task_state(controller, T.Controller.ReportTaskStateRequest(worker_id=lead_worker, updates=[
        T.WorkerTaskStatus(task_id=lead.task_id, attempt_id=0, state=T.TASK_STATE_FAILED,
                           error="port in use", busy_ports=[lead.coordinator_port])]))
    again = runs(controller, fake, 4)[2:]
    assert sorted(r.attempt_id for r in again) == [1, 1]  # the whole gang, placed again
    new_lead = next(r for r in again if r.coordinator_port)
    assert new_lead.coordinator_port != lead.coordinator_port
    assert lead.coordinator_port not in [p for r in again for p in host_ports(r)]
    for index in (0, 1):
        task = core.get_task(TaskId(f"{job}/task-{index}"))
        assert task is not None and task.failure_count == 0 and task.preemption_count == 0
        assert [a.charged_to for a in task.attempts] == ["none"]
    ended = [a for i in (0, 1) for a in core.get_task(TaskId(f"{job}/task-{i}")).attempts]  # type: ignore[union-attr]
    assert sorted(a.decided_by for a in ended) == ["gang restart", "port in use"]
    assert all(f"port {lead.coordinator_port} in use" in (a.error or "") for a in ended)


def test_bad_port_fields_from_a_worker_are_refused_by_name(controller: Controller) -> None:
    with pytest.raises(InvalidArgument, match="metadata.port_range"):
        register(controller, "w1", port_range=(30000, 20000))
    register(controller, "w1")
    with pytest.raises(InvalidArgument, match=r"updates\[0\].busy_ports"):
        wire.report_task_state(controller, T.Controller.ReportTaskStateRequest(worker_id="w1", updates=[
            T.WorkerTaskStatus(task_id="x/task-0", attempt_id=0, state=T.TASK_STATE_FAILED, busy_ports=[70000])]))
