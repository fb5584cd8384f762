"""The ``iris`` command. Each command group lives in its own module and is thin over
``iris.client`` and ``iris.cluster``."""

from __future__ import annotations

import click

from iris.cli.cluster import cluster
from iris.cli.controller import controller
from iris.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Iris: run jobs of N tasks across a fleet of workers."""


cli.add_command(cluster)
cli.add_command(controller)
cli.add_command(worker)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
