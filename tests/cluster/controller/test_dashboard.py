"""Dashboard: the HTML page, the JSON API (same data as the gRPC views) and /metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from iris.cluster.clock import FakeClock
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.dashboard import Dashboard
from iris.cluster.types import ResourceSpec
from iris.rpc import cluster_pb2

from .fakes import FakeWorkerClients

T = cluster_pb2


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    controller = Controller(ControllerConfig(), clock=FakeClock(), worker_clients=FakeWorkerClients())
    controller.register_worker(T.Controller.RegisterWorkerRequest(
        worker_id="w1", address="127.0.0.1:1", metadata=T.WorkerMetadata(cpu_count=4, memory_bytes=1 << 30)))
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()
    for name in ("train", "parent"):
        controller.launch_job(T.Controller.LaunchJobRequest(
            name=name, serialized_entrypoint=entry, resources=ResourceSpec(cpu=1, replicas=3).to_proto()))
    controller.launch_job(T.Controller.LaunchJobRequest(
        name="child", parent_job_id="parent", serialized_entrypoint=entry, resources=ResourceSpec().to_proto()))
    controller.terminate_job(controller.get_job("train").job_id)  # type: ignore[arg-type]
    d = Dashboard(controller, "127.0.0.1", 0)
    d.start()
    yield d
    d.stop()
    controller.stop()


def get(d: Dashboard, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(d.url + path, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_dashboard_page_and_health(dashboard: Dashboard) -> None:
    status, body = get(dashboard, "/")
    assert status == 200 and "<title>Iris</title>" in body and "api/jobs" in body
    assert get(dashboard, "/healthz") == (200, "ok\n")


def test_dashboard_jobs_and_job_detail_json(dashboard: Dashboard) -> None:
    status, body = get(dashboard, "/api/jobs")
    jobs = {j["jobId"]: j for j in json.loads(body)["jobs"]}
    assert status == 200 and set(jobs) == {"train", "parent", "parent/child"}
    assert jobs["train"]["state"] == "JOB_STATE_KILLED" and jobs["parent"]["numTasks"] == 3
    status, body = get(dashboard, "/api/job?id=parent/child")
    job = json.loads(body)["job"]
    assert status == 200 and job["parentJobId"] == "parent" and [t["taskId"] for t in job["tasks"]] == [
        "parent/child/task-0"
    ]


def test_dashboard_errors_are_json_with_status(dashboard: Dashboard) -> None:
    status, body = get(dashboard, "/api/job?id=nope")
    assert status == 404 and "not found" in json.loads(body)["error"]
    status, body = get(dashboard, "/api/job")
    assert status == 400 and json.loads(body)["error"].startswith("id:")
    assert get(dashboard, "/nowhere")[0] == 404


def test_dashboard_workers_actions_and_metrics(dashboard: Dashboard) -> None:
    workers = json.loads(get(dashboard, "/api/workers")[1])["workers"]
    assert [w["workerId"] for w in workers] == ["w1"] and workers[0]["healthy"]
    actions = json.loads(get(dashboard, "/api/actions")[1])["actions"]
    assert {"job_submitted", "worker_registered", "job_finished"} <= {a["action"] for a in actions}
    status, metrics = get(dashboard, "/metrics")
    assert status == 200
    assert 'iris_jobs{state="KILLED"} 1' in metrics and 'iris_jobs{state="PENDING"} 2' in metrics
    assert 'iris_tasks{state="KILLED"} 3' in metrics and 'iris_workers{healthy="true"} 1' in metrics
