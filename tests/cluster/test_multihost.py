"""Iris across hosts, for real: each host is a network namespace with a private address on a
bridge (``tests/cluster/netns.py``); controller, three workers and the client run on different
hosts and reach each other only over that network (TLS and tokens on, as in production).

Checked: workers bound to 0.0.0.0 advertise their host's address (never 127.0.0.1); a job with a
workspace bundle and a named port whose task 0 registers an endpoint that task 1 dials from
another host; logs fetched through the controller; a worker partitioned past the worker timeout
has its task retried elsewhere as a preemption, the worker, still cut off, stops the stale attempt
past its fence, and once the link is back its late report is ignored. Every namespace and process is removed afterwards, also when
the test fails. Skipped (with the reason) without root or ``ip netns``; CI runs as root.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iris.cluster.clock import wait_until
from iris.rpc.tls import make_local_pki

from . import netns
from .e2e import host_pid, open_dir, pid_alive

pytestmark = pytest.mark.e2e

_SERVING = re.compile(r"serving on (\S+)")

RENDEZVOUS = '''
import os, socket, sys, time
from iris.client import IrisClient

client = IrisClient.from_env()
index = int(os.environ["IRIS_TASK_INDEX"])
me = f"{os.environ['IRIS_WORKER_ID']}@{os.environ['IRIS_ADVERTISE_HOST']}"
print("bind", os.environ["IRIS_BIND_HOST"], "advertise", os.environ["IRIS_ADVERTISE_HOST"], flush=True)
if index == 0:
    server = socket.create_server((os.environ["IRIS_BIND_HOST"], int(os.environ["IRIS_PORT_COORD"])))
    address = f"{os.environ['IRIS_ADVERTISE_HOST']}:{os.environ['IRIS_PORT_COORD']}"
    client.register_endpoint("rdv/coord", address)
    print("registered", address, flush=True)
    conn, peer = server.accept()
    with conn:
        request = conn.recv(100).decode()
        conn.sendall(f"hello {request} from {me}".encode())
    print("served", peer[0], flush=True)
else:
    deadline = time.monotonic() + 60
    endpoint = None
    while endpoint is None and time.monotonic() < deadline:
        endpoint = client.lookup_endpoint("rdv/coord")
        if endpoint is None:
            time.sleep(0.1)
    host, port = endpoint.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(me.encode())
        print("got:", conn.recv(200).decode(), flush=True)
'''


@dataclass
class MultiHostCluster:
    net: netns.Network
    base: Path
    pki_ca: Path
    controller_address: str = ""
    admin_token: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, host: netns.Host, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(host.exec_prefix() + [sys.executable, "-m", "iris.cli.main", *argv],
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def wait_serving(self, process: subprocess.Popen[bytes], log: Path) -> str:
        def address() -> str | None:
            match = _SERVING.search(log.read_text(errors="replace"))
            if match is None and process.poll() is not None:
                raise AssertionError(f"exited {process.returncode}:\n{log.read_text()[-3000:]}")
            return match.group(1) if match else None

        wait_until(lambda: address() is not None, 60, message=f"never served: {log}")
        found = address()
        assert found is not None
        return found

    def client(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The ``iris`` CLI run on the client host."""
        env = {**os.environ, "IRIS_CONTROLLER": self.controller_address, "IRIS_TOKEN": self.admin_token,
               "IRIS_TLS_CA": str(self.pki_ca), "IRIS_CONFIG_DIR": str(self.base / "client-config")}
        result = subprocess.run(self.net.hosts["client"].exec_prefix() + [sys.executable, "-m", "iris.cli.main",
                                *argv], capture_output=True, text=True, env=env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"iris {' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def json(self, *argv: str) -> object:
        return json.loads(self.client(*argv, "--json").stdout)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MultiHostCluster]:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(f"multi-host test {why}")
    net = netns.Network()
    c = None
    try:
        for name in ("ctrl", "w1", "w2", "w3", "client"):
            net.add_host(name)
        addresses = tuple(h.address for h in net.hosts.values())
        pki = make_local_pki(tmp_path / "pki", hosts=(*addresses, "127.0.0.1", "localhost"))
        tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(pki.ca)]
        c = MultiHostCluster(net, tmp_path, pki.ca)
        state = tmp_path / "state"
        log = tmp_path / "controller.log"
        ctrl = c.spawn(net.hosts["ctrl"], ["controller", "serve", "--host", net.hosts["ctrl"].address, "--port", "0",
                                           "--state-dir", str(state), "--worker-timeout", "3",
                                           "--dashboard-port", "-1", *tls], log)
        c.controller_address = c.wait_serving(ctrl, log)
        c.admin_token = (state / "admin.token").read_text().strip()
        # w1 binds every interface and finds its address; w2 binds its address; w3 advertises explicitly.
        binds = {"w1": ["--host", "0.0.0.0"], "w2": ["--host", net.hosts["w2"].address],
                 "w3": ["--host", "0.0.0.0", "--advertise", net.hosts["w3"].address]}
        for name, bind in binds.items():
            wlog = tmp_path / f"{name}.log"
            c.workers[name] = c.spawn(net.hosts[name], [
                "worker", "serve", "--controller", c.controller_address, *bind, "--worker-id", name,
                "--workdir", str(tmp_path / name), "--cpu", "1", "--heartbeat-interval", "0.2", "--kill-grace", "1",
                "--join-token-file", str(state / "join.token"), "--no-cgroups", *tls,
            ], wlog)
            c.wait_serving(c.workers[name], wlog)
        yield c
    finally:
        if c is not None:
            for process in reversed(c.processes):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in c.processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            _kill_orphans(tmp_path)
        net.close()


def _kill_orphans(base: Path) -> None:
    from iris.cluster.worker.runtime import kill_orphans
    from iris.cluster.worker.worker import process_records

    for name in ("w1", "w2", "w3"):
        tasks = base / name / "tasks"
        if tasks.exists():
            kill_orphans(process_records(tasks))


def test_controller_workers_and_client_on_separate_hosts(cluster: MultiHostCluster, tmp_path: Path) -> None:
    hosts = cluster.net.hosts
    assert cluster.controller_address == f"{hosts['ctrl'].address}:{cluster.controller_address.rsplit(':', 1)[1]}"

    def workers() -> dict[str, dict[str, object]]:
        listed = cluster.json("worker", "list")
        assert isinstance(listed, list)
        return {str(w["worker_id"]): w for w in listed}

    wait_until(lambda: len([w for w in workers().values() if w["healthy"]]) == 3, 30)
    for name, worker in workers().items():
        # Every worker is registered at the address other hosts reach it at, 0.0.0.0-bound ones too.
        assert str(worker["address"]).startswith(hosts[name].address + ":"), worker

    # -- a workspace, a named port, an endpoint registered on one host and dialled from another.
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "rdv.py").write_text(RENDEZVOUS)
    submitted = cluster.client("job", "run", "--workspace", str(workspace), "--replicas", "2", "--cpu", "1",
                               "--port", "coord", "--name", "rdv", "--no-wait", "--", "python", "rdv.py")
    job_id = submitted.stdout.strip().splitlines()[-1].split()[-1]
    assert job_id.endswith("rdv"), submitted.stdout

    def job() -> dict[str, object]:
        status = cluster.json("job", "status", job_id, "--tasks")
        assert isinstance(status, dict)
        return status

    wait_until(lambda: job()["state"] in ("SUCCEEDED", "FAILED", "KILLED"), 90, message="rendezvous job never ended")
    final = job()
    assert final["state"] == "SUCCEEDED", final
    tasks = final["tasks"]
    assert isinstance(tasks, list)
    worker_of = {t["task_index"]: t["worker_id"] for t in tasks}
    assert worker_of[0] != worker_of[1], "each worker has one cpu: the tasks are on different hosts"
    server_host = hosts[str(worker_of[0])].address
    port_address = tasks[0]["port_addresses"]["coord"]
    assert port_address.startswith(server_host + ":") and not port_address.startswith("127.")
    assert str(tasks[0]["worker_address"]).startswith(server_host + ":")

    # Logs come through the controller from both hosts.
    logs0 = cluster.client("job", "logs", job_id, "--task", "0").stdout
    logs1 = cluster.client("job", "logs", job_id, "--task", "1").stdout
    client_host = hosts[str(worker_of[1])].address
    assert f"registered {port_address}" in logs0 and f"served {client_host}" in logs0, logs0
    assert f"got: hello {worker_of[1]}@{client_host} from {worker_of[0]}@{server_host}" in logs1, logs1
    assert f"bind 0.0.0.0 advertise {hosts['w1'].address}" in (logs0 + logs1) or "w1" not in worker_of.values()

    # -- a real partition: the worker's cable is cut beyond the worker timeout.
    pids = open_dir(tmp_path / "pids")
    script = (f'echo $$ > {pids}/attempt-$IRIS_ATTEMPT_ID-$IRIS_WORKER_ID; '
              f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then exec sleep 1000; fi')
    submitted = cluster.client("job", "run", "--no-bundle", "--cpu", "1", "--name", "part", "--no-wait",
                               "--", "/bin/sh", "-c", script)
    part_id = submitted.stdout.strip().splitlines()[-1].split()[-1]

    def first_attempt() -> Path | None:
        found = [p for p in pids.glob("attempt-0-*") if p.read_text().strip()]
        return found[0] if found else None

    wait_until(lambda: first_attempt() is not None, 60, message="partition job never started")
    marker = first_attempt()
    assert marker is not None
    victim = marker.name.split("-", 2)[2]
    stale_pid = host_pid(int(marker.read_text()), IRIS_JOB_ID=part_id, IRIS_ATTEMPT_ID="0")
    cluster.net.cut(hosts[victim])
    try:
        def part() -> dict[str, object]:
            status = cluster.json("job", "status", part_id, "--tasks")
            assert isinstance(status, dict)
            return status

        wait_until(lambda: part()["state"] == "SUCCEEDED", 60, message="task of the partitioned worker not retried")
        (task,) = part()["tasks"]  # type: ignore[misc]
        assert task["preemption_count"] == 1 and task["failure_count"] == 0, task
        assert task["attempts"][0]["worker_id"] == victim and task["attempts"][0]["is_worker_failure"], task
        assert task["worker_id"] != victim
        # Still cut off, the worker fences itself: past the controller's timeout (3 s) by its
        # default fence (13 s), it stops the stale attempt (kill grace 1 s), with no word from anyone.
        wait_until(lambda: not pid_alive(stale_pid), 40, message="the fence never stopped the stale attempt")
    finally:
        cluster.net.heal(hosts[victim])
    # Healed: the worker re-registers and its late report is ignored.
    wait_until(lambda: bool(workers()[victim]["healthy"]), 30, message="partitioned worker never came back")
    after = cluster.json("job", "status", part_id, "--tasks")
    assert isinstance(after, dict)
    assert after["state"] == "SUCCEEDED" and after["tasks"][0]["current_attempt_id"] == 1, after
