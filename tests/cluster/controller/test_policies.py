"""The failure policies as pure functions: plain values in, a decision with its reason out."""

from __future__ import annotations

from iris.cluster.controller import policies
from iris.cluster.controller.policies import FailJob, Quarantine, Reason, RestartGang, StreakEntry
from iris.cluster.controller.task import TaskAttempt
from iris.cluster.types import FAILED, KILLED, SUCCEEDED, JobId, TaskId, WorkerId


def failed(error: str = "OSError: disk full", charged_to: str = "failure", ran_ms: int = 1000) -> TaskAttempt:
    return TaskAttempt(0, WorkerId("w"), FAILED, 1, 1 + ran_ms, 1, error, charged_to=charged_to)


def test_policy_exit_rule_fails_the_job_naming_the_rule() -> None:
    assert policies.exit_rule("", "boom") is None
    assert policies.exit_rule("--on-exit 2=fail-job", "bad config") == FailJob(
        Reason.EXIT_RULE, "--on-exit 2=fail-job: bad config")


def test_policy_similar_failures_counts_distinct_tasks_and_needs_no_success() -> None:
    last = failed()
    assert policies.similar_failures(3, last, 2, {0, 1}, 8, False) == FailJob(
        Reason.SIMILAR_FAILURES, "3 of 8 tasks failed with: OSError: disk full")
    assert policies.similar_failures(3, last, 1, {0, 1}, 8, False) is None  # the same task again
    assert policies.similar_failures(3, last, 2, {0, 1}, 8, True) is None  # a task succeeded
    assert policies.similar_failures(3, failed(charged_to="preemption"), 2, {0, 1}, 8, False) is None
    assert policies.similar_failures(0, last, 2, {0, 1}, 8, False) is None
    assert policies.failure_key(failed("Traceback ...\nValueError: x")) == policies.failure_key(
        failed("Traceback ...\nValueError: x"))


def test_policy_gang_restart_only_for_a_coscheduled_retry() -> None:
    assert policies.gang_restart(True, True, TaskId("g/task-1")) == RestartGang(TaskId("g/task-1"))
    assert policies.gang_restart(False, True, TaskId("g/task-1")) is None
    assert policies.gang_restart(True, False, TaskId("g/task-1")) is None


def test_policy_streak_is_extended_by_quick_failures_and_cleared_by_success_or_a_long_run() -> None:
    assert policies.extends_streak(failed(ran_ms=1000), 2000) is True
    assert policies.extends_streak(failed(ran_ms=policies.QUICK_FAILURE_MS + 1), 10**9) is False
    assert policies.extends_streak(TaskAttempt(0, WorkerId("w"), SUCCEEDED, 0, 5), 10) is False
    assert policies.extends_streak(TaskAttempt(0, WorkerId("w"), KILLED, 0, 5, charged_to="none"), 10) is None


def streak(owners: list[str]) -> list[StreakEntry]:
    return [StreakEntry(TaskId(f"j{i}/task-0"), 0, JobId(f"j{i}"), owner) for i, owner in enumerate(owners)]


def test_policy_quarantine_needs_two_owners_vindicated_and_a_small_share_of_the_fleet() -> None:
    two = streak(["alice", "bob", "alice"])
    decision = policies.quarantine(two, {"alice", "bob"}, 3, 0, 20, 0, now_ms=1000)
    assert isinstance(decision, Quarantine) and decision.reason is Reason.QUARANTINE
    assert decision.until_ms == 1000 + policies.QUARANTINE_COOLDOWN_MS and decision.forgiven == tuple(two)
    assert policies.quarantine(two, {"alice", "bob"}, 3, 2, 20, 0, 0).until_ms == 4 * policies.QUARANTINE_COOLDOWN_MS  # type: ignore[union-attr]
    assert policies.quarantine(two, {"alice", "bob"}, 4, 0, 20, 0, 0) is None  # not enough in a row
    assert policies.quarantine(streak(["alice"] * 3), {"alice"}, 3, 0, 20, 0, 0) is None  # one owner
    assert policies.quarantine(two, {"alice"}, 3, 0, 20, 0, 0) is None  # not shown to succeed elsewhere
    assert policies.quarantine(two, {"alice", "bob"}, 3, 0, 20, 1, 0) is not None  # a second of 20 may go
    assert policies.quarantine(two, {"alice", "bob"}, 3, 0, 20, 2, 0) is None  # a tenth already out
    assert policies.quarantine(two, {"alice", "bob"}, 0, 0, 20, 0, 0) is None  # off
