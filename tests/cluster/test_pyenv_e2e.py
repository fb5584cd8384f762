"""A task's Python environment: built with uv from the workspace's ``uv.lock`` and ``--with``
packages, once per content, with ``iris`` importable behind the job's own pins. Real processes
and a real uv, offline: the packages are wheels the test builds itself."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.client import Entrypoint, IrisClient, JobState, TaskState
from iris.cluster.local import LocalCluster
from iris.cluster.worker.pyenv import find_uv

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_uv() is None, reason="needs uv (CI installs it: pip install uv)"),
]


def make_wheel(directory: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal pure-Python wheel: ``import <name>`` gives ``module_source``."""
    files = {
        f"{name}/__init__.py": module_source.encode(),
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: iris-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record_name = f"{name}-{version}.dist-info/RECORD"
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{record_name},,")
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(record_name, "\n".join(record) + "\n")
    return wheel


def locked_workspace(directory: Path, name: str, groups: dict[str, Path] | None = None) -> Path:
    """A project with a ``uv.lock``; ``groups``: a dependency group per name, each holding one wheel."""
    directory.mkdir(parents=True, exist_ok=True)
    major, minor = sys.version_info[:2]
    text = f'[project]\nname = "{name}"\nversion = "0.1.0"\nrequires-python = ">={major}.{minor}"\ndependencies = []\n'
    if groups:
        text += "[dependency-groups]\n" + "".join(
            f'{group} = ["{wheel.name.split("-")[0]} @ {wheel.as_uri()}"]\n' for group, wheel in groups.items())
    (directory / "pyproject.toml").write_text(text)
    (directory / "main.py").write_text("import sys, iris\nprint('prefix', sys.prefix)\nprint('iris', iris.__name__)\n")
    uv = find_uv()
    assert uv is not None
    subprocess.run([uv, "lock", "--offline", "--python", sys.executable], cwd=directory, check=True,
                   capture_output=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    assert (directory / "uv.lock").is_file()
    return directory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(workers=1, cpu_per_worker=4, worker_timeout=5, heartbeat_interval=0.3,
                      base_dir=tmp_path_factory.mktemp("pyenv"), worker_args=("--offline-envs",)) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[IrisClient]:
    c = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
    yield c
    c.close()


def lines_of(client: IrisClient, job: str, index: int = 0) -> list[tuple[str, str]]:
    return [(line.source, line.data) for line in client.task_logs(job, index)]


def test_a_workspace_with_uv_lock_runs_in_its_own_environment_built_once(
        cluster: LocalCluster, client: IrisClient, tmp_path: Path) -> None:
    workspace = locked_workspace(tmp_path / "ws", "locked-demo")
    command = Entrypoint.from_command("python", "main.py")
    client.submit(command, "env-first", workspace=workspace).wait(timeout=300)
    first = lines_of(client, "env-first")
    prefix = next(text.split(" ", 1)[1] for source, text in first if text.startswith("prefix "))
    assert Path(prefix).parent == cluster.workers[0].workdir / "envs"
    assert ("stdout", "iris iris") in first
    assert any(source == "iris" and "building the Python environment from uv.lock" in text for source, text in first)

    # Four tasks of the same lock at once: the environment is not built again.
    job = client.submit(command, "env-again", replicas=4, workspace=workspace)
    job.wait(timeout=300)
    for index in range(4):
        again = lines_of(client, "env-again", index)
        assert ("stdout", f"prefix {prefix}") in again
        assert not any("building" in text for source, text in again if source == "iris")


def test_an_environment_leaves_out_the_dev_group_unless_the_job_names_its_groups(
        client: IrisClient, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    groups = {"dev": make_wheel(wheels, "devonly_pkg", "1.0", "WHERE = 'dev'\n"),
              "train": make_wheel(wheels, "trainonly_pkg", "1.0", "WHERE = 'train'\n")}
    workspace = locked_workspace(tmp_path / "ws-groups", "grouped-demo", groups)
    code = ("import importlib.util as u; print('dev', bool(u.find_spec('devonly_pkg')), "
            "'train', bool(u.find_spec('trainonly_pkg')))")
    command = Entrypoint.from_command("python", "-c", code)
    client.submit(command, "env-nodev", workspace=workspace).wait(timeout=300)
    plain = lines_of(client, "env-nodev")
    assert ("stdout", "dev False train False") in plain  # uv sync --no-dev: what the project needs to run
    assert any(source == "iris" and "the Python environment is ready" in text for source, text in plain)
    client.submit(command, "env-groups", workspace=workspace, env_groups=["train", "dev"]).wait(timeout=300)
    assert ("stdout", "dev True train True") in lines_of(client, "env-groups")  # --env-group, repeatable


def test_with_adds_packages_and_the_jobs_pins_win_over_iris_own(client: IrisClient, tmp_path: Path) -> None:
    demo = make_wheel(tmp_path, "irisdemo_pkg", "1.0", "VALUE = 42\n")
    # A package Iris itself depends on (rich), pinned by the job to its own build: the job's wins.
    fake_rich = make_wheel(tmp_path, "rich", "0.0.1", "FAKE = True\n")
    code = "import irisdemo_pkg, rich, iris.client; print(irisdemo_pkg.VALUE, getattr(rich, 'FAKE', False))"
    job = client.submit(Entrypoint.from_command("python", "-c", code), "env-with",
                        with_packages=[str(demo), str(fake_rich)])
    job.wait(timeout=300)
    assert ("stdout", "42 True") in lines_of(client, "env-with")
    # Built by the builder uid (issue 23): not the worker, not the task, which cannot change it.
    probe = ("import os, sys; print('owner', os.stat(sys.prefix).st_uid, 'me', os.getuid()); "
             "open(os.path.join(sys.prefix, 'poisoned'), 'w')")
    poison = client.submit(Entrypoint.from_command("python", "-c", probe), "env-poison",
                           with_packages=[str(demo), str(fake_rich)])
    poison.wait(timeout=300, raise_on_failure=False)
    lines = lines_of(client, "env-poison")
    owner_line = next(text for source, text in lines if text.startswith("owner "))
    _, owner, _, me = owner_line.split()
    if os.geteuid() == 0:
        assert int(owner) == 199999 and int(me) >= 200_000  # --builder-uid, the owner's task uid
        assert any("Permission denied" in text for source, text in lines)

    callable_job = client.submit(Entrypoint.from_callable(lambda: __import__("irisdemo_pkg").VALUE + 1), "env-callable",
                                 with_packages=[str(demo)])
    assert callable_job.result(timeout=300) == 43


def test_an_environment_that_cannot_be_built_fails_the_task_with_uvs_error(
        cluster: LocalCluster, client: IrisClient, tmp_path: Path) -> None:
    job = client.submit(Entrypoint.from_command("python", "-c", "pass"), "env-broken",
                        with_packages=[str(tmp_path / "missing-1.0-py3-none-any.whl")])
    status = job.wait(timeout=300, raise_on_failure=False)
    assert status.state is JobState.FAILED
    task = client.task_status("env-broken", 0)
    assert task.state is TaskState.FAILED
    assert "python environment: uv pip install failed" in task.error and "missing-1.0" in task.error
    assert all(w.healthy for w in client.workers())  # the task's fault, not the worker's


def test_the_cli_shows_an_environment_build_as_a_summary_not_installer_output(
        cluster: LocalCluster, tmp_path: Path) -> None:
    from iris.client.credentials import store_login
    from tests.cli.conftest import iris

    store_login(cluster.controller_address, cluster.admin_token)
    workspace = locked_workspace(tmp_path / "ws-cli", "cli-demo")
    result = iris("job", "run", "--name", "env-cli", "--workspace", str(workspace), "--", "python", "main.py",
                  controller=cluster.controller_address)
    assert result.returncode == 0, result.stderr
    assert "[uv]" not in result.stderr + result.stdout  # uv's own lines stay in the task's log
    assert "building the Python environment" in result.stderr and "environment is ready" in result.stderr
    assert "[0] iris iris" in result.stdout
    client = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
    try:
        logged = lines_of(client, "env-cli")
    finally:
        client.close()
    assert any(text.startswith("[uv] ") for source, text in logged if source == "iris")  # kept whole there
