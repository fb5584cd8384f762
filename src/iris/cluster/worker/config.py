"""The worker daemon's settings (``iris worker serve`` flags) and what a task inherits from it."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from iris.cluster.logfile import DEFAULT_LOG_CAP_BYTES, Record
from iris.cluster.validation import DEFAULT_LIMITS, Limits
from iris.cluster.worker.prepare import (
    DEFAULT_MAX_BUNDLE_FILES,
    DEFAULT_MAX_BUNDLE_UNPACKED_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    RUN_AS_TASK_USER,
    RUN_AS_WORKER,
    PreparerConfig,
)
from iris.cluster.worker.sandbox import GPU_CONTROL_DEVICES, Sandbox

logger = logging.getLogger("iris.cluster.worker.worker")


CREDENTIAL_FILE = "credential"
"""The worker's own credential, in its workdir (mode 0600)."""
_WORKER_SECRETS = ("IRIS_JOIN_TOKEN", "IRIS_TOKEN")
"""The worker's credentials in its own environment: never passed on to a task."""


SIGNAL_SETTLE_S = 2.0
"""How long a task's death by SIGTERM/SIGKILL/SIGHUP/SIGINT waits to see whether its worker is being
stopped by the same signal (both die together when a batch system cancels the allocation)."""
SHUTDOWN_SIGNALS = frozenset({-signal.SIGTERM, -signal.SIGKILL, -signal.SIGHUP, -signal.SIGINT})


def task_base_env(tls_ca: Path | None = None) -> dict[str, str]:
    """The worker's environment minus its secrets; with TLS, the CA that verifies the controller
    (so a task's client reaches the controller as the worker does)."""
    env = {k: v for k, v in os.environ.items() if k not in _WORKER_SECRETS}
    # A task's `python` is the worker's own interpreter (which can import iris), whatever PATH the
    # worker was started with (`.venv/bin/iris worker serve` without `uv run` or an activated venv).
    bin_dir = os.path.dirname(sys.executable)
    path = env.get("PATH", os.defpath)
    if bin_dir and path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = bin_dir + os.pathsep + path
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    if tls_ca is not None:
        env["IRIS_TLS_CA"] = str(tls_ca.resolve())
    return env


def log_failure(future: Future[None]) -> None:
    """A launcher thread's exception is logged, never lost."""
    if not future.cancelled() and future.exception() is not None:
        logger.error("attempt launch failed", exc_info=future.exception())


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    controller_address: str
    """host:port of the controller's gRPC service."""
    workdir: Path
    """Attempt directories live in ``workdir/tasks``; bundles are cached in ``workdir/bundles``."""
    worker_id: str = ""
    """Empty: ``w-<random>``."""
    host: str = "127.0.0.1"
    """Address the worker's gRPC service binds, and tasks are told to bind (IRIS_BIND_HOST)."""
    port: int = 0
    """Port for the worker's gRPC service; 0 picks a free one."""
    advertise_host: str | None = None
    """What other hosts dial for this worker and its tasks (IRIS_ADVERTISE_HOST); None: the bound
    address, or the host's primary address when bound to 0.0.0.0 (``iris.cluster.addresses``)."""
    cpu: float | None = None
    """Cores to advertise; None: detected."""
    memory_bytes: int | None = None
    """Memory to advertise; None: detected."""
    heartbeat_interval_s: float = 1.0
    kill_grace_period_s: float = 5.0
    """Default time between SIGTERM and SIGKILL."""
    launcher_threads: int = 4
    """Threads that prepare and start attempts, so RunTask returns at once."""
    rpc_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    shutdown_flush_timeout_s: float = 5.0
    """On stop, how long to keep trying to deliver the final reports."""
    max_finished_attempts: int = 1000
    """Finished attempts kept for status and logs; older ones (and their directories) are dropped."""
    detect_gpus: bool = True
    use_cgroups: bool = True
    """Limit each task's cpu and memory with a cgroup when a writable one exists (else a watchdog)."""
    attributes: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    """The job rules the worker checks (the controller's, so it refuses nothing the controller took)."""
    join_token: str = ""
    """The cluster's join token (``--join-token-file`` / ``$IRIS_JOIN_TOKEN``); empty: no authentication
    (a controller run with ``--auth none``)."""
    tls_ca: Path | None = None
    """Verify the controller's certificate against this CA (None: plaintext)."""
    max_bundle_unpacked_bytes: int = DEFAULT_MAX_BUNDLE_UNPACKED_BYTES
    max_bundle_files: int = DEFAULT_MAX_BUNDLE_FILES
    task_user: str | None = None
    """Run tasks as this user (the worker must be root), so a task cannot read the worker's files."""
    run_tasks_as: str = RUN_AS_WORKER
    """``prepare.RUN_AS_OWNER`` / ``RUN_AS_TASK_USER`` / ``RUN_AS_WORKER`` (``iris worker serve``
    picks the owner's uid on a root worker)."""
    sandbox: Sandbox | None = None
    """Each task's sandbox (``Sandbox.detect``); None: unconfined."""
    builder_uid: int = 0
    """The uid that builds task environments (``--builder-uid``; 0: the worker itself)."""
    max_task_pids: int = 0
    """Each task's cap on processes and threads, through the cgroup ``pids`` controller
    (``--max-task-pids``; 0: none)."""
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    """The largest pickled return value of a callable task (``--max-result-size``)."""
    max_log_bytes: int = DEFAULT_LOG_CAP_BYTES
    """One attempt's log keeps at most this much: its first and last halves (``--max-log-size``)."""
    log_ship_interval_s: float = 1.0
    """How often running attempts' new log lines are shipped to the controller."""
    uv: str | None = None
    """The uv binary for jobs with ``uv.lock`` or ``--with`` (None: ``$UV``, PATH, beside Python)."""
    uv_offline: bool = False
    """Build task environments from uv's cache only (``--offline-envs``)."""
    shared_dir: Path | None = None
    """The directory mounted here at the same path as on the controller (``--shared-dir``): a task
    gets ``IRIS_CHECKPOINT_DIR`` only when its job's directory is under it."""
    def preparer(self, worker_id: str, advertise: str, has_gpus: bool) -> PreparerConfig:
        """What the attempt preparer needs of these settings."""
        from iris.cluster.addresses import is_wildcard
        from iris.cluster.worker.pyenv import find_uv

        return PreparerConfig(self.workdir, worker_id, self.controller_address, task_base_env(self.tls_ca),
                              has_gpus=has_gpus, bind_host="0.0.0.0" if is_wildcard(self.host) else self.host,
                              advertise_host=advertise, max_bundle_unpacked_bytes=self.max_bundle_unpacked_bytes,
                              max_bundle_files=self.max_bundle_files, task_user=self.task_user,
                              max_result_bytes=self.max_result_bytes, max_log_bytes=self.max_log_bytes,
                              uv=find_uv(self.uv), uv_offline=self.uv_offline, shared_dir=self.shared_dir,
                              run_tasks_as=self.run_tasks_as if self.task_user is None else RUN_AS_TASK_USER,
                              sandbox=self.sandbox, gpu_devices=GPU_CONTROL_DEVICES if has_gpus else (),
                              builder_uid=self.builder_uid)

    fence_after_s: float | None = None
    """Cut off from the controller this long, the worker stops its tasks (``--fence-after``); None:
    beyond the controller's liveness timeout for it (``link.fence_after``)."""
    port_range: tuple[int, int] | None = None
    """The ports (first, last; inclusive) the controller may give this worker's tasks (named ports,
    a gang's rendezvous port) (``--port-range``); None: chosen outside the host's ephemeral range
    (``iris.cluster.ports.default_port_range``)."""


@dataclass(frozen=True, slots=True)
class LogChunk:
    lines: list[Record]
    next_line: int
    attempt_finished: bool
    attempt_id: int
    next_offset: int = 0
