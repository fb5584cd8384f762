"""The controller's settings (``iris controller serve`` flags)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from iris.cluster.controller.reads import DEFAULT_BURST_S, DEFAULT_SHARE
from iris.cluster.controller.reservations import DEFAULT_MAX_RESERVATIONS
from iris.cluster.controller.uids import DEFAULT_TASK_UID_RANGE
from iris.cluster.sharing import DEFAULT_SHARING, SharingConfig
from iris.cluster.validation import DEFAULT_LIMITS, Limits


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    worker_timeout_s: float = 10.0
    """A worker not heard from for this long is declared dead (DESIGN §3); a fleet whose heartbeat
    interval grows past a third of it gets three intervals (``max_heartbeat_rate``)."""
    max_heartbeat_rate: float = 250.0
    """Heartbeats per second the whole fleet may send (``--max-heartbeat-rate``). Each worker is asked
    to heartbeat no more often than every ``workers / rate`` seconds (its own interval when that is
    longer), as Nomad sizes its heartbeat TTLs: the controller's cost stays flat as the fleet grows,
    and failure detection slows instead (10,000 workers: every 40 s, declared dead after 120 s)."""
    schedule_interval_s: float = 0.5
    """Fallback scheduling timer; scheduling is otherwise woken by events."""
    max_assignments_per_pass: int = 1024
    """A scheduling pass places at most this many tasks, then releases the lock and the next pass
    runs at once: a fleet-wide dispatch (80,000 tasks) holds the lock for slices of milliseconds,
    not seconds, so heartbeats and reports are answered while it goes on (issue 27 item 4)."""
    health_interval_s: float = 0.5
    dispatch_timeout_s: float = 10.0
    """Deadline of one RunTasks call."""
    kill_timeout_s: float = 5.0
    kill_grace_period_s: float = 0.0
    """SIGTERM, then SIGKILL after this long, for jobs that set no ``termination_grace_seconds``
    (0: the worker's ``--kill-grace``)."""
    max_termination_grace_s: float = 600.0
    """The most grace a job may ask for (``--max-termination-grace``)."""
    quarantine_after: int = 5
    max_endpoints_per_task: int = 16
    """Endpoints one task attempt may hold at once (``--max-endpoints-per-task``)."""
    """Attempts failing quickly in a row on one worker, of two owners' jobs that succeed
    elsewhere, before it is quarantined (``--quarantine-after``; 0: never)."""
    gang_blame_window_s: float = 5.0
    """How long a coscheduled job's first failure waits for its other members' ends before the gang
    restart is decided and one member is charged (``policies.gang_cause``; 0: the first end, at once)."""
    log_fetch_timeout_s: float = 10.0
    dispatch_threads: int = 16
    dispatch_batch_max_tasks: int = 128
    dispatch_batch_max_bytes: int = 1024 * 1024
    """A scheduling pass sends each worker its tasks in calls of at most this many tasks and
    request bytes (a task bigger than that goes alone)."""
    max_dispatch_failures: int = 3
    """Failed launch calls in a row after which a worker is declared dead."""
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    """Size limits of a job; the workers apply the same (``iris.cluster.validation``)."""
    auth: bool = True
    """Every call needs a credential (DESIGN §7). False only for ``--auth none`` on loopback."""
    finished_job_ttl_s: float = 7 * 24 * 3600.0
    """Ended jobs are deleted this long after they ended (``--finished-job-ttl``; 0: never by age)."""
    max_finished_jobs: int = 10_000
    """At most this many ended jobs (without a parent) are kept; the oldest go first
    (``--max-finished-jobs``; 0: no limit)."""
    read_share: float = DEFAULT_SHARE
    """Of one core, what reads (job lists and statuses, logs, the dashboard) may use over time, one
    read at a time, so that no reader stalls heartbeats and dispatch (``--read-share``;
    ``iris.cluster.controller.reads``)."""
    read_burst_s: float = DEFAULT_BURST_S
    """CPU-seconds of reading that run at once from a full bucket (a lone user listing every job
    is not slowed); beyond it reads run at ``read_share``."""
    max_reservations: int = DEFAULT_MAX_RESERVATIONS
    """How many of the highest-ranked jobs that do not fit now hold reservations (``--max-reservations``;
    0: none, and big gangs may starve behind small work)."""
    sharing: SharingConfig = DEFAULT_SHARING
    """Teams, shares and preemption (``--sharing FILE``, ``iris.cluster.sharing``); the default: every
    user a team of one, equal weights."""
    sharing_file: Path | None = None
    """Where ``sharing`` was read from: ``iris share reload`` and SIGHUP read it again."""
    task_uid_range: tuple[int, int] = DEFAULT_TASK_UID_RANGE
    """The uids users' tasks run as on root workers, one per user (``--task-uid-range``; ``uids``)."""
    task_users: Mapping[str, str] = field(default_factory=dict)
    """Users whose tasks run as an existing Unix user instead (``--task-users FILE``)."""
    shared_dir: Path | None = None
    """A directory mounted at the same path on the controller and every worker (``--shared-dir``): each
    job gets one under it (``checkpoint_dir``), made before its first attempt, deleted with it."""

    def make_checkpoint_dir(self, owner: str, job_id: str, job_uid: str) -> None:
        """Make a new job's checkpoint directory (with a shared dir), writable by its tasks' user
        (mode 0777 until issue 23 gives each user a uid); a failure is logged, not fatal."""
        path = self.checkpoint_dir(owner, job_id, job_uid)
        if path is None:
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
            for parent in (path.parent, path.parent.parent):  # SHARED/checkpoints/<owner>: passable
                parent.chmod(0o755)
            path.chmod(0o777)
        except OSError as e:
            logging.getLogger("iris.cluster.controller.controller").warning(
                "job %s: could not make its checkpoint dir %s: %s", job_id, path, e)

    def checkpoint_dir(self, owner: str, job_id: str, uid: str) -> Path | None:
        """The job's directory on the shared dir: ``SHARED/checkpoints/<owner>/<job id>.<uid>`` (a child
        job's ``/`` kept as ``__``; one incarnation's never another's). None without a shared dir."""
        if self.shared_dir is None:
            return None
        name = job_id.removeprefix(f"{owner}:") if owner else job_id  # under its owner's dir already
        return self.shared_dir / "checkpoints" / (owner or "_") / f"{name.replace('/', '__')}.{uid}"
