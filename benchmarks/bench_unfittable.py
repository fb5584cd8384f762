"""A deep queue that fits nowhere costs nothing per event (issue 25 item 6).

Usage::

    uv run python benchmarks/bench_unfittable.py            # 6,000 submissions
    uv run python benchmarks/bench_unfittable.py --jobs 2000

A real in-process controller (its state, scheduler and shell; no store, no RPC) takes N
submissions of a job asking for a GPU no worker has, each followed by the event-driven scheduling
pass the submission wakes (``tick_schedule(bounded=True)``) and, every 50 submissions, the periodic
full pass. Run twice: with no worker at all, and with one idle cpu-only worker (where every pass
used to walk every pending job: measured 213 -> 30 jobs/s over 6,000 submissions before parking).
Prints submissions per CPU-second over the first and the last 1,000 and the ratio of the two
cases' last-1,000 throughput (target: within 1.5x). Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import sys
import time

from iris.cluster.clock import FakeClock
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.service import launch_request, registration
from iris.cluster.types import ResourceSpec, gpu
from iris.rpc import cluster_pb2

T = cluster_pb2
C = cluster_pb2.Controller
TARGET = 1.5


class _NoWorkers:
    """Worker transport that is never used: nothing in this benchmark is placed."""

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"a task was dispatched ({name}): the jobs are meant to fit nowhere")


def run(jobs: int, with_worker: bool) -> tuple[float, float]:
    controller = Controller(ControllerConfig(), clock=FakeClock(), worker_clients=_NoWorkers())  # type: ignore[arg-type]
    try:
        if with_worker:
            request = C.RegisterWorkerRequest(worker_id="cpu-0", address="127.0.0.1:1", metadata=T.WorkerMetadata(
                cpu_count=8, memory_bytes=32 << 30))
            controller.register_worker(registration(request, controller.config.limits))
        entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()
        resources = ResourceSpec(cpu=1, memory="1GiB", device=gpu("H100", 1)).to_proto()
        rates = []
        t0 = time.process_time()
        for i in range(jobs):
            spec, blob = launch_request(C.LaunchJobRequest(name=f"gpu-{i}", serialized_entrypoint=entry,
                                                           resources=resources), controller.config.limits)
            controller.launch_job(spec, owner="bench", bundle_blob=blob)
            controller.tick_schedule(bounded=True)
            if i % 50 == 49:
                controller.tick_schedule(bounded=False)
            if i % 1000 == 999:
                t1 = time.process_time()
                rates.append(1000 / max(1e-9, t1 - t0))
                t0 = t1
        return rates[0], rates[-1]
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; {args.jobs} submissions of a job no worker can hold, each with "
          "its event pass (a full pass every 50)")
    bare_first, bare_last = run(args.jobs, with_worker=False)
    idle_first, idle_last = run(args.jobs, with_worker=True)
    print(f"no worker:                 first 1,000 {bare_first:7.0f}/s   last 1,000 {bare_last:7.0f}/s (CPU)")
    print(f"one idle cpu-only worker:  first 1,000 {idle_first:7.0f}/s   last 1,000 {idle_last:7.0f}/s (CPU)")
    ratio = bare_last / idle_last
    print(f"no worker / idle worker at {args.jobs} pending: {ratio:.2f}x (target <= {TARGET:g}x)")


if __name__ == "__main__":
    main()
