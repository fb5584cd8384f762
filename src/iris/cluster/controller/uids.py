"""Which Unix uid each Iris user's tasks run as (issue 23, item 1).

The controller gives every user who submits a job a uid of their own from ``iris controller serve
--task-uid-range FIRST-LAST`` (the lowest free one, once, durably: the ``task_uids`` table), and
sends it with each of their tasks; a root worker runs the task under it (``worker/sandbox.py``).
So one user's ranks share one uid on every worker, and two users' tasks never share one: they
cannot read each other's files or ``/proc``, nor signal each other. ``--task-users FILE`` maps
users to existing Unix users instead (a site whose users have accounts and home directories); the
worker then runs the task as that user. Pure: no I/O; the store persists ``dirty``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping

from iris.cluster.errors import InvalidArgument, ResourceExhausted

DEFAULT_TASK_UID_RANGE = (200_000, 299_999)
"""Above the uids Debian and most sites hand to people and services (1000-65533 and systemd's
dynamic 61184-65519), below the 524288 that systemd-nspawn and rootless containers start at."""

_UNIX_NAME_MAX = 32


def parse_uid_range(text: str, flag: str = "--task-uid-range") -> tuple[int, int]:
    """``FIRST-LAST`` (inclusive) as two ints; raises InvalidArgument naming ``flag`` and the rule."""
    first_text, sep, last_text = text.partition("-")
    if not sep or not first_text.strip().isdigit() or not last_text.strip().isdigit():
        raise InvalidArgument(f"{flag}: expected FIRST-LAST, e.g. 200000-299999, got {text!r}")
    first, last = int(first_text), int(last_text)
    if first < 1000:
        raise InvalidArgument(f"{flag}: the first uid must be >= 1000 (below are the system's), got {first}")
    if last < first:
        raise InvalidArgument(f"{flag}: the last uid must be >= the first, got {text!r}")
    if last > 2**32 - 2:
        raise InvalidArgument(f"{flag}: uids end at {2**32 - 2}, got {last}")
    return first, last


def parse_task_users(text: str, path: str) -> dict[str, str]:
    """``--task-users FILE`` (its ``text``, read from ``path``): a TOML table of Iris user = "unix
    user". Raises InvalidArgument with ``FILE: field: rule``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{path}: not TOML: {e}") from None
    users: dict[str, str] = {}
    for user, unix in data.items():
        if not isinstance(unix, str) or not unix or len(unix) > _UNIX_NAME_MAX or "/" in unix or ":" in unix:
            raise InvalidArgument(f"{path}: {user}: a Unix user name (1-{_UNIX_NAME_MAX} characters, no '/' or "
                                  f"':'), got {unix!r}")
        users[str(user)] = unix
    return users


class TaskUids:
    """Users' task uids: assigned once each, restored from the store, never reused."""

    def __init__(self, uid_range: tuple[int, int] = DEFAULT_TASK_UID_RANGE,
                 unix_users: Mapping[str, str] | None = None) -> None:
        self.range = uid_range
        self.unix_users: dict[str, str] = dict(unix_users or {})
        self._by_user: dict[str, int] = {}
        self._taken: set[int] = set()
        self._next = uid_range[0]

    def configure(self, uid_range: tuple[int, int], unix_users: Mapping[str, str] | None = None) -> None:
        """The range new users are given uids from (those assigned keep theirs), and the map."""
        self.range = uid_range
        self.unix_users = dict(unix_users or {})
        self._next = uid_range[0]

    def restore(self, user: str, uid: int) -> None:
        self._by_user[user] = uid
        self._taken.add(uid)

    def uid_of(self, user: str) -> int:
        """The user's uid (0: none yet)."""
        return self._by_user.get(user, 0)

    def ensure(self, user: str) -> int:
        """The user's uid, assigned now (the lowest free one in the range) if they have none. Raises
        ResourceExhausted when the range is used up (nothing changes then)."""
        uid = self._by_user.get(user)
        if uid is not None:
            return uid
        first, last = self.range
        candidate = max(self._next, first)
        while candidate <= last and candidate in self._taken:
            candidate += 1
        if candidate > last:
            raise ResourceExhausted(f"every task uid of --task-uid-range {first}-{last} is taken "
                                    f"({len(self._taken):,} users): the controller's operator must widen it")
        self._next = candidate + 1
        self.restore(user, candidate)
        return candidate

    def run_as(self, user: str) -> tuple[int, str]:
        """What a task of ``user``'s runs as: (their uid, the Unix user ``--task-users`` maps them to
        or "")."""
        return self._by_user.get(user, 0), self.unix_users.get(user, "")


__all__ = ["DEFAULT_TASK_UID_RANGE", "TaskUids", "parse_task_users", "parse_uid_range"]
