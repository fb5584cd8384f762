"""The GPU check (``scripts/gpu_check.sh``): on a machine with NVIDIA GPUs, a local cluster runs a
``--gpu 1`` job that must see exactly its device, and a second ``--gpu 1`` job must wait while the
first holds the GPU (on a one-GPU machine). Prints one line, ``gpu_check: OK ...`` or
``gpu_check: FAIL ...`` (exit 1), or ``gpu_check: SKIP ...`` where there is no ``nvidia-smi``."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from iris.client import Entrypoint, IrisClient, JobState, ResourceSpec
from iris.cluster.local import LocalCluster
from iris.cluster.types import GpuDevice
from iris.cluster.worker.gpu import detect_gpus

PROBE = """
import os, subprocess, time
print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), flush=True)
print("SMI " + " | ".join(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()))
try:
    import torch
    print(f"TORCH {torch.cuda.device_count()}", flush=True)
except ImportError:
    print("TORCH absent", flush=True)
time.sleep(float(os.environ.get("HOLD_S", "0")))
"""


def main() -> int:
    if shutil.which("nvidia-smi") is None:
        print("gpu_check: SKIP no nvidia-smi on this machine")
        return 0
    gpus = detect_gpus()
    if not gpus:
        print("gpu_check: FAIL nvidia-smi is there but no GPU was detected")
        return 1
    gpu = GpuDevice(count=1)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(workers=1, cpu_per_worker=4, base_dir=Path(tmp),
                                                             dashboard=False) as cluster:
        client = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
        try:
            probe = Entrypoint.from_command(sys.executable, "-c", PROBE)
            first = client.submit(probe, "gpu-first", resources=ResourceSpec(cpu=1, device=gpu),
                                  env={"HOLD_S": "15"})
            deadline = time.monotonic() + 120
            while client.job_status("gpu-first").state is not JobState.RUNNING and time.monotonic() < deadline:
                time.sleep(0.5)
            second = client.submit(probe, "gpu-second", resources=ResourceSpec(cpu=1, device=gpu))
            time.sleep(5)
            waited = client.job_status("gpu-second").state is JobState.PENDING
            first.wait(timeout=300)
            second.wait(timeout=300)
            lines = [line.data for line in client.task_logs("gpu-first", 0)]
        finally:
            client.close()
    visible = next((x.split("=", 1)[1] for x in lines if x.startswith("CUDA_VISIBLE_DEVICES=")), "<none>")
    torch_seen = next((x.split(" ", 1)[1] for x in lines if x.startswith("TORCH ")), "?")
    smi = next((x for x in lines if x.startswith("SMI ")), "SMI")
    problems = []
    if visible not in {str(g.index) for g in gpus}:
        problems.append(f"CUDA_VISIBLE_DEVICES={visible} is not one device of {[g.index for g in gpus]}")
    if f"GPU {visible}:" not in smi:
        problems.append(f"nvidia-smi -L in the task does not list GPU {visible}")
    if torch_seen not in ("absent", "1"):
        problems.append(f"torch sees {torch_seen} devices, not 1")
    if len(gpus) == 1 and not waited:
        problems.append("a second --gpu 1 job did not wait while the first held the only GPU")
    summary = (f"{len(gpus)} x {gpus[0].name}; the task saw CUDA_VISIBLE_DEVICES={visible}, torch "
               f"{'devices: ' + torch_seen if torch_seen != 'absent' else 'not installed'}; second job "
               f"{'waited' if waited else 'ran at once'}")
    print(f"gpu_check: {'FAIL ' + '; '.join(problems) if problems else 'OK'} ({summary})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
