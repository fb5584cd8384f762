"""The pending queue, by priority band (``iris.cluster.bands``): production, then interactive, then
batch; within a band, the order tasks entered it. Each band is an insertion-ordered dict (O(1) add,
removal and membership), with one index of which band holds a task.

Parked tasks (issue 25 item 6): the tasks of jobs that fit no worker the fleet has are kept apart,
still queued (PENDING, counted, found) but not in the bands a scheduling pass reads, so a deep
queue of work that cannot run costs a pass nothing; they rejoin the end of their band, in their
order, when capacity of their kind appears. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from iris.cluster.bands import BANDS
from iris.cluster.controller.task import Task
from iris.cluster.types import TaskId


class BandQueue:
    """A dict-like queue of PENDING tasks (task id -> task) whose iteration order is band-major."""

    __slots__ = ("_band_of", "_bands", "_parked", "_where")

    def __init__(self, band_of: Callable[[Task], int]) -> None:
        self._bands: tuple[dict[TaskId, Task], ...] = tuple({} for _ in BANDS)
        self._where: dict[TaskId, int] = {}
        """Task -> its band; a parked task's is ``-1 - band``."""
        self._parked: dict[TaskId, Task] = {}
        self._band_of = band_of

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __setitem__(self, task_id: TaskId, task: Task) -> None:
        """Append (or, for a task already queued, keep its place)."""
        band = self._where.get(task_id)
        if band is None:
            band = self._where[task_id] = self._band_of(task)
        if band < 0:
            self._parked[task_id] = task
            return
        self._bands[band][task_id] = task

    def extend(self, tasks: list[Task], band: int) -> None:
        """Append a new job's tasks, all of one band (one dict update, not one call per task)."""
        self._bands[band].update({task.task_id: task for task in tasks})
        self._where.update(dict.fromkeys([task.task_id for task in tasks], band))

    def __delitem__(self, task_id: TaskId) -> None:
        band = self._where.pop(task_id)
        del (self._parked if band < 0 else self._bands[band])[task_id]

    def pop(self, task_id: TaskId, default: Task | None = None) -> Task | None:
        band = self._where.pop(task_id, None)
        if band is None:
            return default
        return self._parked.pop(task_id) if band < 0 else self._bands[band].pop(task_id)

    def __iter__(self) -> Iterator[TaskId]:
        """Every queued task, parked ones last."""
        for band in self._bands:
            yield from band
        yield from self._parked

    def park(self, task_ids: list[TaskId]) -> None:
        """Take these queued tasks out of the bands a pass reads (they stay queued)."""
        for task_id in task_ids:
            band = self._where.get(task_id)
            if band is not None and band >= 0:
                self._parked[task_id] = self._bands[band].pop(task_id)
                self._where[task_id] = -1 - band

    def unpark(self, task_ids: list[TaskId]) -> None:
        """Put parked tasks back at the end of their bands, in the order given."""
        for task_id in task_ids:
            band = self._where.get(task_id)
            if band is not None and band < 0:
                self._bands[-1 - band][task_id] = self._parked.pop(task_id)
                self._where[task_id] = -1 - band

    def parked(self) -> list[Task]:
        """The parked tasks, in the order they were parked."""
        return list(self._parked.values())

    def values(self) -> list[Task]:
        """Every queued task a pass reads (parked ones not), in queue order (one C-level copy per band)."""
        out: list[Task] = []
        for band in self._bands:
            out.extend(band.values())
        return out

    def tails(self, members: set[TaskId]) -> list[TaskId]:
        """Per band, the longest tail made only of ``members`` (tasks that entered in one batch were
        appended to their bands), band by band, each in queue order. O(batch)."""
        out: list[TaskId] = []
        for band in self._bands:
            tail: list[TaskId] = []
            for task_id in reversed(band):
                if task_id not in members:
                    break
                tail.append(task_id)
            tail.reverse()
            out.extend(tail)
        return out


__all__ = ["BandQueue"]
