"""Every command in README.md runs and does what the README says, so the README cannot rot.

Commands are the ``$ `` lines of its ``console`` blocks, run in order from the repository root
with ``uv run`` dropped (the test already runs in the project's environment). A trailing
``# exits N`` states the expected exit code (default 0). The tour's ``iris cluster start`` runs
with ``--port 0`` so tests never collide; the commands after it get its address through
``IRIS_CONTROLLER``. The ``python`` block runs as a script.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from iris.cluster.clock import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NOT_RUN = {"pytest"}  # this test is part of `uv run pytest`; running it here would recurse


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[tuple[str, int]]:
    found = []
    for block in blocks("console"):
        for line in block.splitlines():
            if not line.startswith("$ "):
                continue
            command = line[2:].strip().removeprefix("uv run ")
            expected = 0
            match = re.search(r"\s#\s*exits (\d+)", command)
            if match:
                expected = int(match.group(1))
            found.append((command, expected))
    return found


def env_with(controller: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("IRIS_CONTROLLER", None)
    if controller:
        env["IRIS_CONTROLLER"] = controller
    return env


def shell(command: str, controller: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, shell=True, cwd=ROOT, env=env_with(controller), capture_output=True, text=True, timeout=300,
        check=False,
    )


def test_readme_lists_the_two_setup_commands_first() -> None:
    first_two = [c for c, _ in commands()[:2]]
    assert first_two[0].startswith("iris run --local --replicas 4 -- python -c")
    assert first_two[1] == "pytest"


def test_readme_setup_command_runs_a_four_task_job() -> None:
    command, expected = commands()[0]
    result = shell(command)
    assert result.returncode == expected, result.stderr
    assert sorted(result.stdout.splitlines()) == [f"[{i}] hello from task {i}" for i in range(4)]


def test_readme_tour_commands_all_work() -> None:
    tour = [(c, e) for c, e in commands()[2:] if c not in NOT_RUN]
    start, _ = tour[0]
    assert start.startswith("iris cluster start --local")
    argv = [sys.executable, "-m", "iris.cli.main", *start.split()[1:]]
    argv[argv.index("--port") + 1] = "0"
    process = subprocess.Popen(argv, cwd=ROOT, env=env_with(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def controller_line() -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any(line.startswith("controller:") for line in seen) or process.poll() is not None

    try:
        wait_until(controller_line, 120, message="iris cluster start never printed its address")
        address = next(line.split()[1] for line in seen if line.startswith("controller:"))
        for command, expected in tour[1:]:
            result = shell(command, controller=address)
            assert result.returncode == expected, f"{command}\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr, command
            if expected:
                assert result.stderr.strip().splitlines()[-1].startswith("Error: "), command
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_readme_python_example_runs(tmp_path: Path) -> None:
    (code,) = blocks("python")
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env_with(), capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SUCCEEDED 4 of 4" in out
    assert "failed: task 0 failed" in out or "failed:" in out
    assert "[3]" in out and "\n49\n" in out  # the callable's return value came back (job.result())
