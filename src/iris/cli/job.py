"""``iris job ...``: submit a job and stream its output, list jobs, inspect, read logs, stop."""

from __future__ import annotations

import json as _json
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from iris.cli.output import (
    CPU,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PLAIN_TABLE_ROWS,
    CliError,
    connect,
    controller_option,
    format_timestamp,
    handle_errors,
    human_ago,
    json_option,
    make_table,
    now_ms,
    one_line,
    parse_duration,
    print_json,
    print_table,
    size,
    span,
    stderr_console,
    stdout_console,
    styled_state,
    verbose_option,
)
from iris.client import (
    Entrypoint,
    InvalidRequestError,
    IrisClient,
    Job,
    JobState,
    JobStatus,
    LogLine,
    TaskLogLine,
    TaskState,
    TaskStatus,
    TimeSpent,
)
from iris.client.bundle import BUNDLE_MAX_SIZE_ENV, default_bundle_max_bytes
from iris.client.client import LogFollower, generate_job_name
from iris.client.models import parse_job_state
from iris.cluster.clock import SystemClock
from iris.cluster.spec import CLI_FIELDS, FIELDS_BY_NAME, LIST_FILTERS, JobSpec
from iris.cluster.types import JOB_STATES, GpuDevice, ResourceSpec, format_cpu, job_state_name, parse_size
from iris.cluster.validation import validate_job_spec

F = TypeVar("F", bound=Callable[..., Any])


# -- job flags shared by `iris job run` and `iris run` ------------------------------------------


def job_options(fn: F) -> F:
    """The flags that describe a job, shared by ``iris job run`` and ``iris run``: the job's shape
    (name, tasks, resources), its workspace, and one flag per job field that declares one
    (``iris.cluster.spec.FIELDS``: the flag, its help and parser come from the declaration)."""
    options = [
        click.option("--name", default=None, help="Job name (default: job-<time>-<random>)."),
        click.option("--replicas", "-n", default="1", show_default=True, help="Number of tasks."),
        click.option("--cpu", type=CPU, default="1", show_default=True, help="Cores per task: 2, 0.5 or 500m."),
        click.option("--memory", default=None, help="Memory per task, e.g. 512MiB or 2GiB."),
        click.option("--disk", default=None, help="Disk per task, e.g. 10GiB."),
        click.option("--gpu", default=None, help="GPUs per task: a count, or VARIANT:COUNT (H100:2)."),
    ]
    for f in CLI_FIELDS:
        cli = f.cli
        assert cli is not None
        names = [cli.flag, *([cli.short] if cli.short else []), f.name]
        if cli.is_flag:
            options.append(click.option(*names, is_flag=True, help=f.help))
        elif cli.multiple:
            options.append(click.option(*names, multiple=True, metavar=cli.metavar or None, help=f.help))
        else:
            options.append(click.option(*names, default=cli.default, show_default=cli.default is not None,
                                        metavar=cli.metavar or None, help=f.help))
    options += [
        click.option(
            "--workspace",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Directory to bundle as the tasks' working directory (default: current directory).",
        ),
        click.option("--no-bundle", is_flag=True, help="Do not ship the workspace; run in an empty directory."),
        click.option(
            "--bundle-max-size",
            default=None,
            help=f"Size cap of the workspace bundle (default ${BUNDLE_MAX_SIZE_ENV} or 25MiB).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass(frozen=True, slots=True)
class JobRequest:
    """Validated ``iris job run`` flags: the job's ``JobSpec`` (checked by the shared validator)
    and the workspace to ship with it. ``name`` None: the client generates one at submit."""

    spec: JobSpec
    workspace: Path | None
    bundle_max_bytes: int | None = None
    generate_name: bool = False

    @property
    def replicas(self) -> int:
        return self.spec.replicas

    def submit(self, client: IrisClient) -> Job:
        spec = self.spec
        if self.generate_name:
            spec = spec.replace(name=generate_job_name())
        # Inside a task, the job becomes a child of the task's job, as submit() makes it.
        return client.submit_spec(client.in_task(spec), workspace=self.workspace,
                                  bundle_max_bytes=self.bundle_max_bytes)


def _usage(message: str) -> CliError:
    return CliError(message, EXIT_USAGE)


def _whole(value: str, flag: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _usage(f"{flag}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise _usage(f"{flag}: must be >= {minimum}, got {number}")
    return number


def parse_job_request(command: Sequence[str], **flags: Any) -> JobRequest:
    """Turn the job flags and the command into a ``JobRequest``; bad input -> ``CliError``."""
    if not command or not command[0].strip():
        raise _usage("no command given; put it after --, e.g. iris job run -- python train.py")
    replicas = _whole(flags["replicas"], "--replicas", 1)
    cpu = flags["cpu"] if flags.get("cpu") is not None else 1
    memory: str | int = 0
    disk: str | int = 0
    try:
        if flags.get("memory"):
            memory = parse_size(flags["memory"], "--memory")
        if flags.get("disk"):
            disk = parse_size(flags["disk"], "--disk")
    except ValueError as e:
        raise _usage(str(e)) from None
    device: Any = None
    if flags.get("gpu"):
        variant, _, count_text = str(flags["gpu"]).rpartition(":")
        device = GpuDevice(variant=variant, count=_whole(count_text, "--gpu", 1))
    try:
        resources = (
            ResourceSpec(cpu=cpu, memory=memory, disk=disk, device=device, replicas=replicas)
            if device is not None
            else ResourceSpec(cpu=cpu, memory=memory, disk=disk, replicas=replicas)
        )
    except ValueError as e:
        raise _usage(str(e)) from None
    fields: dict[str, Any] = {}
    for f in CLI_FIELDS:
        assert f.cli is not None
        text = flags.get(f.name)
        if text is None or (f.cli.multiple and not text):
            continue
        try:
            fields[f.name] = f.cli.parse(text)
        except ValueError as e:
            raise _usage(str(e)) from None
    bundle_max_bytes: int | None = None
    if flags.get("bundle_max_size"):
        try:
            bundle_max_bytes = parse_size(flags["bundle_max_size"], "--bundle-max-size")
        except ValueError as e:
            raise _usage(str(e)) from None
    workspace: Path | None = None
    if not flags.get("no_bundle"):
        workspace = flags.get("workspace") or Path.cwd()
        if bundle_max_bytes is None:
            bundle_max_bytes = default_bundle_max_bytes()
    try:
        spec = validate_job_spec(JobSpec(
            name=flags.get("name") or "cli-job",
            entrypoint=Entrypoint.from_command(*command),
            resources=resources,
            replicas=replicas,
            **fields,
        ))
    except InvalidRequestError as e:
        raise _usage(str(e)) from None
    return JobRequest(spec, workspace, bundle_max_bytes, generate_name=not flags.get("name"))


# -- following a job ----------------------------------------------------------------------------

_PREFIX_COLORS = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green", "bright_magenta")


def counts_text(status: JobStatus) -> Text:
    """``RUNNING  2 running · 1 succeeded · 1 pending`` for the live line and summaries."""
    counts = status.counts
    parts = [
        (counts.pending, "pending", "yellow"),
        (counts.running, "running", "blue"),
        (counts.succeeded, "succeeded", "green"),
        (counts.failed, "failed", "red"),
        (counts.killed, "killed", "magenta"),
        (counts.worker_failed, "worker failed", "red"),
        (counts.unschedulable, "unschedulable", "red"),
    ]
    text = Text()
    text.append(f"{status.job_id} ", style="bold")
    text.append_text(styled_state(status.state))
    text.append(f"  {status.num_tasks} task{'s' if status.num_tasks != 1 else ''}:")
    shown = [(n, label, style) for n, label, style in parts if n]
    for i, (n, label, style) in enumerate(shown):
        text.append(" · " if i else " ")
        text.append(f"{n} {label}", style=style)
    if status.pending_reason and status.state is JobState.PENDING:
        text.append(f"  ({status.pending_reason})", style="dim")
    return text


@dataclass(slots=True)
class _TaskWatch:
    """What we last told the user about each task, to announce retries and endings once."""

    attempts: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)

    def changes(self, tasks: Sequence[TaskStatus]) -> list[Text]:
        notes: list[Text] = []
        for task in tasks:
            last_attempt = self.attempts.get(task.task_index, 0)
            if task.current_attempt_id > last_attempt:
                for attempt in task.attempts:
                    if last_attempt <= attempt.attempt_id < task.current_attempt_id:
                        why = attempt.error or (f"exit code {attempt.exit_code}" if attempt.exit_code else "")
                        kind = "worker failed" if attempt.is_worker_failure else attempt.state.value
                        note = Text(f"[{task.task_index}] attempt {attempt.attempt_id} {kind}", style="yellow")
                        if why:
                            note.append(f": {one_line(why)}")
                        note.append(f"; retrying as attempt {task.current_attempt_id}")
                        notes.append(note)
                self.attempts[task.task_index] = task.current_attempt_id
            if task.state.is_finished and task.task_index not in self.finished:
                self.finished.add(task.task_index)
                if task.state is not TaskState.SUCCEEDED:
                    note = Text(f"[{task.task_index}] ", style="red")
                    note.append_text(styled_state(task.state))
                    if task.exit_code:
                        note.append(f" (exit code {task.exit_code})")
                    if task.error:
                        note.append(f": {one_line(task.error)}")
                    notes.append(note)
        return notes


def follow_job(job: Job, *, show_logs: bool = True, task_indices: frozenset[int] | None = None) -> JobStatus:
    """Stream every task's output as ``[index] line`` with a live line of task-state counts
    (on a terminal), until the job finishes. Returns its final status."""
    out = stdout_console()
    err = stderr_console()
    watch = _TaskWatch()
    follower = LogFollower(job.client, job.job_id, task_indices)
    live: Live | None = None
    last_counts = [""]
    building: dict[int, int] = {}
    """Tasks whose Python environment is being built: the installer lines seen so far (folded into
    the live line; the whole output stays in the task's log: ``iris job logs``)."""

    def emit_line(line: TaskLogLine) -> None:
        prefix = Text(f"[{line.task_index}] ", style=_PREFIX_COLORS[line.task_index % len(_PREFIX_COLORS)])
        if line.line.source == "iris":  # Iris's own notes (building the environment): beside the output
            data = line.line.data
            if data.startswith("[uv] "):
                building[line.task_index] = building.get(line.task_index, 0) + 1
                return
            if "the Python environment is ready" in data or "using the" in data:
                building.pop(line.task_index, None)
            elif "building the Python environment" in data:
                building.setdefault(line.task_index, 0)
            _print(live.console if live is not None else err, prefix + Text(data, style="dim"))
            return
        text = prefix + Text(line.line.data)
        # On a terminal the lines go above the live status line; redirected, they go to stdout.
        _print(live.console if live is not None and out.is_terminal else out, text)

    def on_status(status: JobStatus) -> None:
        for note in watch.changes(status.tasks):
            _print(live.console if live is not None else err, note)
        if show_logs:
            for line in follower.poll(status.tasks, final=status.is_finished):
                emit_line(line)
        summary = counts_text(status)
        if building and not status.is_finished:
            lines = sum(building.values())
            summary.append(f"  building the Python environment of {len(building)} task"
                           f"{'s' if len(building) != 1 else ''} ({lines} installer lines)", style="dim")
        if live is not None:
            live.update(summary)
        elif summary.plain != last_counts[0] and not status.is_finished:
            _print(err, summary)
        last_counts[0] = summary.plain

    stop = threading.Event()
    if err.is_terminal:
        with Live(
            Text(f"{job.job_id} submitted"),
            console=err,
            transient=True,
            refresh_per_second=8,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live_display:
            live = live_display
            status = job.follow(None, on_status, include_tasks=True, stop=stop)
    else:
        status = job.follow(None, on_status, include_tasks=True, stop=stop)
    return status


def _print(console: Console, text: Text) -> None:
    console.print(text, soft_wrap=True, markup=False, highlight=False)
    console.file.flush()


def final_summary(status: JobStatus) -> Text:
    counts = status.counts
    text = Text()
    text.append(f"job {status.job_id} ")
    text.append_text(styled_state(status.state))
    text.append(f": {counts.succeeded}/{status.num_tasks} tasks succeeded")
    if counts.failed and status.state is JobState.SUCCEEDED:
        text.append(f", {counts.failed} failed (tolerated, max_task_failures={status.max_task_failures})")
    if status.started_at_ms:
        text.append(f" in {span(status.started_at_ms, status.finished_at_ms)}")
    return text


def run_and_follow(client: IrisClient, request: JobRequest, *, wait: bool = True, local: bool = False) -> int:
    """Submit, stream until done and print the outcome. Returns the process exit code."""
    err = stderr_console()
    job = request.submit(client)
    if job.warning:
        _print(err, Text(f"Warning: {job.job_id}: {job.warning}; it waits until such a worker joins "
                         "(--scheduling-timeout ends it sooner)", style="yellow"))
    if not wait:
        click.echo(job.job_id)
        return 0
    _print(err, Text(f"Submitted job {job.job_id} ({request.replicas} task{'s' if request.replicas != 1 else ''})"))
    try:
        status = follow_job(job)
    except KeyboardInterrupt:
        if local:
            _print(err, Text("Interrupted; stopping the local cluster and its tasks."))
        else:
            _print(err, Text(f"Stopped following {job.job_id}; it keeps running. Stop it with: iris job stop {job.job_id}"))
        return EXIT_INTERRUPTED
    if status.state is JobState.SUCCEEDED:
        _print(err, final_summary(status))
        return 0
    message = f"job {status.job_id} {status.state.value}"
    if status.error:
        message += f": {one_line(status.error, 300)}"
    _print(err, Text(f"Error: {message}", style="red"))
    return EXIT_ERROR


# -- commands -----------------------------------------------------------------------------------


@click.group()
def job() -> None:
    """Submit, inspect and stop jobs."""


@job.command(
    "run",
    # The command starts at the first argument that is not an option (or after --); an unknown
    # option before it is a usage error with a suggestion, never the start of the command.
    context_settings={"allow_interspersed_args": False},
)
@controller_option
@job_options
@click.option("--no-wait", is_flag=True, help="Print the job id and return without waiting.")
@verbose_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def run_cmd(controller: str, command: tuple[str, ...], no_wait: bool, verbose: bool, **flags: Any) -> None:
    """Submit CMD as a job of --replicas tasks and stream their output.

    The current directory is bundled and becomes each task's working directory (--no-bundle to
    skip). Exits 0 when the job SUCCEEDED, 1 otherwise.

    \b
    Example:
        iris job run --replicas 4 -- python train.py --epochs 3
    """
    request = parse_job_request(command, **flags)
    with connect(controller) as client:
        code = run_and_follow(client, request, wait=not no_wait)
    sys.exit(code)


def list_filter_options(fn: F) -> F:
    """One repeatable flag per job field declared filterable (``iris.cluster.spec.LIST_FILTERS``)."""
    for f in reversed(LIST_FILTERS.values()):
        assert f.list_filter is not None
        fn = click.option(f.list_filter.flag, f.name, multiple=True, metavar=f.list_filter.metavar,
                          help=f.list_filter.help)(fn)
    return fn


@job.command("list")
@controller_option
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable), e.g. running.")
@click.option("--prefix", default="", help="Only jobs whose id starts with this.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Show the newest N jobs.")
@click.option("--all", "show_all", is_flag=True, help="Show every job (overrides --limit).")
@click.option("--user", "user", default="", help="Another user's jobs (without their error text unless yours).")
@click.option("--all-users", is_flag=True, help="Everyone's jobs (others' without their error text).")
@list_filter_options
@json_option
@verbose_option
@handle_errors
def list_cmd(controller: str, states: tuple[str, ...], prefix: str, limit: int, show_all: bool, user: str,
             all_users: bool, as_json: bool, verbose: bool, **where: tuple[str, ...]) -> None:
    """List your jobs, newest first (the newest 50 unless --limit or --all); --user U or
    --all-users for others'."""
    try:
        wanted = [parse_job_state(s) for s in states]
    except ValueError as e:
        raise _usage(str(e)) from None
    with connect(controller) as client:
        # One more than shown tells whether there are more.
        # The wire's messages: a 25,000-job table converts none of them to models.
        protos = client.list_job_protos(wanted or None, prefix=prefix, limit=None if show_all else limit + 1,
                                        newest_first=True, where={k: v for k, v in where.items() if v},
                                        user=user, all_users=all_users)
    more = not show_all and len(protos) > limit
    protos = protos if show_all else protos[:limit]
    if as_json:
        print_json([JobStatus.from_proto(j).to_dict() for j in protos])
        return
    if not protos:
        stderr_console().print("No jobs.")
        return
    plain = len(protos) > PLAIN_TABLE_ROWS or not sys.stdout.isatty()  # no rich Text per row for long lists
    names = {value: job_state_name(value) for value in JOB_STATES}
    now = now_ms()
    rows = [
        (
            j.job_id,
            names[j.state] if plain else styled_state(names[j.state]),
            f"{j.tasks_succeeded}/{j.num_tasks}",
            human_ago(j.submitted_at_ms, now),
            span(j.started_at_ms, j.finished_at_ms, now),
            one_line(j.error or j.pending_reason, 80),
        )
        for j in protos
    ]
    print_table(["JOB", "STATE", "DONE", "SUBMITTED", "DURATION", "ERROR"], rows)
    if more:
        stderr_console().print(f"Showing the newest {limit} jobs; --limit N or --all for more.")


def time_text(t: TimeSpent) -> str:
    """``pending 3s · useful 1m 2s · lost 40s (failures 30s, preemptions 10s, gang 0s)``."""
    lost = t.lost_failure + t.lost_preemption + t.lost_gang
    return (f"pending {seconds_text(t.pending)} · useful {seconds_text(t.useful)} · lost {seconds_text(lost)} "
            f"(failures {seconds_text(t.lost_failure)}, preemptions {seconds_text(t.lost_preemption)}, "
            f"gang restarts {seconds_text(t.lost_gang)})")


def seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest}s"
    return f"{minutes // 60}h {minutes % 60}m"


def task_rows(tasks: Sequence[TaskStatus]) -> list[tuple[str | Text, ...]]:
    rows: list[tuple[str | Text, ...]] = []
    for t in tasks:
        rows.append(
            (
                str(t.task_index),
                styled_state(t.state),
                t.worker_id or "-",
                t.worker_address or "-",
                str(t.num_attempts),
                # A KILLED task's code is the signal Iris sent, not the task's answer: show none.
                str(t.exit_code) if t.state.is_finished and t.state not in (TaskState.UNSCHEDULABLE, TaskState.KILLED)
                else "-",
                span(t.started_at_ms, t.finished_at_ms),
                " ".join(f"{name}={address}" for name, address in sorted(t.port_addresses.items())) or "-",
                one_line(t.error or t.pending_reason, 100),
            )
        )
    return rows


TASK_COLUMNS = ["TASK", "STATE", "WORKER", "ADDRESS", "ATTEMPTS", "EXIT", "DURATION", "PORTS", "ERROR"]


_SHOWN_ABOVE = frozenset({"name", "resources", "replicas", "max_task_failures", "max_retries_failure",
                          "max_retries_preemption", "parent_job_id"})
"""Spec fields the status summary rows already show."""


@job.command("why")
@controller_option
@click.argument("job_id")
@json_option
@verbose_option
@handle_errors
def why_cmd(controller: str, job_id: str, as_json: bool, verbose: bool) -> None:
    """Why a job is pending: its place in the queue, every reason with numbers, the reservation it
    holds or waits behind, what it could preempt, its team's guarantee, limit and use."""
    with connect(controller) as client:
        why = client.why(job_id)
    if as_json:
        print_json(why)
        return
    out = stdout_console()
    if why["position"] < 0:
        out.print(f"{why['job_id']} is {why['state']}: not pending")
        return
    out.print(f"{why['job_id']}: pending, position {why['position']} (0 = next) in band {why['band']}; "
              f"team {why['team']} (standing {why['team_standing']:.3f}), user {why['user']}")
    for reason in why["reasons"]:
        out.print(f"  [{reason['code']}] {reason['message']}")
    if why["reservation"]:
        start = why["reservation"]["start_ms"]
        out.print(f"  holds a reservation on {', '.join(sorted(why['reservation']['workers']))}"
                  + (f", from {format_timestamp(start)}" if start else " (start not known: what runs there has no "
                     "--timeout)"))
    if why["waits_behind"]:
        out.print(f"  waits behind the reservation of {why['waits_behind']}")
    if why["preemptible_tasks"]:
        out.print(f"  could preempt {why['preemptible_tasks']} running task(s) of lower bands"
                  + (f"; the first minimum lease ends {format_timestamp(why['next_lease_end_ms'])}"
                     if why["next_lease_end_ms"] else ""))
    out.print(f"  team: guarantee {why['team_guarantee'] or '-'}, limit {why['team_limit'] or 'the fleet'}, "
              f"running {why['team_running'] or '-'}")
    if why["estimate"]:
        est = why["estimate"]
        out.print(f"  starts between {format_timestamp(est.get('start_p10_ms') or est['start_p50_ms'])} and "
                  f"{format_timestamp(est['start_p90_ms'])} (likeliest {format_timestamp(est['start_p50_ms'])})")
    else:
        out.print(f"  start: unknown ({why['unknown_reason']})")


@job.command("status")
@controller_option
@click.argument("job_id")
@click.option("--tasks", "show_tasks", is_flag=True, help="Also show each task.")
@json_option
@verbose_option
@handle_errors
def status_cmd(controller: str, job_id: str, show_tasks: bool, as_json: bool, verbose: bool) -> None:
    """Show a job's state, task counts and error (--tasks: every task)."""
    with connect(controller) as client:
        status = client.job_status(job_id, include_tasks=show_tasks)
        why = client.why(status.job_id) if status.state.value == "PENDING" else None  # `iris job why`'s data
    if as_json:
        data = status.to_dict()
        if why is not None:
            data["why"] = why
        if not show_tasks:
            data.pop("tasks", None)
        print_json(data)
        return
    out = stdout_console()
    res = status.resources
    fields: list[tuple[str, str | Text]] = [
        ("Job", status.job_id),
        ("State", styled_state(status.state)),
        ("Tasks", counts_text(status)[len(status.job_id) + 1 + len(status.state.value) + 2 :]),
        ("Submitted", human_ago(status.submitted_at_ms)),
        ("Duration", span(status.started_at_ms, status.finished_at_ms)),
        ("Resources", f"cpu={format_cpu(res.cpu_millicores)} memory={size(res.memory_bytes)} disk={size(res.disk_bytes)}"),
        (
            "Budgets",
            f"task failures {status.counts.failed}/{status.max_task_failures} allowed · per task: "
            f"{status.max_retries_failure} failure retries, {status.max_retries_preemption} preemption retries",
        ),
        ("Retries used", f"{status.failures_used} after failures · {status.preemptions_used} after preemptions"
                         + (f" · {status.gang_restarts} gang restarts" if status.gang_restarts else "")
                         + (f" (the last started by {status.gang_restart_cause})" if status.gang_restart_cause else "")),
        ("Time", time_text(status.time)),
    ]
    if status.owner:
        fields.append(("Owner", status.owner))
    if status.parent_job_id:
        fields.append(("Parent", status.parent_job_id))
    if status.pending_reason:
        fields.append(("Pending", status.pending_reason))
    if why is not None:
        fields.append(("Queue", f"position {why['position']} (0 = next) in band {why['band']}, team {why['team']}"))
        fields += [("Why", f"[{r['code']}] {r['message']}") for r in why["reasons"]]
        estimate = why["estimate"]
        fields.append(("Starts", f"between {format_timestamp(estimate.get('start_p10_ms') or estimate['start_p50_ms'])} and "
                                 f"{format_timestamp(estimate['start_p90_ms'])}" if estimate
                       else f"unknown ({why['unknown_reason']})"))
    if status.checkpoint_dir:
        fields.append(("Checkpoints", status.checkpoint_dir))
    if status.error:
        fields.append(("Error", Text(one_line(status.error, 300), style="red")))
    # What the job asked for beyond the defaults, every field as its declaration shows it.
    fields += [(FIELDS_BY_NAME[name].title, text) for name, text in status.spec_shown() if name not in _SHOWN_ABOVE]
    grid = make_table(["", ""], [(Text(k, style="bold"), v) for k, v in fields])
    grid.show_header = False
    out.print(grid)
    if show_tasks:
        out.print()
        out.print(make_table(TASK_COLUMNS, task_rows(status.tasks)))


@job.command("logs")
@controller_option
@click.argument("job_id")
@click.option("--task", "task_index", type=int, default=None, help="Only this task (index).")
@click.option("--attempt", type=int, default=None, help="This attempt (default: the current one).")
@click.option("--tail", "tail", type=click.IntRange(min=0), default=0, help="Only the last N lines of each task.")
@click.option("--since", "since", default=None, help="Only lines written in the last DURATION: 30s, 10m, 2h, 1d.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with the time it was written (UTC).")
@click.option("--stderr", "only_stderr", is_flag=True, help="Only what the tasks wrote to stderr.")
@click.option("--stdout", "only_stdout", is_flag=True, help="Only what the tasks wrote to stdout.")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the job ends.")
@json_option
@verbose_option
@handle_errors
def logs_cmd(
    controller: str,
    job_id: str,
    task_index: int | None,
    attempt: int | None,
    tail: int,
    since: str | None,
    timestamps: bool,
    only_stderr: bool,
    only_stdout: bool,
    follow: bool,
    as_json: bool,
    verbose: bool,
) -> None:
    """Print a job's task output, each line prefixed by its task index. Logs live on the
    controller, so they stay readable after the task's worker is gone."""
    if task_index is not None and task_index < 0:
        raise _usage(f"--task: must be >= 0, got {task_index}")
    if attempt is not None and attempt < 0:
        raise _usage(f"--attempt: must be >= 0, got {attempt}")
    if only_stderr and only_stdout:
        raise _usage("--stderr and --stdout: give one of them (neither shows both)")
    since_ms = 0
    if since is not None:
        try:
            since_ms = SystemClock().now_ms() - int(parse_duration(since) * 1000)
        except ValueError as e:
            raise _usage(f"--since: {e}") from None
    keep = _LineFilter(since_ms, "stderr" if only_stderr else "stdout" if only_stdout else "")
    with connect(controller) as client:
        status = client.job_status(job_id, include_tasks=True)
        tasks = list(status.tasks)
        if task_index is not None:
            tasks = [t for t in tasks if t.task_index == task_index]
            if not tasks:
                raise CliError(f"job {job_id} has no task {task_index} (it has {status.num_tasks})")
        prefix = task_index is None
        out = stdout_console()
        err = stderr_console()
        shown = [0]

        def show(index: int, attempt_id: int | None, line: LogLine) -> None:
            if not keep(line):
                return
            if as_json:
                record = {"task_index": index, **({"attempt_id": attempt_id} if attempt_id is not None else {}),
                          **line.to_dict()}
                if follow:  # one object per line while following
                    click.echo(_json.dumps(record))
                else:  # one JSON array, written as it is read
                    click.echo(("[" if not shown[0] else ",") + _json.dumps(record))
                shown[0] += 1
                return
            text = Text(f"[{index}] " if prefix else "")
            if timestamps:
                text += Text(format_timestamp(line.timestamp_ms) + " ", style="dim")
            # Iris's own notes (the environment build, dropped output) go beside the task's output.
            _print(err if line.source == "iris" else out, text + Text(line.data, style="dim" if line.source == "iris" else ""))

        if follow:
            follower = LogFollower(client, job_id, frozenset({task_index}) if task_index is not None else None,
                                   attempt, tail=tail)

            def on_status(current: JobStatus) -> None:
                for line in follower.poll(current.tasks, final=current.is_finished):
                    show(line.task_index, line.attempt_id, line.line)

            client.job(job_id).follow(None, on_status, include_tasks=True)
            return
        # Page by page: a long log is streamed, never held whole.
        for task in tasks:
            if attempt is None and not _task_may_have_logs(task):
                continue
            for page in client.iter_task_logs(job_id, task.task_index, attempt, tail=tail):
                for line in page:
                    show(task.task_index, None, line)
        if as_json:
            click.echo("]" if shown[0] else "[]")


class _LineFilter:
    def __init__(self, since_ms: int, source: str) -> None:
        self.since_ms = since_ms
        self.source = source

    def __call__(self, line: LogLine) -> bool:
        if self.source and line.source not in (self.source, "iris"):
            return False
        return not (self.since_ms and line.timestamp_ms and line.timestamp_ms < self.since_ms)


def _task_may_have_logs(task: TaskStatus) -> bool:
    return bool(task.attempts or task.worker_id or task.state.is_active or task.current_attempt_id)


@job.command("delete")
@controller_option
@click.argument("job_ids", nargs=-1, required=True)
@verbose_option
@handle_errors
def delete_cmd(controller: str, job_ids: tuple[str, ...], verbose: bool) -> None:
    """Delete ended jobs: each with its child jobs, tasks, logs, results and unused workspace. Its
    name can be used again. A running job must be stopped first (iris job stop)."""
    with connect(controller) as client:
        for job_id in job_ids:
            removed = client.delete_job(job_id)
            children = len(removed) - 1
            stderr_console().print(Text(f"Deleted job {job_id}" + (
                f" and {children} child job{'s' if children != 1 else ''}" if children > 0 else "")))


@job.command("stop")
@controller_option
@click.argument("job_id")
@verbose_option
@handle_errors
def stop_cmd(controller: str, job_id: str, verbose: bool) -> None:
    """Terminate a job: kill its tasks and its child jobs."""
    with connect(controller) as client:
        before = client.job_status(job_id)
        if before.is_finished:
            stderr_console().print(Text(f"Job {job_id} had already ended (") + styled_state(before.state) + Text(")"))
            return
        client.terminate(job_id)
        status = client.job_status(job_id)
    stderr_console().print(Text(f"Stopped job {job_id} (") + styled_state(status.state) + Text(")"))
