"""Where the controller keeps workspace bundles and callables' results: the store's protocol, and an
in-memory stand-in for a controller without a state dir (tests)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from iris.cluster.controller.state import ControllerState, Effects

if TYPE_CHECKING:
    from iris.cluster.controller.store import PreparedWrite


class StateStore(Protocol):
    """Durable storage for the state (``store.ControllerStore``)."""

    def write(self, state: ControllerState, effects: Effects) -> None: ...

    def prepare(self, state: ControllerState, effects: Effects) -> PreparedWrite | None: ...

    def apply(self, writes: Sequence[PreparedWrite]) -> None: ...

    def put_bundle(self, blob: bytes) -> str: ...

    def delete_bundle(self, bundle_hash: str) -> None: ...

    def delete_results(self, task_ids: Iterable[str]) -> None: ...

    def get_bundle(self, bundle_hash: str) -> bytes | None: ...

    def put_result(self, task_id: str, attempt_id: int, data: bytes) -> None: ...

    def get_result(self, task_id: str) -> tuple[int, bytes] | None: ...

    def close(self) -> None: ...


class MemoryBundles:
    """Bundle storage for a controller without a store (tests)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._results: dict[str, tuple[int, bytes]] = {}

    def put_bundle(self, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        self._blobs[digest] = blob
        return digest

    def get_bundle(self, bundle_hash: str) -> bytes | None:
        return self._blobs.get(bundle_hash)

    def delete_bundle(self, bundle_hash: str) -> None:
        self._blobs.pop(bundle_hash, None)

    def delete_results(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._results.pop(task_id, None)

    def put_result(self, task_id: str, attempt_id: int, data: bytes) -> None:
        self._results[task_id] = (attempt_id, data)

    def get_result(self, task_id: str) -> tuple[int, bytes] | None:
        return self._results.get(task_id)

