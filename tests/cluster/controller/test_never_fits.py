"""Work that fits nowhere (issue 25 items 5 and 6): said at once ("never fits", naming the resource
and the largest worker; a warning at submission), kept waiting (a worker of its kind may join; its
scheduling timeout still ends it), and parked out of the queue a pass reads, so a deep queue of it
costs a pass nothing."""

from __future__ import annotations

from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.state import ControllerState
from iris.cluster.types import JobId, ResourceSpec, gpu
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2
C = cluster_pb2.Controller
ENTRY = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()


def launch(c: Controller, name: str, resources: ResourceSpec, **fields: object) -> JobId:
    return wire.launch_job(c, C.LaunchJobRequest(name=name, serialized_entrypoint=ENTRY, resources=resources.to_proto(),
                                                 **fields))  # type: ignore[arg-type]


def register(c: Controller, worker_id: str, **meta: object) -> None:
    wire.register_worker(c, C.RegisterWorkerRequest(worker_id=worker_id, address=f"127.0.0.1:{len(worker_id)}",
                                                    metadata=T.WorkerMetadata(**meta)))  # type: ignore[arg-type]


def test_a_job_no_worker_can_hold_is_parked_said_so_and_placed_when_its_kind_joins(
        clock: FakeClock, fake: FakeWorkerClients) -> None:
    c = Controller(ControllerConfig(), clock=clock, worker_clients=fake)
    state: ControllerState = c._state
    try:
        register(c, "cpu-1", cpu_count=4, memory_bytes=8 << 30)
        c.tick_schedule()  # a full pass learns the fleet
        job = launch(c, "gpu-job", ResourceSpec(cpu=1, memory="1GiB", device=gpu("H100", 2)))
        small = launch(c, "cpu-job", ResourceSpec(cpu=1, memory="1GiB"))
        assert c.queries.fit_warning(job) == "never fits: no worker has a gpu H100"
        assert c.queries.fit_warning(small) == ""
        c.tick_schedule()
        assert c.queries.get_job(job).pending_reason == "never fits: no worker has a gpu H100"  # type: ignore[union-attr]
        assert [t.job_id for t in state.peek_pending_tasks()] == []  # parked: no pass reads it
        assert state.parked_jobs() == {job: "no worker has a gpu H100"}
        state.check_invariants()  # still PENDING and queued
        for _ in range(3):
            c.tick_schedule(bounded=True)
        assert c.queries.get_job(job).state == T.JOB_STATE_PENDING  # type: ignore[union-attr]
        register(c, "gpu-1", cpu_count=8, memory_bytes=32 << 30, gpu_count=4, gpu_name="NVIDIA H100 80GB HBM3",
                 device=T.DeviceConfig(gpu=T.GpuDevice(variant="H100", count=4)))
        c.tick_schedule()  # a full pass: the parked job is back, and placed
        wait_until(lambda: any(r[1].job_id == job for r in fake.run_calls), 10, message="never placed")
        assert state.parked_jobs() == {}
    finally:
        c.stop()


def test_a_parked_job_still_ends_at_its_scheduling_timeout(clock: FakeClock, fake: FakeWorkerClients) -> None:
    c = Controller(ControllerConfig(), clock=clock, worker_clients=fake)
    try:
        register(c, "cpu-1", cpu_count=4, memory_bytes=8 << 30)
        job = launch(c, "huge", ResourceSpec(cpu=64, memory="1GiB"), scheduling_timeout_seconds=5)
        c.tick_schedule()
        assert c._state.parked_jobs() == {job: "no worker has 64 cpus (largest: 4)"}
        clock.advance(6)
        c.tick_schedule()
        status = c.queries.get_job(job)
        assert status is not None and status.state == T.JOB_STATE_UNSCHEDULABLE
        assert "not scheduled within 5s: never fits: no worker has 64 cpus (largest: 4)" in status.error
    finally:
        c.stop()


def test_work_a_provisioner_could_hold_is_not_parked(clock: FakeClock, fake: FakeWorkerClients) -> None:
    from iris.cluster.controller.capacity import Room

    c = Controller(ControllerConfig(), clock=clock, worker_clients=fake)
    state: ControllerState = c._state
    try:
        job = launch(c, "big", ResourceSpec(cpu=16, memory="1GiB"))
        state.before_pass(clock.now_ms(), False, [Room(32000, 64 << 30, 1 << 40, 0, "cpu", "")])
        assert c.queries.fit_warning(job) == ""  # a worker the provisioner could add holds it
        register(c, "cpu-1", cpu_count=4, memory_bytes=8 << 30)
        state.before_pass(clock.now_ms(), False, [])
        assert c.queries.fit_warning(job) == "never fits: no worker has 16 cpus (largest: 4)"
    finally:
        c.stop()


def test_a_deep_queue_of_unfittable_work_costs_a_pass_nothing(clock: FakeClock, fake: FakeWorkerClients) -> None:
    """What a pass reads stays what can run: 500 parked jobs, and an event pass reads one task."""
    c = Controller(ControllerConfig(), clock=clock, worker_clients=fake)
    state: ControllerState = c._state
    try:
        register(c, "cpu-1", cpu_count=1, memory_bytes=8 << 30)
        for i in range(500):
            launch(c, f"gpu-{i}", ResourceSpec(cpu=1, memory="1GiB", device=gpu("H100", 1)))
        c.tick_schedule()
        launch(c, "fits", ResourceSpec(cpu=1, memory="1GiB"))
        assert [t.job_id for t in state.before_pass(clock.now_ms(), True)] == ["fits"]
        assert len(state.parked_jobs()) == 500
        state.check_invariants()
    finally:
        c.stop()
