"""End-to-end throughput: a job of N tasks running ``/bin/true`` on a local cluster.

    uv run python benchmarks/bench_e2e.py [--tasks 1000] [--runs 3] [--workers 2] [--slots 8]
                                          [--base-dir DIR] [--cpu] [--sandbox-ab | --split] [--ray PYTHON]

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

``--ray PYTHON``: side by side with Ray, in the same run. PYTHON is an interpreter that has Ray
installed (Ray is not one of Iris's dependencies: ``uv venv /tmp/ray && VIRTUAL_ENV=/tmp/ray uv pip
install ray psutil``); each run of Iris is followed by one of Ray: ``ray.init(num_cpus=workers x slots)``,
a warm-up round of one no-op task per cpu (Ray starts its worker processes lazily; Iris's workers
are already up when its clock starts), then ``--tasks`` remote functions of ``num_cpus=1`` that each
run ``/bin/true`` as a child process, timed from the first submission to the last result. Ray's
CPU per task counts the driver and every process under it (GCS, raylet, workers, and the
``/bin/true`` processes they reaped). Prints each run's pair and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
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


UNCONFINED = ("--unconfined", "--run-tasks-as-root")
"""Worker flags that run tasks as before the contained task (issue 23): as the worker, no sandbox."""

SPLIT = {
    "default (sandbox, owner's uid)": (),
    "--unconfined": ("--unconfined",),
    "--run-tasks-as-root": ("--run-tasks-as-root",),
    "--unconfined --run-tasks-as-root": UNCONFINED,
}
"""``--split``: the sandbox and the uid switch, each on and off."""


def run_once(tasks: int, workers: int, slots: int, base: Path, cpu: bool, cgroups: bool = True,
             worker_args: tuple[str, ...] = ()) -> float:
    with LocalCluster(workers=workers, cpu_per_worker=slots, base_dir=base, dashboard=False,
                      cgroups=cgroups, worker_args=worker_args) as cluster:
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


RAY_SCRIPT = r"""
import json, os, subprocess, sys, time
import psutil, ray

tasks, cpus = int(sys.argv[1]), int(sys.argv[2])
ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


@ray.remote(num_cpus=1)
def true_once():
    return subprocess.run(["/bin/true"]).returncode


@ray.remote(num_cpus=1)
def noop():
    return 0


ray.get([noop.remote() for _ in range(cpus)])
me = psutil.Process(os.getpid())


def cpu():
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


before = cpu()
start = time.perf_counter()
codes = ray.get([true_once.remote() for _ in range(tasks)])
elapsed = time.perf_counter() - start
used = cpu() - before
assert codes == [0] * tasks, "a /bin/true failed under Ray"
print(json.dumps({"elapsed": elapsed, "cpu_ms_per_task": used * 1000 / tasks, "version": ray.__version__}))
ray.shutdown()
"""


def run_ray(python: str, tasks: int, cpus: int) -> tuple[float, float, str]:
    """One Ray run in a fresh ``ray.init``: (seconds, CPU ms per task, Ray's version)."""
    # Under `uv run` Ray (>= 2.43) starts its workers with `uv run` in *this* project, which they
    # cannot (its interpreter is another venv's): they die at start and the run hangs. Ray's own
    # interpreter is what is measured, so that integration is off.
    env = dict(os.environ, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    out = subprocess.run([python, "-c", RAY_SCRIPT, str(tasks), str(cpus)], capture_output=True, text=True,
                         timeout=900, env=env)
    if out.returncode != 0:
        sys.exit(f"the Ray run failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["elapsed"]), float(result["cpu_ms_per_task"]), str(result["version"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--base-dir", type=Path, default=None, help="where the run directories go (default: temp)")
    parser.add_argument("--cpu", action="store_true", help="print CPU per task of each process")
    parser.add_argument("--no-cgroups", action="store_true", help="workers do not put tasks in cgroups")
    parser.add_argument("--sandbox-ab", action="store_true",
                        help="each run twice, back to back: the default (tasks sandboxed, as their owner's uid) "
                             "and --unconfined --run-tasks-as-root; prints both and the ratio")
    parser.add_argument("--split", action="store_true",
                        help="only: each run, the four combinations of the sandbox and the uid switch, back to back")
    parser.add_argument("--ray", metavar="PYTHON", default=None,
                        help="also run Ray side by side: an interpreter with Ray installed")
    args = parser.parse_args()
    rates = []
    unconfined_rates: list[float] = []
    ray_rates: list[float] = []
    ray_cpu: list[float] = []
    ray_version = ""
    root = Path(tempfile.mkdtemp(prefix="iris-bench-", dir=args.base_dir))
    if args.split:
        try:
            for i in range(args.runs):
                for n, (label, flags) in enumerate(SPLIT.items()):
                    elapsed = run_once(args.tasks, args.workers, args.slots, root / f"run-{i}-{n}", False,
                                       not args.no_cgroups, flags)
                    print(f"run {i + 1}: {label:34s} {args.tasks / elapsed:5.0f} tasks/s", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    try:
        for i in range(args.runs):
            elapsed = run_once(args.tasks, args.workers, args.slots, root / f"run-{i}", args.cpu, not args.no_cgroups)
            rate = args.tasks / elapsed
            rates.append(rate)
            print(f"run {i + 1}: {args.tasks} tasks in {elapsed:.2f}s = {rate:.0f} tasks/s", flush=True)
            if args.sandbox_ab:
                elapsed = run_once(args.tasks, args.workers, args.slots, root / f"run-{i}-unconfined", args.cpu,
                                   not args.no_cgroups, UNCONFINED)
                unconfined_rates.append(args.tasks / elapsed)
                print(f"run {i + 1}: unconfined, as root: {args.tasks} tasks in {elapsed:.2f}s = "
                      f"{args.tasks / elapsed:.0f} tasks/s", flush=True)
            if args.ray:
                ray_elapsed, cpu_ms, ray_version = run_ray(args.ray, args.tasks, args.workers * args.slots)
                ray_rates.append(args.tasks / ray_elapsed)
                ray_cpu.append(cpu_ms)
                print(f"run {i + 1}: Ray {ray_version}: {args.tasks} tasks in {ray_elapsed:.2f}s = "
                      f"{args.tasks / ray_elapsed:.0f} tasks/s, {cpu_ms:.2f} ms CPU per task", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{args.tasks} x /bin/true on {args.workers} workers x {args.slots} slots, {args.runs} runs: "
        f"min {min(rates):.0f}  median {statistics.median(rates):.0f}  max {max(rates):.0f} tasks/s"
    )
    if unconfined_rates:
        print(f"unconfined, as root, same runs: min {min(unconfined_rates):.0f}  median "
              f"{statistics.median(unconfined_rates):.0f}  max {max(unconfined_rates):.0f} tasks/s; sandboxed / "
              f"unconfined (medians) = {statistics.median(rates) / statistics.median(unconfined_rates):.2f}  "
              f"load average {psutil.getloadavg()[0]:.2f}")
    if ray_rates:
        print(f"Ray {ray_version}, {args.workers * args.slots} cpus, same runs: min {min(ray_rates):.0f}  median "
              f"{statistics.median(ray_rates):.0f}  max {max(ray_rates):.0f} tasks/s, median "
              f"{statistics.median(ray_cpu):.2f} ms CPU per task; Iris / Ray (medians) = "
              f"{statistics.median(rates) / statistics.median(ray_rates):.2f}x  load average "
              f"{psutil.getloadavg()[0]:.2f}")
        if unconfined_rates:  # Ray runs no sandbox: the same comparison without Iris's
            print(f"Iris unconfined, as root / Ray (medians) = "
                  f"{statistics.median(unconfined_rates) / statistics.median(ray_rates):.2f}x")


if __name__ == "__main__":
    main()
