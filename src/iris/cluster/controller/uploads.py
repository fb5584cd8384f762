"""Workspace bundles uploaded before the LaunchJob that names them (issue 23, item 7).

The bundle left ``LaunchJob`` for a chunked, authenticated upload (``UploadBundle``), so the
controller's server-wide message cap could come down: no request read before its caller is known
is larger than a few MiB of job fields. An upload is remembered per user for ``UPLOAD_TTL_MS``:
within it, that user may name the bundle's hash in a LaunchJob (as the user of any job that uses
it may); a bundle uploaded and never used is deleted when its upload expires. Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

UPLOAD_TTL_MS = 3_600_000
"""How long an upload may wait for the LaunchJob that names it."""

MAX_UPLOADS_PER_USER = 64
"""Uploads one user may hold unused at once; the oldest is forgotten first."""


class Uploads:
    def __init__(self) -> None:
        self._by_user: dict[str, OrderedDict[str, int]] = {}

    def add(self, user: str, bundle_hash: str, now_ms: int) -> list[str]:
        """``user`` uploaded ``bundle_hash``; returns the hashes it displaced (over the per-user cap)."""
        mine = self._by_user.setdefault(user, OrderedDict())
        mine.pop(bundle_hash, None)
        mine[bundle_hash] = now_ms
        dropped = []
        while len(mine) > MAX_UPLOADS_PER_USER:
            dropped.append(mine.popitem(last=False)[0])
        return dropped

    def holds(self, user: str, bundle_hash: str, now_ms: int) -> bool:
        """Whether ``user`` uploaded ``bundle_hash`` within the last ``UPLOAD_TTL_MS``."""
        mine = self._by_user.get(user)
        at = mine.get(bundle_hash) if mine is not None else None
        return at is not None and now_ms - at <= UPLOAD_TTL_MS

    def used(self, user: str, bundle_hash: str) -> None:
        """A job of ``user`` now holds ``bundle_hash``: the job keeps it from here on."""
        mine = self._by_user.get(user)
        if mine is not None:
            mine.pop(bundle_hash, None)
            if not mine:
                del self._by_user[user]

    def expire(self, now_ms: int) -> list[str]:
        """Forget uploads older than ``UPLOAD_TTL_MS``; returns their hashes (delete the bundles no
        job uses)."""
        expired: list[str] = []
        for user in list(self._by_user):
            mine = self._by_user[user]
            while mine:
                bundle_hash, at = next(iter(mine.items()))
                if now_ms - at <= UPLOAD_TTL_MS:
                    break
                mine.popitem(last=False)
                expired.append(bundle_hash)
            if not mine:
                del self._by_user[user]
        return expired

    def pending(self) -> set[str]:
        """Hashes some user uploaded and has not used yet (their bundles must stay)."""
        return {h for mine in self._by_user.values() for h in mine}


__all__ = ["MAX_UPLOADS_PER_USER", "UPLOAD_TTL_MS", "Uploads"]
