"""Ids, resource specs and named state sets shared by every part of Iris.

Pure: no I/O, no clock. Protobuf is used at the edges only (``to_proto`` / ``from_proto``) and
for the enum values of task and job states, which the seed keeps as ``cluster_pb2`` ints.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NamedTuple, NewType, TypeVar

from iris.rpc import cluster_pb2

JobId = NewType("JobId", str)
TaskId = NewType("TaskId", str)
WorkerId = NewType("WorkerId", str)
EndpointId = NewType("EndpointId", str)


class AttemptRef(NamedTuple):
    """One attempt of one task of one incarnation of its job: the value every "is this the task's
    current attempt?" question is asked about (``ControllerState.live_attempt``). ``job_uid`` ""
    comes from an older peer and is not checked. (A named tuple: made on every report and ack.)"""

    task_id: TaskId
    attempt_id: int
    job_uid: str = ""

# Match these with ``fullmatch`` (never ``match``: "$" lets a trailing newline through).
# A job name is one path segment: letters, digits, '.', '_' and '-', starting with a letter or digit.
JOB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PORT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""A named port: exported to the task as ``IRIS_PORT_<NAME upper-cased>``."""
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BUNDLE_HASH_RE = re.compile(r"[0-9a-f]{64}")
"""A workspace bundle's id: the sha256 hex digest of its zip."""
_TASK_SUFFIX = "/task-"


def task_id_for(job_id: JobId, index: int) -> TaskId:
    """The one place a task id is built: ``"{job_id}/task-{index}"``."""
    return TaskId(f"{job_id}{_TASK_SUFFIX}{index}")


OWNER_SEP = ":"
"""Between a root job's owner and its name: ``alice:train`` (``:`` is in no job or user name)."""


def root_job_id(owner: str, name: str) -> JobId:
    """A root job's id: ``"{owner}:{name}"``; job names are unique per owner (``name`` alone for a
    job without an owner)."""
    return JobId(f"{owner}{OWNER_SEP}{name}" if owner else name)


def owner_of_job_id(job_id: str) -> str:
    """The owner named in a job, child job or task id ("" for an id without one)."""
    owner, sep, _ = job_id.split("/", 1)[0].partition(OWNER_SEP)
    return owner if sep else ""


def qualify_job_id(job_id: str, user: str) -> str:
    """An id as a user typed it: a bare name (``train``, ``train/child``, ``train/task-0``) means one
    of ``user``'s own jobs; an id with an owner (``bob:train``) is taken whole."""
    if not job_id or not user or OWNER_SEP in job_id.split("/", 1)[0]:
        return job_id
    return f"{user}{OWNER_SEP}{job_id}"


def child_job_id(parent_id: JobId, name: str) -> JobId:
    """Id of a child job: ``"{parent_id}/{name}"``."""
    return JobId(f"{parent_id}/{name}")


def parse_task_id(task_id: str) -> tuple[JobId, int]:
    """Split a task id into (job id, index). Raises ValueError when it is not a task id."""
    job_part, sep, index_part = task_id.rpartition(_TASK_SUFFIX)
    if not sep or not job_part or not index_part.isdigit():
        raise ValueError(f"task_id {task_id!r} is not of the form '<job_id>/task-<index>'")
    return JobId(job_part), int(index_part)


# ---------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------

TASK_STATES: tuple[int, ...] = tuple(cluster_pb2.TaskState.values())
"""Every task state value, UNSPECIFIED included."""
JOB_STATES: tuple[int, ...] = tuple(cluster_pb2.JobState.values())
PENDING = cluster_pb2.TASK_STATE_PENDING
BUILDING = cluster_pb2.TASK_STATE_BUILDING
RUNNING = cluster_pb2.TASK_STATE_RUNNING
SUCCEEDED = cluster_pb2.TASK_STATE_SUCCEEDED
FAILED = cluster_pb2.TASK_STATE_FAILED
KILLED = cluster_pb2.TASK_STATE_KILLED
WORKER_FAILED = cluster_pb2.TASK_STATE_WORKER_FAILED
UNSCHEDULABLE = cluster_pb2.TASK_STATE_UNSCHEDULABLE
"""Task states by name, for code that needs no protobuf module (the seed keeps them as ints)."""
PREEMPTED = cluster_pb2.TASK_STATE_PREEMPTED
"""An attempt stopped by the sharing policy (issue 24); a task is never in it (it is PENDING again)."""

TERMINAL_TASK_STATES: frozenset[int] = frozenset(
    {
        cluster_pb2.TASK_STATE_SUCCEEDED,
        cluster_pb2.TASK_STATE_FAILED,
        cluster_pb2.TASK_STATE_KILLED,
        cluster_pb2.TASK_STATE_WORKER_FAILED,
        cluster_pb2.TASK_STATE_UNSCHEDULABLE,
    }
)
"""A task in one of these states never changes again."""

ACTIVE_TASK_STATES: frozenset[int] = frozenset({cluster_pb2.TASK_STATE_BUILDING, cluster_pb2.TASK_STATE_RUNNING})
"""Bound to a worker, holding its resources, with a process that may be alive."""

TERMINAL_JOB_STATES: frozenset[int] = frozenset(
    {
        cluster_pb2.JOB_STATE_SUCCEEDED,
        cluster_pb2.JOB_STATE_FAILED,
        cluster_pb2.JOB_STATE_KILLED,
        cluster_pb2.JOB_STATE_WORKER_FAILED,
        cluster_pb2.JOB_STATE_UNSCHEDULABLE,
    }
)


def is_task_finished(state: int) -> bool:
    return state in TERMINAL_TASK_STATES


def is_job_finished(state: int) -> bool:
    return state in TERMINAL_JOB_STATES


def task_state_name(state: int) -> str:
    """``TASK_STATE_RUNNING`` -> ``"RUNNING"``."""
    return str(cluster_pb2.TaskState.Name(state)).removeprefix("TASK_STATE_")  # type: ignore[arg-type]


def job_state_name(state: int) -> str:
    """``JOB_STATE_RUNNING`` -> ``"RUNNING"``."""
    return str(cluster_pb2.JobState.Name(state)).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Sizes and resources
# ---------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: str | int, field_name: str = "size") -> int:
    """Parse "512MiB", "8GiB", "2G", "1024" or an int into bytes.

    Raises ValueError naming ``field_name`` and the accepted forms on bad input.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field_name}: expected a size such as '512MiB' or '8GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field_name}: must be >= 0, got {value}")
        return value
    match = _SIZE_RE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"{field_name}: expected a size such as '512MiB', '8GiB' or a byte count, got {value!r}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))


def format_size(num_bytes: int) -> str:
    """A byte count the way a person wrote it: the largest unit, binary or decimal, in which it is
    exact with at most two decimals ("2GB" stays "2GB" rather than "1.9GiB"; 1610612736 is
    "1.5GiB"); otherwise binary units with one decimal."""
    num_bytes = int(num_bytes)
    if num_bytes == 0:
        return "0B"
    exact = [(num_bytes / size, unit) for unit, size in _BINARY + _DECIMAL
             if num_bytes >= size and (num_bytes * 100) % size == 0]
    if exact:
        value, unit = min(exact)
        return f"{value:.2f}".rstrip("0").rstrip(".") + unit
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)}B"
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in "30s", "10m", "2h", "1d", "1h30m" or a bare number of seconds. Raises ValueError."""
    value = text.strip().lower()
    if not value:
        raise ValueError("expected a duration such as 30s, 10m, 2h or 1d")
    try:
        seconds = float(value)
    except ValueError:
        parts = re.fullmatch(r"((?:\d+(?:\.\d+)?[smhd])+)", value)
        if parts is None:
            raise ValueError(f"expected a duration such as 30s, 10m, 2h or 1d, got {text!r}") from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", value))
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"must be >= 0, got {text!r}")
    return seconds


MILLICORES_PER_CORE = 1000


def cpu_to_millicores(cpu: float | int, field_name: str = "cpu") -> int:
    """Cores (``0.5``, ``2``) as millicores (500, 2000). Raises ValueError naming ``field_name``
    unless ``cpu`` is a number > 0 and a whole number of millicores."""
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu != cpu or cpu in (float("inf"), float("-inf")):
        raise ValueError(f"{field_name}: must be a number of cores such as 1, 2 or 0.5, got {cpu!r}")
    if cpu <= 0:
        raise ValueError(f"{field_name}: must be > 0 cores (e.g. 0.5 or 1), got {cpu!r}")
    millicores = round(cpu * MILLICORES_PER_CORE)
    if abs(millicores - cpu * MILLICORES_PER_CORE) > 1e-6 * max(1.0, abs(cpu)) or millicores < 1:
        raise ValueError(f"{field_name}: must be a whole number of millicores (at most 3 decimals), got {cpu!r}")
    return millicores


def cores(millicores: int) -> float | int:
    """Millicores as cores: 2000 -> 2 (an int when whole), 500 -> 0.5."""
    whole, rest = divmod(int(millicores), MILLICORES_PER_CORE)
    return whole if rest == 0 else millicores / MILLICORES_PER_CORE


def format_cpu(millicores: int) -> str:
    """Millicores shown as cores: "2", "0.5", "1.25"."""
    return f"{cores(millicores):g}" if millicores % MILLICORES_PER_CORE else str(millicores // MILLICORES_PER_CORE)


def parse_cpu(value: str | float | int, field_name: str = "cpu") -> float | int:
    """Cores from the command line: "2", "0.5" or "500m" (millicores). Raises ValueError."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("m"):
                millis = int(text[:-1])
                if millis <= 0:
                    raise ValueError
                return cores(millis)
            number = float(text)
        except ValueError:
            raise ValueError(f"{field_name}: must be a number of cores such as 1, 0.5 or 500m, got {value!r}") from None
        value = int(number) if number.is_integer() else number
    cpu_to_millicores(value, field_name)
    return value


@dataclass(frozen=True, slots=True)
class CpuDevice:
    variant: str = ""


@dataclass(frozen=True, slots=True)
class GpuDevice:
    variant: str = ""
    count: int = 1


@dataclass(frozen=True, slots=True)
class TpuDevice:
    variant: str = ""
    count: int = 1


Device = CpuDevice | GpuDevice | TpuDevice


def cpu() -> CpuDevice:
    return CpuDevice()


def gpu(variant: str = "", count: int = 1) -> GpuDevice:
    return GpuDevice(variant=variant, count=count)


def tpu(variant: str = "", count: int = 1) -> TpuDevice:
    return TpuDevice(variant=variant, count=count)


def device_text(device: Device) -> str:
    """``"cpu"``, ``"gpu:2"``, ``"H100:2"`` (a variant stands for its kind), ``"tpu:v5e:4"``."""
    if isinstance(device, GpuDevice):
        return f"{device.variant or 'gpu'}:{device.count}"
    if isinstance(device, TpuDevice):
        return f"tpu:{device.variant + ':' if device.variant else ''}{device.count}"
    return device.variant or "cpu"


def device_to_proto(device: Device) -> cluster_pb2.DeviceConfig:
    if isinstance(device, GpuDevice):
        return cluster_pb2.DeviceConfig(gpu=cluster_pb2.GpuDevice(variant=device.variant, count=device.count))
    if isinstance(device, TpuDevice):
        return cluster_pb2.DeviceConfig(tpu=cluster_pb2.TpuDevice(variant=device.variant, count=device.count))
    return cluster_pb2.DeviceConfig(cpu=cluster_pb2.CpuDevice(variant=device.variant))


_ANY_CPU = CpuDevice()


def device_from_proto(proto: cluster_pb2.DeviceConfig) -> Device:
    kind = proto.WhichOneof("device")
    if kind == "gpu":  # a count of 0 on the wire means one (see ``device_count``)
        return GpuDevice(variant=proto.gpu.variant, count=proto.gpu.count or 1)
    if kind == "tpu":
        return TpuDevice(variant=proto.tpu.variant, count=proto.tpu.count or 1)
    variant = proto.cpu.variant if kind == "cpu" else ""
    return CpuDevice(variant=variant) if variant else _ANY_CPU  # one shared value: most jobs ask for it


def device_kind(proto: cluster_pb2.DeviceConfig) -> str:
    """"gpu", "tpu" or "cpu" (an unset device is cpu)."""
    return proto.WhichOneof("device") or "cpu"


def device_count(proto: cluster_pb2.DeviceConfig) -> int:
    """Accelerators a device config asks for or offers (0 for cpu). A gpu with count 0 means 1."""
    kind = proto.WhichOneof("device")
    if kind == "gpu":
        return proto.gpu.count or 1
    if kind == "tpu":
        return proto.tpu.count or 1
    return 0


def device_variant(proto: cluster_pb2.DeviceConfig) -> str:
    kind = proto.WhichOneof("device")
    if kind == "gpu":
        return proto.gpu.variant
    if kind == "tpu":
        return proto.tpu.variant
    return ""


def get_gpu_count(proto: cluster_pb2.DeviceConfig) -> int:
    """GPUs a device config asks for (the seed's helper)."""
    return device_count(proto) if proto.WhichOneof("device") == "gpu" else 0


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """What one task of a job needs. ``cpu`` is in cores and may be a fraction (``0.5``: half a
    core, carried as 500 millicores); sizes accept "512MiB", "2GB", "8GiB" or byte counts.

    >>> ResourceSpec(cpu=2, memory="8GiB").memory_bytes
    8589934592
    >>> ResourceSpec(cpu=0.5).cpu_millicores
    500
    """

    cpu: float | int = 1
    memory: str | int = 0
    disk: str | int = 0
    device: Device = field(default_factory=CpuDevice)
    replicas: int = 1

    def __post_init__(self) -> None:
        cpu_to_millicores(self.cpu, "cpu")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 0:
            raise ValueError(f"replicas: must be a whole number >= 0, got {self.replicas!r}")
        parse_size(self.memory, "memory")
        parse_size(self.disk, "disk")
        if isinstance(self.device, (GpuDevice, TpuDevice)) and self.device.count < 1:
            raise ValueError(f"device: count must be >= 1, got {self.device.count}")

    @property
    def cpu_millicores(self) -> int:
        return cpu_to_millicores(self.cpu, "cpu")

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory, "memory")

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk, "disk")

    def to_proto(self) -> cluster_pb2.ResourceSpecProto:
        millicores = self.cpu_millicores
        return cluster_pb2.ResourceSpecProto(
            cpu=min(-(-millicores // MILLICORES_PER_CORE), 2**31 - 1),  # older peers: rounded up
            cpu_millicores=millicores,
            memory_bytes=self.memory_bytes,
            disk_bytes=self.disk_bytes,
            device=device_to_proto(self.device),
            replicas=self.replicas,
        )

    @classmethod
    def from_proto(cls, proto: cluster_pb2.ResourceSpecProto) -> ResourceSpec:
        """Raises ValueError (naming the field) for values no ``ResourceSpec`` holds: an explicit
        ``cpu_millicores`` of 0 or less, a negative size."""
        if proto.HasField("cpu_millicores"):
            if proto.cpu_millicores <= 0:
                raise ValueError(f"cpu_millicores: must be > 0 (1000 is one core), got {proto.cpu_millicores}")
            cpu: float | int = cores(proto.cpu_millicores)
        elif proto.cpu < 0:
            raise ValueError(f"cpu: must be >= 1 whole core, got {proto.cpu}")
        else:
            cpu = proto.cpu or 1  # an older peer's whole cores; unset means one core
        return cls(
            cpu=cpu,
            memory=proto.memory_bytes,
            disk=proto.disk_bytes,
            device=device_from_proto(proto.device),
            replicas=proto.replicas,
        )


@dataclass(frozen=True, slots=True)
class WorkerMetadata:
    """What a worker reported about itself when it registered (the core's typed form of the
    ``WorkerMetadata`` message; ``from_proto``/``to_proto`` convert at the edges)."""

    hostname: str = ""
    ip_address: str = ""
    cpu_count: int = 0
    """Whole cores (what older peers read); ``cpu_millicores`` is what is offered."""
    memory_bytes: int = 0
    disk_bytes: int = 0
    device: Device = field(default_factory=CpuDevice)
    gpu_count: int = 0
    gpu_name: str = ""
    gpu_memory_mb: int = 0
    attributes: tuple[tuple[str, str], ...] = ()
    cpu_millicores: int = 0
    """The cpu it offers, in millicores (0: ``cpu_count`` whole cores)."""
    port_range: tuple[int, int] | None = None
    """The ports (first, last; inclusive) the controller may give tasks here (``--port-range``);
    None: none declared, the worker picks a task's named ports itself."""
    device_kind: str = field(init=False, default="cpu")
    """"cpu", "gpu" or "tpu" (derived from ``device``, as are the next two)."""
    device_variant: str = field(init=False, default="")
    """The accelerator model, or the GPU name when the device names none."""
    device_count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.cpu_millicores:
            object.__setattr__(self, "cpu_millicores", self.cpu_count * MILLICORES_PER_CORE)
        device = self.device
        kind = "gpu" if isinstance(device, GpuDevice) else "tpu" if isinstance(device, TpuDevice) else "cpu"
        variant = "" if isinstance(device, CpuDevice) else device.variant
        object.__setattr__(self, "device_kind", kind)
        object.__setattr__(self, "device_variant", variant or self.gpu_name)
        object.__setattr__(self, "device_count", 0 if isinstance(device, CpuDevice) else device.count)

    @classmethod
    def from_proto(cls, proto: cluster_pb2.WorkerMetadata) -> WorkerMetadata:
        return cls(
            hostname=proto.hostname,
            ip_address=proto.ip_address,
            cpu_count=proto.cpu_count,
            memory_bytes=proto.memory_bytes,
            disk_bytes=proto.disk_bytes,
            device=device_from_proto(proto.device),
            gpu_count=proto.gpu_count,
            gpu_name=proto.gpu_name,
            gpu_memory_mb=proto.gpu_memory_mb,
            attributes=tuple(sorted(proto.attributes.items())),
            cpu_millicores=proto.cpu_millicores,
            port_range=(proto.port_range_start, proto.port_range_end) if proto.port_range_end else None,
        )

    def to_proto(self) -> cluster_pb2.WorkerMetadata:
        return cluster_pb2.WorkerMetadata(
            hostname=self.hostname,
            ip_address=self.ip_address,
            cpu_count=self.cpu_count,
            memory_bytes=self.memory_bytes,
            disk_bytes=self.disk_bytes,
            device=device_to_proto(self.device),
            gpu_count=self.gpu_count,
            gpu_name=self.gpu_name,
            gpu_memory_mb=self.gpu_memory_mb,
            attributes=dict(self.attributes),
            cpu_millicores=self.cpu_millicores,
            port_range_start=self.port_range[0] if self.port_range else 0,
            port_range_end=self.port_range[1] if self.port_range else 0,
        )


# ---------------------------------------------------------------------------- addresses


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")
SHARED_MAX = 4096
"""Entries a sharing cache (``shared``) holds before it starts over."""


def shared(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """The value already held under ``key`` in ``cache``, else ``value`` (now held): so that the many
    equal frozen values a controller keeps (jobs' shapes, resource specs, commands) are one object.
    The cache is emptied when it reaches ``SHARED_MAX`` entries, which only costs sharing."""
    if len(cache) >= SHARED_MAX:
        cache.clear()
    return cache.setdefault(key, value)


def host_port(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 literal in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def split_host(address: str) -> str:
    """The host of a ``HOST:PORT`` address (brackets of an IPv6 literal removed)."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host
