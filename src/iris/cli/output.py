"""Shared pieces of the user-facing commands: common options, one-line error handling, rich
tables, JSON output and human units ("2GiB", "3m ago")."""

from __future__ import annotations

import functools
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from iris.client import IrisClient, IrisError, JobState, TaskState
from iris.client.client import CONTROLLER_ENV, DEFAULT_CONTROLLER_ADDRESS
from iris.cluster.types import format_size, parse_cpu
from iris.cluster.types import parse_duration as parse_duration

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

STATE_STYLES = {
    "PENDING": "yellow",
    "BUILDING": "cyan",
    "RUNNING": "blue",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "KILLED": "magenta",
    "WORKER_FAILED": "red",
    "UNSCHEDULABLE": "red",
    "PREEMPTED": "magenta",
    "UNSPECIFIED": "dim",
}


class CliError(click.ClickException):
    """A user-facing error: printed as one ``Error: ...`` line, exit code ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]


class CpuType(click.ParamType["float | int", Any]):
    """Cores: "2", "0.5" or "500m" (millicores); more than 0."""

    name = "cores"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | int:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text: str | float | int = value
        else:
            text = str(value)
        try:
            return parse_cpu(text, param.opts[0] if param is not None and param.opts else "cpu")
        except ValueError as e:
            self.fail(str(e).split(": ", 1)[-1], param, ctx)


CPU = CpuType()


def stdout_console() -> Console:
    """A console for results. Off a terminal it does not wrap or colour."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=200, no_color=True, soft_wrap=False)


def stderr_console() -> Console:
    if sys.stderr.isatty():
        return Console(stderr=True, highlight=False)
    return Console(stderr=True, highlight=False, width=200, no_color=True)


# -- options ------------------------------------------------------------------------------------


_TOKEN_FILE: list[str | None] = [None]
"""``--token-file`` of the running command (read by ``connect``)."""


def _remember_token_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    _TOKEN_FILE[0] = value
    return value


def address_option(fn: F) -> F:
    return click.option(
        "--controller",
        "controller",
        envvar=CONTROLLER_ENV,
        default=DEFAULT_CONTROLLER_ADDRESS,
        show_default=True,
        show_envvar=True,
        help="Controller address, HOST:PORT.",
    )(fn)


_TLS_CA: list[str | None] = [None]


def _remember_tls_ca(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    _TLS_CA[0] = value
    return value


def controller_option(fn: F) -> F:
    """``--controller``, ``--token-file`` (else ``$IRIS_TOKEN``, else the login stored for the address)
    and ``--tls-ca`` (else ``$IRIS_TLS_CA``; unset: plaintext)."""
    fn = click.option(
        "--tls-ca",
        type=click.Path(dir_okay=False),
        default=None,
        expose_value=False,
        callback=_remember_tls_ca,
        help="Verify the controller's TLS certificate against this CA (default: $IRIS_TLS_CA; unset: plaintext).",
    )(fn)
    fn = click.option(
        "--token-file",
        type=click.Path(dir_okay=False),
        default=None,
        expose_value=False,
        callback=_remember_token_file,
        help="File holding the token to present (default: $IRIS_TOKEN, else the `iris login` for this address).",
    )(fn)
    return address_option(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def verbose_option(fn: F) -> F:
    return click.option("--verbose", "-v", is_flag=True, help="Show tracebacks on errors.")(fn)


def handle_errors(fn: F) -> F:
    """Run a command body: client errors become one ``Error: ...`` line and exit 1 (a traceback
    only with ``--verbose``); Ctrl+C exits 130. Must wrap a callback that takes ``verbose``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose", False))
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as e:
            if verbose:
                traceback.print_exc()
            if isinstance(e, click.UsageError):
                raise
            raise CliError(e.format_message(), e.exit_code) from None
        except KeyboardInterrupt:
            click.echo("Interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except IrisError as e:
            if verbose:
                traceback.print_exc()
            raise CliError(str(e)) from None
        except Exception as e:
            if verbose:
                traceback.print_exc()
            raise CliError(f"{type(e).__name__}: {e}") from None

    return cast(F, wrapper)


def connect(controller: str) -> IrisClient:
    return IrisClient.remote(controller, token_file=_TOKEN_FILE[0], tls_ca=_TLS_CA[0])


# -- units --------------------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def human_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``; ``0.4`` -> ``"0.4s"``."""
    if seconds < 0:
        seconds = 0
    if seconds < 10:
        return f"{seconds:.1f}s".replace(".0s", "s")
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def format_timestamp(timestamp_ms: int) -> str:
    """``2026-12-03T15:19:03.123Z`` (UTC); ``-`` when unknown."""
    if not timestamp_ms:
        return "-" * 24
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{timestamp_ms % 1000:03d}Z"


def human_ago(timestamp_ms: int, now: int | None = None) -> str:
    """``"3m ago"``, ``"just now"``, or ``"-"`` for an unset timestamp."""
    if not timestamp_ms:
        return "-"
    current = now_ms() if now is None else now
    seconds = (current - timestamp_ms) / 1000
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)}s ago"
    minutes = seconds / 60
    if minutes < 60:
        return f"{int(minutes)}m ago"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)}h ago"
    return f"{int(hours / 24)}d ago"


def span(start_ms: int, end_ms: int, now: int | None = None) -> str:
    """How long something ran: from ``start_ms`` to ``end_ms`` (or now while unfinished)."""
    if not start_ms:
        return "-"
    end = end_ms or (now_ms() if now is None else now)
    return human_duration((end - start_ms) / 1000)


def size(num_bytes: int) -> str:
    return format_size(num_bytes) if num_bytes else "-"


def styled_state(state: JobState | TaskState | str) -> Text:
    name = str(state)
    return Text(name, style=STATE_STYLES.get(name, ""))


def one_line(text: str, limit: int = 120) -> str:
    """The last meaningful line of a (multi-line) error, shortened for a table cell."""
    if "\n" not in text and "\r" not in text:
        line = text.strip()
    else:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- output -------------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


PLAIN_TABLE_ROWS = 500
"""Past this many rows (or off a terminal) a table is written as plain aligned text: rich's layout
costs ~1 ms a row, plain text ~2 µs (``iris job list --all`` of 25,000 jobs)."""


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str | Text]]) -> None:
    """A table on stdout: rich's (colours, folding) for a short one on a terminal, else plain
    aligned columns, written at once."""
    if sys.stdout.isatty() and len(rows) <= PLAIN_TABLE_ROWS:
        stdout_console().print(make_table(columns, rows))
        return
    cells: list[Sequence[str]] = [
        cast(Sequence[str], row) if all(type(c) is str for c in row)
        else [c.plain if isinstance(c, Text) else str(c) for c in row]
        for row in rows
    ]
    widths = [len(name) for name in columns]
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            if len(cell) > widths[i]:
                widths[i] = len(cell)

    def line(values: Sequence[str]) -> str:
        head = "  ".join(v.ljust(widths[i]) for i, v in enumerate(values[:-1]))
        return f"{head}  {values[-1]}".rstrip() if len(values) > 1 else values[0]
    out = [line(list(columns))]
    out.extend(line(row) for row in cells)
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def make_table(columns: Sequence[str], rows: Iterable[Sequence[str | Text]], title: str | None = None) -> Table:
    table = Table(title=title, box=None, header_style="bold", pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table
