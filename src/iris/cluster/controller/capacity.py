"""What a task needs, what a worker has, and the one rule that says whether one fits the other.

Pure values: ``JobRequirements`` is derived once from a job's frozen spec; ``WorkerSnapshot`` is
a worker's capacity frozen at the scheduler's boundary. ``fits_in`` is the only fit rule (``fits``
applies it to a ``Capacity``): the scheduler, ``ControllerState.can_fit`` (the commit-time
re-check) and the pending-reason explanation (``unmet_everywhere``, over total capacity) all
call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from iris.cluster.types import (
    CpuDevice,
    GpuDevice,
    JobId,
    ResourceSpec,
    WorkerId,
    format_cpu,
    format_size,
    shared,
)


@dataclass(frozen=True, slots=True)
class JobRequirements:
    """What one task of a job needs, plus how the job is placed."""

    job_id: JobId
    cpu: int
    """Millicores (1000 = one core), as are every ``cpu`` below."""
    memory_bytes: int
    disk_bytes: int
    device_kind: str
    """"cpu", "gpu" or "tpu"."""
    device_variant: str
    device_count: int
    coscheduled: bool = False
    scheduling_timeout_ms: int = 0
    shape: TaskShape = ()  # type: ignore[assignment]
    """Jobs of one shape fit exactly the same workers (computed once, on construction)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", (self.cpu, self.memory_bytes, self.disk_bytes, self.device_kind,
                                           self.device_variant, self.device_count))

    @classmethod
    def from_resources(
        cls, job_id: JobId, resources: ResourceSpec, *, coscheduled: bool = False, scheduling_timeout_ms: int = 0
    ) -> JobRequirements:
        return cls(job_id, *task_shape(resources), coscheduled, scheduling_timeout_ms)


TaskShape = tuple[int, int, int, str, str, int]
"""What one task takes of a worker: cpu millicores, memory bytes, disk bytes, device kind ("cpu",
"gpu", "tpu"), variant and count."""
_SHAPES: dict[TaskShape, TaskShape] = {}


def task_shape(resources: ResourceSpec) -> TaskShape:
    """The shape of a task asking for ``resources``; equal shapes are one shared tuple."""
    device = resources.device
    if isinstance(device, CpuDevice):
        kind, variant, count = "cpu", "", 0
    else:
        kind = "gpu" if isinstance(device, GpuDevice) else "tpu"
        variant, count = device.variant, device.count
    shape = (resources.cpu_millicores, resources.memory_bytes, resources.disk_bytes, kind, variant, count)
    return shared(_SHAPES, shape, shape)


@dataclass(frozen=True, slots=True)
class Resources:
    """Amounts of the four counted resources: cpu (millicores), memory and disk (bytes), devices.
    What one task takes and what a worker has committed are this one value, so the arithmetic of
    binding, releasing and holding a stopping attempt is written once."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0
    devices: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.disk + other.disk,
                         self.devices + other.devices)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory, self.disk - other.disk,
                         self.devices - other.devices)

    @staticmethod
    def of_task(shape: TaskShape) -> Resources:
        """What one task of this shape takes (one shared value per shape)."""
        found = _TASK_RESOURCES.get(shape)
        if found is None:
            found = shared(_TASK_RESOURCES, shape, Resources(shape[0], shape[1], shape[2], shape[5]))
        return found

    @staticmethod
    def total(items: Iterable[Resources]) -> Resources:
        out = NO_RESOURCES
        for item in items:
            out = out + item
        return out


NO_RESOURCES = Resources()
_TASK_RESOURCES: dict[TaskShape, Resources] = {}


class Capacity(Protocol):
    """An amount of room on one worker (free or total)."""

    @property
    def cpu(self) -> int: ...
    @property
    def memory(self) -> int: ...
    @property
    def disk(self) -> int: ...
    @property
    def devices(self) -> int: ...
    @property
    def device_kind(self) -> str: ...
    @property
    def device_variant(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Room:
    """A plain ``Capacity`` value (cpu in millicores)."""

    cpu: int
    memory: int
    disk: int
    devices: int
    device_kind: str
    device_variant: str


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """A worker as the scheduler sees it, frozen when the pass starts."""

    worker_id: WorkerId
    healthy: bool
    free: Room
    total: Room


def fits_in(req: JobRequirements, cpu: int, memory: int, disk: int, devices: int, device_kind: str,
            device_variant: str) -> bool:
    """The fit rule (DESIGN §3): whether one task of ``req`` fits in that much room (cpu, memory,
    disk, and devices of the right kind and variant). Scalars, so hot callers allocate nothing."""
    if cpu < req.cpu or memory < req.memory_bytes:
        return False
    if req.disk_bytes and disk < req.disk_bytes:
        return False
    if req.device_kind != "cpu":
        if device_kind != req.device_kind or devices < req.device_count:
            return False
        if req.device_variant and req.device_variant.lower() not in device_variant.lower():
            return False
    return True


def fits(req: JobRequirements, room: Capacity) -> bool:
    """``fits_in`` for a ``Capacity`` value."""
    return fits_in(req, room.cpu, room.memory, room.disk, room.devices, room.device_kind, room.device_variant)


def unmet_everywhere(req: JobRequirements, totals: Sequence[Capacity]) -> str:
    """A reason when no worker could ever hold one task of ``req`` (by total capacity), else ""."""
    if not totals:
        return "no healthy workers"
    if any(fits(req, t) for t in totals):
        return ""
    if all(t.cpu < req.cpu for t in totals):
        return f"no worker has {format_cpu(req.cpu)} cpus (largest: {format_cpu(max(t.cpu for t in totals))})"
    if all(t.memory < req.memory_bytes for t in totals):
        largest = max(t.memory for t in totals)
        return f"no worker has {format_size(req.memory_bytes)} memory (largest: {format_size(largest)})"
    if req.disk_bytes and all(t.disk < req.disk_bytes for t in totals):
        return f"no worker has {format_size(req.disk_bytes)} disk"
    if req.device_kind != "cpu":
        matching = [
            t for t in totals
            if t.device_kind == req.device_kind
            and (not req.device_variant or req.device_variant.lower() in t.device_variant.lower())
        ]
        label = f"{req.device_kind} {req.device_variant}".strip()
        if not matching:
            return f"no worker has a {label}"
        if all(t.devices < req.device_count for t in matching):
            return f"no worker has {req.device_count} x {label}"
    return "no single worker has enough cpu, memory, disk and devices together"
