"""The dashboard over HTTP, without a browser: login and cookies, CSRF on every action, the
actions themselves, its data, security headers, static files and mounting.

The browser side (live updates, confirmations, escaping as seen) is tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from conveyor import Conveyor
from conveyor.http import create_app
from conveyor.ids import new_id
from http_server import TOKEN, Server
from polling import wait_until
from redis_server import shared_redis_url

STATIC = Path(__file__).resolve().parent.parent / "src" / "conveyor" / "dashboard" / "static"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("dashboard-http"), "--max-workers", "4",
                 "--queues", "default,naps,doomed,paged,charted,uploads")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


def visitor(server: Server) -> httpx.Client:
    """A client with no token: what a browser has before it logs in."""
    return httpx.Client(base_url=server.url, timeout=20)


@contextmanager
def logged_in(server: Server) -> Iterator[httpx.Client]:
    """A client that logged in on the form, as a browser would."""
    with visitor(server) as client:
        response = client.post("/ui/login", data={"token": TOKEN})
        assert response.status_code == 303, response.text
        yield client


def csrf_of(client: httpx.Client) -> str:
    page = client.get("/")
    assert page.status_code == 200
    match = re.search(r'data-csrf="([0-9a-f]{64})"', page.text)
    assert match, page.text
    return match.group(1)


def submit(server: Server, name: str, **call: Any) -> str:
    response = server.client.post(f"/jobs/{name}", json=call)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_pages_need_a_login(server: Server) -> None:
    with visitor(server) as client:
        for path in ("/", "/ui/workers", "/ui/jobs", "/ui/jobs/06H0JBJQN0WGBH7YM944W2JBV0"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/ui/login"
        for path in ("/ui/api/overview", "/ui/api/workers", "/ui/api/jobs"):
            response = client.get(path)
            assert response.status_code == 401
            assert response.json() == {"error": "log in to the dashboard first"}
        form = client.get("/ui/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        # the static files carry nothing secret and the login page needs its style sheet
        assert client.get("/ui/static/app.css").status_code == 200


def test_login_sets_an_httponly_session_cookie(server: Server) -> None:
    with visitor(server) as client:
        wrong = client.post("/ui/login", data={"token": "guess"})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text
        assert "set-cookie" not in wrong.headers
        right = client.post("/ui/login", data={"token": TOKEN})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert cookie.startswith("conveyor_session=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie  # an HMAC of the token, not the token
        assert client.get("/").status_code == 200
        assert client.get("/ui/api/overview").status_code == 200
        assert client.get("/ui/login").status_code == 303  # logged in already
        # the cookie opens the dashboard, not the JSON API
        assert client.get("/jobs").status_code == 401


def test_a_session_opens_the_api_documentation_read_only(server: Server) -> None:
    """A browser cannot send a bearer header to load /docs: a dashboard login opens the
    page and its spec (Swagger UI then asks for the token to try calls), nothing more."""
    with visitor(server) as client:
        for path in ("/docs", "/openapi.json", "/docs/static/init.js"):
            assert client.get(path).status_code == 401, path
    with logged_in(server) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        assert client.get("/docs/static/init.js").status_code == 200
        spec = client.get("/openapi.json")
        assert spec.status_code == 200 and "/jobs/{job}" in spec.json()["paths"]
        # the API itself still wants the token, reads and writes alike
        assert client.get("/jobs").status_code == 401
        assert client.post("/jobs/add", json={"args": [1, 2]}).status_code == 401
        assert client.post("/openapi.json").status_code == 401
        # a wrong bearer token is refused even with the cookie
        wrong = client.get("/docs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        session = client.cookies["conveyor_session"]
        response = client.post("/ui/logout", headers={"X-CSRF-Token": csrf_of(client)})
        assert response.status_code == 200
    with visitor(server) as replay:  # logged out: the cookie opens no documentation
        replay.cookies.set("conveyor_session", session)
        assert replay.get("/docs").status_code == 401


def test_a_bearer_token_opens_the_dashboard_too(server: Server) -> None:
    assert server.client.get("/ui/api/workers").status_code == 200
    with visitor(server) as client:
        response = client.get("/ui/api/workers", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401


def test_security_headers_and_no_outside_assets(server: Server) -> None:
    with logged_in(server) as client:
        page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text  # no inline script: the policy would refuse it
    for text in (page.text, *(p.read_text() for p in STATIC.iterdir())):
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, urls
    script = (STATIC / "app.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "eval(" not in script


def test_static_files(server: Server) -> None:
    with visitor(server) as client:
        script = client.get("/ui/static/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        for name in ("nope.js", "..%2Fauth.py", "%2E%2E%2F__init__.py"):
            assert client.get(f"/ui/static/{name}").status_code == 404, name


def test_page_values_are_escaped(server: Server) -> None:
    with logged_in(server) as client:
        page = client.get('/ui/jobs/"><img src=x onerror=alert(1)>')
    assert page.status_code == 200
    assert "<img" not in page.text
    assert 'data-job="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in page.text


def test_actions_need_the_csrf_token(server: Server) -> None:
    job_id = submit(server, "add", args=[1, 2], delay=3600)
    with logged_in(server) as client:
        csrf = csrf_of(client)
        path = f"/ui/api/jobs/{job_id}/cancel"
        missing = client.post(path)
        assert missing.status_code == 403 and "CSRF" in missing.json()["error"]
        assert client.post(path, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        foreign = client.post(path, headers={"X-CSRF-Token": csrf,
                                             "Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert server.client.get(f"/jobs/{job_id}").json()["state"] == "scheduled"
        done = client.post(path, headers={"X-CSRF-Token": csrf,
                                          "Origin": server.url})
        assert done.status_code == 200 and done.json()["state"] == "cancelled"
    # even with the bearer token, an action needs the CSRF token
    other = submit(server, "add", args=[1, 2], delay=3600)
    assert server.client.post(f"/ui/api/jobs/{other}/cancel").status_code == 403


def test_retry_cancel_and_delete(server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    dead = submit(server, "fail_first", args=[str(marker)])
    assert server.wait_job(dead)["state"] == "dead"
    waiting = submit(server, "add", args=[1, 2], delay=3600)
    with logged_in(server) as client:
        headers = {"X-CSRF-Token": csrf_of(client)}
        conflict = client.post(f"/ui/api/jobs/{waiting}/retry", headers=headers)
        assert conflict.status_code == 409 and "only dead or cancelled" in conflict.json()["error"]
        retried = client.post(f"/ui/api/jobs/{dead}/retry", headers=headers)
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        info = server.wait_job(dead)
        assert info["state"] == "succeeded" and info["result"] == "second try worked"
        deleted = client.post(f"/ui/api/jobs/{waiting}/delete", headers=headers)
        assert deleted.status_code == 200 and deleted.json() == {"deleted": waiting}
        assert server.client.get(f"/jobs/{waiting}").status_code == 404
        gone = client.post(f"/ui/api/jobs/{waiting}/delete", headers=headers)
        assert gone.status_code == 404


def test_change_a_job_s_priority(server: Server) -> None:
    waiting = submit(server, "add", args=[1, 2], delay=3600)
    with logged_in(server) as client:
        headers = {"X-CSRF-Token": csrf_of(client)}
        path = f"/ui/api/jobs/{waiting}/priority"
        assert client.post(f"{path}?priority=5").status_code == 403  # no CSRF token
        changed = client.post(f"{path}?priority=5", headers=headers)
        assert changed.status_code == 200 and changed.json()["priority"] == 5
        for bad in ("11", "x", ""):
            refused = client.post(f"{path}?priority={bad}", headers=headers)
            assert refused.status_code == 400
            assert "a priority is a whole number from -10 to 10" in refused.json()["error"]
        assert client.post(f"/ui/api/jobs/{waiting}/cancel", headers=headers).status_code == 200
        final = client.post(f"{path}?priority=1", headers=headers)
        assert final.status_code == 409
    assert server.client.get(f"/jobs/{waiting}").json()["priority"] == 5


def test_delete_refuses_a_running_job(server: Server) -> None:
    job_id = submit(server, "nap", args=[3])
    server.wait_job(job_id, states=("running",))
    with logged_in(server) as client:
        response = client.post(f"/ui/api/jobs/{job_id}/delete",
                               headers={"X-CSRF-Token": csrf_of(client)})
    assert response.status_code == 409 and "running" in response.json()["error"]
    assert server.wait_job(job_id)["state"] == "succeeded"


def test_retry_all_dead_of_a_queue(server: Server) -> None:
    ids = [submit(server, "boom", queue="doomed") for _ in range(3)]
    died = {job_id: server.wait_job(job_id)["finished_at"] for job_id in ids}
    assert all(server.client.get(f"/jobs/{i}").json()["state"] == "dead" for i in ids)
    with logged_in(server) as client:
        headers = {"X-CSRF-Token": csrf_of(client)}
        assert client.post("/ui/api/retry-dead", headers=headers).status_code == 400
        response = client.post("/ui/api/retry-dead", params={"queue": "doomed"},
                               headers=headers)
    assert response.status_code == 200
    assert response.json() == {"queue": "doomed", "retried": 3, "skipped": 0}
    for job_id in ids:  # they ran again, and died again
        wait_until(lambda i=job_id: server.wait_job(i)["finished_at"] > died[i],
                   timeout=20, what=f"job {job_id} to run again")


def test_retry_all_dead_skips_uploads_whose_file_is_gone(server: Server) -> None:
    (server.containers / "ghost" / "x").mkdir(parents=True)  # a directory in the way: permanent
    response = server.client.post("/uploads", content=b"x", headers={
        "X-Container-Name": "ghost", "X-File-Path": "/x"})
    job_id = response.json()["id"]
    assert server.wait_job(job_id)["state"] == "dead"
    wait_until(lambda: server.staged() == [], timeout=10, what="the staged file to go")
    with logged_in(server) as client:
        response = client.post("/ui/api/retry-dead", params={"queue": "uploads"},
                               headers={"X-CSRF-Token": csrf_of(client)})
    assert response.json() == {"queue": "uploads", "retried": 0, "skipped": 1}
    assert server.client.get(f"/jobs/{job_id}").json()["state"] == "dead"


def test_job_lists_search_and_pages(server: Server) -> None:
    ids = [submit(server, "add", args=[i, 0], queue="paged") for i in range(7)]
    for job_id in ids:
        server.wait_job(job_id)
    with logged_in(server) as client:
        first = client.get("/ui/api/jobs", params={"queue": "paged", "limit": 4}).json()
        assert [j["id"] for j in first["jobs"]] == ids[::-1][:4]
        assert set(first["jobs"][0]) >= {"id", "name", "queue", "state", "attempts", "error"}
        assert "args" not in first["jobs"][0]  # lists stay small
        second = client.get("/ui/api/jobs", params={"queue": "paged", "limit": 4,
                                                    "cursor": first["next_cursor"]}).json()
        assert [j["id"] for j in second["jobs"]] == ids[::-1][4:]
        assert second["next_cursor"] is None
        by_id = client.get("/ui/api/jobs", params={"q": ids[2].lower()}).json()
        assert [j["id"] for j in by_id["jobs"]] == [ids[2]]
        by_name = client.get("/ui/api/jobs", params={"q": "add", "queue": "paged",
                                                     "state": "succeeded"}).json()
        assert len(by_name["jobs"]) == 7
        nothing = client.get("/ui/api/jobs", params={"q": "no-such-job"}).json()
        assert nothing == {"jobs": [], "next_cursor": None}
        bad = client.get("/ui/api/jobs", params={"state": "melted"})
        assert bad.status_code == 400 and "state must be one of" in bad.json()["error"]
        one = client.get(f"/ui/api/jobs/{ids[3]}").json()
        assert one["args"] == [3, 0] and one["result"] == 3


def test_overview_counts_and_history(server: Server) -> None:
    ids = [submit(server, "add", args=[i, 1], queue="charted") for i in range(5)]
    dead = submit(server, "boom", queue="charted")
    for job_id in [*ids, dead]:
        server.wait_job(job_id)
    with logged_in(server) as client:
        def charted() -> dict[str, Any] | None:
            data: dict[str, Any] = client.get("/ui/api/overview",
                                              params={"queue": "charted"}).json()
            history = data["history"]
            # workers add their counts every few seconds
            return data if sum(history["succeeded"]) == 5 and sum(history["dead"]) == 1 \
                else None

        data = wait_until(charted, timeout=20, what="the minute counts of queue charted")
    history = data["history"]
    assert len(history["minutes"]) == 60 and history["minutes"] == sorted(history["minutes"])
    assert sum(history["started"]) == 6 and sum(history["failed"]) == 0
    rates = [r for r in history["failure_rate"] if r is not None]
    assert rates and all(0 < r <= 100 for r in rates)
    assert history["recent_wait_ms"] is not None and history["recent_wait_ms"] >= 0
    row = next(q for q in data["queues"] if q["name"] == "charted")
    assert row["counts"]["succeeded"] == 5 and row["counts"]["dead"] == 1
    assert data["workers"]["count"] == 1


def test_workers_data(server: Server) -> None:
    data = server.client.get("/ui/api/workers").json()
    [worker] = data["workers"]
    assert server.proc is not None and worker["pid"] == server.proc.pid
    assert worker["max_concurrency"] == 4 and 0 <= worker["heartbeat_age"] < 10
    assert set(worker["queues"]) >= {"default", "naps"}


def test_logout_needs_csrf_and_revokes_the_session(server: Server) -> None:
    with logged_in(server) as client:
        session = client.cookies["conveyor_session"]
        assert client.post("/ui/logout").status_code == 403
        response = client.post("/ui/logout", headers={"X-CSRF-Token": csrf_of(client)})
        assert response.status_code == 200
        assert 'conveyor_session=""' in response.headers["set-cookie"]
        assert client.get("/").status_code == 303
    with visitor(server) as replay:  # the old cookie, sent again, opens nothing
        replay.cookies.set("conveyor_session", session)
        assert replay.get("/ui/api/overview").status_code == 401


def test_sessions_are_signed_expire_and_differ(server: Server) -> None:
    from conveyor.dashboard.auth import SESSION_AGE, _key_of, _mac

    with logged_in(server) as one, logged_in(server) as two:
        first, second = one.cookies["conveyor_session"], two.cookies["conveyor_session"]
        assert first != second
        assert csrf_of(one) != csrf_of(two)  # a CSRF token belongs to its session
    issued, nonce, mac = first.split(".")
    key = _key_of(TOKEN)
    old = f"{int(issued) - SESSION_AGE - 60}.{nonce}"
    forged = {
        "tampered": f"{issued}.{nonce}.{'0' * len(mac)}",
        "expired": f"{old}.{_mac(key, old)}",
        "unsigned": f"{issued}.{nonce}",
        "garbage": "x" * 40,
    }
    for what, value in forged.items():
        with visitor(server) as client:
            client.cookies.set("conveyor_session", value)
            assert client.get("/ui/api/overview").status_code == 401, what
    with visitor(server) as client:
        client.cookies.set("conveyor_session", first)
        assert client.get("/ui/api/overview").status_code == 200


def test_another_origin_named_by_the_server_may_log_in(tmp_path: Path) -> None:
    server = Server(tmp_path, "--allow-origin", "https://jobs.example.com").start()
    try:
        with visitor(server) as client:
            # as behind a proxy that sends its own upstream name as Host
            headers = {"Origin": "https://jobs.example.com", "Host": "backend:8000"}
            login = client.post("/ui/login", data={"token": TOKEN}, headers=headers)
            assert login.status_code == 303, login.text
            other = client.post("/ui/login", data={"token": TOKEN},
                                headers={**headers, "Origin": "https://evil.example.com"})
            assert other.status_code == 403
    finally:
        assert server.stop() == 0, server.output()


def test_without_a_token_there_is_no_login_but_csrf_stays(tmp_path: Path) -> None:
    server = Server(tmp_path, token=None).start()
    try:
        with visitor(server) as client:
            page = client.get("/")
            assert page.status_code == 200 and 'id="logout"' not in page.text
            assert client.get("/ui/login").headers["location"] == "/"
            job_id = submit(server, "add", args=[1, 1], delay=3600)
            assert client.post(f"/ui/api/jobs/{job_id}/cancel").status_code == 403
            csrf = csrf_of(client)
            done = client.post(f"/ui/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
            assert done.status_code == 200 and done.json()["state"] == "cancelled"
            assert client.get("/", headers={"Host": "[::1]"}).status_code == 200
            # DNS rebinding: another site's name resolving to this server
            port = server.port
            for path in ("/", "/ui/api/overview", "/jobs", "/healthz"):
                refused = client.get(path, headers={"Host": f"rebind.example:{port}"})
                assert refused.status_code == 403, path
                assert "loopback host names" in refused.json()["error"]
            # a form on another site posting to the API
            other = submit(server, "add", args=[1, 1], delay=3600)
            cross = client.delete(f"/jobs/{other}", headers={"Origin": "http://evil.example"})
            assert cross.status_code == 403
            assert "another site" in cross.json()["error"]
            forms = client.post("/jobs/add", content=b'{"args": [1, 2]}', headers={
                "Origin": "null", "Content-Type": "application/json"})
            assert forms.status_code == 403
            assert client.delete(f"/jobs/{other}").status_code == 200  # no Origin: a script
    finally:
        assert server.stop() == 0, server.output()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_mounted_under_a_path(tmp_path: Path, store: str) -> None:
    if store == "redis":
        app = Conveyor(url=shared_redis_url(), namespace=f"t{new_id().lower()}")
    else:
        app = Conveyor(url=f"sqlite:///{tmp_path / 'db'}")
    app.job(lambda: None, name="noop")
    [job_id] = [h.id for h in app.enqueue_many("noop", [()])]
    outer = Starlette(routes=[Mount("/conveyor", app=create_app(app, token="tok"))])

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = await client.get("/conveyor/")
            assert first.status_code == 303
            assert first.headers["location"] == "/conveyor/ui/login"
            login = await client.post("/conveyor/ui/login", data={"token": "tok"})
            assert login.status_code == 303 and login.headers["location"] == "/conveyor/"
            assert "Path=/conveyor/" in login.headers["set-cookie"]
            page = await client.get("/conveyor/ui/jobs")
            assert page.status_code == 200
            assert 'src="/conveyor/ui/static/app.js"' in page.text
            assert 'data-prefix="/conveyor"' in page.text
            data = await client.get("/conveyor/ui/api/overview")
            assert data.status_code == 200
            assert data.json()["queues"] == [{"name": "default", "counts": {
                "queued": 1, "scheduled": 0, "running": 0, "succeeded": 0, "dead": 0,
                "cancelled": 0}, "paused": False, "max_queued": None}]
            assert len(data.json()["history"]["minutes"]) == 60
            found = (await client.get("/conveyor/ui/api/jobs", params={"q": "noop"})).json()
            assert [j["id"] for j in found["jobs"]] == [job_id]
        await app.broker.close()

    asyncio.run(scenario())


def test_jobs_known_lists_what_the_workers_published(server: Server) -> None:
    with visitor(server) as client:
        assert client.get("/ui/api/known").status_code == 401
    with logged_in(server) as client:
        # the server's worker published the app's jobs when it started
        listed = wait_until(lambda: client.get("/ui/api/known").json()["jobs"],
                            what="the server's worker to publish its jobs")
        jobs = {j["name"]: j for j in listed}
        assert {"add", "nap", "count", "conveyor.push"} <= set(jobs)
        assert jobs["nap"]["queue"] == "naps"
        nap = [p["name"] for p in jobs["nap"]["parameters"]]
        assert nap == ["seconds", "marker"]  # no JobContext
        assert jobs["add"]["signature"] == "add(a, b=…)"
        assert jobs["count"]["parameters"][0] == {"name": "upload", "kind":
                                                  "POSITIONAL_OR_KEYWORD", "default": False,
                                                  "upload": True}
        assert jobs["add"]["seen_at"].endswith("Z") and jobs["add"]["seen_age"] >= 0
        assert client.get("/ui/workers").status_code == 200


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_jobs_known_carry_hostile_names_as_data(tmp_path: Path, store: str) -> None:
    from conveyor.known import KnownJob, KnownParameter

    if store == "redis":
        app = Conveyor(url=shared_redis_url(), namespace=f"t{new_id().lower()}")
    else:
        app = Conveyor(url=f"sqlite:///{tmp_path / 'db'}")
    hostile = '<img src=x onerror="alert(1)">'
    app.run_sync(app.broker.publish_jobs("w<script>", [
        KnownJob(hostile, "<b>q</b>", "thread", (KnownParameter("x", default=True),))]))
    outer = Starlette(routes=[Mount("/c", app=create_app(app))])

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            response = await client.get("/c/ui/api/known")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/json")
            assert "default-src 'none'" in response.headers["content-security-policy"]
            [job] = response.json()["jobs"]
            assert (job["name"], job["queue"], job["worker_id"]) == (hostile, "<b>q</b>",
                                                                     "w<script>")
            assert job["signature"] == hostile + "(x=…)"
            page = await client.get("/c/ui/workers")
            assert page.status_code == 200 and hostile not in page.text
        await app.broker.close()

    asyncio.run(scenario())
