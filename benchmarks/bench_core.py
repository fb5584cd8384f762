"""Benchmark of the pure controller core (DESIGN §6 "What fast means here").

Usage::

    uv run python benchmarks/bench_core.py            # full run: 1k, 10k, 100k tasks
    uv run python benchmarks/bench_core.py --quick    # smaller run (1k, 10k; shorter naive budget)
    uv run python benchmarks/bench_core.py --sizes 1000,50000

Everything is measured in one run and printed as ratios against the targets; nothing asserts on
timing. It measures:

1. core: one job of N tasks (cpu=1) is added (Job + expand_job_to_tasks + add_job), N/10 workers
   (cpu=10) register, scheduling passes run ``Scheduler.find_assignments`` on
   ``peek_pending_tasks()`` / ``get_available_workers()`` and each assignment is committed with
   ``commit_assignment`` + ``ack_dispatch`` (the shell's sequence), then every task is driven to
   SUCCEEDED with ``apply_report``, effects drained every 1,000 operations as the shell would.
   Target: per-task cost at the largest size / at the smallest <= 1.5.
2. scheduling tick: 10,000 pending tasks of a mix of jobs (cpu, larger cpu, gpu, coscheduled, and
   jobs that fit nowhere) against 1,000 workers (cpu and gpu), one ``find_assignments`` pass.
   Target <= 100 ms.
3. memory per task: tracemalloc of the controller state for the largest job after adding and
   scheduling (and after completion). Target <= 2 KiB.
4. the seed's naive algorithm (``naive_seed.py``) on the same workload at growing sizes until one
   would not finish within the time limit; speed-up of ours at the largest size it finished.
   Target >= 100x (DESIGN states it at 100k; the figure at 100k is extrapolated from the naive
   algorithm's measured quadratic growth).
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import naive_seed  # noqa: E402

from iris.cluster.controller.job import Job, expand_job_to_tasks  # noqa: E402
from iris.cluster.controller.scheduler import Scheduler  # noqa: E402
from iris.cluster.controller.state import ControllerState, ControllerWorker  # noqa: E402
from iris.cluster.types import JobId, ResourceSpec, TaskId, WorkerId, gpu  # noqa: E402
from iris.rpc import cluster_pb2  # noqa: E402

NOW_MS = 1_700_000_000_000
TASKS_PER_WORKER = 10
GiB = 1024**3
SUCCEEDED = cluster_pb2.TASK_STATE_SUCCEEDED
DRAIN_EVERY = 1000

TARGET_FLATNESS = 1.5
TARGET_TICK_MS = 100.0
TARGET_BYTES_PER_TASK = 2048
TARGET_SPEEDUP = 100.0


# ---------------------------------------------------------------------------------------- builders


def make_request(
    name: str,
    replicas: int,
    *,
    cpu: int = 1,
    memory_bytes: int = GiB,
    gpus: int = 0,
    gpu_variant: str = "H100",
    coscheduled: bool = False,
) -> cluster_pb2.Controller.LaunchJobRequest:
    spec = ResourceSpec(
        cpu=cpu,
        memory=memory_bytes,
        replicas=replicas,
        device=gpu(gpu_variant, gpus) if gpus else ResourceSpec().device,
    )
    return cluster_pb2.Controller.LaunchJobRequest(name=name, resources=spec.to_proto(), coscheduled=coscheduled)


def make_metadata(name: str, *, cpu: int, memory_bytes: int, gpus: int = 0) -> cluster_pb2.WorkerMetadata:
    device = (
        cluster_pb2.DeviceConfig(gpu=cluster_pb2.GpuDevice(variant="H100", count=gpus))
        if gpus
        else cluster_pb2.DeviceConfig()
    )
    return cluster_pb2.WorkerMetadata(
        hostname=name,
        cpu_count=cpu,
        memory_bytes=memory_bytes,
        disk_bytes=100 * GiB,
        device=device,
        gpu_count=gpus,
        gpu_name="H100" if gpus else "",
    )


def worker_count(num_tasks: int) -> int:
    return max(1, math.ceil(num_tasks / TASKS_PER_WORKER))


# ---------------------------------------------------------------------------------------- ours


@dataclass
class CoreRun:
    num_tasks: int
    num_workers: int
    add_s: float
    register_s: float
    schedule_s: float
    complete_s: float
    passes: int

    @property
    def total_s(self) -> float:
        return self.add_s + self.register_s + self.schedule_s + self.complete_s

    @property
    def us_per_task(self) -> float:
        return self.total_s / self.num_tasks * 1e6


def add_and_register(state: ControllerState, num_tasks: int, workers: int | None = None) -> tuple[float, float]:
    t0 = time.perf_counter()
    if num_tasks:
        request = make_request("bench", num_tasks, cpu=1, memory_bytes=GiB)
        job = Job(JobId("bench"), request, NOW_MS)
        state.add_job(job, expand_job_to_tasks(job, NOW_MS))
    t1 = time.perf_counter()
    for i in range(worker_count(num_tasks) if workers is None else workers):
        wid = f"w{i}"
        state.add_worker(
            ControllerWorker(
                worker_id=WorkerId(wid),
                address=f"10.0.{i // 256}.{i % 256}:10001",
                metadata=make_metadata(wid, cpu=TASKS_PER_WORKER, memory_bytes=TASKS_PER_WORKER * 2 * GiB),
                last_heartbeat_ms=NOW_MS,
                registered_at_ms=NOW_MS,
                incarnation="i0",
            )
        )
    state.drain_effects()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def schedule_all(state: ControllerState, now_ms: int) -> tuple[list[tuple[TaskId, WorkerId]], int]:
    """Scheduling passes until the queue is empty; returns the committed (task, worker) pairs."""
    scheduler = Scheduler(state)
    committed: list[tuple[TaskId, WorkerId]] = []
    passes = 0
    sequence = 0
    while True:
        pending = state.peek_pending_tasks()
        if not pending:
            break
        passes += 1
        transaction = scheduler.find_assignments(pending, state.get_available_workers(), now_ms)
        if not transaction.assignments:
            raise RuntimeError(f"no progress: {transaction.pending_reasons}")
        for n, (task, worker) in enumerate(transaction.assignments, 1):
            if state.commit_assignment(task.task_id, worker.worker_id, now_ms):
                sequence += 1
                state.ack_dispatch(task.task_id, task.current_attempt_id, "i0", sequence)
                committed.append((task.task_id, worker.worker_id))
            if n % DRAIN_EVERY == 0:
                state.drain_effects()
        state.drain_effects()
    return committed, passes


def complete_all(state: ControllerState, committed: list[tuple[TaskId, WorkerId]], now_ms: int) -> None:
    for n, (task_id, worker_id) in enumerate(committed, 1):
        state.apply_report(worker_id, task_id, 0, SUCCEEDED, now_ms, exit_code=0)
        if n % DRAIN_EVERY == 0:
            state.drain_effects()
    state.drain_effects()


def run_core(num_tasks: int) -> CoreRun:
    state = ControllerState()
    add_s, register_s = add_and_register(state, num_tasks)
    t0 = time.perf_counter()
    committed, passes = schedule_all(state, NOW_MS + 10)
    t1 = time.perf_counter()
    complete_all(state, committed, NOW_MS + 20)
    t2 = time.perf_counter()
    job = state.get_job(JobId("bench"))
    assert job is not None and job.state == cluster_pb2.JOB_STATE_SUCCEEDED, job and job.state
    return CoreRun(num_tasks, worker_count(num_tasks), add_s, register_s, t1 - t0, t2 - t1, passes)


def check_core(num_tasks: int) -> None:
    """One untimed run with ``check_invariants()`` at the end."""
    state = ControllerState()
    add_and_register(state, num_tasks)
    committed, _ = schedule_all(state, NOW_MS + 10)
    complete_all(state, committed, NOW_MS + 20)
    state.check_invariants()
    job = state.get_job(JobId("bench"))
    assert job is not None and job.state == cluster_pb2.JOB_STATE_SUCCEEDED
    assert job.counts[SUCCEEDED] == num_tasks


def best_of(repeats: int, fn: Callable[[], CoreRun]) -> CoreRun:
    runs = []
    for _ in range(repeats):
        gc.collect()
        runs.append(fn())
    return min(runs, key=lambda r: r.total_s)


# ---------------------------------------------------------------------------------------- tick


TICK_JOBS: list[tuple[str, int, dict[str, object]]] = [
    # name, tasks, request shape
    ("small-cpu", 4000, {"cpu": 1, "memory_bytes": 2 * GiB}),
    ("wide-cpu", 2000, {"cpu": 4, "memory_bytes": 8 * GiB}),
    ("too-many-cpus", 500, {"cpu": 64, "memory_bytes": GiB}),
    ("gpu", 1000, {"cpu": 2, "memory_bytes": 16 * GiB, "gpus": 1}),
    ("gang", 500, {"cpu": 2, "memory_bytes": 4 * GiB, "coscheduled": True}),
    ("too-much-memory", 1000, {"cpu": 1, "memory_bytes": 512 * GiB}),
    ("tail-cpu", 1000, {"cpu": 4, "memory_bytes": 4 * GiB}),  # only partly fits: cluster full
]
TICK_CPU_WORKERS = 800
TICK_GPU_WORKERS = 200


def build_tick_state() -> ControllerState:
    state = ControllerState()
    for name, num_tasks, shape in TICK_JOBS:
        request = make_request(name, num_tasks, **shape)  # type: ignore[arg-type]
        job = Job(JobId(name), request, NOW_MS)
        state.add_job(job, expand_job_to_tasks(job, NOW_MS))
    for i in range(TICK_CPU_WORKERS):
        wid = f"cpu-{i}"
        state.add_worker(
            ControllerWorker(WorkerId(wid), f"10.1.{i // 256}.{i % 256}:10001",
                             make_metadata(wid, cpu=16, memory_bytes=64 * GiB), last_heartbeat_ms=NOW_MS)
        )
    for i in range(TICK_GPU_WORKERS):
        wid = f"gpu-{i}"
        state.add_worker(
            ControllerWorker(WorkerId(wid), f"10.2.{i // 256}.{i % 256}:10001",
                             make_metadata(wid, cpu=32, memory_bytes=256 * GiB, gpus=8), last_heartbeat_ms=NOW_MS)
        )
    # A busy cluster: a quarter of the cpu workers already run 8 cpus of an earlier job.
    busy = make_request("earlier", TICK_CPU_WORKERS // 4, cpu=8, memory_bytes=8 * GiB)
    job = Job(JobId("earlier"), busy, NOW_MS - 1000)
    busy_tasks = expand_job_to_tasks(job, NOW_MS - 1000)
    state.add_job(job, busy_tasks)
    for i, task in enumerate(busy_tasks):
        assert state.commit_assignment(task.task_id, WorkerId(f"cpu-{i * 4}"), NOW_MS - 500)
    state.drain_effects()
    return state


@dataclass
class TickResult:
    pending: int
    workers: int
    assigned: int
    unplaced_jobs: int
    find_ms: list[float]
    full_ms: list[float]


def run_tick(repeats: int) -> TickResult:
    state = build_tick_state()
    scheduler = Scheduler(state)
    find_ms: list[float] = []
    full_ms: list[float] = []
    assigned = unplaced = pending_count = worker_total = 0
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        pending = state.peek_pending_tasks()
        workers = state.get_available_workers()
        t1 = time.perf_counter()
        transaction = scheduler.find_assignments(pending, workers, NOW_MS)
        t2 = time.perf_counter()
        find_ms.append((t2 - t1) * 1000)
        full_ms.append((t2 - t0) * 1000)
        assigned = len(transaction.assignments)
        unplaced = len(transaction.pending_reasons)
        pending_count, worker_total = len(pending), len(workers)
    return TickResult(pending_count, worker_total, assigned, unplaced, find_ms, full_ms)


# ---------------------------------------------------------------------------------------- memory


@dataclass
class MemoryResult:
    num_tasks: int
    after_schedule_bytes: int
    after_complete_bytes: int
    workers_bytes: int = 0
    """The same workers registered, without the job: what is not the job's."""


def run_memory(num_tasks: int) -> MemoryResult:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    state = ControllerState()
    add_and_register(state, num_tasks)
    committed, _ = schedule_all(state, NOW_MS + 10)
    state.drain_effects()
    gc.collect()
    after_schedule = tracemalloc.get_traced_memory()[0] - base
    # ``committed`` is the benchmark's own list, not controller state: subtract it.
    own = sys.getsizeof(committed) + sum(sys.getsizeof(pair) for pair in committed)
    complete_all(state, committed, NOW_MS + 20)
    gc.collect()
    after_complete = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del state
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    idle = ControllerState()
    add_and_register(idle, 0, workers=worker_count(num_tasks))
    gc.collect()
    workers_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del idle
    return MemoryResult(num_tasks, after_schedule - own, after_complete - own, workers_bytes)


FINISHED_JOBS = 10_000


def run_finished_jobs_memory(num_jobs: int = FINISHED_JOBS) -> float:
    """Bytes per ended job the state holds: ``num_jobs`` one-task jobs (a command, as a CLI submits
    them) run to SUCCEEDED on 100 workers, measured against the same workers with no job."""
    entry = cluster_pb2.Entrypoint(command=cluster_pb2.CommandEntrypoint(argv=["python", "train.py", "--epochs", "3"]))

    def workers(state: ControllerState) -> None:
        for i in range(100):
            state.add_worker(ControllerWorker(worker_id=WorkerId(f"w{i}"), address=f"10.0.0.{i}:10001",
                                              metadata=make_metadata(f"w{i}", cpu=64, memory_bytes=256 * GiB),
                                              last_heartbeat_ms=NOW_MS, registered_at_ms=NOW_MS, incarnation="i0"))
        state.drain_effects()

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    idle = ControllerState()
    workers(idle)
    gc.collect()
    idle_bytes = tracemalloc.get_traced_memory()[0] - base
    del idle
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    state = ControllerState()
    workers(state)
    for n in range(num_jobs):
        request = make_request(f"job-{n:05d}", 1)
        request.serialized_entrypoint = entry.SerializeToString()
        now = NOW_MS + n  # one time for the job and its tasks, as Controller.launch_job has
        job = Job(JobId(f"job-{n:05d}"), request, now, owner="alice", uid=f"{n:016x}")
        state.add_job(job, expand_job_to_tasks(job, now))
        if n % 500 == 499 or n == num_jobs - 1:
            committed, _ = schedule_all(state, NOW_MS + n)
            complete_all(state, committed, NOW_MS + n + 1)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base - idle_bytes
    tracemalloc.stop()
    assert all(j.state == cluster_pb2.JOB_STATE_SUCCEEDED for j in state.list_jobs())
    return held / num_jobs


# ---------------------------------------------------------------------------------------- naive


@dataclass
class NaiveResult:
    sizes: list[tuple[int, float]]
    """(size, seconds) for each size that finished within the limit."""
    abandoned: tuple[int, float] | None
    """(size, seconds spent) for a size abandoned at the limit."""
    skipped_next: tuple[int, float] | None
    """(size, predicted seconds) for the first size not attempted."""
    exponent: float


def naive_workers(num_tasks: int) -> list[naive_seed.ControllerWorker]:
    return [
        naive_seed.ControllerWorker(
            worker_id=f"w{i}",
            address=f"10.0.{i // 256}.{i % 256}:10001",
            metadata=make_metadata(f"w{i}", cpu=TASKS_PER_WORKER, memory_bytes=TASKS_PER_WORKER * 2 * GiB),
            last_heartbeat_ms=NOW_MS,
        )
        for i in range(worker_count(num_tasks))
    ]


def run_naive_once(num_tasks: int, limit_s: float) -> float:
    """Seconds the naive algorithm takes on the core workload; raises DeadlineExceeded at the limit."""
    request = make_request("bench", num_tasks, cpu=1, memory_bytes=GiB)
    gc.collect()
    start = time.perf_counter()
    deadline = start + limit_s

    def check() -> None:
        if time.perf_counter() > deadline:
            raise naive_seed.DeadlineExceeded

    workers = naive_workers(num_tasks)
    naive_seed.run_workload(request, workers, NOW_MS, check)
    return time.perf_counter() - start


def run_naive(ladder: list[int], limit_s: float, log: Callable[[str], None]) -> NaiveResult:
    done: list[tuple[int, float]] = []
    abandoned: tuple[int, float] | None = None
    skipped: tuple[int, float] | None = None
    exponent = 2.0
    for size in ladder:
        if len(done) >= 2:
            (n1, t1), (n2, t2) = done[-2], done[-1]
            if t1 > 0.05:
                exponent = max(1.0, math.log(t2 / t1) / math.log(n2 / n1))
        if done:
            n_last, t_last = done[-1]
            predicted = t_last * (size / n_last) ** max(exponent, 2.0 if t_last > 1 else exponent)
            if predicted > limit_s:
                skipped = (size, predicted)
                break
        try:
            seconds = run_naive_once(size, limit_s)
        except naive_seed.DeadlineExceeded:
            abandoned = (size, limit_s)
            log(f"  naive {size:>7,} tasks: abandoned after {limit_s:.0f} s")
            break
        done.append((size, seconds))
        log(f"  naive {size:>7,} tasks: {seconds:8.2f} s")
    return NaiveResult(done, abandoned, skipped, exponent)


# ---------------------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def fmt_bytes(n: float) -> str:
    return f"{n / 1024:.2f} KiB" if n >= 1024 else f"{n:.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller run: sizes 1k and 10k, naive limit 10 s")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated task counts (default 1000,10000,100000)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per size, best kept (default 3, quick 1)")
    parser.add_argument("--naive-limit", type=float, default=None, help="seconds the naive run may take (default 60)")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the seed's naive algorithm")
    args = parser.parse_args()

    if args.sizes:
        sizes = sorted({int(s.replace("_", "").replace("k", "000")) for s in args.sizes.split(",") if s.strip()})
    else:
        sizes = [1000, 10000] if args.quick else [1000, 10000, 100000]
    repeats = args.repeats or (1 if args.quick else 3)
    naive_limit = args.naive_limit or (10.0 if args.quick else 60.0)
    largest = sizes[-1]

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"Iris core benchmark — Python {platform.python_version()} on {platform.machine()}, "
        f"{platform.system()}; sizes {sizes}, best of {repeats}")
    log("")

    # 1. core scaling
    log("== core: add + schedule + drive to SUCCEEDED (one job, cpu=1 tasks, 10 per cpu=10 worker) ==")
    core: dict[int, CoreRun] = {}
    for size in sizes:
        core[size] = best_of(repeats, lambda size=size: run_core(size))  # type: ignore[misc]
    header = (f"{'tasks':>9} {'workers':>8} {'passes':>6} {'add s':>8} {'register s':>10} {'schedule s':>10} "
              f"{'complete s':>10} {'total s':>8} {'us/task':>8}")
    log(header)
    for size in sizes:
        r = core[size]
        log(f"{r.num_tasks:>9,} {r.num_workers:>8,} {r.passes:>6} {r.add_s:>8.3f} {r.register_s:>10.3f} "
            f"{r.schedule_s:>10.3f} {r.complete_s:>10.3f} {r.total_s:>8.3f} {r.us_per_task:>8.2f}")
    flat = core[largest].us_per_task / core[sizes[0]].us_per_task
    log(f"per-task({largest:,}) / per-task({sizes[0]:,}) = {flat:.2f}  "
        f"(target <= {TARGET_FLATNESS})  {verdict(flat <= TARGET_FLATNESS)}")
    check_core(largest)
    log(f"check_invariants() after an untimed {largest:,}-task run: ok; job SUCCEEDED")
    log("")

    # 2. scheduling tick
    log("== scheduling tick: one find_assignments pass ==")
    tick = run_tick(repeats=max(5, repeats))
    log(f"jobs: {', '.join(f'{n}({t})' for n, t, _ in TICK_JOBS)}; {TICK_CPU_WORKERS} cpu workers (16 cpu, "
        f"a quarter half-busy) + {TICK_GPU_WORKERS} gpu workers (8 x H100)")
    log(f"pending {tick.pending:,} x workers {tick.workers:,}: assigned {tick.assigned:,}, "
        f"{tick.unplaced_jobs} jobs left with a pending reason")
    find_best, find_median = min(tick.find_ms), statistics.median(tick.find_ms)
    log(f"find_assignments: best {find_best:.1f} ms, median {find_median:.1f} ms; with peek_pending_tasks + "
        f"get_available_workers: best {min(tick.full_ms):.1f} ms  (target <= {TARGET_TICK_MS:.0f} ms)  "
        f"{verdict(find_best <= TARGET_TICK_MS)}")
    log("")

    # 3. memory
    log(f"== memory: tracemalloc of the controller state, {largest:,}-task job on {worker_count(largest):,} workers ==")
    mem = run_memory(largest)
    per_task_sched = mem.after_schedule_bytes / mem.num_tasks
    per_task_done = mem.after_complete_bytes / mem.num_tasks
    log(f"after add + schedule: {mem.after_schedule_bytes / 2**20:.1f} MiB = {fmt_bytes(per_task_sched)}/task  "
        f"(target <= 2 KiB)  {verdict(per_task_sched <= TARGET_BYTES_PER_TASK)}")
    log(f"after all SUCCEEDED:  {mem.after_complete_bytes / 2**20:.1f} MiB = {fmt_bytes(per_task_done)}/task  "
        f"(attempt records kept)  {verdict(per_task_done <= TARGET_BYTES_PER_TASK)}")
    job_only = (mem.after_complete_bytes - mem.workers_bytes) / mem.num_tasks
    log(f"of which the {worker_count(largest):,} workers without the job: {mem.workers_bytes / 2**20:.1f} MiB; the job "
        f"alone after all SUCCEEDED: {fmt_bytes(job_only)}/task  (issue 14: <= 700 B)  {verdict(job_only <= 700)}")
    per_job = run_finished_jobs_memory()
    log(f"ended jobs held: {FINISHED_JOBS:,} one-task jobs SUCCEEDED = {fmt_bytes(per_job)}/job  "
        f"(issue 14: <= 1.5 KB)  {verdict(per_job <= 1536)}")
    log("")

    # 4. naive seed
    if args.skip_naive:
        return
    log(f"== seed's naive algorithm, same workload, growing until a size would exceed {naive_limit:.0f} s ==")
    ladder = [1000, 2000, 5000, 10000, 20000, 50000, 100000]
    naive = run_naive(ladder, naive_limit, log)
    if naive.skipped_next:
        n, p = naive.skipped_next
        log(f"  naive {n:>7,} tasks: not run, predicted {p:.0f} s (growth exponent {naive.exponent:.2f})")
    if not naive.sizes:
        log("naive algorithm finished no size within the limit")
        return
    log("")
    log(f"{'tasks':>9} {'naive s':>9} {'ours s':>8} {'speed-up':>9}")
    for n, naive_s in naive.sizes:
        ours = core.get(n) or best_of(repeats, lambda n=n: run_core(n))  # type: ignore[misc]
        core[n] = ours
        log(f"{n:>9,} {naive_s:>9.2f} {ours.total_s:>8.3f} {naive_s / ours.total_s:>8.0f}x")
    n_max, t_max = naive.sizes[-1]
    speedup = t_max / core[n_max].total_s
    log(f"speed-up at {n_max:,} tasks (largest the naive run finishes within {naive_limit:.0f} s): {speedup:.0f}x  "
        f"(target >= {TARGET_SPEEDUP:.0f}x)  {verdict(speedup >= TARGET_SPEEDUP)}")
    if largest > n_max:
        exponent = max(2.0, naive.exponent)
        extrapolated = t_max * (largest / n_max) ** exponent
        log(f"extrapolated to {largest:,} tasks (naive ~ n^{exponent:.2f}): naive ~{extrapolated:,.0f} s vs ours "
            f"{core[largest].total_s:.2f} s measured = ~{extrapolated / core[largest].total_s:,.0f}x")


if __name__ == "__main__":
    main()
