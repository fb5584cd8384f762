"""ControllerStore: SQLite (WAL) mirror of the controller state (DESIGN §3 "Durability").

Real SQLite files in tmp_path: a state built by a mix of submit / dispatch / retry / success /
failure domain / endpoints / worker death is written batch by batch, loaded into a fresh state and
compared field by field; a loaded state keeps working; bad files are refused untouched; forward
migrations; acknowledged jobs survive SIGKILL of the writing process.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from iris.cluster.controller.job import Job
from iris.cluster.controller.state import ControllerEndpoint, ControllerState, ControllerWorker
from iris.cluster.controller.store import (
    ACTION_LOG_KEEP,
    DB_FILENAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    ControllerStore,
    StoreError,
)
from iris.cluster.types import JobId, TaskId, WorkerId
from iris.rpc import cluster_pb2

from .builders import NOW, add_worker, dispatch, make_request, submit

T = cluster_pb2


def persist(state: ControllerState, store: ControllerStore) -> None:
    """What the shell does after each batch: drain the effects and write them."""
    store.write(state, state.drain_effects())


def reload(state_dir: Path, **kwargs: object) -> ControllerState:
    with ControllerStore.open(state_dir) as store:
        loaded = store.load(**kwargs)  # type: ignore[arg-type]
    loaded.check_invariants()
    return loaded


def job_fields(job: Job) -> dict[str, object]:
    """Every field but caches derived from the spec on first use (``requirements``)."""
    return {name: getattr(job, name) for name in Job.__slots__ if name != "_requirements"}


def worker_fields(w: ControllerWorker) -> tuple[object, ...]:
    return (
        w.worker_id, w.address, w.metadata, w.healthy, w.consecutive_failures, w.last_heartbeat_ms,
        w.registered_at_ms, sorted(w.running_tasks), w.incarnation, w.committed_cpu, w.committed_memory,
        w.committed_disk, w.committed_devices,
    )


def assert_same_state(a: ControllerState, b: ControllerState) -> None:
    assert [j.job_id for j in a.list_jobs()] == [j.job_id for j in b.list_jobs()]
    for job in a.list_jobs():
        other = b.get_job(job.job_id)
        assert other is not None
        assert job_fields(job) == job_fields(other), job.job_id
        assert a.get_job_tasks(job.job_id) == b.get_job_tasks(job.job_id)  # dataclass eq: every field, attempts
        assert a.get_child_jobs(job.job_id) == b.get_child_jobs(job.job_id)
    assert a.queue_order() == b.queue_order()
    assert [worker_fields(w) for w in a.list_workers()] == [worker_fields(w) for w in b.list_workers()]
    assert a.list_endpoints() == b.list_endpoints()
    assert a.recent_actions(limit=10_000) == b.recent_actions(limit=10_000)


def endpoint(eid: str, name: str, job_id: str, attempt_id: int = 0) -> ControllerEndpoint:
    return ControllerEndpoint(eid, name, f"127.0.0.1:{len(eid) + 8000}", JobId(job_id),
                              metadata={"role": name, "k": "v"}, attempt_id=attempt_id)


def build_mixed_state(store: ControllerStore) -> ControllerState:
    """Every kind of change the core makes, persisted batch by batch."""
    state = ControllerState()
    add_worker(state, "w1", cpu=8, now_ms=NOW)
    add_worker(state, "w2", cpu=8, now_ms=NOW + 1)
    add_worker(state, "w3", cpu=8, gpus=2, now_ms=NOW + 2)
    persist(state, store)

    # Job a: one task fails once and is retried (to the back of the queue), one succeeds.
    a, at = submit(state, "a", replicas=4, cpu=2, memory="2GiB", max_retries_failure=1)
    persist(state, store)
    dispatch(state, at[0], "w1", NOW + 10)
    dispatch(state, at[1], "w2", NOW + 10)
    persist(state, store)
    state.apply_report(WorkerId("w1"), at[0].task_id, 0, T.TASK_STATE_FAILED, NOW + 20, exit_code=3, error="boom")
    state.apply_report(WorkerId("w2"), at[1].task_id, 0, T.TASK_STATE_SUCCEEDED, NOW + 21, exit_code=0)
    persist(state, store)

    # Job b: a failure trips the failure domain (siblings KILLED, endpoint removed).
    b, bt = submit(state, "b", now_ms=NOW + 30, replicas=3, max_task_failures=0)
    dispatch(state, bt[0], "w1", NOW + 31)
    dispatch(state, bt[1], "w2", NOW + 31)
    assert state.add_endpoint(endpoint("eb", "svc/b", "b"), bt[1].task_id)
    persist(state, store)
    state.apply_report(WorkerId("w1"), bt[0].task_id, 0, T.TASK_STATE_FAILED, NOW + 40, exit_code=1, error="bad")
    assert b.state == T.JOB_STATE_FAILED
    persist(state, store)

    # Job svc: running tasks with endpoints, one added and removed within the same batch.
    _, st = submit(state, "svc", now_ms=NOW + 50, replicas=2, gpus=1)
    persist(state, store)
    dispatch(state, st[0], "w3", NOW + 51)
    dispatch(state, st[1], "w3", NOW + 51)
    state.apply_report(WorkerId("w3"), st[1].task_id, 0, T.TASK_STATE_BUILDING, NOW + 52)
    assert state.add_endpoint(endpoint("e1", "svc/main", "svc"), st[0].task_id)
    assert state.add_endpoint(endpoint("e2", "svc/aux", "svc"), st[1].task_id)
    assert state.add_endpoint(endpoint("e3", "svc/tmp", "svc"), st[1].task_id)
    assert state.remove_endpoint("e3") is not None
    persist(state, store)

    # Parent and child; the parent's task runs on w2, which dies: a preemption, retried.
    _, pt = submit(state, "parent", now_ms=NOW + 60)
    submit(state, "child", now_ms=NOW + 61, replicas=2, parent_job_id="parent")
    persist(state, store)
    dispatch(state, pt[0], "w2", NOW + 62)
    persist(state, store)
    assert state.mark_worker_dead(WorkerId("w2"), NOW + 70) == [pt[0].task_id]
    state.set_pending_reasons({JobId("child"): "no worker has 64 cpus"})
    state.get_job(JobId("parent/child")).pending_reason = "waiting"  # type: ignore[union-attr]
    effects = state.drain_effects()
    effects.dirty_jobs.add(JobId("parent/child"))  # pending reasons do not dirty jobs; the shell may
    store.write(state, effects)

    # Two retries in one batch keep the order they happened in.
    dispatch(state, at[2], "w1", NOW + 80)
    dispatch(state, at[3], "w1", NOW + 80)
    persist(state, store)
    state.apply_report(WorkerId("w1"), at[3].task_id, 0, T.TASK_STATE_FAILED, NOW + 81, error="x")
    state.apply_report(WorkerId("w1"), at[2].task_id, 0, T.TASK_STATE_FAILED, NOW + 81, error="y")
    persist(state, store)
    state.check_invariants()
    return state


def test_round_trip_of_a_mixed_state_restores_every_field(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = build_mixed_state(store)
    loaded = reload(tmp_path)
    assert_same_state(state, loaded)
    # Spot checks of what the comparison covers.
    assert loaded.queue_order() == [
        TaskId("a/task-0"), TaskId("parent/child/task-0"), TaskId("parent/child/task-1"),
        TaskId("parent/task-0"), TaskId("a/task-3"), TaskId("a/task-2"),
    ]
    w1 = loaded.get_worker(WorkerId("w1"))
    w3 = loaded.get_worker(WorkerId("w3"))
    assert w1 is not None and w3 is not None
    assert w1.running_tasks == set()
    assert w3.running_tasks == {TaskId("svc/task-0"), TaskId("svc/task-1")}
    assert (w3.committed_cpu, w3.committed_devices) == (2000, 2)
    assert not loaded.get_worker(WorkerId("w2")).healthy  # type: ignore[union-attr]
    assert [e.endpoint_id for e in loaded.list_endpoints()] == ["e2", "e1"]
    assert loaded.get_job(JobId("b")).state == T.JOB_STATE_FAILED  # type: ignore[union-attr]
    assert loaded.get_job(JobId("parent/child")).pending_reason == "waiting"  # type: ignore[union-attr]
    assert loaded.get_child_jobs(JobId("parent")) == [JobId("parent/child")]
    task_a0 = loaded.get_task(TaskId("a/task-0"))
    assert task_a0 is not None and task_a0.current_attempt_id == 1 and task_a0.failure_count == 1
    assert [(x.state, x.exit_code, x.error) for x in task_a0.attempts] == [(T.TASK_STATE_FAILED, 3, "boom")]
    assert loaded.drain_effects().is_empty()


def test_loaded_state_keeps_working_and_later_writes_extend_the_file(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        build_mixed_state(store)
    with ControllerStore.open(tmp_path) as store:
        state = store.load()
        # The svc tasks are still RUNNING on w3; finish them and the job SUCCEEDS.
        for tid in ("svc/task-0", "svc/task-1"):
            assert state.apply_report(WorkerId("w3"), TaskId(tid), 0, T.TASK_STATE_SUCCEEDED, NOW + 100)
        assert state.get_job(JobId("svc")).state == T.JOB_STATE_SUCCEEDED  # type: ignore[union-attr]
        assert state.list_endpoints() == []
        persist(state, store)
        # Drive job a to the end on w1: its queued tasks in order, then report success.
        for task in [t for t in state.peek_pending_tasks() if t.job_id == "a"]:
            dispatch(state, task, "w1", NOW + 110)
            persist(state, store)
            assert state.apply_report(WorkerId("w1"), task.task_id, task.current_attempt_id,
                                      T.TASK_STATE_SUCCEEDED, NOW + 120)
            persist(state, store)
        job_a = state.get_job(JobId("a"))
        assert job_a is not None and job_a.state == T.JOB_STATE_SUCCEEDED
        # A new retry after the restart goes to the back of the (reloaded) queue.
        add_worker(state, "w4", now_ms=NOW + 130)
        ptask = state.get_task(TaskId("parent/task-0"))
        assert ptask is not None
        dispatch(state, ptask, "w4", NOW + 131)
        persist(state, store)
        state.apply_report(WorkerId("w4"), ptask.task_id, 1, T.TASK_STATE_KILLED, NOW + 132)
        persist(state, store)
        state.check_invariants()
    loaded = reload(tmp_path)
    assert_same_state(state, loaded)
    assert loaded.queue_order()[-1] == "parent/task-0"


def test_submit_order_of_tasks_is_the_queue_order_after_load(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        submit(state, "big", replicas=25)  # ids sort as text differently from index order
        submit(state, "next", replicas=3)
        persist(state, store)  # two jobs in one batch
    loaded = reload(tmp_path)
    assert loaded.queue_order() == state.queue_order()
    assert [j.job_id for j in loaded.list_jobs()] == ["big", "next"]


def test_load_now_ms_restarts_liveness_clock_of_healthy_workers(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        add_worker(state, "w1", now_ms=NOW)
        add_worker(state, "w2", now_ms=NOW)
        state.mark_worker_dead(WorkerId("w2"), NOW + 1)
        persist(state, store)
    loaded = reload(tmp_path, now_ms=NOW + 999_999)
    assert loaded.get_worker(WorkerId("w1")).last_heartbeat_ms == NOW + 999_999  # type: ignore[union-attr]
    assert loaded.get_worker(WorkerId("w2")).last_heartbeat_ms == NOW  # type: ignore[union-attr]


def test_a_forgotten_worker_is_deleted_from_the_store(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        add_worker(state, "w1", now_ms=NOW)
        add_worker(state, "w2", now_ms=NOW)
        persist(state, store)
        state.mark_worker_dead(WorkerId("w2"), NOW + 1)
        assert state.remove_worker(WorkerId("w2")) and not state.remove_worker(WorkerId("w1"))  # w1 is alive
        persist(state, store)
    loaded = reload(tmp_path, now_ms=NOW + 5)
    assert loaded.get_worker(WorkerId("w2")) is None and loaded.get_worker(WorkerId("w1")) is not None


def test_action_log_is_bounded_and_the_last_entries_are_loaded(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        for i in range(6000):
            state.log_action("tick", now_ms=i, details=str(i))
            if i % 7 == 0:
                persist(state, store)
        persist(state, store)
        count = sqlite3.connect(store.path).execute("SELECT count(*) FROM actions").fetchone()[0]
        assert count <= ACTION_LOG_KEEP + 1024
    loaded = reload(tmp_path)
    assert loaded.recent_actions(limit=10_000) == state.recent_actions(limit=10_000)
    assert loaded.recent_actions(limit=1)[0].details == "5999"


def test_empty_effects_write_nothing(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        persist(state, store)
    assert reload(tmp_path).list_jobs() == []


# ---------------------------------------------------------------------------- refusing bad files


def _snapshot(path: Path) -> bytes:
    return path.read_bytes()


def test_newer_schema_version_is_refused_and_the_file_is_untouched(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        submit(state, "a")
        persist(state, store)
    db = tmp_path / DB_FILENAME
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = _snapshot(db)
    files = sorted(os.listdir(tmp_path))
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1} but this controller supports up to "
                                         rf"{SCHEMA_VERSION}"):
        ControllerStore.open(tmp_path)
    assert _snapshot(db) == before
    assert sorted(os.listdir(tmp_path)) == files  # no -wal/-shm left behind either
    with pytest.raises(StoreError, match="was not modified"):
        ControllerStore.open(tmp_path)


@pytest.mark.parametrize("kind", ["random", "truncated", "zeroed_page", "foreign"])
def test_corrupt_or_foreign_file_is_refused_and_left_untouched(tmp_path: Path, kind: str) -> None:
    db = tmp_path / DB_FILENAME
    if kind == "random":
        db.write_bytes(os.urandom(20_000))
    elif kind == "foreign":
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
    else:
        with ControllerStore.open(tmp_path) as store:
            state = ControllerState()
            add_worker(state)
            submit(state, "a", replicas=2000)
            persist(state, store)
        data = db.read_bytes()
        assert len(data) > 64 * 1024
        if kind == "truncated":
            db.write_bytes(data[: len(data) // 2])
        else:
            db.write_bytes(data[:8192] + b"\x00" * 4096 + data[12288:])
    before = _snapshot(db)
    files = sorted(os.listdir(tmp_path))
    with pytest.raises(StoreError, match="is not a valid Iris state database") as info:
        ControllerStore.open(tmp_path)
    assert "refusing to start (the file was not modified)" in str(info.value)
    assert _snapshot(db) == before
    assert sorted(os.listdir(tmp_path)) == files


def test_empty_state_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A zero-byte file is not an empty cluster: it may be a truncated state (a full disk, a bad copy)."""
    (tmp_path / DB_FILENAME).write_bytes(b"")
    with pytest.raises(StoreError, match="is empty, not an Iris state database") as info:
        ControllerStore.open(tmp_path)
    assert "refusing to start (the file was not modified)" in str(info.value)
    assert (tmp_path / DB_FILENAME).read_bytes() == b""
    assert sorted(os.listdir(tmp_path)) == [DB_FILENAME]


# ---------------------------------------------------------------------------- migrations


def test_fresh_file_gets_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path / "nested" / "dir") as store:
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        conn = sqlite3.connect(store.path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with ControllerStore.open(tmp_path / "strict", fsync_every_commit=True) as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_forward_migration_from_an_older_version_keeps_the_data(tmp_path: Path) -> None:
    # The file was written by a controller at schema v1: its rows, in v1's columns...
    with ControllerStore.open(tmp_path, migrations=MIGRATIONS[:1]) as store:
        request = make_request("a", max_retries_failure=1).SerializeToString()
        conn = sqlite3.connect(store.path)
        conn.execute("INSERT INTO jobs VALUES ('a', NULL, ?, 1000, 1, NULL, NULL, NULL, '', NULL)", (request,))
        conn.execute("INSERT INTO tasks VALUES ('a/task-0', 'a', 0, 1, NULL, 0, 0, 1, 100, 0, 1000, 1000, NULL, NULL,"
                     " NULL, NULL, 1)")
        conn.commit()
        conn.close()
    # ...opened by this controller (v2: the tasks-by-job index; v3: owners and tokens) plus a step
    # of a future version.
    later_step = ("ALTER TABLE jobs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",)
    steps = [*MIGRATIONS, later_step]
    with ControllerStore.open(tmp_path, migrations=steps) as store:
        assert store.schema_version == len(MIGRATIONS) + 1
        loaded = store.load()
        loaded.check_invariants()
        job = loaded.get_job(JobId("a"))
        assert job is not None and job.owner == "" and job.max_retries_failure == 1
        assert [t.task_id for t in loaded.peek_pending_tasks()] == ["a/task-0"]
        conn = sqlite3.connect(store.path)
        assert conn.execute("SELECT labels FROM jobs").fetchall() == [("{}",)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "tasks_by_job" in indexes
        plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN SELECT task_id FROM tasks WHERE job_id = 'a'"))
        assert "tasks_by_job" in plan
        conn.close()
        # Opening again at the newest version applies nothing more.
    with ControllerStore.open(tmp_path, migrations=steps) as store:
        assert store.schema_version == len(MIGRATIONS) + 1
    # This controller now refuses the (newer) file.
    with pytest.raises(StoreError, match="supports up to"):
        ControllerStore.open(tmp_path)


def test_migration_from_version_zero_file(tmp_path: Path) -> None:
    """A v0 file (a valid, empty SQLite database, e.g. created by a fake older tool) gets v0 -> v1."""
    db = tmp_path / DB_FILENAME
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 0")
    conn.execute("VACUUM")  # materialise the header
    conn.close()
    with ControllerStore.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.load().list_jobs() == []


def test_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        pass
    bad = [*MIGRATIONS, ("CREATE TABLE extra (x)", "THIS IS NOT SQL")]
    with pytest.raises(StoreError, match=f"migration to schema version {SCHEMA_VERSION + 1} failed"):
        ControllerStore.open(tmp_path, migrations=bad)
    with ControllerStore.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        tables = {r[0] for r in sqlite3.connect(store.path).execute("SELECT name FROM sqlite_master")}
        assert "extra" not in tables


# ---------------------------------------------------------------------------- bundles


def test_bundles_are_content_addressed_atomic_and_idempotent(tmp_path: Path) -> None:
    import hashlib

    with ControllerStore.open(tmp_path) as store:
        blob = b"PK\x03\x04" + os.urandom(1000)
        digest = store.put_bundle(blob)
        assert digest == hashlib.sha256(blob).hexdigest()
        assert store.put_bundle(blob) == digest
        assert store.get_bundle(digest) == blob
        assert store.get_bundle(digest) is not None
        assert store.get_bundle("0" * 64) is None
        assert store.get_bundle("../controller.sqlite3") is None
        assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == [f"{digest}.zip"]


# ---------------------------------------------------------------------------- kill -9


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from iris.cluster.controller.job import Job, expand_job_to_tasks
    from iris.cluster.controller.state import ControllerState
    from iris.cluster.controller.store import ControllerStore
    from iris.cluster.types import JobId
    from iris.rpc import cluster_pb2

    store = ControllerStore.open(Path(sys.argv[1]))
    state = store.load()
    i = 0
    while True:
        name = f"job-{i}"
        request = cluster_pb2.Controller.LaunchJobRequest(name=name)
        request.resources.replicas = 3
        request.resources.cpu = 1
        job = Job(JobId(name), request, 1000 + i)
        state.add_job(job, expand_job_to_tasks(job, 1000 + i))
        store.write(state, state.drain_effects())
        print(name, flush=True)  # acknowledged: the write returned
        i += 1
    """
)


def test_acknowledged_jobs_survive_sigkill_of_the_writer(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        proc.send_signal(signal.SIGKILL)  # mid-stream: the writer is still looping
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    acknowledged += [x for x in rest.split() if x]
    assert proc.returncode == -signal.SIGKILL, err
    assert len(acknowledged) >= 200, err
    loaded = reload(tmp_path)
    present = {j.job_id for j in loaded.list_jobs()}
    missing = [j for j in acknowledged if j not in present]
    assert missing == []
    for job_id in acknowledged:
        assert len(loaded.get_job_tasks(JobId(job_id))) == 3
    assert len(loaded.queue_order()) == 3 * len(present)


def test_store_declared_tables_match_the_migrated_schema(tmp_path: Path) -> None:
    """Every statement is generated from ``TABLES``: the declarations must be the real schema."""
    with ControllerStore.open(tmp_path) as store:
        conn = sqlite3.connect(store.path)
        for table in TABLES:
            columns = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table.name})"))
            assert columns == table.columns, table.name
            key = tuple(r[1] for r in sorted((r for r in conn.execute(f"PRAGMA table_info({table.name})") if r[5]),
                                              key=lambda r: r[5]))
            assert key == table.key, table.name
            for index, cols in table.indexes:
                assert tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index})")) == cols
        conn.close()


def test_store_deleted_job_leaves_no_row_and_does_not_come_back(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        add_worker(state)
        parent, (ptask,) = submit(state, "parent", max_retries_failure=1)
        child, _ = submit(state, "child", parent_job_id="parent")
        keep, _ = submit(state, "keep")
        dispatch(state, ptask)
        state.transition_task(ptask.task_id, T.TASK_STATE_FAILED, NOW, error="boom")  # retried: an attempt row
        store.put_result("parent/task-0", 1, b"kept")
        store.put_result("keep/task-0", 0, b"other")
        persist(state, store)
        state.terminate_job(parent.job_id, NOW)
        persist(state, store)
        assert state.delete_job(JobId("parent")) == [JobId("parent/child"), JobId("parent")]
        persist(state, store)
        conn = sqlite3.connect(store.path)
        for table in ("jobs", "tasks", "attempts", "endpoints", "results"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            assert all("parent" not in str(row[:2]) for row in rows), (table, rows)
        conn.close()
        loaded = store.load()
        loaded.check_invariants()
        assert [j.job_id for j in loaded.list_jobs()] == ["keep"]
        assert store.get_result("keep/task-0") == (0, b"other") and store.get_result("parent/task-0") is None
        # The name can be used again.
        submit(loaded, "parent")
        persist(loaded, store)
        assert [j.job_id for j in store.load().list_jobs()] == ["keep", "parent"]


def test_store_tokens_and_owners_survive_a_restart_hashed_only(tmp_path: Path) -> None:
    from iris.cluster.auth import Role, TokenRecord, hash_token

    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        state.add_token(TokenRecord("t1", hash_token("iris_secret-one"), "alice", Role.USER, NOW))
        state.add_token(TokenRecord("t2", hash_token("iris_secret-two"), "root", Role.ADMIN, NOW))
        job = Job(JobId("owned"), make_request("owned"), NOW, owner="alice")
        state.add_job(job)
        persist(state, store)
        state.revoke_token("t1", NOW + 5)
        persist(state, store)
        raw = store.path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("*-wal"))
        assert b"iris_secret-one" not in raw and b"iris_secret-two" not in raw
        loaded = store.load()
    alice = loaded.token_by_hash(hash_token("iris_secret-one"))
    assert alice is not None and alice.revoked and alice.revoked_at_ms == NOW + 5 and alice.role is Role.USER
    root = loaded.token_by_hash(hash_token("iris_secret-two"))
    assert root is not None and not root.revoked and root.role is Role.ADMIN
    owned = loaded.get_job(JobId("owned"))
    assert owned is not None and owned.owner == "alice"


def test_the_state_directory_is_private_and_a_lost_database_is_refused(tmp_path: Path) -> None:
    """Issue 23 items 8 and 9: the state directory is 0700 and the database 0600 (it holds every
    job's environment); a directory that kept its other files but lost its database is refused,
    never started afresh with 0 jobs and a new admin token."""
    import stat as st

    state_dir = tmp_path / "state"
    with ControllerStore.open(state_dir) as store:
        state = ControllerState()
        submit(state, "a")
        persist(state, store)
        for path in (state_dir, state_dir / DB_FILENAME, state_dir / (DB_FILENAME + "-wal"), state_dir / "bundles"):
            assert st.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    (state_dir / "admin.token").write_text("x")
    (state_dir / DB_FILENAME).unlink()
    with pytest.raises(StoreError, match=r"has no controller.sqlite3 but holds a controller's state \(admin.token, "
                                         r"bundles\)"):
        ControllerStore.open(state_dir)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    ControllerStore.open(fresh).close()  # an empty directory is a fresh start


def test_a_damaged_row_is_an_error_naming_its_table_never_a_traceback(tmp_path: Path) -> None:
    with ControllerStore.open(tmp_path) as store:
        state = ControllerState()
        submit(state, "a")
        persist(state, store)
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.execute("UPDATE jobs SET request = ?", (b"\xff\xfe not a protobuf",))
    conn.commit()
    conn.close()
    with ControllerStore.open(tmp_path) as store, pytest.raises(StoreError, match="a damaged row in table jobs"):
        store.load()


def test_migration_gives_owned_jobs_their_owners_prefix(tmp_path: Path) -> None:
    """Issue 24 item 5: a v8 file's job names were one namespace; from v9 a root job's id is
    '<owner>:<name>', and its children's, tasks', attempts', results' and endpoints' ids follow."""
    with ControllerStore.open(tmp_path, migrations=MIGRATIONS[:8]) as store:
        state = ControllerState()
        add_worker(state, "w1", cpu=4)
        submit(state, "train", owner="alice", replicas=2)
        submit(state, "child", owner="alice", parent_job_id="train")
        submit(state, "old", owner="")  # from before owners: stays as it was
        dispatch(state, TaskId("train/task-0"), "w1")
        state.add_endpoint(ControllerEndpoint("e1", "svc", "10.0.0.1:80", JobId("train"), task_id=TaskId("train/task-0")),
                           TaskId("train/task-0"))
        effects = state.drain_effects()
        effects.dirty_uids.clear()  # a v8 file has no task_uids table (v11)
        store.write(state, effects)
        store.put_result("train/task-1", 0, b"r")
    with ControllerStore.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        loaded = store.load()
        loaded.check_invariants()
    assert sorted(j.job_id for j in loaded.list_jobs()) == ["alice:train", "alice:train/child", "old"]
    child = loaded.get_job(JobId("alice:train/child"))
    assert child is not None and child.parent_job_id == "alice:train" and child.spec.parent_job_id == "alice:train"
    assert loaded.get_child_jobs(JobId("alice:train")) == ["alice:train/child"]
    running = loaded.get_task(TaskId("alice:train/task-0"))
    assert running is not None and running.worker_id == "w1"
    assert [e.task_id for e in loaded.lookup_endpoints("alice:svc")] == ["alice:train/task-0"]
    with ControllerStore.open(tmp_path) as store:
        assert store.get_result("alice:train/task-1") == (0, b"r")
