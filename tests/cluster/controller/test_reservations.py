"""Reservations and backfill (issue 25 item 1): a gang never starves behind a stream of small
work; lower-ranked work takes reserved room only if its --timeout ends it before the reservation
starts, or if it leaves the reservation whole."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iris.cluster.controller.state import ControllerState
from iris.cluster.types import RUNNING, SUCCEEDED, JobId, WorkerId

from .builders import NOW, add_worker, submit
from .test_sharing import one_pass

SEC = 1000


def gang_behind_a_stream_of_small_jobs(state: ControllerState, steps: int = 20) -> bool:
    """4 workers of 2 cpus full of 1-cpu jobs; a 4 x 2-cpu gang arrives; each step one small task
    ends and another arrives. Whether the gang got to run."""
    for i in range(4):
        add_worker(state, f"w{i}", cpu=2)
    for i in range(8):
        submit(state, f"small-{i}", owner="bob")
    one_pass(state)  # the fleet is full of small work
    submit(state, "gang", owner="alice", replicas=4, cpu=2, coscheduled=True)
    now = NOW
    for step in range(steps):
        now += SEC
        running = [t for j in state.list_jobs() if j.job_id.startswith("small") for t in state.get_job_tasks(j.job_id)
                   if t.state == RUNNING]
        if running:
            t = running[0]
            state.apply_report(WorkerId(t.worker_id or ""), t.task_id, t.current_attempt_id, SUCCEEDED, now)
        submit(state, f"more-{step}", owner="bob", now_ms=now)
        one_pass(state, now)
        if all(t.state == RUNNING for t in state.get_job_tasks(JobId("gang"))):
            return True
    return False


def test_a_gang_is_placed_while_a_stream_of_small_jobs_keeps_arriving(state: ControllerState) -> None:
    assert gang_behind_a_stream_of_small_jobs(state), "the gang starved behind small jobs"
    assert state.reservations == []  # dropped once its job started


def test_without_reservations_the_same_gang_starves(state: ControllerState) -> None:
    state.max_reservations = 0
    assert not gang_behind_a_stream_of_small_jobs(state)


def test_backfill_that_ends_before_the_reservation_starts_is_placed_and_longer_work_is_not(
        state: ControllerState) -> None:
    add_worker(state, "w1", cpu=4)
    submit(state, "long", owner="bob", cpu=3, timeout_seconds=600)  # must end within 10 minutes
    one_pass(state)
    submit(state, "big", owner="alice", cpu=4)  # needs the whole worker: reserved for when "long" ends
    tx = one_pass(state, NOW + SEC)
    assert tx.reservations is not None and [r.job_id for r in tx.reservations] == ["big"]
    (reservation,) = state.reservations
    assert reservation.start_ms == NOW + 600 * SEC and dict(reservation.workers) == {"w1": 1}
    submit(state, "slow", owner="carol", cpu=1)  # no timeout: would still run at the start
    submit(state, "quick", owner="carol", cpu=1, timeout_seconds=60)  # ends well before
    tx = one_pass(state, NOW + 2 * SEC)
    assert [t.job_id for t, _ in tx.assignments] == ["quick"]
    assert tx.pending_reasons["slow"] == "reserved for another job: the room it fits is reserved for big, from 598s on"


def test_room_beyond_what_the_reservation_needs_is_still_used(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=8)
    submit(state, "long", owner="bob", cpu=6, timeout_seconds=600)
    one_pass(state)
    submit(state, "half", owner="alice", cpu=4)  # reserved: 2 free now + 6 at the start
    one_pass(state, NOW + SEC)
    assert [r.job_id for r in state.reservations] == ["half"]
    submit(state, "extra", owner="carol", cpu=2)  # 8 at the start - 2 still holds 4
    tx = one_pass(state, NOW + 2 * SEC)
    assert [t.job_id for t, _ in tx.assignments] == ["extra"]


def test_work_that_fits_elsewhere_leaves_reserved_room_alone_even_when_it_may_take_it(state: ControllerState) -> None:
    """A higher band may take a reservation's room, but room no reservation holds is used first:
    otherwise the room drained for a batch job is where each new interactive task lands."""
    for i in range(2):
        add_worker(state, f"w{i}", cpu=4)
        submit(state, f"long-{i}", owner="bob", cpu=3, timeout_seconds=600, priority="batch")
    one_pass(state)  # one on each worker: 1 cpu free on each
    submit(state, "big", owner="alice", cpu=4, priority="batch", now_ms=NOW + SEC)
    one_pass(state, NOW + SEC)
    (reservation,) = state.reservations
    assert reservation.job_id == "big" and dict(reservation.workers) == {"w0": 1}  # the first of two alike
    submit(state, "urgent", owner="carol", cpu=1, priority="interactive", now_ms=NOW + 2 * SEC)
    tx = one_pass(state, NOW + 2 * SEC)
    assert [(t.job_id, w.worker_id) for t, w in tx.assignments] == [("urgent", "w1")]
    submit(state, "urgent-2", owner="carol", cpu=1, priority="interactive", now_ms=NOW + 3 * SEC)
    tx = one_pass(state, NOW + 3 * SEC)  # nothing else fits it now: a higher band is not held back
    assert [(t.job_id, w.worker_id) for t, w in tx.assignments] == [("urgent-2", "w0")]


def test_a_gangs_reservation_holds_against_work_that_ranks_above_it_in_a_later_pass(state: ControllerState) -> None:
    """A gang's reservation, once made, is kept from all work of its band or lower, whatever their
    standing: the gang's start estimate was made with the queue as it stood, and a reservation that
    gave way to whoever ranks first in each later pass would let it wait past any estimate."""
    for i in range(3):
        add_worker(state, f"w{i}", cpu=2)
    for i in range(6):
        submit(state, f"small-{i}", owner="bob", timeout_seconds=60)  # the fleet is full until NOW + 60 s
    one_pass(state)
    submit(state, "adam-job", owner="adam", now_ms=NOW + SEC)  # waiting before the gang; ranks above it (a tie: by name)
    submit(state, "gang", owner="alice", replicas=2, cpu=2, coscheduled=True, now_ms=NOW + 2 * SEC)
    tx = one_pass(state, NOW + 2 * SEC)
    assert [r.job_id for r in tx.reservations or ()] == ["adam-job", "gang"]  # in the order of the queue
    gang = next(r for r in state.reservations if r.job_id == "gang")
    assert gang.start_ms == NOW + 60 * SEC and len(gang.workers) == 2
    adams = next(r for r in state.reservations if r.job_id == "adam-job")
    worker_id = next(w for w in gang.workers if w not in adams.workers)  # the gang's alone
    ended = next(t for j in state.list_jobs() if j.job_id.startswith("small") for t in state.get_job_tasks(j.job_id)
                 if t.worker_id == worker_id)
    state.apply_report(WorkerId(worker_id), ended.task_id, ended.current_attempt_id, SUCCEEDED, NOW + 3 * SEC)
    tx = one_pass(state, NOW + 3 * SEC)  # adam's job ranks above the gang and fits in the room that freed
    assert tx.assignments == []
    assert tx.pending_reasons["adam-job"].startswith("reserved for another job: the room it fits is reserved for gang")
    assert next(r for r in state.reservations if r.job_id == "gang").start_ms == NOW + 60 * SEC


def test_work_that_arrives_after_a_reservation_never_takes_its_room_whatever_its_standing(
        state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    for i in range(2):
        submit(state, f"small-{i}", owner="bob", timeout_seconds=60)
    one_pass(state)
    submit(state, "big", owner="alice", cpu=2, now_ms=NOW + SEC)
    one_pass(state, NOW + SEC)
    assert [(r.job_id, r.start_ms) for r in state.reservations] == [("big", NOW + 60 * SEC)]
    submit(state, "later", owner="adam", now_ms=NOW + 2 * SEC)  # after the reservation; ranks above "big" (by name)
    ended = state.get_job_tasks(JobId("small-0"))[0]
    state.apply_report(WorkerId("w1"), ended.task_id, ended.current_attempt_id, SUCCEEDED, NOW + 3 * SEC)
    tx = one_pass(state, NOW + 3 * SEC)
    assert tx.assignments == []
    assert tx.pending_reasons["later"].startswith("reserved for another job: the room it fits is reserved for big")


def test_a_job_that_waited_past_reserve_after_goes_first_in_line_for_a_reservation(state: ControllerState) -> None:
    """No job starves behind better-standing work that keeps arriving: one that has waited past
    ``reserve_after`` (12 h by default) gets the reservation a job ranked above it would have taken."""
    from .test_sharing import configure

    configure(state, 'reserve_after = "12h"\n')
    state.max_reservations = 1
    for i in range(2):
        add_worker(state, f"w{i}", cpu=2)
        submit(state, f"long-{i}", owner="bob", cpu=2, timeout_seconds=24 * 3600)
    one_pass(state)
    submit(state, "old", owner="alice", cpu=2, now_ms=NOW + SEC)
    one_pass(state, NOW + SEC)
    assert [r.job_id for r in state.reservations] == ["old"]
    later = NOW + 6 * 3600 * SEC
    submit(state, "new", owner="adam", cpu=2, now_ms=later)  # ranks above "old" (a tie in standing: by name)
    one_pass(state, later)
    assert [r.job_id for r in state.reservations] == ["new"]  # ranked first, and "old" has waited only 6 h
    one_pass(state, NOW + 13 * 3600 * SEC)
    assert [r.job_id for r in state.reservations] == ["old"]  # 13 h: first in line


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 2), st.sampled_from([0, 30, 120, 900])), min_size=1, max_size=12),
       st.integers(200, 900))
def test_backfilled_work_ends_before_the_reservation_starts_and_arrivals_never_delay_it(
        arrivals: list[tuple[int, int]], long_timeout_s: int) -> None:
    """Properties: a reservation's start never moves later because lower-ranked work arrives, and
    whatever takes a reserved worker's room either ends (by its --timeout) before the start or
    leaves the reservation whole."""
    state = ControllerState()
    add_worker(state, "w1", cpu=4)
    submit(state, "long", owner="bob", cpu=4, timeout_seconds=long_timeout_s)
    one_pass(state)
    submit(state, "big", owner="alice", cpu=4)
    one_pass(state, NOW + SEC)
    (reservation,) = state.reservations
    start = reservation.start_ms
    assert start == NOW + long_timeout_s * SEC
    now = NOW + SEC
    for i, (cpu, timeout_s) in enumerate(arrivals):
        now += SEC
        submit(state, f"a{i}", owner="carol", cpu=cpu, timeout_seconds=timeout_s, priority="batch", now_ms=now)
        tx = one_pass(state, now)
        for task, _ in tx.assignments:
            job = state.get_job(task.job_id)
            assert job is not None and job.spec.timeout_seconds > 0
            assert now + job.spec.timeout_seconds * SEC <= start  # backfill ends in time
        if state.reservations:
            assert state.reservations[0].start_ms is not None and state.reservations[0].start_ms <= start


def test_why_says_where_a_job_stands_with_codes_and_numbers(state: ControllerState) -> None:
    """Issue 25 item 3: position (0 = next), reasons by code with numbers, the reservation held or
    waited behind, and the start estimate stated unknown with why."""
    from iris.cluster.controller.shareviews import REASON_CODES, why_view

    add_worker(state, "w1", cpu=4)
    submit(state, "long", owner="bob", cpu=3, timeout_seconds=600)
    one_pass(state)
    submit(state, "big", owner="alice", cpu=4)
    submit(state, "slow", owner="carol", cpu=1)
    submit(state, "huge", owner="dan", cpu=64)
    one_pass(state, NOW + SEC)
    big = why_view(state, state.get_job("big").job_id, NOW + 2 * SEC)  # type: ignore[union-attr]
    assert big.position == 0 and big.reservation is not None and big.reservation.start_ms == NOW + 600 * SEC
    assert [code for code, _ in big.reasons] == ["insufficient_resources"]
    assert big.reasons[0][1] == "0 of 1 workers have room for one task now (cpu 4, memory 1GiB); 1 could hold one"
    slow = why_view(state, state.get_job("slow").job_id, NOW + 2 * SEC)  # type: ignore[union-attr]
    assert slow.position == 1 and slow.waits_behind == "big"
    assert [code for code, _ in slow.reasons] == ["reserved_for_other", "behind_in_queue"]
    huge = why_view(state, state.get_job("huge").job_id, NOW + 2 * SEC)  # type: ignore[union-attr]
    assert huge.reasons[0] == ("never_fits", "never fits: no worker has 64 cpus (largest: 4)")
    assert huge.estimate.start_p50_ms is None and huge.estimate.unknown_reason == "no worker the fleet has can hold it"
    assert all(code in REASON_CODES for v in (big, slow, huge) for code, _ in v.reasons)
    # "long" must end within 600 s (its --timeout): big starts then; slow (1 cpu) fits beside big? No:
    # big takes the whole worker, so slow starts when big ends, which nothing predicts (no timeout).
    assert big.estimate.start_p90_ms == NOW + 600 * SEC  # by long's hard limit (p50: half of it)
    assert big.estimate.start_p50_ms == NOW + 300 * SEC
    assert slow.estimate.start_p50_ms is None and "no predicted end" in slow.estimate.unknown_reason
    running = why_view(state, state.get_job("long").job_id, NOW + 2 * SEC)  # type: ignore[union-attr]
    assert running.position == -1 and running.reasons == ()
