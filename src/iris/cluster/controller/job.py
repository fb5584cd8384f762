"""A job: N tasks of one request, and its state derived from per-job task counts in O(1).

Pure: time comes in as ``now_ms``. Job state rules (DESIGN §3), checked in this order on every
task transition (see ``Job.on_task_transition``):

1. A job that has ended never changes.
2. FAILED as soon as more than ``max_task_failures`` tasks ended FAILED. WORKER_FAILED tasks never
   count toward this limit...
3. ...but a task that ends WORKER_FAILED (preemption budget spent) fails the job at once: it can no
   longer complete. The job's error is the first failed task's error.
4. UNSCHEDULABLE as soon as a task ended UNSCHEDULABLE.
5. KILLED as soon as a task ended KILLED.
6. SUCCEEDED when every task has ended (the rest are SUCCEEDED, with at most ``max_task_failures``
   tolerated FAILED tasks, which stay visible in the counts).
7. Otherwise RUNNING while any task is BUILDING or RUNNING, else PENDING.
"""

from __future__ import annotations

import sys

from iris.cluster import bands
from iris.cluster.controller.capacity import JobRequirements, Resources, TaskShape, task_shape
from iris.cluster.controller.task import TIME_CAUSES, Task
from iris.cluster.spec import DEFAULT_MAX_RETRIES_PREEMPTION, JobSpec
from iris.cluster.types import (
    TERMINAL_JOB_STATES,
    JobId,
    task_id_for,
)
from iris.rpc import cluster_pb2

__all__ = ["DEFAULT_MAX_RETRIES_PREEMPTION", "Job", "expand_job_to_tasks"]

_T = cluster_pb2  # short alias for state constants below
_NUM_STATES = 9


class Job:
    """A submitted job: its ``JobSpec``, the derived state and the per-state task counts.

    The seed's constructor takes the ``LaunchJobRequest``; it is converted to the typed spec here,
    at the boundary (a ``JobSpec`` is accepted as well), and ``request`` gives the protobuf view
    back for the seed's callers."""

    __slots__ = (
        "_task_resources",
        "job_id",
        "spec",
        "submitted_at_ms",
        "parent_job_id",
        "state",
        "error",
        "started_at_ms",
        "finished_at_ms",
        "num_tasks",
        "counts",
        "pending_reason",
        "first_failure",
        "_requirements",
        "shape",
        "_success_a",
        "_success_b",
        "submit_seq",
        "owner",
        "policy_preemptions",
        "gang_restarts",
        "gang_restart_cause",
        "band",
        "_useful_ms",
        "_failure_ms",
        "_preemption_ms",
        "_gang_ms",
        "pending_ms",
        "similar_failures",
        "_failure_charges",
        "_preemption_charges",
        "uid",
    )

    def __init__(
        self,
        job_id: JobId,
        request: cluster_pb2.Controller.LaunchJobRequest | JobSpec,
        submitted_at_ms: int,
        parent_job_id: JobId | None = None,
        owner: str = "",
        uid: str = "",
    ) -> None:
        spec = request if isinstance(request, JobSpec) else JobSpec.from_proto(request)
        self.job_id = JobId(spec.name) if spec.name == job_id else job_id  # one string, not two equal ones
        self.spec = spec
        self.submitted_at_ms = submitted_at_ms
        self.parent_job_id = parent_job_id or (JobId(spec.parent_job_id) if spec.parent_job_id else None)
        self.state: int = cluster_pb2.JOB_STATE_PENDING
        self.error: str | None = None
        self.started_at_ms: int | None = None
        self.finished_at_ms: int | None = None
        self.num_tasks = 0
        self.counts: list[int] = [0] * _NUM_STATES
        """Number of this job's tasks in each TaskState (indexed by the enum value)."""
        self.pending_reason = ""
        self.shape: TaskShape = task_shape(spec.resources)
        """What one task takes of a worker (one tuple shared by every job of that shape), read on
        the scheduler's hot path."""
        self._requirements: JobRequirements | None = None
        self._task_resources: Resources = Resources.of_task(self.shape)
        self.uid = uid
        """This incarnation of ``job_id``, unique across deletions (the shell makes it): attempts,
        reports and task tokens carry it, so nothing of a deleted job matches one reusing its name."""
        self.owner = sys.intern(owner)  # a few users own many jobs
        self.policy_preemptions = 0
        """Its tasks' attempts the sharing policy preempted (ended PREEMPTED; charged to no budget)."""
        """Who submitted it (a user's name); only they or an admin may stop it or read its secrets."""
        self.submit_seq = 0
        """Position in submission order, set by ``ControllerState`` (list pages are keyed by it)."""
        self.first_failure: str | None = None
        """Error of the first task that ended FAILED, tolerated or not: the job's error if it fails."""
        self.gang_restarts = 0
        """Times a coscheduled job's running tasks were stopped so the gang restarts together."""
        self.band = bands.rank(spec.priority or bands.DEFAULT_BAND)
        """Its priority band's rank (0: production): its tasks' place in the queue (``BandQueue``)."""
        self.gang_restart_cause = ""
        """Which member started the last gang restart and how it ended ("task 2: killed by signal 9 ...")."""
        # Attempt running time by how the attempts ended (``time_ms``), and retries spent by all of
        # its tasks, per budget (``charges``): plain slots, not two dicts (368 bytes of every job held).
        self._useful_ms = self._failure_ms = self._preemption_ms = self._gang_ms = 0
        self._failure_charges = self._preemption_charges = 0
        self.pending_ms = 0
        """Time the job's tasks waited before attempts that started (ongoing waits not included)."""
        self._success_a: str | None = None
        self._success_b: str | None = None
        self.similar_failures: dict[str, set[int]] | None = None
        """Failure signature -> indexes of tasks that failed with it (``max_similar_failures``);
        made on first use, so only jobs with that rule keep one."""

    @property
    def requirements(self) -> JobRequirements:
        """What one task needs: the scheduler's frozen input, derived from the frozen spec once
        while the job can still place tasks (an ended job keeps none: ~200 bytes of every job held)."""
        requirements = self._requirements
        if requirements is None:
            requirements = JobRequirements.from_resources(
                self.job_id, self.spec.resources, coscheduled=self.coscheduled,
                scheduling_timeout_ms=self.scheduling_timeout_ms,
            )
            if not self.is_finished():
                self._requirements = requirements
        return requirements

    @property
    def time_ms(self) -> dict[str, int]:
        """Attempt running time by how the attempts ended (``state.TIME_CAUSES``; a copy)."""
        return {"useful": self._useful_ms, "failure": self._failure_ms, "preemption": self._preemption_ms,
                "gang": self._gang_ms}

    def add_time(self, cause: str, ms: int) -> None:
        """Count ``ms`` of attempt running time as ``cause`` (one of ``state.TIME_CAUSES``)."""
        slot = _TIME_SLOTS[cause]
        setattr(self, slot, getattr(self, slot) + ms)

    @property
    def charges(self) -> dict[str, int]:
        """Retries spent by all of its tasks, per budget ("failure", "preemption"; a copy)."""
        return {"failure": self._failure_charges, "preemption": self._preemption_charges}

    def charge(self, budget: str, count: int = 1) -> None:
        """Count ``count`` more retries spent from ``budget`` ("failure" or "preemption"; -1 gives one back)."""
        if budget == "failure":
            self._failure_charges += count
        elif budget == "preemption":
            self._preemption_charges += count

    def _ended(self, now_ms: int) -> None:
        self.finished_at_ms = now_ms
        self._requirements = None

    # -- derived from the frozen spec (not held twice) -------------------------------------------

    @property
    def max_task_failures(self) -> int:
        return self.spec.max_task_failures

    @property
    def max_retries_failure(self) -> int:
        return self.spec.max_retries_failure

    @property
    def max_retries_preemption(self) -> int:
        return self.spec.max_retries_preemption

    @property
    def coscheduled(self) -> bool:
        return self.spec.coscheduled

    @property
    def bundle_hash(self) -> str:
        return self.spec.bundle_hash

    @property
    def scheduling_timeout_ms(self) -> int:
        return int(self.spec.scheduling_timeout_seconds * 1000)

    @property
    def task_resources(self) -> Resources:
        """What one task takes of a worker (one value shared by every job of its shape)."""
        return self._task_resources

    @property
    def cpu(self) -> int:
        """Millicores one task takes."""
        return self.shape[0]

    @property
    def memory_bytes(self) -> int:
        return self.shape[1]

    @property
    def disk_bytes(self) -> int:
        return self.shape[2]

    @property
    def device_kind(self) -> str:
        """"cpu", "gpu" or "tpu"."""
        return self.shape[3]

    @property
    def device_variant(self) -> str:
        return self.shape[4]

    @property
    def device_count(self) -> int:
        return self.shape[5]

    @property
    def success_workers(self) -> tuple[str, ...]:
        """Two workers (the smallest ids) on which a task of this job succeeded: enough to tell whether it
        succeeded on a worker other than a given one (worker quarantine), in two slots, not a set's 216 bytes."""
        return tuple(w for w in (self._success_a, self._success_b) if w is not None)

    def note_success(self, worker_id: str) -> None:
        a, b = self._success_a, self._success_b
        if worker_id in (a, b):
            return
        # The two smallest ids: the same whatever the order of events.
        if a is None or worker_id < a:
            self._success_a, self._success_b = worker_id, a
        elif b is None or worker_id < b:
            self._success_b = worker_id

    def succeeded_elsewhere(self, worker_id: str) -> bool:
        """Whether a task of this job succeeded on a worker other than ``worker_id``."""
        a, b = self._success_a, self._success_b
        return (a is not None and a != worker_id) or (b is not None and b != worker_id)

    def similar_tasks(self, signature: str) -> set[int]:
        """The indexes of tasks that failed with ``signature`` (``max_similar_failures``)."""
        if self.similar_failures is None:
            self.similar_failures = {}
        return self.similar_failures.setdefault(signature, set())

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def request(self) -> cluster_pb2.Controller.LaunchJobRequest:
        """The seed's protobuf view of the job's spec (built on each read; the core holds the spec)."""
        return self.spec.to_proto()

    def is_finished(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    @property
    def tasks_active(self) -> int:
        return self.counts[_T.TASK_STATE_BUILDING] + self.counts[_T.TASK_STATE_RUNNING]

    @property
    def tasks_finished(self) -> int:
        c = self.counts
        return (
            c[_T.TASK_STATE_SUCCEEDED]
            + c[_T.TASK_STATE_FAILED]
            + c[_T.TASK_STATE_KILLED]
            + c[_T.TASK_STATE_WORKER_FAILED]
            + c[_T.TASK_STATE_UNSCHEDULABLE]
        )

    def add_tasks(self, count: int) -> None:
        """Account for ``count`` new PENDING tasks."""
        self.num_tasks += count
        self.counts[_T.TASK_STATE_PENDING] += count

    def on_task_transition(self, old_state: int, new_state: int, now_ms: int, task: Task) -> int | None:
        """Update the counts for one task move and re-derive the job state in O(1).

        Returns the job's new state when it changed, else None.
        """
        counts = self.counts
        counts[old_state] -= 1
        counts[new_state] += 1
        if self.is_finished():
            return None
        if new_state in (_T.TASK_STATE_BUILDING, _T.TASK_STATE_RUNNING) and self.started_at_ms is None:
            self.started_at_ms = now_ms

        new_job_state = self._derive_state(new_state, task)
        if new_job_state == self.state:
            return None
        self.state = new_job_state
        if new_job_state in TERMINAL_JOB_STATES:
            self._ended(now_ms)
        return new_job_state

    def _derive_state(self, new_task_state: int, task: Task) -> int:
        c = self.counts
        if new_task_state == _T.TASK_STATE_FAILED:
            self.first_failure = self.first_failure or _task_error(task, "failed")
            if c[_T.TASK_STATE_FAILED] > self.max_task_failures:
                self.error = self.error or self.first_failure
                return cluster_pb2.JOB_STATE_FAILED
        if new_task_state == _T.TASK_STATE_WORKER_FAILED:
            self.error = self.error or _task_error(task, "worker failed, preemption budget spent")
            return cluster_pb2.JOB_STATE_FAILED
        if new_task_state == _T.TASK_STATE_UNSCHEDULABLE:
            self.error = self.error or _task_error(task, "unschedulable")
            return cluster_pb2.JOB_STATE_UNSCHEDULABLE
        if new_task_state == _T.TASK_STATE_KILLED:
            self.error = self.error or _task_error(task, "killed")
            return cluster_pb2.JOB_STATE_KILLED
        if self.tasks_finished == self.num_tasks:
            return cluster_pb2.JOB_STATE_SUCCEEDED
        if self.tasks_active > 0:
            return cluster_pb2.JOB_STATE_RUNNING
        return cluster_pb2.JOB_STATE_PENDING

    def finish(self, state: int, now_ms: int, error: str | None) -> None:
        """End the job from outside the task counts (terminate, parent ended)."""
        self.state = state
        self._ended(now_ms)
        if error and not self.error:
            self.error = error


_TIME_SLOTS = {cause: f"_{cause}_ms" for cause in TIME_CAUSES}


def _task_error(task: Task, what: str) -> str:
    detail = f": {task.error}" if task.error else ""
    return f"task {task.task_index} {what}{detail}"


def expand_job_to_tasks(job: Job, now_ms: int) -> list[Task]:
    """Expand a job into its tasks: ``replicas`` 0 or unset means one task."""
    num_replicas = job.spec.replicas or 1
    return [
        Task(
            task_id=task_id_for(job.job_id, i),
            job_id=job.job_id,
            task_index=i,
            max_retries_failure=job.max_retries_failure,
            max_retries_preemption=job.max_retries_preemption,
            submitted_at_ms=now_ms,
            pending_since_ms=now_ms,
        )
        for i in range(num_replicas)
    ]
