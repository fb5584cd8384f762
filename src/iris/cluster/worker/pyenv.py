"""A task's Python environment, built with uv from the job's workspace (``pyproject.toml`` +
``uv.lock``) and its ``--with`` packages, once per content and cached on the worker.

How a task's interpreter is chosen:

1. The workspace has ``pyproject.toml`` and ``uv.lock``, or the job asks for packages with
   ``--with``: the task runs in a virtual environment built by ``uv sync --frozen
   --no-install-project --no-dev`` (what the project needs to run: not its dev group, unless the
   job names groups with ``--env-group``; the project's own code runs from the workspace) plus
   ``uv pip install`` of the ``--with`` packages, with the worker's Python. It is built once per (lock, packages,
   Python) and kept under ``WORKDIR/envs/<hash>``; concurrent attempts (threads or other workers
   sharing the workdir) wait for the one build (a file lock). The build's output goes to the
   attempt's log (``[uv] ...`` lines, which the CLI folds into one progress line), ending with one
   ``[iris] ... ready`` summary; a failed build fails the task with uv's error.
2. Otherwise the worker's own interpreter.

Either way ``import iris`` works: a built environment gets a ``.pth`` file that appends the
worker's ``iris`` and its dependencies *after* the environment's own packages, so what the job
pinned wins over what Iris brought.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import iris

LOCK_FILE = "uv.lock"
PROJECT_FILE = "pyproject.toml"
READY = ".iris-ready"
BUILD_TIMEOUT_S = 1800.0


_SECRETS = ("IRIS_JOIN_TOKEN", "IRIS_TOKEN")
"""The worker's credentials: never in a build's environment."""


@dataclass(frozen=True, slots=True)
class Builder:
    """Who builds environments on a worker whose tasks run as other users (issue 23, item 3): an
    unprivileged uid that no task runs as, in a sandbox that sees the workspace, the environments
    directory (the only place it writes, with its own uv cache) and what the tasks see read-only.
    The environments are its files: tasks read them and cannot change them."""

    uid: int
    cache_dir: Path
    """Its uv cache (``UV_CACHE_DIR``)."""
    prefix: Callable[[Path], list[str]]
    """The argv prefix (sandbox, then the switch to ``uid``) for a build of that work directory."""

    def wrap(self, work_dir: Path) -> Callable[[list[str]], list[str]]:
        head = self.prefix(work_dir)
        return lambda argv: [*head, *argv]


class EnvBuildError(Exception):
    """The environment could not be built (the message holds uv's error)."""


@dataclass(frozen=True, slots=True)
class PythonEnv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"


def find_uv(configured: str | None = None) -> str | None:
    """The uv binary: ``--uv``, else ``$UV`` (set by ``uv run``), else on PATH, else beside the
    worker's Python."""
    for candidate in (configured, os.environ.get("UV"), shutil.which("uv"),
                      os.path.join(os.path.dirname(sys.executable), "uv")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def wants_env(work_dir: Path, with_packages: Sequence[str]) -> bool:
    return bool(with_packages) or ((work_dir / LOCK_FILE).is_file() and (work_dir / PROJECT_FILE).is_file())


def env_key(work_dir: Path, with_packages: Sequence[str], groups: Sequence[str] = ()) -> str:
    """What identifies an environment: the lock (and project file), the packages, the dependency
    groups, the Python."""
    digest = hashlib.sha256(b"no-dev\0")  # environments built before --no-dev are not reused
    for group in sorted(groups):
        digest.update(b"group\0" + group.encode() + b"\0")
    for name in (LOCK_FILE, PROJECT_FILE):
        path = work_dir / name
        digest.update(name.encode() + b"\0")
        if path.is_file() and (work_dir / LOCK_FILE).is_file():
            digest.update(path.read_bytes())
        digest.update(b"\0")
    for package in sorted(with_packages):
        digest.update(b"with\0" + package.encode() + b"\0")
    digest.update(sys.version.encode() + b"\0" + sys.executable.encode())
    return digest.hexdigest()[:32]


def ensure_env(
    envs_dir: Path,
    work_dir: Path,
    with_packages: Sequence[str],
    *,
    uv: str | None,
    groups: Sequence[str] = (),
    offline: bool = False,
    log: Callable[[str], None] = lambda line: None,
    builder: Builder | None = None,
) -> PythonEnv:
    """The environment for this workspace and packages, built now if it is not cached. Raises
    ``EnvBuildError`` with uv's error when it cannot be built. With ``builder``, uv runs as the
    builder's uid in its sandbox (a job's build code never runs as the worker)."""
    if uv is None:
        raise EnvBuildError("the job needs a Python environment (uv.lock or --with) but this worker has no uv "
                                "(install it, or give the worker --uv PATH)")
    key = env_key(work_dir, with_packages, groups)
    envs_dir.mkdir(parents=True, exist_ok=True)
    env = PythonEnv(envs_dir / key)
    if (env.root / READY).exists():
        log(f"[iris] using the cached Python environment {key}")
        return env
    with open(envs_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per key, across threads and processes
        if (env.root / READY).exists():
            log(f"[iris] using the Python environment {key} another attempt built")
            return env
        shutil.rmtree(env.root, ignore_errors=True)  # a build that died half-way
        try:
            _build(env, work_dir, with_packages, groups, uv, offline, log, builder)
        except BaseException:
            shutil.rmtree(env.root, ignore_errors=True)
            raise
        (env.root / READY).touch()
    return env


def _build(env: PythonEnv, work_dir: Path, with_packages: Sequence[str], groups: Sequence[str], uv: str,
           offline: bool, log: Callable[[str], None], builder: Builder | None = None) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV") and k not in _SECRETS}
    base["UV_PYTHON_DOWNLOADS"] = "never"
    wrap: Callable[[list[str]], list[str]] = lambda argv: argv  # noqa: E731
    if builder is not None:
        base.update({"UV_CACHE_DIR": str(builder.cache_dir), "HOME": "/tmp"})
        wrap = builder.wrap(work_dir)
    if offline:
        base["UV_OFFLINE"] = "1"
    python = sys.executable
    if (work_dir / LOCK_FILE).is_file() and (work_dir / PROJECT_FILE).is_file():
        # The dev group only when the job names it (uv's --no-dev would override --group dev).
        named = ([] if "dev" in groups else ["--no-dev"]) + [arg for group in groups for arg in ("--group", group)]
        log(f"[iris] building the Python environment from {LOCK_FILE} (uv sync --frozen {' '.join(named)})")
        installed = _run(wrap([uv, "sync", "--frozen", "--no-install-project", *named, "--python", python]),
                         work_dir, {**base, "UV_PROJECT_ENVIRONMENT": str(env.root)}, log, "uv sync --frozen")
    else:
        installed = _run(wrap([uv, "venv", "--python", python, str(env.root)]), work_dir, base, log, "uv venv")
    if with_packages:
        log(f"[iris] adding {', '.join(with_packages)} (--with)")
        installed += _run(wrap([uv, "pip", "install", "--python", str(env.python), *with_packages]), work_dir, base,
                          log, "uv pip install")
    _link_iris(env)
    log(f"[iris] the Python environment is ready ({installed} packages installed)")


def _run(argv: list[str], cwd: Path, env: dict[str, str], log: Callable[[str], None], what: str) -> int:
    """Run one uv command, its output to ``log``; returns how many packages it installed."""
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise EnvBuildError(f"{what} took longer than {BUILD_TIMEOUT_S:.0f}s") from None
    except OSError as e:
        raise EnvBuildError(f"{what} could not start: {e}") from None
    output = proc.stdout.decode("utf-8", "replace")
    for line in output.splitlines():
        log(f"[uv] {line}")
    if proc.returncode != 0:
        tail = "\n".join(line for line in output.splitlines() if line.strip())[-2000:]
        raise EnvBuildError(f"{what} failed (exit {proc.returncode}): {tail}")
    return sum(1 for line in output.splitlines() if line.startswith(" + "))


def _link_iris(env: PythonEnv) -> None:
    """Make ``iris`` (and what it needs) importable in the environment, after its own packages."""
    result = subprocess.run([str(env.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False, timeout=60)
    site = Path(result.stdout.decode().strip()) if result.returncode == 0 else None
    if site is None or not site.is_dir():
        raise EnvBuildError(f"cannot find the site-packages of {env.root}")
    paths: list[str] = [str(Path(iris.__file__).resolve().parent.parent)]
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in paths:
            paths.append(path)
    with contextlib.suppress(FileNotFoundError):
        (site / "zz_iris_worker.pth").unlink()
    (site / "zz_iris_worker.pth").write_text("".join(p + "\n" for p in paths))
