"""The controller's one transaction: lock, change the core, drain its effects, queue their write, act.

Every change to the state goes through ``Changes.change()``::

    with changes.change() as tx:
        tx.state.terminate_job(job_id, tx.now_ms)

Entering takes the controller's lock. Leaving drains the core's effects and queues their store
rows (``commits.GroupCommit``) under the lock, releases it, waits until those rows are durable
(``DurableLock``), then runs what the block asked for with ``tx.then(...)`` (launches) and acts on
the effects (kills sent, the scheduler woken) through the controller's ``on_effects``. A block that
raises changes nothing durable and acts on nothing: validation happens before the core is touched.

A quiet change (a heartbeat's) that wrote nothing does not wait for the writes of others on
leaving: a reply that says nothing new ("carry on, nothing to kill") is as true of the durable
state as of the newer one, and a controller restarted from the older state decides again at the
next heartbeat. Its reply waits (``Change.settle``) when it does decide something.

Reads take the same lock without a commit (``with changes.read() as state``); they still wait on
leaving for any write they may have seen, so no reply is built from state newer than the disk.

While the disk under the state is full (``commits.StoreFull``) the write that found it so is held
and tried again; changes are refused before they touch the core (RESOURCE_EXHAUSTED naming the
disk), reads go on without waiting for the held write, and heartbeats only record that their
worker is alive (``Changes.heard``). Writing resumes by itself when there is space.
Nothing else in the controller holds the lock: this is the one place that knows the order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iris.cluster.clock import Clock
from iris.cluster.controller.bundles import StateStore
from iris.cluster.controller.commits import DurableLock, GroupCommit
from iris.cluster.controller.state import NO_EFFECTS, ControllerState, Effects

if TYPE_CHECKING:
    from iris.cluster.controller.store import PreparedWrite

logger = logging.getLogger(__name__)


class Change:
    """One open transaction: the state to change, the time it happens at, and what to do after.
    A context manager: ``with changes.change() as tx`` (a plain class, not a generator: every
    report, heartbeat and launch result opens one)."""

    __slots__ = ("state", "now_ms", "mono_ms", "_changes", "_effects", "_quiet", "_then", "_ticket")

    def __init__(self, changes: Changes, quiet: bool = False) -> None:
        self.state = changes.state
        self.now_ms = 0
        self.mono_ms = 0
        """The liveness clock (monotonic milliseconds): what worker liveness is measured on."""
        self._changes = changes
        self._effects: list[Effects] = []
        self._then: list[Callable[[], None]] = []
        self._quiet = quiet
        """A change whose reply may say nothing new (a heartbeat's): if it wrote nothing, leaving
        does not wait for other callers' writes; ``settle()`` waits when its reply does decide
        something (module docstring)."""
        self._ticket = 0

    def commit(self) -> Effects:
        """Drain the effects so far now (still under the lock) and queue their write; they are acted
        on when the block ends, with any later ones."""
        effects = self._changes._drain()
        if effects is not NO_EFFECTS:
            self._effects.append(effects)
        return effects

    def settle(self) -> None:
        """After a quiet change: wait until everything it could have seen is durable (before a
        reply that decides something, e.g. a kill, leaves the controller)."""
        self._changes._lock.wait_for(self._ticket)

    def then(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the lock is released and the change is durable, before its effects
        are acted on (a scheduling pass's launches go before its kills)."""
        self._then.append(action)

    def __enter__(self) -> Change:
        changes = self._changes
        commits = changes.commits
        if commits is not None and commits.full and not commits.flush_if_room():
            raise commits.full_error()  # before anything changed: the change is refused, not lost
        changes._lock.__enter__()
        self.now_ms = changes.clock.now_ms()
        self.mono_ms = int(changes.clock.monotonic() * 1000)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: Any) -> None:
        lock = self._changes._lock
        try:
            if kind is None:
                self.commit()
        finally:
            # Waits until the writes are durable (a quiet change that wrote nothing: not yet).
            self._ticket = lock.leave(reading=False, wait=not (self._quiet and not self._effects and kind is None))
        if kind is not None:
            return
        for action in self._then:
            action()
        for effects in self._effects:
            self._changes.on_effects(effects)


class _Reading:
    """``with changes.read() as state``: the lock, and the state it guards (one shared instance)."""

    __slots__ = ("_lock", "_state")

    def __init__(self, lock: DurableLock, state: ControllerState) -> None:
        self._lock = lock
        self._state = state

    def __enter__(self) -> ControllerState:
        self._lock.__enter__()
        return self._state

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: Any) -> None:
        self._lock.leave(reading=True)


class Changes:
    """Owns the controller's lock, the effects drain and the group commit (module docstring)."""

    def __init__(self, state: ControllerState, store: StateStore | None, clock: Clock,
                 on_store_failed: Callable[[BaseException], None]) -> None:
        self.state = state
        self.store = store
        self.clock = clock
        self._on_store_failed = on_store_failed
        self.commits: GroupCommit[PreparedWrite] | None = (
            GroupCommit(store.apply, on_store_failed, clock.monotonic) if store is not None else None)
        """Store writes, prepared under the lock and applied after it (several per transaction)."""
        if self.commits is not None:
            self.commits.where = str(getattr(store, "path", ""))
        self._lock = DurableLock(self.commits)
        self._reading = _Reading(self._lock, state)
        self.on_effects: Callable[[Effects], None] = lambda effects: None
        """What the controller does with a change's effects once it is durable (kills, wake)."""

    def change(self, quiet: bool = False) -> Change:
        """A new transaction, opened by ``with`` (``quiet``: see ``Change``)."""
        return Change(self, quiet)

    def read(self) -> _Reading:
        """The state under the lock, for a bounded copy (``with changes.read() as state``); no
        commit. Leaving it still waits for any write it may have seen."""
        return self._reading

    def after_waiters(self, timeout_s: float = 0.1) -> None:
        """Before a change that may follow another of the same thread at once: let the callers
        already waiting for the lock go first (``DurableLock.after_waiters``)."""
        self._lock.after_waiters(timeout_s)

    @property
    def full(self) -> bool:
        """The disk under the state is full (``commits.StoreFull``): changes are refused."""
        return self.commits is not None and self.commits.full and not self.commits.flush_if_room()

    def heard(self, worker_id: str, interval_ms: int) -> list[Any] | None:
        """A heartbeat while the disk is full: the worker is alive (its liveness only, nothing to
        write); its observed set is reconciled at its first heartbeat once there is space."""
        with self._reading as state:
            ok = state.heartbeat(worker_id, self.clock.now_ms(), interval_ms,  # type: ignore[arg-type]
                                 int(self.clock.monotonic() * 1000))
        return [] if ok else None

    def flush_and_close(self) -> None:
        """Wait for every queued write, then close the store (the controller is stopping)."""
        if self.commits is not None:
            self.commits.flush()
        with self._lock:
            if self.store is not None:
                self.store.close()

    def _drain(self) -> Effects:
        effects = self.state.drain_effects()
        if self.store is not None and self.commits is not None and effects is not NO_EFFECTS:
            try:
                prepared = self.store.prepare(self.state, effects)
            except Exception as e:
                self._on_store_failed(e)
                raise
            if prepared is not None:
                # Written after the lock is released, before the caller goes on (DurableLock).
                self.commits.submit(prepared)
        return effects
