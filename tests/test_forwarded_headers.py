"""``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from the proxies named with
``--forwarded-allow-ips`` (or $CONVEYOR_FORWARDED_ALLOW_IPS): a real ``conveyor serve`` over a
socket, whose clients are on loopback (127.0.0.0/8 is this machine: 127.0.0.2 is another
peer). The rules of the throttle itself are in tests/test_auth_throttle.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.http.throttle import LIMIT
from http_server import TOKEN, Server, server_env

ENV = "CONVEYOR_FORWARDED_ALLOW_IPS"


def guess(server: Server, token: str, forwarded_for: str | None = None,
          source: str | None = None) -> int:
    """The status of ``GET /jobs`` with bearer ``token``, from ``source`` (a loopback
    address), claiming to forward for ``forwarded_for``."""
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(transport=transport, timeout=20) as client:
        return client.get(f"{server.url}/jobs", headers=headers).status_code


def login_cookie(server: Server, proto: str | None) -> str:
    """The ``Set-Cookie`` of a right login, sent with ``X-Forwarded-Proto: proto`` if given."""
    headers = {"X-Forwarded-Proto": proto} if proto else {}
    with httpx.Client(base_url=server.url, timeout=20) as browser:
        right = browser.post("/ui/login", data={"token": TOKEN}, headers=headers)
    assert right.status_code == 303, right.text
    return right.headers["set-cookie"]


def penalties(server: Server) -> list[str]:
    return [line for line in server.output().splitlines() if "wrong bearer tokens from" in line]


@pytest.fixture
def plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A server started without the option: it trusts no forwarded header."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    server = Server(tmp_path).start()
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture
def proxied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A server behind a proxy on 127.0.0.1, named through the environment."""
    monkeypatch.setenv(ENV, "127.0.0.1")
    server = Server(tmp_path).start()
    yield server
    assert server.stop() == 0, server.output()


def test_by_default_invented_forwarded_addresses_are_one_client(plain: Server) -> None:
    invented = [f"203.0.113.{n}" for n in range(1, LIMIT + 1)]
    assert [guess(plain, f"guess-{n}", address) for n, address in enumerate(invented)] == \
        [401] * LIMIT
    # the 11th guess is the 11th from 127.0.0.1, whatever address it claims
    assert guess(plain, "guess-last", "198.51.100.77") == 429
    assert guess(plain, TOKEN, "198.51.100.78") == 429
    assert guess(plain, TOKEN) == 429
    assert guess(plain, TOKEN, source="127.0.0.2") == 200  # another peer is not held back
    [warning] = penalties(plain)
    assert "from 127.0.0.1 " in warning, warning
    # the headers were ignored, and the log says how to have them believed
    ignored = [line for line in plain.output().splitlines() if "--forwarded-allow-ips" in line]
    assert len(ignored) == 1 and "X-Forwarded-" in ignored[0], plain.output()


def test_by_default_x_forwarded_proto_does_not_make_the_server_https(plain: Server) -> None:
    # the server speaks plain HTTP and believes no proxy: its cookie is not Secure (a
    # browser would not send a Secure cookie back to http://127.0.0.1 at all)
    for proto in (None, "https"):
        cookie = login_cookie(plain, proto)
        assert cookie.startswith("conveyor_session=") and "HttpOnly" in cookie
        assert "secure" not in cookie.lower(), cookie


def test_forwarded_addresses_of_a_trusted_proxy_are_counted_apart(proxied: Server) -> None:
    assert [guess(proxied, f"guess-{n}", "203.0.113.5") for n in range(LIMIT)] == [401] * LIMIT
    assert guess(proxied, "guess-last", "203.0.113.5") == 429
    assert guess(proxied, TOKEN, "203.0.113.5") == 429
    # a proxy that appends to what its client sent: the address it appended counts, not
    # the one the client invented before it
    assert guess(proxied, TOKEN, "198.51.100.1, 203.0.113.5") == 429
    # another client of the same proxy, and the proxy itself, are not held back
    assert guess(proxied, "guess-other", "203.0.113.6") == 401
    assert guess(proxied, TOKEN, "203.0.113.6") == 200
    assert guess(proxied, TOKEN, "198.51.100.1, 203.0.113.6") == 200
    assert guess(proxied, TOKEN) == 200
    [warning] = penalties(proxied)
    assert "from 203.0.113.5 " in warning, warning
    assert "trusting X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1" in proxied.output()


def test_a_peer_that_is_not_a_named_proxy_is_not_believed(proxied: Server) -> None:
    statuses = [guess(proxied, f"guess-{n}", f"203.0.113.{n}", source="127.0.0.2")
                for n in range(1, LIMIT + 2)]
    assert statuses == [401] * LIMIT + [429]
    [warning] = penalties(proxied)
    assert "from 127.0.0.2 " in warning, warning
    assert guess(proxied, TOKEN, "203.0.113.99") == 200  # the proxy's clients go on


def test_x_forwarded_proto_of_a_trusted_proxy_makes_the_cookie_secure(proxied: Server) -> None:
    assert "; secure" in login_cookie(proxied, "https").lower()
    assert "secure" not in login_cookie(proxied, "http").lower()
    assert "secure" not in login_cookie(proxied, None).lower()


def test_the_option_names_the_proxies(tmp_path: Path) -> None:
    server = Server(tmp_path, "--forwarded-allow-ips", "10.9.9.9, 127.0.0.0/8").start()
    try:
        assert guess(server, TOKEN, "203.0.113.5") == 200
        assert "; secure" in login_cookie(server, "https").lower()
    finally:
        assert server.stop() == 0, server.output()
    assert "from 10.9.9.9, 127.0.0.0/8" in server.output()


def test_a_proxy_reached_over_a_dual_stack_socket_is_believed(tmp_path: Path) -> None:
    # listening on ::, a peer on 127.0.0.1 is reported as ::ffff:127.0.0.1
    server = Server(tmp_path, "--host", "::", "--forwarded-allow-ips", "[::1],127.0.0.1")
    try:
        server.start()
    except AssertionError:
        if "cannot listen on ::" in server.output():
            pytest.skip("no IPv6 on this machine")
        raise
    try:
        assert "; secure" in login_cookie(server, "https").lower()
        assert [guess(server, f"guess-{n}", "203.0.113.5") for n in range(LIMIT + 1)] == \
            [401] * LIMIT + [429]
        assert guess(server, TOKEN, "203.0.113.6") == 200
    finally:
        assert server.stop() == 0, server.output()
    assert "from ::1, 127.0.0.1" in server.output()
    [warning] = penalties(server)
    assert "from 203.0.113.5 " in warning, warning


@pytest.mark.parametrize(("given", "env", "message"), [
    (["--forwarded-allow-ips", "proxy.example.com"], {},
     "--forwarded-allow-ips: not an IP address or network: 'proxy.example.com'"),
    ([], {ENV: "127.0.0.1,10.0.0.300"},
     f"{ENV}: not an IP address or network: '10.0.0.300'"),
])
def test_a_proxy_that_is_not_an_address_is_refused(tmp_path: Path, given: list[str],
                                                   env: dict[str, str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "conveyor", "serve", *given, "--port", "0",
                           "--url", f"sqlite:///{tmp_path / 'c.db'}", "--token", TOKEN],
                          capture_output=True, text=True, env={**server_env(), **env},
                          timeout=30, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_the_proxies_as_read() -> None:
    import argparse
    import ipaddress

    from conveyor.cli.serve import forwarded_allow_ips, trusted_peers

    def read(text: str | None) -> list[str]:
        return forwarded_allow_ips(argparse.Namespace(forwarded_allow_ips=text))

    assert read("") == [] and read(" , ") == []
    assert read("127.0.0.1, [::1],10.1.2.3/8 ,fd00::/8") == \
        ["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"]
    assert read("10.0.0.1,*") == ["*"]
    assert trusted_peers(["*"]) == ["*"]
    # and each IPv4 one as a dual-stack socket reports it
    peers = trusted_peers(["127.0.0.1", "::1", "10.0.0.0/8"])
    assert [ipaddress.ip_network(peer) for peer in peers] == [
        ipaddress.ip_network(net) for net in
        ("127.0.0.1", "::1", "10.0.0.0/8", "::ffff:127.0.0.1/128", "::ffff:10.0.0.0/104")]
