"""Redis: a single call waits for its reply spinning for a moment before it sleeps for it
(:class:`conveyor.backends.redis.client.Spin`), on the blocking client and on an event
loop. A reply later than the spin is still read, in the kernel; spins that run out make
the connection rest from spinning; a connection closed during a spin is a lost connection
and the next call goes through; the other tasks of a loop run while a call spins.

A private ``redis-server``: ``CLIENT PAUSE ... WRITE`` holds the scripts' replies back
(it pauses every client of the server).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from conveyor import Conveyor
from conveyor.backends.redis import RedisBroker, client
from conveyor.backends.redis.client import SPIN_MISSES, SPIN_REST, WAITING, BlockingScripts
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from polling import child_exit_code, wait_until
from redis_server import RedisServer, tls_server

T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    started = RedisServer().start()
    yield started
    started.stop()
    started.remove()


def _job() -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(), name="n", queue="default", state=JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=now)


def _pause(url: str, ms: int) -> None:
    with redis.Redis.from_url(url) as plain:
        plain.execute_command("CLIENT", "PAUSE", ms, "WRITE")


def _kill_later(url: str, addr: str, after: float) -> threading.Thread:
    """Close the connection from ``addr`` after ``after`` seconds, then end the pause."""
    def kill() -> None:
        time.sleep(after)
        with redis.Redis.from_url(url) as plain:
            plain.execute_command("CLIENT", "KILL", "ADDR", addr)
            plain.execute_command("CLIENT", "UNPAUSE")

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def _app(url: str) -> tuple[Conveyor, Any]:
    """An app on ``url`` in a namespace of its own, and its job ``one``."""
    app = Conveyor(url, namespace=f"t{new_id().lower()}")

    @app.job
    def one(x: int) -> None:
        pass

    return app, one


#: the event loops an awaited call is tested on (``conveyor serve`` runs on uvloop)
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def _run(app: Conveyor, url: str, scenario: Callable[[], Coroutine[Any, Any, T]],
         loop: str) -> T:
    """``scenario`` run on a new event loop of kind ``loop``; then the server at ``url``
    unpaused and ``app`` closed, whatever happened."""
    try:
        if loop == "uvloop":
            import uvloop

            return uvloop.run(scenario())
        return asyncio.run(scenario())
    finally:
        with redis.Redis.from_url(url) as plain:
            plain.execute_command("CLIENT", "UNPAUSE")
        app.close()


def _blocking(server: RedisServer) -> tuple[BlockingScripts, Callable[[], Any]]:
    """A blocking script runner on ``server`` and a call of it enqueueing a new job."""
    broker = RedisBroker(server.url, namespace=f"t{new_id().lower()}")
    scripts = BlockingScripts(server.url)

    def enqueue() -> Any:
        script, keys, argv, _ = broker._enqueue_call([([_job()], {})])
        return scripts.call(script, keys, argv)

    return scripts, enqueue


def test_blocking_calls_spin_rest_and_read_late_replies(server: RedisServer) -> None:
    scripts, enqueue = _blocking(server)
    try:
        assert enqueue() == "ok"
        (link, _), = scripts._idle
        assert link.spins  # a plain socket with a timeout: it may spin
        link.spin.misses = 0  # the first call may have run out (the server fsyncs each write)
        for n in range(1, SPIN_MISSES + 1):
            _pause(server.url, 100)  # the reply comes long after the spin ran out
            assert enqueue() == "ok"
            assert scripts._idle[0][0] is link
            if n < SPIN_MISSES:
                assert (link.spin.misses, link.spin.rest) == (n, 0)
        assert (link.spin.misses, link.spin.rest) == (0, SPIN_REST)  # it rests from spinning
        assert enqueue() == "ok"
        assert link.spin.rest == SPIN_REST - 1
    finally:
        scripts.close()


def test_a_blocking_call_whose_connection_closes_during_its_spin(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "SPIN_FOR", 5.0)  # the whole wait is a spin
    raised = _spied_spins(monkeypatch)
    scripts, enqueue = _blocking(server)
    try:
        assert enqueue() == "ok"
        (link, _), = scripts._idle
        host, port = link.sock.getsockname()[:2]
        _pause(server.url, 3000)
        killer = _kill_later(server.url, f"{host}:{port}", 0.2)
        with pytest.raises((redis.ConnectionError, OSError)):
            enqueue()
        killer.join()
        # the spin itself met the closed connection: it neither ran out nor left it unseen
        assert [type(exc) for exc in raised["_spun"]] == [redis.ConnectionError]
        assert raised["ran_out"] == []
        assert scripts._idle == []
        assert enqueue() == "ok"  # a new connection
        assert WAITING.count == 0
    finally:
        scripts.close()


def _spied_spins(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[BaseException | None]]:
    """Record what the blocking spin raised (``_spun``) and each spin that ran out
    (``ran_out``), the real methods still doing the work."""
    seen: dict[str, list[BaseException | None]] = {"_spun": [], "ran_out": []}
    spun, ran_out = client._Link._spun, client.Spin.ran_out

    def spying(link: Any) -> Any:
        try:
            return spun(link)
        except BaseException as exc:
            seen["_spun"].append(exc)
            raise

    def counting(spin: client.Spin) -> None:
        seen["ran_out"].append(None)
        ran_out(spin)

    monkeypatch.setattr(client._Link, "_spun", spying)
    monkeypatch.setattr(client.Spin, "ran_out", counting)
    return seen


def test_a_call_spins_only_while_no_other_call_of_the_process_waits(
        server: RedisServer) -> None:
    """A spinning thread holds the GIL between its reads: a call made while another call
    waits for its reply sleeps for its own at once (it records no spin)."""
    scripts, enqueue = _blocking(server)
    try:
        assert enqueue() == "ok"
        assert enqueue() == "ok"  # two connections idle, one per thread below
        first = scripts._take()
        scripts._give_back(scripts._take())
        scripts._give_back(first)
        links = [link for link, _ in scripts._idle]
        for link in links:
            link.spin.misses = link.spin.rest = 0
        _pause(server.url, 300)
        replies: list[Any] = []
        waiting = threading.Thread(target=lambda: replies.append(enqueue()))
        waiting.start()  # takes the last idle connection, spins, runs out, sleeps
        # its spin ran out and it sleeps (a call made during its spin would end the spin
        # without a miss)
        wait_until(lambda: WAITING.count == 1 and any(link.spin.misses for link in links),
                   timeout=5, what="the first call to wait, its spin run out")
        assert enqueue() == "ok"  # the other connection: it waits without spinning
        waiting.join()
        assert replies == ["ok"]
        assert sorted(link.spin.misses for link in links) == [0, 1]
        assert WAITING.count == 0
    finally:
        scripts.close()


@LOOPS
def test_an_awaited_call_spins_lets_the_loop_run_and_reads_late_replies(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        loop: str) -> None:
    app, one = _app(server.url)

    async def scenario() -> tuple[int, list[JobRecord]]:
        handles = [await one.enqueue_async(0)]
        link = app.broker._conn().link  # type: ignore[attr-defined]
        spin = link._spin
        spin.misses = 0  # the first call may have run out (the server fsyncs each write)
        for n in range(1, SPIN_MISSES + 1):
            _pause(server.url, 100)
            handles.append(await one.enqueue_async(n))
            if n < SPIN_MISSES:
                assert (spin.misses, spin.rest) == (n, 0)
        assert (spin.misses, spin.rest) == (0, SPIN_REST)
        # a call that spins through its whole wait: the loop's other tasks run meanwhile
        monkeypatch.setattr(client, "SPIN_FOR", 5.0)
        spin.rest = 0
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beside = asyncio.create_task(ticker())
        _pause(server.url, 300)
        spin.misses = 1  # the reply caught by the spin sets it back to 0
        handles.append(await one.enqueue_async(99))
        beside.cancel()
        assert spin.rest == 0 and spin.misses == 0  # the reply came within the spin
        # a connection closed during a spin: the spin ends at once (it does not run out),
        # a lost connection, retried on a new one
        raised = _spied_spins(monkeypatch)
        host, port = link._conn._writer.get_extra_info("sockname")[:2]
        _pause(server.url, 3000)
        killer = _kill_later(server.url, f"{host}:{port}", 0.2)
        handles.append(await one.enqueue_async(100))
        killer.join()
        assert raised["ran_out"] == []
        return ticks, [await h.info_async() for h in handles]

    ticks, records = _run(app, server.url, scenario, loop)
    assert ticks >= 5  # the ticker ran through a 300 ms spin
    assert sorted(r.args[0] for r in records) == [*range(SPIN_MISSES + 1), 99, 100]
    assert all(r.state is JobState.QUEUED for r in records)


@LOOPS
def test_an_awaited_spin_holds_its_loop_in_slices_with_the_transport_paused(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        loop: str) -> None:
    """A call spinning through its whole wait reads the socket itself, a slice at a time:
    between slices the loop's other tasks run, the transport not reading (the reply stays
    on the socket for the call); the transport reads again once the call has its reply."""
    app, one = _app(server.url)

    async def scenario() -> tuple[int, set[bool], bool, list[JobRecord]]:
        handles = [await one.enqueue_async(0)]
        link = app.broker._conn().link  # type: ignore[attr-defined]
        assert link.fd >= 0
        transport = link._conn._writer.transport
        monkeypatch.setattr(client, "SPIN_FOR", 5.0)
        link._spin.rest = link._spin.misses = 0
        ticks, reading = 0, set()

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                reading.add(transport.is_reading())
                await asyncio.sleep(0)

        _pause(server.url, 300)
        beside = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        handles.append(await one.enqueue_async(1))
        beside.cancel()
        assert link._spin.misses == 0  # caught by the spin
        return ticks, reading, transport.is_reading(), [await h.info_async() for h in handles]

    ticks, reading, after, records = _run(app, server.url, scenario, loop)
    assert ticks >= 100  # 300 ms of slices of 100 µs: the ticker ran between them
    assert False in reading  # the transport was paused while the call spun
    assert after  # and reads again
    assert [r.args[0] for r in sorted(records, key=lambda r: r.args[0])] == [0, 1]
    assert WAITING.count == 0


def _spied_link(monkeypatch: pytest.MonkeyPatch, method: str) -> list[BaseException]:
    """What the awaited link's ``method`` (``_spun`` or ``_waited``) raised, the real
    method still doing the work."""
    seen: list[BaseException] = []
    real = getattr(client.AsyncScriptLink, method)

    async def spying(link: Any, conn: Any, *more: Any) -> Any:
        try:
            return await real(link, conn, *more)
        except BaseException as exc:
            seen.append(exc)
            raise

    monkeypatch.setattr(client.AsyncScriptLink, method, spying)
    return seen


@LOOPS
def test_an_awaited_call_whose_link_closes_during_its_spin(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        loop: str) -> None:
    """The link closed by another task while a call spins: the spin stops at its next
    slice with a lost connection (it never reads a descriptor that is no longer its
    own), and the call goes through on a new connection."""
    app, one = _app(server.url)
    seen = _spied_link(monkeypatch, "_spun")

    async def scenario() -> list[JobRecord]:
        handles = [await one.enqueue_async(0)]
        link = app.broker._conn().link  # type: ignore[attr-defined]
        monkeypatch.setattr(client, "SPIN_FOR", 5.0)
        link._spin.rest = link._spin.misses = 0

        async def close_later() -> None:
            await asyncio.sleep(0.2)
            link.close()
            with redis.Redis.from_url(server.url) as plain:
                plain.execute_command("CLIENT", "UNPAUSE")

        _pause(server.url, 3000)
        closer = asyncio.create_task(close_later())
        handles.append(await one.enqueue_async(1))
        await closer
        return [await h.info_async() for h in handles]

    records = _run(app, server.url, scenario, loop)
    assert [type(exc) for exc in seen] == [redis.ConnectionError]
    assert sorted(r.args[0] for r in records) == [0, 1]
    assert WAITING.count == 0


@LOOPS
def test_an_awaited_reply_later_than_the_socket_timeout_after_the_spin(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        loop: str) -> None:
    """After its spin a call waits at most the connection's socket timeout for its reply
    (no timer is armed while it spins): a reply held back longer times the call out, the
    broker tries again on a new connection and the job is stored once."""
    app, one = _app(f"{server.url}?socket_timeout=0.3")
    timed_out = _spied_link(monkeypatch, "_waited")

    async def scenario() -> list[JobRecord]:
        handles = [await one.enqueue_async(0)]
        _pause(server.url, 1200)
        handles.append(await one.enqueue_async(1))
        return [await h.info_async() for h in handles]

    records = _run(app, server.url, scenario, loop)
    assert timed_out and all(isinstance(exc, TimeoutError) for exc in timed_out)
    assert sorted(r.args[0] for r in records) == [0, 1]


@LOOPS
def test_an_awaited_call_stops_spinning_when_another_call_joins_it(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch, loop: str) -> None:
    """A call awaited while another is under way waits for the next script call, for a
    reply too: the call in flight stops spinning at its next slice and sleeps for its
    reply (under load a loop is not held by a spin), and the next call, made for the
    group, does not spin either."""
    app, one = _app(server.url)
    outcomes: list[Any] = []
    spun = client.AsyncScriptLink._spun

    async def recording(link: Any, conn: Any) -> Any:
        outcomes.append(await spun(link, conn))
        return outcomes[-1]

    monkeypatch.setattr(client.AsyncScriptLink, "_spun", recording)

    async def scenario() -> tuple[int, list[JobRecord]]:
        handles = [await one.enqueue_async(0)]
        link = app.broker._conn().link  # type: ignore[attr-defined]
        monkeypatch.setattr(client, "SPIN_FOR", 5.0)
        link._spin.rest = link._spin.misses = 0
        outcomes.clear()
        _pause(server.url, 300)
        first = asyncio.create_task(one.enqueue_async(1))
        await asyncio.sleep(0.05)  # the first call spins, a slice at a time
        handles += await asyncio.gather(first, one.enqueue_async(2))
        return link._spin.misses, [await h.info_async() for h in handles]

    misses, records = _run(app, server.url, scenario, loop)
    assert outcomes == [False]  # the first call's spin ended; the group's never began
    assert misses == 0  # it did not run out: it gave way
    assert sorted(r.args[0] for r in records) == [0, 1, 2]
    assert WAITING.count == 0


def test_tls_connections_never_spin(tmp_path: Path) -> None:
    """Over TLS the socket's descriptor carries records, not replies: a call sleeps for its
    reply in the TLS layer (a real ``redis-server`` with a TLS port, its certificate made
    here with ``openssl``)."""
    with tls_server(tmp_path) as (tls, cert):
        app, one = _app(f"rediss://127.0.0.1:{tls.port}/0?ssl_ca_certs={cert}")
        try:
            handles = [one.enqueue(n) for n in range(3)]
            (link, _), = app.broker._blocking_scripts()._idle  # type: ignore[attr-defined]
            assert not link.spins

            async def awaited() -> list[Any]:
                handles = [await one.enqueue_async(n) for n in range(3, 6)]
                assert app.broker._conn().link.fd == -1  # type: ignore[attr-defined]
                return handles

            handles += asyncio.run(awaited())
            assert sorted(h.info().args[0] for h in handles) == list(range(6))
        finally:
            app.close()


@pytest.mark.parametrize("hooks", [True, False], ids=["os.fork", "libc-fork"])
def test_a_forked_child_starts_with_no_call_waiting_and_no_connection_of_its_parent(
        server: RedisServer, hooks: bool) -> None:
    """Forked while a thread of the parent waits for a reply and the runner keeps an idle
    connection, a child counts no call waiting (it spins when alone) and never sends on a
    connection its parent kept (the two would read each other's replies), also when the
    fork is made in C and runs no hook of ``os.register_at_fork`` (uWSGI's preforking
    master, by default); the parent's connection stays the parent's."""
    scripts, enqueue = _blocking(server)
    try:
        assert enqueue() == "ok"
        first, second = scripts._take(), scripts._take()  # two connections kept idle
        scripts._give_back(first)
        scripts._give_back(second)
        _pause(server.url, 300)
        waiting = threading.Thread(target=enqueue)
        waiting.start()  # takes one of them
        wait_until(lambda: WAITING.count == 1, timeout=5, what="the parent's call to wait")
        (kept, _), = scripts._idle
        parent_port = kept.sock.getsockname()[1]
        # libc's fork through PyDLL holds the GIL and runs no hook
        pid = os.fork() if hooks else ctypes.PyDLL(None).fork()
        if pid == 0:  # the child: report through its exit status, never raise
            code = 1
            try:
                stored = enqueue() == "ok"
                (mine, _), = scripts._idle
                own = mine.sock.getsockname()[1] != parent_port
                code = 0 if stored and own and WAITING.count == 0 else 2
            finally:
                os._exit(code)
        waiting.join()
        assert child_exit_code(pid) == 0
        assert enqueue() == "ok"
        assert kept in [link for link, _ in scripts._idle]
        assert WAITING.count == 0
    finally:
        scripts.close()
