"""Launches and kills: the controller's side of the ``TaskBackend`` seam.

A scheduling pass commits assignments and hands them here; they go to the backend on a bounded
thread pool (never on the scheduling thread, never under the lock), one call per location and
batch, and what the backend answers comes back as one transaction: ACCEPTED is acknowledged,
TASK_REFUSED is a failure of that task (the location stays healthy), BACKEND_FAILED a preemption
and a mark against the location. Every attempt the core ended while it may run gets a kill.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from iris.cluster.controller.backend import (
    AttemptKill,
    AttemptLaunch,
    BackendUnavailable,
    LaunchOutcome,
    LaunchResult,
    TaskBackend,
)
from iris.cluster.controller.changes import Changes
from iris.cluster.controller.credentials import Credentials
from iris.cluster.controller.state import ControllerState, ControllerWorker, KillInstruction
from iris.cluster.rendezvous import Member, gang_env, lead_of
from iris.cluster.types import JobId, TaskId, WorkerId

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchConfig:
    threads: int = 16
    batch_max_tasks: int = 128
    batch_max_bytes: int = 1024 * 1024
    max_dispatch_failures: int = 3
    kill_grace_period_s: float = 0.0
    max_termination_grace_s: float = 600.0


class Dispatcher:
    def __init__(self, changes: Changes, backend: TaskBackend, credentials: Credentials,
                 config: DispatchConfig) -> None:
        self._changes = changes
        self._backend = backend
        self._credentials = credentials
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="dispatch")
        self._launch_bytes: dict[JobId, int] = {}
        """Per job (recent ones), the request bytes one of its launches takes (for batching)."""

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def forget_jobs(self, job_ids: Iterable[JobId]) -> None:
        for job_id in job_ids:
            self._launch_bytes.pop(job_id, None)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the pool; an exception inside it is logged, never lost."""
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:  # shut down
            logger.debug("pool is shut down; dropped %s", getattr(fn, "__name__", fn))
            return
        future.add_done_callback(_log_failure)

    # ------------------------------------------------------------------ kills

    def send_kills(self, kills: Iterable[KillInstruction]) -> None:
        state = self._changes.state  # dict reads after the change, as before: no lock taken per kill
        for kill in kills:
            worker = state.get_worker(kill.worker_id)
            if worker is None:
                continue
            task = state.get_task(kill.task_id)
            job = state.get_job(task.job_id) if task is not None else None
            job_uid = kill.job_uid if kill.job_uid is not None else (job.uid if job is not None else "")
            grace = self._grace(job.spec.termination_grace_seconds if job is not None else None)
            address = worker.address
            self.submit(self._kill_one, AttemptKill(
                kill.worker_id, address, kill.task_id, kill.attempt_id, grace,
                self._credentials.controller_token(kill.worker_id), job_uid,
            ))

    def _grace(self, grace: float | None) -> float:
        """SIGTERM-to-SIGKILL for a task Iris stops: its job's ``termination_grace_seconds``, capped
        by ``max_termination_grace_s``; unset, the controller's default (0: the worker's own)."""
        if grace is None:
            return self.config.kill_grace_period_s
        return min(grace, self.config.max_termination_grace_s)

    def _kill_one(self, kill: AttemptKill) -> None:
        try:
            self._backend.kill(kill)
        except BackendUnavailable as e:
            # The next observation reconciles it: the attempt is no longer expected there.
            logger.warning("kill task=%s attempt=%s on %s failed: %s", kill.task_id, kill.attempt_id,
                           kill.worker_id, e)

    # ------------------------------------------------------------------ launches

    def start(self, launches: list[AttemptLaunch]) -> None:
        """Hand committed assignments to the pool: one backend call per worker (per batch)."""
        for batch in self._batches(with_rendezvous(launches)):
            self.submit(self._launch_batch, batch)

    def _launch_size(self, launch: AttemptLaunch) -> int:
        size = self._launch_bytes.get(launch.job_id)
        if size is None:
            spec = launch.spec
            size = (len(spec.entrypoint.pickled) + sum(len(a) + 1 for a in spec.entrypoint.argv)
                    + sum(len(k) + len(v) + 2 for k, v in spec.env.items()) + 256)
            if len(self._launch_bytes) >= 256:
                self._launch_bytes.clear()
            self._launch_bytes[launch.job_id] = size
        return size

    def _batches(self, launches: list[AttemptLaunch]) -> list[list[AttemptLaunch]]:
        """Group a pass's launches per worker (in assignment order), split by the batch limits."""
        per_worker: dict[WorkerId, list[list[AttemptLaunch]]] = {}
        sizes: dict[WorkerId, int] = {}
        max_tasks = self.config.batch_max_tasks
        max_bytes = self.config.batch_max_bytes
        for launch in launches:
            size = self._launch_size(launch)
            chunks = per_worker.setdefault(launch.worker_id, [])
            if not chunks or len(chunks[-1]) >= max_tasks or sizes[launch.worker_id] + size > max_bytes:
                chunks.append([])
                sizes[launch.worker_id] = 0
            chunks[-1].append(launch)
            sizes[launch.worker_id] += size
        return [chunk for chunks in per_worker.values() for chunk in chunks]

    def _launch_batch(self, batch: list[AttemptLaunch]) -> None:
        """One backend call for several attempts on one worker (tokens are added here, on the pool,
        outside the lock)."""
        if self._credentials.auth:
            credential = self._credentials.controller_token(batch[0].worker_id)
            token = self._credentials.task_token
            batch = [launch.with_credentials(token(launch.task_id, launch.attempt_id, launch.job_uid), credential)
                     for launch in batch]
        try:
            results = self._backend.submit(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"backend gave {len(results)} results for {len(batch)} launches")
        except Exception as e:  # a bug in a backend must not leave the tasks stuck RUNNING
            logger.exception("launch of %d tasks to %s crashed", len(batch), batch[0].worker_id)
            results = [LaunchResult(LaunchOutcome.BACKEND_FAILED, f"dispatch to worker {batch[0].worker_id} "
                                    f"failed: {e}")] * len(batch)
        self.apply_results(batch, results)

    def apply_results(self, batch: Sequence[AttemptLaunch], results: Sequence[LaunchResult]) -> None:
        """Apply what the backend said about each launch of one call: ACCEPTED is acknowledged;
        TASK_REFUSED is a failure of that task (the worker stays healthy); BACKEND_FAILED is a
        preemption, and the call counts once toward ``max_dispatch_failures`` of the worker."""
        failed_last = max((i for i, r in enumerate(results) if r.outcome is LaunchOutcome.BACKEND_FAILED),
                          default=-1)
        with self._changes.change(quiet=True) as tx:  # acknowledgements write nothing and answer no one
            for i, (launch, result) in enumerate(zip(batch, results, strict=True)):
                if result.outcome is LaunchOutcome.ACCEPTED:
                    tx.state.ack_dispatch(launch.task_id, launch.attempt_id, result.incarnation, result.sequence)
                    continue
                logger.warning("task=%s attempt=%d: %s", launch.task_id, launch.attempt_id, result.error)
                if result.outcome is LaunchOutcome.TASK_REFUSED:
                    tx.state.dispatch_refused(launch.task_id, launch.attempt_id, tx.now_ms, result.error)
                else:
                    tx.state.dispatch_failed(
                        launch.task_id, launch.attempt_id, tx.now_ms, result.error, worker_gone=result.location_gone,
                        max_consecutive_failures=self.config.max_dispatch_failures, count_failure=i == failed_last,
                    )


def with_rendezvous(launches: list[AttemptLaunch]) -> list[AttemptLaunch]:
    """Give every task of each coscheduled gang placed in this pass its rendezvous variables."""
    gangs: dict[JobId, list[AttemptLaunch]] = {}
    for launch in launches:
        if launch.spec.coscheduled:
            gangs.setdefault(launch.job_id, []).append(launch)
    if not gangs:
        return launches
    envs: dict[tuple[JobId, int], dict[str, str]] = {}
    leads: set[tuple[JobId, int]] = set()
    for job_id, members in gangs.items():
        spec = members[0].spec
        placed = [Member(m.task_index, m.attempt_id, m.address, m.coordinator_port) for m in members]
        leads.add((job_id, lead_of(placed).task_index))
        for index, env in gang_env(members[0].num_tasks, placed, spec.env).items():
            envs[(job_id, index)] = env
    # Only the lead keeps its rendezvous port (its worker checks it is free): the others' go unused.
    return [dataclasses.replace(launch, rendezvous=tuple(sorted(envs[(launch.job_id, launch.task_index)].items())),
                                coordinator_port=launch.coordinator_port
                                if (launch.job_id, launch.task_index) in leads else 0)
            if (launch.job_id, launch.task_index) in envs else launch for launch in launches]


def _log_failure(future: Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        logger.error("background controller work failed", exc_info=error)


def commit_launch(state: ControllerState, task_id: TaskId, worker: ControllerWorker, now_ms: int,
                  checkpoint_dir: Callable[[str, JobId, str], Path | None]) -> AttemptLaunch | None:
    """Commit one assignment of a pass and describe its launch (tokens are added on the dispatch
    pool); None when the state refused it. ``checkpoint_dir``: ``ControllerConfig.checkpoint_dir``."""
    if not state.commit_assignment(task_id, worker.worker_id, now_ms):
        return None
    task = state.get_task(task_id)
    job = state.get_job(task.job_id) if task is not None else None
    assert task is not None and job is not None
    previous = task.attempts[-1] if task.attempts else None
    checkpoints = checkpoint_dir(job.owner, job.job_id, job.uid)
    return AttemptLaunch(job.job_id, task.task_id, task.task_index, job.num_tasks, task.current_attempt_id,
                         job.spec, worker.worker_id, worker.address, previous=previous, job_uid=job.uid,
                         checkpoint_dir=str(checkpoints) if checkpoints is not None else "",
                         ports=tuple(task.ports.items()) if task.ports else (),
                         coordinator_port=task.coordinator_port, run_as=state.uids.run_as(job.owner))
