"""Versioned storage: a store written by the release before layouts were numbered is
upgraded in place with every job intact; a store of a newer layout is refused; processes
opening one store at once upgrade it once.

The old stores are built here, with the tables and keys that release wrote (layout 1),
not with today's code, so the test keeps checking the upgrade path as the code moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor.backends.redis import RedisBroker
from conveyor.backends.redis import layout as redis_layout
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.migrations import LAYOUT
from conveyor.errors import NewerStore
from conveyor.job import JobState
from redis_server import shared_redis_url

NOW = time.time()

#: the jobs of the old store: id -> (state, args, kwargs, result, error)
OLD_JOBS: dict[str, tuple[str, list[Any], dict[str, Any], Any, str | None]] = {
    "q1": ("queued", [1, "two"], {"three": 3.5}, None, None),
    "s1": ("scheduled", [], {"when": "later"}, None, None),
    "ok1": ("succeeded", [7], {}, {"sum": 14}, None),
    "dead1": ("dead", ["x"], {}, None, "ValueError: no"),
    "c1": ("cancelled", [], {}, None, None),
}

#: the tables of a namespace as the release before numbered layouts created them
LAYOUT_1_SQL = """
CREATE TABLE old_jobs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, queue TEXT NOT NULL, state TEXT NOT NULL,
    args TEXT NOT NULL, kwargs TEXT NOT NULL, created_at REAL NOT NULL, run_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, recoveries INTEGER NOT NULL DEFAULT 0,
    started_at REAL, finished_at REAL, result TEXT, error TEXT, traceback TEXT,
    progress REAL, progress_message TEXT, worker_id TEXT, lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, expires_at REAL,
    unstarted INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX old_jobs_ready ON old_jobs (queue, run_at) WHERE state IN ('queued', 'scheduled');
CREATE INDEX old_jobs_leases ON old_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX old_jobs_state ON old_jobs (state, queue, id);
CREATE TABLE old_workers (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, queues TEXT NOT NULL,
    concurrency INTEGER NOT NULL, min_concurrency INTEGER NOT NULL,
    max_concurrency INTEGER NOT NULL, busy INTEGER NOT NULL, processed INTEGER NOT NULL,
    failed INTEGER NOT NULL, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
    lease_expires_at REAL NOT NULL
);
CREATE TABLE old_stats (
    minute INTEGER NOT NULL, queue TEXT NOT NULL, succeeded INTEGER NOT NULL,
    failed INTEGER NOT NULL, dead INTEGER NOT NULL, cancelled INTEGER NOT NULL,
    started INTEGER NOT NULL, wait_total REAL NOT NULL, PRIMARY KEY (minute, queue)
) WITHOUT ROWID;
CREATE TABLE old_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE old_known (
    name TEXT PRIMARY KEY, record TEXT NOT NULL, seen_at REAL NOT NULL
) WITHOUT ROWID;
"""


def _old_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(LAYOUT_1_SQL)
    for job_id, (state, args, kwargs, result, error) in OLD_JOBS.items():
        final = state in ("succeeded", "dead", "cancelled")
        run_at = NOW + 3600 if state == "scheduled" else NOW - 10
        conn.execute(
            "INSERT INTO old_jobs (id, name, queue, state, args, kwargs, created_at, run_at, "
            "attempts, finished_at, result, error, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job_id, "work", "default", state, json.dumps(args), json.dumps(kwargs), NOW - 20,
             run_at, 1 if final else 0, NOW - 5 if final else None,
             None if result is None else json.dumps(result), error,
             NOW + 3600 if final else None))
    conn.close()


def _check_intact(broker: Any) -> None:
    async def read() -> None:
        await broker.open()
        for job_id, (state, args, kwargs, result, error) in OLD_JOBS.items():
            record = await broker.get(job_id)
            assert record is not None, job_id
            assert (record.state, record.name, record.queue) == (JobState(state), "work",
                                                                 "default")
            assert (record.args, record.kwargs, record.result, record.error) == (
                args, kwargs, result, error)
        counts = (await broker.counts())["default"]
        assert counts["queued"] == 1 and counts["succeeded"] == 1 and counts["dead"] == 1
        claimed = await broker.claim("w1", ["default"], 10, 30.0)
        assert [job.id for job in claimed] == ["q1"]  # the old queue still works
        await broker.close()

    asyncio.run(read())



def _upgraded(path: Path) -> sqlite3.Connection:
    """A connection to the file at ``path``, once its namespace ``old`` and the file are
    found at the newest layout."""
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LAYOUT
    assert conn.execute("SELECT value FROM old_meta WHERE key='layout'").fetchone() == (
        str(LAYOUT),)
    return conn

def test_a_sqlite_store_of_layout_1_is_upgraded_with_every_job_intact(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_sqlite(path)
    _check_intact(SQLiteBroker(f"sqlite:///{path}", namespace="old"))
    conn = _upgraded(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"old_queues", "old_unique", "old_schedules", "old_idempotency"} <= tables
    assert "unique_key" in {row[1] for row in conn.execute("PRAGMA table_info(old_jobs)")}
    conn.close()
    _check_reopened(f"sqlite:///{path}")


def _check_reopened(url: str) -> None:
    """A second open of the upgraded store changes nothing and reads the same jobs."""
    async def again() -> None:
        broker = SQLiteBroker(url, namespace="old")
        await broker.open()
        record = await broker.get("ok1")
        assert record is not None and record.result == {"sum": 14}
        await broker.close()

    asyncio.run(again())


def test_a_sqlite_store_of_a_newer_layout_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    _old_sqlite(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={LAYOUT + 1}")
    conn.close()
    broker = SQLiteBroker(f"sqlite:///{path}", namespace="old")
    with pytest.raises(NewerStore, match=f"layout {LAYOUT + 1}, newer.*upgrade Conveyor"):
        asyncio.run(broker.open())
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "old_queues" not in tables  # nothing was changed
    assert conn.execute("SELECT count(*) FROM old_jobs").fetchone()[0] == len(OLD_JOBS)
    conn.close()


def test_a_namespace_of_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    _old_sqlite(path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO old_meta (key, value) VALUES ('layout', ?)", (str(LAYOUT + 3),))
    conn.commit()
    conn.close()
    with pytest.raises(NewerStore, match="namespace old"):
        asyncio.run(SQLiteBroker(f"sqlite:///{path}", namespace="old").open())


def _open_and_enqueue(url: str, index: int, start: float) -> None:
    from conveyor import Conveyor

    while time.time() < start:  # every process opens at the same moment
        pass
    app = Conveyor(url, namespace="race")
    app.enqueue_call("work", [index], {}, force=True)
    app.close()


def test_processes_opening_a_new_sqlite_store_at_once_upgrade_it_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    context = multiprocessing.get_context("spawn")
    start = time.time() + 2.0
    procs = [context.Process(target=_open_and_enqueue, args=(url, n, start)) for n in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    conn = sqlite3.connect(tmp_path / "race.db")
    assert conn.execute("SELECT count(*) FROM race_jobs").fetchone()[0] == 8
    assert conn.execute("SELECT value FROM race_meta WHERE key='layout'").fetchone() == (
        str(LAYOUT),)
    conn.close()


#: what layout 2 (job control) added to layout 1, as that release wrote it
LAYOUT_2_SQL = """
ALTER TABLE old_jobs ADD COLUMN unique_key TEXT;
CREATE TABLE old_queues (
    name TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0, max_queued INTEGER
) WITHOUT ROWID;
CREATE TABLE old_unique (key TEXT PRIMARY KEY, job_id TEXT NOT NULL, until REAL) WITHOUT ROWID;
CREATE TABLE old_idempotency (
    key TEXT PRIMARY KEY, digest TEXT NOT NULL, job_id TEXT NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE old_schedules (
    name TEXT PRIMARY KEY, record TEXT NOT NULL, paused INTEGER NOT NULL DEFAULT 0,
    last_tick REAL, next_tick REAL, last_job TEXT, seen_at REAL NOT NULL
) WITHOUT ROWID;
INSERT INTO old_meta (key, value) VALUES ('layout', '2');
PRAGMA user_version=2;
"""


def test_a_sqlite_store_of_layout_2_gains_priorities_with_every_job_intact(
        tmp_path: Path) -> None:
    """Jobs stored before priorities get priority 0 and boost 0 and keep their order; a
    scheduled job that fell due while the store was older is claimed."""
    path = tmp_path / "two.db"
    _old_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(LAYOUT_2_SQL)
    conn.execute("INSERT INTO old_jobs (id, name, queue, state, args, kwargs, created_at, "
                 "run_at) VALUES ('s0', 'work', 'default', 'scheduled', '[]', '{}', ?, ?)",
                 (NOW - 20, NOW - 15))
    conn.close()
    url = f"sqlite:///{path}"

    async def use() -> None:
        broker = SQLiteBroker(url, namespace="old")
        await broker.open()
        for job_id in (*OLD_JOBS, "s0"):
            record = await broker.get(job_id)
            assert record is not None and record.priority == 0, job_id
        changed = await broker.set_priority("s1", 4)
        assert changed is not None and changed.priority == 4
        claimed = await broker.claim("w1", ["default"], 10, 30.0)
        assert [job.id for job in claimed] == ["s0", "q1"]  # oldest run_at first
        await broker.close()

    asyncio.run(use())
    conn = _upgraded(path)
    assert dict(conn.execute("SELECT id, boost FROM old_jobs WHERE id IN ('q1', 's1')")) == {
        "q1": 0.0, "s1": 240.0}
    indexes = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='old_jobs'")}
    assert {"old_jobs_queued", "old_jobs_scheduled"} <= indexes
    assert "old_jobs_ready" not in indexes
    conn.close()
    _check_reopened(url)


#: what layout 3 (priorities) added to layout 2, as that release wrote it
LAYOUT_3_SQL = """
ALTER TABLE old_jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE old_jobs ADD COLUMN boost REAL NOT NULL DEFAULT 0;
CREATE INDEX old_jobs_queued ON old_jobs (queue, run_at - boost, run_at) WHERE state = 'queued';
CREATE INDEX old_jobs_scheduled ON old_jobs (queue, run_at) WHERE state = 'scheduled';
DROP INDEX old_jobs_ready;
UPDATE old_meta SET value='3' WHERE key='layout';
PRAGMA user_version=3;
"""


def test_a_sqlite_store_of_layout_3_gains_limits_with_every_job_intact(
        tmp_path: Path) -> None:
    """Jobs stored before limits are unlaned (group None, deferrals 0) and claimed as before;
    the queued index keeps only unlaned jobs, laned ones get theirs, and the tables of
    buckets and round-robin cursors are made."""
    from conveyor.job import JobRecord
    from conveyor.limits import JobLimits

    path = tmp_path / "three.db"
    _old_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(LAYOUT_2_SQL)
    conn.executescript(LAYOUT_3_SQL)
    conn.execute("UPDATE old_jobs SET priority=2, boost=200 WHERE id='s1'")
    conn.close()
    url = f"sqlite:///{path}"

    async def use() -> None:
        broker = SQLiteBroker(url, namespace="old")
        await broker.open()
        for job_id in OLD_JOBS:
            record = await broker.get(job_id)
            assert record is not None and (record.group, record.deferrals) == (None, 0), job_id
        s1 = await broker.get("s1")
        assert s1 is not None and s1.priority == 2
        now = time.time()
        laned = JobRecord(id="l1", name="capped", queue="default", state=JobState.QUEUED,
                          args=[], kwargs={}, created_at=now, run_at=now - 1, group="a")
        await broker.enqueue([laned], {})
        limits = {"capped": JobLimits("capped", concurrency=1)}
        claimed = await broker.claim("w1", ["default"], 10, 30.0, limits=limits)
        assert [job.id for job in claimed] == ["q1", "l1"]  # the older run_at first
        assert claimed[1].group == "a"
        await broker.close()

    asyncio.run(use())
    conn = _upgraded(path)
    indexes = dict(conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='old_jobs'"))
    assert {"old_jobs_queued", "old_jobs_lanes", "old_jobs_running",
            "old_jobs_scheduled", "old_jobs_laned_scheduled"} <= set(indexes)
    assert "grp IS NULL" in indexes["old_jobs_queued"]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type='table'")}
    assert {"old_buckets", "old_turns"} <= tables
    conn.close()
    _check_reopened(url)


def test_the_sqlite_limits_step_can_run_again(tmp_path: Path) -> None:
    """The step of layout 4 only adds what is missing: run on a store that has it all (or
    part of it), it changes nothing and loses no job."""
    from conveyor.backends.sqlite.migrations import STEPS

    path = tmp_path / "again.db"
    asyncio.run(_use_once(f"sqlite:///{path}"))
    conn = sqlite3.connect(path, isolation_level=None)

    def layout() -> list[tuple[str, str]]:
        return sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql NOT NULL"))

    before = layout()
    conn.execute("DROP INDEX again_jobs_laned_scheduled")
    STEPS[3](conn, "again")
    STEPS[3](conn, "again")
    assert layout() == before
    assert conn.execute("SELECT count(*) FROM again_jobs").fetchone() == (1,)
    conn.close()


def test_a_sqlite_store_of_layout_4_gains_claim_numbers_with_its_running_job_kept(
        tmp_path: Path) -> None:
    """Jobs stored before claim numbers start from 0; a job running then (claimed by a
    worker of the older release) is settled by an outcome that names no claim; the next
    claims are numbered, the same worker's second claim of a job apart from its first."""
    from conveyor.backends.sqlite.migrations import STEPS
    from conveyor.job import Outcome, OutcomeKind

    path = tmp_path / "four.db"
    _old_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(LAYOUT_2_SQL)
    conn.executescript(LAYOUT_3_SQL)
    STEPS[3](conn, "old")  # layout 4 as it was made: its step adds only what is missing
    conn.execute("UPDATE old_meta SET value='4' WHERE key='layout'")
    conn.execute("PRAGMA user_version=4")
    conn.execute("UPDATE old_jobs SET state='running', worker_id='w0', attempts=2, "
                 "lease_expires_at=? WHERE id='s1'", (time.time() + 60,))
    conn.close()

    async def use() -> None:
        broker = SQLiteBroker(f"sqlite:///{path}", namespace="old")
        await broker.open()
        await broker.settle([Outcome("s1", "w0", OutcomeKind.SUCCEEDED, time.time(),
                                     result_json='"kept"')])
        s1 = await broker.get("s1")
        assert s1 is not None and (s1.state, s1.result) == (JobState.SUCCEEDED, "kept")
        (first,) = await broker.claim("w1", ["default"], 1, 30.0)
        assert (first.id, first.attempts, first.claim) == ("q1", 1, 1)
        await broker.settle([Outcome("q1", "w1", OutcomeKind.REQUEUE, time.time(),
                                     claim=first.claim)])
        (second,) = await broker.claim("w1", ["default"], 1, 30.0)
        assert (second.id, second.attempts, second.claim) == ("q1", 1, 2)
        await broker.close()

    asyncio.run(use())
    conn = _upgraded(path)
    assert "claim" in {row[1] for row in conn.execute("PRAGMA table_info(old_jobs)")}
    conn.close()
    _check_reopened(f"sqlite:///{path}")


def test_a_sqlite_store_of_layout_5_gains_the_queues_counter(tmp_path: Path) -> None:
    """The counter moves with a queue's settings and a job's deletion (by any connection,
    a plain one included), not with claims and outcomes; it starts at a random value (not
    the same in two stores); the upgrade keeps every job, and a store opened again finds it
    done."""
    from conveyor.backends.sqlite.migrations import STEPS, queues_version
    from conveyor.job import Outcome, OutcomeKind

    path = tmp_path / "five.db"
    _old_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(LAYOUT_2_SQL)
    conn.executescript(LAYOUT_3_SQL)
    for step in STEPS[3:5]:
        step(conn, "old")
    conn.execute("UPDATE old_meta SET value='5' WHERE key='layout'")
    conn.execute("PRAGMA user_version=5")
    assert conn.execute(queues_version("old")).fetchone() is None
    conn.close()

    start: list[int] = []

    def counter() -> int:
        """How far the counter moved from where the upgrade started it."""
        with contextlib.closing(sqlite3.connect(path)) as reader:
            (value,) = reader.execute(queues_version("old")).fetchone()
        if not start:
            start.append(int(value))
        return int(value) - start[0]

    async def use() -> list[int]:
        broker = SQLiteBroker(f"sqlite:///{path}", namespace="old")
        await broker.open()
        seen = [counter()]
        (taken,) = await broker.claim("w1", ["default"], 1, 30.0)
        await broker.settle([Outcome(taken.id, "w1", OutcomeKind.SUCCEEDED, time.time(),
                                     "null", claim=taken.claim)])
        seen.append(counter())
        await broker.set_max_queued("default", 50)
        seen.append(counter())
        assert await broker.delete(taken.id)
        seen.append(counter())
        await broker.close()
        return seen

    assert asyncio.run(use()) == [0, 0, 1, 2]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as plain:
        plain.execute("UPDATE old_queues SET max_queued=NULL")
    assert counter() == 3
    conn = _upgraded(path)
    assert conn.execute("SELECT count(*) FROM old_jobs").fetchone() == (len(OLD_JOBS) - 1,)
    conn.close()
    _check_reopened(f"sqlite:///{path}")
    starts = set()
    for n in range(3):
        with contextlib.closing(sqlite3.connect(tmp_path / f"new{n}.db")) as fresh:
            for step in STEPS:
                step(fresh, "old")
            starts.add(fresh.execute(queues_version("old")).fetchone()[0])
    assert len(starts) == 3


async def _use_once(url: str) -> None:
    from conveyor.job import JobRecord

    broker = SQLiteBroker(url, namespace="again")
    await broker.open()
    now = time.time()
    await broker.enqueue([JobRecord(id="l1", name="capped", queue="default",
                                    state=JobState.QUEUED, args=[], kwargs={}, created_at=now,
                                    run_at=now, group="a")], {})
    await broker.close()


# -- Redis -----------------------------------------------------------------------------------

def _old_redis(client: redis.Redis, ns: str) -> None:
    """The keys the release before numbered layouts wrote for :data:`OLD_JOBS`."""
    p = f"{{{ns}}}"
    for job_id, (state, args, kwargs, result, error) in OLD_JOBS.items():
        run_at = NOW + 3600 if state == "scheduled" else NOW - 10
        spec = {"id": job_id, "name": "work", "queue": "default", "args": args,
                "kwargs": kwargs, "created_at": NOW - 20, "run_at": run_at}
        client.hset(f"{p}:jobs", job_id, json.dumps(spec))
        client.hset(f"{p}:f:state", job_id, state)
        client.zadd(f"{p}:q:default:s:{state}", {job_id: 0})
        if state in ("queued", "scheduled"):
            client.zadd(f"{p}:q:default:waiting", {job_id: run_at})
        if state == "scheduled":
            client.zadd(f"{p}:q:default:sched", {job_id: run_at})
        if state in ("succeeded", "dead", "cancelled"):
            client.hset(f"{p}:f:attempts", job_id, 1)
            client.hset(f"{p}:f:finished", job_id, NOW - 5)
            client.zadd(f"{p}:expiry", {job_id: NOW + 3600})
        if result is not None:
            client.hset(f"{p}:f:result", job_id, json.dumps(result))
        if error is not None:
            client.hset(f"{p}:f:error", job_id, error)
    client.sadd(f"{p}:queues", "default")


def test_a_redis_namespace_of_layout_1_is_upgraded_with_every_job_intact() -> None:
    url = shared_redis_url()
    ns = f"old{time.monotonic_ns()}"
    client = redis.Redis.from_url(url, decode_responses=True)
    _old_redis(client, ns)
    assert client.get(f"{{{ns}}}:layout") is None
    _check_intact(RedisBroker(url, namespace=ns))
    assert client.get(f"{{{ns}}}:layout") == str(redis_layout.LAYOUT)
    # layout 3: the scheduled job waits in sched only; q1 was claimed
    assert client.zrange(f"{{{ns}}}:q:default:waiting", 0, -1) == []
    assert client.zrange(f"{{{ns}}}:q:default:sched", 0, -1) == ["s1"]
    _check_intact_again(url, ns)
    client.close()


def _layout_3_redis(client: redis.Redis, ns: str) -> None:
    """A namespace as layout 3 wrote it: the queued job ranked in waiting, the scheduled one
    in sched, a running one in its lease set (no lanes, deferrals or running zsets)."""
    p = f"{{{ns}}}"
    rows = {"q3": ("queued", NOW - 10), "s3": ("scheduled", NOW + 3600),
            "r3": ("running", NOW - 30)}
    for job_id, (state, run_at) in rows.items():
        spec = {"id": job_id, "name": "work", "queue": "default", "args": [], "kwargs": {},
                "created_at": NOW - 40, "run_at": run_at}
        client.hset(f"{p}:jobs", job_id, json.dumps(spec))
        client.hset(f"{p}:f:state", job_id, state)
        if state == "running":
            client.hset(f"{p}:f:attempts", job_id, 1)
            client.hset(f"{p}:f:worker", job_id, "w0")
            client.zadd(f"{p}:q:default:leases", {job_id: NOW + 3600})
        else:
            client.zadd(f"{p}:q:default:s:{state}", {job_id: 0})
            client.zadd(f"{p}:q:default:{'waiting' if state == 'queued' else 'sched'}",
                        {job_id: run_at})
    client.sadd(f"{p}:queues", "default")
    client.set(f"{p}:layout", 3)


def test_a_redis_namespace_of_layout_3_takes_limits_with_its_jobs_unlaned() -> None:
    """Layout 4 moves no data: the old jobs read back unlaned with no deferrals, claims and
    settles go on as before, and a laned job joins the old queue."""
    from conveyor.ids import new_id
    from conveyor.job import JobRecord, Outcome, OutcomeKind
    from conveyor.limits import JobLimits

    url = shared_redis_url()
    ns = f"l3{time.monotonic_ns()}"
    client = redis.Redis.from_url(url, decode_responses=True)
    _layout_3_redis(client, ns)

    async def scenario() -> tuple[list[Any], list[str], list[str]]:
        broker = RedisBroker(url, namespace=ns)
        await broker.open()
        records = [await broker.get(i) for i in ("q3", "s3", "r3")]
        # claimed before the upgrade, it has no claim number: its outcome names none
        await broker.settle([Outcome("r3", "w0", OutcomeKind.SUCCEEDED, time.time(),
                                     result_json="null")])
        laned = JobRecord(new_id(), "capped", "default", JobState.QUEUED, [], {},
                          time.time(), time.time(), group="a")
        await broker.enqueue([laned], {})
        limits = {"capped": JobLimits("capped", concurrency=1)}
        claimed = [j.id for j in await broker.claim("w1", ["default"], 5, 30.0,
                                                    limits=limits)]
        states = [str(r.state) for r in [await broker.get(i) for i in ("r3", laned.id)]
                  if r is not None]
        await broker.close()
        return records, claimed, states

    records, claimed, states = asyncio.run(scenario())
    assert client.get(f"{{{ns}}}:layout") == str(redis_layout.LAYOUT) == "5"
    assert [(r.id, str(r.state), r.group, r.deferrals) for r in records] == [
        ("q3", "queued", None, 0), ("s3", "scheduled", None, 0), ("r3", "running", None, 0)]
    assert len(claimed) == 2 and claimed[0] == "q3"  # the old job first: it ranks first
    assert states == ["succeeded", "running"]
    client.close()


def _check_intact_again(url: str, ns: str) -> None:
    async def again() -> None:
        broker = RedisBroker(url, namespace=ns)
        await broker.open()
        record = await broker.get("dead1")
        assert record is not None and record.error == "ValueError: no"
        await broker.close()

    asyncio.run(again())


def test_a_redis_namespace_of_a_newer_layout_is_refused() -> None:
    url = shared_redis_url()
    ns = f"new{time.monotonic_ns()}"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.set(f"{{{ns}}}:layout", redis_layout.LAYOUT + 1)
    with pytest.raises(NewerStore, match=f"namespace '{ns}'"):
        asyncio.run(RedisBroker(url, namespace=ns).open())
    from conveyor import Conveyor

    app = Conveyor(url, namespace=ns)
    with pytest.raises(NewerStore):  # the blocking enqueue checks it too
        app.enqueue_call("work", [], {}, force=True)
    app.close()
    assert client.get(f"{{{ns}}}:layout") == str(redis_layout.LAYOUT + 1)
    assert client.hlen(f"{{{ns}}}:jobs") == 0
    client.close()


def test_a_new_redis_namespace_starts_at_the_current_layout() -> None:
    url = shared_redis_url()
    ns = f"fresh{time.monotonic_ns()}"
    from conveyor import Conveyor

    app = Conveyor(url, namespace=ns)
    app.enqueue_call("work", [1], {}, force=True)
    app.close()
    client = redis.Redis.from_url(url, decode_responses=True)
    assert client.get(f"{{{ns}}}:layout") == str(redis_layout.LAYOUT)
    client.close()


def test_the_cli_and_a_worker_refuse_a_newer_store_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={LAYOUT + 1}")
    conn.close()
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_URL"}
    for command in (["jobs"], ["worker", "conveyor.bench_app:app"]):
        done = subprocess.run([sys.executable, "-m", "conveyor", *command, "--url",
                               f"sqlite:///{path}"], capture_output=True, text=True,
                              timeout=60, env=env, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if "newer than" in line]
        assert len(lines) == 1 and "upgrade Conveyor" in lines[0], done.stderr
        assert "Traceback" not in done.stderr


def test_a_layout_that_is_no_number_is_refused_untouched(tmp_path: Path) -> None:
    from conveyor.errors import ConfigurationError

    path = tmp_path / "odd.db"
    _old_sqlite(path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO old_meta (key, value) VALUES ('layout', 'two')")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigurationError, match="not a number"):
        asyncio.run(SQLiteBroker(f"sqlite:///{path}", namespace="old").open())
    url = shared_redis_url()
    ns = f"odd{time.monotonic_ns()}"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.set(f"{{{ns}}}:layout", "two")
    with pytest.raises(ConfigurationError, match="no layout number"):
        asyncio.run(RedisBroker(url, namespace=ns).open())
    assert client.get(f"{{{ns}}}:layout") == "two"
    client.close()
