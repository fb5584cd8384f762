"""End-to-end throughput: a job of N tasks running ``/bin/true`` on a local cluster.

    uv run python benchmarks/bench_e2e.py [--tasks 1000] [--runs 3] [--workers 2] [--slots 8]
                                          [--base-dir DIR] [--cpu]

Starts a LocalCluster of ``--workers`` worker processes that each run ``--slots`` tasks at once
(cpu_per_worker=slots, 1 cpu per task), submits a job of ``--tasks`` replicas of ``/bin/true``,
and measures from the LaunchJob call to the job's SUCCEEDED, as tasks per second. Every task is a
fresh process with its own working directory, environment, log file and durable record. Each
run uses a fresh cluster in a fresh directory; prints min / median / max over ``--runs``.

The run directories (under ``--base-dir``, default the system temp dir) are all removed after the
last run, not between runs: on an ext4 file system without a journal, every inode allocated within
a minute or so of thousands of deletions in the same block group pays a scan over them
(``recently_deleted`` in the kernel), so deleting run k's ~5,000 files just before run k+1 would
charge that teardown to run k+1. ``--cpu`` prints the CPU each process spent per task (psutil):
the controller, each worker (its own threads) and the task processes the workers reaped.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from iris.cluster.local import LocalCluster
from iris.cluster.types import ResourceSpec
from iris.rpc import cluster_pb2, cluster_pb2_grpc

T = cluster_pb2

CpuTimes = tuple[float, float, float, float]
"""user, system, children user, children system (seconds)."""


def _cpu(process: psutil.Process) -> CpuTimes:
    t = process.cpu_times()
    return t.user, t.system, t.children_user, t.children_system


def run_once(tasks: int, workers: int, slots: int, base: Path, cpu: bool, cgroups: bool = True) -> float:
    with LocalCluster(workers=workers, cpu_per_worker=slots, base_dir=base, dashboard=False,
                      cgroups=cgroups) as cluster:
        procs = {"controller": psutil.Process(cluster.controller_pid)}
        procs.update({w.worker_id: psutil.Process(w.pid) for w in cluster.workers})
        channel = grpc.insecure_channel(cluster.controller_address)
        stub = cluster_pb2_grpc.ControllerServiceStub(channel)
        token = getattr(cluster, "admin_token", "")  # trees before the trust boundary have none
        md = (("authorization", f"Bearer {token}"),) if token else None
        entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
        request = T.Controller.LaunchJobRequest(
            name="bench", serialized_entrypoint=entry, resources=ResourceSpec(cpu=1, replicas=tasks).to_proto()
        )
        before = {name: _cpu(p) for name, p in procs.items()}
        start = time.perf_counter()
        stub.LaunchJob(request, timeout=60, metadata=md)
        done = threading_event_wait(stub, md)
        elapsed = time.perf_counter() - start
        after = {name: _cpu(p) for name, p in procs.items()}
        job = stub.GetJobStatus(T.Controller.GetJobStatusRequest(job_id="bench"), timeout=60, metadata=md).job
        channel.close()
        if job.state != T.JOB_STATE_SUCCEEDED or job.tasks_succeeded != tasks or not done:
            sys.exit(f"benchmark job ended {T.JobState.Name(job.state)}: {job.error}")
        if cpu:
            total = 0.0
            for name in procs:
                d = [(a - b) * 1000 / tasks for a, b in zip(after[name], before[name], strict=True)]
                total += sum(d)
                print(f"    {name:12s} user {d[0]:.2f}  sys {d[1]:.2f}  tasks (reaped children) "
                      f"{d[2] + d[3]:.2f}  ms per task of the job")
            print(f"    all          {total:.2f} ms CPU per task; load average {psutil.getloadavg()[0]:.2f}")
        return elapsed


def threading_event_wait(stub: cluster_pb2_grpc.ControllerServiceStub, md: Any = None, timeout: float = 600) -> bool:
    """Poll the job every 20 ms until it ends (the poll's cost is part of what is measured)."""
    stop = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJobStatus(T.Controller.GetJobStatusRequest(job_id="bench"), timeout=60, metadata=md).job
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
    parser.add_argument("--base-dir", type=Path, default=None, help="where the run directories go (default: temp)")
    parser.add_argument("--cpu", action="store_true", help="print CPU per task of each process")
    parser.add_argument("--no-cgroups", action="store_true", help="workers do not put tasks in cgroups")
    args = parser.parse_args()
    rates = []
    root = Path(tempfile.mkdtemp(prefix="iris-bench-", dir=args.base_dir))
    try:
        for i in range(args.runs):
            elapsed = run_once(args.tasks, args.workers, args.slots, root / f"run-{i}", args.cpu, not args.no_cgroups)
            rate = args.tasks / elapsed
            rates.append(rate)
            print(f"run {i + 1}: {args.tasks} tasks in {elapsed:.2f}s = {rate:.0f} tasks/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{args.tasks} x /bin/true on {args.workers} workers x {args.slots} slots, {args.runs} runs: "
        f"min {min(rates):.0f}  median {statistics.median(rates):.0f}  max {max(rates):.0f} tasks/s"
    )


if __name__ == "__main__":
    main()
