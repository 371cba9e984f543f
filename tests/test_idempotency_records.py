"""Idempotency records whose request did not (or not yet) store its job, and records no
version writes: an answer names a job only once it exists, and nothing stays stuck."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest

from conveyor import Conveyor
from conveyor.http import idempotency
from conveyor.http.errors import ApiError
from redis_server import shared_redis_url


@pytest.fixture(params=["sqlite", "redis"])
def store_app(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Conveyor]:
    from conveyor.ids import new_id

    url = f"sqlite:///{tmp_path}/idem.db" if request.param == "sqlite" else shared_redis_url()
    app = Conveyor(url, namespace=f"i{new_id().lower()}")

    @app.job
    def add(a: int, b: int) -> int:
        return a + b

    yield app
    app.close()


def _store(app: Conveyor) -> Callable[[str], Awaitable[str]]:
    async def enqueue(job_id: str) -> str:
        return (await app.enqueue_call_async("add", [1, 2], {}, job_id=job_id)).id

    return enqueue


def test_a_recorded_request_whose_job_is_missing_is_stored_under_the_recorded_id(
        store_app: Conveyor) -> None:
    async def scenario() -> None:
        broker = store_app.broker
        await broker.open()
        # the first request recorded the key and has not stored its job (yet, or ever)
        assert await broker.remember_idempotency("k1", "d", "first-id", 60) is None
        answer = await idempotency.once(store_app, "k1", "d", None, _store(store_app))
        assert answer == "first-id" and await broker.get("first-id") is not None
        # the first request stores it after all: it meets the id, and answers it
        again = await idempotency.once(store_app, "k1", "d", None, _store(store_app))
        assert again == "first-id"
        # an upload is never read for a key in use: 409 until the job exists
        await broker.remember_idempotency("k2", "d", "upload-id", 60)

        async def read_body(job_id: str) -> str:
            raise AssertionError("the body must not be read")

        with pytest.raises(ApiError) as raised:
            await idempotency.once(store_app, "k2", "d", None, read_body, body=True)
        assert raised.value.status == 409 and "still under way" in raised.value.message

    asyncio.run(scenario())


def test_a_request_that_fails_before_storing_frees_its_key(store_app: Conveyor) -> None:
    async def scenario() -> None:
        broker = store_app.broker
        await broker.open()

        async def client_gone(job_id: str) -> str:
            raise ConnectionResetError("the client went away mid-upload")

        with pytest.raises(ConnectionResetError):
            await idempotency.once(store_app, "k3", "d", None, client_gone, body=True)
        answer = await idempotency.once(store_app, "k3", "d", None, _store(store_app))
        assert await broker.get(answer) is not None  # the key was free for the retry

    asyncio.run(scenario())


def test_redis_records_and_holds_no_version_writes_break_nothing() -> None:
    from conveyor.backends.redis import RedisBroker
    from conveyor.ids import new_id

    app = Conveyor(shared_redis_url(), namespace=f"i{new_id().lower()}")

    async def scenario() -> None:
        broker = app.broker
        assert isinstance(broker, RedisBroker)
        await broker.open()
        await broker._cmd("set", broker.keys.idempotency("odd"), "garbage")
        assert await broker.remember_idempotency("odd", "d", "x", 60) == ("", "")
        await broker.forget_idempotency("odd", "x")  # no error, nothing changed
        # a hold that is no number is no end: the key is held until its job is final
        first = await app.enqueue_call_async("n", [], {}, force=True, unique_key="K")
        await broker._cmd("hset", broker.keys.unique_until, "K", "soon")
        second = await app.enqueue_call_async("n", [], {}, force=True, unique_key="K")
        plain = await app.enqueue_call_async("n", [], {}, force=True)
        assert second.deduplicated and second.id == first.id and not plain.deduplicated
        await broker.purge_expired()

    try:
        asyncio.run(scenario())
        with pytest.raises(ApiError) as raised:
            asyncio.run(idempotency.once(app, "odd", "d", None, _store(app)))
        assert raised.value.status == 422
    finally:
        app.close()
