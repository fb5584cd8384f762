"""Admission for reads, so that no reader can stall the control plane (a simplified form of
Kubernetes' API Priority and Fairness).

The controller is one Python process: whatever a reader does (copying jobs under the lock,
building protos, JSON and HTTP for the dashboard) competes with heartbeats, reports and
dispatch for the same interpreter. Calls that keep the fleet running are never held back; reads
(job lists and statuses, task lists, logs, workers, endpoints, and everything the dashboard
serves) pass through one ``ReadGate``:

- one read runs at a time; the others wait their turn, without CPU (at most ``max_waiting`` of
  them: more are refused with RESOURCE_EXHAUSTED, naming the rule, so that readers can never take
  all of the RPC threads);
- reads may use ``share`` of one core over time: each read's CPU (its thread's) is charged to a
  bucket that refills at ``share`` CPU-seconds per second and holds at most ``burst_s``; while it
  is empty the next read waits for it to refill. A lone reader (a user listing 25,000 jobs) runs
  at once from the burst; readers hammering the controller are slowed to their share.

A quiet controller never waits here: the bucket is full.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from iris.cluster.clock import Clock, SystemClock
from iris.cluster.errors import IrisError

DEFAULT_SHARE = 0.25
"""Of one core, what reads may use over time."""
DEFAULT_BURST_S = 1.0
"""CPU-seconds a read may use at once before the next one waits."""
DEFAULT_MAX_WAITING = 16
"""Reads waiting for their turn; more are refused (the RPC server has 32 threads)."""


class ResourceExhausted(IrisError):
    """Too much is asked at once; retry later."""

    code = "RESOURCE_EXHAUSTED"


class ReadGate:
    def __init__(self, *, share: float = DEFAULT_SHARE, burst_s: float = DEFAULT_BURST_S,
                 max_waiting: int = DEFAULT_MAX_WAITING, clock: Clock | None = None) -> None:
        if share <= 0:
            raise ValueError(f"share: must be > 0, got {share}")
        self.share = share
        self.burst_s = burst_s
        self.max_waiting = max_waiting
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._turn = threading.Lock()
        """Held by the one read that runs."""
        self._waiting = 0
        self._level = burst_s
        self._updated = self._clock.monotonic()
        self._never = threading.Event()
        self.reads = 0
        self.refused = 0
        self.waited_s = 0.0
        """Reads admitted, refused, and the time they spent waiting for the bucket (``/metrics``)."""

    # -- the bucket ---------------------------------------------------------------------------

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._level = min(self.burst_s, self._level + (now - self._updated) * self.share)
        self._updated = now

    def charge(self, cpu_s: float) -> None:
        """Count ``cpu_s`` seconds of CPU spent reading."""
        with self._lock:
            self._refill()
            self._level -= max(0.0, cpu_s)

    def delay(self) -> float:
        """Seconds until the bucket is no longer empty (0: a read may run now)."""
        with self._lock:
            self._refill()
            return 0.0 if self._level >= 0 else -self._level / self.share

    # -- admission ----------------------------------------------------------------------------

    def _wait_admission(self, what: str, exclusive: bool) -> None:
        """Wait for the turn (when ``exclusive``) and for the bucket; counted as waiting meanwhile,
        and refused when ``max_waiting`` reads already wait (so waiting reads, paced ones included,
        can never take all of the RPC threads). On return an exclusive read holds the turn."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                self.refused += 1
                raise ResourceExhausted(
                    f"{what}: the controller already has {self._waiting} reads waiting (at most "
                    f"{self.max_waiting}); retry in a moment")
            self._waiting += 1
        waited = 0.0
        try:
            if exclusive:
                self._turn.acquire()
            try:
                while (pause := self.delay()) > 0:
                    self._clock.wait(self._never, pause)
                    waited += pause
            except BaseException:
                if exclusive:
                    self._turn.release()
                raise
        finally:
            with self._lock:
                self._waiting -= 1
                self.waited_s += waited
        with self._lock:
            self.reads += 1

    @contextmanager
    def admit(self, what: str, *, exclusive: bool = True) -> Iterator[None]:
        """Run the block as a read: once the bucket allows, charged with the CPU this thread spends
        in it, and, when ``exclusive``, after the reads before it (a read that may wait on something
        else, a worker's log, is only paced, so it never holds the others up). Raises
        ResourceExhausted when too many reads wait."""
        self._wait_admission(what, exclusive)
        try:
            start = time.thread_time()
            try:
                yield
            finally:
                self.charge(time.thread_time() - start)
        finally:
            if exclusive:
                self._turn.release()

    @property
    def waiting(self) -> int:
        """Reads waiting for their turn or for the bucket now."""
        with self._lock:
            return self._waiting

    async def pace(self) -> None:
        """For an event loop that serves reads (the dashboard): wait, without blocking the loop,
        until the bucket allows (looking again every ``_PACE_STEP_S``). The loop's own CPU is
        charged with ``charge``."""
        while (pause := self.delay()) > 0:
            step = min(pause, _PACE_STEP_S)
            with self._lock:
                self.waited_s += step
            await asyncio.sleep(step)


_PACE_STEP_S = 0.05
