"""The committed protobuf modules are exactly what ``scripts/generate_protos.py`` produces today."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "generate_protos.py"
RPC_DIR = REPO_ROOT / "src" / "iris" / "rpc"
GENERATED = ("cluster_pb2.py", "cluster_pb2_grpc.py", "cluster_pb2.pyi", "cluster_pb2_grpc.pyi")
REGENERATE = "uv run python scripts/generate_protos.py"


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protos")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{SCRIPT.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.mark.parametrize("name", GENERATED)
def test_generated_protos_match_committed_copy(fresh_dir: Path, name: str) -> None:
    committed = RPC_DIR / name
    fresh = fresh_dir / name
    assert fresh.exists(), f"{SCRIPT.name} did not write {name}"
    assert committed.exists(), f"src/iris/rpc/{name} is missing; regenerate with `{REGENERATE}`"
    committed_text = committed.read_text()
    fresh_text = fresh.read_text()
    if committed_text != fresh_text:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed_text.splitlines(keepends=True),
                    fresh_text.splitlines(keepends=True),
                    fromfile=f"committed/{name}",
                    tofile=f"fresh/{name}",
                )
            )[:40]
        )
        pytest.fail(
            f"src/iris/rpc/{name} is stale: it differs from what cluster.proto generates now.\n"
            f"Regenerate with `{REGENERATE}` and commit the result.\n{diff}"
        )
