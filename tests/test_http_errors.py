"""Bad input to a real ``conveyor serve``: each gets its 4xx, a JSON error, and leaves nothing
behind (no job, no staged file).

No request in this module is valid, so the server must end with no job and an empty staging
directory after every single one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from http_server import Server, post_uploads_head, read_response

LIMIT = 64 * 1024
ID = "06H0HQQS1DPDNNKJ7KG6WTC19R"  # well formed, never made


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # many wrong tokens are sent below, each expecting its own 401 (throttling of them is
    # tests/test_auth_throttle.py's)
    srv = Server(tmp_path_factory.mktemp("http-errors"), "--max-upload-bytes", str(LIMIT),
                 "--max-wrong-tokens", "0")
    srv.start()
    (srv.containers / "web").mkdir(exist_ok=True)
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture(autouse=True)
def nothing_left(server: Server) -> Iterator[None]:
    yield
    assert server.job_ids() == []
    assert server.staged() == []
    assert [p.name for p in server.containers.iterdir()] == ["web"]  # the empty container
    assert not any((server.containers / "web").iterdir())


def check_error(response: Any, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert list(body) == ["error"] and body["error"]
    for word in words:
        assert word.lower() in body["error"].lower(), body
    return body


def upload_headers(container: str | None = "web", path: str | None = "/data/a.txt",
                   ) -> dict[str, str]:
    headers = {}
    if container is not None:
        headers["X-Container-Name"] = container
    if path is not None:
        headers["X-File-Path"] = path
    return headers


@pytest.mark.parametrize(("container", "path", "words"), [
    (None, "/data/a.txt", ["X-Container-Name"]),
    ("web", None, ["X-File-Path", "required"]),
    ("", "/data/a.txt", ["X-Container-Name"]),
    ("web", "", ["X-File-Path"]),
    ("..", "/data/a.txt", ["X-Container-Name"]),
    ("../x", "/data/a.txt", ["X-Container-Name"]),
    ("a/b", "/data/a.txt", ["X-Container-Name"]),
    ("-web", "/data/a.txt", ["X-Container-Name"]),
    (".web", "/data/a.txt", ["X-Container-Name"]),
    ("we b", "/data/a.txt", ["X-Container-Name"]),
    ("w" * 64, "/data/a.txt", ["X-Container-Name"]),
    ("web", "data/a.txt", ["absolute"]),
    ("web", "../x", ["absolute"]),
    ("web", "/..", ["file"]),
    ("web", "/", ["file"]),
    ("web", "/data/", ["file"]),
    ("web", "/data/..", ["file"]),
    ("web", "/" + "a" * 5000, ["4096"]),
])
def test_upload_headers(server: Server, container: str | None, path: str | None,
                        words: list[str]) -> None:
    response = server.client.post("/uploads", content=b"payload",
                                  headers=upload_headers(container, path))
    check_error(response, 400, *words)


def test_upload_path_not_utf8(server: Server) -> None:
    check_error(server.raw(post_uploads_head(path="/caf\xe9", length=1), b"x"), 400, "UTF-8")


@pytest.mark.parametrize("header", [
    b"X-File-Path: /a\x00b", b"X-Container-Name: w\x00eb", b"X-Host-Path: /x\x00y"])
def test_nul_bytes_in_headers(server: Server, header: bytes) -> None:
    # A large body after the bad header: the answer still reaches the client.
    head = b"POST /uploads HTTP/1.1\r\nHost: t\r\nX-Container-Name: web\r\n" + header + \
        b"\r\nContent-Length: 2000000"
    check_error(server.raw(head, b"x" * 2_000_000), 400, "malformed")


def test_nul_bytes_in_paths(server: Server) -> None:
    check_error(server.raw(b"GET /jobs/%00 HTTP/1.1\r\nHost: t"), 404)
    check_error(server.raw(b"POST /jobs/add%00 HTTP/1.1\r\nHost: t\r\nContent-Length: 0"), 404)
    check_error(server.raw(b"DELETE /jobs/" + ID[:-1].encode() + b"%00 HTTP/1.1\r\nHost: t"),
                404)


@pytest.mark.parametrize("size", [70_000, 3_000_000])
def test_huge_headers(server: Server, size: int) -> None:
    head = post_uploads_head(length=1, extra=[f"X-Padding: {'p' * size}"])
    check_error(server.raw(head, b"x"), 431, "headers")


def test_huge_url(server: Server) -> None:
    check_error(server.raw(b"GET /jobs/" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: t"), 431)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/uploads", {"POST"}),
    ("PUT", "/uploads", {"POST"}),
    ("DELETE", "/uploads", {"POST"}),
    ("PATCH", "/jobs/add", {"GET", "HEAD", "POST", "DELETE"}),
    ("GET", f"/jobs/{ID}/retry", {"POST"}),
    ("POST", "/queues", {"GET", "HEAD"}),
    ("DELETE", "/jobs", {"GET", "HEAD"}),
    ("POST", "/healthz", {"GET", "HEAD"}),
])
def test_wrong_methods(server: Server, method: str, path: str, allow: set[str]) -> None:
    response = server.client.request(method, path, content=b"x")
    check_error(response, 405, method)
    assert set(response.headers["allow"].replace(" ", "").split(",")) == allow


def test_unknown_endpoint(server: Server) -> None:
    check_error(server.client.get("/nothing/here"), 404, "/nothing/here")


def test_declared_length_over_limit_is_refused_before_reading(server: Server) -> None:
    # Only the headers are sent: the answer comes without the body.
    check_error(server.raw(post_uploads_head(length=LIMIT + 1)), 413, str(LIMIT))
    check_error(server.raw(post_uploads_head(length=10**12)), 413)
    head = b"POST /jobs/count HTTP/1.1\r\nHost: t\r\nContent-Length: " + str(LIMIT + 1).encode()
    check_error(server.raw(head), 413)


def test_plain_body_over_limit(server: Server) -> None:
    response = server.client.post("/uploads", content=b"x" * (LIMIT + 1),
                                  headers=upload_headers())
    check_error(response, 413, str(LIMIT))
    response = server.client.post("/jobs/count", content=b"x" * (LIMIT + 1))
    check_error(response, 413)
    response = server.client.post("/jobs/add", content=b" " * (LIMIT + 1),
                                  headers={"Content-Type": "application/json"})
    check_error(response, 413)


def test_chunked_body_over_limit(server: Server) -> None:
    head = post_uploads_head(extra=["Transfer-Encoding: chunked",
                                    f"Authorization: Bearer {server.token}"])
    chunk = b"y" * 8192
    with server.connect() as sock:
        sock.sendall(head + b"\r\n\r\n")
        for _ in range(LIMIT // len(chunk) + 4):  # a little past the limit, then stop
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        check_error(read_response(sock), 413, str(LIMIT))


def test_chunked_body_over_limit_httpx(server: Server) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(12):
            yield b"z" * 8192

    response = server.client.post("/jobs/count", content=body())
    check_error(response, 413)


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/jsonx", None])
def test_wrong_content_types(server: Server, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = server.client.post("/jobs/add", content=b'{"args": [1, 2]}', headers=headers)
    check_error(response, 415, "JSON")


@pytest.mark.parametrize(("body", "words"), [
    (b'{"args": [1,', ["not valid JSON"]),
    (b"", ["missing", "'a'"]),  # an empty body is a call without arguments
    (b"NaN", ["not valid JSON"]),
    (b'{"args": [NaN]}', ["not valid JSON"]),
    (b"\xff\xfe", ["not valid JSON"]),
    (b"[1, 2]", ["object"]),
    (b'"args"', ["object"]),
    (b'{"args": "1, 2"}', ["args"]),
    (b'{"args": {"a": 1}}', ["args"]),
    (b'{"kwargs": [1]}', ["kwargs"]),
    (b'{"delay": -1}', ["delay"]),
    (b'{"delay": "5"}', ["delay"]),
    (b'{"delay": true}', ["delay"]),
    (b'{"delay": 1e999}', ["delay"]),
    (b'{"queue": 5}', ["queue"]),
    (b'{"queue": ""}', ["queue"]),
    (b'{"args": [1], "priority": 11}', ["priority"]),
    (b'{"args": [1], "nice": 5}', ["unknown field"]),
])
def test_invalid_json(server: Server, body: bytes, words: list[str]) -> None:
    response = server.client.post("/jobs/add", content=body,
                                  headers={"Content-Type": "application/json"})
    check_error(response, 400, *words)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/jobs/nope"),
    ("POST", "/jobs/conveyor.nope"),
    ("GET", f"/jobs/{ID}"),
    ("GET", "/jobs/not-an-id"),
    ("DELETE", f"/jobs/{ID}"),
    ("DELETE", "/jobs/not-an-id"),
    ("POST", f"/jobs/{ID}/retry"),
    ("POST", "/jobs/..%2F..%2Fetc/retry"),
])
def test_unknown_jobs(server: Server, method: str, path: str) -> None:
    kwargs: dict[str, Any] = {"json": {}} if method == "POST" else {}
    check_error(server.client.request(method, path, **kwargs), 404)


@pytest.mark.parametrize(("call", "words"), [
    ({}, ["missing", "'a'"]),
    ({"args": [1, 2, 3]}, ["too many"]),
    ({"args": [1], "kwargs": {"c": 1}}, ["no parameter named", "'c'"]),
    ({"args": [1], "kwargs": {"a": 1}}, ["multiple values"]),
])
def test_bad_arguments(server: Server, call: dict[str, Any], words: list[str]) -> None:
    check_error(server.client.post("/jobs/add", json=call), 400, *words)


@pytest.mark.parametrize(("query", "words"), [
    ("zzz=1", ["no parameter named", "zzz"]),
    ("label=a&label=b", ["more than once"]),
    ("upload=1", ["body"]),
    ("times=1&label=x&extra=%5B1%5D", ["extra"]),
])
def test_bad_arguments_of_upload_jobs(server: Server, query: str, words: list[str]) -> None:
    response = server.client.post(f"/jobs/count?{query}", content=b"file contents")
    check_error(response, 400, *words)


@pytest.mark.parametrize(("query", "body"), [
    ("a=1&b=2", None),
    ("a=5", {"args": [2, 3]}),
    ("debug", {"args": [2, 3]}),
])
def test_a_json_job_refuses_a_query_string(server: Server, query: str,
                                           body: dict[str, Any] | None) -> None:
    """Only a job with an Upload parameter reads arguments from the query: any other
    refuses one rather than drop it."""
    response = server.client.post(f"/jobs/add?{query}", json=body)
    check_error(response, 400, "query string", "JSON body")


def test_push_job_takes_files_from_uploads_only(server: Server) -> None:
    response = server.client.post("/jobs/conveyor.push", json={"args": ["web", "/a", None]})
    check_error(response, 400, "/uploads")
    response = server.client.post("/jobs/conveyor.push?path=/a", json={"args": ["web"]})
    check_error(response, 400, "/uploads")  # what to do, rather than "no query string"


@pytest.mark.parametrize("query", [
    {"state": "bogus"}, {"limit": "0"}, {"limit": "abc"}, {"limit": "100000"},
    {"limit": "-1"}, {"limit": "²"}, {"cursor": "not an id"}, {"page": "2"}])
def test_list_parameters(server: Server, query: dict[str, str]) -> None:
    check_error(server.client.get("/jobs", params=query), 400)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer", "Basic czNjcmV0",
                                           "s3cret-token", "Bearer s3cret-token-and-more"])
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/jobs"), ("POST", "/uploads"), ("POST", "/jobs/add"), ("GET", "/queues"),
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/nothing"), ("DELETE", f"/jobs/{ID}")])
def test_missing_or_wrong_token(server: Server, authorization: str | None, method: str,
                                path: str) -> None:
    headers = {"X-Container-Name": "web", "X-File-Path": "/data/x",
               "Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = httpx.request(method, f"{server.url}{path}", headers=headers,
                             content=b'{"args": [1, 2]}')
    check_error(response, 401, "token")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_healthz_needs_no_token(server: Server) -> None:
    response = httpx.get(f"{server.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_server_logged_no_tracebacks(server: Server) -> None:
    assert "Traceback" not in server.output()
