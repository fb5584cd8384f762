"""Time for the shell. The only module that reads the wall clock.

The pure core takes ``now_ms`` as an argument; shell objects (controller, worker) take a
``Clock`` in their constructor so tests drive time with ``FakeClock`` instead of patching
``time``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` or until ``stop`` is set; True when stopped."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(seconds)


class FakeClock:
    """A clock that moves only when told to. ``wait`` returns when the clock has been advanced past
    the deadline or ``stop`` is set, so loops driven by it tick only when a test advances time."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._lock = threading.Condition()
        self._waits: dict[int, int] = {}
        """Per waiting call (by id), its deadline."""

    def now_ms(self) -> int:
        with self._lock:
            return self._now_ms

    def monotonic(self) -> float:
        with self._lock:
            return self._now_ms / 1000.0

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now_ms += int(seconds * 1000)
            self._lock.notify_all()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        token = object()
        with self._lock:
            deadline = self._now_ms + int(seconds * 1000)
            self._waits[id(token)] = deadline
            try:
                while self._now_ms < deadline and not stop.is_set():
                    # Wakes on advance(); the short timeout only notices `stop`, which has no hook here.
                    self._lock.wait(0.05)
            finally:
                del self._waits[id(token)]
        return stop.is_set()

    def pending_waits(self) -> list[float]:
        """Seconds left of each ``wait`` in progress: what a test inspects to see a loop's period."""
        with self._lock:
            return sorted((deadline - self._now_ms) / 1000 for deadline in self._waits.values())


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02, message: str = "") -> None:
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass (then TimeoutError).

    Used by tests and by shell code that waits for another process; never a bare sleep.
    """
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout}s")
        stop.wait(interval)
