"""Priority bands (issue 24): who goes first and who may give way.

``production`` before ``interactive`` before ``batch``; a band comes first in the queue order (and,
with preemption, decides who may preempt whom). A job asks for one (``--priority``); unset, a root
job is ``interactive`` and a child takes its parent's band. A caller may ask for no band above its
allowance: its token's ``--max-priority`` (default ``interactive`` for users, ``production`` for
admins), and for a task submitting a child, its own job's band.

Pure.
"""

from __future__ import annotations

from iris.cluster.errors import InvalidArgument, PermissionDenied

BANDS = ("production", "interactive", "batch")
"""Highest first: a band's rank is its index."""
DEFAULT_BAND = "interactive"
USER_ALLOWANCE = "interactive"
"""The highest band a user's token allows unless it was created with ``--max-priority``."""
ADMIN_ALLOWANCE = "production"


def rank(band: str) -> int:
    """0 for production (first), 1 interactive, 2 batch."""
    return BANDS.index(band)


def check_band(band: str, field_name: str = "priority", *, unset_ok: bool = True) -> None:
    if band == "" and unset_ok:
        return
    if band not in BANDS:
        raise InvalidArgument(f"{field_name}: must be one of {', '.join(BANDS)}, got {band[:40]!r}")


def effective_band(asked: str, parent_band: str | None, allowance: str) -> str:
    """The band a job runs in: what it asked for, else its parent's (a child), else the default;
    raises PermissionDenied (naming the rule) when that is above ``allowance``, or above the parent's
    band for a child that asked for more."""
    band = asked or parent_band or DEFAULT_BAND
    if parent_band is not None and rank(band) < rank(parent_band):
        raise PermissionDenied(f"priority: a child job may not ask for a band above its parent's ({parent_band}); "
                               f"asked for {band}")
    if rank(band) < rank(allowance):
        raise PermissionDenied(f"priority: {band} is above what this token allows ({allowance}); an admin can "
                               f"create a token with `iris token create NAME --max-priority {band}`")
    return band


__all__ = ["ADMIN_ALLOWANCE", "BANDS", "DEFAULT_BAND", "USER_ALLOWANCE", "check_band", "effective_band", "rank"]
