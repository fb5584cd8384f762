"""The controller's copy of every attempt's log, shipped by the workers while the attempt runs
and when it ends (``PushTaskLogs``), so ``iris job logs`` works after a worker is gone for good.

Layout: ``STATE_DIR/logs/<job key>/<task index>.<attempt>/`` holding the attempt's log files
(``iris.cluster.logfile``) and, once the worker sent the last of it, an empty ``complete`` file.
An attempt that wrote nothing at all (most short tasks) has no directory: its completeness is a
line ``<task index>.<attempt>`` in the job's ``complete.empty`` file, so an empty log costs the
controller's disk no inode. The job key is the job's incarnation uid (unique across deletions;
the escaped job id for jobs stored before uids), so deleting a job is removing one directory.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from iris.cluster.logfile import DEFAULT_LOG_CAP_BYTES, AttemptLog

_OPEN_LOGS = 1024
"""Attempt logs kept open (their layout cached) at once."""
COMPLETE = "complete"
EMPTY_COMPLETE = "complete.empty"
"""Per job key: one ``<task index>.<attempt>`` line per attempt whose whole log was empty."""
_EMPTY_SETS = 8
"""Jobs whose ``complete.empty`` lines are kept in memory (read back only for log queries)."""


def job_key(job_id: str, job_uid: str) -> str:
    return job_uid or "id-" + quote(job_id, safe="")


class LogStore:
    def __init__(self, root: Path, cap_bytes: int = DEFAULT_LOG_CAP_BYTES) -> None:
        self.root = root
        self.cap_bytes = cap_bytes
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[str, int, int], AttemptLog] = OrderedDict()
        self._empty: OrderedDict[str, set[str]] = OrderedDict()
        """Per job key, its ``complete.empty`` entries (a bounded cache of the file)."""

    def _dir(self, key: str, task_index: int, attempt_id: int) -> Path:
        return self.root / key / f"{task_index}.{attempt_id}"

    def attempt_log(self, key: str, task_index: int, attempt_id: int) -> AttemptLog:
        ident = (key, task_index, attempt_id)
        with self._lock:
            log = self._open.get(ident)
            if log is None:
                log = AttemptLog(self._dir(key, task_index, attempt_id), self.cap_bytes)
                self._open[ident] = log
                if len(self._open) > _OPEN_LOGS:
                    self._open.popitem(last=False)
            else:
                self._open.move_to_end(ident)
            return log

    def mark_complete(self, key: str, task_index: int, attempt_id: int) -> None:
        """The controller holds the attempt's whole log. An attempt that holds no log here (it wrote
        nothing) is a line in its job's ``complete.empty`` (``mark_empty_complete``); any other gets
        its ``complete`` file. Os calls, not pathlib's: this is once per ended attempt on the report
        path."""
        directory = os.path.join(self.root, key, f"{task_index}.{attempt_id}")
        try:
            os.close(os.open(os.path.join(directory, COMPLETE), os.O_WRONLY | os.O_CREAT, 0o644))
            return
        except FileNotFoundError:  # no log held: the common case of a task that printed nothing
            pass
        self.mark_empty_complete(key, [(task_index, attempt_id)])

    def mark_empty_complete(self, key: str, attempts: Sequence[tuple[int, int]]) -> None:
        """Attempts (task index, attempt id) of one job that wrote nothing are complete: lines in the
        job's ``complete.empty``, all in one append (no directory or file of their own)."""
        entries = [f"{task_index}.{attempt_id}" for task_index, attempt_id in attempts]
        job_dir = os.path.join(self.root, key)
        path, flags = os.path.join(job_dir, EMPTY_COMPLETE), os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:  # the job's first
            os.makedirs(job_dir, exist_ok=True)
            fd = os.open(path, flags, 0o644)
        with self._lock:  # whole lines in one write(2): appends of concurrent reports never interleave
            try:
                os.write(fd, "".join(entry + "\n" for entry in entries).encode())
            finally:
                os.close(fd)
            cached = self._empty.get(key)
            if cached is not None:
                cached.update(entries)

    def is_complete(self, key: str, task_index: int, attempt_id: int) -> bool:
        if (self._dir(key, task_index, attempt_id) / COMPLETE).exists():
            return True
        entry = f"{task_index}.{attempt_id}"
        with self._lock:
            entries = self._empty.get(key)
            if entries is None:
                try:
                    text = (self.root / key / EMPTY_COMPLETE).read_text()
                except FileNotFoundError:
                    text = ""
                entries = set(text.split())
                self._empty[key] = entries
                if len(self._empty) > _EMPTY_SETS:
                    self._empty.popitem(last=False)
            else:
                self._empty.move_to_end(key)
            return entry in entries

    def has(self, key: str, task_index: int, attempt_id: int) -> bool:
        """Whether any log of the attempt is held here (one stat)."""
        return os.path.isdir(os.path.join(self.root, key, f"{task_index}.{attempt_id}"))

    def delete_job(self, key: str) -> None:
        """Remove every log of one job incarnation."""
        with self._lock:
            for ident in [i for i in self._open if i[0] == key]:
                del self._open[ident]
            self._empty.pop(key, None)
        if key and "/" not in key and key not in (".", ".."):
            shutil.rmtree(self.root / key, ignore_errors=True)
