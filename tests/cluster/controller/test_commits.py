"""Group commit: store writes leave the controller's lock, several per transaction, in order, and a
caller goes on only once its writes are durable (DESIGN §5)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.commits import DurableLock, GroupCommit, StoreFailed
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.store import ControllerStore, PreparedWrite, StoreError
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2


def test_batches_are_applied_in_order_and_grouped_while_a_write_is_in_flight() -> None:
    applied: list[list[str]] = []
    first_started = threading.Event()
    release = threading.Event()

    def apply(batch: Sequence[str]) -> None:
        if not applied:
            first_started.set()
            release.wait(30)
        applied.append(list(batch))

    commits: GroupCommit[str] = GroupCommit(apply, on_failure=lambda e: None)
    leader = threading.Thread(target=commits.wait, args=(commits.submit("w1"),))
    leader.start()
    assert first_started.wait(30)
    t2, t3 = commits.submit("w2"), commits.submit("w3")  # queued while w1 is being written
    followers = [threading.Thread(target=commits.wait, args=(t,)) for t in (t3, t2)]
    for thread in followers:
        thread.start()
    release.set()
    for thread in [leader, *followers]:
        thread.join(30)
    assert applied == [["w1"], ["w2", "w3"]] and commits.groups == 2
    commits.wait(t2)  # already durable: returns at once, writes nothing
    assert commits.groups == 2


def test_a_failed_write_is_reported_once_and_fails_everyone_waiting_for_it_or_later() -> None:
    failures: list[BaseException] = []

    def apply(batch: Sequence[str]) -> None:
        raise OSError("disk full")

    commits: GroupCommit[str] = GroupCommit(apply, on_failure=failures.append)
    ticket = commits.submit("w1")
    with pytest.raises(OSError, match="disk full"):
        commits.wait(ticket)
    with pytest.raises(StoreFailed):
        commits.wait(commits.submit("w2"))
    assert [str(e) for e in failures] == ["disk full"]


class _GatedStore:
    """A real store whose transactions wait for ``gate`` (a slow disk), or fail when ``fail`` is set;
    it counts what was prepared and the size of each transaction."""

    def __init__(self, path: Path) -> None:
        self.store = ControllerStore.open(path)
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.fail = False
        self.prepared = 0
        self.groups: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def prepare(self, state: object, effects: object) -> PreparedWrite | None:
        self.prepared += 1
        return self.store.prepare(state, effects)  # type: ignore[arg-type]

    def apply(self, writes: Sequence[PreparedWrite]) -> None:
        self.writing.set()
        if self.fail:
            raise StoreError("failed to write controller state: disk I/O error")
        self.gate.wait(30)
        self.groups.append(len(writes))
        self.store.apply(writes)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Controller, _GatedStore, list[str]]]:
    store = _GatedStore(tmp_path / "state")
    fatal: list[str] = []
    controller = Controller(ControllerConfig(), state=store.store.load(now_ms=0), store=store,  # type: ignore[arg-type]
                            clock=FakeClock(), worker_clients=FakeWorkerClients(),
                            on_fatal=lambda: fatal.append("stopped"))
    yield controller, store, fatal
    store.gate.set()
    controller.stop()


def _launch(controller: Controller, name: str) -> None:
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()
    wire.launch_job(controller, T.Controller.LaunchJobRequest(name=name, serialized_entrypoint=entry,
                                                        resources=T.ResourceSpecProto(replicas=1)))


def test_writes_run_outside_the_lock_and_nothing_is_answered_before_it_is_durable(
    gated: tuple[Controller, _GatedStore, list[str]], tmp_path: Path
) -> None:
    """While one submit's transaction is on a slow disk, two more submits get through the lock
    (and are then written together, in one transaction); neither they nor a reader answer until
    what they saw is durable."""
    controller, store, _ = gated
    store.gate.clear()
    store.writing.clear()
    answered: dict[str, bool] = {}

    def run(name: str, call: Callable[[], object]) -> threading.Thread:
        def body() -> None:
            call()
            answered[name] = store.gate.is_set()  # True: it answered only after the disk did
        thread = threading.Thread(target=body)
        thread.start()
        return thread

    threads = [run("a", lambda: _launch(controller, "a"))]
    assert store.writing.wait(30)
    threads += [run(n, lambda n=n: _launch(controller, n)) for n in ("b", "c")]  # type: ignore[misc]
    wait_until(lambda: store.prepared == 3, 30, message="the lock was held during the write")
    threads.append(run("reader", lambda: controller.queries.list_jobs()))
    assert not any(answered.values())
    store.gate.set()
    for thread in threads:
        thread.join(30)
    assert answered == {"a": True, "b": True, "c": True, "reader": True}
    assert store.groups == [1, 2]
    reloaded = ControllerStore.open(tmp_path / "state").load(now_ms=0)
    assert [j.job_id for j in reloaded.list_jobs()] == ["a", "b", "c"]


def test_a_write_that_fails_is_never_acknowledged_and_stops_the_controller(
    gated: tuple[Controller, _GatedStore, list[str]],
) -> None:
    controller, store, fatal = gated
    store.fail = True
    with pytest.raises(StoreError, match="disk I/O error"):
        _launch(controller, "lost")
    wait_until(lambda: fatal == ["stopped"], 10)


def test_a_heartbeat_that_decides_nothing_does_not_wait_for_another_s_write_one_that_kills_does(
    gated: tuple[Controller, _GatedStore, list[str]],
) -> None:
    """A heartbeat whose reply says nothing new ("carry on") is as true of the durable state as of
    the newer one: it does not queue behind a slow write it did not make. One that tells the worker
    to kill an attempt waits until what it decided from is durable."""
    controller, store, _ = gated
    C = T.Controller
    wire.register_worker(controller, C.RegisterWorkerRequest(
        worker_id="w1", address="127.0.0.1:1001", metadata=T.WorkerMetadata(cpu_count=1, memory_bytes=1 << 30),
        incarnation="i1"))
    store.gate.clear()
    store.writing.clear()
    launching = threading.Thread(target=lambda: _launch(controller, "slow"))
    launching.start()
    assert store.writing.wait(30)  # the submit's write is on the slow disk
    calm = wire.heartbeat(controller, C.HeartbeatRequest(worker_id="w1", incarnation="i1", sequence=1))
    assert not calm.reregister and calm.kill == [] and not store.gate.is_set()
    replies: list[bool] = []
    stray = T.WorkerTaskStatus(task_id="gone/task-0", attempt_id=0, state=T.TASK_STATE_RUNNING)

    def kill_heartbeat() -> None:
        reply = wire.heartbeat(controller, C.HeartbeatRequest(worker_id="w1", incarnation="i1", sequence=2,
                                                              tasks=[stray]))
        replies.append(bool(reply.kill) and store.gate.is_set())

    killing = threading.Thread(target=kill_heartbeat)
    killing.start()
    killing.join(0.5)  # time to reply, were it not to wait for the disk (the gate opens only below)
    assert killing.is_alive() and replies == []
    store.gate.set()
    for thread in (launching, killing):
        thread.join(30)
    assert replies == [True]


def test_a_thread_that_takes_the_lock_again_at_once_lets_those_already_waiting_go_first() -> None:
    """The scheduling loop's back-to-back slices call ``after_waiters`` before each: a caller that
    was waiting for the lock has had it before the next slice takes it."""
    lock = DurableLock(None)
    order: list[str] = []
    lock.__enter__()  # the first slice holds the lock
    waiter = threading.Thread(target=lambda: (lock.__enter__(), order.append("waiter"), lock.leave(reading=False)))
    waiter.start()
    wait_until(lambda: lock._waiting == 1, 10, message="the waiter did not block on the lock")
    lock.leave(reading=False)
    lock.after_waiters(10)  # returns once the waiter has had the lock (or after 10 s)
    with lock:
        order.append("next slice")
    waiter.join(10)
    assert order == ["waiter", "next slice"]


def test_letting_waiters_go_first_never_waits_when_none_is_waiting_or_longer_than_its_bound() -> None:
    lock = DurableLock(None)
    lock.after_waiters(3600)  # nobody waits: returns at once
    lock.__enter__()
    holder_done = threading.Event()
    stuck = threading.Thread(target=lambda: (lock.__enter__(), holder_done.wait(30), lock.leave(reading=False)))
    other = threading.Thread(target=lambda: (lock.__enter__(), lock.leave(reading=False)))
    stuck.start()
    wait_until(lambda: lock._waiting == 1, 10)
    lock.leave(reading=False)
    wait_until(lambda: lock._waiting == 0, 10)  # ``stuck`` holds it now, and keeps it
    other.start()
    wait_until(lambda: lock._waiting == 1, 10)  # ``other`` waits behind ``stuck``
    lock.after_waiters(0.05)  # bounded: returns although ``other`` still waits
    assert lock._waiting == 1
    holder_done.set()
    stuck.join(10)
    other.join(10)
    assert lock._waiting == 0
