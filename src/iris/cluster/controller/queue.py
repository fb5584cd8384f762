"""The pending queue, by priority band (``iris.cluster.bands``): production, then interactive, then
batch; within a band, the order tasks entered it. O(1) add, removal and membership, with one index
of which band holds a task.

Within a band the queue is kept as *runs*: consecutive tasks of one job (a job's tasks enter
together, so a 20,000-task job is one run). A scheduling pass reads the runs (``QueuedTasks``), so
grouping the queue by job costs O(runs), not O(tasks): a pass's cost follows the work it places,
not the depth of the queue.

Parked tasks (issue 25 item 6): the tasks of jobs that fit no worker the fleet has are kept apart,
still queued (PENDING, counted, found) but not in the bands a scheduling pass reads, so a deep
queue of work that cannot run costs a pass nothing; they rejoin the end of their band, in their
order, when capacity of their kind appears. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import overload

from iris.cluster.bands import BANDS
from iris.cluster.controller.task import Task
from iris.cluster.types import JobId, TaskId


class QueueRun:
    """Consecutive queued tasks of one job in one band, in queue order (read-only outside the queue)."""

    __slots__ = ("job_id", "tasks")

    def __init__(self, job_id: JobId) -> None:
        self.job_id = job_id
        self.tasks: dict[TaskId, Task] = {}


class QueuedTasks(Sequence[Task]):
    """The tasks a pass reads, in queue order, together with the queue's runs (``runs``) so that a
    reader grouping by job need not walk every task. A view of the queue as it is when made: read
    it before the queue changes (a pass reads it under the state's lock, before it commits)."""

    __slots__ = ("_flat", "_len", "runs")

    def __init__(self, runs: list[QueueRun]) -> None:
        self.runs = runs
        self._len = sum(len(run.tasks) for run in runs)
        self._flat: list[Task] | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Task]:
        return chain.from_iterable(run.tasks.values() for run in self.runs)

    @overload
    def __getitem__(self, index: int) -> Task: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Task]: ...

    def __getitem__(self, index: int | slice) -> Task | Sequence[Task]:
        if self._flat is None:
            self._flat = list(self)
        return self._flat[index]


class BandQueue:
    """A dict-like queue of PENDING tasks (task id -> task) whose iteration order is band-major."""

    __slots__ = ("_band_of", "_bands", "_last", "_parked", "_run_of", "_where")

    def __init__(self, band_of: Callable[[Task], int]) -> None:
        self._bands: tuple[dict[QueueRun, None], ...] = tuple({} for _ in BANDS)
        """Per band, its runs in queue order (an insertion-ordered set)."""
        self._last: list[QueueRun | None] = [None] * len(BANDS)
        """Per band, its last run while it has tasks (a task of the same job joins it)."""
        self._run_of: dict[TaskId, QueueRun] = {}
        self._where: dict[TaskId, int] = {}
        """Task -> its band; a parked task's is ``-1 - band``."""
        self._parked: dict[TaskId, Task] = {}
        self._band_of = band_of

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _tail_run(self, band: int, job_id: JobId) -> QueueRun:
        run = self._last[band]
        if run is None or run.job_id != job_id:
            run = self._last[band] = QueueRun(job_id)
            self._bands[band][run] = None
        return run

    def _append(self, band: int, task_id: TaskId, task: Task) -> None:
        run = self._tail_run(band, task.job_id)
        run.tasks[task_id] = task
        self._run_of[task_id] = run

    def _remove(self, band: int, task_id: TaskId) -> Task:
        run = self._run_of.pop(task_id)
        task = run.tasks.pop(task_id)
        if not run.tasks:
            del self._bands[band][run]
            if self._last[band] is run:
                self._last[band] = None
        return task

    def __setitem__(self, task_id: TaskId, task: Task) -> None:
        """Append (or, for a task already queued, keep its place)."""
        band = self._where.get(task_id)
        if band is None:
            band = self._where[task_id] = self._band_of(task)
            self._append(band, task_id, task)
        elif band < 0:
            self._parked[task_id] = task
        else:
            self._run_of[task_id].tasks[task_id] = task

    def extend(self, tasks: list[Task], band: int) -> None:
        """Append a new job's tasks, all of one job and band (one dict update, not one call per task)."""
        if not tasks:
            return
        run = self._tail_run(band, tasks[0].job_id)
        ids = [task.task_id for task in tasks]
        run.tasks.update(zip(ids, tasks, strict=True))
        self._run_of.update(dict.fromkeys(ids, run))
        self._where.update(dict.fromkeys(ids, band))

    def __delitem__(self, task_id: TaskId) -> None:
        band = self._where.pop(task_id)
        if band < 0:
            del self._parked[task_id]
        else:
            self._remove(band, task_id)

    def pop(self, task_id: TaskId, default: Task | None = None) -> Task | None:
        band = self._where.pop(task_id, None)
        if band is None:
            return default
        return self._parked.pop(task_id) if band < 0 else self._remove(band, task_id)

    def __iter__(self) -> Iterator[TaskId]:
        """Every queued task, parked ones last."""
        for band in self._bands:
            for run in band:
                yield from run.tasks
        yield from self._parked

    def park(self, task_ids: list[TaskId]) -> None:
        """Take these queued tasks out of the bands a pass reads (they stay queued)."""
        for task_id in task_ids:
            band = self._where.get(task_id)
            if band is not None and band >= 0:
                self._parked[task_id] = self._remove(band, task_id)
                self._where[task_id] = -1 - band

    def unpark(self, task_ids: list[TaskId]) -> None:
        """Put parked tasks back at the end of their bands, in the order given."""
        for task_id in task_ids:
            band = self._where.get(task_id)
            if band is not None and band < 0:
                self._append(-1 - band, task_id, self._parked.pop(task_id))
                self._where[task_id] = -1 - band

    def parked(self) -> list[Task]:
        """The parked tasks, in the order they were parked."""
        return list(self._parked.values())

    def values(self) -> list[Task]:
        """Every queued task a pass reads (parked ones not), in queue order."""
        out: list[Task] = []
        for band in self._bands:
            for run in band:
                out.extend(run.tasks.values())
        return out

    def runs(self) -> QueuedTasks:
        """What a pass reads (parked tasks not), as runs: O(runs)."""
        return QueuedTasks([run for band in self._bands for run in band])

    def tails(self, members: set[TaskId]) -> list[TaskId]:
        """Per band, the longest tail made only of ``members`` (tasks that entered in one batch were
        appended to their bands), band by band, each in queue order. O(batch)."""
        out: list[TaskId] = []
        for band in self._bands:
            tail: list[TaskId] = []
            for task_id in _reversed_ids(band):
                if task_id not in members:
                    break
                tail.append(task_id)
            tail.reverse()
            out.extend(tail)
        return out


def _reversed_ids(band: dict[QueueRun, None]) -> Iterator[TaskId]:
    for run in reversed(band):
        yield from reversed(run.tasks)


__all__ = ["BandQueue", "QueueRun", "QueuedTasks"]
