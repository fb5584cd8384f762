"""How long a Slurm-provisioned worker takes from ``sbatch`` to its first task.

    uv run python benchmarks/bench_slurm.py [--rounds 5]

Starts a private one-node Slurm (``tests/slurm_cluster.py``; needs root, slurm-wlm and munge) and
a controller with ``--platform slurm --max-workers 1 --idle-timeout 0``. Each round submits a
one-task job of ``/bin/true`` with no worker alive (a cold start), and reads from the controller:
when the sbatch was made (the allocation's ``submitted_at_ms``), when the worker registered, and
when the task was dispatched to it; then waits until the idle worker is released and its Slurm
job has ended. Prints each phase's median and range over the rounds, in seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import slurm_cluster  # noqa: E402

from iris.cluster.types import ResourceSpec  # noqa: E402
from iris.rpc import cluster_pb2, cluster_pb2_grpc  # noqa: E402

T = cluster_pb2


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(what)


def _observe_start(stub: cluster_pb2_grpc.ControllerServiceStub, md: tuple[tuple[str, str], ...],
                   job_id: str) -> tuple[int, int, int]:
    """(sbatch, worker registered, task dispatched) times of one cold start, from the controller."""
    seen = {"sbatch": 0, "registered": 0, "started": 0}

    def poll() -> bool:
        for w in stub.ListWorkers(T.Controller.ListWorkersRequest(), metadata=md, timeout=30).workers:
            seen["sbatch"] = seen["sbatch"] or w.provisioning.submitted_at_ms
            seen["registered"] = seen["registered"] or w.registered_at_ms
        task = stub.GetTaskStatus(T.Controller.GetTaskStatusRequest(job_id=job_id, task_index=0),
                                  metadata=md, timeout=30).task
        seen["started"] = task.started_at_ms
        return bool(seen["started"] and seen["sbatch"] and seen["registered"])

    _wait(poll, 120, "task dispatch")
    return seen["sbatch"], seen["registered"], seen["started"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    why = slurm_cluster.unavailable()
    if why:
        sys.exit(f"bench_slurm {why}")
    root = Path(tempfile.mkdtemp(prefix="iris-bench-slurm-"))
    root.chmod(0o755)  # munged needs every directory above its socket searchable
    slurm = slurm_cluster.PrivateSlurm(root / "slurm")
    controller = None
    try:
        slurm.start()
        env = {**os.environ, **slurm.env}
        log = root / "controller.log"
        with open(log, "wb") as out:
            controller = subprocess.Popen(
                [sys.executable, "-m", "iris.cli.main", "controller", "serve", "--port", "0", "--state-dir",
                 str(root / "state"), "--dashboard-port", "-1", "--platform", "slurm", "--max-workers", "1",
                 "--worker-cpus", "1", "--worker-memory", "512MiB", "--idle-timeout", "0"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
        address = _wait(lambda: (m := re.search(r"serving on (\S+)", log.read_text())) and m.group(1), 60,
                        "controller start")
        token = (root / "state" / "admin.token").read_text().strip()
        md = (("authorization", f"Bearer {token}"),)
        stub = cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(address))
        entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
        phases: dict[str, list[float]] = {"sbatch -> worker registered": [], "sbatch -> task dispatched": [],
                                          "job submitted -> task dispatched": []}
        for i in range(args.rounds):
            submitted = time.time() * 1000
            job_id = stub.LaunchJob(T.Controller.LaunchJobRequest(
                name=f"cold-{i}", serialized_entrypoint=entry,
                resources=ResourceSpec(cpu=1, memory="64MiB").to_proto()), metadata=md, timeout=30).job_id
            sbatch_ms, registered_ms, started_ms = _observe_start(stub, md, job_id)
            phases["sbatch -> worker registered"].append((registered_ms - sbatch_ms) / 1000)
            phases["sbatch -> task dispatched"].append((started_ms - sbatch_ms) / 1000)
            phases["job submitted -> task dispatched"].append((started_ms - submitted) / 1000)
            # Cold start next round: the idle worker is released and its Slurm job ends.
            _wait(lambda: not stub.ListWorkers(T.Controller.ListWorkersRequest(), metadata=md,
                                               timeout=30).workers, 120, "release")  # ended: forgotten
            _wait(lambda: not subprocess.run(["squeue", "--noheader"], env=env, capture_output=True,
                                             text=True).stdout.strip(), 120, "slurm job end")
        print(f"{args.rounds} cold starts, one-node Slurm on this machine (seconds: median [min-max])")
        for name, values in phases.items():
            print(f"  {name:34s} {statistics.median(values):6.2f}  [{min(values):.2f}-{max(values):.2f}]")
    finally:
        if controller is not None and controller.poll() is None:
            controller.terminate()
            controller.wait(timeout=30)
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
