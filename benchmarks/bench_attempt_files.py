"""What an attempt's files cost the disk: the controller marking a log complete, the worker's
attempt directory from creation to removal.

Usage::

    uv run python benchmarks/bench_attempt_files.py [--attempts 10000] [--dir DIR]

1. controller: ``LogStore.mark_complete`` for ``--attempts`` attempts that printed nothing (ten
   jobs), the path every ``/bin/true`` takes when its end report completes its log;
2. worker: ``AttemptPreparer.prepare`` of a ``/bin/true`` attempt (its directory and work
   directory), its process record written as the runtime writes it, ``release`` and ``discard``.

Prints microseconds per attempt (wall, user, system) and the inodes each phase left or created,
with the load average. On ext4 without a journal (this project's VM) an inode allocated soon after
many deletions pays a scan (the kernel's ``recently_deleted``), so the figures depend on what the
disk did in the last minute: compare trees back to back. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from iris.cluster.controller.logstore import LogStore
from iris.cluster.worker.prepare import AttemptPreparer, PreparerConfig
from iris.cluster.worker.runtime import PROCESS_RECORD
from iris.rpc import cluster_pb2

T = cluster_pb2


def _timed(label: str, n: int, fn: object) -> None:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()  # type: ignore[operator]
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    print(f"{label:<44} {(t1 - t0) / n * 1e6:8.1f} us wall {(r1.ru_utime - r0.ru_utime) / n * 1e6:7.1f} us user "
          f"{(r1.ru_stime - r0.ru_stime) / n * 1e6:7.1f} us sys   load average {os.getloadavg()[0]:.2f}", flush=True)


def _inodes(root: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: the temp dir)")
    args = parser.parse_args()
    n = args.attempts
    root = Path(tempfile.mkdtemp(prefix="iris-bench-files-", dir=args.dir))
    try:
        logs = LogStore(root / "logs")
        _timed("controller: mark an empty log complete", n,
               lambda: [logs.mark_complete(f"job{i % 10}", i, 0) for i in range(n)])
        print(f"    inodes under the log store: {_inodes(root / 'logs'):,}")

        preparer = AttemptPreparer(PreparerConfig(workdir=root / "worker", worker_id="w1", controller_address="",
                                                  base_env={}), fetch_bundle=lambda _: b"")
        preparer.tasks_dir.mkdir(parents=True)
        entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"]))
        keys = [(f"job/task-{i}", 0) for i in range(n)]

        def prepare() -> None:
            from iris.cluster.spec import Entrypoint

            parsed = Entrypoint.from_proto(entry)
            for task_id, attempt in keys:
                request = T.Worker.RunTaskRequest(task_id=task_id, attempt_id=attempt)
                spec = preparer.prepare(request, parsed, {}, [])
                assert spec.record_path is not None
                fd = os.open(spec.record_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, b"{}".ljust(256))
                os.close(fd)

        _timed("worker: prepare an attempt + its process record", n, prepare)
        print(f"    inodes created: {_inodes(preparer.tasks_dir):,}")
        _timed("worker: release (its empty work directory)", n, lambda: [preparer.release(k) for k in keys])
        _timed("worker: discard (the attempt directory)", n, lambda: [preparer.discard(k) for k in keys])
        left = [p.name for p in preparer.tasks_dir.iterdir()]
        print(f"    left in the tasks directory: {len(left)} ({PROCESS_RECORD} files and directories)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
