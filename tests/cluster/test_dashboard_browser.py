"""The dashboard in a real browser (Playwright driving Debian's chromium) against a real local
cluster: sign in, the jobs list, filter and search, a job's page with its error and a task's
attempts, a running task's log following new lines, workers, and paging through 1,000 jobs.

Screenshots of each page go to ``$IRIS_SCREENSHOTS`` when set (``docs/screenshots`` holds the ones
the README shows: ``IRIS_SCREENSHOTS=docs/screenshots uv run pytest tests/cluster/test_dashboard_browser.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iris.client import Entrypoint, IrisClient, JobState, ResourceSpec
from iris.cluster.clock import wait_until
from iris.cluster.local import LocalCluster

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs Debian's chromium)"),
]
playwright = pytest.importorskip("playwright.sync_api")

GANG = ("import os, sys, time\n"
        "if os.environ['IRIS_ATTEMPT_ID'] == '0':\n"
        "    sys.exit('rank 1 broke') if os.environ['IRIS_TASK_INDEX'] == '1' else time.sleep(60)\n")
TICKER = "import time\nfor i in range(100000):\n    print('tick', i, flush=True)\n    time.sleep(0.3)\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, cpu_per_worker=2, worker_timeout=5, heartbeat_interval=0.3, kill_grace=1,
                      base_dir=tmp_path_factory.mktemp("browser")) as c:
        client = IrisClient.remote(c.controller_address, token=c.admin_token)
        try:
            client.submit(Entrypoint.from_command(sys.executable, "-c", GANG), "web-gang", replicas=2,
                          coscheduled=True, max_retries_failure=1).wait(timeout=120)
            client.submit(Entrypoint.from_command(sys.executable, "-c", "print('fine')"), "web-ok", replicas=2
                          ).wait(timeout=120)
            failed = client.submit(Entrypoint.from_command(
                sys.executable, "-c", "import sys; sys.exit('bad config\\nline two of the error')"), "web-broken",
                max_retries_failure=1, labels={"team": "web"})
            failed.wait(timeout=120, raise_on_failure=False)
            client.submit(Entrypoint.from_command(sys.executable, "-u", "-c", TICKER), "web-ticker")
            wait_until(lambda: client.job_status("web-ticker").state is JobState.RUNNING, 60)
        finally:
            client.close()
        yield c


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("IRIS_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(cluster: LocalCluster) -> Iterator[object]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        base = cluster.dashboard_url
        assert base is not None
        page.goto(base + "/")
        # Signed out: the login form. Sign in with the token (it never goes in a URL).
        page.fill("input[name=token]", cluster.admin_token or "")
        page.click("button[type=submit]")
        page.wait_for_selector("#jobs tbody tr")
        yield page
        browser.close()


def test_browser_jobs_list_filter_search_and_a_failed_jobs_error(page: object, cluster: LocalCluster,
                                                                  shots: Path) -> None:
    p = page
    rows = p.locator("#jobs tbody tr")  # type: ignore[attr-defined]
    ids = [r.get_attribute("data-job") for r in rows.all()]
    assert ids[:3] == ["admin:web-ticker", "admin:web-broken", "admin:web-ok"]  # newest first, ids whole
    p.screenshot(path=str(shots / "jobs.png"), full_page=True)  # type: ignore[attr-defined]

    p.select_option("#state-filter", "FAILED")  # type: ignore[attr-defined]
    p.wait_for_function("document.querySelectorAll('#jobs tbody tr[data-job]').length === 1")  # type: ignore[attr-defined]
    assert p.locator("#jobs tbody tr").first.get_attribute("data-job") == "admin:web-broken"  # type: ignore[attr-defined]
    assert "state=FAILED" in p.url  # type: ignore[attr-defined]

    p.select_option("#state-filter", "")  # type: ignore[attr-defined]
    # The filter change re-renders the page (a new search box): wait for it before typing.
    p.wait_for_function("document.querySelectorAll('#jobs tbody tr[data-job]').length > 1")  # type: ignore[attr-defined]
    p.fill("#prefix", "web-o")  # type: ignore[attr-defined]
    p.click("#search")  # type: ignore[attr-defined]
    p.wait_for_function("[...document.querySelectorAll('#jobs tbody tr[data-job]')].map(r => r.dataset.job).join() === 'admin:web-ok'")  # type: ignore[attr-defined]

    p.goto(cluster.dashboard_url + "/?prefix=web-broken")  # type: ignore[attr-defined, operator]
    p.click("text=web-broken")  # type: ignore[attr-defined]
    p.wait_for_selector("#job-error")  # type: ignore[attr-defined]
    error = p.inner_text("#job-error")  # type: ignore[attr-defined]
    assert "bad config\nline two of the error" in error  # line breaks kept
    assert re.search(r"/job/admin:web-broken$", p.url)  # type: ignore[attr-defined]
    # Where its time went, as the API says it (seconds; the row once read fields the API never sent).
    t = api_job(cluster, "web-broken")["time"]
    shown = p.inner_text("#job-time")  # type: ignore[attr-defined]
    for label, key in (("pending", "pending"), ("useful", "useful"), ("failures", "lost_failure")):
        assert f"{label} {_seconds(t[key])}" in shown, (shown, t)
    assert t["lost_failure"] > 0  # two attempts ran and failed: their time shows
    # What the job asked for, every field as its declaration shows it.
    assert p.inner_text("#job-spec dd[data-field='labels']") == "team=web"  # type: ignore[attr-defined]
    assert p.inner_text("#job-spec dd[data-field='max_retries_failure']") == "1"  # type: ignore[attr-defined]
    # Expand the task: both attempts with their errors, charged to the failure budget.
    p.click("tr.task[data-task='0']")  # type: ignore[attr-defined]
    p.wait_for_selector("tr.attempts[data-attempts='0'] tr[data-attempt='1']")  # type: ignore[attr-defined]
    attempts = p.inner_text("tr.attempts[data-attempts='0']")  # type: ignore[attr-defined]
    assert "failure" in attempts and "line two of the error" in attempts
    p.screenshot(path=str(shots / "job.png"), full_page=True)  # type: ignore[attr-defined]


def test_browser_a_gang_s_page_says_which_rank_started_its_restart(page: object, cluster: LocalCluster) -> None:
    p = page
    p.goto(cluster.dashboard_url + "/job/web-gang")  # type: ignore[attr-defined, operator]
    p.wait_for_selector("#job-gang-restarts")  # type: ignore[attr-defined]
    assert p.inner_text("#job-gang-restarts") == "1 (the last started by task 1: rank 1 broke)"  # type: ignore[attr-defined]
    p.click("tr.task[data-task='0']")  # type: ignore[attr-defined]
    p.wait_for_selector("tr.attempts[data-attempts='0'] tr[data-attempt='1']")  # type: ignore[attr-defined]
    assert "gang restart: started by task 1: rank 1 broke" in p.inner_text(  # type: ignore[attr-defined]
        "tr.attempts[data-attempts='0']")


def test_browser_follows_a_running_tasks_log(page: object, cluster: LocalCluster, shots: Path) -> None:
    p = page
    p.goto(cluster.dashboard_url + "/job/web-ticker")  # type: ignore[attr-defined, operator]
    p.click("tr.task[data-task='0']")  # type: ignore[attr-defined]
    p.click("tr.attempts[data-attempts='0'] a:text-is('logs')")  # type: ignore[attr-defined]
    p.wait_for_selector("#log .line")  # type: ignore[attr-defined]
    ticks = [int(m) for m in re.findall(r"tick (\d+)", p.inner_text("#log"))]  # type: ignore[attr-defined]
    newest = max(ticks)
    # A line the task prints after the page opened appears without a reload.
    p.wait_for_function(  # type: ignore[attr-defined]
        "[...document.querySelectorAll('#log .line')].some(l => parseInt(l.textContent.split('tick ')[1]) > "
        f"{newest + 2})", timeout=30_000)
    assert p.inner_text("#log-state") == "live"  # type: ignore[attr-defined]
    p.screenshot(path=str(shots / "logs.png"))  # type: ignore[attr-defined]


def test_browser_workers_and_a_workers_page(page: object, cluster: LocalCluster, shots: Path) -> None:
    p = page
    p.click("#nav-workers")  # type: ignore[attr-defined]
    p.wait_for_selector("#workers tbody tr[data-worker]")  # type: ignore[attr-defined]
    assert p.locator("#workers tbody tr[data-worker]").count() == 2  # type: ignore[attr-defined]
    assert "healthy" in p.inner_text("#workers")  # type: ignore[attr-defined]
    p.screenshot(path=str(shots / "workers.png"), full_page=True)  # type: ignore[attr-defined]
    p.click("#workers tbody tr[data-worker] a")  # type: ignore[attr-defined]
    p.wait_for_selector("#running")  # type: ignore[attr-defined]
    assert "/worker/" in p.url  # type: ignore[attr-defined]
    p.screenshot(path=str(shots / "worker.png"), full_page=True)  # type: ignore[attr-defined]
    p.click("#nav-endpoints")  # type: ignore[attr-defined]
    p.wait_for_selector("#endpoints")  # type: ignore[attr-defined]


def test_browser_pages_through_a_thousand_jobs(page: object, cluster: LocalCluster) -> None:
    client = IrisClient.remote(cluster.controller_address, token=cluster.admin_token)
    try:
        # Jobs no worker can hold: they wait, costing the cluster nothing.
        for i in range(1000):
            client.submit(Entrypoint.from_command("/bin/true"), f"bulk-{i:04d}", resources=ResourceSpec(cpu=64))
    finally:
        client.close()
    p = page
    p.goto(cluster.dashboard_url + "/?prefix=bulk-")  # type: ignore[attr-defined, operator]
    seen: list[str] = []
    for _ in range(25):
        p.wait_for_selector("#jobs tbody tr")  # type: ignore[attr-defined]
        # A page may end short, even empty, when the scan behind it reached the end of the jobs.
        ids = [r.get_attribute("data-job") for r in p.locator("#jobs tbody tr[data-job]").all()]  # type: ignore[attr-defined]
        assert len(ids) <= 50
        seen.extend(i for i in ids if i)
        older = p.locator("#older")  # type: ignore[attr-defined]
        if older.is_disabled():
            break
        page_number = p.inner_text("#page-number")  # type: ignore[attr-defined]
        older.click()
        p.wait_for_function(  # type: ignore[attr-defined]
            f"(document.querySelector('#page-number')?.textContent ?? '{page_number}') !== '{page_number}'")
    assert len(seen) == 1000 and len(set(seen)) == 1000
    assert seen[0] == "admin:bulk-0999" and seen[-1] == "admin:bulk-0000"  # newest first, server-side pages
    p.goto(cluster.dashboard_url + "/?prefix=bulk-0999")  # type: ignore[attr-defined, operator]
    p.wait_for_selector("#jobs tbody tr[data-job]")  # type: ignore[attr-defined]
    assert "no worker has 64 cpus" in p.inner_text("#jobs")  # type: ignore[attr-defined]  # the pending reason


def _seconds(value: float) -> str:
    """The page's formatting of a number of seconds (``seconds()`` in app.js, under a minute)."""
    return "0s" if not value else f"{value:.1f}s"


def api_job(cluster: LocalCluster, job_id: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/job?id={job_id}",
                                     headers={"Authorization": f"Bearer {cluster.admin_token}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        data: dict[str, Any] = json.loads(reply.read())["job"]
    return data


def test_browser_queue_and_share_pages(page: object, cluster: LocalCluster, shots: Path) -> None:
    """Issue 24 item 6: the queue page (pending work in the scheduler's order) and the share page
    (each team with its weight, use and standing)."""
    p = page
    p.click("#nav-share")  # type: ignore[attr-defined]
    p.wait_for_selector("#share tbody tr[data-team='admin']")  # type: ignore[attr-defined]
    row = p.inner_text("#share tbody tr[data-team='admin']")  # type: ignore[attr-defined]
    assert "admin" in row and "(own)" in row  # the ticker runs: a team of one with its use
    assert "built-in default" in p.inner_text("main")  # type: ignore[attr-defined]
    p.screenshot(path=str(shots / "share.png"), full_page=True)  # type: ignore[attr-defined]
    p.click("#nav-queue")  # type: ignore[attr-defined]
    p.wait_for_selector("#queue")  # type: ignore[attr-defined]
    assert "/queue" in p.url  # type: ignore[attr-defined]
    assert "Band" in p.inner_text("#queue thead")  # type: ignore[attr-defined]
    p.screenshot(path=str(shots / "queue.png"), full_page=True)  # type: ignore[attr-defined]
