"""get_job_info() reads the environment a worker gives each task."""

from __future__ import annotations

from iris.client import JobInfo, get_job_info


def test_get_job_info_outside_a_task_is_none() -> None:
    assert get_job_info({}) is None


def test_get_job_info_reads_every_task_variable() -> None:
    env = {
        "IRIS_JOB_ID": "train/eval",
        "IRIS_TASK_ID": "train/eval/task-3",
        "IRIS_TASK_INDEX": "3",
        "IRIS_NUM_TASKS": "8",
        "IRIS_ATTEMPT_ID": "2",
        "IRIS_WORKER_ID": "w-1",
        "IRIS_CONTROLLER_ADDRESS": "127.0.0.1:10000",
        "IRIS_PORT_HTTP": "8123",
        "IRIS_PORT_GRPC_API": "9000",
        "IRIS_BUNDLE_HASH": "ab" * 32,
    }
    assert get_job_info(env) == JobInfo(
        job_id="train/eval",
        task_id="train/eval/task-3",
        task_index=3,
        num_tasks=8,
        attempt_id=2,
        worker_id="w-1",
        controller_address="127.0.0.1:10000",
        ports={"http": 8123, "grpc_api": 9000},
        bundle_hash="ab" * 32,
    )
