"""``Idempotency-Key`` on ``POST /jobs/{name}`` and ``POST /uploads`` against a real
``conveyor serve`` (API only, so jobs and staged files stay as the requests left them)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_server import Server

UPLOAD = {"X-Container-Name": "web", "X-File-Path": "/data/in.bin"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, "--no-worker")
    srv.start()
    (srv.containers / "web").mkdir()
    yield srv
    assert srv.stop() == 0, srv.output()


def post_job(server: Server, key: str, name: str = "add", **call: Any) -> httpx.Response:
    return server.client.post(f"/jobs/{name}", json=call, headers={"Idempotency-Key": key})


def upload(server: Server, key: str, data: bytes, **headers: str) -> httpx.Response:
    return server.client.post("/uploads", content=data,
                              headers={**UPLOAD, **headers, "Idempotency-Key": key})


def test_the_same_request_again_answers_the_first_job(server: Server) -> None:
    first = post_job(server, "k-1", args=[2], kwargs={"b": 40})
    assert first.status_code == 202, first.text
    again = post_job(server, "k-1", kwargs={"b": 40}, args=[2])
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert server.job_ids() == [first.json()["id"]]
    other = post_job(server, "k-2", args=[2], kwargs={"b": 40})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_a_different_request_with_the_key_is_422(server: Server) -> None:
    first = post_job(server, "k", args=[1])
    assert first.status_code == 202
    for name, call in (("add", {"args": [2]}), ("add", {"args": [1], "delay": 5}),
                       ("add", {"args": [1], "priority": 3}), ("boom", {"args": [1]})):
        response = post_job(server, "k", name, **call)
        assert response.status_code == 422, response.text
        assert "Idempotency-Key" in response.json()["error"]
    assert server.job_ids() == [first.json()["id"]]
    # a priority is part of the request: another one is another request, the same one is not
    ranked = post_job(server, "k-ranked", args=[1], priority=-5)
    assert ranked.status_code == 202, ranked.text
    assert post_job(server, "k-ranked", args=[1], priority=-5).json() == ranked.json()
    other = post_job(server, "k-ranked", args=[1], priority=10)
    assert other.status_code == 422, other.text
    assert server.client.get(f"/jobs/{ranked.json()['id']}").json()["priority"] == -5


def test_a_refused_request_frees_its_key(server: Server) -> None:
    bad = post_job(server, "k", args=["not", "a", "call", "of", "add"])
    assert bad.status_code == 400
    good = post_job(server, "k", args=[1])
    assert good.status_code == 202, good.text
    assert server.job_ids() == [good.json()["id"]]


def test_a_chosen_id_is_kept(server: Server) -> None:
    first = post_job(server, "k", args=[1], id="order-7")
    assert first.status_code == 202 and first.json()["id"] == "order-7"
    assert post_job(server, "k", args=[1], id="order-7").json()["id"] == "order-7"


@pytest.mark.parametrize("key", ["", "x" * 201, "naïve", "tab\there"])
def test_malformed_keys_are_400(server: Server, key: str) -> None:
    response = server.client.post("/jobs/add", json={"args": [1]},
                                  headers={b"Idempotency-Key": key.encode("utf-8")})
    assert response.status_code == 400, response.text
    assert "Idempotency-Key" in response.json()["error"]
    assert server.job_ids() == []


def test_the_longest_key_is_accepted(server: Server) -> None:
    key = "~ " + "k" * 198
    assert post_job(server, key, args=[1]).status_code == 202


def test_an_upload_sent_again_stores_no_second_file(server: Server) -> None:
    data = b"x" * 100_000
    first = upload(server, "up-1", data)
    assert first.status_code == 202, first.text
    again = upload(server, "up-1", data)
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert server.job_ids() == [first.json()["id"]]
    assert server.staged() == [first.json()["id"]]
    different = upload(server, "up-1", data, **{"X-File-Path": "/data/other.bin"})
    assert different.status_code == 422, different.text
    assert upload(server, "up-1", data + b"!").status_code == 422  # another length
    assert server.staged() == [first.json()["id"]]


def test_concurrent_requests_with_one_key_make_one_job(server: Server) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_job(server, "same", args=[3]), range(8)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert server.job_ids() == [answers[0].json()["id"]]


def test_a_key_holds_after_a_restart(server: Server, tmp_path: Path) -> None:
    first = post_job(server, "k", args=[5])
    assert first.status_code == 202
    assert server.stop() == 0, server.output()
    again = Server(tmp_path, "--no-worker").start()
    try:
        answer = post_job(again, "k", args=[5])
        assert answer.status_code == 202 and answer.json() == first.json()
        assert post_job(again, "k", args=[6]).status_code == 422
        assert again.job_ids() == [first.json()["id"]]
    finally:
        assert again.stop() == 0, again.output()
    server.start()  # for the fixture's stop


def test_the_header_is_documented(server: Server) -> None:
    document = server.client.get("/openapi.json").json()
    for path in ("/jobs/{job}", "/uploads"):
        operation = document["paths"][path]["post"]
        names = [p["name"] for p in operation["parameters"]]
        assert "Idempotency-Key" in names
        assert "422" in operation["responses"]
