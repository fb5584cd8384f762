"""Sharing a fleet with real processes (issue 24): an interactive job preempts a batch job, which
checkpoints on SIGTERM and resumes on its next attempt, told by whom it was preempted; two teams
saturating a fleet converge to their weights; ``iris share`` / ``iris queue`` / ``iris share reload``
and SIGHUP from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster
from iris.rpc import cluster_pb2

from .e2e import Api

T = cluster_pb2
C = cluster_pb2.Controller

BATCH = """
import os, signal, sys, time
ckpt = sys.argv[1]
step = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
print(f"start step={step} previous={os.environ.get('IRIS_PREVIOUS_ATTEMPT_STATE', '-')}", flush=True)
print(f"why={os.environ.get('IRIS_PREVIOUS_ERROR', '-')}", flush=True)
stopping = []
signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
while step < 150:
    if stopping:
        with open(ckpt + ".tmp", "w") as f:
            f.write(str(step))
        os.replace(ckpt + ".tmp", ckpt)
        print(f"checkpointed at {step}", flush=True)
        sys.exit(0)
    time.sleep(0.02)
    step += 1
    if step % 10 == 0:
        with open(ckpt + ".progress", "w") as f:
            f.write(str(step))
print(f"done at {step}", flush=True)
"""


def test_an_interactive_job_preempts_a_batch_job_that_checkpoints_and_resumes(tmp_path: Path) -> None:
    sharing = tmp_path / "sharing.toml"
    sharing.write_text('min_lease = "0s"\n')
    script = tmp_path / "batch.py"
    script.write_text(BATCH)
    ckpt = tmp_path / "ckpt"
    with LocalCluster(workers=1, cpu_per_worker=1, memory_per_worker="2GiB", heartbeat_interval=0.2, kill_grace=5,
                      base_dir=tmp_path / "cluster", controller_args=["--sharing", str(sharing)]) as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        try:
            batch = api.launch("bulk", [sys.executable, str(script), str(ckpt)], priority="batch",
                               termination_grace_seconds=10)
            progress = Path(str(ckpt) + ".progress")
            wait_until(progress.exists, 60, message="the batch job never made progress")
            urgent = api.launch("urgent", ["sh", "-c", "echo urgent ran"])
            assert api.wait(urgent, timeout=60).state == T.JOB_STATE_SUCCEEDED
            done = api.wait(batch, timeout=90)
            assert done.state == T.JOB_STATE_SUCCEEDED, done.error
            task = done.tasks[0]
            first = task.attempts[0]
            assert first.state == T.TASK_STATE_PREEMPTED and first.charged_to == "none"
            assert first.error == "preempted by admin:urgent (interactive work over batch)"
            assert task.policy_preemptions == 1 and done.policy_preemptions == 1
            assert task.failure_count == 0 and task.preemption_count == 0  # no budget spent
            resumed = api.logs(task.task_id)
            saved = int(ckpt.read_text())
            assert saved > 0
            assert resumed[0] == f"start step={saved} previous=PREEMPTED", resumed
            assert resumed[1] == "why=preempted by admin:urgent (interactive work over batch)", resumed
            assert resumed[-1] == "done at 150"
            first_lines = api.logs(task.task_id, attempt=0)
            assert first_lines[-1] == f"checkpointed at {saved}", first_lines
        finally:
            api.close()


@pytest.fixture
def two_teams(tmp_path: Path) -> Iterator[tuple[LocalCluster, Path]]:
    sharing = tmp_path / "sharing.toml"
    sharing.write_text('[teams.big]\nmembers = ["alice"]\nweight = 2\n[teams.small]\nmembers = ["bob"]\nweight = 1\n')
    with LocalCluster(workers=2, cpu_per_worker=3, memory_per_worker="3GiB", heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "cluster", controller_args=["--sharing", str(sharing)]) as cluster:
        yield cluster, sharing


def test_two_teams_saturating_a_fleet_converge_to_their_weights(two_teams: tuple[LocalCluster, Path]) -> None:
    cluster, _ = two_teams
    admin = Api(cluster.controller_address, cluster.admin_token)
    users = {name: Api(cluster.controller_address,
                       admin.stub.CreateToken(C.CreateTokenRequest(name=name, role="user"), timeout=10).token)
             for name in ("alice", "bob")}
    try:
        jobs = {name: api.launch(f"{name}-work", ["sleep", "0.5"], replicas=40) for name, api in users.items()}
        samples: list[tuple[int, int]] = []

        def sample() -> bool:
            teams = {t.team: t for t in admin.stub.GetShares(C.GetSharesRequest(), timeout=10).teams}
            big, small = teams["big"], teams["small"]
            if big.pending_tasks and small.pending_tasks and big.running_tasks + small.running_tasks == 6:
                samples.append((big.running_tasks, small.running_tasks))
            return len(samples) >= 12 or not (big.pending_tasks and small.pending_tasks)

        wait_until(sample, 120, interval=0.25, message="the fleet never stayed saturated by both teams")
        assert samples, "no moment with both teams waiting on a full fleet"
        big_share = sum(b for b, _ in samples) / sum(b + s for b, s in samples)
        assert 0.55 <= big_share <= 0.8, samples  # weights 2:1 -> 4 of 6 slots
        assert samples.count((4, 2)) >= len(samples) // 2, samples
        for name, job in jobs.items():
            assert users[name].wait(job, timeout=120).state == T.JOB_STATE_SUCCEEDED
    finally:
        admin.close()
        for api in users.values():
            api.close()


def test_share_and_queue_from_the_command_line_and_a_reload_by_sighup(two_teams: tuple[LocalCluster, Path],
                                                                       tmp_path: Path) -> None:
    cluster, sharing = two_teams
    env = {**os.environ, "IRIS_CONTROLLER": cluster.controller_address, "IRIS_CONFIG_DIR": str(tmp_path / "cfg"),
           "IRIS_TOKEN": cluster.admin_token}

    def iris(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "iris.cli.main", *args],
                              env={**env, **({"IRIS_TOKEN": token} if token else {})},
                              capture_output=True, text=True, timeout=120, check=False)

    admin = Api(cluster.controller_address, cluster.admin_token)
    try:
        alice = admin.stub.CreateToken(C.CreateTokenRequest(name="alice", role="user"), timeout=10).token
        hold = Api(cluster.controller_address, alice)
        hold.launch("fill", ["sleep", "60"], replicas=6, termination_grace_seconds=0)
        wait_until(lambda: hold.job("fill").tasks_running == 6, 60)
        hold.launch("later", ["true"], priority="batch")
        hold.launch("next", ["true"])
        shown = iris("share", "--json")
        assert shown.returncode == 0, shown.stderr
        teams = {t["team"]: t for t in json.loads(shown.stdout)}
        big = teams["big"]
        assert big["weight"] == 2 and big["running_tasks"] == 6 and big["pending_tasks"] == 2
        assert {"team", "weight", "guarantee", "limit", "usage", "decayed_usage", "standing", "members"} <= set(big)
        assert big["members"][0]["user"] == "alice" and {"user", "usage", "standing"} <= set(big["members"][0])
        assert big["usage"] == pytest.approx(1.0)  # the whole fleet's cpu
        queued = iris("queue", "--json", token=alice)
        assert queued.returncode == 0, queued.stderr
        entries = json.loads(queued.stdout)
        assert [(e["job_id"], e["band"], e["position"]) for e in entries] == [("alice:next", "interactive", 1),
                                                                              ("alice:later", "batch", 2)]
        assert entries[0]["team"] == "big" and entries[0]["user"] == "alice" and "reason" in entries[0]
        table = iris("share")
        assert table.returncode == 0 and "big" in table.stdout and "alice" in table.stdout, table.stderr
        assert "whole work 2m across bands, 24h within one; a job waiting over 12h is first in line for a reservation" \
            in table.stdout.replace("\n", " "), table.stdout

        refused = iris("share", "reload", token=alice)
        assert refused.returncode == 1 and "admin" in refused.stderr.lower(), refused.stderr
        sharing.write_text("[teams.big]\nweight = 0\n")
        bad = iris("share", "reload")
        assert bad.returncode == 1 and "sharing.toml:2: teams.big.weight: must be a number > 0" in bad.stderr
        sharing.write_text('[teams.big]\nmembers = ["alice"]\nweight = 3\n')
        good = iris("share", "reload")
        assert good.returncode == 0 and "1 team" in good.stdout, good.stderr
        assert hold.job("fill").tasks_running == 6  # a reload stops nothing
        sharing.write_text('[teams.big]\nmembers = ["alice"]\nweight = 5\n')
        os.kill(cluster.controller_pid, signal.SIGHUP)

        def weight() -> float:
            teams = {t.team: t for t in admin.stub.GetShares(C.GetSharesRequest(), timeout=10).teams}
            return teams["big"].weight

        wait_until(lambda: weight() == 5, 30, message="SIGHUP did not reload the sharing file")
        hold.close()
    finally:
        admin.close()


def test_a_gang_starts_while_a_stream_of_small_jobs_keeps_arriving_and_why_says_why(tmp_path: Path) -> None:
    """Issue 25: a 4-task coscheduled job on a 4-worker cluster starts although 1-cpu jobs keep
    arriving (a reservation keeps its room); `iris job why --json` for what waits."""
    import threading

    with LocalCluster(workers=4, cpu_per_worker=2, memory_per_worker="2GiB", heartbeat_interval=0.2, kill_grace=1,
                      base_dir=tmp_path / "cluster") as cluster:
        api = Api(cluster.controller_address, cluster.admin_token)
        stop = threading.Event()
        submitted: list[str] = []

        def stream() -> None:
            feeder = Api(cluster.controller_address, cluster.admin_token)
            try:
                i = 0
                while not stop.is_set():
                    submitted.append(feeder.launch(f"small-{i}", ["sleep", "1"], cpu=1))
                    i += 1
                    stop.wait(0.15)  # the stream's pace, not a synchronisation
            finally:
                feeder.close()

        feeder = threading.Thread(target=stream)
        feeder.start()
        try:
            wait_until(lambda: len(submitted) >= 12, 60)
            gang = api.launch("gang", ["true"], replicas=4, cpu=2, coscheduled=True)
            never = api.launch("huge", ["true"], cpu=64)
            env = {**os.environ, "IRIS_CONTROLLER": cluster.controller_address, "IRIS_TOKEN": cluster.admin_token,
                   "IRIS_CONFIG_DIR": str(tmp_path / "cfg")}
            run = subprocess.run([sys.executable, "-m", "iris.cli.main", "job", "why", "huge", "--json"], env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
            assert run.returncode == 0, run.stderr
            why = json.loads(run.stdout)
            assert {"position", "reasons", "reservation", "estimate"} <= set(why) and why["job_id"] == never
            assert why["reasons"][0]["code"] == "never_fits" and "64 cpus" in why["reasons"][0]["message"]
            assert why["estimate"] is None and why["unknown_reason"]
            done = api.wait(gang, timeout=120)
            assert done.state == T.JOB_STATE_SUCCEEDED, done.error
        finally:
            stop.set()
            feeder.join(timeout=30)
            api.close()
