"""Rendezvous for coscheduled jobs (pure): every task of a gang learns, at start, where the gang
meets and its own rank, in the variables torch.distributed and JAX read.

The coordinator is the placed task with the lowest index (task 0 unless it already succeeded), on
its worker's advertised host, at the rendezvous port the controller allocated to that task from its
worker's range at placement (``iris.cluster.ports``), so every task is told it before any starts
and no other live attempt on that host has it. A job's own env wins for the non-``IRIS_*`` names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from iris.cluster.ports import DEFAULT_COORDINATOR_PORT
from iris.cluster.types import host_port, split_host


@dataclass(frozen=True, slots=True)
class Member:
    task_index: int
    attempt_id: int
    worker_address: str
    """The worker's advertised HOST:PORT."""
    coordinator_port: int = 0
    """The rendezvous port allocated to this task (used if it leads); 0: its location declares no
    port range (``DEFAULT_COORDINATOR_PORT``)."""


def lead_of(members: Sequence[Member]) -> Member:
    """The gang's coordinator: the placed task with the lowest index."""
    return min(members, key=lambda m: m.task_index)


def gang_env(num_tasks: int, members: Sequence[Member], job_env: Mapping[str, str]) -> dict[int, dict[str, str]]:
    """Per task index, the rendezvous variables of one placed gang."""
    if not members:
        return {}
    lead = lead_of(members)
    host = split_host(lead.worker_address)
    port = lead.coordinator_port or DEFAULT_COORDINATOR_PORT
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


__all__ = ["Member", "gang_env", "lead_of"]
