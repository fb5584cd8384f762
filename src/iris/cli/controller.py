"""``iris controller ...``: run the controller."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import click

from iris.cluster.files import is_loopback, write_private
from iris.cluster.types import parse_size

if TYPE_CHECKING:
    from iris.cluster.controller.controller import Controller
    from iris.cluster.controller.provisioner import Provisioner

CONTROLLER_SWITCH_INTERVAL_S = 0.001
"""The controller daemon's GIL switch interval (Python's default is 5 ms). Heartbeats and reports
wait for the GIL behind whatever thread is building a big reply; a shorter slice bounds that wait
(measured in BENCHMARKS.md, "Reads")."""


@click.group()
def controller() -> None:
    """Run the controller."""


@controller.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--advertise", default=None, metavar="HOST",
              help="Address workers and clients dial (default: the bound address, or the host's primary "
                   "address when bound to 0.0.0.0).")
@click.option("--port", default=10000, show_default=True, type=int, help="gRPC port (0: any free port).")
@click.option("--heartbeat-port", default="0", show_default=True, metavar="PORT|off",
              help="Where workers heartbeat and report their tasks without gRPC's per-call cost (on --host, TLS "
                   "as the gRPC port; 0: any free port, told to workers when they register); off: by gRPC only.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("iris-state"),
    show_default=True,
    help="Directory of the durable state (SQLite).",
)
@click.option("--dashboard-port", default=0, show_default=True, type=int,
              help="HTTP dashboard port (0: any free port; -1: no dashboard).")
@click.option("--worker-timeout", default=10.0, show_default=True, type=float,
              help="Seconds without a heartbeat before a worker is declared dead (at least three of the "
                   "heartbeat intervals the fleet is asked for).")
@click.option("--max-heartbeat-rate", default=250.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Heartbeats per second the whole fleet may send: past RATE workers, each is asked to "
                   "heartbeat every WORKERS/RATE seconds (10,000 workers: every 40 s, declared dead after 120 s).")
@click.option("--read-share", default=0.25, show_default=True, type=click.FloatRange(min=0, max=64, min_open=True),
              help="Of one core, what reads (job lists and statuses, logs, the dashboard) may use over time, one "
                   "at a time: readers hammering the controller are slowed to it, heartbeats and dispatch never.")
@click.option("--max-replicas", default=100_000, show_default=True, type=int, help="Largest replicas accepted.")
@click.option("--max-termination-grace", default=600.0, show_default=True, type=click.FloatRange(min=0),
              help="The most SIGTERM-to-SIGKILL grace a job may ask for (--termination-grace), seconds.")
@click.option("--quarantine-after", default=5, show_default=True, type=click.IntRange(min=0),
              help="Quarantine a worker after this many attempts in a row of two owners' jobs fail quickly on it "
                   "while they succeed elsewhere (0: never; at most a tenth of the fleet at once).")
@click.option("--max-endpoints-per-task", default=16, show_default=True, type=click.IntRange(min=1),
              help="Endpoints one task attempt may hold at once.")
@click.option("--auth", "auth_mode", type=click.Choice(["token", "none"]), default="token", show_default=True,
              help="token: every call needs a token (DESIGN §7). none: anyone who can reach the port is admin "
                   "(refused unless bound to a loopback address).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Serve gRPC over TLS with this certificate (PEM; with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None, help="The key of --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Verify the workers' TLS certificates against this CA when calling them (default: plaintext).")
@click.option("--platform", type=click.Choice(["none", "slurm"]), default="none", show_default=True,
              help="Provision workers on this platform when pending tasks fit no worker (slurm: one sbatch "
                   "job per worker; needs --max-workers, --worker-cpus, --worker-memory).")
@click.option("--max-workers", type=click.IntRange(min=1), default=None,
              help="Most workers the platform may hold at once (pending allocations count).")
@click.option("--worker-cpus", type=click.IntRange(min=1), default=None, help="Cores of each provisioned worker.")
@click.option("--worker-memory", default=None, help="Memory of each provisioned worker, e.g. 8GiB.")
@click.option("--slurm-partition", default=None, help="Slurm partition for the workers (default: Slurm's default).")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds a provisioned worker may sit idle (or stay pending unneeded) before it is released.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True,
              help="Extra sbatch argument for every worker job, e.g. --sbatch-arg=--time=4:00:00 (repeatable).")
@click.option("--finished-job-ttl", type=click.FloatRange(min=0), default=7 * 24 * 3600.0, show_default=True,
              help="Seconds an ended job is kept (with its tasks, logs and results) before it is deleted; 0: forever.")
@click.option("--max-finished-jobs", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Most ended jobs kept; beyond it the oldest are deleted first (children with their parent); 0: no limit.")
@click.option("--max-log-size", default="100MiB", show_default=True,
              help="The controller's copy of one attempt's log keeps at most this much (its first and last halves).")
@click.option("--shared-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A directory mounted at the same path here and on every worker (NFS, say): each job gets "
                   "IRIS_CHECKPOINT_DIR under it, kept across attempts and workers, deleted with the job.")
@click.option("--max-reservations", type=click.IntRange(min=0), default=4, show_default=True,
              help="How many of the highest-ranked jobs that do not fit now hold room on the workers where they "
                   "can start earliest (so a big gang never starves behind small jobs); 0: none.")
@click.option("--sharing", "sharing_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Teams, shares and preemption (TOML; see the README). Without it every user is a team of one "
                   "with equal weight. `iris share reload` or SIGHUP applies a changed file.")
@click.option("--task-uid-range", default="200000-299999", show_default=True, metavar="FIRST-LAST",
              help="The uids tasks run as on root workers: each user gets one of their own at their first job, "
                   "the same on every worker, kept in the state dir.")
@click.option("--task-users", "task_users_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML map of Iris user = \"unix user\": their tasks run as that existing Unix user instead.")
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
@click.option("--verbose", "-v", is_flag=True, help="Log at DEBUG level (same as --log-level DEBUG).")
def serve(
    host: str,
    advertise: str | None,
    port: int,
    heartbeat_port: str,
    state_dir: Path,
    dashboard_port: int,
    worker_timeout: float,
    max_heartbeat_rate: float,
    read_share: float,
    max_replicas: int,
    max_termination_grace: float,
    quarantine_after: int,
    max_endpoints_per_task: int,
    auth_mode: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    platform: str,
    max_workers: int | None,
    worker_cpus: int | None,
    worker_memory: str | None,
    slurm_partition: str | None,
    idle_timeout: float,
    sbatch_args: tuple[str, ...],
    finished_job_ttl: float,
    max_finished_jobs: int,
    max_log_size: str,
    shared_dir: Path | None,
    max_reservations: int,
    sharing_file: Path | None,
    task_uid_range: str,
    task_users_file: Path | None,
    log_level: str,
    verbose: bool,
) -> None:
    """Serve the controller until SIGTERM/SIGINT, then flush its state and exit 0.

    On a fresh state dir it writes an admin token to STATE_DIR/admin.token and a worker join token
    to STATE_DIR/join.token (mode 0600)."""
    from iris.cluster.controller.controller import Controller, ControllerConfig
    from iris.cluster.controller.heap import HeapFreezer
    from iris.cluster.controller.service import ControllerServer
    from iris.cluster.controller.store import ControllerStore, StoreError
    from iris.cluster.validation import Limits

    logging.basicConfig(level="DEBUG" if verbose else log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(CONTROLLER_SWITCH_INTERVAL_S)
    if worker_timeout <= 0:
        raise click.BadParameter("must be > 0", param_hint="--worker-timeout")
    if heartbeat_port != "off" and not (heartbeat_port.isdigit() and int(heartbeat_port) <= 65535):
        raise click.BadParameter(f"a port 0..65535 or 'off', got {heartbeat_port!r}", param_hint="--heartbeat-port")
    if auth_mode == "none":
        if not is_loopback(host):
            raise click.BadParameter(f"--auth none is refused on {host}: bind a loopback address (127.0.0.1)",
                                     param_hint="--auth")
        click.echo("WARNING: authentication is off (--auth none): anyone who can reach the port is an admin",
                   err=True)
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert")
    if tls_cert is None and not is_loopback(host):
        click.echo(f"WARNING: serving on {host} without TLS: tokens travel in clear text (use --tls-cert/--tls-key)",
                   err=True)
    from iris.cluster.clock import SystemClock
    from iris.cluster.controller.backend import GrpcWorkerClients

    if platform == "none":
        given = [flag for flag, value in (("--max-workers", max_workers), ("--worker-cpus", worker_cpus),
                                          ("--worker-memory", worker_memory), ("--slurm-partition", slurm_partition))
                 if value is not None] + (["--sbatch-arg"] if sbatch_args else [])
        if given:
            raise click.BadParameter(f"{', '.join(given)} need a platform (--platform slurm)", param_hint="--platform")
    else:
        missing = [flag for flag, value in (("--max-workers", max_workers), ("--worker-cpus", worker_cpus),
                                            ("--worker-memory", worker_memory)) if value is None]
        if missing:
            raise click.BadParameter(f"--platform {platform} needs {', '.join(missing)}", param_hint="--platform")
        try:
            worker_memory_bytes = parse_size(worker_memory or "", "--worker-memory")
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--worker-memory") from None

    try:
        max_log_bytes = parse_size(max_log_size, "--max-log-size")
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-log-size") from None
    from iris.cluster.sharing import DEFAULT_SHARING, SharingConfigError, load_sharing

    try:
        sharing = load_sharing(sharing_file.resolve()) if sharing_file is not None else DEFAULT_SHARING
    except SharingConfigError as e:
        raise click.BadParameter(str(e), param_hint="--sharing") from None
    from iris.cluster.controller.uids import parse_task_users, parse_uid_range
    from iris.cluster.errors import InvalidArgument

    try:
        uid_range = parse_uid_range(task_uid_range)
    except InvalidArgument as e:
        raise click.BadParameter(str(e), param_hint="--task-uid-range") from None
    try:
        task_users = (parse_task_users(task_users_file.read_text(), str(task_users_file))
                      if task_users_file is not None else {})
    except OSError as e:
        raise click.BadParameter(f"{task_users_file}: cannot be read: {e.strerror}", param_hint="--task-users") from None
    except InvalidArgument as e:
        raise click.BadParameter(str(e), param_hint="--task-users") from None
    os.umask(0o077)  # everything the controller writes is its own (job environments, logs, tokens)
    lock = _lock_state_dir(state_dir)
    try:
        store = ControllerStore.open(state_dir)
        # Liveness counts from this start: workers get worker_timeout to report back.
        state = store.load(now_ms=SystemClock().now_ms())
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    config = ControllerConfig(worker_timeout_s=worker_timeout, max_heartbeat_rate=max_heartbeat_rate, limits=Limits(max_replicas=max_replicas),
                              auth=auth_mode == "token", max_termination_grace_s=max_termination_grace,
                              quarantine_after=quarantine_after, finished_job_ttl_s=finished_job_ttl,
                              max_endpoints_per_task=max_endpoints_per_task,
                              max_finished_jobs=max_finished_jobs, read_share=read_share,
                              shared_dir=shared_dir.resolve() if shared_dir is not None else None,
                              max_reservations=max_reservations, sharing=sharing,
                              sharing_file=sharing_file.resolve() if sharing_file is not None else None,
                              task_uid_range=uid_range, task_users=task_users)
    from iris.cluster.controller.logstore import LogStore

    ctrl = Controller(config, state=state, store=store, secret=_secret(state_dir),
                      worker_clients=GrpcWorkerClients(tls_ca=tls_ca),
                      log_store=LogStore(state_dir / "logs", cap_bytes=max_log_bytes))
    if config.auth:
        for role, value in ctrl.bootstrap_tokens().items():
            path = state_dir / ("admin.token" if role.value == "admin" else "join.token")
            write_private(path, value + "\n")
            click.echo(f"{'admin token' if role.value == 'admin' else 'worker join token'} written to {path}")
    _raise_open_file_limit()
    try:
        server = ControllerServer(ctrl, host, port, tls_cert=tls_cert, tls_key=tls_key, advertise=advertise,
                                  heartbeat_port=None if heartbeat_port == "off" else int(heartbeat_port))
    except (OSError, RuntimeError) as e:
        store.close()
        raise click.ClickException(f"cannot serve on {host}:{port}: {e}") from e
    if platform == "slurm":
        assert max_workers is not None and worker_cpus is not None
        ctrl.attach_provisioner(_slurm_provisioner(
            ctrl, state_dir, server.address, host, max_workers=max_workers, worker_cpus=worker_cpus,
            worker_memory_bytes=worker_memory_bytes, partition=slurm_partition, idle_timeout=idle_timeout,
            sbatch_args=sbatch_args, tls=(tls_cert, tls_key, tls_ca), auth=config.auth,
        ))
        click.echo(f"provisioning up to {max_workers} workers on slurm ({worker_cpus} cpus, {worker_memory} each)")
    dashboard = None
    if dashboard_port >= 0:
        from iris.cluster.controller.dashboard import Dashboard

        dashboard = Dashboard(ctrl, host, dashboard_port, tls_cert=tls_cert, tls_key=tls_key, advertise=advertise)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    reload = threading.Event()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    server.start()
    if dashboard is not None:
        dashboard.start()
    jobs = len(state.list_jobs())
    beats = f", heartbeat port {server.beats.port}" if server.beats is not None else ""
    click.echo(f"controller serving on {server.address} (state: {state_dir}, {jobs} jobs loaded{beats})", nl=True)
    if dashboard is not None:
        click.echo(f"dashboard on {dashboard.url}")
    # The state is loaded and served: from here on, what the process holds is kept out of full
    # garbage-collection passes (iris.cluster.controller.heap).
    heap = HeapFreezer(SystemClock())
    heap.tick()
    while not stop.wait(1.0):
        heap.tick()
        if reload.is_set():
            reload.clear()
            _reload_sharing(ctrl)
    click.echo("controller shutting down", err=True)
    if dashboard is not None:
        dashboard.stop()
    server.stop()
    lock.close()


def _reload_sharing(ctrl: Controller) -> None:
    """SIGHUP: apply a changed --sharing file (a bad one is logged and changes nothing)."""
    from iris.cluster.errors import IrisError

    try:
        config = ctrl.reload_sharing()
    except IrisError as e:
        logging.getLogger("iris.controller").error("sharing not reloaded: %s", e)
        return
    logging.getLogger("iris.controller").info("sharing reloaded from %s: %d teams", config.source, len(config.teams))


def _slurm_provisioner(ctrl: Controller, state_dir: Path, address: str, host: str, *, max_workers: int,
                       worker_cpus: int, worker_memory_bytes: int, partition: str | None, idle_timeout: float,
                       sbatch_args: tuple[str, ...], tls: tuple[Path | None, Path | None, Path | None],
                       auth: bool) -> Provisioner:
    from iris.cluster.clock import SystemClock
    from iris.cluster.controller.autoscaler import WorkerShape
    from iris.cluster.controller.provisioner import Provisioner, ProvisionerConfig, new_cluster_tag
    from iris.cluster.controller.slurm import SlurmConfig, SlurmPlatform

    tls_cert, tls_key, tls_ca = tls
    worker_args: tuple[str, ...] = ()
    if tls_cert is not None and tls_key is not None:
        # The workers serve with the controller's certificate and trust its CA (a shared filesystem,
        # or the same paths on every node).
        worker_args = ("--tls-cert", str(tls_cert.resolve()), "--tls-key", str(tls_key.resolve()))
    ca = tls_ca.resolve() if tls_ca is not None else None
    join_token = (state_dir / "join.token").read_text().strip() if auth else ""
    config = SlurmConfig(
        controller_address=address, cluster_tag=new_cluster_tag(_secret(state_dir)), worker_cpus=worker_cpus,
        worker_memory_bytes=worker_memory_bytes, partition=partition, sbatch_args=sbatch_args,
        worker_host="127.0.0.1" if is_loopback(host) else "0.0.0.0", join_token=join_token, tls_ca=ca,
        log_dir=(state_dir / "slurm").resolve(), worker_args=worker_args,
    )
    return Provisioner(ctrl, SlurmPlatform(config), ProvisionerConfig(
        WorkerShape(worker_cpus, worker_memory_bytes), max_workers=max_workers, idle_timeout_s=idle_timeout,
    ), SystemClock())


def _secret(state_dir: Path) -> bytes:
    """The controller's secret key (task tokens, its credential to workers): made once, kept 0600."""
    path = state_dir / "secret.key"
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    data = secrets.token_bytes(32)
    write_private(path, data)
    return data


def _lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the state dir so two controllers never write one database."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / "controller.lock", "wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise click.ClickException(f"another controller is using the state dir {state_dir}") from None
    return handle


def _raise_open_file_limit() -> None:
    """Three sockets per worker (its gRPC connection, its heartbeat-port connection, the controller's
    channel to it): take the hard limit on open files
    (the soft one is often 1,024, a fleet of 1,000 workers and their clients would exhaust it), as
    servers such as nginx do; as root, raise the hard limit to the kernel's ``fs.nr_open`` too (a
    hard limit of 20,000 left a 10,000-worker fleet's last connections refused)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = 1 << 20  # the kernel's usual fs.nr_open
    want = max(hard, ceiling) if hard != resource.RLIM_INFINITY else ceiling
    for limit in ((want, want), (hard, hard)) if hard != resource.RLIM_INFINITY else ((want, hard),):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)  # a raised hard limit needs root
            break
        except (ValueError, OSError):
            continue
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    logging.getLogger("iris.controller").info(
        "open-file limit %d: enough for about %d workers (each holds three sockets)", now, max(0, now - 1_000) // 3)
