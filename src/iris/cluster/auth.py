"""Who is calling: tokens, roles and principals (DESIGN §7).

- A token is random (256 bits, ``iris_`` + URL-safe base64) and is stored only as its sha256
  (``hash_token``); a presented token is hashed and looked up, then compared in constant time.
- Roles: **admin** (everything), **user** (submits jobs, stops its own, reads everything but other
  users' secrets), **worker** (registers, heartbeats, reports and fetches bundles for its own
  attempts), and **task**: a token scoped to one attempt (``task_token``), derived with the
  controller's secret key, so it needs no storage and dies with the attempt (the controller
  accepts it only while that attempt is the task's live one).
- Nothing falls back to anonymous or admin: a call without a valid credential is refused.

Pure: no I/O, no clock (``now_ms`` comes in).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "iris_"
TASK_TOKEN_PREFIX = "iris-task."
_TOKEN_BYTES = 32


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    WORKER = "worker"
    """A registered worker's credential: bound to its worker id."""
    JOIN = "join"
    """The cluster's join token: it may only register a new worker (and get a worker credential)."""
    TASK = "task"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    role: Role
    name: str
    """The user's name, the worker's id, or (a task) the task's id."""
    token_id: str = ""
    job_id: str = ""
    """For a task: the job it belongs to (its scope)."""
    attempt_id: int = -1
    """For a task: the attempt its token was issued to."""
    max_priority: str = ""
    """Its token's ``--max-priority`` ("": the role's default; see ``access.band_allowance``)."""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def owner(self) -> str:
        """Who owns what this principal submits: a user's own name; a task submits for its job's owner
        (set by the controller when it resolves the task's job)."""
        return self.name


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token: never the token itself, only its hash."""

    token_id: str
    token_hash: str
    name: str
    role: Role
    created_at_ms: int
    revoked_at_ms: int | None = None
    max_priority: str = ""
    """The highest priority band its jobs may ask for ("": the role's default: users interactive,
    admins production)."""

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms is not None


def generate_token() -> str:
    """A new random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def new_token_id() -> str:
    return secrets.token_hex(6)


def hash_token(token: str) -> str:
    """What is stored and looked up for a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def task_token(secret: bytes, task_id: str, attempt_id: int, job_uid: str = "") -> str:
    """The token of one attempt of one job incarnation: ``iris-task.<attempt>.<job uid>.<mac>.<task
    id>`` (the id last: it may hold dots; task ids never hold whitespace, NUL or line breaks; job
    uids are hex)."""
    return f"{TASK_TOKEN_PREFIX}{attempt_id}.{job_uid}.{_mac(secret, task_id, attempt_id, job_uid)}.{task_id}"


def parse_task_token(secret: bytes, token: str) -> tuple[str, int, str] | None:
    """(task id, attempt id, job uid) of a genuine task token, else None (compared in constant time)."""
    if not token.startswith(TASK_TOKEN_PREFIX) or len(token) > 4096:
        return None
    parts = token[len(TASK_TOKEN_PREFIX):].split(".", 3)
    if len(parts) != 4 or not parts[0].isdigit() or not parts[3]:
        return None
    attempt_id, job_uid, mac, task_id = int(parts[0]), parts[1], parts[2], parts[3]
    if not hmac.compare_digest(mac.encode(), _mac(secret, task_id, attempt_id, job_uid).encode()):
        return None
    return task_id, attempt_id, job_uid


def derive(secret: bytes, purpose: str, *parts: str) -> str:
    """A MAC of ``parts`` under ``secret`` for one ``purpose``: keyed BLAKE2b (a MAC by design,
    and ~3x cheaper here than HMAC-SHA256 through OpenSSL; a launch computes one per task)."""
    message = "\0".join((purpose, *parts)).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(message, key=secret[:64], digest_size=32).hexdigest()


def _mac(secret: bytes, task_id: str, attempt_id: int, job_uid: str) -> str:
    return derive(secret, "task", task_id, str(attempt_id), job_uid)


def bearer(metadata: object) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry in gRPC invocation metadata."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
