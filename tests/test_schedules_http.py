"""Schedules over HTTP (``/schedules``) and on the dashboard (``/ui/api/schedules``), served
by a real ``conveyor serve`` whose worker fires the schedules of tests/schedjobs.py."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from http_server import Server
from polling import wait_until
from test_dashboard_http import csrf_of, logged_in, visitor


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("schedules-http"), app="schedjobs:app")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


def schedules(server: Server) -> dict[str, dict[str, Any]]:
    response = server.client.get("/schedules")
    assert response.status_code == 200, response.text
    return {s["name"]: s for s in response.json()["schedules"]}


def fired(server: Server) -> dict[str, dict[str, Any]] | None:
    found = schedules(server)
    return found if found.get("often", {}).get("last_job_state") == "succeeded" else None


def test_the_listing_shows_timing_runs_and_the_last_job(server: Server) -> None:
    found = wait_until(lambda: fired(server), 20, "the every-second schedule to fire")
    often, yearly = found["often"], found["yearly"]
    assert (often["timing"], often["job"], often["paused"], often["orphaned"]) == \
        ("every 1s", "noop", False, False)
    assert often["last_job"].startswith("cron:often:")
    assert often["next_run"] > often["last_run"]
    assert (yearly["timing"], yearly["job"], yearly["last_job"]) == \
        ("cron 0 0 1 1 * (UTC)", "yearly", None)
    assert yearly["next_run"].endswith("-01-01T00:00:00Z")


def test_pause_stops_the_ticks_and_resume_starts_them_again(server: Server) -> None:
    wait_until(lambda: fired(server), 20, "the every-second schedule to fire")
    paused = server.client.post("/schedules/often/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    # the answer shows the schedule as the listing does (its last job's state too)
    assert paused.json()["last_job_state"] is not None, paused.json()
    time.sleep(1.5)  # a round that read the schedule before the pause may still fire
    quiet_from = time.time()
    last = schedules(server)["often"]["last_job"]
    time.sleep(2.5)
    assert schedules(server)["often"]["last_job"] == last
    quiet_until = time.time()
    resumed = server.client.post("/schedules/often/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    wait_until(lambda: schedules(server)["often"]["last_job"] != last, 10, "a new tick")
    # the paused ticks did not catch up: no tick job stored between the pause and the resume
    ticks = tick_jobs(server, "often")
    assert min(ticks) < quiet_from and max(ticks) >= quiet_until  # the listing sees them
    assert [tick for tick in ticks if quiet_from < tick < quiet_until] == []


def tick_jobs(server: Server, schedule: str) -> list[int]:
    """The ticks of the stored tick jobs of ``schedule``."""
    prefix = f"cron:{schedule}:"
    ticks: list[int] = []
    params = {"name": "noop", "limit": "200"}
    while True:  # page after page
        response = server.client.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ticks += [int(j["id"].removeprefix(prefix)) for j in page["jobs"]
                  if j["id"].startswith(prefix)]
        if page["next_cursor"] is None:
            return sorted(ticks)
        params["cursor"] = page["next_cursor"]


def test_run_now_enqueues_under_a_new_id(server: Server) -> None:
    response = server.client.post("/schedules/yearly/run")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert not job_id.startswith("cron:")
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert server.wait_job(job_id)["state"] == "succeeded"
    assert server.client.get(f"/jobs/{job_id}").json()["name"] == "yearly"
    assert schedules(server)["yearly"]["last_job"] is None  # the ticks go on as before


def test_unknown_schedules_and_no_token(server: Server) -> None:
    for verb in ("pause", "resume", "run"):
        response = server.client.post(f"/schedules/nope/{verb}")
        assert response.status_code == 404 and "nope" in response.json()["error"]
    assert server.client.delete("/schedules/nope").status_code == 404
    with visitor(server) as client:
        assert client.get("/schedules").status_code == 401
        assert client.post("/schedules/often/pause").status_code == 401


def test_only_an_orphaned_schedule_can_be_deleted(server: Server) -> None:
    wait_until(lambda: "yearly" in schedules(server), 20, "the schedules")
    live = server.client.delete("/schedules/yearly")
    assert live.status_code == 409 and "'yearly' is not orphaned" in live.json()["error"]
    assert "yearly" in schedules(server)
    with sqlite3.connect(server.db) as conn:  # as if no worker registered it for an hour
        conn.execute("INSERT INTO conveyor_schedules (name, record, seen_at) VALUES "
                     "('gone', ?, strftime('%s','now') - 3600)",
                     (json.dumps({"job": "noop", "every": 5}),))
    conn.close()
    assert schedules(server)["gone"]["orphaned"] is True
    assert server.client.delete("/schedules/gone").json() == {"deleted": "gone"}
    assert "gone" not in schedules(server)


def test_a_schedule_whose_definition_cannot_be_read_is_listed_and_not_run(
        server: Server) -> None:
    with sqlite3.connect(server.db) as conn:
        conn.execute("INSERT INTO conveyor_schedules (name, record, last_tick, seen_at) "
                     "VALUES ('odd', X'FFFE7B', 'oops', 0)")
    conn.close()
    odd = schedules(server)["odd"]
    assert (odd["job"], odd["timing"], odd["last_tick"]) == ("?", "?", None)
    assert odd["unreadable"] == ["definition", "last_tick"]
    refused = server.client.post("/schedules/odd/run")
    assert refused.status_code == 409
    assert "its stored definition cannot be read" in refused.json()["error"]
    with logged_in(server) as client:
        assert any(s["name"] == "odd"
                   for s in client.get("/ui/api/schedules").json()["schedules"])
        denied = client.post("/ui/api/schedules/odd/run",
                             headers={"X-CSRF-Token": csrf_of(client), "Origin": server.url})
        assert denied.status_code == 409
    assert server.client.delete("/schedules/odd").json() == {"deleted": "odd"}


def test_the_openapi_document_has_the_schedule_routes(server: Server) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    assert set(paths["/schedules"]) == {"get"}
    for verb in ("pause", "resume", "run"):
        assert set(paths[f"/schedules/{{name}}/{verb}"]) == {"post"}
    assert set(paths["/schedules/{name}"]) == {"delete"}


def test_the_dashboard_lists_and_acts(server: Server) -> None:
    with logged_in(server) as client:
        assert client.get("/ui/schedules").status_code == 200
        listing = client.get("/ui/api/schedules").json()["schedules"]
        assert {s["name"] for s in listing} >= {"often", "yearly"}
        csrf = csrf_of(client)
        path = "/ui/api/schedules/often/pause"
        assert client.post(path).status_code == 403  # no CSRF token
        done = client.post(path, headers={"X-CSRF-Token": csrf, "Origin": server.url})
        assert done.status_code == 200 and done.json()["paused"] is True
        assert schedules(server)["often"]["paused"] is True
        back = client.post("/ui/api/schedules/often/resume",
                           headers={"X-CSRF-Token": csrf, "Origin": server.url})
        assert back.json()["paused"] is False
        run = client.post("/ui/api/schedules/yearly/run",
                          headers={"X-CSRF-Token": csrf, "Origin": server.url})
        assert run.status_code == 200 and run.json()["name"] == "yearly"
        assert server.wait_job(run.json()["id"])["name"] == "yearly"
        live = client.post("/ui/api/schedules/often/delete",
                           headers={"X-CSRF-Token": csrf, "Origin": server.url})
        assert live.status_code == 409 and "not orphaned" in live.json()["error"]
        missing = client.post("/ui/api/schedules/nope/run",
                              headers={"X-CSRF-Token": csrf, "Origin": server.url})
        assert missing.status_code == 404
    with visitor(server) as client:
        assert client.get("/ui/api/schedules").status_code == 401
        assert client.get("/ui/schedules").status_code == 303
