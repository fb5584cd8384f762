"""``iris endpoint ...``: named addresses registered by running tasks."""

from __future__ import annotations

import click

from iris.cli.output import (
    connect,
    controller_option,
    handle_errors,
    json_option,
    make_table,
    print_json,
    stderr_console,
    stdout_console,
    verbose_option,
)


@click.group()
def endpoint() -> None:
    """Look up endpoints that running tasks registered."""


@endpoint.command("list")
@controller_option
@click.argument("prefix", default="")
@json_option
@verbose_option
@handle_errors
def list_cmd(controller: str, prefix: str, as_json: bool, verbose: bool) -> None:
    """List endpoints whose name starts with PREFIX (default: all)."""
    with connect(controller) as client:
        endpoints = client.list_endpoints(prefix)
    if as_json:
        print_json([e.to_dict() for e in endpoints])
        return
    if not endpoints:
        stderr_console().print("No endpoints.")
        return
    rows = [
        (
            e.name,
            e.address,
            e.task_id,
            str(e.attempt_id),
            " ".join(f"{k}={v}" for k, v in sorted(e.metadata.items())) or "-",
        )
        for e in endpoints
    ]
    stdout_console().print(make_table(["NAME", "ADDRESS", "TASK", "ATTEMPT", "METADATA"], rows))
