"""A Hypothesis stateful test of the pure core: random submissions, scheduling passes, dispatch
outcomes, reports, reconciles, worker deaths, kills and deletions, with every invariant checked
after every step (``ControllerState.check_invariants`` plus the rules of DESIGN §3 below)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iris.cluster.controller.scheduler import Scheduler
from iris.cluster.controller.state import ControllerState, ObservedAttempt
from iris.cluster.controller.task import Task
from iris.cluster.types import JobId, TaskId, WorkerId
from iris.rpc import cluster_pb2

from .builders import NOW, add_worker, submit

T = cluster_pb2
REPORTABLE = (T.TASK_STATE_BUILDING, T.TASK_STATE_RUNNING, T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED,
              T.TASK_STATE_WORKER_FAILED, T.TASK_STATE_KILLED)


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = ControllerState()
        self.scheduler = Scheduler(self.state)
        self.now = NOW
        self.jobs = 0
        self.workers = 0
        self.ended_jobs: dict[JobId, int] = {}

    # -- helpers ------------------------------------------------------------------------------

    def active_tasks(self) -> list[Task]:
        return [t for w in self.state.list_workers() for tid in sorted(w.running_tasks)
                if (t := self.state.get_task(tid)) is not None]

    def tick(self) -> None:
        self.now += 1000
        effects = self.state.drain_effects()
        for kill in effects.kills:
            assert self.state.get_worker(kill.worker_id) is not None, "kill for an unknown worker"
            task = self.state.get_task(kill.task_id)
            # A killed attempt is never the task's live attempt on that worker any more.
            assert task is None or not (task.is_active() and task.current_attempt_id == kill.attempt_id
                                        and task.worker_id == kill.worker_id)

    # -- rules --------------------------------------------------------------------------------

    @rule(replicas=st.integers(1, 4), cpu=st.integers(1, 4), coscheduled=st.booleans(),
          retries=st.integers(0, 2), preemptions=st.integers(0, 3), tolerated=st.integers(0, 2),
          timeout=st.sampled_from([0, 0, 3]),
          on_exit=st.lists(st.sampled_from(["1=preemption", "2=fail-job", "3=failure"]), unique=True, max_size=2),
          backoff=st.sampled_from([0, 0, 2]), attempt_timeout=st.sampled_from([0, 0, 2]),
          similar=st.sampled_from([0, 0, 2]))
    def submit_job(self, replicas: int, cpu: int, coscheduled: bool, retries: int, preemptions: int,
                   tolerated: int, timeout: int, on_exit: list[str], backoff: int, attempt_timeout: int,
                   similar: int) -> None:
        self.jobs += 1
        submit(self.state, f"j{self.jobs}", self.now, replicas=replicas, cpu=cpu, coscheduled=coscheduled,
               max_retries_failure=retries, max_retries_preemption=preemptions, max_task_failures=tolerated,
               scheduling_timeout_seconds=timeout, on_exit=tuple(on_exit), retry_backoff_seconds=backoff,
               timeout_seconds=attempt_timeout, max_similar_failures=similar)
        self.tick()

    @rule()
    def expire_timeouts(self) -> None:
        for task_id in self.state.expire_timeouts(self.now):
            task = self.state.get_task(task_id)
            assert task is not None and not task.is_active(), "a timed-out attempt ended (retried or FAILED)"
        self.tick()

    @precondition(lambda self: self.workers > 0)
    @rule(data=st.data(), release=st.booleans())
    def drain_or_release(self, data: st.DataObject, release: bool) -> None:
        worker_id = WorkerId(f"w{data.draw(st.integers(1, self.workers))}")
        if self.state.get_worker(worker_id) is None:
            return
        if release:
            self.state.release_worker(worker_id, self.now)
        else:
            self.state.drain_worker(worker_id, self.now)
            worker = self.state.get_worker(worker_id)
            assert worker is not None and not worker.running_tasks
        self.tick()

    @rule(cpu=st.integers(1, 8))
    def add_worker(self, cpu: int) -> None:
        self.workers += 1
        add_worker(self.state, f"w{self.workers}", self.now, cpu=cpu)
        self.tick()

    @rule()
    def schedule(self) -> None:
        tx = self.scheduler.find_assignments(self.state.peek_pending_tasks(), self.state.get_available_workers(),
                                             self.now)
        for task in tx.timed_out_tasks:
            self.state.transition_task(task.task_id, T.TASK_STATE_UNSCHEDULABLE, self.now)
        for task, worker in tx.assignments:
            self.state.commit_assignment(task.task_id, worker.worker_id, self.now)
        self.tick()

    @precondition(lambda self: bool(self.active_tasks()))
    @rule(data=st.data(), state=st.sampled_from(REPORTABLE), stale=st.booleans())
    def report(self, data: st.DataObject, state: int, stale: bool) -> None:
        task = data.draw(st.sampled_from(self.active_tasks()))
        attempt = task.current_attempt_id - 1 if stale else task.current_attempt_id
        before = (task.state, task.current_attempt_id)
        assert task.worker_id is not None
        changed = self.state.apply_report(task.worker_id, task.task_id, attempt, state, self.now,
                                          exit_code=1 if state == T.TASK_STATE_FAILED else 0, error="x")
        if stale:
            assert not changed and (task.state, task.current_attempt_id) == before
        self.tick()

    @precondition(lambda self: bool(self.active_tasks()))
    @rule(data=st.data(), outcome=st.sampled_from(["ack", "refused", "failed", "gone"]))
    def dispatch_outcome(self, data: st.DataObject, outcome: str) -> None:
        task = data.draw(st.sampled_from(self.active_tasks()))
        failures, preemptions = task.failure_count, task.preemption_count
        if outcome == "ack":
            self.state.ack_dispatch(task.task_id, task.current_attempt_id, "inc", 1)
        elif outcome == "refused":
            self.state.dispatch_refused(task.task_id, task.current_attempt_id, self.now, "refused")
            assert task.failure_count == failures + 1 and task.preemption_count == preemptions
        else:
            self.state.dispatch_failed(task.task_id, task.current_attempt_id, self.now, "unreachable",
                                       worker_gone=outcome == "gone")
            assert task.preemption_count == preemptions + 1 and task.failure_count == failures
        self.tick()

    @precondition(lambda self: self.workers > 0)
    @rule(data=st.data())
    def reconcile(self, data: st.DataObject) -> None:
        worker_id = WorkerId(f"w{data.draw(st.integers(1, self.workers))}")
        worker = self.state.get_worker(worker_id)
        if worker is None:
            return
        held = sorted(worker.running_tasks)
        kept = data.draw(st.lists(st.sampled_from(held), unique=True)) if held else []
        observed = [ObservedAttempt(tid, self.state.get_task(tid).current_attempt_id, T.TASK_STATE_RUNNING)  # type: ignore[union-attr]
                    for tid in kept]
        observed.append(ObservedAttempt(TaskId("ghost/task-0"), 0, T.TASK_STATE_RUNNING))
        result = self.state.reconcile_worker(worker_id, observed, "inc", 0, self.now)
        assert TaskId("ghost/task-0") in {a.task_id for a in result.kill}
        self.tick()

    @precondition(lambda self: self.workers > 0)
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 3)):  # rarer than the rest, so attempts get to run
            return
        worker_id = WorkerId(f"w{data.draw(st.integers(1, self.workers))}")
        self.state.mark_worker_dead(worker_id, self.now)
        worker = self.state.get_worker(worker_id)
        assert worker is None or (not worker.healthy and not worker.running_tasks)  # None: forgotten
        self.tick()

    @precondition(lambda self: self.workers > 0)
    @rule(data=st.data())
    def forget_worker(self, data: st.DataObject) -> None:
        """A provisioned worker's allocation ended for good: only a dead, empty worker goes."""
        worker_id = WorkerId(f"w{data.draw(st.integers(1, self.workers))}")
        before = self.state.get_worker(worker_id)
        removable = before is not None and not before.healthy and not before.running_tasks
        assert self.state.remove_worker(worker_id) == removable
        assert (self.state.get_worker(worker_id) is None) == (removable or before is None)
        self.tick()

    @precondition(lambda self: self.jobs > 0)
    @rule(data=st.data())
    def terminate(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 2)):
            return
        job_id = JobId(f"j{data.draw(st.integers(1, self.jobs))}")
        self.state.terminate_job(job_id, self.now)
        self.tick()

    @precondition(lambda self: self.jobs > 0)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        job_id = JobId(f"j{data.draw(st.integers(1, self.jobs))}")
        job = self.state.get_job(job_id)
        removed = self.state.delete_job(job_id)
        if job is not None and job.is_finished():
            assert removed == [job_id] and self.state.get_job(job_id) is None
            assert self.state.get_job_tasks(job_id) == []
        else:
            assert removed == []
        effects = self.state.drain_effects()
        assert effects.deleted_jobs == removed

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.state.check_invariants()

    @invariant()
    def ended_jobs_never_change_and_budgets_hold(self) -> None:
        for job in self.state.list_jobs():
            if job.is_finished():
                previous = self.ended_jobs.setdefault(job.job_id, job.state)
                assert previous == job.state, f"job {job.job_id} changed after it ended"
            for task in self.state.get_job_tasks(job.job_id):
                assert task.failure_count <= task.max_retries_failure + 1
                assert task.preemption_count <= task.max_retries_preemption + 1
                assert [a.attempt_id for a in task.attempts] == sorted({a.attempt_id for a in task.attempts})
                if job.is_finished():
                    assert task.is_finished()

    @invariant()
    def list_pages_cover_every_job_once(self) -> None:
        seen: list[JobId] = []
        after = 0
        while True:
            page = self.state.jobs_after(after, 2)
            if not page:
                break
            seen.extend(j.job_id for j in page)
            after = page[-1].submit_seq
        assert seen == [j.job_id for j in self.state.list_jobs()]


CoreMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("IRIS_HYPOTHESIS_EXAMPLES", "100")), stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_core_state_machine = CoreMachine.TestCase
