"""Per-task cpu and memory limits through cgroups, where the platform lets the worker write them.

``CgroupLimits.detect()`` looks, in order, for:

- **cgroup v2**: the unified hierarchy mounted as ``cgroup2`` with the ``memory`` (and ideally
  ``cpu``) controllers available to the worker's own cgroup, which must be writable. Tasks get
  ``memory.max`` (+ ``memory.swap.max = 0``) and ``cpu.max``; an OOM kill shows in
  ``memory.events``.
- **cgroup v1**: a writable ``memory`` hierarchy (and ``cpu`` when writable). Tasks get
  ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes`` where swap accounting exists) and
  ``cpu.cfs_quota_us``; an OOM kill shows as ``oom_kill`` in ``memory.oom_control``.

When neither is usable, ``detect()`` returns None and the runtime's memory watchdog enforces memory
limits instead (cpu is then not limited).

A task's first process is inside its cgroup from its first instruction: on v1 the thread that
starts it steps into the cgroup, forks, and steps back (``enter_thread``); on v2, where a process's
threads share its cgroup, a shell puts itself in and execs the task (``runtime._ENTER_CGROUP``).
Processes of a worker never share a cgroup, and a cgroup is removed once its processes are gone.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _write(path: Path, value: str) -> None:
    """One write to a cgroup file (unbuffered; the flags ``open(path, "w")`` uses)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _events(text: str) -> dict[str, int]:
    """Parse "key value" lines (memory.events, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


class CgroupUnavailable(OSError):
    """A task's cgroup could not be made (its parent removed, the hierarchy read-only): its limits
    cannot be enforced as the worker promised, so the worker runs no more tasks (never silently
    falls back to the memory watchdog)."""


@dataclass(frozen=True, slots=True)
class TaskCgroup:
    """The cgroup directories of one attempt (one per hierarchy that limits it)."""

    version: int
    memory_dir: Path | None
    cpu_dir: Path | None
    shape: tuple[int, int] = (0, 0)
    """(cpu, memory_bytes) the limits were written for."""
    oom_baseline: int = 0
    """OOM kills already counted when this attempt got the cgroup (cgroups are reused)."""
    pids_dir: Path | None = None
    """Where ``pids.max`` caps its processes and threads (``--max-task-pids``)."""

    def dirs(self) -> list[Path]:
        seen: list[Path] = []
        for d in (self.memory_dir, self.cpu_dir, self.pids_dir):
            if d is not None and d not in seen:
                seen.append(d)
        return seen

    def add(self, pid: int) -> None:
        """Move ``pid`` into the cgroup(s)."""
        for d in self.dirs():
            _write(d / "cgroup.procs", str(pid))

    def oom_count(self) -> int:
        """OOM kills counted by the kernel in this cgroup so far."""
        if self.memory_dir is None:
            return 0
        if self.version == 2:
            return _events(_read(self.memory_dir / "memory.events")).get("oom_kill", 0)
        control = _events(_read(self.memory_dir / "memory.oom_control"))
        if "oom_kill" in control:
            return control["oom_kill"]
        # Kernels before 4.13 have no oom_kill counter: a hit limit is the best evidence left.
        return _events("failcnt " + _read(self.memory_dir / "memory.failcnt").strip()).get("failcnt", 0)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this attempt for exceeding its memory limit."""
        return self.oom_count() > self.oom_baseline

    def is_empty(self) -> bool:
        """No process left in it. One hierarchy tells: a task's processes are in each of its
        directories at once (the worker never moves one between them)."""
        dirs = self.dirs()
        if not dirs:
            return True
        try:
            fd = os.open(dirs[0] / "cgroup.procs", os.O_RDONLY)
        except OSError:
            return True  # removed from outside: nothing to wait for in it
        try:
            return not os.read(fd, 64).strip()
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Remove the cgroup directories (their processes must have exited)."""
        for d in self.dirs():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    logger.warning("could not remove cgroup %s: %s", d, e)


class CgroupLimits:
    """Creates a cgroup per attempt under the worker's own cgroup(s)."""

    def __init__(self, version: int, memory_base: Path | None, cpu_base: Path | None,
                 pids_base: Path | None = None, max_pids: int = 0) -> None:
        self.version = version
        self.memory_base = memory_base
        self.cpu_base = cpu_base
        self.pids_base = pids_base if max_pids > 0 else None
        self.max_pids = max_pids if pids_base is not None else 0
        """Each task's cap on processes and threads (0: none, or no pids controller here)."""
        self._controllers: list[str] = ["memory", "cpu", "pids"]
        self._free: dict[tuple[int, int], list[TaskCgroup]] = {}
        self._next_leaf = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"CgroupLimits(v{self.version}, memory={self.memory_base}, cpu={self.cpu_base}, "
                f"pids={self.pids_base} max {self.max_pids})")

    @classmethod
    def detect(
        cls,
        worker_name: str,
        *,
        root: Path = Path("/sys/fs/cgroup"),
        proc_self_cgroup: Path = Path("/proc/self/cgroup"),
        mounts: Path = Path("/proc/self/mounts"),
        max_pids: int = 0,
    ) -> CgroupLimits | None:
        """Find a writable hierarchy and create ``iris-<worker_name>`` in it; None when there is none."""
        name = "iris-" + _SAFE.sub("_", worker_name)
        try:
            memberships = _parse_proc_cgroup(_read(proc_self_cgroup))
            fs_types = _mount_types(_read(mounts))
        except ValueError:
            return None
        if fs_types.get(str(root)) == "cgroup2" and "" in memberships:
            limits = cls._detect_v2(root / memberships[""].lstrip("/"), name, max_pids)
            if limits is not None:
                limits.close()  # probed; made again on the first task that needs it
                return limits
        memory_rel = memberships.get("memory")
        if memory_rel is not None:
            memory_base = _make_dir(root / "memory" / memory_rel.lstrip("/") / name)
            if memory_base is not None and (memory_base / "memory.limit_in_bytes").exists():
                cpu_rel = memberships.get("cpu")
                cpu_base = None
                if cpu_rel is not None:
                    cpu_base = _make_dir(root / "cpu" / cpu_rel.lstrip("/") / name)
                    if cpu_base is not None and not (cpu_base / "cpu.cfs_quota_us").exists():
                        _remove_dir(cpu_base)
                        cpu_base = None
                pids_rel = memberships.get("pids")
                pids_base = None
                if pids_rel is not None and max_pids > 0:
                    pids_base = _make_dir(root / "pids" / pids_rel.lstrip("/") / name)
                    if pids_base is not None and not (pids_base / "pids.max").exists():
                        _remove_dir(pids_base)
                        pids_base = None
                limits = cls(1, memory_base, cpu_base, pids_base, max_pids)
                limits.close()
                return limits
            if memory_base is not None:
                _remove_dir(memory_base)
        return None

    @classmethod
    def _detect_v2(cls, own: Path, name: str, max_pids: int = 0) -> CgroupLimits | None:
        controllers = _read(own / "cgroup.controllers").split()
        if "memory" not in controllers:
            return None
        base = _make_dir(own / name)
        if base is None:
            return None
        wanted = [c for c in ("memory", "cpu", "pids") if c in controllers and (c != "pids" or max_pids > 0)]
        try:
            # A v2 cgroup with controllers enabled for children must hold no processes itself: the
            # tasks live in children of iris-<worker>, which holds none.
            _write(base / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
        except OSError:
            try:
                _write(own / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
                _write(base / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            except OSError:
                return None
        enabled = [c.lstrip("+") for c in _read(base / "cgroup.subtree_control").split()]
        if "memory" not in enabled:
            _remove_dir(base)
            return None
        limits = cls(2, base, base if "cpu" in enabled else None, base if "pids" in enabled else None, max_pids)
        limits._controllers = [c for c in wanted if c in enabled]
        return limits

    def _ensure_bases(self) -> None:
        for base in {p for p in (self.memory_base, self.cpu_base, self.pids_base) if p is not None}:
            if not base.exists():
                base.mkdir(exist_ok=True)
                if self.version == 2:
                    _write(base / "cgroup.subtree_control", " ".join("+" + c for c in self._controllers))

    def create(self, key: str, cpu_millicores: int, memory_bytes: int) -> TaskCgroup | None:
        """A cgroup for one attempt with its limits; None if nothing it enforces is limited. Raises
        ``CgroupUnavailable`` when it cannot be made (the worker then takes no more tasks).

        Creating a cgroup and writing its quota costs the kernel about half a millisecond, so an
        empty cgroup released by an ended attempt is reused by the next attempt of the same shape
        (its limits are already right). ``key`` names new cgroups (for people reading the tree).
        """
        shape = (cpu_millicores if self.cpu_base is not None else 0, memory_bytes if self.memory_base is not None else 0)
        if shape == (0, 0) and not self.max_pids:
            return None
        with self._lock:
            free = self._free.get(shape)
            reused = free.pop() if free else None
            self._next_leaf += 1
            leaf = f"{_SAFE.sub('_', key)}-{self._next_leaf}"
        if reused is not None and all(d.exists() for d in reused.dirs()):
            return TaskCgroup(reused.version, reused.memory_dir, reused.cpu_dir, shape, reused.oom_count(),
                              reused.pids_dir)
        # (a reused group whose directories vanished, removed by someone else, is made again below)
        memory_dir = cpu_dir = pids_dir = None
        try:
            self._ensure_bases()
            if self.memory_base is not None and memory_bytes > 0:
                memory_dir = self.memory_base / leaf
                memory_dir.mkdir(exist_ok=True)
                if self.version == 2:
                    _write(memory_dir / "memory.max", str(memory_bytes))
                    if (memory_dir / "memory.swap.max").exists():
                        _write(memory_dir / "memory.swap.max", "0")
                else:
                    _write(memory_dir / "memory.limit_in_bytes", str(memory_bytes))
                    if (memory_dir / "memory.memsw.limit_in_bytes").exists():
                        _write(memory_dir / "memory.memsw.limit_in_bytes", str(memory_bytes))
            if self.cpu_base is not None and cpu_millicores > 0:
                cpu_dir = self.cpu_base / leaf
                cpu_dir.mkdir(exist_ok=True)
                if self.version == 2:
                    _write(cpu_dir / "cpu.max", f"{_quota_us(cpu_millicores)} {CFS_PERIOD_US}")
                else:
                    _write(cpu_dir / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                    _write(cpu_dir / "cpu.cfs_quota_us", str(_quota_us(cpu_millicores)))
            if self.pids_base is not None:
                pids_dir = self.pids_base / leaf
                pids_dir.mkdir(exist_ok=True)
                _write(pids_dir / "pids.max", str(self.max_pids))
        except OSError as e:
            TaskCgroup(self.version, memory_dir, cpu_dir, pids_dir=pids_dir).remove()
            raise CgroupUnavailable(f"could not make a cgroup under {self.memory_base or self.cpu_base}: {e}") from e
        if memory_dir is None and cpu_dir is None and pids_dir is None:
            return None
        return TaskCgroup(self.version, memory_dir, cpu_dir, shape, 0, pids_dir)

    def release(self, cgroup: TaskCgroup, max_free_per_shape: int = 64) -> None:
        """An attempt ended: keep its cgroup for the next attempt of the same shape, or remove it."""
        if cgroup.is_empty():
            with self._lock:
                free = self._free.setdefault(cgroup.shape, [])
                if len(free) < max_free_per_shape:
                    free.append(cgroup)
                    return
        cgroup.remove()

    def thread_entry(self) -> bool:
        """Whether a task's process can be started inside its cgroup by the thread that starts it
        (``enter_thread``): cgroup v1, where each thread has a cgroup of its own, and room under the
        pids cap for that thread beside the task's first process."""
        return self.version == 1 and (self.max_pids == 0 or self.max_pids >= 2)

    def enter_thread(self, cgroup: TaskCgroup) -> list[Path] | None:
        """Move the calling thread into ``cgroup`` (cgroup v1): a process it starts is then inside
        from its first instruction, as ``runtime._ENTER_CGROUP``'s shell puts it there, without that
        shell's exec (~0.5 ms of CPU a task). Returns where to put the thread back
        (``leave_thread``), the worker's own cgroups; None, with the thread back, when it cannot go in
        (a directory removed from outside)."""
        tid = str(threading.get_native_id())
        homes: list[Path] = []
        for task_dir, base in ((cgroup.memory_dir, self.memory_base), (cgroup.cpu_dir, self.cpu_base),
                               (cgroup.pids_dir, self.pids_base)):
            if task_dir is None or base is None:
                continue
            try:
                _write(task_dir / "tasks", tid)
            except OSError:
                self.leave_thread(homes)
                return None
            homes.append(base.parent)
        return homes

    @staticmethod
    def leave_thread(homes: list[Path]) -> None:
        """The calling thread back in the worker's own cgroups (after ``enter_thread``)."""
        tid = str(threading.get_native_id())
        for home in homes:
            try:
                _write(home / "tasks", tid)
            except OSError as e:  # the worker's own cgroup: only its removal from outside gets here
                logger.error("could not move thread %s back to %s: %s", tid, home, e)

    def close(self) -> None:
        """Remove the reusable cgroups and the worker's own iris-<worker> directories (when empty)."""
        with self._lock:
            pooled = [cg for free in self._free.values() for cg in free]
            self._free.clear()
        for cg in pooled:
            cg.remove()
        for d in {p for p in (self.memory_base, self.cpu_base, self.pids_base) if p is not None}:
            for child in d.iterdir() if d.exists() else ():
                if child.is_dir():
                    try:
                        child.rmdir()
                    except OSError:
                        pass
            try:
                d.rmdir()
            except OSError:
                pass


def _remove_dir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _make_dir(path: Path) -> Path | None:
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller: path}; the v2 entry ("0::/path") is under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _mount_types(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out[parts[1]] = parts[2]
    return out


CGROUP_NAME_FILE = "cgroup-name"
"""In a worker's workdir: the name of its incarnation's cgroups (``iris-<name>``), so whoever cleans up
after it (its next incarnation, the local cluster) removes those and no other worker's."""


def remove_worker_cgroups(worker_name: str) -> None:
    """Remove the (empty) cgroups a worker that died without cleaning up left behind."""
    limits = CgroupLimits.detect(worker_name, max_pids=1)  # finds the hierarchies, removes what is empty
    if limits is not None:
        limits.close()


def remove_cgroups_named_in(workdir: Path) -> None:
    """Remove the cgroups of the worker incarnation whose name ``workdir`` records (if any)."""
    try:
        name = (workdir / CGROUP_NAME_FILE).read_text().strip()
    except OSError:
        return
    if name:
        remove_worker_cgroups(name)


def _quota_us(cpu_millicores: int) -> int:
    """CFS quota per period for that much cpu (the kernel's minimum is 1 ms)."""
    return max(1000, cpu_millicores * CFS_PERIOD_US // 1000)
