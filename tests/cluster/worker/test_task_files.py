"""The worker never trusts a task's files (issue 23 item 4): what it reads from an attempt's
directory (``error.txt``, ``result.pkl``) is opened without following links or blocking, must be a
regular file of the task's user, and is read up to a cap."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iris.cluster.worker.prepare import (
    MAX_ERROR_BYTES,
    AttemptPreparer,
    PreparerConfig,
    TaskFileError,
    read_task_file,
)

ME = os.geteuid()


def test_a_regular_file_of_the_task_s_user_is_read_up_to_the_cap(tmp_path: Path) -> None:
    f = tmp_path / "error.txt"
    f.write_bytes(b"a" * 100 + b"END")
    assert read_task_file(f, 1000, ME, what="error.txt") == b"a" * 100 + b"END"
    assert read_task_file(f, 3, ME, what="error.txt", tail=True) == b"END"  # the last part
    with pytest.raises(TaskFileError, match="result.pkl: 103 bytes, over the worker's cap of 50"):
        read_task_file(f, 50, ME, what="result.pkl")
    with pytest.raises(FileNotFoundError):
        read_task_file(tmp_path / "absent", 10, ME, what="x")


def test_a_link_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    link = tmp_path / "error.txt"
    link.symlink_to(secret)
    with pytest.raises(TaskFileError, match="symbolic link"):
        read_task_file(link, 1000, ME, what="error.txt")


def test_a_fifo_never_blocks_the_worker(tmp_path: Path) -> None:
    fifo = tmp_path / "error.txt"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def read() -> None:
        try:
            read_task_file(fifo, 1000, ME, what="error.txt")
        except TaskFileError as e:
            outcome.append(str(e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert outcome == ["error.txt: is not a regular file"]


@pytest.mark.skipif(ME != 0, reason="needs root to give a file to another uid (CI runs as root)")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "result.pkl"
    f.write_bytes(b"x")
    os.chown(f, 54321, 54321)
    with pytest.raises(TaskFileError, match=f"belongs to uid 54321, not the task's \\({ME}\\)"):
        read_task_file(f, 10, ME, what="result.pkl")


def _preparer(tmp_path: Path) -> AttemptPreparer:
    config = PreparerConfig(tmp_path / "w", "w1", "127.0.0.1:1", {}, max_result_bytes=1024)
    return AttemptPreparer(config, lambda digest: b"")


KINDS = st.sampled_from(["absent", "small", "huge", "link", "fifo", "dir", "empty"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(error_kind=KINDS, result_kind=KINDS, data=st.binary(max_size=64))
def test_whatever_a_task_leaves_behind_the_worker_answers_at_once_and_small(
        tmp_path_factory: pytest.TempPathFactory, error_kind: str, result_kind: str, data: bytes) -> None:
    preparer = _preparer(tmp_path_factory.mktemp("fuzz"))
    key = ("job/task-0", 0)
    preparer.attempt_dir(key).mkdir(parents=True)
    secret = preparer.attempt_dir(key).parent / "secret"
    secret.write_bytes(b"SECRET" * 10)
    for path, kind in ((preparer.error_path(key), error_kind), (preparer.result_path(key), result_kind)):
        if kind == "small":
            path.write_bytes(data)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "huge":
            with open(path, "wb") as f:
                f.truncate(200 * 1024 * 1024)  # sparse: 200 MiB on paper
        elif kind == "link":
            path.symlink_to(secret)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
    error = preparer.failure_error(key, 1)
    assert len(error.encode()) <= MAX_ERROR_BYTES + 100 and "SECRET" not in error
    problem = preparer.result_problem(key)
    assert isinstance(problem, str) and "SECRET" not in problem
    result = preparer.result_or_nothing(key)
    assert len(result) <= 1024 and b"SECRET" not in result
    assert (problem == "") == (result_kind in ("small", "empty"))


def test_a_task_whose_port_another_process_holds_is_told_so(tmp_path: Path) -> None:
    """Issue 23 item 6: a named port can still be bound first by another task on a shared host;
    the victim's error says so instead of leaving its owner to guess."""
    import socket

    preparer = _preparer(tmp_path)
    key = ("job/task-0", 0)
    preparer.attempt_dir(key).mkdir(parents=True)
    with socket.create_server(("127.0.0.1", 0)) as thief:
        port = thief.getsockname()[1]
        error = preparer.failure_error(key, 1, {"http": port})
    assert error.startswith("exit code 1") and f"its port http={port} was in use by another process" in error
    assert "another task on this host may have bound it first" in error
    assert "was in use" not in preparer.failure_error(key, 1, {"http": port})  # free again: no note
