"""The control plane at fleet scale: a real controller (``iris controller serve``, SQLite store on,
authentication on) and many simulated workers speaking the real protocol from a few processes.

Usage::

    uv run python benchmarks/bench_fleet.py heartbeats --workers 1000 --attempts 8 --seconds 20
    uv run python benchmarks/bench_fleet.py throughput --workers 100 --slots 8 --tasks 20000
    uv run python benchmarks/bench_fleet.py storm --workers 10000 --slots 8 --seconds 120

``storm`` (issue 27 item 4): with the fleet steady, one job puts a task on every slot at once; for
``--seconds`` after it, failed heartbeats and report calls, re-registrations, workers declared
dead and the heartbeat latencies. Calls carry the real worker's 5 s deadline, each worker's
reports go on a call of its own (one in flight per worker, as the real outbox), and the simulator
processes are niced below the controller.

Each simulated worker registers with the join token (and so gets its own credential) over a
connection of its own, as a real worker does (``--shared-connection``: one per process, the old,
flattering mode), heartbeats
its observed set at ``--interval`` (default 1 s, the workers' default), accepts ``RunTasks`` at
once and either reports every attempt SUCCEEDED at once, with ``log_size`` as a real worker's end
report has it (``throughput``: no process is spawned) or
holds ``--attempts`` attempts RUNNING (``heartbeats``). Simulated workers of one process share one
gRPC server: the controller addresses each ``RunTasks``/``KillTask`` to a worker id, and the server
routes it (a real worker refuses a request addressed to another id).

Prints each figure with the load average: controller CPU (share of one core, and per task),
heartbeat latency p50/p99, failed heartbeats, workers the controller declared dead (none should
be), tasks per second. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
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

try:
    from iris.cluster.rules import FLOW_CONTROL_OPTIONS
except ImportError:  # an older tree through PYTHONPATH (a back-to-back comparison): its workers set none
    FLOW_CONTROL_OPTIONS = ()  # type: ignore[assignment]
from iris.rpc import cluster_pb2, cluster_pb2_grpc

try:
    from iris.rpc.beats import HEADER as BEAT_HEADER
    from iris.rpc.beats import BeatRefused
    from iris.rpc.beats import frame as beat_frame
except ImportError:  # an older tree: its controller names no heartbeat port, so none of these is used
    pass
try:
    from iris.rpc.beats import HEARTBEAT, REPORT
    from iris.rpc.beats import TAG as BEAT_TAG
    BEAT_KINDS = (HEARTBEAT, REPORT)
except ImportError:  # an older tree: heartbeats only on the port, one at a time, untagged
    BEAT_KINDS = (1, 2)
MULTIPLEX = "multiplex" in cluster_pb2.Controller.BeatHello.DESCRIPTOR.fields_by_name if hasattr(
    cluster_pb2.Controller, "BeatHello") else False

C = cluster_pb2.Controller
W = cluster_pb2.Worker
T = cluster_pb2
DEFAULT_HEARTBEAT_RATE = 250.0
"""``iris controller serve --max-heartbeat-rate``'s default."""
RPC_TIMEOUT_S = 5.0
"""The real worker's deadline on its calls to the controller (``WorkerConfig.rpc_timeout_s``)."""
_OPTIONS = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20),
            *FLOW_CONTROL_OPTIONS]
"""As the real worker's channel to the controller (``worker/link.py``)."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class _SimWorkers(cluster_pb2_grpc.WorkerServiceServicer):
    """Many simulated workers behind one gRPC server."""

    def __init__(self, controller: str, join_token: str, worker_ids: list[str], mode: str, slots: int,
                 attempts: int, shared_connection: bool = False, grpc_reports: bool = False) -> None:
        shared = cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(controller, options=_OPTIONS))
        # As real workers: a connection of its own each (a local subchannel pool, or grpc would share
        # one TCP connection among the channels of this process). --shared-connection: one for all.
        self.stubs = {w: shared if shared_connection else cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(
            controller, options=[*_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])) for w in worker_ids}
        self.stub = shared
        self.real_reports = not shared_connection
        self.join_token = join_token
        self.controller = controller
        self.beat_port = 0
        self.loop = asyncio.new_event_loop()
        self.beat_conns: dict[str, _PortConn] = {}
        self.beat_locks: dict[str, asyncio.Lock] = {}
        self.grpc_until: dict[str, float] = {}
        self.port_failures = 0
        """Heartbeats the port failed while measuring (each then went by gRPC, as a real worker's does)."""
        self.grpc_reports = grpc_reports or not MULTIPLEX  # an older tree's port takes heartbeats only
        """Reports by ReportTaskState even when the port takes them (as workers before it did)."""
        self.reports_grpc_until: dict[str, float] = {}
        self.report_port_failures = 0
        """Report batches the port failed while measuring (each then went by gRPC, as a real worker's)."""
        self.ids = worker_ids
        self.mode = mode
        self.slots = slots
        self.attempts = attempts
        self.incarnation = secrets.token_hex(8)
        self.credentials: dict[str, str] = {}
        self.held: dict[str, dict[tuple[str, int], T.WorkerTaskStatus]] = {w: {} for w in worker_ids}
        self.sequence: dict[str, int] = dict.fromkeys(worker_ids, 0)
        self.lock = threading.Lock()
        self.to_report: dict[str, list[T.WorkerTaskStatus]] = {}
        self.report_event = threading.Event()
        self.address = ""
        self.latencies: list[float] = []
        self.failed = 0
        self.reregistered = 0
        self.report_failures = 0
        self.sent = {"heartbeats": 0, "attempts": 0, "reports": 0, "updates": 0, "run_calls": 0, "runs": 0}
        """What the workers sent (heartbeats and the attempts they carried, report RPCs and their
        updates) and were sent (RunTasks calls and the tasks in them)."""
        self.asked_s = 0.0
        self.measuring: Any = None
        """Set during the parent's measuring window: only then are latencies and failures counted."""
        """The heartbeat interval the controller asks for (it grows with the fleet), as a real worker follows."""

    def metadata(self, worker_id: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.credentials.get(worker_id) or self.join_token}"),)

    def register(self, worker_id: str) -> None:
        meta = T.WorkerMetadata(hostname="sim", cpu_count=self.slots, cpu_millicores=self.slots * 1000,
                                memory_bytes=64 << 30)
        with self.lock:
            tasks = list(self.held[worker_id].values())
            sequence = self.sequence[worker_id]
        reply = self.stubs[worker_id].RegisterWorker(C.RegisterWorkerRequest(
            worker_id=worker_id, address=self.address, metadata=meta, tasks=tasks, incarnation=self.incarnation,
            sequence=sequence), metadata=self.metadata(worker_id), timeout=RPC_TIMEOUT_S)
        if reply.credential:
            self.credentials[worker_id] = reply.credential
        self.asked_s = reply.heartbeat_interval_ms / 1000
        self.beat_port = getattr(reply, "heartbeat_port", 0)  # an older tree's controller names none

    # -- the heartbeat port (as ``iris.rpc.beats.BeatClient``, many workers on one event loop) ----

    async def _port(self, worker_id: str) -> _PortConn:
        """The worker's one connection to the port (heartbeats and reports), connected on first use."""
        async with self.beat_locks.setdefault(worker_id, asyncio.Lock()):
            conn = self.beat_conns.get(worker_id)
            if conn is None:
                host = self.controller.rsplit(":", 1)[0]
                conn = _PortConn(*await asyncio.open_connection(host, self.beat_port), MULTIPLEX)
                self.beat_conns[worker_id] = conn
                try:
                    await conn.hello(self.credentials[worker_id], worker_id)
                except BaseException:
                    self._drop(worker_id, conn)
                    raise
            return conn

    def _drop(self, worker_id: str, conn: _PortConn | None) -> None:
        if conn is not None and self.beat_conns.get(worker_id) is conn:
            del self.beat_conns[worker_id]
        if conn is not None:
            conn.fail(ConnectionError("dropped"))

    async def _beat(self, worker_id: str, request: Any, started: float) -> None:
        conn = None
        try:
            conn = await asyncio.wait_for(self._port(worker_id), RPC_TIMEOUT_S)
            reply = await asyncio.wait_for(conn.call(BEAT_KINDS[0], request), RPC_TIMEOUT_S)
        except Exception:  # any failure (a coroutine's exception would be lost)
            self._drop(worker_id, conn)
            # As the real worker (``ControllerLink._send_heartbeat``): this beat, and the worker's
            # next ones for a minute, by the Heartbeat RPC.
            self.port_failures += self.measuring is not None and self.measuring.is_set()
            self.grpc_until[worker_id] = time.monotonic() + 60.0
            self._grpc_beat(worker_id, request, started)
            return
        self._heartbeat_reply(reply.heartbeat, worker_id, started)

    def _grpc_beat(self, worker_id: str, request: Any, started: float) -> None:
        call = self.stubs[worker_id].Heartbeat.future(request, metadata=self.metadata(worker_id), timeout=RPC_TIMEOUT_S)
        call.add_done_callback(lambda f, w=worker_id, s=started: self._heartbeat_done(f, w, s))

    async def _report(self, worker_id: str, updates: list[Any], inflight: set[str]) -> None:
        """A batch of reports by the port (as ``iris.rpc.beats.BeatClient.report``); when the port
        fails, by ReportTaskState, and every batch of the worker's for a minute after."""
        request = C.ReportTaskStateRequest(worker_id=worker_id, updates=updates)
        conn = None
        try:
            conn = await asyncio.wait_for(self._port(worker_id), RPC_TIMEOUT_S)
            reply = await asyncio.wait_for(conn.call(BEAT_KINDS[1], request), RPC_TIMEOUT_S)
            if not reply.HasField("report"):
                raise ConnectionError("the reply carries no report response")
        except Exception:  # any failure (a coroutine's exception would be lost): by gRPC, as a real worker
            self._drop(worker_id, conn)
            self.report_port_failures += self.measuring is not None and self.measuring.is_set()
            self.reports_grpc_until[worker_id] = time.monotonic() + 60.0
            self._grpc_report(worker_id, updates, inflight)
            return
        self._reported(False, worker_id, updates, inflight)

    def _grpc_report(self, worker_id: str, updates: list[Any], inflight: set[str]) -> None:
        call = self.stubs[worker_id].ReportTaskState.future(
            C.ReportTaskStateRequest(worker_id=worker_id, updates=updates),
            metadata=self.metadata(worker_id), timeout=RPC_TIMEOUT_S)
        call.add_done_callback(lambda f, w=worker_id, u=updates: self._reported(f.exception() is not None, w, u, inflight))

    # -- the worker service -----------------------------------------------------------------

    def RunTasks(self, request: Any, context: Any) -> Any:
        worker_id = request.worker_id
        results = []
        done = []
        with self.lock:
            if worker_id not in self.held:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"worker_id: no simulated worker {worker_id}")
            self.sent["run_calls"] += 1
            self.sent["runs"] += len(request.tasks)
            for task in request.tasks:
                self.sequence[worker_id] += 1
                status = T.WorkerTaskStatus(task_id=task.task_id, attempt_id=task.attempt_id, job_uid=task.job_uid,
                                            state=T.TASK_STATE_RUNNING)
                if self.mode == "hold":
                    done.append(status)  # a real worker reports RUNNING once the process started
                if self.mode == "complete":
                    status = T.WorkerTaskStatus(task_id=task.task_id, attempt_id=task.attempt_id,
                                                job_uid=task.job_uid, state=T.TASK_STATE_SUCCEEDED)
                    if self.real_reports:
                        status.log_size = 0  # a real worker's end report says how big its log is (/bin/true: 0)
                    done.append(status)
                # Held (and in every observed set) until its end is acknowledged, as a real worker does.
                self.held[worker_id][(task.task_id, task.attempt_id)] = status
                results.append(W.RunTaskResponse(accepted=True, incarnation=self.incarnation,
                                                 sequence=self.sequence[worker_id]))
            if done:
                self.to_report.setdefault(worker_id, []).extend(done)
                self.report_event.set()
        return W.RunTasksResponse(results=results)

    def KillTask(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.held.get(request.worker_id, {}).pop((request.task_id, request.attempt_id), None)
        return T.Empty()

    def HealthCheck(self, request: Any, context: Any) -> Any:
        return W.HealthCheckResponse(healthy=True)

    # -- loops ------------------------------------------------------------------------------

    def report_loop(self, stop: Event) -> None:
        """Each worker's outbox, as a real worker's: everything queued goes in one ReportTaskState
        (by the heartbeat port when the controller takes reports there), one call in flight per
        worker (the workers' calls run concurrently); a failed call's updates go back to the outbox."""
        inflight: set[str] = set()
        while not stop.is_set():
            self.report_event.wait(0.2)
            self.report_event.clear()
            with self.lock:
                ready = [w for w in self.to_report if w not in inflight]
                batches = {w: self.to_report.pop(w) for w in ready}
                inflight.update(batches)
            now = time.monotonic()
            for worker_id, updates in batches.items():
                self.sent["reports"] += 1
                self.sent["updates"] += len(updates)
                if self.beat_port and not self.grpc_reports and self.reports_grpc_until.get(worker_id, 0.0) <= now:
                    asyncio.run_coroutine_threadsafe(self._report(worker_id, updates, inflight), self.loop)
                else:
                    self._grpc_report(worker_id, updates, inflight)

    def _reported(self, failed: bool, worker_id: str, updates: list[Any], inflight: set[str]) -> None:
        with self.lock:
            inflight.discard(worker_id)
            if failed:
                self.report_failures += self.measuring is not None and self.measuring.is_set()
                self.to_report[worker_id] = updates + self.to_report.get(worker_id, [])
            else:  # acknowledged: the ended attempts leave the observed set
                held = self.held[worker_id]
                for update in updates:
                    if update.state != T.TASK_STATE_RUNNING:
                        held.pop((update.task_id, update.attempt_id), None)
            again = worker_id in self.to_report
        if again:
            self.report_event.set()

    def heartbeat_loop(self, stop: Event, interval: float) -> None:
        """Each worker heartbeats once per ``interval`` (or the longer one the controller asks for),
        the workers spread over it (async calls)."""
        next_at = time.monotonic()
        while not stop.is_set():
            for worker_id in self.ids:
                gap = max(interval, self.asked_s) / max(1, len(self.ids))
                if stop.is_set():
                    return
                with self.lock:
                    tasks = list(self.held[worker_id].values())
                    sequence = self.sequence[worker_id]
                self.sent["heartbeats"] += 1
                self.sent["attempts"] += len(tasks)
                started = time.monotonic()
                request = C.HeartbeatRequest(worker_id=worker_id, tasks=tasks, incarnation=self.incarnation,
                                             sequence=sequence)
                if self.beat_port and self.grpc_until.get(worker_id, 0.0) <= started:
                    # as a real worker: by the heartbeat port its registration named
                    asyncio.run_coroutine_threadsafe(self._beat(worker_id, request, started), self.loop)
                else:
                    self._grpc_beat(worker_id, request, started)
                next_at += gap
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)

    def _heartbeat_done(self, call: Any, worker_id: str, started: float) -> None:
        try:
            reply = call.result()
        except grpc.RpcError:
            self.failed += self.measuring is not None and self.measuring.is_set()
            return
        self._heartbeat_reply(reply, worker_id, started)

    def _heartbeat_reply(self, reply: Any, worker_id: str, started: float) -> None:
        if self.measuring is not None and self.measuring.is_set():
            self.latencies.append(time.monotonic() - started)
        self.asked_s = reply.heartbeat_interval_ms / 1000
        if reply.reregister:
            self.reregistered += 1
            threading.Thread(target=self.register, args=(worker_id,), daemon=True).start()


class _PortConn:
    """One simulated worker's heartbeat-port connection (as ``iris.rpc.beats.BeatClient``): tagged
    frames whose replies are matched by id (a reader task per connection); any error fails every
    call on it. ``multiplex`` False (an older tree): untagged heartbeats, one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, multiplex: bool) -> None:
        self.reader, self.writer, self.multiplex = reader, writer, multiplex
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def hello(self, token: str, worker_id: str) -> None:
        fields: dict[str, Any] = {"token": token, "worker_id": worker_id}
        if self.multiplex:
            fields["multiplex"] = True
        self.writer.write(beat_frame(C.BeatHello(**fields).SerializeToString()))
        reply = C.BeatReply.FromString(await self._body())
        if reply.code:
            raise BeatRefused(reply.code, reply.message)
        if self.multiplex:
            if not reply.HasField("report"):
                raise ConnectionError("this controller's heartbeat port does not multiplex")
            self.task = asyncio.ensure_future(self._read_loop())

    async def _body(self) -> bytes:
        (size,) = BEAT_HEADER.unpack(await self.reader.readexactly(BEAT_HEADER.size))
        return await self.reader.readexactly(size)

    async def call(self, kind: int, message: Any) -> Any:
        if not self.multiplex:
            async with self.lock:
                self.writer.write(beat_frame(message.SerializeToString()))
                reply = C.BeatReply.FromString(await self._body())
        else:
            self.next_id += 1
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.calls[self.next_id] = future
            self.writer.write(beat_frame(BEAT_TAG.pack(kind, self.next_id) + message.SerializeToString()))
            reply = await future
        if reply.code:
            raise BeatRefused(reply.code, reply.message)
        return reply

    async def _read_loop(self) -> None:
        try:
            while True:
                body = await self._body()
                _, call = BEAT_TAG.unpack_from(body)
                future = self.calls.pop(call, None)
                if future is None:
                    raise ConnectionError(f"a reply to no call (id {call})")
                if not future.done():
                    future.set_result(C.BeatReply.FromString(body[BEAT_TAG.size:]))
        except Exception as e:
            self.fail(e)

    def fail(self, error: Exception) -> None:
        for future in self.calls.values():
            if not future.done():
                future.set_exception(ConnectionError(str(error)))
        self.calls.clear()
        self.writer.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


async def _reap(tasks: set[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


def sim_process(controller: str, join_token: str, worker_ids: list[str], mode: str, slots: int, attempts: int,
                interval: float, ready: Any, stop: Event, out: Any, measuring: Event,
                shared_connection: bool = False, grpc_reports: bool = False) -> None:
    os.nice(10)  # below the controller: the host measures the controller, not the harness
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a connection per simulated worker
    sim = _SimWorkers(controller, join_token, worker_ids, mode, slots, attempts, shared_connection, grpc_reports)
    sim.measuring = measuring
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=_OPTIONS)
    cluster_pb2_grpc.add_WorkerServiceServicer_to_server(sim, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sim.address = f"127.0.0.1:{port}"
    for worker_id in worker_ids:
        sim.register(worker_id)
    ready.put((len(worker_ids), bool(sim.beat_port)))
    threads = [threading.Thread(target=sim.report_loop, args=(stop,), daemon=True),
               threading.Thread(target=sim.heartbeat_loop, args=(stop, interval), daemon=True),
               threading.Thread(target=sim.loop.run_forever, daemon=True)]
    for thread in threads:
        thread.start()
    stop.wait()
    sim.loop.call_soon_threadsafe(sim.loop.stop)
    for thread in threads:
        thread.join(timeout=15)
    server.stop(grace=0)
    tasks = asyncio.all_tasks(sim.loop)  # the connections' readers: cancelled, not left pending
    for task in tasks:
        task.cancel()
    if tasks:
        sim.loop.run_until_complete(_reap(tasks))
    sim.sent["port_failures"] = sim.port_failures
    sim.sent["report_port_failures"] = sim.report_port_failures
    out.put((sim.latencies, sim.failed, sim.reregistered, sim.asked_s, sim.sent, sim.report_failures))


def submit_process(address: str, admin: str, threads: int, prefix: str, seconds: float, go: Event,
                   out: Any) -> None:
    """``threads`` clients, each with its own channel, submitting one-task jobs back to back for
    ``seconds``; puts (latencies, failures)."""
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
    md = (("authorization", f"Bearer {admin}"),)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        stub = cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(address, options=_OPTIONS))
        go.wait()
        end = time.monotonic() + seconds
        n = 0
        mine: list[float] = []
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                stub.LaunchJob(C.LaunchJobRequest(name=f"{prefix}-{index}-{n}", serialized_entrypoint=entry,
                                                  resources=T.ResourceSpecProto(cpu_millicores=1000, replicas=1)),
                               metadata=md, timeout=30)
                mine.append(time.monotonic() - started)
            except grpc.RpcError:
                with lock:
                    failures[0] += 1
            n += 1
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put((latencies, failures[0]))


def _collect(stop: Event, sims: list[Any], out: Any) -> dict[str, int]:
    """Stop the simulated workers; what they sent, summed."""
    stop.set()
    sent: dict[str, int] = {}
    for _ in sims:
        for key, n in out.get(timeout=120)[4].items():
            sent[key] = sent.get(key, 0) + n
    return sent


def start_controller(tmp: Path, worker_timeout: float, *extra: str) -> tuple[subprocess.Popen[str], str, str, str]:
    state = tmp / "state"
    proc = subprocess.Popen(
        [sys.executable, *(os.environ["BENCH_WRAP"].split() if os.environ.get("BENCH_WRAP") else ["-m", "iris.cli.main"]), "controller", "serve", "--port", "0", "--state-dir", str(state),
         "--dashboard-port", "-1", "--worker-timeout", str(worker_timeout), "--max-finished-jobs", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"controller serving on (\S+)", line)
        if match:
            address = match.group(1)
            break
    else:
        raise SystemExit("the controller did not start")
    threading.Thread(target=lambda: [print(x, end="") for x in proc.stdout if "GC" in x], daemon=True).start()  # type: ignore[union-attr]
    admin = (state / "admin.token").read_text().strip()
    join = (state / "join.token").read_text().strip()
    return proc, address, admin, join


def storm(args: Any, stub: Any, md: Any, controller: psutil.Process, sims: list[Any], stop: Event,
          measuring: Event, out: Any) -> None:
    """Issue 27 item 4: with the fleet steady, one job puts a task on every slot at once; for the
    ``--seconds`` after it, count failed heartbeats and report calls (at the real worker's 5 s
    deadline), re-registrations and workers declared dead, and the heartbeat latencies."""
    time.sleep(args.warmup if args.warmup is not None else 10.0)  # the fleet's heartbeats reach their interval
    tasks = args.workers * args.slots
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
    cpu0 = sum(controller.cpu_times()[:2])
    measuring.set()
    t0 = time.monotonic()
    stub.LaunchJob(C.LaunchJobRequest(name="storm", serialized_entrypoint=entry, resources=T.ResourceSpecProto(
        cpu_millicores=1000, replicas=tasks)), metadata=md, timeout=120)
    all_running = None
    while time.monotonic() - t0 < args.seconds:
        if all_running is None:
            try:
                job = stub.GetJobStatus(C.GetJobStatusRequest(job_id="storm"), metadata=md, timeout=30).job
                if job.tasks_running >= tasks:
                    all_running = time.monotonic() - t0
            except grpc.RpcError:
                pass
        time.sleep(1.0)  # polling the job's state, not synchronising threads
    measuring.clear()
    cpu = sum(controller.cpu_times()[:2]) - cpu0
    dead = sum(1 for w in stub.ListWorkers(C.ListWorkersRequest(), metadata=md, timeout=120).workers if not w.healthy)
    stop.set()
    latencies: list[float] = []
    failed = reregistered = report_failures = port_failures = report_port_failures = 0
    for _ in sims:
        lat, f, r, _, sent, rf = out.get(timeout=300)
        port_failures += sent.get("port_failures", 0)
        report_port_failures += sent.get("report_port_failures", 0)
        latencies += lat
        failed += f
        reregistered += r
        report_failures += rf
    ms = [x * 1000 for x in latencies] or [0.0]
    running = f"all {tasks:,} dispatched after {all_running:.1f} s" if all_running is not None else \
        f"not all {tasks:,} dispatched within {args.seconds:g} s"
    print(f"storm: {args.workers:,} workers x {args.slots} slots, a task on every slot at once: {running}; in the "
          f"{args.seconds:g} s after the dispatch: heartbeats failed {failed:,} of {len(latencies) + failed:,}, "
          f"p50 {statistics.median(ms):.0f} ms p99 {percentile(ms, 0.99):.0f} ms max {max(ms):.0f} ms; report calls "
          f"failed {report_failures:,}; heartbeats the port failed (then by gRPC, as real workers) {port_failures:,}, "
          f"report calls it failed {report_port_failures:,}; "
          f"re-registered {reregistered:,}; declared dead {dead:,}; controller "
          f"{cpu / args.seconds:.0%} of a core   load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["heartbeats", "throughput", "submit", "storm"])
    parser.add_argument("--clients", type=int, default=20, help="submit: concurrent clients (threads over --processes)")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="processes hosting the simulated workers")
    parser.add_argument("--attempts", type=int, default=8, help="heartbeats: attempts each worker holds")
    parser.add_argument("--slots", type=int, default=8, help="cores (tasks of 1 cpu) per worker")
    parser.add_argument("--tasks", type=int, default=20_000, help="throughput: tasks in all")
    parser.add_argument("--jobs", type=int, default=1,
                        help="throughput: jobs the tasks are split over, all queued at once (a deep queue: 10)")
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval (the workers' default)")
    parser.add_argument("--seconds", type=float, default=20.0, help="heartbeats: measuring window")
    parser.add_argument("--worker-timeout", type=float, default=10.0)
    parser.add_argument("--shared-connection", action="store_true",
                        help="NOT how real workers behave: the simulated workers of a process share one "
                             "connection, and end reports carry no log_size (this benchmark's mode before "
                             "issue 27; reads better than a real fleet)")
    parser.add_argument("--grpc-heartbeats", action="store_true",
                        help="the controller serves no heartbeat port (--heartbeat-port off): heartbeats by the "
                             "Heartbeat RPC, as before issue 27 item 3")
    parser.add_argument("--grpc-reports", action="store_true",
                        help="the simulated workers send reports by the ReportTaskState RPC even when the heartbeat "
                             "port takes them (as workers did before issue 27 stop 35)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="heartbeats: seconds between all attempts running and the window (default: one "
                             "heartbeat interval, at least 5 s)")
    parser.add_argument("--max-heartbeat-rate", type=float, default=None,
                        help="the controller's --max-heartbeat-rate (default: its default; 1e9: every worker at "
                             "its own interval, as before the fleet-sized interval)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="iris-bench-fleet-"))
    extra = ["--max-heartbeat-rate", str(args.max_heartbeat_rate)] if args.max_heartbeat_rate else []
    if args.grpc_heartbeats:
        extra += ["--heartbeat-port", "off"]
    proc, address, admin, join = start_controller(tmp, args.worker_timeout, *extra)
    controller = psutil.Process(proc.pid)
    stub = cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(address, options=_OPTIONS))
    md = (("authorization", f"Bearer {admin}"),)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    measuring = ctx.Event()
    ready = ctx.Queue()
    out = ctx.Queue()
    ids = [f"sim-{i:05d}" for i in range(args.workers)]
    groups = [ids[i::args.processes] for i in range(args.processes)]
    mode = "hold" if args.scenario in ("heartbeats", "storm") else "complete"
    sims = [ctx.Process(target=sim_process, args=(address, join, group, mode, args.slots, args.attempts,
                                                  args.interval, ready, stop, out, measuring, args.shared_connection,
                                                  args.grpc_reports))
            for group in groups if group]
    started = time.monotonic()
    for sim in sims:
        sim.start()
    answers = [ready.get(timeout=600) for _ in sims]
    registered = sum(n for n, _ in answers)
    by_port = all(port for _, port in answers)
    print(f"{registered:,} simulated workers registered in {time.monotonic() - started:.1f} s "
          f"({len(sims)} processes; {'SHARED connections, no log_size' if args.shared_connection else 'a connection per worker, end reports with log_size, as real workers'}; "
          f"heartbeats by {'the heartbeat port' if by_port else 'the Heartbeat RPC'}, reports by "
          f"{'the port when it takes them' if by_port and not args.grpc_reports else 'the ReportTaskState RPC'})",
          flush=True)
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
    try:
        if args.scenario == "heartbeats":
            tasks = args.workers * args.attempts
            stub.LaunchJob(C.LaunchJobRequest(name="held", serialized_entrypoint=entry, resources=T.ResourceSpecProto(
                cpu_millicores=args.slots * 1000 // args.attempts, replicas=tasks)), metadata=md, timeout=60)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                job = stub.GetJobStatus(C.GetJobStatusRequest(job_id="held"), metadata=md, timeout=60).job
                if job.tasks_running >= tasks:
                    break
                time.sleep(0.5)  # polling the job's state, not synchronising threads
            print(f"{job.tasks_running:,} attempts running ({args.attempts} per worker)", flush=True)
            # Warm-up: the dispatch of every attempt ends with a backlog of acknowledgements (seconds
            # at 100 % of a core); the window starts once every worker has heartbeated after it.
            every = max(args.interval, args.workers / (args.max_heartbeat_rate or DEFAULT_HEARTBEAT_RATE))
            time.sleep(args.warmup if args.warmup is not None else max(5.0, every))
            cpu0 = sum(controller.cpu_times()[:2])
            measuring.set()
            time.sleep(args.seconds)  # the measuring window
            measuring.clear()
            cpu = sum(controller.cpu_times()[:2]) - cpu0
            dead = sum(1 for w in stub.ListWorkers(C.ListWorkersRequest(), metadata=md, timeout=60).workers
                       if not w.healthy)
            stop.set()
            latencies: list[float] = []
            failed = reregistered = 0
            asked = 0.0
            for _ in sims:
                lat, f, r, a, _, _ = out.get(timeout=120)
                latencies += lat
                failed += f
                reregistered += r
                asked = max(asked, a)
            ms = [x * 1000 for x in latencies]
            every = max(args.interval, asked)
            print(f"heartbeats: {args.workers:,} workers x {args.attempts} attempts every {every:g} s "
                  f"({args.workers / every:,.0f}/s): "
                  f"controller {cpu / args.seconds:.0%} of a core = {cpu / max(1, len(ms) + failed) * 1000:.3f} ms CPU per "
                  f"heartbeat, heartbeat p50 {statistics.median(ms):.1f} ms p90 {percentile(ms, 0.9):.1f} ms "
                  f"p99 {percentile(ms, 0.99):.1f} ms, failed {failed:,} of {len(ms) + failed:,}, "
                  f"declared dead {dead}, re-registered {reregistered}   load average {os.getloadavg()[0]:.2f}")
        elif args.scenario == "storm":
            storm(args, stub, md, controller, sims, stop, measuring, out)
        elif args.scenario == "submit":
            go = ctx.Event()
            per = [args.clients // args.processes + (1 if i < args.clients % args.processes else 0)
                   for i in range(args.processes)]
            subs = [ctx.Process(target=submit_process, args=(address, admin, n, f"s{i}", args.seconds, go, out))
                    for i, n in enumerate(per) if n]
            for sub in subs:
                sub.start()
            time.sleep(3)  # the clients' processes import grpc and connect before the window opens
            cpu0 = sum(controller.cpu_times()[:2])
            go.set()
            latencies = []
            failed = 0
            for _ in subs:
                lat, f = out.get(timeout=args.seconds + 120)
                latencies += lat
                failed += f
            cpu = sum(controller.cpu_times()[:2]) - cpu0
            for sub in subs:
                sub.join(timeout=30)
            ms = [x * 1000 for x in latencies]
            print(f"submit: {args.clients} clients for {args.seconds:g} s ({args.workers} workers): "
                  f"{len(ms) / args.seconds:,.0f} LaunchJob/s, p50 {statistics.median(ms):.1f} ms "
                  f"p99 {percentile(ms, 0.99):.1f} ms, failed {failed}; controller {cpu / args.seconds:.0%} of a core, "
                  f"{cpu / max(1, len(ms)) * 1000:.2f} ms CPU per job   load average {os.getloadavg()[0]:.2f}")
            _collect(stop, sims, out)
        else:
            cpu0 = sum(controller.cpu_times()[:2])
            t0 = time.monotonic()
            names = [f"burst-{i}" for i in range(args.jobs)]
            for i, name in enumerate(names):  # --jobs N: the tasks split over N jobs queued at once
                replicas = args.tasks // args.jobs + (1 if i < args.tasks % args.jobs else 0)
                stub.LaunchJob(C.LaunchJobRequest(name=name, serialized_entrypoint=entry,
                                                  resources=T.ResourceSpecProto(cpu_millicores=1000, replicas=replicas)),
                               metadata=md, timeout=120)
            states: list[int] = []
            for name in names:
                while True:
                    job = stub.GetJobStatus(C.GetJobStatusRequest(job_id=name), metadata=md, timeout=60).job
                    if job.state in (T.JOB_STATE_SUCCEEDED, T.JOB_STATE_FAILED, T.JOB_STATE_KILLED):
                        states.append(job.state)
                        break
                    time.sleep(0.2)  # polling the job's state, not synchronising threads
            wall = time.monotonic() - t0
            cpu = sum(controller.cpu_times()[:2]) - cpu0
            outcome = ", ".join(sorted({T.JobState.Name(state) for state in states}))
            print(f"throughput: {args.tasks:,} tasks in {args.jobs} job(s) on {args.workers} workers x {args.slots} slots: "
                  f"{outcome} in {wall:.2f} s = {args.tasks / wall:,.0f} tasks/s; controller "
                  f"{cpu / wall:.0%} of a core, {cpu / args.tasks * 1000:.3f} ms CPU per task   "
                  f"load average {os.getloadavg()[0]:.2f}")
            sent = _collect(stop, sims, out)
            print(f"  the workers sent {sent['heartbeats']:,} heartbeats ({sent['attempts'] / max(1, sent['heartbeats']):.1f} "
                  f"attempts each) and {sent['reports']:,} end-report calls ({sent['updates'] / max(1, sent['reports']):.1f} "
                  f"updates each); the controller sent {sent['run_calls']:,} RunTasks calls "
                  f"({sent['runs'] / max(1, sent['run_calls']):.1f} tasks each)")
    finally:
        stop.set()
        for sim in sims:
            sim.join(timeout=30)
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
