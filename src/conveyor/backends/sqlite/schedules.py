"""The schedules table of the SQLite backend (``{ns}_schedules``): one row per schedule,
its definition as JSON and its state in columns. Each function runs inside the caller's
read or write transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from conveyor.schedules import MAX_TIME, Schedule, ScheduleState, read_state, tick_of
from conveyor.serialization import dumps

_COLUMNS = "name, record, paused, last_tick, next_tick, last_job, seen_at"
#: ``last_tick`` where it is a number (text or a blob there reads as unreadable)
_NUMERIC_LAST = "typeof(last_tick) IN ('integer', 'real')"


def _state(row: Sequence[Any]) -> ScheduleState:
    name, record, paused, last_tick, next_tick, last_job, seen_at = row
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return read_state(str(name), record, bool(paused), last_tick, next_tick, last_job, seen_at)


def read(conn: sqlite3.Connection, ns: str,
         names: Sequence[str] | None = None) -> list[ScheduleState]:
    """Every schedule by name, or those called ``names``."""
    if names is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM {ns}_schedules ORDER BY name").fetchall()
    else:
        marks = ",".join("?" * len(names))
        rows = conn.execute(f"SELECT {_COLUMNS} FROM {ns}_schedules WHERE name IN ({marks}) "
                            f"ORDER BY name", list(names)).fetchall() if names else []
    return [_state(row) for row in rows]


def publish(conn: sqlite3.Connection, ns: str,
            schedules: Sequence[Schedule]) -> list[ScheduleState]:
    """Upsert the definitions with ``seen_at`` now; return their stored states."""
    now = time.time()
    conn.executemany(
        f"INSERT INTO {ns}_schedules (name, record, seen_at) VALUES (?,?,?) "
        f"ON CONFLICT (name) DO UPDATE SET record=excluded.record, seen_at=excluded.seen_at",
        [(s.name, dumps(s.definition()), now) for s in schedules])
    return read(conn, ns, [s.name for s in schedules])


def advance(conn: sqlite3.Connection, ns: str, name: str, last: float,
            next_tick: float | None, last_job: str | None) -> None:
    """Move ``last_tick`` (with ``next_tick``) and ``last_job`` forward only."""
    conn.execute(f"UPDATE {ns}_schedules SET last_tick=?, next_tick=? "
                 f"WHERE name=? AND (last_tick IS NULL OR last_tick < ?)",
                 (last, next_tick, name, last))
    if last_job is not None:
        row = conn.execute(f"SELECT last_job FROM {ns}_schedules WHERE name=?",
                           (name,)).fetchone()
        old = row[0] if row is not None and isinstance(row[0], str) else None
        if row is not None and (tick_of(old) or -1) < (tick_of(last_job) or 0):
            conn.execute(f"UPDATE {ns}_schedules SET last_job=? WHERE name=?",
                         (last_job, name))


def rewind(conn: sqlite3.Connection, ns: str, name: str, expected: float, last: float,
           next_tick: float | None) -> bool:
    """Set ``last_tick`` back to ``last`` (with ``next_tick``) if it still is ``expected``."""
    return bool(conn.execute(
        f"UPDATE {ns}_schedules SET last_tick=?, next_tick=? "
        f"WHERE name=? AND {_NUMERIC_LAST} AND last_tick=?",
        (last, next_tick, name, expected)).rowcount)


def set_paused(conn: sqlite3.Connection, ns: str, name: str,
               paused: bool) -> ScheduleState | None:
    """Set the paused flag and move ``last_tick`` up to now (a number there stays when it is
    later); the schedule after the change, or None if there is none."""
    now = time.time()
    conn.execute(f"UPDATE {ns}_schedules SET paused=?, last_tick=CASE "
                 f"WHEN {_NUMERIC_LAST} AND last_tick > ? AND last_tick <= ? THEN last_tick "
                 f"ELSE ? END WHERE name=?", (int(paused), now, MAX_TIME, now, name))
    found = read(conn, ns, [name])
    return found[0] if found else None
