"""Session-wide test setup: logins go to a private config directory, never the user's."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_iris_config() -> Iterator[None]:
    """``iris login`` and ``iris cluster start --local`` store tokens under ``$IRIS_CONFIG_DIR``: a
    temporary one for the whole session, inherited by every ``iris`` subprocess the tests run."""
    saved = {k: os.environ.get(k) for k in ("IRIS_CONFIG_DIR", "IRIS_TOKEN")}
    with tempfile.TemporaryDirectory(prefix="iris-config-") as directory:
        os.environ["IRIS_CONFIG_DIR"] = directory
        os.environ.pop("IRIS_TOKEN", None)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def tasks_see_the_test_directories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tasks run sandboxed, as their owner's uid (issue 23): the tests' temporary directories are
    mounted into every task of every worker the tests start (``iris worker serve --task-mount``
    through ``$IRIS_TASK_MOUNTS``), so a test can hand a task a file or read what it wrote, as a
    user hands a job a dataset directory."""
    saved = os.environ.get("IRIS_TASK_MOUNTS")
    base = tmp_path_factory.getbasetemp()
    os.environ["IRIS_TASK_MOUNTS"] = str(base)
    for directory in (base, base.parent):  # pytest makes them 0700: the tasks' uids must pass through
        directory.chmod(directory.stat().st_mode | 0o111)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("IRIS_TASK_MOUNTS", None)
        else:
            os.environ["IRIS_TASK_MOUNTS"] = saved


@pytest.fixture(autouse=True)
def tasks_may_write_tmp_path(request: pytest.FixtureRequest) -> None:
    """A test's ``tmp_path`` is open to its tasks' uid (pytest makes it 0700 for root), as a user's
    shared data directory would be."""
    if "tmp_path" in request.fixturenames:
        path: Path = request.getfixturevalue("tmp_path")
        path.chmod(0o777)
        for parent in path.parents:
            if parent == Path(tempfile.gettempdir()) or parent == parent.parent:
                break
            parent.chmod(parent.stat().st_mode | 0o711)
