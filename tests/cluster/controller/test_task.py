"""Task state machine: transitions, retry budgets, attempt records (seed criteria 2, 9; DESIGN §4.3)."""

from __future__ import annotations

import pytest

from iris.cluster.controller.task import InvalidTransition, Task, TaskTransitionResult
from iris.cluster.types import JobId, TaskId, WorkerId
from iris.rpc import cluster_pb2

T = cluster_pb2


def make_task(**kwargs: int) -> Task:
    return Task(task_id=TaskId("j/task-0"), job_id=JobId("j"), task_index=0, submitted_at_ms=100, **kwargs)


def running(task: Task, worker: str = "w1", now_ms: int = 200) -> Task:
    task.mark_dispatched(WorkerId(worker), now_ms)
    return task


def test_task_dispatch_then_success_records_one_succeeded_attempt() -> None:
    task = running(make_task())
    assert task.state == T.TASK_STATE_RUNNING and task.worker_id == "w1" and task.started_at_ms == 200
    result = task.transition(T.TASK_STATE_SUCCEEDED, 300, exit_code=0)
    assert result is TaskTransitionResult.COMPLETE
    assert task.is_finished() and task.exit_code == 0 and task.finished_at_ms == 300
    assert [(a.attempt_id, a.state, a.worker_id, a.started_at_ms, a.finished_at_ms) for a in task.attempts] == [
        (0, T.TASK_STATE_SUCCEEDED, "w1", 200, 300)
    ]


def test_task_failure_within_budget_retries_and_records_the_real_failed_attempt() -> None:
    task = running(make_task(max_retries_failure=1))
    result = task.transition(T.TASK_STATE_FAILED, 300, error="boom", exit_code=3)
    assert result is TaskTransitionResult.SHOULD_RETRY
    assert task.state == T.TASK_STATE_PENDING and task.current_attempt_id == 1 and task.worker_id is None
    assert task.failure_count == 1 and task.preemption_count == 0
    assert task.pending_since_ms == 300
    (attempt,) = task.attempts
    # DESIGN §4.3: the attempt keeps what it really ended as, not RUNNING with no error.
    assert (attempt.state, attempt.error, attempt.exit_code, attempt.is_worker_failure) == (
        T.TASK_STATE_FAILED, "boom", 3, False,
    )


def test_task_failure_beyond_budget_ends_failed() -> None:
    task = running(make_task(max_retries_failure=1))
    task.transition(T.TASK_STATE_FAILED, 300, error="first")
    running(task, "w2", 400)
    result = task.transition(T.TASK_STATE_FAILED, 500, error="second", exit_code=1)
    assert result is TaskTransitionResult.EXCEEDED_RETRY_LIMIT
    assert task.state == T.TASK_STATE_FAILED and task.error == "second" and task.failure_count == 2
    assert [(a.attempt_id, a.worker_id, a.state) for a in task.attempts] == [
        (0, "w1", T.TASK_STATE_FAILED), (1, "w2", T.TASK_STATE_FAILED),
    ]


def test_task_worker_failure_spends_preemption_budget_not_failure_budget() -> None:
    task = running(make_task(max_retries_failure=0, max_retries_preemption=1))
    assert task.transition(T.TASK_STATE_WORKER_FAILED, 300, is_worker_failure=True) is TaskTransitionResult.SHOULD_RETRY
    assert (task.failure_count, task.preemption_count) == (0, 1)
    assert task.attempts[0].state == T.TASK_STATE_WORKER_FAILED and task.attempts[0].is_worker_failure
    running(task)
    assert task.transition(T.TASK_STATE_FAILED, 400, is_worker_failure=True) is TaskTransitionResult.EXCEEDED_RETRY_LIMIT
    assert task.state == T.TASK_STATE_WORKER_FAILED


def test_task_explicit_zero_preemption_budget_ends_on_first_worker_failure() -> None:
    task = running(make_task(max_retries_preemption=0))
    assert task.transition(T.TASK_STATE_WORKER_FAILED, 300) is TaskTransitionResult.EXCEEDED_RETRY_LIMIT
    assert task.state == T.TASK_STATE_WORKER_FAILED


@pytest.mark.parametrize(
    "final", [T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_KILLED, T.TASK_STATE_WORKER_FAILED]
)
def test_task_that_has_ended_never_changes(final: int) -> None:
    task = running(make_task(max_retries_preemption=0))
    task.transition(final, 300)
    snapshot = (task.state, task.finished_at_ms, len(task.attempts), task.current_attempt_id)
    for new_state in (T.TASK_STATE_RUNNING, T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_KILLED):
        assert task.transition(new_state, 999) is TaskTransitionResult.IGNORED
    assert (task.state, task.finished_at_ms, len(task.attempts), task.current_attempt_id) == snapshot


def test_task_pending_can_be_killed_or_unschedulable_without_an_attempt_record() -> None:
    task = make_task()
    assert task.transition(T.TASK_STATE_UNSCHEDULABLE, 300) is TaskTransitionResult.COMPLETE
    assert task.state == T.TASK_STATE_UNSCHEDULABLE and task.error == "Scheduling timeout exceeded"
    assert task.attempts == []


def test_task_illegal_move_raises() -> None:
    with pytest.raises(InvalidTransition):
        make_task().transition(T.TASK_STATE_SUCCEEDED, 300)
    task = running(make_task())
    with pytest.raises(InvalidTransition):
        task.transition(T.TASK_STATE_UNSCHEDULABLE, 300)


def test_task_building_and_running_alternate_and_duplicates_are_ignored() -> None:
    task = running(make_task())
    assert task.transition(T.TASK_STATE_BUILDING, 210) is TaskTransitionResult.COMPLETE
    assert task.transition(T.TASK_STATE_RUNNING, 220) is TaskTransitionResult.COMPLETE
    assert task.transition(T.TASK_STATE_RUNNING, 230) is TaskTransitionResult.IGNORED
