"""Rendezvous for coscheduled jobs (pure): every task of a gang learns, at start, where the gang
meets and its own rank, in the variables torch.distributed and JAX read.

The coordinator is the placed task with the lowest index (task 0 unless it already succeeded), on
its worker's advertised host, at a port chosen from the job id and the attempt round in
``COORDINATOR_PORTS`` (so every task can be told it before any starts). A job's own env wins for
the non-``IRIS_*`` names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from iris.cluster.types import host_port, split_host

COORDINATOR_PORTS = range(41000, 49000)
"""Below the usual ephemeral range (Linux: 32768-60999 overlaps; most hosts hand out from the top)."""


@dataclass(frozen=True, slots=True)
class Member:
    task_index: int
    attempt_id: int
    worker_address: str
    """The worker's advertised HOST:PORT."""


def coordinator_port(job_id: str, attempt_id: int) -> int:
    digest = hashlib.blake2b(f"{job_id}#{attempt_id}".encode(), digest_size=4).digest()
    return COORDINATOR_PORTS.start + int.from_bytes(digest, "big") % len(COORDINATOR_PORTS)


def gang_env(job_id: str, num_tasks: int, members: Sequence[Member], job_env: Mapping[str, str]
             ) -> dict[int, dict[str, str]]:
    """Per task index, the rendezvous variables of one placed gang."""
    if not members:
        return {}
    lead = min(members, key=lambda m: m.task_index)
    host = split_host(lead.worker_address)
    port = coordinator_port(job_id, lead.attempt_id)
    address = host_port(host, port)
    local_ranks: dict[str, int] = {}
    out: dict[int, dict[str, str]] = {}
    for member in sorted(members, key=lambda m: m.task_index):
        local = local_ranks.get(member.worker_address, 0)
        local_ranks[member.worker_address] = local + 1
        env = {
            "MASTER_ADDR": host, "MASTER_PORT": str(port), "RANK": str(member.task_index),
            "WORLD_SIZE": str(num_tasks), "LOCAL_RANK": str(local),
            "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(num_tasks),
            "JAX_PROCESS_ID": str(member.task_index),
        }
        env = {k: v for k, v in env.items() if k not in job_env}  # the job's own values win
        env["IRIS_COORDINATOR_ADDRESS"] = address
        out[member.task_index] = env
    return out


__all__ = ["COORDINATOR_PORTS", "Member", "coordinator_port", "gang_env"]
