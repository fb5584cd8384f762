"""Who may do what (DESIGN §7): the controller's authorization rules, in one place.

Every RPC names its rule (``service.py``); there is no default-allow. ``Unauthenticated`` is for a
missing, malformed, unknown or revoked credential, ``PermissionDenied`` for a known caller that
may not do this (wrong role, not the owner, outside a task's scope).

Pure: plain values in, a decision (or an exception) out.
"""

from __future__ import annotations

from iris.cluster import bands
from iris.cluster.auth import Principal, Role
from iris.cluster.errors import PermissionDenied, Unauthenticated
from iris.cluster.types import owner_of_job_id, qualify_job_id

__all__ = ["ANONYMOUS_LOCAL", "PermissionDenied", "Unauthenticated", "in_task_scope", "may_read_secrets",
           "require_attempt", "require_own_worker", "require_owner", "require_reader", "require_role",
           "qualify", "registration_gets_credential", "task_list_prefix", "task_parent", "user_of"]


def user_of(principal: Principal) -> str:
    """Whose jobs a caller's bare job names mean: a user's or admin's own, a task's job owner's."""
    if principal.role in (Role.USER, Role.ADMIN):
        return principal.name
    if principal.role is Role.TASK:
        return owner_of_job_id(principal.job_id)
    return ""


def qualify(principal: Principal, job_id: str) -> str:
    """A job or task id from ``principal``: a bare name is one of its user's jobs (``qualify_job_id``)."""
    return qualify_job_id(job_id, user_of(principal))


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


def band_allowance(principal: Principal) -> str:
    """The highest priority band ``principal`` may ask for: its token's ``max_priority``, else its
    role's default (users interactive, admins production). A task's is production: its child is
    bounded by the parent job's band instead."""
    if principal.max_priority:
        return principal.max_priority
    return bands.USER_ALLOWANCE if principal.role is Role.USER else bands.ADMIN_ALLOWANCE


def task_parent(principal: Principal, parent_job_id: str) -> str:
    """A task submits only children of its own job (they belong to that job's owner): the parent
    its submission gets."""
    if parent_job_id and parent_job_id != principal.job_id:
        raise PermissionDenied(f"parent_job_id: a task of {principal.job_id!r} may submit only its own children")
    return principal.job_id


def task_list_prefix(principal: Principal, prefix: str) -> str:
    """A task lists its own job and the jobs under it: the prefix its list is narrowed to."""
    if prefix and not (prefix.startswith(principal.job_id) or principal.job_id.startswith(prefix)):
        raise PermissionDenied(f"prefix: a task of {principal.job_id!r} may list only its own jobs")
    return prefix if len(prefix) >= len(principal.job_id) else principal.job_id


def require_own_worker(principal: Principal, worker_id: str) -> None:
    """A worker credential speaks only for its own worker id."""
    if principal.role is Role.WORKER and principal.name != worker_id:
        raise PermissionDenied(f"worker_id: this credential belongs to worker {principal.name!r}, not "
                               f"{worker_id[:64]!r}")


def registration_gets_credential(principal: Principal, worker_id: str) -> bool:
    """Who may register a worker: its own credential (re-registering), the join token (which earns
    the worker a credential of its own: True), or an admin (or ``--auth none``; no credential)."""
    if principal.role is Role.WORKER:
        require_own_worker(principal, worker_id)
        return False
    if principal.role is Role.JOIN:
        return True
    if principal.role is not Role.ADMIN:
        raise PermissionDenied(f"RegisterWorker: needs the join token or a worker credential, not a "
                               f"{principal.role.value} token")
    return False


def require_attempt(principal: Principal, task_id: str, attempt_id: int, what: str) -> None:
    """A task token acts (endpoints) only for its own attempt."""
    if principal.role is Role.TASK and (task_id != principal.name or attempt_id != principal.attempt_id):
        raise PermissionDenied(f"task_id: a task token {what} only for its own attempt "
                               f"({principal.name} attempt {principal.attempt_id})")


ANONYMOUS_LOCAL = Principal(Role.ADMIN, "local")
"""The caller when authentication is explicitly off (``--auth none``, loopback only)."""
