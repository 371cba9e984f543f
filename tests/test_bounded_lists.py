"""Listings stay small whatever the jobs hold: 60 jobs of 1 MiB arguments each, listed by a
real ``conveyor serve`` process over a real socket, by ``conveyor jobs`` and from Python,
on both stores."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import cli_env
from conveyor.app import Conveyor
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from conveyor.summary import MAX_PAGE, PREVIEW_CHARS
from http_server import Server

#: the jobs stored, their arguments' size, and their unique keys' size (keys are not cut:
#: 60 of them pass the page budget, so pages stop at the budget)
JOBS = 60
ARG_BYTES = 1 << 20
KEY_BYTES = 20_000
#: the budget of one page of GET /jobs (see conveyor.http.services.PAGE_BUDGET)
BUDGET = 1 << 20
#: what one answer may hold past its jobs: the page's own JSON around them
MARGIN = 4096
#: growth of the server's peak memory allowed over 4 concurrent full pages (whole jobs
#: would take several hundred megabytes)
RSS_GROWTH = 100 << 20


def _jobs() -> list[JobRecord]:
    now = time.time()
    return [JobRecord(new_id(), "httpjobs.big", "bulk", JobState.QUEUED,
                      [f"{i:04d}" + "a" * ARG_BYTES], {"n": i}, now, now,
                      unique_key=f"{i:04d}" + "k" * KEY_BYTES) for i in range(JOBS)]


@pytest.fixture
def stored(url: str) -> Iterator[tuple[str, str, list[JobRecord]]]:
    """The store's URL, a namespace of the test's own, and its big jobs, stored."""
    namespace = f"lists{new_id().lower()}"
    jobs = _jobs()
    app = Conveyor(url, namespace=namespace)

    async def store() -> None:
        for start in range(0, JOBS, 10):
            assert await app.broker.enqueue(jobs[start:start + 10], {}) == [None] * 10

    async def remove() -> None:
        for job in jobs:
            await app.broker.delete(job.id)

    app.run_sync(store())
    try:
        yield url, namespace, jobs
    finally:
        app.run_sync(remove())
        app.close()


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def test_lists_are_bounded_and_page_through_every_job(
        stored: tuple[str, str, list[JobRecord]], tmp_path: Path) -> None:
    url, namespace, jobs = stored
    server = Server(tmp_path, "--url", url, "--namespace", namespace).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        assert server.client.get("/jobs", params={"limit": 1}).status_code == 200
        before = _memory(pid)

        def full_page(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, headers=server.client.headers,
                              timeout=60) as client:
                return client.get("/jobs", params={"limit": MAX_PAGE})

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(full_page, range(4)))
        after = _memory(pid)
        print(f"\nserver memory ({url.split(':')[0]}): VmRSS before {before['VmRSS'] >> 20} MiB,"
              f" after {after['VmRSS'] >> 20} MiB, peak {after['VmHWM'] >> 20} MiB, "
              f"answers {[len(a.content) for a in answers]} bytes")
        assert after["VmHWM"] - before["VmRSS"] < RSS_GROWTH

        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert len(answer.content) <= BUDGET + MARGIN
            page = answer.json()
            # the budget stopped the page before its 60 jobs of 20 kB keys
            assert 0 < len(page["jobs"]) < JOBS
            assert page["next_cursor"] == page["jobs"][-1]["id"]
        first = answers[0].json()["jobs"][0]
        assert first["args"] is None and first["kwargs"] == {"n": JOBS - 1}
        assert first["truncated"] == ["args"]
        assert first["previews"]["args"] == f'["{JOBS - 1:04d}{"a" * ARG_BYTES}'[:PREVIEW_CHARS]

        # paging visits every job once, newest first, each page within the budget
        seen: list[str] = []
        params: dict[str, Any] = {"limit": MAX_PAGE}
        while True:
            answer = server.client.get("/jobs", params=params)
            assert answer.status_code == 200, answer.text
            assert len(answer.content) <= BUDGET + MARGIN
            page = answer.json()
            seen += [job["id"] for job in page["jobs"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == [job.id for job in reversed(jobs)]

        # a small page, then the rest
        small = server.client.get("/jobs", params={"limit": 7}).json()
        assert len(small["jobs"]) == 7

        too_many = server.client.get("/jobs", params={"limit": MAX_PAGE + 1})
        assert too_many.status_code == 400
        assert too_many.json() == {"error": f"limit must be a whole number from 1 to {MAX_PAGE}"}

        # the whole job is one GET away
        whole = server.client.get(f"/jobs/{jobs[3].id}")
        assert whole.status_code == 200
        assert whole.json()["args"] == jobs[3].args
        assert whole.json()["unique_key"] == jobs[3].unique_key

        # the dashboard's list: summaries of a few fields, the budget and the cursor
        ui = server.client.get("/ui/api/jobs", params={"limit": MAX_PAGE})
        assert ui.status_code == 200, ui.text
        assert len(ui.content) < 200_000 and len(ui.json()["jobs"]) == JOBS
        assert set(ui.json()["jobs"][0]) >= {"id", "name", "state", "error"}
        assert "args" not in ui.json()["jobs"][0]
    finally:
        server.stop()


def test_python_lists_whole_jobs_or_summaries(
        stored: tuple[str, str, list[JobRecord]]) -> None:
    url, namespace, jobs = stored
    app = Conveyor(url, namespace=namespace)
    try:
        whole = app.run_sync(app.broker.list_jobs(limit=3))
        assert [r.args for r in whole] == [j.args for j in reversed(jobs[-3:])]
        summaries = app.run_sync(app.broker.list_summaries(limit=JOBS))
        assert [s.record.id for s in summaries] == [j.id for j in reversed(jobs)]
        assert all(s.record.args == [] and len(s.previews["args"]) == PREVIEW_CHARS
                   for s in summaries)
        assert sum(len(json.dumps(s.to_dict())) for s in summaries) < JOBS * (KEY_BYTES + 4096)
    finally:
        app.close()


def _cli(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "jobs", "--url", url, "--namespace", namespace,
         *args], capture_output=True, text=True, env=cli_env(), timeout=120)


def test_cli_lists_summaries(stored: tuple[str, str, list[JobRecord]]) -> None:
    url, namespace, jobs = stored
    done = _cli(url, namespace, "--limit", str(MAX_PAGE), "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) < JOBS * (KEY_BYTES + 4096)
    listed = json.loads(done.stdout)
    assert [job["id"] for job in listed] == [j.id for j in reversed(jobs)]
    assert all(job["truncated"] == ["args"] and job["args"] is None for job in listed)

    table = _cli(url, namespace, "--limit", "5")
    assert table.returncode == 0, table.stderr
    assert jobs[-1].id in table.stdout and len(table.stdout) < 10_000

    refused = _cli(url, namespace, "--limit", str(MAX_PAGE + 1))
    assert refused.returncode != 0
    assert f"--limit must be at most {MAX_PAGE}" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_budget_keeps_the_first_job_and_stops_before_the_rest() -> None:
    """A page holds at least one job however big, and never passes the budget past it."""
    from conveyor.http.services import budgeted_page
    from conveyor.summary import summarize

    now = time.time()
    records = [JobRecord(new_id(), "n", "q", JobState.QUEUED, [], {}, now, now,
                         unique_key="k" * size) for size in (5000, 100, 100, 3000)]
    summaries = [summarize(r) for r in records]
    page = budgeted_page(summaries, 3, lambda s: s.to_dict(), budget=1000)
    assert [j["id"] for j in page["jobs"]] == [records[0].id]
    assert page["next_cursor"] == records[0].id
    page = budgeted_page(summaries[1:], 3, lambda s: s.to_dict(), budget=3000)
    assert [j["id"] for j in page["jobs"]] == [r.id for r in records[1:3]]
    assert page["next_cursor"] == records[2].id
    page = budgeted_page(summaries[1:3], 3, lambda s: s.to_dict())
    assert page["next_cursor"] is None and len(page["jobs"]) == 2

