"""The ``iris`` job/task/worker/endpoint commands against a real local cluster, and every named
bad input: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.client import Entrypoint, IrisClient, JobState
from iris.client.credentials import store_login
from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster

from .conftest import iris, py

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=2, cpu_per_worker=4, worker_timeout=3, heartbeat_interval=0.3, kill_grace=2,
        base_dir=tmp_path_factory.mktemp("cluster"),
    ) as c:
        store_login(c.controller_address, c.admin_token)  # as `iris login` would: the CLI finds it
        yield c


@pytest.fixture
def address(cluster: LocalCluster) -> str:
    return cluster.controller_address


def assert_one_line_error(result: object, *needles: str) -> None:
    assert result.returncode != 0, result.stdout  # type: ignore[attr-defined]
    err = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("Error: "), err
    for needle in needles:
        assert needle in last, err


def test_job_run_streams_prefixed_output_and_exits_zero(address: str, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("import os\nprint('training shard', os.environ['IRIS_TASK_INDEX'])\n")
    result = iris("job", "run", "--name", "cli-run", "--replicas", "3", "--", *py("import runpy; runpy.run_path('train.py')"),
                  controller=address, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [f"[{i}] training shard {i}" for i in range(3)]
    assert "SUCCEEDED" in result.stderr and "3/3 tasks succeeded" in result.stderr


def test_job_run_failure_exits_nonzero_with_the_job_error(address: str) -> None:
    result = iris("job", "run", "--no-bundle", "--name", "cli-fail", "--max-retries", "1", "--",
                  *py("import sys; print('trying'); sys.exit('bad input file')"), controller=address)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["[0] trying", "[0] bad input file"] * 2  # both attempts
    assert "attempt 0 FAILED" in result.stderr and "retrying as attempt 1" in result.stderr
    assert_one_line_error(result, "cli-fail FAILED", "bad input file")


def test_read_commands_print_json_that_parses(address: str) -> None:
    result = iris("job", "run", "--no-bundle", "--name", "cli-json", "--replicas", "2", "--env", "WHO=json",
                  "--", *py("import os; print('hi', os.environ['WHO'])"), controller=address)
    assert result.returncode == 0, result.stderr

    jobs = json.loads(iris("job", "list", "--json", "--prefix", "cli-json", controller=address).stdout)
    assert [(j["job_id"], j["state"]) for j in jobs] == [("admin:cli-json", "SUCCEEDED")]

    status = json.loads(iris("job", "status", "cli-json", "--tasks", "--json", controller=address).stdout)
    assert status["counts"]["succeeded"] == 2 and len(status["tasks"]) == 2

    tasks = json.loads(iris("task", "list", "cli-json", "--json", controller=address).stdout)
    assert [(t["task_index"], t["state"]) for t in tasks] == [(0, "SUCCEEDED"), (1, "SUCCEEDED")]

    task = json.loads(iris("task", "status", "cli-json", "1", "--json", controller=address).stdout)
    assert task["task_id"] == "admin:cli-json/task-1"

    logs = json.loads(iris("job", "logs", "cli-json", "--json", controller=address).stdout)
    assert sorted((line["task_index"], line["data"]) for line in logs) == [(0, "hi json"), (1, "hi json")]

    workers = json.loads(iris("worker", "list", "--json", controller=address).stdout)
    assert len(workers) == 2 and all(w["healthy"] for w in workers)

    endpoints = json.loads(iris("endpoint", "list", "--json", controller=address).stdout)
    assert isinstance(endpoints, list)


def test_human_tables(address: str) -> None:
    assert iris("job", "run", "--no-bundle", "--name", "cli-table", "--", *py("print('x')"), controller=address).returncode == 0
    listing = iris("job", "list", controller=address)
    assert listing.returncode == 0
    assert "JOB" in listing.stdout and "cli-table" in listing.stdout and "ago" in listing.stdout
    status = iris("job", "status", "cli-table", "--tasks", controller=address)
    assert "SUCCEEDED" in status.stdout and "WORKER" in status.stdout and "ATTEMPTS" in status.stdout
    workers = iris("worker", "list", controller=address)
    assert "healthy" in workers.stdout and "CPU" in workers.stdout


def test_job_list_shows_the_newest_first_and_says_when_it_cut(address: str) -> None:
    for i in range(3):
        result = iris("job", "run", "--no-bundle", "--no-wait", "--name", f"cli-many-{i}", "--", "/bin/true",
                      controller=address)
        assert result.returncode == 0, result.stderr
    newest = json.loads(iris("job", "list", "--json", "--prefix", "cli-many-", "--limit", "2", controller=address).stdout)
    assert [j["job_id"] for j in newest] == ["admin:cli-many-2", "admin:cli-many-1"]
    every = json.loads(iris("job", "list", "--json", "--prefix", "cli-many-", "--all", controller=address).stdout)
    assert [j["job_id"] for j in every] == ["admin:cli-many-2", "admin:cli-many-1", "admin:cli-many-0"]
    table = iris("job", "list", "--prefix", "cli-many-", "--limit", "1", controller=address)
    assert "cli-many-2" in table.stdout and "cli-many-1" not in table.stdout
    assert "newest 1 jobs; --limit N or --all" in table.stderr
    logs = iris("job", "logs", "cli-table", "--task", "0", controller=address)
    assert logs.stdout.splitlines() == ["x"]


def test_fractional_cpu_packs_two_tasks_per_core_and_sizes_show_as_written(address: str) -> None:
    # 2 workers x 4 cores: 16 tasks of half a core all run at once.
    result = iris("job", "run", "--no-bundle", "--no-wait", "--name", "cli-half", "--cpu", "0.5", "--memory", "100MB",
                  "--replicas", "16", "--", *py("import time; time.sleep(300)"), controller=address)
    assert result.returncode == 0, result.stderr
    client = IrisClient.remote(address)
    try:
        wait_until(lambda: client.job("cli-half").status().counts.running == 16, 60, message="not all 16 ran at once")
        workers = json.loads(iris("worker", "list", "--json", controller=address).stdout)
        assert sorted(w["committed_cpu"] for w in workers) == [4, 4] and all(w["cpu"] == 4 for w in workers)
        status = iris("job", "status", "cli-half", controller=address)
        assert "cpu=0.5 memory=100MB" in status.stdout, status.stdout
        as_json = json.loads(iris("job", "status", "cli-half", "--json", controller=address).stdout)
        assert as_json["resources"]["cpu"] == 0.5
    finally:
        iris("job", "stop", "cli-half", controller=address)
        client.close()


def test_no_wait_then_logs_follow_and_stop(address: str) -> None:
    code = "import time; print('tick', flush=True); time.sleep(300)"
    result = iris("job", "run", "--no-bundle", "--no-wait", "--name", "cli-stop", "--", *py(code), controller=address)
    assert result.returncode == 0 and result.stdout.strip() == "admin:cli-stop"
    client = IrisClient.remote(address)
    try:
        wait_until(lambda: [line.data for line in client.task_logs("cli-stop", 0)] == ["tick"], 60,
                   message="task never printed")
        stop = iris("job", "stop", "cli-stop", controller=address)
        assert stop.returncode == 0 and "Stopped job cli-stop" in stop.stderr
        assert client.job("cli-stop").wait(timeout=60, raise_on_failure=False).state is JobState.KILLED
        again = iris("job", "stop", "cli-stop", controller=address)
        assert again.returncode == 0 and "had already ended (KILLED)" in again.stderr
    finally:
        client.close()
    followed = iris("job", "logs", "cli-stop", "--follow", controller=address)
    assert followed.returncode == 0 and followed.stdout.splitlines() == ["[0] tick"]


def test_unknown_job_is_one_clear_line(address: str) -> None:
    for args in (("job", "status", "nope"), ("job", "stop", "nope"), ("job", "logs", "nope"), ("task", "list", "nope")):
        assert_one_line_error(iris(*args, controller=address), "nope")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["job", "run", "--memory", "lots", "--", "echo"], "--memory"),
        (["job", "run"], "no command"),
        (["job", "run", "--", ""], "no command"),
        (["job", "run", "--replicas", "0", "--", "echo"], "--replicas: must be >= 1"),
        (["job", "run", "--replicas", "-1", "--", "echo"], "--replicas: must be >= 1"),
        (["run", "--local", "--replicas", "0", "--", "echo"], "--replicas: must be >= 1"),
        (["job", "run", "--env", "NOEQUALS", "--", "echo"], "--env"),
        (["job", "list", "--state", "bogus"], "unknown job state"),
        (["job", "run", "--cpu", "0", "--", "echo"], "--cpu"),
        (["job", "run", "--cpu", "-0.5", "--", "echo"], "--cpu"),
        (["job", "run", "--cpu", "0.0001", "--", "echo"], "millicores"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], needle: str) -> None:
    result = iris(*args, controller="127.0.0.1:1")
    assert result.returncode == 2
    assert_one_line_error(result, needle)


def test_unreachable_controller_is_one_clear_line() -> None:
    for args in (["job", "list"], ["worker", "list"], ["job", "run", "--no-bundle", "--", "echo", "hi"]):
        assert_one_line_error(iris(*args, controller="127.0.0.1:1"), "cannot reach the Iris controller at 127.0.0.1:1")


def test_verbose_shows_the_traceback() -> None:
    result = iris("job", "list", "--verbose", controller="127.0.0.1:1")
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_unknown_option_before_the_command_is_a_usage_error_not_the_command(address: str) -> None:
    result = iris("job", "run", "--replica", "4", "--no-bundle", "--name", "typo", "--", "true", controller=address)
    assert result.returncode == 2
    assert "No such option '--replica'" in result.stderr and "Did you mean '--replicas'" in result.stderr
    listed = iris("job", "list", "--json", controller=address)
    assert listed.returncode == 0 and "typo" not in listed.stdout  # nothing was submitted
    # Options after the command's first word belong to the command.
    ok = iris("job", "run", "--no-bundle", "--name", "opts-in-cmd", *py("import sys; print(sys.argv[1:])"), "-x", "--y",
              controller=address)
    assert ok.returncode == 0 and "['-x', '--y']" in ok.stdout, ok.stderr


def test_version() -> None:
    from importlib.metadata import version

    result = iris("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"iris {version('iris')}"


def test_labels_end_to_end_run_status_json_list_client_and_api(cluster: LocalCluster, address: str) -> None:
    """A job field added by one declaration (spec.py) and one proto line: ``--label`` on run,
    shown by status (text and --json) and the API, filtered by in ``iris job list`` and the client."""
    for name, team in (("lab-ml", "ml"), ("lab-infra", "infra")):
        result = iris("job", "run", "--no-bundle", "--name", name, "--label", f"team={team}", "--label", "tier=gold",
                      "--", "true", controller=address)
        assert result.returncode == 0, result.stderr
    text = iris("job", "status", "lab-ml", controller=address).stdout
    assert "Labels" in text and "team=ml, tier=gold" in text
    status = json.loads(iris("job", "status", "lab-ml", "--json", controller=address).stdout)
    assert status["spec"]["labels"] == {"team": "ml", "tier": "gold"}

    def listed(*selectors: str) -> list[str]:
        args = [a for s in selectors for a in ("--label", s)]
        out = iris("job", "list", "--prefix", "lab-", "--json", *args, controller=address)
        assert out.returncode == 0, out.stderr
        return sorted(j["job_id"] for j in json.loads(out.stdout))

    assert listed("team=ml") == ["admin:lab-ml"]
    assert listed("team!=ml") == ["admin:lab-infra"]
    assert listed("tier=gold") == ["admin:lab-infra", "admin:lab-ml"]
    assert listed("tier", "team=infra") == ["admin:lab-infra"]
    assert listed("nope") == []
    assert_one_line_error(iris("job", "list", "--label", "bad key=x", controller=address), "label", "bad key")
    assert_one_line_error(iris("job", "run", "--label", "=x", "--", "true", controller=address), "--label")
    assert_one_line_error(iris("job", "run", "--no-bundle", "--label", "k=v v", "--", "true", controller=address),
                          "labels")

    client = IrisClient.remote(address)
    try:
        job = client.submit(Entrypoint.from_command("true"), "lab-py", labels={"team": "ml"})
        job.wait(timeout=60)
        assert sorted(j.job_id for j in client.list_jobs(prefix="lab-", where={"labels": ["team=ml"]})) == [
            "admin:lab-ml", "admin:lab-py"]
        assert client.job_status("lab-py").spec.labels == {"team": "ml"}  # type: ignore[union-attr]
    finally:
        client.close()

    def api(path: str) -> object:
        request = urllib.request.Request(cluster.dashboard_url + path,  # type: ignore[operator]
                                         headers={"Authorization": f"Bearer {cluster.admin_token}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    assert api("/api/job?id=lab-infra")["job"]["spec"]["labels"] == {"team": "infra", "tier": "gold"}  # type: ignore[index]
    jobs = api("/api/jobs?prefix=lab-&label=team=infra")["jobs"]  # type: ignore[index]
    assert [j["job_id"] for j in jobs] == ["admin:lab-infra"]
