"""``iris cluster start --local``: a controller and N workers on this machine until Ctrl+C."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from iris.cli.output import CPU

if TYPE_CHECKING:
    from iris.cluster.local import LocalCluster


@click.group()
def cluster() -> None:
    """Start clusters."""


@cluster.command("start")
@click.option("--local", "local", is_flag=True, required=True, help="Run the cluster on this machine.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option("--cpu-per-worker", type=CPU, default=None,
              help="Cores each worker offers (default: the detected cores split between the workers).")
@click.option("--memory-per-worker", default=None,
              help="Memory each worker offers, e.g. 4GiB (default: the detected memory split between the workers).")
@click.option("--port", default=0, show_default=True, type=int, help="Controller port (0: any free port).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the controller's state here (default: a temporary directory).")
@click.option("--auth", "auth_mode", type=click.Choice(["token", "none"]), default="token", show_default=True,
              help="token: the cluster requires tokens, and this command logs you in to it (the admin token is "
                   "stored for its address). none: authentication off (loopback only), with a warning.")
@click.option("--tls", is_flag=True, help="Make a CA and certificates; every process of the cluster speaks TLS.")
@click.option("--restart-workers/--no-restart-workers", default=True, show_default=True,
              help="When a worker dies, start a new one in its place after a few seconds (its tasks are retried "
                   "elsewhere meanwhile, as preemptions). Off: the cluster goes on without it.")
@click.option("--verbose", "-v", is_flag=True, help="Show a traceback when the cluster cannot start.")
def start(local: bool, workers: int, cpu_per_worker: float | None, memory_per_worker: str | None, port: int,
          state_dir: Path | None, auth_mode: str, tls: bool, restart_workers: bool, verbose: bool) -> None:
    """Start a local cluster, print its addresses, and stop everything it started on Ctrl+C / SIGTERM.

    With authentication on (the default) it stores the cluster's admin token as your login for the
    controller's address, so `iris ...` commands in another terminal work as they are."""
    from iris.client.credentials import forget_login, store_login
    from iris.cluster.local import LocalCluster, LocalClusterError
    from iris.cluster.types import parse_size

    if memory_per_worker is not None:
        try:
            parse_size(memory_per_worker, "--memory-per-worker")
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--memory-per-worker") from e
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if auth_mode == "none":
        click.echo("WARNING: authentication is off (--auth none): anyone on this machine can use the cluster",
                   err=True)
    local_cluster = LocalCluster(workers, cpu_per_worker=cpu_per_worker, memory_per_worker=memory_per_worker,
                                 controller_port=port, state_dir=state_dir, auth=auth_mode == "token", tls=tls)
    try:
        local_cluster.start()
    except LocalClusterError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        raise click.ClickException(str(e)) from e
    logged_in = False
    try:
        # Logged in before the address is shown: whoever reads it can use it at once.
        path = store_login(local_cluster.controller_address, local_cluster.admin_token) if (
            local_cluster.admin_token) else None
        logged_in = path is not None
        click.echo(f"controller: {local_cluster.controller_address}")
        if path is not None:
            click.echo(f"login:      admin token for {local_cluster.controller_address} stored in {path} "
                       f"(also in {local_cluster.state_dir / 'admin.token'})")
        if local_cluster.dashboard_url:
            click.echo(f"dashboard:  {local_cluster.dashboard_url}")
        click.echo(f"workers:    {', '.join(w.worker_id for w in local_cluster.workers)}")
        click.echo(f"logs:       {local_cluster.log_dir}")
        click.echo(f"export IRIS_CONTROLLER={local_cluster.controller_address}")
        if local_cluster.tls_ca is not None:
            click.echo(f"export IRIS_TLS_CA={local_cluster.tls_ca}")
        click.echo("Press Ctrl+C to stop.")
        supervise(local_cluster, stop, restart_workers)
    finally:
        click.echo("stopping the local cluster...", err=True)
        local_cluster.stop()
        if logged_in:
            forget_login(local_cluster.controller_address)  # the cluster and its tokens are gone


RESTART_DELAY_S = 3.0
"""How long a dead worker of a local cluster stays dead before a new one takes its place (its tasks
are retried elsewhere meanwhile, as on a real fleet)."""


def supervise(local_cluster: LocalCluster, stop: threading.Event, restart: bool) -> None:
    """Until ``stop``: a worker that dies is a preemption of its tasks, as on a real fleet; the
    cluster says so and, with ``restart``, starts a new worker (same id and directory, a new
    incarnation) after ``RESTART_DELAY_S``. The controller and the other workers go on."""
    from iris.cluster.local import LocalClusterError

    due: dict[int, float] = {}
    while not stop.wait(0.5):
        now = time.monotonic()
        for worker in local_cluster.workers:
            if worker.is_running():
                continue
            if worker.index not in due:
                code = worker.process.returncode if worker.process is not None else None
                then = f"; starting a new one in {RESTART_DELAY_S:g}s" if restart else "; not restarted"
                click.echo(f"worker {worker.worker_id} died (exit code {code}): its tasks are retried elsewhere "
                           f"as preemptions{then}", err=True)
                due[worker.index] = now + RESTART_DELAY_S if restart else float("inf")
            elif now >= due[worker.index]:
                try:
                    local_cluster.start_worker(worker.index)
                except LocalClusterError as e:
                    click.echo(f"worker {worker.worker_id} could not be restarted: {e}; trying again", err=True)
                    due[worker.index] = now + RESTART_DELAY_S
                    continue
                del due[worker.index]
                click.echo(f"worker {worker.worker_id} restarted at {worker.address}", err=True)
