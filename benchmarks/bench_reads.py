"""Do reads stall the control plane? Heartbeat latency while readers list 25,000 jobs.

Usage::

    uv run python benchmarks/bench_reads.py                 # 25,000 jobs, 4 readers, 10 s per phase
    uv run python benchmarks/bench_reads.py --jobs 5000 --seconds 5

A real controller (in-process gRPC server, SQLite store in a temp dir) holds ``--jobs`` jobs.
One simulated worker heartbeats over gRPC back to back and records each call's latency:

1. quiet: nothing else runs;
2. readers: ``--readers`` threads list every job through ``ListJobs`` (page by page when the
   controller pages; in one call when it does not) as fast as they can, plus one "hostile" reader
   sending a 1 MiB id prefix;
3. readers + statuses: the same list readers while one more reads job after job's status with
   its tasks (``GetJobStatus``, include_tasks).

It prints p50 / p99 / max heartbeat latency of each phase, the ratio of p99 under readers to
quiet, and the load average. It speaks only the public protocol, so the same script measures an
older tree too (``cd OLD && uv run python NEW/benchmarks/bench_reads.py``). Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.service import ControllerServer
from iris.cluster.controller.store import ControllerStore
from iris.rpc import cluster_pb2, cluster_pb2_grpc

C = cluster_pb2.Controller
T = cluster_pb2


def command() -> bytes:
    return T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=25_000)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="iris-bench-reads-"))
    store = ControllerStore.open(tmp / "state")
    controller = Controller(ControllerConfig(worker_timeout_s=3600), state=store.load(), store=store)
    server = ControllerServer(controller, "127.0.0.1", 0)
    server.start()
    started = time.perf_counter()
    for i in range(args.jobs):  # no worker can hold them (cpu 64): they stay PENDING, as a backlog does
        controller.launch_job(C.LaunchJobRequest(
            name=f"job-{i:06d}", serialized_entrypoint=command(),
            resources=T.ResourceSpecProto(cpu=64, memory_bytes=1 << 20, replicas=1)))
    print(f"{args.jobs:,} jobs submitted in {time.perf_counter() - started:.1f} s; load average {os.getloadavg()}")

    channel = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 512 << 20),
                                                             ("grpc.max_send_message_length", 512 << 20)])
    stub = cluster_pb2_grpc.ControllerServiceStub(channel)
    stub.RegisterWorker(C.RegisterWorkerRequest(
        worker_id="w1", address="127.0.0.1:1", incarnation="i",
        metadata=T.WorkerMetadata(cpu_count=8, memory_bytes=1 << 34)), timeout=30)

    def heartbeats(stop: threading.Event, out: list[float]) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            stub.Heartbeat(C.HeartbeatRequest(worker_id="w1", incarnation="i"), timeout=60)
            out.append(time.perf_counter() - t0)

    listed: list[int] = []

    def reader(stop: threading.Event) -> None:
        while not stop.is_set():
            token, count = "", 0
            while True:
                request = C.ListJobsRequest()
                if hasattr(request, "page_token"):
                    request.page_token = token
                reply = stub.ListJobs(request, timeout=120)
                count += len(reply.jobs)
                token = getattr(reply, "next_page_token", "")
                if not token or stop.is_set():
                    break
            listed.append(count)

    refused: list[str] = []

    def hostile(stop: threading.Event) -> None:
        prefix = "j" * (1 << 20)
        while not stop.is_set():
            try:
                stub.ListJobs(C.ListJobsRequest(prefix=prefix), timeout=120)
                refused.append("answered")
            except grpc.RpcError as e:
                refused.append(e.code().name)

    def statuses(stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            stub.GetJobStatus(C.GetJobStatusRequest(job_id=f"job-{i % args.jobs:06d}", include_tasks=True), timeout=60)
            i += 1

    def phase(name: str, loads: list[Callable[[threading.Event], None]]) -> list[float]:
        stop = threading.Event()
        latencies: list[float] = []
        threads = [threading.Thread(target=heartbeats, args=(stop, latencies))]
        threads += [threading.Thread(target=load, args=(stop,)) for load in loads]
        for t in threads:
            t.start()
        time.sleep(args.seconds)  # a benchmark's measuring window, not synchronisation
        stop.set()
        for t in threads:
            t.join()
        ms = [x * 1000 for x in latencies]
        print(f"{name:<28} heartbeats {len(ms):>6,}  p50 {statistics.median(ms):7.2f} ms  "
              f"p99 {percentile(ms, 0.99):8.2f} ms  max {max(ms):8.2f} ms   load average {os.getloadavg()[0]:.2f}")
        return ms

    quiet = phase("quiet", [])
    readers = phase(f"{args.readers} list readers + hostile", [reader] * args.readers + [hostile])
    mixed = phase("list readers + job statuses", [reader] * args.readers + [statuses])
    print(f"full lists read: {len(listed)} (each {max(listed) if listed else 0:,} jobs); "
          f"hostile 1 MiB prefix: {sorted(set(refused))}")
    print(f"p99 under readers / quiet = {percentile(readers, 0.99) / percentile(quiet, 0.99):.1f}x; "
          f"under readers + statuses / quiet = {percentile(mixed, 0.99) / percentile(quiet, 0.99):.1f}x")
    channel.close()
    server.stop(grace=0)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
