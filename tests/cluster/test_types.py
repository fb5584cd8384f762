"""Shared types: ids, sizes, resource specs and state sets."""

from __future__ import annotations

import pytest

from iris.cluster.types import (
    ACTIVE_TASK_STATES,
    TERMINAL_JOB_STATES,
    TERMINAL_TASK_STATES,
    JobId,
    ResourceSpec,
    format_cpu,
    format_size,
    gpu,
    is_job_finished,
    is_task_finished,
    parse_cpu,
    parse_size,
    parse_task_id,
    task_id_for,
    tpu,
)
from iris.rpc import cluster_pb2

T = cluster_pb2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MiB", 512 * 1024**2), ("8GiB", 8 * 1024**3), ("2G", 2 * 10**9), ("1024", 1024), ("1.5KiB", 1536), (0, 0)],
)
def test_parse_size_accepts_binary_and_decimal_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "12XB", "-1GiB", -5, True])
def test_parse_size_rejects_bad_input_naming_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="^memory:"):
        parse_size(bad, "memory")  # type: ignore[arg-type]


def test_format_size_is_human() -> None:
    assert [format_size(n) for n in (0, 1536, 2 * 1024**3, 5 * 1024**4)] == ["0B", "1.5KiB", "2GiB", "5TiB"]


@pytest.mark.parametrize("written", ["2GB", "2GiB", "512MiB", "500MB", "1TB", "3KB", "1.5KiB", "100B", "1.5GiB", "2.25GB"])
def test_format_size_shows_a_size_the_way_it_was_written(written: str) -> None:
    assert format_size(parse_size(written)) == written


def test_format_size_of_a_size_no_unit_holds_exactly_is_binary_with_one_decimal() -> None:
    assert format_size(2_000_000_001) == "1.9GiB"


@pytest.mark.parametrize(("text", "cores", "millicores"),
                         [("2", 2, 2000), ("0.5", 0.5, 500), ("500m", 0.5, 500), ("1.25", 1.25, 1250), ("1m", 0.001, 1)])
def test_parse_cpu_takes_cores_fractions_and_millicores(text: str, cores: float, millicores: int) -> None:
    assert parse_cpu(text) == cores
    assert ResourceSpec(cpu=parse_cpu(text)).cpu_millicores == millicores
    assert format_cpu(millicores) == (text if not text.endswith("m") else f"{cores:g}")


@pytest.mark.parametrize("bad", ["0", "-1", "0m", "abc", "0.0001", "nan", "inf", ""])
def test_parse_cpu_refuses_zero_negative_and_sub_millicore_values(bad: str) -> None:
    with pytest.raises(ValueError, match="--cpu"):
        parse_cpu(bad, "--cpu")


def test_resource_spec_refuses_zero_cpu() -> None:
    with pytest.raises(ValueError, match="cpu: must be > 0"):
        ResourceSpec(cpu=0)


def test_resource_spec_fractional_cpu_travels_as_millicores_and_rounds_up_for_older_peers() -> None:
    proto = ResourceSpec(cpu=0.5).to_proto()
    assert (proto.cpu_millicores, proto.cpu) == (500, 1)
    assert ResourceSpec.from_proto(proto).cpu == 0.5


def test_resource_spec_from_an_older_peer_reads_whole_cores_and_unset_means_one() -> None:
    assert ResourceSpec.from_proto(cluster_pb2.ResourceSpecProto(cpu=3)).cpu_millicores == 3000
    assert ResourceSpec.from_proto(cluster_pb2.ResourceSpecProto()).cpu_millicores == 1000


def test_resource_spec_from_the_wire_refuses_an_explicit_zero_millicores() -> None:
    with pytest.raises(ValueError, match="cpu_millicores: must be > 0"):
        ResourceSpec.from_proto(cluster_pb2.ResourceSpecProto(cpu=2, cpu_millicores=0))


def test_task_ids_round_trip() -> None:
    tid = task_id_for(JobId("parent/child"), 7)
    assert tid == "parent/child/task-7"
    assert parse_task_id(tid) == ("parent/child", 7)
    with pytest.raises(ValueError, match="task_id"):
        parse_task_id("parent/child")


def test_resource_spec_to_proto_and_back() -> None:
    spec = ResourceSpec(cpu=4, memory="8GiB", disk="100GiB", device=gpu("H100", 2), replicas=3)
    proto = spec.to_proto()
    assert (proto.cpu, proto.memory_bytes, proto.replicas) == (4, 8 * 1024**3, 3)
    assert proto.device.gpu.variant == "H100" and proto.device.gpu.count == 2
    back = ResourceSpec.from_proto(proto)
    assert (back.cpu, back.memory_bytes, back.disk_bytes, back.device, back.replicas) == (
        4, 8 * 1024**3, 100 * 1024**3, gpu("H100", 2), 3,
    )
    assert ResourceSpec(device=tpu("v5litepod-16")).to_proto().device.tpu.variant == "v5litepod-16"
    assert ResourceSpec().to_proto().device.WhichOneof("device") == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"cpu": -1}, "cpu"), ({"memory": "huge"}, "memory"), ({"replicas": -2}, "replicas"),
     ({"device": gpu(count=0)}, "device")],
)
def test_resource_spec_rejects_bad_values_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        ResourceSpec(**kwargs)  # type: ignore[arg-type]


def test_state_sets_and_helpers() -> None:
    assert TERMINAL_TASK_STATES.isdisjoint(ACTIVE_TASK_STATES)
    assert T.TASK_STATE_PENDING not in TERMINAL_TASK_STATES | ACTIVE_TASK_STATES
    assert all(is_task_finished(s) for s in TERMINAL_TASK_STATES)
    assert not is_task_finished(T.TASK_STATE_RUNNING)
    assert is_job_finished(T.JOB_STATE_UNSCHEDULABLE) and not is_job_finished(T.JOB_STATE_RUNNING)
    assert len(TERMINAL_JOB_STATES) == 5
