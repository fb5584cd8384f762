"""Durable controller state: SQLite (WAL) under ``--state-dir`` (DESIGN §3 "Durability").

The in-memory ``ControllerState`` stays the authority for reads; this store only *mirrors* it and
is read back once, at start (``load``). The shell calls ``write(state, effects)`` under its lock
after every batch of changes and before the RPC that caused them returns; ``write`` touches only the
rows the batch dirtied (``Effects``), in one transaction, with ``executemany`` — never a scan.

Files under the state dir::

    controller.sqlite3 (+ -wal, -shm)   jobs, tasks, attempts, workers, endpoints, action log
    bundles/<sha256>.zip                content-addressed workspace bundles

Schema versions: ``PRAGMA user_version`` holds the number of ``MIGRATIONS`` steps applied; a newer
controller appends steps, never edits old ones. A file that is not an Iris state database, is
corrupt, or comes from a newer schema is refused with ``StoreError`` *before anything is written*:
it is first checked through a read-only connection.

Queue order: each task row has a ``queue_seq``. A task that (re)entered the queue during a batch —
submitted, or retried as a new attempt — gets the next sequence numbers, in the order it entered;
``load`` orders PENDING tasks by it. Tasks that (re)entered the queue in a batch are exactly the
dirty PENDING tasks, and they sit at the tail of the state's insertion-ordered queue, so their
order is read from that tail in O(batch) (see ``ControllerState.queue_tail``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from iris.cluster.auth import Role, TokenRecord
from iris.cluster.controller.job import Job
from iris.cluster.controller.state import (
    ACTION_LOG_SIZE,
    ActionLogEntry,
    ControllerEndpoint,
    ControllerState,
    ControllerWorker,
    Effects,
)
from iris.cluster.controller.task import PENDING, Task, TaskAttempt
from iris.cluster.types import (
    ACTIVE_TASK_STATES,
    BUNDLE_HASH_RE,
    JobId,
    TaskId,
    WorkerId,
    WorkerMetadata,
    owner_of_job_id,
    root_job_id,
)
from iris.rpc import cluster_pb2

logger = logging.getLogger(__name__)

DB_FILENAME = "controller.sqlite3"
BUNDLES_DIRNAME = "bundles"
LEFTOVERS = ("admin.token", "join.token", BUNDLES_DIRNAME, "logs")
"""What a state directory holds once a controller ran in it (written after its database was made)."""
DEFAULT_STATE_DIR = Path("./iris-state")

APPLICATION_ID = 0x49524953  # "IRIS": marks the file as ours (PRAGMA application_id)
_SQLITE_MAGIC = b"SQLite format 3\x00"

ACTION_LOG_KEEP = 4 * ACTION_LOG_SIZE
"""Action-log rows kept in the file; older ones are trimmed now and then (load reads the last
``ACTION_LOG_SIZE``)."""
_ACTION_TRIM_EVERY = 1024

Migration = Sequence[str]
"""One schema step: SQL statements applied in one transaction together with the version bump."""


def _root(column: str) -> str:
    """SQL for the root job of an id (the part before the first '/')."""
    return f"(CASE WHEN instr({column}, '/') > 0 THEN substr({column}, 1, instr({column}, '/') - 1) ELSE {column} END)"


def _owner_and_name(job_id: str) -> tuple[str, str]:
    """A runtime history key (a job id) as its row's (owner, name)."""
    owner = owner_of_job_id(job_id)
    return owner, job_id.removeprefix(f"{owner}:") if owner else job_id


def _owner_prefix_migration() -> tuple[str, ...]:
    """Statements giving every id of an owned job its owner's prefix (v8 -> v9)."""
    statements = [
        "CREATE TEMP TABLE owned_roots AS SELECT job_id AS root, owner FROM jobs "
        "WHERE (parent_job_id IS NULL OR parent_job_id = '') AND owner != '' AND instr(job_id, ':') = 0",
    ]
    statements.append(  # an endpoint's name is in its owner's namespace too (before its job id changes)
        f"UPDATE endpoints SET name = (SELECT owner FROM owned_roots WHERE root = {_root('job_id')}) || ':' || name "
        f"WHERE {_root('job_id')} IN (SELECT root FROM owned_roots)")
    for table, column in (("jobs", "job_id"), ("jobs", "parent_job_id"), ("tasks", "task_id"), ("tasks", "job_id"),
                          ("attempts", "task_id"), ("endpoints", "job_id"), ("endpoints", "task_id"),
                          ("results", "task_id"), ("actions", "job_id"), ("actions", "task_id")):
        statements.append(
            f"UPDATE {table} SET {column} = (SELECT owner FROM owned_roots WHERE root = {_root(column)}) || ':' || "
            f"{column} WHERE {column} != '' AND {_root(column)} IN (SELECT root FROM owned_roots)")
    statements.append("DROP TABLE owned_roots")
    return tuple(statements)


MIGRATIONS: list[Migration] = [
    # v0 -> v1: the initial schema.
    (
        """CREATE TABLE jobs (
            job_id          TEXT PRIMARY KEY,
            parent_job_id   TEXT,
            request         BLOB NOT NULL,       -- serialized Controller.LaunchJobRequest
            submitted_at_ms INTEGER NOT NULL,
            state           INTEGER NOT NULL,
            error           TEXT,
            started_at_ms   INTEGER,
            finished_at_ms  INTEGER,
            pending_reason  TEXT NOT NULL DEFAULT '',
            first_failure   TEXT
        )""",
        """CREATE TABLE tasks (
            task_id                TEXT PRIMARY KEY,
            job_id                 TEXT NOT NULL,
            task_index             INTEGER NOT NULL,
            state                  INTEGER NOT NULL,
            worker_id              TEXT,
            failure_count          INTEGER NOT NULL,
            preemption_count       INTEGER NOT NULL,
            max_retries_failure    INTEGER NOT NULL,
            max_retries_preemption INTEGER NOT NULL,
            current_attempt_id     INTEGER NOT NULL,
            submitted_at_ms        INTEGER NOT NULL,
            pending_since_ms       INTEGER NOT NULL,
            started_at_ms          INTEGER,
            finished_at_ms         INTEGER,
            error                  TEXT,
            exit_code              INTEGER,
            queue_seq              INTEGER      -- position in the pending queue (when PENDING)
        ) WITHOUT ROWID""",
        """CREATE TABLE attempts (
            task_id           TEXT NOT NULL,
            attempt_id        INTEGER NOT NULL,
            worker_id         TEXT,
            state             INTEGER NOT NULL,
            started_at_ms     INTEGER,
            finished_at_ms    INTEGER,
            exit_code         INTEGER,
            error             TEXT,
            is_worker_failure INTEGER NOT NULL,
            PRIMARY KEY (task_id, attempt_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE workers (
            worker_id            TEXT PRIMARY KEY,
            address              TEXT NOT NULL,
            metadata             BLOB NOT NULL,  -- serialized WorkerMetadata
            healthy              INTEGER NOT NULL,
            consecutive_failures INTEGER NOT NULL,
            last_heartbeat_ms    INTEGER NOT NULL,
            registered_at_ms     INTEGER NOT NULL,
            incarnation          TEXT NOT NULL
        )""",
        """CREATE TABLE endpoints (
            endpoint_id TEXT PRIMARY KEY,
            name        TEXT NOT NULL,
            address     TEXT NOT NULL,
            job_id      TEXT NOT NULL,
            metadata    TEXT NOT NULL,           -- JSON object
            task_id     TEXT,
            attempt_id  INTEGER NOT NULL
        )""",
        """CREATE TABLE actions (
            seq          INTEGER PRIMARY KEY,
            timestamp_ms INTEGER NOT NULL,
            action       TEXT NOT NULL,
            job_id       TEXT NOT NULL,
            task_id      TEXT NOT NULL,
            worker_id    TEXT NOT NULL,
            details      TEXT NOT NULL
        )""",
    ),
    # v1 -> v2: deleting a job deletes its tasks (retention): find them without a scan.
    ("CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks (job_id)",),
    # v2 -> v3: the trust boundary: who owns each job, and the tokens (hashes only).
    (
        "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE tokens (
            token_id      TEXT PRIMARY KEY,
            token_hash    TEXT NOT NULL UNIQUE,  -- sha256 of the token; the token itself is never stored
            name          TEXT NOT NULL,
            role          TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL,
            revoked_at_ms INTEGER
        )""",
    ),
    # v3 -> v4: failure rules: what each attempt was charged to and what decided it, when a failure
    # retry may start (backoff), which workers are drained.
    (
        "ALTER TABLE attempts ADD COLUMN charged_to TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE attempts ADD COLUMN decided_by TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tasks ADD COLUMN not_before_ms INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE workers ADD COLUMN draining INTEGER NOT NULL DEFAULT 0",
    ),
    # v4 -> v5: callable results, kept with their job (written when the task's success is reported).
    (
        """CREATE TABLE results (
            task_id    TEXT PRIMARY KEY,
            attempt_id INTEGER NOT NULL,
            data       BLOB NOT NULL
        )""",
    ),
    # v5 -> v6: deletion and retention: each job incarnation's unique id, so a deleted job's name can
    # be used again without its late reports, tokens or logs matching the new job.
    ("ALTER TABLE jobs ADD COLUMN uid TEXT NOT NULL DEFAULT ''",),
    # v6 -> v7: priority bands: the highest band a token's jobs may ask for, and the band each
    # attempt was placed under.
    (
        "ALTER TABLE tokens ADD COLUMN max_priority TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE attempts ADD COLUMN band TEXT NOT NULL DEFAULT ''",
    ),
    # v7 -> v8: fair share: each user's decayed usage (share-seconds) as of when it was last charged.
    (
        """CREATE TABLE usage (
            user     TEXT PRIMARY KEY,
            value    REAL NOT NULL,
            as_of_ms INTEGER NOT NULL
        )""",
    ),
    # v8 -> v9: job names are unique per owner: a root job's id is "<owner>:<name>". Every id of a
    # job with an owner (its children's and tasks' too) gets its owner's prefix.
    _owner_prefix_migration(),
    # v9 -> v10: runtime history for start-time estimates: the last successful task runtimes (ms,
    # JSON list) of each owner's jobs of each name; outlives job deletion and retention.
    (
        """CREATE TABLE runtimes (
            owner TEXT NOT NULL,
            name  TEXT NOT NULL,
            runs  TEXT NOT NULL,
            PRIMARY KEY (owner, name)
        )""",
    ),
    # v10 -> v11: the Unix uid each user's tasks run as on a root worker (``uids.TaskUids``),
    # given once from --task-uid-range and never reused.
    (
        """CREATE TABLE task_uids (
            user TEXT PRIMARY KEY,
            uid  INTEGER NOT NULL UNIQUE
        )""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Table:
    """One table, declared once: its columns in row order, its key, which columns a later write
    may change, and its indexes. Every statement the store runs is generated from this
    (``tests/cluster/controller/test_store.py`` checks it against the migrated schema)."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    mutable: tuple[str, ...] | None = None
    """Columns a write of an existing row replaces; None: every column outside the key."""
    keep_if_null: tuple[str, ...] = ()
    """Columns that keep their stored value when the new row has NULL there."""
    insert_only: bool = False
    """Rows never change once written (INSERT OR IGNORE)."""
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    order_by: str = "rowid"

    @property
    def updated(self) -> tuple[str, ...]:
        return self.mutable if self.mutable is not None else tuple(c for c in self.columns if c not in self.key)

    @property
    def insert_sql(self) -> str:
        return _insert_sql(self)

    @property
    def update_sql(self) -> str:
        """Update the mutable columns of an existing row: parameters are ``updated`` then ``key``."""
        return _update_sql(self)

    def _build_insert_sql(self) -> str:
        cols = ", ".join(self.columns)
        marks = ", ".join("?" for _ in self.columns)
        if self.insert_only:
            return f"INSERT OR IGNORE INTO {self.name} ({cols}) VALUES ({marks})"
        sets = ", ".join(
            f"{c} = COALESCE(excluded.{c}, {self.name}.{c})" if c in self.keep_if_null else f"{c} = excluded.{c}"
            for c in self.updated
        )
        return f"INSERT INTO {self.name} ({cols}) VALUES ({marks}) ON CONFLICT({', '.join(self.key)}) DO UPDATE SET {sets}"

    def _build_update_sql(self) -> str:
        sets = ", ".join(f"{c} = ?" for c in self.updated)
        where = " AND ".join(f"{c} = ?" for c in self.key)
        return f"UPDATE {self.name} SET {sets} WHERE {where}"

    @property
    def select_sql(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.name} ORDER BY {self.order_by}"

    def delete_sql(self, by: str) -> str:
        return f"DELETE FROM {self.name} WHERE {by} = ?"


@functools.cache
def _insert_sql(table: Table) -> str:
    """Built once per table: every store write runs these statements."""
    return table._build_insert_sql()  # noqa: SLF001


@functools.cache
def _update_sql(table: Table) -> str:
    return table._build_update_sql()  # noqa: SLF001


JOBS = Table(
    "jobs",
    ("job_id", "parent_job_id", "request", "submitted_at_ms", "state", "error", "started_at_ms", "finished_at_ms",
     "pending_reason", "first_failure", "owner", "uid"),
    key=("job_id",),
    mutable=("state", "error", "started_at_ms", "finished_at_ms", "pending_reason", "first_failure"),
)
TASKS = Table(
    "tasks",
    ("task_id", "job_id", "task_index", "state", "worker_id", "failure_count", "preemption_count",
     "max_retries_failure", "max_retries_preemption", "current_attempt_id", "submitted_at_ms", "pending_since_ms",
     "started_at_ms", "finished_at_ms", "error", "exit_code", "queue_seq", "not_before_ms"),
    key=("task_id",),
    keep_if_null=("queue_seq",),
    indexes=(("tasks_by_job", ("job_id",)),),
    order_by="task_id",
)
ATTEMPTS = Table(
    "attempts",
    ("task_id", "attempt_id", "worker_id", "state", "started_at_ms", "finished_at_ms", "exit_code", "error",
     "is_worker_failure", "charged_to", "decided_by", "band"),
    key=("task_id", "attempt_id"),
    insert_only=True,
    order_by="task_id, attempt_id",
)
WORKERS = Table(
    "workers",
    ("worker_id", "address", "metadata", "healthy", "consecutive_failures", "last_heartbeat_ms", "registered_at_ms",
     "incarnation", "draining"),
    key=("worker_id",),
)
ENDPOINTS = Table(
    "endpoints",
    ("endpoint_id", "name", "address", "job_id", "metadata", "task_id", "attempt_id"),
    key=("endpoint_id",),
)
ACTIONS = Table(
    "actions",
    ("seq", "timestamp_ms", "action", "job_id", "task_id", "worker_id", "details"),
    key=("seq",),
    insert_only=True,
    order_by="seq",
)
TOKENS = Table(
    "tokens",
    ("token_id", "token_hash", "name", "role", "created_at_ms", "revoked_at_ms", "max_priority"),
    key=("token_id",),
    mutable=("revoked_at_ms",),
)
USAGE = Table("usage", ("user", "value", "as_of_ms"), key=("user",), mutable=("value", "as_of_ms"))
RUNTIMES = Table("runtimes", ("owner", "name", "runs"), key=("owner", "name"), mutable=("runs",))
TASK_UIDS = Table("task_uids", ("user", "uid"), key=("user",), insert_only=True)
TABLES = (JOBS, TASKS, ATTEMPTS, WORKERS, ENDPOINTS, ACTIONS, TOKENS, USAGE, RUNTIMES, TASK_UIDS)

_DELETE_JOB = (
    f"DELETE FROM {ATTEMPTS.name} WHERE task_id IN (SELECT task_id FROM {TASKS.name} WHERE job_id = ?)",
    f"DELETE FROM results WHERE task_id IN (SELECT task_id FROM {TASKS.name} WHERE job_id = ?)",
    TASKS.delete_sql("job_id"),
    ENDPOINTS.delete_sql("job_id"),
    JOBS.delete_sql("job_id"),
)


def _job_row(j: Job) -> tuple[object, ...]:
    return (j.job_id, j.parent_job_id, j.spec.to_proto().SerializeToString(), j.submitted_at_ms, j.state, j.error,
            j.started_at_ms, j.finished_at_ms, j.pending_reason, j.first_failure, j.owner, j.uid)


def _token_row(t: TokenRecord) -> tuple[object, ...]:
    return (t.token_id, t.token_hash, t.name, t.role.value, t.created_at_ms, t.revoked_at_ms, t.max_priority)


def _job_update(j: Job) -> tuple[object, ...]:
    return (j.state, j.error, j.started_at_ms, j.finished_at_ms, j.pending_reason, j.first_failure, j.job_id)


def _task_row(t: Task, queue_seq: int | None) -> tuple[object, ...]:
    return (t.task_id, t.job_id, t.task_index, t.state, t.worker_id, t.failure_count, t.preemption_count,
            t.max_retries_failure, t.max_retries_preemption, t.current_attempt_id, t.submitted_at_ms,
            t.pending_since_ms, t.started_at_ms, t.finished_at_ms, t.error, t.exit_code, queue_seq, t.not_before_ms)


def _attempt_row(t: Task, a: TaskAttempt) -> tuple[object, ...]:
    return (t.task_id, a.attempt_id, a.worker_id, a.state, a.started_at_ms, a.finished_at_ms, a.exit_code, a.error,
            int(a.is_worker_failure), a.charged_to, a.decided_by, a.band)


def _worker_row(w: ControllerWorker) -> tuple[object, ...]:
    return (w.worker_id, w.address, w.metadata.to_proto().SerializeToString(), int(w.healthy),
            w.consecutive_failures, w.last_heartbeat_ms, w.registered_at_ms, w.incarnation, int(w.draining))


def _endpoint_row(e: ControllerEndpoint) -> tuple[object, ...]:
    return (e.endpoint_id, e.name, e.address, e.job_id, json.dumps(e.metadata, sort_keys=True), e.task_id,
            e.attempt_id)


def _task_key(task: Task) -> TaskId:
    return task.task_id


class StoreError(Exception):
    """The state file cannot be used (corrupt, not ours, newer schema) or a write failed."""


def _refuse(path: Path, why: str) -> StoreError:
    return StoreError(f"state file {path} {why}; refusing to start (the file was not modified)")


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """One batch of effects as SQL statements and their rows (``ControllerStore.prepare``)."""

    statements: list[tuple[str, Sequence[tuple[object, ...]]]]


class ControllerStore:
    """The controller's SQLite mirror of ``ControllerState``. Thread-safe (one internal lock)."""

    def __init__(self, state_dir: Path, conn: sqlite3.Connection) -> None:
        """Use ``ControllerStore.open``."""
        self.state_dir = state_dir
        self.path = state_dir / DB_FILENAME
        self.bundles_dir = state_dir / BUNDLES_DIRNAME
        self._conn = conn
        self._lock = threading.Lock()
        self._loading = ""
        """The table ``load`` is reading (named in the error a damaged row gives)."""
        self._known_jobs: set[JobId] = set()
        """Jobs whose row (with its request blob) exists: later writes update only mutable columns."""
        row = conn.execute("SELECT COALESCE(MAX(queue_seq), 0), (SELECT COALESCE(MAX(seq), 0) FROM actions)"
                           " FROM tasks").fetchone()
        self._next_queue_seq: int = int(row[0]) + 1
        self._next_action_seq: int = int(row[1]) + 1
        self._actions_since_trim = 0

    # ------------------------------------------------------------------ open / validate / migrate

    @classmethod
    def open(
        cls,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        *,
        fsync_every_commit: bool = False,
        migrations: Sequence[Migration] | None = None,
    ) -> ControllerStore:
        """Open (creating if needed) ``state_dir/controller.sqlite3`` and bring its schema up to date.

        Raises ``StoreError`` without modifying the file when it is not an Iris state database, is
        corrupt, or has a newer schema version than this controller supports.

        ``fsync_every_commit`` selects ``synchronous=FULL`` (survives an OS crash too, at the cost of
        an fsync per batch); the default ``NORMAL`` survives ``kill -9`` of the controller, which is
        what DESIGN §3 asks for. ``migrations`` overrides ``MIGRATIONS`` (tests).
        """
        steps = list(MIGRATIONS if migrations is None else migrations)
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)  # every job's environment, token hashes and logs are in here: private
        path = state_dir / DB_FILENAME
        if path.exists():
            _validate_existing(path, len(steps))
        else:
            leftovers = sorted(name for name in LEFTOVERS if (state_dir / name).exists())
            if leftovers:  # a database lost beside the rest: never a silent fresh start
                raise StoreError(f"state directory {state_dir} has no {DB_FILENAME} but holds a controller's state "
                                 f"({', '.join(leftovers)}): restore the database, or move the directory away to "
                                 "start afresh")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"state file {path}: cannot enable WAL journal mode (got {mode!r})")
            # WAL + synchronous=NORMAL: a commit appends the transaction to the -wal file with write(2)
            # but does not fsync it (fsyncs happen at checkpoints). Once write() returned, the data is in
            # the OS page cache, so a committed batch survives kill -9 of this process — which is the
            # durability DESIGN §3 requires before an RPC is acknowledged. Only an OS crash or power loss
            # can drop the last few commits, and even then the database stays consistent (never torn).
            # FULL would add an fsync per batch (milliseconds each) for that stronger guarantee.
            conn.execute(f"PRAGMA synchronous={'FULL' if fsync_every_commit else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA temp_store=MEMORY")
            _migrate(conn, path, steps)
            store = cls(state_dir, conn)
        except BaseException:
            conn.close()
            raise
        store.bundles_dir.mkdir(mode=0o700, exist_ok=True)
        for private in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                private.chmod(0o600)
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ControllerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ write path

    def write(self, state: ControllerState, effects: Effects) -> None:
        """Persist one batch: ``prepare`` then ``apply`` it (one transaction)."""
        prepared = self.prepare(state, effects)
        if prepared is not None:
            self.apply([prepared])

    def prepare(self, state: ControllerState, effects: Effects) -> PreparedWrite | None:
        """The rows one batch of effects changes: upserts of the dirty jobs, tasks (and their ended
        attempts), workers and endpoints, deletes of removed endpoints and deleted jobs, the
        actions. O(dirty rows); None when nothing changed.

        Call it with the state's lock (or the shell's) held, right after ``drain_effects``, and
        ``apply`` the results in the order they were prepared: the store's counters (queue and
        action sequence numbers, which jobs have rows) advance here.
        """
        if not (
            effects.dirty_jobs
            or effects.dirty_tasks
            or effects.dirty_workers
            or effects.added_endpoints
            or effects.removed_endpoints
            or effects.actions
            or effects.deleted_jobs
            or effects.dirty_tokens
            or effects.dirty_usage
            or effects.dirty_runtimes
            or effects.forgotten_runtimes
            or effects.dirty_uids
        ):
            return None
        new_jobs: list[Job] = []
        job_updates: list[tuple[object, ...]] = []
        for job_id in effects.dirty_jobs:
            job = state.get_job(job_id)
            if job is None:
                continue
            if job_id in self._known_jobs:
                job_updates.append(_job_update(job))
            else:
                new_jobs.append(job)
        # New jobs in submission order, so that load restores list_jobs() and child order.
        new_jobs.sort(key=lambda j: (j.submit_seq, j.submitted_at_ms, j.job_id))
        job_rows = [_job_row(j) for j in new_jobs]

        tasks: list[Task] = []
        queued: set[TaskId] = set()
        for task_id in effects.dirty_tasks:
            task = state.get_task(task_id)
            if task is None:
                continue
            tasks.append(task)
            if task.state == PENDING:
                queued.add(task_id)
        seqs: dict[TaskId, int] = {}
        tail = state.queue_tail(queued) if queued else []
        tasks.sort(key=_task_key)  # key order: the upserts walk the B-tree sequentially
        with self._lock:
            for task_id in tail:
                seqs[task_id] = self._next_queue_seq
                self._next_queue_seq += 1
        task_rows = [_task_row(t, seqs.get(t.task_id)) for t in tasks]
        # Attempts never change once recorded: INSERT OR IGNORE adds only the new ones.
        attempt_rows = [_attempt_row(t, a) for t in tasks for a in t.attempts]

        workers = [w for w in (state.get_worker(wid) for wid in effects.dirty_workers) if w is not None]
        worker_deletes = [(wid,) for wid in sorted(effects.dirty_workers) if state.get_worker(wid) is None]
        workers.sort(key=lambda w: (w.registered_at_ms, w.worker_id))  # new rows in registration order
        worker_rows = [_worker_row(w) for w in workers]

        # Endpoints: the current state decides (an endpoint may be added and removed in one batch).
        endpoint_rows = []
        endpoint_deletes = []
        touched: dict[str, None] = dict.fromkeys(
            [e.endpoint_id for e in effects.added_endpoints] + [e.endpoint_id for e in effects.removed_endpoints]
        )
        for eid in touched:
            e = state.get_endpoint(eid)
            if e is None:
                endpoint_deletes.append((eid,))
            else:
                endpoint_rows.append(_endpoint_row(e))
        deleted = [(job_id,) for job_id in effects.deleted_jobs]
        token_rows = [_token_row(t) for t in (state.get_token(i) for i in sorted(effects.dirty_tokens)) if t is not None]
        usage_rows = [(user, *record) for user in sorted(effects.dirty_usage)
                      if (record := state.shares.ledger.record(user)) is not None]
        runtime_rows = [(*_owner_and_name(key), json.dumps(list(state.runtimes.runs(key))))
                        for key in sorted(effects.dirty_runtimes)]
        runtime_deletes = [_owner_and_name(key) for key in sorted(effects.forgotten_runtimes)]
        uid_rows = [(user, state.uids.uid_of(user)) for user in sorted(effects.dirty_uids)]

        with self._lock:
            action_seq = self._next_action_seq
            action_rows: list[tuple[object, ...]] = []
            for entry in effects.actions:
                action_rows.append((action_seq, entry.timestamp_ms, entry.action, entry.job_id, entry.task_id,
                                    entry.worker_id, entry.details))
                action_seq += 1
            trim = self._actions_since_trim + len(action_rows) >= _ACTION_TRIM_EVERY
            self._next_action_seq = action_seq
            self._actions_since_trim = 0 if trim else self._actions_since_trim + len(action_rows)
            self._known_jobs.update(j.job_id for j in new_jobs)
            self._known_jobs.difference_update(effects.deleted_jobs)
        candidates: list[tuple[str, Sequence[tuple[object, ...]]]] = [
            (JOBS.insert_sql, job_rows),
            (JOBS.update_sql, job_updates),
            (TASKS.insert_sql, task_rows),
            (ATTEMPTS.insert_sql, attempt_rows),
            (WORKERS.insert_sql, worker_rows),
            (WORKERS.delete_sql("worker_id"), worker_deletes),
            (ENDPOINTS.insert_sql, endpoint_rows),
            (ENDPOINTS.delete_sql("endpoint_id"), endpoint_deletes),
            *((statement, deleted) for statement in _DELETE_JOB),
            (ACTIONS.insert_sql, action_rows),
            (TOKENS.insert_sql, token_rows),
            (USAGE.insert_sql, usage_rows),
            (RUNTIMES.insert_sql, runtime_rows),
            ("DELETE FROM runtimes WHERE owner = ? AND name = ?", runtime_deletes),
            (TASK_UIDS.insert_sql, uid_rows),
        ]
        statements = [(sql, rows) for sql, rows in candidates if rows]
        if trim:
            statements.append(("DELETE FROM actions WHERE seq < ?", [(action_seq - ACTION_LOG_KEEP,)]))
        return PreparedWrite(statements)

    def apply(self, writes: Sequence[PreparedWrite]) -> None:
        """Write prepared batches, in order, in one transaction (a group commit: the writes of
        several callers share one BEGIN/COMMIT). Raises StoreError; then nothing of them is written."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for write in writes:
                        for sql, rows in write.statements:
                            conn.executemany(sql, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"failed to write controller state to {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ recovery

    def load(self, *, now_ms: int | None = None) -> ControllerState:
        """Rebuild a ``ControllerState`` from the file: jobs (request, state, error, times, counts
        recomputed from tasks), tasks with their attempts, the child index, workers (their
        ``running_tasks`` and committed resources recomputed from the active tasks), endpoints, the
        pending queue in its order, and the last ``ACTION_LOG_SIZE`` actions.

        Tasks that were RUNNING stay RUNNING, bound to their worker, until the worker reports back or
        its liveness timeout passes. With ``now_ms``, healthy workers are treated as heard from at
        ``now_ms`` (the timeout then counts from the restart, not from before the outage).
        """
        with self._lock:
            self._loading = ""
            try:
                return self._load(now_ms)
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"state file {self.path} could not be read: {exc}; refusing to start "
                    "(the file was not modified)"
                ) from exc
            except StoreError:
                raise
            except Exception as exc:  # a row that decodes to nonsense: name where, never a traceback
                raise StoreError(
                    f"state file {self.path}: a damaged row in table {self._loading or '?'} "
                    f"({type(exc).__name__}: {str(exc)[:200]}); refusing to start (the file was not modified)"
                ) from exc

    def _load(self, now_ms: int | None) -> ControllerState:
        conn = self._conn
        state = ControllerState()

        jobs: dict[JobId, Job] = {}
        self._loading = "jobs"
        for (job_id, parent_job_id, request_bytes, submitted_at_ms, jstate, error, started_at_ms,
             finished_at_ms, pending_reason, first_failure, owner, uid) in conn.execute(JOBS.select_sql):
            request = cluster_pb2.Controller.LaunchJobRequest.FromString(request_bytes)
            if parent_job_id and request.parent_job_id != parent_job_id:
                request.parent_job_id = parent_job_id  # renamed with its owner's prefix (v9)
            job = Job(JobId(job_id), request, submitted_at_ms, JobId(parent_job_id) if parent_job_id else None,
                      owner=owner, uid=uid)
            job.state = jstate
            job.error = error
            job.started_at_ms = started_at_ms
            job.finished_at_ms = finished_at_ms
            job.pending_reason = pending_reason
            job.first_failure = first_failure
            jobs[job.job_id] = job

        tasks: dict[str, Task] = {}
        tasks_by_job: dict[str, list[Task]] = {job_id: [] for job_id in jobs}
        queue: list[tuple[int, TaskId]] = []
        unordered_pending: list[Task] = []
        self._loading = "tasks"
        for (task_id, job_id, task_index, tstate, worker_id, failure_count, preemption_count,
             max_retries_failure, max_retries_preemption, current_attempt_id, submitted_at_ms,
             pending_since_ms, started_at_ms, finished_at_ms, error, exit_code, queue_seq, not_before_ms) in conn.execute(
                TASKS.select_sql):
            job_tasks = tasks_by_job.get(job_id)
            if job_tasks is None:
                raise StoreError(f"state file {self.path}: task {task_id} belongs to unknown job {job_id}; "
                                 "refusing to start (the file was not modified)")
            # Positional (field order of Task), measurably faster than keywords at 100k tasks.
            task = Task(task_id, job_id, task_index, tstate, worker_id, failure_count, preemption_count,
                        max_retries_failure, max_retries_preemption, current_attempt_id, [], submitted_at_ms,
                        pending_since_ms, started_at_ms, finished_at_ms, error, exit_code)
            task.not_before_ms = not_before_ms
            tasks[task_id] = task
            job_tasks.append(task)
            if tstate == PENDING:
                if queue_seq is None:
                    unordered_pending.append(task)
                else:
                    queue.append((queue_seq, task_id))

        self._loading = "attempts"
        for (task_id, attempt_id, worker_id, astate, started_at_ms, finished_at_ms, exit_code, error,
             is_worker_failure, charged_to, decided_by, band) in conn.execute(ATTEMPTS.select_sql):
            owner = tasks.get(task_id)
            if owner is None:
                continue
            if not charged_to and astate != PENDING and astate != cluster_pb2.TASK_STATE_SUCCEEDED:
                # Written before v4: what the budgets were then.
                charged_to = "preemption" if is_worker_failure else "failure" if astate == cluster_pb2.TASK_STATE_FAILED \
                    else "none"
            owner.attempts.append(
                TaskAttempt(attempt_id, worker_id, astate, started_at_ms, finished_at_ms, exit_code, error,
                            bool(is_worker_failure), charged_to, decided_by, band)
            )

        for job_id, job in jobs.items():
            job_tasks = tasks_by_job[job_id]
            job_tasks.sort(key=lambda t: t.task_index)
            counts = job.counts
            for t in job_tasks:
                counts[t.state] += 1
            job.num_tasks = len(job_tasks)
            state.restore_job(job, job_tasks)
        state.order_finished_roots()

        workers: dict[str, ControllerWorker] = {}
        self._loading = "workers"
        for (worker_id, address, metadata, healthy, consecutive_failures, last_heartbeat_ms,
             registered_at_ms, incarnation, draining) in conn.execute(WORKERS.select_sql):
            worker = ControllerWorker(
                worker_id=WorkerId(worker_id),
                address=address,
                metadata=WorkerMetadata.from_proto(cluster_pb2.WorkerMetadata.FromString(metadata)),
                healthy=bool(healthy),
                consecutive_failures=consecutive_failures,
                last_heartbeat_ms=now_ms if now_ms is not None and healthy else last_heartbeat_ms,
                registered_at_ms=registered_at_ms,
                incarnation=incarnation,
                draining=bool(draining),
            )
            workers[worker_id] = worker

        # Rebind active tasks to their workers: running_tasks and committed resources are derived.
        for task in tasks.values():
            if task.state not in ACTIVE_TASK_STATES:
                continue
            bound = workers.get(task.worker_id) if task.worker_id is not None else None
            if bound is None:
                raise StoreError(f"state file {self.path}: task {task.task_id} runs on unknown worker "
                                 f"{task.worker_id}; refusing to start (the file was not modified)")
            job = jobs[task.job_id]
            bound.running_tasks.add(task.task_id)
            bound.hold(job.task_resources)
        for worker in workers.values():
            state.add_worker(worker)

        queue.sort()
        unordered_pending.sort(key=lambda t: (t.pending_since_ms, t.job_id, t.task_index))
        state.restore_queue([task_id for _, task_id in queue] + [t.task_id for t in unordered_pending])

        self._loading = "endpoints"
        for (endpoint_id, name, address, job_id, metadata, task_id, attempt_id) in conn.execute(
                ENDPOINTS.select_sql):
            state.restore_endpoint(
                ControllerEndpoint(endpoint_id, name, address, JobId(job_id), dict(json.loads(metadata)),
                                   TaskId(task_id) if task_id is not None else None, attempt_id)
            )

        self._loading = "tokens"
        for (token_id, token_hash, name, role, created_at_ms, revoked_at_ms, max_priority) in conn.execute(
                TOKENS.select_sql):
            state.restore_token(TokenRecord(token_id, token_hash, name, Role(role), created_at_ms, revoked_at_ms,
                                            max_priority))

        self._loading = "usage"
        for (user, value, as_of_ms) in conn.execute(USAGE.select_sql):
            state.restore_usage(str(user), float(value), int(as_of_ms))

        self._loading = "runtimes"
        for (owner, name, runs) in conn.execute(RUNTIMES.select_sql):
            state.runtimes.restore(root_job_id(str(owner), str(name)), tuple(int(r) for r in json.loads(runs)))

        self._loading = "task_uids"
        for (user, uid) in conn.execute(TASK_UIDS.select_sql):
            state.uids.restore(str(user), int(uid))

        self._loading = "actions"
        rows = conn.execute(f"{ACTIONS.select_sql} DESC LIMIT ?", (ACTION_LOG_SIZE,)).fetchall()
        state.restore_actions(ActionLogEntry(*row[1:]) for row in reversed(rows))

        state.drain_effects()  # add_worker marked the workers dirty: nothing here is new
        self._known_jobs = set(jobs)
        return state

    # ------------------------------------------------------------------ results

    def put_result(self, task_id: str, attempt_id: int, data: bytes) -> None:
        """Keep a task's result (replacing an earlier attempt's), durably, before its success is
        committed: whoever sees the task SUCCEEDED can read its result."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO results (task_id, attempt_id, data) VALUES (?, ?, ?)",
                               (task_id, attempt_id, data))
            self._conn.commit()

    def get_result(self, task_id: str) -> tuple[int, bytes] | None:
        with self._lock:
            row = self._conn.execute("SELECT attempt_id, data FROM results WHERE task_id = ?", (task_id,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row is not None else None

    # ------------------------------------------------------------------ bundles

    def put_bundle(self, blob: bytes) -> str:
        """Store a workspace bundle under its sha256 (hex) and return the hash. Idempotent; the file
        appears atomically (temp file, fsync, rename)."""
        digest = hashlib.sha256(blob).hexdigest()
        path = self.bundles_dir / f"{digest}.zip"
        if path.exists():
            return digest
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".tmp", dir=self.bundles_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return digest

    def delete_bundle(self, bundle_hash: str) -> None:
        """Remove a bundle no job uses any more (its last job was deleted)."""
        if BUNDLE_HASH_RE.fullmatch(bundle_hash):
            with contextlib.suppress(FileNotFoundError):
                (self.bundles_dir / f"{bundle_hash}.zip").unlink()

    def delete_results(self, task_ids: Iterable[str]) -> None:
        """Nothing to do: deleting a job deletes its results rows in the same transaction."""

    def get_bundle(self, bundle_hash: str) -> bytes | None:
        """The bundle stored under ``bundle_hash``, or None (also for a malformed hash)."""
        if not BUNDLE_HASH_RE.fullmatch(bundle_hash):
            return None
        try:
            return (self.bundles_dir / f"{bundle_hash}.zip").read_bytes()
        except FileNotFoundError:
            return None



def _validate_existing(path: Path, supported_version: int) -> None:
    """Check an existing state file through a read-only connection; raise StoreError, never write."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read state file {path}: {exc}") from exc
    if size == 0:
        raise _refuse(path, "is empty, not an Iris state database (a fresh state dir has no file at all)")
    if header != _SQLITE_MAGIC:
        raise _refuse(path, "is not a valid Iris state database: not an SQLite file (bad header)")
    sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    existed = [p.exists() for p in sidecars]
    try:
        _check_readonly(path, supported_version)
    except StoreError:
        # A read-only connection to a WAL database may create empty -wal/-shm files: remove the ones
        # this check created, so a refused state dir is left exactly as it was found.
        for sidecar, was_there in zip(sidecars, existed, strict=True):
            if not was_there:
                with contextlib.suppress(OSError):
                    sidecar.unlink()
        raise


def _check_readonly(path: Path, supported_version: int) -> None:
    try:
        ro = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise _refuse(path, f"is not a valid Iris state database: {exc}") from exc
    try:
        version = int(ro.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(ro.execute("PRAGMA application_id").fetchone()[0])
        if version > supported_version:
            raise _refuse(
                path, f"has schema version {version} but this controller supports up to {supported_version}"
            )
        has_tables = ro.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if has_tables and app_id != APPLICATION_ID:
            raise _refuse(path, f"is not a valid Iris state database: foreign SQLite file (application_id={app_id})")
        problems = [str(r[0]) for r in ro.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise _refuse(path, f"is not a valid Iris state database: corrupt ({'; '.join(problems)})")
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, f"is not a valid Iris state database: {exc}") from exc
    finally:
        ro.close()


def _migrate(conn: sqlite3.Connection, path: Path, steps: Sequence[Migration]) -> None:
    """Apply the missing forward migrations, each in its own transaction with its version bump."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(steps):  # re-checked on the writable connection, still before any write
        raise _refuse(path, f"has schema version {version} but this controller supports up to {len(steps)}")
    for target in range(version + 1, len(steps) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in steps[target - 1]:
                conn.execute(statement)
            if target == 1:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"state file {path}: migration to schema version {target} failed: {exc}") from exc
            raise
        if version > 0:
            logger.info("migrated %s to schema version %d", path, target)


__all__ = [
    "ACTION_LOG_KEEP",
    "APPLICATION_ID",
    "DB_FILENAME",
    "DEFAULT_STATE_DIR",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ControllerStore",
    "Migration",
    "TABLES",
    "Table",
    "StoreError",
]
