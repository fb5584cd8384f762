"""The heartbeat port's wire and its client (DESIGN §3; issue 27 item 3).

A heartbeat is the controller's most frequent call: every worker, every interval. Through gRPC's
Python server one costs 0.4-0.5 ms of the controller's CPU on a small host however little it
carries (the HTTP/2 framing, the completion queue and three thread hand-offs per call), more
than all of Iris's own work in it. The heartbeat port carries the same ``HeartbeatRequest`` and
``HeartbeatResponse`` on a plain TCP connection (TLS when the controller serves TLS), one event
loop thread on the controller's side: ~0.1 ms per heartbeat.

Frames are a 4-byte big-endian length and one message. A connection's first frame is a
``BeatHello`` (the worker's credential and id, at most ``HELLO_CAP`` bytes: nothing larger is read
from a caller not yet authenticated), answered by a ``BeatReply``; then each ``HeartbeatRequest``
frame is answered by a ``BeatReply`` carrying the ``HeartbeatResponse``. A refusal (a non-zero
gRPC status code and a message naming the rule) closes the connection.

A worker's reports (``ReportTaskStateRequest``, the other call every task makes) take the same
path on a connection of their own, whose hello says ``reports``: each report frame is answered by a
``BeatReply`` carrying the ``ReportTaskStateResponse`` once it is durable. A connection of its own,
so that a heartbeat never waits behind a report's write (nor a report behind a heartbeat), and each
connection's replies come in the order of its frames.
"""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

from iris.cluster.rules import MAX_MESSAGE_BYTES
from iris.rpc import cluster_pb2

HEADER = struct.Struct(">I")
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
    """One worker's connection to the heartbeat port: connected (and the hello sent) on the first
    call, kept for the next ones, dropped on any error (the next call connects again). Not
    thread-safe: one thread uses it (the worker's heartbeat loop; with ``reports``, its outbox loop,
    which calls ``report`` instead of ``beat``)."""

    def __init__(self, host: str, port: int, token: str, worker_id: str, timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None, reports: bool = False) -> None:
        self.host, self.port = host, port
        self.token, self._worker_id = token, worker_id
        self.reports = reports
        self._timeout_s = timeout_s
        self._ssl = ssl_context
        self._sock: socket.socket | None = None

    def beat(self, request: cluster_pb2.Controller.HeartbeatRequest) -> cluster_pb2.Controller.HeartbeatResponse:
        """One heartbeat. Raises BeatRefused, or OSError (timeouts included) when the port cannot be
        reached or the connection broke; either way the connection is closed."""
        assert not self.reports, "a reports connection carries no heartbeats"
        return self._send(request.SerializeToString()).heartbeat

    def report(self, request: cluster_pb2.Controller.ReportTaskStateRequest
               ) -> cluster_pb2.Controller.ReportTaskStateResponse:
        """One batch of reports, answered once the controller made it durable; raises as ``beat``."""
        assert self.reports, "a heartbeat connection carries no reports"
        reply = self._send(request.SerializeToString())
        if not reply.HasField("report"):  # never taken as acknowledged: the report goes again by gRPC
            raise ConnectionError("the controller's reply carries no report response")
        return reply.report

    def _send(self, message: bytes) -> cluster_pb2.Controller.BeatReply:
        reused = self._sock is not None
        try:
            if self._sock is None:
                self._connect()
            return self._call(message)
        except ConnectionError:
            self.close()
            if not reused:
                raise
        except BaseException:
            self.close()
            raise
        # A kept connection the controller closed meanwhile (idle past its bound, or it restarted):
        # once more on a new one. Both calls are idempotent (a report applied twice is a no-op).
        try:
            self._connect()
            return self._call(message)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self._timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
        self._sock = sock
        reply = self._call(cluster_pb2.Controller.BeatHello(token=self.token, worker_id=self._worker_id,
                                                            reports=self.reports).SerializeToString())
        if self.reports and not reply.HasField("report"):
            # A controller that takes no reports on this port would read them as heartbeats.
            raise ConnectionError("the controller's heartbeat port takes no reports")

    def _call(self, message: bytes) -> cluster_pb2.Controller.BeatReply:
        assert self._sock is not None
        self._sock.sendall(frame(message))
        (size,) = HEADER.unpack(self._read(HEADER.size))
        if size > MAX_MESSAGE_BYTES:
            raise ConnectionError(f"a reply of {size} bytes is over {MAX_MESSAGE_BYTES}")
        reply = cluster_pb2.Controller.BeatReply.FromString(self._read(size))
        if reply.code:
            raise BeatRefused(reply.code, reply.message)
        return reply

    def _read(self, size: int) -> bytes:
        assert self._sock is not None
        chunks, left = [], size
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("the controller closed the heartbeat connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
