"""Typed, proto-free views of what the controller reports: jobs, tasks, attempts, workers,
endpoints and log lines.

Every class is a frozen dataclass built from its proto with ``from_proto``; states are
``StrEnum`` values ("RUNNING"), so ``json.dumps(dataclasses.asdict(x))`` works as is.
Timestamps stay in epoch milliseconds (``*_ms``), 0 meaning "not yet".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from iris.cluster.spec import JobSpec
from iris.cluster.types import (
    ResourceSpec,
    cores,
    is_job_finished,
    is_task_finished,
    job_state_name,
    task_state_name,
)
from iris.rpc import cluster_pb2


class JobState(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    BUILDING = "BUILDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    WORKER_FAILED = "WORKER_FAILED"
    UNSCHEDULABLE = "UNSCHEDULABLE"

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        return cls(job_state_name(value))

    def to_proto(self) -> cluster_pb2.JobState.ValueType:
        return cluster_pb2.JobState.Value(f"JOB_STATE_{self.value}")

    @property
    def is_finished(self) -> bool:
        return is_job_finished(self.to_proto())


class TaskState(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    BUILDING = "BUILDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    WORKER_FAILED = "WORKER_FAILED"
    UNSCHEDULABLE = "UNSCHEDULABLE"
    PREEMPTED = "PREEMPTED"
    """An attempt's state only: stopped by the sharing policy, charged to no budget."""

    @classmethod
    def from_proto(cls, value: int) -> TaskState:
        return cls(task_state_name(value))

    def to_proto(self) -> cluster_pb2.TaskState.ValueType:
        return cluster_pb2.TaskState.Value(f"TASK_STATE_{self.value}")

    @property
    def is_finished(self) -> bool:
        return is_task_finished(self.to_proto())

    @property
    def is_active(self) -> bool:
        return self in (TaskState.BUILDING, TaskState.RUNNING)


def parse_job_state(value: str | JobState) -> JobState:
    """``"running"``, ``"RUNNING"`` or ``JobState.RUNNING`` -> ``JobState.RUNNING``."""
    if isinstance(value, JobState):
        return value
    name = value.strip().upper().removeprefix("JOB_STATE_")
    try:
        return JobState(name)
    except ValueError:
        choices = ", ".join(s.value.lower() for s in JobState if s is not JobState.UNSPECIFIED)
        raise ValueError(f"state: unknown job state {value!r}; expected one of {choices}") from None


class _Jsonable:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums become their names)."""
        result: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return result


@dataclass(frozen=True, slots=True)
class TaskAttempt(_Jsonable):
    """One ended run of a task on a worker."""

    attempt_id: int
    worker_id: str
    state: TaskState
    exit_code: int
    error: str
    started_at_ms: int
    finished_at_ms: int
    is_worker_failure: bool
    charged_to: str = ""
    """The budget it spent: "failure", "preemption", "none" (a gang restart, a stop, a quarantined
    worker's fault) or "" (it succeeded)."""
    decided_by: str = ""
    """What decided that, e.g. "exit 75: --on-exit 75=preemption", "gang restart", "timed out"."""
    band: str = ""
    """The priority band it was placed under."""

    @classmethod
    def from_proto(cls, proto: cluster_pb2.TaskAttempt) -> TaskAttempt:
        return cls(
            attempt_id=proto.attempt_id,
            worker_id=proto.worker_id,
            state=TaskState.from_proto(proto.state),
            exit_code=proto.exit_code,
            error=proto.error,
            started_at_ms=proto.started_at_ms,
            finished_at_ms=proto.finished_at_ms,
            is_worker_failure=proto.is_worker_failure,
            charged_to=proto.charged_to,
            decided_by=proto.decided_by,
            band=proto.band,
        )


@dataclass(frozen=True, slots=True)
class TimeSpent(_Jsonable):
    """Where a task's (or job's) time went, in seconds: waiting, in the attempt that succeeded,
    and lost to failed, preempted and gang-restarted attempts."""

    pending: float = 0.0
    useful: float = 0.0
    lost_failure: float = 0.0
    lost_preemption: float = 0.0
    lost_gang: float = 0.0

    @classmethod
    def from_proto(cls, proto: cluster_pb2.TimeSpent) -> TimeSpent:
        return cls(proto.pending_ms / 1000, proto.useful_ms / 1000, proto.lost_failure_ms / 1000,
                   proto.lost_preemption_ms / 1000, proto.lost_gang_ms / 1000)


@dataclass(frozen=True, slots=True)
class TaskStatus(_Jsonable):
    """A task of a job: its state, where its current attempt runs and how earlier attempts ended."""

    task_id: str
    job_id: str
    task_index: int
    state: TaskState
    worker_id: str
    worker_address: str
    exit_code: int
    error: str
    started_at_ms: int
    finished_at_ms: int
    current_attempt_id: int
    failure_count: int
    preemption_count: int
    attempts: tuple[TaskAttempt, ...]
    pending_reason: str
    pending_since_ms: int
    ports: dict[str, int] = field(default_factory=dict)
    port_addresses: dict[str, str] = field(default_factory=dict)
    """Each named port as HOST:PORT that other hosts can dial (the worker's advertised address)."""
    max_retries_failure: int = 0
    """The failure budget (``failure_count`` of it is used)."""
    max_retries_preemption: int = 0
    """The preemption budget (``preemption_count`` of it is used)."""
    retry_at_ms: int = 0
    """A failure retry backing off waits until then (0: not waiting)."""
    time: TimeSpent = field(default_factory=TimeSpent)

    def to_dict(self) -> dict[str, Any]:
        data = _Jsonable.to_dict(self)
        data["num_attempts"] = self.num_attempts
        return data

    @property
    def num_attempts(self) -> int:
        """Attempts made so far: the ended ones plus the one running now."""
        ended = len(self.attempts)
        ended_ids = {a.attempt_id for a in self.attempts}
        if self.state.is_active and self.current_attempt_id not in ended_ids:
            return ended + 1
        return ended

    @classmethod
    def from_proto(cls, proto: cluster_pb2.TaskStatus) -> TaskStatus:
        return cls(
            task_id=proto.task_id,
            job_id=proto.job_id,
            task_index=proto.task_index,
            state=TaskState.from_proto(proto.state),
            worker_id=proto.worker_id,
            worker_address=proto.worker_address,
            exit_code=proto.exit_code,
            error=proto.error,
            started_at_ms=proto.started_at_ms,
            finished_at_ms=proto.finished_at_ms,
            current_attempt_id=proto.current_attempt_id,
            failure_count=proto.failure_count,
            preemption_count=proto.preemption_count,
            attempts=tuple(TaskAttempt.from_proto(a) for a in proto.attempts),
            pending_reason=proto.pending_reason,
            pending_since_ms=proto.pending_since_ms,
            ports=dict(proto.ports),
            port_addresses=dict(proto.port_addresses),
            max_retries_failure=proto.max_retries_failure,
            max_retries_preemption=proto.max_retries_preemption,
            retry_at_ms=proto.retry_at_ms,
            time=TimeSpent.from_proto(proto.time),
        )


@dataclass(frozen=True, slots=True)
class TaskCounts(_Jsonable):
    """How many of a job's tasks are in each state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    killed: int = 0
    worker_failed: int = 0
    unschedulable: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.killed + self.worker_failed + self.unschedulable


@dataclass(frozen=True, slots=True)
class JobStatus(_Jsonable):
    """A job as the controller sees it. ``tasks`` is filled only when tasks were asked for."""

    job_id: str
    state: JobState
    error: str
    submitted_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    parent_job_id: str
    counts: TaskCounts
    resources: ResourceSpec
    pending_reason: str
    max_task_failures: int
    max_retries_failure: int
    max_retries_preemption: int
    tasks: tuple[TaskStatus, ...] = ()
    owner: str = ""
    """The user who submitted it (a child job belongs to its parent's owner)."""
    gang_restarts: int = 0
    """Times a coscheduled job's tasks were all stopped and placed again together."""
    gang_restart_cause: str = ""
    """Which member started the last gang restart and how it ended ("task 2: killed by signal 9 (SIGKILL)")."""
    priority: str = ""
    """The priority band it runs in (production, interactive, batch)."""
    failures_used: int = 0
    """Failure retries its tasks spent (each task may spend ``max_retries_failure``)."""
    preemptions_used: int = 0
    time: TimeSpent = field(default_factory=TimeSpent)
    job_uid: str = ""
    """This incarnation of the job id (a deleted job's name may be used again by a new job)."""
    checkpoint_dir: str = ""
    """With a shared dir: the job's directory there (``IRIS_CHECKPOINT_DIR`` of its tasks); job status only."""
    spec: JobSpec | None = None
    """What the job asked for, every field (a job's own status: ``job_status``; not in lists). For a
    reader other than its owner or an admin the fields not declared public are absent (``redacted``)."""
    redacted: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = _Jsonable.to_dict(dataclasses.replace(self, spec=None, tasks=()))
        data["num_tasks"] = self.num_tasks
        if self.tasks:
            data["tasks"] = [t.to_dict() for t in self.tasks]
        data["spec"] = self.spec.to_json(public_only=self.redacted) if self.spec is not None else None
        data["spec_shown"] = [list(item) for item in self.spec_shown()]
        return data

    def spec_shown(self) -> list[tuple[str, str]]:
        """(field, text) of what the job asked for beyond the defaults, as ``iris job status`` shows it."""
        return self.spec.shown(public_only=self.redacted) if self.spec is not None else []

    @property
    def num_tasks(self) -> int:
        return self.counts.total

    @property
    def is_finished(self) -> bool:
        return self.state.is_finished

    @classmethod
    def from_proto(cls, proto: cluster_pb2.JobStatus) -> JobStatus:
        return cls(
            job_id=proto.job_id,
            state=JobState.from_proto(proto.state),
            error=proto.error,
            submitted_at_ms=proto.submitted_at_ms,
            started_at_ms=proto.started_at_ms,
            finished_at_ms=proto.finished_at_ms,
            parent_job_id=proto.parent_job_id,
            counts=TaskCounts(
                total=proto.num_tasks,
                pending=proto.tasks_pending,
                running=proto.tasks_running,
                succeeded=proto.tasks_succeeded,
                failed=proto.tasks_failed,
                killed=proto.tasks_killed,
                worker_failed=proto.tasks_worker_failed,
                unschedulable=proto.tasks_unschedulable,
            ),
            resources=_resources_from_proto(proto.resources),
            pending_reason=proto.pending_reason,
            max_task_failures=proto.max_task_failures,
            max_retries_failure=proto.max_retries_failure,
            max_retries_preemption=proto.max_retries_preemption,
            owner=proto.owner,
            job_uid=proto.job_uid,
            tasks=tuple(TaskStatus.from_proto(t) for t in proto.tasks),
            gang_restarts=proto.gang_restarts,
            gang_restart_cause=proto.gang_restart_cause,
            priority=proto.priority,
            failures_used=proto.failures_used,
            preemptions_used=proto.preemptions_used,
            time=TimeSpent.from_proto(proto.time),
            checkpoint_dir=proto.checkpoint_dir,
            spec=JobSpec.from_proto(proto.spec) if proto.HasField("spec") else None,
            redacted=proto.HasField("spec") and not proto.spec.serialized_entrypoint,
        )


_RESOURCES: dict[bytes, ResourceSpec] = {}
"""Parsed resource specs by their wire bytes: a long job list has few distinct shapes."""


def _resources_from_proto(proto: cluster_pb2.ResourceSpecProto) -> ResourceSpec:
    key = proto.SerializeToString(deterministic=True)
    known = _RESOURCES.get(key)
    if known is None:
        known = _parse_resources(proto)
        if len(_RESOURCES) < 4096:
            _RESOURCES[key] = known
    return known


def _parse_resources(proto: cluster_pb2.ResourceSpecProto) -> ResourceSpec:
    try:
        return ResourceSpec.from_proto(proto)
    except ValueError:
        # Never fail to show a job because of an odd resource record.
        return ResourceSpec(cpu=max(proto.cpu, 1), replicas=max(proto.replicas, 0))


@dataclass(frozen=True, slots=True)
class WorkerInfo(_Jsonable):
    """A registered worker: what it offers, what is committed on it, and whether it is alive."""

    worker_id: str
    address: str
    healthy: bool
    hostname: str
    cpu_count: int
    """Whole cores offered (``cpu`` holds a fractional share)."""
    memory_bytes: int
    disk_bytes: int
    gpu_count: int
    gpu_name: str
    committed_cpu: float | int
    """Cores committed to running tasks (0.5 for half a core)."""
    committed_memory_bytes: int
    committed_gpus: int
    running_tasks: tuple[str, ...]
    last_heartbeat_ms: int
    registered_at_ms: int
    attributes: dict[str, str] = field(default_factory=dict)
    platform: str = ""
    """For a provisioned worker: the platform that runs it ("slurm"); empty for one started by hand."""
    platform_id: str = ""
    """The platform's id of its allocation (the Slurm job id)."""
    platform_state: str = ""
    """The platform's state of it (PENDING, RUNNING, ...; RELEASING once Iris gave it back)."""
    platform_reason: str = ""
    """Why the allocation is pending (Slurm's reason), when it is."""
    draining: bool = False
    """``iris worker drain``: it takes no new tasks."""
    quarantined_until_ms: int = 0
    """It takes no new tasks until then (0: not quarantined)."""
    quarantine_reason: str = ""
    unfit: str = ""
    """Why the worker said it cannot run tasks as promised (e.g. its cgroups vanished); nothing is placed there."""
    cpu: float | int = 0
    """Cores offered (may be a fraction: a local cluster's workers split the machine)."""

    @property
    def registered(self) -> bool:
        """False for an allocation whose worker has not registered yet."""
        return self.registered_at_ms > 0

    @classmethod
    def from_proto(cls, proto: cluster_pb2.WorkerInfo) -> WorkerInfo:
        meta = proto.metadata
        return cls(
            worker_id=proto.worker_id,
            address=proto.address,
            healthy=proto.healthy,
            hostname=meta.hostname,
            cpu_count=meta.cpu_count,
            memory_bytes=meta.memory_bytes,
            disk_bytes=meta.disk_bytes,
            gpu_count=meta.gpu_count,
            gpu_name=meta.gpu_name,
            committed_cpu=cores(proto.committed_cpu_millicores) if proto.committed_cpu_millicores else proto.committed_cpu,
            cpu=cores(meta.cpu_millicores) if meta.cpu_millicores else meta.cpu_count,
            committed_memory_bytes=proto.committed_memory_bytes,
            committed_gpus=proto.committed_gpus,
            running_tasks=tuple(proto.running_tasks),
            last_heartbeat_ms=proto.last_heartbeat_ms,
            registered_at_ms=proto.registered_at_ms,
            attributes=dict(meta.attributes),
            platform=proto.provisioning.platform,
            platform_id=proto.provisioning.id,
            platform_state=proto.provisioning.state,
            platform_reason=proto.provisioning.reason,
            draining=proto.draining,
            quarantined_until_ms=proto.quarantined_until_ms,
            quarantine_reason=proto.quarantine_reason,
            unfit=proto.unfit,
        )


@dataclass(frozen=True, slots=True)
class EndpointInfo(_Jsonable):
    """A named address registered by a running task."""

    endpoint_id: str
    name: str
    address: str
    job_id: str
    task_id: str
    attempt_id: int
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, proto: cluster_pb2.Endpoint) -> EndpointInfo:
        return cls(
            endpoint_id=proto.endpoint_id,
            name=proto.name,
            address=proto.address,
            job_id=proto.job_id,
            task_id=proto.task_id,
            attempt_id=proto.attempt_id,
            metadata=dict(proto.metadata),
        )


@dataclass(frozen=True, slots=True)
class LogLine(_Jsonable):
    """One line a task wrote. ``source`` is "stdout" or "stderr"."""

    timestamp_ms: int
    source: str
    data: str

    @classmethod
    def from_proto(cls, proto: cluster_pb2.LogLine) -> LogLine:
        return cls(timestamp_ms=proto.timestamp_ms, source=proto.source, data=proto.data)


@dataclass(frozen=True, slots=True)
class TaskLogLine(_Jsonable):
    """A log line tagged with the task and attempt that wrote it (from log streaming)."""

    task_index: int
    attempt_id: int
    line: LogLine
