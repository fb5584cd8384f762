"""A faithful re-implementation of the seed's naive controller core, for comparison only.

Copied from ``seed/stage-3-controller-updates.md`` (Steps 1, 3, 4 and the dispatch sequence of
Step 5), simplified only where it does not change complexity (no endpoints, gangs or action log;
no lock contention). What makes it O(n^2) for one large job is kept exactly:

- ``_task_queue`` is a ``deque`` rebuilt (``deque(tid for tid in queue if tid != task_id)``) on
  every assignment and every task that finishes;
- ``_update_job_from_tasks`` rebuilds the job's task list and counts its states with three scans
  on every task that finishes;
- ``get_committed_resources`` iterates the worker's ``running_tasks`` (called once per worker
  per scheduling pass by ``build_capacity_map``);
- ``find_assignments`` scans the workers first-fit from the start for every task.

The seed does not show ``build_capacity_map``, ``worker_can_fit_task`` or
``deduct_task_from_capacity``; they are written here the obvious way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from iris.rpc import cluster_pb2

JobId = str
TaskId = str
WorkerId = str


class TaskTransitionResult(Enum):
    COMPLETE = "complete"
    SHOULD_RETRY = "should_retry"
    EXCEEDED_RETRY_LIMIT = "exceeded_retry_limit"


@dataclass
class TaskAttempt:
    attempt_id: int
    worker_id: WorkerId | None = None
    state: int = cluster_pb2.TASK_STATE_PENDING
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    exit_code: int | None = None
    error: str | None = None
    is_worker_failure: bool = False


@dataclass
class Task:
    task_id: TaskId
    job_id: JobId
    task_index: int
    state: int = cluster_pb2.TASK_STATE_PENDING
    worker_id: WorkerId | None = None
    failure_count: int = 0
    preemption_count: int = 0
    max_retries_failure: int = 0
    max_retries_preemption: int = 100
    current_attempt_id: int = 0
    attempts: list[TaskAttempt] = field(default_factory=list)
    submitted_at_ms: int = 0
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    error: str | None = None
    exit_code: int | None = None

    def mark_dispatched(self, worker_id: WorkerId, now_ms: int) -> None:
        self.state = cluster_pb2.TASK_STATE_RUNNING
        self.worker_id = worker_id
        self.started_at_ms = now_ms

    def transition(
        self,
        new_state: int,
        now_ms: int,
        *,
        is_worker_failure: bool = False,
        error: str | None = None,
        exit_code: int | None = None,
    ) -> TaskTransitionResult:
        if new_state in (cluster_pb2.TASK_STATE_FAILED, cluster_pb2.TASK_STATE_WORKER_FAILED):
            return self._handle_failure(now_ms, is_worker_failure, error, exit_code)
        if new_state == cluster_pb2.TASK_STATE_SUCCEEDED:
            self.state = new_state
            self.finished_at_ms = now_ms
            self.exit_code = exit_code or 0
            return TaskTransitionResult.COMPLETE
        if new_state in (cluster_pb2.TASK_STATE_KILLED, cluster_pb2.TASK_STATE_UNSCHEDULABLE):
            self.state = new_state
            self.finished_at_ms = now_ms
            self.error = error
            return TaskTransitionResult.COMPLETE
        self.state = new_state
        return TaskTransitionResult.COMPLETE

    def _handle_failure(
        self, now_ms: int, is_worker_failure: bool, error: str | None, exit_code: int | None
    ) -> TaskTransitionResult:
        if is_worker_failure:
            self.preemption_count += 1
            can_retry = self.preemption_count <= self.max_retries_preemption
        else:
            self.failure_count += 1
            can_retry = self.failure_count <= self.max_retries_failure
        if can_retry:
            self.attempts.append(TaskAttempt(self.current_attempt_id, self.worker_id, self.state, self.started_at_ms))
            self.current_attempt_id += 1
            self.state = cluster_pb2.TASK_STATE_PENDING
            self.worker_id = None
            self.started_at_ms = None
            return TaskTransitionResult.SHOULD_RETRY
        self.state = cluster_pb2.TASK_STATE_WORKER_FAILED if is_worker_failure else cluster_pb2.TASK_STATE_FAILED
        self.finished_at_ms = now_ms
        self.error = error
        self.exit_code = exit_code
        return TaskTransitionResult.EXCEEDED_RETRY_LIMIT

    def is_finished(self) -> bool:
        return self.state in (
            cluster_pb2.TASK_STATE_SUCCEEDED,
            cluster_pb2.TASK_STATE_FAILED,
            cluster_pb2.TASK_STATE_KILLED,
            cluster_pb2.TASK_STATE_WORKER_FAILED,
            cluster_pb2.TASK_STATE_UNSCHEDULABLE,
        )


@dataclass
class Job:
    job_id: JobId
    request: cluster_pb2.Controller.LaunchJobRequest
    submitted_at_ms: int = 0
    state: int = cluster_pb2.JOB_STATE_PENDING
    finished_at_ms: int | None = None
    error: str | None = None

    @property
    def max_retries_failure(self) -> int:
        return self.request.max_retries_failure

    @property
    def max_retries_preemption(self) -> int:
        return self.request.max_retries_preemption


def expand_job_to_tasks(job: Job, now_ms: int) -> list[Task]:
    num_replicas = job.request.resources.replicas or 1
    tasks = []
    for i in range(num_replicas):
        tasks.append(
            Task(
                task_id=f"{job.job_id}/task-{i}",
                job_id=job.job_id,
                task_index=i,
                max_retries_failure=job.max_retries_failure,
                max_retries_preemption=job.max_retries_preemption,
                submitted_at_ms=now_ms,
            )
        )
    return tasks


@dataclass
class ControllerWorker:
    worker_id: WorkerId
    address: str
    metadata: cluster_pb2.WorkerMetadata
    healthy: bool = True
    consecutive_failures: int = 0
    last_heartbeat_ms: int = 0
    running_tasks: set[TaskId] = field(default_factory=set)


def get_gpu_count(device: cluster_pb2.DeviceConfig) -> int:
    return device.gpu.count if device.WhichOneof("device") == "gpu" else 0


class ControllerState:
    def __init__(self) -> None:
        self._jobs: dict[JobId, Job] = {}
        self._tasks: dict[TaskId, Task] = {}
        self._tasks_by_job: dict[JobId, list[TaskId]] = {}
        self._workers: dict[WorkerId, ControllerWorker] = {}
        self._task_queue: deque[TaskId] = deque()

    def add_job(self, job: Job, tasks: list[Task]) -> None:
        self._jobs[job.job_id] = job
        self._tasks_by_job[job.job_id] = []
        for task in tasks:
            self._tasks[task.task_id] = task
            self._tasks_by_job[job.job_id].append(task.task_id)
            self._task_queue.append(task.task_id)

    def add_worker(self, worker: ControllerWorker) -> None:
        self._workers[worker.worker_id] = worker

    def get_available_workers(self) -> list[ControllerWorker]:
        return [w for w in self._workers.values() if w.healthy]

    def get_job(self, job_id: JobId) -> Job | None:
        return self._jobs.get(job_id)

    def get_task(self, task_id: TaskId) -> Task | None:
        return self._tasks.get(task_id)

    def get_job_tasks(self, job_id: JobId) -> list[Task]:
        task_ids = self._tasks_by_job.get(job_id, [])
        return [self._tasks[tid] for tid in task_ids if tid in self._tasks]

    def peek_pending_tasks(self) -> list[Task]:
        pending = []
        for task_id in self._task_queue:
            task = self._tasks.get(task_id)
            if task and task.state == cluster_pb2.TASK_STATE_PENDING:
                pending.append(task)
        return pending

    def assign_task_to_worker(self, worker_id: WorkerId, task_id: TaskId) -> bool:
        worker = self._workers.get(worker_id)
        if not worker:
            return False
        worker.running_tasks.add(task_id)
        self._task_queue = deque(tid for tid in self._task_queue if tid != task_id)
        return True

    def transition_task(
        self,
        task_id: TaskId,
        new_state: int,
        now_ms: int,
        *,
        is_worker_failure: bool = False,
        error: str | None = None,
        exit_code: int | None = None,
    ) -> TaskTransitionResult:
        task = self._tasks.get(task_id)
        if not task:
            return TaskTransitionResult.COMPLETE
        worker_id = task.worker_id
        result = task.transition(
            new_state, now_ms, is_worker_failure=is_worker_failure, error=error, exit_code=exit_code
        )
        if result == TaskTransitionResult.SHOULD_RETRY:
            if task.task_id not in self._task_queue:
                self._task_queue.append(task.task_id)
            if worker_id:
                worker = self._workers.get(worker_id)
                if worker:
                    worker.running_tasks.discard(task_id)
        elif task.is_finished():
            self._task_queue = deque(tid for tid in self._task_queue if tid != task_id)
            if worker_id:
                worker = self._workers.get(worker_id)
                if worker:
                    worker.running_tasks.discard(task_id)
            self._update_job_from_tasks(task.job_id, now_ms)
        return result

    def _update_job_from_tasks(self, job_id: JobId, now_ms: int) -> None:
        job = self._jobs.get(job_id)
        if not job:
            return
        tasks = self.get_job_tasks(job_id)
        if not tasks:
            return
        succeeded = sum(1 for t in tasks if t.state == cluster_pb2.TASK_STATE_SUCCEEDED)
        failed_permanently = sum(1 for t in tasks if t.state == cluster_pb2.TASK_STATE_FAILED)
        killed_or_unschedulable = sum(
            1 for t in tasks if t.state in (cluster_pb2.TASK_STATE_KILLED, cluster_pb2.TASK_STATE_UNSCHEDULABLE)
        )
        max_task_failures = job.request.max_task_failures
        if succeeded == len(tasks):
            job.state = cluster_pb2.JOB_STATE_SUCCEEDED
            job.finished_at_ms = now_ms
        elif failed_permanently > max_task_failures:
            job.state = cluster_pb2.JOB_STATE_FAILED
            job.finished_at_ms = now_ms
            for t in tasks:
                if t.error and t.state == cluster_pb2.TASK_STATE_FAILED:
                    job.error = t.error
                    break
            self._kill_remaining_tasks(job_id, now_ms, "Job exceeded max_task_failures")
        elif killed_or_unschedulable > 0:
            job.state = cluster_pb2.JOB_STATE_KILLED
            job.finished_at_ms = now_ms
            for t in tasks:
                if t.error:
                    job.error = t.error
                    break

    def _kill_remaining_tasks(self, job_id: JobId, now_ms: int, error: str) -> None:
        for task_id in self._tasks_by_job.get(job_id, []):
            task = self._tasks.get(task_id)
            if not task or task.is_finished():
                continue
            task.state = cluster_pb2.TASK_STATE_KILLED
            task.finished_at_ms = now_ms
            task.error = error
            self._task_queue = deque(tid for tid in self._task_queue if tid != task_id)
            if task.worker_id:
                worker = self._workers.get(task.worker_id)
                if worker:
                    worker.running_tasks.discard(task_id)

    def get_committed_resources(self, worker: ControllerWorker) -> tuple[int, int, int]:
        cpu = 0
        memory = 0
        gpu = 0
        for task_id in worker.running_tasks:
            task = self._tasks.get(task_id)
            if task:
                job = self._jobs.get(task.job_id)
                if job:
                    resources = job.request.resources
                    cpu += resources.cpu
                    memory += resources.memory_bytes
                    gpu += get_gpu_count(resources.device)
        return cpu, memory, gpu


@dataclass
class Capacity:
    cpu: int
    memory: int
    gpu: int


def build_capacity_map(state: ControllerState, workers: list[ControllerWorker]) -> dict[WorkerId, Capacity]:
    capacities = {}
    for worker in workers:
        cpu, memory, gpu = state.get_committed_resources(worker)
        capacities[worker.worker_id] = Capacity(
            cpu=worker.metadata.cpu_count - cpu,
            memory=worker.metadata.memory_bytes - memory,
            gpu=get_gpu_count(worker.metadata.device) - gpu,
        )
    return capacities


def worker_can_fit_task(capacity: Capacity, job: Job) -> bool:
    resources = job.request.resources
    return (
        capacity.cpu >= resources.cpu
        and capacity.memory >= resources.memory_bytes
        and capacity.gpu >= get_gpu_count(resources.device)
    )


def deduct_task_from_capacity(capacity: Capacity, job: Job) -> None:
    resources = job.request.resources
    capacity.cpu -= resources.cpu
    capacity.memory -= resources.memory_bytes
    capacity.gpu -= get_gpu_count(resources.device)


@dataclass
class SchedulingTransaction:
    state: ControllerState
    assignments: list[tuple[Task, ControllerWorker]] = field(default_factory=list)
    timed_out_tasks: list[Task] = field(default_factory=list)

    def tentatively_assign(self, task: Task, worker: ControllerWorker) -> None:
        worker.running_tasks.add(task.task_id)
        self.assignments.append((task, worker))


class Scheduler:
    def __init__(self, state: ControllerState) -> None:
        self._state = state

    def find_assignments(
        self, pending_tasks: list[Task], workers: list[ControllerWorker], now_ms: int
    ) -> SchedulingTransaction:
        transaction = SchedulingTransaction(self._state)
        capacities = build_capacity_map(self._state, workers)
        for task in pending_tasks:
            job = self._state.get_job(task.job_id)
            if not job:
                continue
            if self._is_task_timed_out(task, job, now_ms):
                transaction.timed_out_tasks.append(task)
                continue
            for worker in workers:
                if not worker.healthy:
                    continue
                capacity = capacities[worker.worker_id]
                if worker_can_fit_task(capacity, job):
                    deduct_task_from_capacity(capacity, job)
                    transaction.tentatively_assign(task, worker)
                    break
        return transaction

    def _is_task_timed_out(self, task: Task, job: Job, now_ms: int) -> bool:
        timeout_seconds = job.request.scheduling_timeout_seconds
        if timeout_seconds <= 0:
            return False
        return now_ms - task.submitted_at_ms > timeout_seconds * 1000


class DeadlineExceeded(Exception):
    pass


def run_workload(
    request: cluster_pb2.Controller.LaunchJobRequest,
    workers: list[ControllerWorker],
    now_ms: int,
    check_deadline: Callable[[], None],
) -> ControllerState:
    """The benchmark's workload through the seed's code paths: add, schedule + dispatch (Step 5's
    ``mark_dispatched`` then ``assign_task_to_worker``), then every task SUCCEEDED.

    ``check_deadline`` is called every few hundred operations and raises to abandon the run.
    """
    state = ControllerState()
    job = Job(job_id=request.name, request=request, submitted_at_ms=now_ms)
    state.add_job(job, expand_job_to_tasks(job, now_ms))
    for worker in workers:
        state.add_worker(worker)
    scheduler = Scheduler(state)
    while True:
        pending = state.peek_pending_tasks()
        if not pending:
            break
        transaction = scheduler.find_assignments(pending, state.get_available_workers(), now_ms)
        if not transaction.assignments:
            raise RuntimeError("naive scheduler made no progress")
        for i, (task, worker) in enumerate(transaction.assignments):
            task.mark_dispatched(worker.worker_id, now_ms)
            state.assign_task_to_worker(worker.worker_id, task.task_id)
            if i % 256 == 0:
                check_deadline()
        for i, (task, _) in enumerate(transaction.assignments):
            state.transition_task(task.task_id, cluster_pb2.TASK_STATE_SUCCEEDED, now_ms + 1, exit_code=0)
            if i % 256 == 0:
                check_deadline()
    if job.state != cluster_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"naive job ended in state {job.state}")
    return state
