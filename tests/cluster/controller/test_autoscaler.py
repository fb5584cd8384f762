"""The scaling decision (``autoscaler.plan_scaling``): pure values in, a plan out."""

from __future__ import annotations

from iris.cluster.controller.autoscaler import Demand, ProvisionedWorker, WorkerShape, plan_scaling
from iris.cluster.controller.capacity import JobRequirements, Room, WorkerSnapshot
from iris.cluster.types import JobId, WorkerId

GiB = 1024**3
SHAPE = WorkerShape(cpu=4, memory_bytes=8 * GiB)


def req(cpu: int = 1, memory: int = GiB, gpus: int = 0) -> JobRequirements:
    return JobRequirements(JobId("j"), cpu * 1000, memory, 0, "gpu" if gpus else "cpu", "", gpus)


def live(worker_id: str, free_cpu: int, total_cpu: int = 4) -> WorkerSnapshot:
    return WorkerSnapshot(WorkerId(worker_id), True, Room(free_cpu * 1000, 8 * GiB, 0, 0, "cpu", ""),
                          Room(total_cpu * 1000, 8 * GiB, 0, 0, "cpu", ""))


def plan(demand: list[Demand], workers: list[WorkerSnapshot] | None = None,
         provisioned: list[ProvisionedWorker] | None = None, max_workers: int = 10, now: int = 100_000,
         idle_ms: int = 10_000):  # type: ignore[no-untyped-def]
    return plan_scaling(demand, workers or [], provisioned or [], SHAPE, max_workers=max_workers,
                        idle_timeout_ms=idle_ms, now_ms=now)


def test_pending_tasks_are_packed_onto_new_workers_of_the_shape() -> None:
    assert plan([Demand(req(cpu=1), 6)]).launch == 2  # 4 + 2 cpus
    assert plan([Demand(req(cpu=3), 3)]).launch == 3  # one 3-cpu task per 4-cpu worker
    assert plan([Demand(req(cpu=2), 2), Demand(req(cpu=1), 4)]).launch == 2


def test_free_room_of_live_workers_and_starting_allocations_is_used_first() -> None:
    assert plan([Demand(req(cpu=1), 3)], workers=[live("a", free_cpu=3)]).launch == 0
    assert plan([Demand(req(cpu=1), 5)], workers=[live("a", free_cpu=3)]).launch == 1
    starting = [ProvisionedWorker(WorkerId("s"), 90_000, registered=False, idle_since_ms=None)]
    assert plan([Demand(req(cpu=1), 4)], provisioned=starting).launch == 0
    assert plan([Demand(req(cpu=1), 5)], provisioned=starting).launch == 1


def test_max_workers_caps_launches_counting_what_is_held() -> None:
    held = [ProvisionedWorker(WorkerId(f"p{i}"), 0, registered=True, idle_since_ms=None) for i in range(2)]
    workers = [live("p0", 0), live("p1", 0)]
    assert plan([Demand(req(cpu=4), 10)], workers=workers, provisioned=held, max_workers=3).launch == 1
    assert plan([Demand(req(cpu=4), 10)], workers=workers, provisioned=held, max_workers=2).launch == 0


def test_a_task_bigger_than_the_shape_is_unfit_and_launches_nothing() -> None:
    result = plan([Demand(req(cpu=8), 2), Demand(req(gpus=1), 1)])
    assert result.launch == 0 and result.unfit == 3
    # ...but it may still use a big live worker that exists.
    big = WorkerSnapshot(WorkerId("big"), True, Room(16_000, 64 * GiB, 0, 0, "cpu", ""), Room(16_000, 64 * GiB, 0, 0, "cpu", ""))
    assert plan([Demand(req(cpu=8), 2)], workers=[big]).unfit == 0


def test_idle_workers_are_released_after_the_timeout_unless_a_task_wants_them() -> None:
    idle = ProvisionedWorker(WorkerId("p"), 0, registered=True, idle_since_ms=85_000)
    assert plan([], workers=[live("p", 4)], provisioned=[idle]).release == (WorkerId("p"),)
    assert plan([], workers=[live("p", 4)], provisioned=[idle], idle_ms=20_000).release == ()
    assert plan([Demand(req(), 1)], workers=[live("p", 4)], provisioned=[idle]).release == ()
    busy = ProvisionedWorker(WorkerId("p"), 0, registered=True, idle_since_ms=None)
    assert plan([], workers=[live("p", 2)], provisioned=[busy]).release == ()


def test_a_starting_allocation_nobody_needs_is_released_after_the_timeout() -> None:
    old = ProvisionedWorker(WorkerId("s"), 50_000, registered=False, idle_since_ms=None)
    young = ProvisionedWorker(WorkerId("y"), 95_000, registered=False, idle_since_ms=None)
    assert plan([], provisioned=[old, young]).release == (WorkerId("s"),)
    assert plan([Demand(req(), 1)], provisioned=[old]).release == ()
