"""What one LaunchJob costs the controller, against what gRPC's Python server costs for nothing.

Usage::

    uv run python benchmarks/bench_rpc_floor.py [--clients 20] [--seconds 10]

Two phases in one run, each a gRPC server in this process and ``--clients`` clients (threads over
four processes, each with its own channel) submitting one-task jobs back to back:

1. empty: a ``ControllerService`` whose ``LaunchJob`` only answers (grpcio's floor per call);
2. real: Iris's controller (``ControllerServer``, authentication and the SQLite store on, the
   switch interval of ``iris controller serve``), the same requests with an admin token.

Prints calls per second and the server's CPU per call of each (psutil, every thread of this
process) and their ratio, with the load average. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent import futures
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import grpc
import psutil

from iris.rpc import cluster_pb2, cluster_pb2_grpc

C = cluster_pb2.Controller
T = cluster_pb2
_PROCESSES = 4


class _Empty(cluster_pb2_grpc.ControllerServiceServicer):
    def LaunchJob(self, request: Any, context: Any) -> Any:
        return C.LaunchJobResponse(job_id=request.name)


def _clients(address: str, token: str, threads: int, seconds: float, go: Event, out: Any) -> None:
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
    md = (("authorization", f"Bearer {token}"),)
    done = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        stub = cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(address))
        go.wait()
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            stub.LaunchJob(C.LaunchJobRequest(name=f"j-{os.getpid()}-{index}-{n}", serialized_entrypoint=entry,
                                              resources=T.ResourceSpecProto(cpu_millicores=1000, replicas=1)),
                           metadata=md, timeout=60)
            n += 1
        with lock:
            done[0] += n

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put(done[0])


def _measure(address: str, token: str, clients: int, seconds: float) -> tuple[float, float]:
    """(calls per second, server CPU ms per call)."""
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    per = [clients // _PROCESSES + (1 if i < clients % _PROCESSES else 0) for i in range(_PROCESSES)]
    procs = [ctx.Process(target=_clients, args=(address, token, n, seconds, go, out)) for n in per if n]
    for p in procs:
        p.start()
    time.sleep(2.0)  # the client processes import and connect (setup, not measured)
    me = psutil.Process()
    cpu0, t0 = sum(me.cpu_times()[:2]), time.monotonic()
    go.set()
    calls = sum(out.get(timeout=seconds + 120) for _ in procs)
    cpu1, t1 = sum(me.cpu_times()[:2]), time.monotonic()
    for p in procs:
        p.join(timeout=30)
    return calls / (t1 - t0), (cpu1 - cpu0) * 1000 / max(calls, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=32, help="the servers' RPC threads (ControllerServer's default)")
    args = parser.parse_args()
    from iris.cli.controller import CONTROLLER_SWITCH_INTERVAL_S
    from iris.cluster.auth import Role
    from iris.cluster.controller.controller import Controller, ControllerConfig
    from iris.cluster.controller.service import ControllerServer
    from iris.cluster.controller.store import ControllerStore

    sys.setswitchinterval(CONTROLLER_SWITCH_INTERVAL_S)
    empty = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    cluster_pb2_grpc.add_ControllerServiceServicer_to_server(_Empty(), empty)
    port = empty.add_insecure_port("127.0.0.1:0")
    empty.start()
    rate0, cpu0 = _measure(f"127.0.0.1:{port}", "x", args.clients, args.seconds)
    empty.stop(0).wait()
    print(f"empty LaunchJob  {args.clients} clients: {rate0:6,.0f}/s, server {cpu0:.3f} ms CPU per call   "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="iris-bench-rpc-"))
    store = ControllerStore.open(tmp)
    controller = Controller(ControllerConfig(max_finished_jobs=0), state=store.load(), store=store)
    token = controller.create_token("bench", Role.ADMIN)[1]
    server = ControllerServer(controller, "127.0.0.1", 0, threads=args.threads)
    server.start()
    rate1, cpu1 = _measure(server.address, token, args.clients, args.seconds)
    server.stop(grace=0)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"Iris LaunchJob   {args.clients} clients: {rate1:6,.0f}/s, server {cpu1:.3f} ms CPU per call   "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"Iris / empty: {cpu1 / cpu0:.2f}x the CPU per call; 1,500 LaunchJob/s on one core needs "
          f"<= 0.667 ms per call, the empty server alone takes {cpu0:.3f}")


if __name__ == "__main__":
    main()
