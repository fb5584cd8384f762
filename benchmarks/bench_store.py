"""Store benchmarks: write throughput with and without SQLite, and recovery time of 100k tasks.

Usage: uv run python benchmarks/bench_store.py [--quick]

(a) write throughput, measured in one run with and without the store:
    - submit batches: one job of k tasks added, effects drained (and written);
    - report batches: one ``apply_report`` (RUNNING -> SUCCEEDED), drained (and written);
    - grouped report batches: 100 reports per drain+write (what a batching shell does).
(b) recovery: a 100k-task job (finished, running on workers, retried, pending) is written, then
    ``ControllerStore.open(dir).load()`` is timed: seconds from the file to a serving state.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.state import ControllerState, ControllerWorker
from iris.cluster.controller.store import DB_FILENAME, ControllerStore
from iris.cluster.types import JobId, TaskId, WorkerId
from iris.rpc import cluster_pb2

T = cluster_pb2
NOW = 1_000_000


def make_request(name: str, replicas: int, max_retries_failure: int = 0) -> cluster_pb2.Controller.LaunchJobRequest:
    request = cluster_pb2.Controller.LaunchJobRequest(
        name=name,
        serialized_entrypoint=b"x" * 200,
        max_retries_failure=max_retries_failure,
        max_task_failures=replicas,
    )
    request.resources.cpu = 1
    request.resources.memory_bytes = 1 << 30
    request.resources.replicas = replicas
    request.environment.env_vars["PYTHONUNBUFFERED"] = "1"
    return request


def add_job(state: ControllerState, name: str, replicas: int, now_ms: int = NOW, **kw: int) -> Job:
    job = Job(JobId(name), make_request(name, replicas, **kw), now_ms)
    state.add_job(job, expand_job_to_tasks(job, now_ms))
    return job


def add_workers(state: ControllerState, n: int, cpu: int) -> list[WorkerId]:
    ids = []
    for i in range(n):
        wid = WorkerId(f"w{i}")
        metadata = cluster_pb2.WorkerMetadata(hostname=wid, cpu_count=cpu, memory_bytes=cpu << 31, disk_bytes=1 << 40)
        state.add_worker(ControllerWorker(wid, f"10.0.{i // 250}.{i % 250}:9000", metadata, last_heartbeat_ms=NOW,
                                          registered_at_ms=NOW))
        ids.append(wid)
    return ids


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- (a) throughput


def bench_submit(n: int, k: int, store: ControllerStore | None) -> float:
    state = ControllerState()

    def run() -> None:
        for i in range(n):
            add_job(state, f"job-{i}", k, NOW + i)
            effects = state.drain_effects()
            if store is not None:
                store.write(state, effects)

    return n / timed(run)


def running_state(n: int) -> tuple[ControllerState, list[tuple[WorkerId, TaskId]]]:
    state = ControllerState()
    workers = add_workers(state, max(1, n // 100), cpu=100)
    add_job(state, "reports", n)
    running = []
    for i, task in enumerate(state.peek_pending_tasks()):
        wid = workers[i % len(workers)]
        assert state.assign_task_to_worker(wid, task.task_id, NOW)
        running.append((wid, task.task_id))
    return state, running


def bench_reports(n: int, group: int, store: ControllerStore | None) -> float:
    """Reports per second, with one drain (+ write) per ``group`` reports."""
    state, running = running_state(n)
    effects = state.drain_effects()
    if store is not None:
        store.write(state, effects)

    def run() -> None:
        for i, (wid, tid) in enumerate(running):
            state.apply_report(wid, tid, 0, T.TASK_STATE_SUCCEEDED, NOW + 1 + i, exit_code=0)
            if (i + 1) % group == 0 or i + 1 == len(running):
                batch = state.drain_effects()
                if store is not None:
                    store.write(state, batch)

    rate = n / timed(run)
    assert state.get_job(JobId("reports")).state == T.JOB_STATE_SUCCEEDED  # type: ignore[union-attr]
    return rate


def fresh_store(root: Path, name: str) -> ControllerStore:
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    return ControllerStore.open(d)


def throughput(root: Path, n: int, k: int) -> None:
    print(f"(a) write throughput: {n} batches each; submit batch = 1 job of {k} tasks; report batch = 1 report")
    rows = []
    cases: list[tuple[str, Callable[[ControllerStore | None], float]]] = [
        (f"submit batches (job of {k} tasks)", lambda s: bench_submit(n, k, s)),
        ("report batches (1 report / write)", lambda s: bench_reports(n, 1, s)),
        ("reports, 100 per write (per report)", lambda s: bench_reports(n * 10, 100, s)),
    ]
    for label, fn in cases:
        without = fn(None)
        store = fresh_store(root, "tp")
        try:
            with_store = fn(store)
        finally:
            store.close()
        rows.append((label, without, with_store))
    print(f"  {'':38s} {'no store /s':>14s} {'with store /s':>14s} {'ratio':>8s}")
    for label, without, with_store in rows:
        print(f"  {label:38s} {without:14,.0f} {with_store:14,.0f} {without / with_store:7.1f}x")


# ---------------------------------------------------------------------------- (b) recovery


def build_big_state(num_tasks: int) -> ControllerState:
    """One job of ``num_tasks``: ~40% succeeded, ~10% failed once and retried (pending, with an attempt),
    ~30% running on 1,000 workers, the rest pending; endpoints on some running tasks."""
    state = ControllerState()
    workers = add_workers(state, 1000, cpu=1000)
    add_job(state, "big", num_tasks, max_retries_failure=3)
    tasks = state.get_job_tasks(JobId("big"))
    for i, task in enumerate(tasks[: int(num_tasks * 0.8)]):
        assert state.assign_task_to_worker(workers[i % len(workers)], task.task_id, NOW + 1)
    n_ok, n_retry = int(num_tasks * 0.4), int(num_tasks * 0.1)
    for i, task in enumerate(tasks[:n_ok]):
        state.apply_report(task.worker_id, task.task_id, 0, T.TASK_STATE_SUCCEEDED, NOW + 2 + i)  # type: ignore[arg-type]
    for i, task in enumerate(tasks[n_ok : n_ok + n_retry]):
        state.apply_report(task.worker_id, task.task_id, 0, T.TASK_STATE_FAILED, NOW + 2 + i,  # type: ignore[arg-type]
                           exit_code=1, error="exit 1")
    from iris.cluster.controller.state import ControllerEndpoint

    for task in tasks[n_ok + n_retry : n_ok + n_retry + 1000]:
        state.add_endpoint(ControllerEndpoint(f"ep-{task.task_index}", f"svc/{task.task_index}", "10.0.0.1:1",
                                              task.job_id), task.task_id)
    return state


def recovery(root: Path, num_tasks: int) -> None:
    print(f"(b) recovery: one job of {num_tasks:,} tasks, 1,000 workers")
    state = build_big_state(num_tasks)
    state.check_invariants()
    d = root / "recovery"
    shutil.rmtree(d, ignore_errors=True)
    store = ControllerStore.open(d)
    effects = state.drain_effects()
    write_s = timed(lambda: store.write(state, effects))
    store.close()
    size = (d / DB_FILENAME).stat().st_size
    print(f"  initial write of {len(effects.dirty_tasks):,} task rows in one transaction: {write_s:.2f} s "
          f"(file {size / 1e6:.1f} MB)")
    job = state.get_job(JobId("big"))
    assert job is not None
    print(f"  tasks: pending={job.counts[T.TASK_STATE_PENDING]:,} running={job.counts[T.TASK_STATE_RUNNING]:,} "
          f"succeeded={job.counts[T.TASK_STATE_SUCCEEDED]:,}")

    best_open = best_load = float("inf")
    loaded: ControllerState | None = None
    for _ in range(3):
        start = time.perf_counter()
        reopened = ControllerStore.open(d)
        opened = time.perf_counter()
        loaded = reopened.load(now_ms=NOW + 10)
        done = time.perf_counter()
        reopened.close()
        best_open = min(best_open, opened - start)
        best_load = min(best_load, done - opened)
    assert loaded is not None
    loaded.check_invariants()
    assert loaded.queue_order() == state.queue_order()
    assert len(loaded.get_job_tasks(JobId("big"))) == num_tasks
    total = best_open + best_load
    print(f"  open (validate: header, quick_check, schema version): {best_open:.3f} s")
    print(f"  load (rebuild state: jobs, tasks, attempts, workers, queue, endpoints): {best_load:.3f} s")
    print(f"  recovery of {num_tasks:,} tasks, file to serving state: {total:.2f} s "
          f"({total / num_tasks * 1e6:.1f} us per task), best of 3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    n, k, num_tasks = (300, 10, 10_000) if args.quick else (3000, 10, 100_000)
    with tempfile.TemporaryDirectory(prefix="iris-bench-store-") as tmp:
        root = Path(tmp)
        throughput(root, n, k)
        recovery(root, num_tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
