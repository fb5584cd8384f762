"""``iris share`` (teams, shares and standings, like Slurm's ``sshare -l``), ``iris share reload``
(admin: apply a changed ``--sharing`` file) and ``iris queue`` (pending work in the order the
scheduler will consider it)."""

from __future__ import annotations

import click

from iris.cli.output import (
    connect,
    controller_option,
    handle_errors,
    human_ago,
    human_duration,
    json_option,
    make_table,
    now_ms,
    parse_duration,
    print_json,
    stdout_console,
    verbose_option,
)
from iris.cluster.types import format_size


def _amounts(amounts: dict[str, float], empty: str = "-") -> str:
    parts = []
    for key in sorted(amounts, key=lambda k: (k != "cpu", k != "memory", k)):
        value = amounts[key]
        if key == "memory":
            parts.append(f"mem {format_size(int(value))}")
        else:
            parts.append(f"{key} {value:g}")
    return ", ".join(parts) or empty


@click.group(invoke_without_command=True)
@controller_option
@json_option
@verbose_option
@click.pass_context
@handle_errors
def share(ctx: click.Context, controller: str, as_json: bool, verbose: bool) -> None:
    """Teams and users: guarantee, limit, weight, running use, decayed usage and standing (lower
    standing goes first within a priority band)."""
    if ctx.invoked_subcommand is not None:
        return
    with connect(controller) as client:
        teams, policy = client.shares()
    if as_json:
        print_json([t.to_dict() for t in teams])
        return
    half_life = human_duration(int(policy["half_life_ms"]) / 1000)  # type: ignore[call-overload]
    min_lease = human_duration(int(policy["min_lease_ms"]) / 1000)  # type: ignore[call-overload]
    pack_delay = human_duration(int(policy["pack_delay_ms"]) / 1000)  # type: ignore[call-overload]
    pack_max_wait = human_duration(int(policy["pack_max_wait_ms"]) / 1000)  # type: ignore[call-overload]
    after = int(policy["reserve_after_ms"])  # type: ignore[call-overload]
    first_in_line = f"; a job waiting over {human_duration(after / 1000)} is first in line for a reservation" if after else ""
    click.echo(f"sharing: {policy['source'] or 'built-in default (every user a team of one, equal weights)'}; "
               f"half-life {half_life}, minimum lease {min_lease}, "
               f"at most {policy['max_preemptions_per_minute']} preemptions a minute; whole workers kept for "
               f"whole work {pack_delay} across bands, {pack_max_wait} within one{first_in_line}")
    rows = []
    for t in teams:
        rows.append((t.team + (" (own)" if t.own else ""), f"{t.weight:g}", _amounts(t.guarantee),
                     _amounts(t.limit, "fleet"), _amounts(t.running), f"{t.usage:.1%}", f"{t.decayed_usage:.0f}",
                     f"{t.standing:.3f}" + (" *" if t.under_guarantee else ""), str(t.running_tasks),
                     str(t.pending_tasks)))
        if not t.own:
            for m in t.members:
                rows.append((f"  {m.user}", "", "", "", _amounts(m.running), f"{m.usage:.1%}", f"{m.decayed_usage:.0f}",
                             f"{m.standing:.3f}", str(m.running_tasks), str(m.pending_tasks)))
    stdout_console().print(make_table(("TEAM / USER", "WEIGHT", "GUARANTEE", "LIMIT", "RUNNING", "USE", "USAGE (share-s)",
                                       "STANDING", "TASKS", "PENDING"), rows))
    click.echo("* under its guarantee: served before teams over theirs, and may reclaim", err=True)


@share.command("reload")
@controller_option
@verbose_option
@handle_errors
def reload_cmd(controller: str, verbose: bool) -> None:
    """(admin) Read the controller's --sharing file again and apply it without a restart. Running
    work is counted again under it, never stopped by the reload; a bad file changes nothing."""
    with connect(controller) as client:
        source, teams = client.reload_sharing()
    click.echo(f"sharing reloaded from {source}: {teams} team{'s' if teams != 1 else ''}")


@click.group("queue", invoke_without_command=True)
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=1000, show_default=True,
              help="Show at most this many jobs.")
@controller_option
@json_option
@verbose_option
@click.pass_context
@handle_errors
def queue(ctx: click.Context, limit: int, controller: str, as_json: bool, verbose: bool) -> None:
    """Pending jobs in the order the scheduler will consider them: by priority band, then team and
    user standing (fair share), then submission."""
    if ctx.invoked_subcommand is not None:
        return
    with connect(controller) as client:
        entries, total = client.queue(limit)
    if as_json:
        print_json([e.to_dict() for e in entries])
        return
    rows = [(str(e.position), e.job_id, e.band, e.team, e.user, str(e.pending_tasks), human_ago(e.pending_since_ms),
             (e.reason or "-") + (f" [reserved: {', '.join(e.reserved_workers)}]" if e.reserved_workers else ""))
            for e in entries]
    stdout_console().print(make_table(("#", "JOB", "BAND", "TEAM", "USER", "TASKS", "WAITING SINCE", "REASON"), rows))
    if total > len(entries):
        click.echo(f"... and {total - len(entries)} more pending jobs (--limit)", err=True)


@queue.command("accuracy")
@click.option("--since", default="", help="Only jobs that started in the last DURATION (e.g. 1d, 6h).")
@controller_option
@json_option
@verbose_option
@handle_errors
def accuracy_cmd(since: str, controller: str, as_json: bool, verbose: bool) -> None:
    """How wrong the start-time estimates of `iris job why` were, once their jobs started: the
    median absolute error of the p50 start and how often the start fell inside the stated range."""
    since_ms = 0
    if since:
        try:
            since_ms = now_ms() - int(parse_duration(since) * 1000)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--since") from None
    with connect(controller) as client:
        figures = client.estimate_accuracy(since_ms)
    if as_json:
        print_json(figures)
        return
    if not figures["started"]:
        click.echo("No estimated job has started yet (estimates are given by `iris job why`).")
        return
    click.echo(f"{figures['started']} estimated jobs started: median absolute error "
               f"{human_duration(figures['median_abs_error_s'])}, {figures['in_range_ratio']:.0%} inside the stated range")
