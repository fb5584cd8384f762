"""Group commit: the controller's store writes leave its lock.

A change is applied to the state and its rows are prepared under the controller's lock (so batches
are numbered in the order the state changed); the SQL runs after the lock is released, and
whoever waits first writes every batch queued so far in one transaction (one BEGIN/COMMIT for the
batches of several concurrent callers). A caller does not go on (reply, kill, launch) until its
batch is durable, and a reader does not answer from state newer than the disk: ``DurableLock``
makes that wait part of leaving the lock, so no call site can forget it.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from iris.cluster.errors import ResourceExhausted

_W = TypeVar("_W")


class StoreFailed(Exception):
    """An earlier group commit failed: nothing after it is durable (the controller stops)."""


class StoreFull(ResourceExhausted):
    """The disk under the controller's state is full (issue 23 item 8). The write that found it so
    is held and written again once there is space; until then changes are refused with this
    (RESOURCE_EXHAUSTED naming the disk), while reads and heartbeats go on."""


FULL_RETRY_S = 1.0
"""While the disk is full, a held write is tried again at most this often."""

_SQLITE_FULL = 13


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) says the disk is full: SQLite's SQLITE_FULL, ENOSPC
    or EDQUOT."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, sqlite3.Error) and (getattr(error, "sqlite_errorcode", 0) == _SQLITE_FULL
                                                 or "database or disk is full" in str(error)):
            return True
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


class GroupCommit(Generic[_W]):
    """Batches applied in the order they were submitted, several per ``apply`` call."""

    def __init__(self, apply: Callable[[Sequence[_W]], None], on_failure: Callable[[BaseException], None],
                 monotonic: Callable[[], float] = lambda: 0.0) -> None:
        """``monotonic``: the clock a held write's retries are paced by (``Clock.monotonic``)."""
        self._apply = apply
        self._monotonic = monotonic
        self._on_failure = on_failure
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_W] = []
        self._submitted = 0
        self._durable = 0
        self._writing = False
        self._failure: BaseException | None = None
        self._full: BaseException | None = None
        """The disk-full error of the held write (``StoreFull``); None: writing works."""
        self._retry_at = 0.0
        self.where = ""
        """The state's path, for the disk-full message."""
        self.groups = 0
        """How many ``apply`` calls (transactions) were made: a benchmark's view of the grouping."""

    def submit(self, write: _W) -> int:
        """Queue a batch; returns its ticket for ``wait``. Call it in the order the state changed."""
        with self._cond:
            self._queue.append(write)
            self._submitted += 1
            return self._submitted

    @property
    def full(self) -> bool:
        """The disk is full: a write is held until there is space."""
        return self._full is not None

    def flush_if_room(self) -> bool:
        """While the disk is full: write the held batches again (at most every ``FULL_RETRY_S``).
        True once everything submitted is durable (or the disk was never full)."""
        if self._full is None:
            return True
        if self._monotonic() < self._retry_at:
            return False
        try:
            self.wait(self._submitted)
        except StoreFull:
            return False
        return True

    def full_error(self) -> StoreFull:
        return StoreFull(f"the disk under the controller's state{' (' + self.where + ')' if self.where else ''} "
                         f"is full: changes are refused until there is space ({self._full}); reads go on")

    def wait(self, ticket: int, reading: bool = False) -> None:
        """Return once the batch of ``ticket`` (and every one before it) is durable; write them if
        no one else is. Raises StoreFailed (or the store's error) when that write failed, StoreFull
        while the disk is full (a ``reading`` caller then returns: reads go on)."""
        if self._durable >= ticket:  # the common case for readers: nothing in flight
            return
        with self._cond:
            while self._durable < ticket:
                if self._failure is not None:
                    raise StoreFailed("the controller's state could not be written") from self._failure
                if self._writing:
                    self._cond.wait()
                    continue
                if self._full is not None and (reading or self._monotonic() < self._retry_at):
                    if reading:
                        return
                    raise self.full_error()
                batch, self._queue = self._queue, []
                upto = self._submitted
                self._writing = True
                self._cond.release()
                try:
                    self._apply(batch)
                except BaseException as e:
                    self._cond.acquire()
                    self._writing = False
                    if disk_full(e):  # held, in order, for the next try; nothing is lost or reordered
                        self._queue = batch + self._queue
                        self._full = e
                        self._retry_at = self._monotonic() + FULL_RETRY_S
                        self._cond.notify_all()
                        if reading:
                            return
                        raise self.full_error() from e
                    self._failure = e
                    self._cond.notify_all()
                    self._on_failure(e)
                    raise
                self._cond.acquire()
                self._writing = False
                self._full = None
                self._durable = upto
                self.groups += 1
                self._cond.notify_all()

    @property
    def submitted(self) -> int:
        """The ticket of the newest batch submitted."""
        return self._submitted

    def flush(self) -> None:
        """Wait for everything submitted so far."""
        with self._cond:
            ticket = self._submitted
        self.wait(ticket)


class DurableLock:
    """A re-entrant lock. Leaving the outermost block waits, after the release, until every batch
    submitted before it is durable: a writer's own, and any other whose state a reader may have
    seen. So nothing leaves the controller (a reply, a kill, a launch, a page of the job list)
    before what it was decided from is on disk, and the writes themselves happen outside the lock."""

    def __init__(self, commits: GroupCommit[Any] | None) -> None:
        self._lock = threading.RLock()
        self._local = threading.local()
        self._commits = commits
        self._queue = threading.Condition(threading.Lock())
        self._waiting = 0
        """Callers blocked in ``__enter__`` now (counted only when the lock was taken)."""

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            with self._queue:
                self._waiting += 1
            self._lock.acquire()
            with self._queue:
                self._waiting -= 1
                if not self._waiting:
                    self._queue.notify_all()
        self._local.depth = getattr(self._local, "depth", 0) + 1

    def after_waiters(self, timeout_s: float) -> None:
        """Let every caller already waiting for the lock have it first, waiting at most
        ``timeout_s``. A thread that takes the lock again at once after letting it go (the
        scheduling loop's back-to-back slices of a fleet-wide dispatch) would otherwise win it over
        waiters the OS has not run yet, and the heartbeat port's thread waited seconds for a turn."""
        with self._queue:
            if self._waiting:
                self._queue.wait_for(lambda: not self._waiting, timeout_s)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.leave(reading=False)

    def leave(self, reading: bool, wait: bool = True) -> int:
        """``__exit__``; a ``reading`` block does not wait for a write the full disk holds. Returns
        the ticket this block must see durable before anything decided in it leaves the controller;
        ``wait=False`` leaves that to the caller (``wait_for``)."""
        self._local.depth -= 1
        ticket = 0
        if self._local.depth == 0 and self._commits is not None:
            # Batches are submitted under this lock, so this is every one this block could have seen
            # (its own included).
            ticket = self._commits.submitted
        self._lock.release()
        if wait:
            self.wait_for(ticket, reading)
        return ticket

    def wait_for(self, ticket: int, reading: bool = False) -> None:
        if ticket and self._commits is not None:
            self._commits.wait(ticket, reading)
