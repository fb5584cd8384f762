"""The pending queue as a pass reads it (``queue.py``): runs of one job's consecutive tasks, so that
grouping the queue by job costs O(runs). A pass over the queue's runs decides exactly what a pass
over the same tasks as a plain list decides, with and without sharing, full and bounded, however
the queue was cut up by placements, retries and parking."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iris.cluster.controller.fairness import FairOrder, Owner, ShareBook
from iris.cluster.controller.queue import BandQueue, QueuedTasks
from iris.cluster.controller.scheduler import Scheduler, SchedulingTransaction
from iris.cluster.controller.state import ControllerState
from iris.cluster.types import RUNNING, TaskId, WorkerId
from iris.rpc import cluster_pb2

from .builders import NOW, add_worker, submit

PRIORITIES = ("production", "interactive", "batch")


def _decided(tx: SchedulingTransaction) -> tuple[object, ...]:
    return ([(t.task_id, w.worker_id) for t, w in tx.assignments], [t.task_id for t in tx.timed_out_tasks],
            dict(tx.pending_reasons), dict(tx.never_fit), [(p.victim.task_id, p.by.task_id) for p in tx.preemptions],
            None if tx.reservations is None else [(r.job_id, sorted(r.workers)) for r in tx.reservations])


@st.composite
def _cut_up_queues(draw: st.DrawFn) -> ControllerState:
    """A state whose queue holds several users' jobs of all bands, cut up by placements (tasks gone
    from the middle of runs) and failures that were retried (a job's tasks back at the end)."""
    state = ControllerState()
    for w in range(draw(st.integers(1, 4))):
        add_worker(state, f"w{w}", cpu=draw(st.integers(1, 8)))
    jobs = draw(st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol"]), st.integers(1, 6), st.integers(1, 3),
                                   st.booleans(), st.sampled_from(PRIORITIES)), min_size=1, max_size=6))
    for i, (owner, replicas, cpu, gang, priority) in enumerate(jobs):
        submit(state, f"{owner}:j{i}", owner=owner, replicas=replicas, cpu=cpu, coscheduled=gang and replicas > 1,
               priority=priority, max_retries_failure=3, scheduling_timeout_seconds=draw(st.sampled_from([0, 1])))
    for pick, fail in draw(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=12)):
        pending = state.peek_pending_tasks()
        if not pending:
            break
        task = pending[pick % len(pending)]
        worker = sorted(w.worker_id for w in state.list_workers())[pick % len(state.list_workers())]
        if state.commit_assignment(task.task_id, worker, NOW) and fail:
            state.transition_task(task.task_id, RUNNING, NOW)
            state.transition_task(task.task_id, cluster_pb2.TASK_STATE_FAILED, NOW)  # retried: back at the end
    return state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cut_up_queues(), st.booleans(), st.booleans())
def test_a_pass_over_the_queue_s_runs_decides_what_a_pass_over_the_tasks_does(state: ControllerState, sharing: bool,
                                                                              bounded: bool) -> None:
    now = NOW + 2_000  # past the 1 s scheduling timeouts
    runs = state.before_pass(now, bounded)
    tasks = state.peek_pending_tasks()
    assert isinstance(runs, QueuedTasks) and list(runs) == tasks and len(runs) == len(tasks)
    assert all(run.tasks for run in runs.runs)
    workers = state.get_available_workers(now)
    by_runs = Scheduler(state).find_assignments(runs, workers, now, bounded=bounded,
                                                sharing=state.fair_inputs(now) if sharing else None)
    by_list = Scheduler(state).find_assignments(tasks, workers, now, bounded=bounded,
                                                sharing=state.fair_inputs(now) if sharing else None)
    assert _decided(by_runs) == _decided(by_list)


@given(st.lists(st.tuples(st.sampled_from(["add", "extend", "remove", "park", "unpark"]), st.integers(0, 30),
                          st.integers(0, 2)), max_size=60))
def test_the_queue_keeps_band_then_arrival_order_whatever_is_added_removed_or_parked(
        ops: list[tuple[str, int, int]]) -> None:
    """Checked against a plain model: a list per band and a parked list."""

    class _T:
        def __init__(self, task_id: str, job_id: str) -> None:
            self.task_id, self.job_id = TaskId(task_id), job_id

    bands: dict[str, int] = {}
    queue = BandQueue(lambda task: bands[task.job_id])
    model: list[list[str]] = [[], [], []]
    parked: list[str] = []
    job_of: dict[str, str] = {}
    made = 0
    for op, n, band in ops:
        job = f"j{n % 4}"
        bands.setdefault(job, band)
        queued = [tid for b in model for tid in b]
        if op == "add":
            made += 1
            queue[TaskId(f"t{made}")] = _T(f"t{made}", job)  # type: ignore[assignment]
            job_of[f"t{made}"] = job
            model[bands[job]].append(f"t{made}")
        elif op == "extend":
            new = [_T(f"t{made + k + 1}", job) for k in range(n % 3 + 1)]
            made += len(new)
            job_of.update((t.task_id, job) for t in new)
            queue.extend(new, bands[job])  # type: ignore[arg-type]
            model[bands[job]].extend(t.task_id for t in new)
        elif op == "remove" and queued + parked:
            victim = (queued + parked)[n % len(queued + parked)]
            del queue[TaskId(victim)]
            for b in (*model, parked):
                if victim in b:
                    b.remove(victim)
        elif op == "park" and queued:
            victim = queued[n % len(queued)]
            queue.park([TaskId(victim)])
            next(b for b in model if victim in b).remove(victim)
            parked.append(victim)
        elif op == "unpark" and parked:
            back = parked.pop(n % len(parked))
            queue.unpark([TaskId(back)])
            model[bands[job_of[back]]].append(back)
        queued = [tid for b in model for tid in b]
        assert list(queue) == queued + parked and len(queue) == len(queued) + len(parked)
        assert [t.task_id for t in queue.values()] == queued == [t.task_id for t in queue.runs()]
        assert [t.task_id for t in queue.parked()] == parked
        runs = queue.runs().runs
        assert all(run.tasks for run in runs)
        assert all(t.job_id == run.job_id for run in runs for t in run.tasks.values())
        tail = set(queued[len(queued) // 2:])
        want: list[str] = []
        for b in model:
            k = len(b)
            while k and b[k - 1] in tail:
                k -= 1
            want.extend(b[k:])
        assert queue.tails(tail) == want  # type: ignore[arg-type]


def test_a_20000_task_job_is_one_run_and_a_bounded_pass_takes_its_first_tasks() -> None:
    state = ControllerState()
    add_worker(state, "w1", cpu=3)
    submit(state, "huge", replicas=20_000)
    queued = state.before_pass(NOW, True)
    assert len(queued.runs) == 1 and len(queued) == 20_000
    order = iter(FairOrder(queued, lambda job_id: None, None))
    assert [next(order)[0].task_id for _ in range(3)] == ["huge/task-0", "huge/task-1", "huge/task-2"]
    tx = Scheduler(state).find_assignments(state.before_pass(NOW, True), state.get_available_workers(NOW), NOW,
                                           bounded=True)
    assert [(t.task_id, w.worker_id) for t, w in tx.assignments] == [
        ("huge/task-0", "w1"), ("huge/task-1", "w1"), ("huge/task-2", "w1")]


def test_a_job_s_tasks_that_became_neighbours_again_are_read_as_one_run() -> None:
    """``a``'s retried task went to the end behind ``b``; once ``b`` is placed, ``a``'s two runs are
    neighbours, and a pass reads them as one (its ``gang()`` is both tasks), as over a plain list."""
    state = ControllerState()
    add_worker(state, "w1", cpu=8)
    submit(state, "a", owner="alice", replicas=2, max_retries_failure=1)
    submit(state, "b", owner="alice")
    assert state.commit_assignment(TaskId("a/task-0"), WorkerId("w1"), NOW)
    state.transition_task(TaskId("a/task-0"), RUNNING, NOW)
    state.transition_task(TaskId("a/task-0"), cluster_pb2.TASK_STATE_FAILED, NOW)
    assert state.commit_assignment(TaskId("b/task-0"), WorkerId("w1"), NOW)
    queued = state.before_pass(NOW, True)
    assert [t.task_id for t in queued] == ["a/task-1", "a/task-0"] and len(queued.runs) == 2
    inputs = state.fair_inputs(NOW)
    for pending in (queued, state.peek_pending_tasks()):
        book = ShareBook(inputs.config, {"cpu": 8000.0, "memory": float(32 << 30)}, dict(inputs.team_held),
                         dict(inputs.user_held), inputs.team_usage, inputs.user_usage)
        for sharing in (book, None):
            order = FairOrder(pending, lambda job_id: Owner(2, "alice", "alice"), sharing)
            first, _ = next(iter(order))
            assert first.task_id == "a/task-1"
            assert [t.task_id for t in order.gang()] == ["a/task-1", "a/task-0"]
