"""Exceptions raised by the Iris client. Every message is one line a person can act on.

``IrisError`` is the base; the CLI prints ``str(error)`` and exits non-zero, so messages must
stand on their own (name the job, the field, the address).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from iris.client.models import JobStatus, TaskStatus
from iris.cluster import errors as _base

IrisError = _base.IrisError
"""Base class of every error the client raises (the same class as ``iris.cluster.errors.IrisError``)."""

UnavailableError = _base.Unavailable
"""Something the controller needed was unavailable (e.g. the worker holding a task's logs)."""


class ControllerUnavailableError(UnavailableError):
    """The controller could not be reached (not running, wrong address, or timed out)."""


InvalidRequestError = _base.InvalidArgument
"""The request was refused as malformed (INVALID_ARGUMENT); the message names the field."""

NotFoundError = _base.NotFound
"""A job, task, worker or endpoint does not exist."""


class JobNotFoundError(NotFoundError):
    """The named job does not exist."""


AlreadyExistsError = _base.AlreadyExists
"""A job (or endpoint) with that name already exists."""

FailedPreconditionError = _base.FailedPrecondition
"""The request is valid but cannot be applied in the current state."""

UnauthenticatedError = _base.Unauthenticated
"""No valid credential was presented (see ``iris login``, ``--token-file``, ``$IRIS_TOKEN``)."""

PermissionDeniedError = _base.PermissionDenied
"""The caller is known but may not do this (not the job's owner, wrong role)."""


class BundleTooLargeError(IrisError):
    """The workspace bundle exceeds the size cap; the message lists the biggest files."""


class JobTimeoutError(IrisError, TimeoutError):
    """``Job.wait`` gave up before the job finished. The job keeps running."""


class JobFailedError(IrisError):
    """A job ended in a state other than SUCCEEDED.

    Attributes:
        job: the job's final status (``job.error`` is the controller's explanation).
        failed_tasks: the tasks that did not succeed, with their errors and exit codes.
        remote_type, remote_message, remote_traceback: when a callable raised, the exception's
            type name, message and the traceback printed in the task ("" otherwise).
    """

    def __init__(self, job: JobStatus, failed_tasks: Sequence[TaskStatus] = ()) -> None:
        self.job = job
        self.failed_tasks = list(failed_tasks)
        self.remote_type, self.remote_message, self.remote_traceback = _remote_exception(self.failed_tasks)
        super().__init__(_job_failed_message(job, self.failed_tasks))

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def error(self) -> str:
        return self.job.error


def _remote_exception(failed_tasks: Sequence[TaskStatus]) -> tuple[str, str, str]:
    """(type, message, traceback) of the first failed task whose error (or an earlier attempt's) is
    a Python traceback, as a callable task leaves it."""
    for task in failed_tasks:
        for error in [task.error, *(a.error for a in reversed(task.attempts))]:
            text = (error or "").strip()
            start = text.find("Traceback (most recent call last):")
            if start < 0:
                continue
            traceback_text = text[start:]
            last = [line for line in traceback_text.splitlines() if line.strip()][-1].strip()
            kind, sep, message = last.partition(":")
            return (kind.strip(), message.strip() if sep else "", traceback_text)
    return "", "", ""


def _job_failed_message(job: JobStatus, failed_tasks: Sequence[TaskStatus]) -> str:
    message = f"job {job.job_id} {job.state.value}"
    if job.error:
        message += f": {_one_line(job.error)}"
    elif failed_tasks:
        first = failed_tasks[0]
        detail = first.error or (f"exit code {first.exit_code}" if first.exit_code else first.state.value)
        message += f": task {first.task_index}: {_one_line(detail)}"
    if failed_tasks:
        message += f" ({len(failed_tasks)} task{'s' if len(failed_tasks) != 1 else ''} did not succeed)"
    return message


def _one_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a (possibly multi-line, e.g. traceback) error, shortened."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_from_rpc(error: grpc.RpcError, address: str, what: str = "") -> IrisError:
    """Translate a gRPC error into the client exception for its status code.

    Args:
        error: the error raised by a stub call.
        address: the controller address, for "cannot reach" messages.
        what: what was asked for ("job foo"), used when the server gives no detail.
    """
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else "") or ""
    details = _one_line(details) if details else ""
    if code == grpc.StatusCode.UNAVAILABLE and details and not _is_transport_failure(details):
        return UnavailableError(details)  # the controller answered: something behind it is unavailable
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        reason = "timed out" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "connection failed"
        return ControllerUnavailableError(
            f"cannot reach the Iris controller at {address} ({reason}); is it running? "
            "Set --controller or IRIS_CONTROLLER, or start one with `iris cluster start --local`"
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return UnavailableError(details or f"{what or 'request'}: the controller is busy; retry in a moment")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequestError(details or f"invalid request{f' for {what}' if what else ''}")
    if code == grpc.StatusCode.NOT_FOUND:
        message = details or f"{what or 'object'} not found"
        if what.startswith("job"):
            return JobNotFoundError(message)
        return NotFoundError(message)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(details or f"{what or 'object'} already exists")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(
            (details or "no valid credential") + f" (controller {address}: `iris login`, --token-file or IRIS_TOKEN)"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(details or f"{what or 'request'}: permission denied")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(details or f"{what or 'request'}: failed precondition")
    name = code.name if code is not None else type(error).__name__
    return IrisError(f"controller error {name}: {details or 'no details'}")


_TRANSPORT_PREFIXES = (
    "failed to connect",
    "socket",
    "connection",
    "dns",
    "broken pipe",
    "recvmsg",
    "sendmsg",
    "goaway",
    "endpoint",
    "io error",
    "network",
    "channel",
    "empty address",
    "name resolution",
)


def _is_transport_failure(details: str) -> bool:
    """True when UNAVAILABLE came from gRPC's transport, not from a server that answered."""
    return details.strip().lower().startswith(_TRANSPORT_PREFIXES)
