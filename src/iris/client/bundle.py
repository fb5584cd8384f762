"""Workspace bundles: the user's directory, zipped, so a worker that has never seen ``train.py``
can run it.

The zip honours ``.gitignore`` files (the root one and nested ones), always skips version-control
directories, virtualenvs and caches, and is deterministic (sorted entries, fixed timestamps) so the
same files give the same sha256: the controller stores bundles by that hash and workers cache them.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

from iris.client.errors import BundleTooLargeError, InvalidRequestError
from iris.cluster.types import format_size, parse_size

DEFAULT_BUNDLE_MAX_BYTES = 25 * 1024 * 1024
BUNDLE_MAX_SIZE_ENV = "IRIS_BUNDLE_MAX_SIZE"

# Directory names that are never part of a workspace.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        ".eggs",
        ".ipynb_checkpoints",
        "node_modules",
    }
)
SKIPPED_FILE_SUFFIXES = (".pyc", ".pyo")
SKIPPED_FILES = frozenset({".DS_Store"})
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Bundle:
    """A zipped workspace. ``bundle_hash`` is the sha256 hex digest of ``blob``."""

    blob: bytes
    bundle_hash: str
    num_files: int
    total_bytes: int


def default_bundle_max_bytes() -> int:
    """The size cap: ``$IRIS_BUNDLE_MAX_SIZE`` (e.g. "100MiB") when set, else 25 MiB."""
    value = os.environ.get(BUNDLE_MAX_SIZE_ENV, "").strip()
    if not value:
        return DEFAULT_BUNDLE_MAX_BYTES
    try:
        return parse_size(value, BUNDLE_MAX_SIZE_ENV)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None


def _is_virtualenv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


def _read_gitignore(directory: Path) -> pathspec.GitIgnoreSpec | None:
    path = directory / ".gitignore"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def collect_files(workspace: Path) -> list[tuple[str, Path, int]]:
    """The files a bundle of ``workspace`` holds: (archive name, path, size), sorted by name."""
    root = workspace.resolve()
    if not root.is_dir():
        raise InvalidRequestError(f"workspace: {workspace} is not a directory")
    # Each .gitignore applies to paths below its own directory (relative to it).
    specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    found: list[tuple[str, Path, int]] = []

    def ignored(rel: str, is_dir: bool) -> bool:
        result = False
        for base, spec in specs:
            if base and not rel.startswith(base + "/"):
                continue
            sub = rel[len(base) + 1 :] if base else rel
            if is_dir:
                sub += "/"
            # Later (deeper) files override earlier ones, as in git.
            matched = spec.check_file(sub).include
            if matched is not None:
                result = matched
        return result

    for dirpath, dirnames, filenames in os.walk(root, topdown=True, followlinks=False):
        current = Path(dirpath)
        rel_dir = current.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        spec = _read_gitignore(current)
        if spec is not None:
            specs.append((rel_dir, spec))
        kept_dirs = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = current / name
            if name in SKIPPED_DIRS or path.is_symlink() or _is_virtualenv(path) or ignored(rel, True):
                continue
            kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            if name in SKIPPED_FILES or name.endswith(SKIPPED_FILE_SUFFIXES):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if ignored(rel, False):
                continue
            path = current / name
            try:
                info = path.stat()  # follows symlinks to files
            except OSError:
                continue  # dangling link
            if not stat.S_ISREG(info.st_mode):
                continue
            found.append((rel, path, info.st_size))
    found.sort(key=lambda item: item[0])
    return found


def build_bundle(workspace: Path, max_bytes: int | None = None) -> Bundle:
    """Zip ``workspace`` into a deterministic bundle.

    Raises:
        BundleTooLargeError: the files to bundle add up to more than ``max_bytes`` (default
            ``default_bundle_max_bytes()``); the message names the biggest files.
        InvalidRequestError: ``workspace`` is not a directory.
    """
    limit = default_bundle_max_bytes() if max_bytes is None else max_bytes
    files = collect_files(workspace)
    total = sum(size for _, _, size in files)
    if total > limit:
        biggest = sorted(files, key=lambda item: item[2], reverse=True)[:5]
        listing = ", ".join(f"{name} ({format_size(size)})" for name, _, size in biggest)
        raise BundleTooLargeError(
            f"workspace {workspace} is {format_size(total)}, over the {format_size(limit)} bundle limit; "
            f"biggest files: {listing}. Add them to .gitignore, raise the limit with "
            f"--bundle-max-size or ${BUNDLE_MAX_SIZE_ENV}, or skip bundling with --no-bundle"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, path, _ in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            mode = path.stat().st_mode
            info.external_attr = ((stat.S_IFREG | (0o755 if mode & stat.S_IXUSR else 0o644)) & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    blob = buffer.getvalue()
    return Bundle(
        blob=blob,
        bundle_hash=hashlib.sha256(blob).hexdigest(),
        num_files=len(files),
        total_bytes=total,
    )
