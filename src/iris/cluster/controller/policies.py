"""The controller's failure policies (DESIGN §4), as named pure functions that return decisions.

Each policy looks at plain values and says what should happen; ``ControllerState`` applies the
decision (ends the job, stops the gang, quarantines the worker) and keeps the bookkeeping. A
decision carries a ``Reason`` code, so logs, actions and tests name the same thing.

1. ``exit_rule``: an exit rule said ``fail-job`` for the code a task ended with.
2. ``similar_failures``: ``max_similar_failures`` tasks failed with the same error and none succeeded.
3. ``gang_restart``: a task of a coscheduled job will be retried: the whole gang goes again together.
   Blame by cause (``gang_cause``): no common clock across hosts, so the controller holds a gang's
   first failure for ``GANG_BLAME_WINDOW_MS`` and collects the other members' ends; a member killed
   by a signal Iris did not send is the cause, else the first end received. Only that one is charged.
4. ``quarantine``: attempts of two owners' jobs failed quickly on one worker in a row while they
   succeed elsewhere: the worker is taken out for a cool-down (never more than a tenth of the
   fleet), and those failures are charged to no budget.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from iris.cluster.controller.task import TaskAttempt
from iris.cluster.failures import failure_signature, last_line
from iris.cluster.types import FAILED, SUCCEEDED, JobId, TaskId

QUICK_FAILURE_MS = 60_000
"""An attempt that fails within this long of its start "failed quickly" (it extends its worker's streak)."""
QUARANTINE_COOLDOWN_MS = 5 * 60_000
"""The first quarantine of a worker; each next one doubles."""
STREAK_CAP = 1000
"""A worker's streak keeps at most max(this, 4 x quarantine_after) entries."""
MAX_QUARANTINED_SHARE = 10
"""At most one worker in this many of the healthy fleet is quarantined at once."""
GANG_BLAME_WINDOW_MS = 5000
"""How long a coscheduled job's first failure waits for its other members' ends before the gang
restart is decided. A peer's "connection reset" comes within milliseconds of the real death, but
the worker holds back the report of a death by signal for up to 2 s (``SIGNAL_SETTLE_S``: was its
worker being stopped by the same signal?), so the window is longer than that plus a report's trip.
It is decided at once when every live member has ended (the usual case: the others die of the loss)."""


class Reason(StrEnum):
    EXIT_RULE = "exit_rule"
    SIMILAR_FAILURES = "similar_failures"
    GANG_RESTART = "gang_restart"
    QUARANTINE = "quarantine"


@dataclass(frozen=True, slots=True)
class FailJob:
    """End the job FAILED now with ``error``."""

    reason: Reason
    error: str


@dataclass(frozen=True, slots=True)
class RestartGang:
    """Stop the gang's other running attempts (KILLED, charged to nobody) and place it again."""

    trigger: TaskId
    reason: Reason = Reason.GANG_RESTART


@dataclass(frozen=True, slots=True)
class StreakEntry:
    """An attempt that failed to start or failed quickly on a worker."""

    task_id: TaskId
    attempt_id: int
    job_id: JobId
    owner: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Take the worker out until ``until_ms``; the streak's failures are charged to no budget."""

    until_ms: int
    message: str
    forgiven: tuple[StreakEntry, ...]
    reason: Reason = Reason.QUARANTINE


# -- 1 and 2: the job's own rules ---------------------------------------------------------------


def exit_rule(fail_job: str, error: str | None) -> FailJob | None:
    """An exit rule matched with ``fail-job`` (``Task.fail_job`` names the rule)."""
    if not fail_job:
        return None
    return FailJob(Reason.EXIT_RULE, f"{fail_job}: {error or 'failed'}")


def counts_as_similar(last: TaskAttempt | None, any_succeeded: bool) -> bool:
    """Whether an ended attempt counts toward ``similar_failures``: a real failure (charged to the
    failure budget) in a job none of whose tasks succeeded."""
    return last is not None and last.charged_to == "failure" and last.state == FAILED and not any_succeeded


def similar_failures(k: int, last: TaskAttempt | None, task_index: int, seen: Collection[int], num_tasks: int,
                     any_succeeded: bool) -> FailJob | None:
    """``seen``: the tasks already failed with ``failure_key(last)``. Fail the job once ``k`` tasks
    failed alike (a real failure, charged to the failure budget) while none succeeded."""
    if not k or last is None or not counts_as_similar(last, any_succeeded):
        return None
    count = len(seen) + (task_index not in seen)
    if count < k:
        return None
    return FailJob(Reason.SIMILAR_FAILURES, f"{count} of {num_tasks} tasks failed with: "
                                            f"{last_line(last.error) or f'exit code {last.exit_code}'}")


def failure_key(attempt: TaskAttempt) -> str:
    """What makes two failures alike: the error's signature, else the exit code."""
    return failure_signature(attempt.error) or f"exit code {attempt.exit_code}"


# -- 3: gangs ------------------------------------------------------------------------------------


def gang_restart(coscheduled: bool, will_retry: bool, trigger: TaskId) -> RestartGang | None:
    """A task of a coscheduled job will be retried: the others go with it (DESIGN §4)."""
    return RestartGang(trigger) if coscheduled and will_retry else None


@dataclass(frozen=True, slots=True)
class MemberEnd:
    """A gang member's failure, as its worker reported it, held for the blame window."""

    task_id: TaskId
    task_index: int
    attempt_id: int
    exit_code: int | None
    error: str | None


def killed_by_signal(exit_code: int | None) -> bool:
    """Ended by a signal (-N as the worker reports a process's death, or 128+N as a shell reports
    its child's). A FAILED report never stands for a kill Iris sent: those end KILLED."""
    return exit_code is not None and (exit_code < 0 or 128 < exit_code <= 128 + 64)


def gang_cause(ends: Sequence[MemberEnd]) -> MemberEnd:
    """Which member's end started the gang restart: the first killed by a signal Iris did not send
    (the others died of losing it: "connection reset by peer"), else the first received."""
    return next((end for end in ends if killed_by_signal(end.exit_code)), ends[0])


def describe_end(exit_code: int | None, error: str | None) -> str:
    """One line for how an attempt ended: its error's last line, else its exit code."""
    return last_line(error) or (f"exit code {exit_code}" if exit_code is not None else "failed")


# -- 4: workers ----------------------------------------------------------------------------------


def extends_streak(attempt: TaskAttempt, now_ms: int) -> bool | None:
    """How an ended attempt changes its worker's streak: True extends it (a failure that came
    quickly), False clears it (a success, or a failure after running a while: the task's own
    fault), None leaves it (a preemption, a kill)."""
    if attempt.state == SUCCEEDED:
        return False
    if attempt.charged_to != "failure":
        return None
    started = attempt.started_at_ms or now_ms
    return (attempt.finished_at_ms or now_ms) - started <= QUICK_FAILURE_MS


def quarantine(streak: Sequence[StreakEntry], vindicated_owners: Collection[str], quarantine_after: int,
               previous_quarantines: int, fleet: int, quarantined: int, now_ms: int) -> Quarantine | None:
    """Quarantine a worker when ``quarantine_after`` attempts in a row failed quickly there, of two
    owners' jobs, and two owners' jobs (``vindicated_owners``) succeed elsewhere; never more than a
    tenth of the healthy ``fleet`` at once. The cool-down doubles with each quarantine."""
    if not quarantine_after or len(streak) < quarantine_after:
        return None
    owners = {entry.owner for entry in streak}
    if len(owners) < 2:
        return None  # one user's jobs failing is that user's problem, not the worker's
    if len(vindicated_owners) < 2:
        return None  # the same jobs must succeed elsewhere, for two owners
    if (quarantined + 1) * MAX_QUARANTINED_SHARE > fleet:
        return None
    cooldown = QUARANTINE_COOLDOWN_MS * 2 ** min(previous_quarantines, 10)
    message = (f"{len(streak)} attempts of {len(owners)} owners' jobs failed quickly here in a row while they "
               f"succeed elsewhere (cool-down {cooldown // 1000}s)")
    return Quarantine(now_ms + cooldown, message, tuple(streak))
