"""``iris run --local`` exits with the job's outcome: success, tolerated failure, failure."""

from __future__ import annotations

import pytest

from .conftest import iris, py

pytestmark = pytest.mark.e2e

FAIL_TASK_1 = "import os, sys; i = int(os.environ['IRIS_TASK_INDEX']); print('task', i); sys.exit(7 if i == 1 else 0)"


def test_run_local_success_exits_zero() -> None:
    result = iris("run", "--local", "--workers", "1", "--no-bundle", "--replicas", "2", "--", *py("print('ok')"))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["[0] ok", "[1] ok"]
    assert "Stopping the local cluster" in result.stderr


def test_run_local_tolerated_failure_exits_zero() -> None:
    result = iris("run", "--local", "--workers", "1", "--no-bundle", "--replicas", "3", "--max-task-failures", "1",
                  "--", *py(FAIL_TASK_1))
    assert result.returncode == 0, result.stderr
    assert "2/3 tasks succeeded, 1 failed (tolerated" in result.stderr


def test_run_local_failure_exits_nonzero_with_the_error() -> None:
    result = iris("run", "--local", "--workers", "1", "--no-bundle", "--replicas", "3", "--", *py(FAIL_TASK_1))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1 and "FAILED" in error_lines[0]
    assert "[1] task 1" in result.stdout
