"""NVIDIA GPU detection for worker metadata, by parsing ``nvidia-smi`` CSV output.

Stdlib only, so it can be checked on a GPU machine without the project's dependencies.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

QUERY_ARGS: tuple[str, ...] = (
    "--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu",
    "--format=csv,noheader,nounits",
)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    """As nvidia-smi names it, e.g. "NVIDIA H200"."""
    uuid: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int

    @property
    def variant(self) -> str:
        """Short model name used in device requests: "NVIDIA H200" -> "H200"."""
        name = self.name
        for prefix in ("NVIDIA ", "Tesla "):
            name = name.removeprefix(prefix)
        return name.strip()


def _int_or_zero(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]", "[Not Supported]"
        return 0


def parse_nvidia_smi(output: str) -> list[GpuInfo]:
    """Parse the output of ``nvidia-smi`` with ``QUERY_ARGS``. Ignores lines it cannot read."""
    gpus: list[GpuInfo] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 6 or not fields[0].isdigit():
            continue
        gpus.append(
            GpuInfo(
                index=int(fields[0]),
                name=fields[1],
                uuid=fields[2],
                memory_total_mb=_int_or_zero(fields[3]),
                memory_used_mb=_int_or_zero(fields[4]),
                utilization_pct=_int_or_zero(fields[5]),
            )
        )
    return gpus


def _run_nvidia_smi(argv: Sequence[str]) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=True)
    return result.stdout


def detect_gpus(
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[[Sequence[str]], str] = _run_nvidia_smi,
) -> list[GpuInfo]:
    """GPUs on this machine; empty when ``nvidia-smi`` is absent or fails."""
    path = which("nvidia-smi")
    if path is None:
        return []
    try:
        return parse_nvidia_smi(run([path, *QUERY_ARGS]))
    except (OSError, subprocess.SubprocessError):
        return []


if __name__ == "__main__":
    for gpu in detect_gpus():
        print(gpu)
