"""A torchrun-style PyTorch DDP script (CPU, gloo) under Iris and under ``torchrun``, side by side.

Usage::

    uv run python benchmarks/bench_training.py                       # makes /tmp/iris-bench-torch (pip install torch==2.13.0)
    uv run python benchmarks/bench_training.py --torch-python PY     # a Python that has torch
    uv run python benchmarks/bench_training.py --ranks 4 --epochs 30 --rounds 2
    uv run python benchmarks/bench_training.py --unsized             # Iris's ranks with host-wide thread pools

The same unmodified script (it reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, as the PyTorch
examples do) runs as ``torchrun --nproc_per_node R`` and as an R-task coscheduled Iris job (one
local worker with R cpus, ``--cpu 1`` per task); the two alternate, ``--rounds`` times each. Printed:
each wall time, the medians and Iris / torchrun (target <= 1.1x). Torch comes from a venv this
benchmark makes with ``pip install torch==2.13.0`` (a CPU build on these machines' local disk; uv
never resolves torch here: it would pull a multi-GB CUDA build); where that cannot be made, the
benchmark says so and exits 0 without a figure. Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iris.client import Entrypoint, IrisClient, ResourceSpec
from iris.cluster.local import LocalCluster

TORCH_VERSION = "2.13.0"
DEFAULT_VENV = Path(tempfile.gettempdir()) / "iris-bench-torch"

SCRIPT = r'''
import os, sys, time
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

def main(epochs: int) -> None:
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the environment
    rank = dist.get_rank()
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4096, 128), torch.randn(4096, 1))
    sampler = DistributedSampler(data)
    loader = DataLoader(data, batch_size=64, sampler=sampler)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                    torch.nn.ReLU(), torch.nn.Linear(512, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    if rank == 0:
        print(f"trained {epochs} epochs on {dist.get_world_size()} ranks, threads {torch.get_num_threads()}", flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    main(int(sys.argv[1]))
'''


def torch_python(given: str | None) -> str | None:
    """A Python with torch: ``given``, else the benchmark's own venv (made on first use)."""
    if given:
        return given
    python = DEFAULT_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0:
        return str(python)
    print(f"making {DEFAULT_VENV} with pip install torch=={TORCH_VERSION} (a CPU build from local disk)...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}"], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"skipped: torch {TORCH_VERSION} could not be installed into {DEFAULT_VENV} ({e})")
        return None
    return str(python)


def run_torchrun(python: str, script: Path, ranks: int, epochs: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    start = time.perf_counter()
    subprocess.run([python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", str(script),
                    str(epochs)], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def run_iris(client: IrisClient, python: str, script: Path, ranks: int, epochs: int, n: int,
             unsized: bool = False) -> float:
    # --unsized: every rank's pools as wide as the host, as before Iris sized them (torch's default)
    env = {var: str(os.cpu_count() or 1) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if unsized else None
    start = time.perf_counter()
    job = client.submit(Entrypoint.from_command(python, str(script), str(epochs)), f"ddp-{n}",
                        resources=ResourceSpec(cpu=1), replicas=ranks, coscheduled=True, env=env)
    job.wait(timeout=1800)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=None, help="a Python that has torch (default: make a venv)")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--unsized", action="store_true",
                        help="give Iris's ranks thread pools as wide as the host (how they ran before sizing)")
    args = parser.parse_args()
    python = torch_python(args.torch_python)
    if python is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "ddp.py"
        script.write_text(SCRIPT)
        # The ranks run sandboxed: the torch venv and the script's directory are mounted into them.
        venv_root = str(Path(python).parent.parent)
        os.chmod(tmp, 0o755)
        with LocalCluster(workers=1, cpu_per_worker=args.ranks, base_dir=Path(tmp) / "cluster", dashboard=False,
                          env={"IRIS_TASK_MOUNTS": os.pathsep.join([venv_root, tmp])}) as c:
            client = IrisClient.remote(c.controller_address, token=c.admin_token)
            try:
                iris, torchrun = [], []
                for n in range(args.rounds):
                    torchrun.append(run_torchrun(python, script, args.ranks, args.epochs))
                    iris.append(run_iris(client, python, script, args.ranks, args.epochs, n, args.unsized))
                    print(f"round {n + 1}: torchrun {torchrun[-1]:.1f}s, Iris {iris[-1]:.1f}s", flush=True)
            finally:
                client.close()
    ratio = statistics.median(iris) / statistics.median(torchrun)
    load = os.getloadavg()[0]
    print(f"DDP on CPU with gloo, {args.ranks} ranks x {args.epochs} epochs, {args.rounds} rounds: torchrun median "
          f"{statistics.median(torchrun):.1f}s, Iris median {statistics.median(iris):.1f}s; Iris / torchrun = "
          f"{ratio:.2f}x (target <= 1.1x)   load average {load:.2f}")


if __name__ == "__main__":
    main()
