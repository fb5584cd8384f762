"""What a task runs: a command line or a Python callable, in the wire form the controller checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from iris.client.errors import InvalidRequestError
from iris.rpc import cluster_pb2


@dataclass(frozen=True, slots=True)
class Entrypoint:
    """A task's entry point. Build one with ``from_command`` or ``from_callable``.

    >>> Entrypoint.from_command("python", "train.py").argv
    ('python', 'train.py')
    """

    argv: tuple[str, ...] = ()
    pickled: bytes = b""

    @classmethod
    def from_command(cls, *argv: str) -> Entrypoint:
        """Run ``argv`` as a process (no shell) in the attempt's working directory."""
        if len(argv) == 1 and not isinstance(argv[0], str) and isinstance(argv[0], Sequence):
            argv = tuple(argv[0])  # tolerate from_command(["python", "x.py"])
        if not argv or not argv[0]:
            raise InvalidRequestError("entrypoint: the command is empty; give a program to run")
        for arg in argv:
            if not isinstance(arg, str):
                raise InvalidRequestError(f"entrypoint: command arguments must be strings, got {arg!r}")
        return cls(argv=tuple(argv))

    @classmethod
    def from_callable(cls, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Entrypoint:
        """Call ``fn(*args, **kwargs)`` in a fresh Python process on the worker.

        ``fn`` and its arguments are serialised with cloudpickle; the task fails when it raises.
        """
        if not callable(fn):
            raise InvalidRequestError(f"entrypoint: expected a callable, got {fn!r}")
        try:
            pickled = cloudpickle.dumps((fn, args, kwargs))
        except Exception as e:
            raise InvalidRequestError(f"entrypoint: cannot pickle {fn!r} and its arguments: {e}") from e
        return cls(pickled=pickled)

    @property
    def is_command(self) -> bool:
        return bool(self.argv)

    def to_proto(self) -> cluster_pb2.Entrypoint:
        if self.argv:
            return cluster_pb2.Entrypoint(command=cluster_pb2.CommandEntrypoint(argv=list(self.argv)))
        return cluster_pb2.Entrypoint(callable=cluster_pb2.CallableEntrypoint(pickled=self.pickled))

    def serialize(self) -> bytes:
        """The bytes sent as ``LaunchJobRequest.serialized_entrypoint``."""
        return self.to_proto().SerializeToString()

    def describe(self) -> str:
        """A short human description: the command line, or the callable's name."""
        if self.argv:
            return " ".join(self.argv)
        return "<python callable>"
