"""What a task runs: a command line or a Python callable (``iris.cluster.spec.Entrypoint``)."""

from iris.cluster.spec import Entrypoint

__all__ = ["Entrypoint"]
