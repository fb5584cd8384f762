"""Task logs on the controller: the chunks workers ship, and pages of them for readers.

Workers ship each attempt's output as it is written (``PushTaskLogs``) and say at its end how much
they shipped (a report's ``log_size``); the controller keeps its copy in the ``LogStore`` and
serves pages from it, so logs outlive the worker. Without a copy (no state dir, or a backend that
does not ship logs) a page is fetched from the backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from iris.cluster.controller.backend import BackendUnavailable, LogLine, LogRequest, TaskBackend
from iris.cluster.controller.changes import Changes
from iris.cluster.controller.credentials import Credentials
from iris.cluster.controller.logstore import LogStore, job_key
from iris.cluster.controller.requests import LogChunk, LogQuery, TaskLogPage, TaskReport
from iris.cluster.controller.state import ControllerState
from iris.cluster.errors import NotFound, Unavailable
from iris.cluster.types import TERMINAL_TASK_STATES, AttemptRef, WorkerId


class TaskLogs:
    def __init__(self, changes: Changes, backend: TaskBackend, credentials: Credentials,
                 store: LogStore | None) -> None:
        self._changes = changes
        self._backend = backend
        self._credentials = credentials
        self.store = store
        """The controller's copy of every attempt's log, when it has a state dir."""

    def fetch(self, query: LogQuery) -> TaskLogPage:
        with self._changes.read() as state:
            task = state.get_task(query.task_id)
            if task is None:
                raise NotFound(f"task_id: task {query.task_id[:128]!r} not found")
            attempt_id = query.attempt_id if query.attempt_id is not None else task.current_attempt_id
            worker_id: WorkerId | None = None
            attempt_finished = True
            if attempt_id == task.current_attempt_id and task.worker_id is not None:
                worker_id = task.worker_id
                attempt_finished = task.is_finished()
            else:
                for attempt in task.attempts:
                    if attempt.attempt_id == attempt_id:
                        worker_id = attempt.worker_id
                        break
                else:
                    if not 0 <= attempt_id <= task.current_attempt_id:
                        raise NotFound(f"attempt_id: task {task.task_id} has no attempt {attempt_id}")
            worker = state.get_worker(worker_id) if worker_id is not None else None
            job = state.get_job(task.job_id)
            key = job_key(job.job_id, job.uid) if job is not None else ""
            worker_gone = worker is None or not worker.healthy
            task_index = task.task_index
        offset = query.start_offset
        if self.store is not None and key and (self._backend.ships_logs or self.store.has(key, task_index, attempt_id)):
            # The controller's own copy: it outlives the worker, and costs the worker nothing.
            log = self.store.attempt_log(key, task_index, attempt_id)
            if offset is None:
                offset = log.tail_offset(query.tail_lines) if query.tail_lines > 0 else 0
                if query.start_line and not query.tail_lines:
                    offset = log.offset_of_record(query.start_line)
            stored = log.read(offset, query.max_lines)
            complete = self.store.is_complete(key, task_index, attempt_id)
            return TaskLogPage(
                lines=[LogLine(r.text, r.source, r.timestamp_ms) for r in stored.records],
                next_line=query.start_line + len(stored.records),
                next_offset=stored.next_offset,
                attempt_finished=attempt_finished and stored.next_offset >= stored.end_offset and (
                    complete or worker_gone),
                attempt_id=attempt_id,
            )
        if worker_id is None:
            return TaskLogPage([], query.start_line, offset or 0, False, attempt_id)
        if worker is None:
            raise Unavailable(f"logs of attempt {attempt_id} are on worker {worker_id}, which is unknown")
        try:
            page = self._backend.fetch_logs(LogRequest(
                worker_id, worker.address, task.task_id, attempt_id, query.start_line, offset, query.max_lines,
                self._credentials.controller_token(worker_id),
            ))
        except BackendUnavailable as e:
            raise Unavailable(f"logs of attempt {attempt_id} are on worker {worker_id}, which did not answer: {e}"
                              ) from e
        return TaskLogPage(page.lines, page.next_line, page.next_offset,
                           page.attempt_finished or attempt_finished, attempt_id)

    def push(self, worker_id: WorkerId, chunks: Sequence[LogChunk]) -> list[int]:
        """Keep the log chunks a worker ships, for attempts that ran on that worker only. A chunk of
        an attempt the controller does not know (deleted job, another worker's) is answered -1."""
        offsets: list[int] = []
        for chunk in chunks:
            target = self._target(worker_id, chunk.ref)
            if target is None or self.store is None:
                offsets.append(-1)
                continue
            key, index = target
            log = self.store.attempt_log(key, index, chunk.ref.attempt_id)
            end = log.append_at(chunk.start_offset, chunk.data) if chunk.data else log.end_offset()
            if chunk.complete and end >= chunk.start_offset + len(chunk.data):
                self.store.mark_complete(key, index, chunk.ref.attempt_id)
            offsets.append(end)
        return offsets

    def complete(self, state: ControllerState, worker_id: WorkerId, reports: Sequence[TaskReport]) -> None:
        """Ended attempts reported with ``log_size``: their whole log was shipped; complete it here
        when the controller holds exactly that much. Called in the report's change, before its ends
        are applied (so no one sees an attempt ended whose whole log is not marked complete): the
        attempts that wrote nothing (most short tasks, ``log_size`` 0) cost no file system call of
        their own, one append per job."""
        if self.store is None:
            return
        ended = [r for r in reports if r.log_size is not None and r.state in TERMINAL_TASK_STATES]
        if not ended:
            return
        empty: dict[str, list[tuple[int, int]]] = {}
        for report in ended:
            target = self._locate(state, worker_id, report.ref)
            if target is None:
                continue
            key, index = target
            attempt_id = report.ref.attempt_id
            if report.log_size == 0:  # nothing written: whatever the store holds is all there is
                empty.setdefault(key, []).append((index, attempt_id))
            elif self.store.attempt_log(key, index, attempt_id).end_offset() == report.log_size:
                self.store.mark_complete(key, index, attempt_id)
        for key, attempts in empty.items():
            self.store.mark_empty_complete(key, attempts)

    def _target(self, worker_id: WorkerId, ref: AttemptRef) -> tuple[str, int] | None:
        """Where the log of an attempt that ran on ``worker_id`` is kept (job key, task index)."""
        with self._changes.read() as state:
            return self._locate(state, worker_id, ref)

    @staticmethod
    def _locate(state: ControllerState, worker_id: WorkerId, ref: AttemptRef) -> tuple[str, int] | None:
        task = state.ran_attempt(ref, worker_id)
        job = state.get_job(task.job_id) if task is not None else None
        if task is None or job is None:
            return None
        return job_key(job.job_id, job.uid), task.task_index
