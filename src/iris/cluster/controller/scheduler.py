"""Task-to-worker matching. Pure: no threads, dispatch or state mutation; time comes in as ``now_ms``.

``Scheduler.find_assignments(pending_tasks, workers, now_ms)`` keeps the seed's name and argument
shape, but decides from frozen values taken at its boundary: each worker becomes a
``WorkerSnapshot`` (free and total capacity, health) and each job its ``JobRequirements`` (derived
once from the job's frozen spec). It returns a ``SchedulingTransaction`` value: assignments in
queue order, tasks whose scheduling timeout passed, and a readable reason for each job that could
not be placed. Committing the assignments is the shell's job.

- A task fits a worker when ``capacity.fits_in`` says so (the one fit rule); capacity is deducted on
  a private per-call copy of the snapshots.
- No head-of-line blocking: a job that does not fit is skipped for the rest of the pass, and the
  jobs behind it are still placed.
- First fit with a cursor per requirement shape: capacities only shrink during a pass, so a worker
  that could not take a task of some shape cannot take the next one of the same shape either. This
  keeps a pass O(tasks + workers x shapes).
- A coscheduled job's pending tasks are placed all in one pass or not at all.
- The scheduling timeout counts from when the task last became PENDING (DESIGN §4.5).
- A failure retry is not placed before its ``not_before_ms`` (``--retry-backoff``); a gang waits for
  its latest member.
- Deterministic: the same inputs give the same result.
- ``bounded=True`` (the passes woken by events): the pass ends as soon as no worker has a free
  millicore left (every task needs one), so its cost follows what changed (the capacity freed, the
  tasks placed), not the depth of the queue; such a pass neither times tasks out nor explains the
  jobs it did not reach. The periodic full pass does both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from iris.cluster.controller.capacity import JobRequirements, Room, WorkerSnapshot, fits_in, unmet_everywhere
from iris.cluster.controller.job import Job
from iris.cluster.controller.state import ControllerState, ControllerWorker
from iris.cluster.controller.task import Task
from iris.cluster.types import JobId

_Shape = tuple[int, int, int, str, str, int]


@dataclass(slots=True)
class _Working:
    """The scheduler's private, shrinking copy of one worker's free capacity during a pass."""

    worker: ControllerWorker
    snapshot: WorkerSnapshot
    cpu: int
    memory: int
    disk: int
    devices: int
    device_kind: str
    device_variant: str

    def deduct(self, req: JobRequirements) -> None:
        self.cpu -= req.cpu
        self.memory -= req.memory_bytes
        self.disk -= req.disk_bytes
        self.devices -= req.device_count

    def restore(self, req: JobRequirements) -> None:
        self.cpu += req.cpu
        self.memory += req.memory_bytes
        self.disk += req.disk_bytes
        self.devices += req.device_count


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
    """Matches pending tasks to workers. Looks jobs up through ``state`` (or ``get_job``) but never
    changes anything."""

    def __init__(self, state: ControllerState | None = None, *, get_job: Callable[[JobId], Job | None] | None = None
                 ) -> None:
        if get_job is None:
            if state is None:
                raise ValueError("Scheduler needs a state or a get_job function")
            get_job = state.get_job
        self._state = state
        self._get_job = get_job

    def find_assignments(
        self,
        pending_tasks: Sequence[Task],
        workers: Sequence[ControllerWorker],
        now_ms: int,
        *,
        bounded: bool = False,
    ) -> SchedulingTransaction:
        transaction = SchedulingTransaction(self._state)
        snapshots = [(w, w.snapshot()) for w in workers]
        working = [
            _Working(w, s, s.free.cpu, s.free.memory, s.free.disk, s.free.devices, s.free.device_kind,
                     s.free.device_variant)
            for w, s in snapshots
            if s.healthy
        ]
        room = sum(1 for cap in working if cap.cpu > 0)
        """Workers with a free millicore: none left, and nothing more can be placed in this pass."""
        cursors: dict[_Shape, int] = {}
        exhausted: set[JobId] = set()
        reqs: dict[JobId, JobRequirements | None] = {}
        coscheduled_done: set[JobId] = set()
        get_job = self._get_job
        skip: JobId | None = None
        """A job none of whose remaining tasks can change anything in this pass (ended, or placed
        no more and without a scheduling timeout): its run of tasks in the queue costs one
        comparison each. A big job's tasks are consecutive, so a pass over a long queue that can
        place nothing stays cheap."""

        for i, task in enumerate(pending_tasks):
            job_id = task.job_id
            if job_id == skip:
                continue
            if bounded and room == 0:
                break
            if job_id in reqs:
                req = reqs[job_id]
            else:
                job = get_job(job_id)
                req = reqs[job_id] = None if job is None or job.is_finished() else job.requirements
            if req is None:
                skip = job_id
                continue
            timeout_ms = req.scheduling_timeout_ms
            if timeout_ms > 0 and now_ms - task.pending_since_ms > timeout_ms:
                transaction.timed_out_tasks.append(task)
                continue
            if job_id in exhausted:
                if timeout_ms <= 0:
                    skip = job_id
                continue
            if req.coscheduled:
                if job_id not in coscheduled_done:
                    coscheduled_done.add(job_id)
                    gang = [t for t in pending_tasks[i:] if t.job_id == job_id]
                    waiting = max(gang, key=lambda t: t.not_before_ms)
                    if waiting.not_before_ms > now_ms:  # a retry backs off: the whole gang waits for it
                        transaction.pending_reasons[job_id] = _backoff_reason(waiting, now_ms)
                        exhausted.add(job_id)
                        continue
                    if not _place_gang(gang, req, working, transaction):
                        exhausted.add(job_id)
                        transaction.pending_reasons[job_id] = _explain(req, working, gang=len(gang))
                    else:
                        room = sum(1 for cap in working if cap.cpu > 0)
                continue

            if task.not_before_ms > now_ms:  # a failure retry backing off (--retry-backoff)
                transaction.pending_reasons.setdefault(job_id, _backoff_reason(task, now_ms))
                continue
            shape = req.shape
            start = cursors.get(shape, 0)
            placed = False
            for idx in range(start, len(working)):
                cap = working[idx]
                if fits_in(req, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind, cap.device_variant):
                    cap.deduct(req)
                    if cap.cpu <= 0:
                        room -= 1
                    transaction.tentatively_assign(task, cap.worker)
                    cursors[shape] = idx
                    placed = True
                    break
            if not placed:
                cursors[shape] = len(working)
                exhausted.add(job_id)
                transaction.pending_reasons[job_id] = _explain(req, working)
                if timeout_ms <= 0:
                    skip = job_id
        return transaction


def _backoff_reason(task: Task, now_ms: int) -> str:
    seconds = -(-(task.not_before_ms - now_ms) // 1000)
    return f"retrying in {seconds}s (attempt {task.current_attempt_id})"


def _place_gang(gang: list[Task], req: JobRequirements, working: list[_Working],
                transaction: SchedulingTransaction) -> bool:
    placed: list[tuple[Task, _Working]] = []
    start = 0  # capacities only shrink within the gang, so each search resumes where the last one stopped
    for task in gang:
        for idx in range(start, len(working)):
            cap = working[idx]
            if fits_in(req, cap.cpu, cap.memory, cap.disk, cap.devices, cap.device_kind, cap.device_variant):
                cap.deduct(req)
                placed.append((task, cap))
                start = idx
                break
        else:
            for _, cap in placed:
                cap.restore(req)
            return False
    for task, cap in placed:
        transaction.tentatively_assign(task, cap.worker)
    return True


def _explain(req: JobRequirements, working: list[_Working], gang: int = 0) -> str:
    """Why a job could not be placed: what no worker has at all, or that all are busy."""
    totals: list[Room] = [w.snapshot.total for w in working]
    if not totals:
        return "no healthy workers"
    missing = unmet_everywhere(req, totals)
    if missing:
        return missing
    if gang:
        return f"waiting for room for all {gang} coscheduled tasks at once"
    return f"waiting for free resources: none of {len(totals)} workers has room right now"
