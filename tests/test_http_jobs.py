"""Jobs over HTTP against a real ``conveyor serve``: enqueue, read, list, cancel, retry,
queue counts, health, the OpenAPI document and the docs page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from http_server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("http-jobs"), "--max-workers", "4")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


def submit(server: Server, name: str, **call: Any) -> str:
    response = server.client.post(f"/jobs/{name}", json=call)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "status_url"}
    assert response.headers["location"] == body["status_url"] == f"/jobs/{body['id']}"
    return str(body["id"])


def test_enqueue_and_read(server: Server) -> None:
    job_id = submit(server, "add", args=[2], kwargs={"b": 40})
    info = server.wait_job(job_id)
    assert info["state"] == "succeeded" and info["result"] == 42
    assert info["id"] == job_id and info["name"] == "add" and info["queue"] == "default"
    assert info["args"] == [2] and info["kwargs"] == {"b": 40}
    assert info["attempts"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", info["created_at"])
    assert server.client.head(f"/jobs/{job_id}").status_code == 200


def test_enqueue_without_a_body_and_with_charset(server: Server) -> None:
    response = server.client.post("/jobs/boom")
    assert response.status_code == 202, response.text
    for content_type in ("application/json", "application/json; charset=utf-8"):
        # an empty body is a call without arguments, whether or not it says it is JSON
        response = server.client.post("/jobs/boom", content=b" \r\n",
                                      headers={"Content-Type": content_type})
        assert response.status_code == 202, response.text
        assert server.wait_job(response.json()["id"])["args"] == []
    response = server.client.post("/jobs/add", content=b'{"args": [1, 1]}',
                                  headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 202, response.text
    assert server.wait_job(response.json()["id"])["result"] == 2


def test_delay_and_queue(server: Server) -> None:
    job_id = submit(server, "add", args=[1, 2], delay=3600, queue="elsewhere")
    info = server.client.get(f"/jobs/{job_id}").json()
    assert info["state"] == "scheduled" and info["queue"] == "elsewhere"
    assert info["run_at"] > info["created_at"]
    assert server.client.delete(f"/jobs/{job_id}").status_code == 200


def test_list_with_paging_and_filters(server: Server) -> None:
    ids = [submit(server, "add", args=[i], queue="paging", delay=3600) for i in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"queue": "paging", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = server.client.get("/jobs", params=params).json()
        assert set(page) == {"jobs", "next_cursor"}
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first
    assert pages == 3
    scheduled = server.client.get("/jobs", params={"state": "scheduled", "queue": "paging"})
    assert len(scheduled.json()["jobs"]) == 5
    by_name = server.client.get("/jobs", params={"name": "nap", "queue": "paging"})
    assert by_name.json() == {"jobs": [], "next_cursor": None}
    for job_id in ids:
        server.client.delete(f"/jobs/{job_id}")
    cancelled = server.client.get("/jobs", params={"state": "cancelled", "queue": "paging"})
    assert {job["id"] for job in cancelled.json()["jobs"]} == set(ids)


def test_cancel(server: Server) -> None:
    waiting = submit(server, "add", args=[1], delay=3600)
    response = server.client.delete(f"/jobs/{waiting}")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    again = server.client.delete(f"/jobs/{waiting}")
    assert again.status_code == 409 and "cancelled" in again.json()["error"]

    running = submit(server, "nap", args=[30])
    server.wait_job(running, states=["running"])
    response = server.client.delete(f"/jobs/{running}")
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    assert server.wait_job(running)["state"] == "cancelled"


def test_retry(server: Server) -> None:
    job_id = submit(server, "boom", kwargs={"message": "no luck"})
    info = server.wait_job(job_id)
    assert info["state"] == "dead" and "no luck" in info["error"]
    response = server.client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert response.json()["state"] == "queued"
    again = server.wait_job(job_id)
    assert again["state"] == "dead" and again["attempts"] == 1  # fresh retries

    done = submit(server, "add", args=[1])
    server.wait_job(done)
    response = server.client.post(f"/jobs/{done}/retry")
    assert response.status_code == 409
    assert "succeeded" in response.json()["error"]


def test_queues(server: Server) -> None:
    submit(server, "add", args=[5], queue="counted", delay=3600)
    response = server.client.get("/queues")
    assert response.status_code == 200
    queues = response.json()["queues"]
    assert queues["counted"]["scheduled"] == 1
    assert set(queues["counted"]) == {"queued", "scheduled", "running", "succeeded", "dead",
                                      "cancelled", "paused", "max_queued"}
    assert queues["counted"]["paused"] is False and queues["counted"]["max_queued"] is None
    assert queues["default"]["succeeded"] >= 1


def test_healthz(server: Server) -> None:
    response = server.client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_document(server: Server) -> None:
    response = server.client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    paths = doc["paths"]
    expected = {"/uploads": {"post"}, "/jobs": {"get"}, "/jobs/{job}": {"get", "post", "delete"},
                "/jobs/{id}/retry": {"post"}, "/jobs/{id}/priority": {"post"},
                "/queues": {"get"}, "/healthz": {"get"},
                "/metrics": {"get"}, "/openapi.json": {"get"}, "/jobs-known": {"get"},
                "/schedules": {"get"}, "/schedules/{name}": {"delete"},
                "/schedules/{name}/pause": {"post"}, "/schedules/{name}/resume": {"post"},
                "/schedules/{name}/run": {"post"},
                "/queues/{queue}/pause": {"post"}, "/queues/{queue}/resume": {"post"}}
    assert {path: set(ops) for path, ops in paths.items()} == expected
    operation_ids = []
    for path, operations in paths.items():
        templated = set(re.findall(r"{(\w+)}", path))
        for operation in operations.values():
            operation_ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"]
            for status, answer in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status) and answer["description"]
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, path
            for param in operation.get("parameters", []):
                assert param["in"] in ("path", "query", "header") and "schema" in param
    assert len(operation_ids) == len(set(operation_ids))
    schemas = doc["components"]["schemas"]
    for reference in _refs(doc):
        assert reference.startswith("#/components/schemas/")
        assert reference.rsplit("/", 1)[1] in schemas
    upload = paths["/uploads"]["post"]
    headers = {p["name"]: p for p in upload["parameters"] if p["in"] == "header"}
    assert headers["X-Container-Name"]["required"] and headers["X-File-Path"]["required"]
    assert {"202", "400", "401", "413", "503"} <= set(upload["responses"])
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http",
                                                              "scheme": "bearer"}
    assert paths["/healthz"]["get"]["security"] == []


def test_docs_are_served_locally(server: Server) -> None:
    response = server.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    scripts = re.findall(r'<script[^>]*\ssrc="([^"]+)"', html)
    styles = re.findall(r'<link[^>]*\shref="([^"]+)"', html)
    assert scripts and styles
    for url in scripts + styles:
        assert url.startswith("/docs/static/"), url  # same server, no CDN
        asset = server.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert "/openapi.json" in html
    assert server.client.get("/docs/static/index.html").status_code == 404
    assert server.client.get("/docs/static/..%2F__init__.py").status_code == 404


def test_an_id_chosen_by_the_client_and_a_duplicate(server: Server) -> None:
    job_id = submit(server, "add", args=[1, 1], id="order-7:add")
    assert job_id == "order-7:add"
    again = server.client.post("/jobs/add", json={"args": [5, 5], "id": "order-7:add"})
    assert again.status_code == 409, again.text
    assert "order-7:add" in again.json()["error"]
    assert server.wait_job(job_id)["result"] == 2  # the first is kept
    bad = server.client.post("/jobs/add", json={"args": [1, 1], "id": "no spaces"})
    assert bad.status_code == 400 and "not a valid id" in bad.json()["error"]
