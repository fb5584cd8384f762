"""ProcessRuntime against real child processes."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from iris.cluster.clock import wait_until
from iris.cluster.worker.runtime import PROCESS_RECORD, ProcessExit, ProcessRuntime, ProcessSpec, kill_orphans


class Exits:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exits: dict[tuple[str, int], ProcessExit] = {}

    def __call__(self, exit_info: ProcessExit) -> None:
        with self._lock:
            self.exits[exit_info.key] = exit_info

    def wait(self, key: tuple[str, int], timeout: float = 30.0) -> ProcessExit:
        wait_until(lambda: key in self.exits, timeout, message=f"{key} did not exit")
        return self.exits[key]


@pytest.fixture(params=["posix_spawn", "popen"])
def runtime(request: pytest.FixtureRequest) -> Iterator[ProcessRuntime]:
    """Every runtime test runs with both ways of starting a process."""
    rt = ProcessRuntime(memory_check_interval_s=0.05, use_posix_spawn=request.param == "posix_spawn")
    if request.param == "posix_spawn" and not rt.uses_posix_spawn:
        rt.close()
        pytest.skip("posix_spawn with chdir is not available here")
    try:
        yield rt
    finally:
        rt.close()


def _spec(tmp_path: Path, argv: Sequence[str], name: str = "t", **kwargs: object) -> ProcessSpec:
    cwd = tmp_path / name
    cwd.mkdir(exist_ok=True)
    return ProcessSpec(
        key=(name, 0),
        argv=list(argv),
        cwd=cwd,
        env={**os.environ, "IRIS_TEST_VAR": "hello"},
        log_path=cwd / "output.log",
        **kwargs,  # type: ignore[arg-type]
    )


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_runtime_exit_codes_are_reported(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    runtime.start(_spec(tmp_path, ["/bin/true"], "ok"), exits)
    runtime.start(_spec(tmp_path, [sys.executable, "-c", "raise SystemExit(3)"], "three"), exits)
    assert exits.wait(("ok", 0)).returncode == 0
    assert exits.wait(("three", 0)).returncode == 3


def test_runtime_missing_program_raises_oserror(runtime: ProcessRuntime, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        runtime.start(_spec(tmp_path, ["/nonexistent/program"]), Exits())


def test_runtime_stdout_and_stderr_share_one_log_in_order(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    spec = _spec(tmp_path, ["/bin/sh", "-c", "echo one; echo two >&2; echo three; echo $IRIS_TEST_VAR; pwd"])
    runtime.start(spec, exits)
    exits.wait(spec.key)
    assert spec.log_path.read_text().splitlines() == ["one", "two", "three", "hello", str(spec.cwd)]


def test_runtime_kill_sigterm_stops_cooperative_process(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    spec = _spec(tmp_path, [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(1000)"])
    runtime.start(spec, exits)
    wait_until(lambda: "up" in spec.log_path.read_text(), 30)
    runtime.kill(spec.key, grace_period_s=60)
    assert exits.wait(spec.key).returncode == -15


def test_runtime_kill_escalates_to_sigkill_after_grace(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(1000)"
    spec = _spec(tmp_path, [sys.executable, "-c", code])
    runtime.start(spec, exits)
    wait_until(lambda: "up" in spec.log_path.read_text(), 30)
    runtime.kill(spec.key, grace_period_s=0.2)
    assert exits.wait(spec.key).returncode == -9


def test_runtime_kill_leaves_no_grandchild(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    spec = _spec(tmp_path, ["/bin/sh", "-c", "sleep 1000 & echo $! > grandchild.pid; wait"])
    pid = runtime.start(spec, exits)
    pid_file = spec.cwd / "grandchild.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30)
    grandchild = int(pid_file.read_text())
    assert not _gone(grandchild)
    runtime.kill(spec.key, grace_period_s=5)
    exits.wait(spec.key)
    wait_until(lambda: _gone(grandchild) and _gone(pid), 30, message="grandchild survived the kill")


def test_runtime_grandchild_killed_when_leader_exits(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    spec = _spec(tmp_path, ["/bin/sh", "-c", "sleep 1000 & echo $! > grandchild.pid"])
    runtime.start(spec, exits)
    assert exits.wait(spec.key).returncode == 0
    grandchild = int((spec.cwd / "grandchild.pid").read_text())
    wait_until(lambda: _gone(grandchild), 30, message="grandchild outlived its task")


def test_runtime_memory_limit_kills_group_with_error(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    code = "import time; data = 'x' * (300 * 1024 * 1024); print('allocated', flush=True); time.sleep(1000)"
    spec = _spec(tmp_path, [sys.executable, "-c", code], memory_limit_bytes=64 * 1024 * 1024)
    runtime.start(spec, exits)
    result = exits.wait(spec.key)
    assert result.returncode == -9
    assert "exceeded the task's limit of 64MiB" in result.limit_error
    assert result.limit_error.startswith("killed: memory ")


def test_runtime_memory_under_limit_is_untouched(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    spec = _spec(tmp_path, [sys.executable, "-c", "print('small')"], memory_limit_bytes=1024**3)
    runtime.start(spec, exits)
    result = exits.wait(spec.key)
    assert result.returncode == 0
    assert result.limit_error == ""


def test_runtime_kill_unknown_attempt_is_a_noop(runtime: ProcessRuntime) -> None:
    runtime.kill(("nope", 0), grace_period_s=1)


def test_kill_orphans_kills_recorded_process_group(runtime: ProcessRuntime, tmp_path: Path) -> None:
    # A process group recorded by a "previous worker" that is no longer watched by anyone.
    exits = Exits()
    record = tmp_path / "t" / PROCESS_RECORD
    spec = _spec(
        tmp_path,
        ["/bin/sh", "-c", "sleep 1000 & echo $! > grandchild.pid; wait"],
        record_path=record,
    )
    pid = runtime.start(spec, exits)
    pid_file = spec.cwd / "grandchild.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30)
    grandchild = int(pid_file.read_text())
    assert record.exists()
    killed = kill_orphans([record])
    assert pid in killed and grandchild in killed
    exits.wait(spec.key)
    wait_until(lambda: _gone(grandchild), 30)


def test_kill_orphans_ignores_stale_records(tmp_path: Path) -> None:
    stale = tmp_path / PROCESS_RECORD
    stale.write_text('{"pid": 999999999, "start_time": "1"}')
    broken = tmp_path / "broken.json"
    broken.write_text("not json")
    # A live pid whose start time differs from the record belongs to someone else now.
    reused = tmp_path / "reused.json"
    reused.write_text(json.dumps({"pid": os.getpid(), "start_time": "0"}))
    assert kill_orphans([stale, broken, reused, tmp_path / "missing.json"]) == []


def test_runtime_program_found_on_the_task_path_and_stdin_is_empty(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "my-tool"
    tool.write_text("#!/bin/sh\necho tool \"$@\"; cat; echo done\n")
    tool.chmod(0o755)
    spec = _spec(tmp_path, ["my-tool", "a b"], "pathsearch")
    spec = ProcessSpec(key=spec.key, argv=spec.argv, cwd=spec.cwd, env={**spec.env, "PATH": f"{bindir}:/usr/bin:/bin"},
                       log_path=spec.log_path)
    runtime.start(spec, exits)
    assert exits.wait(spec.key).returncode == 0
    assert spec.log_path.read_text().splitlines() == ["tool a b", "done"]


def test_runtime_program_missing_from_the_task_path_raises(runtime: ProcessRuntime, tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["no-such-program-anywhere"], "nopath")
    with pytest.raises(FileNotFoundError):
        runtime.start(spec, Exits())


def test_runtime_relative_program_resolves_in_the_working_directory(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    spec = _spec(tmp_path, ["./run.sh"], "relative")
    script = spec.cwd / "run.sh"
    script.write_text("#!/bin/sh\nexit 7\n")
    script.chmod(0o755)
    runtime.start(spec, exits)
    assert exits.wait(spec.key).returncode == 7


def test_runtime_task_does_not_inherit_worker_descriptors(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    r, w = os.pipe()
    os.set_inheritable(w, True)  # even an inheritable descriptor of the worker stays out of the task
    try:
        spec = _spec(tmp_path, ["/bin/sh", "-c", f"[ -e /proc/self/fd/{w} ] && echo leaked || echo clean"], "fds")
        runtime.start(spec, exits)
        exits.wait(spec.key)
        assert spec.log_path.read_text().strip() == "clean"
    finally:
        os.close(r)
        os.close(w)


def test_kill_orphans_finds_a_process_whose_pid_was_never_recorded(runtime: ProcessRuntime, tmp_path: Path) -> None:
    # The worker died between starting the process and recording its pid: the record written
    # before the start names the attempt by its IRIS_* variables.
    exits = Exits()
    record = tmp_path / "t" / PROCESS_RECORD
    spec = _spec(tmp_path, ["/bin/sh", "-c", "sleep 1000 & echo $! > grandchild.pid; wait"], record_path=record)
    marker = {"IRIS_WORKER_ID": "w-orphan", "IRIS_TASK_ID": f"j/task-{os.getpid()}", "IRIS_ATTEMPT_ID": "3"}
    spec = ProcessSpec(key=spec.key, argv=spec.argv, cwd=spec.cwd, env={**spec.env, **marker},
                       log_path=spec.log_path, record_path=record)
    pid = runtime.start(spec, exits)
    pid_file = spec.cwd / "grandchild.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30)
    grandchild = int(pid_file.read_text())
    record.write_text(json.dumps({"pid": 0, "env": marker}))  # as it was before the start
    other = {**marker, "IRIS_ATTEMPT_ID": "4"}
    assert kill_orphans([tmp_path / "missing.json"]) == []
    (tmp_path / "other.json").write_text(json.dumps({"pid": 0, "env": other}))
    assert kill_orphans([tmp_path / "other.json"]) == []  # another attempt's marker: untouched
    killed = kill_orphans([record])
    assert pid in killed and grandchild in killed
    exits.wait(spec.key)
    wait_until(lambda: _gone(grandchild), 30)


def test_runtime_writes_the_pending_record_before_the_pid_record(runtime: ProcessRuntime, tmp_path: Path) -> None:
    exits = Exits()
    record = tmp_path / "t" / PROCESS_RECORD
    spec = _spec(tmp_path, ["/bin/sh", "-c", f"cat {record}"], record_path=record)
    marker = {"IRIS_WORKER_ID": "w", "IRIS_TASK_ID": "j/task-0", "IRIS_ATTEMPT_ID": "0"}
    spec = ProcessSpec(key=spec.key, argv=spec.argv, cwd=spec.cwd, env={**spec.env, **marker},
                       log_path=spec.log_path, record_path=record)
    pid = runtime.start(spec, exits)
    exits.wait(spec.key)
    assert json.loads(spec.log_path.read_text())["pid"] in (0, pid)  # the task saw one or the other
    assert json.loads(record.read_text())["pid"] == pid


def test_runtime_with_platform_limits_fails_a_memory_hog_with_a_memory_error(tmp_path: Path) -> None:
    """Whatever this machine offers (a writable cgroup, or none and the watchdog), a task over its
    memory limit is killed and the error says it was memory."""
    from iris.cluster.worker.cgroups import CgroupLimits

    limits = CgroupLimits.detect(f"test-{os.getpid()}")
    runtime = ProcessRuntime(limits=limits)
    try:
        exits = Exits()
        code = "import time; data = 'x' * (300 * 1024 * 1024); print('allocated', flush=True); time.sleep(1000)"
        spec = _spec(tmp_path, [sys.executable, "-c", code], memory_limit_bytes=64 * 1024 * 1024)
        runtime.start(spec, exits)
        result = exits.wait(spec.key)
        assert result.returncode == -9
        assert "memory" in result.limit_error and "limit of 64MiB" in result.limit_error
        under = _spec(tmp_path, [sys.executable, "-c", "print('small')"], name="small", memory_limit_bytes=1024**3)
        runtime.start(under, exits)
        assert exits.wait(under.key).returncode == 0
    finally:
        runtime.close()
    if limits is not None:  # the runtime removed the cgroups it made
        assert limits.memory_base is not None and not limits.memory_base.exists()


def test_a_task_s_children_are_in_its_cgroup_from_their_first_instruction(tmp_path: Path) -> None:
    """Issue 23 item 9: a task that forks at once (``sh -c "python ..."``) used to run the child
    outside its cgroup (placed after the start: 10 of 10 escaped, a 64 MiB task used 256 MiB). The
    task's first process now enters its cgroup before it execs the task."""
    from iris.cluster.worker.cgroups import CgroupLimits

    limits = CgroupLimits.detect(f"test-early-{os.getpid()}")
    if limits is None:
        pytest.skip("needs a writable memory cgroup (root on a cgroup v1 or v2 host; CI has one)")
    runtime = ProcessRuntime(limits=limits)
    try:
        exits = Exits()
        hog = f"{sys.executable} -c \"import time; data = 'x' * (256 * 1024 * 1024); time.sleep(1000)\""
        for i in range(5):
            spec = _spec(tmp_path, ["/bin/sh", "-c", f"{hog}; exit 0"], name=f"fork-{i}",
                         memory_limit_bytes=64 * 1024 * 1024)
            runtime.start(spec, exits)
            result = exits.wait(spec.key)
            assert "memory" in result.limit_error, result  # the kernel killed the child inside the cgroup
    finally:
        runtime.close()


def test_a_task_starts_in_its_cgroup_and_the_thread_that_started_it_stays_in_the_worker_s(tmp_path: Path) -> None:
    """On cgroup v1 the starting thread steps into the task's cgroup to fork it (no shell to exec),
    so it must step back out: the worker's threads never run under a task's limits."""
    from iris.cluster.worker.cgroups import CgroupLimits

    limits = CgroupLimits.detect(f"test-thread-{os.getpid()}")
    if limits is None:
        pytest.skip("needs a writable memory cgroup (root on a cgroup v1 or v2 host; CI has one)")
    before = Path("/proc/thread-self/cgroup").read_text()
    for use_posix_spawn in (True, False):
        runtime = ProcessRuntime(limits=limits, use_posix_spawn=use_posix_spawn)
        try:
            exits = Exits()
            spec = _spec(tmp_path, ["cat", "/proc/self/cgroup"], name=f"where-{use_posix_spawn}",
                         memory_limit_bytes=256 * 1024 * 1024)
            runtime.start(spec, exits)
            assert Path("/proc/thread-self/cgroup").read_text() == before
            assert exits.wait(spec.key).returncode == 0
            memory = next(line for line in spec.log_path.read_text().splitlines()
                          if line.split(":")[1] in ("memory", ""))
            assert f"/iris-test-thread-{os.getpid()}/" in memory, memory  # its own, under the worker's
        finally:
            runtime.close()


def test_runtime_many_short_tasks_started_from_several_threads_all_exit_cleanly(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    """Tasks with log pipes started from several threads while others end: every one starts and
    exits 0. (The reaper once closed descriptors mid-batch; a number reused at once by a starting
    task was then taken for the old one's: the new task SIGKILLed as if it had exited, or its pipe
    closed before the spawn, EBADF.)"""
    from iris.cluster.logfile import AttemptLog

    exits = Exits()
    errors: list[BaseException] = []
    per_thread, threads = 120, 4

    def starter(t: int) -> None:
        for i in range(per_thread):
            name = f"s{t}-{i}"
            spec = _spec(tmp_path, ["/bin/true"], name, log=AttemptLog(tmp_path / name / "log"))
            try:
                runtime.start(spec, exits)
            except BaseException as e:  # noqa: BLE001 -- collected and asserted below
                errors.append(e)

    workers = [threading.Thread(target=starter, args=(t,)) for t in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    assert errors == []
    wait_until(lambda: len(exits.exits) == per_thread * threads, 120, message="not every task exited")
    assert sorted({e.returncode for e in exits.exits.values()}) == [0]
