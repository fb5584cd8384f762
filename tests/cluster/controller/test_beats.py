"""The heartbeat port (``iris.cluster.controller.beats``, the wire in ``iris.rpc.beats``): the same
Heartbeat as the RPC, authenticated per connection and per beat, and bad input that never hurts
the controller or another worker: refused with a reply naming the rule, the connection closed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iris.cluster.auth import Role
from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.beats import BeatServer
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.service import ControllerServer, ControllerServiceImpl
from iris.cluster.controller.state import ControllerState
from iris.cluster.types import JobId, ResourceSpec, WorkerMetadata
from iris.cluster.worker.attempts import AttemptStatus, ReportsAcknowledged
from iris.cluster.worker.link import ControllerLink, LinkConfig
from iris.rpc import cluster_pb2, cluster_pb2_grpc
from iris.rpc.beats import HEADER, HELLO_CAP, TAG, BeatClient, BeatRefused, client_ssl_context, frame
from iris.rpc.tls import make_local_pki

from . import wire
from .fakes import FakeWorkerClients

C = cluster_pb2.Controller
T = cluster_pb2
UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT = (grpc.StatusCode.UNAUTHENTICATED.value[0],
                                                        grpc.StatusCode.PERMISSION_DENIED.value[0],
                                                        grpc.StatusCode.INVALID_ARGUMENT.value[0])


_EMPTY_REPORT = C.BeatReply(report=C.ReportTaskStateResponse()).SerializeToString()
ANSWER_ALL = (lambda hello: ("t", "w", True, _EMPTY_REPORT), lambda beats: [(b"", False) for _ in beats],
              lambda error: C.BeatReply(code=13, message=str(error)).SerializeToString())
"""A heartbeat port that takes every hello and answers every heartbeat with an empty reply (pass
``reports=`` to take reports)."""


def make_controller() -> Controller:
    return Controller(ControllerConfig(), state=ControllerState(), clock=FakeClock(), worker_clients=FakeWorkerClients())


@pytest.fixture
def served() -> Iterator[tuple[ControllerServer, Controller]]:
    controller = make_controller()
    server = ControllerServer(controller, "127.0.0.1", 0)
    server.start()
    yield server, controller
    server.stop(grace=0)


def beat_port(server: ControllerServer) -> int:
    assert server.beats is not None
    return server.beats.port


def worker_token(controller: Controller, worker_id: str) -> tuple[str, str]:
    record, token = controller.create_token(worker_id, Role.WORKER)
    return record.token_id, token


def request(worker_id: str) -> cluster_pb2.Controller.HeartbeatRequest:
    return C.HeartbeatRequest(worker_id=worker_id, incarnation="i1", sequence=0)


def register(server: ControllerServer, controller: Controller, worker_id: str) -> cluster_pb2.Controller.RegisterWorkerResponse:
    _, join = controller.create_token("join", Role.JOIN)
    with grpc.insecure_channel(server.address) as channel:
        return cluster_pb2_grpc.ControllerServiceStub(channel).RegisterWorker(
            C.RegisterWorkerRequest(worker_id=worker_id, address="127.0.0.1:1", incarnation="i1",
                                    metadata=WorkerMetadata(hostname="h", cpu_count=2, memory_bytes=1 << 30).to_proto()),
            metadata=(("authorization", f"Bearer {join}"),), timeout=10)


def refusal_bytes(sock: socket.socket) -> bytes:
    """The one frame a refused connection gets, then its close: the frame's body."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    (size,) = HEADER.unpack(data[:HEADER.size])
    assert len(data) == HEADER.size + size, "nothing follows a refusal: the connection is closed"
    return data[HEADER.size:]


def refusal(sock: socket.socket) -> cluster_pb2.Controller.BeatReply:
    return C.BeatReply.FromString(refusal_bytes(sock))


def test_a_registered_worker_is_told_the_port_and_heartbeats_by_it(served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    reply = register(server, controller, "w1")
    assert reply.heartbeat_port == beat_port(server)
    client = BeatClient("127.0.0.1", reply.heartbeat_port, reply.credential, "w1", 10)
    for _ in range(3):  # one connection, many beats
        response = client.beat(request("w1"))
        assert not response.reregister and response.liveness_timeout_ms > 0
    client.close()
    worker = next(w for w in controller.queries.list_workers() if w.worker_id == "w1")
    assert worker.healthy
    assert controller.metrics.registry.get_sample_value(
        "iris_rpc_duration_seconds_count", {"method": "HeartbeatPort"}) == 3


def test_an_unknown_worker_is_asked_to_register(served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    _, token = worker_token(controller, "w2")
    assert BeatClient("127.0.0.1", beat_port(server), token, "w2", 10).beat(request("w2")).reregister


@pytest.mark.parametrize("case", ["no token", "unknown token", "join token", "another worker's credential"])
def test_a_hello_that_may_not_heartbeat_is_refused_naming_the_rule(
        served: tuple[ControllerServer, Controller], case: str) -> None:
    server, controller = served
    _, own = worker_token(controller, "w3")
    _, join = controller.create_token("join", Role.JOIN)
    token, worker_id, code, words = {
        "no token": ("", "w3", UNAUTHENTICATED, "no credential"),
        "unknown token": ("iris_nope", "w3", UNAUTHENTICATED, "unknown token"),
        "join token": (join, "w3", PERMISSION_DENIED, "needs a worker or admin token"),
        "another worker's credential": (own, "w4", PERMISSION_DENIED, "belongs to worker 'w3'"),
    }[case]
    with pytest.raises(BeatRefused) as info:
        BeatClient("127.0.0.1", beat_port(server), token, worker_id, 10).beat(request(worker_id))
    assert info.value.code == code and words in info.value.message


def test_heartbeats_that_arrived_together_are_each_answered_or_refused_alone() -> None:
    controller = make_controller()
    service = ControllerServiceImpl(controller)
    _, good = worker_token(controller, "w11")
    _, other = worker_token(controller, "w12")
    beat = request("w11").SerializeToString()
    bad_port = C.HeartbeatRequest(worker_id="w11", tasks=[T.WorkerTaskStatus(task_id="j/task-0", busy_ports=[0])])
    results = [(C.BeatReply.FromString(reply), refused) for reply, refused in service.beats([
        (good, "w11", beat), ("iris_nope", "w11", beat), (other, "w11", beat), (good, "w11", b"\xff\xff"),
        (good, "w12", beat), (good, "w11", bad_port.SerializeToString())])]
    assert results[0][0].heartbeat.reregister and not results[0][0].code and not results[0][1]
    expected = [(UNAUTHENTICATED, "unknown token"), (PERMISSION_DENIED, "belongs to worker 'w12'"),
                (INVALID_ARGUMENT, "not a HeartbeatRequest message"),
                (INVALID_ARGUMENT, "this connection heartbeats for 'w12', not 'w11'"),
                (INVALID_ARGUMENT, "busy_ports: a port is 1..65535")]
    for (reply, refused), (code, words) in zip(results[1:], expected, strict=True):
        assert refused and reply.code == code and words in reply.message


def test_a_revoked_credential_stops_at_its_next_beat(served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    token_id, token = worker_token(controller, "w5")
    client = BeatClient("127.0.0.1", beat_port(server), token, "w5", 10)
    client.beat(request("w5"))
    controller.credentials.revoke_token(token_id)
    with pytest.raises(BeatRefused) as info:
        client.beat(request("w5"))  # on the connection already authenticated
    assert info.value.code == UNAUTHENTICATED and "revoked" in info.value.message


def test_a_beat_for_another_worker_on_an_authenticated_connection_is_refused(
        served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    _, admin = controller.create_token("admin", Role.ADMIN)
    client = BeatClient("127.0.0.1", beat_port(server), admin, "w6", 10)
    client.beat(request("w6"))
    with pytest.raises(BeatRefused) as info:
        client.beat(request("w7"))
    assert info.value.code == INVALID_ARGUMENT and "heartbeats for 'w6', not 'w7'" in info.value.message


def test_an_oversized_hello_is_refused_before_it_is_read(served: tuple[ControllerServer, Controller]) -> None:
    server, _ = served
    with socket.create_connection(("127.0.0.1", beat_port(server))) as sock:
        sock.sendall(HEADER.pack(HELLO_CAP + 1) + b"x" * 100)  # the rest is never sent, nor waited for
        reply = refusal(sock)
    assert reply.code == INVALID_ARGUMENT
    assert f"a hello frame of {HELLO_CAP + 1} bytes is over this connection's cap of {HELLO_CAP} bytes" in reply.message


def test_a_frame_that_is_not_the_message_is_refused(served: tuple[ControllerServer, Controller]) -> None:
    server, _ = served
    with socket.create_connection(("127.0.0.1", beat_port(server))) as sock:
        sock.sendall(frame(b"\xff\xff\xff"))
        reply = refusal(sock)
    assert reply.code == INVALID_ARGUMENT and "not a BeatHello message" in reply.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=6000))
def test_garbage_never_hurts_the_port_or_another_worker(served: tuple[ControllerServer, Controller],
                                                       garbage: bytes) -> None:
    server, controller = served
    with socket.create_connection(("127.0.0.1", beat_port(server))) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        while sock.recv(65536):  # answered (a refusal or nothing) and closed, or closed at our end
            pass
    _, token = worker_token(controller, "w8")
    assert BeatClient("127.0.0.1", beat_port(server), token, "w8", 10).beat(request("w8")).reregister


def test_a_connection_that_never_says_hello_is_closed() -> None:
    controller = make_controller()
    service_server = ControllerServer(controller, "127.0.0.1", 0, heartbeat_port=None)
    assert service_server.beats is None
    beats = BeatServer(*ANSWER_ALL, hello_timeout_s=0.2)
    beats.start()
    try:
        with socket.create_connection(("127.0.0.1", beats.port)) as sock:
            sock.settimeout(30)
            assert sock.recv(1) == b""  # closed by the sweep, not by us
    finally:
        beats.stop()
        service_server.stop(grace=0)


def test_connections_waiting_for_their_hello_are_bounded() -> None:
    beats = BeatServer(*ANSWER_ALL, max_unauthenticated=2, reports=ANSWER_ALL[1])
    beats.start()
    socks = [socket.create_connection(("127.0.0.1", beats.port)) for _ in range(3)]
    try:
        socks[2].settimeout(10)
        assert socks[2].recv(1) == b""  # the third is closed at once
        client = BeatClient("127.0.0.1", beats.port, "t", "w", 10)
        socks[0].close()  # room again once one leaves
        deadline = time.monotonic() + 10
        while True:
            try:
                client.beat(request("w"))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
    finally:
        for sock in socks:
            sock.close()
        beats.stop()


def test_tls_when_the_controller_serves_tls(tmp_path: Path) -> None:
    pki = make_local_pki(tmp_path / "pki")
    controller = make_controller()
    server = ControllerServer(controller, "127.0.0.1", 0, tls_cert=pki.cert, tls_key=pki.key)
    server.start()
    try:
        _, token = worker_token(controller, "w9")
        client = BeatClient("127.0.0.1", beat_port(server), token, "w9", 10, client_ssl_context(pki.ca))
        assert client.beat(request("w9")).reregister
        with pytest.raises(OSError):  # plaintext is not spoken there
            BeatClient("127.0.0.1", beat_port(server), token, "w9", 2).beat(request("w9"))
    finally:
        server.stop(grace=0)


class _Side:
    def __init__(self) -> None:
        self.events: list[object] = []

    def observed(self) -> tuple[list, int]:  # type: ignore[type-arg]
        return [], 0

    def metadata(self) -> WorkerMetadata:
        return WorkerMetadata(hostname="h", cpu_count=2, memory_bytes=1 << 30)

    def unfit(self) -> str:
        return ""

    def result_of(self, key: object) -> bytes:
        return b""

    def before_end_reports(self, keys: list) -> dict:  # type: ignore[type-arg]
        return {}

    def on_event(self, event: object) -> None:
        self.events.append(event)


def test_the_worker_heartbeats_by_grpc_when_the_port_fails(served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    _, join = controller.create_token("join", Role.JOIN)
    link = ControllerLink(LinkConfig(server.address, rpc_timeout_s=5, join_token=join), FakeClock(),
                          worker_id="w10", incarnation="i1", worker=_Side())
    link.address = "127.0.0.1:1"
    try:
        assert link.register_once() and link.heartbeat_once()
        count = controller.metrics.registry.get_sample_value
        assert count("iris_rpc_duration_seconds_count", {"method": "HeartbeatPort"}) == 1
        assert server.beats is not None
        server.beats.stop()  # the port is gone; gRPC is not
        assert link.heartbeat_once()
        assert count("iris_rpc_duration_seconds_count", {"method": "Heartbeat"}) == 1
    finally:
        link.close()


@pytest.mark.parametrize("value", ["70000", "-1", "on", ""])
def test_a_bad_heartbeat_port_flag_names_the_flag_and_the_rule(tmp_path: Path, value: str) -> None:
    from click.testing import CliRunner

    from iris.cli.main import cli

    result = CliRunner().invoke(cli, ["controller", "serve", "--state-dir", str(tmp_path / "s"),
                                      "--heartbeat-port", value])
    assert result.exit_code == 2
    assert "--heartbeat-port" in result.output and "a port 0..65535 or 'off'" in result.output
    assert not (tmp_path / "s").exists()  # refused before anything was made


def test_without_the_port_registration_names_none_and_heartbeats_come_by_grpc() -> None:
    controller = make_controller()
    server = ControllerServer(controller, "127.0.0.1", 0, heartbeat_port=None)
    server.start()
    try:
        _, join = controller.create_token("join", Role.JOIN)
        link = ControllerLink(LinkConfig(server.address, rpc_timeout_s=5, join_token=join), FakeClock(),
                              worker_id="w13", incarnation="i1", worker=_Side())
        link.address = "127.0.0.1:1"
        assert register(server, controller, "w14").heartbeat_port == 0
        assert link.register_once() and link.heartbeat_once()
        count = controller.metrics.registry.get_sample_value
        assert count("iris_rpc_duration_seconds_count", {"method": "Heartbeat"}) == 1
        assert not count("iris_rpc_duration_seconds_count", {"method": "HeartbeatPort"})
        link.close()
    finally:
        server.stop(grace=0)


# -- reports by the port (a connection of their own; issue 27 item 2) --------------------------


def reports(worker_id: str, *updates: T.WorkerTaskStatus) -> cluster_pb2.Controller.ReportTaskStateRequest:
    return C.ReportTaskStateRequest(worker_id=worker_id, updates=list(updates))


def placed_task(server: ControllerServer, controller: Controller, fake: FakeWorkerClients, worker_id: str
                ) -> tuple[ControllerLink, _Side, T.Worker.RunTaskRequest]:
    """A worker's link, registered, and a one-task job the controller placed on it."""
    _, join = controller.create_token("join", Role.JOIN)
    side = _Side()
    link = ControllerLink(LinkConfig(server.address, rpc_timeout_s=5, join_token=join), FakeClock(),
                          worker_id=worker_id, incarnation="i1", worker=side)
    link.address = "127.0.0.1:1"
    assert link.register_once()
    wire.launch_job(controller, C.LaunchJobRequest(
        name="job", serialized_entrypoint=T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString(),
        resources=ResourceSpec(cpu=1, memory="256MiB").to_proto()))
    controller.tick_schedule()
    wait_until(lambda: fake.run_calls, 10, message="the task was not dispatched")
    return link, side, fake.run_calls[0][1]


@pytest.fixture
def faked() -> Iterator[tuple[ControllerServer, Controller, FakeWorkerClients]]:
    fake = FakeWorkerClients()
    controller = Controller(ControllerConfig(), state=ControllerState(), clock=FakeClock(), worker_clients=fake)
    server = ControllerServer(controller, "127.0.0.1", 0)
    server.start()
    yield server, controller, fake
    server.stop(grace=0)


def test_a_workers_reports_go_by_the_port_and_are_acknowledged_once_applied(
        faked: tuple[ControllerServer, Controller, FakeWorkerClients]) -> None:
    server, controller, fake = faked
    link, side, run = placed_task(server, controller, fake, "w20")
    try:
        link.report(AttemptStatus(run.task_id, run.attempt_id, T.TASK_STATE_SUCCEEDED, job_uid=run.job_uid))
        assert link.flush_once() and link.pending_reports() == 0
        assert controller.queries.task_status(JobId(run.task_id.rsplit("/", 1)[0]), 0).state == T.TASK_STATE_SUCCEEDED
        assert [e for e in side.events if isinstance(e, ReportsAcknowledged)]
        count = controller.metrics.registry.get_sample_value
        assert count("iris_rpc_duration_seconds_count", {"method": "ReportPort"}) == 1
        assert not count("iris_rpc_duration_seconds_count", {"method": "ReportTaskState"})
    finally:
        link.close()


def test_a_report_for_an_attempt_the_controller_does_not_expect_is_answered_with_a_kill(
        faked: tuple[ControllerServer, Controller, FakeWorkerClients]) -> None:
    server, controller, fake = faked
    link, _, run = placed_task(server, controller, fake, "w21")
    link.close()
    _, token = worker_token(controller, "w21")
    client = BeatClient("127.0.0.1", beat_port(server), token, "w21", 10)
    stale = T.WorkerTaskStatus(task_id=run.task_id, attempt_id=run.attempt_id + 5, job_uid=run.job_uid,
                               state=T.TASK_STATE_RUNNING)
    response = client.report(reports("w21", stale))
    assert [(k.task_id, k.attempt_id) for k in response.kill] == [(run.task_id, run.attempt_id + 5)]
    client.close()


def test_report_batches_that_arrived_together_are_each_applied_or_refused_alone(
        faked: tuple[ControllerServer, Controller, FakeWorkerClients]) -> None:
    server, controller, fake = faked
    link, _, run = placed_task(server, controller, fake, "w22")
    link.close()
    service = ControllerServiceImpl(controller)
    _, good = worker_token(controller, "w22")
    _, other = worker_token(controller, "w23")
    done = reports("w22", T.WorkerTaskStatus(task_id=run.task_id, attempt_id=run.attempt_id, job_uid=run.job_uid,
                                             state=T.TASK_STATE_SUCCEEDED)).SerializeToString()
    bad_state = reports("w22", T.WorkerTaskStatus(task_id=run.task_id, state=99)).SerializeToString()  # type: ignore[arg-type]
    results = [(C.BeatReply.FromString(reply), refused) for reply, refused in service.reports([
        ("iris_nope", "w22", done), (other, "w22", done), (good, "w22", b"\xff\xff"), (good, "w23", done),
        (good, "w22", bad_state), (good, "w22", done)])]
    expected = [(UNAUTHENTICATED, "unknown token"), (PERMISSION_DENIED, "belongs to worker 'w23'"),
                (INVALID_ARGUMENT, "not a ReportTaskStateRequest message"),
                (INVALID_ARGUMENT, "this connection reports for 'w23', not 'w22'"),
                (INVALID_ARGUMENT, "updates[0].state: unknown task state 99")]
    for (reply, refused), (code, words) in zip(results[:-1], expected, strict=True):
        assert refused and reply.code == code and words in reply.message
    last, refused = results[-1]
    assert not refused and not last.code and last.HasField("report")
    job = JobId(run.task_id.rsplit("/", 1)[0])
    assert controller.queries.task_status(job, 0).state == T.TASK_STATE_SUCCEEDED  # the refused ones changed nothing


def test_a_frame_for_another_worker_on_a_reports_connection_is_refused(
        served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    _, token = worker_token(controller, "w24")
    client = BeatClient("127.0.0.1", beat_port(server), token, "w24", 10)
    with pytest.raises(BeatRefused) as info:
        client.report(reports("w25"))
    assert info.value.code == INVALID_ARGUMENT and "this connection reports for 'w24', not 'w25'" in info.value.message
    assert not client.report(reports("w24")).kill  # the next call connects again


def test_a_report_by_a_token_that_may_not_report_is_refused(served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    _, join = controller.create_token("join", Role.JOIN)
    with pytest.raises(BeatRefused) as info:
        BeatClient("127.0.0.1", beat_port(server), join, "w26", 10).report(reports("w26"))
    assert info.value.code == PERMISSION_DENIED and "needs a worker or admin token" in info.value.message


def test_a_port_that_takes_no_reports_refuses_a_multiplexed_hello() -> None:
    beats = BeatServer(*ANSWER_ALL)  # no ``reports``: a port that takes heartbeats only
    beats.start()
    try:
        with pytest.raises(BeatRefused) as info:
            BeatClient("127.0.0.1", beats.port, "t", "w", 10).report(reports("w"))
        assert "multiplex: this heartbeat port takes heartbeats only" in info.value.message  # names the field
    finally:
        beats.stop()


def test_a_hello_reply_without_a_report_response_is_not_trusted_with_tagged_frames() -> None:
    """A controller of the heartbeat port's first version answers any hello as an untagged heartbeat
    connection's: the worker must not send it tagged frames (it would read them as heartbeats)."""
    old = (lambda hello: ("t", "w", False, C.BeatReply().SerializeToString()), ANSWER_ALL[1], ANSWER_ALL[2])
    beats = BeatServer(*old)
    beats.start()
    try:
        with pytest.raises(ConnectionError, match="does not multiplex"):
            BeatClient("127.0.0.1", beats.port, "t", "w", 10).report(reports("w"))
    finally:
        beats.stop()


def _held_reports(interval_ms: int) -> tuple[BeatServer, threading.Event, threading.Event]:
    """A started port whose heartbeats are answered at once (with ``interval_ms``) and whose reports
    are applied only once ``release`` is set; ``applying`` is set when a report arrives."""
    release, applying = threading.Event(), threading.Event()

    def held(frames: object) -> list[tuple[bytes, bool]]:
        applying.set()
        release.wait(30)
        return [(_EMPTY_REPORT, False) for _ in frames]  # type: ignore[attr-defined]

    beat_reply = C.BeatReply(heartbeat=C.HeartbeatResponse(heartbeat_interval_ms=interval_ms)).SerializeToString()
    beats = BeatServer(ANSWER_ALL[0], lambda frames: [(beat_reply, False) for _ in frames], ANSWER_ALL[2],
                       reports=held)
    beats.start()
    return beats, release, applying


def test_a_heartbeat_is_answered_while_a_report_on_the_same_connection_is_still_applied() -> None:
    beats, release, applying = _held_reports(1234)
    client = BeatClient("127.0.0.1", beats.port, "t", "w", 10)
    answered: list[object] = []
    reporter = threading.Thread(target=lambda: answered.append(client.report(reports("w"))))
    try:
        reporter.start()
        assert applying.wait(10)
        assert client.beat(request("w")).heartbeat_interval_ms == 1234  # before the report's reply
        assert not answered
        release.set()
        reporter.join(10)
        assert len(answered) == 1 and not answered[0].kill  # type: ignore[attr-defined]
    finally:
        release.set()
        client.close()
        beats.stop()


@pytest.mark.parametrize("body, words", [(b"\x01\x00", "shorter than its 5-byte tag"),
                                         (TAG.pack(9, 1), "a frame of kind 9: the kinds are 1")])
def test_a_tagged_frame_that_is_not_one_is_refused_naming_the_rule(
        served: tuple[ControllerServer, Controller], body: bytes, words: str) -> None:
    server, controller = served
    _, token = worker_token(controller, "w30")
    with socket.create_connection(("127.0.0.1", beat_port(server))) as sock:
        sock.sendall(frame(C.BeatHello(token=token, worker_id="w30", multiplex=True).SerializeToString()))
        sock.settimeout(10)
        (size,) = HEADER.unpack(sock.recv(HEADER.size, socket.MSG_WAITALL))
        assert C.BeatReply.FromString(sock.recv(size, socket.MSG_WAITALL)).HasField("report")
        sock.sendall(frame(body))
        data = refusal_bytes(sock)
    assert TAG.unpack_from(data) == (0, 0)  # the connection itself is refused
    reply = C.BeatReply.FromString(data[TAG.size:])
    assert reply.code == INVALID_ARGUMENT and words in reply.message


def test_an_untagged_heartbeat_connection_of_the_first_version_still_works(
        served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    _, token = worker_token(controller, "w31")
    with socket.create_connection(("127.0.0.1", beat_port(server))) as sock:
        sock.settimeout(10)
        for message in (C.BeatHello(token=token, worker_id="w31"), request("w31")):
            sock.sendall(frame(message.SerializeToString()))
            (size,) = HEADER.unpack(sock.recv(HEADER.size, socket.MSG_WAITALL))
            reply = C.BeatReply.FromString(sock.recv(size, socket.MSG_WAITALL))
            assert not reply.code
    assert reply.heartbeat.reregister  # an unknown worker, as by the RPC


def test_the_worker_reports_by_grpc_when_the_port_fails(
        faked: tuple[ControllerServer, Controller, FakeWorkerClients]) -> None:
    server, controller, fake = faked
    link, _, run = placed_task(server, controller, fake, "w27")
    try:
        assert server.beats is not None
        server.beats.stop()  # the port is gone; gRPC is not
        link.report(AttemptStatus(run.task_id, run.attempt_id, T.TASK_STATE_SUCCEEDED, job_uid=run.job_uid))
        assert link.flush_once() and link.pending_reports() == 0
        count = controller.metrics.registry.get_sample_value
        assert count("iris_rpc_duration_seconds_count", {"method": "ReportTaskState"}) == 1
        assert controller.queries.task_status(JobId(run.task_id.rsplit("/", 1)[0]), 0).state == T.TASK_STATE_SUCCEEDED
    finally:
        link.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=3000))
def test_garbage_on_a_reports_connection_never_hurts_the_port_or_another_worker(
        served: tuple[ControllerServer, Controller], garbage: bytes) -> None:
    server, controller = served
    _, token = worker_token(controller, "w28")
    with socket.create_connection(("127.0.0.1", beat_port(server))) as sock:
        sock.sendall(frame(C.BeatHello(token=token, worker_id="w28", multiplex=True).SerializeToString()) + garbage)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        while sock.recv(65536):
            pass
    client = BeatClient("127.0.0.1", beat_port(server), token, "w28", 10)
    assert not client.report(reports("w28")).kill
    client.close()


def test_a_kept_connection_the_controller_closed_while_idle_is_replaced_without_falling_back() -> None:
    controller = make_controller()
    server = ControllerServer(controller, "127.0.0.1", 0, idle_connection_ms=100)
    server.start()
    try:
        _, token = worker_token(controller, "w29")
        client = BeatClient("127.0.0.1", beat_port(server), token, "w29", 10)
        assert not client.report(reports("w29")).kill
        assert server.beats is not None
        beats = server.beats
        wait_until(lambda: not beats.connections, 30, message="the idle connection was not closed")
        assert not client.report(reports("w29")).kill  # on a new connection, no error seen by the caller
        count = controller.metrics.registry.get_sample_value
        assert count("iris_rpc_duration_seconds_count", {"method": "ReportPort"}) == 2
        client.close()
    finally:
        server.stop(grace=0)


def test_heartbeats_and_reports_from_several_threads_share_one_connection(
        served: tuple[ControllerServer, Controller]) -> None:
    server, controller = served
    _, token = worker_token(controller, "w32")
    client = BeatClient("127.0.0.1", beat_port(server), token, "w32", 10)
    errors: list[BaseException] = []

    def calls(index: int) -> None:
        try:
            for _ in range(40):
                if index % 2:
                    assert client.beat(request("w32")).reregister
                else:
                    assert not client.report(reports("w32")).kill
        except BaseException as e:  # reported to the test's thread
            errors.append(e)

    threads = [threading.Thread(target=calls, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert server.beats is not None and len(server.beats.connections) == 1  # one connection for all of them
    client.close()
    count = controller.metrics.registry.get_sample_value
    assert count("iris_rpc_duration_seconds_count", {"method": "HeartbeatPort"}) == 80
    assert count("iris_rpc_duration_seconds_count", {"method": "ReportPort"}) == 80


def test_a_call_that_times_out_fails_its_connection_and_the_next_call_connects_again() -> None:
    beats, release, _ = _held_reports(7)
    client = BeatClient("127.0.0.1", beats.port, "t", "w", 0.5)
    try:
        with pytest.raises(TimeoutError):  # no reply within the client's timeout
            client.report(reports("w"))
        assert client.beat(request("w")).heartbeat_interval_ms == 7  # on a new connection
    finally:
        release.set()
        client.close()
        beats.stop()
