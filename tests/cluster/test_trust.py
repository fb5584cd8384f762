"""The trust boundary with real processes (DESIGN §7): each probe of the trust issue, refused.

A local cluster with authentication on (the default). Every probe goes over real gRPC to the real
controller and worker processes, as an attacker on the same machine would.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from iris.client import Entrypoint, IrisClient
from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster
from iris.rpc import cluster_pb2, cluster_pb2_grpc

from .e2e import Api, C, T, authed_channel, host_pid, open_dir, py

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, cpu_per_worker=4, worker_timeout=3, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path_factory.mktemp("trust")) as c:
        yield c


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Api]:
    api = Api(cluster.controller_address, cluster.admin_token)
    yield api
    api.close()


def user_api(admin: Api, cluster: LocalCluster, name: str) -> tuple[Api, str]:
    reply = admin.stub.CreateToken(C.CreateTokenRequest(name=name, role="user"), timeout=10)
    return Api(cluster.controller_address, reply.token), reply.info.token_id


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()  # type: ignore[operator]
    return error.value.code()


def test_trust_every_controller_rpc_needs_a_valid_token(cluster: LocalCluster) -> None:
    calls = {
        "LaunchJob": C.LaunchJobRequest(name="x"), "GetJobStatus": C.GetJobStatusRequest(job_id="x"),
        "TerminateJob": C.TerminateJobRequest(job_id="x"), "ListJobs": C.ListJobsRequest(),
        "GetTaskStatus": C.GetTaskStatusRequest(job_id="x"), "ListTasks": C.ListTasksRequest(job_id="x"),
        "RegisterWorker": C.RegisterWorkerRequest(worker_id="x"), "Heartbeat": C.HeartbeatRequest(worker_id="x"),
        "ListWorkers": C.ListWorkersRequest(), "ReportTaskState": C.ReportTaskStateRequest(worker_id="x"),
        "RegisterEndpoint": C.RegisterEndpointRequest(name="x"), "UnregisterEndpoint":
        C.UnregisterEndpointRequest(endpoint_id="x"), "LookupEndpoint": C.LookupEndpointRequest(name="x"),
        "ListEndpoints": C.ListEndpointsRequest(), "FetchTaskLogs": C.FetchTaskLogsRequest(task_id="x/task-0"),
        "FetchBundle": C.FetchBundleRequest(bundle_hash="0" * 64), "CreateToken": C.CreateTokenRequest(name="x"),
        "ListTokens": C.ListTokensRequest(), "RevokeToken": C.RevokeTokenRequest(token_id="x"),
        "WhoAmI": C.WhoAmIRequest(), "DrainWorker": C.DrainWorkerRequest(worker_id="x"),
        "ReleaseWorker": C.ReleaseWorkerRequest(worker_id="x"), "GetTaskResult": C.GetTaskResultRequest(job_id="x"),
        "DeleteJob": C.DeleteJobRequest(job_id="x"), "PushTaskLogs": C.PushTaskLogsRequest(worker_id="x"),
        "GetShares": C.GetSharesRequest(), "GetQueue": C.GetQueueRequest(), "ReloadSharing": C.ReloadSharingRequest(),
        "GetJobWhy": C.GetJobWhyRequest(job_id="x"), "GetEstimateAccuracy": C.GetEstimateAccuracyRequest(),
        "UploadBundle": iter([C.UploadBundleRequest(bundle_hash="0" * 64, size=1, chunk=b"x")]),
    }
    assert set(calls) == set(cluster_pb2.DESCRIPTOR.services_by_name["ControllerService"].methods_by_name)
    for token in ("", "iris_forged-token", "Bearer", "iris-task.0.deadbeef.x/task-0", "iris-task.0.ab.deadbeef.x/task-0"):
        stub = cluster_pb2_grpc.ControllerServiceStub(authed_channel(cluster.controller_address, token))
        for method, request in calls.items():
            if method == "UploadBundle":  # a client stream: a fresh iterator per call
                request = iter([C.UploadBundleRequest(bundle_hash="0" * 64, size=1, chunk=b"x")])
            assert code_of(lambda m=method, r=request, s=stub: getattr(s, m)(r, timeout=10)) == \
                grpc.StatusCode.UNAUTHENTICATED, (method, token)


def test_trust_a_user_cannot_stop_another_users_job_and_owners_are_recorded(
    cluster: LocalCluster, admin: Api
) -> None:
    alice, _ = user_api(admin, cluster, "alice")
    bob, _ = user_api(admin, cluster, "bob")
    try:
        job_id = alice.launch("alices", ["/bin/sh", "-c", "echo secret-output; sleep 300"])
        assert alice.job(job_id).owner == "alice"
        wait_until(lambda: alice.job(job_id).state == T.JOB_STATE_RUNNING, 30)
        # Anyone may read the job list and status (like squeue), asking for another user's jobs...
        listed = bob.stub.ListJobs(C.ListJobsRequest(prefix="alices", user="alice"), timeout=10).jobs
        assert [j.job_id for j in listed] == [job_id]
        # ...but not stop it, nor read its logs.
        assert code_of(lambda: bob.stub.TerminateJob(C.TerminateJobRequest(job_id=job_id), timeout=10)) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: bob.logs(f"{job_id}/task-0")) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: bob.stub.GetTaskResult(C.GetTaskResultRequest(job_id=job_id), timeout=10)) == \
            grpc.StatusCode.PERMISSION_DENIED
        wait_until(lambda: "secret-output" in alice.logs(f"{job_id}/task-0"), 30)
        assert alice.job(job_id).state == T.JOB_STATE_RUNNING
        # A user cannot manage tokens or list workers' secrets; an admin may stop anyone's job.
        assert code_of(lambda: bob.stub.ListTokens(C.ListTokensRequest(), timeout=10)) == \
            grpc.StatusCode.PERMISSION_DENIED
        # Draining or releasing a worker is the admin's.
        worker = cluster.workers[0].worker_id
        for call in (lambda: bob.stub.DrainWorker(C.DrainWorkerRequest(worker_id=worker), timeout=10),
                     lambda: bob.stub.ReleaseWorker(C.ReleaseWorkerRequest(worker_id=worker), timeout=10)):
            assert code_of(call) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: admin.stub.DrainWorker(C.DrainWorkerRequest(worker_id="no-such"), timeout=10)) == \
            grpc.StatusCode.NOT_FOUND
        alice.stub.TerminateJob(C.TerminateJobRequest(job_id=job_id), timeout=10)
        assert alice.wait(job_id).state == T.JOB_STATE_KILLED
    finally:
        alice.close()
        bob.close()


def test_trust_a_revoked_token_stops_working(cluster: LocalCluster, admin: Api) -> None:
    carol, token_id = user_api(admin, cluster, "carol")
    try:
        assert carol.stub.WhoAmI(C.WhoAmIRequest(), timeout=10).name == "carol"
        admin.stub.RevokeToken(C.RevokeTokenRequest(token_id=token_id), timeout=10)
        assert code_of(lambda: carol.stub.WhoAmI(C.WhoAmIRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        listed = {t.token_id: t for t in admin.stub.ListTokens(C.ListTokensRequest(), timeout=10).tokens}
        assert listed[token_id].revoked_at_ms > 0
    finally:
        carol.close()


def test_trust_a_worker_runs_nothing_the_controller_did_not_send(cluster: LocalCluster) -> None:
    """The remote-code-execution probe: RunTask straight to a worker."""
    marker = cluster.base_dir / "pwned"
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/sh", "-c", f"id > {marker}"])).SerializeToString()
    run = cluster_pb2.Worker.RunTaskRequest(job_id="evil", task_id="evil/task-0", serialized_entrypoint=entry)
    for token in ("", cluster.admin_token, "forged"):
        stub = cluster_pb2_grpc.WorkerServiceStub(authed_channel(cluster.workers[0].address, token))
        assert code_of(lambda s=stub: s.RunTask(run, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda s=stub: s.RunTasks(cluster_pb2.Worker.RunTasksRequest(tasks=[run]), timeout=10)) == \
            grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda s=stub: s.KillTask(cluster_pb2.Worker.KillTaskRequest(task_id="x"), timeout=10)) == \
            grpc.StatusCode.UNAUTHENTICATED
    assert not marker.exists()
    # Garbage with no credential is refused before it is parsed: UNAUTHENTICATED, no traceback.
    log = cluster.workers[0].log_path
    before = log.read_text()
    channel = grpc.insecure_channel(cluster.workers[0].address, options=[("grpc.max_send_message_length", 64 << 20)])
    try:
        raw = channel.unary_unary("/iris.cluster.WorkerService/RunTasks")
        assert code_of(lambda: raw(os.urandom(16 << 20), timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
    assert "Traceback" not in log.read_text()[len(before):]


def test_trust_workers_prove_who_they_are(cluster: LocalCluster, admin: Api) -> None:
    fake = C.RegisterWorkerRequest(worker_id="fake", address="127.0.0.1:9", incarnation="x",
                                   metadata=T.WorkerMetadata(cpu_count=100_000, memory_bytes=1 << 50))
    anonymous = cluster_pb2_grpc.ControllerServiceStub(authed_channel(cluster.controller_address))
    assert code_of(lambda: anonymous.RegisterWorker(fake, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    dave, _ = user_api(admin, cluster, "dave")
    try:
        assert code_of(lambda: dave.stub.RegisterWorker(fake, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        dave.close()
    assert "fake" not in {w.worker_id for w in cluster.list_workers()}
    # The join token cannot take over a live worker's id (and steal its tasks).
    join = cluster_pb2_grpc.ControllerServiceStub(
        authed_channel(cluster.controller_address, cluster.join_token_file.read_text().strip()))
    steal = C.RegisterWorkerRequest(worker_id=cluster.workers[0].worker_id, address="127.0.0.1:9", incarnation="x",
                                    metadata=T.WorkerMetadata(cpu_count=100_000, memory_bytes=1 << 50))
    assert code_of(lambda: join.RegisterWorker(steal, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    listed = {w.worker_id: w for w in cluster.list_workers()}
    assert listed[cluster.workers[0].worker_id].address == cluster.workers[0].address
    # A worker's credential is its own: kept 0600 in its workdir, good only for its own id.
    credential_file = cluster.workers[0].workdir / "credential"
    assert stat.S_IMODE(credential_file.stat().st_mode) == 0o600
    worker0 = cluster_pb2_grpc.ControllerServiceStub(
        authed_channel(cluster.controller_address, credential_file.read_text().strip()))
    other = cluster.workers[1].worker_id
    assert code_of(lambda: worker0.Heartbeat(C.HeartbeatRequest(worker_id=other), timeout=10)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: worker0.ReportTaskState(C.ReportTaskStateRequest(worker_id=other, updates=[
        T.WorkerTaskStatus(task_id="x/task-0", attempt_id=0, state=T.TASK_STATE_SUCCEEDED)]), timeout=10)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: worker0.LaunchJob(C.LaunchJobRequest(name="w"), timeout=10)) == \
        grpc.StatusCode.PERMISSION_DENIED
    # The tokens the controller wrote are private to its user.
    for name in ("admin.token", "join.token", "secret.key"):
        assert stat.S_IMODE((cluster.state_dir / name).stat().st_mode) == 0o600, name


def test_trust_a_forged_success_report_cannot_end_a_running_job(cluster: LocalCluster, admin: Api) -> None:
    job_id = admin.launch("forgery", ["/bin/sh", "-c", "sleep 300"])
    wait_until(lambda: admin.task(job_id, 0).state == T.TASK_STATE_RUNNING, 30)
    task = admin.task(job_id, 0)
    other = next(w for w in cluster.workers if w.worker_id != task.worker_id)
    forger = cluster_pb2_grpc.ControllerServiceStub(
        authed_channel(cluster.controller_address, (other.workdir / "credential").read_text().strip()))
    forged = C.ReportTaskStateRequest(worker_id=other.worker_id, updates=[
        T.WorkerTaskStatus(task_id=task.task_id, attempt_id=0, state=T.TASK_STATE_SUCCEEDED)])
    forger.ReportTaskState(forged, timeout=10)  # accepted as that worker's report: about attempts it does not hold
    assert admin.task(job_id, 0).state == T.TASK_STATE_RUNNING
    admin.stub.TerminateJob(C.TerminateJobRequest(job_id=job_id), timeout=10)
    admin.wait(job_id)


def test_trust_a_task_token_is_scoped_to_its_attempt(cluster: LocalCluster, admin: Api, tmp_path: Path) -> None:
    other = admin.launch("bystander", ["/bin/sh", "-c", "sleep 300"])
    lookalike = admin.launch("scopedx", ["/bin/true"])  # shares the task's job id as a prefix
    out = tmp_path / "token"
    code = f"""
import os, pathlib, sys, time, grpc
from iris.rpc import cluster_pb2 as T, cluster_pb2_grpc
assert "IRIS_JOIN_TOKEN" not in os.environ
token = os.environ["IRIS_TOKEN"]
md = (("authorization", "Bearer " + token),)
stub = cluster_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(os.environ["IRIS_CONTROLLER_ADDRESS"]))
C = T.Controller
results = []
def code(fn):
    try:
        fn(); return "OK"
    except grpc.RpcError as e:
        return e.code().name
entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["/bin/true"])).SerializeToString()
results.append(code(lambda: stub.LaunchJob(C.LaunchJobRequest(name="kid", serialized_entrypoint=entry,
    resources=T.ResourceSpecProto(cpu=1, replicas=1)), timeout=10, metadata=md)))
results.append(code(lambda: stub.TerminateJob(C.TerminateJobRequest(job_id={other!r}), timeout=10, metadata=md)))
results.append(code(lambda: stub.GetJobStatus(C.GetJobStatusRequest(job_id={other!r}), timeout=10, metadata=md)))
results.append(code(lambda: stub.GetJobStatus(C.GetJobStatusRequest(job_id=os.environ["IRIS_JOB_ID"]), timeout=10,
                                              metadata=md)))
listed = sorted(j.job_id for j in stub.ListJobs(C.ListJobsRequest(), timeout=10, metadata=md).jobs)
pathlib.Path({str(out)!r}).write_text(token + "\\n" + ",".join(results) + "\\n" + ",".join(listed))
"""
    job_id = admin.launch("scoped", py(code))
    job = admin.wait(job_id, timeout=60)
    assert job.state == T.JOB_STATE_SUCCEEDED, job.error
    token, results, listed = out.read_text().splitlines()
    assert results.split(",") == ["OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "OK"]
    assert listed.split(",") == [job_id, f"{job_id}/kid"] and lookalike not in listed.split(",")
    kid = admin.job(f"{job_id}/kid")
    assert kid.parent_job_id == job_id and kid.owner == admin.job(job_id).owner
    # The attempt ended: its token is dead.
    dead = cluster_pb2_grpc.ControllerServiceStub(authed_channel(cluster.controller_address, token))
    assert code_of(lambda: dead.WhoAmI(C.WhoAmIRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    admin.stub.TerminateJob(C.TerminateJobRequest(job_id=other), timeout=10)


def test_trust_jobs_cannot_set_iris_variables(admin: Api) -> None:
    assert code_of(lambda: admin.launch("spoof", ["/bin/true"], env={"IRIS_TOKEN": "x"})) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_trust_cli_tokens_and_login(cluster: LocalCluster, tmp_path: Path) -> None:
    env = {**os.environ, "IRIS_CONTROLLER": cluster.controller_address, "IRIS_CONFIG_DIR": str(tmp_path / "cfg")}
    admin_file = cluster.state_dir / "admin.token"

    def iris(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "iris.cli.main", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120, check=False)

    refused = iris("job", "list")
    assert refused.returncode == 1 and "Error:" in refused.stderr and "iris login" in refused.stderr
    created = iris("token", "create", "--user", "erin", "--token-file", str(admin_file))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    (tmp_path / "erin.token").write_text(token)
    listed = iris("token", "list", "--json", "--token-file", str(admin_file))
    assert "erin" in listed.stdout and token not in listed.stdout
    assert iris("job", "list", IRIS_TOKEN=token).returncode == 0
    assert iris("token", "list", IRIS_TOKEN=token).returncode == 1  # a user is no admin
    login = iris("login", "--token-file", str(tmp_path / "erin.token"))
    assert login.returncode == 0 and "erin" in login.stdout, login.stderr
    assert iris("job", "list").returncode == 0  # the stored login for this address
    token_id = next(line.split()[0] for line in iris("token", "list", "--token-file", str(admin_file)).stdout
                    .splitlines() if " erin " in f" {line} ")
    assert iris("token", "revoke", token_id, "--token-file", str(admin_file)).returncode == 0
    assert iris("job", "list").returncode == 1


def test_trust_auth_none_is_refused_off_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iris.cli.main", "controller", "serve", "--host", "0.0.0.0", "--port", "0",
         "--auth", "none", "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2 and "--auth none is refused" in result.stderr


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_trust_stopping_a_task_stops_its_daemons(cluster: LocalCluster, admin: Api, tmp_path: Path) -> None:
    """A task that double-forks a daemon ignoring SIGTERM (new session, new process group) does not
    survive `iris job stop`: the daemon carries the attempt's marker variables."""
    pidfile = tmp_path / "daemon.pid"
    script = (f"setsid sh -c 'trap \"\" TERM; echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 1000' "
              "</dev/null >/dev/null 2>&1 & sleep 1000")
    job_id = admin.launch("daemonizer", ["/bin/sh", "-c", script])
    wait_until(pidfile.exists, 30)
    daemon = host_pid(int(pidfile.read_text()), IRIS_JOB_ID=job_id)
    assert _alive(daemon) and os.getpgid(daemon) != os.getpgid(os.getpid())
    admin.stub.TerminateJob(C.TerminateJobRequest(job_id=job_id), timeout=10)
    assert admin.wait(job_id).state == T.JOB_STATE_KILLED
    wait_until(lambda: not _alive(daemon), 30, message=f"daemon {daemon} survived its job")
    ps = subprocess.run(["ps", "-eo", "pid="], capture_output=True, text=True, check=True).stdout.split()
    assert str(daemon) not in ps or not _alive(daemon)


def _bomb(tmp_path: Path, megabytes: int) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (megabytes << 20))
        archive.writestr("run.sh", "echo unpacked\n")
    return buffer.getvalue()


def test_trust_a_bundle_over_the_unpack_cap_fails_its_task_and_work_dirs_are_cleaned(tmp_path: Path) -> None:
    import hashlib

    with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=5, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path / "c", worker_args=["--max-bundle-unpacked-size", "8MiB"]) as c:
        api = Api(c.controller_address, c.admin_token)
        try:
            bomb = _bomb(tmp_path, 40)
            assert len(bomb) < 1 << 20  # small on the wire, 40 MiB unpacked
            job_id = api.launch("bomb", ["/bin/sh", "run.sh"], bundle_blob=bomb,
                                bundle_hash=hashlib.sha256(bomb).hexdigest())
            job = api.wait(job_id, timeout=60)
            assert job.state == T.JOB_STATE_FAILED
            assert "unpacks to 40MiB, over this worker's cap of 8MiB" in job.tasks[0].error
            assert not list((c.workers[0].workdir / "tasks").glob("*/work/zeros.bin"))
            small = _bomb(tmp_path, 1)
            ok = api.launch("fits", ["/bin/sh", "run.sh"], bundle_blob=small,
                            bundle_hash=hashlib.sha256(small).hexdigest())
            assert api.wait(ok, timeout=60).state == T.JOB_STATE_SUCCEEDED
            assert api.logs(f"{ok}/task-0") == ["unpacked"]  # the log stays...
            attempt_dirs = list((c.workers[0].workdir / "tasks").glob("*fits*"))
            assert attempt_dirs and not (attempt_dirs[0] / "work").exists()  # ...the unpacked workspace does not
        finally:
            api.close()


def test_trust_tls_end_to_end_and_plaintext_is_refused(tmp_path: Path) -> None:
    """`iris cluster start --local --tls`: controller and workers serve TLS with a generated CA;
    jobs run, tasks reach the controller (IRIS_TLS_CA), and a plaintext client gets nowhere."""
    from iris.client import Entrypoint, IrisClient

    with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=5, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path / "c", tls=True) as c:
        assert c.tls_ca is not None
        with IrisClient.remote(c.controller_address, token=c.admin_token, tls_ca=c.tls_ca) as client:
            code = ("from iris.client import IrisClient\n"
                    "with IrisClient.from_env() as c: print(c.whoami().role)")
            job = client.submit(Entrypoint.from_command(sys.executable, "-c", code), "over-tls")
            assert job.wait(timeout=60).state.value == "SUCCEEDED"
            assert [line.data for line in job.logs()] == ["task"]
        plain = cluster_pb2_grpc.ControllerServiceStub(authed_channel(c.controller_address, c.admin_token))
        assert code_of(lambda: plain.WhoAmI(C.WhoAmIRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        worker_plain = cluster_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(c.workers[0].address))
        assert code_of(lambda: worker_plain.HealthCheck(cluster_pb2.Worker.HealthCheckRequest(), timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE


def test_trust_an_oversized_request_gets_invalid_argument_naming_the_cap(admin: Api) -> None:
    huge = "x" * (2 << 20)
    with pytest.raises(grpc.RpcError) as error:
        admin.stub.GetJobStatus(C.GetJobStatusRequest(job_id=huge), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over this call's cap of 1048576 bytes" in error.value.details() and "xxxx" not in error.value.details()


def test_trust_an_anonymous_request_is_refused_before_it_is_read(cluster: LocalCluster) -> None:
    """Issue 23 item 7: credentials are checked before the request is parsed: 5 MiB of garbage
    with no token (or a bad one) is UNAUTHENTICATED, never INTERNAL, and leaves no traceback in
    the controller's log; the same garbage with a valid token is a parse error of that caller's."""
    garbage = os.urandom(5 << 20)  # under the 6 MiB cap: read, then refused before it is parsed
    channel = grpc.insecure_channel(cluster.controller_address,
                                    options=[("grpc.max_send_message_length", 64 << 20)])
    try:
        raw = channel.unary_unary("/iris.cluster.ControllerService/LaunchJob")
        log = cluster.log_dir / "controller-1.log"
        before = log.read_text()
        for metadata in ((), (("authorization", "Bearer not-a-token"),)):
            with pytest.raises(grpc.RpcError) as error:
                raw(garbage, timeout=30, metadata=metadata)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, error.value.details()
        after = log.read_text()[len(before):]
        assert "Traceback" not in after and "deserializ" not in after.lower()
        with pytest.raises(grpc.RpcError) as error:
            raw(garbage, timeout=30, metadata=(("authorization", f"Bearer {cluster.admin_token}"),))
        assert error.value.code() != grpc.StatusCode.UNAUTHENTICATED
        # Nobody gets more than 6 MiB read in one request (a workspace or a large callable comes
        # by UploadBundle); a callable of 3 MiB still runs: the client uploads it first.
        with pytest.raises(grpc.RpcError) as error:
            raw(os.urandom(8 << 20), timeout=30, metadata=(("authorization", f"Bearer {cluster.admin_token}"),))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        payload = os.urandom(3 << 20)
        with IrisClient.remote(cluster.controller_address, token=cluster.admin_token) as client:
            job = client.submit(Entrypoint.from_callable(lambda: len(payload)), "big-callable")
            assert job.result(timeout=120) == 3 << 20
    finally:
        channel.close()


def test_trust_a_worker_refuses_a_result_cap_its_reports_could_not_carry(cluster: LocalCluster) -> None:
    result = subprocess.run([sys.executable, "-m", "iris.cli.main", "worker", "serve", "--controller",
                             cluster.controller_address, "--max-result-size", "10MiB"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--max-result-size" in result.stderr and "at most 4MiB" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="--task-user needs a worker running as root")
def test_trust_task_user_cannot_read_the_workers_credential() -> None:
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    # Not pytest's tmp_path (mode 0700): the task user must be able to reach its attempt directory.
    base = Path(tempfile.mkdtemp(prefix="iris-task-user-"))
    os.chmod(base, 0o755)
    try:
        with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=5, heartbeat_interval=0.3, kill_grace=1,
                          base_dir=base, worker_args=["--task-user", "nobody"]) as c:
            api = Api(c.controller_address, c.admin_token)
            try:
                credential = c.workers[0].workdir / "credential"
                assert credential.stat().st_size > 0  # there on the host; not in the task's sandbox
                script = (f"id -u; ! cat {credential} 2>/dev/null && echo unreadable; "
                          "touch written-by-the-task")
                job_id = api.launch("as-nobody", ["/bin/sh", "-c", script])
                job = api.wait(job_id, timeout=60)
                assert job.state == T.JOB_STATE_SUCCEEDED, job.tasks[0].error
                assert api.logs(f"{job_id}/task-0") == [str(nobody.pw_uid), "unreadable"]
            finally:
                api.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_trust_a_restarted_worker_kills_the_daemons_its_crashed_incarnation_left(tmp_path: Path) -> None:
    import signal

    pidfile = tmp_path / "daemon.pid"
    script = (f"setsid sh -c 'trap \"\" TERM; echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 1000' "
              "</dev/null >/dev/null 2>&1 & sleep 1000")
    with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=30, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path / "c") as c:
        api = Api(c.controller_address, c.admin_token)
        try:
            job_id = api.launch("left-behind", ["/bin/sh", "-c", script])
            wait_until(pidfile.exists, 30)
            daemon = host_pid(int(pidfile.read_text()), IRIS_JOB_ID=job_id)
            c.kill_worker(0, signal.SIGKILL)
            # The daemon left the task's process group (setsid) and, forked before its leader was put
            # in the task's cgroup, may have escaped that too: the restarted worker finds it by the
            # attempt's process record and its marker variables.
            c.start_worker(0)  # same id and workdir: it cleans up after its previous incarnation
            wait_until(lambda: not _alive(daemon), 30, message=f"daemon {daemon} outlived its crashed worker")
        finally:
            api.close()


def test_trust_max_priority_is_enforced_from_the_cli(cluster: LocalCluster, tmp_path: Path) -> None:
    """Priority bands (issue 24 item 1): a user's token allows interactive unless created with
    --max-priority; the band shows in status, --json and list filters."""
    import json

    env = {**os.environ, "IRIS_CONTROLLER": cluster.controller_address, "IRIS_CONFIG_DIR": str(tmp_path / "cfg")}
    admin_file = str(cluster.state_dir / "admin.token")

    def iris(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
        extra = {"IRIS_TOKEN": token} if token else {}
        return subprocess.run([sys.executable, "-m", "iris.cli.main", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120, check=False)

    plain = iris("token", "create", "--user", "pat", "--token-file", admin_file).stdout.strip()
    made = iris("token", "create", "--user", "pat", "--max-priority", "production", "--json",
                "--token-file", admin_file)
    assert made.returncode == 0, made.stderr
    allowed = json.loads(made.stdout)
    assert allowed["max_priority"] == "production"
    refused = iris("job", "run", "--priority", "production", "--name", "urgent", "--no-wait", "--", "true", token=plain)
    assert refused.returncode == 1, refused.stderr
    assert "priority: production is above what this token allows (interactive)" in refused.stderr
    assert "iris token create NAME --max-priority production" in refused.stderr
    api = Api(cluster.controller_address, plain)
    try:  # over the API: PERMISSION_DENIED
        assert code_of(lambda: api.launch("urgent2", ["true"], priority="production")) \
            is grpc.StatusCode.PERMISSION_DENIED
    finally:
        api.close()
    ran = iris("job", "run", "--priority", "production", "--name", "urgent", "--", "true", token=allowed["token"])
    assert ran.returncode == 0, ran.stderr
    batch = iris("job", "run", "--priority", "batch", "--name", "later", "--", "true", token=plain)
    assert batch.returncode == 0, batch.stderr
    status = json.loads(iris("job", "status", "urgent", "--json", token=plain).stdout)
    assert status["priority"] == "production" and status["spec"]["priority"] == "production"
    listed = json.loads(iris("job", "list", "--priority", "batch", "--json", token=plain).stdout)
    assert [j["job_id"] for j in listed] == ["pat:later"]
    tasks = json.loads(iris("job", "status", "later", "--tasks", "--json", token=plain).stdout)["tasks"]
    assert [a["band"] for a in tasks[0]["attempts"]] == ["batch"]


def test_trust_a_task_s_files_cannot_leak_block_or_poison_its_worker(cluster: LocalCluster, admin: Api) -> None:
    """Issue 23 item 4: error.txt made a link to a root-only file, a FIFO, or 100 MiB: each job fails
    alone, with a small error that leaks nothing; the workers stay healthy and run the next job."""
    secret = cluster.state_dir / "admin.token"  # root-only, and the worker can read it
    probes = {
        "link": f"ln -s {secret} ../task/error.txt; exit 3",
        "fifo": "mkfifo ../task/error.txt; exit 3",
        "huge": "head -c 104857600 /dev/zero | tr '\\\\0' x > ../task/error.txt; exit 3",
    }
    jobs = {name: admin.launch(f"files-{name}", ["sh", "-c", script]) for name, script in probes.items()}
    for name, job_id in jobs.items():
        job = admin.wait(job_id, timeout=120)
        assert job.state == T.JOB_STATE_FAILED, (name, job.error)
        assert secret.read_text().strip() not in job.error
        assert len(job.error) <= 20 * 1024, (name, len(job.error))
    assert "is a symbolic link" in admin.wait(jobs["link"]).error
    assert "is not a regular file" in admin.wait(jobs["fifo"]).error
    after = admin.launch("files-after", ["true"], replicas=4)
    assert admin.wait(after, timeout=60).state == T.JOB_STATE_SUCCEEDED
    workers = admin.stub.ListWorkers(C.ListWorkersRequest(), timeout=10).workers
    assert len(workers) == 2 and all(w.healthy for w in workers)


def test_trust_a_user_can_neither_adopt_another_s_job_nor_use_another_s_workspace(
        cluster: LocalCluster, admin: Api) -> None:
    """Issue 23 item 9: bob's LaunchJob under alice's running job, or naming the bundle_hash her
    tasks see in IRIS_BUNDLE_HASH, is refused; alice herself may reuse her bundle by hash; a user
    token may not take a name an admin holds."""
    import hashlib
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("secret_model.py", "WEIGHTS = 'alice-only'\n")
    bundle = buffer.getvalue()
    digest = hashlib.sha256(bundle).hexdigest()
    alice, _ = user_api(admin, cluster, "alice-ws")
    bob, _ = user_api(admin, cluster, "bob-ws")
    try:
        parent = alice.launch("alice-train", ["sleep", "60"], bundle_blob=bundle)
        wait_until(lambda: alice.job(parent).state == T.JOB_STATE_RUNNING, 60)
        assert code_of(lambda: bob.launch("adopted", ["true"], parent_job_id=parent)) \
            is grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: bob.launch("stolen", ["true"], bundle_hash=digest)) is grpc.StatusCode.INVALID_ARGUMENT
        assert [j.job_id for j in admin.stub.ListJobs(C.ListJobsRequest(), timeout=10).jobs
                if j.job_id in ("adopted", "stolen", f"{parent}/adopted")] == []
        again = alice.launch("alice-again", ["sh", "-c", "test -f secret_model.py"], bundle_hash=digest)
        assert alice.wait(again, timeout=60).state == T.JOB_STATE_SUCCEEDED
        assert code_of(lambda: admin.stub.CreateToken(C.CreateTokenRequest(name="admin", role="user"), timeout=10)) \
            is grpc.StatusCode.ALREADY_EXISTS
        admin.stub.TerminateJob(C.TerminateJobRequest(job_id=parent), timeout=10)
    finally:
        alice.close()
        bob.close()


def test_trust_nothing_in_the_state_directory_is_readable_by_others(cluster: LocalCluster, admin: Api) -> None:
    """Issue 23 item 8: the controller's state (the database with every job's environment, logs,
    bundles, tokens) is private to it: no path under the state directory is open to group or others."""
    job = admin.launch("private-env", ["sh", "-c", "echo hello"], env={"API_KEY": "s3cret"})
    admin.wait(job, timeout=60)
    wait_until(lambda: any((cluster.state_dir / "logs").rglob("*")), 30, message="no log was kept")
    open_to_others = [str(p) for p in [cluster.state_dir, *cluster.state_dir.rglob("*")]
                      if stat.S_IMODE(p.lstat().st_mode) & 0o077 and not p.is_symlink()]
    assert open_to_others == []


def test_trust_tasks_die_with_their_worker(tmp_path: Path) -> None:
    """Issue 23 item 5: a worker killed -9 and never restarted takes its tasks with it within the
    kill grace (before: they ran on beside their retry, 48 s and more)."""
    import signal
    import time

    pids = open_dir(tmp_path / "pids")
    with LocalCluster(workers=1, cpu_per_worker=2, worker_timeout=30, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path / "c") as c:
        api = Api(c.controller_address, c.admin_token)
        try:
            job_id = api.launch("rank", ["/bin/sh", "-c", f"echo $$ > {pids}/leader.tmp; mv {pids}/leader.tmp {pids}/leader; "
                                                   "trap '' TERM; sleep 1000 & wait"], replicas=1)
            wait_until(lambda: (pids / "leader").exists(), 30)
            leader = host_pid(int((pids / "leader").read_text()), IRIS_JOB_ID=job_id)
            c.kill_worker(0, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: not _alive(leader), 15, message=f"task {leader} outlived its worker")
            assert time.monotonic() - killed_at < 10  # the grace (1 s, ignored here), then SIGKILL
        finally:
            api.close()


def test_trust_users_jobs_are_theirs(cluster: LocalCluster, admin: Api, tmp_path: Path) -> None:
    """Issue 24 item 5: job names are unique per owner (alice and bob both have a `train`); each
    user lists their own jobs by default and sees another's job (owner, state, band) but not its
    error text, logs or command; bare names are one's own; ids are whole in status and IRIS_JOB_ID."""
    import json

    alice, _ = user_api(admin, cluster, "alice")
    bob_token = admin.stub.CreateToken(C.CreateTokenRequest(name="bob", role="user"), timeout=10).token
    bob = Api(cluster.controller_address, bob_token)
    try:
        secret_line = "WANDB_API_KEY=alice-secret-123"
        a = alice.launch("train", ["sh", "-c", f"echo $IRIS_JOB_ID; echo {secret_line} >&2; exit 3"])
        b = bob.launch("train", ["sh", "-c", "echo bob"])
        assert (a, b) == ("alice:train", "bob:train")
        done = alice.wait("train", timeout=60)  # a bare name: her own
        assert done.job_id == "alice:train" and done.state == T.JOB_STATE_FAILED and secret_line in done.error
        assert alice.logs("train/task-0")[0] == "alice:train"
        assert bob.wait("train", timeout=60).state == T.JOB_STATE_SUCCEEDED  # his own, the same name
        seen = bob.job("alice:train", tasks=True)
        assert seen.owner == "alice" and seen.state == T.JOB_STATE_FAILED and seen.priority == "interactive"
        assert secret_line not in str(seen) and seen.error == "(hidden: another user's job)"
        assert all(a.error in ("", "(hidden: another user's job)") for t in seen.tasks for a in t.attempts)
        task = bob.stub.GetTaskStatus(C.GetTaskStatusRequest(job_id="alice:train", task_index=0), timeout=10).task
        assert secret_line not in str(task)
        assert code_of(lambda: bob.logs("alice:train/task-0")) is grpc.StatusCode.PERMISSION_DENIED
        own = bob.stub.ListJobs(C.ListJobsRequest(), timeout=10).jobs
        assert [j.job_id for j in own] == ["bob:train"]
        everyone = bob.stub.ListJobs(C.ListJobsRequest(all_users=True, prefix="alice:train"), timeout=10).jobs
        assert [j.job_id for j in everyone] == ["alice:train"] and secret_line not in str(everyone)
        theirs = bob.stub.ListJobs(C.ListJobsRequest(user="alice", prefix="train"), timeout=10).jobs
        assert [j.job_id for j in theirs] == ["alice:train"] and theirs[0].error == "(hidden: another user's job)"
        assert secret_line in admin.job("alice:train").error  # admins see all
        # The CLI: your own by default, --all-users for everyone's, without their error text.
        env = {**os.environ, "IRIS_CONTROLLER": cluster.controller_address, "IRIS_TOKEN": bob_token,
               "IRIS_CONFIG_DIR": str(tmp_path / "cfg")}
        run = subprocess.run([sys.executable, "-m", "iris.cli.main", "job", "list", "--all-users", "--json"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        listed = run.stdout
        jobs = {j["job_id"]: j for j in json.loads(listed)}
        assert {"alice:train", "bob:train"} <= set(jobs) and secret_line not in listed
        run = subprocess.run([sys.executable, "-m", "iris.cli.main", "job", "list"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        mine = run.stdout
        assert "bob:train" in mine and "alice:train" not in mine
    finally:
        alice.close()
        bob.close()


def test_trust_a_token_name_must_be_a_user_name(admin: Api) -> None:
    """User names prefix job ids ('<user>:<name>'): a name with other characters is refused."""
    for bad in ("alice smith", "a:b", "../x", ""):
        assert code_of(lambda bad=bad: admin.stub.CreateToken(C.CreateTokenRequest(name=bad, role="user"), timeout=10)) \
            is grpc.StatusCode.INVALID_ARGUMENT
