"""GetJobStatus with tasks of a 100,000-task job: a page (task_offset/task_limit) against all tasks.

Usage::

    uv run python benchmarks/bench_job_status.py [--tasks 100000] [--repeats 5]

A controller holding one job of ``--tasks`` tasks runs in this process behind its gRPC server; each
request is timed ``--repeats`` times (median) through a real channel. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import grpc

from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.service import ControllerServer, launch_request
from iris.rpc import cluster_pb2, cluster_pb2_grpc

C = cluster_pb2.Controller
T = cluster_pb2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    controller = Controller(ControllerConfig(auth=False))
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
    spec, _ = launch_request(C.LaunchJobRequest(name="wide", serialized_entrypoint=entry,
                                                resources=T.ResourceSpecProto(cpu=1, replicas=args.tasks)),
                             controller.config.limits)
    controller.launch_job(spec)
    server = ControllerServer(controller, "127.0.0.1", 0)
    server.start()
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 512 << 20)])
    stub = cluster_pb2_grpc.ControllerServiceStub(channel)
    middle = args.tasks // 2
    cases = [(f"page of {n:,} tasks", C.GetJobStatusRequest(job_id="wide", include_tasks=True, task_offset=middle,
                                                             task_limit=n)) for n in (200, 500, 1000)]
    cases.append((f"all {args.tasks:,} tasks", C.GetJobStatusRequest(job_id="wide", include_tasks=True)))
    for label, request in cases:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            reply = stub.GetJobStatus(request, timeout=120)
            times.append((time.perf_counter() - started) * 1000)
        print(f"GetJobStatus {label:<20} median {statistics.median(times):8.1f} ms  {reply.ByteSize():>10,} bytes   "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
    channel.close()
    server.stop(grace=0)


if __name__ == "__main__":
    main()
