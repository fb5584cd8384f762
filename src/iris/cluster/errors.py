"""Errors the controller raises for bad requests; servicers map them to gRPC status codes in one place."""

from __future__ import annotations

import grpc


class IrisError(Exception):
    """Base of Iris's request errors. The message names the field and the rule."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(IrisError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(IrisError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(IrisError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(IrisError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(IrisError):
    code = grpc.StatusCode.UNAVAILABLE
