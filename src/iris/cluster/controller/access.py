"""Who may do what (DESIGN §7): the controller's authorization rules, in one place.

Every RPC names its rule (``service.py``); there is no default-allow. ``Unauthenticated`` is for a
missing, malformed, unknown or revoked credential, ``PermissionDenied`` for a known caller that
may not do this (wrong role, not the owner, outside a task's scope).

Pure: plain values in, a decision (or an exception) out.
"""

from __future__ import annotations

from iris.cluster.auth import Principal, Role
from iris.cluster.errors import PermissionDenied, Unauthenticated

__all__ = ["ANONYMOUS_LOCAL", "PermissionDenied", "Unauthenticated", "in_task_scope", "may_read_secrets",
           "require_owner", "require_reader", "require_role"]


def require_role(principal: Principal, *roles: Role, what: str) -> None:
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise PermissionDenied(f"{what}: needs a {allowed} token, not a {principal.role.value} token")


def in_task_scope(principal: Principal, job_id: str) -> bool:
    """A task token reaches its own job and the jobs under it (its children)."""
    return principal.role is Role.TASK and (job_id == principal.job_id or job_id.startswith(principal.job_id + "/"))


def require_reader(principal: Principal, job_id: str, what: str) -> None:
    """Job lists and statuses (no secrets): any human caller; a task only its own job and children."""
    if principal.role in (Role.ADMIN, Role.USER) or in_task_scope(principal, job_id):
        return
    raise PermissionDenied(f"{what}: a {principal.role.value} token cannot read job {job_id!r}")


def require_owner(principal: Principal, job_id: str, owner: str, what: str) -> None:
    """Stopping, deleting, reading logs, results or the bundle: the owner or an admin."""
    if principal.is_admin:
        return
    if principal.role is Role.USER and owner and principal.name == owner:
        return
    raise PermissionDenied(f"{what}: job {job_id!r} belongs to {owner or 'nobody'}; only its owner or an admin may")


def may_read_secrets(principal: Principal, job_id: str, owner: str) -> bool:
    """Env var values, logs, results and the bundle of a job."""
    if principal.is_admin:
        return True
    if principal.role is Role.USER:
        return bool(owner) and principal.name == owner
    return in_task_scope(principal, job_id)


ANONYMOUS_LOCAL = Principal(Role.ADMIN, "local")
"""The caller when authentication is explicitly off (``--auth none``, loopback only)."""
