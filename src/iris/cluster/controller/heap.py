"""Keep CPython's full garbage-collection passes off the control plane.

A controller holding 25,000 ended jobs, or a 100,000-task job, has ~200,000-400,000 objects the
cyclic collector tracks. Every full (generation 2) pass walks all of them with the GIL held: 110 ms
at 25,000 jobs, 125 ms at 100,000 tasks on this project's 2-core machine, during which no heartbeat,
report or launch is answered. Python starts such a pass whenever a quarter as many objects as the
heap holds have been promoted since the last one, which readers' temporaries alone do within
seconds. The state itself never needs the collector: jobs, tasks and attempts form no reference
cycles (they are freed by reference counting when retention deletes them).

So the controller's process moves what it holds into CPython's permanent generation
(``gc.freeze``) once a minute: full passes then walk only what was made since, a few milliseconds.
Frozen objects are still freed by reference counting; only *cyclic* garbage that was alive at a
freeze (a traceback, a gRPC call in flight) cannot be reclaimed while frozen, so once an hour
everything is thawed and collected in one full pass, and frozen again. Instagram's servers use
the same two calls for the same reason. This is process-wide state: it is the daemon's
(``iris controller serve``) to run, never a library object's.
"""

from __future__ import annotations

import gc
import logging
import time

from iris.cluster.clock import Clock

logger = logging.getLogger(__name__)

FREEZE_EVERY_S = 60.0
"""How often what the process holds is frozen (objects made since the last freeze are scanned)."""
THAW_EVERY_S = 3600.0
"""How often everything is thawed and collected: bounds how long cyclic garbage can be kept."""


class HeapFreezer:
    """Call ``tick()`` periodically from the daemon's main loop (every second is fine). The first
    call, and one every ``thaw_every_s`` after it, thaws, collects fully and freezes ("thawed");
    one every ``freeze_every_s`` in between collects the young generations and freezes ("froze");
    any other does nothing (""). Returns what it did."""

    def __init__(self, clock: Clock, freeze_every_s: float = FREEZE_EVERY_S,
                 thaw_every_s: float = THAW_EVERY_S) -> None:
        if freeze_every_s <= 0 or thaw_every_s < freeze_every_s:
            raise ValueError("need 0 < freeze_every_s <= thaw_every_s")
        self._clock = clock
        self._freeze_every_s = freeze_every_s
        self._thaw_every_s = thaw_every_s
        self._next_freeze: float | None = None
        self._next_thaw = 0.0

    def tick(self) -> str:
        now = self._clock.monotonic()
        if self._next_freeze is None or now >= self._next_thaw:
            # The first call (after the state was loaded) or the hourly thaw: one full pass over
            # everything, which also reclaims any cyclic garbage kept frozen since the last one.
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            logger.debug("heap thawed, collected and frozen in %.0f ms (%d objects frozen)",
                         (time.perf_counter() - started) * 1000, gc.get_freeze_count())
            self._next_thaw = now + self._thaw_every_s
            self._next_freeze = now + self._freeze_every_s
            return "thawed"
        if now >= self._next_freeze:
            gc.collect(1)  # the young generations first: their garbage is not frozen
            gc.freeze()
            self._next_freeze = now + self._freeze_every_s
            return "froze"
        return ""
