"""The ``iris`` command. Each command group lives in its own module and is thin over
``iris.client`` and ``iris.cluster``."""

from __future__ import annotations

import click

from iris.cli.cluster import cluster
from iris.cli.controller import controller
from iris.cli.endpoint import endpoint
from iris.cli.job import job
from iris.cli.run import run
from iris.cli.share import queue, share
from iris.cli.task import task
from iris.cli.token import login, logout, token
from iris.cli.worker import worker
from iris.cli.worker_list import worker_drain, worker_list, worker_release


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iris", prog_name="iris", message="%(prog)s %(version)s")
def cli() -> None:
    """Iris: run jobs of N tasks across a fleet of workers."""


cli.add_command(cluster)
cli.add_command(controller)
cli.add_command(worker)
cli.add_command(job)
cli.add_command(task)
cli.add_command(endpoint)
cli.add_command(run)
cli.add_command(token)
cli.add_command(share)
cli.add_command(queue)
cli.add_command(login)
cli.add_command(logout)
worker.add_command(worker_list)
worker.add_command(worker_drain)
worker.add_command(worker_release)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
