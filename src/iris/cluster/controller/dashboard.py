"""The controller's web dashboard, JSON API and Prometheus ``/metrics`` (Starlette on uvicorn).

Pages (one small single-page app shipped in the package, ``static/``; no CDN): ``/`` (jobs: newest
first, state filter, search by id prefix, server-side pages), ``/job/<id>`` (summary, budgets, lost
time, error, child jobs, tasks expanding to their attempts), ``/logs?job=&task=&attempt=`` (follows a
running attempt), ``/workers``, ``/worker/<id>``, ``/endpoints``.

JSON API under ``/api/``, in the shapes of the CLI's ``--json`` (the client's models: snake_case,
plain state names, numbers as numbers): ``/api/jobs`` (paged), ``/api/job?id=``, ``/api/logs``,
``/api/workers``, ``/api/worker?id=``, ``/api/endpoints``, ``/api/actions``, ``/api/shares``,
``/api/queue``.

Trust: every route but ``/healthz`` and the login form needs a credential: ``Authorization:
Bearer <token>`` or the HttpOnly, SameSite=Strict session cookie ``POST /login`` sets (the token
never goes in a URL); a ``Host`` this dashboard does not serve is refused (DNS rebinding). At most
``max_concurrency`` requests are served at once (the rest wait), a request taking longer than
``request_timeout_s`` gets 504, and a connection that has not sent a whole request by then is
closed (no thread or task is held per slow client). Reads go through the controller's chunked
read methods, so no page holds the controller's lock for long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from iris.cluster.addresses import advertise_host, host_port, is_wildcard
from iris.cluster.auth import Principal, Role
from iris.cluster.controller.access import (
    ANONYMOUS_LOCAL,
    may_read_secrets,
    qualify,
    require_owner,
    require_role,
)
from iris.cluster.controller.controller import Controller
from iris.cluster.controller.requests import LogQuery
from iris.cluster.controller.service import (
    amounts_wire,
    endpoint_proto,
    job_proto,
    list_prefix,
    private,
    worker_proto,
)
from iris.cluster.errors import InvalidArgument, IrisError, NotFound
from iris.cluster.files import is_loopback
from iris.cluster.models import EndpointInfo, JobStatus, LogLine, WorkerInfo
from iris.cluster.spec import LIST_FILTERS, parse_list_filters
from iris.cluster.types import JobId, TaskId, parse_task_id
from iris.cluster.validation import check_log_window
from iris.rpc import cluster_pb2

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SESSION_COOKIE = "iris_session"
MAX_SESSIONS_PER_USER = 16
"""Dashboard sessions one principal may hold; a 17th login ends its own oldest."""
MAX_CONCURRENCY = 16
"""Requests served at once; more wait their turn."""
REQUEST_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 8192
CACHE_TTL_S = 1.0
"""An API read is served from a copy up to this old: however many tabs and scripts poll the same
page, the controller builds it at most once a second (reads never crowd out heartbeats)."""
CACHE_ENTRIES = 256
MAX_TASKS_SHOWN = 2000
"""A job page lists at most this many tasks (a 100k-task job's page stays small)."""
PAGES = ("/", "/jobs", "/logs", "/workers", "/endpoints", "/queue", "/share")

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Iris: sign in</title>
<link rel="stylesheet" href="/static/app.css"></head>
<body><header><span class="brand">Iris</span></header><main>
<h1>Sign in</h1><form method="post" action="/login">
<p><label>Token <input type="password" name="token" autocomplete="current-password" size="60"></label>
<button type="submit">Sign in</button></p></form>
<p class="muted">Your token is in <code>STATE_DIR/admin.token</code>, or ask an admin for one
(<code>iris token create --user NAME</code>).</p></main></body></html>
"""


class Dashboard:
    """Serves the dashboard on ``host:port`` (port 0 picks a free one) in a background thread."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 0, *,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S, advertise: str | None = None,
                 max_concurrency: int = MAX_CONCURRENCY) -> None:
        self._controller = controller
        self._request_timeout_s = request_timeout_s
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._sessions: dict[str, str] = {}
        """Session id -> the token it was opened with (checked again on every request, so a revoked
        token ends its sessions)."""
        self._sessions_of: dict[str, deque[str]] = {}
        """Each principal's sessions, oldest first: at most ``MAX_SESSIONS_PER_USER``, so one user's
        logins end only that user's oldest sessions, never another's."""
        self._sessions_lock = threading.Lock()
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._loop_cpu = -1.0
        """The event loop thread's CPU time when it was last charged to the controller's reads."""
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        self._socket.setblocking(False)
        self.port = int(self._socket.getsockname()[1])
        scheme = "https" if tls_cert is not None and tls_key is not None else "http"
        public = advertise_host(host, advertise)
        self.url = f"{scheme}://{host_port(public, self.port)}"
        names = {public} | ({host} if not is_wildcard(host) else set())
        if is_loopback(host):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        self._hosts = {f"{name}:{self.port}" for name in names} | {name for name in names if not is_loopback(name)}
        protocol = type("DeadlineHttpProtocol", (_DeadlineHttpProtocol,), {"deadline_s": request_timeout_s})
        config = uvicorn.Config(
            self.app(), log_level="warning", access_log=False, lifespan="off", http=protocol,
            timeout_keep_alive=5, ssl_certfile=str(tls_cert) if scheme == "https" else None,
            ssl_keyfile=str(tls_key) if scheme == "https" else None, server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    # ------------------------------------------------------------------ the JSON views

    def jobs(self, principal: Principal = ANONYMOUS_LOCAL, *, states: list[str] | None = None, prefix: str = "",
             page_size: int = 0, page_token: str = "", newest_first: bool = True,
             where: dict[str, list[str]] | None = None, user: str = "", all_users: bool = False) -> dict[str, Any]:
        """A page of jobs as ``iris job list --json`` shows them: the caller's own unless ``user`` or
        ``all_users`` (others' without their error text)."""
        codes = []
        for name in states or []:
            key = "JOB_STATE_" + name.strip().upper()
            if key not in cluster_pb2.JobState.keys():
                raise InvalidArgument(f"state: unknown job state {name!r}")
            codes.append(cluster_pb2.JobState.Value(key))
        page = self._controller.queries.list_jobs(states=codes, prefix=list_prefix(principal, prefix, user, all_users),
                                                  page_size=page_size, page_token=page_token,
                                                  newest_first=newest_first, filters=parse_list_filters(where or {}))
        return {"jobs": [JobStatus.from_proto(private(job_proto(j), principal, j.owner)).to_dict() for j in page.jobs],
                "next_page_token": page.next_page_token}

    def job(self, job_id: str, principal: Principal) -> dict[str, Any]:
        job_id = qualify(principal, job_id)
        job, tasks = self._controller.queries.job_status(JobId(job_id), include_tasks=True, task_limit=MAX_TASKS_SHOWN)
        shown = list(tasks or [])
        spec_for = may_read_secrets(principal, job.job_id, job.owner)
        data = JobStatus.from_proto(private(job_proto(job, shown, spec_for=spec_for), principal, job.owner)).to_dict()
        return {"job": data, "tasks_shown": len(shown)}

    def logs(self, principal: Principal, task_id: str, attempt: int | None, offset: int | None, tail: int,
             max_lines: int) -> dict[str, Any]:
        task_id = qualify(principal, task_id)
        try:
            job_id, _ = parse_task_id(task_id)
        except ValueError as e:
            raise InvalidArgument(f"task: {e}") from None
        require_owner(principal, job_id, self._controller.queries.job_owner(job_id), "logs")
        check_log_window(0, max_lines, offset)
        reply = self._controller.fetch_task_logs(LogQuery(TaskId(task_id), attempt, start_offset=offset,
                                                          max_lines=max_lines, tail_lines=max(tail, 0)))
        return {"lines": [LogLine(line.timestamp_ms, line.source, line.data).to_dict() for line in reply.lines],
                "next_offset": reply.next_offset, "attempt_finished": reply.attempt_finished,
                "attempt_id": reply.attempt_id}

    def workers(self) -> dict[str, Any]:
        return {"workers": [WorkerInfo.from_proto(worker_proto(w)).to_dict() for w in self._controller.queries.list_workers()]}

    def worker(self, worker_id: str) -> dict[str, Any]:
        for w in self._controller.queries.list_workers():
            if w.worker_id == worker_id:
                return {"worker": WorkerInfo.from_proto(worker_proto(w)).to_dict()}
        raise NotFound(f"id: no worker {worker_id[:128]!r}")

    def endpoints(self) -> dict[str, Any]:
        return {"endpoints": [EndpointInfo.from_proto(endpoint_proto(e)).to_dict()
                              for e in self._controller.queries.list_endpoints()]}

    def actions(self) -> dict[str, Any]:
        return {"actions": [
            {"timestamp_ms": a.timestamp_ms, "action": a.action, "job_id": a.job_id, "task_id": a.task_id,
             "worker_id": a.worker_id, "details": a.details}
            for a in self._controller.queries.recent_actions(200)
        ]}

    def shares(self) -> dict[str, Any]:
        """``iris share --json``'s teams, and the policy."""
        view = self._controller.queries.shares(self._controller.now_ms())
        teams = []
        for t in view.teams:
            teams.append({
                "team": t.team, "weight": t.weight, "guarantee": amounts_wire(t.guarantee),
                "limit": amounts_wire(t.limit), "running": amounts_wire(t.running), "usage": t.usage,
                "decayed_usage": t.decayed_usage, "standing": t.standing, "own": t.own,
                "under_guarantee": t.under_guarantee, "running_tasks": t.running_tasks,
                "pending_tasks": t.pending_tasks,
                "members": [{"user": m.user, "running": amounts_wire(m.running), "usage": m.usage,
                             "decayed_usage": m.decayed_usage, "standing": m.standing,
                             "running_tasks": m.running_tasks, "pending_tasks": m.pending_tasks} for m in t.members]})
        return {"teams": teams, "source": view.source, "half_life_ms": view.half_life_ms,
                "min_lease_ms": view.min_lease_ms, "max_preemptions_per_minute": view.max_preemptions_per_minute,
                "fleet": amounts_wire(view.fleet), "pack_delay_ms": view.pack_delay_ms,
                "pack_max_wait_ms": view.pack_max_wait_ms, "reserve_after_ms": view.reserve_after_ms}

    def why(self, job_id: str, principal: Principal) -> dict[str, Any]:
        """``iris job why --json``'s data (the job page shows it for a pending job)."""
        job_id = qualify(principal, job_id)
        view = self._controller.queries.why(JobId(job_id), self._controller.now_ms())
        est = view.estimate
        return {"job_id": view.job_id, "position": view.position, "band": view.band, "team": view.team,
                "reasons": [{"code": c, "message": m} for c, m in view.reasons],
                "reservation": None if view.reservation is None else {
                    "start_ms": view.reservation.start_ms, "workers": dict(view.reservation.workers)},
                "waits_behind": view.waits_behind or None,
                "estimate": None if est.start_p50_ms is None else {"start_p50_ms": est.start_p50_ms,
                                                                   "start_p90_ms": est.start_p90_ms,
                                                                   "start_p10_ms": est.start_p10_ms},
                "unknown_reason": est.unknown_reason or None}

    def queue(self, limit: int) -> dict[str, Any]:
        """``iris queue --json``: pending jobs in the order the scheduler will consider them."""
        entries, total = self._controller.queries.queue(self._controller.now_ms(), limit)
        return {"queue": [{"job_id": e.job_id, "band": e.band, "team": e.team, "user": e.user, "position": e.position,
                           "reason": e.reason, "pending_tasks": e.pending_tasks, "pending_since_ms": e.pending_since_ms,
                           "reserved_workers": list(e.reserved_workers),
                           "reservation_start_ms": e.reservation_start_ms}
                          for e in entries], "total": total}

    def metrics(self) -> bytes:
        return generate_latest(self._controller.metrics.registry)

    # ------------------------------------------------------------------ who is asking

    def host_allowed(self, host: str | None) -> bool:
        return host is not None and host in self._hosts

    def principal(self, authorization: str | None, session: str | None) -> Principal:
        """Who is asking (Unauthenticated when nobody valid)."""
        token: str | None = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None and session:
            with self._sessions_lock:
                token = self._sessions.get(session)
        return self._controller.authenticate(token)

    def open_session(self, token: str) -> str:
        principal = self._controller.authenticate(token)  # raises when the token is not valid
        session = secrets.token_urlsafe(32)
        holder = f"{principal.role.value}:{principal.name}"
        with self._sessions_lock:
            mine = self._sessions_of.setdefault(holder, deque())
            while len(mine) >= MAX_SESSIONS_PER_USER:
                self._sessions.pop(mine.popleft(), None)
            mine.append(session)
            self._sessions[session] = token
        return session

    def close_session(self, session: str) -> None:
        with self._sessions_lock:
            if self._sessions.pop(session, None) is None:
                return
            for holder, mine in list(self._sessions_of.items()):
                if session in mine:
                    mine.remove(session)
                    if not mine:
                        del self._sessions_of[holder]
                    break

    # ------------------------------------------------------------------ HTTP

    def app(self) -> Starlette:
        dashboard = self

        reads = dashboard._controller.reads

        async def call(fn: Callable[[], Any]) -> Any:
            """Run a blocking read on a worker thread, at most ``max_concurrency`` at once."""
            return await anyio.to_thread.run_sync(fn, limiter=dashboard._limiter)

        async def read(fn: Callable[[], Any], exclusive: bool = True) -> Any:
            """``call(fn)`` through the controller's read gate: within the reads' share of the CPU and,
            when ``exclusive``, one read at a time (a log, which may come from a worker, is only paced)."""
            def gated() -> Any:
                with reads.admit("dashboard", exclusive=exclusive):
                    return fn()
            return await call(gated)

        async def paced() -> None:
            """Before serving an API request: charge the reads' bucket with the CPU this event loop
            spent since the last request (HTTP parsing, routing, answers), then wait while it is
            empty. Pollers hammering the dashboard are slowed to the reads' share of the CPU."""
            now = time.thread_time()
            if dashboard._loop_cpu >= 0:
                reads.charge(now - dashboard._loop_cpu)
            dashboard._loop_cpu = now
            await reads.pace()

        def who(request: Request) -> Principal:
            principal = dashboard.principal(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE))
            require_role(principal, Role.ADMIN, Role.USER, what="the dashboard")  # people, not tasks or workers
            return principal

        async def cached(key: str, build: Callable[[], Awaitable[Any]]) -> bytes:
            """The JSON of ``build()``, shared by every identical request within ``CACHE_TTL_S``."""
            now = dashboard._controller.clock.monotonic()
            hit = dashboard._cache.get(key)
            if hit is not None and now - hit[0] < CACHE_TTL_S:
                return hit[1]
            pending = dashboard._inflight.get(key)
            if pending is not None:
                return await asyncio.shield(pending)
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            dashboard._inflight[key] = future
            try:
                body = json.dumps(await build(), separators=(",", ":")).encode()
                future.set_result(body)
            except BaseException as e:
                future.set_exception(e)
                future.exception()  # retrieved: waiters re-raise it
                raise
            finally:
                del dashboard._inflight[key]
            if len(dashboard._cache) >= CACHE_ENTRIES:
                dashboard._cache.pop(next(iter(dashboard._cache)))
            dashboard._cache[key] = (dashboard._controller.clock.monotonic(), body)
            return body

        def api(handler: Callable[[Request, Principal], Awaitable[Any]], cache: bool = False
                ) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                refused = _host_refusal(request)
                if refused is not None:
                    return refused
                try:
                    await paced()
                    principal = who(request)
                    if cache:  # after the credential check; keyed per reader below
                        # Per reader: what a page shows depends on whose jobs they are (issue 24).
                        key = f"{principal.role.value}:{principal.name}:{request.url.path}?{request.url.query}"
                        body = await asyncio.wait_for(cached(key, lambda: handler(request, principal)),
                                                      dashboard._request_timeout_s)
                        return Response(body, media_type="application/json")
                    payload = await asyncio.wait_for(handler(request, principal), dashboard._request_timeout_s)
                except IrisError as e:
                    return JSONResponse({"error": str(e)}, _http_status(e))
                except TimeoutError:
                    return JSONResponse({"error": "the request took too long"}, HTTPStatus.GATEWAY_TIMEOUT)
                except Exception as e:
                    logger.exception("dashboard %s failed", request.url.path)
                    return JSONResponse({"error": f"internal error: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)
                if isinstance(payload, Response):
                    return payload
                return JSONResponse(payload)
            return endpoint

        def _host_refusal(request: Request) -> Response | None:
            if dashboard.host_allowed(request.headers.get("host")):
                return None
            return JSONResponse({"error": "Host: not an address this dashboard serves"},
                                HTTPStatus.MISDIRECTED_REQUEST)

        async def page(request: Request) -> Response:
            refused = _host_refusal(request)
            if refused is not None:
                return refused
            try:
                await call(lambda: who(request))
            except IrisError:
                return HTMLResponse(_LOGIN_PAGE, HTTPStatus.UNAUTHORIZED)
            return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

        async def login_form(request: Request) -> Response:
            return _host_refusal(request) or HTMLResponse(_LOGIN_PAGE)

        async def login(request: Request) -> Response:
            refused = _host_refusal(request)
            if refused is not None:
                return refused
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return JSONResponse({"error": f"body: at most {MAX_BODY_BYTES} bytes"}, HTTPStatus.BAD_REQUEST)
            token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
            try:
                session = await call(lambda: dashboard.open_session(token))
            except IrisError:
                return HTMLResponse(_LOGIN_PAGE, HTTPStatus.UNAUTHORIZED)
            response = RedirectResponse("/", HTTPStatus.SEE_OTHER)
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/",
                                secure=request.url.scheme == "https")
            return response

        async def logout(request: Request) -> Response:
            session = request.cookies.get(SESSION_COOKIE)
            if session:
                dashboard.close_session(session)
            response = RedirectResponse("/login", HTTPStatus.SEE_OTHER)
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response

        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def metrics(request: Request, principal: Principal) -> Response:
            return Response(await call(dashboard.metrics), media_type=CONTENT_TYPE_LATEST)

        async def api_jobs(request: Request, principal: Principal) -> Any:
            q = request.query_params
            states = [s for part in q.getlist("state") for s in part.split(",") if s.strip()]
            return await read(lambda: dashboard.jobs(
                principal, states=states, prefix=q.get("prefix", ""), page_size=_int(q, "page_size", 0) or 0,
                page_token=q.get("page_token", ""), newest_first=q.get("newest_first", "1") not in ("0", "false"),
                where=_list_filters(q), user=q.get("user", ""), all_users=q.get("all_users", "") in ("1", "true")))

        async def api_job(request: Request, principal: Principal) -> Any:
            job_id = _required(request.query_params, "id")
            return await read(lambda: dashboard.job(job_id, principal))

        async def api_logs(request: Request, principal: Principal) -> Any:
            q = request.query_params
            task = _required(q, "task", " (JOB/task-INDEX)")
            attempt = _int(q, "attempt", None)
            offset = _int(q, "offset", None)
            return await read(lambda: dashboard.logs(principal, task, attempt, offset, _int(q, "tail", 0) or 0,
                                                     _int(q, "max_lines", 1000) or 1000), exclusive=False)

        async def api_workers(request: Request, principal: Principal) -> Any:
            return await read(dashboard.workers)

        async def api_worker(request: Request, principal: Principal) -> Any:
            worker_id = _required(request.query_params, "id")
            return await read(lambda: dashboard.worker(worker_id))

        async def api_endpoints(request: Request, principal: Principal) -> Any:
            return await read(dashboard.endpoints)

        async def api_actions(request: Request, principal: Principal) -> Any:
            return await read(dashboard.actions)

        async def api_why(request: Request, principal: Principal) -> Any:
            job_id = _required(request.query_params, "id")
            return await read(lambda: dashboard.why(job_id, principal))

        async def api_shares(request: Request, principal: Principal) -> Any:
            return await read(dashboard.shares)

        async def api_queue(request: Request, principal: Principal) -> Any:
            limit = _int(request.query_params, "limit", 1000)
            if limit is None or not 1 <= limit <= 10_000:
                raise InvalidArgument(f"limit: must be between 1 and 10000, got {limit}")
            return await read(lambda: dashboard.queue(limit))

        async def api_missing(request: Request, principal: Principal) -> Any:
            raise NotFound(f"no route {request.url.path}")

        routes = [
            Route("/healthz", healthz),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout),
            Route("/metrics", api(metrics)),
            Route("/api/jobs", api(api_jobs, cache=True)),
            Route("/api/job", api(api_job, cache=True)),
            Route("/api/logs", api(api_logs)),
            Route("/api/workers", api(api_workers, cache=True)),
            Route("/api/worker", api(api_worker, cache=True)),
            Route("/api/endpoints", api(api_endpoints, cache=True)),
            Route("/api/actions", api(api_actions, cache=True)),
            Route("/api/shares", api(api_shares, cache=True)),
            Route("/api/queue", api(api_queue, cache=True)),
            Route("/api/why", api(api_why, cache=True)),
            Route("/api/{rest:path}", api(api_missing)),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            *(Route(path, page) for path in PAGES),
            Route("/job/{job_id:path}", page),
            Route("/worker/{worker_id:path}", page),
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            return _host_refusal(request) or JSONResponse({"error": f"no route {request.url.path}"},
                                                          HTTPStatus.NOT_FOUND)

        return Starlette(routes=routes, exception_handlers={404: not_found})


class _DeadlineHttpProtocol(HttpToolsProtocol):
    """Closes a connection that has not sent a whole request within ``deadline_s`` of connecting,
    or of the end of its previous response on a kept-alive connection (a slow-loris flood holds
    sockets, never threads; one good request first buys it nothing)."""

    deadline_s = REQUEST_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.deadline_s, self._expire)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._deadline.cancel()  # the next request has its own deadline
        self._deadline = self.loop.call_later(self.deadline_s, self._expire)

    def _expire(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete  # no request of this connection in flight
        if idle and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)


def _required(query: Any, name: str, form: str = "") -> str:
    value = query.get(name)
    if not value:
        raise InvalidArgument(f"{name}: query parameter is required{form}")
    return str(value)


def _list_filters(q: Any) -> dict[str, list[str]]:
    """``/api/jobs?label=team=ml``: a filterable job field by its ``iris job list`` flag's name."""
    out: dict[str, list[str]] = {}
    for name, f in LIST_FILTERS.items():
        assert f.list_filter is not None
        values = q.getlist(f.list_filter.flag.lstrip("-"))
        if values:
            out[name] = list(values)
    return out


def _int(query: Any, name: str, default: int | None) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"{name}: expected a whole number, got {value[:32]!r}") from None
    if number < 0:
        raise InvalidArgument(f"{name}: must be >= 0, got {number}")
    if number > MAX_QUERY_NUMBER:
        raise InvalidArgument(f"{name}: at most {MAX_QUERY_NUMBER}, got {value[:32]}")
    return number


MAX_QUERY_NUMBER = 2**31 - 1
"""The largest count or offset a query string may carry (the wire's int32 counts)."""


def _http_status(error: IrisError) -> int:
    return {
        "NOT_FOUND": HTTPStatus.NOT_FOUND,
        "UNAUTHENTICATED": HTTPStatus.UNAUTHORIZED,
        "PERMISSION_DENIED": HTTPStatus.FORBIDDEN,
        "UNAVAILABLE": HTTPStatus.SERVICE_UNAVAILABLE,
        "FAILED_PRECONDITION": HTTPStatus.CONFLICT,
    }.get(error.code, HTTPStatus.BAD_REQUEST)


__all__ = ["Dashboard"]
