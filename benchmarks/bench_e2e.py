"""End-to-end throughput: a job of N tasks running ``/bin/true`` on a local cluster.

    uv run python benchmarks/bench_e2e.py [--tasks 1000] [--runs 3] [--workers 2] [--slots 8]

Starts a LocalCluster of ``--workers`` worker processes that each run ``--slots`` tasks at once
(cpu_per_worker=slots, 1 cpu per task), submits a job of ``--tasks`` replicas of ``/bin/true``,
and measures from the LaunchJob call to the job's SUCCEEDED, as tasks per second. Every task is a
fresh process with its own working directory, environment, log file and durable record. Each
run uses a fresh cluster; prints min / median / max over ``--runs``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from iris.cluster.local import LocalCluster
from iris.cluster.types import ResourceSpec
from iris.rpc import cluster_pb2, cluster_pb2_grpc

T = cluster_pb2


def run_once(tasks: int, workers: int, slots: int, base: Path) -> float:
    with LocalCluster(workers=workers, cpu_per_worker=slots, base_dir=base, dashboard=False) as cluster:
        channel = grpc.insecure_channel(cluster.controller_address)
        stub = cluster_pb2_grpc.ControllerServiceStub(channel)
        entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
        request = T.Controller.LaunchJobRequest(
            name="bench", serialized_entrypoint=entry, resources=ResourceSpec(cpu=1, replicas=tasks).to_proto()
        )
        start = time.perf_counter()
        stub.LaunchJob(request, timeout=60)
        done = threading_event_wait(stub)
        elapsed = time.perf_counter() - start
        job = stub.GetJobStatus(T.Controller.GetJobStatusRequest(job_id="bench"), timeout=60).job
        channel.close()
        if job.state != T.JOB_STATE_SUCCEEDED or job.tasks_succeeded != tasks or not done:
            sys.exit(f"benchmark job ended {T.JobState.Name(job.state)}: {job.error}")
        return elapsed


def threading_event_wait(stub: cluster_pb2_grpc.ControllerServiceStub, timeout: float = 600) -> bool:
    """Poll the job every 20 ms until it ends (the poll's cost is part of what is measured)."""
    import threading

    stop = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJobStatus(T.Controller.GetJobStatusRequest(job_id="bench"), timeout=60).job
        if job.state >= T.JOB_STATE_SUCCEEDED:
            return True
        stop.wait(0.02)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    rates = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="iris-bench-") as tmp:
            elapsed = run_once(args.tasks, args.workers, args.slots, Path(tmp))
        rate = args.tasks / elapsed
        rates.append(rate)
        print(f"run {i + 1}: {args.tasks} tasks in {elapsed:.2f}s = {rate:.0f} tasks/s", flush=True)
    print(
        f"\n{args.tasks} x /bin/true on {args.workers} workers x {args.slots} slots, {args.runs} runs: "
        f"min {min(rates):.0f}  median {statistics.median(rates):.0f}  max {max(rates):.0f} tasks/s"
    )


if __name__ == "__main__":
    main()
