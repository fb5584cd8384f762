"""The controller's backend seam (DESIGN §8).

1. A second, pull-based backend kept in memory (its locations and their observed sets are
   *polled*, as a batch system or Kubernetes would be): the real controller places tasks on the
   capacity it reports, launches through it, and completes, retries and kills from its
   observations alone. This is the contract a new backend is written against.
2. The worker-daemon backend's mapping of what a worker answered to launch outcomes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.backend import (
    AttemptKill,
    AttemptLaunch,
    LaunchOutcome,
    LaunchResult,
    LocationCapacity,
    LogLine,
    LogPage,
    LogRequest,
    Observation,
    WorkerDaemonBackend,
)
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.state import ControllerState, ObservedAttempt
from iris.cluster.controller.task import TaskAttempt
from iris.cluster.spec import Entrypoint, JobSpec
from iris.cluster.types import JobId, ResourceSpec, TaskId, WorkerId, WorkerMetadata
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeRpcError, FakeWorkerClients

T = cluster_pb2


@dataclass
class PolledBackend:
    """An in-memory execution engine: its nodes and what runs on them are polled, never pushed."""

    ships_logs = False

    nodes: dict[WorkerId, int] = field(default_factory=dict)
    """node -> cpus."""
    running: dict[WorkerId, dict[tuple[TaskId, int], int]] = field(default_factory=dict)
    """node -> (task, attempt) -> state."""
    launched: list[AttemptLaunch] = field(default_factory=list)
    killed: list[AttemptKill] = field(default_factory=list)
    refuse: set[TaskId] = field(default_factory=set)
    down: set[WorkerId] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, launches: Sequence[AttemptLaunch]) -> list[LaunchResult]:
        out = []
        with self.lock:
            for launch in launches:
                self.launched.append(launch)
                if launch.worker_id in self.down:
                    out.append(LaunchResult(LaunchOutcome.BACKEND_FAILED, "node down", location_gone=True))
                elif launch.task_id in self.refuse:
                    out.append(LaunchResult(LaunchOutcome.TASK_REFUSED, "image not found"))
                else:
                    self.running.setdefault(launch.worker_id, {})[(launch.task_id, launch.attempt_id)] = \
                        T.TASK_STATE_RUNNING
                    out.append(LaunchResult(LaunchOutcome.ACCEPTED, incarnation="engine", sequence=0))
        return out

    def kill(self, kill: AttemptKill) -> None:
        with self.lock:
            self.killed.append(kill)
            held = self.running.get(kill.worker_id, {})
            if (kill.task_id, kill.attempt_id) in held:
                held[(kill.task_id, kill.attempt_id)] = T.TASK_STATE_KILLED

    def observe(self) -> list[Observation]:
        with self.lock:
            return [
                Observation(node, [ObservedAttempt(t, a, s) for (t, a), s in held.items()], "engine", 0)
                for node, held in self.running.items() if node not in self.down
            ]

    def capacity(self) -> list[LocationCapacity]:
        with self.lock:
            return [LocationCapacity(node, f"engine://{node}", WorkerMetadata(cpu_count=cpu, memory_bytes=2**34),
                                     "engine") for node, cpu in self.nodes.items() if node not in self.down]

    def fetch_logs(self, request: LogRequest) -> LogPage:
        return LogPage([LogLine(f"log of {request.task_id}")], request.start_line + 1, 10, True)

    def close(self) -> None:
        pass

    def finish(self, task_id: str, attempt: int, state: int) -> None:
        with self.lock:
            for held in self.running.values():
                if (TaskId(task_id), attempt) in held:
                    held[(TaskId(task_id), attempt)] = state


def make(backend: PolledBackend) -> tuple[Controller, ControllerState, FakeClock]:
    state = ControllerState()
    clock = FakeClock()
    return Controller(ControllerConfig(worker_timeout_s=10), state=state, clock=clock, backend=backend), state, clock


def launch(controller: Controller, name: str = "job", replicas: int = 1, **fields: object) -> JobId:
    spec = JobSpec(name=name, entrypoint=Entrypoint(argv=("true",)), resources=ResourceSpec(cpu=1),
                   replicas=replicas).replace(**fields)
    return controller.launch_job(spec)


def test_backend_polled_capacity_and_observations_drive_a_job_to_success() -> None:
    backend = PolledBackend(nodes={WorkerId("n1"): 2, WorkerId("n2"): 2})
    controller, state, _ = make(backend)
    try:
        controller.tick_observe()  # the backend's capacity registers like workers
        assert sorted(w.worker_id for w in controller.queries.list_workers()) == ["n1", "n2"]
        job_id = launch(controller, replicas=3)
        controller.tick_schedule()
        wait_until(lambda: len(backend.launched) == 3, 10)
        assert {launch.spec.name for launch in backend.launched} == {"job"}  # plain data: the frozen spec
        for i in range(3):
            backend.finish(f"job/task-{i}", 0, T.TASK_STATE_SUCCEEDED)
        controller.tick_observe()  # the observed sets carry the ends
        assert controller.queries.get_job(job_id).state == T.JOB_STATE_SUCCEEDED
    finally:
        controller.stop()
        state.check_invariants()


def test_backend_polled_lost_attempt_is_a_preemption_and_refusal_a_failure() -> None:
    backend = PolledBackend(nodes={WorkerId("n1"): 4}, refuse={TaskId("job/task-1")})
    controller, state, _ = make(backend)
    try:
        controller.tick_observe()
        launch(controller, replicas=2, max_retries_failure=1)
        controller.tick_schedule()
        wait_until(lambda: (t := state.get_task(TaskId("job/task-1"))) is not None and t.failure_count == 1, 10)
        refused = state.get_task(TaskId("job/task-1"))
        assert refused is not None and refused.preemption_count == 0
        assert "image not found" in (refused.attempts[0].error or "")
        # The engine loses task 0 (its observed set no longer has it): a preemption, retried.
        with backend.lock:
            backend.running[WorkerId("n1")].pop((TaskId("job/task-0"), 0))
        controller.tick_observe()
        lost = state.get_task(TaskId("job/task-0"))
        assert lost is not None and lost.preemption_count == 1 and lost.failure_count == 0
        assert lost.attempts[0].state == T.TASK_STATE_WORKER_FAILED
        assert state.get_worker(WorkerId("n1")).healthy  # type: ignore[union-attr]
    finally:
        controller.stop()
        state.check_invariants()


def test_backend_polled_terminate_kills_through_the_backend_and_logs_come_from_it() -> None:
    backend = PolledBackend(nodes={WorkerId("n1"): 1})
    controller, state, _ = make(backend)
    try:
        controller.tick_observe()
        job_id = launch(controller)
        controller.tick_schedule()
        wait_until(lambda: len(backend.launched) == 1, 10)
        reply = wire.fetch_task_logs(controller, T.Controller.FetchTaskLogsRequest(task_id="job/task-0"))
        assert [line.data for line in reply.lines] == ["log of job/task-0"] and reply.next_offset == 10
        controller.terminate_job(job_id)
        wait_until(lambda: len(backend.killed) == 1, 10)
        assert (backend.killed[0].task_id, backend.killed[0].attempt_id) == ("job/task-0", 0)
        # An attempt the engine still shows that the controller no longer expects is killed again.
        backend.killed.clear()
        with backend.lock:
            backend.running[WorkerId("n1")][(TaskId("job/task-0"), 0)] = T.TASK_STATE_RUNNING
        controller.tick_observe()
        wait_until(lambda: len(backend.killed) == 1, 10)
    finally:
        controller.stop()
        state.check_invariants()


def test_backend_that_raises_leaves_no_task_stuck() -> None:
    class Broken(PolledBackend):
        def submit(self, launches: Sequence[AttemptLaunch]) -> list[LaunchResult]:
            raise RuntimeError("bug in a backend")

    backend = Broken(nodes={WorkerId("n1"): 1})
    controller, state, _ = make(backend)
    try:
        controller.tick_observe()
        launch(controller)
        controller.tick_schedule()
        wait_until(lambda: (t := state.get_task(TaskId("job/task-0"))) is not None and t.preemption_count == 1, 10)
    finally:
        controller.stop()
        state.check_invariants()


# ---------------------------------------------------------------------------- worker daemons


def _launches(n: int) -> list[AttemptLaunch]:
    spec = JobSpec(name="job", entrypoint=Entrypoint(argv=("true",)), replicas=n)
    return [AttemptLaunch(JobId("job"), TaskId(f"job/task-{i}"), i, n, 0, spec, WorkerId("w1"), "127.0.0.1:1")
            for i in range(n)]


def test_a_launch_given_its_tokens_keeps_every_other_field() -> None:
    """``with_credentials`` spells the fields out (it is once per launch): a field added to
    ``AttemptLaunch`` and not passed on would be lost here."""
    import dataclasses

    spec = JobSpec(name="job", entrypoint=Entrypoint(argv=("true",)), replicas=2)
    values: dict[str, object] = {}
    for i, f in enumerate(dataclasses.fields(AttemptLaunch)):
        default = f.default
        if f.name == "spec":
            values[f.name] = spec
        elif f.name == "previous":
            values[f.name] = TaskAttempt(attempt_id=3, state=cluster_pb2.TASK_STATE_FAILED, exit_code=1, error="boom")
        elif isinstance(default, int) or f.type == "int":
            values[f.name] = 100 + i
        elif f.name in ("rendezvous", "ports"):
            values[f.name] = ((f"k{i}", f"v{i}" if f.name == "rendezvous" else 9000 + i),)
        elif f.name == "run_as":
            values[f.name] = (200_001, "alice")
        else:
            values[f.name] = f"{f.name}-{i}"
    launch = AttemptLaunch(**values)  # type: ignore[arg-type]
    given = launch.with_credentials("token-x", "credential-y")
    assert given == dataclasses.replace(launch, task_token="token-x", credential="credential-y")


def test_worker_daemon_backend_maps_refusals_to_the_task_and_outages_to_the_worker() -> None:
    clients = FakeWorkerClients(refuse={"job/task-1": "environment.env_vars: bad"})
    backend = WorkerDaemonBackend(clients)
    results = backend.submit(_launches(3))
    assert [r.outcome for r in results] == [LaunchOutcome.ACCEPTED, LaunchOutcome.TASK_REFUSED, LaunchOutcome.ACCEPTED]
    assert "environment.env_vars" in results[1].error
    clients.unreachable.add("127.0.0.1:1")
    results = backend.submit(_launches(2))
    assert all(r.outcome is LaunchOutcome.BACKEND_FAILED and r.location_gone for r in results)


def test_worker_daemon_backend_finds_the_task_a_worker_refused_the_whole_call_for() -> None:
    """A message over the worker's receive limit fails the whole call with RESOURCE_EXHAUSTED: the
    backend resends each task alone, so only the oversized one fails and the worker is not blamed."""

    class Limited(FakeWorkerClients):
        def run_tasks(self, address: str, request: cluster_pb2.Worker.RunTasksRequest, timeout: float,
                      credential: str = "") -> cluster_pb2.Worker.RunTasksResponse:
            if any(r.task_id == "job/task-1" for r in request.tasks):
                with self.lock:
                    self.batch_calls.append((address, [r.task_id for r in request.tasks]))
                raise FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")
            return super().run_tasks(address, request, timeout, credential)

    clients = Limited()
    results = WorkerDaemonBackend(clients).submit(_launches(3))
    assert [r.outcome for r in results] == [LaunchOutcome.ACCEPTED, LaunchOutcome.TASK_REFUSED, LaunchOutcome.ACCEPTED]
    assert "RESOURCE_EXHAUSTED" in results[1].error
    assert [ids for _, ids in clients.batch_calls] == [
        ["job/task-0", "job/task-1", "job/task-2"], ["job/task-0"], ["job/task-1"], ["job/task-2"],
    ]
