"""Redis: the blocking script runner's direct path (EVALSHA written on the socket, the reply
read by a reader of its own) behaves as redis-py's path did, and the leaner encodings of a
single enqueue (ids, arguments) give what the general ones give."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
import redis

from conveyor import Conveyor
from conveyor.backends.redis import RedisBroker
from conveyor.backends.redis.client import BlockingScripts
from conveyor.bounds import MAX_DEPTH, encode_value
from conveyor.errors import InvalidArguments
from conveyor.ids import _encode, id_time, is_valid_id, new_id
from conveyor.job import JobRecord, JobState
from conveyor.serialization import NotSerializable, dumps
from redis_server import shared_redis_url


def _job(job_id: str, queue: str = "default", args: list[object] | None = None) -> JobRecord:
    now = time.time()
    return JobRecord(id=job_id, name="n", queue=queue, state=JobState.QUEUED,
                     args=args or [], kwargs={}, created_at=now, run_at=now)


def _broker() -> RedisBroker:
    return RedisBroker(shared_redis_url(), namespace=f"t{new_id().lower()}")


def test_direct_calls_reload_flushed_scripts_and_keep_error_replies_apart() -> None:
    broker = _broker()
    scripts = BlockingScripts(shared_redis_url())
    plain = redis.Redis.from_url(shared_redis_url())
    try:
        for queue in ("a", "b", "a"):  # heads made per queue, then reused
            script, keys, argv, _ = broker._enqueue_call([([_job(new_id(), queue)], {})])
            assert scripts.call(script, keys, argv) == "ok"
        plain.script_flush()
        script, keys, argv, _ = broker._enqueue_call([([_job(new_id())], {})])
        assert scripts.call(script, keys, argv) == "ok"  # NOSCRIPT: loaded, sent again
        with pytest.raises(redis.ResponseError):  # a script error, raised as redis-py does
            scripts.call("enqueue_one", keys, [])
        assert scripts.call(script, keys, argv).startswith("same ")  # the connection is intact
        assert len(scripts._idle) == 1  # and was kept
    finally:
        scripts.close()
        plain.close()


def test_a_direct_call_on_a_killed_connection_fails_and_the_next_one_goes_through() -> None:
    broker = _broker()
    scripts = BlockingScripts(shared_redis_url())
    plain = redis.Redis.from_url(shared_redis_url())
    try:
        script, keys, argv, _ = broker._enqueue_call([([_job(new_id())], {})])
        assert scripts.call(script, keys, argv) == "ok"
        (link, _), = scripts._idle
        plain.execute_command("CLIENT", "KILL", "ID", _client_id(link))
        # idle for less than the check: the dead connection is tried, fails, is dropped
        script, keys, argv, _ = broker._enqueue_call([([_job(new_id())], {})])
        with pytest.raises((redis.ConnectionError, OSError)):
            scripts.call(script, keys, argv)
        assert scripts._idle == []
        assert scripts.call(script, keys, argv) == "ok"
    finally:
        scripts.close()
        plain.close()


def _client_id(link: Any) -> int:
    """The server's id of a link's connection (asked on it, through redis-py)."""
    conn = link.conn
    conn.send_command("CLIENT", "ID")
    return int(conn.read_response())


def test_the_blocking_enqueue_stores_the_record_the_async_one_stores() -> None:
    url = shared_redis_url()
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url, namespace=namespace)

    @app.job(queue="q1", priority=3)
    def one(x: int, word: str = "é") -> None:
        pass

    try:
        first = one.enqueue(1, word="ü")
        second = app.enqueue("one", 2)
        third = asyncio.run(app.enqueue_async("one", 3))
        records = [h.info() for h in (first, second, third)]
        assert [(r.queue, r.priority, r.args, r.kwargs) for r in records] == [
            ("q1", 3, [1], {"word": "ü"}), ("q1", 3, [2], {}), ("q1", 3, [3], {})]
        assert all(r.state is JobState.QUEUED for r in records)
    finally:
        app.close()


def test_ids_match_the_plain_encoding_and_sort_by_time() -> None:
    import conveyor.ids as ids

    made = []
    for n in range(5000):
        made.append(new_id(None if n % 3 else time.time() + (n % 5) / 1000))
        assert made[-1] == _encode((ids._last_ms << 80) | ids._last_random)
    assert made == sorted(made)
    assert all(is_valid_id(i) for i in made)
    assert abs(id_time(new_id()) - time.time()) < 5


@pytest.mark.parametrize("args", [
    [], [1, "two", 3.5, None, True], ["é", {"ü": [1]}], [[[[1]]]],
    [{"k": "x" * 1000}], ["\u2603", "tab\t", "quote\""],
])
def test_arguments_are_encoded_as_the_general_encoder_does(args: list[object]) -> None:
    app = Conveyor("memory://")
    payload = app.build("free.name", args, {}).payload
    assert payload == (encode_value(list(args), wrapped=True), "{}")
    assert json.loads(payload[0]) == args  # type: ignore[index]
    app.close()


def test_arguments_that_are_not_json_are_refused_as_before() -> None:
    app = Conveyor("memory://")
    deep: list[object] = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    circular: list[object] = []
    circular.append(circular)
    for bad, words in [([float("nan")], "JSON"), ([object()], "JSON"), ([deep], "deeper"),
                       ([circular], "Circular"), (["\ud800"], "surrogate")]:
        with pytest.raises(InvalidArguments, match=words):
            app.build("free.name", bad, {})
    app.close()
    with pytest.raises(NotSerializable, match="Circular"):
        dumps(circular)


def test_async_enqueues_one_at_a_time_together_and_after_trouble(
        caplog: pytest.LogCaptureFixture) -> None:
    """enqueue_async on a single Redis: awaited singly (stored in the caller's task on the
    link's connection), many at once (coalesced), after a script flush, after the link's
    connection was killed, and after a call cancelled in flight."""
    url = shared_redis_url()
    app = Conveyor(url, namespace=f"t{new_id().lower()}")

    @app.job
    def one(x: int) -> None:
        pass

    plain = redis.Redis.from_url(url)

    async def scenario() -> list[JobRecord]:
        handles = [await one.enqueue_async(n) for n in range(3)]
        handles += await asyncio.gather(*(one.enqueue_async(n) for n in range(3, 40)))
        plain.script_flush()
        handles.append(await app.enqueue_async("one", 40))
        link = app.broker._conn().link  # type: ignore[attr-defined]
        assert link is not None
        host, port = link._conn._writer.get_extra_info("sockname")[:2]
        plain.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")
        await asyncio.sleep(0.2)  # the loop sees the connection closed
        handles.append(await app.enqueue_async("one", 41))
        # a call cancelled in flight, with others joining it: they are stored all the same
        first = asyncio.ensure_future(one.enqueue_async(42))
        await asyncio.sleep(0)
        joined = [asyncio.ensure_future(one.enqueue_async(n)) for n in range(43, 46)]
        first.cancel()
        handles += await asyncio.gather(*joined)
        handles.append(await one.enqueue_async(46))
        return [await h.info_async() for h in handles]

    try:
        with caplog.at_level(logging.WARNING, "conveyor"):
            records = asyncio.run(scenario())
        # the killed connection was seen closed before use: no retry
        assert [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()] == []
        assert sorted(r.args[0] for r in records) == [*range(42), *range(43, 47)]
        assert all(r.state is JobState.QUEUED for r in records)
    finally:
        app.close()
        plain.close()


@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "no-hiredis"])
def test_a_connection_closed_under_a_write_is_a_lost_connection(
        hiredis: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py 8.1 lets the transport's AttributeError through when another task closed the
    connection between its health check and its write; Conveyor's connections make it a
    ConnectionError, which the broker retries as connection trouble (with hiredis or not:
    without it, the class is made as if hiredis were not installed)."""
    import redis.asyncio

    from conveyor.backends.redis import client

    if not hiredis:
        monkeypatch.setattr(client, "_pack", None)
        client.connection_class.cache_clear()
    try:
        chosen = client.connection_class(redis.asyncio.Connection)
    finally:
        client.connection_class.cache_clear()
    assert ("pack_command" in vars(chosen)) is hiredis

    class ClosedMeanwhile(chosen):  # type: ignore[misc,valid-type]
        race = False

        async def check_health(self) -> None:
            if self.race:  # another task closes it while this one checks it
                await self.disconnect()

    async def main() -> None:
        pool = redis.asyncio.ConnectionPool.from_url(shared_redis_url(),
                                                     connection_class=ClosedMeanwhile)
        conn = await pool.get_connection()
        conn.race = True
        try:
            with pytest.raises(redis.ConnectionError, match="closed while writing"):
                await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=True)
        finally:
            await pool.disconnect()

    asyncio.run(main())


def test_open_here_holds_on_the_loop_that_opened_only() -> None:
    # an awaited enqueue skips open() when open_here() says it would do nothing: on Redis
    # each loop has its own connection, which a new loop's open() makes (and pings); the
    # store's enqueue opens it itself (the app leaves that to it)
    broker = _broker()

    async def on_a_loop() -> tuple[bool, bool, str]:
        before = broker.open_here()
        await broker.open()
        job = _job(new_id())
        await broker.enqueue([job], {})
        return before, broker.open_here(), job.id

    try:
        first = asyncio.run(on_a_loop())
        second = asyncio.run(on_a_loop())  # a new loop: open again, then open here
        assert (first[:2], second[:2]) == ((False, True), (False, True))

        async def unopened() -> tuple[bool, bool]:
            before = broker.open_here()
            job = _job(new_id())
            await broker.enqueue([job], {})  # no open() first: the enqueue opens
            return before, broker.open_here() and await broker.get(job.id) is not None

        assert asyncio.run(unopened()) == (False, True)
        app = Conveyor(shared_redis_url(), namespace=broker.namespace)

        async def n(x: int) -> None:
            """A job."""

        job_fn = app.job(n)

        async def enqueue_on_new_loop() -> str:
            return (await job_fn.enqueue_async(1)).id

        try:
            job_id = asyncio.run(enqueue_on_new_loop())  # opened by the call itself
            assert asyncio.run(broker.get(job_id)) is not None
        finally:
            app.close()
    finally:
        asyncio.run(broker.close())


def test_a_blocking_call_asked_for_while_its_thread_makes_the_connections_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a signal handler's blocking call that interrupted the making of the blocking
    # connections on its own thread is refused, rather than left waiting for itself
    from conveyor import ReentrantWrite
    from conveyor.backends.redis import deploy

    broker = _broker()
    refusals: list[str] = []
    plain = deploy.blocking_scripts

    def making(url: str) -> Any:
        try:
            broker.enqueue_blocking([_job(new_id())], {})
        except ReentrantWrite as exc:
            refusals.append(str(exc))
        return plain(url)

    monkeypatch.setattr(deploy, "blocking_scripts", making)
    job = _job(new_id())
    try:
        assert broker.enqueue_blocking([job], {}) == [None]
        assert len(refusals) == 1 and "being made" in refusals[0]
        assert asyncio.run(broker.get(job.id)) is not None
    finally:
        asyncio.run(broker.close())
