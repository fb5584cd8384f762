"""Dashboard: the HTML page, the JSON API (same data as the gRPC views) and /metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from iris.cluster.auth import Role
from iris.cluster.clock import FakeClock
from iris.cluster.controller.controller import Controller, ControllerConfig
from iris.cluster.controller.dashboard import Dashboard
from iris.cluster.types import ResourceSpec
from iris.rpc import cluster_pb2

from . import wire
from .fakes import FakeWorkerClients

T = cluster_pb2


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    controller = Controller(ControllerConfig(), clock=FakeClock(), worker_clients=FakeWorkerClients())
    wire.register_worker(controller, T.Controller.RegisterWorkerRequest(
        worker_id="w1", address="127.0.0.1:1", metadata=T.WorkerMetadata(cpu_count=4, memory_bytes=1 << 30)))
    entry = T.Entrypoint(command=T.CommandEntrypoint(argv=["true"])).SerializeToString()
    for name in ("train", "parent"):
        wire.launch_job(controller, T.Controller.LaunchJobRequest(
            name=name, serialized_entrypoint=entry, resources=ResourceSpec(cpu=1, replicas=3).to_proto()), owner="admin")
    wire.launch_job(controller, T.Controller.LaunchJobRequest(
        name="child", parent_job_id="admin:parent", serialized_entrypoint=entry, resources=ResourceSpec().to_proto()),
        owner="admin")
    controller.terminate_job(controller.queries.get_job("admin:train").job_id)  # type: ignore[arg-type]
    _, TOKENS["admin"] = controller.create_token("admin", Role.ADMIN)
    d = Dashboard(controller, "127.0.0.1", 0)
    d.start()
    yield d
    d.stop()
    controller.stop()


TOKENS: dict[str, str] = {}


def get(d: Dashboard, path: str, token: str | None = "admin", headers: dict[str, str] | None = None
        ) -> tuple[int, str]:
    request = urllib.request.Request(d.url + path, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {TOKENS.get(token, token)}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_dashboard_page_and_health(dashboard: Dashboard) -> None:
    status, body = get(dashboard, "/")
    assert status == 200 and "<title>Iris</title>" in body and "/static/app.js" in body
    for page in ("/job/parent/child", "/workers", "/worker/w1", "/endpoints", "/logs?job=train&task=0"):
        assert get(dashboard, page)[0] == 200, page  # every page has a URL (the app renders it)
    status, script = get(dashboard, "/static/app.js")
    assert status == 200 and "/api/jobs" in script  # shipped in the package: no CDN
    assert get(dashboard, "/healthz") == (200, "ok\n")


def test_dashboard_jobs_and_job_detail_json(dashboard: Dashboard) -> None:
    status, body = get(dashboard, "/api/jobs")
    listed = json.loads(body)["jobs"]
    jobs = {j["job_id"]: j for j in listed}
    assert status == 200 and [j["job_id"] for j in listed] == ["admin:parent/child", "admin:parent", "admin:train"]  # newest first
    # The CLI's --json shapes: snake_case, plain state names, numbers as numbers.
    assert jobs["admin:train"]["state"] == "KILLED" and jobs["admin:parent"]["num_tasks"] == 3
    assert jobs["admin:parent"]["counts"]["pending"] == 3 and isinstance(jobs["admin:parent"]["submitted_at_ms"], int)
    status, body = get(dashboard, "/api/job?id=parent/child")
    job = json.loads(body)["job"]
    assert status == 200 and job["parent_job_id"] == "admin:parent" and [t["task_id"] for t in job["tasks"]] == [
        "admin:parent/child/task-0"
    ]


def test_dashboard_jobs_api_filters_and_pages(dashboard: Dashboard) -> None:
    killed = json.loads(get(dashboard, "/api/jobs?state=killed")[1])["jobs"]
    assert [j["job_id"] for j in killed] == ["admin:train"]
    by_prefix = json.loads(get(dashboard, "/api/jobs?prefix=parent")[1])["jobs"]
    assert {j["job_id"] for j in by_prefix} == {"admin:parent", "admin:parent/child"}
    first = json.loads(get(dashboard, "/api/jobs?page_size=2")[1])
    assert len(first["jobs"]) == 2 and first["next_page_token"]
    rest = json.loads(get(dashboard, f"/api/jobs?page_size=2&page_token={first['next_page_token']}")[1])
    assert [j["job_id"] for j in first["jobs"] + rest["jobs"]] == ["admin:parent/child", "admin:parent", "admin:train"]
    oldest = json.loads(get(dashboard, "/api/jobs?newest_first=0")[1])["jobs"]
    assert [j["job_id"] for j in oldest] == ["admin:train", "admin:parent", "admin:parent/child"]
    for bad, needle in (("/api/jobs?state=nope", "state"), ("/api/jobs?page_size=-1", "page_size"),
                        ("/api/jobs?page_token=zzz", "page_token"), ("/api/logs", "task"),
                        ("/api/logs?task=train/task-0&tail=99999999999999999999", "tail"),
                        ("/api/logs?task=train/task-0&offset=-3", "offset")):
        status, body = get(dashboard, bad)
        assert status == 400 and json.loads(body)["error"].startswith(needle), bad


def test_dashboard_errors_are_json_with_status(dashboard: Dashboard) -> None:
    status, body = get(dashboard, "/api/job?id=nope")
    assert status == 404 and "not found" in json.loads(body)["error"]
    status, body = get(dashboard, "/api/job")
    assert status == 400 and json.loads(body)["error"].startswith("id:")
    assert get(dashboard, "/nowhere")[0] == 404


def test_dashboard_workers_actions_and_metrics(dashboard: Dashboard) -> None:
    workers = json.loads(get(dashboard, "/api/workers")[1])["workers"]
    assert [w["worker_id"] for w in workers] == ["w1"] and workers[0]["healthy"] and workers[0]["cpu"] == 4
    assert json.loads(get(dashboard, "/api/worker?id=w1")[1])["worker"]["worker_id"] == "w1"
    assert get(dashboard, "/api/worker?id=nope")[0] == 404
    actions = json.loads(get(dashboard, "/api/actions")[1])["actions"]
    assert {"job_submitted", "worker_registered", "job_finished"} <= {a["action"] for a in actions}
    status, metrics = get(dashboard, "/metrics")
    assert status == 200
    assert 'iris_jobs{state="KILLED"} 1.0' in metrics and 'iris_jobs{state="PENDING"} 2.0' in metrics
    assert 'iris_tasks{state="KILLED"} 3.0' in metrics and 'iris_workers{healthy="true"} 1.0' in metrics
    assert "iris_queue_depth 4.0" in metrics  # parent's 3 tasks and the child's 1 wait
    for cause in ("useful", "failure", "preemption", "gang"):
        assert f'iris_attempt_seconds_total{{cause="{cause}"}} ' in metrics
    assert "# TYPE iris_scheduling_latency_seconds histogram" in metrics
    assert "# TYPE iris_rpc_duration_seconds histogram" in metrics
    # The API reads above went through the read gate (workers, one worker twice, actions).
    reads = next(line for line in metrics.splitlines() if line.startswith("iris_reads_total "))
    assert float(reads.split()[1]) >= 4
    assert "iris_reads_refused_total 0.0" in metrics and "iris_reads_waiting 0.0" in metrics


def test_dashboard_needs_a_credential_everywhere_but_healthz(dashboard: Dashboard) -> None:
    for path in ("/api/jobs", "/api/job?id=train", "/api/workers", "/api/endpoints", "/api/actions", "/metrics",
                 "/api/logs?task=train/task-0", "/api/worker?id=w1"):
        status, body = get(dashboard, path, token=None)
        assert status == 401 and "credential" in json.loads(body)["error"], path
        assert get(dashboard, path, token="iris_not-a-real-token")[0] == 401, path
    status, body = get(dashboard, "/", token=None)
    assert status == 401 and 'action="/login"' in body and 'type="password"' in body
    assert get(dashboard, "/healthz", token=None) == (200, "ok\n")


def test_dashboard_login_sets_an_httponly_strict_session_cookie(dashboard: Dashboard) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=10)
    conn.request("POST", "/login", body=f"token={TOKENS['admin']}",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    reply = conn.getresponse()
    reply.read()
    cookie = reply.getheader("Set-Cookie") or ""
    assert reply.status == 303 and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert TOKENS["admin"] not in cookie and TOKENS["admin"] not in (reply.getheader("Location") or "")
    session = cookie.split(";")[0]
    status, body = get(dashboard, "/api/jobs", token=None, headers={"Cookie": session})
    assert status == 200 and json.loads(body)["jobs"]
    conn.request("POST", "/login", body="token=wrong", headers={"Content-Type": "application/x-www-form-urlencoded"})
    bad = conn.getresponse()
    assert bad.status == 401 and "Set-Cookie" not in dict(bad.getheaders())
    bad.read()
    conn.close()


def test_dashboard_one_user_s_logins_never_end_another_user_s_session(dashboard: Dashboard) -> None:
    """Issue 23 item 7: 10,002 logins by bob ended the admin's session; now each user holds at most
    MAX_SESSIONS_PER_USER and a new login ends only that user's own oldest."""
    import http.client

    from iris.cluster.controller.dashboard import MAX_SESSIONS_PER_USER

    def login(token: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=10)
        conn.request("POST", "/login", body=f"token={token}", headers={"Content-Type": "application/x-www-form-urlencoded"})
        reply = conn.getresponse()
        reply.read()
        conn.close()
        assert reply.status == 303
        return (reply.getheader("Set-Cookie") or "").split(";")[0]

    _, bob = dashboard._controller.create_token("bob", Role.USER)
    admin_session = login(TOKENS["admin"])
    bobs = [login(bob) for _ in range(MAX_SESSIONS_PER_USER + 40)]
    assert get(dashboard, "/api/jobs", token=None, headers={"Cookie": admin_session})[0] == 200
    assert get(dashboard, "/api/jobs", token=None, headers={"Cookie": bobs[-1]})[0] == 200
    assert get(dashboard, "/api/jobs", token=None, headers={"Cookie": bobs[0]})[0] == 401  # his own oldest
    assert len(dashboard._sessions) == MAX_SESSIONS_PER_USER + 1


def test_dashboard_refuses_a_foreign_host_header(dashboard: Dashboard) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the API."""
    status, body = get(dashboard, "/api/jobs", headers={"Host": "evil.example:80"})
    assert status == 421 and "Host" in json.loads(body)["error"]
    assert get(dashboard, "/api/jobs", headers={"Host": f"localhost:{dashboard.port}"})[0] == 200


def test_dashboard_half_sent_requests_are_dropped_and_cost_no_thread_each(dashboard: Dashboard) -> None:
    """A flood of connections that never finish their request: the server drops each after its
    timeout instead of keeping a thread per connection, and then serves real requests."""
    import socket

    from iris.cluster.clock import wait_until

    controller = dashboard._controller  # the fixture's controller, to serve a second, short-timeout site
    site = Dashboard(controller, "127.0.0.1", 0, request_timeout_s=0.5)
    site.start()
    flood = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", site.port), timeout=30)
            s.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1")  # never finished
            flood.append(s)

        def all_dropped() -> bool:
            return all(s.recv(1) == b"" for s in flood)

        wait_until(all_dropped, 60, message="half-sent connections were not dropped")
        status, body = get(site, "/api/jobs")
        assert status == 200 and json.loads(body)["jobs"]
    finally:
        for s in flood:
            s.close()
        site.stop()


def test_dashboard_a_slowloris_after_one_good_request_is_dropped(dashboard: Dashboard) -> None:
    """Issue 23 item 9: one whole request on a kept-alive connection, then the next one trickled a
    byte at a time: the server drops the connection at its request deadline (before: never)."""
    import socket
    import time

    site = Dashboard(dashboard._controller, "127.0.0.1", 0, request_timeout_s=0.5)
    site.start()
    try:
        with socket.create_connection(("127.0.0.1", site.port), timeout=30) as s:
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            trickle = b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
            deadline = time.monotonic() + 20
            closed = False
            for byte in trickle:  # a byte every 0.1 s (the recv timeout): never idle for keep-alive
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                s.settimeout(0.1)
                try:
                    if s.recv(1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
                assert time.monotonic() < deadline
            assert closed, "a trickled second request kept its connection open"
    finally:
        site.stop()


def test_dashboard_share_and_queue_json_and_sharing_metrics(dashboard: Dashboard) -> None:
    """Issue 24 item 6: the share and queue pages' data, in the shapes of `iris share --json` and
    `iris queue --json`, and usage, running share and queue wait in /metrics."""
    shares = json.loads(get(dashboard, "/api/shares")[1])
    assert shares["source"] == "" and shares["max_preemptions_per_minute"] == 30
    assert shares["pack_delay_ms"] == 120_000 and shares["pack_max_wait_ms"] == 24 * 3_600_000
    teams = {t["team"]: t for t in shares["teams"]}
    assert {"team", "weight", "guarantee", "limit", "usage", "decayed_usage", "standing", "members"} <= set(teams["admin"])
    assert teams["admin"]["pending_tasks"] == 4 and teams["admin"]["own"]
    queue = json.loads(get(dashboard, "/api/queue")[1])
    assert queue["total"] == 2 and [e["job_id"] for e in queue["queue"]] == ["admin:parent", "admin:parent/child"]
    assert [e["position"] for e in queue["queue"]] == [1, 2] and queue["queue"][0]["band"] == "interactive"
    assert get(dashboard, "/api/queue?limit=0")[0] == 400
    metrics = get(dashboard, "/metrics")[1]
    assert "# TYPE iris_queue_wait_seconds histogram" in metrics
    assert "# TYPE iris_team_usage_share_seconds gauge" in metrics
    assert "# TYPE iris_team_running_share gauge" in metrics and "# TYPE iris_policy_preemptions_total counter" in metrics
    for page in ("/queue", "/share"):
        assert get(dashboard, page)[0] == 200
    why = json.loads(get(dashboard, "/api/why?id=parent")[1])  # a bare name: the admin's own
    assert why["job_id"] == "admin:parent" and why["position"] == 0 and {"reasons", "estimate"} <= set(why)
    assert get(dashboard, "/api/why?id=nope")[0] == 404
