"""Task-to-worker matching. Pure: no threads, dispatch or state mutation; time comes in as ``now_ms``.

``Scheduler.find_assignments(pending_tasks, workers, now_ms)`` reads the jobs' requirements and the
workers' free capacity (from their counters) and returns a ``SchedulingTransaction`` value:
assignments in queue order, tasks whose scheduling timeout passed, and a readable reason for each
job that could not be placed. Committing the assignments is the shell's job.

- A task fits a worker when the worker is healthy and its free cpu, memory, disk and devices cover
  the job's request. Capacity is deducted on a private per-call copy.
- No head-of-line blocking: a job that does not fit is skipped for the rest of the pass, and the
  jobs behind it are still placed.
- First fit with a cursor per requirement shape: capacities only shrink during a pass, so a worker
  that could not take a task of some shape cannot take the next one of the same shape either. This
  keeps a pass O(tasks + workers x shapes).
- A coscheduled job's pending tasks are placed all in one pass or not at all.
- The scheduling timeout counts from when the task last became PENDING (DESIGN §4.5).
- Deterministic: the same inputs give the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from iris.cluster.controller.job import Job
from iris.cluster.controller.state import ControllerState, ControllerWorker
from iris.cluster.controller.task import Task
from iris.cluster.types import JobId, format_size

_Shape = tuple[int, int, int, str, str, int]


@dataclass(slots=True)
class _Capacity:
    worker: ControllerWorker
    cpu: int
    memory: int
    disk: int
    devices: int
    device_kind: str
    device_variant: str

    def fits(self, job: Job) -> bool:
        if self.cpu < job.cpu or self.memory < job.memory_bytes:
            return False
        if job.disk_bytes and self.disk < job.disk_bytes:
            return False
        if job.device_kind != "cpu":
            if self.device_kind != job.device_kind or self.devices < job.device_count:
                return False
            if job.device_variant and job.device_variant.lower() not in self.device_variant.lower():
                return False
        return True

    def deduct(self, job: Job) -> None:
        self.cpu -= job.cpu
        self.memory -= job.memory_bytes
        self.disk -= job.disk_bytes
        self.devices -= job.device_count

    def restore(self, job: Job) -> None:
        self.cpu += job.cpu
        self.memory += job.memory_bytes
        self.disk += job.disk_bytes
        self.devices += job.device_count


@dataclass(slots=True)
class SchedulingTransaction:
    """The result of one scheduling pass: a value, never applied to state by the scheduler."""

    state: ControllerState | None = None
    assignments: list[tuple[Task, ControllerWorker]] = field(default_factory=list)
    timed_out_tasks: list[Task] = field(default_factory=list)
    pending_reasons: dict[JobId, str] = field(default_factory=dict)
    """Why a job's tasks are still waiting, e.g. "no worker has 64 cpus"."""

    def tentatively_assign(self, task: Task, worker: ControllerWorker) -> None:
        self.assignments.append((task, worker))

    def rollback_assignment(self, task: Task, worker: ControllerWorker) -> None:
        self.assignments = [(t, w) for (t, w) in self.assignments if t is not task]


class Scheduler:
    """Matches pending tasks to workers. Reads jobs through ``state`` but never changes it."""

    def __init__(self, state: ControllerState) -> None:
        self._state = state

    def find_assignments(
        self,
        pending_tasks: Sequence[Task],
        workers: Sequence[ControllerWorker],
        now_ms: int,
    ) -> SchedulingTransaction:
        transaction = SchedulingTransaction(self._state)
        caps = [
            _Capacity(
                worker=w,
                cpu=w.total_cpu - w.committed_cpu,
                memory=w.total_memory - w.committed_memory,
                disk=w.total_disk - w.committed_disk,
                devices=w.total_devices - w.committed_devices,
                device_kind=w.device_kind,
                device_variant=w.device_variant,
            )
            for w in workers
            if w.healthy
        ]
        cursors: dict[_Shape, int] = {}
        exhausted: set[JobId] = set()
        jobs: dict[JobId, Job | None] = {}
        coscheduled_done: set[JobId] = set()
        get_job = self._state.get_job
        skip: JobId | None = None
        """A job none of whose remaining tasks can change anything in this pass (ended, or placed
        no more and without a scheduling timeout): its run of tasks in the queue costs one
        comparison each. A big job's tasks are consecutive, so a pass over a long queue that can
        place nothing stays cheap."""

        for i, task in enumerate(pending_tasks):
            job_id = task.job_id
            if job_id == skip:
                continue
            if job_id in jobs:
                job = jobs[job_id]
            else:
                job = jobs[job_id] = get_job(job_id)
            if job is None or job.is_finished():
                skip = job_id
                continue
            if job.scheduling_timeout_ms > 0 and now_ms - task.pending_since_ms > job.scheduling_timeout_ms:
                transaction.timed_out_tasks.append(task)
                continue
            if job_id in exhausted:
                if job.scheduling_timeout_ms <= 0:
                    skip = job_id
                continue
            if job.coscheduled:
                if job_id not in coscheduled_done:
                    coscheduled_done.add(job_id)
                    gang = [t for t in pending_tasks[i:] if t.job_id == job_id]
                    if not self._place_gang(gang, job, caps, transaction):
                        exhausted.add(job_id)
                        transaction.pending_reasons[job_id] = self._explain(job, caps, gang=len(gang))
                continue

            shape: _Shape = (
                job.cpu, job.memory_bytes, job.disk_bytes, job.device_kind, job.device_variant, job.device_count,
            )
            start = cursors.get(shape, 0)
            placed = False
            for idx in range(start, len(caps)):
                cap = caps[idx]
                if cap.fits(job):
                    cap.deduct(job)
                    transaction.tentatively_assign(task, cap.worker)
                    cursors[shape] = idx
                    placed = True
                    break
            if not placed:
                cursors[shape] = len(caps)
                exhausted.add(job_id)
                transaction.pending_reasons[job_id] = self._explain(job, caps)
                if job.scheduling_timeout_ms <= 0:
                    skip = job_id
        return transaction

    def _place_gang(
        self, gang: list[Task], job: Job, caps: list[_Capacity], transaction: SchedulingTransaction
    ) -> bool:
        placed: list[tuple[Task, _Capacity]] = []
        start = 0  # capacities only shrink within the gang, so each search resumes where the last one stopped
        for task in gang:
            for idx in range(start, len(caps)):
                cap = caps[idx]
                if cap.fits(job):
                    cap.deduct(job)
                    placed.append((task, cap))
                    start = idx
                    break
            else:
                for _, cap in placed:
                    cap.restore(job)
                return False
        for task, cap in placed:
            transaction.tentatively_assign(task, cap.worker)
        return True

    def _explain(self, job: Job, caps: list[_Capacity], gang: int = 0) -> str:
        """Why ``job`` could not be placed: what no worker has at all, or that all are busy."""
        workers = [c.worker for c in caps]
        if not workers:
            return "no healthy workers"
        missing = _unmet_everywhere(job, workers)
        if missing:
            return missing
        if gang:
            return f"waiting for room for all {gang} coscheduled tasks at once"
        return f"waiting for free resources: none of {len(workers)} workers has room right now"


def _unmet_everywhere(job: Job, workers: Sequence[ControllerWorker]) -> str:
    """A reason when no worker could ever hold one task of ``job`` (by total capacity), else ""."""
    if all(w.total_cpu < job.cpu for w in workers):
        return f"no worker has {job.cpu} cpus (largest: {max(w.total_cpu for w in workers)})"
    if all(w.total_memory < job.memory_bytes for w in workers):
        largest = max(w.total_memory for w in workers)
        return f"no worker has {format_size(job.memory_bytes)} memory (largest: {format_size(largest)})"
    if job.disk_bytes and all(w.total_disk < job.disk_bytes for w in workers):
        return f"no worker has {format_size(job.disk_bytes)} disk"
    if job.device_kind != "cpu":
        matching = [
            w
            for w in workers
            if w.device_kind == job.device_kind
            and (not job.device_variant or job.device_variant.lower() in w.device_variant.lower())
        ]
        label = f"{job.device_kind} {job.device_variant}".strip()
        if not matching:
            return f"no worker has a {label}"
        if all(w.total_devices < job.device_count for w in matching):
            return f"no worker has {job.device_count} x {label}"
    fits_one = [
        w
        for w in workers
        if w.total_cpu >= job.cpu
        and w.total_memory >= job.memory_bytes
        and (not job.disk_bytes or w.total_disk >= job.disk_bytes)
    ]
    if not fits_one:
        return "no single worker has enough cpu, memory and disk together"
    return ""
