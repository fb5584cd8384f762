"""The worker's link to the controller: registration, heartbeats and the outbox of reports.

- Registration carries the complete observed set with ``incarnation`` and ``sequence``; a
  heartbeat carries it too, and the controller reconciles it level-triggered (DESIGN §3).
- Every report is queued in the outbox (coalesced per attempt; a terminal report is final),
  flushed at once by the sender thread in one batch, and retried with capped exponential backoff
  until the controller acknowledges it; then ``on_acknowledged`` is told which reports landed.
- Heartbeats and reports go by the controller's heartbeat port when its registration reply names
  one (``iris.rpc.beats``: one connection for both, a fraction of a gRPC call's cost to the controller),
  by gRPC when it names none, and for a while after the port failed.
- While the controller is unreachable the link says so; the first success after that registers
  again with the set as it is then (the controller may have restarted and forgotten us).
- What the controller says comes back to the worker as the attempt machine's events (``LinkSide.
  on_event``): kills in any reply (``KillRequested``), acknowledged reports (``ReportsAcknowledged``),
  deleted jobs (``JobsDeleted``). The link asks the worker only for what it sends: the observed
  set, the metadata, a result, the log sizes of ended attempts (``LinkSide``).

The link's shared flags (registered, reachable, the failure count) and the outbox are guarded by
one lock; no lock is held across an RPC. Every loop body is a public single-pass method. This is
the worker's client edge: protobufs are built and read here (and in ``service.py``), not in
``worker.py``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from iris.cluster.clock import Clock
from iris.cluster.files import write_private
from iris.cluster.rules import FLOW_CONTROL_OPTIONS
from iris.cluster.types import WorkerMetadata, split_host
from iris.cluster.validation import MAX_MESSAGE_BYTES
from iris.cluster.worker.attempts import (
    AttemptKey,
    AttemptStatus,
    Event,
    JobsDeleted,
    KillRequested,
    ReportsAcknowledged,
)
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.beats import BeatClient, BeatRefused, client_ssl_context

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


MAX_RECONNECT_BACKOFF_S = 1.0
"""The longest a worker's channel waits between attempts to reach its controller again."""
REPORT_BATCH_BYTES = 4 * 1024 * 1024
"""One ReportTaskState carries at most about this much (a report with a result may be 10 MiB)."""


BEAT_PORT_RETRY_S = 60.0
"""After the heartbeat port failed, heartbeats go by gRPC this long before the port is tried again."""


MAX_REPORT_ERROR_CHARS = 64 * 1024
"""An attempt's error in a report keeps at most its last this many characters."""


def status_proto(status: AttemptStatus) -> cluster_pb2.WorkerTaskStatus:
    proto = cluster_pb2.WorkerTaskStatus(
        task_id=status.task_id,
        attempt_id=status.attempt_id,
        state=status.state,  # type: ignore[arg-type]
        exit_code=status.exit_code,
        started_at_ms=status.started_at_ms,
        finished_at_ms=status.finished_at_ms,
        pid=status.pid,
    )
    if status.error:
        # Whatever a task wrote, a report stays small (the controller refuses huge messages, and an
        # attempt whose report never lands would keep its worker's heartbeats from landing too).
        proto.error = status.error if len(status.error) <= MAX_REPORT_ERROR_CHARS else (
            "...(cut)\n" + status.error[-MAX_REPORT_ERROR_CHARS:])
    if status.ports:
        proto.ports.update(status.ports)
    if status.job_uid:
        proto.job_uid = status.job_uid
    if status.busy_ports:
        proto.busy_ports.extend(status.busy_ports)
    return proto


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.Call) else None


def _read_credential(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _rpc_error_text(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)


@dataclass(frozen=True, slots=True)
class LinkConfig:
    controller_address: str
    rpc_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    join_token: str = ""
    """The cluster's join token: exchanged at the first registration for a credential of our own."""
    credential_path: Path | None = None
    """Where that credential is kept (mode 0600), so a restarted worker keeps its identity."""
    channel_credentials: grpc.ChannelCredentials | None = None
    """TLS to the controller (None: plaintext)."""
    fence_after_s: float | None = None
    """Cut off from the controller this long, stop every task (``--fence-after``); None:
    ``fence_after(the controller's liveness timeout)``."""
    tls_ca: Path | None = None
    """The CA the heartbeat port's TLS is verified against (with ``channel_credentials``)."""


def fence_after(liveness_timeout_s: float) -> float:
    """The default fence: beyond the controller's liveness timeout for this worker (it has retried
    the tasks elsewhere by then), by half of it and at least 10 s, so a controller restart of a few
    seconds or a slow stretch kills nothing."""
    return max(1.5 * liveness_timeout_s, liveness_timeout_s + 10.0)


@dataclass(frozen=True, slots=True)
class OutgoingLog:
    """Bytes of one attempt's log from ``start_offset``; ``complete``: its last ones."""

    key: AttemptKey
    job_uid: str
    start_offset: int
    data: bytes
    complete: bool


class LinkSide(Protocol):
    """What the link needs of its worker: what to send, and where the controller's word goes."""

    def observed(self) -> tuple[list[AttemptStatus], int]:
        """The observed set and the RunTask sequence it covers."""
        ...

    def metadata(self) -> WorkerMetadata: ...

    def unfit(self) -> str:
        """Why the worker cannot run tasks as promised ("": it can); sent with every beat."""
        ...

    def result_of(self, key: AttemptKey) -> bytes:
        """A succeeded callable attempt's pickled return value (b"": none), sent with its report."""
        ...

    def before_end_reports(self, keys: list[AttemptKey]) -> dict[AttemptKey, int]:
        """Ship these ended attempts' logs; the sizes their reports may carry (completing them)."""
        ...

    def on_event(self, event: Event) -> None:
        """What the controller said, as the attempt machine's event."""
        ...


class ControllerLink:
    def __init__(self, config: LinkConfig, clock: Clock, *, worker_id: str, incarnation: str,
                 worker: LinkSide) -> None:
        self._config = config
        self._clock = clock
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.address = ""
        self._leaving = False
        self._worker = worker
        self._lock = threading.Lock()
        self._outbox: dict[AttemptKey, AttemptStatus] = {}
        self._inflight: dict[AttemptKey, AttemptStatus] = {}
        self._idle = threading.Condition(self._lock)
        self._registered = False
        self.asked_interval_s = 0.0
        """The heartbeat interval the controller last asked for (it grows with the fleet: DESIGN §3)."""
        self._reachable = True
        self._failures = 0
        """Failed controller calls so far; a success that started before a failure is stale."""
        self.outbox_event = threading.Event()
        # gRPC's own reconnect backoff grows to 120 s by default: a worker whose controller was down
        # a while would fail every call fast for that long after it came back, and be declared dead.
        # Keep it well below any worker timeout.
        reconnect_ms = int(min(config.backoff_max_s, MAX_RECONNECT_BACKOFF_S) * 1000)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.initial_reconnect_backoff_ms", min(100, reconnect_ms)),
                   ("grpc.min_reconnect_backoff_ms", min(100, reconnect_ms)),
                   ("grpc.max_reconnect_backoff_ms", reconnect_ms), *FLOW_CONTROL_OPTIONS]
        if config.channel_credentials is not None:
            self._channel = grpc.secure_channel(config.controller_address, config.channel_credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(config.controller_address, options=options)
        self.stub = cluster_pb2_grpc.ControllerServiceStub(self._channel)
        self._credential = _read_credential(config.credential_path)
        self.controller_token = ""
        """What the controller presents on its calls to us (learnt at registration)."""
        self.liveness_timeout_s = 0.0
        """How long the controller lets us be silent before declaring us dead (from its replies)."""
        self._last_heard = clock.monotonic()
        self._fenced = False
        self._registered_event = threading.Event()
        """Set once a registration was accepted (with the controller's token, when it sends one)."""
        self._beats: BeatClient | None = None
        """The controller's heartbeat port, as its last registration reply named it (None: gRPC)."""
        self._port_retry_at: dict[str, float] = {}
        """Per kind of call ("heartbeats", "reports"): when the port is tried again after it failed one.
        Both go by the same connection (``BeatClient`` is shared by the heartbeat and outbox threads)."""

    def await_registered(self, timeout_s: float) -> bool:
        """Whether a registration was accepted, waiting up to ``timeout_s`` for one in flight: the
        controller may call us the moment it has registered us, before its reply reaches us."""
        return self._registered_event.wait(timeout_s)

    @property
    def auth(self) -> bool:
        """Whether this worker takes part in authentication (it has a join token or a credential)."""
        return bool(self._config.join_token or self._credential)

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Call metadata with our credential (the join token until we have one)."""
        token = self._credential or self._config.join_token
        return (("authorization", f"Bearer {token}"),) if token else None

    def _adopt(self, response: cluster_pb2.Controller.RegisterWorkerResponse) -> None:
        self._heard(response.heartbeat_interval_ms, response.liveness_timeout_ms)
        if response.controller_token:
            self.controller_token = response.controller_token
        if response.credential:
            self._credential = response.credential
            path = self._config.credential_path
            if path is not None:
                write_private(path, response.credential + "\n")
        self._adopt_beat_port(response.heartbeat_port)

    def _adopt_beat_port(self, port: int) -> None:
        """The heartbeat port a registration reply named (0: none), with the credential we hold now:
        one connection for heartbeats and reports. An unchanged port and credential keep it (the
        heartbeat and outbox threads may be using it)."""
        config, token, beats = self._config, self._credential or self._config.join_token, self._beats
        if beats is not None and beats.port == port and beats.token == token:
            return
        # A new port (a restarted controller) is tried at once.
        self._beats = None
        self._port_retry_at.clear()
        if beats is not None:
            beats.close()
        if port:
            tls = client_ssl_context(config.tls_ca) if config.channel_credentials is not None else None
            self._beats = BeatClient(split_host(config.controller_address), port, token, self.worker_id,
                                     config.rpc_timeout_s, tls)

    def close(self) -> None:
        if self._beats is not None:
            self._beats.close()
        self._channel.close()

    def fetch_bundle(self, bundle_hash: str) -> bytes:
        """A workspace bundle from the controller (only those an attempt here needs)."""
        response = self.stub.FetchBundle(cluster_pb2.Controller.FetchBundleRequest(bundle_hash=bundle_hash),
                                         metadata=self.metadata(), timeout=max(self._config.rpc_timeout_s, 60.0))
        return bytes(response.blob)

    # -- reachability -------------------------------------------------------------------------

    def _failed(self, error: grpc.RpcError) -> None:
        with self._lock:
            was_reachable = self._reachable
            self._failures += 1
            self._reachable = False
        if was_reachable:
            logger.warning("controller unreachable worker=%s: %s", self.worker_id, _rpc_error_text(error))

    def _failures_now(self) -> int:
        with self._lock:
            return self._failures

    # -- registration and heartbeats ----------------------------------------------------------

    def register_once(self) -> bool:
        """Register with the complete observed set. True when the controller accepted."""
        failures_before = self._failures_now()
        statuses, sequence = self._worker.observed()
        request = cluster_pb2.Controller.RegisterWorkerRequest(
            worker_id=self.worker_id,
            address=self.address,
            metadata=self._worker.metadata().to_proto(),
            tasks=[status_proto(s) for s in statuses],
            incarnation=self.incarnation,
            sequence=sequence,
            unfit=self._worker.unfit(),
        )
        try:
            response = self.stub.RegisterWorker(request, timeout=self._config.rpc_timeout_s, metadata=self.metadata())
        except grpc.RpcError as e:
            if _code(e) is grpc.StatusCode.UNAUTHENTICATED and self._credential and self._config.join_token:
                # Our credential was revoked (or the controller's state was reset): join again.
                logger.warning("worker credential refused (%s); registering with the join token", _rpc_error_text(e))
                self._credential = ""
            self._failed(e)
            return False
        self._adopt(response)
        if response.accepted:
            self._registered_event.set()
        with self._lock:
            if self._failures == failures_before:
                # A call that failed while this one was in flight is newer news: stay "unreachable",
                # so the next success registers again with the set as it is then.
                self._reachable = True
            self._registered = response.accepted
        logger.info("registered worker=%s accepted=%s tasks=%d", self.worker_id, response.accepted, len(statuses))
        self._apply_kills(response.kill)
        return bool(response.accepted)

    def leave(self) -> None:
        """The worker is shutting down: never register again (its reports still go out). A worker
        the controller declared dead while it stops must not come back and be given tasks."""
        with self._lock:
            self._leaving = True

    def heartbeat_once(self) -> bool:
        """One heartbeat (or a registration when we are not registered). True when delivered."""
        with self._lock:
            must_register = not self._registered or not self._reachable
            leaving = self._leaving
        if must_register:
            return False if leaving else self.register_once()
        statuses, sequence = self._worker.observed()
        request = cluster_pb2.Controller.HeartbeatRequest(
            worker_id=self.worker_id, tasks=[status_proto(s) for s in statuses], incarnation=self.incarnation,
            sequence=sequence, unfit=self._worker.unfit(),
        )
        try:
            response = self._send_heartbeat(request)
        except grpc.RpcError as e:
            self._failed(e)
            return False
        self._heard(response.heartbeat_interval_ms, response.liveness_timeout_ms)
        self._apply_kills(response.kill)
        if response.forget_bundles or response.forget_job_uids:
            self._worker.on_event(JobsDeleted(tuple(response.forget_job_uids), tuple(response.forget_bundles)))
        if response.reregister:
            with self._lock:
                self._registered = False
            if leaving:
                return False
            logger.info("controller asked to re-register worker=%s", self.worker_id)
            return self.register_once()
        return True

    def _send_heartbeat(self, request: cluster_pb2.Controller.HeartbeatRequest) -> cluster_pb2.Controller.HeartbeatResponse:
        return self._by_port("heartbeats", lambda port: port.beat(request), lambda: self.stub.Heartbeat(
            request, timeout=self._config.rpc_timeout_s, metadata=self.metadata()))

    def _send_reports(self, request: cluster_pb2.Controller.ReportTaskStateRequest
                      ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        # A batch the port may have applied before it failed goes again: reports are idempotent.
        return self._by_port("reports", lambda port: port.report(request), lambda: self.stub.ReportTaskState(
            request, timeout=self._config.rpc_timeout_s, metadata=self.metadata()))

    def _by_port(self, kind: str, by_port: Callable[[BeatClient], _T], by_rpc: Callable[[], _T]) -> _T:
        """By the heartbeat port when the controller named one (a fraction of a gRPC call's cost to
        it); by the RPC when it did not, or when the port failed this ``kind`` of call: that one, and
        every one for ``BEAT_PORT_RETRY_S`` after. A refusal by the port (a revoked credential) is
        then the RPC's refusal too, and handled as such."""
        port = self._beats
        if port is not None and self._clock.monotonic() >= self._port_retry_at.get(kind, 0.0):
            try:
                return by_port(port)
            except (OSError, BeatRefused) as e:
                logger.warning("heartbeat port %s:%d failed %s worker=%s: %s; %s by gRPC for %.0fs",
                               port.host, port.port, kind, self.worker_id, e, kind, BEAT_PORT_RETRY_S)
                self._port_retry_at[kind] = self._clock.monotonic() + BEAT_PORT_RETRY_S
        return by_rpc()

    def _apply_kills(self, kills: Iterable[cluster_pb2.WorkerTaskStatus]) -> None:
        for entry in kills:
            logger.info("controller asked to kill task=%s attempt=%d", entry.task_id, entry.attempt_id)
            self._worker.on_event(KillRequested((entry.task_id, entry.attempt_id), 0.0, entry.job_uid))

    def push_logs(self, chunks: list[OutgoingLog]) -> list[int] | None:
        """Ship log chunks to the controller; per chunk the offset it now holds up to (-1: it keeps
        none of that attempt). None when the controller could not be reached (try again later)."""
        with self._lock:
            if not self._registered or not self._reachable:
                return None
        protos = [cluster_pb2.LogChunk(task_id=c.key[0], attempt_id=c.key[1], job_uid=c.job_uid,
                                       start_offset=c.start_offset, data=c.data, complete=c.complete) for c in chunks]
        try:
            response = self.stub.PushTaskLogs(
                cluster_pb2.Controller.PushTaskLogsRequest(worker_id=self.worker_id, chunks=protos),
                timeout=self._config.rpc_timeout_s, metadata=self.metadata(),
            )
        except grpc.RpcError as e:
            logger.debug("log shipping failed: %s", e)
            return None
        return list(response.next_offsets)

    # -- outbox -------------------------------------------------------------------------------

    def report(self, status: AttemptStatus) -> None:
        """Queue a report; a newer state of the same attempt replaces a queued one, except that
        a terminal report is final."""
        with self._lock:
            queued = self._outbox.get(status.key)
            if queued is not None and queued.finished:
                return
            self._outbox[status.key] = status
        self.outbox_event.set()

    def pending_reports(self) -> int:
        """Attempts with a report not yet acknowledged by the controller."""
        with self._lock:
            return len(self._outbox.keys() | self._inflight.keys())

    def flush_once(self) -> bool:
        """Send every pending report in one ReportTaskState (by the heartbeat port when there is one).
        True when acknowledged (or nothing to send); on failure the batch goes back into the outbox,
        behind newer states."""
        with self._lock:
            if not self._outbox:
                return True
            pending = self._outbox
            self._outbox = {}
            self._inflight = pending
        # Built outside the lock: a result is read from disk and may be megabytes.
        batch: dict[tuple[str, int], AttemptStatus] = {}
        overflow: dict[tuple[str, int], AttemptStatus] = {}
        updates: list[cluster_pb2.WorkerTaskStatus] = []
        size = 0
        for key, status in pending.items():
            proto = status_proto(status)
            if status.state == cluster_pb2.TASK_STATE_SUCCEEDED:
                proto.result = self._worker.result_of(key)
            weight = proto.ByteSize()
            if updates and size + weight > REPORT_BATCH_BYTES:
                overflow[key] = status  # the next call takes it (results are big)
                continue
            batch[key] = status
            updates.append(proto)
            size += weight
        if overflow:
            with self._lock:
                self._inflight = batch
                merged = dict(overflow)
                merged.update(self._outbox)  # a newer state for the same attempt wins
                self._outbox = merged
            self.outbox_event.set()
        ended = [key for key, status in batch.items() if status.finished]
        if ended:
            # The whole log of an attempt reaches the controller before its end does: whoever sees
            # the attempt ended can read all of its output. The report says how big that log is, and
            # so completes it there (an attempt with no output costs no log call at all).
            try:
                sizes = self._worker.before_end_reports(ended)
            except Exception:
                logger.exception("shipping the logs of ended attempts failed")
                sizes = {}
            if sizes:
                for key, proto in zip(batch, updates, strict=True):
                    if key in sizes:
                        proto.log_size = sizes[key]
        request = cluster_pb2.Controller.ReportTaskStateRequest(worker_id=self.worker_id, updates=updates,
                                                                unfit=self._worker.unfit())
        try:
            response = self._send_reports(request)
        except grpc.RpcError as e:
            with self._lock:
                merged = dict(self._inflight)
                merged.update(self._outbox)  # a newer state for the same attempt wins
                self._outbox = merged
                self._inflight = {}
            self._failed(e)
            return False
        self._heard()
        self._worker.on_event(ReportsAcknowledged(tuple((s.key, s.state) for s in batch.values())))
        with self._lock:
            self._inflight = {}
            self._idle.notify_all()
            came_back = not self._reachable
            if came_back:
                # It is back: it may have lost us (restart), so register with the full set again.
                self._reachable = True
                self._registered = False
        if came_back:
            self.register_once()
        self._apply_kills(response.kill)
        return True

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait (in real time, bounded) until every queued report was acknowledged."""
        with self._idle:
            drained = self._idle.wait_for(lambda: not self._outbox and not self._inflight, timeout_s)
            if not drained:
                logger.warning("undelivered reports at shutdown: %d", len(self._outbox) + len(self._inflight))
            return drained

    # -- loops --------------------------------------------------------------------------------

    # -- the fence ----------------------------------------------------------------------------

    def _heard(self, interval_ms: int | None = None, liveness_timeout_ms: int = 0) -> None:
        """The controller answered: the fence starts over. A registration or heartbeat reply also
        says how often to beat and how long we may be silent."""
        self._last_heard = self._clock.monotonic()
        self._fenced = False
        if interval_ms is not None:
            self.asked_interval_s = interval_ms / 1000
        if liveness_timeout_ms:
            self.liveness_timeout_s = liveness_timeout_ms / 1000

    def fence_once(self) -> bool:
        """Cut off from the controller for longer than the fence: stop every live task (its retry
        runs elsewhere by now; two copies of a rank must not write one checkpoint). True when it
        fenced now. Once per silence: a kill already asked for is not asked again."""
        if self._fenced or (not self._config.fence_after_s and self.liveness_timeout_s <= 0):
            return False  # no fence given, and no timeout heard yet to derive one from
        fence = self._config.fence_after_s or fence_after(self.liveness_timeout_s)
        silent = self._clock.monotonic() - self._last_heard
        if silent <= fence:
            return False
        self._fenced = True
        live = [s for s in self._worker.observed()[0] if not s.finished]
        if live:
            logger.error("no word from the controller for %.0fs (fence %.0fs): stopping %d task(s) worker=%s",
                         silent, fence, len(live), self.worker_id)
        for status in live:
            self._worker.on_event(KillRequested(status.key, 0.0, status.job_uid))
        return True

    def heartbeat_loop(self, stop: threading.Event, interval_s: float) -> None:
        """Heartbeat every ``interval_s``, or the longer interval the controller asks for; spread by
        up to 10 % either way so a fleet that (re)started together does not stay in step. Between
        beats, the fence (``fence_once``)."""
        while not stop.is_set():
            try:
                self.heartbeat_once()
                self.fence_once()
            except Exception:
                logger.exception("heartbeat failed worker=%s", self.worker_id)
            wait = max(interval_s, self.asked_interval_s)
            if self._clock.wait(stop, wait * random.uniform(0.9, 1.1) if wait > interval_s else wait):
                return

    def outbox_loop(self, stop: threading.Event) -> None:
        backoff = self._config.backoff_initial_s
        while True:
            self.outbox_event.wait()
            if stop.is_set():
                return
            self.outbox_event.clear()
            try:
                ok = self.flush_once()
            except Exception:
                logger.exception("outbox flush failed worker=%s", self.worker_id)
                ok = False
            if ok:
                backoff = self._config.backoff_initial_s
                continue
            self.outbox_event.set()  # retry even when nothing new arrives
            if self._clock.wait(stop, backoff):
                return
            backoff = min(backoff * 2, self._config.backoff_max_s)
