"""The contained task (issue 23, items 1 and 2), with real processes: a root worker runs each user's
tasks under that user's own uid, in a sandbox of their own (bubblewrap: PID, mount and IPC
namespaces), seeing the system read-only and not the worker, the controller's state or another
task; SIGTERM reaches the task; nothing it started outlives it; its pids and disk are capped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster
from iris.cluster.worker.sandbox import private_path as sandbox_private_path

from .e2e import Api, C, T, open_dir, processes_with

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="a worker switches tasks to other uids only as root"),
    pytest.mark.skipif(shutil.which("bwrap") is None,
                       reason="bubblewrap is not installed (.ci/run installs Debian's bubblewrap)"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The only host directory these tests' tasks see (``--task-mount``): not the cluster's."""
    return open_dir(tmp_path_factory.mktemp("exchange"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Iterator[LocalCluster]:
    with LocalCluster(workers=1, cpu_per_worker=8, memory_per_worker="8GiB", kill_grace=3,
                      base_dir=tmp_path_factory.mktemp("sandbox"), env={"IRIS_TASK_MOUNTS": str(shared)},
                      worker_args=["--max-task-pids", "64"]) as c:
        yield c


@pytest.fixture
def out(shared: Path, request: pytest.FixtureRequest) -> Path:
    """This test's directory for what its tasks write (and the files it hands them)."""
    return open_dir(shared / request.node.name)


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Api]:
    api = Api(cluster.controller_address, cluster.admin_token)
    yield api
    api.close()


def user(admin: Api, cluster: LocalCluster, name: str) -> Api:
    token = admin.stub.CreateToken(C.CreateTokenRequest(name=name, role="user"), timeout=10).token
    return Api(cluster.controller_address, token)


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_sandbox_users_run_as_their_own_uids_and_cannot_see_each_other(
        cluster: LocalCluster, admin: Api, out: Path) -> None:
    alice, bob = user(admin, cluster, "alice"), user(admin, cluster, "bob")
    release = out / "release"
    # alice's task keeps a secret in its environment and its work directory, and waits.
    alice_job = alice.launch("secret", sh(f"echo s3cret > mine; id -u > {out}/alice-uid; "
                                          f"while [ ! -e {release} ]; do sleep 0.05; done"),
                             env={"ALICE_SECRET": "s3cret"})
    wait_until(lambda: (out / "alice-uid").exists() and (out / "alice-uid").read_text().strip(), 30)
    # bob's task looks for it: every process it can see, every environment, alice's work directory.
    worker_dir = cluster.workers[0].workdir
    probe = (f"id -u > {out}/bob-uid; ls /proc | grep -c '^[0-9]' > {out}/bob-procs; "
             f"cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c ALICE_SECRET > {out}/bob-saw; "
             f"ls {worker_dir}/tasks > {out}/bob-tasks 2>&1; cat {worker_dir}/credential > {out}/bob-cred 2>&1; "
             f"ls {cluster.state_dir} > {out}/bob-state 2>&1; echo done > {out}/bob-done")
    bob_job = bob.launch("probe", sh(probe))
    assert bob.wait(bob_job).state == T.JOB_STATE_SUCCEEDED or (out / "bob-done").exists()
    alice_uid, bob_uid = int((out / "alice-uid").read_text()), int((out / "bob-uid").read_text())
    assert alice_uid != bob_uid and min(alice_uid, bob_uid) >= 200_000  # --task-uid-range's default
    assert int((out / "bob-procs").read_text()) <= 4  # its init, its shell and the pipeline: its own
    assert (out / "bob-saw").read_text().strip() == "0"
    # Of the worker's directory it sees only the way to its own attempt: not alice's, not the rest.
    assert (out / "bob-tasks").read_text().split() == ["bob%3Aprobe%2Ftask-0.attempt-0"]
    assert "No such file" in (out / "bob-cred").read_text()
    assert "No such file" in (out / "bob-state").read_text()
    # The same user gets the same uid again (on every worker: the controller gives it).
    again = open_dir(out / "again")
    second = alice.launch("second", sh(f"id -u > {again}/uid"))
    assert alice.wait(second).state == T.JOB_STATE_SUCCEEDED
    assert int((again / "uid").read_text()) == alice_uid
    release.touch()
    assert alice.wait(alice_job).state == T.JOB_STATE_SUCCEEDED


def test_sandbox_sigterm_reaches_the_task_and_no_daemon_outlives_it(admin: Api, out: Path) -> None:
    # The task traps SIGTERM and says so; before that it leaves a daemon that left its session.
    script = (f"trap 'echo term > {out}/got-term; exit 0' TERM; "
              f"setsid sh -c 'sleep 1201' > /dev/null 2>&1 < /dev/null & "
              f"touch {out}/started; while :; do sleep 0.05; done")
    job_id = admin.launch("daemonic", sh(script))
    wait_until(lambda: (out / "started").exists() and processes_with("1201"), 30)
    admin.stub.TerminateJob(C.TerminateJobRequest(job_id=job_id), timeout=30)
    wait_until(lambda: (out / "got-term").exists(), 10, message="SIGTERM did not reach the sandboxed task")
    wait_until(lambda: not processes_with("1201"), 10, message="the task's daemon outlived it")
    assert admin.job(job_id).state == T.JOB_STATE_KILLED


def test_sandbox_a_task_sees_the_system_read_only_and_a_private_tmp(admin: Api, out: Path) -> None:
    host_only = Path("/tmp") / f"iris-host-only-{os.getpid()}"
    host_only.write_text("the host's")
    script = (f"touch /usr/iris-was-here 2> {out}/usr; echo x > /tmp/mine; ls -A /tmp > {out}/tmp; "
              f"echo $HOME > {out}/home; touch $HOME/ok && echo writable > {out}/home-ok; pwd > {out}/pwd; "
              f"touch ./file && echo yes > {out}/cwd-writable")
    job_id = admin.launch("views", sh(script))
    assert admin.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    assert "Read-only file system" in (out / "usr").read_text() or "Permission denied" in (out / "usr").read_text()
    seen = (out / "tmp").read_text().split()
    host_only.unlink()
    assert "mine" in seen and host_only.name not in seen  # a /tmp of its own, not the host's
    assert (out / "home-ok").read_text().strip() == "writable"
    assert (out / "cwd-writable").read_text().strip() == "yes"
    assert not Path("/usr/iris-was-here").exists()


def test_sandbox_a_task_sees_the_device_nodes_it_was_given_and_no_others(tmp_path: Path) -> None:
    """A task given GPUs gets their nodes (``/dev/nvidiaN`` and NVIDIA's control devices) bound into
    its minimal ``/dev``; this host has no GPU, so two stand-in character devices (the numbers of
    ``/dev/null``) play them: the one given is there and usable, the other is not there at all."""
    from iris.cluster.worker.sandbox import Sandbox, TaskView

    nodes = open_dir(tmp_path / "nodes")
    given, other = nodes / "gpu0", nodes / "gpu1"
    for node in (given, other):
        os.mknod(node, 0o666 | 0o020000, os.makedev(1, 3))  # S_IFCHR
    for name in ("work", "own"):
        (tmp_path / name).mkdir()
    sandbox = Sandbox.detect()
    view = TaskView(tmp_path / "work", tmp_path / "own", devices=(str(given),))
    script = (f"test -c {given} && echo data > {given} && echo usable; "
              f"test -e {other} && echo leaked || echo absent")
    result = subprocess.run([*sandbox.prefix(view), "/bin/sh", "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["usable", "absent"]
    without = subprocess.run([*sandbox.prefix(TaskView(tmp_path / "work", tmp_path / "own")), "/bin/sh", "-c",
                              f"test -e {given} && echo leaked || echo absent"], capture_output=True, text=True,
                             timeout=60)
    assert without.stdout.split() == ["absent"]


def test_sandbox_dev_shm_is_shared_by_a_job_s_tasks_only(admin: Api, out: Path) -> None:
    script = ('if [ "$IRIS_TASK_INDEX" = 0 ]; then echo hello > /dev/shm/ring; fi; '
              f'while [ ! -e /dev/shm/ring ]; do sleep 0.05; done; cat /dev/shm/ring > {out}/$IRIS_TASK_INDEX')
    job_id = admin.launch("shm", sh(script), replicas=2)
    assert admin.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    assert [(out / str(i)).read_text().strip() for i in range(2)] == ["hello", "hello"]
    other = admin.launch("other-shm", sh(f"ls -A /dev/shm > {out}/other"))
    assert admin.wait(other).state == T.JOB_STATE_SUCCEEDED
    assert (out / "other").read_text().strip() == ""  # another job's /dev/shm is its own


def test_sandbox_a_task_s_processes_are_capped(admin: Api) -> None:
    code = ("import threading, time\n"
            "started = 0\n"
            "try:\n"
            "    for _ in range(500):\n"
            "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); started += 1\n"
            "except RuntimeError:\n"
            "    print(f'capped at {started}')\n"
            "else:\n"
            "    print(f'all {started}')\n")
    job_id = admin.launch("forky", [sys.executable, "-c", code])
    assert admin.wait(job_id, timeout=90).state == T.JOB_STATE_SUCCEEDED
    (line,) = admin.logs("forky/task-0")
    assert line.startswith("capped at ") and int(line.split()[-1]) < 64  # --max-task-pids 64


def test_sandbox_a_task_over_its_disk_request_is_stopped(admin: Api) -> None:
    script = "head -c 20000000 /dev/zero > big; while :; do sleep 0.1; done"
    job_id = admin.launch("filler", sh(script), disk="1MiB")
    job = admin.wait(job_id, timeout=60)
    assert job.state == T.JOB_STATE_FAILED
    assert "exceeded the task's --disk request of 1MiB" in job.error, job.error


def test_sandbox_a_worker_refuses_to_start_without_one_unless_unconfined(cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}  # no bwrap on it
    argv = [sys.executable, "-m", "iris.cli.main", "worker", "serve", "--controller", cluster.controller_address,
            "--workdir", str(tmp_path / "w")]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "bubblewrap (bwrap) is not installed" in refused.stderr and "--unconfined" in refused.stderr


def test_sandbox_task_users_map_and_the_root_opt_out(tmp_path: Path) -> None:
    shared = open_dir(tmp_path / "exchange")
    users = tmp_path / "users.toml"
    users.write_text('admin = "nobody"\n')  # Debian's nobody (65534): an existing Unix user
    with LocalCluster(workers=1, cpu_per_worker=2, base_dir=tmp_path / "mapped", env={"IRIS_TASK_MOUNTS": str(shared)},
                      controller_args=["--task-users", str(users)]) as c:
        api = Api(c.controller_address, c.admin_token)
        job_id = api.launch("who", sh(f"id -u > {shared}/mapped"))
        assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
        api.close()
    assert int((shared / "mapped").read_text()) == 65534
    with LocalCluster(workers=1, cpu_per_worker=2, base_dir=tmp_path / "root", env={"IRIS_TASK_MOUNTS": str(shared)},
                      worker_args=["--run-tasks-as-root"]) as c:
        api = Api(c.controller_address, c.admin_token)
        job_id = api.launch("who", sh(f"id -u > {shared}/root"))
        assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
        api.close()
        log = c.workers[0].log_path.read_text()
    assert int((shared / "root").read_text()) == 0
    assert "--run-tasks-as-root: tasks run as root" in log


def test_sandbox_a_local_cluster_without_bubblewrap_runs_tasks_unconfined_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The README's first command on a machine without bubblewrap: one's own code on one's own
    machine runs, unconfined, with a warning (a worker started by hand refuses instead)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no bwrap to be found
    with caplog.at_level("WARNING", logger="iris.cluster.local"):
        with LocalCluster(workers=1, cpu_per_worker=1, base_dir=tmp_path / "c") as c:
            api = Api(c.controller_address, c.admin_token)
            job_id = api.launch("plain", sh("echo ran"))
            assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
            api.close()
    assert "run without a sandbox" in caplog.text and "bubblewrap (bwrap) is not installed" in caplog.text


def test_sandbox_a_local_cluster_without_bubblewrap_whose_python_is_private_runs_tasks_as_its_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, shared: Path) -> None:
    """A Python under a private home (pyenv's or uv's under /root) and no bubblewrap to bind it:
    the users tasks would run as cannot start it, so the local cluster runs them as its own user and
    says why (before, the README's first command failed with uv's "failed to canonicalize path")."""
    import iris.cluster.worker.sandbox as sandbox

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no bwrap to be found
    monkeypatch.setattr(sandbox, "private_path", lambda paths: "/root")
    with caplog.at_level("WARNING", logger="iris.cluster.local"):
        with LocalCluster(workers=1, cpu_per_worker=1, base_dir=tmp_path / "c") as c:
            api = Api(c.controller_address, c.admin_token)
            job_id = api.launch("who", sh(f"/usr/bin/id -u > {shared}/private-python"))
            assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
            api.close()
    assert int((shared / "private-python").read_text()) == 0
    assert "run as root: the users they would run as cannot reach /root" in caplog.text


def test_sandbox_private_path_names_the_first_place_others_cannot_pass() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # /tmp/pytest-of-root is private itself
        base = Path(top)
        base.chmod(0o755)
        home = base / "home"
        python = home / "versions" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("")
        assert sandbox_private_path([str(base)]) == ""
        for mode, expected in ((0o700, str(home)), (0o711, "")):
            home.chmod(mode)
            python.chmod(0o755)
            assert sandbox_private_path([str(python)]) == expected
        python.chmod(0o700)
        assert sandbox_private_path([str(python)]) == str(python)  # passable, but not readable by others
        link = base / "venv-python"
        link.symlink_to(python)  # a virtual environment's python: judged by where it leads
        assert sandbox_private_path([str(link)]) == str(python)
