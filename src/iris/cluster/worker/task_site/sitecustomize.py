"""Put on a coscheduled task's ``PYTHONPATH`` by its worker, so that ``jax.distributed.initialize()``
works with no arguments in an Iris gang (as it does under Slurm or Open MPI).

JAX finds its cluster by the subclasses of ``jax._src.clusters.ClusterEnv`` that exist when it
initializes (each subclass registers itself). This module, run at interpreter start (Python imports
``sitecustomize`` from the path by itself), installs a finder that waits for JAX's ``clusters``
package to be imported and then defines ``IrisCluster`` there, first in line: the coordinator from
``IRIS_COORDINATOR_ADDRESS``, the process count and id from ``IRIS_NUM_TASKS`` and
``IRIS_TASK_INDEX``, the local id from ``LOCAL_RANK``. Nothing of JAX is imported until the program
imports it; a program without JAX pays for one small finder. Then it runs the ``sitecustomize`` this
one shadows, if there is one further down the path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

_TARGET = "jax._src.clusters"


def _define_iris_cluster(clusters: Any) -> None:
    """``IrisCluster`` in JAX's registry, ahead of the others (a worker started by Slurm passes its
    SLURM_* variables on, which must not win over the gang Iris placed)."""

    class IrisCluster(clusters.ClusterEnv):  # type: ignore[misc]
        name = "iris"

        @classmethod
        def is_env_present(cls) -> bool:
            return "IRIS_COORDINATOR_ADDRESS" in os.environ and "IRIS_NUM_TASKS" in os.environ

        @classmethod
        def get_coordinator_address(cls, timeout_secs: int | None, override_coordinator_port: str | None = None
                                    ) -> str:
            address = os.environ["IRIS_COORDINATOR_ADDRESS"]
            if override_coordinator_port:
                address = f"{address.rsplit(':', 1)[0]}:{override_coordinator_port}"
            return address

        @classmethod
        def get_process_count(cls) -> int:
            return int(os.environ["IRIS_NUM_TASKS"])

        @classmethod
        def get_process_id(cls) -> int:
            return int(os.environ["IRIS_TASK_INDEX"])

        @classmethod
        def get_local_process_id(cls) -> int | None:
            local = os.environ.get("LOCAL_RANK")
            return int(local) if local is not None and local.isdigit() else None

    registry = clusters.ClusterEnv._cluster_types
    registry.remove(IrisCluster)
    registry.insert(0, IrisCluster)


class _WhenJaxClustersLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # once: find the real module the usual way
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _define_iris_cluster(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _run_shadowed_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if "IRIS_COORDINATOR_ADDRESS" in os.environ and _TARGET not in sys.modules:
    sys.meta_path.insert(0, _WhenJaxClustersLoad())
_run_shadowed_sitecustomize()
