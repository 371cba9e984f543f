"""Slow and hostile clients against a real ``conveyor serve``, over raw sockets: header, body
and keep-alive timeouts, the header size limit and the memory held for unfinished headers,
the cap on open connections, and garbage pipelined after a complete request.

The servers run with short limits (one or two seconds) so the tests are quick; figures (file
descriptors, resident memory) are read from the server process in /proc.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_server import TOKEN, Response, Server, post_uploads_head, read_response, server_env
from polling import wait_until

SHORT = ("--header-timeout", "1", "--body-timeout", "1", "--keepalive-timeout", "1",
         "--max-header-bytes", "4096")
AUTH = f"Authorization: Bearer {TOKEN}".encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("slow-clients"), *SHORT).start()
    (srv.containers / "web").mkdir(exist_ok=True)
    yield srv
    assert srv.stop() == 0, srv.output()


def check_error(response: Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.content)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    message = response.json()["error"]
    for word in words:
        assert word in message, message


def closed(sock: socket.socket, within: float = 10) -> bool:
    """Whether the server closes ``sock`` (reading and dropping what comes) in time."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def trickle(sock: socket.socket, data: bytes, pause: float) -> tuple[int, Response | None]:
    """Send ``data`` a byte at a time until the server answers: (bytes sent, answer)."""
    for sent, byte in enumerate(data):
        readable, _, _ = select.select([sock], [], [], pause)
        if readable:
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return sent, None  # closed without an answer
            except ConnectionResetError:
                return sent, None
            return sent, read_response(sock)
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent, None
    return len(data), None


def all_responses(sock: socket.socket) -> list[Response]:
    """Every answer the server sends on ``sock`` until it closes it (with Content-Length)."""
    sock.settimeout(20)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (h.partition(":") for h in lines[1:])}
        length = int(headers["content-length"])
        answers.append(Response(int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return answers


def staged_partials(server: Server) -> list[str]:
    return [name for name in server.staged() if name.endswith(".part")]


# -- header timeout ---------------------------------------------------------------------------
def test_idle_connection_gets_408_and_is_closed(server: Server) -> None:
    with server.connect() as sock:
        check_error(read_response(sock), 408, "headers", "1 seconds")
        assert closed(sock)


def test_trickled_headers_are_cut_at_the_timeout(server: Server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    with server.connect() as sock:
        # a byte every 0.1 s: the whole head would take 13 s, each gap is far below 1 s
        sent, answer = trickle(sock, head, 0.1)
        assert answer is not None and sent < len(head), sent
        check_error(answer, 408, "headers")
        assert closed(sock)


def test_trickled_headers_on_a_kept_alive_connection(server: Server) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(request)
        assert read_response(sock).status_code == 200
        sent, answer = trickle(sock, request[:-2] + b"X-Slow: " + b"a" * 100 + b"\r\n\r\n", 0.1)
        assert answer is not None, sent
        check_error(answer, 408, "headers")


# -- keep-alive -------------------------------------------------------------------------------
def test_idle_kept_alive_connection_is_closed_without_an_answer(server: Server) -> None:
    with server.connect() as sock:
        for _ in range(2):  # kept alive between the two
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            response = read_response(sock)
            assert response.status_code == 200 and "connection" not in response.headers
        sock.settimeout(10)
        assert sock.recv(65536) == b""  # closed, nothing said


def test_answer_before_the_body_ends_the_connection(server: Server) -> None:
    """A request refused before its body was read (401 here) does not keep its connection
    alive while the rest of the body trickles in."""
    head = b"POST /jobs/nap HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" \
           b"Content-Length: 1000\r\n\r\n{"
    with server.connect() as sock:
        sock.sendall(head)
        assert read_response(sock).status_code == 401
        sent, _ = trickle(sock, b" " * 999, 0.1)  # each gap below the body timeout
        assert sent < 999



@pytest.mark.parametrize("blank", [b"\r\n", b"\n"])
def test_blank_line_after_an_answer_does_not_hold_the_connection(server: Server,
                                                                  blank: bytes) -> None:
    """The parser skips blank lines between requests without starting one; such a line
    still counts as the start of the next request, whose headers have their timeout."""
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).status_code == 200
        sock.sendall(blank)
        check_error(read_response(sock), 408, "headers")
        assert closed(sock)


def test_trickled_blank_lines_are_cut_at_the_header_timeout(server: Server) -> None:
    """Blank lines every 0.3 s, each well within the keep-alive timeout, do not keep a
    connection open past the header timeout."""
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).status_code == 200
        sent, answer = trickle(sock, b"\r\n" * 50, 0.3)  # 30 s unless cut
        assert answer is not None and sent < 100, sent
        check_error(answer, 408, "headers")


# -- body timeout -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/uploads", "/jobs/analyze"])
def test_stalled_upload_is_aborted_and_its_part_file_removed(server: Server, path: str) -> None:
    before = server.job_ids()
    head = post_uploads_head(length=1000).replace(b"/uploads", path.encode())
    with server.connect() as sock:
        sock.sendall(head + b"\r\n" + AUTH + b"\r\n\r\n" + b"x" * 100)
        # streaming into a part file of the staging area, then nothing more
        wait_until(lambda: staged_partials(server), timeout=10, what="a part file")
        check_error(read_response(sock), 408, "body", "1 seconds")
        assert closed(sock)
    wait_until(lambda: not staged_partials(server), timeout=10, what="the part file to go")
    assert server.job_ids() == before


def test_slow_body_under_the_timeout_is_accepted(server: Server) -> None:
    """The body timeout bounds silence, not the whole body: bytes every 0.2 s go through."""
    body = b"y" * 10
    head = post_uploads_head(length=len(body)) + b"\r\n" + AUTH + b"\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(head)
        sent, answer = trickle(sock, body, 0.2)
        assert sent == len(body) and answer is None
        response = read_response(sock)
    assert response.status_code == 202, response.content
    job = server.wait_job(response.json()["id"])
    assert job["state"] == "succeeded", job
    assert (server.containers / "web" / "data" / "file.bin").read_bytes() == body



def test_login_body_must_arrive_whole_in_time(server: Server) -> None:
    """The login form is read before any check: a byte every 0.4 s (each gap below the body
    timeout) is cut at the login body's own deadline, and the connection is closed."""
    from conveyor.dashboard.routes import LOGIN_BODY_TIMEOUT

    head = (b"POST /ui/login HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\n")
    count = int((LOGIN_BODY_TIMEOUT + 10) / 0.4)
    with server.connect() as sock:
        sock.sendall(head)
        sent, answer = trickle(sock, b"t" * count, 0.4)
        assert answer is not None and sent < count, sent
        assert answer.status_code == 408, answer.content
        assert "login form" in answer.json()["error"]
        assert closed(sock)


# -- header size and memory -------------------------------------------------------------------
def test_header_size_option(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        check_error(read_response(sock), 431, "4096 bytes")
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        assert read_response(sock).status_code == 200


def process_figures(pid: int) -> tuple[int, int]:
    """(open file descriptors, resident memory in KiB) of process ``pid``."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return fds, int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_memory_held_for_unfinished_headers_is_bounded(tmp_path: Path) -> None:
    """200 connections each push an unfinished header line of up to 1 MiB: each is refused
    with 431 past the header limit (64 KiB by default) and the server's memory stays far
    below 200 MiB; then 200 more each hold one just under the limit."""
    server = Server(tmp_path, "--header-timeout", "60", token=None).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        start = process_figures(pid)
        socks = [server.connect() for _ in range(200)]
        line = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * (1 << 20)
        answers = []
        for sock in socks:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(line)  # read and dropped past the limit, until the server closes
        refused = process_figures(pid)
        for sock in socks:
            answers.append(read_response(sock).status_code)
            sock.close()
        assert answers == [431] * 200
        held = [server.connect() for _ in range(200)]
        for sock in held:
            sock.sendall(line[:60 * 1024])  # under the limit: held until the header timeout
        wait_until(lambda: process_figures(pid)[0] >= start[0] + 200, timeout=20,
                   what="the server to accept 200 connections")
        time.sleep(0.5)  # let it read what was sent
        holding = process_figures(pid)
        for sock in held:
            sock.close()
        wait_until(lambda: process_figures(pid)[0] <= start[0] + 5, timeout=20,
                   what="the server to close them")
        end = process_figures(pid)
        print(f"\nfds/RSS KiB: start {start}, 200 refused {refused}, 200 holding 60 KiB "
              f"{holding}, end {end}")
        assert refused[1] - start[1] < 64 * 1024, (start, refused)
        assert holding[1] - start[1] < 64 * 1024, (start, holding)
        assert server.client.get("/healthz").status_code == 200
    finally:
        assert server.stop() == 0, server.output()



def chunked_login(trailer: bytes) -> bytes:
    return (b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
            b"7\r\ntoken=x\r\n0\r\n" + trailer)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_memory_held_for_unfinished_trailers_is_bounded(tmp_path: Path) -> None:
    """After a chunked body's last chunk, a trailer line that never ends is bounded like a
    header line: 8 connections each pushing 16 MiB of it get 431, and the server's memory
    stays far below what they sent. Complete trailers are accepted."""
    server = Server(tmp_path, "--body-timeout", "60", token=None).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        with server.connect() as sock:
            sock.sendall(chunked_login(b"X-Trailer: 1\r\n\r\n"))
            assert read_response(sock).status_code == 303
        start = process_figures(pid)[1]
        peak = [start]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process_figures(pid)[1])
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        socks = [server.connect() for _ in range(8)]
        try:
            for sock in socks:
                sock.sendall(chunked_login(b"X-T: "))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for _ in range(256):
                        sock.sendall(b"a" * 65536)  # read and dropped once refused
            time.sleep(0.5)  # let it read what was sent
            done.set()
            sampler.join()
            print(f"\nRSS KiB: start {start}, peak {peak[0]} with 8 x 16 MiB of trailer sent")
            assert peak[0] - start < 48 * 1024, (start, peak)
            for sock in socks:
                check_error(read_response(sock), 431, "trailer")
        finally:
            done.set()
            for sock in socks:
                sock.close()
        assert server.client.get("/healthz").status_code == 200
    finally:
        assert server.stop() == 0, server.output()


def server_side_open(port: int) -> int:
    """Connections the server on ``port`` has not closed yet (established or closing)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] in ("01", "08"):  # ESTABLISHED, CLOSE_WAIT
                count += 1
    return count


# -- open connections -------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc")
def test_connections_past_the_cap_get_503_at_once(tmp_path: Path) -> None:
    server = Server(tmp_path, "--max-connections", "20", "--header-timeout", "60").start()
    try:
        # the connections that found it ready are closed on both sides
        wait_until(lambda: server_side_open(server.port) == 0, timeout=20,
                   what="the server to close its first connections")
        held = [server.connect() for _ in range(20)]
        try:
            with server.connect() as extra:
                extra.settimeout(10)  # far below the header timeout: answered at once
                response = read_response(extra)
                check_error(response, 503, "20 connections")
                assert response.headers["retry-after"] == "1"
                assert closed(extra)
            for sock in held[:3]:  # the held ones still work
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                assert read_response(sock).status_code == 200
        finally:
            for sock in held:
                sock.close()

        def answered() -> bool:
            with server.connect() as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                return read_response(sock).status_code == 200

        wait_until(answered, timeout=20, what="a connection to be served again")
    finally:
        assert server.stop() == 0, server.output()


# -- pipelining -------------------------------------------------------------------------------
def post_job(name: str, body: bytes) -> bytes:
    return (f"POST /jobs/{name} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + AUTH + b"\r\n\r\n" + body


@pytest.mark.parametrize("junk", [b"\x00garbage\r\n\r\n", b"JUNK JUNK\x01\r\n", b"G" * 10000])
def test_garbage_after_a_complete_post_gets_the_real_answer_first(server: Server,
                                                                   junk: bytes) -> None:
    with server.connect() as sock:
        sock.sendall(post_job("nap", b'{"args": [0.01]}') + junk)
        first, second = all_responses(sock)
    assert first.status_code == 202, first.content
    check_error(second, 400, "malformed")
    assert server.wait_job(first.json()["id"])["state"] == "succeeded"


def test_garbage_after_a_complete_upload_gets_the_real_answer_first(server: Server) -> None:
    body = b"uploaded"
    head = post_uploads_head(path="/data/piped.bin", length=len(body))
    with server.connect() as sock:
        sock.sendall(head + b"\r\n" + AUTH + b"\r\n\r\n" + body + b"\x00junk\r\n\r\n")
        first, second = all_responses(sock)
    assert first.status_code == 202, first.content
    check_error(second, 400, "malformed")
    assert server.wait_job(first.json()["id"])["state"] == "succeeded"
    assert (server.containers / "web" / "data" / "piped.bin").read_bytes() == body


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 3
                     + post_job("nap", b'{"args": [0.01]}')
                     + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answers = all_responses(sock)
    assert [a.status_code for a in answers] == [200, 200, 200, 202, 200]


def test_too_many_pipelined_requests(server: Server) -> None:
    from conveyor.http.protocol import MAX_PIPELINED

    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * (MAX_PIPELINED + 10))
        answers = all_responses(sock)
    assert [a.status_code for a in answers] == [200] * (MAX_PIPELINED + 1) + [400]
    check_error(answers[-1], 400, "ahead of their answers")


# -- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "value", "words"), [
    ("--header-timeout", "0", "positive"),
    ("--body-timeout", "-1", "positive"),
    ("--keepalive-timeout", "nan", "positive"),
    ("--header-timeout", "soon", "not a number"),
    ("--max-connections", "0", "at least 1"),
    ("--max-header-bytes", "1.5", "not a whole number"),
])
def test_bad_limit_options(option: str, value: str, words: str) -> None:
    result = subprocess.run([sys.executable, "-m", "conveyor", "serve", option, value],
                            capture_output=True, text=True, timeout=30, env=server_env())
    assert result.returncode == 2, result
    assert option in result.stderr and words in result.stderr, result.stderr


def test_limits_module_refuses_bad_values() -> None:
    from conveyor.serverlimits import ServerLimits, default_max_connections

    assert 1 <= ServerLimits().max_connections == default_max_connections() <= 1000
    for bad in ({"header_timeout": 0}, {"body_timeout": float("inf")},
                {"max_connections": 0}, {"max_header_bytes": 10.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerLimits(**bad)  # type: ignore[arg-type]
    assert ServerLimits(max_header_bytes=100).max_unfinished == 4196


# -- create_app under another server ----------------------------------------------------------
def test_create_app_body_timeout_under_another_server(tmp_path: Path) -> None:
    """``create_app(body_timeout=...)`` for servers without a body timeout of their own:
    here uvicorn's h11 protocol, which would wait for the body for ever."""
    import asyncio
    import threading

    import uvicorn

    from conveyor import Conveyor
    from conveyor.containers import open_target
    from conveyor.http import create_app
    from http_server import free_port

    app = Conveyor(url=f"sqlite:///{tmp_path / 'db'}", staging_dir=str(tmp_path / "staging"))
    (tmp_path / "containers" / "web").mkdir(parents=True)
    api = create_app(app, token="tok", target=open_target(f"dir:{tmp_path / 'containers'}"),
                     body_timeout=1)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, http="h11",
                                           lifespan="off", log_config=None))

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            await app.broker.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    partials = lambda: list((tmp_path / "staging").rglob("*.part"))  # noqa: E731
    try:
        wait_until(lambda: server.started, timeout=20, what="uvicorn to start")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"POST /uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Authorization: Bearer tok\r\nX-Container-Name: web\r\n"
                         b"X-File-Path: /a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            wait_until(partials, timeout=10, what="a part file")
            check_error(read_response(sock), 408, "body", "1 seconds")
            assert closed(sock)
        assert partials() == []
        with pytest.raises(ValueError, match="body_timeout"):
            create_app(app, body_timeout=0)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX open-file limit")
def test_max_connections_past_the_open_file_limit_is_warned_about(tmp_path: Path) -> None:
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    server = Server(tmp_path, "--max-connections", "500", preexec=low_limit).start()
    try:
        assert "--max-connections 500: the open-file limit is 300" in server.output()
    finally:
        assert server.stop() == 0, server.output()


def test_upgrade_requests_are_plain_http_and_keep_no_slot(tmp_path: Path) -> None:
    server = Server(tmp_path, "--max-connections", "3", token=None).start()
    try:
        for _ in range(10):
            with server.connect() as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                             b"Sec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n")
                assert read_response(sock).status_code in (200, 503)

        def answered() -> bool:
            with server.connect() as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                return read_response(sock).status_code == 200

        wait_until(answered, timeout=20, what="a connection to be served")
        assert "Unsupported upgrade" not in server.output()
    finally:
        assert server.stop() == 0, server.output()
