"""``iris worker ...``: run a worker daemon."""

from __future__ import annotations

import click


@click.group()
def worker() -> None:
    """Run and inspect worker daemons."""
