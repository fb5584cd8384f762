"""Ports allocated by the controller, with real processes (issue 26 item 1): two gangs meet at once
on one host, each on a port from the workers' ``--port-range``; the port the old hash would have
picked is taken and does not matter; a port of the range that something outside Iris holds sends
the gang back to be placed again with other ports, charged to no budget."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
from pathlib import Path

from iris.cluster.local import LocalCluster
from iris.rpc import cluster_pb2

from .e2e import Api

T = cluster_pb2
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def old_hash_port(job_id: str, attempt_id: int) -> int:
    """The rendezvous port Iris used to guess (41000-48999 by a hash of job and attempt)."""
    digest = hashlib.blake2b(f"{job_id}#{attempt_id}".encode(), digest_size=4).digest()
    return 41000 + int.from_bytes(digest, "big") % 8000


def listen(port: int) -> socket.socket:
    return socket.create_server(("127.0.0.1", port))


def test_two_gangs_on_one_host_meet_on_allocated_ports_and_a_port_held_outside_iris_is_skipped(
        tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "rendezvous.py", tmp_path / "rendezvous.py")
    first = 24576 + (os.getpid() % 400) * 16  # in Linux's default range for tasks, apart per test run
    held = [listen(first)]  # the first port the controller hands out on this host
    try:
        for job in ("gang-a", "gang-b"):
            try:
                held.append(listen(old_hash_port(job, 0)))
            except OSError:
                pass  # something holds it already: as good for this test
        with LocalCluster(workers=2, cpu_per_worker=2, memory_per_worker="2GiB", heartbeat_interval=0.2,
                          kill_grace=1, base_dir=tmp_path / "cluster",
                          worker_args=["--port-range", f"{first}-{first + 15}"]) as cluster:
            api = Api(cluster.controller_address, cluster.admin_token)
            try:
                script = f'echo "port=$MASTER_PORT"; exec {sys.executable} {tmp_path / "rendezvous.py"}'
                jobs = [api.launch(name, ["sh", "-c", script], replicas=2, coscheduled=True, cpu=1)
                        for name in ("gang-a", "gang-b")]
                done = [api.wait(job, timeout=90) for job in jobs]
                leads = []
                for job in done:
                    assert job.state == T.JOB_STATE_SUCCEEDED, job.error
                    assert all(t.failure_count == 0 and t.preemption_count == 0 for t in job.tasks)
                    lead = next(t for t in job.tasks if t.task_index == 0)
                    lines = api.logs(lead.task_id)
                    assert lines[1] == "rank 0 of 2: everyone arrived (0,1)", lines
                    port = int(lines[0].removeprefix("port="))
                    assert first < port <= first + 15 and port != old_hash_port(job.job_id, 0)
                    last = lead.attempts[-1]
                    leads.append((port, last.started_at_ms, last.finished_at_ms))
                (port_a, start_a, end_a), (port_b, start_b, end_b) = leads
                # Two gangs that ran at once on one host met on different ports (one that ran after
                # the other ended may be given the port the first released).
                assert port_a != port_b or end_a <= start_b or end_b <= start_a, leads
                # gang-a's lead went first and was given the port held outside: sent back, uncharged
                bounced = [a for job in done for t in job.tasks for a in t.attempts
                           if a.decided_by == "port in use"]
                assert len(bounced) == 1 and bounced[0].charged_to == "none" and f"port {first} in use" in bounced[
                    0].error, [
                    (a.error, a.charged_to) for job in done for t in job.tasks for a in t.attempts]
            finally:
                api.close()
    finally:
        for s in held:
            s.close()
