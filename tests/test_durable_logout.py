"""A dashboard logout is kept in the store: the logged-out cookie opens nothing after a restart
with the same token, nor on another server process on the same store; on SQLite and Redis."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from conveyor.backends import open_broker
from conveyor.backends.base import Broker
from conveyor.backends.sqlite.broker import SQLiteBroker
from conveyor.dashboard.sessions import FRESH_FOR, Revocations
from conveyor.ids import new_id
from http_server import TOKEN, Server
from polling import wait_until

COOKIE = "conveyor_session"


def store(url: str) -> tuple[str, str]:
    """The store's URL and a namespace of the test's own (Redis is shared by tests)."""
    return url, f"t{new_id()[-10:].lower()}"


def serve(root: Path, url: str, namespace: str) -> Server:
    """``conveyor serve`` with the test token on ``url``/``namespace`` (root: its files)."""
    root.mkdir(parents=True, exist_ok=True)
    server = Server(root, "--namespace", namespace)
    server.command[server.command.index("--url") + 1] = url
    return server.start()


def log_in(server: Server) -> str:
    """A session cookie got on the login form."""
    with httpx.Client(base_url=server.url, timeout=20) as browser:
        response = browser.post("/ui/login", data={"token": TOKEN})
        assert response.status_code == 303, response.text
        return browser.cookies[COOKIE]


def log_out(server: Server, cookie: str) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as browser:
        browser.cookies.set(COOKIE, cookie)
        page = browser.get("/")
        assert page.status_code == 200
        match = re.search(r'data-csrf="([0-9a-f]{64})"', page.text)
        assert match, page.text
        response = browser.post("/ui/logout", headers={"X-CSRF-Token": match.group(1)})
        assert response.status_code == 200, response.text


def status_with(server: Server, cookie: str) -> int:
    with httpx.Client(base_url=server.url, timeout=20) as browser:
        browser.cookies.set(COOKIE, cookie)
        return browser.get("/ui/api/overview").status_code


@contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()


def test_a_logout_outlives_a_restart(url: str, tmp_path: Path) -> None:
    where, namespace = store(url)
    with running(serve(tmp_path / "one", where, namespace)) as first:
        gone, kept = log_in(first), log_in(first)
        log_out(first, gone)
        assert status_with(first, gone) == 401  # at once, in the process that logged out
        assert status_with(first, kept) == 200
    with running(serve(tmp_path / "two", where, namespace)) as again:  # same token, same store
        assert status_with(again, gone) == 401
        assert status_with(again, kept) == 200  # the other session was not logged out


def test_a_logout_on_one_process_holds_on_another(url: str, tmp_path: Path) -> None:
    where, namespace = store(url)
    with running(serve(tmp_path / "a", where, namespace)) as a, \
            running(serve(tmp_path / "b", where, namespace)) as b:
        cookie = log_in(a)
        assert status_with(b, cookie) == 200  # a session is good on every process
        log_out(a, cookie)
        assert status_with(a, cookie) == 401
        began = time.monotonic()
        wait_until(lambda: status_with(b, cookie) == 401, timeout=FRESH_FOR + 10,
                   what="the other process to refuse the logged-out cookie")
        assert time.monotonic() - began < FRESH_FOR + 10
        # a logout on b of a session made on a is seen on a as well
        other = log_in(a)
        assert status_with(b, other) == 200
        log_out(b, other)
        wait_until(lambda: status_with(a, other) == 401, timeout=FRESH_FOR + 10,
                   what="the process that made the session to refuse it")


def test_a_logout_without_the_csrf_token_logs_nothing_out(url: str, tmp_path: Path) -> None:
    where, namespace = store(url)
    with running(serve(tmp_path / "one", where, namespace)) as server:
        cookie = log_in(server)
        with httpx.Client(base_url=server.url, timeout=20) as browser:
            browser.cookies.set(COOKIE, cookie)
            assert browser.post("/ui/logout").status_code == 403
        assert status_with(server, cookie) == 200


# -- the cache in front of the store --------------------------------------------------------------
class CountingBroker(SQLiteBroker):
    """A SQLite store that counts the session checks it is asked."""

    asked = 0

    async def session_revoked(self, nonce: str) -> bool:
        self.asked += 1
        return await super().session_revoked(nonce)


def test_checks_ask_the_store_once_per_fresh_spell(db_url: str) -> None:
    broker = CountingBroker(db_url)
    now = [100.0]

    async def opened() -> Broker:
        await broker.open()
        return broker

    revocations = Revocations(opened, fresh_for=2.0, clock=lambda: now[0])

    async def scenario() -> list[object]:
        try:
            seen: list[object] = [
                [await revocations.revoked("n1") for _ in range(50)], broker.asked]
            now[0] += 2.0  # stale: asked again, once
            seen += [[await revocations.revoked("n1") for _ in range(50)], broker.asked]
            await revocations.revoke("n1", time.time() + 60)  # seen at once, no question
            seen += [await revocations.revoked("n1"), broker.asked]
            other = Revocations(opened, fresh_for=2.0, clock=lambda: now[0])  # a restart
            seen += [await other.revoked("n1"), await other.revoked("n1"), broker.asked]
            return seen
        finally:
            await broker.close()

    assert asyncio.run(scenario()) == [
        [False] * 50, 1, [False] * 50, 2, True, 2, True, True, 3]


# -- the store's side -----------------------------------------------------------------------------
def test_the_store_keeps_logouts_until_the_session_expires(url: str, tmp_path: Path) -> None:
    where, namespace = store(url)
    broker = open_broker(where, namespace, 3600)

    async def scenario() -> list[bool]:
        try:
            fresh = await broker.session_revoked("never-seen")  # before any logout
            await broker.revoke_session("n-live", time.time() + 3600)
            await broker.revoke_session("n-past", time.time() - 1)  # expired already
            await broker.revoke_session("n-live", time.time() + 3600)  # twice: no error
            return [fresh, await broker.session_revoked("n-live"),
                    await broker.session_revoked("n-past"),
                    await broker.session_revoked("n-other")]
        finally:
            await broker.close()

    assert asyncio.run(scenario()) == [False, True, False, False]


def test_logouts_belong_to_their_namespace(url: str, tmp_path: Path) -> None:
    where, namespace = store(url)
    one, two = open_broker(where, namespace, 3600), open_broker(where, namespace + "x", 3600)

    async def scenario() -> tuple[bool, bool]:
        try:
            await one.revoke_session("shared-nonce", time.time() + 3600)
            return (await one.session_revoked("shared-nonce"),
                    await two.session_revoked("shared-nonce"))
        finally:
            await one.close()
            await two.close()

    assert asyncio.run(scenario()) == (True, False)
