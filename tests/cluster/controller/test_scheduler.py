"""Scheduler: fit, no head-of-line blocking, coscheduling, timeouts, pending reasons (seed criterion 3;
DESIGN §3 "Scheduling", §4.5)."""

from __future__ import annotations

from iris.cluster.controller.scheduler import Scheduler
from iris.cluster.controller.state import ControllerState

from .builders import NOW, add_worker, dispatch, submit


def assign(state: ControllerState, now_ms: int = NOW) -> list[tuple[str, str]]:
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(), now_ms)
    return [(t.task_id, w.worker_id) for t, w in tx.assignments]


def test_scheduler_assigns_tasks_to_workers_that_fit(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    add_worker(state, "w2", cpu=2)
    submit(state, replicas=3, cpu=1)
    assert assign(state) == [("job/task-0", "w1"), ("job/task-1", "w1"), ("job/task-2", "w2")]


def test_scheduler_is_pure_and_deterministic(state: ControllerState) -> None:
    worker = add_worker(state, "w1", cpu=1)
    submit(state, replicas=2)
    assert assign(state) == assign(state) == [("job/task-0", "w1")]
    assert worker.running_tasks == set() and state.get_committed_resources(worker) == (0, 0, 0)
    assert len(state.peek_pending_tasks()) == 2


def test_scheduler_accounts_for_committed_resources(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    _, tasks = submit(state, "a", replicas=2)
    dispatch(state, tasks[0])
    submit(state, "b", cpu=2)
    assert assign(state) == [("a/task-1", "w1")]


def test_scheduler_memory_disk_and_gpu_fit(state: ControllerState) -> None:
    add_worker(state, "cpu-box", cpu=16, memory="8GiB")
    add_worker(state, "gpu-box", cpu=16, memory="64GiB", gpus=2, gpu_name="NVIDIA H100 80GB HBM3")
    submit(state, "big-mem", memory="32GiB")
    submit(state, "gpu", gpus=2, gpu_variant="H100")
    submit(state, "wrong-gpu", gpus=1, gpu_variant="A100")
    assert assign(state) == [("big-mem/task-0", "gpu-box"), ("gpu/task-0", "gpu-box")]


def test_scheduler_job_that_does_not_fit_does_not_block_jobs_behind_it(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=4)
    submit(state, "huge", cpu=64)
    submit(state, "small", replicas=2)
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(), NOW)
    assert [t.task_id for t, _ in tx.assignments] == ["small/task-0", "small/task-1"]
    assert tx.pending_reasons["huge"] == "never fits: no worker has 64 cpus (largest: 4)"


def test_scheduler_pending_reason_when_busy_vs_impossible(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=1)
    submit(state, "a", replicas=2)
    submit(state, "gpu", gpus=1)
    submit(state, "mem", memory="1TiB")
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(), NOW)
    assert tx.pending_reasons["a"].startswith("waiting for free resources")
    assert tx.pending_reasons["gpu"] == "never fits: no worker has a gpu"
    assert tx.pending_reasons["mem"].startswith("never fits: no worker has 1TiB memory")


def test_scheduler_skips_unhealthy_workers(state: ControllerState) -> None:
    worker = add_worker(state, "w1")
    add_worker(state, "w2")
    worker.healthy = False
    submit(state)
    assert assign(state) == [("job/task-0", "w2")]


def test_scheduler_coscheduled_job_is_all_or_nothing(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    add_worker(state, "w2", cpu=1)
    submit(state, "gang", replicas=4, coscheduled=True)
    submit(state, "solo", replicas=1)
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(), NOW)
    assert [t.task_id for t, _ in tx.assignments] == ["solo/task-0"]
    assert "coscheduled" in tx.pending_reasons["gang"]
    add_worker(state, "w3", cpu=1)
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(), NOW)
    # Queue order: the gang now fits (4 cpus) and takes them all; solo waits.
    assert sorted(t.task_id for t, _ in tx.assignments) == [f"gang/task-{i}" for i in range(4)]


def test_scheduler_times_out_tasks_pending_longer_than_the_timeout(state: ControllerState) -> None:
    submit(state, "t", scheduling_timeout_seconds=5)
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), [], NOW + 5_000)
    assert tx.timed_out_tasks == []
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), [], NOW + 5_001)
    assert [t.task_id for t in tx.timed_out_tasks] == ["t/task-0"]


def test_scheduler_timeout_counts_from_when_task_last_became_pending(state: ControllerState) -> None:
    """DESIGN §4.5: a task retried after the window must get a fresh window, not die at once."""
    from iris.rpc import cluster_pb2

    add_worker(state)
    _, (task,) = submit(state, "t", scheduling_timeout_seconds=5, max_retries_failure=1)
    dispatch(state, task, now_ms=NOW + 1_000)
    state.transition_task(task.task_id, cluster_pb2.TASK_STATE_FAILED, NOW + 60_000)
    state.get_worker("w1").healthy = False  # type: ignore[union-attr]
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), [], NOW + 61_000)
    assert tx.timed_out_tasks == []
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), [], NOW + 65_001)
    assert [t.task_id for t in tx.timed_out_tasks] == ["t/task-0"]
    state.get_worker("w1").healthy = True  # type: ignore[union-attr]


class _CountingQueue(list):  # type: ignore[type-arg]
    """The pending queue, counting how many tasks a pass looked at."""

    seen = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for task in super().__iter__():
            self.seen += 1
            yield task


def test_a_bounded_pass_stops_when_no_worker_has_room_and_leaves_timeouts_to_the_full_pass(
    state: ControllerState,
) -> None:
    """The passes woken by events cost what changed, not the queue's depth: they place exactly what
    a full pass places, then stop; timing out and explaining the rest is the full pass's job."""
    add_worker(state, "w1", cpu=2)
    add_worker(state, "w2", cpu=1)
    for i in range(5):
        submit(state, f"deep-{i}", replicas=200)
    submit(state, "late", scheduling_timeout_seconds=1)
    scheduler = Scheduler(state)
    full_queue = _CountingQueue(state.peek_pending_tasks())
    full = scheduler.find_assignments(full_queue, state.get_available_workers(), NOW + 2_000)
    bounded_queue = _CountingQueue(state.peek_pending_tasks())
    bounded = scheduler.find_assignments(bounded_queue, state.get_available_workers(), NOW + 2_000, bounded=True)
    placed = [("deep-0/task-0", "w1"), ("deep-0/task-1", "w1"), ("deep-0/task-2", "w2")]
    assert [(t.task_id, w.worker_id) for t, w in full.assignments] == placed
    assert [(t.task_id, w.worker_id) for t, w in bounded.assignments] == placed
    assert [t.task_id for t in full.timed_out_tasks] == ["late/task-0"] and bounded.timed_out_tasks == []
    assert full_queue.seen == 1001 and bounded_queue.seen == 4
    assert "late" not in bounded.pending_reasons and "deep-4" in full.pending_reasons


def test_a_bounded_pass_with_room_left_is_a_full_pass(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=4)
    submit(state, "a", replicas=2)
    submit(state, "huge", cpu=64)
    submit(state, "late", scheduling_timeout_seconds=1)
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(), NOW + 2_000,
                                           bounded=True)
    assert [t.task_id for t, _ in tx.assignments] == ["a/task-0", "a/task-1"]
    assert [t.task_id for t in tx.timed_out_tasks] == ["late/task-0"]
    assert tx.pending_reasons["huge"] == "never fits: no worker has 64 cpus (largest: 4)"


def test_a_pass_stops_at_its_assignment_limit_and_says_so(state: ControllerState) -> None:
    """A fleet-wide dispatch is placed in slices (``max_assignments``): each pass stops at the limit,
    in queue order, and says there may be more."""
    for w in range(3):
        add_worker(state, f"w{w}", cpu=4)
    submit(state, "wide", replicas=10)
    scheduler = Scheduler(state, max_assignments=4)
    first = scheduler.find_assignments(state.peek_pending_tasks(), state.get_available_workers(), NOW)
    assert [t.task_id for t, _ in first.assignments] == [f"wide/task-{i}" for i in range(4)] and first.capped
    for task, worker in first.assignments:
        assert state.commit_assignment(task.task_id, worker.worker_id, NOW)
    rest = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(), NOW)
    assert [t.task_id for t, _ in rest.assignments] == [f"wide/task-{i}" for i in range(4, 10)] and not rest.capped
