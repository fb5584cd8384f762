"""Workspace bundles: what goes in, what stays out, determinism and the size cap."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from iris.client import BundleTooLargeError, InvalidRequestError, build_bundle


def names(blob: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return archive.namelist()


def make_workspace(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "train.py").write_text("print('train')\n")
    (root / ".gitignore").write_text("*.log\n/data/\n!keep.log\n")
    (root / "run.log").write_text("noise")
    (root / "keep.log").write_text("kept")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"0" * 100)
    for skipped in (".git", ".venv", "__pycache__", "node_modules", ".mypy_cache"):
        (root / skipped).mkdir()
        (root / skipped / "file").write_text("skip")
    (root / "env").mkdir()
    (root / "env" / "pyvenv.cfg").write_text("home = /usr")  # a virtualenv under any name
    (root / "src" / "pkg" / "mod.pyc").write_bytes(b"\0")
    (root / "src" / ".gitignore").write_text("generated.py\n")
    (root / "src" / "generated.py").write_text("# generated")
    (root / "generated.py").write_text("# not under src, kept")
    return root


def test_bundle_honours_gitignore_and_skips_venvs_and_caches(tmp_path: Path) -> None:
    bundle = build_bundle(make_workspace(tmp_path))
    assert names(bundle.blob) == [
        ".gitignore",
        "generated.py",
        "keep.log",
        "src/.gitignore",
        "src/pkg/__init__.py",
        "train.py",
    ]
    assert bundle.num_files == 6


def test_bundle_is_deterministic_and_content_addressed(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    first = build_bundle(workspace)
    (workspace / "train.py").touch()  # a new mtime alone does not change the bundle
    assert build_bundle(workspace).bundle_hash == first.bundle_hash
    (workspace / "train.py").write_text("print('changed')\n")
    assert build_bundle(workspace).bundle_hash != first.bundle_hash
    assert len(first.bundle_hash) == 64


def test_bundle_over_the_cap_names_the_biggest_files(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"w" * 3000)
    (tmp_path / "dataset.csv").write_bytes(b"d" * 2000)
    (tmp_path / "small.py").write_text("x")
    with pytest.raises(BundleTooLargeError) as info:
        build_bundle(tmp_path, max_bytes=1024)
    message = str(info.value)
    assert "weights.bin (3KB)" in message and "dataset.csv" in message
    assert message.index("weights.bin") < message.index("dataset.csv")
    assert "1KiB bundle limit" in message and "--no-bundle" in message
    assert "\n" not in message


def test_bundle_cap_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * 2048)
    monkeypatch.setenv("IRIS_BUNDLE_MAX_SIZE", "1KiB")
    with pytest.raises(BundleTooLargeError):
        build_bundle(tmp_path)
    monkeypatch.setenv("IRIS_BUNDLE_MAX_SIZE", "1MiB")
    assert build_bundle(tmp_path).num_files == 1


def test_bundle_of_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not a directory"):
        build_bundle(tmp_path / "nope")
