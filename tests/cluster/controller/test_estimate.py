"""Predicted runtimes and start-time estimates (issue 25 items 2 and 4): the prediction's order
(--timeout, the owner's last two runs of the name, the job's own tasks, unknown), a task past its
prediction re-predicted, the history durable and bounded, and each estimate's error measured when
its job starts."""

from __future__ import annotations

from pathlib import Path

from iris.cluster.controller.estimate import (
    Estimate,
    EstimateLog,
    Pending,
    RunningNow,
    WorkerRoom,
    estimate_start,
    running_times,
)
from iris.cluster.controller.runtimes import MAX_HISTORY, RuntimeHistory, predict, remaining
from iris.cluster.controller.shareviews import why_view
from iris.cluster.controller.state import ControllerState
from iris.cluster.controller.store import ControllerStore
from iris.cluster.types import SUCCEEDED, JobId, WorkerId

from .builders import NOW, add_worker, submit
from .test_sharing import one_pass

SEC = 1000


def test_the_prediction_prefers_a_timeout_then_history_then_the_jobs_own_tasks() -> None:
    assert predict(600 * SEC, 50 * SEC, 70 * SEC) == (600 * SEC, "timeout")
    assert predict(0, 50 * SEC, 70 * SEC) == (50 * SEC, "history")
    assert predict(0, None, 70 * SEC) == (70 * SEC, "job")
    assert predict(0, None, None) == (None, "unknown")
    history = RuntimeHistory()
    for ms in (10 * SEC, 20 * SEC, 40 * SEC):
        history.record("alice:train", ms)
    assert history.predict("alice:train") == 30 * SEC  # the mean of the last two
    assert history.runs("alice:train") == (20 * SEC, 40 * SEC)
    assert history.predict("bob:train") is None  # another owner's runs say nothing


def test_a_task_past_its_prediction_is_re_predicted_never_assumed_finished() -> None:
    assert remaining(60 * SEC, 20 * SEC) == 40 * SEC
    assert remaining(60 * SEC, 90 * SEC) == 90 * SEC  # as long again as it has run
    assert remaining(None, 5 * SEC) is None


def test_the_history_is_bounded_and_outlives_the_job_and_a_restart(tmp_path: Path) -> None:
    history = RuntimeHistory()
    for i in range(MAX_HISTORY + 5):
        history.record(f"u:job-{i}", SEC)
    assert history.predict("u:job-0") is None and history.predict(f"u:job-{MAX_HISTORY + 4}") == SEC
    assert len(history.forgotten) == 5
    store = ControllerStore.open(tmp_path)
    state = ControllerState()
    add_worker(state, "w1", cpu=2)
    job, tasks = submit(state, "train", owner="alice")
    one_pass(state)
    state.apply_report(WorkerId("w1"), tasks[0].task_id, 0, SUCCEEDED, NOW + 42 * SEC)
    store.write(state, state.drain_effects())
    state.delete_job(job.job_id)
    store.write(state, state.drain_effects())
    store.close()
    with ControllerStore.open(tmp_path) as again:
        loaded = again.load()
    assert loaded.runtimes.predict("train") == 42 * SEC  # outlived its deleted job (builders give bare ids)


def _worker(worker_id: str, cpu: int) -> WorkerRoom:
    return WorkerRoom(WorkerId(worker_id), cpu * 1000, 8 << 30, 1 << 40, 0, "cpu", "")


def test_the_start_is_when_what_runs_ahead_ends_and_p90_stretches_what_history_predicted() -> None:
    from iris.cluster.controller.job import Job

    from .builders import make_request

    req = Job(JobId("x"), make_request("x", cpu=2), NOW).requirements
    # w1 runs to a hard 200 s limit (p50: half of it), w2 was predicted 50 s by history (p90: twice).
    assert running_times(200 * SEC, True, 0) == (100 * SEC, 200 * SEC)
    assert running_times(50 * SEC, False, 0) == (50 * SEC, 100 * SEC)
    assert running_times(50 * SEC, False, 80 * SEC) == (80 * SEC, 80 * SEC)  # overrun: as long again
    running = [RunningNow(WorkerId("w1"), req, *running_times(200 * SEC, True, 0)),
               RunningNow(WorkerId("w2"), req, *running_times(50 * SEC, False, 0))]
    target = Pending(JobId("t"), req, 1, False, 30 * SEC, hard=False)
    est = estimate_start([], target, [_worker("w1", 0), _worker("w2", 0)], running, NOW)
    # the first worker to free; p10: everything at half its p50 time (w2 frees at 25 s)
    assert est == Estimate(NOW + 50 * SEC, NOW + 100 * SEC, "", NOW + 25 * SEC)
    ahead = [Pending(JobId("a"), req, 1, False, None, hard=False)]  # ahead of it, and never predicted to end
    est = estimate_start(ahead, target, [_worker("w1", 0), _worker("w2", 0)], running, NOW)
    # "a" takes the first freed worker, it the second (in the p10 run: w1's at 50 s)
    assert est == Estimate(NOW + 100 * SEC, NOW + 200 * SEC, "", NOW + 50 * SEC)
    unknown = estimate_start([], target, [_worker("w1", 0)], [RunningNow(WorkerId("w1"), req, None, None)], NOW)
    assert unknown.start_p50_ms is None and "no predicted end" in unknown.unknown_reason


def test_each_estimate_given_is_scored_when_its_job_starts(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    submit(state, "long", owner="bob", cpu=2, timeout_seconds=100)
    one_pass(state)
    submit(state, "next", owner="alice", cpu=2)
    one_pass(state, NOW + SEC)
    why = why_view(state, JobId("next"), NOW + 2 * SEC)
    assert (why.estimate.start_p50_ms, why.estimate.start_p90_ms) == (NOW + 50 * SEC, NOW + 100 * SEC)  # a hard 100 s
    log: EstimateLog = state.estimates
    assert log.accuracy() == (0, None, None)
    long_task = state.get_job_tasks(JobId("long"))[0]
    state.apply_report(WorkerId("w1"), long_task.task_id, 0, SUCCEEDED, NOW + 90 * SEC)  # ended early
    one_pass(state, NOW + 90 * SEC)
    started, error_s, in_range = log.accuracy()
    assert (started, error_s, in_range) == (1, 40.0, True)  # 40 s after the p50, before the p90


def test_the_range_runs_from_the_p10_to_the_p90() -> None:
    log = EstimateLog(tolerance_ms=SEC)
    for job, start in (("early", 60), ("likeliest", 100), ("late", 200), ("before", 40), ("after", 220)):
        log.given(JobId(job), Estimate(NOW + 100 * SEC, NOW + 200 * SEC, "", NOW + 50 * SEC), NOW)
        log.started(JobId(job), NOW + start * SEC)
    started, error_s, in_range = log.accuracy()
    assert (started, error_s, in_range) == (5, 60.0, 3 / 5)  # 60 s and 40 s early are 40 and 60 s from the p50


def test_ranges_are_calibrated_by_how_often_recent_starts_fell_inside_them() -> None:
    """Split conformal calibration: estimates of like waits that started after their model range
    widen the next estimate's range until COVERAGE of them would have fallen inside; starts inside
    their range widen nothing, and no band is calibrated before it has CALIBRATION_MIN scores."""
    from iris.cluster.controller.estimate import CALIBRATION_MIN

    log = EstimateLog(tolerance_ms=0)
    model = Estimate(NOW + 100 * SEC, NOW + 200 * SEC, "", NOW + 50 * SEC)  # a wait of 100 s (scaled as 100 s)
    assert log.calibrate(model, NOW) == model  # nothing scored yet
    for i in range(CALIBRATION_MIN):  # every start 100 s after the p90: a miss of 1.0 wait each
        log.given(JobId(f"late-{i}"), log.calibrate(model, NOW), NOW, model)
        log.started(JobId(f"late-{i}"), NOW + 300 * SEC)
    assert log.accuracy()[2] == 0.0  # the model's ranges held none of them
    stated = log.calibrate(model, NOW)
    assert stated.start_p50_ms == model.start_p50_ms  # the likeliest point is the model's
    assert (stated.start_p10_ms, stated.start_p90_ms) == (NOW, NOW + 300 * SEC)  # widened by one wait each side
    for i in range(5 * CALIBRATION_MIN):  # now they start at the p50: 5 of 6 recent starts inside
        log.given(JobId(f"ok-{i}"), log.calibrate(model, NOW), NOW, model)
        log.started(JobId(f"ok-{i}"), NOW + 100 * SEC)
    assert log.calibrate(model, NOW) == model  # over 80 % of recent starts were inside the model range
    long_wait = Estimate(NOW + 5 * 3_600_000, NOW + 6 * 3_600_000, "", NOW + 3_600_000)
    assert log.calibrate(long_wait, NOW) == long_wait  # another band of waits: not calibrated by short ones


def test_a_job_ahead_that_does_not_fit_is_passed_as_the_scheduler_passes_it() -> None:
    """No head-of-line blocking in the estimate either: a big job ahead that waits for room does not
    hold back a small target that fits now (holding it back made most batch estimates late)."""
    from iris.cluster.controller.job import Job

    from .builders import make_request

    small = Job(JobId("s"), make_request("s", cpu=1), NOW).requirements
    big = Job(JobId("b"), make_request("b", cpu=4), NOW).requirements
    running = [RunningNow(WorkerId("w1"), small, *running_times(100 * SEC, False, 0))]
    ahead = [Pending(JobId("b"), big, 1, False, 60 * SEC, hard=False)]  # needs w1 whole: at 100 s at best
    target = Pending(JobId("t"), small, 1, False, 30 * SEC, hard=False)
    est = estimate_start(ahead, target, [_worker("w1", 3)], running, NOW)
    assert est == Estimate(NOW, NOW, "", NOW)  # it fits beside what runs, now
    # With no room beside it, it still waits behind the big job: ranked ahead, placed first.
    crowded = [RunningNow(WorkerId("w1"), big, *running_times(100 * SEC, False, 0))]
    est = estimate_start(ahead, target, [_worker("w1", 0)], crowded, NOW)
    assert est.start_p50_ms == NOW + 160 * SEC  # w1 frees at 100 s, b runs 60 s, then t


def test_a_higher_band_counts_lower_band_work_as_ending_when_it_may_be_preempted(state: ControllerState) -> None:
    from .test_sharing import configure

    configure(state, 'min_lease = "10m"\n')
    add_worker(state, "w1", cpu=1)
    submit(state, "bulk", owner="bob", priority="batch")  # no --timeout, no history: no predicted end
    one_pass(state)
    submit(state, "chat", owner="alice", priority="interactive")
    submit(state, "prod", owner="carol", priority="production")
    submit(state, "more", owner="dave", priority="batch")
    chat = why_view(state, JobId("chat"), NOW + 60 * SEC).estimate
    # "prod" is ahead of it and may preempt at once; "chat" waits for "prod" (no predicted end) then
    # nothing: unknown. Alone in its band above batch, as "solo" below, it is the lease's end.
    assert chat.start_p50_ms is None
    prod = why_view(state, JobId("prod"), NOW + 60 * SEC).estimate
    assert (prod.start_p50_ms, prod.start_p90_ms) == (NOW + 60 * SEC, NOW + 120 * SEC)  # now; p90: the allowance
    more = why_view(state, JobId("more"), NOW + 60 * SEC).estimate
    assert more.start_p50_ms is None and "no predicted end" in more.unknown_reason  # the same band: no preemption


def test_an_interactive_job_waits_for_the_batch_work_s_minimum_lease(state: ControllerState) -> None:
    from .test_sharing import configure

    configure(state, 'min_lease = "10m"\n')
    add_worker(state, "w1", cpu=1)
    submit(state, "bulk", owner="bob", priority="batch")
    one_pass(state)
    submit(state, "chat", owner="alice", priority="interactive")
    est = why_view(state, JobId("chat"), NOW + 60 * SEC).estimate
    assert (est.start_p50_ms, est.start_p90_ms) == (NOW + 600 * SEC, NOW + 660 * SEC)  # the lease; + the allowance


def test_a_gang_reservation_that_holds_its_room_against_the_job_counts_as_ahead_of_it(
        state: ControllerState) -> None:
    """A gang's reservation binds all work of its band or lower (``reservations``): a job ranked above
    the gang that needs the same room starts after the gang, not when the room frees, unless its hard
    --timeout ends it before the reservation starts (backfill: then it goes first)."""
    for i in range(2):
        add_worker(state, f"w{i}", cpu=2)
        submit(state, f"long-{i}", owner="bob", cpu=2, timeout_seconds=100)
    one_pass(state)
    submit(state, "gang", owner="alice", replicas=2, cpu=2, coscheduled=True, timeout_seconds=200, now_ms=NOW + SEC)
    one_pass(state, NOW + SEC)
    assert [(r.job_id, r.start_ms) for r in state.reservations] == [("gang", NOW + 100 * SEC)]
    # Both rank above the gang (a tie in standing: by name) and arrive after its reservation.
    submit(state, "adam-open", owner="adam", cpu=2, now_ms=NOW + 2 * SEC)  # no --timeout: bound
    submit(state, "abe-quick", owner="abe", cpu=2, timeout_seconds=10, now_ms=NOW + 2 * SEC)  # backfills
    bound = why_view(state, JobId("adam-open"), NOW + 2 * SEC).estimate
    quick = why_view(state, JobId("abe-quick"), NOW + 2 * SEC).estimate
    assert quick.start_p50_ms == NOW + 50 * SEC  # when half of the hard 100 s of what runs there is over
    # After abe's job (ahead of it: half of 10 s), then the gang (half of its own 200 s).
    assert bound.start_p50_ms == NOW + (50 + 5 + 100) * SEC
