"""The one validator of job requests, shared by the client, the CLI, the controller and the worker.

The controller accepts exactly what a worker can run: both sides check the same rules with the
same ``Limits``, and the message-size cap every gRPC channel and server is configured with is
``MAX_MESSAGE_BYTES`` (at least what one dispatch of the largest accepted task needs). A request
refused here changes nothing; the error names the field and the rule and never echoes an
oversized value (``show``).

Rules the operating system imposes are checked here, before anything is stored: no NUL in argv or
in environment names and values (``execve`` cannot pass them), no ``=`` in environment names,
each argv or ``NAME=value`` string within ``MAX_ARG_STRLEN`` and all of them together within a
conservative ``ARG_MAX``. Names are matched whole (``fullmatch``: no trailing newline slips past
a ``$``).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from iris.cluster.errors import InvalidArgument
from iris.cluster.failures import ExitRule, check_exit_rules
from iris.cluster.spec import Entrypoint, JobSpec, parse_entrypoint, resources_from_proto
from iris.cluster.types import (
    BUNDLE_HASH_RE,
    ENV_NAME_RE,
    JOB_NAME_RE,
    PORT_NAME_RE,
    CpuDevice,
    ResourceSpec,
    cpu_to_millicores,
)
from iris.rpc import cluster_pb2

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""The send and receive limit of every Iris gRPC channel and server (controller, worker, client).
A launch with the largest bundle and entrypoint fits, and so does one dispatch of any accepted task."""

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
assert DEFAULT_LIMITS.max_task_request_bytes <= MAX_MESSAGE_BYTES
assert DEFAULT_LIMITS.max_bundle_bytes + DEFAULT_LIMITS.max_task_request_bytes <= MAX_MESSAGE_BYTES


def show(value: object, limit: int = 40) -> str:
    """``repr`` of a value for an error message, cut to ``limit`` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}... ({size} chars)"


def _fail(field_name: str, rule: str) -> InvalidArgument:
    return InvalidArgument(f"{field_name}: {rule}")


def _whole(value: object, field_name: str, minimum: int = 0, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field_name, f"must be a whole number, got {show(value)}")
    if value < minimum:
        raise _fail(field_name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _fail(field_name, f"must be <= {maximum}, got {value}")


def check_id(value: str, field_name: str, limits: Limits = DEFAULT_LIMITS, *, required: bool = True) -> None:
    """A job, parent or task id: bounded, no NUL or line break."""
    if not value:
        if required:
            raise _fail(field_name, "must not be empty")
        return
    if len(value) > limits.max_id_chars:
        raise _fail(field_name, f"longer than {limits.max_id_chars} characters ({len(value)})")
    if "\0" in value or "\n" in value or "\r" in value:
        raise _fail(field_name, f"must not contain NUL or line breaks, got {show(value)}")


def check_job_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise _fail("name", "must not be empty")
    if not JOB_NAME_RE.fullmatch(name):
        raise _fail(
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
        raise _fail(f"{field_name}.cpu", f"must be at most {MAX_CPU_MILLICORES // 1000} cores, got {show(resources.cpu)}")
    if resources.memory_bytes < 0:
        raise _fail(f"{field_name}.memory", "must be >= 0")
    if resources.disk_bytes < 0:
        raise _fail(f"{field_name}.disk", "must be >= 0")
    device = resources.device
    if not isinstance(device, CpuDevice):
        _whole(device.count, f"{field_name}.device.count", 1)
        if "\0" in device.variant or len(device.variant) > 256:
            raise _fail(f"{field_name}.device.variant", f"must be at most 256 characters without NUL, got {show(device.variant)}")


def check_entrypoint(entrypoint: Entrypoint, limits: Limits = DEFAULT_LIMITS, field_name: str = "entrypoint") -> int:
    """Returns the bytes argv takes in execve terms (for ``max_exec_bytes``)."""
    if entrypoint.argv and entrypoint.pickled:
        raise _fail(field_name, "must be a command or a callable, not both")
    if entrypoint.pickled:
        if len(entrypoint.pickled) > limits.max_entrypoint_bytes:
            raise _fail(f"{field_name}.callable", f"{len(entrypoint.pickled)} bytes exceeds the limit of "
                        f"{limits.max_entrypoint_bytes}")
        return 0
    if not entrypoint.argv or not entrypoint.argv[0]:
        raise _fail(f"{field_name}.command.argv", "must not be empty; give a program to run")
    total = 0
    for i, arg in enumerate(entrypoint.argv):
        where = f"{field_name}.command.argv[{i}]"
        if not isinstance(arg, str):
            raise _fail(where, f"must be a string, got {type(arg).__name__}")
        if "\0" in arg:
            raise _fail(where, f"must not contain NUL (the OS cannot pass it), got {show(arg)}")
        size = len(arg.encode("utf-8", "surrogatepass")) + 1
        if size > MAX_ARG_STRLEN:
            raise _fail(where, f"{size} bytes exceeds the OS limit of {MAX_ARG_STRLEN} per argument")
        total += size
    return total


def check_env(env: Mapping[str, str], limits: Limits = DEFAULT_LIMITS, field_name: str = "env") -> int:
    """Returns the bytes the variables take in execve terms."""
    if len(env) > limits.max_env_vars:
        raise _fail(field_name, f"{len(env)} variables exceeds the limit of {limits.max_env_vars}")
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise _fail(field_name, f"{show(key)} is not a valid variable name (letters, digits and '_', "
                        "not starting with a digit)")
        if key.upper().startswith("IRIS_"):
            raise _fail(field_name, f"{key!r}: IRIS_* names are set by Iris for every task and cannot be set by a job")
        if not isinstance(value, str):
            raise _fail(f"{field_name}.{key}", f"must be a string, got {type(value).__name__}")
        if "\0" in value:
            raise _fail(f"{field_name}.{key}", "must not contain NUL (the OS cannot pass it)")
        size = len(key) + 1 + len(value.encode("utf-8", "surrogatepass")) + 1
        if size > MAX_ARG_STRLEN:
            raise _fail(f"{field_name}.{key}", f"{size} bytes exceeds the OS limit of {MAX_ARG_STRLEN} per variable")
        total += size
    return total


def check_ports(ports: Iterable[str], limits: Limits = DEFAULT_LIMITS, field_name: str = "ports") -> None:
    seen: set[str] = set()
    for port in ports:
        if not isinstance(port, str) or not PORT_NAME_RE.fullmatch(port):
            raise _fail(field_name, f"{show(port)} must be 1-64 letters, digits or '_', not starting with a digit")
        if port.upper() in seen:
            raise _fail(field_name, f"{port!r} is listed twice (names are exported upper-cased)")
        seen.add(port.upper())
    if len(seen) > limits.max_ports:
        raise _fail(field_name, f"{len(seen)} ports exceeds the limit of {limits.max_ports}")


def check_bundle_hash(bundle_hash: str, field_name: str = "bundle_hash") -> None:
    if bundle_hash and not BUNDLE_HASH_RE.fullmatch(bundle_hash):
        raise _fail(field_name, f"must be a sha256 hex digest (64 lowercase hex digits), got {show(bundle_hash)}")


def _check_exec_size(argv_bytes: int, env_bytes: int, limits: Limits, field_name: str = "env") -> None:
    if argv_bytes + env_bytes > limits.max_exec_bytes:
        raise _fail(
            field_name,
            f"the command and environment take {argv_bytes + env_bytes} bytes, over the limit of "
            f"{limits.max_exec_bytes} (ship data in the workspace bundle instead)",
        )


SPEC_FIELDS = {"entrypoint": "entrypoint", "replicas": "replicas", "env": "env"}
"""How errors name a job's fields when a ``JobSpec`` is checked (client, CLI)..."""
WIRE_FIELDS = {"entrypoint": "serialized_entrypoint", "replicas": "resources.replicas", "env": "environment.env_vars"}
"""...and when a ``LaunchJobRequest`` is (the controller): the names a caller of the RPC sent."""


def validate_job_spec(spec: JobSpec, limits: Limits = DEFAULT_LIMITS, names: Mapping[str, str] = SPEC_FIELDS
                      ) -> JobSpec:
    """Check every rule of a job. Returns the spec; raises InvalidArgument naming the field."""
    check_job_name(spec.name)
    argv_bytes = check_entrypoint(spec.entrypoint, limits, names["entrypoint"])
    if not isinstance(spec.resources, ResourceSpec):
        raise _fail("resources", f"must be a ResourceSpec, got {type(spec.resources).__name__}")
    check_resources(spec.resources)
    _whole(spec.replicas, names["replicas"], 1, limits.max_replicas)
    _whole(spec.max_task_failures, "max_task_failures", 0, 2**31 - 1)
    _whole(spec.max_retries_failure, "max_retries_failure", 0, 2**31 - 1)
    _whole(spec.max_retries_preemption, "max_retries_preemption", 0, 2**31 - 1)
    timeout = spec.scheduling_timeout_seconds
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) \
            or math.isinf(timeout) or timeout < 0:
        raise _fail("scheduling_timeout_seconds", f"must be a finite number >= 0 (0 waits forever), got {show(timeout)}")
    _seconds(spec.retry_backoff_seconds, "retry_backoff_seconds", "0: no backoff", MAX_RETRY_BACKOFF_S)
    _seconds(spec.timeout_seconds, "timeout_seconds", "0: unbounded", MAX_ATTEMPT_TIMEOUT_S)
    if spec.termination_grace_seconds is not None:
        _seconds(spec.termination_grace_seconds, "termination_grace_seconds", "unset: the worker's kill grace",
                 MAX_ATTEMPT_TIMEOUT_S)
    _whole(spec.max_similar_failures, "max_similar_failures", 0, 2**31 - 1)
    if not isinstance(spec.exit_rules, tuple) or not all(isinstance(r, ExitRule) for r in spec.exit_rules):
        raise _fail("exit_rules", "must be a tuple of ExitRule")
    problem = check_exit_rules(spec.exit_rules)
    if problem:
        raise _fail("exit_rules", problem)
    env_bytes = check_env(spec.env, limits, names["env"])
    _check_exec_size(argv_bytes, env_bytes, limits, names["env"])
    check_ports(spec.ports, limits)
    check_id(spec.parent_job_id, "parent_job_id", limits, required=False)
    check_bundle_hash(spec.bundle_hash)
    check_with_packages(spec.with_packages)
    return spec


MAX_RETRY_BACKOFF_S = 3600.0
MAX_ATTEMPT_TIMEOUT_S = 366 * 24 * 3600.0


def _seconds(value: object, name: str, zero: str, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) \
            or not 0 <= value <= maximum:
        raise _fail(name, f"must be a number of seconds in [0, {maximum:g}] ({zero}), got {show(value)}")


def _check_wire_resources(res: cluster_pb2.ResourceSpecProto) -> None:
    for name in ("replicas", "cpu", "memory_bytes", "disk_bytes"):
        if getattr(res, name) < 0:
            raise _fail(f"resources.{name}", f"must be >= 0, got {getattr(res, name)}")


def validate_launch_request(
    request: cluster_pb2.Controller.LaunchJobRequest, limits: Limits = DEFAULT_LIMITS
) -> JobSpec:
    """The controller's check of a LaunchJob: sizes before parsing, then ``validate_job_spec``.
    Returns the request's spec (the blob stays in the request)."""
    if len(request.serialized_entrypoint) > limits.max_entrypoint_bytes:
        raise _fail("serialized_entrypoint", f"{len(request.serialized_entrypoint)} bytes exceeds the limit of "
                    f"{limits.max_entrypoint_bytes}")
    if len(request.bundle_blob) > limits.max_bundle_bytes:
        raise _fail("bundle_blob", f"{len(request.bundle_blob)} bytes exceeds the limit of {limits.max_bundle_bytes}")
    _check_wire_resources(request.resources)
    for name in ("max_task_failures", "max_retries_failure"):
        if getattr(request, name) < 0:
            raise _fail(name, f"must be >= 0, got {getattr(request, name)}")
    if request.HasField("max_retries_preemption") and request.max_retries_preemption < 0:
        raise _fail("max_retries_preemption", f"must be >= 0, got {request.max_retries_preemption}")
    check_id(request.parent_job_id, "parent_job_id", limits, required=False)
    parse_entrypoint(request.serialized_entrypoint)  # strict: an empty or foreign entrypoint is refused
    return validate_job_spec(JobSpec.from_proto(request), limits, WIRE_FIELDS)


def check_log_window(start_line: int, max_lines: int, start_offset: int | None) -> None:
    """A page of a task's log (``FetchTaskLogs``, ``/api/logs``): counts and offsets are >= 0."""
    if start_line < 0 or max_lines < 0:
        raise _fail("start_line and max_lines", "must be >= 0")
    if start_offset is not None and start_offset < 0:
        raise _fail("start_offset", f"must be >= 0, got {start_offset}")


MAX_WITH_PACKAGES = 64
MAX_PACKAGE_CHARS = 1024


def check_with_packages(packages: Iterable[str], field_name: str = "with_packages") -> None:
    """``--with``: requirement specifiers, wheel paths or URLs, handed to ``uv pip install`` as
    arguments (never through a shell). None may look like an option."""
    items = list(packages)
    if len(items) > MAX_WITH_PACKAGES:
        raise _fail(field_name, f"at most {MAX_WITH_PACKAGES} packages, got {len(items)}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise _fail(f"{field_name}[{i}]", "must be a package such as 'numpy==2.1' or a wheel path")
        if len(item) > MAX_PACKAGE_CHARS or any(c in item for c in "\0\n\r"):
            raise _fail(f"{field_name}[{i}]", f"must be at most {MAX_PACKAGE_CHARS} characters without NUL or "
                        f"line breaks, got {show(item)}")
        if item.lstrip().startswith("-"):
            raise _fail(f"{field_name}[{i}]", f"must be a package, not an option: {show(item)}")


def validate_run_task(
    request: cluster_pb2.Worker.RunTaskRequest, limits: Limits = DEFAULT_LIMITS
) -> Entrypoint:
    """The worker's check of one RunTask: the same job rules as the controller's, plus the task's
    own fields. Returns the parsed entrypoint; raises InvalidArgument naming the field."""
    check_id(request.task_id, "task_id", limits)
    check_id(request.job_id, "job_id", limits)
    _whole(request.attempt_id, "attempt_id")
    _whole(request.task_index, "task_index")
    _whole(request.num_tasks, "num_tasks")
    if len(request.serialized_entrypoint) > limits.max_entrypoint_bytes:
        raise _fail("serialized_entrypoint", f"{len(request.serialized_entrypoint)} bytes exceeds the limit of "
                    f"{limits.max_entrypoint_bytes}")
    entrypoint = parse_entrypoint(request.serialized_entrypoint)
    argv_bytes = check_entrypoint(entrypoint, limits, "serialized_entrypoint")
    _check_wire_resources(request.resources)
    check_resources(resources_from_proto(request.resources))
    env_bytes = check_env(request.environment.env_vars, limits, "environment.env_vars")
    _check_exec_size(argv_bytes, env_bytes, limits, "environment.env_vars")
    check_ports(request.ports, limits)
    check_bundle_hash(request.bundle_hash)
    check_with_packages(request.with_packages)
    return entrypoint
