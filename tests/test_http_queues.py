"""Queue control over HTTP against a real ``conveyor serve``: pause and resume, the settings
in ``GET /queues``, the store's cap refusing enqueues with 503, the dashboard's buttons."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from conveyor import Conveyor
from http_server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("http-queues"), "--max-workers", "4")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture
def admin(server: Server) -> Iterator[Conveyor]:
    """Another producer on the server's store (an app with no caps of its own)."""
    app = Conveyor(url=f"sqlite:///{server.db}")
    yield app
    app.close()


def submit(server: Server, name: str, **call: object) -> httpx.Response:
    return server.client.post(f"/jobs/{name}", json=call)


def test_pause_holds_jobs_and_resume_runs_them(server: Server) -> None:
    response = server.client.post("/queues/naps/pause")
    assert response.status_code == 200, response.text
    assert response.json() == {"queue": "naps", "paused": True, "max_queued": None}
    try:
        accepted = submit(server, "nap", args=[0])
        assert accepted.status_code == 202, accepted.text  # enqueues go on
        job_id = accepted.json()["id"]
        queues = server.client.get("/queues").json()["queues"]
        assert queues["naps"]["paused"] is True
        time.sleep(1.5)  # the worker polls often: it would have run the job by now
        assert server.client.get(f"/jobs/{job_id}").json()["state"] == "queued"
    finally:
        response = server.client.post("/queues/naps/resume")
    assert response.status_code == 200, response.text
    assert response.json() == {"queue": "naps", "paused": False, "max_queued": None}
    assert server.wait_job(job_id)["state"] == "succeeded"
    assert server.client.get("/queues").json()["queues"]["naps"]["paused"] is False


def test_a_paused_queue_without_jobs_is_listed(server: Server) -> None:
    assert server.client.post("/queues/empty-one/pause").status_code == 200
    queues = server.client.get("/queues").json()["queues"]
    assert queues["empty-one"]["paused"] is True and queues["empty-one"]["queued"] == 0
    assert server.client.post("/queues/empty-one/resume").status_code == 200
    assert "empty-one" not in server.client.get("/queues").json()["queues"]


def test_pause_needs_the_token(server: Server) -> None:
    response = httpx.post(f"{server.url}/queues/naps/pause")
    assert response.status_code == 401
    assert server.client.get("/queues").json()["queues"].get("naps", {}).get("paused") in (
        None, False)


def test_a_name_too_long_is_refused(server: Server) -> None:
    response = server.client.post(f"/queues/{'q' * 201}/pause")
    assert response.status_code == 400
    assert "at most 200 characters" in response.json()["error"]


def test_pause_and_resume_are_in_the_openapi_document(server: Server) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    for action in ("pause", "resume"):
        operation = paths[f"/queues/{{queue}}/{action}"]["post"]
        assert set(operation["responses"]) >= {"200", "400", "401", "503"}


def test_the_store_cap_holds_over_http(server: Server, admin: Conveyor) -> None:
    """A cap set by another producer refuses the server's enqueues (the server's app has
    no cap on this queue), and shows in GET /queues."""
    admin.set_max_queued("limited", 1)
    try:
        first = submit(server, "add", args=[1], queue="limited")
        assert first.status_code == 202, first.text
        second = submit(server, "add", args=[2], queue="limited")
        assert second.status_code == 503, second.text
        assert second.headers["retry-after"] == "5"
        assert "queue 'limited' is full (1 job waiting)" in second.json()["error"]
        queues = server.client.get("/queues").json()["queues"]
        assert queues["limited"]["max_queued"] == 1 and queues["limited"]["queued"] == 1
    finally:
        admin.set_max_queued("limited", None)
    third = submit(server, "add", args=[3], queue="limited")
    assert third.status_code == 202, third.text
    assert server.client.get("/queues").json()["queues"]["limited"]["max_queued"] is None


# -- the dashboard's buttons ----------------------------------------------------------------------
def dashboard(server: Server) -> httpx.Client:
    """A logged-in dashboard session sending its CSRF token, as the page's script does."""
    client = httpx.Client(base_url=server.url, timeout=20)
    login = client.post("/ui/login", data={"token": server.token or ""})
    assert login.status_code == 303, login.text
    match = re.search(r'data-csrf="([0-9a-f]{64})"', client.get("/").text)
    assert match
    client.headers["X-CSRF-Token"] = match.group(1)
    return client


def test_dashboard_pause_resume_and_cap(server: Server) -> None:
    client = dashboard(server)
    try:
        response = client.post("/ui/api/queues/naps/pause")
        assert response.status_code == 200, response.text
        counts = client.get("/ui/api/counts").json()
        (naps,) = [q for q in counts["queues"] if q["name"] == "naps"]
        assert naps["paused"] is True
        assert client.post("/ui/api/queues/naps/resume").json()["paused"] is False
        response = client.post("/ui/api/queues/naps/cap", params={"max_queued": "7"})
        assert response.status_code == 200, response.text
        assert response.json() == {"queue": "naps", "paused": False, "max_queued": 7}
        assert server.client.get("/queues").json()["queues"]["naps"]["max_queued"] == 7
        response = client.post("/ui/api/queues/naps/cap", params={"max_queued": "0"})
        assert response.status_code == 400
        response = client.post("/ui/api/queues/naps/cap", params={"max_queued": "none"})
        assert response.json()["max_queued"] is None
        # without the CSRF token the action is refused
        del client.headers["X-CSRF-Token"]
        assert client.post("/ui/api/queues/naps/pause").status_code == 403
    finally:
        client.close()
    assert server.client.get("/queues").json()["queues"]["naps"]["paused"] is False


def test_queues_show_the_limits(server: Server) -> None:
    ids = [submit(server, "tenant_nap", kwargs={"tenant": "acme", "seconds": 1.5}).json()["id"]
           for _ in range(3)]
    server.wait_job(ids[0], states=("running",))
    limits = server.client.get("/queues").json()["limits"]
    rows = {(r["name"], r["group"]): r for r in limits}
    assert rows[("tenant_nap", "acme")] == {
        "name": "tenant_nap", "group": "acme", "running": 1, "cap": 1, "ready": 2,
        "throttled": 2, "rate": None}
    assert rows[("tenant_nap", None)]["running"] == 1
    for job_id in ids:
        assert server.wait_job(job_id)["state"] == "succeeded"
