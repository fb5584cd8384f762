// Iris dashboard: a small single-page app over the JSON API under /api/ (the shapes of the
// CLI's --json). Pages have URLs: /, /job/<id>, /logs?job=&task=&attempt=, /workers,
// /worker/<id>, /endpoints, /queue, /share. No framework, no CDN: the cluster may have no internet.
"use strict";

const STATES = ["PENDING", "BUILDING", "RUNNING", "SUCCEEDED", "FAILED", "KILLED", "WORKER_FAILED", "UNSCHEDULABLE"];
const PAGE_SIZE = 50;
const app = document.getElementById("app");
let timer = null;
let view = null;

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const state = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;
const jobLink = (id) => `<a href="/job/${encodeURI(id)}" data-nav>${esc(id)}</a>`;
const workerLink = (id) => (id ? `<a href="/worker/${encodeURIComponent(id)}" data-nav>${esc(id)}</a>` : "-");

function ago(ms) {
  if (!ms) return "-";
  const s = (Date.now() - ms) / 1000;
  if (s < 1) return "just now";
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 172800) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}
function when(ms) {
  return ms ? `<span title="${esc(new Date(ms).toISOString())}">${ago(ms)}</span>` : "-";
}
function span(start, end) {
  if (!start) return "-";
  let s = Math.max(0, Math.round(((end || Date.now()) - start) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60); s %= 60;
  if (m < 60) return `${m}m ${s}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}
function seconds(ms) { return !ms ? "0s" : ms < 60000 ? `${(ms / 1000).toFixed(1)}s` : span(1, 1 + ms); }
function size(bytes) {
  if (!bytes) return "0B";
  const units = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 1024]];
  const dec = [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["KB", 1e3]];
  const exact = [...units, ...dec].filter(([, n]) => bytes >= n && (bytes * 100) % n === 0).map(([u, n]) => [bytes / n, u]);
  if (exact.length) { exact.sort((a, b) => a[0] - b[0]); return `${+exact[0][0].toFixed(2)}${exact[0][1]}`; }
  for (const [u, n] of units) if (bytes >= n) return `${(bytes / n).toFixed(1)}${u}`;
  return `${bytes}B`;
}
function exitOf(t) {
  // A KILLED task's code is the signal Iris sent, not the task's answer: show none (as the CLI).
  const finished = ["SUCCEEDED", "FAILED", "WORKER_FAILED"].includes(t.state);
  return finished ? String(t.exit_code) : "-";
}

async function api(path) {
  const r = await fetch(path, {credentials: "same-origin"});
  if (r.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function progress(job) {
  const c = job.counts, n = job.num_tasks || 1;
  const parts = [["SUCCEEDED", c.succeeded], ["RUNNING", c.running], ["PENDING", c.pending], ["FAILED", c.failed],
    ["KILLED", c.killed], ["OTHER", (c.worker_failed || 0) + (c.unschedulable || 0)]];
  const title = parts.filter(([, v]) => v).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(", ");
  return `<div class="bar" title="${esc(title)}">${parts.map(([k, v]) => v ? `<span class="b-${k}" style="width:${(100 * v) / n}%"></span>` : "").join("")}</div>`;
}

// ------------------------------------------------------------------ views

const views = {
  async jobs(params) {
    const filter = params.get("state") || "";
    const prefix = params.get("prefix") || "";
    const everyone = params.get("all_users") === "1";
    const tokens = (params.get("pages") || "").split(",").filter(Boolean);
    const q = new URLSearchParams({page_size: PAGE_SIZE, newest_first: "1"});
    if (everyone) q.set("all_users", "1");
    if (filter) q.set("state", filter);
    if (prefix) q.set("prefix", prefix);
    if (tokens.length) q.set("page_token", tokens[tokens.length - 1]);
    const data = await api(`/api/jobs?${q}`);
    const rows = data.jobs.map((j) => `<tr data-job="${esc(j.job_id)}">
      <td>${jobLink(j.job_id)}</td><td>${state(j.state)}</td><td>${progress(j)}</td>
      <td>${j.counts.succeeded}/${j.num_tasks}</td><td>${esc(j.owner) || "-"}</td><td>${when(j.submitted_at_ms)}</td>
      <td>${span(j.started_at_ms, j.finished_at_ms)}</td>
      <td>${j.error ? `<div class="error">${esc(j.error)}</div>` : esc(j.pending_reason)}</td></tr>`).join("");
    const options = ["", ...STATES].map((s) => `<option value="${s}" ${s === filter ? "selected" : ""}>${s || "all states"}</option>`).join("");
    return `<h1>Jobs</h1>
      <div class="controls">
        <select id="state-filter" aria-label="state">${options}</select>
        <input id="prefix" placeholder="job id prefix" value="${esc(prefix)}" aria-label="job id prefix">
        <button id="search">Search</button>
        <label title="your jobs, or everyone's (others' without their error text)"><input type="checkbox" id="all-users" ${everyone ? "checked" : ""}> all users</label>
        <span class="muted" id="page-number">page ${tokens.length + 1}</span>
        <button id="newer" ${tokens.length ? "" : "disabled"}>← Newer</button>
        <button id="older" ${data.next_page_token ? "" : "disabled"} data-token="${esc(data.next_page_token)}">Older →</button>
      </div>
      <table id="jobs"><thead><tr><th>Job</th><th>State</th><th>Progress</th><th>Done</th><th>Owner</th>
      <th>Submitted</th><th>Duration</th><th>Error / pending reason</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="8" class="muted">${tokens.length ? "No more jobs." : "No jobs."}</td></tr>`}</tbody></table>`;
  },

  bindJobs(params) {
    const go = (changes) => {
      const q = new URLSearchParams(params);
      for (const [k, v] of Object.entries(changes)) { if (v) q.set(k, v); else q.delete(k); }
      navigate(`/?${q}`);
    };
    document.getElementById("search").onclick = () => go({prefix: document.getElementById("prefix").value.trim(), pages: ""});
    document.getElementById("prefix").onkeydown = (e) => { if (e.key === "Enter") document.getElementById("search").click(); };
    document.getElementById("state-filter").onchange = (e) => go({state: e.target.value, pages: ""});
    document.getElementById("all-users").onchange = (e) => go({all_users: e.target.checked ? "1" : "", pages: ""});
    const tokens = (params.get("pages") || "").split(",").filter(Boolean);
    document.getElementById("older").onclick = (e) => go({pages: [...tokens, e.target.dataset.token].join(",")});
    document.getElementById("newer").onclick = () => go({pages: tokens.slice(0, -1).join(",")});
  },

  async job(params, jobId) {
    const data = await api(`/api/job?id=${encodeURIComponent(jobId)}`);
    const j = data.job;
    const children = (await api(`/api/jobs?prefix=${encodeURIComponent(jobId + "/")}&page_size=200`)).jobs
      .filter((c) => c.parent_job_id === jobId);
    const why = j.state === "PENDING" ? await api(`/api/why?id=${encodeURIComponent(jobId)}`) : null;
    const t = j.time || {};
    const expanded = new Set((params.get("open") || "").split(",").filter(Boolean).map(Number));
    const tasks = (j.tasks || []).map((task) => {
      const open = expanded.has(task.task_index);
      const attempts = [...(task.attempts || [])];
      if (!attempts.some((a) => a.attempt_id === task.current_attempt_id) && task.worker_id) {
        attempts.push({attempt_id: task.current_attempt_id, worker_id: task.worker_id, state: task.state,
          exit_code: task.exit_code, error: task.error, started_at_ms: task.started_at_ms,
          finished_at_ms: task.finished_at_ms, charged_to: "", decided_by: "", current: true});
      }
      const detail = open ? `<tr class="attempts" data-attempts="${task.task_index}"><td colspan="9"><table>
        <thead><tr><th>Attempt</th><th>State</th><th>Worker</th><th>Started</th><th>Duration</th><th>Exit</th>
        <th>Charged to</th><th>Decided by</th><th>Error</th><th>Logs</th></tr></thead><tbody>
        ${attempts.map((a) => `<tr data-attempt="${a.attempt_id}"><td>${a.attempt_id}${a.current ? " (current)" : ""}</td>
          <td>${state(a.state)}</td><td>${workerLink(a.worker_id)}</td><td>${when(a.started_at_ms)}</td>
          <td>${span(a.started_at_ms, a.finished_at_ms)}</td><td>${exitOf(a)}</td><td>${esc(a.charged_to) || "-"}</td>
          <td>${esc(a.decided_by) || "-"}</td><td>${a.error ? `<div class="error">${esc(a.error)}</div>` : ""}</td>
          <td><a href="/logs?job=${encodeURIComponent(jobId)}&task=${task.task_index}&attempt=${a.attempt_id}" data-nav>logs</a></td></tr>`).join("")
          || `<tr><td colspan="10" class="muted">No attempt yet.</td></tr>`}
        </tbody></table></td></tr>` : "";
      return `<tr class="clickable task" data-task="${task.task_index}" title="click for attempts">
        <td>${open ? "▾" : "▸"} ${task.task_index}</td><td>${state(task.state)}</td><td>${workerLink(task.worker_id)}</td>
        <td>${task.num_attempts}</td><td>${task.failure_count}/${task.max_retries_failure}</td>
        <td>${task.preemption_count}/${task.max_retries_preemption}</td><td>${exitOf(task)}</td>
        <td>${span(task.started_at_ms, task.finished_at_ms)}</td>
        <td>${task.error ? `<div class="error">${esc(task.error)}</div>` : esc(task.pending_reason)}</td></tr>${detail}`;
    }).join("");
    return `<h1>${esc(j.job_id)} ${state(j.state)}</h1>
      <dl class="grid">
        <dt>Owner</dt><dd>${esc(j.owner) || "-"}</dd><dt>Parent</dt><dd>${j.parent_job_id ? jobLink(j.parent_job_id) : "-"}</dd>
        <dt>Submitted</dt><dd>${when(j.submitted_at_ms)}</dd><dt>Duration</dt><dd>${span(j.started_at_ms, j.finished_at_ms)}</dd>
        <dt>Tasks</dt><dd>${j.num_tasks}: ${j.counts.pending} pending, ${j.counts.running} running, ${j.counts.succeeded} succeeded,
          ${j.counts.failed} failed, ${j.counts.killed} killed</dd>
        <dt>Resources</dt><dd>cpu ${j.resources.cpu}, memory ${+j.resources.memory ? size(+j.resources.memory) : "-"}</dd>
        <dt>Failures</dt><dd>${j.failures_used} used; ${j.max_retries_failure} retries per task, ${j.max_task_failures} tasks may fail</dd>
        <dt>Preemptions</dt><dd>${j.preemptions_used} used; ${j.max_retries_preemption} per task</dd>
        <dt>Time</dt><dd id="job-time">pending ${seconds(1000 * t.pending)}, useful ${seconds(1000 * t.useful)}, lost: failures ${seconds(1000 * t.lost_failure)},
          preemptions ${seconds(1000 * t.lost_preemption)}, gang ${seconds(1000 * t.lost_gang)}</dd>
        <dt>Gang restarts</dt><dd id="job-gang-restarts">${j.gang_restarts}${j.gang_restart_cause ? ` (the last started by ${esc(j.gang_restart_cause)})` : ""}</dd>
      </dl>
      ${j.pending_reason ? `<p><b>Pending:</b> ${esc(j.pending_reason)}</p>` : ""}
      ${why ? `<div id="job-why"><p><b>Queue position</b> ${why.position} (0 = next)${why.reservation ? `; holds a reservation on ${esc(Object.keys(why.reservation.workers).join(", "))}` : ""}${why.waits_behind ? `; waits behind ${jobLink(why.waits_behind)}` : ""}.
        <b>Starts:</b> ${why.estimate ? `between ${esc(new Date(why.estimate.start_p10_ms || why.estimate.start_p50_ms).toISOString())} and ${esc(new Date(why.estimate.start_p90_ms).toISOString())}` : `unknown (${esc(why.unknown_reason)})`}</p>
        <ul>${why.reasons.map((r) => `<li data-code="${esc(r.code)}"><code>${esc(r.code)}</code> ${esc(r.message)}</li>`).join("")}</ul></div>` : ""}
      ${j.error ? `<h2>Error</h2><div class="error" id="job-error">${esc(j.error)}</div>` : ""}
      ${(j.spec_shown || []).length ? `<h2>Spec</h2><dl class="grid" id="job-spec">${j.spec_shown.map(([k, v]) =>
        `<dt>${esc(k)}</dt><dd data-field="${esc(k)}">${esc(v)}</dd>`).join("")}</dl>` : ""}
      ${children.length ? `<h2>Child jobs</h2><ul>${children.map((c) => `<li>${jobLink(c.job_id)} ${state(c.state)}</li>`).join("")}</ul>` : ""}
      <h2>Tasks</h2>
      <table id="tasks"><thead><tr><th>Task</th><th>State</th><th>Worker</th><th>Attempts</th><th>Failures</th>
      <th>Preemptions</th><th>Exit</th><th>Duration</th><th>Error / pending reason</th></tr></thead><tbody>${tasks}</tbody></table>
      ${data.tasks_shown < j.num_tasks ? `<p class="muted">First ${data.tasks_shown} of ${j.num_tasks} tasks.</p>` : ""}`;
  },

  bindJob(params) {
    for (const row of document.querySelectorAll("tr.task")) {
      row.onclick = (e) => {
        if (e.target.closest("a")) return;
        const open = new Set((params.get("open") || "").split(",").filter(Boolean));
        const i = row.dataset.task;
        if (open.has(i)) open.delete(i); else open.add(i);
        const q = new URLSearchParams(params);
        if (open.size) q.set("open", [...open].join(",")); else q.delete("open");
        history.replaceState(null, "", `${location.pathname}?${q}`);
        render();
      };
    }
  },

  async workers() {
    const data = await api("/api/workers");
    const rows = data.workers.map((w) => `<tr data-worker="${esc(w.worker_id)}"><td>${workerLink(w.worker_id)}</td>
      <td>${esc(w.address)}</td><td>${health(w)}</td><td>${w.committed_cpu}/${w.cpu || w.cpu_count}</td>
      <td>${size(w.committed_memory_bytes)}/${size(w.memory_bytes)}</td>
      <td>${w.gpu_count ? `${w.committed_gpus}/${w.gpu_count} ${esc(w.gpu_name)}` : "-"}</td>
      <td>${w.running_tasks.length}</td><td>${when(w.last_heartbeat_ms)}</td></tr>`).join("");
    return `<h1>Workers</h1><table id="workers"><thead><tr><th>Worker</th><th>Address</th><th>Health</th><th>CPU</th>
      <th>Memory</th><th>GPUs</th><th>Tasks</th><th>Last heartbeat</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="8" class="muted">No workers.</td></tr>`}</tbody></table>`;
  },

  async worker(params, workerId) {
    const w = (await api(`/api/worker?id=${encodeURIComponent(workerId)}`)).worker;
    return `<h1>${esc(w.worker_id)} ${health(w)}</h1><dl class="grid">
      <dt>Address</dt><dd>${esc(w.address)}</dd><dt>Host</dt><dd>${esc(w.hostname)}</dd>
      <dt>CPU</dt><dd>${w.committed_cpu} of ${w.cpu || w.cpu_count} committed</dd>
      <dt>Memory</dt><dd>${size(w.committed_memory_bytes)} of ${size(w.memory_bytes)} committed</dd>
      <dt>GPUs</dt><dd>${w.gpu_count ? `${w.committed_gpus} of ${w.gpu_count} ${esc(w.gpu_name)}` : "-"}</dd>
      <dt>Last heartbeat</dt><dd>${when(w.last_heartbeat_ms)}</dd>
      <dt>Registered</dt><dd>${when(w.registered_at_ms)}</dd>
      <dt>Provisioned</dt><dd>${w.platform ? `${esc(w.platform)} ${esc(w.platform_id)} (${esc(w.platform_state)})` : "-"}</dd>
      </dl>${w.quarantine_reason ? `<p><b>Quarantined:</b> ${esc(w.quarantine_reason)}</p>` : ""}
      <h2>Running tasks</h2><ul id="running">${w.running_tasks.map((t) => {
        const job = t.replace(/\/task-\d+$/, "");
        return `<li>${jobLink(job)} ${esc(t.slice(job.length + 1))}</li>`;
      }).join("") || `<li class="muted">None.</li>`}</ul>`;
  },

  async queue() {
    const data = await api("/api/queue");
    const rows = data.queue.map((e) => `<tr><td>${e.position}</td><td>${jobLink(e.job_id)}</td><td>${esc(e.band)}</td>
      <td>${esc(e.team)}</td><td>${esc(e.user)}</td><td>${e.pending_tasks}</td><td>${when(e.pending_since_ms)}</td>
      <td>${esc(e.reason || "-")}${e.reserved_workers.length ? ` <span class="pill good" title="room held for it">reserved: ${esc(e.reserved_workers.join(", "))}${e.reservation_start_ms ? ` from ${esc(new Date(e.reservation_start_ms).toISOString())}` : ""}</span>` : ""}</td></tr>`).join("");
    const more = data.total > data.queue.length ? `<p class="muted">and ${data.total - data.queue.length} more</p>` : "";
    return `<h1>Queue</h1><p class="muted">Pending jobs in the order the scheduler considers them: by priority band,
      then team and user standing (fair share), then submission.</p><table id="queue"><thead><tr><th>#</th><th>Job</th>
      <th>Band</th><th>Team</th><th>User</th><th>Tasks</th><th>Waiting since</th><th>Reason</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="8" class="muted">Nothing is waiting.</td></tr>`}</tbody></table>${more}`;
  },

  async share() {
    const data = await api("/api/shares");
    const amounts = (a, empty) => Object.entries(a).map(([k, v]) => k === "memory" ? `mem ${size(v)}` : `${esc(k)} ${+v.toFixed(3)}`).join(", ") || empty;
    const rows = data.teams.map((t) => `<tr data-team="${esc(t.team)}"><td><b>${esc(t.team)}</b>${t.own ? ` <span class="muted">(own)</span>` : ""}</td>
      <td>${t.weight}</td><td>${amounts(t.guarantee, "-")}</td><td>${amounts(t.limit, "fleet")}</td>
      <td>${amounts(t.running, "-")}</td><td>${(t.usage * 100).toFixed(1)}%</td><td>${t.decayed_usage.toFixed(0)}</td>
      <td>${t.standing.toFixed(3)}${t.under_guarantee ? ` <span class="pill good" title="under its guarantee: served first, may reclaim">under guarantee</span>` : ""}</td>
      <td>${t.running_tasks}</td><td>${t.pending_tasks}</td></tr>` + (t.own ? "" : t.members.map((m) => `<tr class="member"><td>&nbsp;&nbsp;${esc(m.user)}</td>
      <td></td><td></td><td></td><td>${amounts(m.running, "-")}</td><td>${(m.usage * 100).toFixed(1)}%</td>
      <td>${m.decayed_usage.toFixed(0)}</td><td>${m.standing.toFixed(3)}</td><td>${m.running_tasks}</td><td>${m.pending_tasks}</td></tr>`).join(""))).join("");
    return `<h1>Share</h1><p class="muted">Sharing: ${esc(data.source || "built-in default (every user a team of one, equal weights)")};
      usage halves every ${seconds(data.half_life_ms)}; attempts younger than ${seconds(data.min_lease_ms)} are not preempted
      (but by production work); at most ${data.max_preemptions_per_minute} preemptions a minute. Lower standing goes first within a band.
      Wholly free workers go to work that takes them whole first: for ${seconds(data.pack_delay_ms)} across bands, for ${seconds(data.pack_max_wait_ms)} within one.</p>
      <table id="share"><thead><tr><th>Team / user</th><th>Weight</th><th>Guarantee</th><th>Limit</th><th>Running</th>
      <th>Use</th><th>Usage (share-s)</th><th>Standing</th><th>Tasks</th><th>Pending</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="10" class="muted">No teams yet.</td></tr>`}</tbody></table>`;
  },

  async endpoints() {
    const data = await api("/api/endpoints");
    const rows = data.endpoints.map((e) => `<tr><td>${esc(e.name)}</td><td>${esc(e.address)}</td>
      <td>${jobLink(e.job_id)}</td><td>${esc(e.task_id)}</td></tr>`).join("");
    return `<h1>Endpoints</h1><table id="endpoints"><thead><tr><th>Name</th><th>Address</th><th>Job</th><th>Task</th></tr>
      </thead><tbody>${rows || `<tr><td colspan="4" class="muted">No endpoints.</td></tr>`}</tbody></table>`;
  },
};

function health(w) {
  if (!w.healthy) return `<span class="pill bad">unhealthy</span>`;
  if (w.quarantined_until_ms > Date.now()) return `<span class="pill bad" title="${esc(w.quarantine_reason)}">quarantined</span>`;
  if (w.draining) return `<span class="pill warn">draining</span>`;
  return `<span class="pill good">healthy</span>`;
}

// ------------------------------------------------------------------ logs: follows a running attempt

const logs = {
  async render(params) {
    const job = params.get("job"), task = params.get("task") || "0", attempt = params.get("attempt");
    const status = await api(`/api/job?id=${encodeURIComponent(job)}`);
    const t = (status.job.tasks || []).find((x) => String(x.task_index) === task);
    const current = t ? t.current_attempt_id : 0;
    const choices = Array.from({length: current + 1}, (_, i) => i).map((a) =>
      `<option value="${a}" ${String(a) === String(attempt ?? current) ? "selected" : ""}>attempt ${a}</option>`).join("");
    app.innerHTML = `<h1>Logs of ${jobLink(job)} task ${esc(task)}</h1>
      <div class="controls"><select id="attempt" aria-label="attempt">${choices}</select>
      <label><input type="checkbox" id="follow" checked> follow</label>
      <label><input type="checkbox" id="timestamps"> timestamps</label>
      <button id="tail">Jump to tail</button><span class="muted" id="log-state"></span></div>
      <pre class="log" id="log"></pre>`;
    document.getElementById("attempt").onchange = (e) => {
      const q = new URLSearchParams(params); q.set("attempt", e.target.value); navigate(`/logs?${q}`);
    };
    const pre = document.getElementById("log");
    const stamps = document.getElementById("timestamps");
    stamps.onchange = () => pre.classList.toggle("stamped", stamps.checked);
    document.getElementById("tail").onclick = () => { pre.scrollTop = pre.scrollHeight; };
    const taskId = `${job}/task-${task}`;
    const base = `/api/logs?task=${encodeURIComponent(taskId)}${attempt !== null ? `&attempt=${attempt}` : ""}`;
    let offset = null;
    const poll = async () => {
      if (view !== "logs") return;
      const data = await api(offset === null ? `${base}&tail=1000` : `${base}&offset=${offset}`);
      offset = data.next_offset;
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
      const frag = data.lines.map((l) => {
        const ts = l.timestamp_ms ? new Date(l.timestamp_ms).toISOString() : "";
        return `<span class="line ${esc(l.source)}"><span class="ts" ${stamps.checked ? "" : "hidden"}>${ts} </span>${esc(l.data)}</span>\n`;
      }).join("");
      if (frag) pre.insertAdjacentHTML("beforeend", frag);
      for (const el of pre.querySelectorAll(".ts")) el.hidden = !stamps.checked;
      if (document.getElementById("follow").checked && (atBottom || frag)) pre.scrollTop = pre.scrollHeight;
      document.getElementById("log-state").textContent = data.attempt_finished ? "attempt ended" : "live";
      if (!data.attempt_finished) timer = setTimeout(poll, 1000);
    };
    await poll();
  },
};

// ------------------------------------------------------------------ routing

function route() {
  const path = decodeURI(location.pathname);
  const params = new URLSearchParams(location.search);
  if (path === "/" || path === "/jobs") return ["jobs", params, null];
  if (path.startsWith("/job/")) return ["job", params, path.slice(5)];
  if (path === "/logs") return ["logs", params, null];
  if (path === "/workers") return ["workers", params, null];
  if (path.startsWith("/worker/")) return ["worker", params, path.slice(8)];
  if (path === "/endpoints") return ["endpoints", params, null];
  if (path === "/queue") return ["queue", params, null];
  if (path === "/share") return ["share", params, null];
  return ["missing", params, null];
}

async function render() {
  clearTimeout(timer);
  const [name, params, arg] = route();
  view = name;
  for (const a of document.querySelectorAll("header nav a")) a.classList.remove("active");
  const nav = {jobs: "nav-jobs", job: "nav-jobs", logs: "nav-jobs", workers: "nav-workers", worker: "nav-workers", endpoints: "nav-endpoints", queue: "nav-queue", share: "nav-share"}[name];
  if (nav) document.getElementById(nav).classList.add("active");
  try {
    if (name === "logs") { await logs.render(params); return; }
    if (name === "missing") { app.innerHTML = `<h1>Not found</h1><p><a href="/" data-nav>Jobs</a></p>`; return; }
    const typing = document.activeElement && ["INPUT", "SELECT"].includes(document.activeElement.tagName)
      && app.contains(document.activeElement) && app.dataset.view === name;
    if (typing) { timer = setTimeout(render, 2000); return; }  // never refresh under the user's fingers
    const html = await views[name](params, arg);
    if (view !== name) return;
    app.innerHTML = html;
    app.dataset.view = name;
    const bind = views["bind" + name[0].toUpperCase() + name.slice(1)];
    if (bind) bind(params, arg);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    app.innerHTML = `<h1>Error</h1><div class="error">${esc(e.message)}</div>`;
  }
  timer = setTimeout(render, 2000);
}

function navigate(url) {
  history.pushState(null, "", url);
  render();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", render);
render();
