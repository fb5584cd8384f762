"""Job expansion and O(1) job-state derivation (seed criteria 1, 6, 7; DESIGN §4.2, §4.4)."""

from __future__ import annotations

import pytest

from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.state import ControllerState
from iris.cluster.types import JobId
from iris.rpc import cluster_pb2

from .builders import add_worker, dispatch, make_request, submit

T = cluster_pb2


@pytest.mark.parametrize(("replicas", "expected"), [(0, 1), (1, 1), (4, 4)])
def test_expand_job_to_tasks_creates_one_task_per_replica(replicas: int, expected: int) -> None:
    job = Job(JobId("train"), make_request("train", replicas=replicas), 100)
    tasks = expand_job_to_tasks(job, 100)
    assert [t.task_id for t in tasks] == [f"train/task-{i}" for i in range(expected)]
    assert [t.task_index for t in tasks] == list(range(expected))
    assert all(t.state == T.TASK_STATE_PENDING and t.submitted_at_ms == 100 for t in tasks)


def test_job_retry_budgets_come_from_request_and_preemption_default_needs_presence() -> None:
    assert Job(JobId("a"), make_request(max_retries_failure=3), 0).max_retries_failure == 3
    assert Job(JobId("a"), make_request(), 0).max_retries_preemption == 100
    assert Job(JobId("a"), make_request(max_retries_preemption=0), 0).max_retries_preemption == 0
    tasks = expand_job_to_tasks(Job(JobId("a"), make_request(max_retries_preemption=0, replicas=2), 0), 0)
    assert [t.max_retries_preemption for t in tasks] == [0, 0]


def test_job_is_pending_until_dispatch_then_running_then_succeeded(state: ControllerState) -> None:
    add_worker(state)
    job, tasks = submit(state, replicas=2)
    assert job.state == T.JOB_STATE_PENDING and job.started_at_ms is None
    dispatch(state, tasks[0], now_ms=1_000_100)
    assert job.state == T.JOB_STATE_RUNNING and job.started_at_ms == 1_000_100  # DESIGN §4.4
    dispatch(state, tasks[1])
    state.transition_task(tasks[0].task_id, T.TASK_STATE_SUCCEEDED, 1_000_200)
    assert job.state == T.JOB_STATE_RUNNING
    state.transition_task(tasks[1].task_id, T.TASK_STATE_SUCCEEDED, 1_000_300)
    assert job.state == T.JOB_STATE_SUCCEEDED and job.finished_at_ms == 1_000_300 and job.error is None


def test_job_tolerated_failures_end_succeeded_with_failures_visible(state: ControllerState) -> None:
    """DESIGN §4.2: the seed left such a job RUNNING forever."""
    add_worker(state)
    job, tasks = submit(state, replicas=3, max_task_failures=1)
    for t in tasks:
        dispatch(state, t)
    state.transition_task(tasks[0].task_id, T.TASK_STATE_FAILED, 1, error="bad")
    assert job.state == T.JOB_STATE_RUNNING
    state.transition_task(tasks[1].task_id, T.TASK_STATE_SUCCEEDED, 2)
    state.transition_task(tasks[2].task_id, T.TASK_STATE_SUCCEEDED, 3)
    assert job.state == T.JOB_STATE_SUCCEEDED
    assert job.counts[T.TASK_STATE_FAILED] == 1


def test_job_fails_when_failures_exceed_max_task_failures_with_first_error(state: ControllerState) -> None:
    add_worker(state)
    job, tasks = submit(state, replicas=4, max_task_failures=1)
    for t in tasks:
        dispatch(state, t)
    state.transition_task(tasks[2].task_id, T.TASK_STATE_FAILED, 1, error="first error")
    assert job.state == T.JOB_STATE_RUNNING
    state.transition_task(tasks[0].task_id, T.TASK_STATE_FAILED, 2, error="second error")
    assert job.state == T.JOB_STATE_FAILED
    assert job.error is not None and "task 2" in job.error and "first error" in job.error


def test_job_preemptions_do_not_count_toward_max_task_failures(state: ControllerState) -> None:
    add_worker(state)
    job, tasks = submit(state, replicas=2, max_task_failures=0)
    for t in tasks:
        dispatch(state, t)
    state.transition_task(tasks[0].task_id, T.TASK_STATE_WORKER_FAILED, 1, is_worker_failure=True)
    assert job.state == T.JOB_STATE_RUNNING and tasks[0].state == T.TASK_STATE_PENDING


def test_job_fails_when_a_task_ends_worker_failed(state: ControllerState) -> None:
    """DESIGN §4.2: a task out of preemption budget can never complete, so the job fails."""
    add_worker(state)
    job, tasks = submit(state, replicas=2, max_task_failures=5, max_retries_preemption=0)
    for t in tasks:
        dispatch(state, t)
    state.transition_task(tasks[0].task_id, T.TASK_STATE_WORKER_FAILED, 1, is_worker_failure=True)
    assert job.state == T.JOB_STATE_FAILED
    assert tasks[1].state == T.TASK_STATE_KILLED


def test_job_counts_are_updated_per_transition(state: ControllerState) -> None:
    add_worker(state)
    job, tasks = submit(state, replicas=3)
    assert job.counts[T.TASK_STATE_PENDING] == 3 and job.num_tasks == 3
    dispatch(state, tasks[0])
    assert job.counts[T.TASK_STATE_PENDING] == 2 and job.counts[T.TASK_STATE_RUNNING] == 1


def test_success_workers_are_the_two_smallest_ids_whatever_the_order() -> None:
    for order in (["w3", "w1", "w2", "w1"], ["w1", "w2", "w3"], ["w2", "w3", "w1"]):
        job = Job(JobId("a"), make_request(), 0)
        assert not job.succeeded_elsewhere("w1")
        for worker in order:
            job.note_success(worker)
        assert job.success_workers == ("w1", "w2")
        assert job.succeeded_elsewhere("w1") and job.succeeded_elsewhere("w9")
    only = Job(JobId("b"), make_request(), 0)
    only.note_success("w5")
    assert only.success_workers == ("w5",)
    assert not only.succeeded_elsewhere("w5") and only.succeeded_elsewhere("w1")


def test_an_ended_job_keeps_what_views_read_and_derives_its_requirements_again(state: ControllerState) -> None:
    add_worker(state)
    job, tasks = submit(state, replicas=1)
    before = job.requirements
    dispatch(state, tasks[0])
    state.transition_task(tasks[0].task_id, T.TASK_STATE_SUCCEEDED, now_ms=2_000_000)
    assert job.state == T.JOB_STATE_SUCCEEDED
    after = job.requirements
    assert after == before and after is not before  # rebuilt on demand, not held by an ended job
    assert (job.cpu, job.memory_bytes, job.device_kind) == (before.cpu, before.memory_bytes, before.device_kind)
    assert job.time_ms["useful"] > 0 and job.charges == {"failure": 0, "preemption": 0}


def test_jobs_of_one_shape_and_command_share_their_frozen_parts() -> None:
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["python", "train.py"])).SerializeToString()
    first_request, second_request = make_request("a"), make_request("b")
    first_request.serialized_entrypoint = second_request.serialized_entrypoint = entry
    first, second = Job(JobId("a"), first_request, 0), Job(JobId("b"), second_request, 0)
    assert first.spec.entrypoint.argv == ("python", "train.py")
    assert first.spec.resources is second.spec.resources and first.shape is second.shape
    assert first.spec.entrypoint is second.spec.entrypoint
    assert first.spec.env is second.spec.env and dict(first.spec.env) == {}
