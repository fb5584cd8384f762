"""Factories with defaults for pure controller tests: jobs, workers and a dispatch helper."""

from __future__ import annotations

from iris.cluster.controller.job import Job, expand_job_to_tasks
from iris.cluster.controller.state import ControllerState, ControllerWorker
from iris.cluster.controller.task import Task
from iris.cluster.failures import parse_exit_rules
from iris.cluster.types import JobId, ResourceSpec, TaskId, WorkerId, gpu
from iris.rpc import cluster_pb2

NOW = 1_000_000


def make_request(
    name: str = "job",
    *,
    replicas: int = 1,
    cpu: int = 1,
    memory: str | int = "1GiB",
    max_task_failures: int = 0,
    max_retries_failure: int = 0,
    max_retries_preemption: int | None = None,
    scheduling_timeout_seconds: float = 0,
    coscheduled: bool = False,
    gpus: int = 0,
    gpu_variant: str = "",
    parent_job_id: str = "",
    on_exit: tuple[str, ...] = (),
    retry_backoff_seconds: float = 0,
    timeout_seconds: float = 0,
    max_similar_failures: int = 0,
    termination_grace_seconds: float | None = None,
    ports: tuple[str, ...] = (),
    priority: str = "",
) -> cluster_pb2.Controller.LaunchJobRequest:
    spec = ResourceSpec(
        cpu=cpu, memory=memory, replicas=replicas, device=gpu(gpu_variant, gpus) if gpus else ResourceSpec().device
    )
    request = cluster_pb2.Controller.LaunchJobRequest(
        name=name,
        resources=spec.to_proto(),
        max_task_failures=max_task_failures,
        max_retries_failure=max_retries_failure,
        scheduling_timeout_seconds=scheduling_timeout_seconds,
        coscheduled=coscheduled,
        parent_job_id=parent_job_id,
        ports=list(ports),
        priority=priority,
    )
    if max_retries_preemption is not None:
        request.max_retries_preemption = max_retries_preemption
    for rule in parse_exit_rules(on_exit):
        request.exit_rules.add(low=rule.low, high=rule.high, action=rule.action)
    request.retry_backoff_seconds = retry_backoff_seconds
    request.timeout_seconds = timeout_seconds
    request.max_similar_failures = max_similar_failures
    if termination_grace_seconds is not None:
        request.termination_grace_seconds = termination_grace_seconds
    return request


def submit(state: ControllerState, name: str = "job", now_ms: int = NOW, owner: str = "", uid: str = "",
           **kwargs: object) -> tuple[Job, list[Task]]:
    request = make_request(name, **kwargs)  # type: ignore[arg-type]
    job = Job(JobId(request.parent_job_id + "/" + name if request.parent_job_id else name), request, now_ms,
              owner=owner, uid=uid)
    tasks = expand_job_to_tasks(job, now_ms)
    state.add_job(job, tasks)
    return job, tasks


def make_worker(
    worker_id: str = "w1", *, cpu: int = 8, memory: str | int = "32GiB", gpus: int = 0, gpu_name: str = "H100",
    port_range: tuple[int, int] | None = None, host: str = "127.0.0.1",
) -> ControllerWorker:
    from iris.cluster.types import device_to_proto, parse_size

    metadata = cluster_pb2.WorkerMetadata(
        hostname=worker_id,
        cpu_count=cpu,
        memory_bytes=parse_size(memory),
        disk_bytes=parse_size("100GiB"),
        device=device_to_proto(gpu(gpu_name, gpus)) if gpus else cluster_pb2.DeviceConfig(),
        gpu_count=gpus,
        gpu_name=gpu_name if gpus else "",
        port_range_start=port_range[0] if port_range else 0,
        port_range_end=port_range[1] if port_range else 0,
    )
    return ControllerWorker(worker_id=WorkerId(worker_id), address=f"{host}:{9000 + hash(worker_id) % 1000}",
                            metadata=metadata)


def add_worker(state: ControllerState, worker_id: str = "w1", now_ms: int = NOW, **kwargs: object) -> ControllerWorker:
    worker = make_worker(worker_id, **kwargs)  # type: ignore[arg-type]
    worker.last_heartbeat_ms = now_ms
    return state.add_worker(worker)


def dispatch(state: ControllerState, task: Task | TaskId, worker_id: str = "w1", now_ms: int = NOW) -> Task:
    """The seed's dispatch sequence: mark_dispatched, then assign_task_to_worker."""
    t = state.get_task(task) if isinstance(task, str) else task
    assert t is not None
    t.mark_dispatched(WorkerId(worker_id), now_ms)
    assert state.assign_task_to_worker(WorkerId(worker_id), t.task_id)
    return t
