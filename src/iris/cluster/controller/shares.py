"""The controller state's sharing books (issue 24): what each team and user holds now, their
decayed usage (durable: ``usage`` rows), the policy preemptions of the last minute (the rate
limit), and the tasks waiting for their victims to stop. Owned by ``ControllerState``, changed
under its lock; the scheduler reads a ``FairInputs`` made from it (``fairness``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from iris.cluster.controller.capacity import JobRequirements, WorkerSnapshot
from iris.cluster.controller.fairness import Amounts, FairInputs, Holder, forget_amounts, task_amounts
from iris.cluster.sharing import (
    DEFAULT_SHARING,
    SharingConfig,
    UsageLedger,
    add_amounts,
    dominant_share,
    usage_over,
)
from iris.cluster.types import TaskId

MINUTE_MS = 60_000
NOMINATION_SLACK_MS = 60_000
"""How long past its victims' grace a preemptor keeps its claim (not preempting again) while it waits."""


@dataclass(frozen=True, slots=True)
class Holding:
    """What one running attempt is charged as: its owner, team and amounts."""

    user: str
    team: str
    amounts: Amounts


class Shares:
    __slots__ = ("_held", "_holdings", "_preempted_at", "config", "dirty_users", "fleet", "ledger", "nominated",
                 "policy_preemptions", "team_held", "user_held")

    def __init__(self, config: SharingConfig = DEFAULT_SHARING) -> None:
        self.config = config
        self.ledger = UsageLedger(config.half_life_ms)
        self.team_held: dict[str, Amounts] = {}
        self.user_held: dict[str, Amounts] = {}
        self._held: dict[TaskId, Holding] = {}
        self._holdings: dict[tuple[str, tuple[int, int, int, str, str, int], str], Holding] = {}
        self.fleet: dict[str, float] = {}
        """The healthy fleet's totals as shares count them (the last scheduling pass's)."""
        self.nominated: dict[TaskId, int] = {}
        """Tasks that preempted others -> until when they wait for their victims without preempting again."""
        self._preempted_at: deque[int] = deque()
        self.policy_preemptions: Counter[tuple[str, str]] = Counter()
        """Attempts preempted by policy, by (team, band) of the victim (``/metrics``)."""
        self.dirty_users: set[str] = set()

    # ------------------------------------------------------------------ holdings

    def bind(self, task_id: TaskId, user: str, req: JobRequirements, worker_variant: str) -> None:
        key = (user, req.shape, worker_variant)
        holding = self._holdings.get(key)
        if holding is None:  # one shared value per user and shape: a running task costs a dict entry
            holding = Holding(user, self.config.team_of(user), task_amounts(self.config, req, worker_variant))
            if len(self._holdings) > 65536:
                self._holdings.clear()
            self._holdings[key] = holding
        self._held[task_id] = holding
        add_amounts(self.team_held.setdefault(holding.team, {}), holding.amounts)
        add_amounts(self.user_held.setdefault(user, {}), holding.amounts)

    def release(self, task_id: TaskId) -> Holding | None:
        holding = self._held.pop(task_id, None)
        if holding is not None:
            add_amounts(self.team_held.setdefault(holding.team, {}), holding.amounts, -1)
            add_amounts(self.user_held.setdefault(holding.user, {}), holding.amounts, -1)
        return holding

    def holding(self, task_id: TaskId) -> Holding | None:
        return self._held.get(task_id)

    def reconfigure(self, config: SharingConfig, running: Iterable[tuple[TaskId, str, JobRequirements, str]],
                    now_ms: int) -> None:
        """Use ``config`` from now on; every running attempt is counted again under it (teams and
        their members may have changed). Nothing running is stopped by this."""
        if config.half_life_ms != self.config.half_life_ms:
            self.ledger.set_half_life(config.half_life_ms, now_ms)
            self.dirty_users.update(self.ledger.users())
        self.config = config
        self._held.clear()
        self._holdings.clear()
        forget_amounts()
        self.team_held.clear()
        self.user_held.clear()
        for task_id, user, req, variant in running:
            self.bind(task_id, user, req, variant)

    def set_fleet(self, snapshots: Iterable[WorkerSnapshot]) -> None:
        fleet: dict[str, float] = {"cpu": 0, "memory": 0}
        for snap in snapshots:
            if not snap.healthy:
                continue
            total = snap.total
            fleet["cpu"] += total.cpu
            fleet["memory"] += total.memory
            if total.device_kind != "cpu" and total.devices:
                key = self.config.charge_key(total.device_kind, total.device_variant)
                fleet[key] = fleet.get(key, 0) + total.devices
        self.fleet = fleet

    # ------------------------------------------------------------------ usage

    def charge(self, user: str, amounts: Mapping[str, float], started_ms: int, ended_ms: int) -> None:
        """Add an attempt's resources x time (a dominant share of the fleet, decayed) to its user."""
        share = dominant_share(amounts, self.fleet)
        if share <= 0 or ended_ms <= started_ms:
            return
        self.ledger.charge(user, usage_over(share, started_ms, ended_ms, self.config.half_life_ms), ended_ms)
        self.dirty_users.add(user)

    def user_usage(self, now_ms: int) -> dict[str, float]:
        return self.ledger.values(now_ms)

    def team_usage(self, now_ms: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for user, value in self.ledger.values(now_ms).items():
            team = self.config.team_of(user)
            out[team] = out.get(team, 0.0) + value
        return out

    # ------------------------------------------------------------------ preemption

    def budget(self, now_ms: int) -> int:
        """Preemptions still allowed this minute (``max_preemptions_per_minute``)."""
        times = self._preempted_at
        while times and times[0] <= now_ms - MINUTE_MS:
            times.popleft()
        return max(0, self.config.max_preemptions_per_minute - len(times))

    def preempted(self, now_ms: int, team: str, band: str) -> None:
        self._preempted_at.append(now_ms)
        self.policy_preemptions[(team, band)] += 1

    def nominate(self, task_id: TaskId, until_ms: int) -> None:
        self.nominated[task_id] = max(until_ms, self.nominated.get(task_id, 0))

    def waiting(self, now_ms: int) -> set[TaskId]:
        """Preemptors still waiting for their victims (expired claims dropped)."""
        for task_id in [t for t, until in self.nominated.items() if until <= now_ms]:
            del self.nominated[task_id]
        return set(self.nominated)

    def inputs(self, now_ms: int, holders: Callable[[], list[Holder]]) -> FairInputs:
        return FairInputs(self.config, self.team_held, self.user_held, self.team_usage(now_ms),
                          self.user_usage(now_ms), holders, self.budget(now_ms), self.waiting(now_ms))


__all__ = ["Holding", "Shares"]
