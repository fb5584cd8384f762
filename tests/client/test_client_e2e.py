"""The Python client against a real local cluster: submit, wait, logs, failures, terminate, child
jobs, get_job_info() inside a task, workspace bundles, workers and endpoints."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.client import (
    Entrypoint,
    InvalidRequestError,
    IrisClient,
    JobFailedError,
    JobNotFoundError,
    JobState,
    JobTimeoutError,
    ResourceSpec,
    TaskState,
)
from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=2, cpu_per_worker=4, worker_timeout=3, heartbeat_interval=0.3, kill_grace=2,
        base_dir=tmp_path_factory.mktemp("cluster"),
    ) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[IrisClient]:
    with IrisClient.remote(cluster.controller_address, token=cluster.admin_token) as c:
        yield c


def py(code: str) -> Entrypoint:
    return Entrypoint.from_command(sys.executable, "-c", code)


def test_submit_wait_and_logs_of_every_replica(client: IrisClient) -> None:
    job = client.submit(py("import os; print('hello', os.environ['IRIS_TASK_INDEX'])"), "hello", replicas=3)
    assert job.job_id == "admin:hello"  # names are unique per owner: '<user>:<name>'
    status = job.wait(timeout=60)
    assert status.state is JobState.SUCCEEDED
    assert (status.counts.total, status.counts.succeeded) == (3, 3)
    for i in range(3):
        assert [line.data for line in job.logs(i)] == [f"hello {i}"]
    tasks = job.tasks()
    assert [t.task_index for t in tasks] == [0, 1, 2]
    assert all(t.state is TaskState.SUCCEEDED and t.worker_id for t in tasks)
    assert client.task_status("hello", 1).task_id == "admin:hello/task-1"
    assert job.state is JobState.SUCCEEDED


def test_wait_stream_logs_prints_prefixed_output(client: IrisClient, capsys: pytest.CaptureFixture[str]) -> None:
    job = client.submit(py("import os; print('line from', os.environ['IRIS_TASK_INDEX'])"), "streamed", replicas=2)
    job.wait(timeout=60, stream_logs=True)
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == ["[0] line from 0", "[1] line from 1"]


def test_callable_entrypoint_runs_with_arguments(client: IrisClient, tmp_path: Path) -> None:
    def write(path: str, value: int, *, suffix: str) -> None:
        Path(path).write_text(f"{value}{suffix}")

    target = tmp_path / "out.txt"
    job = client.submit(Entrypoint.from_callable(write, str(target), 42, suffix="!"), "callable")
    job.wait(timeout=60)
    assert target.read_text() == "42!"


def test_failed_job_raises_with_error_and_failed_tasks(client: IrisClient) -> None:
    code = "import os, sys; i = int(os.environ['IRIS_TASK_INDEX']); print('attempt', os.environ['IRIS_ATTEMPT_ID']); sys.exit(3 if i == 1 else 0)"
    job = client.submit(py(code), "fails", replicas=2, max_retries_failure=1)
    with pytest.raises(JobFailedError) as info:
        job.wait(timeout=60)
    error = info.value
    assert error.job.state is JobState.FAILED
    assert [t.task_index for t in error.failed_tasks] == [1]
    failed = error.failed_tasks[0]
    assert failed.exit_code == 3
    assert failed.failure_count == 2  # the first attempt and its one retry
    assert [a.attempt_id for a in failed.attempts] == [0, 1]
    assert "fails" in str(error) and "FAILED" in str(error)
    assert [line.data for line in job.logs(1, attempt=0)] == ["attempt 0"]
    assert [line.data for line in job.logs(1, attempt=1)] == ["attempt 1"]


def test_tolerated_failure_succeeds_and_wait_without_raise(client: IrisClient) -> None:
    code = "import os, sys; sys.exit(int(os.environ['IRIS_TASK_INDEX']) == 0)"
    job = client.submit(py(code), "tolerated", replicas=3, max_task_failures=1)
    status = job.wait(timeout=60)
    assert status.state is JobState.SUCCEEDED
    assert (status.counts.succeeded, status.counts.failed) == (2, 1)
    bad = client.submit(py("import sys; sys.exit(1)"), "not-raised")
    assert bad.wait(timeout=60, raise_on_failure=False).state is JobState.FAILED


def test_terminate_kills_a_running_job(client: IrisClient) -> None:
    job = client.submit(py("import time; print('started', flush=True); time.sleep(300)"), "sleeper", replicas=2)
    wait_until(lambda: job.status().counts.running == 2, 60, message="tasks never ran")
    with pytest.raises(JobTimeoutError):
        job.wait(timeout=0.2)
    job.terminate()
    status = job.wait(timeout=60, raise_on_failure=False)
    assert status.state is JobState.KILLED
    assert all(t.state is TaskState.KILLED for t in job.tasks())


def test_get_job_info_inside_a_task(client: IrisClient, tmp_path: Path) -> None:
    def report(path: str) -> None:
        import dataclasses
        import json

        from iris.client import get_job_info

        info = get_job_info()
        assert info is not None
        Path(path, f"{info.task_index}.json").write_text(json.dumps(dataclasses.asdict(info)))

    job = client.submit(Entrypoint.from_callable(report, str(tmp_path)), "info", replicas=2, ports=["http"])
    job.wait(timeout=60)
    infos = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    for i, info in enumerate(infos):
        assert info["job_id"] == "admin:info"
        assert info["task_id"] == f"admin:info/task-{i}"
        assert (info["task_index"], info["num_tasks"], info["attempt_id"]) == (i, 2, 0)
        assert info["worker_id"] == job.task(i).worker_id
        assert info["controller_address"] == client.address
        assert set(info["ports"]) == {"http"} and info["ports"]["http"] > 0


def test_child_job_is_named_under_parent_and_dies_with_it(client: IrisClient, tmp_path: Path) -> None:
    def parent_task(marker_dir: str) -> None:
        import sys
        import time
        from pathlib import Path

        from iris.client import Entrypoint, IrisClient

        with IrisClient.from_env() as c:
            child = c.submit(Entrypoint.from_command(sys.executable, "-c", "import time; time.sleep(300)"), "child")
            tmp = Path(marker_dir, "child_id.tmp")
            tmp.write_text(child.job_id)
            tmp.replace(Path(marker_dir, "child_id"))  # appears whole: never read half-written
        time.sleep(300)

    parent = client.submit(Entrypoint.from_callable(parent_task, str(tmp_path)), "parent")
    marker = tmp_path / "child_id"
    wait_until(lambda: marker.exists() or parent.status().is_finished, 60, message="parent never submitted")
    assert marker.exists(), parent.status().error
    assert marker.read_text() == "admin:parent/child"
    child = client.job("parent/child")  # a bare name: one of mine
    assert child.status().parent_job_id == "admin:parent"
    assert [j.job_id for j in client.list_jobs(prefix="parent/")] == ["admin:parent/child"]
    wait_until(lambda: child.status().counts.running == 1, 60, message="child never ran")
    parent.terminate()
    assert child.wait(timeout=60, raise_on_failure=False).state is JobState.KILLED
    assert parent.status().state is JobState.KILLED


def test_workspace_bundle_runs_a_script_the_worker_never_saw(client: IrisClient, tmp_path: Path) -> None:
    workspace = tmp_path / "project"
    (workspace / "pkg").mkdir(parents=True)
    (workspace / "pkg" / "__init__.py").write_text("GREETING = 'hi from pkg'\n")
    (workspace / "train.py").write_text("import pkg, os\nprint(pkg.GREETING, sorted(os.listdir('.')))\n")
    (workspace / ".gitignore").write_text("secret.txt\n")
    (workspace / "secret.txt").write_text("do not ship")
    job = client.submit(
        Entrypoint.from_command(sys.executable, "-c", "import runpy; runpy.run_path('train.py')"),
        "bundled",
        workspace=workspace,
    )
    job.wait(timeout=60)
    assert [line.data for line in job.logs(0)] == ["hi from pkg ['.gitignore', 'pkg', 'train.py']"]


def test_child_job_reuses_the_parents_workspace_bundle(client: IrisClient, tmp_path: Path) -> None:
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "shared_lib.py").write_text("VALUE = 'from the parent bundle'\n")
    (workspace / "launch_child.py").write_text(
        "import sys\n"
        "from iris.client import Entrypoint, IrisClient\n"
        "with IrisClient.from_env() as c:\n"
        "    child = c.submit(Entrypoint.from_command(sys.executable, '-c',\n"
        "        'import shared_lib; print(shared_lib.VALUE)'), 'kid')\n"
        "    child.wait(timeout=60)\n"
    )
    parent = client.submit(
        Entrypoint.from_command(sys.executable, "launch_child.py"), "bundle-parent", workspace=workspace
    )
    parent.wait(timeout=90)
    assert [line.data for line in client.job("bundle-parent/kid").logs(0)] == ["from the parent bundle"]


def test_list_jobs_by_state_and_prefix(client: IrisClient) -> None:
    client.submit(py("pass"), "listme-a").wait(timeout=60)
    jobs = client.list_jobs(state=JobState.SUCCEEDED, prefix="listme-")
    assert [j.job_id for j in jobs] == ["admin:listme-a"]
    assert client.list_jobs(state="failed", prefix="listme-") == []


def test_workers_are_listed(client: IrisClient, cluster: LocalCluster) -> None:
    workers = client.workers()
    assert len(workers) == 2
    assert all(w.healthy and w.cpu_count == 4 and w.address for w in workers)


def test_endpoint_registered_by_a_task_is_looked_up_and_listed(client: IrisClient, tmp_path: Path) -> None:
    def serve(marker: str) -> None:
        import time
        from pathlib import Path

        from iris.client import IrisClient, get_job_info

        info = get_job_info()
        assert info is not None
        with IrisClient.from_env() as c:
            c.register_endpoint("svc/api", f"127.0.0.1:{info.ports['http']}", {"role": "api"})
        Path(marker).write_text("ok")
        time.sleep(300)

    marker = tmp_path / "registered"
    job = client.submit(Entrypoint.from_callable(serve, str(marker)), "server", ports=["http"])
    wait_until(lambda: marker.exists() or job.status().is_finished, 60, message="no endpoint registered")
    assert marker.exists(), job.status().error
    endpoint = client.lookup_endpoint("svc/api")
    assert endpoint is not None
    assert endpoint.job_id == "admin:server" and endpoint.task_id == "admin:server/task-0"
    assert endpoint.metadata == {"role": "api"} and endpoint.name == "admin:svc/api"  # its owner's namespace
    assert [e.name for e in client.list_endpoints("svc/")] == ["admin:svc/api"]
    job.terminate()
    job.wait(timeout=60, raise_on_failure=False)
    wait_until(lambda: client.lookup_endpoint("svc/api") is None, 30, message="endpoint outlived its task")


def test_unknown_job_and_bad_requests_raise_clear_errors(client: IrisClient) -> None:
    with pytest.raises(JobNotFoundError):
        client.job_status("no-such-job")
    with pytest.raises(JobNotFoundError):
        client.terminate("no-such-job")
    with pytest.raises(InvalidRequestError, match="replicas"):
        client.submit(py("pass"), "zero", replicas=0)
    with pytest.raises(InvalidRequestError, match="name"):
        client.submit(py("pass"), "bad/name")
    with pytest.raises(ValueError, match="memory"):
        client.submit(py("pass"), "mem", resources=ResourceSpec(memory="lots"))
    with pytest.raises(InvalidRequestError, match="empty"):
        client.submit(Entrypoint(), "empty")


def test_local_client_starts_and_stops_its_own_cluster() -> None:
    with IrisClient.local(workers=1) as client:
        assert len(client.workers()) == 1
        client.submit(py("print('local')"), "local").wait(timeout=60)
        controller = client.cluster.controller_pid
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(controller, 0)



def test_a_callable_s_return_value_comes_back(client: IrisClient) -> None:
    # Defined here, not at module level: cloudpickle ships local functions by value (the worker has
    # no ``tests`` package to import).
    def add(a: int, b: int) -> int:
        return a + b

    def index_squared() -> int:
        import os

        return int(os.environ["IRIS_TASK_INDEX"]) ** 2

    assert client.submit(Entrypoint.from_callable(add, 2, 3), "nb-add").result(timeout=60) == 5
    assert client.submit(index_squared, "squares", replicas=4).results(timeout=60) == [0, 1, 4, 9]
    # A command has no return value.
    assert client.submit(py("print('x')"), "no-result").result(timeout=60) is None


def test_a_callable_that_raises_gives_the_remote_exception(client: IrisClient) -> None:
    def explode() -> None:
        raise ValueError("the batch had no rows")

    with pytest.raises(JobFailedError) as error:
        client.submit(explode, "raises").result(timeout=60)
    assert error.value.remote_type == "ValueError" and error.value.remote_message == "the batch had no rows"
    assert "in explode" in error.value.remote_traceback and error.value.remote_traceback.startswith("Traceback")


def test_a_result_over_the_cap_fails_the_task_with_a_clear_error(client: IrisClient) -> None:
    def huge() -> bytes:
        return b"x" * (5 * 1024 * 1024)

    with pytest.raises(JobFailedError) as error:
        client.submit(huge, "huge").result(timeout=120)
    assert "over the cap of 4,194,304" in str(error.value.failed_tasks[0].error)
