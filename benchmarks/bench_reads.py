"""Do reads stall the control plane? Heartbeat latency while readers list 25,000 jobs.

Usage::

    uv run python benchmarks/bench_reads.py                 # 25,000 jobs, 4 readers, 10 s per phase
    uv run python benchmarks/bench_reads.py --jobs 5000 --seconds 5

A real controller (gRPC server, SQLite store in a temp dir) runs in this process and holds
``--jobs`` ended jobs (a busy cluster's history). A simulated worker in another process
heartbeats back to back over gRPC and records each call's latency, while, in yet other processes
(as real clients are):

1. quiet: nothing else runs;
2. one list reader: lists every job through ``ListJobs`` (page by page when the controller pages;
   in one call when it does not), again and again;
3. ``--readers`` list readers at once, plus a hostile one sending a 1 MiB id prefix;
4. the list readers plus one reading job after job's status with its tasks (``GetJobStatus``).

It prints p50 / p99 / max heartbeat latency of each phase, the p99 ratios to quiet, the load
average, and how many full garbage-collection passes ran during the phases and the longest (the
heap is frozen as ``iris controller serve`` freezes it; ``--no-heap-freeze``: Python's defaults).
It speaks only the public protocol, so the same script measures an older tree too
(``cd OLD && uv run python NEW/benchmarks/bench_reads.py``). Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import grpc

from iris.cluster.controller.service import launch_request
from iris.rpc import cluster_pb2, cluster_pb2_grpc

C = cluster_pb2.Controller
T = cluster_pb2
_OPTIONS = [("grpc.max_receive_message_length", 512 << 20), ("grpc.max_send_message_length", 512 << 20)]


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._md = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(details._replace(metadata=tuple(details.metadata or ()) + self._md), request)


def _stub(address: str) -> cluster_pb2_grpc.ControllerServiceStub:
    """A stub presenting $BENCH_TOKEN (the controller's admin token when it has authentication)."""
    channel = grpc.insecure_channel(address, options=_OPTIONS)
    token = os.environ.get("BENCH_TOKEN", "")
    return cluster_pb2_grpc.ControllerServiceStub(grpc.intercept_channel(channel, _Bearer(token)) if token else channel)


def heartbeats(address: str, stop: Event, out: Any) -> None:
    stub = _stub(address)
    latencies = []
    while not stop.is_set():
        t0 = time.perf_counter()
        stub.Heartbeat(C.HeartbeatRequest(worker_id="w1", incarnation="i"), timeout=60)
        latencies.append(time.perf_counter() - t0)
    out.put(latencies)


def reader(address: str, stop: Event, out: Any) -> None:
    stub = _stub(address)
    lists = 0
    size = 0
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
        lists += 1
        size = max(size, count)
    out.put(("lists", lists, size))


def hostile(address: str, stop: Event, out: Any) -> None:
    stub = _stub(address)
    prefix = "j" * (1 << 20)
    seen = set()
    while not stop.is_set():
        try:
            stub.ListJobs(C.ListJobsRequest(prefix=prefix), timeout=120)
            seen.add("answered")
        except grpc.RpcError as e:
            seen.add(e.code().name)
    out.put(("hostile", sorted(seen)))


def statuses(address: str, stop: Event, out: Any, jobs: int) -> None:
    stub = _stub(address)
    i = 0
    while not stop.is_set():
        stub.GetJobStatus(C.GetJobStatusRequest(job_id=f"job-{i % jobs:06d}", include_tasks=True), timeout=60)
        i += 1
    out.put(("statuses", i))


def hold_ended_jobs(controller: Any, count: int, owner: str = "") -> None:
    """Submit ``count`` one-task jobs and end them at once: the controller *holds* them (a busy
    cluster's history), with nothing pending or running."""
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
    for i in range(count):
        request = C.LaunchJobRequest(name=f"job-{i:06d}", serialized_entrypoint=entry,
                                     resources=T.ResourceSpecProto(cpu=1, memory_bytes=1 << 20, replicas=1))
        spec, _ = launch_request(request, controller.config.limits)
        job_id = controller.launch_job(spec, owner=owner)
        controller.terminate_job(job_id)


def register_fake_worker(address: str) -> None:
    """One registered worker (at an address nobody serves) so that heartbeats have someone to be."""
    _stub(address).RegisterWorker(C.RegisterWorkerRequest(
        worker_id="w1", address="127.0.0.1:1", incarnation="i",
        metadata=T.WorkerMetadata(cpu_count=8, memory_bytes=1 << 34)), timeout=30)


def _time_full_collections(into: list[float]) -> None:
    """Append the duration (ms) of every full (generation 2) garbage-collection pass to ``into``."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            into.append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(callback)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=25_000)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--read-burst", type=float, default=None,
                        help="the controller's read_burst_s (default: ControllerConfig's)")
    parser.add_argument("--read-share", type=float, default=None,
                        help="the controller's read_share (default: ControllerConfig's; needs a tree that has it)")
    parser.add_argument("--no-heap-freeze", action="store_true",
                        help="leave the garbage collector at Python's defaults (`iris controller serve` freezes "
                             "the heap it holds: iris.cluster.controller.heap)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="the controller process's sys.setswitchinterval (default: what `iris controller serve` "
                             "sets when the tree has CONTROLLER_SWITCH_INTERVAL_S, else Python's 5 ms)")
    args = parser.parse_args()
    try:
        from iris.cli.controller import CONTROLLER_SWITCH_INTERVAL_S as serve_interval
    except ImportError:  # an older tree
        serve_interval = None
    interval = args.switch_interval if args.switch_interval is not None else serve_interval
    if interval is not None:
        sys.setswitchinterval(interval)
    print(f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms", flush=True)

    from iris.cluster.controller.controller import Controller, ControllerConfig
    from iris.cluster.controller.service import ControllerServer
    from iris.cluster.controller.store import ControllerStore

    tmp = Path(tempfile.mkdtemp(prefix="iris-bench-reads-"))
    store = ControllerStore.open(tmp / "state")
    # Hold every job (retention would delete ended jobs beyond its default 10,000 during the run).
    known = getattr(ControllerConfig, "__dataclass_fields__", {})
    extra: dict[str, Any] = {"max_finished_jobs": 0} if "max_finished_jobs" in known else {}
    if args.read_share is not None:
        extra["read_share"] = args.read_share
    if args.read_burst is not None:
        extra["read_burst_s"] = args.read_burst
    config = ControllerConfig(worker_timeout_s=3600, **extra)
    controller = Controller(config, state=store.load(), store=store)
    started = time.perf_counter()
    # Submitted before the controller's loops start, and ended at once: the controller *holds*
    # these jobs. (A 25,000-deep pending queue would measure the scheduling pass instead, which
    # the fleet issue is about.)
    hold_ended_jobs(controller, args.jobs)
    print(f"{args.jobs:,} jobs held (submitted and ended) in {time.perf_counter() - started:.1f} s", flush=True)
    if hasattr(controller, "create_token"):  # authentication on, as deployed: every reader presents a token
        from iris.cluster.auth import Role

        os.environ["BENCH_TOKEN"] = controller.create_token("bench", Role.ADMIN)[1]
    server = ControllerServer(controller, "127.0.0.1", 0)
    server.start()
    register_fake_worker(server.address)
    pauses: list[float] = []  # full garbage-collection passes during the phases, in ms
    _time_full_collections(pauses)
    if not args.no_heap_freeze:
        try:
            from iris.cluster.clock import SystemClock
            from iris.cluster.controller.heap import HeapFreezer
        except ImportError:  # an older tree
            print("no heap policy in this tree: Python's default garbage collection")
        else:
            HeapFreezer(SystemClock()).tick()  # as `iris controller serve` once its state is loaded
            pauses.clear()
            print(f"heap frozen as `iris controller serve` does ({gc.get_freeze_count():,} objects)", flush=True)

    ctx = mp.get_context("spawn")
    notes: list[Any] = []

    def phase(name: str, loads: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> list[float]:
        stop = ctx.Event()
        out = ctx.Queue()
        procs = [ctx.Process(target=heartbeats, args=(server.address, stop, out))]
        procs += [ctx.Process(target=fn, args=(server.address, stop, out, *extra)) for fn, extra in loads]
        for p in procs:
            p.start()
        time.sleep(args.seconds)  # a benchmark's measuring window, not synchronisation
        stop.set()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        latencies = next(r for r in results if isinstance(r, list))
        notes.extend(r for r in results if not isinstance(r, list))
        ms = [x * 1000 for x in latencies]
        print(f"{name:<30} heartbeats {len(ms):>6,}  p50 {statistics.median(ms):7.2f} ms  "
              f"p99 {percentile(ms, 0.99):8.2f} ms  max {max(ms):8.2f} ms   load average {os.getloadavg()[0]:.2f}",
              flush=True)
        return ms

    quiet = phase("quiet", [])
    one = phase("1 list reader", [(reader, ())])
    many = phase(f"{args.readers} list readers + hostile", [(reader, ())] * args.readers + [(hostile, ())])
    mixed = phase(f"{args.readers} list readers + job statuses",
                  [(reader, ())] * args.readers + [(statuses, (args.jobs,))])
    lists = [n for n in notes if n[0] == "lists"]
    print(f"full lists read: {sum(n[1] for n in lists)} (each {max(n[2] for n in lists):,} jobs); "
          f"hostile 1 MiB prefix: {[n[1] for n in notes if n[0] == 'hostile']}")
    q = percentile(quiet, 0.99)
    print(f"p99 / quiet p99: 1 reader {percentile(one, 0.99) / q:.1f}x; {args.readers} readers + hostile "
          f"{percentile(many, 0.99) / q:.1f}x; readers + statuses {percentile(mixed, 0.99) / q:.1f}x")
    print(f"full garbage-collection passes during the phases: {len(pauses)}, longest "
          f"{max(pauses, default=0):.1f} ms")
    server.stop(grace=0)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
