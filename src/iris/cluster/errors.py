"""The one error hierarchy of Iris.

Every error a request can meet is an ``IrisError`` whose message names the field and the rule.
``code`` is the name of the gRPC status it maps to; the servicers (``grpc_status``) and the
dashboard translate it in one place, so this module imports no gRPC and the pure core may raise
these too. The client re-exports them under its own names (``iris.client.errors``).
"""

from __future__ import annotations


class IrisError(Exception):
    """Base of every Iris error. The message names the field and the rule."""

    code: str = "INTERNAL"


class InvalidArgument(IrisError, ValueError):
    """A request was malformed; nothing was changed."""

    code = "INVALID_ARGUMENT"


class NotFound(IrisError, LookupError):
    code = "NOT_FOUND"


class AlreadyExists(IrisError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(IrisError):
    code = "FAILED_PRECONDITION"


class Unavailable(IrisError):
    code = "UNAVAILABLE"


class Unauthenticated(IrisError):
    """No valid credential: missing, malformed, unknown, revoked, or of an attempt that ended."""

    code = "UNAUTHENTICATED"


class PermissionDenied(IrisError):
    """A known caller that may not do this: wrong role, not the owner, outside its scope."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(IrisError):
    """A quota of the caller's is used up (e.g. endpoints per task)."""

    code = "RESOURCE_EXHAUSTED"
