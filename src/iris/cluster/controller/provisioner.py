"""Provisioned workers (DESIGN §8): a ``Provisioner`` asks a ``Platform`` (Slurm today) for worker
daemons when pending tasks fit nowhere, gives idle ones back, and turns an allocation that ended
under a worker into a preemption of its tasks.

The workers it starts are ordinary ``iris worker serve`` daemons that register with the join token,
so everything else — dispatch, heartbeats, reconcile — is the worker-daemon path unchanged. The
decision is the pure ``autoscaler.plan_scaling``; this shell polls the platform, feeds the plan its
inputs from the controller, and carries it out. Platform calls fail softly: a failed submit backs
off (doubling, capped) and is reported in ``iris worker list``; nothing here can stop the controller.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from iris.cluster.clock import Clock
from iris.cluster.controller.autoscaler import ProvisionedWorker, WorkerShape, idle_since, plan_scaling
from iris.cluster.controller.capacity import Room
from iris.cluster.controller.views import AllocationInfo
from iris.cluster.types import WorkerId

if TYPE_CHECKING:
    from iris.cluster.controller.autoscaler import Demand
    from iris.cluster.controller.capacity import WorkerSnapshot


class ProvisioningHost(Protocol):
    """What the provisioner needs of the controller (``Controller`` is one): the inputs of a
    scaling decision, and the calls that carry out what it saw."""

    def provisioning_inputs(self) -> tuple[list[Demand], list[WorkerSnapshot], set[WorkerId]]: ...

    def worker_lost(self, worker_id: WorkerId, reason: str) -> None: ...

    def forget_worker(self, worker_id: WorkerId) -> None: ...

    def retire_worker(self, worker_id: WorkerId, reason: str) -> bool: ...

    def note_provisioned(self, worker_id: WorkerId, details: str) -> None: ...

logger = logging.getLogger(__name__)


class PlatformError(Exception):
    """A platform command failed (its message says which and why)."""


class AllocationState(Enum):
    PENDING = "PENDING"
    """Requested; the platform has not started it (Slurm: queued, with a reason)."""
    RUNNING = "RUNNING"
    """Started: its worker is starting or serving."""
    ENDING = "ENDING"
    ENDED = "ENDED"


@dataclass(frozen=True, slots=True)
class Allocation:
    """One allocation as the platform reports it."""

    worker_id: WorkerId
    engine_id: str
    engine_state: str
    """The platform's own word for its state (Slurm: PENDING, RUNNING, CANCELLED, TIMEOUT, ...)."""
    state: AllocationState
    reason: str = ""
    """Why it is pending (Slurm's reason: Resources, Priority, BeginTime, ...), when it is."""
    node: str = ""


class Platform(Protocol):
    name: str

    def submit(self, worker_id: WorkerId) -> str:
        """Request one worker of the configured shape; returns the platform's id for it."""
        ...

    def cancel(self, engine_id: str) -> None: ...

    def poll(self) -> list[Allocation]:
        """Every allocation of this controller the platform still knows."""
        ...


@dataclass(frozen=True, slots=True)
class ProvisionerConfig:
    shape: WorkerShape
    max_workers: int
    idle_timeout_s: float = 300.0
    interval_s: float = 1.0
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 60.0
    missing_polls: int = 3
    """Polls an allocation may be absent from before it counts as ended (a platform may list a just
    submitted job late, and forgets ended ones after a while)."""


@dataclass(slots=True)
class _Held:
    worker_id: WorkerId
    engine_id: str
    submitted_ms: int
    engine_state: str = "SUBMITTED"
    state: AllocationState = AllocationState.PENDING
    reason: str = ""
    node: str = ""
    missing: int = 0
    released: bool = False


class Provisioner:
    def __init__(self, controller: ProvisioningHost, platform: Platform, config: ProvisionerConfig, clock: Clock) -> None:
        self._controller = controller
        self.platform = platform
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[WorkerId, _Held] = {}
        self._idle: dict[WorkerId, int | None] = {}
        self._error = ""
        self._next_submit_ms = 0
        self._backoff_s = 0.0
        self._unfit = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def worker_room(self) -> Room:
        """What one worker it could add offers."""
        return self.config.shape.room()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="controller-provisioner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._clock.wait(self._stop, self.config.interval_s):
            try:
                self.tick()
            except Exception:  # never let one bad pass end provisioning
                logger.exception("provisioning pass failed")

    # ------------------------------------------------------------------ one pass

    def tick(self) -> None:
        now = self._clock.now_ms()
        try:
            polled = self.platform.poll()
        except PlatformError as e:
            self._set_error(f"{self.platform.name}: {e}")
            return  # without a view of the platform, neither launch nor release
        self._reconcile(polled, now)
        demand, live, busy = self._controller.provisioning_inputs()
        with self._lock:
            registered = {w.worker_id for w in live}
            for worker_id in list(self._held):
                if worker_id in registered:
                    self._idle[worker_id] = idle_since(self._idle, worker_id, worker_id in busy, now)
                else:
                    self._idle.pop(worker_id, None)
            provisioned = [
                ProvisionedWorker(h.worker_id, h.submitted_ms, h.worker_id in registered, self._idle.get(h.worker_id))
                for h in self._held.values() if not h.released
            ]
        plan = plan_scaling(demand, live, provisioned, self.config.shape, max_workers=self.config.max_workers,
                            idle_timeout_ms=int(self.config.idle_timeout_s * 1000), now_ms=now)
        self._unfit = plan.unfit
        for worker_id in plan.release:
            self._release(worker_id, now)
        if plan.launch and now >= self._next_submit_ms:
            self._launch(plan.launch, now)

    def _reconcile(self, polled: Sequence[Allocation], now: int) -> None:
        lost: list[tuple[WorkerId, str]] = []
        with self._lock:
            seen: set[WorkerId] = set()
            for a in polled:
                held = self._held.get(a.worker_id)
                if held is None:
                    if a.state in (AllocationState.ENDED, AllocationState.ENDING):
                        continue  # an old allocation of ours (e.g. before a restart)
                    # Ours (by name) but not known: a restarted controller adopts it.
                    held = self._held[a.worker_id] = _Held(a.worker_id, a.engine_id, now)
                    logger.info("adopted %s allocation %s (worker %s)", self.platform.name, a.engine_id, a.worker_id)
                if held.engine_id != a.engine_id:
                    continue
                seen.add(a.worker_id)
                held.missing = 0
                held.engine_state, held.reason, held.node = a.engine_state, a.reason, a.node
                if a.state is not held.state:
                    logger.info("%s allocation %s (worker %s): %s%s", self.platform.name, a.engine_id, a.worker_id,
                                a.engine_state, f" ({a.reason})" if a.reason else "")
                held.state = a.state
                if a.state is AllocationState.ENDED:
                    lost.append((a.worker_id, f"its {self.platform.name} allocation {a.engine_id} ended: "
                                              f"{a.engine_state}{f' ({a.reason})' if a.reason else ''}"))
            for worker_id, held in list(self._held.items()):
                if worker_id not in seen:
                    held.missing += 1
                    if held.missing >= self.config.missing_polls:
                        lost.append((worker_id, f"its {self.platform.name} allocation {held.engine_id} is gone "
                                                f"(no longer listed)"))
            for worker_id, _ in lost:
                held = self._held.pop(worker_id)
                self._idle.pop(worker_id, None)
                if not held.released:
                    logger.warning("%s allocation %s of worker %s ended", self.platform.name, held.engine_id,
                                   worker_id)
        for worker_id, reason in lost:
            # Its tasks are preemptions (retried within their budgets); a released worker had none.
            # The allocation will not come back: the worker's record goes too.
            self._controller.worker_lost(worker_id, reason)
            self._controller.forget_worker(worker_id)

    def _release(self, worker_id: WorkerId, now: int) -> None:
        with self._lock:
            held = self._held.get(worker_id)
            if held is None or held.released:
                return
        # Out of scheduling first, atomically with the check that it holds no task.
        if not self._controller.retire_worker(worker_id, f"released after {self.config.idle_timeout_s:g}s idle"):
            return
        try:
            self.platform.cancel(held.engine_id)
        except PlatformError as e:
            self._set_error(f"{self.platform.name}: {e}")
            return
        logger.info("released worker %s (%s allocation %s)", worker_id, self.platform.name, held.engine_id)
        with self._lock:
            held.released = True

    def _launch(self, count: int, now: int) -> None:
        for _ in range(count):
            worker_id = WorkerId(f"{self.platform.name}-{secrets.token_hex(4)}")
            try:
                engine_id = self.platform.submit(worker_id)
            except PlatformError as e:
                self._backoff_s = min(self.config.backoff_max_s, max(self.config.backoff_initial_s, self._backoff_s * 2))
                self._next_submit_ms = now + int(self._backoff_s * 1000)
                self._set_error(f"{self.platform.name}: {e} (next try in {self._backoff_s:g}s)")
                logger.warning("could not provision a worker: %s; retrying in %.0fs", e, self._backoff_s)
                return
            with self._lock:
                self._held[worker_id] = _Held(worker_id, engine_id, now)
            logger.info("requested worker %s (%s job %s)", worker_id, self.platform.name, engine_id)
            self._controller.note_provisioned(worker_id, f"{self.platform.name} job {engine_id}")
        self._backoff_s = 0.0
        self._set_error("")

    def _set_error(self, error: str) -> None:
        with self._lock:
            self._error = error

    # ------------------------------------------------------------------ what it shows

    def allocations(self) -> dict[WorkerId, AllocationInfo]:
        with self._lock:
            return {
                h.worker_id: AllocationInfo(h.worker_id, self.platform.name, h.engine_id,
                                            "RELEASING" if h.released else h.engine_state, h.reason, h.node,
                                            h.submitted_ms)
                for h in self._held.values()
            }

    def summary(self) -> str:
        """One line for ``iris worker list``: what is held, the budget, and the last error."""
        with self._lock:
            held = [h for h in self._held.values() if not h.released]
            pending = sum(1 for h in held if h.state is AllocationState.PENDING)
            text = (f"{self.platform.name}: {len(held)} of at most {self.config.max_workers} workers "
                    f"({pending} pending)")
            if self._unfit:
                text += f"; {self._unfit} pending tasks fit no worker of the configured shape"
            if self._error:
                text += f"; last error: {self._error}"
            return text


def new_cluster_tag(secret: bytes) -> str:
    """A short, stable name for this controller's allocations (from its secret)."""
    import hashlib

    return hashlib.sha256(b"iris-cluster-tag:" + secret).hexdigest()[:8]


__all__ = [
    "Allocation",
    "AllocationState",
    "Platform",
    "PlatformError",
    "Provisioner",
    "ProvisionerConfig",
    "new_cluster_tag",
]
