"""A local cluster of real processes: one controller and N workers on 127.0.0.1, free ports, temp dirs.

Used by ``iris cluster start --local``, ``iris run --local``, ``IrisClient.local()`` and the
end-to-end tests. Every process is started with ``sys.executable -m iris.cli.main ...`` and its
output goes to a log file under ``base_dir/logs``; ``stop()`` stops what it started (by PID) and
kills any task process a SIGKILLed worker left behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import psutil

from iris.cluster.clock import wait_until
from iris.cluster.types import cores
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.tls import TlsFiles, channel_credentials, make_local_pki

logger = logging.getLogger(__name__)

_CONTROLLER_RE = re.compile(r"controller serving on (\S+)")
_DASHBOARD_RE = re.compile(r"dashboard on (\S+)")
_WORKER_RE = re.compile(r"worker (\S+) serving on (\S+)")


LOCAL_PORT_SLICE = 512
"""Ports one local cluster's workers give tasks: a slice of the host's default range at random, so
two local clusters on one host (each its own controller, neither knowing the other's ports) hardly
ever hand out the same port; when they do, the worker's check before the start sends it back."""


def cluster_port_range() -> str:
    """``--port-range`` for this local cluster's workers (all share it: the controller keeps their
    ports apart, as workers of one host)."""
    import random

    from iris.cluster.ports import default_port_range, ephemeral_range

    first, last = default_port_range(ephemeral_range())
    slices = max(1, (last - first + 1) // LOCAL_PORT_SLICE)
    start = first + random.randrange(slices) * LOCAL_PORT_SLICE
    return f"{start}-{min(last, start + LOCAL_PORT_SLICE - 1)}"


class LocalClusterError(RuntimeError):
    pass


@dataclass
class LocalWorker:
    index: int
    worker_id: str
    workdir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    address: str = ""

    @property
    def pid(self) -> int:
        assert self.process is not None, "worker not started"
        return self.process.pid

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    """A controller and ``workers`` worker processes on this machine. A context manager."""

    def __init__(
        self,
        workers: int = 2,
        *,
        cpu_per_worker: float | None = None,
        memory_per_worker: str | None = None,
        state_dir: Path | None = None,
        worker_timeout: float = 10.0,
        heartbeat_interval: float = 0.5,
        kill_grace: float = 5.0,
        cgroups: bool = True,
        controller_port: int = 0,
        dashboard: bool = True,
        base_dir: Path | None = None,
        start_timeout: float = 60.0,
        env: dict[str, str] | None = None,
        worker_args: Sequence[str] = (),
        controller_args: Sequence[str] = (),
        auth: bool = True,
        tls: bool = False,
    ) -> None:
        """``worker_args``: extra ``iris worker serve`` flags for every worker; ``controller_args``:
        extra ``iris controller serve`` flags. ``auth``: the controller
        requires tokens (its admin token is ``admin_token``; workers join with the join token);
        False runs it with ``--auth none``. ``tls``: a CA and a certificate for 127.0.0.1 are made
        under ``base_dir/tls`` and every process serves and connects with them (``tls_ca``; tasks
        and clients started from here get ``$IRIS_TLS_CA``)."""
        if workers < 0:
            raise ValueError(f"workers: must be >= 0, got {workers}")
        self.num_workers = workers
        # The workers share this machine: unless told otherwise each offers its share of the detected
        # cores and memory, not all of it (two workers offering the whole machine each overcommit it).
        share = max(1, workers)
        # In millicores, so 2 cores make 3 workers of 0.666 each rather than 3 of a whole core.
        self.cpu_per_worker: float | int = (
            cpu_per_worker if cpu_per_worker is not None
            else cores(max(1, (os.cpu_count() or 1) * 1000 // share))
        )
        self.memory_per_worker = (memory_per_worker if memory_per_worker is not None
                                  else str(psutil.virtual_memory().total // share))
        self.worker_timeout = worker_timeout
        self.heartbeat_interval = heartbeat_interval
        self.kill_grace = kill_grace
        self.cgroups = cgroups
        self.dashboard = dashboard
        self.start_timeout = start_timeout
        self.worker_args = list(worker_args)
        if "--port-range" not in self.worker_args:
            self.worker_args += ["--port-range", cluster_port_range()]
        if "--unconfined" not in self.worker_args:
            from iris.cluster.worker.sandbox import Sandbox, SandboxUnavailable, private_path, runtime_paths

            try:
                Sandbox.detect()
            except SandboxUnavailable as e:
                # One's own machine and code: run, and say what is missing (a real worker refuses).
                logger.warning("tasks of this local cluster run without a sandbox: %s", e)
                self.worker_args.append("--unconfined")
                # Without a sandbox to bind it, the users tasks run as cannot reach a Python that
                # lives under a private directory: they run as this user instead, and it is said.
                private = private_path(runtime_paths()) if os.geteuid() == 0 else ""
                if private and not {"--run-tasks-as-root", "--task-user"} & set(self.worker_args):
                    logger.warning("tasks of this local cluster run as root: the users they would run as cannot "
                                   "reach %s, on the way to this Python (install bubblewrap to run them as "
                                   "their owners)", private)
                    self.worker_args.append("--run-tasks-as-root")
        self.controller_args = list(controller_args)
        self.auth = auth
        self.admin_token = ""
        """The controller's admin token (read from ``state_dir/admin.token`` once it started)."""
        self.tls_ca: Path | None = None
        self._tls: TlsFiles | None = None
        self._owns_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="iris-local-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # Traversable (not listable) by the uids tasks run as: the workers' directories below it hold
        # the tasks' work directories, which their sandboxes reach by their real paths.
        self.base_dir.chmod(self.base_dir.stat().st_mode | 0o111)
        self.state_dir = Path(state_dir) if state_dir is not None else self.base_dir / "state"
        self.log_dir = self.base_dir / "logs"
        self.shared_dir = self.base_dir / "shared"
        """The cluster's shared dir (``--shared-dir`` of the controller and every worker): beside the
        state dir, not in it; the jobs' ``IRIS_CHECKPOINT_DIR`` are under it."""
        self._controller_port = controller_port
        self._env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        if tls:
            self._tls = make_local_pki(self.base_dir / "tls")
            self.tls_ca = self._tls.ca
            self._env["IRIS_TLS_CA"] = str(self.tls_ca)
        self._controller: subprocess.Popen[bytes] | None = None
        self._controller_starts = 0
        self.controller_address = ""
        self.dashboard_url = ""
        self.workers: list[LocalWorker] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start the controller and the workers; return once every worker has registered."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_controller()
            for _ in range(self.num_workers):
                self.add_worker(wait=False)
            self.wait_for_workers(self.num_workers)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the workers (they kill their tasks), then the controller; clean up what they left."""
        for worker in self.workers:
            self._terminate(worker.process, timeout=self.kill_grace + 10)
        self._terminate(self._controller, timeout=15)
        self._kill_orphan_tasks()
        if self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # ------------------------------------------------------------------ controller

    @property
    def controller_pid(self) -> int:
        assert self._controller is not None, "controller not started"
        return self._controller.pid

    def start_controller(self) -> None:
        """(Re)start the controller on the same state dir and, after the first start, the same port."""
        port = self._controller_port
        if self.controller_address:
            port = int(self.controller_address.rsplit(":", 1)[1])
        self._controller_starts += 1
        log_path = self.log_dir / f"controller-{self._controller_starts}.log"
        argv = [
            sys.executable, "-m", "iris.cli.main", "controller", "serve",
            "--host", "127.0.0.1", "--port", str(port),
            "--state-dir", str(self.state_dir),
            "--worker-timeout", str(self.worker_timeout),
            "--dashboard-port", "0" if self.dashboard else "-1",
            "--auth", "token" if self.auth else "none",
            "--shared-dir", str(self.shared_dir),
            *self.controller_args,
        ]
        if self._tls is not None:
            argv += ["--tls-cert", str(self._tls.cert), "--tls-key", str(self._tls.key), "--tls-ca", str(self._tls.ca)]
        self._controller = self._spawn(argv, log_path)
        text = self._wait_for_line(self._controller, log_path, _CONTROLLER_RE, "controller")
        match = _CONTROLLER_RE.search(text)
        assert match is not None
        self.controller_address = match.group(1)
        dash = _DASHBOARD_RE.search(text)
        if self.dashboard and dash is None:
            text = self._wait_for_line(self._controller, log_path, _DASHBOARD_RE, "dashboard")
            dash = _DASHBOARD_RE.search(text)
        self.dashboard_url = dash.group(1) if dash is not None else ""
        if self.auth:
            self.admin_token = (self.state_dir / "admin.token").read_text().strip()

    @property
    def join_token_file(self) -> Path:
        return self.state_dir / "join.token"

    def channel(self) -> grpc.Channel:
        """A channel to the controller (TLS when the cluster uses it)."""
        if self.tls_ca is not None:
            return grpc.secure_channel(self.controller_address, channel_credentials(self.tls_ca))
        return grpc.insecure_channel(self.controller_address)

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """gRPC call metadata carrying the admin token (None without auth)."""
        return (("authorization", f"Bearer {self.admin_token}"),) if self.admin_token else None

    def kill_controller(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the controller and wait for it to exit."""
        assert self._controller is not None
        self._controller.send_signal(sig)
        self._controller.wait(timeout=30)

    # ------------------------------------------------------------------ workers

    def add_worker(self, wait: bool = True) -> LocalWorker:
        index = len(self.workers)
        worker = LocalWorker(
            index=index,
            worker_id=f"worker-{index}",
            workdir=self.base_dir / f"worker-{index}",
            log_path=self.log_dir / f"worker-{index}.log",
        )
        self.workers.append(worker)
        self.start_worker(index)
        if wait:
            self.wait_for_workers(len([w for w in self.workers if w.is_running()]))
        return worker

    def start_worker(self, index: int) -> LocalWorker:
        """(Re)start worker ``index`` with its id and workdir."""
        worker = self.workers[index]
        argv = [
            sys.executable, "-m", "iris.cli.main", "worker", "serve",
            "--controller", self.controller_address,
            "--host", "127.0.0.1", "--port", "0",
            "--workdir", str(worker.workdir),
            "--worker-id", worker.worker_id,
            "--heartbeat-interval", str(self.heartbeat_interval),
            "--kill-grace", str(self.kill_grace),
            "--cgroups" if self.cgroups else "--no-cgroups",
            "--shared-dir", str(self.shared_dir),
        ]
        if self.auth:
            argv += ["--join-token-file", str(self.join_token_file)]
        if self._tls is not None:
            argv += ["--tls-cert", str(self._tls.cert), "--tls-key", str(self._tls.key), "--tls-ca", str(self._tls.ca)]
        if self.cpu_per_worker is not None:
            argv += ["--cpu", str(self.cpu_per_worker)]
        if self.memory_per_worker is not None:
            argv += ["--memory", self.memory_per_worker]
        argv += self.worker_args
        offset = worker.log_path.stat().st_size if worker.log_path.exists() else 0
        worker.process = self._spawn(argv, worker.log_path)
        text = self._wait_for_line(worker.process, worker.log_path, _WORKER_RE, worker.worker_id, offset)
        match = _WORKER_RE.search(text)
        assert match is not None
        worker.address = match.group(2)
        return worker

    def kill_worker(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to worker ``index`` and wait for it to exit."""
        process = self.workers[index].process
        assert process is not None
        process.send_signal(sig)
        process.wait(timeout=30)

    def wait_for_workers(self, count: int, timeout: float | None = None) -> None:
        """Wait until the controller lists ``count`` healthy workers."""
        def ready() -> bool:
            return len([w for w in self.list_workers() if w.healthy]) >= count

        try:
            wait_until(ready, timeout or self.start_timeout, interval=0.05)
        except TimeoutError:
            raise LocalClusterError(
                f"only {len([w for w in self.list_workers() if w.healthy])} of {count} workers registered "
                f"within {timeout or self.start_timeout}s; logs in {self.log_dir}"
            ) from None

    def list_workers(self) -> list[cluster_pb2.WorkerInfo]:
        try:
            with self.channel() as channel:
                stub = cluster_pb2_grpc.ControllerServiceStub(channel)
                return list(stub.ListWorkers(cluster_pb2.Controller.ListWorkersRequest(), timeout=5,
                                             metadata=self.metadata()).workers)
        except grpc.RpcError:
            return []

    # ------------------------------------------------------------------ helpers

    def _spawn(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env,
                cwd=self.base_dir,
            )

    def _wait_for_line(
        self, process: subprocess.Popen[bytes], log_path: Path, pattern: re.Pattern[str], what: str, offset: int = 0
    ) -> str:
        """Wait for ``pattern`` in the process's log (after ``offset``); fail clearly if it exits first."""
        text = ""

        def seen() -> bool:
            nonlocal text
            try:
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace")
            except OSError:
                return False
            if pattern.search(text):
                return True
            if process.poll() is not None:
                raise LocalClusterError(f"{what} exited with code {process.returncode}:\n{text[-2000:]}")
            return False

        try:
            wait_until(seen, self.start_timeout, interval=0.02)
        except TimeoutError:
            raise LocalClusterError(f"{what} did not start within {self.start_timeout}s:\n{text[-2000:]}") from None
        return text

    def _terminate(self, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def _kill_orphan_tasks(self) -> None:
        """Kill task processes left by workers that died without stopping them (e.g. SIGKILL)."""
        from iris.cluster.worker.cgroups import remove_cgroups_named_in
        from iris.cluster.worker.runtime import kill_orphans
        from iris.cluster.worker.worker import process_records

        for worker in self.workers:
            tasks_dir = worker.workdir / "tasks"
            if tasks_dir.exists():
                kill_orphans(process_records(tasks_dir))
            if self.cgroups:
                remove_cgroups_named_in(worker.workdir)  # its own incarnation's, no other cluster's
