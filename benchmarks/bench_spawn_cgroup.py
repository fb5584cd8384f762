"""What entering the task's cgroup before exec costs per start (issue 23 item 9).

300 tasks of ``true`` with a memory limit, one after another, through ``ProcessRuntime`` with this
host's cgroups (the watchdog where there are none); prints wall time per start and CPU per start
(the runtime's and the children's). Compare two trees in one run::

    PYTHONPATH=/tmp/before/src uv run python benchmarks/bench_spawn_cgroup.py before
    uv run python benchmarks/bench_spawn_cgroup.py now

Nothing asserts on timing.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from iris.cluster.worker.cgroups import CgroupLimits
from iris.cluster.worker.runtime import ProcessExit, ProcessRuntime, ProcessSpec


def cpu_ms(usage: resource.struct_rusage) -> float:
    return (usage.ru_utime + usage.ru_stime) * 1000


def main(label: str, starts: int = 300) -> None:
    limits = CgroupLimits.detect(f"bench-spawn-{os.getpid()}")
    runtime = ProcessRuntime(limits=limits)
    workdir = Path(tempfile.mkdtemp(prefix="iris-bench-spawn-"))
    done = threading.Semaphore(0)

    def exited(_: ProcessExit) -> None:
        done.release()

    try:
        wall = time.monotonic()
        children = cpu_ms(resource.getrusage(resource.RUSAGE_CHILDREN))
        own = cpu_ms(resource.getrusage(resource.RUSAGE_SELF))
        for i in range(starts):
            spec = ProcessSpec(key=(f"bench/task-{i}", 0), argv=["true"], cwd=workdir, env={"PATH": os.defpath},
                               log_path=workdir / "out.log", memory_limit_bytes=2**30)
            runtime.start(spec, exited)
            done.acquire()
        wall_ms = (time.monotonic() - wall) * 1000 / starts
        children_ms = (cpu_ms(resource.getrusage(resource.RUSAGE_CHILDREN)) - children) / starts
        own_ms = (cpu_ms(resource.getrusage(resource.RUSAGE_SELF)) - own) / starts
        print(f"{label}: {wall_ms:.2f} ms wall per start, children's CPU {children_ms:.2f} ms, "
              f"runtime's CPU {own_ms:.2f} ms ({'cgroups' if limits else 'no cgroups'})")
    finally:
        runtime.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "now")
