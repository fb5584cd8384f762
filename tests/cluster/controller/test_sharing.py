"""Sharing a fleet (issue 24): the sharing file, fair order within a band, guarantees and limits,
preemption by band and by reclaim (minimum lease, rate limit, gangs), durable decayed usage, and
the no-loop properties of the pure scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iris.cluster.controller.scheduler import Scheduler, SchedulingTransaction
from iris.cluster.controller.state import ControllerState
from iris.cluster.controller.store import ControllerStore
from iris.cluster.sharing import (
    DEFAULT_SHARING,
    SharingConfigError,
    UsageLedger,
    guarantee_ratio,
    parse_sharing,
    usage_over,
)
from iris.cluster.types import KILLED, PENDING, PREEMPTED, RUNNING, TaskId, WorkerId

from .builders import NOW, add_worker, submit

MIN = 60_000
LATER = NOW + 60 * MIN
"""An hour on: every attempt started at NOW is past the default 10-minute minimum lease."""


def one_pass(state: ControllerState, now_ms: int = NOW) -> SchedulingTransaction:
    """A full scheduling pass applied as the shell applies it (``before_pass``, the scheduler,
    ``after_pass``, assignments committed), every stop confirmed by the worker at once."""
    pending = state.before_pass(now_ms, False)
    tx = Scheduler(state).find_assignments(pending, state.get_available_workers(now_ms), now_ms,
                                           sharing=state.fair_inputs(now_ms))
    stopping = []
    for p in tx.preemptions:
        victim = state.get_task(p.victim.task_id)
        assert victim is not None and victim.worker_id is not None
        stopping.append((victim.worker_id, victim.task_id, victim.current_attempt_id))
    state.after_pass(now_ms, tx.timed_out_tasks, tx.preemptions, tx.never_fit, tx.fleet, tx.reservations)
    for worker, task_id, attempt in stopping:
        assert state.get_task(task_id).current_attempt_id == attempt + 1  # type: ignore[union-attr]
        state.apply_report(worker, task_id, attempt, KILLED, now_ms)  # the process is gone
    reasons = dict(tx.pending_reasons)
    for task, worker in tx.assignments:
        reasons.setdefault(task.job_id, "")
        assert state.commit_assignment(task.task_id, worker.worker_id, now_ms)
    state.set_pending_reasons(reasons)
    state.drain_effects()
    return tx


def running_by_owner(state: ControllerState) -> dict[str, int]:
    out: dict[str, int] = {}
    for job in state.list_jobs():
        for task in state.get_job_tasks(job.job_id):
            if task.state == RUNNING:
                out[job.owner] = out.get(job.owner, 0) + 1
    return out


def configure(state: ControllerState, text: str, now_ms: int = NOW) -> None:
    state.configure_sharing(parse_sharing(text, "sharing.toml"), now_ms)


# ------------------------------------------------------------------------------ the file


def test_a_sharing_file_with_every_key_is_read() -> None:
    config = parse_sharing("""
half_life = "7d"
min_lease = "10m"
max_preemptions_per_minute = 30
pack_delay = "1m"
pack_max_wait = "12h"
reserve_after = "6h"
[teams.research]
members = ["alice", "carol"]
weight = 2
guarantee = { cpu = 8, memory = "32GiB", gpu = { H100 = 8 } }
limit = { cpu = 64 }
[default]
weight = 1
""")
    research = config.policy("research")
    assert config.half_life_ms == 7 * 86_400_000 and config.min_lease_ms == 10 * MIN
    assert config.max_preemptions_per_minute == 30
    assert config.pack_delay_ms == MIN and config.pack_max_wait_ms == 12 * 60 * MIN
    assert DEFAULT_SHARING.pack_delay_ms == 2 * MIN and DEFAULT_SHARING.pack_max_wait_ms == 24 * 60 * MIN
    assert config.reserve_after_ms == 6 * 60 * MIN and DEFAULT_SHARING.reserve_after_ms == 12 * 60 * MIN
    assert research.weight == 2 and research.members == ("alice", "carol")
    assert dict(research.guarantee) == {"cpu": 8000, "memory": 32 * 2**30, "gpu:H100": 8}
    assert dict(research.limit) == {"cpu": 64000}
    assert config.team_of("alice") == config.team_of("carol") == "research"
    assert config.team_of("bob") == "bob" and config.policy("bob").own and config.policy("bob").weight == 1
    assert config.charge_key("gpu", "NVIDIA H100 80GB HBM3") == "gpu:H100"


def test_without_a_file_every_user_is_a_team_of_one_with_equal_weight() -> None:
    assert DEFAULT_SHARING.team_of("alice") == "alice" and DEFAULT_SHARING.team_of("bob") == "bob"
    assert DEFAULT_SHARING.policy("alice").weight == DEFAULT_SHARING.policy("bob").weight == 1
    assert not DEFAULT_SHARING.policy("alice").guarantee and not DEFAULT_SHARING.policy("alice").limit


@pytest.mark.parametrize(("text", "where"), [
    ("half_life = \"soon\"", "sharing.toml:1: half_life:"),
    ("colour = 1", "sharing.toml:1: colour: unknown setting"),
    ("[teams.a]\nmembers = [\"x\"]\nweight = 0", "sharing.toml:3: teams.a.weight: must be a number > 0"),
    ("[teams.a]\nmembers = [\"x\"]\n[teams.b]\nmembers = [\"x\"]", "sharing.toml:4: teams.b.members: 'x' is already"),
    ("[teams.a]\nguarantee = { cpu = 8 }\nlimit = { cpu = 4 }", "sharing.toml:3: teams.a.limit: cpu limit"),
    ("[teams.a]\nguarantee = { disks = 1 }", "sharing.toml:2: teams.a.guarantee.disks: unknown resource"),
    ("[teams.a]\nguarantee = { gpu = 8 }", "sharing.toml:2: teams.a.guarantee.gpu: expected counts by variant"),
    ("[default]\nmembers = [\"x\"]", "sharing.toml:2: default.members: unknown setting"),
    ("max_preemptions_per_minute = -1", "sharing.toml:1: max_preemptions_per_minute: must be a whole number"),
    ("pack_delay = \"later\"", "sharing.toml:1: pack_delay:"),
    ("min_lease = \"1m\"\npack_max_wait = true", "sharing.toml:2: pack_max_wait: must be a duration"),
    ("reserve_after = \"-1h\"", "sharing.toml:1: reserve_after:"),
    ("[teams.a", "sharing.toml: not valid TOML"),
])
def test_a_bad_sharing_file_is_refused_naming_the_line_and_field(text: str, where: str) -> None:
    with pytest.raises(SharingConfigError) as e:
        parse_sharing(text, "sharing.toml")
    assert str(e.value).startswith(where), str(e.value)


def test_usage_decays_with_its_half_life_and_is_integrated_exactly() -> None:
    day = 86_400_000
    ledger = UsageLedger(half_life_ms=day)
    ledger.charge("alice", 100.0, NOW)
    assert ledger.value("alice", NOW + day) == pytest.approx(50.0)
    assert ledger.value("alice", NOW + 2 * day) == pytest.approx(25.0)
    # Holding the whole fleet for one half-life leaves half-life/ln2 x (1 - 1/2) share-seconds.
    assert usage_over(1.0, 0, day, day) == pytest.approx(day / 1000 / 0.693147 * 0.5, rel=1e-4)
    assert usage_over(0.5, 0, 1000, 0) == 0.5  # no decay: share x seconds


# ------------------------------------------------------------------------------ order within a band


def test_two_users_share_an_empty_fleet_equally_whoever_submitted_first(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=4)
    add_worker(state, "w2", cpu=4)
    for i in range(8):
        submit(state, f"a{i}", owner="alice")
    for i in range(8):
        submit(state, f"b{i}", owner="bob")
    one_pass(state)
    assert running_by_owner(state) == {"alice": 4, "bob": 4}


def test_teams_share_by_weight(state: ControllerState) -> None:
    configure(state, '[teams.big]\nmembers = ["alice"]\nweight = 2\n[teams.small]\nmembers = ["bob"]\n')
    add_worker(state, "w1", cpu=9)
    for i in range(9):
        submit(state, f"b{i}", owner="bob")
        submit(state, f"a{i}", owner="alice")
    one_pass(state)
    assert running_by_owner(state) == {"alice": 6, "bob": 3}


def test_a_team_under_its_guarantee_goes_before_one_with_less_usage(state: ControllerState) -> None:
    configure(state, '[teams.g]\nmembers = ["alice"]\nguarantee = { cpu = 3 }\n')
    state.shares.ledger.charge("alice", 1000.0, NOW)  # alice used much more than bob
    add_worker(state, "w1", cpu=4)
    for i in range(4):
        submit(state, f"b{i}", owner="bob")
        submit(state, f"a{i}", owner="alice")
    one_pass(state)
    assert running_by_owner(state) == {"alice": 3, "bob": 1}


def test_usage_orders_users_within_a_band(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=1)
    state.shares.ledger.charge("alice", 50.0, NOW)
    submit(state, "a", owner="alice")
    submit(state, "b", owner="bob")
    tx = one_pass(state)
    assert [t.job_id for t, _ in tx.assignments] == ["b"]


def test_a_team_at_its_limit_waits_even_with_room_left(state: ControllerState) -> None:
    configure(state, '[teams.capped]\nmembers = ["alice"]\nlimit = { cpu = 2 }\n')
    add_worker(state, "w1", cpu=8)
    submit(state, "a", owner="alice", replicas=4)
    tx = one_pass(state)
    assert running_by_owner(state) == {"alice": 2}
    assert tx.pending_reasons["a"] == "team capped is at its limit (cpu 2)"


def test_bands_come_before_shares(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    submit(state, "bulk", owner="bob", replicas=2, priority="batch")
    submit(state, "a", owner="alice", replicas=2)
    state.shares.ledger.charge("alice", 1e6, NOW)  # however much alice used, her interactive work goes first
    one_pass(state)
    assert running_by_owner(state) == {"alice": 2}


# ------------------------------------------------------------------------------ whole workers to whole work


def test_a_small_task_leaves_a_wholly_free_worker_to_work_that_takes_it_whole(state: ControllerState) -> None:
    add_worker(state, "g1", cpu=16, gpus=8)
    add_worker(state, "g2", cpu=16, gpus=8)
    submit(state, "filler", owner="carol", gpus=6, priority="batch")
    one_pass(state)  # g1 is partly used: 2 GPUs free
    submit(state, "small", owner="alice", gpus=4, priority="batch")
    submit(state, "tiny", owner="alice", gpus=2, priority="batch")
    submit(state, "whole", owner="bob", gpus=8, priority="batch", now_ms=NOW + 1)
    state.shares.ledger.charge("bob", 1e6, NOW)  # alice's team is first in the fair order
    tx = one_pass(state, NOW + 2)
    assert sorted((t.job_id, w.worker_id) for t, w in tx.assignments) == [("tiny", "g1"), ("whole", "g2")]
    assert tx.pending_reasons["small"].startswith("waiting for free")  # no partly used worker holds it yet
    assert "it left wholly free workers to work that takes them whole" in tx.pending_reasons["small"]
    assert tx.preemptions == []


def test_a_held_task_takes_the_whole_worker_when_no_whole_work_wants_it(state: ControllerState) -> None:
    add_worker(state, "g1", cpu=16, gpus=8)
    submit(state, "small", owner="alice", gpus=1, replicas=3, priority="batch")
    submit(state, "other", owner="bob", gpus=2, priority="batch")
    tx = one_pass(state)
    assert sorted(t.task_id for t, _ in tx.assignments) == ["other/task-0", "small/task-0", "small/task-1",
                                                             "small/task-2"]


def small_first_and_whole_work(state: ControllerState, sharing: str) -> None:
    """One 8-GPU worker; alice's 1-GPU batch job is first in the fair order, bob's 8-GPU job next."""
    configure(state, sharing)
    add_worker(state, "g1", cpu=16, gpus=8)
    submit(state, "small", owner="alice", gpus=1, priority="batch")
    submit(state, "whole", owner="bob", gpus=8, priority="batch")
    state.shares.ledger.charge("bob", 1e6, NOW)


def test_a_small_task_waits_for_whole_work_only_as_long_as_pack_max_wait(state: ControllerState) -> None:
    small_first_and_whole_work(state, 'pack_delay = "1m"\npack_max_wait = "10m"\n')
    assert [t.job_id for t, _ in one_pass(state, NOW + 5 * MIN).assignments] == ["whole"]
    add_worker(state, "g2", cpu=16, gpus=8, now_ms=NOW + 11 * MIN)
    submit(state, "whole2", owner="bob", gpus=8, priority="batch", now_ms=NOW + 11 * MIN)
    tx = one_pass(state, NOW + 11 * MIN)  # past pack_max_wait: it goes in its fair turn, first
    assert [t.job_id for t, _ in tx.assignments] == ["small"]


def test_a_young_small_task_yields_to_lower_bands_whole_work_only_for_pack_delay(state: ControllerState) -> None:
    configure(state, 'pack_delay = "2m"\n')
    add_worker(state, "g1", cpu=16, gpus=8)
    add_worker(state, "g2", cpu=16, gpus=8)
    submit(state, "bulk", owner="bob", gpus=8, replicas=2, priority="batch")
    submit(state, "urgent", owner="alice", gpus=1)  # interactive, young
    tx = one_pass(state, NOW + 1000)
    assert sorted(t.job_id for t, _ in tx.assignments) == ["bulk", "bulk"]
    assert tx.preemptions == []  # a task that chose to wait preempts nothing
    tx = one_pass(state, LATER)  # past pack_delay: its band goes first again, and may preempt
    assert [p.by.job_id for p in tx.preemptions] == ["urgent"]


def test_production_work_never_yields_to_lower_bands(state: ControllerState) -> None:
    add_worker(state, "g1", cpu=16, gpus=8)
    submit(state, "bulk", owner="bob", gpus=8, priority="batch")
    submit(state, "prod", owner="alice", gpus=1, priority="production")
    tx = one_pass(state, NOW + 1000)
    assert [t.job_id for t, _ in tx.assignments] == ["prod"]


def test_packing_is_off_with_both_delays_zero(state: ControllerState) -> None:
    small_first_and_whole_work(state, 'pack_delay = "0s"\npack_max_wait = "0s"\n')
    assert [t.job_id for t, _ in one_pass(state, NOW + 1000).assignments] == ["small"]


# ------------------------------------------------------------------------------ preemption


def test_interactive_work_preempts_batch_work_past_its_minimum_lease(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    _, batch = submit(state, "bulk", owner="bob", replicas=2, priority="batch")
    one_pass(state)
    submit(state, "urgent", owner="alice", now_ms=NOW + MIN)
    young = one_pass(state, NOW + MIN)
    assert young.preemptions == [] and "waiting for free" in young.pending_reasons["urgent"]

    tx = one_pass(state, LATER)
    assert [(p.victim.task_id, p.why) for p in tx.preemptions] == [("bulk/task-1", "interactive work over batch")]
    victim = state.get_task(TaskId("bulk/task-1"))
    assert victim is not None and victim.state == PENDING
    last = victim.attempts[-1]
    assert last.state == PREEMPTED and last.charged_to == "none" and last.decided_by == "preempted"
    assert last.error == "preempted by urgent (interactive work over batch)"
    assert victim.policy_preemptions() == 1 and victim.failure_count == victim.preemption_count == 0
    assert tx.pending_reasons["urgent"].startswith("preempting 1 task (interactive work over batch)")
    one_pass(state, LATER + 1)
    assert state.get_task(TaskId("urgent/task-0")).state == RUNNING  # type: ignore[union-attr]
    assert batch[0].state == RUNNING  # one victim was enough


def test_production_work_preempts_even_inside_the_minimum_lease(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=1)
    submit(state, "bulk", owner="bob", priority="batch")
    one_pass(state)
    submit(state, "prod", owner="alice", priority="production")
    tx = one_pass(state, NOW + 1000)
    assert [p.victim.task_id for p in tx.preemptions] == ["bulk/task-0"]


def test_the_same_band_never_preempts_without_a_guarantee(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    submit(state, "a", owner="alice", replicas=2)
    one_pass(state)
    submit(state, "b", owner="bob")
    assert one_pass(state, LATER).preemptions == []


def test_a_team_below_its_guarantee_reclaims_but_never_below_the_other_s_guarantee(state: ControllerState) -> None:
    configure(state, '[teams.r]\nmembers = ["alice"]\nguarantee = { cpu = 3 }\n'
                     '[teams.p]\nmembers = ["bob"]\nguarantee = { cpu = 2 }\n')
    add_worker(state, "w1", cpu=6)
    submit(state, "bobs", owner="bob", replicas=6)
    one_pass(state)
    assert running_by_owner(state) == {"bob": 6}  # idle room is borrowed
    submit(state, "alices", owner="alice", replicas=6)
    tx = one_pass(state, LATER)
    assert len(tx.preemptions) == 3 and {p.why for p in tx.preemptions} == {"team r reclaiming its guarantee from team p"}
    for i in range(3):
        one_pass(state, LATER + 1 + i)
    assert running_by_owner(state) == {"alice": 3, "bob": 3}  # alice at her guarantee, bob above his


def test_a_coscheduled_job_is_preempted_as_a_whole_gang(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=2)
    add_worker(state, "w2", cpu=2)
    submit(state, "gang", owner="bob", replicas=2, cpu=2, coscheduled=True, priority="batch")
    one_pass(state)
    submit(state, "small", owner="alice")
    tx = one_pass(state, LATER)
    assert sorted(p.victim.task_id for p in tx.preemptions) == ["gang/task-0", "gang/task-1"]


def test_a_gang_can_preempt_and_is_placed_all_at_once(state: ControllerState) -> None:
    for w in ("w1", "w2", "w3"):
        add_worker(state, w, cpu=1)
    submit(state, "bulk", owner="bob", replicas=3, priority="batch")
    one_pass(state)
    submit(state, "gang", owner="alice", replicas=2, coscheduled=True)
    tx = one_pass(state, LATER)
    assert len(tx.preemptions) == 2
    one_pass(state, LATER + 1)
    assert running_by_owner(state) == {"alice": 2, "bob": 1}


def test_preemptions_are_rate_limited_per_minute(state: ControllerState) -> None:
    configure(state, "max_preemptions_per_minute = 2\n")
    add_worker(state, "w1", cpu=4)
    submit(state, "bulk", owner="bob", replicas=4, priority="batch")
    one_pass(state)
    for i in range(4):
        submit(state, f"u{i}", owner="alice")
    assert len(one_pass(state, LATER).preemptions) == 2
    assert one_pass(state, LATER + 1000).preemptions == []
    assert len(one_pass(state, LATER + MIN + 1).preemptions) == 2


def test_a_reload_counts_running_work_again_and_stops_nothing(state: ControllerState) -> None:
    add_worker(state, "w1", cpu=4)
    submit(state, "a", owner="alice", replicas=2)
    one_pass(state)
    configure(state, '[teams.t]\nmembers = ["alice"]\nlimit = { cpu = 1 }\n', NOW + 1)
    assert running_by_owner(state) == {"alice": 2}  # over the new limit: kept, nothing more placed
    assert state.shares.team_held["t"]["cpu"] == 2000
    submit(state, "more", owner="alice")
    assert one_pass(state, NOW + 2).assignments == []


# ------------------------------------------------------------------------------ usage


def test_an_ended_attempt_charges_its_owner_and_usage_survives_a_restart(tmp_path: Path) -> None:
    store = ControllerStore.open(tmp_path)
    state = ControllerState()
    add_worker(state, "w1", cpu=4)
    _, tasks = submit(state, "a", owner="alice", cpu=2)
    one_pass(state)
    state.apply_report(WorkerId("w1"), tasks[0].task_id, 0, 4, NOW + 3_600_000)  # SUCCEEDED after an hour
    store.write(state, state.drain_effects())
    charged = state.shares.ledger.value("alice", NOW + 3_600_000)
    assert charged == pytest.approx(0.5 * 3600, rel=0.01)  # half the fleet's cpu for an hour, barely decayed
    store.close()
    with ControllerStore.open(tmp_path) as again:
        loaded = again.load()
    assert loaded.shares.ledger.value("alice", NOW + 3_600_000) == pytest.approx(charged)


# ------------------------------------------------------------------------------ no loops (Hypothesis)

_USERS = ("alice", "bob", "carol")


@st.composite
def _fleets(draw: st.DrawFn) -> tuple[str, list[int], list[tuple[str, str, int, int, bool]], list[tuple[str, str, int, int, bool]]]:
    guarantees = [draw(st.integers(0, 4)) for _ in range(2)]
    text = 'min_lease = "0s"\nmax_preemptions_per_minute = 1000\n'
    if draw(st.booleans()):  # sizes count GPUs, and small work may leave wholly free workers to whole work
        text += f'gpus = true\npack_delay = "{draw(st.sampled_from(("0s", "0.001", "2m")))}"\n'
        text += f'pack_max_wait = "{draw(st.sampled_from(("0s", "0.003", "24h")))}"\n'
    text += '[teams.t1]\nmembers = ["alice"]\n' + (f"guarantee = {{ cpu = {guarantees[0]} }}\n" if guarantees[0] else "")
    text += '[teams.t2]\nmembers = ["bob"]\n' + (f"guarantee = {{ cpu = {guarantees[1]} }}\n" if guarantees[1] else "")
    workers = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    job = st.tuples(st.sampled_from(_USERS), st.sampled_from(("production", "interactive", "batch")),
                    st.integers(1, 3), st.integers(1, 2), st.booleans())
    first = draw(st.lists(job, min_size=1, max_size=5))
    later = draw(st.lists(job, min_size=1, max_size=5))
    return text, workers, first, later


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fleets())
@example(('min_lease = "0s"\nmax_preemptions_per_minute = 1000\n[teams.t1]\nmembers = ["alice"]\n'
          'guarantee = { cpu = 2 }\n[teams.t2]\nmembers = ["bob"]\nguarantee = { cpu = 1 }\n',
          [2], [("bob", "production", 2, 1, False)], [("alice", "production", 1, 2, False)]))  # two victims of one team
def test_repeated_passes_reach_a_fixed_point_without_loops(case: tuple[str, list[int], list[tuple[str, str, int, int, bool]], list[tuple[str, str, int, int, bool]]]) -> None:
    """From any fleet, queue and configuration, repeated passes with no new arrivals reach a fixed
    point; no attempt is preempted by work it would in turn preempt; a reclaim never takes a team
    below its guarantee."""
    text, workers, first, later = case
    gpus = "gpus = true\n" in text
    state = ControllerState()
    configure(state, text.replace("gpus = true\n", ""))
    for i, size in enumerate(workers):
        add_worker(state, f"w{i}", **({"cpu": 8, "gpus": size} if gpus else {"cpu": size}))  # type: ignore[arg-type]
    for i, (user, band, replicas, size, gang) in enumerate(first):
        submit(state, f"f{i}", owner=user, priority=band, replicas=replicas, coscheduled=gang,
               **({"cpu": 1, "gpus": size} if gpus else {"cpu": size}))
    now = NOW
    one_pass(state, now)
    for i, (user, band, replicas, size, gang) in enumerate(later):
        submit(state, f"l{i}", owner=user, priority=band, replicas=replicas, coscheduled=gang, now_ms=now,
               **({"cpu": 1, "gpus": size} if gpus else {"cpu": size}))
    preempted_by: set[tuple[str, str]] = set()
    quiet = 0
    for _ in range(60):
        now += 1
        tx = one_pass(state, now)
        for p in tx.preemptions:
            pair = (p.victim.job_id, p.by.job_id)
            assert (pair[1], pair[0]) not in preempted_by, f"{pair[1]} was preempted by {pair[0]} and then preempted it"
            preempted_by.add(pair)
            if all(q.why.startswith("team ") for q in tx.preemptions):  # band preemptions may take any team lower
                team = state.shares.config.team_of(state.get_job(p.victim.job_id).owner)  # type: ignore[union-attr]
                guarantee = state.shares.config.policy(team).guarantee
                held = state.shares.team_held.get(team, {})
                assert guarantee_ratio(held, guarantee) >= 1, f"team {team} reclaimed below its guarantee"
        quiet = quiet + 1 if not tx.preemptions and not tx.assignments else 0
        if quiet >= 2:
            break
    assert quiet >= 2, "the passes did not settle"
    state.check_invariants()


def test_a_gpu_request_without_a_variant_is_charged_to_the_variant_it_runs_on(state: ControllerState) -> None:
    configure(state, '[teams.t]\nmembers = ["alice"]\nguarantee = { gpu = { H100 = 4 } }\n')
    add_worker(state, "g1", cpu=8, gpus=4, gpu_name="NVIDIA H100 80GB HBM3")
    add_worker(state, "g2", cpu=8, gpus=4, gpu_name="NVIDIA A100-SXM4-40GB")
    submit(state, "any", owner="alice", gpus=2)  # no variant: goes where it fits first
    submit(state, "bob", owner="bob", gpus=4, gpu_variant="A100")
    one_pass(state)
    assert state.shares.team_held["t"]["gpu:H100"] == 2  # the configured variant its worker matches
    assert state.shares.team_held["bob"]["gpu:NVIDIA A100-SXM4-40GB"] == 4  # a variant no team names: its own
    assert state.shares.fleet["gpu:H100"] == 4 and state.shares.fleet["gpu:NVIDIA A100-SXM4-40GB"] == 4
