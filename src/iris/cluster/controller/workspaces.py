"""Workspace bundles uploaded before the LaunchJob that names them (``UploadBundle``, issue 23
item 7), over the controller's bundle storage; the bookkeeping itself is ``uploads.Uploads``."""

from __future__ import annotations

from iris.cluster.controller.bundles import MemoryBundles, StateStore
from iris.cluster.controller.changes import Change, Changes
from iris.cluster.controller.state import ControllerState
from iris.cluster.controller.uploads import Uploads
from iris.cluster.errors import InvalidArgument
from iris.cluster.spec import JobSpec


class Workspaces:
    """Workspace bundles uploaded before the LaunchJob that names them (``UploadBundle``; the
    bookkeeping is ``uploads.Uploads``), over the bundle storage. Called under the controller's
    lock except ``upload``."""

    def __init__(self, changes: Changes, bundles: StateStore | MemoryBundles) -> None:
        self._changes = changes
        self._bundles = bundles
        self._uploads = Uploads()

    def upload(self, blob: bytes, owner: str) -> str:
        """Store an uploaded bundle under its sha256 (which ``owner`` may name in a LaunchJob for
        the next hour); returns the hash."""
        digest = self._bundles.put_bundle(blob)
        with self._changes.change() as tx:
            self._drop_unused(self._uploads.add(owner, digest, tx.now_ms), tx.state)
        return digest

    def uploaded(self, owner: str, spec: JobSpec, tx: Change) -> bool:
        """Whether ``owner`` uploaded the bundle ``spec`` names, within the hour before ``tx``."""
        return self._uploads.holds(owner, spec.bundle_hash, tx.now_ms)

    def uploaded_blob(self, owner: str, blob_hash: str) -> bytes:
        """What ``owner`` uploaded under ``blob_hash`` within the hour (a large entrypoint);
        InvalidArgument when there is no such upload of theirs."""
        with self._changes.read():
            now_ms = self._changes.clock.now_ms()
            ok = self._uploads.holds(owner, blob_hash.lower(), now_ms)
        blob = self._bundles.get_bundle(blob_hash.lower()) if ok else None
        if blob is None:
            raise InvalidArgument(f"entrypoint_hash: no upload {blob_hash[:64]!r} of yours (UploadBundle it first)")
        return blob

    def used(self, owner: str, bundle_hash: str) -> None:
        if bundle_hash:
            self._uploads.used(owner, bundle_hash)

    def pending(self, bundle_hash: str) -> bool:
        """Uploaded and not launched yet: its file must stay."""
        return bundle_hash in self._uploads.pending()

    def expire(self, state: ControllerState, now_ms: int) -> None:
        """Forget uploads no LaunchJob came for, and delete their bundles if no job uses them."""
        self._drop_unused(self._uploads.expire(now_ms), state)

    def _drop_unused(self, hashes: list[str], state: ControllerState) -> None:
        pending = self._uploads.pending()
        for bundle_hash in hashes:
            if not state.bundle_in_use(bundle_hash) and bundle_hash not in pending:
                self._bundles.delete_bundle(bundle_hash)
