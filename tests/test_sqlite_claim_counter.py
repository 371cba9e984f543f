"""SQLite's claim counter: one number per claim that takes jobs, kept in the namespace's
meta table; a claim that takes nothing writes nothing (an idle worker's claim costs no
write to the database file)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from contract.conftest import make_job
from conveyor.backends.sqlite import SQLiteBroker


def test_only_claims_that_take_jobs_spend_a_number(tmp_path: Path) -> None:
    path = tmp_path / "claims.db"

    def last() -> str:
        with sqlite3.connect(path) as conn:
            (value,) = conn.execute("SELECT value FROM c_meta WHERE key='claim'").fetchone()
            return str(value)

    async def scenario() -> list[int]:
        broker = SQLiteBroker(f"sqlite:///{path}", namespace="c")
        await broker.open()
        await broker.enqueue([make_job(), make_job()], {})
        numbers = [job.claim for job in await broker.claim("w1", ["default"], 1, 30.0)]
        seen = [last()]
        for queues in (["idle"], ["idle", "other"]):  # one queue (one statement), several
            assert await broker.claim("w1", queues, 5, 30.0) == []
        seen.append(last())
        numbers += [job.claim for job in await broker.claim("w1", ["default"], 5, 30.0)]
        assert await broker.claim("w1", ["default"], 1, 30.0) == []
        seen.append(last())
        await broker.close()
        assert seen == ["1", "1", "2"]
        return numbers

    assert asyncio.run(scenario()) == [1, 2]


def test_a_missing_counter_starts_above_every_jobs_claim(tmp_path: Path) -> None:
    path = tmp_path / "lost.db"

    async def claim_all() -> list[int]:
        broker = SQLiteBroker(f"sqlite:///{path}", namespace="c")
        await broker.open()
        await broker.enqueue([make_job()], {})
        claimed = [job.claim for job in await broker.claim("w1", ["default"], 5, 30.0)]
        await broker.close()
        return claimed

    assert asyncio.run(claim_all()) == [1]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE c_jobs SET claim=41")
        conn.execute("DELETE FROM c_meta WHERE key='claim'")
    assert asyncio.run(claim_all()) == [42]
