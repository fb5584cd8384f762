"""Teams and shares (issue 24): who a user shares the fleet with, what each team is guaranteed and
may hold, and how usage is counted over time. The policy is configuration
(``iris controller serve --sharing FILE``, TOML) read and checked here; the scheduler's use of it
is ``iris.cluster.controller.fairness``.

- Every user is in one team: the team that lists them in ``members``, else a team of their own
  (named after them) with the ``[default]`` settings. Without a file every user is a team of one
  with weight 1 and no guarantee or limit: fair by default, nobody demoted.
- Amounts (a guarantee, a limit, what a team holds) are counted in cpu (millicores), memory
  (bytes) and devices by kind and variant (``gpu:H100``). A ``--gpu N`` request with no variant
  is charged to the variant of the worker it runs on.
- Usage is resources x time as a dominant-resource share of the fleet (Ghodsi et al., DRF): a task
  holding a quarter of the fleet's GPUs for an hour adds 0.25 x 3600 share-seconds. It decays with
  ``half_life`` (Slurm's ``PriorityDecayHalfLife``), integrated exactly over each attempt.

Pure: no I/O but ``load_sharing`` reading the file it is given.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from iris.cluster.types import (
    JOB_NAME_RE,
    cpu_to_millicores,
    parse_duration,
    parse_size,
)

DAY_MS = 86_400_000
LN2 = math.log(2)
DEFAULT_HALF_LIFE_MS = 7 * DAY_MS
"""Usage halves every week (Slurm's default ``PriorityDecayHalfLife``)."""
DEFAULT_MIN_LEASE_MS = 10 * 60_000
"""An attempt younger than ten minutes is not preempted (but by production work)."""
DEFAULT_MAX_PREEMPTIONS_PER_MINUTE = 30
DEFAULT_PACK_DELAY_MS = 2 * 60_000
"""A task that would take part of a worker whose devices are all free leaves it, for its first two
minutes in the queue, to work of any band that takes such workers whole (``scheduler``, packing)."""
DEFAULT_RESERVE_AFTER_MS = 12 * 3_600_000
"""A job that has waited this long goes first in line for a reservation (the oldest first), ahead
of work of its band or a lower one that ranks above it by fair share: no job starves behind a
stream of better-standing work that fits (Slurm's age factor, as a bound). On the sharing
benchmark's week (reservations on) 12 h cut the jobs slower than twice their FIFO wait from 548 to
395 and the longest gang wait from 8,094 to 6,562 minutes, utilization 96.1 -> 96.3 %."""
DEFAULT_PACK_MAX_WAIT_MS = 24 * 3_600_000
"""... and to such work of its own band until it has waited a day (then it is placed in its turn):
the bound for a fleet where no partly used room ever frees. On the sharing benchmark's week 6 h
kept 96.3 % utilization and a day 97.4 % (FIFO 98.7 %)."""
DEVICE_KINDS = ("gpu", "tpu")
_EMPTY: Mapping[str, int] = MappingProxyType({})


class SharingConfigError(ValueError):
    """A sharing file that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    """One team's settings. ``guarantee`` and ``limit`` map a resource key ("cpu" in millicores,
    "memory" in bytes, "gpu:<variant>", "tpu:<variant>") to an amount; an empty ``limit`` is the
    whole fleet."""

    name: str
    members: tuple[str, ...] = ()
    weight: float = 1.0
    guarantee: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    limit: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    own: bool = False
    """A team of one for a user no team lists (``[default]`` settings)."""


@dataclass(frozen=True, slots=True)
class SharingConfig:
    half_life_ms: int = DEFAULT_HALF_LIFE_MS
    min_lease_ms: int = DEFAULT_MIN_LEASE_MS
    max_preemptions_per_minute: int = DEFAULT_MAX_PREEMPTIONS_PER_MINUTE
    teams: Mapping[str, TeamPolicy] = field(default_factory=dict)
    default: TeamPolicy = TeamPolicy("")
    source: str = ""
    """Where it was read from ("" = the built-in default: every user a team of one)."""
    pack_delay_ms: int = DEFAULT_PACK_DELAY_MS
    pack_max_wait_ms: int = DEFAULT_PACK_MAX_WAIT_MS
    reserve_after_ms: int = DEFAULT_RESERVE_AFTER_MS
    """``reserve_after``: see ``DEFAULT_RESERVE_AFTER_MS`` (0: off)."""
    _member_team: dict[str, str] = field(default_factory=dict, repr=False)
    _own: dict[str, TeamPolicy] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for team in self.teams.values():
            for member in team.members:
                self._member_team[member] = team.name

    def team_of(self, user: str) -> str:
        """The team a user's work is counted to: the team listing them, else their own."""
        team = self._member_team.get(user)
        if team is not None:
            return team
        return user if user not in self.teams else f"~{user}"

    def policy(self, team: str) -> TeamPolicy:
        found = self.teams.get(team)
        if found is not None:
            return found
        own = self._own.get(team)
        if own is None:
            d = self.default
            own = self._own[team] = TeamPolicy(team, (team.removeprefix("~"),), d.weight, d.guarantee, d.limit, own=True)
        return own

    def variants(self) -> tuple[str, ...]:
        """Every device variant a guarantee or limit names (e.g. "gpu:H100")."""
        names = {key for team in (*self.teams.values(), self.default) for amounts in (team.guarantee, team.limit)
                 for key in amounts if ":" in key}
        return tuple(sorted(names))

    def charge_key(self, kind: str, worker_variant: str) -> str:
        """The key a device on a worker of ``worker_variant`` is counted under: the configured
        variant it matches (case-insensitive, as the fit rule matches variants), else its own."""
        lowered = worker_variant.lower()
        for key in self.variants():
            key_kind, _, variant = key.partition(":")
            if key_kind == kind and variant.lower() in lowered:
                return key
        return f"{kind}:{worker_variant or 'any'}"


DEFAULT_SHARING = SharingConfig()


# ---------------------------------------------------------------------------------------- amounts


def dominant_share(amounts: Mapping[str, float], fleet: Mapping[str, float]) -> float:
    """The largest fraction of the fleet's total of any one resource that ``amounts`` holds (DRF)."""
    share = 0.0
    for key, amount in amounts.items():
        total = fleet.get(key, 0)
        if amount and total > 0:
            share = max(share, amount / total)
    return share


def guarantee_ratio(held: Mapping[str, float], guarantee: Mapping[str, int]) -> float:
    """How full a team's guarantee is: the largest held/guaranteed ratio over the resources it
    guarantees (inf with no guarantee)."""
    if not guarantee:
        return math.inf
    return max(held.get(key, 0) / amount if amount > 0 else (math.inf if held.get(key, 0) else 0.0)
               for key, amount in guarantee.items())


def within(held: Mapping[str, float], limit: Mapping[str, int]) -> str:
    """"" when ``held`` is within ``limit`` in every resource it limits, else the first one over."""
    for key, amount in limit.items():
        if held.get(key, 0) > amount:
            return key
    return ""


def add_amounts(into: dict[str, float], amounts: Mapping[str, float], sign: int = 1) -> None:
    for key, amount in amounts.items():
        value = into.get(key, 0) + sign * amount
        if abs(value) < 1e-9:
            into.pop(key, None)
        else:
            into[key] = value


# ---------------------------------------------------------------------------------------- usage




def decayed(value: float, elapsed_ms: int, half_life_ms: int) -> float:
    """``value`` after ``elapsed_ms`` of decay (none with half_life 0 or less)."""
    if half_life_ms <= 0 or elapsed_ms <= 0:
        return value
    return value * math.exp(-LN2 * elapsed_ms / half_life_ms)


def usage_over(share: float, start_ms: int, end_ms: int, half_life_ms: int) -> float:
    """Share-seconds of holding ``share`` of the fleet from ``start_ms`` to ``end_ms``, decayed to
    ``end_ms``: the integral of share x 2^-((end - t) / half_life) dt."""
    span = max(0, end_ms - start_ms)
    if half_life_ms <= 0:
        return share * span / 1000
    return share * (half_life_ms / 1000 / LN2) * -math.expm1(-LN2 * span / half_life_ms)


class UsageLedger:
    """Each user's decayed usage in share-seconds, as of when it was last charged."""

    __slots__ = ("_half_life_ms", "_usage")

    def __init__(self, half_life_ms: int = DEFAULT_HALF_LIFE_MS) -> None:
        self._half_life_ms = half_life_ms
        self._usage: dict[str, tuple[float, int]] = {}

    def set_half_life(self, half_life_ms: int, now_ms: int) -> None:
        """Decay everything to ``now_ms`` under the old half-life, then use the new one."""
        for user in list(self._usage):
            self._usage[user] = (self.value(user, now_ms), now_ms)
        self._half_life_ms = half_life_ms

    def charge(self, user: str, share_seconds: float, now_ms: int) -> None:
        self._usage[user] = (self.value(user, now_ms) + share_seconds, now_ms)

    def value(self, user: str, now_ms: int) -> float:
        found = self._usage.get(user)
        if found is None:
            return 0.0
        value, as_of = found
        return decayed(value, now_ms - as_of, self._half_life_ms)

    def restore(self, user: str, value: float, as_of_ms: int) -> None:
        self._usage[user] = (value, as_of_ms)

    def record(self, user: str) -> tuple[float, int] | None:
        """The stored (value, as_of_ms) of a user, for the durable store."""
        return self._usage.get(user)

    def users(self) -> list[str]:
        return list(self._usage)

    def values(self, now_ms: int) -> dict[str, float]:
        return {user: self.value(user, now_ms) for user in self._usage}


# ---------------------------------------------------------------------------------------- the file


_TOP_KEYS = {"half_life", "min_lease", "max_preemptions_per_minute", "pack_delay", "pack_max_wait", "reserve_after",
             "teams", "default"}
_TEAM_KEYS = {"members", "weight", "guarantee", "limit"}
_DEFAULT_KEYS = {"weight", "guarantee", "limit"}
_AMOUNT_KEYS = {"cpu", "memory", *DEVICE_KINDS}


def load_sharing(path: str | Path) -> SharingConfig:
    """Read and check a sharing file. Raises SharingConfigError naming the file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SharingConfigError(f"{path}: cannot read the sharing file: {e}") from e
    return parse_sharing(text, str(path))


def parse_sharing(text: str, source: str = "<sharing>") -> SharingConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SharingConfigError(f"{source}: not valid TOML: {e}") from e
    lines = text.splitlines()

    def fail(section: str, key: str, rule: str) -> SharingConfigError:
        name = f"{section}.{key}" if section and key else section or key
        return SharingConfigError(f"{source}:{_line_of(lines, section, key)}: {name}: {rule}")

    for key in data:
        if key not in _TOP_KEYS:
            raise fail("", key, f"unknown setting (known: {', '.join(sorted(_TOP_KEYS))})")
    half_life = _duration_ms(data.get("half_life", "7d"), lambda r: fail("", "half_life", r), allow_zero=False)
    min_lease = _duration_ms(data.get("min_lease", "10m"), lambda r: fail("", "min_lease", r), allow_zero=True)
    rate = data.get("max_preemptions_per_minute", DEFAULT_MAX_PREEMPTIONS_PER_MINUTE)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise fail("", "max_preemptions_per_minute", f"must be a whole number >= 0 (0: no preemption), got {rate!r}")

    pack_delay = _duration_ms(data.get("pack_delay", DEFAULT_PACK_DELAY_MS / 1000),
                              lambda r: fail("", "pack_delay", r), allow_zero=True)
    pack_max_wait = _duration_ms(data.get("pack_max_wait", DEFAULT_PACK_MAX_WAIT_MS / 1000),
                                 lambda r: fail("", "pack_max_wait", r), allow_zero=True)
    reserve_after = _duration_ms(data.get("reserve_after", DEFAULT_RESERVE_AFTER_MS / 1000),
                                 lambda r: fail("", "reserve_after", r), allow_zero=True)

    raw_default = data.get("default", {})
    if not isinstance(raw_default, dict):
        raise fail("default", "", "must be a table ([default])")
    for key in raw_default:
        if key not in _DEFAULT_KEYS:
            raise fail("default", key, f"unknown setting (known: {', '.join(sorted(_DEFAULT_KEYS))}; members "
                                       "belong to a team)")
    default = _team("", raw_default, "default", fail)

    raw_teams = data.get("teams", {})
    if not isinstance(raw_teams, dict):
        raise fail("teams", "", "must be tables ([teams.NAME])")
    teams: dict[str, TeamPolicy] = {}
    member_of: dict[str, str] = {}
    for name, raw in raw_teams.items():
        section = f"teams.{name}"
        if not JOB_NAME_RE.fullmatch(name):
            raise fail(section, "", "a team name is letters, digits, '.', '_' and '-', starting with a letter or digit")
        if not isinstance(raw, dict):
            raise fail(section, "", "must be a table")
        for key in raw:
            if key not in _TEAM_KEYS:
                raise fail(section, key, f"unknown setting (known: {', '.join(sorted(_TEAM_KEYS))})")
        team = _team(name, raw, section, fail)
        for member in team.members:
            if member in member_of:
                raise fail(section, "members", f"{member!r} is already a member of team {member_of[member]!r}: a user "
                                               "is in one team")
            member_of[member] = name
        teams[name] = team
    return SharingConfig(half_life, min_lease, rate, teams, default, source, pack_delay_ms=pack_delay,
                         pack_max_wait_ms=pack_max_wait, reserve_after_ms=reserve_after)


def _team(name: str, raw: Mapping[str, Any], section: str, fail: Any) -> TeamPolicy:
    members = raw.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise fail(section, "members", "must be a list of user names (token names)")
    for member in members:
        if not JOB_NAME_RE.fullmatch(member):
            raise fail(section, "members", f"{member[:40]!r} is not a user name (letters, digits, '.', '_', '-')")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < 1e6):
        raise fail(section, "weight", f"must be a number > 0, got {weight!r}")
    guarantee = _amounts(raw.get("guarantee", {}), section, "guarantee", fail)
    limit = _amounts(raw.get("limit", {}), section, "limit", fail)
    for key, amount in guarantee.items():
        if key in limit and limit[key] < amount:
            raise fail(section, "limit", f"{key} limit {limit[key]:g} is below the guarantee {amount:g}")
    return TeamPolicy(name, tuple(members), float(weight), MappingProxyType(guarantee), MappingProxyType(limit))


def _amounts(raw: Any, section: str, key: str, fail: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise fail(section, key, "must be a table such as { cpu = 8, memory = \"32GiB\", gpu = { H100 = 8 } }")
    out: dict[str, int] = {}
    for name, value in raw.items():
        where = f"{key}.{name}"
        if name not in _AMOUNT_KEYS:
            raise fail(section, where, f"unknown resource (known: {', '.join(sorted(_AMOUNT_KEYS))})")
        try:
            if name == "cpu":
                out["cpu"] = cpu_to_millicores(value, "cpu")
            elif name == "memory":
                if isinstance(value, float):
                    raise ValueError(f"memory: expected a size such as '32GiB', got {value!r}")
                out["memory"] = parse_size(value, "memory")
            else:
                if not isinstance(value, dict) or not value:
                    raise ValueError(f"expected counts by variant such as {{ H100 = 8 }}, got {value!r}")
                for variant, count in value.items():
                    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", variant):
                        raise ValueError(f"{variant[:40]!r} is not a device variant name")
                    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                        raise ValueError(f"{variant}: must be a whole number of devices >= 0, got {count!r}")
                    out[f"{name}:{variant}"] = count
        except ValueError as e:
            raise fail(section, where, str(e).split(": ", 1)[-1]) from None
    return out


def _duration_ms(value: Any, fail: Any, *, allow_zero: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(f"must be a duration such as \"7d\", \"10m\" or a number of seconds, got {value!r}")
    try:
        seconds = parse_duration(str(value))
    except ValueError as e:
        raise fail(str(e)) from None
    if seconds == 0 and not allow_zero:
        raise fail("must be more than 0")
    if seconds > 3650 * 86400:
        raise fail("must be at most 3650d")
    return int(seconds * 1000)


def _line_of(lines: list[str], section: str, key: str) -> int:
    """The line a setting is on (its key in its section, else the section's header), 1-based."""
    header = 0
    if section:
        parts = section.split(".")
        for i, line in enumerate(lines):
            stripped = line.strip().replace(" ", "")
            if stripped.startswith("[") and stripped.strip("[]") == ".".join(parts):
                header = i + 1
                break
    leaf = key.split(".")[0] if key else ""
    if leaf:
        for i in range(header, len(lines)):
            stripped = lines[i].strip()
            if i > header and stripped.startswith("["):
                break
            if re.match(rf"{re.escape(leaf)}\s*=", stripped):
                return i + 1
    return header or 1


def team_rows(config: SharingConfig, users: Iterable[str]) -> list[TeamPolicy]:
    """Every configured team and the own team of each user in ``users`` no team lists, by name."""
    teams = dict(config.teams)
    for user in users:
        team = config.team_of(user)
        if team not in teams:
            teams[team] = config.policy(team)
    return [teams[name] for name in sorted(teams)]


__all__ = [
    "DEFAULT_HALF_LIFE_MS",
    "DEFAULT_MAX_PREEMPTIONS_PER_MINUTE",
    "DEFAULT_MIN_LEASE_MS",
    "DEFAULT_SHARING",
    "SharingConfig",
    "SharingConfigError",
    "TeamPolicy",
    "UsageLedger",
    "add_amounts",
    "decayed",
    "dominant_share",
    "guarantee_ratio",
    "load_sharing",
    "parse_sharing",
    "team_rows",
    "usage_over",
    "within",
]
