"""The heartbeat port's wire and its client (DESIGN §3; issue 27 items 2 and 3).

A heartbeat is the controller's most frequent call: every worker, every interval; a report (each
task's start and end) the next. Through gRPC's Python server each call costs 0.4-0.5 ms of the
controller's CPU on a small host however little it carries (the HTTP/2 framing, the completion
queue and three thread hand-offs per call), more than all of Iris's own work in it. The heartbeat
port carries the same ``HeartbeatRequest`` and ``ReportTaskStateRequest`` on one plain TCP
connection per worker (TLS when the controller serves TLS), one event loop thread on the
controller's side: ~0.1 ms per heartbeat.

Frames are a 4-byte big-endian length and one message. A connection's first frame is a
``BeatHello`` (the worker's credential and id, at most ``HELLO_CAP`` bytes: nothing larger is read
from a caller not yet authenticated), answered by a ``BeatReply``. When the hello says
``multiplex`` (as this client's does), every later frame's message is preceded by a ``TAG``: its
kind (``HEARTBEAT`` or ``REPORT``) and an id its reply's frame echoes, because the replies do not
come in order: a report is answered once its write is durable, a heartbeat may be answered before
it. Without ``multiplex`` (a worker of the first version) the frames are heartbeats, untagged, each
answered in turn. A refusal (a non-zero gRPC status code and a message naming the rule) closes the
connection; one of the connection itself (a frame over its cap, an unknown kind) is tagged
``(0, 0)``.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

from iris.cluster.rules import MAX_MESSAGE_BYTES
from iris.rpc import cluster_pb2

HEADER = struct.Struct(">I")
TAG = struct.Struct(">BI")
"""A multiplexed frame's kind and id, before its message."""
HEARTBEAT, REPORT = 1, 2
HELLO_CAP = 4096
"""The most a connection may send before it is authenticated."""


def frame(message: bytes) -> bytes:
    return HEADER.pack(len(message)) + message


def client_ssl_context(ca: Path | None) -> ssl.SSLContext:
    """Verifies the controller against ``ca`` (None: the system's roots), as the gRPC channel does."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


class BeatRefused(Exception):
    """The controller answered with a non-zero status code (and closed the connection)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"heartbeat port refused (code {code}): {message}")
        self.code = code
        self.message = message


class BeatClient:
    """One worker's connection to the heartbeat port, shared by its heartbeat loop and its outbox
    (thread-safe): connected (and the hello sent) on the first call, kept for the next ones. Calls
    from several threads are in flight together; whichever caller is waiting reads the next reply
    and hands it to its owner. Any error of the connection (a timeout included) closes it and fails
    every call on it; the next call connects again."""

    def __init__(self, host: str, port: int, token: str, worker_id: str, timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.token, self._worker_id = token, worker_id
        self._timeout_s = timeout_s
        self._ssl = ssl_context
        self._sock: socket.socket | None = None
        self._send = threading.Lock()
        """Held to connect and to write a frame (never while waiting for a reply)."""
        self._cond = threading.Condition(threading.Lock())
        self._ids = itertools.count(1)
        self._pending: dict[int, socket.socket] = {}
        """Calls in flight -> the connection each was sent on."""
        self._replies: dict[int, cluster_pb2.Controller.BeatReply | BaseException] = {}
        self._reading = False

    def beat(self, request: cluster_pb2.Controller.HeartbeatRequest) -> cluster_pb2.Controller.HeartbeatResponse:
        """One heartbeat. Raises BeatRefused, or OSError (timeouts included) when the port cannot be
        reached or the connection broke."""
        return self._call(HEARTBEAT, request.SerializeToString()).heartbeat

    def report(self, request: cluster_pb2.Controller.ReportTaskStateRequest
               ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        """One batch of reports, answered once the controller made it durable; raises as ``beat``."""
        reply = self._call(REPORT, request.SerializeToString())
        if not reply.HasField("report"):  # never taken as acknowledged: the report goes again by gRPC
            raise ConnectionError("the controller's reply carries no report response")
        return reply.report

    def close(self) -> None:
        with self._cond:
            self._fail(self._sock, ConnectionError("the heartbeat connection was closed"))

    def _call(self, kind: int, message: bytes) -> cluster_pb2.Controller.BeatReply:
        try:
            return self._exchange(kind, message, reuse=True)
        except _Stale:
            # A kept connection the controller closed meanwhile (idle past its bound, or it
            # restarted): once more on a new one. Both calls are idempotent (a report applied twice
            # is a no-op).
            return self._exchange(kind, message, reuse=False)

    def _exchange(self, kind: int, message: bytes, reuse: bool) -> cluster_pb2.Controller.BeatReply:
        with self._send:
            sock = self._sock
            if sock is None:
                sock = self._connect()
                reuse = False
            call = next(self._ids) & 0xFFFFFFFF or 1
            with self._cond:
                self._pending[call] = sock
            try:
                sock.sendall(frame(TAG.pack(kind, call) + message))
            except OSError as e:
                with self._cond:
                    self._fail(sock, e)
        reply = self._await(sock, call)
        if isinstance(reply, ConnectionError) and reuse:
            raise _Stale() from reply
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _await(self, sock: socket.socket, call: int) -> cluster_pb2.Controller.BeatReply | BaseException:
        deadline = time.monotonic() + self._timeout_s
        with self._cond:
            while call not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(sock, TimeoutError(f"no reply from the heartbeat port in {self._timeout_s:g}s"))
                elif self._reading:
                    self._cond.wait(left)
                else:
                    self._read_one(sock, left)
            return self._replies.pop(call)

    def _read_one(self, sock: socket.socket, timeout_s: float) -> None:
        """Read the next reply (``_cond`` held on entry and exit, released while reading) and give
        it to its call; on any error fail every call of the connection."""
        self._reading = True
        self._cond.release()
        try:
            sock.settimeout(timeout_s)
            body = _read_frame(sock)
            kind, call = TAG.unpack_from(body)
            reply: cluster_pb2.Controller.BeatReply | BaseException = \
                cluster_pb2.Controller.BeatReply.FromString(body[TAG.size:])
        except BaseException as e:
            reply, call = e, 0
        finally:
            self._cond.acquire()
            self._reading = False
        if isinstance(reply, cluster_pb2.Controller.BeatReply) and reply.code:
            reply = BeatRefused(reply.code, reply.message)
        mine = self._pending.get(call) is sock
        if mine and not isinstance(reply, BaseException):
            del self._pending[call]
            self._replies[call] = reply
        elif mine:  # refused: the controller closes the connection after it
            del self._pending[call]
            self._replies[call] = reply
            self._fail(sock, ConnectionError(f"the controller closed the heartbeat connection: {reply}"))
        else:  # a read error, a refusal of the connection itself, or a reply to no call
            if not isinstance(reply, BaseException):
                reply = ConnectionError(f"a reply to no call in flight (id {call})")
            self._fail(sock, reply if isinstance(reply, OSError | BeatRefused) else ConnectionError(str(reply)))
        self._cond.notify_all()

    def _fail(self, sock: socket.socket | None, error: BaseException) -> None:
        """``_cond`` held: close ``sock`` (if it is still the connection) and fail the calls sent on
        it (not those of a newer connection)."""
        if sock is None:
            return
        if sock is self._sock:
            self._sock = None
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a caller blocked reading it (close alone does not)
        except OSError:
            pass
        sock.close()
        for call in [c for c, s in self._pending.items() if s is sock]:
            del self._pending[call]
            self._replies[call] = error
        self._cond.notify_all()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self._timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
            sock.sendall(frame(cluster_pb2.Controller.BeatHello(token=self.token, worker_id=self._worker_id,
                                                               multiplex=True).SerializeToString()))
            reply = cluster_pb2.Controller.BeatReply.FromString(_read_frame(sock))
            if reply.code:
                raise BeatRefused(reply.code, reply.message)
            if not reply.HasField("report"):
                # A controller of the first version: it would read tagged frames as heartbeats.
                raise ConnectionError("the controller's heartbeat port does not multiplex")
        except BaseException:
            sock.close()
            raise
        with self._cond:
            self._sock = sock
        return sock


class _Stale(Exception):
    """A kept connection failed on first use: the caller tries once more on a new one."""


def _read_frame(sock: socket.socket) -> bytes:
    (size,) = HEADER.unpack(_read(sock, HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise ConnectionError(f"a reply of {size} bytes is over {MAX_MESSAGE_BYTES}")
    return _read(sock, size)


def _read(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the controller closed the heartbeat connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
