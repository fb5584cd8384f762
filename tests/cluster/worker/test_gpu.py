from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from iris.cluster.worker.gpu import QUERY_ARGS, detect_gpus, parse_nvidia_smi

FIXTURE = Path(__file__).parent / "fixtures" / "nvidia-smi-h200.txt"


def _query_output() -> str:
    # The fixture holds several captured commands separated by '---'; the first is the CSV query.
    return FIXTURE.read_text().split("---")[0]


def test_parse_nvidia_smi_h200_capture() -> None:
    gpus = parse_nvidia_smi(_query_output())
    assert len(gpus) == 1
    gpu = gpus[0]
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H200"
    assert gpu.variant == "H200"
    assert gpu.uuid == "GPU-3c6f3e96-a488-f9df-174f-4b78a14f07e3"
    assert gpu.memory_total_mb == 143771
    assert gpu.memory_used_mb == 0
    assert gpu.utilization_pct == 0


def test_parse_nvidia_smi_ignores_headers_and_not_supported_fields() -> None:
    text = (
        "index, name, uuid, memory.total [MiB], memory.used [MiB], utilization.gpu [%]\n"
        "0, NVIDIA A100-SXM4-80GB, GPU-a, 81920, 10, 55\n"
        "1, NVIDIA A100-SXM4-80GB, GPU-b, 81920, [N/A], [Not Supported]\n"
        "\n"
    )
    gpus = parse_nvidia_smi(text)
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].memory_used_mb == 0 and gpus[1].utilization_pct == 0
    assert gpus[0].variant == "A100-SXM4-80GB"


def test_detect_gpus_without_nvidia_smi_is_empty() -> None:
    assert detect_gpus(which=lambda name: None) == []


def test_detect_gpus_runs_query_and_parses() -> None:
    seen: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> str:
        seen.append(argv)
        return _query_output()

    gpus = detect_gpus(which=lambda name: "/usr/bin/nvidia-smi", run=run)
    assert [g.name for g in gpus] == ["NVIDIA H200"]
    assert list(seen[0]) == ["/usr/bin/nvidia-smi", *QUERY_ARGS]


def test_detect_gpus_failing_nvidia_smi_is_empty() -> None:
    def run(argv: Sequence[str]) -> str:
        raise subprocess.CalledProcessError(9, list(argv))

    assert detect_gpus(which=lambda name: "/usr/bin/nvidia-smi", run=run) == []
