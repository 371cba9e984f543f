"""Wrong tokens are throttled per client address: the rules with a clock of the test's own,
then a real ``conveyor serve`` over a socket (bearer headers and the login form share one
count; every request of the tests comes from 127.0.0.1)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.http.throttle import LIMIT, Throttle, client_address
from http_server import TOKEN, Server


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fail(throttle: Throttle, address: str, times: int) -> list[float]:
    return [throttle.failed(address, "bearer token") for _ in range(times)]


# -- the rules ----------------------------------------------------------------------------------
def test_the_limit_th_failure_in_a_window_starts_a_penalty(clock: Clock) -> None:
    throttle = Throttle(limit=10, window=60, penalty=60, max_penalty=3600, clock=clock)
    assert fail(throttle, "10.0.0.1", 9) == [0.0] * 9
    assert throttle.retry_after("10.0.0.1") == 0.0
    assert throttle.refusal("10.0.0.1") is None
    assert throttle.failed("10.0.0.1") == 60.0
    assert throttle.retry_after("10.0.0.1") == 60.0
    assert throttle.refusal("10.0.0.1") == (
        "too many wrong tokens from this address; try again in 60 s", {"Retry-After": "60"})
    assert throttle.retry_after("10.0.0.2") == 0.0  # another address is not held back
    clock.now += 59.5
    assert throttle.refusal("10.0.0.1") == (
        "too many wrong tokens from this address; try again in 1 s", {"Retry-After": "1"})
    clock.now += 0.5
    assert throttle.retry_after("10.0.0.1") == 0.0


def test_failures_out_of_the_window_do_not_count(clock: Clock) -> None:
    throttle = Throttle(limit=10, window=60, clock=clock)
    for _ in range(30):  # one every 7 s: never 10 within a minute
        assert throttle.failed("10.0.0.1") == 0.0
        clock.now += 7
    assert throttle.retry_after("10.0.0.1") == 0.0


def test_penalties_double_up_to_the_cap_and_are_forgotten_after_a_quiet_spell(
        clock: Clock) -> None:
    throttle = Throttle(limit=3, window=60, penalty=60, max_penalty=300, clock=clock)
    seen = []
    for _ in range(5):
        seen.append(fail(throttle, "10.0.0.1", 3)[-1])
        clock.now += seen[-1]  # the penalty is served; the count starts over
    assert seen == [60.0, 120.0, 240.0, 300.0, 300.0]
    assert fail(throttle, "10.0.0.1", 2) == [0.0, 0.0]  # failures after a penalty count anew
    clock.now += 300  # no failure for max_penalty: a fresh start
    assert fail(throttle, "10.0.0.1", 3)[-1] == 60.0


def test_a_right_token_does_not_end_a_penalty(clock: Clock) -> None:
    # there is no "success" call at all: only time ends a penalty
    throttle = Throttle(limit=2, window=60, penalty=60, clock=clock)
    fail(throttle, "10.0.0.1", 2)
    assert not hasattr(throttle, "succeeded")
    clock.now += 30
    assert throttle.retry_after("10.0.0.1") == 30.0


def test_the_table_of_addresses_is_bounded(clock: Clock) -> None:
    throttle = Throttle(limit=2, max_addresses=100, clock=clock)
    for n in range(5000):
        throttle.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(throttle) == 100
    fail(throttle, "192.0.2.1", 2)  # the most recent ones are kept
    assert throttle.retry_after("192.0.2.1") == 60.0


def test_failing_from_many_other_addresses_does_not_clear_a_penalty(clock: Clock) -> None:
    throttle = Throttle(limit=2, max_addresses=100, clock=clock)
    fail(throttle, "192.0.2.1", 2)
    for n in range(5000):  # a holder of many addresses fails from each of the others
        throttle.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(throttle) == 100
    assert throttle.retry_after("192.0.2.1") == 60.0


def test_bad_settings_are_refused() -> None:
    for settings in ({"limit": -1}, {"window": 0}, {"penalty": 10, "max_penalty": 5},
                     {"max_addresses": 0}):
        with pytest.raises(ValueError, match="the throttle needs"):
            Throttle(**settings)  # type: ignore[arg-type]


def test_a_limit_of_0_throttles_nothing(clock: Clock) -> None:
    throttle = Throttle(limit=0, clock=clock)
    assert fail(throttle, "10.0.0.1", 1000) == [0.0] * 1000
    assert throttle.retry_after("10.0.0.1") == 0.0 and len(throttle) == 0


def test_the_address_of_a_request() -> None:
    assert client_address({"client": ("192.0.2.7", 5555)}) == "192.0.2.7"
    assert client_address({"client": ("::ffff:192.0.2.7", 5555)}) == "192.0.2.7"
    # one host usually holds a whole /64: its addresses count as one
    assert client_address({"client": ("2001:db8:1:2:aaaa::1", 1)}) == "2001:db8:1:2::/64"
    assert client_address({"client": ("2001:db8:1:2:bbbb::9", 1)}) == "2001:db8:1:2::/64"
    assert client_address({"client": None}) == "unknown"
    assert client_address({}) == "unknown"
    # X-Forwarded-For is not trusted: the peer is the address
    forwarded = {"client": ("127.0.0.1", 1), "headers": [(b"x-forwarded-for", b"203.0.113.9")]}
    assert client_address(forwarded) == "127.0.0.1"


def test_one_warning_names_the_address(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    throttle = Throttle(limit=3, clock=clock)
    with caplog.at_level(logging.WARNING, logger="conveyor.http"):
        fail(throttle, "198.51.100.4", 3)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "198.51.100.4" in record.getMessage() and "refused for 60 s" in record.getMessage()


# -- over a socket --------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path).start()
    yield srv
    assert srv.stop() == 0, srv.output()


def bearer(server: Server, token: str, path: str = "/jobs",
           source: str | None = None) -> httpx.Response:
    """GET ``path`` with ``token``, from the loopback address ``source`` if given (the
    whole of 127.0.0.0/8 is this machine: another client address for the server)."""
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(transport=transport, timeout=20) as client:
        return client.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"})


def test_wrong_bearer_tokens_are_answered_429_past_the_limit(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as browser:  # logged in before
        assert browser.post("/ui/login", data={"token": TOKEN}).status_code == 303
        guesses = [f"guess-{n:03d}" for n in range(LIMIT)]
        assert [bearer(server, guess).status_code for guess in guesses] == [401] * LIMIT
        refused = bearer(server, "guess-last")
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 60
        assert refused.json() == {
            "error": f"too many wrong tokens from this address; try again in {wait} s"}
        # while penalized, no token is checked: the right one gets 429 as well
        assert bearer(server, TOKEN).status_code == 429
        assert bearer(server, TOKEN, "/ui/api/overview").status_code == 429
        # no token at all: nothing to check, the usual 401; /healthz stays open
        assert httpx.get(f"{server.url}/jobs", timeout=20).status_code == 401
        assert httpx.get(f"{server.url}/healthz", timeout=20).status_code == 200
        # a session from before is no guess: the dashboard stays usable with it
        assert browser.get("/ui/api/overview").status_code == 200
        # another address is not held back
        assert bearer(server, TOKEN, source="127.0.0.2").status_code == 200
        assert bearer(server, "guess-other", source="127.0.0.2").status_code == 401
        assert bearer(server, TOKEN).status_code == 429
    log = server.output()
    warnings = [line for line in log.splitlines() if "wrong bearer tokens from" in line]
    assert len(warnings) == 1, log
    assert "127.0.0.1" in warnings[0] and "WARNING" in warnings[0]
    assert "guess-" not in log and TOKEN not in log


def test_the_login_form_is_throttled_and_says_so(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as browser:
        for _ in range(LIMIT + 5):  # an empty form guesses nothing: not counted
            empty = browser.post("/ui/login", data={"token": ""})
            assert empty.status_code == 401, empty.text
        for n in range(LIMIT):
            wrong = browser.post("/ui/login", data={"token": f"guess-{n}"})
            assert wrong.status_code == 401 and "Wrong token." in wrong.text
        refused = browser.post("/ui/login", data={"token": "guess-last"})
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert re.search(rf"Too many wrong tokens from this address; try again in {wait} s\.",
                         refused.text), refused.text
        assert refused.headers["x-frame-options"] == "DENY"  # still the dashboard's page
        # the right token is not looked at during the penalty: no cookie, 429 again
        right = browser.post("/ui/login", data={"token": TOKEN})
        assert right.status_code == 429 and "conveyor_session" not in browser.cookies
        # the login page itself shows the message too
        form = browser.get("/ui/login")
        assert form.status_code == 429 and "Too many wrong tokens" in form.text
        # the count is shared with the API's bearer check
        assert bearer(server, TOKEN).status_code == 429
    log = server.output()
    assert len(re.findall(r"wrong logins from 127\.0\.0\.1", log)) == 1, log
    assert "guess-" not in log and TOKEN not in log


def test_wrong_bearer_tokens_on_dashboard_routes_count_too(server: Server) -> None:
    statuses = [bearer(server, f"guess-{n}", "/ui/api/overview").status_code
                for n in range(LIMIT)]
    assert statuses == [401] * LIMIT
    page = bearer(server, "guess-page", "/")
    assert page.status_code == 429 and "Too many wrong tokens" in page.text
    assert int(page.headers["retry-after"]) >= 1
    assert bearer(server, "guess-api").status_code == 429


def test_throttling_can_be_turned_off(tmp_path: Path) -> None:
    server = Server(tmp_path, "--max-wrong-tokens", "0").start()
    try:
        statuses = {bearer(server, f"guess-{n}").status_code for n in range(3 * LIMIT)}
        assert statuses == {401}
        assert bearer(server, TOKEN).status_code == 200
    finally:
        assert server.stop() == 0, server.output()
    assert "wrong bearer tokens from" not in server.output()


def test_a_negative_limit_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from http_server import server_env

    done = subprocess.run([sys.executable, "-m", "conveyor", "serve", "--max-wrong-tokens", "-1",
                           "--url", f"sqlite:///{tmp_path / 'c.db'}", "--token", TOKEN],
                          capture_output=True, text=True, env=server_env(), timeout=60,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert "--max-wrong-tokens must be 0 or more" in done.stderr
