"""A private single-node Slurm for tests: munged, slurmctld and slurmd run in the foreground from a
temp dir that holds their config, munge key, state and logs. Nothing under /etc is read or
changed (``SLURM_CONF`` and munge's ``--socket`` point into the dir); everything is stopped by PID.

As a script (``.ci/run`` uses it)::

    python tests/slurm_cluster.py start DIR   # prints SLURM_CONF=...; the daemons keep running
    python tests/slurm_cluster.py stop DIR    # cancels its jobs, stops the daemons by PID

The node declares more cpus and memory than a small CI machine has (``config_overrides``), so
several workers fit; they only sleep and run tiny tasks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODE_CPUS = 8
NODE_MEMORY_MB = 8192
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def unavailable() -> str | None:
    """Why a private Slurm cannot run here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"needs Slurm and munge ({', '.join(missing)} not found; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "needs root to run slurmd (it starts jobs as their users)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, node: str) -> str:
    return "\n".join([
        "ClusterName=iristest",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root / 'munge.socket'}",
        "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SwitchType=switch/none",
        "KillWait=5",
        "MinJobAge=30",
        "InactiveLimit=0",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


class PrivateSlurm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> None:
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # munged insists that every directory above its socket is searchable
        for sub in ("state", "spool"):
            (root / sub).mkdir(exist_ok=True)
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.conf.write_text(_config(root, socket.gethostname().split(".")[0]))
        env = {**os.environ, **self.env}
        pids: list[int] = []
        munged = subprocess.Popen(
            ["munged", "--foreground", f"--socket={root / 'munge.socket'}", f"--key-file={key}",
             f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
             f"--seed-file={root / 'munged.seed'}"],
            stdout=subprocess.DEVNULL, stderr=open(root / "munged.out", "wb"), start_new_session=True)
        pids.append(munged.pid)
        self._write_pids(pids)
        _wait(lambda: (root / "munge.socket").exists(), timeout, "munged did not start", root / "munged.out")
        for daemon in ("slurmctld", "slurmd"):
            process = subprocess.Popen([daemon, "-D", "-f", str(self.conf)], env=env, stdout=subprocess.DEVNULL,
                                       stderr=open(root / f"{daemon}.out", "wb"), start_new_session=True)
            pids.append(process.pid)
            self._write_pids(pids)

        def idle() -> bool:
            result = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True,
                                    timeout=10)
            return result.returncode == 0 and result.stdout.strip() == "idle"

        _wait(idle, timeout, "the Slurm node never became idle", root / "slurmctld.log")

    def _write_pids(self, pids: list[int]) -> None:
        (self.root / "pids").write_text("\n".join(str(p) for p in pids) + "\n")

    def stop(self) -> None:
        """Cancel every job of this private cluster, then stop the daemons (slurmd first) by PID."""
        env = {**os.environ, **self.env}
        try:
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=env, capture_output=True, timeout=10)
            _wait(lambda: not subprocess.run(["squeue", "--noheader", "--format=%i"], env=env, capture_output=True,
                                             text=True, timeout=10).stdout.strip(), 30, "jobs did not end")
        except (OSError, subprocess.SubprocessError, TimeoutError):
            pass  # the daemons are stopped below either way
        pids_file = self.root / "pids"
        if not pids_file.exists():
            return
        pids = [int(p) for p in pids_file.read_text().split()]
        for pid in reversed(pids):
            _kill(pid)
        pids_file.unlink()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child (started by an earlier `start`): poll for it
            if not _alive(pid):
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that never reaps it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait(predicate, timeout: float, message: str, log: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{message} within {timeout:g}s\n{tail}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: slurm_cluster.py start|stop DIR")
    slurm = PrivateSlurm(Path(sys.argv[2]).resolve())
    if sys.argv[1] == "start":
        why = unavailable()
        if why is not None:
            sys.exit(f"cannot start a private Slurm: {why}")
        try:
            slurm.start()
        except BaseException:
            slurm.stop()
            raise
        print(f"SLURM_CONF={slurm.conf}")
    else:
        slurm.stop()
