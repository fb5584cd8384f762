"""Preparing an attempt to run: its directory, workspace bundle, environment, ports and argv.

``AttemptPreparer.prepare`` turns an accepted RunTask request into the ``ProcessSpec`` the runtime
starts. It owns the attempt directories under ``<workdir>/tasks`` (flat: one per attempt), the
bundle cache under ``<workdir>/bundles`` (fetched from the controller once per hash, appearing
atomically), and the named ports handed out to live attempts.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from iris.cluster.clock import SystemClock
from iris.cluster.logfile import DEFAULT_LOG_CAP_BYTES, AttemptLog
from iris.cluster.rules import MAX_RESULT_BYTES
from iris.cluster.types import format_size, task_state_name
from iris.cluster.worker.attempts import AttemptKey, TaskLaunch
from iris.cluster.worker.pyenv import Builder, EnvBuildError, ensure_env, wants_env
from iris.cluster.worker.runtime import PROCESS_RECORD, ProcessSpec, kill_orphans
from iris.cluster.worker.sandbox import Sandbox, TaskView, run_as_prefix

logger = logging.getLogger(__name__)
_LOG_TAIL_LINES = 5

TASK_SITE = str(Path(__file__).resolve().parent / "task_site")
"""On a coscheduled task's PYTHONPATH (last): its ``sitecustomize`` teaches JAX's cluster detection
about Iris gangs (``task_site/sitecustomize.py``)."""

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")
"""The thread pools of OpenMP (PyTorch, ...), MKL, OpenBLAS, numexpr, Accelerate and BLIS: sized to
the task's cpu request, as Ray sets ``OMP_NUM_THREADS``; without it every rank of a 4-rank job
starts a thread per core of the host and they fight (2x slower than torchrun, which sets 1)."""


def thread_env(cpu_millicores: int) -> dict[str, str]:
    """Each of ``THREAD_VARS`` = the cpu request rounded up to whole cores, at least 1."""
    threads = str(max(1, -(-cpu_millicores // 1000)))
    return dict.fromkeys(THREAD_VARS, threads)


def escape_task_id(task_id: str) -> str:
    """A task id as one directory name ("job/task-0" -> "job%2Ftask-0")."""
    return urllib.parse.quote(task_id, safe="")


def attempt_dir_name(task_id: str, attempt_id: int) -> str:
    """The directory of one attempt under ``<workdir>/tasks``: ``job%2Ftask-0.attempt-1``."""
    return f"{escape_task_id(task_id)}.attempt-{attempt_id}"


def process_records(tasks_dir: Path) -> Iterator[Path]:
    """The process records of every attempt directory under ``tasks_dir`` (to find orphans)."""
    return tasks_dir.glob(f"*.attempt-*/{PROCESS_RECORD}")


RUN_AS_OWNER = "owner"
RUN_AS_TASK_USER = "task-user"
RUN_AS_WORKER = "worker"


class PreparationError(Exception):
    """The attempt cannot be prepared (its workspace could not be fetched or unpacked)."""


DEFAULT_MAX_BUNDLE_UNPACKED_BYTES = 2 * 1024**3
"""What one attempt's workspace may unpack to (a 2 MB zip can expand to 2 GiB: never more than this)."""
DEFAULT_MAX_BUNDLE_FILES = 100_000
DEFAULT_MAX_RESULT_BYTES = MAX_RESULT_BYTES


_CLOCK = SystemClock()

@dataclass(frozen=True, slots=True)
class PreparerConfig:
    workdir: Path
    worker_id: str
    controller_address: str
    base_env: Mapping[str, str]
    has_gpus: bool = False
    bind_host: str = "127.0.0.1"
    """Where tasks bind their ports (IRIS_BIND_HOST)."""
    advertise_host: str = "127.0.0.1"
    """Where other hosts reach the tasks (IRIS_ADVERTISE_HOST)."""
    max_bundle_unpacked_bytes: int = DEFAULT_MAX_BUNDLE_UNPACKED_BYTES
    max_bundle_files: int = DEFAULT_MAX_BUNDLE_FILES
    task_user: str | None = None
    """Tasks run as this user: their attempt directories are handed to it."""
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    """The largest pickled return value of a callable (over it the task fails)."""
    max_log_bytes: int = DEFAULT_LOG_CAP_BYTES
    uv: str | None = None
    """The uv binary that builds Python environments (``pyenv.find_uv``); None: none found."""
    uv_offline: bool = False
    """Build environments from uv's cache only (a worker without registry access)."""
    shared_dir: Path | None = None
    """Mounted here as on the controller: a job's checkpoint dir under it is passed on to its tasks."""
    run_tasks_as: str = RUN_AS_WORKER
    """Who tasks run as: ``RUN_AS_OWNER`` (the uid the controller gave the job's owner),
    ``RUN_AS_TASK_USER`` (``task_user``) or ``RUN_AS_WORKER`` (the worker's own uid)."""
    sandbox: Sandbox | None = None
    """Each task in its own sandbox (``sandbox``); None: unconfined (``--unconfined``)."""
    gpu_devices: tuple[str, ...] = ()
    """Device nodes a task given GPUs also needs (NVIDIA's control devices)."""
    builder_uid: int = 0
    """The uid that builds Python environments when tasks run as other users (0: the worker)."""


class AttemptPreparer:
    def __init__(self, config: PreparerConfig, fetch_bundle: Callable[[str], bytes]) -> None:
        self._config = config
        self._fetch_bundle = fetch_bundle
        self.tasks_dir = config.workdir / "tasks"
        self.bundles_dir = config.workdir / "bundles"
        self.envs_dir = config.workdir / "envs"
        self._lock = threading.Lock()
        self._logs: dict[AttemptKey, AttemptLog] = {}
        self._ports_in_use: set[int] = set()
        self._bundle_locks: dict[str, threading.Lock] = {}
        self._dirs: dict[AttemptKey, Path] = {}
        self._uids: dict[AttemptKey, int] = {}
        """The uid of each attempt whose task runs as another user than the worker."""
        self._shm: dict[str, set[AttemptKey]] = {}
        """A job's /dev/shm on this host: the attempts that use it (removed with the last)."""
        self.shm_root = config.workdir / "shm"
        self._shm_of: dict[AttemptKey, str] = {}

    def attempt_dir(self, key: AttemptKey) -> Path:
        path = self._dirs.get(key)
        if path is None:  # computed once per attempt (quoting the id is not free at hundreds per second)
            path = self._dirs[key] = self.tasks_dir / attempt_dir_name(*key)
        return path

    def log_path(self, key: AttemptKey) -> Path:
        """Where output goes when the runtime cannot pipe it (``ProcessSpec.log`` is the log)."""
        return self.attempt_dir(key) / "output.log"

    def attempt_log(self, key: AttemptKey) -> AttemptLog:
        """The attempt's log (timestamped stdout and stderr lines, capped)."""
        with self._lock:
            log = self._logs.get(key)
            if log is None:
                log = self._logs[key] = AttemptLog(self.attempt_dir(key) / "logs", self._config.max_log_bytes)
            return log

    def own_dir(self, key: AttemptKey) -> Path:
        """Where the task leaves files for the worker (``callable.pkl``, ``error.txt``,
        ``result.pkl``): the attempt directory itself when the task runs as the worker, unconfined;
        else a directory of the task's own in it, so that the task can write nothing the worker
        keeps for itself (its process record, its log)."""
        return self.attempt_dir(key) / "task" if self._contained else self.attempt_dir(key)

    @property
    def _contained(self) -> bool:
        return self._config.sandbox is not None or self._config.run_tasks_as != RUN_AS_WORKER

    def error_path(self, key: AttemptKey) -> Path:
        return self.own_dir(key) / "error.txt"

    def result_path(self, key: AttemptKey) -> Path:
        """Where a callable's pickled return value is written (``callable_runner``)."""
        return self.own_dir(key) / "result.pkl"

    # -- ports --------------------------------------------------------------------------------

    def allocate_ports(self, names: Iterable[str]) -> dict[str, int]:
        """A free port for each name, unique among this worker's live attempts."""
        with self._lock:
            return {name: self._allocate_locked() for name in names}

    def _allocate_locked(self) -> int:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((self._config.bind_host, 0))
                port = int(s.getsockname()[1])
            if port not in self._ports_in_use:
                self._ports_in_use.add(port)
                return port

    def ports_held(self, ports: Iterable[int]) -> list[int]:
        """Which of ``ports`` something already holds where tasks bind (IRIS_BIND_HOST): a socket
        listening or bound without SO_REUSEADDR. Checked as a task's own bind would be, with
        SO_REUSEADDR, so a port merely in TIME_WAIT is free."""
        host = self._config.bind_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        held = []
        for port in ports:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as e:
                    if e.errno in (errno.EADDRINUSE, errno.EACCES):
                        held.append(port)
        return held

    def release_ports(self, ports: Iterable[int]) -> None:
        with self._lock:
            self._ports_in_use.difference_update(ports)

    def task_uid(self, key: AttemptKey) -> int:
        """The uid an attempt's files must belong to (its user's, else the worker's own)."""
        return self._uids.get(key, os.geteuid())

    def run_as(self, launch: TaskLaunch) -> tuple[int, int] | None:
        """The (uid, gid) an attempt runs as; None: as the worker. Raises PreparationError when the
        controller named a Unix user this host lacks, or sent no uid where one is needed."""
        mode = self._config.run_tasks_as
        if mode == RUN_AS_WORKER:
            return None
        name = self._config.task_user if mode == RUN_AS_TASK_USER else launch.run_as[1]
        if name:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise PreparationError(f"no Unix user {name!r} on this worker (the controller's --task-users "
                                       "maps the job's owner to it)") from None
            return entry.pw_uid, entry.pw_gid
        uid = launch.run_as[0]
        if uid <= 0:
            raise PreparationError("the controller sent no uid for this task, and this worker runs no task as "
                                   "root (a controller older than the worker? or start the worker with "
                                   "--run-tasks-as-root)")
        return uid, uid

    def read_result(self, key: AttemptKey, check_only: bool = False) -> bytes:
        """A callable attempt's pickled return value, read as a task's file is (``read_task_file``);
        raises TaskFileError saying what is wrong with it."""
        return read_task_file(self.result_path(key), self._config.max_result_bytes, self.task_uid(key),
                              what="result.pkl (the callable's return value)", check_only=check_only)

    def result_problem(self, key: AttemptKey) -> str:
        """Why a callable attempt that exited 0 did not succeed ("": its result is fine)."""
        try:
            self.read_result(key, check_only=True)  # read once, for the report
        except FileNotFoundError:
            return "result.pkl (the callable's return value): missing; the task removed it"
        except TaskFileError as e:
            return str(e)
        return ""

    def result_or_nothing(self, key: AttemptKey) -> bytes:
        """A succeeded callable's result for its report (b"" if it cannot be read safely any more)."""
        try:
            return self.read_result(key)
        except (OSError, TaskFileError) as e:
            logger.warning("task=%s attempt=%d: its result cannot be sent: %s", key[0], key[1], e)
            return b""

    def failure_error(self, key: AttemptKey, code: int, ports: Mapping[str, int] | None = None) -> str:
        """Why an attempt that exited with ``code`` failed: its error file (a callable's traceback;
        its last ``MAX_ERROR_BYTES``), else the code or signal and its last lines of output; and when
        one of its named ``ports`` is held by another process now that it ended, that another task
        on this host may have bound it first."""
        ports = ports or {}
        taken = self.ports_held(ports.values()) if ports else []
        note = "" if not taken else (
            f" [its port {', '.join(f'{name}={port}' for name, port in ports.items() if port in taken)} "
            "was in use by another process when it ended: another task on this host may have bound it first]")
        return self._failure_error(key, code) + note

    def _failure_error(self, key: AttemptKey, code: int) -> str:
        error_file = self.error_path(key)
        problem = ""
        try:
            text = read_task_file(error_file, MAX_ERROR_BYTES, self.task_uid(key), what="error.txt", tail=True)
            return text.decode(errors="replace")
        except FileNotFoundError:
            pass
        except TaskFileError as e:
            problem = f" ({e})"
        if code < 0:
            try:
                head = f"killed by signal {-code} ({signal.Signals(-code).name})"
            except ValueError:
                head = f"killed by signal {-code}"
        else:
            head = f"exit code {code}"
        head += problem
        log = self.attempt_log(key)
        records = log.read(log.tail_offset(_LOG_TAIL_LINES), _LOG_TAIL_LINES).records
        tail = "\n".join(r.text for r in records if r.source != "iris")[-4096:]
        return f"{head}; last output:\n{tail}" if tail else head

    def clear_previous_incarnation(self, incarnation: str) -> None:
        """Kill what a crashed earlier worker left running (its process records) and remove its
        attempt directories."""
        tasks_dir = self.tasks_dir
        if not tasks_dir.exists():
            return
        kill_orphans(process_records(tasks_dir))
        trash = self._config.workdir / f"tasks.old-{incarnation}"
        try:
            tasks_dir.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError:
            logger.warning("could not clear old task directories in %s", tasks_dir)

    # -- preparing ----------------------------------------------------------------------------

    def prepare(self, launch: TaskLaunch, ports: Mapping[str, int], gpus: list[int]) -> ProcessSpec:
        """Directories, workspace, environment and argv of one attempt. Raises PreparationError."""
        key: AttemptKey = launch.key
        spec = launch.spec
        entrypoint = spec.entrypoint
        attempt_dir = self.attempt_dir(key)
        work_dir = attempt_dir / "work"
        run_as = self.run_as(launch)
        _make_attempt_dirs(str(attempt_dir), str(work_dir))
        own_dir = self.own_dir(key)
        if own_dir != attempt_dir:
            own_dir.mkdir(mode=0o700, exist_ok=True)
        env = self._task_env(launch, ports, gpus)
        if spec.bundle_hash:
            try:
                self._install_bundle(spec.bundle_hash, work_dir)
            except Exception as e:
                raise PreparationError(f"bundle {spec.bundle_hash[:12]}: {e}") from e
            existing = env.get("PYTHONPATH")
            env["PYTHONPATH"] = f"{work_dir}{os.pathsep}{existing}" if existing else str(work_dir)
        python = sys.executable
        readable: list[str] = []
        if wants_env(work_dir, spec.with_packages):
            log = self.attempt_log(key)
            try:
                pyenv = ensure_env(self.envs_dir, work_dir, list(spec.with_packages), groups=spec.env_groups,
                                   uv=self._config.uv,
                                   offline=self._config.uv_offline, builder=self._builder(),
                                   log=lambda line: log.append_line(_CLOCK.now_ms(), "iris", line.encode()))
            except EnvBuildError as e:
                raise PreparationError(f"python environment: {e}") from e
            env["PATH"] = f"{pyenv.bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
            env["VIRTUAL_ENV"] = str(pyenv.root)
            python = str(pyenv.python)
            readable += [str(pyenv.root), os.path.dirname(os.path.dirname(os.path.realpath(pyenv.python)))]
        writable: list[str] = []
        if run_as is not None:
            self._uids[key] = run_as[0]
            _give_to(run_as, work_dir, own_dir)
            checkpoints = env.get("IRIS_CHECKPOINT_DIR")
            if checkpoints:
                _give_checkpoints(run_as, Path(checkpoints))
        if self._config.sandbox is not None and env.get("IRIS_CHECKPOINT_DIR"):
            writable.append(env["IRIS_CHECKPOINT_DIR"])
        sandbox: tuple[str, ...] = ()
        if self._config.sandbox is not None:
            env["HOME"] = "/tmp"  # the task's private /tmp: the worker's home is not in its view
            ca = env.get("IRIS_TLS_CA")
            if ca:
                readable.append(ca)
            devices = tuple(f"/dev/nvidia{i}" for i in gpus) + (self._config.gpu_devices if gpus else ())
            view = TaskView(work_dir, own_dir, self._job_shm(launch, run_as), tuple(writable), tuple(readable),
                            devices)
            sandbox = tuple(self._config.sandbox.prefix(view))
        if entrypoint.pickled:
            pickle_path = own_dir / "callable.pkl"
            pickle_path.write_bytes(entrypoint.pickled)
            argv = [python, "-m", "iris.cluster.worker.callable_runner", str(pickle_path),
                    str(self.error_path(key)), str(self.result_path(key)), str(self._config.max_result_bytes)]
        else:
            argv = list(entrypoint.argv)
        return ProcessSpec(
            key=key,
            argv=argv,
            cwd=work_dir,
            env=env,
            log_path=self.log_path(key),
            log=self.attempt_log(key),
            memory_limit_bytes=spec.resources.memory_bytes,
            cpu_limit=spec.resources.cpu_millicores,
            record_path=attempt_dir / PROCESS_RECORD,
            run_as=run_as,
            sandbox=sandbox,
            disk_limit_bytes=spec.resources.disk_bytes,
            disk_paths=(str(work_dir), str(own_dir)) if own_dir != attempt_dir else (str(work_dir),),
        )

    def _builder(self) -> Builder | None:
        """Who builds environments here (``pyenv.Builder``); None: the worker itself."""
        uid = self._config.builder_uid
        if not uid:
            return None
        cache = self._config.workdir / "uv-cache"
        for directory in (self.envs_dir, cache):
            directory.mkdir(mode=0o755, exist_ok=True)
            if directory.stat().st_uid != uid:
                os.chown(directory, uid, uid)
        sandbox = self._config.sandbox

        def prefix(work_dir: Path) -> list[str]:
            uv = (self._config.uv,) if self._config.uv else ()
            head = [] if sandbox is None else sandbox.prefix(TaskView(work_dir, self.envs_dir, writable=(str(cache),),
                                                                      readable=uv))
            return [*head, *run_as_prefix(uid, uid)]

        return Builder(uid, cache, prefix)

    def _job_shm(self, launch: TaskLaunch, run_as: tuple[int, int] | None) -> Path:
        """The job's /dev/shm on this host (made by its first attempt here, owned by its user)."""
        name = escape_task_id(f"{launch.job_id}.{launch.job_uid}")
        path = self.shm_root / name
        with self._lock:  # made and removed under the lock: the job's last attempt here may be ending
            self._shm.setdefault(name, set()).add(launch.key)
            self._shm_of[launch.key] = name
            self.shm_root.mkdir(mode=0o711, exist_ok=True)
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                pass
            else:
                if run_as is not None:
                    os.chown(path, *run_as)
        return path

    def _task_env(self, request: TaskLaunch, ports: Mapping[str, int], gpus: list[int]) -> dict[str, str]:
        env = dict(self._config.base_env)
        env.update(thread_env(request.spec.resources.cpu_millicores))  # the job's own values win (below)
        env.update(request.rendezvous_env)  # the controller left out the names the job sets itself
        env.update(request.spec.env)
        env.update(
            {
                "IRIS_JOB_ID": request.job_id,
                "IRIS_TASK_ID": request.task_id,
                "IRIS_TASK_INDEX": str(request.task_index),
                "IRIS_NUM_TASKS": str(request.num_tasks or 1),
                "IRIS_ATTEMPT_ID": str(request.attempt_id),
                "IRIS_WORKER_ID": self._config.worker_id,
                "IRIS_CONTROLLER_ADDRESS": self._config.controller_address,
                "IRIS_BIND_HOST": self._config.bind_host,
                "IRIS_ADVERTISE_HOST": self._config.advertise_host,
                "IRIS_BUNDLE_HASH": request.spec.bundle_hash,
            }
        )
        if request.task_token:
            env["IRIS_TOKEN"] = request.task_token  # this attempt's own, scoped token
        if request.attempt_id > 0 and request.previous_state:
            # Why the last attempt ended, so this one can resume or change course.
            env["IRIS_PREVIOUS_ATTEMPT_STATE"] = task_state_name(request.previous_state)
            env["IRIS_PREVIOUS_EXIT_CODE"] = str(request.previous_exit_code)
            env["IRIS_PREVIOUS_ERROR"] = request.previous_error
        checkpoints = request.checkpoint_dir
        shared = self._config.shared_dir
        if checkpoints and shared is not None and Path(checkpoints).is_relative_to(shared):
            env["IRIS_CHECKPOINT_DIR"] = checkpoints  # the same path on every worker, kept across attempts
        if "IRIS_COORDINATOR_ADDRESS" in env:  # a gang: jax.distributed.initialize() needs no arguments
            existing = env.get("PYTHONPATH")
            env["PYTHONPATH"] = f"{existing}{os.pathsep}{TASK_SITE}" if existing else TASK_SITE
        for name, port in ports.items():
            env[f"IRIS_PORT_{name.upper()}"] = str(port)
        if self._config.has_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
        return env

    # -- bundles ------------------------------------------------------------------------------

    def _install_bundle(self, bundle_hash: str, dest: Path) -> None:
        """Unpack a bundle, refusing one over the caps *before* writing anything (the sizes are the
        archive's declared ones, which zipfile also enforces while reading)."""
        with zipfile.ZipFile(self._bundle_path(bundle_hash)) as archive:
            members = archive.infolist()
            if len(members) > self._config.max_bundle_files:
                raise PreparationError(f"the workspace has {len(members):,} files, over this worker's cap of "
                                       f"{self._config.max_bundle_files:,} (--max-bundle-files)")
            total = sum(m.file_size for m in members)
            if total > self._config.max_bundle_unpacked_bytes:
                raise PreparationError(
                    f"the workspace unpacks to {format_size(total)}, over this worker's cap of "
                    f"{format_size(self._config.max_bundle_unpacked_bytes)} (--max-bundle-unpacked-size)"
                )
            archive.extractall(dest)

    def _bundle_path(self, bundle_hash: str) -> Path:
        """The cached zip for a hash, fetched from the controller once per hash. Concurrent
        callers in this process wait on a per-hash lock; the file appears atomically (rename),
        so other processes sharing the workdir never see a partial bundle."""
        bundle_hash = bundle_hash.lower()
        path = self.bundles_dir / f"{bundle_hash}.zip"
        with self._lock:
            lock = self._bundle_locks.setdefault(bundle_hash, threading.Lock())
        with lock:
            if path.exists():
                return path
            blob = self._fetch_bundle(bundle_hash)
            digest = hashlib.sha256(blob).hexdigest()
            if digest != bundle_hash:
                raise ValueError(f"fetched bundle has sha256 {digest}, expected {bundle_hash}")
            self.bundles_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
            return path

    # -- cleanup ------------------------------------------------------------------------------

    def release(self, key: AttemptKey) -> None:
        """The attempt ended: drop its working directory (the unpacked workspace and whatever the
        task left there), keeping its log for queries until ``discard``. Bounded space per attempt."""
        work_dir = os.path.join(self.attempt_dir(key), "work")
        try:
            os.rmdir(work_dir)  # most tasks leave nothing there: one syscall, not rmtree's walk
        except OSError:
            shutil.rmtree(work_dir, ignore_errors=True)
        with self._lock:
            name = self._shm_of.pop(key, None)
            users = self._shm.get(name, set()) if name is not None else set()
            users.discard(key)
            if name is not None and not users:
                self._shm.pop(name, None)
                shutil.rmtree(self.shm_root / name, ignore_errors=True)  # what the job left in /dev/shm

    def discard(self, key: AttemptKey) -> None:
        """Remove one attempt's directory (never the tasks directory itself). Most attempts leave
        only their process record there: an unlink and an rmdir, not rmtree's walk."""
        directory = str(self.attempt_dir(key))
        try:
            os.unlink(os.path.join(directory, PROCESS_RECORD))
        except OSError:
            pass
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError:  # a log, a result, a work directory left behind
            shutil.rmtree(directory, ignore_errors=True)
        self._dirs.pop(key, None)
        self._uids.pop(key, None)
        with self._lock:
            self._logs.pop(key, None)


def _make_attempt_dirs(attempt_dir: str, work_dir: str) -> None:
    """Create ``tasks/<task>.attempt-<n>/work`` with one mkdir per level (no stat calls, no pathlib).

    The layout is flat (no directory per task) because creating an inode is the dominant cost of
    starting a task on a busy ext4 disk."""
    try:
        os.mkdir(attempt_dir)
    except FileExistsError:
        pass
    except FileNotFoundError:  # the tasks directory itself is gone
        os.makedirs(work_dir, exist_ok=True)
        return
    try:
        os.mkdir(work_dir)
    except FileExistsError:
        pass


MAX_ERROR_BYTES = 16 * 1024
"""An attempt's error text keeps at most this much (the end of a callable's traceback): reports
stay small whatever a task writes."""


class TaskFileError(Exception):
    """A file a task left for the worker is not one it may read (not a regular file of the task's
    user, a link, a FIFO, too large)."""


def read_task_file(path: Path, cap: int, owner_uid: int, *, what: str, tail: bool = False,
                   check_only: bool = False) -> bytes:
    """Read a file from a task's directory without trusting it: opened without following links and
    without blocking (a FIFO cannot hold the worker), it must be a regular file owned by
    ``owner_uid``; at most ``cap`` bytes (``tail``: the last ``cap``; otherwise over it is an
    error; ``check_only``: only that, reading nothing). Raises FileNotFoundError when it is absent,
    TaskFileError when it may not be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TaskFileError(f"{what}: is a symbolic link; the worker does not follow a task's links") from None
        raise TaskFileError(f"{what}: cannot be read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TaskFileError(f"{what}: is not a regular file")
        if st.st_uid != owner_uid:
            raise TaskFileError(f"{what}: belongs to uid {st.st_uid}, not the task's ({owner_uid})")
        if st.st_size > cap and not tail:
            raise TaskFileError(f"{what}: {st.st_size} bytes, over the worker's cap of {cap}")
        if check_only:
            return b""
        if tail and st.st_size > cap:
            os.lseek(fd, st.st_size - cap, os.SEEK_SET)
        chunks: list[bytes] = []
        left = cap
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _give_to(run_as: tuple[int, int], *directories: Path) -> None:
    """Hand an attempt's work directory (and the workspace unpacked in it) and its own directory to
    the task's user, private to it (the attempt directory itself stays the worker's)."""
    uid, gid = run_as
    for directory in directories:
        os.chmod(directory, 0o700)
        for root, dirs, files in os.walk(directory):
            os.chown(root, uid, gid)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _give_checkpoints(run_as: tuple[int, int], directory: Path) -> None:
    """A job's checkpoint directory, made if missing and handed to its user (only the directory
    itself: what is in it is the job's already)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        st = directory.stat()
        if st.st_uid != run_as[0]:
            os.chown(directory, *run_as)
            os.chmod(directory, 0o700)
    except OSError as e:
        raise PreparationError(f"checkpoint directory {directory}: {e.strerror}") from None
