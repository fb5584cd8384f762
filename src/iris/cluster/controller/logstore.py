"""The controller's copy of every attempt's log, shipped by the workers while the attempt runs
and when it ends (``PushTaskLogs``), so ``iris job logs`` works after a worker is gone for good.

Layout: ``STATE_DIR/logs/<job key>/<task index>.<attempt>/`` holding the attempt's log files
(``iris.cluster.logfile``) and, once the worker sent the last of it, an empty ``complete`` file.
The job key is the job's incarnation uid (unique across deletions; the escaped job id for jobs
stored before uids), so deleting a job is removing one directory.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

from iris.cluster.logfile import DEFAULT_LOG_CAP_BYTES, AttemptLog

_OPEN_LOGS = 1024
"""Attempt logs kept open (their layout cached) at once."""
COMPLETE = "complete"


def job_key(job_id: str, job_uid: str) -> str:
    return job_uid or "id-" + quote(job_id, safe="")


class LogStore:
    def __init__(self, root: Path, cap_bytes: int = DEFAULT_LOG_CAP_BYTES) -> None:
        self.root = root
        self.cap_bytes = cap_bytes
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple[str, int, int], AttemptLog] = OrderedDict()

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
        directory = os.path.join(self.root, key, f"{task_index}.{attempt_id}")
        try:  # os calls, not pathlib's: once per ended attempt on the report path
            os.mkdir(directory)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
        os.close(os.open(os.path.join(directory, COMPLETE), os.O_WRONLY | os.O_CREAT, 0o644))

    def is_complete(self, key: str, task_index: int, attempt_id: int) -> bool:
        return (self._dir(key, task_index, attempt_id) / COMPLETE).exists()

    def has(self, key: str, task_index: int, attempt_id: int) -> bool:
        return self._dir(key, task_index, attempt_id).is_dir()

    def delete_job(self, key: str) -> None:
        """Remove every log of one job incarnation."""
        with self._lock:
            for ident in [i for i in self._open if i[0] == key]:
                del self._open[ident]
        if key and "/" not in key and key not in (".", ".."):
            shutil.rmtree(self.root / key, ignore_errors=True)
