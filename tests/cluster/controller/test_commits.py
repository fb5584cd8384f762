"""Group commit: store writes leave the controller's lock, several per transaction, in order, and a
caller goes on only once its writes are durable (DESIGN §5)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.commits import GroupCommit, StoreFailed
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.store import ControllerStore, PreparedWrite, StoreError
from iris.cluster.types import JobId
from iris.rpc import cluster_pb2

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
    """A real store whose transactions wait for ``gate`` (a slow disk), or fail when ``fail`` is set."""

    def __init__(self, path: Path) -> None:
        self.store = ControllerStore.open(path)
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.fail = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def apply(self, writes: Sequence[PreparedWrite]) -> None:
        self.writing.set()
        if self.fail:
            raise StoreError("failed to write controller state: disk I/O error")
        self.gate.wait(30)
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
    controller.launch_job(T.Controller.LaunchJobRequest(name=name, serialized_entrypoint=entry,
                                                        resources=T.ResourceSpecProto(replicas=1)))


def test_a_submit_returns_only_once_durable_and_the_write_does_not_hold_the_lock(
    gated: tuple[Controller, _GatedStore, list[str]], tmp_path: Path
) -> None:
    controller, store, _ = gated
    store.gate.clear()
    store.writing.clear()
    submit = threading.Thread(target=_launch, args=(controller, "slow-disk"))
    submit.start()
    assert store.writing.wait(30)
    # The write is in flight outside the lock: readers (and other writers' state changes) go on.
    assert [j.job_id for j in controller.list_jobs().jobs] == ["slow-disk"]
    assert submit.is_alive()  # not acknowledged before it is durable
    store.gate.set()
    submit.join(30)
    assert not submit.is_alive()
    reloaded = ControllerStore.open(tmp_path / "state").load(now_ms=0)
    assert reloaded.get_job(JobId("slow-disk")) is not None


def test_a_write_that_fails_is_never_acknowledged_and_stops_the_controller(
    gated: tuple[Controller, _GatedStore, list[str]],
) -> None:
    controller, store, fatal = gated
    store.fail = True
    with pytest.raises(StoreError, match="disk I/O error"):
        _launch(controller, "lost")
    wait_until(lambda: fatal == ["stopped"], 10)
