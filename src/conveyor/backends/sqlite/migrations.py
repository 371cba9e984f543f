"""Ordered migrations of a namespace's tables: the storage layout can grow.

Each step brings a namespace from one layout to the next, inside the opening connection's
write transaction (``BEGIN IMMEDIATE``), so processes that open the same file at once apply
it once: the first takes the write lock and upgrades, the others find it done. A namespace
records its layout in its ``meta`` table; ``PRAGMA user_version`` holds the newest layout of
any namespace in the file, so a file written by a newer Conveyor is refused at once.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable

from conveyor.backends.sqlite.schema import ddl
from conveyor.errors import ConfigurationError, NewerStore

Step = Callable[[sqlite3.Connection, str], None]


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _layout_1(conn: sqlite3.Connection, ns: str) -> None:
    """The jobs, workers, statistics, meta and known-jobs tables (a namespace made before
    layouts were numbered has them, perhaps without the ``unstarted`` column)."""
    for statement in ddl(ns):
        conn.execute(statement)
    if "unstarted" not in _columns(conn, f"{ns}_jobs"):
        conn.execute(f"ALTER TABLE {ns}_jobs ADD COLUMN unstarted INTEGER NOT NULL DEFAULT 0")


def _layout_2(conn: sqlite3.Connection, ns: str) -> None:
    """Job control: queue settings kept in the store (paused, max_queued), unique keys (and
    each job's own, shown with it), idempotency keys of HTTP enqueues, and schedules."""
    if "unique_key" not in _columns(conn, f"{ns}_jobs"):
        conn.execute(f"ALTER TABLE {ns}_jobs ADD COLUMN unique_key TEXT")
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        max_queued INTEGER
    ) WITHOUT ROWID""")
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_unique (
        key TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        until REAL
    ) WITHOUT ROWID""")
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_idempotency (
        key TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        job_id TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""")
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_schedules (
        name TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        last_tick REAL,
        next_tick REAL,
        last_job TEXT,
        seen_at REAL NOT NULL
    ) WITHOUT ROWID""")


def _layout_3(conn: sqlite3.Connection, ns: str) -> None:
    """Priorities: each job's ``priority`` and ``boost`` (the seconds its rank runs ahead of
    its ``run_at``; jobs stored before get 0 and 0). Claims take queued jobs by rank from
    the ``queued`` index and promote scheduled jobs once due (the ``scheduled`` index): the
    index of all waiting jobs by ``run_at`` goes."""
    columns = _columns(conn, f"{ns}_jobs")
    if "priority" not in columns:
        conn.execute(f"ALTER TABLE {ns}_jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    if "boost" not in columns:
        conn.execute(f"ALTER TABLE {ns}_jobs ADD COLUMN boost REAL NOT NULL DEFAULT 0")
    # the claim's ORDER BY names the same expression, so that the index serves it
    conn.execute(f"""CREATE INDEX IF NOT EXISTS {ns}_jobs_queued
        ON {ns}_jobs (queue, run_at - boost, run_at) WHERE state = 'queued'""")
    conn.execute(f"""CREATE INDEX IF NOT EXISTS {ns}_jobs_scheduled
        ON {ns}_jobs (queue, run_at) WHERE state = 'scheduled'""")
    conn.execute(f"DROP INDEX IF EXISTS {ns}_jobs_ready")


def _layout_4(conn: sqlite3.Connection, ns: str) -> None:
    """Limits: each job's group (``grp``; NULL for a job without limits, as every job stored
    before) and ``deferrals``. Queued laned jobs wait in their own index (``lanes``: queue,
    name, group, rank) and the ``queued`` index keeps the unlaned ones only; running laned
    jobs are counted from the ``running`` index, scheduled laned ones from the
    ``laned_scheduled`` index. Token buckets and the round-robin cursors
    of grouped names get their tables (see :mod:`.lanes`)."""
    columns = _columns(conn, f"{ns}_jobs")
    if "grp" not in columns:
        conn.execute(f"ALTER TABLE {ns}_jobs ADD COLUMN grp TEXT")
    if "deferrals" not in columns:
        conn.execute(f"ALTER TABLE {ns}_jobs ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0")
    conn.execute(f"DROP INDEX IF EXISTS {ns}_jobs_queued")
    conn.execute(f"""CREATE INDEX {ns}_jobs_queued ON {ns}_jobs (queue, run_at - boost, run_at)
        WHERE state = 'queued' AND grp IS NULL""")
    conn.execute(f"""CREATE INDEX IF NOT EXISTS {ns}_jobs_lanes
        ON {ns}_jobs (queue, name, grp, run_at - boost, run_at)
        WHERE state = 'queued' AND grp IS NOT NULL""")
    # limit_usage counts a name's scheduled laned jobs that are due
    conn.execute(f"""CREATE INDEX IF NOT EXISTS {ns}_jobs_laned_scheduled
        ON {ns}_jobs (name, grp, run_at) WHERE state = 'scheduled' AND grp IS NOT NULL""")
    conn.execute(f"""CREATE INDEX IF NOT EXISTS {ns}_jobs_running
        ON {ns}_jobs (name, grp, lease_expires_at)
        WHERE state = 'running' AND grp IS NOT NULL""")
    # full_at: when the bucket is full again (a purge drops it then)
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_buckets (
        key TEXT PRIMARY KEY,
        tokens REAL NOT NULL,
        at REAL NOT NULL,
        full_at REAL NOT NULL
    ) WITHOUT ROWID""")
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_turns (
        queue TEXT NOT NULL,
        name TEXT NOT NULL,
        grp TEXT NOT NULL,
        PRIMARY KEY (queue, name)
    ) WITHOUT ROWID""")


def _layout_5(conn: sqlite3.Connection, ns: str) -> None:
    """Fencing by claim: each job's ``claim``, the number its latest claim took from the
    namespace's claim counter (``meta`` key ``claim``, which only grows): an attempt's
    outcome, heartbeats and progress name it, so a late copy never touches a later attempt,
    even of the same worker after an uncharged put-back (``attempts`` goes back) or of a
    job deleted and enqueued again under the same id. Jobs stored before have 0."""
    if "claim" not in _columns(conn, f"{ns}_jobs"):
        conn.execute(f"ALTER TABLE {ns}_jobs ADD COLUMN claim INTEGER NOT NULL DEFAULT 0")
    conn.execute(f"INSERT OR IGNORE INTO {ns}_meta (key, value) "
                 f"SELECT 'claim', coalesce(max(claim), 0) FROM {ns}_jobs")


def _layout_6(conn: sqlite3.Connection, ns: str) -> None:
    """The ``queues`` counter (``meta`` key ``queues``): triggers move it, in the
    transaction of whichever connection writes, whenever what an enqueue checks of its
    queue may have changed: a queue's settings written or removed (its cap), a job deleted
    (the last of a queue forgets it) or moved to another queue. A producer keeps what it
    read of those while the counter stands (see :mod:`conveyor.backends.sqlite.writer`);
    the commits of workers, which change none of it, leave it standing. It starts at a
    random value, so that another store's file copied over this one (a restore) does not
    pass for this one's by an equal counter."""
    start = str(int.from_bytes(os.urandom(5), "big"))
    conn.execute(f"INSERT OR IGNORE INTO {ns}_meta (key, value) VALUES ('queues', ?)",
                 (start,))
    for trigger, event in (("queues_added", f"INSERT ON {ns}_queues"),
                           ("queues_changed", f"UPDATE ON {ns}_queues"),
                           ("queues_removed", f"DELETE ON {ns}_queues"),
                           ("jobs_removed", f"DELETE ON {ns}_jobs"),
                           ("jobs_moved", f"UPDATE OF queue ON {ns}_jobs")):
        conn.execute(f"CREATE TRIGGER IF NOT EXISTS {ns}_{trigger} AFTER {event} BEGIN "
                     f"{queues_moved(ns)}; END")


def queues_moved(ns: str) -> str:
    """The statement that moves namespace ``ns``'s ``queues`` counter (see
    :func:`_layout_6`)."""
    return f"UPDATE {ns}_meta SET value = value + 1 WHERE key = 'queues'"


def queues_version(ns: str) -> str:
    """The query of namespace ``ns``'s ``queues`` counter (see :func:`_layout_6`): one
    value, ``None`` before layout 6."""
    return f"SELECT value FROM {ns}_meta WHERE key = 'queues'"


#: the steps, in order: ``STEPS[n]`` brings a namespace from layout ``n`` to ``n + 1``
STEPS: tuple[Step, ...] = (_layout_1, _layout_2, _layout_3, _layout_4, _layout_5, _layout_6)
#: the layout this version writes
LAYOUT = len(STEPS)


def layout_of(conn: sqlite3.Connection, ns: str) -> int:
    """The layout recorded for namespace ``ns``; 0 when none is (a new namespace, or one
    made before layouts were numbered, which may lack some tables of layout 1: its first
    step, which only adds what is missing, runs for both)."""
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                            (f"{ns}_meta",)).fetchone()
    if has_meta is None:
        return 0
    row = conn.execute(f"SELECT value FROM {ns}_meta WHERE key='layout'").fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise ConfigurationError(f"namespace {ns}: its stored layout {row[0]!r} is not a "
                                 "number; it was not written by Conveyor") from None


def is_current(conn: sqlite3.Connection, ns: str, boot: str) -> bool:
    """Whether opening namespace ``ns`` would write nothing, read without a write lock: the
    file and the namespace are at :data:`LAYOUT` and the database last saw boot ``boot``
    (see :func:`conveyor.backends.sqlite.schema.check_boot`). Anything else (a new file, an
    older or newer layout, an odd value) is for the write transaction to decide."""
    try:
        (file_layout,) = conn.execute("PRAGMA user_version").fetchone()
        if file_layout != LAYOUT or layout_of(conn, ns) != LAYOUT:
            return False
        row = conn.execute(f"SELECT value FROM {ns}_meta WHERE key='boot'").fetchone()
    except (sqlite3.Error, ConfigurationError):
        return False
    return row is not None and row[0] == boot


def upgrade(conn: sqlite3.Connection, ns: str, where: str) -> int:
    """Bring namespace ``ns`` up to :data:`LAYOUT` inside the caller's write transaction;
    return the layout it had. Raise :class:`NewerStore` (changing nothing) for a file or a
    namespace written by a newer version."""
    (file_layout,) = conn.execute("PRAGMA user_version").fetchone()
    if file_layout > LAYOUT:
        raise NewerStore(where, file_layout, LAYOUT)
    found = layout_of(conn, ns)
    if found > LAYOUT:
        raise NewerStore(f"{where} (namespace {ns})", found, LAYOUT)
    for step in STEPS[found:]:
        step(conn, ns)
    if found < LAYOUT:
        conn.execute(f"INSERT OR REPLACE INTO {ns}_meta (key, value) VALUES ('layout', ?)",
                     (str(LAYOUT),))
    if file_layout < LAYOUT:
        conn.execute(f"PRAGMA user_version={LAYOUT}")
    return found
