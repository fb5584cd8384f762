"""``iris worker ...``: run a worker daemon."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from iris.cli.output import CPU
from iris.cluster.types import parse_size

if TYPE_CHECKING:
    from iris.cluster.worker.sandbox import Sandbox


@click.group()
def worker() -> None:
    """Run and inspect worker daemons."""


@worker.command("serve")
@click.option("--controller", "controller_address", required=True, help="Controller address, HOST:PORT.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0: every interface); tasks bind it too (IRIS_BIND_HOST).")
@click.option("--advertise", "advertise", default=None, metavar="HOST",
              help="Address the controller and other tasks dial for this worker and its tasks "
                   "(IRIS_ADVERTISE_HOST). Default: the bound address, or the host's primary address "
                   "when bound to 0.0.0.0.")
@click.option("--port", default=0, show_default=True, type=int, help="Port to bind (0: any free port).")
@click.option("--cpu", type=CPU, default=None, help="Cores to offer: 8, or 1.5 (default: detected).")
@click.option("--memory", default=None, help="Memory to offer, e.g. 8GiB (default: detected).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for task attempts and cached bundles (default: $TMPDIR/iris-worker-<id>). Reuse it "
    "across restarts so a restarted worker kills what its previous incarnation left running.",
)
@click.option("--worker-id", default="", help="Worker id (default: random w-xxxxxxxx).")
@click.option(
    "--heartbeat-interval", default=1.0, show_default=True, type=float, help="Seconds between heartbeats."
)
@click.option(
    "--kill-grace", default=5.0, show_default=True, type=float, help="Seconds between SIGTERM and SIGKILL."
)
@click.option(
    "--cgroups/--no-cgroups",
    default=True,
    show_default=True,
    help="Limit each task's cpu and memory with a cgroup when a writable one exists (else a memory watchdog).",
)
@click.option(
    "--max-message-size",
    default=None,
    help="Largest gRPC message the worker receives (default 256MiB: what the controller may send in one "
    "dispatch). A task that needs more fails as a task error; the worker stays healthy.",
)
@click.option("--join-token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The cluster's join token (the controller writes it to STATE_DIR/join.token); default "
                   "$IRIS_JOIN_TOKEN. Exchanged at the first registration for a credential kept in the workdir.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Verify the controller's TLS certificate against this CA (default: plaintext).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Serve the worker's gRPC over TLS with this certificate (PEM; with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None, help="The key of --tls-cert.")
@click.option("--max-bundle-unpacked-size", default="2GiB", show_default=True,
              help="Largest size one attempt's workspace bundle may unpack to; over it the task fails.")
@click.option("--max-bundle-files", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Most files one workspace bundle may hold; over it the task fails.")
@click.option("--max-result-size", default="4MiB", show_default=True,
              help="Largest return value (pickled) a callable task may give back; over it the task fails.")
@click.option("--uv", "uv_path", default=None,
              help="The uv binary that builds task environments (jobs with uv.lock or --with); default: $UV, PATH.")
@click.option("--offline-envs", is_flag=True,
              help="Build task environments from uv's cache only (a worker without registry access).")
@click.option("--shared-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The controller's --shared-dir, mounted here at the same path: tasks get IRIS_CHECKPOINT_DIR.")
@click.option("--fence-after", type=click.FloatRange(min=1.0), default=None, metavar="SECONDS",
              help="Cut off from the controller this long, stop every task here (its retry runs elsewhere by "
                   "then). Default: the controller's liveness timeout for this worker x1.5, at least +10 s.")
@click.option("--port-range", default=None, metavar="FIRST-LAST",
              help="Ports the controller may give tasks here (named ports, a gang's rendezvous port); "
                   "default: up to 8192 just below the host's ephemeral range (ip_local_port_range).")
@click.option("--max-log-size", default="100MiB", show_default=True,
              help="Most of one attempt's output kept: its first and last halves, with a line saying what was dropped.")
@click.option("--task-user", default=None,
              help="Run every task as this one user (the worker must run as root) instead of each job "
                   "owner's uid from the controller (--task-uid-range).")
@click.option("--run-tasks-as-root", is_flag=True,
              help="A root worker runs tasks as root (unsafe: a task can then read the worker's credential "
                   "and other users' tasks). Default: each as its job owner's uid.")
@click.option("--max-task-pids", default=4096, show_default=True, type=click.IntRange(min=0),
              help="Most processes and threads one task may have at once (cgroup pids controller; 0: no limit). "
                   "Over it, fork and thread creation fail inside the task.")
@click.option("--builder-uid", default=199999, show_default=True, type=click.IntRange(min=1000),
              help="The uid that builds jobs' Python environments on a root worker (outside the controller's "
                   "--task-uid-range: no task runs as it); tasks can read the environments and not change them.")
@click.option("--unconfined", is_flag=True,
              help="Run tasks without the sandbox (bubblewrap: their own PID and mount namespaces, the "
                   "system read-only). Without this flag a worker refuses to start where it cannot make one.")
@click.option("--task-mount", "task_mounts", multiple=True, type=click.Path(exists=True, path_type=Path),
              metavar="PATH", envvar="IRIS_TASK_MOUNTS", show_envvar=True,
              help="A host path every task sees read-write at the same path (a dataset, a network file system); "
                   "repeatable (the variable: paths separated by ':'). Its permissions still apply: tasks run as "
                   "their owner's uid.")
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
@click.option("--verbose", "-v", is_flag=True, help="Log at DEBUG level (same as --log-level DEBUG).")
def serve(
    controller_address: str,
    host: str,
    advertise: str | None,
    port: int,
    cpu: float | None,
    memory: str | None,
    workdir: Path | None,
    worker_id: str,
    heartbeat_interval: float,
    kill_grace: float,
    cgroups: bool,
    max_message_size: str | None,
    join_token_file: Path | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_bundle_unpacked_size: str,
    max_bundle_files: int,
    max_result_size: str,
    uv_path: str | None,
    offline_envs: bool,
    max_log_size: str,
    shared_dir: Path | None,
    fence_after: float | None,
    port_range: str | None,
    task_user: str | None,
    run_tasks_as_root: bool,
    max_task_pids: int,
    builder_uid: int,
    unconfined: bool,
    task_mounts: tuple[Path, ...],
    log_level: str,
    verbose: bool,
) -> None:
    """Serve a worker until SIGTERM/SIGINT, then kill its tasks, report them and exit 0."""
    # Imported here so `iris --help` stays fast.
    import secrets
    import tempfile

    from iris.cluster.validation import DEFAULT_LIMITS, MAX_MESSAGE_BYTES
    from iris.cluster.worker.service import serve_worker
    from iris.cluster.worker.worker import WorkerConfig

    logging.basicConfig(level="DEBUG" if verbose else log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        memory_bytes = parse_size(memory, "--memory") if memory is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--memory") from e
    try:
        max_message_bytes = (
            parse_size(max_message_size, "--max-message-size") if max_message_size is not None else MAX_MESSAGE_BYTES
        )
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-message-size") from e
    if max_message_bytes < DEFAULT_LIMITS.max_task_request_bytes:
        logging.getLogger(__name__).warning(
            "--max-message-size %d is below the %d bytes one accepted task may need: such tasks will fail here",
            max_message_bytes, DEFAULT_LIMITS.max_task_request_bytes,
        )
    join_token = os.environ.get("IRIS_JOIN_TOKEN", "").strip()
    if join_token_file is not None:
        try:
            join_token = join_token_file.read_text().strip()
        except OSError as e:
            raise click.BadParameter(f"cannot read {join_token_file}: {e.strerror}",
                                     param_hint="--join-token-file") from None
    from iris.cluster.worker.prepare import RUN_AS_WORKER

    run_tasks_as, sandbox = _containment(task_user, run_tasks_as_root, unconfined, task_mounts)
    from iris.cluster.errors import InvalidArgument
    from iris.cluster.ports import default_port_range, ephemeral_range, parse_port_range

    try:
        ports = parse_port_range(port_range, "--port-range") if port_range is not None else default_port_range(
            ephemeral_range())
    except (InvalidArgument, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="--port-range") from None
    worker_id = worker_id or f"w-{secrets.token_hex(4)}"
    config = WorkerConfig(
        controller_address=controller_address,
        workdir=workdir if workdir is not None else Path(tempfile.gettempdir()) / f"iris-worker-{worker_id}",
        worker_id=worker_id,
        host=host,
        port=port,
        advertise_host=advertise,
        cpu=cpu,
        memory_bytes=memory_bytes,
        heartbeat_interval_s=heartbeat_interval,
        kill_grace_period_s=kill_grace,
        use_cgroups=cgroups,
        join_token=join_token,
        tls_ca=tls_ca,
        max_bundle_unpacked_bytes=_size(max_bundle_unpacked_size, "--max-bundle-unpacked-size"),
        max_bundle_files=max_bundle_files,
        max_result_bytes=_result_size(max_result_size),
        max_log_bytes=_size(max_log_size, "--max-log-size"),
        uv=uv_path,
        uv_offline=offline_envs,
        task_user=task_user,
        run_tasks_as=run_tasks_as,
        sandbox=sandbox,
        max_task_pids=max_task_pids,
        builder_uid=builder_uid if run_tasks_as != RUN_AS_WORKER else 0,
        shared_dir=shared_dir.resolve() if shared_dir is not None else None,
        port_range=ports,
        fence_after_s=fence_after,
    )
    stop = threading.Event()

    serving_ref: list[object] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if serving_ref:
            serving_ref[0].worker.begin_stop()  # type: ignore[attr-defined]
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert")
    serving = serve_worker(config, max_message_bytes=max_message_bytes, tls_cert=tls_cert, tls_key=tls_key)
    serving_ref.append(serving)
    click.echo(f"worker {serving.worker.worker_id} serving on {serving.address}")
    while not stop.wait(1.0):
        pass
    click.echo(f"worker {serving.worker.worker_id} shutting down", err=True)
    serving.stop()


def _containment(task_user: str | None, as_root: bool, unconfined: bool,
                 mounts: tuple[Path, ...]) -> tuple[str, Sandbox | None]:
    """Who tasks run as and their sandbox, from the flags (see ``iris.cluster.worker.sandbox``)."""
    import pwd

    from iris.cluster.worker.prepare import RUN_AS_OWNER, RUN_AS_TASK_USER, RUN_AS_WORKER
    from iris.cluster.worker.sandbox import SETPRIV, Sandbox, SandboxUnavailable

    log = logging.getLogger("iris.cluster.worker.worker")
    if task_user is not None and as_root:
        raise click.BadParameter("give --task-user or --run-tasks-as-root, not both", param_hint="--task-user")
    if os.geteuid() != 0:
        if task_user is not None:
            raise click.BadParameter("needs a worker running as root (it switches each task to that user)",
                                     param_hint="--task-user")
        run_as = RUN_AS_WORKER
        log.info("this worker is not root: tasks run as its own user (uid %d), apart from it only by the sandbox",
                 os.geteuid())
    elif as_root:
        run_as = RUN_AS_WORKER
        log.warning("--run-tasks-as-root: tasks run as root; a task can read this worker's credential and "
                    "other users' tasks")
    elif task_user is not None:
        try:
            pwd.getpwnam(task_user)
        except KeyError:
            raise click.BadParameter(f"no such user {task_user!r}", param_hint="--task-user") from None
        run_as = RUN_AS_TASK_USER
    else:
        run_as = RUN_AS_OWNER
    if run_as != RUN_AS_WORKER and not os.access(SETPRIV, os.X_OK):
        raise click.ClickException("setpriv (util-linux) is not installed: this worker cannot switch tasks to "
                                   "their users (install util-linux, or give --run-tasks-as-root)")
    if unconfined:
        log.warning("--unconfined: tasks run without a sandbox; they see this host's files and processes")
        return run_as, None
    try:
        return run_as, Sandbox.detect(mounts=[str(m) for m in mounts])
    except SandboxUnavailable as e:
        raise click.ClickException(f"cannot sandbox tasks here: {e}. Start the worker with --unconfined to run "
                                   "them without one") from None


def _result_size(value: str) -> int:
    from iris.cluster.rules import MAX_REQUEST_BYTES, MAX_RESULT_BYTES

    size = _size(value, "--max-result-size")
    if size > MAX_RESULT_BYTES:
        raise click.BadParameter(f"at most {MAX_RESULT_BYTES // (1 << 20)}MiB: a result travels in a report, and the "
                                 f"controller reads no request over {MAX_REQUEST_BYTES // (1 << 20)}MiB",
                                 param_hint="--max-result-size")
    return size


def _size(value: str, flag: str) -> int:
    try:
        return parse_size(value, flag)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None
