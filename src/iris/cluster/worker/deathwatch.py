"""Tasks die with their worker (issue 23 item 5): a small helper process, started by the worker in
a session of its own, that outlives it just long enough to stop its tasks.

Tasks run in sessions of their own (so a signal to the worker's group does not reach them), which
also means nothing stops them when the worker is killed -9: its retry runs elsewhere while the old
attempt goes on (two copies of a training rank writing one checkpoint). The helper holds the read
end of a pipe whose write end only the worker has; the worker tells it each task it starts and
ends, one line each:

    +PGID [CGROUP_DIR]    a task started (its process group, and its cgroup when it has one)
    -PGID                 it ended
    bye                   the worker stops on purpose (it stopped its tasks itself)

End of input without ``bye`` means the worker died: every live task gets SIGTERM (its whole process
group, and every process in its cgroup, so what left the group goes too), then SIGKILL after the
grace. ``posix_spawn`` cannot set ``PR_SET_PDEATHSIG``, and that would reach only the leader.

Run as ``python -m iris.cluster.worker.deathwatch GRACE_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from iris.cluster.clock import SystemClock

logger = logging.getLogger(__name__)


def _signal_all(live: dict[int, str], sig: int) -> int:
    """Signal every live task's group and cgroup members; how many signals found a process."""
    found = 0
    for pgid, cgroup in live.items():
        try:
            os.killpg(pgid, sig)
            found += 1
        except (ProcessLookupError, PermissionError):
            pass
        if cgroup:
            try:
                pids = Path(cgroup, "cgroup.procs").read_text().split()
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                    found += 1
                except (ProcessLookupError, PermissionError, ValueError):
                    pass
    return found


def main(argv: list[str]) -> int:
    grace = float(argv[1]) if len(argv) > 1 else 5.0
    live: dict[int, str] = {}
    for raw in sys.stdin.buffer:
        line = raw.decode(errors="replace").strip()
        if line == "bye":
            return 0
        if line.startswith("+"):
            pgid, _, cgroup = line[1:].partition(" ")
            if pgid.isdigit():
                live[int(pgid)] = cgroup
        elif line.startswith("-") and line[1:].isdigit():
            live.pop(int(line[1:]), None)
    # The worker is gone without saying goodbye: stop what it left running.
    if _signal_all(live, signal.SIGTERM):
        clock, pause = SystemClock(), threading.Event()
        deadline = clock.monotonic() + grace
        while clock.monotonic() < deadline and _signal_all(live, 0):
            pause.wait(0.05)  # the helper waiting out the tasks' grace
    _signal_all(live, signal.SIGKILL)
    return 0


class DeathWatch:
    """The worker's end of the helper: ``track``/``untrack`` each task, ``close`` on a clean stop."""

    def __init__(self, grace_s: float) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "iris.cluster.worker.deathwatch", str(grace_s)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)

    def _send(self, line: str) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                return
            try:
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                logger.warning("the deathwatch helper is gone: tasks will not be stopped if this worker dies")
                self._proc = None

    def track(self, pgid: int, cgroup_dir: str = "") -> None:
        self._send(f"+{pgid} {cgroup_dir}".rstrip())

    def untrack(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self) -> None:
        """The worker stops on purpose (its tasks already stopped): the helper leaves quietly."""
        self._send("bye")
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
