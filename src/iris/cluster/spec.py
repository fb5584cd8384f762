"""The job specification: one frozen, typed value for everything a job asks for.

Built once, by the client or the CLI (``JobSpec(...)``), checked by ``iris.cluster.validation``
(the one validator the client, the CLI, the controller and the worker share), and converted to
and from the wire here and nowhere else (``to_proto`` / ``from_proto``). The controller's core
holds it as the job's definition; ``Job.request`` gives the seed's protobuf view of it.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cloudpickle

from iris.cluster.errors import InvalidArgument
from iris.cluster.failures import ExitRule
from iris.cluster.types import ResourceSpec, shared
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


@dataclass(frozen=True, slots=True, eq=False)
class JobSpec:
    """What a job asks for. Frozen; ``iris.cluster.validation.validate_job_spec`` checks it.

    ``replicas`` is the number of tasks (it overrides ``resources.replicas``). ``env`` is
    read-only. ``bundle_hash`` names a workspace bundle already stored by the controller (the zip
    itself travels beside the spec, as ``LaunchJobRequest.bundle_blob``, and is not part of it).
    """

    name: str
    entrypoint: Entrypoint
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    replicas: int = 1
    max_task_failures: int = 0
    max_retries_failure: int = 0
    max_retries_preemption: int = DEFAULT_MAX_RETRIES_PREEMPTION
    scheduling_timeout_seconds: float = 0.0
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    coscheduled: bool = False
    parent_job_id: str = ""
    bundle_hash: str = ""
    exit_rules: tuple[ExitRule, ...] = ()
    """Which exit codes mean what (``iris.cluster.failures``; first match wins)."""
    retry_backoff_seconds: float = 0.0
    """The k-th failure retry of a task waits this * 2^(k-1) (capped at 10 minutes, jittered)."""
    termination_grace_seconds: float | None = None
    """SIGTERM to SIGKILL when Iris stops a task (None: the worker's ``--kill-grace``)."""
    timeout_seconds: float = 0.0
    """Each attempt's running time (0: unbounded); over it the attempt fails "timed out"."""
    max_similar_failures: int = 0
    """Fail the job once this many tasks failed with the same error and none succeeded (0: off)."""
    with_packages: tuple[str, ...] = ()
    """Packages (requirement specifiers, wheel paths or URLs) added to the task's Python environment
    with uv (``--with``; ``iris.cluster.worker.pyenv``)."""

    def __post_init__(self) -> None:
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
        r = self.resources  # its own ``replicas`` is not the job's (``replicas`` is), nor is how sizes were written
        return (
            self.name, self.entrypoint, (r.cpu, r.memory_bytes, r.disk_bytes, r.device), self.replicas, self.max_task_failures,
            self.max_retries_failure, self.max_retries_preemption, self.scheduling_timeout_seconds,
            tuple(sorted(self.env.items())), self.ports, self.coscheduled, self.parent_job_id, self.bundle_hash,
            self.exit_rules, self.retry_backoff_seconds, self.termination_grace_seconds, self.timeout_seconds,
            self.max_similar_failures, self.with_packages,
        )

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed (``dataclasses.replace`` for this slotted class)."""
        values = {name: getattr(self, name) for name in _FIELDS}
        values.update(changes)
        return JobSpec(**values)

    # -- wire -------------------------------------------------------------------------------

    def to_proto(self, bundle_blob: bytes = b"") -> cluster_pb2.Controller.LaunchJobRequest:
        """The ``LaunchJobRequest`` for this spec (the one place a spec becomes wire bytes)."""
        request = cluster_pb2.Controller.LaunchJobRequest(
            name=self.name,
            serialized_entrypoint=self.entrypoint.serialize(),
            resources=self.resources.to_proto(),
            environment=cluster_pb2.EnvironmentConfig(env_vars=dict(self.env)),
            scheduling_timeout_seconds=float(self.scheduling_timeout_seconds),
            ports=list(self.ports),
            parent_job_id=self.parent_job_id,
            max_task_failures=self.max_task_failures,
            max_retries_failure=self.max_retries_failure,
            max_retries_preemption=self.max_retries_preemption,
            coscheduled=self.coscheduled,
            bundle_hash=self.bundle_hash,
            bundle_blob=bundle_blob,
            exit_rules=[cluster_pb2.ExitRule(low=r.low, high=r.high, action=r.action) for r in self.exit_rules],
            retry_backoff_seconds=float(self.retry_backoff_seconds),
            timeout_seconds=float(self.timeout_seconds),
            max_similar_failures=self.max_similar_failures,
            with_packages=list(self.with_packages),
        )
        if self.termination_grace_seconds is not None:
            request.termination_grace_seconds = float(self.termination_grace_seconds)
        request.resources.replicas = self.replicas
        return request

    @classmethod
    def from_proto(cls, request: cluster_pb2.Controller.LaunchJobRequest) -> JobSpec:
        """The spec of a ``LaunchJobRequest`` (the blob is not part of it). Converts, never judges
        (an absent entrypoint becomes an empty one; raises InvalidArgument only for bytes that do
        not parse): ``validate_launch_request`` is what servers call."""
        return cls(
            name=request.name,
            entrypoint=parse_entrypoint(request.serialized_entrypoint) if request.serialized_entrypoint else Entrypoint(),
            resources=resources_from_proto(request.resources),
            replicas=request.resources.replicas or 1,
            max_task_failures=request.max_task_failures,
            max_retries_failure=request.max_retries_failure,
            max_retries_preemption=(
                request.max_retries_preemption
                if request.HasField("max_retries_preemption")
                else DEFAULT_MAX_RETRIES_PREEMPTION
            ),
            scheduling_timeout_seconds=request.scheduling_timeout_seconds or 0.0,  # 0.0: one shared float
            env=dict(request.environment.env_vars),
            ports=tuple(request.ports),
            coscheduled=request.coscheduled,
            parent_job_id=request.parent_job_id,
            bundle_hash=request.bundle_hash,
            exit_rules=tuple(ExitRule(r.low, r.high, r.action) for r in request.exit_rules),
            retry_backoff_seconds=request.retry_backoff_seconds or 0.0,
            termination_grace_seconds=(
                request.termination_grace_seconds if request.HasField("termination_grace_seconds") else None
            ),
            timeout_seconds=request.timeout_seconds or 0.0,
            max_similar_failures=request.max_similar_failures,
            with_packages=tuple(request.with_packages),
        )


_FIELDS = tuple(JobSpec.__dataclass_fields__)


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
