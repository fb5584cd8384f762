"""Regenerate the Python modules of ``src/iris/rpc/cluster.proto``.

Usage::

    uv run python scripts/generate_protos.py            # rewrite the committed modules
    uv run python scripts/generate_protos.py --out DIR  # write them under DIR instead

It writes ``cluster_pb2.py`` and ``cluster_pb2_grpc.py`` (grpcio-tools) and their type stubs
``cluster_pb2.pyi`` / ``cluster_pb2_grpc.pyi`` (mypy-protobuf). The generated files are
committed; ``tests/test_protos.py`` regenerates into a temporary directory and fails when the
committed copies differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC = REPO_ROOT / "src"
PROTO = Path("iris") / "rpc" / "cluster.proto"
GENERATED = ("cluster_pb2.py", "cluster_pb2_grpc.py", "cluster_pb2.pyi", "cluster_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this interpreter (the project venv)."""
    candidate = Path(sys.executable).parent / name
    found = candidate if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"protoc plugin {name!r} not found; run `uv sync` first")
    return str(found)


def generate(out_dir: Path) -> list[Path]:
    """Generate the modules into ``out_dir`` (the directory that holds ``cluster_pb2.py``)."""
    with tempfile.TemporaryDirectory() as tmp:
        grpc_include = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"--proto_path={SRC}",
            f"--proto_path={grpc_include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            str(PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            src = Path(tmp) / "iris" / "rpc" / name
            dst = out_dir / name
            shutil.copyfile(src, dst)
            written.append(dst)
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SRC / "iris" / "rpc")
    args = parser.parse_args()
    for path in generate(args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
