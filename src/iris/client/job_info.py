"""What a running task knows about itself, read from the environment its worker set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

_PORT_PREFIX = "IRIS_PORT_"


@dataclass(frozen=True, slots=True)
class PreviousAttempt:
    """How this task's previous attempt ended (``IRIS_PREVIOUS_*``).

    Attributes:
        state: "FAILED", "WORKER_FAILED" (its worker was lost, drained or preempted) or "KILLED"
            (Iris stopped it: a gang restart, a quarantine).
        exit_code: its exit code (0 when it had none, e.g. its worker was lost).
        error: the last line of its error, at most 1 KiB.
    """

    state: str
    exit_code: int
    error: str


@dataclass(frozen=True, slots=True)
class JobInfo:
    """The identity of the task this process runs as.

    Attributes:
        job_id: the job's id (a child job's id is ``"{parent}/{name}"``).
        task_id: ``"{job_id}/task-{index}"``.
        task_index: 0-based index of this task within the job.
        num_tasks: how many tasks (replicas) the job has.
        attempt_id: 0 for the first attempt, one more per retry.
        worker_id: the worker running this attempt.
        controller_address: ``HOST:PORT`` of the controller, for ``IrisClient.from_env()``.
        ports: named ports allocated to this attempt (lower-case names).
        bundle_hash: the workspace bundle this attempt was started from, if any.
        advertise_host: the address other tasks reach this one at (``IRIS_ADVERTISE_HOST``).
        bind_host: where to bind servers (``IRIS_BIND_HOST``).
        previous_attempt: how the previous attempt ended (None for the first attempt).
        checkpoint_dir: the job's directory on the cluster's shared dir (``IRIS_CHECKPOINT_DIR``): the
            same for every task and attempt on every worker, kept until the job is deleted; "" when
            the cluster has no shared dir.
    """

    job_id: str
    task_id: str
    task_index: int
    num_tasks: int
    attempt_id: int
    worker_id: str
    controller_address: str
    ports: dict[str, int] = field(default_factory=dict)
    bundle_hash: str = ""
    advertise_host: str = ""
    bind_host: str = ""
    previous_attempt: PreviousAttempt | None = None
    checkpoint_dir: str = ""


def get_job_info(environ: Mapping[str, str] | None = None) -> JobInfo | None:
    """The current task's ``JobInfo``, or None when this process is not an Iris task."""
    env = os.environ if environ is None else environ
    job_id = env.get("IRIS_JOB_ID", "")
    if not job_id:
        return None
    ports: dict[str, int] = {}
    for key, value in env.items():
        if key.startswith(_PORT_PREFIX) and value.isdigit():
            ports[key[len(_PORT_PREFIX) :].lower()] = int(value)
    return JobInfo(
        job_id=job_id,
        task_id=env.get("IRIS_TASK_ID", ""),
        task_index=_int(env.get("IRIS_TASK_INDEX"), 0),
        num_tasks=_int(env.get("IRIS_NUM_TASKS"), 1),
        attempt_id=_int(env.get("IRIS_ATTEMPT_ID"), 0),
        worker_id=env.get("IRIS_WORKER_ID", ""),
        controller_address=env.get("IRIS_CONTROLLER_ADDRESS", ""),
        ports=ports,
        bundle_hash=env.get("IRIS_BUNDLE_HASH", ""),
        advertise_host=env.get("IRIS_ADVERTISE_HOST", ""),
        bind_host=env.get("IRIS_BIND_HOST", ""),
        checkpoint_dir=env.get("IRIS_CHECKPOINT_DIR", ""),
        previous_attempt=(
            PreviousAttempt(env["IRIS_PREVIOUS_ATTEMPT_STATE"], _int(env.get("IRIS_PREVIOUS_EXIT_CODE"), 0),
                            env.get("IRIS_PREVIOUS_ERROR", ""))
            if env.get("IRIS_PREVIOUS_ATTEMPT_STATE") else None
        ),
    )


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
