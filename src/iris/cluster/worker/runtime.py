"""Process runtime: runs task attempts as child processes of the worker.

Owns the OS side of a task: one new session (process group) per attempt, the attempt's
working directory and environment, one combined stdout+stderr log file, SIGTERM then SIGKILL
of the whole group after a grace period, and the memory watchdog that enforces a task's
memory limit where cgroups are not available.

It knows nothing about the controller, the outbox or task states: it reports a
``ProcessExit`` through a callback and the worker decides what that means.

Exit detection is event driven: every child gets a pidfd registered with one epoll set, and
one reaper thread blocks in ``epoll.poll`` (no sleeping poll loop). Where pidfds are not
available it falls back to one thread per child blocked in ``Popen.wait``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from iris.cluster.clock import SystemClock, wait_until
from iris.cluster.logfile import MAX_LINE_BYTES, AttemptLog
from iris.cluster.logfile import encode as encode_record
from iris.cluster.types import format_size
from iris.cluster.worker.cgroups import CgroupLimits, CgroupUnavailable, TaskCgroup
from iris.cluster.worker.deathwatch import DeathWatch
from iris.cluster.worker.sandbox import inner_group, run_as_prefix, signal_from_status

logger = logging.getLogger(__name__)

AttemptKey = tuple[str, int]
"""(task_id, attempt_id): identifies one attempt on a worker."""

PROCESS_RECORD = "process.json"
"""File in an attempt directory recording the pid and create time of its process group leader."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """Everything needed to start one attempt's process."""

    key: AttemptKey
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    log_path: Path
    memory_limit_bytes: int = 0
    """0: no limit. Enforced by a cgroup when the runtime has one, else by the memory watchdog."""
    cpu_limit: int = 0
    """Millicores (0: no limit). Enforced only through a cgroup (cpu quota)."""
    record_path: Path | None = None
    """Where to write the pid record used to find orphans after a worker restart."""
    run_as: tuple[int, int] | None = None
    """Run as this (uid, gid), with no groups and no capabilities (``sandbox.run_as_prefix``);
    None: as the worker. Needs a root worker."""
    sandbox: tuple[str, ...] = ()
    """The argv prefix that runs it in its sandbox (``sandbox.Sandbox.prefix``); empty: none."""
    disk_limit_bytes: int = 0
    """Its ``--disk`` request: over it in ``disk_paths``, the disk watchdog stops it (0: no limit)."""
    disk_paths: tuple[str, ...] = ()
    log: AttemptLog | None = None
    """When set, stdout and stderr go through pipes into this log, each line with its time and
    stream (``iris.cluster.logfile``); else both are appended to ``log_path`` as they are."""


@dataclass(frozen=True, slots=True)
class ProcessExit:
    key: AttemptKey
    pid: int
    returncode: int
    """Exit status as ``Popen.returncode``: negative means killed by that signal."""
    limit_error: str = ""
    """Set when the runtime killed the process for exceeding a resource limit."""


ExitCallback = Callable[[ProcessExit], None]


class Runtime(Protocol):
    """What the worker needs from a runtime. ``ProcessRuntime`` is the real one."""

    def start(self, spec: ProcessSpec, on_exit: ExitCallback) -> int:
        """Start the process and return its pid. Raises OSError when it cannot start.

        ``on_exit`` is called exactly once, from a runtime thread, when the process ends.
        """
        ...

    def kill(self, key: AttemptKey, grace_period_s: float) -> None:
        """SIGTERM the attempt's process group, SIGKILL it after the grace period. Idempotent."""
        ...

    def close(self) -> None:
        """SIGKILL whatever still runs, wait for it, stop the runtime's threads."""
        ...


@dataclass(slots=True)
class _Running:
    spec: ProcessSpec
    pid: int
    proc: subprocess.Popen[bytes] | None
    """Only when started through the ``subprocess`` fallback (it must do the waiting then)."""
    on_exit: ExitCallback
    pidfd: int = -1
    limit_error: str = ""
    kill_timer: threading.Timer | None = None
    cgroup: TaskCgroup | None = None
    pipes: list[_Pipe] = field(default_factory=list)

    def wait(self) -> int:
        """Reap the process; its exit status as ``Popen.returncode`` (negative: signal)."""
        if self.proc is not None:
            return self.proc.wait()
        while True:
            try:
                _, status = os.waitpid(self.pid, 0)
            except InterruptedError:
                continue
            return os.waitstatus_to_exitcode(status)


class _Pipe:
    """The read end of a task's stdout or stderr: bytes in, timestamped records out."""

    __slots__ = ("fd", "source", "log", "partial")

    def __init__(self, fd: int, source: str, log: AttemptLog) -> None:
        self.fd = fd
        self.source = source
        self.log = log
        self.partial = b""

    def drain(self) -> bool:
        """Read what is there now into the log. False at end of file (or an error)."""
        chunks: list[bytes] = []
        eof = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            if len(chunks) >= 16:
                break
        if chunks:
            self._write(b"".join(chunks))
        return not eof

    def _write(self, data: bytes) -> None:
        now = _now_ms()
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE_BYTES:
            lines.append(self.partial)
            self.partial = b""
        out = []
        for line in lines:
            while len(line) > MAX_LINE_BYTES:
                out.append(encode_record(now, self.source, line[:MAX_LINE_BYTES]))
                line = line[MAX_LINE_BYTES:]
            out.append(encode_record(now, self.source, line.rstrip(b"\r")))
        if out:
            self.log.append(b"".join(out))

    def flush(self) -> None:
        """Write an unterminated last line to the log."""
        if self.partial:
            self.log.append(encode_record(_now_ms(), self.source, self.partial.rstrip(b"\r")))
            self.partial = b""

    def close(self) -> None:
        """Flush an unterminated last line and close the read end."""
        self.flush()
        with contextlib.suppress(OSError):
            os.close(self.fd)


_CLOCK = SystemClock()


def _now_ms() -> int:
    return _CLOCK.now_ms()


def _task_pipes(log: AttemptLog) -> tuple[list[_Pipe], list[int]]:
    """(read ends, write ends) for a task's stdout and stderr."""
    readers: list[_Pipe] = []
    writers: list[int] = []
    for source in ("stdout", "stderr"):
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(r, False)
        readers.append(_Pipe(r, source, log))
        writers.append(w)
    return readers, writers

class _PosixSpawn:
    """Start a process with glibc's ``posix_spawn`` (called through ctypes): in the child, a new
    session (setsid), SIGPIPE/SIGXFSZ back to their defaults and no blocked signals (as
    ``subprocess`` does), stdin from /dev/null, stdout and stderr appended to the log, every other
    descriptor closed, then chdir and exec. About half the CPU of ``subprocess.Popen`` per start
    (no Python-level child setup) and one vfork-style clone.

    ``os.posix_spawn`` cannot change the child's working directory, hence ctypes and
    ``posix_spawn_file_actions_addchdir_np`` (glibc >= 2.29). ``available()`` is False where any
    of it is missing; the runtime then uses ``subprocess.Popen``.
    """

    _SETSIGDEF = 0x04
    _SETSIGMASK = 0x08
    _SETSID = 0x80
    _BUF = 1024  # bytes for posix_spawnattr_t / posix_spawn_file_actions_t (glibc: 336 / 80)

    def __init__(self) -> None:
        self._ok = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._spawn = libc.posix_spawn
            self._fa_init = libc.posix_spawn_file_actions_init
            self._fa_destroy = libc.posix_spawn_file_actions_destroy
            self._fa_open = libc.posix_spawn_file_actions_addopen
            self._fa_dup2 = libc.posix_spawn_file_actions_adddup2
            self._fa_chdir = libc.posix_spawn_file_actions_addchdir_np
            self._fa_closefrom = getattr(libc, "posix_spawn_file_actions_addclosefrom_np", None)
            pid_t = ctypes.c_int
            self._spawn.argtypes = [ctypes.POINTER(pid_t), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p]
            self._spawn.restype = ctypes.c_int
            self._fa_open.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
            self._fa_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            self._fa_chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            if self._fa_closefrom is not None:
                self._fa_closefrom.argtypes = [ctypes.c_void_p, ctypes.c_int]
            # One attribute set, shared by every start (posix_spawn only reads it).
            self._attr = ctypes.create_string_buffer(self._BUF)
            sigdef = ctypes.create_string_buffer(128)  # sigset_t: 128 bytes in glibc
            empty = ctypes.create_string_buffer(128)
            checks = [
                libc.posix_spawnattr_init(self._attr),
                libc.sigemptyset(sigdef),
                libc.sigaddset(sigdef, int(signal.SIGPIPE)),
                libc.sigaddset(sigdef, int(signal.SIGXFSZ)),
                libc.sigemptyset(empty),
                libc.posix_spawnattr_setsigdefault(self._attr, sigdef),
                libc.posix_spawnattr_setsigmask(self._attr, empty),
                libc.posix_spawnattr_setflags(
                    self._attr, ctypes.c_short(self._SETSID | self._SETSIGDEF | self._SETSIGMASK)
                ),
            ]
            self._ok = all(c == 0 for c in checks)
        except (OSError, AttributeError):
            self._ok = False

    def available(self) -> bool:
        return self._ok

    def spawn(self, spec: ProcessSpec, out_fds: tuple[int, int] | None = None) -> int:
        env = spec.env
        path = _resolve_program(str(spec.argv[0]), env.get("PATH"), str(spec.cwd))
        argv = [a.encode(_FS_ENCODING, "surrogateescape") for a in spec.argv]
        envp = [f"{k}={v}".encode(_FS_ENCODING, "surrogateescape") for k, v in env.items()]
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        c_envp = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
        actions = ctypes.create_string_buffer(self._BUF)
        if self._fa_init(actions) != 0:
            raise OSError(errno.ENOMEM, "posix_spawn_file_actions_init failed")
        try:
            log = os.fsencode(spec.log_path)
            outputs = (
                self._fa_dup2(actions, out_fds[0], 1) or self._fa_dup2(actions, out_fds[1], 2)
                if out_fds is not None
                else self._fa_open(actions, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                or self._fa_dup2(actions, 1, 2)
            )
            failed = (
                self._fa_open(actions, 0, b"/dev/null", os.O_RDONLY, 0)
                or outputs
                or (self._fa_closefrom(actions, 3) if self._fa_closefrom is not None else 0)
                or self._fa_chdir(actions, os.fsencode(spec.cwd))
            )
            if failed:
                raise OSError(failed, os.strerror(failed))
            pid = ctypes.c_int(0)
            err = self._spawn(ctypes.byref(pid), os.fsencode(path), actions, self._attr, c_argv, c_envp)
        finally:
            self._fa_destroy(actions)
        if err != 0:
            # The child could not open the log, chdir or exec (glibc reports it here).
            raise OSError(err, os.strerror(err), path)
        return int(pid.value)


_FS_ENCODING = sys.getfilesystemencoding()


_ENTER_CGROUP = 'for f; do shift; [ "$f" = -- ] && break; echo $$ > "$f" 2>/dev/null; done; exec "$@"'
"""Put this shell (the task's first process) in the task's cgroup(s), then exec the task: it and
everything it forks are inside from their first instruction. Best effort: the runtime places the
pid again after the start (and makes a vanished group again)."""


def _wrapped(spec: ProcessSpec) -> ProcessSpec:
    """``spec`` run as its user and in its sandbox (the task's program resolved first, so a missing
    one is still a start failure, not the sandbox's exit 1)."""
    if spec.run_as is None and not spec.sandbox:
        return spec
    program = _resolve_program(str(spec.argv[0]), spec.env.get("PATH"), str(spec.cwd))
    prefix = list(spec.sandbox)
    if spec.run_as is not None:
        prefix += run_as_prefix(*spec.run_as)
    return dataclasses.replace(spec, argv=[*prefix, program, *spec.argv[1:]])


def _entering(spec: ProcessSpec, cgroup: TaskCgroup) -> ProcessSpec:
    """``spec`` started through ``_ENTER_CGROUP`` (its program resolved first, so a missing one is
    still a start failure, not the shell's exit 127)."""
    program = _resolve_program(str(spec.argv[0]), spec.env.get("PATH"), str(spec.cwd))
    procs = [str(d / "cgroup.procs") for d in cgroup.dirs()]
    return dataclasses.replace(spec, argv=["/bin/sh", "-c", _ENTER_CGROUP, "iris-cgroup", *procs, "--", program,
                                           *spec.argv[1:]])


def _resolve_program(program: str, path_var: str | None, cwd: str) -> str:
    """The file ``execvpe`` would run for ``program`` with the task's PATH (a name with a '/' is
    used as given: exec resolves it after the chdir, as with ``subprocess``)."""
    if "/" in program:
        return program
    for directory in (path_var if path_var is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        check = candidate if os.path.isabs(candidate) else os.path.join(cwd, candidate)
        try:
            st = os.stat(check)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(check, os.X_OK):
            return check
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProcessRuntime:
    """Runs attempts as process groups; see the module docstring."""

    def __init__(
        self,
        memory_check_interval_s: float = 0.5,
        use_posix_spawn: bool = True,
        limits: CgroupLimits | None = None,
        deathwatch: DeathWatch | None = None,
    ) -> None:
        self._memory_check_interval_s = memory_check_interval_s
        self._limits = limits
        self._deathwatch = deathwatch
        """Told of each task's process group, to stop them if this worker dies (``deathwatch``)."""
        spawner = _PosixSpawn() if use_posix_spawn else None
        self._spawner = spawner if spawner is not None and spawner.available() else None
        self._lock = threading.Lock()
        self._by_key: dict[AttemptKey, _Running] = {}
        self._by_fd: dict[int, _Running] = {}
        self._pipes: dict[int, _Pipe] = {}
        """Read ends of the tasks' stdout and stderr, by fd (read on the reaper thread)."""
        self._closing: list[int] | None = None
        """While the reaper handles a batch of events: the descriptors to close after it."""
        self._stop = threading.Event()
        self._use_pidfd = hasattr(os, "pidfd_open") and hasattr(select, "epoll")
        self._epoll: select.epoll | None = None
        self._wake_r = self._wake_w = -1
        self._threads: list[threading.Thread] = []
        if self._use_pidfd:
            self._epoll = select.epoll()
            self._wake_r, self._wake_w = os.pipe()
            self._epoll.register(self._wake_r, select.EPOLLIN)
            reaper = threading.Thread(target=self._reap_loop, name="iris-runtime-reaper")
            reaper.start()
            self._threads.append(reaper)
        watchdog = threading.Thread(target=self._memory_loop, name="iris-runtime-memory")
        watchdog.start()
        self._threads.append(watchdog)

    @property
    def uses_posix_spawn(self) -> bool:
        """Whether processes start through ``posix_spawn`` (else ``subprocess.Popen``)."""
        return self._spawner is not None

    # -- public API ---------------------------------------------------------------------------

    def start(self, spec: ProcessSpec, on_exit: ExitCallback) -> int:
        if self._stop.is_set():
            raise OSError("runtime is closed")
        proc: subprocess.Popen[bytes] | None = None
        record_fd, record_size = -1, _RECORD_SIZE
        if spec.record_path is not None:
            # Recorded before the process exists, so that a worker killed between the start and
            # the pid record still leaves something to find its orphan by (see kill_orphans).
            record_fd, record_size = _write_pending_record(spec.record_path, spec.env)
        cgroup = None
        pipes: list[_Pipe] = []
        writers: list[int] = []
        try:  # whatever fails from here on undoes all of it
            if self._limits is not None and (spec.memory_limit_bytes > 0 or spec.cpu_limit > 0
                                             or self._limits.max_pids > 0):
                cgroup = self._limits.create(f"{spec.key[0]}.{spec.key[1]}", spec.cpu_limit,
                                             spec.memory_limit_bytes)
            if spec.log is not None:
                pipes, writers = _task_pipes(spec.log)
            # The task's process starts inside its cgroup: forked by this thread while the thread is
            # in it (cgroup v1), else through the shell of _ENTER_CGROUP (posix_spawn), else (Popen)
            # moved in just after.
            homes = (self._limits.enter_thread(cgroup)
                     if cgroup is not None and self._limits is not None and self._limits.thread_entry() else None)
            try:
                started = _wrapped(spec)
                if self._spawner is not None:
                    started = started if cgroup is None or homes is not None else _entering(started, cgroup)
                    pid = self._spawner.spawn(started, (writers[0], writers[1]) if writers else None)
                else:
                    proc = self._popen(started, (writers[0], writers[1]) if writers else None)
                    pid = proc.pid
            finally:
                if homes is not None:
                    CgroupLimits.leave_thread(homes)
                for w in writers:
                    os.close(w)
        except BaseException:
            for pipe in pipes:
                pipe.close()
            if cgroup is not None and self._limits is not None:
                self._limits.release(cgroup)
            if record_fd >= 0:
                os.close(record_fd)
            raise
        if self._deathwatch is not None:  # at once: a worker killed from here on must not leave it behind
            group = cgroup.memory_dir or cgroup.cpu_dir or cgroup.pids_dir if cgroup is not None else None
            self._deathwatch.track(pid, str(group) if group is not None else "")
        if cgroup is not None and self._limits is not None and homes is None:
            try:
                cgroup.add(pid)
            except OSError as e:
                # Its directory vanished (removed from outside): make the group again, once.
                cgroup.remove()
                try:
                    cgroup = self._limits.create(f"{spec.key[0]}.{spec.key[1]}", spec.cpu_limit,
                                                 spec.memory_limit_bytes)
                    if cgroup is None:
                        raise CgroupUnavailable(f"the group could not be made again after {e}")
                    cgroup.add(pid)
                    logger.warning("pid %d: its cgroup had vanished (%s); made it again", pid, e)
                except OSError as again:
                    # Never run a task without the limits it was promised: stop it, say why.
                    _killpg(pid, signal.SIGKILL)  # its own process group (setsid); nothing ran yet
                    _Running(spec=spec, pid=pid, proc=proc, on_exit=on_exit).wait()  # reaped, no zombie
                    if self._deathwatch is not None:
                        self._deathwatch.untrack(pid)
                    for pipe in pipes:
                        pipe.close()
                    if cgroup is not None:
                        self._limits.release(cgroup)
                    if record_fd >= 0:
                        os.close(record_fd)
                    raise CgroupUnavailable(f"could not put the task in a cgroup: {again}") from again
        running = _Running(spec=spec, pid=pid, proc=proc, on_exit=on_exit, cgroup=cgroup, pipes=pipes)
        if spec.record_path is not None:
            _write_record(spec.record_path, pid, record_size, attempt_marker(spec.env), record_fd)
        pidfd = -1
        if self._use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = -1
        running.pidfd = pidfd
        with self._lock:
            self._by_key[spec.key] = running
            if pidfd >= 0:
                self._by_fd[pidfd] = running
                for pipe in pipes:
                    self._pipes[pipe.fd] = pipe
        if pipes and pidfd >= 0 and self._epoll is not None:
            for pipe in pipes:
                self._epoll.register(pipe.fd, select.EPOLLIN)
        elif pipes:
            for pipe in pipes:  # no epoll: a reader thread per pipe
                threading.Thread(target=_read_until_eof, args=(pipe,), name=f"iris-log-{pid}", daemon=True).start()
        if pidfd >= 0 and self._epoll is not None:
            # epoll_ctl is safe while the reaper blocks in epoll_wait: it sees the new fd.
            self._epoll.register(pidfd, select.EPOLLIN)
        else:
            waiter = threading.Thread(target=self._wait_one, args=(running,), name=f"iris-wait-{pid}")
            waiter.start()
        return pid

    @staticmethod
    def _popen(spec: ProcessSpec, out_fds: tuple[int, int] | None = None) -> subprocess.Popen[bytes]:
        log_fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if out_fds is None else -1
        try:
            # start_new_session gives the attempt its own process group (setsid) without a
            # preexec_fn, so CPython can keep using its fast vfork/posix_spawn path.
            return subprocess.Popen(
                list(spec.argv),
                cwd=spec.cwd,
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=log_fd if out_fds is None else out_fds[0],
                stderr=subprocess.STDOUT if out_fds is None else out_fds[1],
                start_new_session=True,
                close_fds=True,
            )
        finally:
            if log_fd >= 0:
                os.close(log_fd)

    def kill(self, key: AttemptKey, grace_period_s: float) -> None:
        """SIGTERM, then SIGKILL after the grace, the attempt's process group *and* every process
        carrying its marker variables: a daemon that left the group (setsid, double fork) still
        carries them, so stopping a task stops every process it started."""
        with self._lock:
            running = self._by_key.get(key)
            if running is None:
                return
            pid = running.pid
            marker = attempt_marker(running.spec.env)
            if grace_period_s <= 0:
                _killpg(pid, signal.SIGKILL)
                _signal_marked(marker, signal.SIGKILL)
                return
            if running.spec.sandbox:
                # The task's group inside the sandbox (see ``sandbox``): SIGTERM to the outer bwrap
                # would end the namespace at once, without the grace.
                inner = inner_group(pid)
                _killpg(inner or pid, signal.SIGTERM)
                _signal_marked(marker, signal.SIGTERM, spare=pid)
            else:
                _killpg(pid, signal.SIGTERM)
                _signal_marked(marker, signal.SIGTERM)
            if running.kill_timer is None:
                timer = threading.Timer(grace_period_s, self._force_kill, args=(key, pid, marker))
                timer.name = f"iris-kill-{pid}"
                timer.daemon = True
                running.kill_timer = timer
                timer.start()

    def close(self, timeout_s: float = 10.0) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            pids = [r.pid for r in self._by_key.values()]
        for pid in pids:
            _killpg(pid, signal.SIGKILL)
        deadline = threading.Event()
        waited = 0.0
        while waited < timeout_s:
            with self._lock:
                if not self._by_key:
                    break
            deadline.wait(0.01)
            waited += 0.01
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        if self._deathwatch is not None:
            self._deathwatch.close()
        if self._limits is not None:
            self._limits.close()
        if self._epoll is not None:
            self._epoll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    # -- internals ----------------------------------------------------------------------------

    def _force_kill(self, key: AttemptKey, pid: int, marker: Mapping[str, str]) -> None:
        with self._lock:
            running = self._by_key.get(key)
            # Only while the leader is not reaped: its pid (== pgid) cannot have been reused.
            if running is not None and running.pid == pid:
                _killpg(pid, signal.SIGKILL)
        # Marked processes outlive their group's leader (daemons): the marker is unique to the attempt.
        _signal_marked(marker, signal.SIGKILL)

    def _reap_loop(self) -> None:
        assert self._epoll is not None
        while not self._stop.is_set():
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            # The descriptors this batch is done with are closed only after the whole batch: a number
            # closed mid-batch can be reused at once by a task starting on another thread, and a
            # later event of the same batch, still carrying the old number, would then be taken for
            # the new task's (SIGKILLing it as if it had exited, or closing its pipe before spawn).
            closing: list[int] = []
            self._closing = closing
            try:
                for fd, _ in events:
                    if fd == self._wake_r:
                        continue
                    pipe = self._pipes.get(fd)
                    if pipe is not None:
                        if not pipe.drain():
                            self._close_pipe(pipe)
                        continue
                    with self._lock:
                        running = self._by_fd.pop(fd, None)
                    if running is None:
                        continue
                    self._epoll.unregister(fd)
                    closing.append(fd)
                    self._finish(running)
            finally:
                self._closing = None
                for fd in closing:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _wait_one(self, running: _Running) -> None:
        running.wait()
        self._finish(running)

    def _close_pipe(self, pipe: _Pipe) -> None:
        """Called on the reaper thread only (which owns the pipes registered with epoll); the
        descriptor itself is closed at the end of the reaper's batch (``_reap_loop``)."""
        if self._pipes.get(pipe.fd) is not pipe:
            return  # closed already: its number may be a newer task's pipe now
        del self._pipes[pipe.fd]
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(pipe.fd)
        if self._closing is not None:
            pipe.flush()
            self._closing.append(pipe.fd)
        else:
            pipe.close()

    def _finish(self, running: _Running) -> None:
        pid = running.pid
        # Everything the task printed is in its log before its end is reported.
        for pipe in running.pipes:
            if self._pipes.get(pipe.fd) is pipe:  # by identity: a closed pipe's number may be reused
                pipe.drain()
                self._close_pipe(pipe)
        with self._lock:
            # The leader is a zombie until waited for, so the group id is still ours: kill
            # whatever it left behind (grandchildren must not outlive their task).
            _killpg(pid, signal.SIGKILL)
            self._by_key.pop(running.spec.key, None)
        if self._deathwatch is not None:
            self._deathwatch.untrack(pid)
            # A pending kill timer is left to fire: the leader is gone, but processes that left its
            # group (daemons ignoring SIGTERM) still get their SIGKILL when the grace ends.
        returncode = running.wait()
        if running.spec.sandbox:
            returncode = signal_from_status(returncode)
        cgroup = running.cgroup
        if cgroup is not None:
            if not running.limit_error and cgroup.oom_killed():
                running.limit_error = (
                    f"killed: out of memory, the task exceeded its limit of "
                    f"{format_size(running.spec.memory_limit_bytes)}"
                )
            if self._limits is not None:
                self._limits.release(cgroup)
        try:
            running.on_exit(
                ProcessExit(
                    key=running.spec.key, pid=pid, returncode=returncode, limit_error=running.limit_error
                )
            )
        except Exception:
            logger.exception("exit callback failed key=%s pid=%d", running.spec.key, pid)

    def _check_disk(self) -> None:
        """The disk watchdog: a task over its ``--disk`` request in its directories is killed."""
        with self._lock:
            limited = [r for r in self._by_key.values() if r.spec.disk_limit_bytes > 0 and not r.limit_error]
        for running in limited:
            used = disk_use(running.spec.disk_paths)
            limit = running.spec.disk_limit_bytes
            if used > limit:
                with self._lock:
                    if running.spec.key not in self._by_key:
                        continue
                    running.limit_error = (f"killed: disk use {format_size(used)} exceeded the task's --disk "
                                           f"request of {format_size(limit)} (its work directory)")
                    _killpg(running.pid, signal.SIGKILL)
                logger.warning("disk limit exceeded task=%s attempt=%d used=%d limit=%d", running.spec.key[0],
                               running.spec.key[1], used, limit)

    def _memory_loop(self) -> None:
        rounds = 0
        disk_every = max(1, round(DISK_CHECK_INTERVAL_S / self._memory_check_interval_s))
        while not self._stop.wait(self._memory_check_interval_s):
            rounds += 1
            if rounds % disk_every == 0:
                self._check_disk()
            with self._lock:
                limited = [
                    r
                    for r in self._by_key.values()
                    if r.spec.memory_limit_bytes > 0
                    and not r.limit_error
                    and (r.cgroup is None or r.cgroup.memory_dir is None)  # the kernel enforces those
                ]
            for running in limited:
                rss = _tree_rss(running.pid)
                limit = running.spec.memory_limit_bytes
                if rss > limit:
                    with self._lock:
                        if running.spec.key not in self._by_key:
                            continue
                        running.limit_error = f"killed: memory {format_size(rss)} exceeded the task's limit of {format_size(limit)}"
                        _killpg(running.pid, signal.SIGKILL)
                    logger.warning(
                        "memory limit exceeded task=%s attempt=%d rss=%d limit=%d",
                        running.spec.key[0],
                        running.spec.key[1],
                        rss,
                        limit,
                    )


def _read_until_eof(pipe: _Pipe) -> None:
    os.set_blocking(pipe.fd, True)
    while pipe.drain():
        pass
    pipe.close()


DISK_CHECK_INTERVAL_S = 5.0
"""How often the disk watchdog measures the directories of tasks with a ``--disk`` request."""


def disk_use(paths: Iterable[str]) -> int:
    """Bytes allocated to the files under ``paths`` (links not followed, each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        for root, dirs, files in os.walk(top):
            for name in files + dirs:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def _tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes (0 when it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def process_start_time(pid: int) -> str | None:
    """An opaque token for when ``pid`` started (its start time in clock ticks since boot), so
    a recorded pid can be told apart from a later process that reused it. None when gone.

    Reads ``/proc/<pid>/stat`` directly: psutil's create_time re-reads the boot time on every
    call, which is too slow for the per-task path.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        try:
            return repr(psutil.Process(pid).create_time())
        except psutil.Error:
            return None
    # Field 2 (comm) may contain spaces and ')' so split after its last ')'; starttime is field 22.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


_RECORD_SIZE = 256
"""Process records are padded to at least this many bytes (JSON ignores the trailing spaces)."""


def _write_record(path: Path, pid: int, size: int = _RECORD_SIZE, marker: Mapping[str, str] | None = None,
                  fd: int = -1) -> None:
    """Overwrite the pending record with the started process's pid and start time, through ``fd``
    (the pending record's, left open for this; closed here) or, when -1, by opening ``path``.

    One ``pwrite`` at offset 0 of at least the pending record's length, with no truncation: a worker
    killed at any point leaves either the whole pending record or the whole final one, never an
    empty or half-written file (which would hide the orphan from the next incarnation).
    """
    try:
        start = process_start_time(pid)
        if start is None:
            return
        fields: dict[str, object] = {"pid": pid, "start_time": start}
        if marker:
            fields["env"] = dict(marker)  # so a restarted worker also finds the attempt's escaped daemons
        record = json.dumps(fields).encode()
        if len(record) > size:  # cannot happen with the pending record's size; never truncate the pid
            size = len(record)
        if fd < 0:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(fd, record.ljust(size), 0)
    except OSError:
        logger.warning("could not write process record path=%s", path)
    finally:
        if fd >= 0:
            os.close(fd)


_MARKER_VARS = ("IRIS_WORKER_ID", "IRIS_TASK_ID", "IRIS_ATTEMPT_ID")
"""Environment variables that together name one attempt (set by the worker for every task)."""


def attempt_marker(env: Mapping[str, str]) -> dict[str, str]:
    """The marker variables of an attempt's environment ({} when it lacks any)."""
    marker = {name: env[name] for name in _MARKER_VARS if name in env}
    return marker if len(marker) == len(_MARKER_VARS) else {}


def marked_processes(marker: Mapping[str, str]) -> list[int]:
    """Pids of the processes whose environment carries ``marker`` (read from /proc directly: a kill
    path, not a hot one). Never this process."""
    if not marker:
        return []
    needles = [f"{k}={v}".encode() for k, v in marker.items()]
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                entries = set(f.read().split(b"\0"))
        except OSError:
            continue
        if all(n in entries for n in needles):
            found.append(int(name))
    return found


def _signal_marked(marker: Mapping[str, str], sig: int, spare: int = 0) -> None:
    for pid in marked_processes(marker):
        if pid == spare:
            continue
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _write_pending_record(path: Path, env: Mapping[str, str]) -> tuple[int, int]:
    """The record of a process about to start: the attempt's marker variables instead of a pid
    (only when the environment has them all). Returns its descriptor, left open for the final
    record (-1 when none was written), and its length (the final record covers it)."""
    marker = attempt_marker(env)
    if not marker:
        return -1, _RECORD_SIZE
    record = json.dumps({"pid": 0, "env": marker}).encode().ljust(_RECORD_SIZE)
    fd = -1
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, record)
    except OSError:
        logger.warning("could not write process record path=%s", path)
    return fd, len(record)


def _pending_groups(markers: list[dict[str, str]]) -> set[int]:
    """Process groups of the processes whose environment carries one of ``markers``."""
    groups: set[int] = set()
    for proc in psutil.process_iter():
        try:
            environ = proc.environ()
        except (psutil.Error, OSError):
            continue
        if any(all(environ.get(k) == v for k, v in marker.items()) for marker in markers):
            try:
                groups.add(os.getpgid(proc.pid))
            except OSError:
                continue
    groups.discard(os.getpgid(0))  # never our own group
    return groups


def kill_orphans(record_paths: Iterable[Path]) -> list[int]:
    """Kill the process groups recorded by a previous worker incarnation.

    A recorded group is only touched when its leader is still the recorded process (same pid
    and start time), or, when the leader is gone, only members whose process group id is the
    recorded pid. A record still pending (the worker died between starting the process and
    recording its pid) names the attempt by environment variables: the groups of the processes
    that carry them are killed. Returns the pids killed.
    """
    groups: set[int] = set()
    markers: list[dict[str, str]] = []
    for path in record_paths:
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
            env = record.get("env")
            if isinstance(env, dict) and env:
                # The attempt's marker: its processes that left the group (daemons) carry it too.
                markers.append({str(k): str(v) for k, v in env.items()})
            if pid == 0:
                continue
            recorded_start = str(record["start_time"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        current_start = process_start_time(pid)
        if current_start is not None and current_start != recorded_start:
            continue  # the pid now belongs to someone else
        groups.add(pid)
    if markers:
        groups |= _pending_groups(markers)
    if not groups:
        return []
    killed: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            pgid = os.getpgid(proc.pid)
        except OSError:
            continue
        if pgid in groups and proc.pid != os.getpid():
            try:
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc)
            except OSError:
                pass
    if killed:
        logger.warning("killed %d orphan process(es) from a previous worker: %s", len(killed),
                       [p.pid for p in killed])
        _wait_gone(killed, ORPHAN_WAIT_S)
    return [p.pid for p in killed]


ORPHAN_WAIT_S = 10.0


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> None:
    """Return once every process is gone or a zombie (SIGKILL is delivered asynchronously), so a
    caller that killed orphans can rely on them being dead. Bounded: gives up after ``timeout_s``.
    (They are not our children, so there is no wait(2) for them: poll.)"""

    def gone() -> bool:
        for proc in procs:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    try:
        wait_until(gone, timeout_s, interval=0.01)
    except TimeoutError:
        logger.warning("orphan process(es) still alive %ss after SIGKILL", timeout_s)
