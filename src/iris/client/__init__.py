"""The Iris Python client.

>>> from iris.client import IrisClient, Entrypoint, ResourceSpec
>>> with IrisClient.local(workers=2) as client:                      # doctest: +SKIP
...     job = client.submit(Entrypoint.from_command("echo", "hi"), "hello", replicas=4)
...     job.wait(stream_logs=True)

Inside a task, ``get_job_info()`` says who the task is and ``IrisClient.from_env()`` submits child
jobs that die with their parent.
"""

from iris.client.bundle import DEFAULT_BUNDLE_MAX_BYTES, Bundle, build_bundle
from iris.client.client import (
    DEFAULT_CONTROLLER_ADDRESS,
    IrisClient,
    Job,
    LogChunk,
    LogFollower,
    default_controller_address,
    generate_job_name,
)
from iris.client.entrypoint import Entrypoint
from iris.client.errors import (
    AlreadyExistsError,
    BundleTooLargeError,
    ControllerUnavailableError,
    FailedPreconditionError,
    InvalidRequestError,
    IrisError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    NotFoundError,
    UnavailableError,
)
from iris.client.job_info import JobInfo, PreviousAttempt, get_job_info
from iris.client.models import (
    EndpointInfo,
    JobState,
    JobStatus,
    LogLine,
    TaskAttempt,
    TaskCounts,
    TaskLogLine,
    TaskState,
    TaskStatus,
    TimeSpent,
    WorkerInfo,
)
from iris.cluster.types import ResourceSpec, cpu, gpu, tpu

__all__ = [
    "DEFAULT_BUNDLE_MAX_BYTES",
    "DEFAULT_CONTROLLER_ADDRESS",
    "AlreadyExistsError",
    "Bundle",
    "BundleTooLargeError",
    "ControllerUnavailableError",
    "EndpointInfo",
    "Entrypoint",
    "FailedPreconditionError",
    "InvalidRequestError",
    "IrisClient",
    "IrisError",
    "Job",
    "JobFailedError",
    "JobInfo",
    "PreviousAttempt",
    "JobNotFoundError",
    "JobState",
    "JobStatus",
    "JobTimeoutError",
    "LogChunk",
    "LogFollower",
    "LogLine",
    "NotFoundError",
    "ResourceSpec",
    "TaskAttempt",
    "TimeSpent",
    "TaskCounts",
    "TaskLogLine",
    "TaskState",
    "TaskStatus",
    "UnavailableError",
    "WorkerInfo",
    "build_bundle",
    "cpu",
    "default_controller_address",
    "generate_job_name",
    "get_job_info",
    "gpu",
    "tpu",
]
