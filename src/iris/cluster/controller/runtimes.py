"""Predicted runtimes (issue 25 item 2), for start-time estimates only: backfill and reservations
trust nothing but a hard ``--timeout``. Pure.

In this order: the job's ``--timeout`` (an upper bound the attempt cannot pass); else the mean of
the last two successful task runtimes of the same owner's jobs of the same name (Tsafrir, Etsion
and Feitelson 2007: this beats users' own estimates), kept in a bounded history that outlives job
deletion and retention (the ``runtimes`` table); else the mean of the job's own finished tasks;
else unknown. An attempt that has run past its prediction is re-predicted (it has at least as long
again to go), never assumed finished.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_HISTORY = 10_000
"""(owner, job name) pairs remembered; the least recently updated go first."""
KEEP = 2


def name_of(job_id: str, owner: str) -> str:
    """A job's name within its owner's namespace (``alice:train/eval`` -> ``train/eval``)."""
    return job_id.removeprefix(f"{owner}:") if owner else job_id


class RuntimeHistory:
    __slots__ = ("_runs", "dirty", "forgotten")

    def __init__(self) -> None:
        self._runs: OrderedDict[tuple[str, str], tuple[int, ...]] = OrderedDict()
        self.dirty: set[tuple[str, str]] = set()
        """Pairs to write (``runtimes`` rows)."""
        self.forgotten: set[tuple[str, str]] = set()
        """Pairs evicted past ``MAX_HISTORY`` (rows to delete)."""

    def record(self, owner: str, name: str, runtime_ms: int) -> None:
        key = (owner, name)
        runs = (*self._runs.pop(key, ()), max(0, runtime_ms))[-KEEP:]
        self._runs[key] = runs
        self.dirty.add(key)
        self.forgotten.discard(key)
        while len(self._runs) > MAX_HISTORY:
            old, _ = self._runs.popitem(last=False)
            self.dirty.discard(old)
            self.forgotten.add(old)

    def restore(self, owner: str, name: str, runs: tuple[int, ...]) -> None:
        self._runs[(owner, name)] = runs[-KEEP:]

    def runs(self, owner: str, name: str) -> tuple[int, ...]:
        return self._runs.get((owner, name), ())

    def predict(self, owner: str, name: str) -> int | None:
        runs = self._runs.get((owner, name))
        return sum(runs) // len(runs) if runs else None


def predict(timeout_ms: int, history_ms: int | None, own_ms: int | None) -> tuple[int | None, str]:
    """A task's predicted runtime and where it came from ("timeout", "history", "job", "unknown")."""
    if timeout_ms > 0:
        return timeout_ms, "timeout"
    if history_ms is not None:
        return history_ms, "history"
    if own_ms is not None:
        return own_ms, "job"
    return None, "unknown"


def remaining(runtime_ms: int | None, elapsed_ms: int) -> int | None:
    """How much longer a running attempt is predicted to run: what its runtime leaves, or, past it,
    as long again as it has run (re-predicted, never assumed finished)."""
    if runtime_ms is None:
        return None
    left = runtime_ms - elapsed_ms
    return left if left > 0 else max(1000, elapsed_ms)


__all__ = ["MAX_HISTORY", "RuntimeHistory", "name_of", "predict", "remaining"]
