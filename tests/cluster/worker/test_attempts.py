"""Golden scenarios for the worker's attempt state machine: events in, instructions out.

No threads, processes or clocks: each scenario feeds events and compares the instructions and the
attempt's phase with what the lifecycle (``attempts.py``'s diagram) says must happen.
"""

from __future__ import annotations

import pytest

from iris.cluster.worker.attempts import (
    BUILDING,
    FAILED,
    KILLED,
    RUNNING,
    SUCCEEDED,
    Accepted,
    AttemptMachine,
    AttemptStatus,
    Discard,
    DropBundle,
    Instruction,
    JobsDeleted,
    Kill,
    KillRequested,
    LaunchAbandoned,
    LogPhase,
    LogRefused,
    LogShipped,
    Phase,
    PreparationFailed,
    PreparationStarted,
    Prepare,
    Prepared,
    ProcessExited,
    ProcessStarted,
    Release,
    Report,
    ReportsAcknowledged,
    ShipLog,
    Start,
    StartFailed,
    WorkerStopping,
)

K = ("job/task-0", 0)
NOW = 1_000


def kinds(instructions: list[Instruction]) -> list[str]:
    """Instructions as short strings: "Report(RUNNING)", "Kill(2.0)", "Start"..."""
    out = []
    for i in instructions:
        if isinstance(i, Report):
            out.append(f"Report({_state(i.status)})")
        elif isinstance(i, Kill):
            out.append(f"Kill({i.grace_s})")
        else:
            out.append(type(i).__name__)
    return out


def _state(status: AttemptStatus) -> str:
    return {BUILDING: "BUILDING", RUNNING: "RUNNING", SUCCEEDED: "SUCCEEDED", FAILED: "FAILED",
            KILLED: "KILLED"}[status.state]


def reported(instructions: list[Instruction]) -> AttemptStatus:
    (status,) = [i.status for i in instructions if isinstance(i, Report)]
    return status


def run_to_running(m: AttemptMachine, key: tuple[str, int] = K) -> None:
    m.handle(Accepted(key))
    m.handle(PreparationStarted(key, building=False))
    m.handle(Prepared(key, NOW))
    m.handle(ProcessStarted(key, 4242))


def test_attempt_happy_path_reports_running_then_succeeded_and_is_kept_until_acknowledged() -> None:
    m = AttemptMachine()
    assert kinds(m.handle(Accepted(K))) == ["Prepare"]
    assert kinds(m.handle(PreparationStarted(K, building=False))) == []
    assert kinds(m.handle(Prepared(K, NOW))) == ["Start"]
    assert kinds(m.handle(ProcessStarted(K, 4242))) == ["Report(RUNNING)"]
    assert m.attempts[K].phase is Phase.RUNNING and m.attempts[K].pid == 4242
    out = m.handle(ProcessExited(K, 0, NOW + 5))
    assert kinds(out) == ["Release", "Report(SUCCEEDED)"]
    assert reported(out).started_at_ms == NOW and reported(out).finished_at_ms == NOW + 5
    # Until the controller acknowledged the terminal report, the attempt is in the observed set.
    assert [s.state for s in m.observed()] == [SUCCEEDED]
    assert m.handle(ReportsAcknowledged(((K, SUCCEEDED),))) == []
    assert m.observed() == [] and m.attempts[K].phase is Phase.ACKED


def test_attempt_with_a_bundle_reports_building_while_it_is_prepared() -> None:
    m = AttemptMachine()
    m.handle(Accepted(K))
    assert kinds(m.handle(PreparationStarted(K, building=True))) == ["Report(BUILDING)"]
    assert m.attempts[K].phase is Phase.PREPARING


@pytest.mark.parametrize(
    ("event", "expected_state", "expected_error"),
    [
        (ProcessExited(K, 3, NOW, error="exit code 3; last output:\nboom"), FAILED, "exit code 3; last output:\nboom"),
        (ProcessExited(K, 3, NOW), FAILED, "exit code 3"),
        (ProcessExited(K, -9, NOW, limit_error="memory limit exceeded"), FAILED, "memory limit exceeded"),
        (ProcessExited(K, 0, NOW, limit_error="memory limit exceeded"), FAILED, "memory limit exceeded"),
    ],
)
def test_attempt_exit_decides_the_terminal_state(event: ProcessExited, expected_state: int, expected_error: str
                                                 ) -> None:
    m = AttemptMachine()
    run_to_running(m)
    status = reported(m.handle(event))
    assert (status.state, status.error) == (expected_state, expected_error)


def test_attempt_kill_while_running_sends_kill_and_ends_killed_on_exit() -> None:
    m = AttemptMachine()
    run_to_running(m)
    assert kinds(m.handle(KillRequested(K, 2.0))) == ["Kill(2.0)"]
    assert kinds(m.handle(KillRequested(K, 9.0))) == []  # one kill is enough
    status = reported(m.handle(ProcessExited(K, -15, NOW)))
    assert (status.state, status.error, status.exit_code) == (KILLED, "killed", -15)


@pytest.mark.parametrize("phase_events", [
    [],  # ACCEPTED
    [PreparationStarted(K, building=True)],  # PREPARING
])
def test_attempt_killed_before_it_started_never_starts(phase_events: list[PreparationStarted]) -> None:
    m = AttemptMachine()
    m.handle(Accepted(K))
    for e in phase_events:
        m.handle(e)
    assert kinds(m.handle(KillRequested(K, 1.0))) == []  # nothing to signal yet
    out = m.handle(Prepared(K, NOW))
    assert "Start" not in kinds(out)
    assert reported(out).state == KILLED and reported(out).error == "killed before it started"


def test_attempt_killed_while_its_process_is_being_started_is_killed_once_it_exists() -> None:
    m = AttemptMachine()
    m.handle(Accepted(K))
    m.handle(Prepared(K, NOW))  # STARTING: the shell is spawning it
    assert kinds(m.handle(KillRequested(K, 3.0))) == []
    assert kinds(m.handle(ProcessStarted(K, 7))) == ["Report(RUNNING)", "Kill(3.0)"]


def test_attempt_that_exits_before_its_start_is_recorded_skips_running() -> None:
    m = AttemptMachine()
    m.handle(Accepted(K))
    m.handle(Prepared(K, NOW))
    assert kinds(m.handle(ProcessExited(K, 0, NOW + 1))) == ["Release", "Report(SUCCEEDED)"]
    assert m.handle(ProcessStarted(K, 7)) == []  # late: ignored, the attempt stays SUCCEEDED
    assert m.attempts[K].state == SUCCEEDED


def test_attempt_preparation_or_start_failure_is_a_task_failure() -> None:
    m = AttemptMachine()
    m.handle(Accepted(K))
    status = reported(m.handle(PreparationFailed(K, "bundle abc: no such bundle", NOW)))
    assert (status.state, status.error) == (FAILED, "bundle abc: no such bundle")
    k2 = ("job/task-1", 0)
    m.handle(Accepted(k2))
    m.handle(Prepared(k2, NOW))
    status = reported(m.handle(StartFailed(k2, 127, "failed to start 'nope': not found", NOW)))
    assert (status.state, status.exit_code) == (FAILED, 127)


def test_attempt_stale_and_duplicate_events_change_nothing() -> None:
    m = AttemptMachine()
    run_to_running(m)
    m.handle(ProcessExited(K, 0, NOW))
    before = m.attempts[K].status()
    for event in (ProcessExited(K, 1, NOW + 9), KillRequested(K, 1.0), ProcessStarted(K, 1), Prepared(K, NOW),
                  PreparationFailed(K, "late", NOW), ProcessExited(("unknown", 0), 0, NOW)):
        assert m.handle(event) == []
    assert m.attempts[K].status() == before
    assert m.handle(Accepted(K)) == []  # the same attempt again: idempotent, not relaunched


def test_attempt_gpus_are_handed_out_and_returned() -> None:
    m = AttemptMachine(gpus=[0, 1, 2])
    m.handle(Accepted(K, gpus_wanted=2))
    m.handle(Accepted(("job/task-1", 0), gpus_wanted=2))
    assert m.attempts[K].gpus == [0, 1] and m.attempts[("job/task-1", 0)].gpus == [2]
    m.handle(Prepared(K, NOW))
    m.handle(ProcessExited(K, 0, NOW))
    m.handle(Accepted(("job/task-2", 0), gpus_wanted=1))
    assert m.attempts[("job/task-2", 0)].gpus == [0]


def test_attempt_history_is_bounded_and_discards_the_oldest_acknowledged() -> None:
    m = AttemptMachine(max_finished=2)
    keys = [(f"job/task-{i}", 0) for i in range(3)]
    for key in keys:
        run_to_running(m, key)
        m.handle(ProcessExited(key, 0, NOW))
    assert m.handle(ReportsAcknowledged(((keys[0], SUCCEEDED), (keys[1], SUCCEEDED)))) == []
    out = m.handle(ReportsAcknowledged(((keys[2], SUCCEEDED),)))
    assert out == [Discard(keys[0])]
    assert keys[0] not in m.attempts and m.get("job/task-0") is None
    # A RUNNING report being acknowledged never ends an attempt.
    k = ("job/task-9", 0)
    run_to_running(m, k)
    m.handle(ReportsAcknowledged(((k, RUNNING),)))
    assert m.attempts[k].phase is Phase.RUNNING


def test_attempt_stop_refuses_new_and_kills_live_attempts() -> None:
    m = AttemptMachine()
    run_to_running(m)
    k2 = ("job/task-1", 0)
    m.handle(Accepted(k2))
    assert kinds(m.stop(grace_s=4.0)) == ["Kill(4.0)"]
    with pytest.raises(WorkerStopping):
        m.handle(Accepted(("job/task-2", 0)))
    # The one not yet prepared ends KILLED when its launch is abandoned.
    status = reported(m.handle(LaunchAbandoned(k2, "worker is shutting down", NOW)))
    assert status.state == KILLED and m.live_count() == 1


def test_attempt_newest_attempt_of_a_task_is_found_without_its_id() -> None:
    m = AttemptMachine()
    m.handle(Accepted(("job/task-0", 1)))
    m.handle(Accepted(("job/task-0", 0)))  # an older attempt arriving late does not shadow the newer
    found = m.get("job/task-0")
    assert found is not None and found.key == ("job/task-0", 1)
    assert Release(K) != Prepare(K) and Start(K) == Start(K)


# -- log shipping: the record holds how far each log got -------------------------------------------


def test_log_shipping_resumes_from_what_the_controller_holds_and_ends_when_it_has_all() -> None:
    m = AttemptMachine()
    run_to_running(m)
    assert m.ship_logs() == [ShipLog(K, 0, False)]
    assert m.handle(LogShipped(K, 120)) == []
    assert m.ship_logs() == [ShipLog(K, 120, False)]  # the next call starts where the controller is
    m.handle(LogShipped(K, 80))  # a late, shorter answer never moves it back
    assert m.attempts[K].log_shipped == 120
    m.handle(ProcessExited(K, 0, NOW + 5))
    assert m.ship_logs() == [ShipLog(K, 120, True)]  # ended: the next chunk may say complete
    m.handle(LogShipped(K, 200, complete=True))
    assert m.ship_logs() == [] and m.attempts[K].log_phase is LogPhase.DONE


def test_log_of_an_ended_attempt_is_claimed_by_its_report_and_done_once_that_is_acknowledged() -> None:
    m = AttemptMachine()
    run_to_running(m)
    m.handle(LogShipped(K, 300))
    m.handle(ProcessExited(K, 0, NOW + 5))
    other = ("job/task-1", 0)
    run_to_running(m, other)
    m.handle(ProcessExited(other, 1, NOW + 5))
    sizes, lacking = m.claim_logs({K: 300, other: 50})
    assert sizes == {K: 300} and lacking == {other}  # task 1's log must be shipped before its report
    assert m.ship_logs() == [ShipLog(other, 0, True)]  # a claimed log is not shipped again
    m.handle(ReportsAcknowledged(((K, SUCCEEDED),)))
    assert m.attempts[K].log_phase is LogPhase.DONE


def test_log_refused_by_the_controller_is_not_shipped_again() -> None:
    m = AttemptMachine()
    run_to_running(m)
    m.handle(LogRefused(K))
    assert m.ship_logs() == [] and m.claim_logs({K: 10}) == ({}, set())


def test_deleted_jobs_discard_their_ended_attempts_and_unused_bundles_in_one_place() -> None:
    from iris.cluster.spec import Entrypoint, JobSpec
    from iris.cluster.worker.attempts import TaskLaunch

    m = AttemptMachine()
    old = ("gone/task-0", 0)
    live = ("kept/task-0", 0)
    spec = JobSpec(name="kept", entrypoint=Entrypoint(argv=("x",)), bundle_hash="b" * 64)
    m.handle(Accepted(old, job_uid="u-gone"))
    m.handle(PreparationFailed(old, "boom", NOW))
    m.handle(Accepted(live, job_uid="u-kept", launch=TaskLaunch("kept", live[0], 0, 1, 0, spec, job_uid="u-kept")))
    out = m.handle(JobsDeleted(("u-gone", "u-kept"), ("a" * 64, "b" * 64)))
    assert out == [Discard(old), DropBundle("a" * 64)]  # the live attempt and its bundle stay
    assert old not in m.attempts and live in m.attempts


def test_a_kill_for_another_job_incarnation_is_ignored() -> None:
    m = AttemptMachine()
    m.handle(Accepted(K, job_uid="new"))
    m.handle(PreparationStarted(K, building=False))
    m.handle(Prepared(K, NOW))
    m.handle(ProcessStarted(K, 1))
    assert m.handle(KillRequested(K, 1.0, job_uid="old")) == []
    assert kinds(m.handle(KillRequested(K, 1.0, job_uid="new"))) == ["Kill(1.0)"]
