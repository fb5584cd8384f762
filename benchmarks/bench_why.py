"""What `iris job why` costs (issue 25 item 4): 10,000 pending tasks and 1,000 workers.

Usage::

    uv run python benchmarks/bench_why.py

1,000 workers of 8 cpus, every cpu busy with an attempt that has a --timeout (so every end is
predicted); 10,000 pending 1-cpu tasks in 1,000 jobs of 10, four users. ``why_view`` (queue
position, reasons with numbers, the start-time estimate by running placement forward) is timed in
CPU seconds for the first, a middle and the last job in the queue (the last is the worst case: it
simulates every job ahead of it). Target: <= 100 ms each. Nothing asserts on time.
"""

from __future__ import annotations

import sys
import time

from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.scheduler import Scheduler
from iris.cluster.controller.shareviews import queue_view, why_view
from iris.cluster.controller.state import ControllerState, ControllerWorker
from iris.cluster.types import JobId, ResourceSpec, WorkerId
from iris.rpc import cluster_pb2

T = cluster_pb2
NOW = 1_700_000_000_000
GiB = 1024**3
TARGET_MS = 100.0


def build() -> ControllerState:
    state = ControllerState()
    for i in range(1000):
        meta = T.WorkerMetadata(hostname=f"w{i}", cpu_count=8, memory_bytes=64 * GiB, disk_bytes=100 * GiB)
        state.add_worker(ControllerWorker(worker_id=WorkerId(f"w{i}"), address=f"10.0.{i // 256}.{i % 256}:1",
                                          metadata=meta, last_heartbeat_ms=NOW, registered_at_ms=NOW))
    # Fill the fleet: 8,000 running tasks that end within 1-60 minutes (their --timeout).
    for j in range(800):
        request = T.Controller.LaunchJobRequest(name=f"run{j}", resources=ResourceSpec(cpu=1, memory=GiB,
                                                                                        replicas=10).to_proto(),
                                                timeout_seconds=60 * (1 + j % 60))
        job = Job(JobId(f"u{j % 4}:run{j}"), request, NOW, owner=f"u{j % 4}")
        state.add_job(job, expand_job_to_tasks(job, NOW))
    tx = Scheduler(state).find_assignments(state.peek_pending_tasks(), state.get_available_workers(NOW), NOW)
    for task, worker in tx.assignments:
        state.commit_assignment(task.task_id, worker.worker_id, NOW)
    for j in range(1000):
        request = T.Controller.LaunchJobRequest(name=f"wait{j}", resources=ResourceSpec(cpu=1, memory=GiB,
                                                                                         replicas=10).to_proto(),
                                                timeout_seconds=600)
        job = Job(JobId(f"u{j % 4}:wait{j}"), request, NOW + 1 + j, owner=f"u{j % 4}")
        state.add_job(job, expand_job_to_tasks(job, NOW + 1 + j))
    state.drain_effects()
    return state


def main() -> None:
    print(f"python {sys.version.split()[0]}")
    state = build()
    pending = len(state.peek_pending_tasks())
    running = sum(len(w.running_tasks) for w in state.list_workers())
    order = [e.job_id for e in queue_view(state, NOW + 1000, limit=1 << 30)[0]]
    print(f"{pending} pending tasks in {len(order)} jobs, {running} running on {len(state.list_workers())} workers")
    for label, job_id in (("first", order[0]), ("middle", order[len(order) // 2]), ("last", order[-1])):
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            view = why_view(state, JobId(job_id), NOW + 1000)
            best = min(best, (time.process_time() - t0) * 1000)
        est = view.estimate
        if est.start_p50_ms is None or est.start_p90_ms is None:
            start = f"unknown ({est.unknown_reason})"
        else:
            low = est.start_p10_ms if est.start_p10_ms is not None else est.start_p50_ms
            start = (f"in {(low - NOW) / 60000:.1f}-{(est.start_p90_ms - NOW) / 60000:.1f} min "
                     f"(likeliest {(est.start_p50_ms - NOW) / 60000:.1f})")
        print(f"why {label:<6} job (position {view.position:>4}): {best:6.1f} ms CPU; starts {start} "
              f"(target <= {TARGET_MS:g} ms)")


if __name__ == "__main__":
    main()
