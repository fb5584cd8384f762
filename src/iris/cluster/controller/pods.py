"""Kubernetes on the backend seam: the pod model Iris needs, the ``PodApi`` it talks to, an
in-memory ``FakePodApi`` that behaves as the API server and kubelet do for bare pods, and
``PodBackend``, a ``TaskBackend`` with one bare pod per attempt.

Design: ``docs/kubernetes.md``. What exists here runs the seam's contract tests
(``tests/cluster/controller/test_backend_contract.py``) with no cluster; what a production backend
still needs (a ``PodApi`` over the real API, Kueue admission of gangs, a CLI flag) is listed there.

Mapping back (DESIGN §8): ``Succeeded`` is success; a container that terminated non-zero (or
OOMKilled) is a failure charged to ``max_retries_failure``; a pod that was evicted, preempted,
lost with its node, or deleted by anyone but Iris is a preemption.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from iris.cluster.controller.backend import (
    AttemptKill,
    AttemptLaunch,
    BackendUnavailable,
    LaunchOutcome,
    LaunchResult,
    LocationCapacity,
    LogLine,
    LogPage,
    LogRequest,
    Observation,
)
from iris.cluster.controller.state import ObservedAttempt
from iris.cluster.logfile import PAGE_DEFAULT_LINES, PAGE_MAX_LINES
from iris.cluster.types import GpuDevice, TaskId, WorkerId, WorkerMetadata
from iris.rpc import cluster_pb2

LABEL_JOB = "iris.dev/job"
LABEL_TASK = "iris.dev/task"
LABEL_ATTEMPT = "iris.dev/attempt"
LABEL_CLUSTER = "iris.dev/cluster"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"

DISRUPTION_REASONS = frozenset({"PreemptionByScheduler", "DeletionByTaintManager", "EvictionByEvictionAPI",
                                "DeletionByPodGC", "TerminationByKubelet"})
"""Reasons of the ``DisruptionTarget`` pod condition: the pod was taken away, not at fault."""
PREEMPTED_POD_REASONS = frozenset({"Evicted", "NodeLost", "Shutdown", "Terminated", "NodeShutdown", "Preempting"})
"""``status.reason`` of a pod that failed because of its node, not its code."""

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class PodApiError(Exception):
    """The API refused a call (``code`` as the API server's: 404 NotFound, 409 AlreadyExists,
    422 Invalid, 503 unavailable)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Terminated:
    exit_code: int
    reason: str = ""
    """``Completed``, ``Error``, ``OOMKilled``, ``ContainerCannotRun``, ..."""


@dataclass(frozen=True, slots=True)
class PodSpec:
    """The fields of a bare pod Iris sets (one container)."""

    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cpu: str
    memory: str
    restart_policy: str = "Never"
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    gpus: int = 0
    termination_grace_period_s: int = 30


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    spec: PodSpec
    uid: str
    phase: str = "Pending"
    """Pending, Running, Succeeded, Failed, Unknown."""
    reason: str = ""
    message: str = ""
    node_name: str = ""
    conditions: tuple[Condition, ...] = ()
    terminated: Terminated | None = None
    deleting: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.spec.labels)


class PodApi(Protocol):
    """The slice of the Kubernetes pod API a backend needs (one namespace)."""

    def create_pod(self, name: str, spec: PodSpec) -> Pod: ...

    def delete_pod(self, name: str, grace_period_s: int) -> None: ...

    def list_pods(self, selector: Mapping[str, str]) -> tuple[list[Pod], str]:
        """Pods whose labels include ``selector``, and the list's resourceVersion."""
        ...

    def read_log(self, name: str) -> str:
        """The container's log (kept by the kubelet while the pod exists)."""
        ...


class FakePodApi:
    """The pod API in memory, with the rules that matter to a backend: names are unique DNS-1123
    labels (409 on a duplicate), a bare pod's restartPolicy is Never or it is refused (422), a
    deleted pod disappears with its log, and nodes can be lost. ``run``/``succeed``/``fail``/
    ``evict``/``lose_node`` play the kubelet, scheduler and node controller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, Pod] = {}
        self._logs: dict[str, str] = {}
        self._version = 0
        self._uid = 0
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise PodApiError(503, "the API server is unavailable")

    def create_pod(self, name: str, spec: PodSpec) -> Pod:
        with self._lock:
            self._check()
            if len(name) > 63 or not _NAME.match(name):
                raise PodApiError(422, f"metadata.name: Invalid value {name!r}: must be a DNS-1123 label")
            if spec.restart_policy != "Never":
                raise PodApiError(422, "spec.restartPolicy: Iris pods must be Never (retries are Iris's)")
            if name in self._pods:
                raise PodApiError(409, f'pods "{name}" already exists')
            self._uid += 1
            self._version += 1
            pod = self._pods[name] = Pod(name, spec, uid=f"uid-{self._uid}")
            self._logs[name] = ""
            return pod

    def delete_pod(self, name: str, grace_period_s: int) -> None:
        with self._lock:
            self._check()
            if name not in self._pods:
                raise PodApiError(404, f'pods "{name}" not found')
            del self._pods[name]
            del self._logs[name]
            self._version += 1

    def list_pods(self, selector: Mapping[str, str]) -> tuple[list[Pod], str]:
        with self._lock:
            self._check()
            pods = [p for p in self._pods.values() if all(p.labels.get(k) == v for k, v in selector.items())]
            return pods, str(self._version)

    def read_log(self, name: str) -> str:
        with self._lock:
            self._check()
            if name not in self._logs:
                raise PodApiError(404, f'pods "{name}" not found')
            return self._logs[name]

    # -- what the cluster does ------------------------------------------------------------------

    def _update(self, name: str, **changes: object) -> None:
        with self._lock:
            self._pods[name] = replace(self._pods[name], **changes)  # type: ignore[arg-type]
            self._version += 1

    def pods(self) -> list[Pod]:
        with self._lock:
            return list(self._pods.values())

    def run(self, name: str, node: str = "node-a", output: str = "") -> None:
        self._update(name, phase="Running", node_name=node,
                     conditions=(Condition("PodScheduled", "True"), Condition("Ready", "True")))
        self.write_log(name, output)

    def write_log(self, name: str, text: str) -> None:
        with self._lock:
            self._logs[name] += text

    def succeed(self, name: str) -> None:
        self._update(name, phase="Succeeded", terminated=Terminated(0, "Completed"))

    def fail(self, name: str, exit_code: int, reason: str = "Error") -> None:
        self._update(name, phase="Failed", terminated=Terminated(exit_code, reason))

    def evict(self, name: str, reason: str = "EvictionByEvictionAPI") -> None:
        """The eviction API or a preempting scheduler: DisruptionTarget, then Failed."""
        self._update(name, phase="Failed", reason="Evicted" if reason == "EvictionByEvictionAPI" else "",
                     conditions=(Condition("DisruptionTarget", "True", reason),),
                     terminated=Terminated(137, "Error"))

    def lose_node(self, node: str) -> None:
        """A node stops reporting: its pods go Unknown (and are later garbage-collected)."""
        for pod in self.pods():
            if pod.node_name == node:
                self._update(pod.name, phase="Unknown", reason="NodeLost")

    def unschedulable(self, name: str, message: str) -> None:
        self._update(name, conditions=(Condition("PodScheduled", "False", "Unschedulable"),), message=message)


# ---------------------------------------------------------------------------- the mapping


def attempt_state(pod: Pod) -> tuple[int, int | None, str | None]:
    """(task state, exit code, error) of the attempt a pod runs (DESIGN §8's mapping)."""
    disrupted = next((c for c in pod.conditions if c.type == "DisruptionTarget" and c.status == "True"), None)
    if disrupted is not None and disrupted.reason in DISRUPTION_REASONS:
        return cluster_pb2.TASK_STATE_WORKER_FAILED, None, f"pod {pod.name} was disrupted: {disrupted.reason}"
    if pod.phase == "Unknown" or pod.reason in PREEMPTED_POD_REASONS:
        return cluster_pb2.TASK_STATE_WORKER_FAILED, None, f"pod {pod.name} lost: {pod.reason or pod.phase}"
    if pod.phase == "Succeeded":
        return cluster_pb2.TASK_STATE_SUCCEEDED, 0, None
    if pod.phase == "Failed":
        t = pod.terminated
        if t is not None and t.reason == "OOMKilled":
            return cluster_pb2.TASK_STATE_FAILED, t.exit_code, "OOM: the container exceeded its memory limit"
        code = t.exit_code if t is not None else 1
        return cluster_pb2.TASK_STATE_FAILED, code, f"exit code {code}" + (f" ({t.reason})" if t and t.reason else "")
    if pod.phase == "Running":
        return cluster_pb2.TASK_STATE_RUNNING, None, None
    return cluster_pb2.TASK_STATE_BUILDING, None, None


def pod_name(task_id: str, attempt_id: int) -> str:
    """A DNS-1123 name, unique per attempt: readable prefix + hash of the task id."""
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9-]+", "-", task_id.lower()).strip("-")[:36].strip("-") or "task"
    return f"iris-{readable}-{digest}-{attempt_id}"


@dataclass(frozen=True, slots=True)
class PodBackendConfig:
    image: str
    cluster: str = "iris"
    """Label value naming this controller's pods."""
    location: str = "k8s"
    """The worker id the controller sees for the whole cluster (Kubernetes places the pods)."""
    cpu: int = 1024
    memory_bytes: int = 4096 * 1024**3
    """What the location offers the controller's scheduler (the namespace's quota, roughly)."""
    queue: str = ""
    """A Kueue LocalQueue: pods get its label, a coscheduled job becomes a Kueue pod group."""
    max_archived_logs: int = 10_000


@dataclass(slots=True)
class _Archive:
    logs: dict[tuple[str, int], str] = field(default_factory=dict)


class PodBackend:
    """One bare pod per attempt (``restartPolicy: Never``) in one namespace.

    The whole cluster is one location for the controller (Kubernetes places the pods on nodes), so
    ``capacity`` offers it once and ``observe`` returns its complete observed set, built from one
    list call, under a sequence counted like a worker's: an attempt submitted after the list was
    taken is not reported missing. An attempt's log is copied to the archive when its pod ends,
    before Iris deletes the pod, so it outlives the pod."""

    ships_logs = False
    """Logs are read from the pods (and their archive), never pushed to the controller."""

    def __init__(self, api: PodApi, config: PodBackendConfig) -> None:
        self._api = api
        self.config = config
        self._lock = threading.Lock()
        self._sequence = 0
        self._archive = _Archive()
        self._killed: set[tuple[str, int]] = set()
        self._ended: set[str] = set()
        """Pods seen ended (their logs archived) in the previous pass: deleted in the next, once the
        controller has applied the end."""
        self.incarnation = f"pods-{config.cluster}"

    def _selector(self) -> dict[str, str]:
        return {LABEL_CLUSTER: self.config.cluster}

    def submit(self, launches: Sequence[AttemptLaunch]) -> list[LaunchResult]:
        results = []
        for launch in launches:
            if not launch.spec.entrypoint.argv:
                # A pod runs a command; a pickled callable would need the task to fetch it from the
                # controller (docs/kubernetes.md, "Left to build").
                results.append(LaunchResult(LaunchOutcome.TASK_REFUSED,
                                            "the pod backend runs commands only, not Python callables (yet)"))
                continue
            if launch.spec.coscheduled and not self.config.queue:
                # The default scheduler could start part of a gang; Kueue admits a pod group whole.
                results.append(LaunchResult(LaunchOutcome.TASK_REFUSED,
                                            "coscheduled jobs need a Kueue queue on the pod backend"))
                continue
            spec = self._pod_spec(launch)
            try:
                self._api.create_pod(pod_name(launch.task_id, launch.attempt_id), spec)
            except PodApiError as e:
                if e.code == 409:  # created before (a retried call): it is ours and running
                    pass
                elif e.code in (400, 422):
                    results.append(LaunchResult(LaunchOutcome.TASK_REFUSED, f"the pod was refused: {e}"))
                    continue
                else:
                    results.append(LaunchResult(LaunchOutcome.BACKEND_FAILED, f"creating the pod failed: {e}"))
                    continue
            with self._lock:
                self._sequence += 1
                sequence = self._sequence
            results.append(LaunchResult(LaunchOutcome.ACCEPTED, incarnation=self.incarnation, sequence=sequence))
        return results

    def _pod_spec(self, launch: AttemptLaunch) -> PodSpec:
        spec = launch.spec
        command = tuple(spec.entrypoint.argv)
        env = dict(spec.env) | {
            "IRIS_JOB_ID": launch.job_id, "IRIS_TASK_ID": launch.task_id, "IRIS_TASK_INDEX": str(launch.task_index),
            "IRIS_NUM_TASKS": str(launch.num_tasks), "IRIS_ATTEMPT_ID": str(launch.attempt_id),
        }
        if launch.task_token:
            env["IRIS_TOKEN"] = launch.task_token
        labels = {LABEL_CLUSTER: self.config.cluster, LABEL_JOB: _label(launch.job_id),
                  LABEL_TASK: _label(launch.task_id), LABEL_ATTEMPT: str(launch.attempt_id)}
        annotations: dict[str, str] = {"iris.dev/task-id": launch.task_id}
        if self.config.queue:
            labels[KUEUE_QUEUE] = self.config.queue
            if spec.coscheduled:
                # One Kueue pod group per attempt round of the job: admitted all at once or not at all.
                labels[KUEUE_POD_GROUP] = _label(f"{launch.job_id}-{launch.attempt_id}")
                annotations[KUEUE_GROUP_COUNT] = str(launch.num_tasks)
        resources = spec.resources
        return PodSpec(
            image=self.config.image, command=command, env=tuple(sorted(env.items())),
            cpu=f"{resources.cpu_millicores}m", memory=f"{max(1, resources.memory_bytes // (1024 * 1024))}Mi",
            labels=tuple(sorted(labels.items())), annotations=tuple(sorted(annotations.items())),
            gpus=resources.device.count if isinstance(resources.device, GpuDevice) else 0,
        )

    def kill(self, kill: AttemptKill) -> None:
        with self._lock:
            self._killed.add((kill.task_id, kill.attempt_id))
        name = pod_name(kill.task_id, kill.attempt_id)
        self._keep_log(kill.task_id, kill.attempt_id, name)
        try:
            self._api.delete_pod(name, int(kill.grace_period_s))
        except PodApiError as e:
            if e.code != 404:
                raise BackendUnavailable(str(e)) from e

    def observe(self) -> list[Observation]:
        with self._lock:
            done, self._ended = self._ended, set()
        for name in done:
            try:
                self._api.delete_pod(name, 0)
            except PodApiError:
                pass  # gone already, or the next pass tries again
        with self._lock:
            sequence = self._sequence  # taken before the list: later submits are not "missing"
        try:
            pods, _ = self._api.list_pods(self._selector())
        except PodApiError:
            return []  # an observation error is neither success nor failure: try again next pass
        attempts: list[ObservedAttempt] = []
        for pod in pods:
            labels = pod.labels
            task_id = dict(pod.spec.annotations).get("iris.dev/task-id", "")
            if not task_id or LABEL_ATTEMPT not in labels:
                continue
            attempt_id = int(labels[LABEL_ATTEMPT])
            state, exit_code, error = attempt_state(pod)
            with self._lock:
                killed = (task_id, attempt_id) in self._killed
            if killed:
                state, error = cluster_pb2.TASK_STATE_KILLED, "killed"
            attempts.append(ObservedAttempt(TaskId(task_id), attempt_id, state, exit_code=exit_code, error=error))
            if state in (cluster_pb2.TASK_STATE_SUCCEEDED, cluster_pb2.TASK_STATE_FAILED,
                         cluster_pb2.TASK_STATE_WORKER_FAILED):
                self._keep_log(task_id, attempt_id, pod.name)
                with self._lock:
                    self._ended.add(pod.name)
        return [Observation(WorkerId(self.config.location), attempts, self.incarnation, sequence)]

    def _keep_log(self, task_id: str, attempt_id: int, name: str) -> None:
        key = (task_id, attempt_id)
        with self._lock:
            if key in self._archive.logs:
                return
        try:
            text = self._api.read_log(name)
        except PodApiError:
            return
        with self._lock:
            self._archive.logs[key] = text
            while len(self._archive.logs) > self.config.max_archived_logs:
                self._archive.logs.pop(next(iter(self._archive.logs)))

    def fetch_logs(self, request: LogRequest) -> LogPage:
        key = (request.task_id, request.attempt_id)
        with self._lock:
            archived = self._archive.logs.get(key)
        finished = archived is not None
        if archived is None:
            try:
                archived = self._api.read_log(pod_name(request.task_id, request.attempt_id))
            except PodApiError as e:
                raise BackendUnavailable(str(e)) from e
        data = archived.encode()
        start = request.start_offset if request.start_offset is not None else 0
        if request.start_offset is None and request.start_line:
            for _ in range(request.start_line):
                nl = data.find(b"\n", start)
                if nl < 0:
                    start = len(data)
                    break
                start = nl + 1
        lines: list[LogLine] = []
        offset = start
        limit = min(request.max_lines or PAGE_DEFAULT_LINES, PAGE_MAX_LINES)  # as a worker pages
        while len(lines) < limit:
            nl = data.find(b"\n", offset)
            if nl < 0:
                break
            lines.append(LogLine(data[offset:nl].decode(errors="replace")))
            offset = nl + 1
        return LogPage(lines, request.start_line + len(lines), offset, finished)

    def capacity(self) -> list[LocationCapacity]:
        c = self.config
        return [LocationCapacity(WorkerId(c.location), f"kubernetes:{c.cluster}",
                                 WorkerMetadata(hostname="kubernetes", cpu_count=c.cpu, memory_bytes=c.memory_bytes,
                                                disk_bytes=2**50),
                                 incarnation=self.incarnation)]

    def close(self) -> None:
        pass


def _label(value: str) -> str:
    """A label value (<= 63 chars of [A-Za-z0-9-_.], alphanumeric at both ends)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)
    if len(clean) > 63:
        clean = clean[:52] + "-" + hashlib.sha256(value.encode()).hexdigest()[:10]
    return clean.strip("-_.") or "x"


__all__ = [
    "FakePodApi",
    "Pod",
    "PodApi",
    "PodApiError",
    "PodBackend",
    "PodBackendConfig",
    "PodSpec",
    "attempt_state",
    "pod_name",
]
