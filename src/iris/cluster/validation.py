"""The one validator of job requests, shared by the client, the CLI, the controller and the worker.

The controller accepts exactly what a worker can run: both sides check the same rules with the
same ``Limits``, and the message-size cap every gRPC channel and server is configured with is
``MAX_MESSAGE_BYTES`` (at least what one dispatch of the largest accepted task needs). Each job
field's rule is named by its declaration (``iris.cluster.spec.FIELDS``) and lives in
``iris.cluster.rules``; this module runs them (all of them for a job, the worker-visible ones for
a RunTask) and adds the rules that span fields. A request refused here changes nothing; the error
names the field and the rule and never echoes an oversized value (``rules.show``).

Rules the operating system imposes are checked before anything is stored: no NUL in argv or
in environment names and values (``execve`` cannot pass them), no ``=`` in environment names,
each argv or ``NAME=value`` string within ``MAX_ARG_STRLEN`` and all of them together within a
conservative ``ARG_MAX``. Names are matched whole (``fullmatch``: no trailing newline slips past
a ``$``).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from iris.cluster.rules import (
    DEFAULT_LIMITS as DEFAULT_LIMITS,
)
from iris.cluster.rules import (
    MAX_ARG_STRLEN,
    check_env,
    check_exec_size,
    check_resources,
    fail,
    show,
    whole,
)
from iris.cluster.rules import (
    MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES,
)
from iris.cluster.rules import (
    Limits as Limits,
)
from iris.cluster.rules import (
    check_id as check_id,
)
from iris.cluster.rules import (
    check_log_window as check_log_window,
)
from iris.cluster.spec import (
    FIELDS,
    WORKER_FIELDS,
    Entrypoint,
    JobSpec,
    parse_entrypoint,
    resources_from_proto,
)
from iris.rpc import cluster_pb2


def check_entrypoint(entrypoint: Entrypoint, limits: Limits = DEFAULT_LIMITS, field_name: str = "entrypoint") -> int:
    """Returns the bytes argv takes in execve terms (for ``max_exec_bytes``)."""
    if entrypoint.argv and entrypoint.pickled:
        raise fail(field_name, "must be a command or a callable, not both")
    if entrypoint.pickled:
        if len(entrypoint.pickled) > limits.max_entrypoint_bytes:
            raise fail(f"{field_name}.callable", f"{len(entrypoint.pickled)} bytes exceeds the limit of "
                        f"{limits.max_entrypoint_bytes}")
        return 0
    if not entrypoint.argv or not entrypoint.argv[0]:
        raise fail(f"{field_name}.command.argv", "must not be empty; give a program to run")
    total = 0
    for i, arg in enumerate(entrypoint.argv):
        where = f"{field_name}.command.argv[{i}]"
        if not isinstance(arg, str):
            raise fail(where, f"must be a string, got {type(arg).__name__}")
        if "\0" in arg:
            raise fail(where, f"must not contain NUL (the OS cannot pass it), got {show(arg)}")
        size = len(arg.encode("utf-8", "surrogatepass")) + 1
        if size > MAX_ARG_STRLEN:
            raise fail(where, f"{size} bytes exceeds the OS limit of {MAX_ARG_STRLEN} per argument")
        total += size
    return total


MAX_PAGE_SIZE = 5000
MAX_FILTER_CHARS = 1024
MAX_FILTER_STATES = 16


def check_filter(name: str, value: str) -> None:
    """A prefix, name or address a read or an endpoint carries: bounded (a read stays O(page))."""
    if len(value) > MAX_FILTER_CHARS:
        raise fail(name, f"longer than {MAX_FILTER_CHARS} characters ({len(value)})")


def check_job_list(prefix: str, states: int, page_size: int) -> None:
    """A page of the job list (ListJobs, ``/api/jobs``)."""
    check_filter("prefix", prefix)
    if states > MAX_FILTER_STATES:
        raise fail("states", f"at most {MAX_FILTER_STATES} states, got {states}")
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise fail("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {page_size}")


def check_task_page(task_offset: int, task_limit: int) -> None:
    """A page of a job's tasks (GetJobStatus, ``/api/job``)."""
    if task_offset < 0:
        raise fail("task_offset", f"must be >= 0, got {task_offset}")
    if not 0 <= task_limit <= MAX_PAGE_SIZE:
        raise fail("task_limit", f"must be 0 (all) to {MAX_PAGE_SIZE}, got {task_limit}")


def check_endpoint(name: str, address: str) -> None:
    """An endpoint a task registers: a name and an address, both bounded."""
    for field_name, value in (("name", name), ("address", address)):
        if not value:
            raise fail(field_name, "must not be empty")
        check_filter(field_name, value)


def validate_job_spec(spec: JobSpec, limits: Limits = DEFAULT_LIMITS, *, wire: bool = False) -> JobSpec:
    """Check every field's rule, then the rules that span fields. Returns the spec; raises
    InvalidArgument naming the field (as the caller wrote it: the wire's name when ``wire``)."""
    for f in FIELDS:
        if f.name != "env":  # checked below, once, where its size counts with the command's
            f.check(getattr(spec, f.name), limits, f.wire_name if wire else f.name)
    names = _WIRE if wire else _SPEC
    argv_bytes = check_entrypoint(spec.entrypoint, limits, names["entrypoint"])
    check_exec_size(argv_bytes, check_env(spec.env, limits, names["env"]), limits, names["env"])
    return spec


_SPEC = {"entrypoint": "entrypoint", "env": "env"}
_WIRE = {"entrypoint": "serialized_entrypoint", "env": "environment.env_vars"}


def _check_wire_resources(res: cluster_pb2.ResourceSpecProto) -> None:
    for name in ("replicas", "cpu", "memory_bytes", "disk_bytes"):
        if getattr(res, name) < 0:
            raise fail(f"resources.{name}", f"must be >= 0, got {getattr(res, name)}")


def validate_launch_request(
    request: cluster_pb2.Controller.LaunchJobRequest, limits: Limits = DEFAULT_LIMITS
) -> JobSpec:
    """The controller's check of a LaunchJob: sizes before parsing, then ``validate_job_spec``.
    Returns the request's spec (the blob stays in the request)."""
    if len(request.serialized_entrypoint) > limits.max_entrypoint_bytes:
        raise fail("serialized_entrypoint", f"{len(request.serialized_entrypoint)} bytes exceeds the limit of "
                   f"{limits.max_entrypoint_bytes}")
    if len(request.bundle_blob) > limits.max_bundle_bytes:
        raise fail("bundle_blob", f"{len(request.bundle_blob)} bytes exceeds the limit of {limits.max_bundle_bytes}")
    _check_wire_resources(request.resources)
    for name in ("max_task_failures", "max_retries_failure"):
        if getattr(request, name) < 0:
            raise fail(name, f"must be >= 0, got {getattr(request, name)}")
    if request.HasField("max_retries_preemption") and request.max_retries_preemption < 0:
        raise fail("max_retries_preemption", f"must be >= 0, got {request.max_retries_preemption}")
    check_id(request.parent_job_id, "parent_job_id", limits, required=False)
    parse_entrypoint(request.serialized_entrypoint)  # strict: an empty or foreign entrypoint is refused
    return validate_job_spec(JobSpec.from_proto(request), limits, wire=True)


def validate_run_task(
    request: cluster_pb2.Worker.RunTaskRequest, limits: Limits = DEFAULT_LIMITS
) -> Entrypoint:
    """The worker's check of one RunTask: the rules of the job fields a worker sees (the same
    declarations the controller checked), plus the task's own fields. Returns the parsed
    entrypoint; raises InvalidArgument naming the field."""
    check_id(request.task_id, "task_id", limits)
    check_id(request.job_id, "job_id", limits)
    whole(request.attempt_id, "attempt_id")
    whole(request.task_index, "task_index")
    whole(request.num_tasks, "num_tasks")
    if len(request.serialized_entrypoint) > limits.max_entrypoint_bytes:
        raise fail("serialized_entrypoint", f"{len(request.serialized_entrypoint)} bytes exceeds the limit of "
                   f"{limits.max_entrypoint_bytes}")
    entrypoint = parse_entrypoint(request.serialized_entrypoint)
    _check_wire_resources(request.resources)
    resources_from_proto(request.resources)  # raises for values no ResourceSpec holds
    for f in WORKER_FIELDS:
        if f.name != "env":  # checked below, once, where its size counts with the command's
            f.check(f.get(request), limits, f.wire_name)
    argv_bytes = check_entrypoint(entrypoint, limits, "serialized_entrypoint")
    env_bytes = check_env(request.environment.env_vars, limits, "environment.env_vars")
    check_exec_size(argv_bytes, env_bytes, limits, "environment.env_vars")
    return entrypoint


__all__ = ["DEFAULT_LIMITS", "MAX_ARG_STRLEN", "MAX_MESSAGE_BYTES", "Limits", "check_endpoint", "check_entrypoint",
           "check_filter", "check_id", "check_job_list", "check_log_window", "check_resources", "check_task_page",
           "validate_job_spec", "validate_launch_request", "validate_run_task"]
