"""What a task's sandbox costs by itself: starts per second of ``/bin/true`` at 16 at once, bare, under
``unshare --pid --mount --fork``, under a minimal bwrap, and under the worker's real sandbox
(``Sandbox.prefix``: the system's binds, a fresh /proc and /dev, the task's directories), with and
without the switch to another uid. No Iris processes: this isolates the kernel's namespace work.

    uv run python benchmarks/bench_sandbox.py [--starts 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from iris.cluster.worker.sandbox import Sandbox, TaskView, run_as_prefix


def rate(argv: list[str], starts: int, concurrency: int) -> float:
    subprocess.run(argv, check=True)
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: subprocess.run(argv, check=True), range(starts)))
    return starts / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="iris-sandbox-bench-"))
    try:
        for name in ("work", "task", "shm"):
            (root / name).mkdir()
        sandbox = Sandbox.detect()
        prefix = sandbox.prefix(TaskView(root / "work", root / "task", root / "shm"))
        variants = {
            "bare": ["/bin/true"],
            "unshare --pid --mount --fork": ["unshare", "--pid", "--mount", "--fork", "/bin/true"],
            "bwrap, one bind, new PID ns": [sandbox.bwrap, "--die-with-parent", "--new-session", "--unshare-pid",
                                            "--ro-bind", "/", "/", "/bin/true"],
            "the task sandbox": [*prefix, "/bin/true"],
        }
        if os.geteuid() == 0:
            variants["the task sandbox + setpriv"] = [*prefix, *run_as_prefix(200_000, 200_000), "/bin/true"]
        for name, argv in variants.items():
            print(f"{name:32s} {rate(argv, args.starts, args.concurrency):6.0f} starts/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
