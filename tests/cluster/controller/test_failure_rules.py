"""Failure intelligence in the pure core (DESIGN §4): exit-code rules, gang restart, retry
backoff, resources held by stopping attempts, timeouts, correlated-failure fail-fast, worker
quarantine, drain, and time accounting. Table tests over ``now_ms``; no threads, no clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iris.cluster.controller.policies import GANG_BLAME_WINDOW_MS
from iris.cluster.controller.scheduler import Scheduler
from iris.cluster.controller.state import ControllerState
from iris.cluster.controller.task import TaskTransitionResult
from iris.cluster.failures import (
    ExitRule,
    check_exit_rules,
    failure_signature,
    last_line,
    parse_exit_rules,
    retry_delay_ms,
)
from iris.cluster.types import TaskId, WorkerId
from iris.rpc import cluster_pb2

from .builders import NOW, add_worker, dispatch, submit

T = cluster_pb2
FAILED, SUCCEEDED, RUNNING = T.TASK_STATE_FAILED, T.TASK_STATE_SUCCEEDED, T.TASK_STATE_RUNNING
PENDING, KILLED, WORKER_FAILED = T.TASK_STATE_PENDING, T.TASK_STATE_KILLED, T.TASK_STATE_WORKER_FAILED


@pytest.fixture
def state() -> Iterator[ControllerState]:
    s = ControllerState()
    yield s
    s.check_invariants()


def fail(state: ControllerState, task_id: str, exit_code: int, now: int, worker: str = "w1", attempt: int = 0,
         error: str | None = None) -> None:
    assert state.apply_report(WorkerId(worker), TaskId(task_id), attempt, FAILED, now, exit_code=exit_code,
                              error=error or f"exit code {exit_code}")


# -- the rules themselves ----------------------------------------------------------------------


@pytest.mark.parametrize(("texts", "rules"), [
    (["2=fail-job"], (ExitRule(2, 2, "fail-job"),)),
    (["75,143=preemption"], (ExitRule(75, 75, "preemption"), ExitRule(143, 143, "preemption"))),
    (["3-5=failure", "137=preemption"], (ExitRule(3, 5, "failure"), ExitRule(137, 137, "preemption"))),
])
def test_exit_rules_parse_lists_and_ranges(texts: list[str], rules: tuple[ExitRule, ...]) -> None:
    assert parse_exit_rules(texts) == rules
    assert check_exit_rules(rules) == ""


@pytest.mark.parametrize(("text", "message"), [
    ("2", "expected CODES=ACTION"), ("2=explode", "action must be one of"), ("x=failure", "not an exit code"),
    ("=failure", "expected CODES=ACTION"),
])
def test_bad_exit_rules_name_the_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_exit_rules([text])


def test_rule_ranges_are_checked() -> None:
    assert "0..255" in check_exit_rules((ExitRule(5, 300, "failure"),))
    assert "success" in check_exit_rules((ExitRule(0, 0, "failure"),))


def test_retry_delay_doubles_is_capped_and_jittered_deterministically() -> None:
    d = [retry_delay_ms(10, k, "job/task-0") for k in (1, 2, 3, 4)]
    for k, delay in enumerate(d, start=1):
        assert 0.8 * 10_000 * 2 ** (k - 1) <= delay <= 10_000 * 2 ** (k - 1)
    assert retry_delay_ms(10, 1, "job/task-0") == d[0]  # same key, same delay
    assert retry_delay_ms(10, 30, "t") <= 600_000 and retry_delay_ms(0, 3, "t") == 0


def test_failure_signature_normalises_numbers_paths_and_addresses() -> None:
    a = failure_signature("Traceback...\nConnectionError: 10.0.0.7:29500 refused after 3 tries in /tmp/run-17/x.py")
    b = failure_signature("ConnectionError: 10.0.0.9:29511 refused after 5 tries in /tmp/run-4/x.py")
    assert a == b == "ConnectionError: <addr> refused after <n> tries in <path>"
    assert last_line("a\nb\n" + "x" * 5000).startswith("x") and len(last_line("x" * 5000).encode()) == 1024


# -- exit rules in the state machine --------------------------------------------------------------


def test_exit_rule_sends_code_75_to_the_preemption_budget(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state, max_retries_failure=0, max_retries_preemption=2, on_exit=("75,143=preemption",))
    dispatch(state, task, now_ms=NOW)
    fail(state, task.task_id, 75, NOW + 10)
    assert task.state == PENDING and (task.failure_count, task.preemption_count) == (0, 1)
    attempt = task.attempts[0]
    assert attempt.state == FAILED and attempt.exit_code == 75 and attempt.charged_to == "preemption"
    assert attempt.decided_by == "exit 75: --on-exit 75=preemption"


def test_exit_rule_fail_job_fails_the_job_now_whatever_max_task_failures_says(state: ControllerState) -> None:
    add_worker(state)
    job, tasks = submit(state, replicas=3, max_task_failures=5, max_retries_failure=5, on_exit=("2=fail-job",))
    for t in tasks:
        dispatch(state, t)
    fail(state, tasks[1].task_id, 2, NOW + 10)
    assert job.state == T.JOB_STATE_FAILED and "--on-exit 2=fail-job" in (job.error or "")
    assert tasks[1].state == FAILED and tasks[1].failure_count == 1
    assert tasks[0].state == KILLED and tasks[2].state == KILLED  # no more retries for anyone


def test_a_memory_kill_stays_a_failure_whatever_the_rules_say(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state, max_retries_failure=1, on_exit=("137=preemption",))
    dispatch(state, task)
    fail(state, task.task_id, 137, NOW + 1, error="killed: out of memory, the task exceeded its limit of 1 GiB")
    assert (task.failure_count, task.preemption_count) == (1, 0) and task.attempts[0].charged_to == "failure"


def test_a_death_by_signal_matches_128_plus_n(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state, max_retries_preemption=1, on_exit=("143=preemption",))
    dispatch(state, task)
    fail(state, task.task_id, -15, NOW + 1, error="killed by signal 15 (SIGTERM)")
    assert (task.failure_count, task.preemption_count) == (0, 1)
    assert task.attempts[0].decided_by == "exit 143: --on-exit 143=preemption"


def test_unmatched_codes_are_failures(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state, max_retries_failure=1, on_exit=("75=preemption",))
    dispatch(state, task)
    fail(state, task.task_id, 1, NOW + 1)
    assert (task.failure_count, task.preemption_count) == (1, 0) and task.attempts[0].decided_by == ""


# -- gang restart ---------------------------------------------------------------------------------


def test_gang_restart_stops_the_others_charges_only_the_trigger_and_holds_resources(state: ControllerState) -> None:
    state.gang_blame_window_ms = 0  # decided at the first end (the blame window is tested below)
    worker = add_worker(state, cpu=4)
    job, tasks = submit(state, replicas=4, coscheduled=True, max_retries_failure=1)
    for t in tasks:
        dispatch(state, t)
    state.drain_effects()
    fail(state, tasks[2].task_id, 1, NOW + 5_000)
    assert all(t.state == PENDING and t.current_attempt_id == 1 for t in tasks)
    assert tasks[2].failure_count == 1 and tasks[2].attempts[0].charged_to == "failure"
    for t in (tasks[0], tasks[1], tasks[3]):
        assert (t.failure_count, t.preemption_count) == (0, 0)
        assert t.attempts[0].state == KILLED and t.attempts[0].decided_by == "gang restart"
        assert t.attempts[0].charged_to == "none"
    assert job.gang_restarts == 1 and job.time_ms["gang"] == 3 * 5_000 and job.time_ms["failure"] == 5_000
    kills = {(k.task_id, k.attempt_id) for k in state.drain_effects().kills}
    assert kills == {(tasks[i].task_id, 0) for i in (0, 1, 3)}
    # The stopping attempts still hold their cpus: the gang cannot be placed on top of them.
    assert worker.committed_cpu == 3000 and not worker.running_tasks
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(NOW), NOW + 6_000)
    assert tx.assignments == [] and "coscheduled" in tx.pending_reasons[job.job_id]
    # The worker confirms each stopped attempt is gone (its KILLED reports): the gang fits again, whole.
    for i in (0, 1, 3):
        state.apply_report(worker.worker_id, tasks[i].task_id, 0, KILLED, NOW + 7_000)
    assert worker.committed_cpu == 0
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(NOW), NOW + 8_000)
    assert len(tx.assignments) == 4


# -- blame by cause (issue 26 item 4) ----------------------------------------------------------------

WINDOW = GANG_BLAME_WINDOW_MS


def gang(state: ControllerState, replicas: int = 4) -> list:  # type: ignore[type-arg]
    add_worker(state, cpu=replicas)
    _, tasks = submit(state, replicas=replicas, coscheduled=True, max_retries_failure=2)
    for t in tasks:
        dispatch(state, t)
    state.drain_effects()
    return tasks


@pytest.mark.parametrize("killed", [0, 1, 2, 3])
def test_the_rank_killed_by_a_signal_is_blamed_though_a_peer_s_end_came_first(state: ControllerState,
                                                                             killed: int) -> None:
    tasks = gang(state)
    peer = (killed + 1) % 4  # lost its connection to the killed rank: its end arrives first
    fail(state, tasks[peer].task_id, 1, NOW + 100, error="ConnectionResetError: [Errno 104] Connection reset by peer")
    fail(state, tasks[killed].task_id, -9, NOW + 150, error="killed by signal 9 (SIGKILL)")
    assert all(t.state == RUNNING for t in tasks)  # held: the decision waits for the window
    assert state.settle_gangs(NOW + 100 + WINDOW - 1) == 0
    assert state.settle_gangs(NOW + 100 + WINDOW) == 1
    assert all(t.state == PENDING and t.current_attempt_id == 1 for t in tasks)
    for t in tasks:
        attempt = t.attempts[0]
        if t is tasks[killed]:
            assert (t.failure_count, attempt.state, attempt.charged_to) == (1, FAILED, "failure")
        else:
            assert (t.failure_count, attempt.state, attempt.charged_to) == (0, KILLED, "none")
            assert attempt.decided_by == "gang restart"
            assert attempt.error == f"gang restart: started by task {killed}: killed by signal 9 (SIGKILL)"
    job = state.get_job(tasks[0].job_id)
    assert job is not None and job.gang_restart_cause == f"task {killed}: killed by signal 9 (SIGKILL)"
    # Only the ranks still running are sent kills; the two that ended hold nothing.
    assert {k.task_id for k in state.drain_effects().kills} == {
        t.task_id for i, t in enumerate(tasks) if i not in (killed, peer)}


def test_without_a_signal_death_the_first_end_received_is_blamed(state: ControllerState) -> None:
    tasks = gang(state)
    fail(state, tasks[3].task_id, 1, NOW + 100)
    fail(state, tasks[0].task_id, 2, NOW + 120)
    state.settle_gangs(NOW + 100 + WINDOW)
    assert [t.failure_count for t in tasks] == [0, 0, 0, 1]


def test_a_gang_whose_every_member_ended_is_decided_at_once(state: ControllerState) -> None:
    tasks = gang(state, replicas=2)
    fail(state, tasks[0].task_id, 1, NOW + 100)
    assert tasks[0].state == RUNNING
    fail(state, tasks[1].task_id, -11, NOW + 110)  # the last live member: no need to wait
    assert [t.failure_count for t in tasks] == [0, 1] and all(t.state == PENDING for t in tasks)


def test_the_last_running_member_ending_otherwise_decides_a_held_gang_at_once(state: ControllerState) -> None:
    tasks = gang(state, replicas=2)
    fail(state, tasks[1].task_id, -9, NOW + 100, error="killed by signal 9 (SIGKILL)")
    assert state.apply_report(WorkerId("w1"), tasks[0].task_id, 0, SUCCEEDED, NOW + 200)
    assert tasks[0].state == SUCCEEDED and tasks[1].state == PENDING and tasks[1].failure_count == 1
    assert state.settle_gangs(NOW + 100 + WINDOW) == 0  # nothing left held


def test_a_held_end_is_not_lost_by_a_heartbeat_that_no_longer_lists_it(state: ControllerState) -> None:
    from iris.cluster.controller.state import ObservedAttempt

    tasks = gang(state, replicas=2)
    fail(state, tasks[0].task_id, 1, NOW + 100)
    # Its report was acknowledged, so the worker's next set lists only the running rank.
    result = state.reconcile_worker(WorkerId("w1"), [ObservedAttempt(tasks[1].task_id, 0, RUNNING)], "inc", 9,
                                    NOW + 200)
    assert result.missing == [] and tasks[0].preemption_count == 0
    state.settle_gangs(NOW + 100 + WINDOW)
    assert (tasks[0].failure_count, tasks[0].preemption_count) == (1, 0) and tasks[1].attempts[0].state == KILLED


def test_a_worker_death_in_the_window_is_the_cause_and_nobody_is_charged_a_failure(state: ControllerState) -> None:
    tasks = gang(state, replicas=2)
    fail(state, tasks[0].task_id, 1, NOW + 100)
    state.mark_worker_dead(WorkerId("w1"), NOW + 200)
    assert state.settle_gangs(NOW + 100 + WINDOW) == 0  # decided by the death: nothing held any more
    assert [(t.failure_count, t.preemption_count) for t in tasks] in ([(0, 1), (0, 0)], [(0, 0), (0, 1)])


def test_observed_set_without_a_stopped_attempt_releases_its_resources(state: ControllerState) -> None:
    state.gang_blame_window_ms = 0  # decided at the first end (the blame window is tested below)
    worker = add_worker(state, cpu=2)
    _, tasks = submit(state, replicas=2, coscheduled=True, max_retries_failure=1)
    for t in tasks:
        dispatch(state, t)
    fail(state, tasks[0].task_id, 1, NOW + 10)
    assert worker.committed_cpu == 1000
    still = [T.WorkerTaskStatus(task_id=tasks[1].task_id, attempt_id=0, state=RUNNING)]
    from iris.cluster.controller.state import ObservedAttempt

    observed = [ObservedAttempt(TaskId(s.task_id), s.attempt_id, s.state) for s in still]
    state.reconcile_worker(worker.worker_id, observed, "inc", 0, NOW + 20)
    assert worker.committed_cpu == 1000, "still running there: still held"
    state.reconcile_worker(worker.worker_id, [], "inc", 1, NOW + 30)
    assert worker.committed_cpu == 0


def test_a_dead_worker_releases_what_its_stopping_attempts_held(state: ControllerState) -> None:
    worker = add_worker(state, cpu=2)
    job, tasks = submit(state, replicas=2)
    for t in tasks:
        dispatch(state, t)
    state.terminate_job(job.job_id, NOW + 1)
    assert worker.committed_cpu == 2000 and len(worker.stopping) == 2
    state.mark_worker_dead(worker.worker_id, NOW + 2)
    assert worker.committed_cpu == 0 and not worker.stopping


# -- backoff --------------------------------------------------------------------------------------


def test_backoff_delays_failure_retries_but_not_preemptions(state: ControllerState) -> None:
    add_worker(state)
    job, (task,) = submit(state, max_retries_failure=3, max_retries_preemption=3, retry_backoff_seconds=10)
    dispatch(state, task, now_ms=NOW)
    fail(state, task.task_id, 1, NOW + 100)
    first = task.not_before_ms - (NOW + 100)
    assert 8_000 <= first <= 10_000
    scheduler = Scheduler(state)
    tx = scheduler.find_assignments(state.peek_pending_tasks(), state.get_available_workers(NOW), NOW + 200)
    assert tx.assignments == [] and tx.pending_reasons[job.job_id].startswith("retrying in ")
    assert "(attempt 1)" in tx.pending_reasons[job.job_id]
    tx = scheduler.find_assignments(state.peek_pending_tasks(), state.get_available_workers(NOW), task.not_before_ms)
    assert len(tx.assignments) == 1
    dispatch(state, task, now_ms=task.not_before_ms)
    fail(state, task.task_id, 1, task.not_before_ms + 100, attempt=1)
    second = task.not_before_ms - (NOW + 100 + first + 100)
    assert 16_000 <= second <= 20_000, "the second retry waits twice as long"
    t = task.not_before_ms
    dispatch(state, task, now_ms=t)
    assert state.apply_report(WorkerId("w1"), task.task_id, 2, WORKER_FAILED, t + 5)
    assert task.state == PENDING and task.not_before_ms == 0, "preemption retries are not delayed"


# -- timeout, fail-fast ---------------------------------------------------------------------------


def test_an_attempt_over_its_timeout_fails_timed_out_and_is_killed(state: ControllerState) -> None:
    worker = add_worker(state)
    job, (task,) = submit(state, timeout_seconds=30, max_retries_failure=1)
    state.commit_assignment(task.task_id, worker.worker_id, NOW)
    state.drain_effects()
    assert state.expire_timeouts(NOW + 29_999) == []
    assert state.expire_timeouts(NOW + 30_000) == [task.task_id]
    assert task.state == PENDING and task.failure_count == 1 and task.attempts[0].error == "timed out after 30s"
    assert [(k.task_id, k.attempt_id) for k in state.drain_effects().kills] == [(task.task_id, 0)]
    assert worker.committed_cpu == 1000, "held until the worker confirms the process is gone"


def test_similar_failures_fail_the_job_fast_with_one_error(state: ControllerState) -> None:
    add_worker(state, cpu=64)
    job, tasks = submit(state, replicas=8, max_retries_failure=5, max_task_failures=8, max_similar_failures=3)
    for t in tasks:
        dispatch(state, t)
    fail(state, tasks[0].task_id, 1, NOW + 1, error="Traceback\nModuleNotFoundError: No module named 'torch'")
    fail(state, tasks[1].task_id, 1, NOW + 3, error="ModuleNotFoundError: No module named 'torch'")
    assert not job.is_finished(), "two of three: not yet"
    fail(state, tasks[2].task_id, 1, NOW + 4, error="File /x/y.py line 3\nModuleNotFoundError: No module named 'torch'")
    assert job.state == T.JOB_STATE_FAILED
    assert job.error == "3 of 8 tasks failed with: ModuleNotFoundError: No module named 'torch'"


def test_fail_fast_is_off_once_a_task_succeeded(state: ControllerState) -> None:
    add_worker(state, cpu=64)
    job, tasks = submit(state, replicas=4, max_retries_failure=5, max_similar_failures=2)
    for t in tasks:
        dispatch(state, t)
    state.apply_report(WorkerId("w1"), tasks[3].task_id, 0, SUCCEEDED, NOW + 1)
    fail(state, tasks[0].task_id, 1, NOW + 2)
    fail(state, tasks[1].task_id, 1, NOW + 3)
    assert not job.is_finished()


# -- quarantine and drain -------------------------------------------------------------------------


def _fleet(state: ControllerState, n: int) -> None:
    for i in range(n):
        add_worker(state, f"w{i}", cpu=4)


def test_quarantine_needs_two_owners_succeeding_elsewhere_and_uncharges_the_worker_s_failures() -> None:
    state = ControllerState(quarantine_after=3)
    _fleet(state, 10)
    a_job, a_tasks = submit(state, "a", replicas=3, max_retries_failure=5, owner="alice")
    b_job, b_tasks = submit(state, "b", replicas=3, max_retries_failure=5, owner="bob")
    # Both jobs succeed on another worker...
    dispatch(state, a_tasks[2], "w5")
    dispatch(state, b_tasks[2], "w6")
    state.apply_report(WorkerId("w5"), a_tasks[2].task_id, 0, SUCCEEDED, NOW + 1)
    state.apply_report(WorkerId("w6"), b_tasks[2].task_id, 0, SUCCEEDED, NOW + 1)
    # ...and fail quickly on w0, alternating owners.
    dispatch(state, a_tasks[0], "w0")
    fail(state, a_tasks[0].task_id, 1, NOW + 10, worker="w0")
    dispatch(state, a_tasks[0], "w0", NOW + 20)
    fail(state, a_tasks[0].task_id, 1, NOW + 30, worker="w0", attempt=1)
    w0 = state.get_worker(WorkerId("w0"))
    assert w0 is not None and w0.quarantined_until_ms == 0, "one owner only: not the worker's fault yet"
    dispatch(state, b_tasks[0], "w0", NOW + 40)
    fail(state, b_tasks[0].task_id, 1, NOW + 50, worker="w0")
    assert w0.quarantined_until_ms == NOW + 50 + 5 * 60_000 and "succeed elsewhere" in w0.quarantine_reason
    assert not w0.schedulable(NOW + 60) and w0.schedulable(w0.quarantined_until_ms)
    # Blamed on the worker: those failures are charged to no budget.
    assert a_tasks[0].failure_count == 0 and b_tasks[0].failure_count == 0
    assert all(a.charged_to == "none" and "quarantined worker w0" in a.decided_by for a in a_tasks[0].attempts)
    assert a_job.charges["failure"] == 0 and b_job.charges["failure"] == 0
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(NOW + 60), NOW + 60)
    assert tx.assignments and all(w.worker_id != "w0" for _, w in tx.assignments)
    state.release_worker(WorkerId("w0"), NOW + 70)
    assert w0.schedulable(NOW + 70)
    state.check_invariants()


def test_quarantine_never_takes_more_than_a_tenth_of_the_fleet() -> None:
    state = ControllerState(quarantine_after=1)
    _fleet(state, 9)  # a tenth of 9 healthy workers is 0
    _, a_tasks = submit(state, "a", replicas=2, max_retries_failure=5, owner="alice")
    _, b_tasks = submit(state, "b", replicas=2, max_retries_failure=5, owner="bob")
    for tasks, good in ((a_tasks, "w5"), (b_tasks, "w6")):
        dispatch(state, tasks[1], good)
        state.apply_report(WorkerId(good), tasks[1].task_id, 0, SUCCEEDED, NOW + 1)
    dispatch(state, a_tasks[0], "w0")
    fail(state, a_tasks[0].task_id, 1, NOW + 10, worker="w0")
    dispatch(state, b_tasks[0], "w0", NOW + 20)
    fail(state, b_tasks[0].task_id, 1, NOW + 30, worker="w0")
    w0 = state.get_worker(WorkerId("w0"))
    assert w0 is not None and w0.quarantined_until_ms == 0
    state.check_invariants()


def test_drain_stops_tasks_as_preemptions_and_places_nothing_new(state: ControllerState) -> None:
    worker = add_worker(state, cpu=4)
    add_worker(state, "w2", cpu=4)
    _, tasks = submit(state, replicas=2)
    for t in tasks:
        dispatch(state, t)
    assert state.drain_worker(worker.worker_id, NOW + 5) == 2
    assert all(t.state == PENDING and t.preemption_count == 1 and t.attempts[0].decided_by == "worker drain"
               for t in tasks)
    assert worker.committed_cpu == 2000, "held until the worker confirms"
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(NOW), NOW + 6)
    assert {w.worker_id for _, w in tx.assignments} == {"w2"}


# -- time --------------------------------------------------------------------------------------------


def test_time_is_split_into_pending_useful_and_lost(state: ControllerState) -> None:
    add_worker(state)
    job, (task,) = submit(state, max_retries_failure=1, max_retries_preemption=1)
    dispatch(state, task, now_ms=NOW + 1_000)                          # waited 1 s
    fail(state, task.task_id, 1, NOW + 4_000)                          # lost 3 s to a failure
    dispatch(state, task, now_ms=NOW + 6_000)                          # waited 2 s
    state.apply_report(WorkerId("w1"), task.task_id, 1, WORKER_FAILED, NOW + 7_000)  # lost 1 s to a preemption
    dispatch(state, task, now_ms=NOW + 7_500)
    assert state.apply_report(WorkerId("w1"), task.task_id, 2, SUCCEEDED, NOW + 17_500)  # useful 10 s
    assert job.pending_ms == 3_500
    assert job.time_ms == {"useful": 10_000, "failure": 3_000, "preemption": 1_000, "gang": 0}
    assert job.charges == {"failure": 1, "preemption": 1}
    from iris.cluster.controller.views import task_time

    assert dict(task_time(task)) == {"pending": 3_500, "useful": 10_000, "failure": 3_000, "preemption": 1_000,
                                     "gang": 0}
    assert state.lost_ms["failure"] == 3_000


def test_transition_result_of_a_fail_job_rule_is_terminal(state: ControllerState) -> None:
    add_worker(state)
    _, (task,) = submit(state, max_retries_failure=3, on_exit=("9=fail-job",))
    dispatch(state, task)
    result, _ = state.transition_task(task.task_id, FAILED, NOW + 1, exit_code=9, error="x")
    assert result is TaskTransitionResult.EXCEEDED_RETRY_LIMIT and task.is_finished()
