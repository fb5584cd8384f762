"""gRPC status codes for Iris errors: the one place an ``IrisError.code`` becomes a ``grpc.StatusCode``."""

from __future__ import annotations

import grpc

from iris.cluster.errors import IrisError


def grpc_status(error: IrisError) -> grpc.StatusCode:
    """The gRPC status code of an Iris error (its ``code`` names it)."""
    status: grpc.StatusCode = getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)
    return status
