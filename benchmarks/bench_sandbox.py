"""What a task's sandbox costs by itself: starts per second of ``/bin/true`` at 16 at once, bare, under
``unshare --pid --mount --fork``, under a minimal bwrap, and under the worker's real sandbox
(``Sandbox.prefix``: the system's binds, a fresh /proc and /dev, the task's directories), with and
without the switch to another uid. No Iris processes: this isolates the kernel's namespace work.
Each line also says how busy the host's CPUs were (``/proc/stat``, all processes and the kernel's
own threads): the namespaces' cost is CPU, much of it not charged to the processes that started
them.

As root, one more line measures the design the issue names as the way down, as a prototype: a
long-lived helper already inside the sandbox's system view (started once by bwrap) that, per task,
forks, unshares new mount, PID and IPC namespaces, mounts only the task's own (/proc, /tmp,
/dev/shm, its work directory), and runs ``/bin/true`` as another uid under an init of its own.
It is not the worker's sandbox (no cgroup, no signals forwarded, no reporting): it bounds what
such a helper could gain.

    uv run python benchmarks/bench_sandbox.py [--starts 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from iris.cluster.worker.sandbox import Sandbox, TaskView, run_as_prefix

HELPER = r"""
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, NEWPID, NEWIPC = 0x00020000, 0x20000000, 0x08000000
NOSUID, NODEV, NOEXEC, BIND, REC, PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18


def mount(src, dst, fstype, flags, data=None):
    enc = lambda v: v.encode() if v else None
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {dst}")


def start(work):
    pid = os.fork()
    if pid == 0:
        try:
            if libc.unshare(NEWNS | NEWPID | NEWIPC) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            init = os.fork()  # PID 1 of the new namespace: the task is its child
            if init == 0:
                mount(None, "/", None, REC | PRIVATE)
                held = os.open(work, os.O_PATH | os.O_DIRECTORY)  # the work dir may lie under /tmp
                mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC)
                mount("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777")
                mount("tmpfs", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777")
                os.makedirs(work, exist_ok=True)
                mount(f"/proc/self/fd/{held}", work, None, BIND)
                task = os.fork()
                if task == 0:
                    os.setgroups([])
                    os.setresgid(200000, 200000, 200000)
                    os.setresuid(200000, 200000, 200000)
                    os.execv("/bin/true", ["/bin/true"])
                while True:
                    done, status = os.wait()
                    if done == task:
                        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
            os._exit(os.waitstatus_to_exitcode(os.waitpid(init, 0)[1]) & 0xFF)
        except BaseException as e:
            sys.stderr.write(f"helper child: {e!r}\n")
            sys.stderr.flush()
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


work, starts, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
first = start(work)
assert first == 0, f"first start exited {first}"
left = [starts]
lock = threading.Lock()


def loop():
    while True:
        with lock:
            if left[0] == 0:
                return
            left[0] -= 1
        assert start(work) == 0


threads = [threading.Thread(target=loop) for _ in range(concurrency)]
began = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
print(starts / (time.perf_counter() - began))
"""
"""The prototype helper (run under bwrap with the sandbox's system view): prints starts per second."""


def _busy() -> float:
    """CPU seconds the host has spent not idle, all CPUs together."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def rate(argv: list[str], starts: int, concurrency: int) -> tuple[float, float]:
    """Starts per second and the host's busy cores meanwhile."""
    subprocess.run(argv, check=True)
    busy, began = _busy(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: subprocess.run(argv, check=True), range(starts)))
    elapsed = time.perf_counter() - began
    return starts / elapsed, (_busy() - busy) / elapsed


def helper_rate(sandbox: Sandbox, prefix: list[str], work: Path, starts: int, concurrency: int) -> tuple[float, float]:
    """The prototype helper's starts per second (timed inside it) and the host's busy cores."""
    base = [a for a in prefix if a != "--unshare-pid"]  # the helper itself stays in the host's PID namespace
    base = base[:base.index("--chdir")] + ["--chdir", "/", "--"]
    busy, began = _busy(), time.perf_counter()
    out = subprocess.run([*base, sys.executable, "-c", HELPER, str(work), str(starts), str(concurrency)],
                         check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the helper prototype failed: {out.stderr.strip()[-2000:]}")
    elapsed = time.perf_counter() - began
    return float(out.stdout.strip()), (_busy() - busy) / elapsed


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
            per_s, cores = rate(argv, args.starts, args.concurrency)
            print(f"{name:32s} {per_s:6.0f} starts/s   host busy {cores:.2f} cores", flush=True)
        if os.geteuid() == 0:
            per_s, cores = helper_rate(sandbox, prefix, root / "work", args.starts, args.concurrency)
            print(f"{'helper prototype (as another uid)':32s} {per_s:6.0f} starts/s   host busy {cores:.2f} cores "
                  f"(its start included)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
