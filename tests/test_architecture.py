"""Architecture rules checked on the source's AST (DESIGN §5, CONTRIBUTING.md "Pure core vs shell").

1. The pure core (``iris/cluster/{types,errors,spec,validation}.py``,
   ``iris/cluster/controller/{task,job,state,capacity,autoscaler,scheduler,views}.py`` and the worker's
   ``iris/cluster/worker/attempts.py``)
   does no I/O and reads no clock: it may not import RPC, storage, processes, sockets, time or
   threads (``state.py`` alone may ``from threading import RLock``), nor the shell modules
   (controller, service, store, dashboard, worker, local cluster, client, CLI, clock).
2. Nothing under ``src/`` reads the wall clock except ``iris/cluster/clock.py``: shell code takes a
   ``Clock`` and the core takes ``now_ms``. Enforced on everything under ``iris/cluster`` (the pure core
   and the controller and worker shells); the client and CLI front ends may keep their own deadlines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

PURE_MODULES = (
    "iris/cluster/types.py",
    "iris/cluster/auth.py",
    "iris/cluster/errors.py",
    "iris/cluster/spec.py",
    "iris/cluster/validation.py",
    "iris/cluster/failures.py",
    "iris/cluster/rendezvous.py",
    "iris/cluster/controller/task.py",
    "iris/cluster/controller/job.py",
    "iris/cluster/controller/state.py",
    "iris/cluster/controller/capacity.py",
    "iris/cluster/controller/autoscaler.py",
    "iris/cluster/controller/uids.py",
    "iris/cluster/controller/uploads.py",
    "iris/cluster/controller/scheduler.py",
    "iris/cluster/controller/views.py",
    "iris/cluster/controller/access.py",
    "iris/cluster/controller/policies.py",
    "iris/cluster/controller/requests.py",
    "iris/cluster/controller/fairness.py",
    "iris/cluster/controller/shares.py",
    "iris/cluster/controller/queue.py",
    "iris/cluster/controller/reservations.py",
    "iris/cluster/controller/estimate.py",
    "iris/cluster/controller/runtimes.py",
    "iris/cluster/sharing.py",
    "iris/cluster/bands.py",
    "iris/cluster/rules.py",
    "iris/cluster/models.py",
    "iris/cluster/worker/attempts.py",
)

FORBIDDEN_IN_PURE = (
    "grpc",
    "sqlite3",
    "subprocess",
    "socket",
    "time",
    "datetime",
    "threading",
    "asyncio",
    "multiprocessing",
    "concurrent",
    "signal",
    "http",
    "urllib",
    "iris.cluster.controller.controller",
    "iris.cluster.controller.service",
    "iris.cluster.controller.store",
    "iris.cluster.controller.dashboard",
    "iris.cluster.worker",
    "iris.cluster.local",
    "iris.cluster.clock",
    "iris.client",
    "iris.cli",
)
"""Module prefixes the pure core may not import (``a.b`` also forbids ``a.b.c``)."""

ALLOWED_IN_PURE: dict[str, set[tuple[str, str]]] = {
    "iris/cluster/controller/state.py": {("threading", "RLock")},
}
"""(module, name) pairs a pure module may import with ``from module import name``."""

CLOCK_MODULE = "iris/cluster/clock.py"

CLOCK_READS = {
    "time": {"time", "time_ns", "monotonic", "monotonic_ns"},
    "datetime": {"now", "utcnow", "today"},
    "date": {"today"},
}
"""Clock-reading attributes: ``time.time``, ``datetime.now`` (on the module's class), ``date.today``."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module_name: str, is_package: bool) -> str:
    """Absolute module of a ``from ... import``, resolving relative levels."""
    if not node.level:
        return node.module or ""
    base = module_name.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_imports(source: str, path: Path, allowed: set[tuple[str, str]] | None = None) -> list[str]:
    """Imports of FORBIDDEN_IN_PURE modules in ``source``, as 'line N: what' strings."""
    allowed = allowed or set()
    tree = ast.parse(source, filename=str(path))
    module_name = _module_name(path) if path.is_relative_to(SRC) else path.stem
    is_package = path.name == "__init__.py"
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(_matches(alias.name, p) for p in FORBIDDEN_IN_PURE):
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, module_name, is_package)
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                if (module, alias.name) in allowed:
                    continue
                if any(_matches(module, p) or _matches(full, p) for p in FORBIDDEN_IN_PURE):
                    problems.append(f"line {node.lineno}: from {module or '.'} import {alias.name}")
        elif isinstance(node, ast.Call):
            # importlib.import_module("grpc") / __import__("grpc") with a literal name
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if any(_matches(arg.value, p) for p in FORBIDDEN_IN_PURE):
                        problems.append(f"line {node.lineno}: {name}({arg.value!r})")
    return problems


def clock_reads(source: str, path: Path) -> list[str]:
    """References to wall-clock reads (``time.time``, ``time.monotonic``, ``datetime.now``...)."""
    tree = ast.parse(source, filename=str(path))
    # local name -> the clock "namespace" it stands for ("time", "datetime" or "date")
    aliases: dict[str, str] = {}
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("time", "datetime"):
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level:
            for alias in node.names:
                if node.module == "time" and alias.name in CLOCK_READS["time"]:
                    problems.append(f"line {node.lineno}: from time import {alias.name}")
                elif node.module == "datetime" and alias.name in ("datetime", "date"):
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name):
            namespace = aliases.get(value.id)
        elif (
            isinstance(value, ast.Attribute)
            and isinstance(value.value, ast.Name)
            and aliases.get(value.value.id) == "datetime"
            and value.attr in ("datetime", "date")
        ):
            namespace = value.attr  # datetime.datetime.now / datetime.date.today
        else:
            namespace = None
        if namespace is None:
            continue
        if node.attr in CLOCK_READS.get(namespace, set()):
            problems.append(f"line {node.lineno}: {ast.unparse(node)}")
    return problems


def _source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_or_shell(module: str) -> None:
    path = SRC / module
    assert path.exists(), f"pure module {module} is missing"
    problems = forbidden_imports(path.read_text(), path, ALLOWED_IN_PURE.get(module, set()))
    assert not problems, (
        f"{module} is part of the pure core (no I/O, threads, clock or shell imports; time comes in as "
        f"now_ms). Move this code to the shell or pass the value in:\n  " + "\n  ".join(problems)
    )


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_reads_no_clock(module: str) -> None:
    path = SRC / module
    problems = clock_reads(path.read_text(), path)
    assert not problems, f"{module} is pure: take now_ms as an argument.\n  " + "\n  ".join(problems)


def test_cluster_reads_clock_only_in_clock_module() -> None:
    """The controller and worker shells take a Clock, so tests drive their time with FakeClock. (The client
    and CLI are user-facing front ends and may use ``time`` for their own deadlines.)"""
    offenders: dict[str, list[str]] = {}
    for path in _source_files():
        rel = path.relative_to(SRC).as_posix()
        if rel == CLOCK_MODULE or not rel.startswith("iris/cluster/"):
            continue
        problems = clock_reads(path.read_text(), path)
        if problems:
            offenders[rel] = problems
    assert not offenders, (
        "Only iris/cluster/clock.py reads the clock: take a Clock (SystemClock / FakeClock) in the "
        "constructor and call clock.now_ms() / clock.monotonic(); the pure core takes now_ms.\n"
        + "\n".join(f"  {f}: {', '.join(p)}" for f, p in offenders.items())
    )


# The checkers themselves: they must catch what they claim to.


@pytest.mark.parametrize(
    "source",
    [
        "import grpc\n",
        "import sqlite3 as db\n",
        "from subprocess import run\n",
        "import time\n",
        "from datetime import datetime\n",
        "import threading\n",
        "from threading import Thread\n",
        "from iris.cluster.controller.store import Store\n",
        "from iris.cluster.controller import controller\n",
        "from iris.cluster.worker.worker import Worker\n",
        "import iris.client\n",
        "from iris.cli.main import main\n",
        "from . import service\n",
        "from .dashboard import serve\n",
        "import importlib\nimportlib.import_module('socket')\n",
    ],
)
def test_forbidden_imports_bad_source_flagged(source: str) -> None:
    path = SRC / "iris/cluster/controller/state.py"
    assert forbidden_imports(source, path, ALLOWED_IN_PURE["iris/cluster/controller/state.py"])


@pytest.mark.parametrize(
    "source",
    [
        "from threading import RLock\n",
        "from collections import deque\nimport logging\n",
        "from iris.cluster.controller.task import Task\n",
        "from .job import Job\n",
        "from iris.rpc import cluster_pb2\n",
    ],
)
def test_forbidden_imports_allowed_source_passes(source: str) -> None:
    path = SRC / "iris/cluster/controller/state.py"
    assert not forbidden_imports(source, path, ALLOWED_IN_PURE["iris/cluster/controller/state.py"])


@pytest.mark.parametrize(
    "source",
    [
        "import time\nx = time.time()\n",
        "import time as t\nx = t.monotonic()\n",
        "import time\nf = time.time_ns\n",
        "from time import monotonic\n",
        "from datetime import datetime\nx = datetime.now()\n",
        "import datetime\nx = datetime.datetime.now()\n",
        "from datetime import date\nx = date.today()\n",
    ],
)
def test_clock_reads_bad_source_flagged(source: str) -> None:
    assert clock_reads(source, Path("x.py"))


@pytest.mark.parametrize(
    "source",
    [
        "import time\ntime.sleep(0)\n",
        "import time\nx = time.perf_counter()\n",
        "x = clock.now_ms()\n",
        "from datetime import timedelta\nx = timedelta(seconds=1)\n",
    ],
)
def test_clock_reads_clean_source_passes(source: str) -> None:
    assert not clock_reads(source, Path("x.py"))


# ------------------------------------------------------------------------- the import map

LAYERS: tuple[tuple[str, ...], ...] = (
    ("iris.rpc.cluster_pb2", "iris.rpc.cluster_pb2_grpc", "iris.rpc"),
    ("iris.cluster",),
    ("iris.rpc.status", "iris.rpc.tls", "iris.rpc.beats", "iris.cluster.models"),
    ("iris.cluster.controller", "iris.cluster.worker"),
    ("iris.cluster.local",),
    ("iris.client",),
    ("iris.cli",),
)
"""From the bottom up: the wire (generated code); the shared domain (ids, specs, rules, the pure
core's values); the RPC helpers and the JSON shapes (client models, the dashboard's API); the two
servers, side by side; the local cluster; the client; the CLI. A module imports only its own layer
and those below (the longest prefix that names a module decides its layer)."""
APART: tuple[tuple[str, str], ...] = (
    ("iris.cluster.controller", "iris.cluster.worker"),
    ("iris.cluster.worker", "iris.cluster.controller"),
    ("iris.cli", "iris.rpc"),
)
"""Never (importer, imported): the servers reach each other only over RPC, and the CLI speaks
through the client, never the wire's messages."""


def _layer(module: str) -> int:
    best, layer = -1, 0
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _matches(module, prefix) and len(prefix) > best:
                best, layer = len(prefix), i
    return layer


def import_graph() -> dict[str, set[str]]:
    """Every ``iris`` module and the ``iris`` modules it imports, anywhere in it (functions and
    ``if TYPE_CHECKING:`` blocks included: a cycle there is a cycle of the design too)."""
    modules = {_module_name(p): p for p in _source_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        if module.startswith("iris.rpc.cluster_pb2"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path.name == "__init__.py")
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            graph[module].update(n for n in names if n in modules and n != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_map_has_no_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "modules that import each other (TYPE_CHECKING imports count): give the lower one a " \
                      "Protocol of what it needs instead:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_imports_run_only_down_the_layers() -> None:
    problems = []
    for module, imported in sorted(import_graph().items()):
        for target in sorted(imported):
            if _layer(target) > _layer(module):
                problems.append(f"{module} -> {target} (layer {_layer(module)} imports layer {_layer(target)})")
            for importer, forbidden in APART:
                if _matches(module, importer) and _matches(target, forbidden):
                    problems.append(f"{module} -> {target} ({importer} never imports {forbidden})")
    assert not problems, "imports that run up a layer (LAYERS, APART):\n  " + "\n  ".join(problems)


def test_the_import_checks_catch_a_cycle_and_a_layer_violation() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("iris.cluster.controller.dashboard") > _layer("iris.cluster.models") > _layer("iris.cluster.spec")
    assert _layer("iris.client.models") > _layer("iris.cluster.controller.dashboard")


CONTROLLER_MODULES = tuple(sorted(
    p.relative_to(SRC).as_posix() for p in (SRC / "iris/cluster/controller").glob("*.py")
    if p.stem not in ("service", "dashboard", "backend", "pods", "store", "slurm", "provisioner", "__init__")))
"""The controller's core and shell: everything but the edge (service.py, the dashboard), the wire to
workers and pods (backend.py, pods.py), and storage."""
SEED_PROTOBUF_SIGNATURES = {("iris/cluster/controller/job.py", "Job.__init__"), ("iris/cluster/controller/job.py", "Job.request")}
"""The seed's own signatures (``Job(job_id, request, ...)``, ``Job.request``): kept as the seed wrote them."""


def public_protobuf_signatures(source: str, path: str) -> list[str]:
    """Public functions and methods whose parameters or return mention a protobuf module."""
    found = []
    tree = ast.parse(source)
    for cls in [None, *[n for n in tree.body if isinstance(n, ast.ClassDef)]]:
        body = tree.body if cls is None else cls.body
        for node in body:
            if not isinstance(node, ast.FunctionDef) or (node.name.startswith("_") and node.name != "__init__"):
                continue
            if cls is not None and cls.name.startswith("_"):
                continue
            name = node.name if cls is None else f"{cls.name}.{node.name}"
            text = ast.unparse(node.args) + (ast.unparse(node.returns) if node.returns else "")
            if "pb2" in text and (path, name) not in SEED_PROTOBUF_SIGNATURES:
                found.append(f"{path}: {name}")
    return found


def test_no_protobuf_in_a_public_signature_of_the_controller() -> None:
    found = [hit for module in CONTROLLER_MODULES for hit in public_protobuf_signatures((SRC / module).read_text(), module)]
    assert not found, "service.py is the one edge: take and return typed values (requests.py):\n  " + "\n  ".join(found)
    assert public_protobuf_signatures("def launch(r: cluster_pb2.LaunchJobRequest) -> None: ...\n", "x.py")
