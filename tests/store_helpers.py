"""Helpers of the store-specific tests (tests/test_sqlite_*.py, tests/test_redis_*.py): open
brokers on one store, see the statements a SQLite call runs and how SQLite plans them, run a
scenario on a Redis broker."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from conveyor.backends.redis import RedisBroker
from conveyor.backends.sqlite import SQLiteBroker
from redis_server import shared_redis_url

T = TypeVar("T")


def sqlite_brokers(url: str, namespace: str) -> Iterator[Callable[[], SQLiteBroker]]:
    """For a fixture: ``make()`` opens another broker on the store; all close at the end."""
    opened: list[SQLiteBroker] = []

    def make() -> SQLiteBroker:
        broker = SQLiteBroker(url, namespace=namespace)
        asyncio.run(broker.open())
        opened.append(broker)
        return broker

    yield make
    for broker in opened:
        broker.close_blocking()


def statements(url: str, fn: Callable[[sqlite3.Connection], Any]) -> list[str]:
    """The statements ``fn`` runs on a connection of the store (values bound in), inside
    a transaction that is rolled back."""
    seen: list[str] = []
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.set_trace_callback(seen.append)
    try:
        fn(conn)
    finally:
        conn.set_trace_callback(None)
        conn.execute("ROLLBACK")
        conn.close()
    return [s for s in seen if not s.startswith(("BEGIN", "ROLLBACK"))]


def plan(url: str, statement: str) -> list[str]:
    """What SQLite does for ``statement``: the details of EXPLAIN QUERY PLAN."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
    finally:
        conn.close()


def on_redis(scenario: Callable[[RedisBroker], Awaitable[T]], namespace: str) -> T:
    """``scenario`` on a broker of ``namespace`` on the shared test Redis, closed after it."""
    async def main() -> T:
        broker = RedisBroker(shared_redis_url(), namespace=namespace)
        await broker.open()
        try:
            return await scenario(broker)
        finally:
            await broker.close()

    return asyncio.run(main())
