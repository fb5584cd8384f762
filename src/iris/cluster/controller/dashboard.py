"""HTTP dashboard, JSON API and Prometheus ``/metrics`` for the controller.

A thin layer over the same views the gRPC service returns (``job_to_proto`` & co. rendered with
protobuf's JSON mapping), so the browser, the CLI and Python see the same data.

Routes: ``/`` (the page), ``/api/jobs``, ``/api/job?id=JOB`` (with tasks), ``/api/workers``,
``/api/endpoints``, ``/api/actions``, ``/metrics``, ``/healthz``.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from google.protobuf.json_format import MessageToDict

from iris.cluster.addresses import advertise_host, host_port, is_wildcard
from iris.cluster.auth import Principal
from iris.cluster.controller.controller import Controller
from iris.cluster.controller.views import endpoint_proto, job_proto, worker_proto
from iris.cluster.errors import IrisError
from iris.cluster.files import is_loopback
from iris.cluster.types import JobId, job_state_name, task_state_name

logger = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Iris</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
 h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.5em}
 table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd}
 th{background:#f4f4f4} .SUCCEEDED{color:#1a7f37} .FAILED,.WORKER_FAILED,.UNSCHEDULABLE{color:#cf222e}
 .RUNNING,.BUILDING{color:#0969da} .KILLED{color:#888} a{color:#0969da;cursor:pointer}
 #detail{margin-top:1em} .muted{color:#777}
</style></head><body>
<h1>Iris</h1>
<div class="muted" id="updated"></div>
<h2>Jobs</h2><table id="jobs"><thead><tr><th>Job</th><th>State</th><th>Tasks</th><th>Pending</th>
<th>Running</th><th>Succeeded</th><th>Failed</th><th>Killed</th><th>Error / pending reason</th></tr></thead>
<tbody></tbody></table>
<div id="detail"></div>
<h2>Workers</h2><table id="workers"><thead><tr><th>Worker</th><th>Address</th><th>Healthy</th><th>CPU used</th>
<th>Running tasks</th></tr></thead><tbody></tbody></table>
<script>
const S = s => (s || "").replace(/^(JOB|TASK)_STATE_/, "");
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\\"":"&quot;"}[c]));
let selected = null;
async function refresh() {
  const jobs = (await (await fetch("api/jobs")).json()).jobs || [];
  document.querySelector("#jobs tbody").innerHTML = jobs.map(j => `<tr>
    <td><a onclick="show('${esc(j.jobId)}')">${esc(j.jobId)}</a></td><td class="${S(j.state)}">${S(j.state)}</td>
    <td>${j.numTasks||0}</td><td>${j.tasksPending||0}</td><td>${j.tasksRunning||0}</td>
    <td>${j.tasksSucceeded||0}</td><td>${j.tasksFailed||0}</td><td>${j.tasksKilled||0}</td>
    <td>${esc(j.error || j.pendingReason)}</td></tr>`).join("");
  const workers = (await (await fetch("api/workers")).json()).workers || [];
  document.querySelector("#workers tbody").innerHTML = workers.map(w => `<tr><td>${esc(w.workerId)}</td>
    <td>${esc(w.address)}</td><td>${w.healthy ? "yes" : "no"}</td>
    <td>${w.committedCpu||0} / ${(w.metadata||{}).cpuCount||0}</td><td>${(w.runningTasks||[]).length}</td></tr>`).join("");
  if (selected) await show(selected);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}
async function show(id) {
  selected = id;
  const r = await fetch("api/job?id=" + encodeURIComponent(id));
  if (!r.ok) { document.getElementById("detail").textContent = await r.text(); return; }
  const job = (await r.json()).job;
  document.getElementById("detail").innerHTML = `<h2>Tasks of ${esc(job.jobId)}</h2><table><thead><tr>
    <th>#</th><th>State</th><th>Worker</th><th>Attempts</th><th>Failures</th><th>Preemptions</th>
    <th>Exit</th><th>Error</th></tr></thead><tbody>${(job.tasks||[]).map(t => `<tr><td>${t.taskIndex||0}</td>
    <td class="${S(t.state)}">${S(t.state)}</td><td>${esc(t.workerId)}</td><td>${(t.currentAttemptId||0)+1}</td>
    <td>${t.failureCount||0}</td><td>${t.preemptionCount||0}</td><td>${t.exitCode||0}</td>
    <td>${esc(t.error || t.pendingReason)}</td></tr>`).join("")}</tbody></table>`;
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""


def _to_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message)


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Iris: sign in</title></head>
<body style="font:14px system-ui,sans-serif;margin:3em">
<h1>Iris</h1><form method="post" action="/login">
<label>Token <input type="password" name="token" autocomplete="current-password" size="60"></label>
<button type="submit">Sign in</button></form>
<p style="color:#777">Your token is in <code>STATE_DIR/admin.token</code>, or ask an admin for one
(<code>iris token create --user NAME</code>).</p></body></html>
"""
SESSION_COOKIE = "iris_session"
MAX_CONNECTIONS = 16
"""Requests served at once; more wait in the listen backlog (no thread per connection)."""
REQUEST_TIMEOUT_S = 10.0
"""A client that sends its request slower than this is disconnected."""
MAX_BODY_BYTES = 8192


class _BoundedServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` on a bounded pool: a flood of (half-sent) connections queues instead
    of costing a thread each."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._pool = ThreadPoolExecutor(max_workers=MAX_CONNECTIONS, thread_name_prefix="dashboard")

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class Dashboard:
    """Serves the dashboard on ``host:port`` (port 0 picks a free one) in a background thread.

    Every route but ``/healthz`` needs a credential: ``Authorization: Bearer <token>`` (scripts)
    or the HttpOnly, SameSite=Strict session cookie that ``POST /login`` sets (browsers; the token
    never goes in a URL). A request whose ``Host`` is not an address this dashboard serves is
    refused (DNS rebinding)."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 0, *,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S, advertise: str | None = None) -> None:
        self._controller = controller
        self._request_timeout_s = request_timeout_s
        handler = self._make_handler()
        self._server = _BoundedServer((host, port), handler)
        scheme = "http"
        if tls_cert is not None and tls_key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert, tls_key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.port = self._server.server_address[1]
        public = advertise_host(host, advertise)
        self.url = f"{scheme}://{host_port(public, self.port)}"
        self._thread: threading.Thread | None = None
        names = {public} | ({host} if not is_wildcard(host) else set())
        if is_loopback(host):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        self._hosts = {f"{name}:{self.port}" for name in names} | {name for name in names if not is_loopback(name)}
        self._sessions: dict[str, str] = {}
        """Session id -> the token it was opened with (checked again on every request, so a revoked
        token ends its sessions)."""
        self._sessions_lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ views

    def jobs(self, page_token: str = "") -> dict[str, Any]:
        page = self._controller.list_jobs(page_token=page_token)
        return {"jobs": [_to_dict(job_proto(j)) for j in page.jobs], "next_page_token": page.next_page_token}

    def job(self, job_id: str) -> dict[str, Any]:
        job, tasks = self._controller.job_status(JobId(job_id), include_tasks=True)
        return {"job": _to_dict(job_proto(job, tasks))}

    def workers(self) -> dict[str, Any]:
        return {"workers": [_to_dict(worker_proto(w)) for w in self._controller.list_workers()]}

    def endpoints(self) -> dict[str, Any]:
        return {"endpoints": [_to_dict(endpoint_proto(e)) for e in self._controller.list_endpoints()]}

    def actions(self) -> dict[str, Any]:
        return {
            "actions": [
                {"timestamp_ms": a.timestamp_ms, "action": a.action, "job_id": a.job_id, "task_id": a.task_id,
                 "worker_id": a.worker_id, "details": a.details}
                for a in self._controller.recent_actions(200)
            ]
        }

    def metrics(self) -> str:
        """Prometheus text format, from counts the controller takes in chunks (per-job counts,
        never a scan of tasks, never all jobs under one lock hold)."""
        counts = self._controller.counts()
        jobs_by_state = {job_state_name(s): n for s, n in counts.jobs_by_state.items()}
        tasks_by_state = {task_state_name(s): n for s, n in counts.tasks_by_state.items()}
        lines = ["# HELP iris_jobs Jobs by state.", "# TYPE iris_jobs gauge"]
        lines += [f'iris_jobs{{state="{s}"}} {n}' for s, n in jobs_by_state.items() if s != "UNSPECIFIED"]
        lines += ["# HELP iris_tasks Tasks by state.", "# TYPE iris_tasks gauge"]
        lines += [f'iris_tasks{{state="{s}"}} {n}' for s, n in tasks_by_state.items() if s != "UNSPECIFIED"]
        lines += ["# HELP iris_workers Registered workers by health.", "# TYPE iris_workers gauge"]
        lines.append(f'iris_workers{{healthy="true"}} {counts.workers_healthy}')
        lines.append(f'iris_workers{{healthy="false"}} {counts.workers_unhealthy}')
        lines += ["# HELP iris_committed_cpu Cores committed to running tasks.", "# TYPE iris_committed_cpu gauge"]
        lines.append(f"iris_committed_cpu {counts.committed_cpu / 1000:g}")
        lines += ["# HELP iris_attempt_seconds_total Running time of ended attempts, by how they ended "
                  "(useful: succeeded; failure, preemption, gang: lost to failed, preempted and gang-restarted "
                  "attempts).", "# TYPE iris_attempt_seconds_total counter"]
        lines += [f'iris_attempt_seconds_total{{cause="{cause}"}} {seconds:.3f}'
                  for cause, seconds in self._controller.lost_seconds().items()]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ auth

    def host_allowed(self, host: str | None) -> bool:
        return host is not None and host in self._hosts

    def principal(self, authorization: str | None, cookie: str | None) -> Principal:
        """Who is asking (Unauthenticated when nobody valid)."""
        token: str | None = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None and cookie:
            jar = SimpleCookie()
            try:
                jar.load(cookie)
            except CookieError:
                jar = SimpleCookie()
            morsel = jar.get(SESSION_COOKIE)
            if morsel is not None:
                with self._sessions_lock:
                    token = self._sessions.get(morsel.value)
        return self._controller.authenticate(token)

    def open_session(self, token: str) -> str:
        self._controller.authenticate(token)  # raises when the token is not valid
        session = secrets.token_urlsafe(32)
        with self._sessions_lock:
            if len(self._sessions) > 10_000:
                self._sessions.clear()
            self._sessions[session] = token
        return session

    # ------------------------------------------------------------------ HTTP

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            timeout = dashboard._request_timeout_s

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("dashboard: " + format, *args)

            def _admit(self, path: str) -> Principal | None:
                """Check Host and credentials; answer the refusal and return None when refused."""
                if not dashboard.host_allowed(self.headers.get("Host")):
                    self._json({"error": "Host: not an address this dashboard serves"}, HTTPStatus.MISDIRECTED_REQUEST)
                    return None
                try:
                    return dashboard.principal(self.headers.get("Authorization"), self.headers.get("Cookie"))
                except IrisError as e:
                    if path in ("/", "/index.html"):
                        self._send(HTTPStatus.UNAUTHORIZED, _LOGIN_PAGE.encode(), "text/html; charset=utf-8")
                    else:
                        self._json({"error": str(e)}, HTTPStatus.UNAUTHORIZED)
                    return None

            def do_POST(self) -> None:
                url = urlparse(self.path)
                if not dashboard.host_allowed(self.headers.get("Host")):
                    self._json({"error": "Host: not an address this dashboard serves"}, HTTPStatus.MISDIRECTED_REQUEST)
                    return
                if url.path != "/login":
                    self._json({"error": f"no route {url.path}"}, HTTPStatus.NOT_FOUND)
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    self._json({"error": f"Content-Length: must be 0..{MAX_BODY_BYTES}"}, HTTPStatus.BAD_REQUEST)
                    return
                form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                token = (form.get("token") or [""])[0].strip()
                try:
                    session = dashboard.open_session(token)
                except IrisError:
                    self._send(HTTPStatus.UNAUTHORIZED, _LOGIN_PAGE.encode(), "text/html; charset=utf-8")
                    return
                self.send_response(HTTPStatus.SEE_OTHER)
                self.send_header("Set-Cookie", f"{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/")
                self.send_header("Location", "/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, payload: dict[str, Any], status: int = HTTPStatus.OK) -> None:
                self._send(status, json.dumps(payload).encode(), "application/json")

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path == "/healthz":
                    self._send(HTTPStatus.OK, b"ok\n", "text/plain")
                    return
                if self._admit(url.path) is None:
                    return
                try:
                    if url.path in ("/", "/index.html"):
                        self._send(HTTPStatus.OK, _PAGE.encode(), "text/html; charset=utf-8")
                    elif url.path == "/metrics":
                        self._send(HTTPStatus.OK, dashboard.metrics().encode(), "text/plain; version=0.0.4")
                    elif url.path == "/api/jobs":
                        self._json(dashboard.jobs((query.get("page_token") or [""])[0]))
                    elif url.path == "/api/job":
                        job_ids = query.get("id")
                        if not job_ids:
                            self._json({"error": "id: query parameter is required"}, HTTPStatus.BAD_REQUEST)
                            return
                        self._json(dashboard.job(job_ids[0]))
                    elif url.path == "/api/workers":
                        self._json(dashboard.workers())
                    elif url.path == "/api/endpoints":
                        self._json(dashboard.endpoints())
                    elif url.path == "/api/actions":
                        self._json(dashboard.actions())
                    else:
                        self._json({"error": f"no route {url.path}"}, HTTPStatus.NOT_FOUND)
                except IrisError as e:
                    status = HTTPStatus.NOT_FOUND if e.code == "NOT_FOUND" else HTTPStatus.BAD_REQUEST
                    self._json({"error": str(e)}, status)
                except Exception as e:
                    logger.exception("dashboard %s failed", url.path)
                    self._json({"error": f"internal error: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        return Handler
