"""``iris run --local -- CMD``: start a local cluster, run one job on it as ``iris job run`` would,
stop the cluster and exit with the job's outcome."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.text import Text

from iris.cli.job import job_options, parse_job_request, run_and_follow
from iris.cli.output import (
    CPU,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    connect,
    controller_option,
    handle_errors,
    stderr_console,
    verbose_option,
)
from iris.client import IrisClient


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--local", is_flag=True, help="Start a throwaway cluster on this machine for this job.")
@click.option("--workers", default="2", show_default=True, help="Worker processes of the local cluster.")
@click.option("--cpu-per-worker", type=CPU, default=None, help="Cores each local worker offers (0.5 allowed).")
@click.option("--memory-per-worker", default=None, help="Memory each local worker offers, e.g. 4GiB.")
@controller_option
@job_options
@verbose_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def run(
    local: bool,
    workers: str,
    cpu_per_worker: float | None,
    memory_per_worker: str | None,
    controller: str,
    command: tuple[str, ...],
    verbose: bool,
    **flags: Any,
) -> None:
    """Run CMD as a job and exit with its outcome (0: SUCCEEDED).

    With --local, a controller and --workers workers start on this machine first and stop when
    the job ends; without it the job goes to --controller.

    \b
    Example:
        iris run --local --replicas 4 -- python -c "import os; print(os.environ['IRIS_TASK_INDEX'])"
    """
    request = parse_job_request(command, **flags)
    if not local:
        with connect(controller) as client:
            sys.exit(run_and_follow(client, request))
    try:
        num_workers = int(workers)
    except ValueError:
        raise CliError(f"--workers: expected a whole number, got {workers!r}", EXIT_USAGE) from None
    if num_workers < 1:
        raise CliError(f"--workers: must be >= 1, got {num_workers}", EXIT_USAGE)
    err = stderr_console()
    err.print(Text(f"Starting a local cluster with {num_workers} worker{'s' if num_workers != 1 else ''}..."))
    kwargs: dict[str, Any] = {}
    if cpu_per_worker is not None:
        kwargs["cpu_per_worker"] = cpu_per_worker
    if memory_per_worker is not None:
        kwargs["memory_per_worker"] = memory_per_worker
    code = EXIT_INTERRUPTED
    try:
        with IrisClient.local(workers=num_workers, **kwargs) as client:
            cluster = client.cluster
            dashboard = getattr(cluster, "dashboard_url", "")
            err.print(Text(f"Controller {client.address}" + (f", dashboard {dashboard}" if dashboard else "")))
            code = run_and_follow(client, request, local=True)
            err.print(Text("Stopping the local cluster..."))
    except KeyboardInterrupt:
        err.print(Text("Interrupted; the local cluster was stopped."))
        code = EXIT_INTERRUPTED
    sys.exit(code)
