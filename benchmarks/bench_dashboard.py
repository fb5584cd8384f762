"""The dashboard and the CLI's job list with 25,000 jobs held: render times, and whether reading
them delays heartbeats.

Usage::

    uv run python benchmarks/bench_dashboard.py                 # 25,000 jobs, 10 s per phase
    uv run python benchmarks/bench_dashboard.py --jobs 5000 --seconds 5

A real controller (gRPC server, SQLite store in a temp dir, the dashboard) runs in this process and
holds ``--jobs`` ended jobs. It measures:

1. the jobs page in headless chromium (Playwright, Debian's ``chromium``): from navigation until
   the first page of jobs is on screen, and a job's page, each ``--renders`` times;
2. ``iris job list`` (the newest 50) and ``iris job list --all`` as a user runs them: wall time
   and the CLI process's own CPU time;
3. heartbeat latency from a simulated worker in another process while it is quiet and while
   ``--pollers`` processes read ``/api/jobs`` back to back (a browser tab refreshes every 2 s).

Prints each figure with the load average, and the heartbeat p99 ratio to quiet. Nothing asserts
on time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_reads import heartbeats, hold_ended_jobs, percentile, register_fake_worker  # noqa: E402

from iris.rpc import cluster_pb2  # noqa: E402

C = cluster_pb2.Controller
T = cluster_pb2


def poller(url: str, token: str, stop: Event, out: Any) -> None:
    count = 0
    request = urllib.request.Request(url + "/api/jobs?page_size=50", headers={"Authorization": f"Bearer {token}"})
    while not stop.is_set():
        with urllib.request.urlopen(request, timeout=60) as r:
            r.read()
        count += 1
    out.put(("polls", count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=25_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--renders", type=int, default=10)
    parser.add_argument("--read-burst", type=float, default=None,
                        help="the controller's read_burst_s (default: ControllerConfig's)")
    parser.add_argument("--read-share", type=float, default=None,
                        help="the controller's read_share (default: ControllerConfig's, as `iris controller serve`)")
    args = parser.parse_args()
    from iris.cli.controller import CONTROLLER_SWITCH_INTERVAL_S
    from iris.cluster.auth import Role
    from iris.cluster.controller.controller import Controller, ControllerConfig
    from iris.cluster.controller.dashboard import Dashboard
    from iris.cluster.controller.service import ControllerServer
    from iris.cluster.controller.store import ControllerStore

    sys.setswitchinterval(CONTROLLER_SWITCH_INTERVAL_S)  # as `iris controller serve`
    tmp = Path(tempfile.mkdtemp(prefix="iris-bench-dashboard-"))
    store = ControllerStore.open(tmp / "state")
    # max_finished_jobs=0: hold every job (retention would delete those beyond 10,000 during the run).
    shares = {"read_share": args.read_share} if args.read_share is not None else {}
    if args.read_burst is not None:
        shares["read_burst_s"] = args.read_burst
    controller = Controller(ControllerConfig(worker_timeout_s=3600, max_finished_jobs=0, **shares),
                            state=store.load(), store=store)
    started = time.perf_counter()
    hold_ended_jobs(controller, args.jobs, owner="bench")
    print(f"{args.jobs:,} jobs held in {time.perf_counter() - started:.1f} s", flush=True)
    token = controller.create_token("bench", Role.ADMIN)[1]
    os.environ["BENCH_TOKEN"] = token
    server = ControllerServer(controller, "127.0.0.1", 0)
    server.start()
    dashboard = Dashboard(controller, "127.0.0.1", 0)
    dashboard.start()
    register_fake_worker(server.address)

    # 1. The pages in a real browser.
    chromium = shutil.which("chromium")
    if chromium is None:
        print("no chromium: skipping the browser measurements (apt-get install chromium)")
    else:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {token}"})
            page = context.new_page()
            for name, path, selector in (
                ("jobs page", "/", "#jobs tbody tr[data-job]:nth-child(50)"),
                ("job page", f"/job/job-{args.jobs // 2:06d}", "#tasks tbody tr.task"),
            ):
                times = []
                for _ in range(args.renders):
                    t0 = time.perf_counter()
                    page.goto(dashboard.url + path)
                    page.wait_for_selector(selector)
                    times.append((time.perf_counter() - t0) * 1000)
                print(f"{name:<12} rendered in median {statistics.median(times):6.1f} ms, max {max(times):6.1f} ms "
                      f"({args.renders} loads, {args.jobs:,} jobs held)   load average {os.getloadavg()[0]:.2f}",
                      flush=True)
            browser.close()

    # 2. The CLI.
    env = {**os.environ, "IRIS_TOKEN": token}
    for argv in (["--version"], ["job", "list"], ["job", "list", "--all"]):  # --version: the CLI's start-up alone
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        where = [] if argv == ["--version"] else ["--controller", server.address]
        result = subprocess.run([sys.executable, "-m", "iris.cli.main", *argv, *where],
                                env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"iris {' '.join(argv):<16} {len(result.stdout.splitlines()):>6,} lines  wall {wall:5.2f} s  "
              f"CLI cpu {cpu:5.2f} s   load average {os.getloadavg()[0]:.2f}", flush=True)

    # 3. Heartbeats while the dashboard's API is read.
    ctx = mp.get_context("spawn")

    def phase(name: str, pollers: int) -> list[float]:
        stop = ctx.Event()
        out = ctx.Queue()
        procs = [ctx.Process(target=heartbeats, args=(server.address, stop, out))]
        procs += [ctx.Process(target=poller, args=(dashboard.url, token, stop, out)) for _ in range(pollers)]
        for proc in procs:
            proc.start()
        time.sleep(args.seconds)  # a benchmark's measuring window, not synchronisation
        stop.set()
        results = [out.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        ms = [x * 1000 for x in next(r for r in results if isinstance(r, list))]
        polls = sum(r[1] for r in results if not isinstance(r, list))
        print(f"{name:<28} heartbeats {len(ms):>6,}  p50 {statistics.median(ms):7.2f} ms  "
              f"p99 {percentile(ms, 0.99):8.2f} ms  /api/jobs reads {polls:>6,}   load average {os.getloadavg()[0]:.2f}",
              flush=True)
        return ms

    quiet = phase("quiet", 0)
    busy = phase(f"{args.pollers} /api/jobs pollers", args.pollers)
    print(f"heartbeat p99 while the dashboard is read / quiet: {percentile(busy, 0.99) / percentile(quiet, 0.99):.1f}x")
    dashboard.stop()
    server.stop(grace=0)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
