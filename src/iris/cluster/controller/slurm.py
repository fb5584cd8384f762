"""Workers provisioned by Slurm: each worker is one Slurm job (``sbatch``) running
``iris worker serve``; ``scancel`` gives it back; ``squeue`` says what Slurm did with it.

Only Slurm's own command-line tools are used, with their parsable output (``sbatch --parsable``,
``squeue --noheader --format``). Engine-side retries are off (``--no-requeue``): Iris alone owns
the retry budgets, so an allocation that ends under a worker is a preemption of its tasks, never a
silent Slurm requeue. Jobs are named ``iris-<cluster>-<worker id>``; a restarted controller finds
its allocations again by that name.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iris.cluster.controller.provisioner import Allocation, AllocationState, PlatformError
from iris.cluster.types import WorkerId

logger = logging.getLogger(__name__)

LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "RESIZING", "SUSPENDED", "REQUEUED",
                         "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED"})
"""Slurm job states in which the allocation may still hold (or get) a worker."""
ENDING_STATES = frozenset({"COMPLETING"})
"""The allocation is going: its worker is being stopped."""
# Everything else (COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, BOOT_FAIL,
# DEADLINE, OUT_OF_MEMORY, SPECIAL_EXIT, REVOKED) has ended.

Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]
"""Runs a command (argv, stdin) and returns what it did; tests substitute a fake Slurm."""


def run_command(argv: Sequence[str], stdin: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise PlatformError(f"{argv[0]}: not found (is Slurm installed and on PATH?)") from e
    except subprocess.TimeoutExpired as e:
        raise PlatformError(f"{argv[0]}: no answer within {timeout:g}s") from e


@dataclass(frozen=True, slots=True)
class SlurmConfig:
    controller_address: str
    """What the workers dial (the controller's advertised address)."""
    cluster_tag: str
    """Names this controller's Slurm jobs (``iris-<tag>-<worker id>``)."""
    worker_cpus: int
    worker_memory_bytes: int
    partition: str | None = None
    sbatch_args: tuple[str, ...] = ()
    """Passed to sbatch after Iris's own (so they may override e.g. --output or --time)."""
    worker_host: str = "0.0.0.0"
    """What the workers bind (127.0.0.1 when the controller is on loopback: a one-node Slurm)."""
    join_token: str = ""
    tls_ca: Path | None = None
    log_dir: Path | None = None
    """Where each worker's Slurm output goes (``--output``); None: Slurm's default."""
    python: str = field(default_factory=lambda: sys.executable)
    """The Python that runs ``iris worker serve`` on the nodes (the controller's own by default)."""
    worker_args: tuple[str, ...] = ()
    """Extra ``iris worker serve`` flags."""


class SlurmPlatform:
    """``Platform`` over Slurm's command-line tools."""

    name = "slurm"

    def __init__(self, config: SlurmConfig, runner: Runner | None = None) -> None:
        self.config = config
        self._run: Runner = runner or (lambda argv, stdin: run_command(argv, stdin))
        self._prefix = f"iris-{config.cluster_tag}-"

    def job_name(self, worker_id: str) -> str:
        return self._prefix + worker_id

    def batch_script(self, worker_id: str) -> str:
        """The batch script of one worker. The join token travels inside it (sbatch reads the
        script from stdin; Slurm shows it only to its owner and admins), never on a command line."""
        c = self.config
        argv = [c.python, "-m", "iris.cli.main", "worker", "serve", "--controller", c.controller_address,
                "--worker-id", worker_id, "--host", c.worker_host, "--cpu", str(c.worker_cpus),
                "--memory", str(c.worker_memory_bytes), *c.worker_args]
        if c.tls_ca is not None:
            argv += ["--tls-ca", str(c.tls_ca)]
        lines = ["#!/bin/sh", "# An Iris worker provisioned by the controller; it exits when scancel-ed."]
        if c.join_token:
            lines.append(f"IRIS_JOIN_TOKEN={shlex.quote(c.join_token)}; export IRIS_JOIN_TOKEN")
        lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
        return "\n".join(lines) + "\n"

    def submit(self, worker_id: WorkerId) -> str:
        c = self.config
        argv = ["sbatch", "--parsable", "--no-requeue", f"--job-name={self.job_name(worker_id)}",
                "--nodes=1", "--ntasks=1", f"--cpus-per-task={c.worker_cpus}",
                f"--mem={max(1, c.worker_memory_bytes // (1024 * 1024))}M"]
        if c.partition:
            argv.append(f"--partition={c.partition}")
        if c.log_dir is not None:
            c.log_dir.mkdir(parents=True, exist_ok=True)
            argv.append(f"--output={c.log_dir / '%x-%j.log'}")
        argv += list(c.sbatch_args)
        result = self._run(argv, self.batch_script(worker_id))
        if result.returncode != 0:
            raise PlatformError(f"sbatch failed (exit {result.returncode}): {_first_line(result.stderr or result.stdout)}")
        # --parsable: "<job id>" or "<job id>;<cluster>".
        job_id = result.stdout.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise PlatformError(f"sbatch printed no job id: {_first_line(result.stdout)!r}")
        return job_id

    def cancel(self, engine_id: str) -> None:
        result = self._run(["scancel", engine_id], None)
        if result.returncode != 0:
            raise PlatformError(f"scancel {engine_id} failed (exit {result.returncode}): "
                                f"{_first_line(result.stderr or result.stdout)}")

    def poll(self) -> list[Allocation]:
        """Every Slurm job of this controller that squeue still lists (ended ones for a while,
        as long as Slurm keeps them: ``MinJobAge``)."""
        result = self._run(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%j|%T|%r|%N"], None)
        if result.returncode != 0:
            raise PlatformError(f"squeue failed (exit {result.returncode}): {_first_line(result.stderr or result.stdout)}")
        found: list[Allocation] = []
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 4 or not parts[1].startswith(self._prefix):
                continue
            job_id, name, state, reason = parts[0], parts[1], parts[2].split()[0], parts[3]
            node = parts[4] if len(parts) > 4 else ""
            found.append(Allocation(
                worker_id=WorkerId(name[len(self._prefix):]), engine_id=job_id, engine_state=state,
                state=allocation_state(state), reason="" if reason in ("None", "(null)") else reason, node=node,
            ))
        return found


def allocation_state(slurm_state: str) -> AllocationState:
    if slurm_state == "PENDING":
        return AllocationState.PENDING
    if slurm_state in LIVE_STATES:
        return AllocationState.RUNNING
    if slurm_state in ENDING_STATES:
        return AllocationState.ENDING
    return AllocationState.ENDED


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0][:500] if text else "(no output)"


__all__ = ["SlurmConfig", "SlurmPlatform", "allocation_state", "run_command"]
