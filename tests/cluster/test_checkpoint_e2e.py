"""A place that outlives attempts (issue 26 item 3): with a shared dir, every task and attempt of a job
sees the same ``IRIS_CHECKPOINT_DIR``, a gang restarted after a rank died resumes from its snapshot,
and the directory goes with the job. Real controller and worker processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.client import Entrypoint, IrisClient, JobState, ResourceSpec
from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster

pytestmark = pytest.mark.e2e

TRAIN = r"""
import json, os, signal, time
from iris.client import get_job_info

info = get_job_info()
assert info is not None and info.checkpoint_dir, "no IRIS_CHECKPOINT_DIR"
snapshot = os.path.join(info.checkpoint_dir, f"rank{info.task_index}.json")
step = json.load(open(snapshot))["step"] if os.path.exists(snapshot) else 0  # resume where it stopped
with open(os.path.join(info.checkpoint_dir, f"steps-{info.task_index}.log"), "a") as log:
    while step < 10:
        step += 1
        with open(snapshot + ".tmp", "w") as f:
            json.dump({"step": step}, f)
        os.replace(snapshot + ".tmp", snapshot)  # the snapshot of each step, then its record
        log.write(f"{info.attempt_id} {step} {info.checkpoint_dir}\n")
        log.flush()
        if info.task_index == 1 and info.attempt_id == 0 and step == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # a rank killed mid-run
        time.sleep(0.1)
done = os.path.join(info.checkpoint_dir, f"done-{info.task_index}")
open(done, "w").close()
while not all(os.path.exists(os.path.join(info.checkpoint_dir, f"done-{i}")) for i in range(info.num_tasks)):
    time.sleep(0.05)  # the final barrier, as a DDP job's last collective: nobody ends before all are done
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, cpu_per_worker=2, worker_timeout=5, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path_factory.mktemp("checkpoints"), dashboard=False) as c:
        yield c


def test_a_gang_resumes_from_its_checkpoint_dir_after_a_rank_dies_and_the_dir_goes_with_the_job(
        cluster: LocalCluster) -> None:
    client = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
    try:
        job = client.submit(Entrypoint.from_command(sys.executable, "-c", TRAIN), "resume", replicas=2,
                            coscheduled=True, max_retries_failure=1, resources=ResourceSpec(cpu=1))
        status = job.wait(timeout=180, raise_on_failure=False)
        assert status.state is JobState.SUCCEEDED, status.error
        checkpoints = Path(client.job_status("resume").checkpoint_dir)
        assert checkpoints.is_relative_to(cluster.shared_dir) and checkpoints.is_dir()

        records = [line.split(" ", 2) for line in (checkpoints / "steps-1.log").read_text().splitlines()]
        assert [(int(a), int(s)) for a, s, _ in records] == [(0, s) for s in range(1, 5)] + [(1, s) for s in range(5, 11)]
        assert {d for _, _, d in records} == {str(checkpoints)}  # one place for every attempt, on either worker
        rank0 = [int(s) for _, s, _ in (line.split(" ", 2) for line in (checkpoints / "steps-0.log").read_text().splitlines())]
        assert len(rank0) == len(set(rank0)) and rank0[-1] == 10  # the gang restart redid none of rank 0's steps
        assert job.task(0).current_attempt_id == 1  # rank 0 was restarted with the gang

        assert client.delete_job("resume") == ["admin:resume"]
        wait_until(lambda: not checkpoints.exists(), 30, message="the checkpoint dir outlived its job")
    finally:
        client.close()
