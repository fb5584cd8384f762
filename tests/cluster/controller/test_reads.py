"""The read gate: reads take turns and their share of the CPU; heartbeats, reports and launches
never wait for it (``iris.cluster.controller.reads``)."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest

from iris.cluster.auth import Role
from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.dashboard import Dashboard
from iris.cluster.controller.reads import ReadGate, ResourceExhausted
from iris.cluster.controller.service import ControllerServer
from iris.cluster.types import ResourceSpec
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.status import grpc_status

from ..e2e import authed_channel
from .fakes import FakeWorkerClients

T = cluster_pb2
C = cluster_pb2.Controller


def test_a_full_bucket_admits_at_once_and_an_empty_one_waits_for_its_share() -> None:
    clock = FakeClock()
    gate = ReadGate(share=0.25, burst_s=0.25, clock=clock)
    assert gate.delay() == 0
    gate.charge(0.75)  # 0.5 s of CPU beyond the burst, refilled at a quarter of a core
    assert gate.delay() == pytest.approx(2.0)
    clock.advance(1)
    assert gate.delay() == pytest.approx(1.0)
    clock.advance(1)
    assert gate.delay() == 0
    clock.advance(1000)  # an idle gate holds no more than its burst
    gate.charge(0.3)
    assert gate.delay() == pytest.approx(0.2)


def test_reads_take_turns() -> None:
    gate = ReadGate()
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with gate.admit("first"):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with gate.admit("second"):
            order.append("second in")

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    wait_until(lambda: gate.waiting == 1, 10, message="the second read waits for its turn")
    assert order == ["first in"]
    release.set()
    a.join(10)
    b.join(10)
    assert order == ["first in", "first out", "second in"]
    assert gate.reads == 2


def test_a_paced_read_does_not_wait_for_the_turn() -> None:
    gate = ReadGate()
    with gate.admit("list"), gate.admit("log", exclusive=False):
        assert gate.reads == 2


def test_too_many_waiting_reads_are_refused_naming_the_rule() -> None:
    gate = ReadGate(max_waiting=2)
    release = threading.Event()

    def hold() -> None:
        with gate.admit("held"):
            release.wait(10)

    def wait_turn() -> None:
        with gate.admit("waiting"):
            pass

    threads = [threading.Thread(target=hold)]
    threads[0].start()
    wait_until(lambda: gate.reads == 1, 10)
    threads += [threading.Thread(target=wait_turn) for _ in range(2)]
    for t in threads[1:]:
        t.start()
    wait_until(lambda: gate.waiting == 2, 10)
    with pytest.raises(ResourceExhausted, match=r"ListJobs: .*2 reads waiting \(at most 2\)"), gate.admit("ListJobs"):
        pass
    assert gate.refused == 1
    assert grpc_status(ResourceExhausted("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    for t in threads:
        t.join(10)
    assert gate.reads == 3 and gate.waiting == 0


@pytest.fixture
def served() -> Iterator[tuple[ControllerServer, FakeClock, str]]:
    clock = FakeClock()
    controller = Controller(ControllerConfig(), clock=clock, worker_clients=FakeWorkerClients())
    _, admin = controller.create_token("admin", Role.ADMIN)
    server = ControllerServer(controller, "127.0.0.1", 0)
    server.start()
    yield server, clock, admin
    server.stop(grace=0)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as e:  # the test's assertions report it
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_with_the_reads_share_spent_reads_wait_and_the_control_plane_does_not(
        served: tuple[ControllerServer, FakeClock, str]) -> None:
    server, clock, admin = served
    gate = server.controller.reads
    gate.charge(100)  # reads have spent 100 s of CPU: at a quarter of a core, ~400 s to refill
    with authed_channel(server.address, admin) as channel:
        stub = cluster_pb2_grpc.ControllerServiceStub(channel)
        reader, listed = _in_thread(lambda: stub.ListJobs(C.ListJobsRequest(), timeout=60))
        # Launching, registering and heartbeating go on while the read waits for its share.
        entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()
        job_id = stub.LaunchJob(C.LaunchJobRequest(name="job", serialized_entrypoint=entry,
                                                   resources=ResourceSpec(cpu=1).to_proto()), timeout=10).job_id
        join = server.controller.create_token("join", Role.JOIN)[1]
        with authed_channel(server.address, join) as worker_channel:
            reply = cluster_pb2_grpc.ControllerServiceStub(worker_channel).RegisterWorker(C.RegisterWorkerRequest(
                worker_id="w1", address="127.0.0.1:1", incarnation="i",
                metadata=T.WorkerMetadata(cpu_count=4, memory_bytes=1 << 30)), timeout=10)
        with authed_channel(server.address, reply.credential) as worker_channel:
            cluster_pb2_grpc.ControllerServiceStub(worker_channel).Heartbeat(
                C.HeartbeatRequest(worker_id="w1", incarnation="i"), timeout=10)
        # The read has reached the gate and waits there for the reads' share.
        wait_until(lambda: server.controller.reads.waiting == 1, 30, message="the list waits at the read gate")
        assert not listed
        clock.advance(400)
        reader.join(30)
        assert not reader.is_alive()
        assert [j.job_id for j in listed[0].jobs] == [job_id]  # type: ignore[attr-defined]


def test_the_dashboard_api_waits_for_the_reads_share_and_its_health_check_does_not() -> None:
    clock = FakeClock()
    controller = Controller(ControllerConfig(), clock=clock, worker_clients=FakeWorkerClients())
    _, admin = controller.create_token("admin", Role.ADMIN)
    site = Dashboard(controller, "127.0.0.1", 0)
    site.start()
    try:
        def fetch(path: str) -> int:
            request = urllib.request.Request(site.url + path, headers={"Authorization": f"Bearer {admin}"})
            with urllib.request.urlopen(request, timeout=30) as r:
                return int(r.status)

        assert fetch("/api/jobs") == 200
        controller.reads.charge(100)
        poller, answered = _in_thread(lambda: fetch("/api/jobs?page_size=7"))
        assert fetch("/healthz") == 200  # answered while the API read waits
        # The API read is paced on the event loop (``ReadGate.pace``): it has begun waiting for the bucket.
        wait_until(lambda: controller.reads.waited_s > 0, 30, message="the API read waits for the reads' share")
        assert not answered
        clock.advance(400)
        poller.join(30)
        assert answered == [200]
    finally:
        site.stop()
        controller.stop()


def test_reads_waiting_for_the_bucket_count_against_the_limit_paced_ones_too() -> None:
    clock = FakeClock()
    gate = ReadGate(max_waiting=2, clock=clock)
    gate.charge(10)  # empty for 40 s of the fake clock
    def paced_read() -> None:
        with gate.admit("FetchTaskLogs", exclusive=False):
            pass

    waiters = [threading.Thread(target=paced_read) for _ in range(2)]
    for t in waiters:
        t.start()
    wait_until(lambda: gate.waiting == 2, 10, message="two paced reads wait for the bucket")
    with pytest.raises(ResourceExhausted, match="at most 2"), gate.admit("FetchTaskLogs", exclusive=False):
        pass
    clock.advance(60)
    for t in waiters:
        t.join(10)
    assert gate.waiting == 0 and gate.reads == 2 and gate.refused == 1
