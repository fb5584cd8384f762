"""Read views of the controller's state: frozen snapshots and the protobuf built from them.

A reader takes a snapshot of a bounded number of objects under the controller's lock (``*_view``:
a few attribute copies each, O(1) per object, never a scan of a job's tasks for counts) and
builds the protobuf from it *after* releasing the lock, so a big read never holds up a heartbeat
or a scheduling pass for longer than one page's copies. The RPC service, the dashboard and the
CLI (through the RPC) all see the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

from iris.cluster.controller.job import Job
from iris.cluster.controller.state import ActionLogEntry, ControllerWorker
from iris.cluster.controller.task import Task, TaskAttempt
from iris.cluster.spec import JobSpec
from iris.cluster.types import (
    PENDING,
    JobId,
    ResourceSpec,
    TaskId,
    WorkerId,
    WorkerMetadata,
    host_port,
    split_host,
)


@dataclass(frozen=True, slots=True)
class JobView:
    job_id: JobId
    state: int
    error: str
    submitted_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    parent_job_id: str
    num_tasks: int
    counts: tuple[int, ...]
    resources: ResourceSpec
    replicas: int
    pending_reason: str
    max_task_failures: int
    max_retries_failure: int
    max_retries_preemption: int
    submit_seq: int
    owner: str = ""
    gang_restarts: int = 0
    failures_used: int = 0
    preemptions_used: int = 0
    time_ms: tuple[tuple[str, int], ...] = ()
    """("pending", ms), ("useful", ms), ("failure", ms), ("preemption", ms), ("gang", ms)."""
    uid: str = ""
    spec: JobSpec | None = None
    """What the job asked for (frozen, shared with the job: no copy)."""
    gang_restart_cause: str = ""
    team: str = ""
    """The team its owner's work is counted to (``iris share``)."""
    policy_preemptions: int = 0
    """Its attempts the sharing policy preempted (charged to no budget)."""


@dataclass(frozen=True, slots=True)
class TaskView:
    task_id: TaskId
    job_id: JobId
    task_index: int
    state: int
    worker_id: str
    worker_address: str
    exit_code: int
    error: str
    started_at_ms: int
    finished_at_ms: int
    current_attempt_id: int
    failure_count: int
    preemption_count: int
    pending_since_ms: int
    pending_reason: str
    attempts: tuple[TaskAttempt, ...]
    """Ended attempts: never changed once recorded, so shared, not copied."""
    ports: tuple[tuple[str, int], ...] = ()
    """The current (or last) attempt's named ports."""
    max_retries_failure: int = 0
    max_retries_preemption: int = 0
    retry_at_ms: int = 0
    time_ms: tuple[tuple[str, int], ...] = ()
    policy_preemptions: int = 0

    def port_addresses(self) -> dict[str, str]:
        """Each named port as ``HOST:PORT``, HOST the worker's advertised address (reachable from
        other hosts, never a loopback address unless the worker is local)."""
        if not self.worker_address:
            return {}
        host = split_host(self.worker_address)
        return {name: host_port(host, port) for name, port in self.ports}


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: WorkerId
    address: str
    metadata: WorkerMetadata
    healthy: bool
    last_heartbeat_ms: int
    registered_at_ms: int
    running_tasks: tuple[TaskId, ...]
    committed_cpu: int
    """Millicores."""
    committed_memory: int
    committed_disk: int
    committed_devices: int
    allocation: AllocationInfo | None = None
    """For a provisioned worker: its allocation on the platform (also before it registered)."""
    draining: bool = False
    quarantined_until_ms: int = 0
    quarantine_reason: str = ""
    unfit: str = ""


@dataclass(frozen=True, slots=True)
class AllocationInfo:
    """What the platform says of a provisioned worker's allocation (``provisioner.py``)."""

    worker_id: WorkerId
    platform: str
    engine_id: str
    engine_state: str
    reason: str
    node: str
    submitted_at_ms: int


def job_view(job: Job, team: str = "") -> JobView:
    c = job.counts
    pending_reason = job.pending_reason if c[PENDING] and not job.is_finished() else ""
    spec = job.spec
    return JobView(
        job.job_id, job.state, job.error or "", job.submitted_at_ms, job.started_at_ms or 0,
        job.finished_at_ms or 0, job.parent_job_id or "", job.num_tasks, tuple(c), spec.resources, spec.replicas,
        pending_reason, job.max_task_failures, job.max_retries_failure, job.max_retries_preemption, job.submit_seq,
        job.owner, job.gang_restarts, job.charges["failure"], job.charges["preemption"],
        (("pending", job.pending_ms), *job.time_ms.items()), job.uid, spec, job.gang_restart_cause, team,
        job.policy_preemptions,
    )


def task_view(task: Task, job: Job | None, worker_address: str) -> TaskView:
    pending_reason = job.pending_reason if job is not None and task.state == PENDING else ""
    return TaskView(
        task.task_id, task.job_id, task.task_index, task.state, task.worker_id or "", worker_address,
        task.exit_code or 0, task.error or "", task.started_at_ms or 0, task.finished_at_ms or 0,
        task.current_attempt_id, task.failure_count, task.preemption_count, task.pending_since_ms, pending_reason,
        tuple(task.attempts), tuple(task.ports.items()) if task.ports else (),
        task.max_retries_failure, task.max_retries_preemption,
        task.not_before_ms if task.state == PENDING else 0, task_time(task), task.policy_preemptions(),
    )


def task_time(task: Task) -> tuple[tuple[str, int], ...]:
    """Where one task's time went (``Task.time_spent``), as view data."""
    return tuple(task.time_spent().items())


def worker_view(worker: ControllerWorker, allocation: AllocationInfo | None = None) -> WorkerView:
    return WorkerView(
        worker.worker_id, worker.address, worker.metadata, worker.healthy, worker.last_heartbeat_ms,
        worker.registered_at_ms, tuple(sorted(worker.running_tasks)), worker.committed_cpu, worker.committed_memory,
        worker.committed_disk, worker.committed_devices, allocation, worker.draining,
        worker.quarantined_until_ms, worker.quarantine_reason, worker.unfit,
    )


def allocation_view(allocation: AllocationInfo) -> WorkerView:
    """A provisioned worker that has not registered yet: no address, no capacity, not healthy."""
    return WorkerView(allocation.worker_id, "", WorkerMetadata(), False, 0, 0, (), 0, 0, 0, 0, allocation)


# ---------------------------------------------------------------------------- protobuf (outside the lock)


@dataclass(frozen=True, slots=True)
class ClusterCounts:
    """What ``/metrics`` exports, counted in chunks (never all jobs under one lock hold)."""

    jobs_by_state: dict[int, int]
    tasks_by_state: dict[int, int]
    workers_healthy: int
    workers_unhealthy: int
    committed_cpu: int


__all__ = [
    "ActionLogEntry",
    "ClusterCounts",
    "JobView",
    "TaskView",
    "WorkerView",
    "job_view",
    "task_view",
    "worker_view",
]
