"""How ``conveyor serve`` writes answers: a response's head and body leave in one write, and
what has no body (``HEAD``), waits for one (``Expect: 100-continue``) or is pipelined still
gets its whole answer, in order. Real server, raw sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_server import Server, read_response


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("writes"), "--no-worker", token=None).start()
    try:
        yield srv
    finally:
        srv.stop()


BODY = b'{"args": [2, 3]}'
POST = (b"POST /jobs/add HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


def recv_once(sock: socket.socket) -> bytes:
    """What one read of the socket gives, once something came."""
    return sock.recv(65536)


def test_a_small_answer_comes_whole_in_one_segment(server: Server) -> None:
    with server.connect() as sock:
        for _ in range(20):  # every answer on a kept-alive connection
            sock.sendall(POST)
            data = recv_once(sock)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 202 "), data
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            assert len(body) == length, data  # the body came with its head
            assert b'"status_url":"/jobs/' in body


def test_head_gets_its_head_and_the_connection_goes_on(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")
        assert data.endswith(b"\r\n\r\n")  # no body follows a HEAD answer
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_response(sock)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def test_expect_100_continue_is_answered_before_the_body(server: Server) -> None:
    with server.connect() as sock:
        head = POST.partition(b"\r\n\r\n")[0]
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(65536)
            assert chunk, interim
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        answer = read_response(sock)
        assert answer.status_code == 202, answer.content
        assert answer.json()["status_url"] == f"/jobs/{answer.json()['id']}"


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    requests = [b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", POST,
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", POST,
                b"GET /no-such-path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
    with server.connect() as sock:
        sock.sendall(b"".join(requests))
        data = b""
        while data.count(b"HTTP/1.1 ") < len(requests) or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    statuses = [int(part.split(b" ", 1)[0]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [200, 202, 200, 202, 404]


def test_an_error_closes_after_its_whole_answer(tmp_path: Path) -> None:
    """Connection: close (a 408 for a stalled body) still sends the head with the body."""
    srv = Server(tmp_path, "--no-worker", "--body-timeout", "0.5", token=None).start()
    try:
        with srv.connect() as sock:
            sock.sendall(POST[:-4])  # the body never completes
            answer = read_response(sock)
            assert answer.status_code == 408
            assert answer.headers.get("connection") == "close"
            assert "error" in answer.json()
            assert sock.recv(65536) == b""  # then the server closes
    finally:
        srv.stop()


def test_an_idempotency_key_still_answers_the_first_job(server: Server) -> None:
    """The fast path without a key leaves the keyed one as it was."""
    key = b"Idempotency-Key: writes-1\r\n"
    keyed = POST.replace(b"\r\n\r\n", b"\r\n" + key[:-2] + b"\r\n\r\n", 1)
    with server.connect() as sock:
        sock.sendall(keyed)
        first = read_response(sock)
        sock.sendall(keyed)
        second = read_response(sock)
        sock.sendall(POST)
        third = read_response(sock)
    assert first.status_code == second.status_code == third.status_code == 202
    assert first.json()["id"] == second.json()["id"] != third.json()["id"]

