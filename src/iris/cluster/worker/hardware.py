"""What a worker offers: cores, memory, disk and GPUs, as the ``WorkerMetadata`` it registers with."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from iris.cluster.addresses import split_host
from iris.cluster.types import cpu_to_millicores, device_to_proto, gpu
from iris.cluster.worker.gpu import GpuInfo
from iris.rpc import cluster_pb2


def probe_metadata(
    *,
    address: str,
    host: str,
    workdir: Path,
    cpu: float | None,
    memory_bytes: int | None,
    gpus: Sequence[GpuInfo],
    attributes: Mapping[str, str],
) -> cluster_pb2.WorkerMetadata:
    """The metadata to register with: configured cpu and memory, else detected; free disk of the
    workdir's filesystem; the GPUs found (all of one model, as ``nvidia-smi`` lists them)."""
    millicores = cpu_to_millicores(cpu, "cpu") if cpu is not None else (os.cpu_count() or 1) * 1000
    memory = memory_bytes if memory_bytes is not None else psutil.virtual_memory().total
    try:
        disk = shutil.disk_usage(workdir if workdir.exists() else Path.cwd()).free
    except OSError:
        disk = 0
    meta = cluster_pb2.WorkerMetadata(
        hostname=socket.gethostname(),
        ip_address=split_host(address) if address else host,
        cpu_count=millicores // 1000,  # whole cores for older controllers: never more than offered
        cpu_millicores=millicores,
        memory_bytes=memory,
        disk_bytes=disk,
        attributes=dict(attributes),
    )
    if gpus:
        meta.device.CopyFrom(device_to_proto(gpu(variant=gpus[0].variant, count=len(gpus))))
        meta.gpu_count = len(gpus)
        meta.gpu_name = gpus[0].name
        meta.gpu_memory_mb = gpus[0].memory_total_mb
    else:
        meta.device.cpu.SetInParent()
    return meta
