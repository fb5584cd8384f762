"""One task of a job and its retry budgets. Pure: time comes in as ``now_ms``.

State diagram (DESIGN §3)::

    PENDING --dispatch--> RUNNING <--> BUILDING
    PENDING --> UNSCHEDULABLE | KILLED
    RUNNING/BUILDING --> SUCCEEDED | KILLED
    RUNNING/BUILDING --failure--> PENDING (new attempt) while failure_count <= max_retries_failure, else FAILED
    RUNNING/BUILDING --worker failure--> PENDING (new attempt) while preemption_count <= max_retries_preemption,
                                         else WORKER_FAILED

Every attempt that ends is appended to ``attempts`` with the state it really ended in, its worker,
exit code, error and times (DESIGN §4.3). A task that has ended never changes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from iris.cluster.failures import FAIL_JOB, PREEMPTION, ExitRule, is_memory_kill, retry_delay_ms, rule_for
from iris.cluster.spec import DEFAULT_MAX_RETRIES_PREEMPTION
from iris.cluster.types import (
    ACTIVE_TASK_STATES,
    TERMINAL_TASK_STATES,
    JobId,
    TaskId,
    WorkerId,
)
from iris.cluster.types import BUILDING as BUILDING
from iris.cluster.types import FAILED as FAILED
from iris.cluster.types import KILLED as KILLED
from iris.cluster.types import PENDING as PENDING
from iris.cluster.types import PREEMPTED as PREEMPTED
from iris.cluster.types import RUNNING as RUNNING
from iris.cluster.types import SUCCEEDED as SUCCEEDED
from iris.cluster.types import UNSCHEDULABLE as UNSCHEDULABLE
from iris.cluster.types import WORKER_FAILED as WORKER_FAILED

_ALLOWED: dict[int, frozenset[int]] = {
    PENDING: frozenset({BUILDING, RUNNING, KILLED, UNSCHEDULABLE}),
    BUILDING: frozenset({RUNNING, SUCCEEDED, FAILED, KILLED, WORKER_FAILED}),
    RUNNING: frozenset({BUILDING, SUCCEEDED, FAILED, KILLED, WORKER_FAILED}),
}
"""Allowed moves out of each live state. Terminal states allow nothing."""


class InvalidTransition(Exception):
    """A move the state machine does not allow: a bug in the caller, not bad input."""

    def __init__(self, task_id: str, old_state: int, new_state: int) -> None:
        super().__init__(f"task {task_id}: invalid transition {old_state} -> {new_state}")
        self.task_id = task_id
        self.old_state = old_state
        self.new_state = new_state


class TaskTransitionResult(Enum):
    COMPLETE = "complete"
    """The transition was applied (the task may or may not have ended)."""
    SHOULD_RETRY = "should_retry"
    """The attempt failed within budget: the task is PENDING again with a new attempt id."""
    EXCEEDED_RETRY_LIMIT = "exceeded_retry_limit"
    """The attempt failed and the budget is spent: the task ended FAILED or WORKER_FAILED."""
    IGNORED = "ignored"
    """Nothing changed: the task had already ended, or the state was already the current one."""


GANG_RESTART = "gang restart"
"""``decided_by`` of an attempt a gang restart stopped."""
TIME_CAUSES = ("useful", "failure", "preemption", "gang")
"""How an attempt's running time counts: it succeeded, it failed, it was preempted, a gang restart
stopped it (other stops are none of these)."""


@dataclass(slots=True)
class TaskAttempt:
    """Record of a single execution attempt."""

    attempt_id: int
    worker_id: WorkerId | None = None
    state: int = PENDING
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    exit_code: int | None = None
    error: str | None = None
    is_worker_failure: bool = False
    charged_to: str = ""
    """The budget it spent: "failure", "preemption", "none" (a gang restart, a stop, a quarantined
    worker's fault), "" (it succeeded)."""
    decided_by: str = ""
    """What decided that: an exit rule ("--on-exit 75=preemption"), "gang restart", "timed out"..."""
    band: str = ""
    """The priority band it was placed under ("": before bands existed)."""

    def time_cause(self) -> str | None:
        """Which of ``TIME_CAUSES`` this attempt's running time counts as (None: a stop, no cause)."""
        if self.state == SUCCEEDED:
            return "useful"
        if self.decided_by == GANG_RESTART:
            return "gang"
        if self.charged_to in ("failure", "preemption"):
            return self.charged_to
        return None

    def running_ms(self) -> int:
        if self.started_at_ms is None or self.finished_at_ms is None:
            return 0
        return max(0, self.finished_at_ms - self.started_at_ms)


@dataclass(slots=True)
class Task:
    """The controller's record of one task of a job (id ``"{job_id}/task-{index}"``)."""

    task_id: TaskId
    job_id: JobId
    task_index: int

    state: int = PENDING
    worker_id: WorkerId | None = None

    failure_count: int = 0
    preemption_count: int = 0
    max_retries_failure: int = 0
    max_retries_preemption: int = DEFAULT_MAX_RETRIES_PREEMPTION

    current_attempt_id: int = 0
    attempts: list[TaskAttempt] = field(default_factory=list)
    """Ended attempts, oldest first."""

    submitted_at_ms: int = 0
    pending_since_ms: int = 0
    """When the task last became PENDING; the scheduling timeout counts from here (DESIGN §4.5)."""
    started_at_ms: int | None = None
    finished_at_ms: int | None = None

    error: str | None = None
    exit_code: int | None = None
    ports: dict[str, int] | None = None
    """The current (or last) attempt's named ports, allocated at placement from its worker's range
    (None: none; most tasks have none, and an empty dict per task is 64 bytes of a 100k-task job's).
    Not durable: the next heartbeat after a controller restart brings them back."""
    coordinator_port: int = 0
    """A coscheduled task's rendezvous port, allocated with its ports: the gang's if it leads it."""
    band: str = ""
    """The priority band its current attempt was placed under (stamped on the attempt when it ends)."""
    not_before_ms: int = 0
    """A failure retry is not placed before this (``retry_backoff_seconds``)."""
    fail_job: str = ""
    """Set when an exit rule said ``fail-job``: why the job fails now."""

    def __post_init__(self) -> None:
        if not self.pending_since_ms:
            self.pending_since_ms = self.submitted_at_ms

    def time_spent(self) -> dict[str, int]:
        """Where this task's time went, from its attempts (ms): "pending" (the waits before each
        attempt that started) and the running time of ended attempts by ``TaskAttempt.time_cause``."""
        spent = {"pending": 0, **dict.fromkeys(TIME_CAUSES, 0)}
        waited_from = self.submitted_at_ms
        for a in self.attempts:
            if a.started_at_ms is None:
                continue
            spent["pending"] += max(0, a.started_at_ms - waited_from)
            waited_from = a.finished_at_ms if a.finished_at_ms is not None else a.started_at_ms
            cause = a.time_cause()
            if cause is not None:
                spent[cause] += a.running_ms()
        if self.started_at_ms is not None and self.state != PENDING:
            spent["pending"] += max(0, self.started_at_ms - waited_from)
        return spent

    def is_finished(self) -> bool:
        return self.state in TERMINAL_TASK_STATES

    def policy_preemptions(self) -> int:
        """Its attempts the sharing policy stopped (ended PREEMPTED; charged to no budget)."""
        return sum(1 for a in self.attempts if a.state == PREEMPTED)

    def is_active(self) -> bool:
        """Bound to a worker with a process that may be alive."""
        return self.state in ACTIVE_TASK_STATES

    def mark_dispatched(self, worker_id: WorkerId, now_ms: int) -> None:
        """Bind the current attempt to ``worker_id``: PENDING -> RUNNING."""
        if self.state != PENDING:
            raise InvalidTransition(self.task_id, self.state, RUNNING)
        self.state = RUNNING
        self.worker_id = worker_id
        self.started_at_ms = now_ms

    def transition(
        self,
        new_state: int,
        now_ms: int,
        *,
        is_worker_failure: bool = False,
        error: str | None = None,
        exit_code: int | None = None,
        rules: Sequence[ExitRule] = (),
        backoff_s: float = 0.0,
        decided_by: str = "",
    ) -> TaskTransitionResult:
        """Apply a state change with retry logic.

        FAILED and WORKER_FAILED are failures of the current attempt: a worker failure (also when
        ``is_worker_failure`` is set) spends the preemption budget, any other failure the failure
        budget; within budget the task returns to PENDING as a new attempt. A FAILED exit code
        matching one of ``rules`` may instead spend the preemption budget or fail the job at once
        (``fail_job``); a task killed for memory is a failure whatever the rules say. A failure
        retry waits ``failures.retry_delay_ms(backoff_s, k, task_id)`` (``not_before_ms``).
        """
        if self.state in TERMINAL_TASK_STATES or new_state == self.state:
            return TaskTransitionResult.IGNORED
        if new_state not in _ALLOWED[self.state]:
            raise InvalidTransition(self.task_id, self.state, new_state)

        if new_state in (FAILED, WORKER_FAILED):
            preemption = is_worker_failure or new_state == WORKER_FAILED
            rule = None if preemption or is_memory_kill(error) else rule_for(rules, exit_code)
            if rule is not None:
                shown = exit_code if exit_code is None or exit_code >= 0 else 128 - exit_code  # signal N: 128+N
                decided_by = f"exit {shown}: {rule.describe()}"
                if rule.action == FAIL_JOB:
                    self._end_attempt(FAILED, now_ms, error, exit_code, is_worker_failure=False,
                                      charged_to="failure", decided_by=decided_by)
                    self.failure_count += 1
                    self.fail_job = f"task {self.task_index} exited {shown} ({rule.describe()})"
                    self._finish(FAILED, now_ms, error, exit_code)
                    return TaskTransitionResult.EXCEEDED_RETRY_LIMIT
                if rule.action == PREEMPTION:
                    return self._handle_failure(now_ms, True, error, exit_code, ended_as=FAILED,
                                                decided_by=decided_by)
            return self._handle_failure(now_ms, preemption, error, exit_code, backoff_s=backoff_s,
                                        decided_by=decided_by)
        if new_state in (BUILDING, RUNNING):
            self.state = new_state
            return TaskTransitionResult.COMPLETE

        # SUCCEEDED, KILLED, UNSCHEDULABLE: the task ends here.
        if new_state == SUCCEEDED:
            exit_code = exit_code or 0
        elif new_state == UNSCHEDULABLE:
            error = error or "Scheduling timeout exceeded"
        self._end_attempt(new_state, now_ms, error, exit_code, is_worker_failure=False)
        self._finish(new_state, now_ms, error, exit_code)
        return TaskTransitionResult.COMPLETE

    def _handle_failure(
        self, now_ms: int, is_worker_failure: bool, error: str | None, exit_code: int | None, *,
        ended_as: int | None = None, backoff_s: float = 0.0, decided_by: str = "",
    ) -> TaskTransitionResult:
        """``ended_as``: the attempt's recorded state when it differs from the budget it spends (an
        exit rule sending a real exit to the preemption budget)."""
        recorded = ended_as if ended_as is not None else (WORKER_FAILED if is_worker_failure else FAILED)
        self._end_attempt(recorded, now_ms, error, exit_code, is_worker_failure=is_worker_failure,
                          charged_to="preemption" if is_worker_failure else "failure", decided_by=decided_by)
        if is_worker_failure:
            self.preemption_count += 1
            can_retry = self.preemption_count <= self.max_retries_preemption
        else:
            self.failure_count += 1
            can_retry = self.failure_count <= self.max_retries_failure
        if can_retry:
            self._reset_for_retry(now_ms)
            if not is_worker_failure:  # preemption retries are not delayed
                self.not_before_ms = now_ms + retry_delay_ms(backoff_s, self.failure_count, self.task_id)
            return TaskTransitionResult.SHOULD_RETRY
        self._finish(WORKER_FAILED if is_worker_failure else FAILED, now_ms, error, exit_code)
        return TaskTransitionResult.EXCEEDED_RETRY_LIMIT

    def restart_attempt(self, now_ms: int, reason: str, error: str | None = None, end_state: int = KILLED) -> bool:
        """Stop the current attempt without charging any budget (a gang restart, a drain of a
        quarantined worker, a policy preemption): it ends ``end_state`` (KILLED, or PREEMPTED),
        decided by ``reason`` (its error: ``error``, else the reason), and the task is PENDING again
        as a new attempt. False (nothing changed) when the task is not active."""
        if self.state not in (BUILDING, RUNNING):
            return False
        self._end_attempt(end_state, now_ms, error or reason, None, is_worker_failure=False, charged_to="none",
                          decided_by=reason)
        self._reset_for_retry(now_ms)
        return True

    def _end_attempt(
        self, state: int, now_ms: int, error: str | None, exit_code: int | None, *, is_worker_failure: bool,
        charged_to: str = "", decided_by: str = "",
    ) -> None:
        """Record the current attempt with the state it really ended in (only if it ever ran)."""
        if self.started_at_ms is None:
            return
        if not charged_to and state != SUCCEEDED:
            charged_to = "none"  # a stop (KILLED) or a timeout before start spends no budget
        # A list of exactly the ended attempts (append would leave room for three more in each task held).
        self.attempts = self.attempts + [
            TaskAttempt(
                attempt_id=self.current_attempt_id,
                worker_id=self.worker_id,
                state=state,
                started_at_ms=self.started_at_ms,
                finished_at_ms=now_ms,
                exit_code=exit_code,
                error=error,
                is_worker_failure=is_worker_failure,
                charged_to=charged_to,
                decided_by=decided_by,
                band=self.band,
            ),
        ]

    def _finish(self, state: int, now_ms: int, error: str | None, exit_code: int | None) -> None:
        self.band = ""  # stamped on its last attempt
        self.state = state
        self.finished_at_ms = now_ms
        self.error = error
        self.exit_code = exit_code

    def _reset_for_retry(self, now_ms: int) -> None:
        self.current_attempt_id += 1
        self.state = PENDING
        self.worker_id = None
        self.started_at_ms = None
        self.finished_at_ms = None
        self.error = None
        self.exit_code = None
        self.ports = None
        self.coordinator_port = 0
        self.band = ""
        self.not_before_ms = 0
        self.pending_since_ms = now_ms
