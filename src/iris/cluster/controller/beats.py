"""The controller's heartbeat port (DESIGN §3; the wire is in ``iris.rpc.beats``).

One thread runs an asyncio loop that owns every heartbeat connection. It reads frames and answers
the heartbeats that arrived together (all those read in one turn of the loop) as one batch: one
change under the controller's lock for all of them (``Controller.heartbeats``), no thread
hand-off (gRPC's Python server makes three per call). While the lock is busy (a fleet-wide
dispatch) the next frames wait in the sockets and the next batch is larger, so a heartbeat needs
no turn of the lock of its own however many other callers want it; a batch whose replies kill
waits for that decision to be durable (``Change.settle``) before they leave.

Bad input never hurts the controller or another worker: nothing is parsed before a connection's
length prefix is checked against its cap (``HELLO_CAP`` until the hello authenticated it, then the
Heartbeat RPC's); a refused hello or frame gets a reply naming the field and the rule and only its
connection is closed; a connection that says nothing is closed after ``hello_timeout_s`` (before
its hello) or ``idle_s``; at most ``max_unauthenticated`` connections may wait for their hello.
Every heartbeat is authenticated again (a revoked credential stops at its next beat).

A connection whose hello says ``multiplex`` carries the worker's reports too, each frame tagged
with its kind and an id its reply echoes (``iris.rpc.beats.TAG``). Reports need their write durable
before the reply (the worker then forgets them), so they are not answered on the loop: the report
frames read while a batch was being applied go to one of ``REPORT_THREADS`` threads as one batch,
one change for all of them (``Controller.report_task_states``), and their replies come back to the
loop to be written, out of order with the connection's heartbeats. A heartbeat never waits for a report's
write. One connection per worker for both: a fleet's worth of file descriptors, not two.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence

from iris.cluster.errors import InvalidArgument, IrisError
from iris.cluster.rules import IDLE_CONNECTION_MS, MAX_REQUEST_BYTES
from iris.rpc.beats import HEADER, HEARTBEAT, HELLO_CAP, REPORT, TAG, frame

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
MAX_UNAUTHENTICATED = 1024
MAX_IN_FLIGHT = 16
"""Frames one connection may send ahead of their replies (a worker has a heartbeat and a batch of
reports in flight at most)."""
MAX_REPORT_BATCH = 128
"""Report frames applied in one change at most (each a worker's batch of reports): the lock is let
go between them, so heartbeats are not held behind a fleet's worth of reports."""
REPORT_THREADS = 4
"""Report batches applied at once: one is applied while another's write is made durable."""
SWEEP_S = 2.0
"""How often connections past their hello timeout or idle are looked for."""

Hello = Callable[[bytes], tuple[str, str, bool, bytes]]
"""A hello frame -> (its credential, its worker id, whether its frames are tagged (``multiplex``:
heartbeats and reports), the reply); raises IrisError to refuse it."""
Beats = Callable[[Sequence[tuple[str, str, bytes]]], list[tuple[bytes, bool]]]
"""Heartbeat frames that arrived together, each as (its connection's credential and worker id, the
frame) -> each one's reply, and whether that reply refuses it (its connection is then closed).
``service.ControllerServiceImpl`` reads and writes the messages: this module moves bytes. The same
signature takes a batch of report frames (``reports``)."""
Refuse = Callable[[IrisError], bytes]
"""The reply that refuses a frame, naming the rule (``error``'s message and status code)."""


class BeatServer:
    """The listening socket is bound at construction (``port`` 0 picks a free one); ``start`` runs
    the loop thread and ``stop`` closes every connection and joins it."""

    def __init__(self, hello: Hello, beats: Beats, refuse: Refuse, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, frame_cap: int = MAX_REQUEST_BYTES,
                 idle_s: float = IDLE_CONNECTION_MS / 1000, hello_timeout_s: float = HELLO_TIMEOUT_S,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED, reports: Beats | None = None) -> None:
        """``reports``: a batch of report frames -> their replies (None: a multiplexed hello is refused)."""
        self.hello, self.beats, self.refuse, self.reports = hello, beats, refuse, reports
        self._batch: list[_Frame] = []
        self._reports = _ReportBatches(self)
        self.frame_cap = frame_cap
        self.idle_s, self.hello_timeout_s = idle_s, hello_timeout_s
        self.max_unauthenticated = max_unauthenticated
        self._ssl = ssl_context
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=4096)
        self.port: int = self._sock.getsockname()[1]
        self.connections: set[_BeatConnection] = set()
        self.waiting_hello = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failed: Exception | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iris-heartbeat-port", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failed is not None:
            raise OSError(f"the heartbeat port could not start: {self._failed}") from self._failed
        if self.reports is not None:
            self._reports.start()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:  # never started, failed to, or stopped
            self._sock.close()
            return
        self._loop = None  # a second stop does nothing
        self._reports.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(loop.create_server(
                lambda: _BeatConnection(self, loop), sock=self._sock, ssl=self._ssl,
                ssl_handshake_timeout=self.hello_timeout_s if self._ssl is not None else None))
        except Exception as e:
            self._failed = e
            self._sock.close()
            loop.close()
            self._started.set()
            return
        self._loop = loop
        loop.call_later(SWEEP_S, self._sweep, loop)
        self._started.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for connection in list(self.connections):
                connection.transport.abort()
            loop.run_until_complete(asyncio.sleep(0))  # let the aborted transports finish closing
            loop.close()

    def enqueue(self, connection: _BeatConnection, message: bytes, tag: bytes) -> None:
        """Answered with the others read in this turn of the loop (``_answer_batch`` runs after them)."""
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._answer_batch)
        self._batch.append((connection, message, tag))

    def _answer_batch(self) -> None:
        batch, self._batch = self._batch, []
        _answer(batch, self.answers(self.beats, batch, "heartbeats"))

    def answers(self, handle: Beats, batch: Sequence[_Frame], what: str) -> list[tuple[bytes, bool]]:
        try:
            return handle([(connection.token, connection.worker_id or "", message) for connection, message, _ in batch])
        except Exception as e:  # a bug, not a refusal: every frame of the batch is told so
            logger.exception("heartbeat port: a batch of %d %s failed", len(batch), what)
            return [(self.refuse(IrisError(f"internal error: {e}")), True)] * len(batch)

    def report(self, connection: _BeatConnection, message: bytes, tag: bytes) -> None:
        self._reports.add((connection, message, tag))

    def answer_later(self, batch: list[_Frame], results: list[tuple[bytes, bool]]) -> None:
        """From the reports' thread: the replies are written by the loop."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(_answer, batch, results)
            except RuntimeError:  # the loop closed meanwhile (stopping): its connections are gone
                pass

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for connection in list(self.connections):
            limit = self.hello_timeout_s if connection.worker_id is None else self.idle_s
            if now - connection.seen > limit:
                connection.transport.close()
        loop.call_later(SWEEP_S, self._sweep, loop)


def _answer(batch: Sequence[_Frame], results: list[tuple[bytes, bool]]) -> None:
    for (connection, _, tag), (reply, refused) in zip(batch, results, strict=True):
        connection.answer(reply, refused, tag)


class _ReportBatches:
    """The reports read on the loop, applied by ``REPORT_THREADS`` threads of their own, each taking
    what arrived while it applied its previous batch (its write made durable included), at most
    ``MAX_REPORT_BATCH`` frames. Several, so that one batch is applied while another's write is
    made durable (one transaction for several, ``commits.GroupCommit``)."""

    def __init__(self, server: BeatServer) -> None:
        self._server = server
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Frame] = []
        self._stopping = False
        self._idle = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name=f"iris-report-port-{i}", daemon=True)
                         for i in range(REPORT_THREADS)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def add(self, report: _Frame) -> None:
        with self._cond:
            self._pending.append(report)
            if self._idle:
                self._cond.notify()

    def _run(self) -> None:
        server, handle = self._server, self._server.reports
        assert handle is not None
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if self._stopping:
                    return
                batch, self._pending = self._pending[:MAX_REPORT_BATCH], self._pending[MAX_REPORT_BATCH:]
            server.answer_later(batch, server.answers(handle, batch, "reports"))


class _BeatConnection(asyncio.Protocol):
    def __init__(self, server: BeatServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._buffer = bytearray()
        self.token = ""
        self.worker_id: str | None = None
        """Set once the hello was accepted."""
        self.multiplex = False
        """The hello said its frames are tagged (heartbeats and reports)."""
        self.seen = loop.time()
        self._closing = False
        self.in_batch = 0
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self._server
        if server.waiting_hello >= server.max_unauthenticated:
            self._closing = True
            transport.abort()
            return
        server.connections.add(self)
        server.waiting_hello += 1
        transport.set_write_buffer_limits(high=1 << 20)

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        if self in server.connections:
            server.connections.discard(self)
            if self.worker_id is None:
                server.waiting_hello -= 1

    def pause_writing(self) -> None:  # a caller that does not read its replies is not read from either
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.seen = self._loop.time()
        buffer = self._buffer
        buffer += data
        while not self._closing and len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            cap = HELLO_CAP if self.worker_id is None else self._server.frame_cap
            if size > cap:
                what = "hello" if self.worker_id is None else "tagged" if self.multiplex else "heartbeat"
                self._refuse(InvalidArgument(f"a {what} frame of {size} bytes is over this connection's cap of "
                                             f"{cap} bytes"))
                return
            if len(buffer) < HEADER.size + size:
                return
            message = bytes(buffer[HEADER.size:HEADER.size + size])
            del buffer[:HEADER.size + size]
            if self.worker_id is None:
                self._hello(message)
            else:
                self._frame(message)

    def _hello(self, message: bytes) -> None:
        try:
            token, worker_id, multiplex, reply = self._server.hello(message)
            if multiplex and self._server.reports is None:
                raise InvalidArgument("multiplex: this heartbeat port takes heartbeats only (untagged); send reports "
                                      "by ReportTaskState")
        except IrisError as e:
            self._refuse(e)
            return
        self.token, self.worker_id, self.multiplex = token, worker_id, multiplex
        self._server.waiting_hello -= 1
        self.transport.write(frame(reply))

    def _frame(self, message: bytes) -> None:
        tag = b""
        kind = HEARTBEAT
        if self.multiplex:
            if len(message) < TAG.size:
                self._refuse(InvalidArgument(f"a frame of {len(message)} bytes is shorter than its {TAG.size}-byte tag"))
                return
            kind, _ = TAG.unpack_from(message)
            tag, message = message[:TAG.size], message[TAG.size:]
            if kind not in (HEARTBEAT, REPORT):
                self._refuse(InvalidArgument(f"a frame of kind {kind}: the kinds are {HEARTBEAT} (a heartbeat) "
                                             f"and {REPORT} (reports)"))
                return
        self.in_batch += 1
        if self.in_batch > MAX_IN_FLIGHT:
            self._refuse(InvalidArgument(f"more than {MAX_IN_FLIGHT} calls in flight on one connection: "
                                         "send the next after a reply"))
            return
        if kind == REPORT:
            self._server.report(self, message, tag)
        else:
            self._server.enqueue(self, message, tag)

    def answer(self, reply: bytes, refused: bool, tag: bytes) -> None:
        self.in_batch -= 1
        if self._closing or self.transport.is_closing():
            return
        self.transport.write(frame(tag + reply))
        if refused:
            self._closing = True
            self.transport.close()

    def _refuse(self, error: IrisError) -> None:
        """Refuse the connection itself (its frames' replies are tagged (0, 0) when it multiplexes)."""
        self._closing = True
        self.transport.write(frame((_CONNECTION_TAG if self.multiplex else b"") + self._server.refuse(error)))
        self.transport.close()


_CONNECTION_TAG = TAG.pack(0, 0)
_Frame = tuple[_BeatConnection, bytes, bytes]
"""A frame read: its connection, its message and its tag (b"": an untagged connection's)."""
