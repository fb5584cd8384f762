"""The job specification: one frozen, typed value for everything a job asks for, one declaration
per field.

Each field of ``JobSpec`` is declared once, in its ``field(...)`` line, with a ``JobField``: its
wire name and conversion, its CLI flag, help and parser, its rule (``iris.cluster.rules``), whether
the worker sees it, who may see it in a job's status, how it is shown, and how ``iris job list``
filters by it. Everything else is driven by the declarations: ``to_proto`` / ``from_proto``, the
client's ``submit(**fields)``, the CLI's job options and list filters, the validator (client, CLI,
controller, and the worker-visible subset on the worker), and the display of a job's spec in
``iris job status``, ``--json``, the API and the dashboard. CONTRIBUTING.md shows how to add one.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cloudpickle

from iris.cluster import rules
from iris.cluster.bands import BANDS, check_band
from iris.cluster.errors import InvalidArgument
from iris.cluster.failures import ExitRule, check_exit_rules, parse_exit_rules
from iris.cluster.rules import MAX_ATTEMPT_TIMEOUT_S, MAX_RETRY_BACKOFF_S, Limits
from iris.cluster.types import CpuDevice, ResourceSpec, device_text, format_cpu, format_size, shared
from iris.rpc import cluster_pb2

DEFAULT_MAX_RETRIES_PREEMPTION = 100
"""Retries of a task after a worker failure when the job does not say (DESIGN §3)."""


@dataclass(frozen=True, slots=True)
class Entrypoint:
    """A task's entry point: a command line or a pickled Python callable.

    >>> Entrypoint.from_command("python", "train.py").argv
    ('python', 'train.py')
    """

    argv: tuple[str, ...] = ()
    pickled: bytes = b""

    @classmethod
    def from_command(cls, *argv: str) -> Entrypoint:
        """Run ``argv`` as a process (no shell) in the attempt's working directory."""
        if len(argv) == 1 and not isinstance(argv[0], str) and isinstance(argv[0], Sequence):
            argv = tuple(argv[0])  # tolerate from_command(["python", "x.py"])
        if not argv or not argv[0]:
            raise InvalidArgument("entrypoint: the command is empty; give a program to run")
        for arg in argv:
            if not isinstance(arg, str):
                raise InvalidArgument(f"entrypoint: command arguments must be strings, got {type(arg).__name__}")
        return cls(argv=tuple(argv))

    @classmethod
    def from_callable(cls, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Entrypoint:
        """Call ``fn(*args, **kwargs)`` in a fresh Python process on the worker.

        ``fn`` and its arguments are serialised with cloudpickle; the task fails when it raises.
        """
        if not callable(fn):
            raise InvalidArgument(f"entrypoint: expected a callable, got {type(fn).__name__}")
        try:
            pickled = cloudpickle.dumps((fn, args, kwargs))
        except Exception as e:
            raise InvalidArgument(f"entrypoint: cannot pickle {fn!r} and its arguments: {e}") from e
        return cls(pickled=pickled)

    def to_proto(self) -> cluster_pb2.Entrypoint:
        if self.argv:
            return cluster_pb2.Entrypoint(command=cluster_pb2.CommandEntrypoint(argv=list(self.argv)))
        return cluster_pb2.Entrypoint(callable=cluster_pb2.CallableEntrypoint(pickled=self.pickled))

    def serialize(self) -> bytes:
        """The bytes sent as ``serialized_entrypoint``."""
        return self.to_proto().SerializeToString()

    @classmethod
    def from_proto(cls, proto: cluster_pb2.Entrypoint) -> Entrypoint:
        if proto.WhichOneof("kind") == "command":
            # Shared: the jobs a controller holds mostly share their programs and flags (its strings
            # interned), and many are the same command run again (one frozen entrypoint for those).
            entrypoint = cls(argv=tuple(sys.intern(arg) if len(arg) <= _INTERN_MAX else arg
                                        for arg in proto.command.argv))
            if sum(map(len, entrypoint.argv)) > _INTERN_MAX:
                return entrypoint
            return shared(_SHARED_COMMANDS, entrypoint.argv, entrypoint)
        return cls(pickled=proto.callable.pickled)


_INTERN_MAX = 256
_SHARED_COMMANDS: dict[tuple[str, ...], Entrypoint] = {}


_NO_ENV: Mapping[str, str] = MappingProxyType({})


def _frozen_env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    if not env:
        return _NO_ENV  # most jobs set none: one shared read-only empty mapping
    return MappingProxyType(dict(env))


Request = cluster_pb2.Controller.LaunchJobRequest
FIELD_KEY = "iris"
"""The key of a ``JobSpec`` field's ``JobField`` in its dataclass metadata."""


def _scalar(wire: str) -> tuple[Callable[[Request, Any], None], Callable[[Any], Any]]:
    def put(request: Request, value: Any) -> None:
        setattr(request, wire, value)

    put.scalar_wire = wire  # type: ignore[attr-defined]  # to_proto passes these to the constructor at once

    def get(request: Any) -> Any:
        return getattr(request, wire)

    return put, get


def _seconds_scalar(wire: str) -> tuple[Callable[[Request, Any], None], Callable[[Any], Any]]:
    """A float field: a zero from the wire is the one shared 0.0 (a controller holds many jobs)."""
    def put(request: Request, value: Any) -> None:
        setattr(request, wire, float(value))

    def get(request: Any) -> Any:
        return getattr(request, wire) or 0.0

    return put, get


@dataclass(frozen=True, slots=True)
class CliOption:
    """How ``iris job run`` / ``iris run`` take a field: ``parse`` turns the flag's text (a tuple of
    texts when ``multiple``, a bool for ``is_flag``) into the field's value, raising ValueError."""

    flag: str
    parse: Callable[[Any], Any]
    metavar: str = ""
    multiple: bool = False
    is_flag: bool = False
    default: str | None = None
    """The flag's default as shown in ``--help`` (None: unset)."""
    short: str = ""


@dataclass(frozen=True, slots=True)
class ListFilter:
    """How ``iris job list`` (and ListJobs, the API) filters jobs by a field: ``FLAG TEXT`` keeps the
    jobs whose value ``matches(value, TEXT)``; ``check`` refuses a malformed TEXT (ValueError)."""

    flag: str
    help: str
    matches: Callable[[Any, str], bool]
    check: Callable[[str], None]
    metavar: str = "TEXT"


@dataclass(frozen=True, slots=True)
class JobField:
    """One job field, declared once: everything Iris does with it follows from this."""

    help: str
    put: Callable[[Request, Any], None] = lambda request, value: None
    """Write the value into a LaunchJobRequest (and a RunTaskRequest when ``worker``: the same field
    names). Left out: the scalar wire field ``wire_name``."""
    get: Callable[[Any], Any] = lambda request: None
    """Read it back from a LaunchJobRequest (or a RunTaskRequest, for a ``worker`` field)."""
    check: Callable[[Any, Limits, str], None] = lambda value, limits, name: None
    """The field's rule (``iris.cluster.rules``); raises InvalidArgument naming ``name``."""
    wire: str = ""
    """The wire field's name: what a rule names when a LaunchJobRequest is checked ("": the field's name)."""
    cli: CliOption | None = None
    worker: bool = False
    """The worker sees it (in RunTaskRequest, under the same name) and checks it again (``validate_run_task``)."""
    public: bool = True
    """Shown to every user in a job's status; False: only to its owner and admins (``redacted``)."""
    show: Callable[[Any], str] = str
    """How ``iris job status`` shows a value."""
    to_json: Callable[[Any], Any] = lambda value: value
    """How ``--json``, the API and the dashboard show it."""
    coerce: Callable[[Any], Any] = lambda value: value
    """Python API values to the field's own type (lists to tuples, text exit rules to rules)."""
    key: Callable[[Any], Any] = lambda value: value
    """What equality and hashing compare."""
    list_filter: ListFilter | None = None
    aliases: tuple[str, ...] = ()
    """Other keyword names ``IrisClient.submit`` accepts for it (e.g. ``on_exit``)."""
    scalar: Callable[[str], tuple[Callable[[Request, Any], None], Callable[[Any], Any]]] = _scalar
    """How a field that gives no ``put``/``get`` is carried: a scalar wire field of its wire name."""
    name: str = ""
    """Filled in from the ``JobSpec`` attribute it declares."""
    default: Any = None
    """Filled in from the ``JobSpec`` attribute's default."""

    @property
    def wire_name(self) -> str:
        return self.wire or self.name

    @property
    def title(self) -> str:
        """How a human table labels it: ``max_retries_failure`` -> "Max retries failure"."""
        return self.name.replace("_", " ").capitalize()


def declare(default: Any, job_field: JobField, *, factory: Callable[[], Any] | None = None) -> Any:
    """A ``JobSpec`` attribute with its declaration (``dataclasses.field`` with the metadata)."""
    if factory is not None:
        return field(default_factory=factory, metadata={FIELD_KEY: job_field})
    return field(default=default, metadata={FIELD_KEY: job_field})


# -- building blocks of declarations ---------------------------------------------------------------


def _repeated(wire: str) -> tuple[Callable[[Request, Any], None], Callable[[Any], Any]]:
    def put(request: Request, value: Any) -> None:
        getattr(request, wire).extend(value)

    def get(request: Any) -> Any:
        return tuple(getattr(request, wire))

    return put, get


def _map(wire: str) -> tuple[Callable[[Request, Any], None], Callable[[Any], Any]]:
    def put(request: Request, value: Any) -> None:
        getattr(request, wire).update(value)

    def get(request: Any) -> Any:
        return dict(getattr(request, wire))

    return put, get


def _int_text(flag: str, minimum: int) -> Callable[[Any], int]:
    def parse(text: Any) -> int:
        try:
            number = int(text)
        except (TypeError, ValueError):
            raise ValueError(f"{flag}: expected a whole number, got {text!r}") from None
        if number < minimum:
            raise ValueError(f"{flag}: must be >= {minimum}, got {number}")
        return number

    return parse


def _seconds_text(flag: str) -> Callable[[Any], float]:
    def parse(text: Any) -> float:
        try:
            number = float(text)
        except (TypeError, ValueError):
            raise ValueError(f"{flag}: expected seconds, got {text!r}") from None
        if not number >= 0:
            raise ValueError(f"{flag}: must be >= 0, got {text}")
        return number

    return parse


def _pairs_text(flag: str) -> Callable[[Any], dict[str, str]]:
    def parse(texts: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in texts or ():
            key, sep, value = str(item).partition("=")
            if not sep or not key:
                raise ValueError(f"{flag}: expected KEY=VALUE, got {item!r}")
            out[key] = value
        return out

    return parse


def _seconds_text_show(value: float) -> str:
    return f"{value:g}s"


def whole(help: str, flag: str) -> JobField:
    """A whole number >= 0 in the scalar wire field of the same name, with its CLI flag."""
    def check(value: Any, limits: Limits, name: str) -> None:
        rules.whole(value, name, 0, 2**31 - 1)

    return JobField(help, check=check, cli=CliOption(flag, _int_text(flag, 0), "N", default="0"))


def seconds(help: str, flag: str, *, maximum: float, zero: str) -> JobField:
    """A number of seconds in [0, maximum] (0 means ``zero``) in the scalar wire field of the same name."""
    def check(value: Any, limits: Limits, name: str) -> None:
        rules.seconds(value, name, zero, maximum)

    return JobField(help, check=check, show=_seconds_text_show, scalar=_seconds_scalar,
                    cli=CliOption(flag, _seconds_text(flag), "SECONDS", default="0"))


_NO_PUT = JobField.__dataclass_fields__["put"].default


def _complete(job_field: JobField, spec_field: dataclasses.Field[Any]) -> JobField:
    """Fill in what a declaration leaves to its attribute: its name and default and, when it gave no
    conversion, the scalar wire field of its wire name."""
    name = spec_field.name
    default = spec_field.default_factory() if spec_field.default_factory is not dataclasses.MISSING \
        else spec_field.default
    changes: dict[str, Any] = {"name": name, "default": default}
    if job_field.put is _NO_PUT:
        changes["put"], changes["get"] = job_field.scalar(job_field.wire or name)
    return dataclasses.replace(job_field, **changes)


# -- field-specific pieces ----------------------------------------------------------------------


def _put_entrypoint(request: Request, value: Entrypoint) -> None:
    if value.argv or value.pickled:
        request.serialized_entrypoint = value.serialize()


def _get_entrypoint(request: Any) -> Entrypoint:
    data = request.serialized_entrypoint
    return parse_entrypoint(data) if data else Entrypoint()


def _show_entrypoint(value: Entrypoint) -> str:
    return " ".join(value.argv) if value.argv else "a Python callable"


def _json_entrypoint(value: Entrypoint) -> Any:
    return {"command": list(value.argv)} if value.argv else {"callable": True}


def _put_resources(request: Request, value: ResourceSpec) -> None:
    request.resources.MergeFrom(value.to_proto())


def _get_resources(request: Any) -> ResourceSpec:
    return resources_from_proto(request.resources)


def _show_resources(value: ResourceSpec) -> str:
    parts = [f"cpu {format_cpu(value.cpu_millicores)}"]
    if value.memory_bytes:
        parts.append(f"memory {format_size(value.memory_bytes)}")
    if value.disk_bytes:
        parts.append(f"disk {format_size(value.disk_bytes)}")
    if not isinstance(value.device, CpuDevice):
        parts.append(device_text(value.device))
    return ", ".join(parts)


def _json_resources(value: ResourceSpec) -> Any:
    return {"cpu_millicores": value.cpu_millicores, "memory_bytes": value.memory_bytes,
            "disk_bytes": value.disk_bytes, "device": device_text(value.device)}


def _put_replicas(request: Request, value: int) -> None:
    request.resources.replicas = value


def _check_resources(value: Any, limits: Limits, name: str) -> None:
    if not isinstance(value, ResourceSpec):
        raise rules.fail(name, f"must be a ResourceSpec, got {type(value).__name__}")
    rules.check_resources(value, name)


def _check_replicas(value: Any, limits: Limits, name: str) -> None:
    rules.whole(value, name, 1, limits.max_replicas)


def _check_scheduling_timeout(value: Any, limits: Limits, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) \
            or value < 0:
        raise rules.fail(name, f"must be a finite number >= 0 (0 waits forever), got {rules.show(value)}")


def _put_env(request: Request, value: Mapping[str, str]) -> None:
    request.environment.env_vars.update(value)


def _get_env(request: Any) -> dict[str, str]:
    return dict(request.environment.env_vars)


def _put_exit_rules(request: Request, value: tuple[ExitRule, ...]) -> None:
    request.exit_rules.extend(cluster_pb2.ExitRule(low=r.low, high=r.high, action=r.action) for r in value)


def _get_exit_rules(request: Any) -> tuple[ExitRule, ...]:
    return tuple(ExitRule(r.low, r.high, r.action) for r in request.exit_rules)


def _check_exit_rules(value: Any, limits: Limits, name: str) -> None:
    if not isinstance(value, tuple) or not all(isinstance(r, ExitRule) for r in value):
        raise rules.fail(name, "must be a tuple of ExitRule")
    problem = check_exit_rules(value)
    if problem:
        raise rules.fail(name, problem)


def _coerce_exit_rules(value: Any) -> tuple[ExitRule, ...]:
    """``("2=fail-job", ...)``, ``{"2": "fail-job"}`` or ExitRules."""
    if isinstance(value, Mapping):
        value = [f"{k}={v}" for k, v in value.items()]
    items = [value] if isinstance(value, (str, ExitRule)) else list(value or ())
    if all(isinstance(r, ExitRule) for r in items):
        return tuple(r for r in items if isinstance(r, ExitRule))
    try:
        return parse_exit_rules(str(r) for r in items)
    except ValueError as e:
        raise InvalidArgument(f"on_exit: {e}") from None


def _show_exit_rules(value: tuple[ExitRule, ...]) -> str:
    return ", ".join(f"{r.codes_text()}={r.action}" for r in value)


def _put_grace(request: Request, value: float | None) -> None:
    if value is not None:
        request.termination_grace_seconds = float(value)


def _get_grace(request: Any) -> float | None:
    return request.termination_grace_seconds if request.HasField("termination_grace_seconds") else None


def _check_grace(value: Any, limits: Limits, name: str) -> None:
    if value is not None:
        rules.seconds(value, name, "unset: the worker's kill grace", MAX_ATTEMPT_TIMEOUT_S)


def _get_max_retries_preemption(request: Any) -> int:
    return request.max_retries_preemption if request.HasField("max_retries_preemption") \
        else DEFAULT_MAX_RETRIES_PREEMPTION


def _strings(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def _check_type(kind: type, what: str) -> Callable[[Any, Limits, str], None]:
    def check(value: Any, limits: Limits, name: str) -> None:
        if not isinstance(value, kind):
            raise rules.fail(name, f"must be {what}, got {type(value).__name__}")

    return check


def _check_name(value: Any, limits: Limits, name: str) -> None:
    rules.check_job_name(value)


def _check_env(value: Any, limits: Limits, name: str) -> None:
    rules.check_env(value, limits, name)


def _check_strings(value: Any, name: str) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise rules.fail(name, f"must be a list of strings, got {rules.show(value)}")


def _check_ports(value: Any, limits: Limits, name: str) -> None:
    _check_strings(value, name)
    rules.check_ports(value, limits, name)


def _check_text(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise rules.fail(name, f"must be a string, got {type(value).__name__}")


def _check_parent(value: Any, limits: Limits, name: str) -> None:
    _check_text(value, name)
    rules.check_id(value, name, limits, required=False)


def _check_bundle_hash(value: Any, limits: Limits, name: str) -> None:
    _check_text(value, name)
    rules.check_bundle_hash(value, name)


def _check_with_packages(value: Any, limits: Limits, name: str) -> None:
    _check_strings(value, name)
    rules.check_with_packages(value, name)


def _check_bool(value: Any, limits: Limits, name: str) -> None:
    if not isinstance(value, bool):
        raise rules.fail(name, f"must be true or false, got {rules.show(value)}")


def _sorted_items(value: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(value.items()))


def _show_pairs(value: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))


def _list_text(value: Sequence[str]) -> str:
    return ", ".join(value)


MAX_ENV_GROUPS = 16
_GROUP_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")


def _check_env_groups(value: Any, limits: Limits, name: str) -> None:
    _check_strings(value, name)
    if len(value) > MAX_ENV_GROUPS:
        raise rules.fail(name, f"at most {MAX_ENV_GROUPS} groups, got {len(value)}")
    for group in value:
        if not _GROUP_NAME.fullmatch(group):
            raise rules.fail(name, f"{rules.show(group)} is not a dependency group name (letters, digits, '.', '_', "
                                   "'-', starting and ending with a letter or digit)")


MAX_LABELS = 64
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?)?")
_LABEL_RULE = ("keys are 1-128 letters, digits, '.', '_', '-' or '/', values up to 128 letters, digits, '.', '_' "
               "or '-', each starting and ending with a letter or digit")


def _check_labels(value: Any, limits: Limits, name: str) -> None:
    if not isinstance(value, Mapping):
        raise rules.fail(name, f"must be a mapping of keys to values, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise rules.fail(name, f"at most {MAX_LABELS} labels, got {len(value)}")
    for key, label in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key) or not isinstance(label, str) \
                or not _LABEL_VALUE.fullmatch(label):
            raise rules.fail(name, f"{rules.show(key)}={rules.show(label)}: {_LABEL_RULE}")


def _check_priority(value: Any, limits: Limits, name: str) -> None:
    if not isinstance(value, str):
        raise rules.fail(name, f"must be a band name, got {rules.show(value)}")
    check_band(value, name)


def _check_band_text(text: str) -> None:
    if text not in BANDS:
        raise ValueError(f"{rules.show(text)}: expected one of {', '.join(BANDS)}")


def _check_label_selector(text: str) -> None:
    key, op, value = _parse_label_selector(text)
    if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
        raise ValueError(f"{rules.show(text)}: expected K=V, K!=V or K ({_LABEL_RULE})")


def _parse_label_selector(text: str) -> tuple[str, str, str]:
    if "!=" in text:
        key, _, value = text.partition("!=")
        return key, "!=", value
    if "=" in text:
        key, _, value = text.partition("=")
        return key, "=", value
    return text, "", ""


def _label_matches(labels: Mapping[str, str], text: str) -> bool:
    key, op, value = _parse_label_selector(text)
    if op == "=":
        return labels.get(key) == value
    if op == "!=":
        return labels.get(key) != value
    return key in labels


@dataclass(frozen=True, slots=True, eq=False)
class JobSpec:
    """What a job asks for. Frozen; ``iris.cluster.validation.validate_job_spec`` checks it.

    ``replicas`` is the number of tasks (it overrides ``resources.replicas``). ``env`` is
    read-only. ``bundle_hash`` names a workspace bundle already stored by the controller (the zip
    itself travels beside the spec, as ``LaunchJobRequest.bundle_blob``, and is not part of it).
    Each attribute is declared once, with its ``JobField`` (module docstring); ``FIELDS`` lists them.
    """

    name: str = declare("", JobField(
        "Job name: letters, digits, '.', '_' and '-' (a child job's id is PARENT/NAME).", *_scalar("name"),
        check=_check_name))
    entrypoint: Entrypoint = declare(None, JobField(
        "The command (or Python callable) each task runs.", _put_entrypoint, _get_entrypoint,
        check=_check_type(Entrypoint, "an Entrypoint"),
        wire="serialized_entrypoint", worker=True, public=False, show=_show_entrypoint, to_json=_json_entrypoint),
        factory=lambda: Entrypoint())
    resources: ResourceSpec = declare(None, JobField(
        "What each task needs: cpu, memory, disk, device.", _put_resources, _get_resources, check=_check_resources,
        worker=True, show=_show_resources, to_json=_json_resources, key=lambda r: (
            r.cpu, r.memory_bytes, r.disk_bytes, r.device)), factory=ResourceSpec)
    replicas: int = declare(1, JobField(
        "Number of tasks.", _put_replicas, lambda r: r.resources.replicas or 1, check=_check_replicas,
        wire="resources.replicas"))
    max_task_failures: int = declare(0, whole(
        "Tasks that may fail while the job still succeeds.", "--max-task-failures"))
    max_retries_failure: int = declare(0, whole(
        "Retries per task after a failure (non-zero exit).", "--max-retries"))
    max_retries_preemption: int = declare(DEFAULT_MAX_RETRIES_PREEMPTION, dataclasses.replace(whole(
        "Retries per task after its worker died.", "--max-preemptions"), put=_scalar("max_retries_preemption")[0],
        get=_get_max_retries_preemption, cli=CliOption("--max-preemptions", _int_text("--max-preemptions", 0), "N",
                                                       default=str(DEFAULT_MAX_RETRIES_PREEMPTION))))
    scheduling_timeout_seconds: float = declare(0.0, JobField(
        "Seconds a task may wait for a worker before the job is UNSCHEDULABLE (0: forever).",
        *_seconds_scalar("scheduling_timeout_seconds"), check=_check_scheduling_timeout, show=_seconds_text_show,
        cli=CliOption("--scheduling-timeout", _seconds_text("--scheduling-timeout"), "SECONDS", default="0")))
    env: Mapping[str, str] = declare(None, JobField(
        "Environment variable K=V for every task (repeatable).", _put_env, _get_env, check=_check_env,
        wire="environment.env_vars", worker=True, public=False, show=_show_pairs, to_json=dict,
        coerce=lambda v: dict(v or {}), key=_sorted_items,
        cli=CliOption("--env", _pairs_text("--env"), "K=V", multiple=True, short="-e")), factory=dict)
    ports: tuple[str, ...] = declare((), JobField(
        "Named port to allocate per task (repeatable): IRIS_PORT_<NAME> in the task.", *_repeated("ports"),
        check=_check_ports, worker=True, show=_list_text, to_json=list, coerce=_strings,
        cli=CliOption("--port", tuple, "NAME", multiple=True)))
    coscheduled: bool = declare(False, JobField(
        "Start all tasks at once or none; when one task will be retried, the others are stopped and the whole "
        "gang is placed again together (a gang restart).", *_scalar("coscheduled"), check=_check_bool,
        cli=CliOption("--coscheduled", bool, is_flag=True)))
    parent_job_id: str = declare("", JobField(
        "Submit as a child of this job (inside a task: its own job).", *_scalar("parent_job_id"),
        check=_check_parent))
    bundle_hash: str = declare("", JobField(
        "The workspace bundle (sha256) every attempt runs in.", *_scalar("bundle_hash"), check=_check_bundle_hash,
        worker=True))
    exit_rules: tuple[ExitRule, ...] = declare((), JobField(
        "What an exit code means (repeatable; CODES a comma list or ranges, a death by signal N is 128+N): "
        "fail-job (the job fails now), failure (the default: --max-retries), preemption (--max-preemptions). "
        "E.g. --on-exit 2=fail-job --on-exit 75,143=preemption.", _put_exit_rules, _get_exit_rules,
        check=_check_exit_rules, show=_show_exit_rules, to_json=lambda v: [f"{r.codes_text()}={r.action}" for r in v],
        coerce=_coerce_exit_rules, aliases=("on_exit",),
        cli=CliOption("--on-exit", lambda texts: parse_exit_rules(texts or ()), "CODES=ACTION", multiple=True)))
    retry_backoff_seconds: float = declare(0.0, seconds(
        "The k-th failure retry of a task waits SECONDS*2^(k-1) (capped at 10 min, jittered); preemption "
        "retries are not delayed.", "--retry-backoff", maximum=MAX_RETRY_BACKOFF_S, zero="0: no backoff"))
    termination_grace_seconds: float | None = declare(None, JobField(
        "SIGTERM to SIGKILL when Iris stops a task (job stop, gang restart, drain, preemption), so it can "
        "checkpoint (default: the worker's --kill-grace).", _put_grace, _get_grace, check=_check_grace,
        show=_seconds_text_show,
        cli=CliOption("--termination-grace", lambda t: None if t is None else _seconds_text("--termination-grace")(t),
                      "SECONDS")))
    timeout_seconds: float = declare(0.0, seconds(
        "Each attempt's running time; over it the attempt fails \"timed out\" (0: unbounded).", "--timeout",
        maximum=MAX_ATTEMPT_TIMEOUT_S, zero="0: unbounded"))
    max_similar_failures: int = declare(0, whole(
        "Fail the job once K tasks failed with the same error and none succeeded (0: off).",
        "--max-similar-failures"))
    with_packages: tuple[str, ...] = declare((), JobField(
        "Add a package to the task's Python environment, built with uv (repeatable; with the workspace's "
        "uv.lock when it has one).", *_repeated("with_packages"), check=_check_with_packages, worker=True,
        show=_list_text, to_json=list, coerce=_strings, cli=CliOption("--with", tuple, "PKG", multiple=True)))

    labels: Mapping[str, str] = declare(None, JobField(
        "A label K=V to tag the job with (repeatable): shown in its status, filtered by in "
        "`iris job list --label K=V`.", *_map("labels"), check=_check_labels, show=_show_pairs, to_json=dict,
        coerce=lambda v: dict(v or {}), key=_sorted_items,
        cli=CliOption("--label", _pairs_text("--label"), "K=V", multiple=True),
        list_filter=ListFilter("--label", "Only jobs with this label (repeatable; all must hold): K=V, K!=V, or K "
                               "(has the label).", _label_matches, _check_label_selector, "K=V")),
        factory=dict)

    priority: str = declare("", JobField(
        "Priority band: production, interactive or batch. Bands come first in the queue order. Unset: a root job "
        "is interactive, a child takes its parent's band (it may ask for a lower one). production needs a token "
        "allowed it (iris token create --max-priority).", *_scalar("priority"), check=_check_priority,
        show=lambda v: v or "(default)", cli=CliOption("--priority", lambda t: t or "", "BAND"),
        list_filter=ListFilter("--priority", "Only jobs in this band (production, interactive, batch).",
                               lambda value, text: value == text, _check_band_text, "BAND")))

    env_groups: tuple[str, ...] = declare((), JobField(
        "Include this dependency group of the workspace's uv.lock in the task's Python environment (repeatable; "
        "by default only what the project needs to run, not its dev group).", *_repeated("env_groups"),
        check=_check_env_groups, worker=True, show=_list_text, to_json=list, coerce=_strings,
        cli=CliOption("--env-group", tuple, "NAME", multiple=True)))

    def __post_init__(self) -> None:
        object.__setattr__(self, "env_groups", tuple(self.env_groups))
        object.__setattr__(self, "labels", _frozen_env(self.labels))
        object.__setattr__(self, "with_packages", tuple(self.with_packages))
        object.__setattr__(self, "env", _frozen_env(self.env))
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "exit_rules", tuple(self.exit_rules))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobSpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (_PLAIN_KEY(self), *[key(getattr(self, name)) for name, key in _KEYED])

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed (``dataclasses.replace`` for this slotted class)."""
        values = {f.name: getattr(self, f.name) for f in FIELDS}
        values.update(changes)
        return JobSpec(**values)

    # -- wire -------------------------------------------------------------------------------

    def to_proto(self, bundle_blob: bytes = b"") -> Request:
        """The ``LaunchJobRequest`` for this spec (the one place a spec becomes wire bytes)."""
        request = Request(**{wire: getattr(self, name) for name, wire in _SCALARS}, bundle_blob=bundle_blob)
        for name, put in _PUTS:
            value = getattr(self, name)
            if value is not None and (value or isinstance(value, int | float)):  # unset or empty: the wire's default
                put(request, value)
        return request

    @classmethod
    def from_proto(cls, request: Request) -> JobSpec:
        """The spec of a ``LaunchJobRequest`` (the blob is not part of it). Converts, never judges
        (an absent entrypoint becomes an empty one; raises InvalidArgument only for bytes that do
        not parse): ``validate_launch_request`` is what servers call."""
        return cls(*[get(request) for get in _GETTERS])  # positional, in declaration order

    def to_run_task(self, request: cluster_pb2.Worker.RunTaskRequest) -> None:
        """Write the fields a worker sees into its RunTaskRequest (the same wire names)."""
        for f in WORKER_FIELDS:
            f.put(request, getattr(self, f.name))  # type: ignore[arg-type]

    # -- display ----------------------------------------------------------------------------

    def redacted(self) -> JobSpec:
        """This spec as a user other than its owner (or an admin) may see it: the fields declared
        not ``public`` (its command, environment...) back at their defaults."""
        return self.replace(**{f.name: f.default for f in FIELDS if not f.public})

    def for_status(self, may_read_secrets: bool) -> Request:
        """The spec a job's status carries (``JobStatus.spec``): redacted for other users; a
        callable's pickled bytes never travel back (it is shown as "a Python callable")."""
        spec = self if may_read_secrets else self.redacted()
        if spec.entrypoint.pickled:
            spec = spec.replace(entrypoint=Entrypoint(pickled=CALLABLE_SHOWN))
        return spec.to_proto()

    def to_json(self, *, public_only: bool = False) -> dict[str, Any]:
        """Every field's value as ``--json``, the API and the dashboard show it (``public_only``: a
        redacted spec, without the fields it does not carry)."""
        return {f.name: f.to_json(getattr(self, f.name)) for f in FIELDS if f.public or not public_only}

    def shown(self, *, public_only: bool = False) -> list[tuple[str, str]]:
        """(field, text) for the fields this spec sets to other than their default, in declaration
        order, as ``iris job status`` shows them."""
        out = []
        for f in FIELDS:
            if public_only and not f.public:
                continue
            value = getattr(self, f.name)
            if f.key(value) != f.key(f.default) and value is not None:
                out.append((f.name, f.show(value)))
        return out


CALLABLE_SHOWN = cloudpickle.dumps(None)
"""What stands for a callable's pickled bytes in a job's status (they are never sent back)."""


FIELDS: tuple[JobField, ...] = tuple(
    _complete(f.metadata[FIELD_KEY], f) for f in dataclasses.fields(JobSpec))
"""Every job field's declaration, in declaration order."""
FIELDS_BY_NAME: dict[str, JobField] = {f.name: f for f in FIELDS}
_GETTERS = tuple(f.get for f in FIELDS)
_SCALARS = tuple((f.name, f.put.scalar_wire) for f in FIELDS if hasattr(f.put, "scalar_wire"))
_PUTS = tuple((f.name, f.put) for f in FIELDS if not hasattr(f.put, "scalar_wire"))
_IDENTITY = JobField.__dataclass_fields__["key"].default
_PLAIN_KEY = operator.attrgetter(*[f.name for f in FIELDS if f.key is _IDENTITY])
_KEYED = tuple((f.name, f.key) for f in FIELDS if f.key is not _IDENTITY)
WORKER_FIELDS: tuple[JobField, ...] = tuple(f for f in FIELDS if f.worker)
"""What a worker sees of a job (RunTaskRequest carries these under the same names)."""
LIST_FILTERS: dict[str, JobField] = {f.name: f for f in FIELDS if f.list_filter is not None}
"""Fields ``iris job list`` (ListJobs, the API) can filter by."""
CLI_FIELDS: tuple[JobField, ...] = tuple(f for f in FIELDS if f.cli is not None)
"""Fields with a flag of their own on ``iris job run`` / ``iris run``."""


def spec_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword fields of ``IrisClient.submit`` (names or aliases) as ``JobSpec`` values, each coerced
    by its declaration. Raises InvalidArgument for a name no field declares."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        f = FIELDS_BY_NAME.get(key) or _ALIASES.get(key)
        if f is None:
            raise InvalidArgument(f"{key}: not a job field (fields: {', '.join(sorted(FIELDS_BY_NAME))})")
        out[f.name] = f.coerce(value)
    return out


_ALIASES: dict[str, JobField] = {alias: f for f in FIELDS for alias in f.aliases}


def parse_list_filters(texts: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """``{field: [TEXT...]}`` from ``iris job list`` flags (or the API) as checked (field, TEXT)
    pairs. Raises InvalidArgument naming the field and the rule."""
    out: list[tuple[str, str]] = []
    for name, values in texts.items():
        f = LIST_FILTERS.get(name)
        if f is None or f.list_filter is None:
            raise InvalidArgument(f"filters: jobs cannot be filtered by {name[:64]!r} (only by "
                                  f"{', '.join(sorted(LIST_FILTERS)) or 'nothing'})")
        for text in values:
            try:
                f.list_filter.check(text)
            except ValueError as e:
                raise InvalidArgument(f"{f.list_filter.flag.lstrip('-')}: {e}") from None
            out.append((name, text))
    return out


def matches_filters(spec: JobSpec, filters: Sequence[tuple[str, str]]) -> bool:
    """Whether a job's spec passes every (field, TEXT) filter."""
    for name, text in filters:
        f = LIST_FILTERS[name]
        assert f.list_filter is not None
        if not f.list_filter.matches(getattr(spec, name), text):
            return False
    return True




def resources_from_proto(proto: cluster_pb2.ResourceSpecProto) -> ResourceSpec:
    try:
        resources = ResourceSpec.from_proto(proto)
    except ValueError as e:
        raise InvalidArgument(f"resources.{e}") from None
    # Jobs ask for a few shapes: the jobs a controller holds share one frozen spec per shape.
    return shared(_SHARED_RESOURCES, resources, resources)


_SHARED_RESOURCES: dict[ResourceSpec, ResourceSpec] = {}


def parse_entrypoint(data: bytes) -> Entrypoint:
    """Decode ``serialized_entrypoint`` bytes. Raises InvalidArgument naming the field."""
    try:
        proto = cluster_pb2.Entrypoint.FromString(data)
    except Exception as e:
        raise InvalidArgument(f"serialized_entrypoint: not a valid iris.cluster.Entrypoint ({type(e).__name__})") from None
    kind = proto.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("serialized_entrypoint: must hold a command or a callable")
    return Entrypoint.from_proto(proto)
