"""Shipping every attempt's log to the controller, as the attempt machine's ``ShipLog``
instructions say: read what the controller lacks (from each instruction's offset), push it in one
``PushTaskLogs`` call, and feed what the controller now holds back to the machine (``LogShipped``,
``LogRefused``). No state of its own: how far each log got is the attempt's record's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from iris.cluster.clock import Clock
from iris.cluster.worker import attempts as am
from iris.cluster.worker.attempts import AttemptKey
from iris.cluster.worker.link import ControllerLink, OutgoingLog
from iris.cluster.worker.prepare import AttemptPreparer

logger = logging.getLogger(__name__)


class LogShipper:
    def __init__(self, instructions: Callable[[set[AttemptKey] | None], list[am.ShipLog]],
                 feed: Callable[[am.Event], None], preparer: AttemptPreparer, link: ControllerLink,
                 clock: Clock) -> None:
        self._clock = clock
        self._instructions = instructions
        self._feed = feed
        self._preparer = preparer
        self._link = link

    def loop(self, stop: threading.Event, interval_s: float) -> None:
        while not self._clock.wait(stop, interval_s):
            try:
                self.ship_once()
            except Exception:
                logger.exception("log shipping failed")

    def ship_once(self, max_bytes: int = 4 * 1024 * 1024, only: set[AttemptKey] | None = None,
                       until_done: bool = False) -> int:
        """Send the controller what it lacks of each held attempt's log (``only`` those), and once
        an attempt ended and all of it is there, that it is complete; with ``until_done``, call by
        call until those attempts are complete or the controller stops answering. Returns the
        bytes sent."""
        sent = 0
        while True:
            sent_now, pending = self._ship_logs(max_bytes, only)
            sent += sent_now
            if not until_done or not pending or sent_now < 0:
                return max(sent, 0)

    def _ship_logs(self, max_bytes: int, only: set[AttemptKey] | None) -> tuple[int, bool]:
        """One PushTaskLogs call for the machine's ShipLog instructions: (bytes sent or -1 when it
        failed, whether anything is left)."""
        instructions = self._instructions(only)
        chunks: list[OutgoingLog] = []
        ends: list[int] = []
        budget = max_bytes
        for ship in instructions:
            if budget <= 0:
                break
            log = self._preparer.attempt_log(ship.key)
            end = log.end_offset()  # after the machine said ``finished``: an ended attempt's log is whole
            if ship.from_offset >= end and not ship.finished:
                continue
            start, data = log.read_bytes(ship.from_offset, min(budget, 1024 * 1024)) \
                if ship.from_offset < end else (end, b"")
            budget -= len(data)
            chunks.append(OutgoingLog(ship.key, ship.job_uid, start, data,
                                      ship.finished and start + len(data) >= end))
            ends.append(end)
        if not chunks:
            return 0, False
        offsets = self._link.push_logs(chunks)
        if offsets is None:
            return -1, True
        left = False
        for chunk, end, held in zip(chunks, ends, offsets, strict=False):
            if held < 0:
                self._feed(am.LogRefused(chunk.key))
                continue
            complete = chunk.complete and held >= end
            self._feed(am.LogShipped(chunk.key, held, complete))
            left = left or not complete
        return sum(len(c.data) for c in chunks), left or budget <= 0
