"""``iris token ...`` (admin: create, list, revoke tokens) and ``iris login`` / ``iris logout``."""

from __future__ import annotations

import click

from iris.cli.output import (
    address_option,
    connect,
    controller_option,
    handle_errors,
    human_ago,
    json_option,
    make_table,
    print_json,
    stdout_console,
    verbose_option,
)
from iris.client.client import normalize_address
from iris.client.credentials import forget_login, read_token_file, store_login


@click.group()
def token() -> None:
    """Manage access tokens (admin only)."""


@token.command("create")
@click.option("--user", "user", required=True, help="Who the token is for (owns the jobs it submits).")
@click.option("--role", type=click.Choice(["user", "admin"]), default="user", show_default=True)
@click.option("--max-priority", type=click.Choice(["production", "interactive", "batch"]), default=None,
              help="The highest priority band its jobs may ask for (default: interactive for a user, production "
                   "for an admin).")
@controller_option
@json_option
@verbose_option
@handle_errors
def create_cmd(user: str, role: str, max_priority: str | None, controller: str, as_json: bool, verbose: bool) -> None:
    """Create a token and print it (it is shown once; the controller keeps only its hash)."""
    with connect(controller) as client:
        created = client.create_token(user, role, max_priority or "")
    if as_json:
        print_json({"token_id": created.token_id, "user": created.name, "role": created.role,
                    "max_priority": created.max_priority, "token": created.token})
    else:
        click.echo(created.token)
        click.echo(f"token {created.token_id} for {created.name} ({created.role}, up to {created.max_priority}); "
                   f"use it with `iris login --token-file FILE` or IRIS_TOKEN", err=True)


@token.command("list")
@controller_option
@json_option
@verbose_option
@handle_errors
def list_cmd(controller: str, as_json: bool, verbose: bool) -> None:
    """List tokens (never their values)."""
    with connect(controller) as client:
        tokens = client.list_tokens()
    if as_json:
        print_json([{"token_id": t.token_id, "user": t.name, "role": t.role, "max_priority": t.max_priority,
                     "created_at_ms": t.created_at_ms, "revoked": t.revoked} for t in tokens])
        return
    rows = [(t.token_id, t.name, t.role, t.max_priority, human_ago(t.created_at_ms),
             "revoked" if t.revoked else "active") for t in tokens]
    stdout_console().print(make_table(("ID", "USER", "ROLE", "MAX PRIORITY", "CREATED", "STATE"), rows))


@token.command("revoke")
@click.argument("token_id")
@controller_option
@verbose_option
@handle_errors
def revoke_cmd(token_id: str, controller: str, verbose: bool) -> None:
    """Revoke a token by its id: every call made with it is refused from now on."""
    with connect(controller) as client:
        client.revoke_token(token_id)
    click.echo(f"Revoked token {token_id}")


@click.command("login")
@click.option("--token-file", "login_file", type=click.Path(dir_okay=False), default=None,
              help="File holding the token (default: read it from standard input).")
@address_option
@verbose_option
@handle_errors
def login(login_file: str | None, controller: str, verbose: bool) -> None:
    """Check a token against the controller and remember it for this controller address."""
    from iris.client import IrisClient

    value = read_token_file(login_file) if login_file else click.prompt("Token", hide_input=True).strip()
    address = normalize_address(controller)
    with IrisClient(address, token=value) as client:
        me = client.whoami()
    path = store_login(address, value)
    click.echo(f"Logged in to {address} as {me.name} ({me.role}); token stored in {path}")


@click.command("logout")
@address_option
@verbose_option
@handle_errors
def logout(controller: str, verbose: bool) -> None:
    """Forget the stored token for this controller address."""
    address = normalize_address(controller)
    click.echo(f"Logged out of {address}" if forget_login(address) else f"No login stored for {address}")
