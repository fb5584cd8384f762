"""ControllerState: tracking, dispatch, reports, failure domains, release everywhere, endpoints,
workers and reconcile (seed criteria 2, 5, 8, 9, 10, 11; DESIGN §3, §4.4)."""

from __future__ import annotations

from iris.cluster.controller.state import (
    ControllerEndpoint,
    ControllerState,
    KillInstruction,
    ObservedAttempt,
)
from iris.cluster.controller.task import TaskTransitionResult
from iris.cluster.types import JobId, TaskId, WorkerId
from iris.rpc import cluster_pb2

from .builders import NOW, add_worker, dispatch, submit

T = cluster_pb2


def endpoint(name: str, job_id: str = "job", attempt_id: int = 0, eid: str | None = None) -> ControllerEndpoint:
    return ControllerEndpoint(eid or f"ep-{name}", name, "127.0.0.1:1234", JobId(job_id), attempt_id=attempt_id)


def test_add_job_tracks_each_task_and_queues_them_in_order(state: ControllerState) -> None:
    job, tasks = submit(state, replicas=3)
    assert state.get_job(job.job_id) is job
    assert state.get_task(TaskId("job/task-1")) is tasks[1]
    assert state.get_job_tasks(job.job_id) == tasks
    assert [t.task_id for t in state.peek_pending_tasks()] == [t.task_id for t in tasks]


def test_seed_dispatch_sequence_leaves_task_running_on_worker_out_of_queue(state: ControllerState) -> None:
    worker = add_worker(state)
    _, (task,) = submit(state, cpu=2, memory="4GiB")
    task.mark_dispatched(worker.worker_id, NOW + 5)
    assert state.assign_task_to_worker(worker.worker_id, task.task_id)
    assert task.state == T.TASK_STATE_RUNNING and task.worker_id == worker.worker_id
    assert task.task_id in worker.running_tasks
    assert state.peek_pending_tasks() == []
    assert state.get_committed_resources(worker) == (2, 4 * 1024**3, 0)


def test_assign_refuses_unknown_worker_and_double_assignment(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state)
    assert not state.assign_task_to_worker(WorkerId("nope"), task.task_id)
    assert state.assign_task_to_worker(WorkerId("w1"), task.task_id, NOW)
    assert not state.assign_task_to_worker(WorkerId("w1"), task.task_id, NOW)


def test_committed_resources_follow_running_tasks_and_are_released_on_end(state: ControllerState) -> None:
    worker = add_worker(state)
    _, tasks = submit(state, replicas=3, cpu=2, memory="1GiB")
    for t in tasks:
        dispatch(state, t)
    assert state.get_committed_resources(worker) == (6, 3 * 1024**3, 0)
    state.transition_task(tasks[0].task_id, T.TASK_STATE_SUCCEEDED, NOW)
    assert state.get_committed_resources(worker) == (4, 2 * 1024**3, 0)
    assert worker.running_tasks == {tasks[1].task_id, tasks[2].task_id}


def test_retry_requeues_task_at_the_back_and_releases_worker(state: ControllerState) -> None:
    worker = add_worker(state)
    _, tasks = submit(state, replicas=2, max_retries_failure=1)
    dispatch(state, tasks[0])
    result, _ = state.transition_task(tasks[0].task_id, T.TASK_STATE_FAILED, NOW + 10, error="x")
    assert result is TaskTransitionResult.SHOULD_RETRY
    assert [t.task_id for t in state.peek_pending_tasks()] == [tasks[1].task_id, tasks[0].task_id]
    assert worker.running_tasks == set() and state.get_committed_resources(worker) == (0, 0, 0)
    effects = state.drain_effects()
    assert effects.kills == []  # the worker reported the failure: nothing left to kill


def test_report_for_stale_attempt_or_ended_task_is_ignored(state: ControllerState) -> None:
    add_worker(state)
    add_worker(state, "w2")
    _, (task,) = submit(state, max_retries_failure=1)
    dispatch(state, task, "w1")
    assert state.apply_report(WorkerId("w1"), task.task_id, 0, T.TASK_STATE_FAILED, NOW, error="x")
    dispatch(state, task, "w2")
    # A late report of attempt 0 must not touch attempt 1.
    assert not state.apply_report(WorkerId("w1"), task.task_id, 0, T.TASK_STATE_SUCCEEDED, NOW)
    assert task.state == T.TASK_STATE_RUNNING and task.current_attempt_id == 1
    assert state.apply_report(WorkerId("w2"), task.task_id, 1, T.TASK_STATE_SUCCEEDED, NOW)
    # Duplicate of a terminal report: idempotent.
    assert not state.apply_report(WorkerId("w2"), task.task_id, 1, T.TASK_STATE_FAILED, NOW)
    assert task.state == T.TASK_STATE_SUCCEEDED and len(task.attempts) == 2


def test_report_from_wrong_worker_is_ignored(state: ControllerState) -> None:
    add_worker(state)
    add_worker(state, "w2")
    _, (task,) = submit(state)
    dispatch(state, task, "w1")
    assert not state.apply_report(WorkerId("w2"), task.task_id, 0, T.TASK_STATE_SUCCEEDED, NOW)
    assert task.state == T.TASK_STATE_RUNNING


def test_worker_killed_report_is_a_preemption(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state)
    dispatch(state, task)
    assert state.apply_report(WorkerId("w1"), task.task_id, 0, T.TASK_STATE_KILLED, NOW)
    assert task.state == T.TASK_STATE_PENDING and task.preemption_count == 1 and task.failure_count == 0
    assert state.get_available_workers() == []  # a worker stopping its own tasks is leaving


def test_failure_domain_kills_running_and_pending_siblings_everywhere(state: ControllerState) -> None:
    w1 = add_worker(state, "w1", cpu=2)
    add_worker(state, "w2", cpu=2)
    job, tasks = submit(state, replicas=5)
    dispatch(state, tasks[0], "w1")
    dispatch(state, tasks[1], "w1")
    dispatch(state, tasks[2], "w2")
    assert state.add_endpoint(endpoint("svc-1", eid="e1"), tasks[1].task_id)
    state.drain_effects()
    state.transition_task(tasks[0].task_id, T.TASK_STATE_FAILED, NOW + 1, error="crash")
    assert job.state == T.JOB_STATE_FAILED
    assert [t.state for t in tasks] == [T.TASK_STATE_FAILED] + [T.TASK_STATE_KILLED] * 4
    effects = state.drain_effects()
    assert sorted(effects.kills, key=lambda k: k.task_id) == [
        KillInstruction(WorkerId("w1"), tasks[1].task_id, 0),
        KillInstruction(WorkerId("w2"), tasks[2].task_id, 0),
    ]
    assert [e.endpoint_id for e in effects.removed_endpoints] == ["e1"]
    assert state.peek_pending_tasks() == [] and w1.running_tasks == set()
    assert state.list_endpoints() == []


def test_unschedulable_task_ends_the_job_and_kills_the_rest(state: ControllerState) -> None:
    """DESIGN §4.4: the seed let the other tasks run on."""
    add_worker(state)
    job, tasks = submit(state, replicas=2)
    dispatch(state, tasks[0])
    state.transition_task(tasks[1].task_id, T.TASK_STATE_UNSCHEDULABLE, NOW + 1)
    assert job.state == T.JOB_STATE_UNSCHEDULABLE
    assert tasks[0].state == T.TASK_STATE_KILLED
    assert state.drain_effects().kills == [KillInstruction(WorkerId("w1"), tasks[0].task_id, 0)]


def test_terminate_job_kills_tasks_and_children_and_is_idempotent(state: ControllerState) -> None:
    add_worker(state)
    parent, ptasks = submit(state, "parent", replicas=2)
    child, ctasks = submit(state, "child", parent_job_id="parent")
    dispatch(state, ptasks[0])
    dispatch(state, ctasks[0])
    state.drain_effects()
    assert state.terminate_job(parent.job_id, NOW + 1)
    assert parent.state == T.JOB_STATE_KILLED and child.state == T.JOB_STATE_KILLED
    assert child.job_id == "parent/child"
    kills = {k.task_id for k in state.drain_effects().kills}
    assert kills == {ptasks[0].task_id, ctasks[0].task_id}
    assert not state.terminate_job(parent.job_id, NOW + 2)


def test_children_die_when_parent_succeeds(state: ControllerState) -> None:
    add_worker(state)
    parent, (ptask,) = submit(state, "parent")
    child, _ = submit(state, "child", parent_job_id="parent")
    dispatch(state, ptask)
    state.transition_task(ptask.task_id, T.TASK_STATE_SUCCEEDED, NOW)
    assert parent.state == T.JOB_STATE_SUCCEEDED and child.state == T.JOB_STATE_KILLED


def test_endpoints_removed_when_attempt_ends_or_retries(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state, max_retries_failure=1)
    dispatch(state, task)
    assert state.add_endpoint(endpoint("svc/a", eid="e1"), task.task_id)
    assert [e.endpoint_id for e in state.lookup_endpoints("svc/a")] == ["e1"]
    assert [e.name for e in state.list_endpoints("svc/")] == ["svc/a"]
    _, removed = state.transition_task(task.task_id, T.TASK_STATE_FAILED, NOW)
    assert [e.endpoint_id for e in removed] == ["e1"]
    assert state.lookup_endpoints("svc/a") == []


def test_endpoint_refused_for_task_not_running_or_stale_attempt(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state)
    assert not state.add_endpoint(endpoint("a"), task.task_id)  # still pending
    dispatch(state, task)
    assert not state.add_endpoint(endpoint("a", attempt_id=7), task.task_id)
    assert state.add_endpoint(endpoint("a"), task.task_id)
    assert state.remove_endpoint("ep-a") is not None
    assert state.list_endpoints() == []


def test_dead_worker_tasks_become_preemptions_and_are_retried(state: ControllerState) -> None:
    add_worker(state, "w1", now_ms=NOW)
    add_worker(state, "w2", now_ms=NOW + 9_000)
    _, (task,) = submit(state)
    dispatch(state, task, "w1")
    assert state.find_dead_workers(NOW + 10_001, 10_000) == ["w1"]
    assert state.mark_worker_dead(WorkerId("w1"), NOW + 10_001) == [task.task_id]
    assert task.state == T.TASK_STATE_PENDING
    assert (task.preemption_count, task.failure_count) == (1, 0)
    assert task.attempts[0].state == T.TASK_STATE_WORKER_FAILED
    assert state.drain_effects().kills == []  # the worker is gone; reconcile handles its return
    assert [w.worker_id for w in state.get_available_workers()] == ["w2"]
    assert not state.heartbeat(WorkerId("w1"), NOW + 10_002)  # must re-register


def test_dispatch_not_accepted_is_a_worker_failure_with_kill(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state)
    assert state.commit_assignment(task.task_id, WorkerId("w1"), NOW)
    state.drain_effects()
    assert state.dispatch_failed(task.task_id, 0, NOW + 1, "RunTask: UNAVAILABLE") is TaskTransitionResult.SHOULD_RETRY
    assert task.preemption_count == 1 and task.current_attempt_id == 1
    assert state.drain_effects().kills == [KillInstruction(WorkerId("w1"), task.task_id, 0)]
    # A late outcome for the old attempt changes nothing.
    assert state.dispatch_failed(task.task_id, 0, NOW + 2, "late") is TaskTransitionResult.IGNORED


def test_commit_assignment_rechecks_fit(state: ControllerState) -> None:
    add_worker(state, cpu=1)
    _, tasks = submit(state, replicas=2, cpu=1)
    assert state.commit_assignment(tasks[0].task_id, WorkerId("w1"), NOW)
    assert not state.commit_assignment(tasks[1].task_id, WorkerId("w1"), NOW)
    assert tasks[1].state == T.TASK_STATE_PENDING


def test_reconcile_applies_observed_states_and_kills_unexpected_attempts(state: ControllerState) -> None:
    add_worker(state)
    _, tasks = submit(state, replicas=2)
    for t in tasks:
        state.commit_assignment(t.task_id, WorkerId("w1"), NOW)
        state.ack_dispatch(t.task_id, 0, "inc-1", 1)
    observed = [
        ObservedAttempt(tasks[0].task_id, 0, T.TASK_STATE_SUCCEEDED, exit_code=0),
        ObservedAttempt(tasks[1].task_id, 0, T.TASK_STATE_RUNNING),
        ObservedAttempt(TaskId("ghost/task-0"), 0, T.TASK_STATE_RUNNING),
        ObservedAttempt(tasks[1].task_id, 5, T.TASK_STATE_RUNNING),
    ]
    result = state.reconcile_worker(WorkerId("w1"), observed, "inc-1", 2, NOW + 5)
    assert result.missing == []
    assert [(a.task_id, a.attempt_id) for a in result.kill] == [("ghost/task-0", 0), (tasks[1].task_id, 5)]
    assert tasks[0].state == T.TASK_STATE_SUCCEEDED  # a finished task whose report was lost is not retried
    assert tasks[1].state == T.TASK_STATE_RUNNING


def test_reconcile_missing_attempt_is_worker_failure_unless_in_flight_or_newer(state: ControllerState) -> None:
    add_worker(state)
    _, tasks = submit(state, replicas=3)
    for t in tasks:
        state.commit_assignment(t.task_id, WorkerId("w1"), NOW)
    state.ack_dispatch(tasks[0].task_id, 0, "inc-1", 1)  # accepted before the snapshot: lost
    state.ack_dispatch(tasks[1].task_id, 0, "inc-1", 3)  # accepted after the snapshot
    # tasks[2]: RunTask still in flight
    result = state.reconcile_worker(WorkerId("w1"), [], "inc-1", 2, NOW + 5)
    assert result.missing == [tasks[0].task_id]
    assert tasks[0].state == T.TASK_STATE_PENDING and tasks[0].preemption_count == 1
    assert tasks[1].state == T.TASK_STATE_RUNNING and tasks[2].state == T.TASK_STATE_RUNNING
    # A restarted worker (new incarnation) has lost everything it had accepted.
    state.ack_dispatch(tasks[2].task_id, 0, "inc-1", 4)
    result = state.reconcile_worker(WorkerId("w1"), [], "inc-2", 0, NOW + 6)
    assert sorted(result.missing) == [tasks[1].task_id, tasks[2].task_id]


def test_effects_mark_dirty_rows_and_action_log_is_bounded(state: ControllerState) -> None:
    add_worker(state)
    job, (task,) = submit(state)
    dispatch(state, task)
    effects = state.drain_effects()
    assert job.job_id in effects.dirty_jobs and task.task_id in effects.dirty_tasks
    assert "w1" in effects.dirty_workers
    assert any(a.action == "job_submitted" for a in effects.actions)
    assert state.drain_effects().is_empty()
    for i in range(1500):
        state.log_action("x", now_ms=i)
    assert len(state.recent_actions(limit=5000)) == 1000


def test_repeated_dispatch_failures_declare_the_worker_dead(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state)
    for attempt in range(3):
        assert state.commit_assignment(task.task_id, WorkerId("w1"), NOW)
        state.dispatch_failed(task.task_id, attempt, NOW, "UNAVAILABLE")
    # Without this the retried task would go straight back to the same worker, burning its budget.
    assert state.get_available_workers() == [] and task.preemption_count == 3


def test_dispatch_refused_by_departing_worker_declares_it_dead_at_once(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state)
    assert state.commit_assignment(task.task_id, WorkerId("w1"), NOW)
    state.dispatch_failed(task.task_id, 0, NOW, "shutting down", worker_gone=True)
    assert state.get_available_workers() == [] and task.state == T.TASK_STATE_PENDING
