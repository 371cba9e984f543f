"""``"priority"`` in the body of ``POST /jobs/{name}`` and ``POST /jobs/{id}/priority``,
over real HTTP to a real ``conveyor serve`` (tests/http_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from http_server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("http-priority"), "--no-worker")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


def submit(server: Server, **call: object) -> str:
    response = server.client.post("/jobs/nap", json={"args": [0], **call})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_enqueue_with_a_priority_and_change_it(server: Server) -> None:
    job_id = submit(server, priority=6, delay=3600)
    assert server.client.get(f"/jobs/{job_id}").json()["priority"] == 6
    response = server.client.post(f"/jobs/{job_id}/priority", json={"priority": -2})
    assert response.status_code == 200, response.text
    assert response.json()["priority"] == -2 and response.json()["state"] == "scheduled"
    assert server.client.get(f"/jobs/{job_id}").json()["priority"] == -2
    plain = submit(server, delay=3600)
    assert server.client.get(f"/jobs/{plain}").json()["priority"] == 0


@pytest.mark.parametrize("bad", [11, -11, 1.5, True, "3", None])
def test_a_wrong_priority_is_400(server: Server, bad: object) -> None:
    response = server.client.post("/jobs/nap", json={"args": [0], "priority": bad})
    if bad is None:  # null: the job's own
        assert response.status_code == 202
        return
    assert response.status_code == 400
    assert "priority must be a whole number from -10 to 10" in response.json()["error"]
    job_id = submit(server, delay=3600)
    response = server.client.post(f"/jobs/{job_id}/priority", json={"priority": bad})
    assert response.status_code == 400 and "priority" in response.json()["error"]
    assert server.client.get(f"/jobs/{job_id}").json()["priority"] == 0


def test_change_refusals(server: Server) -> None:
    job_id = submit(server, delay=3600)
    for body, status in (({"priority": 1, "x": 2}, 400), ({}, 400), ([1], 400)):
        response = server.client.post(f"/jobs/{job_id}/priority", json=body)
        assert response.status_code == status, response.text
    response = server.client.post(f"/jobs/{job_id}/priority", content=b"1",
                                  headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert server.client.delete(f"/jobs/{job_id}").status_code == 200
    response = server.client.post(f"/jobs/{job_id}/priority", json={"priority": 1})
    assert response.status_code == 409
    assert "only a waiting job's priority can change" in response.json()["error"]
    response = server.client.post("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/priority",
                                  json={"priority": 1})
    assert response.status_code == 404
