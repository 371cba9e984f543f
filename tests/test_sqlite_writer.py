"""The SQLite write thread answers every caller and survives failures of SQLite itself."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from conveyor.backends.sqlite.schema import Settings, connect
from conveyor.backends.sqlite.writer import Writer


def make_writer(tmp_path: Path) -> Writer:
    settings = Settings(tmp_path / "w.db")

    def open_conn() -> sqlite3.Connection:
        conn = connect(settings)
        conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        return conn

    writer = Writer(open_conn, lambda: settings.busy_timeout_ms / 1000, lambda: None,
                    "PRAGMA data_version")
    writer.start()
    return writer


def insert(value: int):  # type: ignore[no-untyped-def]
    return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (value,)).rowcount


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def sabotage(conn: sqlite3.Connection) -> None:
    """End the transaction behind the writer's back (as SQLite does after SQLITE_FULL or an
    I/O error), then fail: the writer's own rollback then fails too."""
    conn.execute("ROLLBACK")
    raise sqlite3.OperationalError("disk I/O error (simulated)")


def test_a_failed_rollback_answers_the_group_and_keeps_the_thread(tmp_path: Path) -> None:
    """Writes sent through the thread (as event-loop callers do) all get an answer when the
    writer's own rollback fails, and the thread goes on serving later writes."""
    writer = make_writer(tmp_path)

    async def group() -> list[object]:
        calls = [writer.run(sabotage), writer.run(insert(1)), writer.run(insert(2))]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)

    async def alone(fn):  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(writer.run(fn), 10)

    try:
        answers = asyncio.run(group())
        assert any(isinstance(a, sqlite3.Error) for a in answers), answers
        assert asyncio.run(alone(insert(3))) == 1
    finally:
        writer.stop()


def test_a_lone_failing_write_rolls_back_alone(tmp_path: Path) -> None:
    writer = make_writer(tmp_path)
    try:
        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (99)")
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            writer.run_blocking(half_then_fail)
        assert writer.run_blocking(count) == 0
    finally:
        writer.stop()
