"""Failure intelligence end to end, with real controller, worker and task processes (DESIGN §4):
exit-code rules, a gang restart, IRIS_PREVIOUS_* in the next attempt, retry backoff, fail-fast,
drain with a termination grace, attempt timeouts, a quarantined worker; and the rendezvous a
coscheduled gang gets (``iris.cluster.rendezvous``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster
from iris.rpc import cluster_pb2

from .e2e import Api, T, host_pid, open_dir

pytestmark = pytest.mark.e2e
C = cluster_pb2.Controller


def rules(*pairs: tuple[int, int, str]) -> list[cluster_pb2.ExitRule]:
    return [cluster_pb2.ExitRule(low=low, high=high, action=action) for low, high, action in pairs]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with LocalCluster(workers=2, cpu_per_worker=4, memory_per_worker="4GiB", worker_timeout=10,
                      heartbeat_interval=0.2, kill_grace=1, base_dir=tmp_path_factory.mktemp("failures")) as c:
        yield c


@pytest.fixture
def api(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    a = Api(cluster.controller_address, cluster.admin_token)
    yield a
    a.close()


def test_exit_code_75_spends_the_preemption_budget_and_2_fails_the_job_at_once(api: Api) -> None:
    script = 'if [ "$IRIS_ATTEMPT_ID" -lt 2 ]; then exit 75; fi'
    job_id = api.launch("rule-75", ["/bin/sh", "-c", script], max_retries_failure=0, max_retries_preemption=3,
                        exit_rules=rules((75, 75, "preemption"), (143, 143, "preemption"), (2, 2, "fail-job")))
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_SUCCEEDED, job.error
    (task,) = job.tasks
    assert (task.failure_count, task.preemption_count) == (0, 2)
    assert [a.decided_by for a in task.attempts[:2]] == ["exit 75: --on-exit 75=preemption"] * 2
    assert all(a.state == T.TASK_STATE_FAILED and a.exit_code == 75 for a in task.attempts[:2])
    # Exit 2 fails the job now, however many failures it would tolerate.
    script = 'if [ "$IRIS_TASK_INDEX" = 1 ]; then exit 2; fi; sleep 60'
    job_id = api.launch("rule-2", ["/bin/sh", "-c", script], replicas=3, max_task_failures=3, max_retries_failure=5,
                        exit_rules=rules((2, 2, "fail-job")))
    job = api.wait(job_id)
    assert job.state == T.JOB_STATE_FAILED and "--on-exit 2=fail-job" in job.error
    assert job.tasks[1].failure_count == 1 and {t.state for t in (job.tasks[0], job.tasks[2])} == {T.TASK_STATE_KILLED}


def test_a_coscheduled_gang_restarts_together_and_the_next_attempt_knows_why(api: Api, tmp_path: Path) -> None:
    seen = open_dir(tmp_path / "seen")
    script = (f'echo "$IRIS_ATTEMPT_ID ${{IRIS_PREVIOUS_ATTEMPT_STATE:-none}} ${{IRIS_PREVIOUS_EXIT_CODE:-none}} '
              f'${{IRIS_PREVIOUS_ERROR:-none}}" >> {seen}/task-$IRIS_TASK_INDEX; '
              f'if [ "$IRIS_TASK_INDEX" = 2 ] && [ "$IRIS_ATTEMPT_ID" = 0 ]; then '
              f'while [ "$(ls {seen} | wc -l)" -lt 4 ]; do sleep 0.05; done; echo broken >&2; exit 1; fi; '
              f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then exec sleep 60; fi')
    job_id = api.launch("gang", ["/bin/sh", "-c", script], replicas=4, coscheduled=True, max_retries_failure=1)
    job = api.wait(job_id, timeout=90)
    assert job.state == T.JOB_STATE_SUCCEEDED, job.error
    assert job.gang_restarts == 1
    for task in job.tasks:
        assert task.current_attempt_id == 1 and task.state == T.TASK_STATE_SUCCEEDED
        first = task.attempts[0]
        if task.task_index == 2:
            assert (task.failure_count, first.state, first.charged_to) == (1, T.TASK_STATE_FAILED, "failure")
        else:
            assert (task.failure_count, task.preemption_count) == (0, 0)
            assert first.state == T.TASK_STATE_KILLED and first.decided_by == "gang restart"
            assert first.charged_to == "none"
    assert job.failures_used == 1 and job.time.lost_gang_ms > 0
    # Attempt 1 of every task was told how attempt 0 ended.
    lines = {i: (seen / f"task-{i}").read_text().splitlines() for i in range(4)}
    assert lines[2] == ["0 none none none", "1 FAILED 1 broken"]  # the error's last line: the task's stderr
    for i in (0, 1, 3):
        assert lines[i] == ["0 none none none", "1 KILLED 0 gang restart: started by task 2: broken"]
    assert job.gang_restart_cause == "task 2: broken"


def test_retry_backoff_delays_the_second_retry_longer(api: Api, tmp_path: Path) -> None:
    script = 'if [ "$IRIS_ATTEMPT_ID" -lt 2 ]; then exit 1; fi'
    job_id = api.launch("backoff", ["/bin/sh", "-c", script], max_retries_failure=2, retry_backoff_seconds=1.5)
    seen_reason = ""

    def reason() -> bool:
        nonlocal seen_reason
        task = api.task(job_id, 0)
        if task.pending_reason.startswith("retrying in"):
            seen_reason = task.pending_reason
        return api.job(job_id).state == T.JOB_STATE_SUCCEEDED

    wait_until(reason, 60, interval=0.05)
    (task,) = api.job(job_id, tasks=True).tasks
    gap1 = task.attempts[1].started_at_ms - task.attempts[0].finished_at_ms
    gap2 = task.started_at_ms - task.attempts[1].finished_at_ms
    assert gap1 >= 0.8 * 1500 and gap2 >= 0.8 * 3000 and gap2 > gap1
    assert seen_reason.startswith("retrying in ") and "(attempt" in seen_reason


def test_fail_fast_stops_the_job_after_k_tasks_failed_alike(api: Api) -> None:
    script = ('if [ "$IRIS_TASK_INDEX" -lt 3 ]; then echo "ModuleNotFoundError: No module named torch" >&2; '
              'exit 1; fi; exec sleep 60')
    job_id = api.launch("fast", ["/bin/sh", "-c", script], replicas=6, max_retries_failure=10,
                        max_similar_failures=3, max_task_failures=6)
    job = api.wait(job_id, timeout=60)
    assert job.state == T.JOB_STATE_FAILED
    assert job.error.startswith("3 of 6 tasks failed with: "), job.error
    assert sum(t.failure_count for t in job.tasks) < 3 * 10, "stopped long before the retries were spent"


def test_drain_gives_the_grace_and_retries_elsewhere_and_timeout_fails(api: Api, cluster: LocalCluster,
                                                                      tmp_path: Path) -> None:
    marks = open_dir(tmp_path / "marks")
    script = (f'trap "echo $IRIS_WORKER_ID > {marks}/checkpoint-$IRIS_ATTEMPT_ID; exit 143" TERM; '
              f'echo $IRIS_WORKER_ID > {marks}/started-$IRIS_ATTEMPT_ID; '
              f'if [ "$IRIS_ATTEMPT_ID" = 0 ]; then while true; do sleep 0.05; done; fi; '
              f'echo "$IRIS_PREVIOUS_ATTEMPT_STATE" > {marks}/previous')
    job_id = api.launch("drained", ["/bin/sh", "-c", script], termination_grace_seconds=20)
    wait_until(lambda: (marks / "started-0").exists() and (marks / "started-0").read_text().strip() != "", 30)
    victim = (marks / "started-0").read_text().strip()
    reply = api.stub.DrainWorker(C.DrainWorkerRequest(worker_id=victim), timeout=30)
    try:
        assert reply.tasks_stopped == 1
        job = api.wait(job_id, timeout=60)
        assert job.state == T.JOB_STATE_SUCCEEDED
        (task,) = job.tasks
        assert task.preemption_count == 1 and task.attempts[0].decided_by == "worker drain"
        assert task.worker_id != victim
        assert (marks / "checkpoint-0").read_text().strip() == victim, "SIGTERM and the grace reached the task"
        assert (marks / "previous").read_text().strip() == "WORKER_FAILED"
        listed = {w.worker_id: w for w in api.stub.ListWorkers(C.ListWorkersRequest(), timeout=30).workers}
        assert listed[victim].draining
    finally:
        api.stub.ReleaseWorker(C.ReleaseWorkerRequest(worker_id=victim), timeout=30)
    # --timeout: an attempt over its time fails "timed out" (a failure of the task).
    job_id = api.launch("slow", ["/bin/sh", "-c", "exec sleep 60"], timeout_seconds=1)
    job = api.wait(job_id, timeout=60)
    assert job.state == T.JOB_STATE_FAILED and "timed out after 1s" in job.error


def test_a_quarantined_worker_receives_nothing_while_another_takes_the_work(tmp_path: Path) -> None:
    bad = "worker-0"
    with LocalCluster(workers=10, cpu_per_worker=1, memory_per_worker="1GiB", heartbeat_interval=0.2,
                      controller_args=["--quarantine-after", "3"], base_dir=tmp_path / "c", dashboard=False) as c:
        admin = Api(c.controller_address, c.admin_token)
        user_token = admin.stub.CreateToken(C.CreateTokenRequest(name="bob", role="user"), timeout=30).token
        bob = Api(c.controller_address, user_token)
        try:
            # Every task fails at once on the bad worker and succeeds (after a moment) anywhere else.
            script = f'if [ "$IRIS_WORKER_ID" = {bad} ]; then exit 1; fi; sleep 0.3'
            jobs = [(api, api.launch(f"q-{name}", ["/bin/sh", "-c", script], replicas=12, max_retries_failure=20))
                    for api, name in ((admin, "admin"), (bob, "bob"))]
            for api, job_id in jobs:
                job = api.wait(job_id, timeout=120)
                assert job.state == T.JOB_STATE_SUCCEEDED, job.error
            workers = {w.worker_id: w for w in admin.stub.ListWorkers(C.ListWorkersRequest(), timeout=30).workers}
            assert workers[bad].quarantined_until_ms > 0 and "succeed elsewhere" in workers[bad].quarantine_reason
            # While quarantined it gets nothing: a third job runs entirely elsewhere.
            job_id = admin.launch("after", ["/bin/true"], replicas=9)
            job = admin.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_SUCCEEDED and all(t.worker_id != bad for t in job.tasks)
            uncharged = [a for _, jid in jobs for t in admin.job(jid, tasks=True).tasks for a in t.attempts
                         if a.decided_by == f"quarantined worker {bad}"]
            assert uncharged and all(a.charged_to == "none" for a in uncharged)
        finally:
            admin.close()
            bob.close()


def test_a_coscheduled_job_s_ranks_meet_with_no_rendezvous_code(api: Api, tmp_path: Path) -> None:
    import shutil
    import sys

    examples = Path(__file__).resolve().parents[2] / "examples"
    shutil.copy(examples / "rendezvous.py", tmp_path / "rendezvous.py")
    job_id = api.launch("ranks", [sys.executable, str(tmp_path / "rendezvous.py")], replicas=4, coscheduled=True,
                        cpu=1, env={"WORLD_SIZE": "4"})
    job = api.wait(job_id, timeout=90)
    assert job.state == T.JOB_STATE_SUCCEEDED, job.error
    logs = {t.task_index: api.logs(t.task_id) for t in job.tasks}
    assert logs[0] == ["rank 0 of 4: everyone arrived (0,1,2,3)"]
    for rank in (1, 2, 3):
        assert logs[rank] == [f"rank {rank} of 4: world=0,1,2,3"]


def test_rendezvous_variables_and_the_job_s_own_values_win(api: Api, tmp_path: Path) -> None:
    out = open_dir(tmp_path / "env")
    names = "IRIS_COORDINATOR_ADDRESS MASTER_ADDR MASTER_PORT RANK WORLD_SIZE LOCAL_RANK JAX_COORDINATOR_ADDRESS " \
            "JAX_NUM_PROCESSES JAX_PROCESS_ID"
    script = f'for n in {names}; do eval "echo $n=\\${{$n:-unset}}"; done > {out}/$IRIS_TASK_INDEX'
    job_id = api.launch("rdv-env", ["/bin/sh", "-c", script], replicas=2, coscheduled=True,
                        env={"MASTER_PORT": "1234"})
    assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    seen = {i: dict(line.split("=", 1) for line in (out / str(i)).read_text().split()) for i in (0, 1)}
    for i in (0, 1):
        env = seen[i]
        host, port = env["IRIS_COORDINATOR_ADDRESS"].rsplit(":", 1)
        assert env["MASTER_ADDR"] == host == "127.0.0.1" and env["JAX_COORDINATOR_ADDRESS"] == f"{host}:{port}"
        assert env["MASTER_PORT"] == "1234", "the job's own value wins"
        assert (env["RANK"], env["WORLD_SIZE"], env["JAX_PROCESS_ID"], env["JAX_NUM_PROCESSES"]) == (
            str(i), "2", str(i), "2")
    assert seen[0]["IRIS_COORDINATOR_ADDRESS"] == seen[1]["IRIS_COORDINATOR_ADDRESS"]
    assert {seen[0]["LOCAL_RANK"], seen[1]["LOCAL_RANK"]} <= {"0", "1"}
    # Not coscheduled: no rendezvous.
    job_id = api.launch("rdv-none", ["/bin/sh", "-c", script], replicas=1)
    assert api.wait(job_id).state == T.JOB_STATE_SUCCEEDED
    assert "MASTER_ADDR=unset" in (out / "0").read_text()


BLAME_PROGRAM = """
import os, socket, sys, time
rank, world, attempt = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["IRIS_ATTEMPT_ID"])
out = sys.argv[1]
if attempt == world:  # every rank was killed once: this round succeeds
    sys.exit(0)
host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    server = socket.create_server((os.environ["IRIS_BIND_HOST"], port))
    peers = [server.accept()[0] for _ in range(world - 1)]
else:
    while True:
        try:
            peers = [socket.create_connection((host, port), timeout=5)]
            break
        except OSError:
            time.sleep(0.05)
    peers[0].settimeout(None)
with open(os.path.join(out, f"{attempt}-{rank}.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(out, f"{attempt}-{rank}.tmp"), os.path.join(out, f"{attempt}-{rank}"))
import select
select.select(peers, [], [])  # a peer went away (its process died): so do we, as torch's ranks would
print(f"rank {rank}: lost a peer (connection reset)", file=sys.stderr, flush=True)
sys.exit(1)
"""


def test_the_rank_killed_with_kill_9_is_blamed_whichever_rank_it_is(api: Api, tmp_path: Path) -> None:
    """Ranks 0..3 killed in turn (one per gang attempt): each time the killed rank is charged and
    the others, which ended of the loss ("connection reset") a moment later, are not (issue 26 item 4)."""
    import os
    import signal
    import sys

    from iris.cluster.clock import wait_until

    out = open_dir(tmp_path / "pids")
    (tmp_path / "blame.py").write_text(BLAME_PROGRAM)
    job_id = api.launch("blame", [sys.executable, str(tmp_path / "blame.py"), str(out)], replicas=4,
                        coscheduled=True, cpu=1, max_retries_failure=4)
    for killed in range(4):
        wait_until(lambda k=killed: all((out / f"{k}-{r}").exists() for r in range(4)), 60,  # type: ignore[misc]
                   message=f"gang attempt {killed} never met")
        rank_pid = host_pid(int((out / f"{killed}-{killed}").read_text()), IRIS_JOB_ID=job_id,
                            IRIS_TASK_INDEX=str(killed), IRIS_ATTEMPT_ID=str(killed))
        os.kill(rank_pid, signal.SIGKILL)  # a task this test started
    job = api.wait(job_id, timeout=90)
    assert job.state == T.JOB_STATE_SUCCEEDED, job.error
    assert job.gang_restarts == 4 and job.gang_restart_cause == "task 3: killed by signal 9 (SIGKILL)"
    for task in job.tasks:
        assert task.failure_count == 1 and task.preemption_count == 0  # each charged once: for its own death
        for killed, attempt in enumerate(task.attempts[:4]):
            if killed == task.task_index:
                assert (attempt.state, attempt.charged_to) == (T.TASK_STATE_FAILED, "failure"), attempt
                assert "killed by signal 9" in attempt.error
            else:
                assert (attempt.state, attempt.charged_to, attempt.decided_by) == (
                    T.TASK_STATE_KILLED, "none", "gang restart"), attempt
                assert attempt.error == f"gang restart: started by task {killed}: killed by signal 9 (SIGKILL)"
    status = api.task(job_id, 1)  # what `iris task status` shows: which rank started each restart
    assert status.attempts[0].error.startswith("gang restart: started by task 0")
