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


def test_previous_attempt_is_read_from_the_iris_previous_variables() -> None:
    from iris.client import PreviousAttempt

    base = {"IRIS_JOB_ID": "j", "IRIS_TASK_ID": "j/task-0", "IRIS_ATTEMPT_ID": "1"}
    info = get_job_info({**base, "IRIS_PREVIOUS_ATTEMPT_STATE": "WORKER_FAILED", "IRIS_PREVIOUS_EXIT_CODE": "0",
                         "IRIS_PREVIOUS_ERROR": "worker w1 drained", "IRIS_ADVERTISE_HOST": "10.0.0.2",
                         "IRIS_BIND_HOST": "0.0.0.0"})
    assert info is not None
    assert info.previous_attempt == PreviousAttempt("WORKER_FAILED", 0, "worker w1 drained")
    assert (info.advertise_host, info.bind_host) == ("10.0.0.2", "0.0.0.0")
    first = get_job_info(base)
    assert first is not None and first.previous_attempt is None
