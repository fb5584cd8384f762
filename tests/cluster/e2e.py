"""Helpers for end-to-end tests against a LocalCluster over real gRPC."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import cloudpickle
import grpc

from iris.cluster.clock import wait_until
from iris.cluster.types import ResourceSpec, is_job_finished
from iris.rpc import cluster_pb2, cluster_pb2_grpc

T = cluster_pb2
C = cluster_pb2.Controller


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = details._replace(metadata=tuple(details.metadata or ()) + self._metadata)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        details = details._replace(metadata=tuple(details.metadata or ()) + self._metadata)
        return continuation(details, requests)


def authed_channel(address: str, token: str = "") -> grpc.Channel:
    """A channel whose every call presents ``token`` (no token: none is sent)."""
    channel = grpc.insecure_channel(address)
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


class Api:
    """A thin wrapper over the controller stub for tests."""

    def __init__(self, address: str, token: str = "") -> None:
        """``token``: presented on every call (the cluster's admin token, or another one to test)."""
        self.channel = authed_channel(address, token)
        self.stub = cluster_pb2_grpc.ControllerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def launch(
        self,
        name: str,
        argv: Sequence[str] | None = None,
        *,
        fn: object = None,
        args: tuple[object, ...] = (),
        replicas: int = 1,
        cpu: int = 1,
        memory: str = "0",
        disk: str = "0",
        env: dict[str, str] | None = None,
        ports: Sequence[str] = (),
        **fields: object,
    ) -> str:
        blob = fields.pop("bundle_blob", b"")
        if blob:  # the workspace goes by UploadBundle, then the LaunchJob names it
            fields["bundle_hash"] = self.upload(blob)  # type: ignore[arg-type]
        if fn is not None:
            entry = T.Entrypoint(callable=T.CallableEntrypoint(pickled=cloudpickle.dumps((fn, args, {}))))
        else:
            entry = T.Entrypoint(command=T.CommandEntrypoint(argv=list(argv or ())))
        request = C.LaunchJobRequest(
            name=name,
            serialized_entrypoint=entry.SerializeToString(),
            resources=ResourceSpec(cpu=cpu, memory=memory, disk=disk, replicas=replicas).to_proto(),
            environment=T.EnvironmentConfig(env_vars=env or {}),
            ports=list(ports),
            **fields,  # type: ignore[arg-type]
        )
        return self.stub.LaunchJob(request, timeout=30).job_id

    def upload(self, blob: bytes) -> str:
        import hashlib

        digest = hashlib.sha256(blob).hexdigest()
        chunks = [blob[i:i + (1 << 20)] for i in range(0, len(blob), 1 << 20)]
        requests = [C.UploadBundleRequest(bundle_hash=digest, size=len(blob), chunk=chunks[0])] + [
            C.UploadBundleRequest(chunk=c) for c in chunks[1:]]
        return self.stub.UploadBundle(iter(requests), timeout=60).bundle_hash

    def job(self, job_id: str, tasks: bool = False) -> cluster_pb2.JobStatus:
        return self.stub.GetJobStatus(C.GetJobStatusRequest(job_id=job_id, include_tasks=tasks), timeout=30).job

    def task(self, job_id: str, index: int) -> cluster_pb2.TaskStatus:
        return self.stub.GetTaskStatus(C.GetTaskStatusRequest(job_id=job_id, task_index=index), timeout=30).task

    def wait(self, job_id: str, timeout: float = 60) -> cluster_pb2.JobStatus:
        wait_until(lambda: is_job_finished(self.job(job_id).state), timeout,
                   message=f"job {job_id} did not finish within {timeout}s")
        return self.job(job_id, tasks=True)

    def logs(self, task_id: str, attempt: int | None = None) -> list[str]:
        request = C.FetchTaskLogsRequest(task_id=task_id)
        if attempt is not None:
            request.attempt_id = attempt
        return [line.data for line in self.stub.FetchTaskLogs(request, timeout=30).lines]

    def endpoints(self, prefix: str = "") -> list[cluster_pb2.Endpoint]:
        return list(self.stub.ListEndpoints(C.ListEndpointsRequest(prefix=prefix), timeout=30).endpoints)


def py(code: str) -> list[str]:
    """argv running ``code`` in this interpreter (which has iris installed)."""
    return [sys.executable, "-c", code]


def open_dir(path: Path) -> Path:
    """Make a directory a task may write (tasks run as their owner's uid, not as the test's root)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def processes_with(token: str) -> list[int]:
    """Host pids of the processes one of whose arguments is ``token`` (``sleep 1101`` for "1101"):
    how a test finds a task's processes from outside (inside its sandbox they have other pids)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if token in cmdline[1:]:
            found.append(proc.pid)
    return found


def host_pid(ns_pid: int, **env: str) -> int:
    """The host pid of a task's process that calls itself ``ns_pid`` (its ``$$`` or ``os.getpid()``:
    inside its sandbox's PID namespace), among the processes whose environment has ``env`` (e.g.
    ``IRIS_JOB_ID=...``): how a test that reads a pid a task wrote finds that process from outside."""
    import os

    needles = {f"{k}={v}".encode() for k, v in env.items()}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = set(f.read().split(b"\0"))
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if nspid and int(nspid[-1]) == ns_pid and needles <= environ:
            return int(name)
    raise LookupError(f"no process calls itself {ns_pid} with {env}")


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
