"""Run the real ``iris`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def iris(*args: str, controller: str | None = None, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if controller is not None:
        env["IRIS_CONTROLLER"] = controller
    return subprocess.run(
        [sys.executable, "-m", "iris.cli.main", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False,
    )


def py(code: str) -> Sequence[str]:
    return [sys.executable, "-c", code]
