"""The rules of a job's fields, one function each: plain values in, InvalidArgument naming the field
and the rule out. The job fields' declarations (``iris.cluster.spec``) name their rule here, and
``iris.cluster.validation`` runs them in the client, the CLI, the controller and the worker with the
same ``Limits``. An error never echoes an oversized value (``show``).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from iris.cluster.errors import InvalidArgument
from iris.cluster.types import (
    BUNDLE_HASH_RE,
    ENV_NAME_RE,
    JOB_NAME_RE,
    PORT_NAME_RE,
    CpuDevice,
    ResourceSpec,
    cpu_to_millicores,
)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""The send and receive limit of every Iris gRPC channel and server (controller, worker, client).
A launch with the largest bundle and entrypoint fits, and so does one dispatch of any accepted task."""

IDLE_CONNECTION_MS = 300_000
"""Every Iris gRPC server closes a connection that has had no call for this long (a GOAWAY; a
client reconnects on its next call), so idle connections cannot pile up (issue 23 item 9)."""

CONNECTION_AGE_MS = 3_600_000
REQUEST_GRACE_MS = 600_000
"""Every Iris gRPC server ends a connection an hour after it opened (a GOAWAY: the client's next
call opens a new one, and grpc spreads the hour by +-10 % so a fleet does not reconnect at once),
and gives the calls still on it ``REQUEST_GRACE_MS`` to finish before it is closed: so no request,
however slowly it is sent (a stalled upload, a half-sent call), holds a server's stream, thread or
buffers longer than 70 minutes (issue 23 item 9's per-request deadline; grpcio's server has no
per-call receive deadline of its own)."""


def connection_options(idle_ms: int = IDLE_CONNECTION_MS, age_ms: int = CONNECTION_AGE_MS,
                       grace_ms: int = REQUEST_GRACE_MS) -> list[tuple[str, int]]:
    """The connection bounds of every Iris gRPC server: idle, age and the grace of calls in flight."""
    return [("grpc.max_connection_idle_ms", idle_ms), ("grpc.max_connection_age_ms", age_ms),
            ("grpc.max_connection_age_grace_ms", grace_ms)]


FLOW_CONTROL_OPTIONS = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024))
"""HTTP/2 flow control of every Iris gRPC server and the controller's channels to workers: a fixed
4 MiB window per stream instead of bandwidth-delay probing, which pings on received data and cost a
server about 13 % of its CPU per small call (issue 27); 4 MiB keeps a 1 MiB upload chunk or a large
dispatch in flight on a high-latency link."""

MAX_ARG_STRLEN = 128 * 1024
"""Linux refuses a single argv or environment string longer than this (E2BIG)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of a job. The controller and the worker use the same values."""

    max_replicas: int = 100_000
    max_entrypoint_bytes: int = 16 * 1024 * 1024
    max_bundle_bytes: int = 100 * 1024 * 1024
    max_exec_bytes: int = 1024 * 1024
    """argv plus the job's environment, as execve counts them (each string plus its NUL); well
    under Linux's usual 2 MiB ARG_MAX, leaving room for the worker's own IRIS_* variables."""
    max_env_vars: int = 4096
    max_ports: int = 64
    max_id_chars: int = 1024
    """Longest parent job id, job id or task id."""

    @property
    def max_task_request_bytes(self) -> int:
        """The largest RunTaskRequest an accepted job can produce (entrypoint + exec strings +
        framing); the worker's receive limit is at least this."""
        return self.max_entrypoint_bytes + 2 * self.max_exec_bytes + 64 * 1024


DEFAULT_LIMITS = Limits()

UPLOAD_CHUNK_BYTES = 1024 * 1024
"""The largest chunk of a workspace upload (``UploadBundle``), and what the client sends."""

MAX_REQUEST_BYTES = 6 * 1024 * 1024
"""The largest request the controller reads (issue 23 item 7): a LaunchJob's fields, a report with
a callable's result, a heartbeat's observed set, a push of logs. What can be larger travels apart,
by ``UploadBundle`` in chunks of 1 MiB: a workspace, and an entrypoint over
``INLINE_ENTRYPOINT_BYTES`` (a large pickled callable)."""

INLINE_ENTRYPOINT_BYTES = 1024 * 1024
"""A larger serialized entrypoint is uploaded first and named by ``LaunchJobRequest.entrypoint_hash``."""

MAX_RESULT_BYTES = 4 * 1024 * 1024
"""The largest pickled return value of a callable: it travels in the worker's report, which must
stay under ``MAX_REQUEST_BYTES`` (``iris worker serve --max-result-size``, its default and most)."""

assert INLINE_ENTRYPOINT_BYTES + 2 * DEFAULT_LIMITS.max_exec_bytes + 1024 * 1024 <= MAX_REQUEST_BYTES
assert MAX_RESULT_BYTES + 1024 * 1024 <= MAX_REQUEST_BYTES
assert DEFAULT_LIMITS.max_task_request_bytes <= MAX_MESSAGE_BYTES
assert DEFAULT_LIMITS.max_bundle_bytes + DEFAULT_LIMITS.max_task_request_bytes <= MAX_MESSAGE_BYTES


def show(value: object, limit: int = 40) -> str:
    """``repr`` of a value for an error message, cut to ``limit`` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}... ({size} chars)"


def fail(field_name: str, rule: str) -> InvalidArgument:
    return InvalidArgument(f"{field_name}: {rule}")


def whole(value: object, field_name: str, minimum: int = 0, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field_name, f"must be a whole number, got {show(value)}")
    if value < minimum:
        raise fail(field_name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise fail(field_name, f"must be <= {maximum}, got {value}")


def check_id(value: str, field_name: str, limits: Limits = DEFAULT_LIMITS, *, required: bool = True) -> None:
    """A job, parent or task id: bounded, no NUL or line break."""
    if not value:
        if required:
            raise fail(field_name, "must not be empty")
        return
    if len(value) > limits.max_id_chars:
        raise fail(field_name, f"longer than {limits.max_id_chars} characters ({len(value)})")
    if "\0" in value or "\n" in value or "\r" in value:
        raise fail(field_name, f"must not contain NUL or line breaks, got {show(value)}")


def check_job_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise fail("name", "must not be empty")
    if not JOB_NAME_RE.fullmatch(name):
        raise fail(
            "name",
            f"{show(name)} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )


MAX_CPU_MILLICORES = 2**31 - 1
"""The most cpu one task may ask for (what the whole-core wire field of older peers can hold)."""


def check_resources(resources: ResourceSpec, field_name: str = "resources") -> None:
    try:
        millicores = cpu_to_millicores(resources.cpu, f"{field_name}.cpu")
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    if millicores > MAX_CPU_MILLICORES:
        raise fail(f"{field_name}.cpu", f"must be at most {MAX_CPU_MILLICORES // 1000} cores, got {show(resources.cpu)}")
    if resources.memory_bytes < 0:
        raise fail(f"{field_name}.memory", "must be >= 0")
    if resources.disk_bytes < 0:
        raise fail(f"{field_name}.disk", "must be >= 0")
    device = resources.device
    if not isinstance(device, CpuDevice):
        whole(device.count, f"{field_name}.device.count", 1)
        if "\0" in device.variant or len(device.variant) > 256:
            raise fail(f"{field_name}.device.variant", f"must be at most 256 characters without NUL, got {show(device.variant)}")


def check_env(env: Mapping[str, str], limits: Limits = DEFAULT_LIMITS, field_name: str = "env") -> int:
    """Returns the bytes the variables take in execve terms."""
    if not isinstance(env, Mapping):
        raise fail(field_name, f"must be a mapping of names to strings, got {type(env).__name__}")
    if len(env) > limits.max_env_vars:
        raise fail(field_name, f"{len(env)} variables exceeds the limit of {limits.max_env_vars}")
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise fail(field_name, f"{show(key)} is not a valid variable name (letters, digits and '_', "
                        "not starting with a digit)")
        if key.upper().startswith("IRIS_"):
            raise fail(field_name, f"{key!r}: IRIS_* names are set by Iris for every task and cannot be set by a job")
        if not isinstance(value, str):
            raise fail(f"{field_name}.{key}", f"must be a string, got {type(value).__name__}")
        if "\0" in value:
            raise fail(f"{field_name}.{key}", "must not contain NUL (the OS cannot pass it)")
        size = len(key) + 1 + len(value.encode("utf-8", "surrogatepass")) + 1
        if size > MAX_ARG_STRLEN:
            raise fail(f"{field_name}.{key}", f"{size} bytes exceeds the OS limit of {MAX_ARG_STRLEN} per variable")
        total += size
    return total


def check_ports(ports: Iterable[str], limits: Limits = DEFAULT_LIMITS, field_name: str = "ports") -> None:
    seen: set[str] = set()
    for port in ports:
        if not isinstance(port, str) or not PORT_NAME_RE.fullmatch(port):
            raise fail(field_name, f"{show(port)} must be 1-64 letters, digits or '_', not starting with a digit")
        if port.upper() in seen:
            raise fail(field_name, f"{port!r} is listed twice (names are exported upper-cased)")
        seen.add(port.upper())
    if len(seen) > limits.max_ports:
        raise fail(field_name, f"{len(seen)} ports exceeds the limit of {limits.max_ports}")


def check_bundle_hash(bundle_hash: str, field_name: str = "bundle_hash") -> None:
    if bundle_hash and not BUNDLE_HASH_RE.fullmatch(bundle_hash):
        raise fail(field_name, f"must be a sha256 hex digest (64 lowercase hex digits), got {show(bundle_hash)}")


def check_exec_size(argv_bytes: int, env_bytes: int, limits: Limits, field_name: str = "env") -> None:
    if argv_bytes + env_bytes > limits.max_exec_bytes:
        raise fail(
            field_name,
            f"the command and environment take {argv_bytes + env_bytes} bytes, over the limit of "
            f"{limits.max_exec_bytes} (ship data in the workspace bundle instead)",
        )


MAX_RETRY_BACKOFF_S = 3600.0
MAX_ATTEMPT_TIMEOUT_S = 366 * 24 * 3600.0


def seconds(value: object, name: str, zero: str, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) \
            or not 0 <= value <= maximum:
        raise fail(name, f"must be a number of seconds in [0, {maximum:g}] ({zero}), got {show(value)}")


def check_log_window(start_line: int, max_lines: int, start_offset: int | None) -> None:
    """A page of a task's log (``FetchTaskLogs``, ``/api/logs``): counts and offsets are >= 0."""
    if start_line < 0 or max_lines < 0:
        raise fail("start_line and max_lines", "must be >= 0")
    if start_offset is not None and start_offset < 0:
        raise fail("start_offset", f"must be >= 0, got {start_offset}")


MAX_WITH_PACKAGES = 64
MAX_PACKAGE_CHARS = 1024


def check_with_packages(packages: Iterable[str], field_name: str = "with_packages") -> None:
    """``--with``: requirement specifiers, wheel paths or URLs, handed to ``uv pip install`` as
    arguments (never through a shell). None may look like an option."""
    items = list(packages)
    if len(items) > MAX_WITH_PACKAGES:
        raise fail(field_name, f"at most {MAX_WITH_PACKAGES} packages, got {len(items)}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise fail(f"{field_name}[{i}]", "must be a package such as 'numpy==2.1' or a wheel path")
        if len(item) > MAX_PACKAGE_CHARS or any(c in item for c in "\0\n\r"):
            raise fail(f"{field_name}[{i}]", f"must be at most {MAX_PACKAGE_CHARS} characters without NUL or "
                        f"line breaks, got {show(item)}")
        if item.lstrip().startswith("-"):
            raise fail(f"{field_name}[{i}]", f"must be a package, not an option: {show(item)}")
