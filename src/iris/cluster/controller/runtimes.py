"""Predicted runtimes (issue 25 item 2), for start-time estimates only: backfill and reservations
trust nothing but a hard ``--timeout``. Pure.

In this order: the job's ``--timeout`` (an upper bound the attempt cannot pass); else the mean of
the last two successful task runtimes of the same owner's jobs of the same name, the job's own
tasks included (Tsafrir, Etsion and Feitelson 2007: this beats users' own estimates), kept in a
bounded history that outlives job deletion and retention (the ``runtimes`` table); else unknown. An attempt that has run past its prediction is re-predicted (it has at least as long
again to go), never assumed finished.
"""

from __future__ import annotations

MAX_HISTORY = 10_000
"""(owner, job name) pairs remembered; the least recently updated go first."""
KEEP = 2


_LAST = (1 << 42) - 1
"""The last runtime (ms) is kept in the low 42 bits of one int, the one before it, plus one, above
(0: none): one small object per name, so the history of 10,000 names costs ~1 MB."""


class RuntimeHistory:
    """Keyed by the job id, which is ``<owner>:<name>``: the same owner's runs of the same name
    share it (the id string the job already holds, so a name costs no new key object)."""

    __slots__ = ("_runs", "dirty", "forgotten")

    def __init__(self) -> None:
        self._runs: dict[str, int] = {}
        """Insertion-ordered: the least recently updated first (evicted first)."""
        self.dirty: set[str] = set()
        """Keys to write (``runtimes`` rows)."""
        self.forgotten: set[str] = set()
        """Keys evicted past ``MAX_HISTORY`` (rows to delete)."""

    def record(self, key: str, runtime_ms: int) -> None:
        old = self._runs.pop(key, None)
        last = min(_LAST - 1, max(0, runtime_ms))
        self._runs[key] = last if old is None else ((old & _LAST) + 1) << 42 | last
        self.dirty.add(key)
        self.forgotten.discard(key)
        while len(self._runs) > MAX_HISTORY:
            oldest = next(iter(self._runs))
            del self._runs[oldest]
            self.dirty.discard(oldest)
            self.forgotten.add(oldest)

    def restore(self, key: str, runs: tuple[int, ...]) -> None:
        for runtime in runs[-KEEP:]:
            self.record(key, runtime)
        self.dirty.discard(key)

    def runs(self, key: str) -> tuple[int, ...]:
        packed = self._runs.get(key)
        if packed is None:
            return ()
        last, before = packed & _LAST, packed >> 42
        return (before - 1, last) if before else (last,)

    def predict(self, key: str) -> int | None:
        runs = self.runs(key)
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


__all__ = ["MAX_HISTORY", "RuntimeHistory", "predict", "remaining"]
