"""``jax.distributed.initialize()`` with no arguments in an Iris gang (issue 26 item 5): real JAX
(CPU) in a venv this test makes with pip (``pip install jax jaxlib``, as the README's ML section
says), real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.client import Entrypoint, IrisClient, JobState, ResourceSpec
from iris.cluster.local import LocalCluster

pytestmark = pytest.mark.e2e

VENV = Path(tempfile.gettempdir()) / "iris-test-jax"
PROGRAM = """
import jax
jax.distributed.initialize()  # no arguments: Iris's gang is detected
print("JAX", jax.process_count(), jax.process_index(), flush=True)
jax.distributed.shutdown()
"""


@pytest.fixture(scope="module")
def jax_python() -> str:
    python = VENV / "bin" / "python"
    if not (python.exists() and subprocess.run([str(python), "-c", "import jax"], capture_output=True).returncode == 0):
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "jax", "jaxlib"], check=True,
                           capture_output=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            pytest.skip(f"JAX could not be installed into {VENV} with pip ({e}); this test needs it")
    return str(python)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, jax_python: str) -> Iterator[IrisClient]:
    # Tasks run sandboxed: the JAX venv is mounted into them, as an operator mounts a shared one.
    mounts = os.pathsep.join(filter(None, [os.environ.get("IRIS_TASK_MOUNTS", ""), str(VENV)]))
    with LocalCluster(workers=2, cpu_per_worker=1, base_dir=tmp_path_factory.mktemp("jax"), dashboard=False,
                      env={"IRIS_TASK_MOUNTS": mounts}) as c:
        client = IrisClient.remote(c.controller_address, token=c.admin_token)
        yield client
        client.close()


def test_jax_distributed_initialize_needs_no_arguments_in_a_gang(client: IrisClient, jax_python: str,
                                                                 tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    job = client.submit(Entrypoint.from_command(jax_python, str(program)), "jax-gang", replicas=2, coscheduled=True,
                        resources=ResourceSpec(cpu=1))
    assert job.wait(timeout=300, raise_on_failure=False).state is JobState.SUCCEEDED
    for index in range(2):
        lines = [line.data for line in client.task_logs("jax-gang", index)]
        assert f"JAX 2 {index}" in lines, lines
