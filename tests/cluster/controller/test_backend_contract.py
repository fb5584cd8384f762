"""The ``TaskBackend`` seam's contract, run against every backend: Iris's worker daemons (over fake
gRPC clients) and the pod backend over the in-memory pod API (``pods.FakePodApi``). Each driver
plays its engine (a worker's reports; the kubelet's pod phases); the assertions are the same and
go through the controller's public reads:

- an attempt that exits 0 is SUCCEEDED; one that exits non-zero is a failure charged to
  ``max_retries_failure``; one whose location went away (a dead worker, an evicted or lost pod) is
  a preemption charged to ``max_retries_preemption``;
- stopping a job stops its attempts in the engine;
- an attempt's output is readable through the controller, also after it ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import pytest

from iris.cluster.clock import FakeClock, wait_until
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.pods import FakePodApi, PodBackend, PodBackendConfig, pod_name
from iris.cluster.controller.state import ControllerState
from iris.cluster.types import JobId, ResourceSpec, WorkerId
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2


class Driver(Protocol):
    controller: Controller

    def launched(self) -> set[tuple[str, int]]: ...
    def run(self, task_id: str, attempt: int, output: str) -> None: ...
    def succeed(self, task_id: str, attempt: int) -> None: ...
    def fail(self, task_id: str, attempt: int, exit_code: int) -> None: ...
    def preempt(self, task_id: str, attempt: int) -> None: ...
    def stopped(self, task_id: str, attempt: int) -> bool: ...
    def close(self) -> None: ...


class WorkerDaemonDriver:
    """Worker daemons: the controller dispatches over (fake) gRPC; the worker reports back."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.fake = FakeWorkerClients()
        self.controller = Controller(ControllerConfig(auth=False, worker_timeout_s=10), state=ControllerState(),
                                     clock=self.clock, worker_clients=self.fake)
        self._incarnation = 0
        self._register()

    def _register(self) -> None:
        self._incarnation += 1
        wire.register_worker(self.controller, T.Controller.RegisterWorkerRequest(
            worker_id="w1", address="10.0.0.2:7000", incarnation=f"inc-{self._incarnation}",
            metadata=T.WorkerMetadata(cpu_count=8, memory_bytes=32 * 1024**3)))

    def launched(self) -> set[tuple[str, int]]:
        return set(self.fake.ran())

    def _report(self, task_id: str, attempt: int, state: int, **fields: object) -> None:
        wire.report_task_state(self.controller, T.Controller.ReportTaskStateRequest(
            worker_id="w1", updates=[T.WorkerTaskStatus(task_id=task_id, attempt_id=attempt, state=state, **fields)]))  # type: ignore[arg-type]

    def run(self, task_id: str, attempt: int, output: str) -> None:
        self.fake.logs[(task_id, attempt)] = output.splitlines()
        self._report(task_id, attempt, T.TASK_STATE_RUNNING)

    def succeed(self, task_id: str, attempt: int) -> None:
        self._report(task_id, attempt, T.TASK_STATE_SUCCEEDED, exit_code=0)

    def fail(self, task_id: str, attempt: int, exit_code: int) -> None:
        self._report(task_id, attempt, T.TASK_STATE_FAILED, exit_code=exit_code, error=f"exit code {exit_code}")

    def preempt(self, task_id: str, attempt: int) -> None:
        # The worker stops answering past the timeout, then comes back as a new incarnation.
        self.clock.advance(11)
        self.controller.tick_health()
        self._register()

    def stopped(self, task_id: str, attempt: int) -> bool:
        return (task_id, attempt) in self.fake.killed()

    def close(self) -> None:
        self.controller.stop()


class PodDriver:
    """One bare pod per attempt; the fake API server and kubelet move the pods."""

    def __init__(self) -> None:
        self.api = FakePodApi()
        self.backend = PodBackend(self.api, PodBackendConfig(image="python:3.11", cluster="test"))
        self.controller = Controller(ControllerConfig(auth=False), state=ControllerState(), clock=FakeClock(),
                                     backend=self.backend)
        self.controller.tick_observe()  # the cluster is offered as one location

    def launched(self) -> set[tuple[str, int]]:
        out = set()
        for pod in self.api.pods():
            out.add((dict(pod.spec.annotations)["iris.dev/task-id"], int(pod.labels["iris.dev/attempt"])))
        return out | getattr(self, "_seen", set())

    def _sync(self) -> None:
        self._seen = self.launched()
        self.controller.tick_observe()

    def run(self, task_id: str, attempt: int, output: str) -> None:
        self.api.run(pod_name(task_id, attempt), output=output)
        self._sync()

    def succeed(self, task_id: str, attempt: int) -> None:
        self.api.succeed(pod_name(task_id, attempt))
        self._sync()
        self._sync()  # the ended pod is deleted on the next pass; its log stays in the archive

    def fail(self, task_id: str, attempt: int, exit_code: int) -> None:
        self.api.fail(pod_name(task_id, attempt), exit_code)
        self._sync()

    def preempt(self, task_id: str, attempt: int) -> None:
        self.api.evict(pod_name(task_id, attempt))
        self._sync()

    def stopped(self, task_id: str, attempt: int) -> bool:
        return all(p.name != pod_name(task_id, attempt) for p in self.api.pods())

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture(params=["worker-daemons", "pods"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    d: Driver = WorkerDaemonDriver() if request.param == "worker-daemons" else PodDriver()
    yield d
    d.close()


def launch(d: Driver, name: str, replicas: int = 1, **fields: object) -> JobId:
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["python", "train.py"])).SerializeToString()
    return wire.launch_job(d.controller, T.Controller.LaunchJobRequest(
        name=name, serialized_entrypoint=entry,
        resources=ResourceSpec(cpu=1, memory="1GiB", replicas=replicas).to_proto(), **fields))  # type: ignore[arg-type]


def schedule(d: Driver, expected: set[tuple[str, int]]) -> None:
    d.controller.tick_schedule()
    wait_until(lambda: expected <= d.launched(), 10, message=f"not launched: {expected - d.launched()}")


def test_attempts_that_exit_zero_succeed(driver: Driver) -> None:
    job_id = launch(driver, "ok", replicas=2)
    tasks = [t.task_id for t in driver.controller.queries.list_tasks(job_id)]
    schedule(driver, {(t, 0) for t in tasks})
    for t in tasks:
        driver.run(t, 0, "step 1\n")
        driver.succeed(t, 0)
    job, _ = driver.controller.queries.job_status(job_id)
    assert job.state == T.JOB_STATE_SUCCEEDED


def test_non_zero_exit_is_a_failure_charged_to_the_failure_budget(driver: Driver) -> None:
    job_id = launch(driver, "flaky", max_retries_failure=1)
    (task,) = driver.controller.queries.list_tasks(job_id)
    schedule(driver, {(task.task_id, 0)})
    driver.run(task.task_id, 0, "")
    driver.fail(task.task_id, 0, 3)
    (task,) = driver.controller.queries.list_tasks(job_id)
    assert task.state == T.TASK_STATE_PENDING and (task.failure_count, task.preemption_count) == (1, 0)
    assert task.attempts[0].exit_code == 3 and not task.attempts[0].is_worker_failure
    schedule(driver, {(task.task_id, 1)})
    driver.run(task.task_id, 1, "")
    driver.succeed(task.task_id, 1)
    assert driver.controller.queries.job_status(job_id)[0].state == T.JOB_STATE_SUCCEEDED


def test_a_lost_location_is_a_preemption_charged_to_the_preemption_budget(driver: Driver) -> None:
    job_id = launch(driver, "preempted", max_retries_preemption=1)
    (task,) = driver.controller.queries.list_tasks(job_id)
    schedule(driver, {(task.task_id, 0)})
    driver.run(task.task_id, 0, "")
    driver.preempt(task.task_id, 0)
    (task,) = driver.controller.queries.list_tasks(job_id)
    assert task.state == T.TASK_STATE_PENDING and (task.failure_count, task.preemption_count) == (0, 1)
    assert task.attempts[0].is_worker_failure
    schedule(driver, {(task.task_id, 1)})
    driver.run(task.task_id, 1, "")
    driver.succeed(task.task_id, 1)
    assert driver.controller.queries.job_status(job_id)[0].state == T.JOB_STATE_SUCCEEDED


def test_stopping_a_job_stops_its_attempts_in_the_engine(driver: Driver) -> None:
    job_id = launch(driver, "stopped", replicas=2)
    tasks = [t.task_id for t in driver.controller.queries.list_tasks(job_id)]
    schedule(driver, {(t, 0) for t in tasks})
    for t in tasks:
        driver.run(t, 0, "")
    driver.controller.terminate_job(job_id)
    wait_until(lambda: all(driver.stopped(t, 0) for t in tasks), 10, message="attempts still running")
    assert driver.controller.queries.job_status(job_id)[0].state == T.JOB_STATE_KILLED


def test_output_is_readable_through_the_controller_after_the_attempt_ended(driver: Driver) -> None:
    job_id = launch(driver, "logged")
    (task,) = driver.controller.queries.list_tasks(job_id)
    schedule(driver, {(task.task_id, 0)})
    driver.run(task.task_id, 0, "hello\nworld\n")
    driver.succeed(task.task_id, 0)
    reply = wire.fetch_task_logs(driver.controller, T.Controller.FetchTaskLogsRequest(task_id=task.task_id))
    assert [line.data for line in reply.lines] == ["hello", "world"]


def test_pod_api_rules_the_fake_enforces() -> None:
    api = FakePodApi()
    backend = PodBackend(api, PodBackendConfig(image="img", queue="team-a"))
    from iris.cluster.controller.backend import AttemptLaunch
    from iris.cluster.spec import Entrypoint, JobSpec

    spec = JobSpec(name="gang", entrypoint=Entrypoint.from_command("python", "x.py"), replicas=2, coscheduled=True)
    launch = AttemptLaunch(JobId("gang"), "gang/task-0", 0, 2, 0, spec, WorkerId("k8s"), "")  # type: ignore[arg-type]
    (first,) = backend.submit([launch])
    (again,) = backend.submit([launch])  # a retried create finds its pod: still accepted, not duplicated
    assert first.outcome.value == again.outcome.value == "accepted" and len(api.pods()) == 1
    (pod,) = api.pods()
    assert pod.spec.restart_policy == "Never"
    assert pod.labels["kueue.x-k8s.io/queue-name"] == "team-a" and pod.labels["kueue.x-k8s.io/pod-group-name"]
    assert dict(pod.spec.annotations)["kueue.x-k8s.io/pod-group-total-count"] == "2"
    callable_spec = spec.replace(entrypoint=Entrypoint.from_callable(print))
    (refused,) = backend.submit([AttemptLaunch(JobId("gang"), "gang/task-1", 1, 2, 0, callable_spec,  # type: ignore[arg-type]
                                               WorkerId("k8s"), "")])
    assert refused.outcome.value == "task_refused"
    no_kueue = PodBackend(FakePodApi(), PodBackendConfig(image="img"))
    assert no_kueue.submit([launch])[0].outcome.value == "task_refused", "a gang needs Kueue"
    api.available = False
    assert backend.observe() == [], "an observation error is neither success nor failure"
