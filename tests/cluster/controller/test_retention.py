"""Deletion, name reuse and retention in the pure core: job incarnations (uids), bundle
references, the ended-jobs index (``ControllerState.prunable_jobs``)."""

from __future__ import annotations

from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.state import ControllerState, ObservedAttempt
from iris.cluster.spec import Entrypoint, JobSpec
from iris.cluster.types import JobId, TaskId, WorkerId
from iris.rpc import cluster_pb2

from .builders import NOW, add_worker, dispatch, submit

T = cluster_pb2
W1 = WorkerId("w1")


def finish(state: ControllerState, task_id: TaskId, now_ms: int = NOW, uid: str = "") -> None:
    assert state.apply_report(W1, task_id, 0, T.TASK_STATE_SUCCEEDED, now_ms, job_uid=uid)


def test_a_late_report_of_a_deleted_job_never_moves_the_job_reusing_its_name() -> None:
    state = ControllerState()
    add_worker(state, "w1")
    _, [old] = submit(state, "train", uid="a" * 16)
    dispatch(state, old)
    finish(state, old.task_id, uid="a" * 16)
    assert state.delete_job(JobId("train")) == ["train"]
    _, [new] = submit(state, "train", uid="b" * 16)
    dispatch(state, new)
    # The deleted incarnation's attempt 0 reports again (a partitioned worker's outbox): ignored.
    assert not state.apply_report(W1, new.task_id, 0, T.TASK_STATE_SUCCEEDED, NOW, job_uid="a" * 16)
    assert state.get_task(new.task_id).state == T.TASK_STATE_RUNNING  # type: ignore[union-attr]
    # In an observed set it is an attempt the controller does not expect: killed, and the new
    # attempt (which the set lacks) is a worker failure, never the old one's success.
    result = state.reconcile_worker(W1, [ObservedAttempt(new.task_id, 0, T.TASK_STATE_RUNNING, job_uid="a" * 16)],
                                    "inc", 0, NOW)
    assert [a.job_uid for a in result.kill] == ["a" * 16]
    state.check_invariants()


def test_a_bundle_is_released_only_when_its_last_job_is_deleted() -> None:
    state = ControllerState()
    add_worker(state, "w1")
    bundle = "f" * 64
    jobs = []
    for i in range(2):
        job = Job(JobId(f"j{i}"), JobSpec(name=f"j{i}", entrypoint=Entrypoint(argv=("true",)), bundle_hash=bundle), NOW)
        tasks = expand_job_to_tasks(job, NOW)
        state.add_job(job, tasks)
        assert state.delete_job(job.job_id) == []  # not ended: refused
        jobs.append((job, tasks))
    for _, [task] in jobs:
        dispatch(state, task)
        finish(state, task.task_id)
    state.drain_effects()
    state.delete_job(JobId("j0"))
    assert state.drain_effects().deleted_bundles == [] and state.bundle_in_use(bundle)
    state.delete_job(JobId("j1"))
    assert state.drain_effects().deleted_bundles == [bundle] and not state.bundle_in_use(bundle)


def test_prunable_jobs_are_the_oldest_ended_beyond_the_cap_or_past_the_ttl() -> None:
    state = ControllerState()
    add_worker(state, "w1")
    for i in range(6):
        _, [task] = submit(state, f"j{i}", now_ms=NOW + i)
        dispatch(state, task, now_ms=NOW + i)
        finish(state, task.task_id, now_ms=NOW + 1000 * i)
    submit(state, "running")  # not ended: never pruned
    assert state.prunable_jobs(NOW + 5000, ttl_ms=0, max_finished=4) == ["j0", "j1"]
    assert state.prunable_jobs(NOW + 10_500, ttl_ms=7000, max_finished=0) == ["j0", "j1", "j2", "j3"]
    assert state.prunable_jobs(NOW + 5000, ttl_ms=0, max_finished=0) == []
    state.delete_job(JobId("j0"))
    assert state.finished_root_count() == 5
    state.check_invariants()
