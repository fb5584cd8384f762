"""``iris task ...``: the tasks of a job."""

from __future__ import annotations

import click
from rich.text import Text

from iris.cli.job import TASK_COLUMNS, task_rows, time_text
from iris.cli.output import (
    EXIT_USAGE,
    CliError,
    connect,
    controller_option,
    handle_errors,
    human_ago,
    json_option,
    make_table,
    print_json,
    span,
    stdout_console,
    styled_state,
    verbose_option,
)


@click.group()
def task() -> None:
    """Inspect the tasks of a job."""


@task.command("list")
@controller_option
@click.argument("job_id")
@json_option
@verbose_option
@handle_errors
def list_cmd(controller: str, job_id: str, as_json: bool, verbose: bool) -> None:
    """List a job's tasks: state, worker, attempts, exit code and error."""
    with connect(controller) as client:
        tasks = client.list_tasks(job_id)
    if as_json:
        print_json([t.to_dict() for t in tasks])
        return
    stdout_console().print(make_table(TASK_COLUMNS, task_rows(tasks)))


@task.command("status")
@controller_option
@click.argument("job_id")
@click.argument("index", type=int)
@json_option
@verbose_option
@handle_errors
def status_cmd(controller: str, job_id: str, index: int, as_json: bool, verbose: bool) -> None:
    """Show one task and every attempt it made."""
    if index < 0:
        raise CliError(f"INDEX: must be >= 0, got {index}", EXIT_USAGE)
    with connect(controller) as client:
        status = client.task_status(job_id, index)
    if as_json:
        print_json(status.to_dict())
        return
    out = stdout_console()
    out.print(make_table(TASK_COLUMNS, task_rows([status])))
    out.print(f"failure retries {status.failure_count}/{status.max_retries_failure} · preemption retries "
              f"{status.preemption_count}/{status.max_retries_preemption} · {time_text(status.time)}")
    if status.attempts:
        out.print()
        rows = [
            (
                str(a.attempt_id),
                styled_state(a.state),
                a.worker_id or "-",
                str(a.exit_code),
                human_ago(a.started_at_ms),
                span(a.started_at_ms, a.finished_at_ms),
                a.charged_to or "-",
                a.decided_by or "-",
                Text(("worker failure: " if a.is_worker_failure else "") + (a.error or "")),
            )
            for a in status.attempts
        ]
        out.print(make_table(["ATTEMPT", "STATE", "WORKER", "EXIT", "STARTED", "DURATION", "CHARGED TO", "DECIDED BY",
                              "ERROR"], rows))
