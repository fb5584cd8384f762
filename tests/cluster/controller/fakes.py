"""Fakes for controller shell tests: a recording WorkerClients with scripted failures."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import grpc

from iris.rpc import cluster_pb2


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@dataclass
class FakeWorkerClients:
    """Records every call; ``unreachable`` addresses raise UNAVAILABLE."""

    run_calls: list[tuple[str, cluster_pb2.Worker.RunTaskRequest]] = field(default_factory=list)
    kill_calls: list[tuple[str, cluster_pb2.Worker.KillTaskRequest]] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)
    refuse: dict[str, str] = field(default_factory=dict)
    """task_id -> error: RunTasks refuses these tasks (accepted=False) and accepts the others."""
    batch_calls: list[tuple[str, list[str]]] = field(default_factory=list)
    """(address, task ids) of every RunTasks call."""
    logs: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    sequence: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_tasks(
        self, address: str, request: cluster_pb2.Worker.RunTasksRequest, timeout: float, credential: str = ""
    ) -> cluster_pb2.Worker.RunTasksResponse:
        with self.lock:
            self.batch_calls.append((address, [r.task_id for r in request.tasks]))
            self.run_calls.extend((address, r) for r in request.tasks)
            if address in self.unreachable:
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, f"{address} unreachable")
            results = []
            for r in request.tasks:
                if r.task_id in self.refuse:
                    results.append(cluster_pb2.Worker.RunTaskResponse(accepted=False, error=self.refuse[r.task_id]))
                    continue
                self.sequence += 1
                results.append(cluster_pb2.Worker.RunTaskResponse(accepted=True, incarnation=f"inc-{address}",
                                                                  sequence=self.sequence))
            return cluster_pb2.Worker.RunTasksResponse(results=results)

    def kill_task(self, address: str, request: cluster_pb2.Worker.KillTaskRequest, timeout: float,
                  credential: str = "") -> None:
        with self.lock:
            self.kill_calls.append((address, request))
            if address in self.unreachable:
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, f"{address} unreachable")

    def fetch_logs(
        self, address: str, request: cluster_pb2.Worker.FetchTaskLogsRequest, timeout: float, credential: str = ""
    ) -> cluster_pb2.Worker.FetchTaskLogsResponse:
        if address in self.unreachable:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, f"{address} unreachable")
        lines = self.logs.get((request.task_id, request.attempt_id), [])
        chosen = lines[request.start_line:]
        return cluster_pb2.Worker.FetchTaskLogsResponse(
            lines=[cluster_pb2.LogLine(data=line, source="output") for line in chosen],
            next_line=request.start_line + len(chosen),
            attempt_id=request.attempt_id,
        )

    def close(self) -> None:
        pass

    def ran(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(r.task_id, r.attempt_id) for _, r in self.run_calls]

    def killed(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(r.task_id, r.attempt_id) for _, r in self.kill_calls]
