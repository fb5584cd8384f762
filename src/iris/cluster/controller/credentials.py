"""Who is calling, and the credentials the controller issues (DESIGN §7).

User, admin and join tokens are stored as hashes in the core's token table (``auth.TokenRecord``);
task tokens and the controller's credential to each worker are derived from the controller's
secret, so they need no storage and survive a restart. Changes go through the controller's one
transaction (``changes.Changes``).
"""

from __future__ import annotations

from iris.cluster import bands
from iris.cluster.auth import (
    TASK_TOKEN_PREFIX,
    Principal,
    Role,
    TokenRecord,
    derive,
    generate_token,
    hash_token,
    new_token_id,
    parse_task_token,
    same_hash,
    task_token,
)
from iris.cluster.controller.access import ANONYMOUS_LOCAL, PermissionDenied, Unauthenticated
from iris.cluster.controller.changes import Changes
from iris.cluster.errors import AlreadyExists, InvalidArgument, NotFound
from iris.cluster.types import JOB_NAME_RE, AttemptRef, TaskId, WorkerId

USER_NAME_RULE = ("a user name is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                  "(it prefixes the user's job ids: '<user>:<job name>')")


class Credentials:
    def __init__(self, changes: Changes, secret: bytes, auth: bool) -> None:
        self._changes = changes
        self._secret = secret
        self.auth = auth
        """Every call needs a credential; False only for ``--auth none`` on loopback."""
        self._worker_credentials: dict[str, str] = {}

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a presented token. Raises Unauthenticated (missing, malformed, unknown,
        revoked, or a task token of an attempt that ended)."""
        if not self.auth:
            return ANONYMOUS_LOCAL
        if not token:
            raise Unauthenticated("no credential: send 'authorization: Bearer <token>' (see `iris login`)")
        if token.startswith(TASK_TOKEN_PREFIX):
            parsed = parse_task_token(self._secret, token)
            if parsed is None:
                raise Unauthenticated("the task token is not one this controller issued")
            task_id, attempt_id, job_uid = parsed
            with self._changes.read() as state:
                task = state.live_attempt(AttemptRef(TaskId(task_id), attempt_id, job_uid))
                job = state.get_job(task.job_id) if task is not None else None
            if task is None or job is None or job.uid != job_uid:  # a token names its incarnation exactly
                raise Unauthenticated(f"the task token of {task_id} attempt {attempt_id} ended with its attempt")
            return Principal(Role.TASK, task_id, job_id=task.job_id, attempt_id=attempt_id)
        token_hash = hash_token(token)
        # No lock: a dict read, and a record is replaced whole (a revocation is a new record), so an
        # RPC never waits for the controller's lock just to be let in.
        record = self._changes.state.token_by_hash(token_hash)
        if record is None or not same_hash(record.token_hash, token_hash):
            raise Unauthenticated("unknown token")
        if record.revoked:
            raise Unauthenticated(f"token {record.token_id} was revoked")
        if record.role in (Role.USER, Role.ADMIN) and not JOB_NAME_RE.fullmatch(record.name):
            # Made before user names prefixed job ids ("<user>:<name>"): it cannot own jobs.
            raise Unauthenticated(
                f"token {record.token_id} is for {record.name[:40]!r}, which is no longer a valid user name "
                f"({USER_NAME_RULE}); an admin can re-create it: `iris token revoke {record.token_id}` and "
                "`iris token create --user NEW_NAME`")
        return Principal(record.role, record.name, token_id=record.token_id, max_priority=record.max_priority)

    def task_token(self, task_id: str, attempt_id: int, job_uid: str = "") -> str:
        return task_token(self._secret, task_id, attempt_id, job_uid)

    def controller_token(self, worker_id: str) -> str:
        """The credential the controller presents to one worker (derived: the same after a restart;
        computed once per worker). "" without authentication."""
        if not self.auth:
            return ""
        token = self._worker_credentials.get(worker_id)
        if token is None:
            token = derive(self._secret, "controller", worker_id)
            self._worker_credentials[worker_id] = token
        return token

    def create_token(self, name: str, role: Role, max_priority: str = "") -> tuple[TokenRecord, str]:
        """A new token (returned once, in clear) for ``name``; only its hash is kept. ``max_priority``:
        the highest band its jobs may ask for ("": the role's default)."""
        if not JOB_NAME_RE.fullmatch(name or ""):
            raise InvalidArgument(f"name: {USER_NAME_RULE}, got {name[:40]!r}")
        bands.check_band(max_priority, "max_priority")
        token = generate_token()
        with self._changes.change() as tx:
            # A name is one principal: ownership goes by name, so a user token named like the
            # bootstrap admin (or a worker) would act as it.
            held = {t.role for t in tx.state.tokens_named(name) if not t.revoked}
            if held - {role}:
                raise AlreadyExists(f"name: {name!r} is held by a token of role {sorted(r.value for r in held)[0]}; "
                                    "a name belongs to one principal (revoke that token first, or choose another name)")
            record = TokenRecord(new_token_id(), hash_token(token), name, role, tx.now_ms, max_priority=max_priority)
            tx.state.add_token(record)
        return record, token

    def revoke_token(self, token_id: str) -> TokenRecord:
        with self._changes.change() as tx:
            record = tx.state.revoke_token(token_id, tx.now_ms)
            if record is None:
                raise NotFound(f"token_id: no token {token_id[:40]!r}")
        return record

    def list_tokens(self) -> list[TokenRecord]:
        with self._changes.read() as state:
            return state.list_tokens()

    def bootstrap_tokens(self) -> dict[Role, str]:
        """On a fresh state: an admin token and a worker join token, returned in clear so the
        caller can hand them out (``iris controller serve`` writes them to files). Roles that
        already have an active token get none."""
        with self._changes.read() as state:
            active = {t.role for t in state.list_tokens() if not t.revoked}
        made: dict[Role, str] = {}
        for role, name in ((Role.ADMIN, "admin"), (Role.JOIN, "workers")):
            if role not in active:
                made[role] = self.create_token(name, role)[1]
        return made

    def issue_worker_credential(self, worker_id: WorkerId) -> str:
        """A worker credential for ``worker_id``; refused while a worker of that id is alive (it may be
        taken over only once that worker was declared dead). Earlier credentials of the id are revoked."""
        token = generate_token()
        with self._changes.change() as tx:
            worker = tx.state.get_worker(worker_id)
            if worker is not None and worker.healthy:
                raise PermissionDenied(f"worker_id: worker {worker_id!r} is registered and alive; its id cannot be "
                                       "taken over with the join token")
            for old in tx.state.tokens_named(worker_id):
                if old.role is Role.WORKER and not old.revoked:
                    tx.state.revoke_token(old.token_id, tx.now_ms)
            tx.state.add_token(TokenRecord(new_token_id(), hash_token(token), worker_id, Role.WORKER, tx.now_ms))
        return token
