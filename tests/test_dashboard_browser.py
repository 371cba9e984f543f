"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

A real ``conveyor serve`` runs jobs while the browser logs in, watches counts change without
reloading, opens a dead job, retries it after confirming, and sees it succeed; a job whose
error holds ``<script>`` shows the text and runs nothing. Screenshots of every page are saved
under ``test-artifacts/`` (or ``$CONVEYOR_TEST_ARTIFACTS``). Nothing here reaches the internet:
chromium is started with its background networking off.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from http_server import TOKEN, Server

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CONVEYOR_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
#: milliseconds the browser waits for the page to show something (it refreshes every 2 s)
WAIT = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # every log_in() tries a wrong token first: more than the default limit of the module
    srv = Server(tmp_path_factory.mktemp("dashboard-browser"), "--max-workers", "4",
                 "--queues", "default,naps,shown", "--max-wrong-tokens", "100")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"no chromium at {CHROMIUM}: install Debian's chromium package "
                    "(./scripts/test does) or point CONVEYOR_CHROMIUM at one")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(WAIT)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    # (the wrong token tried on purpose in log_in() is a 401 of the login page)
    tab.on("console", lambda message: message.type == "error" and not message.location[
        "url"].endswith("/ui/login") and errors.append(message.text))
    posts: list[str] = []
    tab.on("request", lambda request: request.method == "POST" and posts.append(request.url))
    tab.posts = posts
    yield tab
    context.close()
    assert not errors, errors  # script errors, refused requests, CSP violations


def log_in(page: Any) -> None:
    page.goto("/")
    assert page.url.endswith("/ui/login")
    page.fill("#token", "wrong")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "Wrong token."
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#queues")
    cookies = page.context.cookies()
    session = next(c for c in cookies if c["name"] == "conveyor_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # the script cannot read the session
    page.posts.clear()


def submit(server: Server, name: str, **call: Any) -> str:
    response = server.client.post(f"/jobs/{name}", json=call)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def shoot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def said_no(page: Any) -> None:
    """The confirmation closed without a yes: no request that changes anything was sent."""
    page.locator("#confirm").wait_for(state="hidden")
    page.wait_for_timeout(500)
    assert page.posts == []


def badge_becomes(page: Any, state: str) -> None:
    """Wait for the job page to show ``state`` (it refreshes by itself)."""
    page.wait_for_function(f"() => document.querySelector('.job-head .badge')"
                           f".textContent === '{state}'")


def cell(page: Any, queue: str, state: str) -> Any:
    return page.locator(f'#queues tr[data-queue="{queue}"] td[data-state="{state}"]')


def test_counts_change_live_while_jobs_run(page: Any, server: Server) -> None:
    log_in(page)
    # 12 jobs of 1.5 s on 4 slots take 4.5 s: the page refreshes (every 2 s) while they run
    ids = [submit(server, "nap", args=[1.5], queue="shown") for _ in range(12)]
    page.locator('#queues tr[data-queue="shown"]').wait_for()  # no reload: it appears
    seen = page.wait_for_function(
        """() => {
            const row = document.querySelector('#queues tr[data-queue="shown"]');
            const n = (s) => Number(row.querySelector(`td[data-state="${s}"]`).textContent);
            return n("queued") + n("running") > 0 && n("succeeded") < 12 &&
                {waiting: n("queued") + n("running"), succeeded: n("succeeded")};
        }""").json_value()
    before = seen["succeeded"]
    page.wait_for_function(
        """() => document.querySelector('#queues tr[data-queue="shown"] td[data-state="succeeded"]')
                 .textContent === "12" """)
    assert before < 12
    assert cell(page, "shown", "queued").inner_text() == "0"
    assert cell(page, "shown", "running").inner_text() == "0"
    for job_id in ids:
        assert server.wait_job(job_id)["state"] == "succeeded"
    # the throughput chart draws the minute's succeeded jobs once the worker reports them
    page.locator("#chart-throughput rect.bar.succeeded").first.wait_for()
    page.locator("#chart-latency circle.dot").first.wait_for()
    assert re.fullmatch(r"\d+(\.\d)? m?s", page.locator("#latency .value").inner_text())
    page.select_option("#chart-queue", "shown")
    page.wait_for_function(
        "() => document.querySelector('#charts figcaption')"
        ".textContent.includes('12 succeeded')")
    shoot(page, "dashboard-overview")


def test_open_a_dead_job_retry_it_and_watch_it_succeed(page: Any, server: Server,
                                                       tmp_path: Path) -> None:
    job_id = submit(server, "fail_first", args=[str(tmp_path / "marker")])
    assert server.wait_job(job_id)["state"] == "dead"
    log_in(page)
    page.click("nav >> text=Jobs")
    page.click("#state-tabs >> text=dead")
    page.wait_for_url("**/ui/jobs?state=dead")
    page.click(f'#jobs tr[data-job="{job_id}"] a')
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    page.wait_for_selector("#error")
    assert page.locator(".job-head .badge").inner_text() == "dead"
    assert "the first try fails on purpose" in page.locator("#error").inner_text()
    assert "Traceback (most recent call last)" in page.locator("#traceback").inner_text()
    shoot(page, "dashboard-dead-job")
    # asking first: saying no changes nothing
    page.click("#retry")
    assert page.locator("#confirm").is_visible()
    assert job_id in page.locator("#confirm-text").inner_text()
    page.click("#confirm-no")
    said_no(page)
    assert server.client.get(f"/jobs/{job_id}").json()["state"] == "dead"
    page.click("#retry")
    page.click("#confirm-yes")
    badge_becomes(page, "succeeded")
    assert '"second try worked"' in page.locator("pre.data").last.inner_text()
    assert server.client.get(f"/jobs/{job_id}").json()["state"] == "succeeded"


def test_an_error_with_a_script_shows_as_text(page: Any, server: Server) -> None:
    job_id = submit(server, "boom", kwargs={"message": XSS})
    assert server.wait_job(job_id)["state"] == "dead"
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page)
    page.goto(f"/ui/jobs?state=dead&q={job_id}")
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    row.wait_for()
    assert XSS[:40] in row.locator(".error-cell").inner_text()
    page.goto(f"/ui/jobs/{job_id}")
    page.wait_for_selector("#error")
    assert page.locator("#error").inner_text() == f"PermanentError: {XSS}"
    assert json.loads(page.locator("pre.data").last.inner_text()) == {"message": XSS}
    assert page.locator("#job script, #job img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert dialogs == []


def test_cancel_and_delete_ask_first(page: Any, server: Server) -> None:
    job_id = submit(server, "add", args=[1, 2], delay=3600)
    log_in(page)
    page.goto(f"/ui/jobs/{job_id}")
    page.wait_for_selector("#cancel")
    assert page.locator(".job-head .badge").inner_text() == "scheduled"
    page.click("#cancel")
    page.keyboard.press("Escape")  # closing the dialog is a no
    said_no(page)
    assert server.client.get(f"/jobs/{job_id}").json()["state"] == "scheduled"
    page.click("#cancel")
    page.click("#confirm-yes")
    badge_becomes(page, "cancelled")
    page.click("#delete")
    page.click("#confirm-yes")
    page.wait_for_url("**/ui/jobs")
    assert server.client.get(f"/jobs/{job_id}").status_code == 404


def test_retry_all_dead_of_a_queue(page: Any, server: Server) -> None:
    ids = [submit(server, "boom", queue="shown", kwargs={"message": f"boom {i}"})
           for i in range(2)]
    for job_id in ids:
        assert server.wait_job(job_id)["state"] == "dead"
    log_in(page)
    button = page.locator('#queues tr[data-queue="shown"] button[data-action="retry-dead"]')
    button.click()
    assert "Retry all 2 dead jobs" in page.locator("#confirm-text").inner_text()
    page.click("#confirm-yes")
    page.wait_for_selector("#flash .flash")
    assert page.locator("#flash").inner_text() == "2 dead jobs of shown are queued again."


def test_workers_and_search(page: Any, server: Server) -> None:
    job_id = submit(server, "add", args=[20, 22])
    server.wait_job(job_id)
    log_in(page)
    page.click("nav >> text=Workers")
    row = page.locator("#workers tbody tr[data-worker]")
    row.wait_for()
    assert server.proc is not None
    assert row.locator("td").nth(1).inner_text() == str(server.proc.pid)
    assert "naps" in row.locator("td").nth(2).inner_text()
    shoot(page, "dashboard-workers")
    page.click("nav >> text=Jobs")
    page.fill("input[name=q]", job_id)
    page.click("#job-filters button[type=submit]")
    page.wait_for_url(f"**/ui/jobs?q={job_id}")
    page.wait_for_function("() => document.querySelectorAll('#jobs tbody tr[data-job]').length"
                           " === 1")
    shoot(page, "dashboard-jobs")
    page.click(f'#jobs tr[data-job="{job_id}"] a')
    page.wait_for_selector("pre.data")
    assert page.locator("pre.data").last.inner_text() == "42"
    shoot(page, "dashboard-job")


def test_a_queue_name_with_markup_shows_as_text(page: Any, server: Server) -> None:
    queue = '<img>&lt;<b>q'  # no whitespace nor '/' in a queue name: markup alone
    submit(server, "add", args=[1, 1], queue=queue, delay=3600)
    log_in(page)
    row = page.locator("#queues tbody tr").filter(has_text="&lt;")
    row.wait_for()
    assert row.locator("td").first.inner_text() == queue
    assert page.locator("#queues img").count() == 0
    page.click(f'#queues td >> text={queue}')
    page.wait_for_selector("#jobs tbody tr[data-job]")
    assert page.locator("#jobs tbody td").nth(2).inner_text() == queue
    assert page.evaluate("window.__xss") is None


def test_pages_of_jobs(page: Any, server: Server) -> None:
    ids = [submit(server, "add", args=[i, 0], queue="paged", delay=3600) for i in range(30)]
    newest = ids[::-1]
    log_in(page)
    page.goto("/ui/jobs?queue=paged")
    rows = page.locator("#jobs tbody tr[data-job]")
    page.wait_for_function("() => document.querySelectorAll('#jobs tr[data-job]').length === 25")
    assert rows.first.get_attribute("data-job") == newest[0]
    page.click("#older")
    page.wait_for_function("() => document.querySelectorAll('#jobs tr[data-job]').length === 5")
    assert rows.first.get_attribute("data-job") == newest[25]
    assert "cursor=" in page.url
    page.click("#newer")
    page.wait_for_function("() => document.querySelectorAll('#jobs tr[data-job]').length === 25")
    assert rows.first.get_attribute("data-job") == newest[0]
    # a page opened from its address: "Newer" goes to the newest page, not out of the site
    page.goto(f"/ui/jobs?queue=paged&cursor={newest[24]}")
    page.wait_for_function("() => document.querySelectorAll('#jobs tr[data-job]').length === 5")
    page.click("#newer")
    page.wait_for_function("() => document.querySelectorAll('#jobs tr[data-job]').length === 25")
    assert "/ui/jobs?queue=paged" in page.url and "cursor" not in page.url
    for job_id in ids:
        assert server.client.delete(f"/jobs/{job_id}").status_code == 200


def test_pause_cap_and_resume_a_queue(page: Any, server: Server) -> None:
    server.wait_job(submit(server, "nap", args=[0]))  # the naps queue is listed
    log_in(page)
    row = page.locator('#queues tr[data-queue="naps"]')
    row.locator('button[data-action="pause"]').click()
    assert "Pause queue “naps”?" in page.locator("#confirm-text").inner_text()
    page.click("#confirm-yes")
    page.wait_for_selector("#flash .flash")
    assert page.locator("#flash").inner_text() == "Queue naps is paused."
    row.locator('td[data-field="paused"] .badge').wait_for()
    assert server.client.get("/queues").json()["queues"]["naps"]["paused"] is True
    page.once("dialog", lambda dialog: dialog.accept("5"))
    row.locator('button[data-action="cap"]').click()
    page.wait_for_function("() => document.querySelector("
                           "'#queues tr[data-queue=\"naps\"] td[data-field=\"max_queued\"]')"
                           ".textContent === '5'")
    assert server.client.get("/queues").json()["queues"]["naps"]["max_queued"] == 5
    shoot(page, "dashboard-queue-paused")
    page.once("dialog", lambda dialog: dialog.accept("none"))
    row.locator('button[data-action="cap"]').click()
    page.wait_for_function("() => document.querySelector("
                           "'#queues tr[data-queue=\"naps\"] td[data-field=\"max_queued\"]')"
                           ".textContent === '\u2013'")
    row.locator('button[data-action="resume"]').click()
    page.click("#confirm-yes")
    row.locator('button[data-action="pause"]').wait_for()
    queues = server.client.get("/queues").json()["queues"]
    assert queues["naps"]["paused"] is False and queues["naps"]["max_queued"] is None


def test_change_a_waiting_job_s_priority(page: Any, server: Server) -> None:
    job_id = submit(server, "nap", args=[0], delay=3600, priority=2)
    log_in(page)
    page.goto(f"/ui/jobs/{job_id}")
    fact = page.locator("dl.facts dt:text-is('priority') + dd")
    assert fact.inner_text() == "2"
    page.once("dialog", lambda dialog: dialog.accept("7"))
    page.click("#priority")
    page.wait_for_function("() => [...document.querySelectorAll('dl.facts dt')].some("
                           "(dt) => dt.textContent === 'priority' && "
                           "dt.nextElementSibling.textContent === '7')")
    assert page.locator("#flash").inner_text() == "The job's priority is 7."
    assert server.client.get(f"/jobs/{job_id}").json()["priority"] == 7
    assert server.client.delete(f"/jobs/{job_id}").status_code == 200


def test_the_limits_of_a_busy_tenant_show(page: Any, server: Server) -> None:
    ids = [submit(server, "tenant_nap", kwargs={"tenant": "zeta", "seconds": 3}, queue="naps")
           for _ in range(3)]
    server.wait_job(ids[0], states=("running",))
    log_in(page)
    row = page.locator('#limits tr[data-name="tenant_nap"][data-group="zeta"]')
    row.wait_for()
    assert row.locator('td[data-field="running"]').inner_text() == "1 / 1"
    assert row.locator('td[data-field="throttled"]').inner_text() in ("1", "2")
    shoot(page, "dashboard-limits")
    for job_id in ids:
        server.wait_job(job_id, timeout=30)
