"""Who a task runs as, and the sandbox it runs in (issue 23, items 1 and 2).

**Who.** A worker started as root never runs a task as root unless told to
(``--run-tasks-as-root``): each task runs as the uid the controller gave its job's owner (one uid
per Iris user on every worker, from ``iris controller serve --task-uid-range``), with a group of
the same number and no supplementary groups; ``--task-user USER`` runs every task as that one
user instead. A worker that is not root runs its tasks as itself (the laptop case) and says so.
The switch is made by ``setpriv`` (util-linux) as the last step before the task's program: it sets
the uid, gid and groups, drops every capability and sets ``no_new_privs``, so a setuid binary in
the sandbox gives nothing back.

**Where.** Each task runs under Debian's ``bubblewrap`` (``bwrap``), chosen over ``unshare`` because
it builds the task's whole mount view from nothing (a new root with only what is bound into it),
where ``unshare --mount`` starts from a copy of the host's and would have to hide every secret one
by one. The task gets its own PID, mount and IPC namespaces and sees:

- the system read-only: ``/usr`` (and the ``/bin``, ``/lib``... links of a merged ``/usr``),
  ``/etc``, ``/opt``, ``/sys``; a fresh ``/proc`` (its own processes only) and a minimal ``/dev``
  (plus its GPUs' devices);
- what it needs to run, read-only at their usual paths: the worker's Python installation and
  virtual environment, the directories Iris itself is imported from, the job's Python environment,
  the CA that verifies the controller;
- read-write: its work directory, its own directory for the files it leaves the worker
  (``callable.pkl``, ``error.txt``, ``result.pkl``), its job's checkpoint directory, the
  operator's ``--task-mount`` paths, a private ``/tmp`` (its ``$HOME``), and a ``/dev/shm`` shared
  with the other tasks of its job on this host only (NCCL's shared-memory transport needs it);
- nothing else: not the worker's directory, its credential, the controller's state, other tasks.

**Signals and the init.** bubblewrap's own init is PID 1 of the namespace and the task is PID 2
(``--new-session`` puts both in a process group of their own, whose id is the init's host pid).
The worker stops a task by sending SIGTERM to that group: the init, PID 1 of a namespace with no
handler, is not sent it by the kernel, so the task receives it as it would anywhere (a task that
were PID 1 itself would ignore it; bwrap 0.8 forwards no signals). After the grace the worker
SIGKILLs the outer bwrap, and ``--die-with-parent`` SIGKILLs the namespace's init with it: a PID
namespace ends with its init, so no daemon the task left (setsid, double fork) outlives it. When the
task itself exits, bwrap exits with its status and the namespace ends the same way. A task killed
by a signal N exits the sandbox with status 128 + N, which the runtime reports as that signal.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SYSTEM_READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys")
"""The host's system paths a task sees, read-only (a link among them, as a merged ``/usr``'s
``/bin -> usr/bin``, is made the same link inside)."""

GPU_CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
"""NVIDIA's control devices, bound into a task that was given GPUs (with its ``/dev/nvidiaN``)."""

SIGNAL_STATUS_BASE = 128
"""A sandboxed task killed by signal N exits bwrap with 128 + N (bwrap's rule, as a shell's)."""


class SandboxUnavailable(RuntimeError):
    """The host cannot run the sandbox (no bwrap, no namespaces): the worker refuses to start
    unless ``--unconfined``."""


@dataclass(frozen=True, slots=True)
class TaskView:
    """What one task sees besides the system and the runtime paths."""

    work_dir: Path
    """Its working directory (read-write)."""
    own_dir: Path
    """Its directory for the files it leaves the worker (read-write)."""
    shm_dir: Path | None = None
    """Bound at ``/dev/shm`` (its job's on this host); None: a private one."""
    writable: tuple[str, ...] = ()
    """More read-write paths (its job's checkpoint directory)."""
    readable: tuple[str, ...] = ()
    """More read-only paths (its job's Python environment)."""
    devices: tuple[str, ...] = ()
    """Device nodes it may use (its GPUs)."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How this worker builds a task's sandbox (``Sandbox.detect``)."""

    bwrap: str
    readable: tuple[str, ...]
    """The runtime paths every task sees read-only (``runtime_paths``)."""
    mounts: tuple[str, ...] = ()
    """The operator's ``--task-mount`` paths: every task sees them read-write at the same path."""

    @classmethod
    def detect(cls, extra_readable: Iterable[str] = (), mounts: Iterable[str] = ()) -> Sandbox:
        """The sandbox of this host; raises SandboxUnavailable saying why there is none."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)")
        probe = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
                 "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
        try:
            result = subprocess.run(probe, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable(f"bwrap cannot run here: {e}") from None
        if result.returncode != 0:
            why = result.stderr.decode(errors="replace").strip() or f"exit code {result.returncode}"
            raise SandboxUnavailable(f"bwrap cannot make PID and mount namespaces here: {why}")
        readable = _outermost([*runtime_paths(), *extra_readable])
        return cls(bwrap, tuple(readable), tuple(os.path.realpath(m) for m in mounts))

    def prefix(self, view: TaskView) -> list[str]:
        """The argv that runs a command in ``view``'s sandbox (the command follows it)."""
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
        for path in SYSTEM_READ_ONLY:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
                 "--perms", "0755", "--dir", "/var", "--perms", "1777", "--tmpfs", "/var/tmp"]
        read_only = [p for p in (*self.readable, *view.readable) if os.path.exists(p)]
        read_write = [p for p in (*self.mounts, *view.writable, str(view.own_dir), str(view.work_dir))
                      if os.path.exists(p)]
        devices = [d for d in view.devices if os.path.exists(d)]
        # bwrap makes a bound path's missing parents 0700 (root's): the task could not reach it.
        for parent in _parents([*read_only, *read_write]):
            args += ["--perms", "0755", "--dir", parent]
        for device in devices:
            args += ["--dev-bind", device, device]
        for path in read_only:
            args += ["--ro-bind", path, path]
        if view.shm_dir is not None:
            args += ["--bind", str(view.shm_dir), "/dev/shm"]
        else:
            args += ["--perms", "1777", "--tmpfs", "/dev/shm"]
        for path in read_write:
            args += ["--bind", path, path]
        args += ["--chdir", str(view.work_dir), "--"]
        return args


def runtime_paths() -> list[str]:
    """What a task needs to run the worker's Python and import Iris, at their real paths: the
    Python installation, the worker's virtual environment, every directory of the worker's
    ``sys.path`` that lies outside them and the system's (an editable install's source), and the
    directories above Iris's own package."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),  # the venv's, its Python's
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}  # the interpreter's own
    import iris

    for package_dir in getattr(iris, "__path__", []):
        paths.add(os.path.realpath(os.path.dirname(package_dir)))
    for entry in sys.path:
        if entry and os.path.isdir(entry) and ("site-packages" in entry or "dist-packages" in entry
                                               or os.path.isdir(os.path.join(entry, "iris"))):
            paths.add(os.path.realpath(entry))
    return [p for p in paths if p != "/" and not any(p == s or p.startswith(s + "/") for s in SYSTEM_READ_ONLY)]


def private_path(paths: Iterable[str]) -> str:
    """The first place on the way to ``paths`` (their real paths) that a user other than its owner
    cannot pass: a directory without search permission for others, or one of the paths they cannot
    read ("" if none). Without a sandbox to bind them, a task running as another user cannot reach
    what lies there (a Python under a private home, such as pyenv's or uv's under ``/root``)."""
    for path in paths:
        real = os.path.realpath(path)
        for directory in _above(real):
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return directory
        if os.path.exists(real) and not os.stat(real).st_mode & stat.S_IROTH:
            return real
    return ""


_MOUNTED = (*SYSTEM_READ_ONLY, "/proc", "/dev")


def _above(path: str) -> list[str]:
    """The directories above ``path``, outermost first, ``/`` left out."""
    chain = []
    parent = os.path.dirname(path.rstrip("/"))
    while parent not in ("/", ""):
        chain.append(parent)
        parent = os.path.dirname(parent)
    return chain[::-1]


def _parents(paths: Sequence[str]) -> list[str]:
    """The directories above ``paths`` that the sandbox must make, outermost first: every one
    that is not a mount of its own (the system's paths) or inside another bound path."""
    bound = set(paths)
    out: dict[str, None] = {}
    for path in paths:
        for directory in _above(path):
            if directory in bound or any(directory == m or directory.startswith(m + "/") for m in _MOUNTED):
                break
            if any(directory.startswith(b.rstrip("/") + "/") for b in bound):
                break
            if directory not in ("/tmp", "/var/tmp", "/var"):
                out[directory] = None
    return list(out)


def _outermost(paths: Sequence[str]) -> list[str]:
    """``paths`` without those that lie inside another of them (bound once, by the outer)."""
    unique = sorted({os.path.realpath(p) for p in paths if p})
    out: list[str] = []
    for path in unique:
        if not any(path == o or path.startswith(o.rstrip("/") + "/") for o in out):
            out.append(path)
    return out


def run_as_prefix(uid: int, gid: int) -> list[str]:
    """The argv that runs a command as ``uid``/``gid`` with no groups, no capabilities and no way
    back (``no_new_privs``)."""
    return [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def signal_from_status(returncode: int) -> int:
    """A sandboxed task's exit status as ``Popen.returncode`` (negative: the signal that killed it)."""
    if SIGNAL_STATUS_BASE < returncode <= SIGNAL_STATUS_BASE + 64:
        return -(returncode - SIGNAL_STATUS_BASE)
    return returncode


def inner_group(outer_pid: int) -> int:
    """The process group of a sandbox's init and task (the init's host pid), or 0 while bwrap has
    not made it yet (or it is gone)."""
    try:
        with open(f"/proc/{outer_pid}/task/{outer_pid}/children") as f:
            children = f.read().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0
