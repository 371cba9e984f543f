"""The schedules table of the SQLite backend (``{ns}_schedules``): one row per schedule,
its definition as JSON and its state in columns. Each function runs inside the caller's
read or write transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from conveyor.schedules import Schedule, ScheduleState, read_definition, tick_of
from conveyor.serialization import dumps

_COLUMNS = "name, record, paused, last_tick, next_tick, last_job, seen_at"


def _state(row: Sequence[Any]) -> ScheduleState:
    name, record, paused, last_tick, next_tick, last_job, seen_at = row
    return ScheduleState(str(name), read_definition(record), bool(paused),
                         None if last_tick is None else float(last_tick),
                         None if next_tick is None else float(next_tick),
                         None if last_job is None else str(last_job), float(seen_at or 0.0))


def read(conn: sqlite3.Connection, ns: str, name: str | None = None) -> list[ScheduleState]:
    """Every schedule by name, or the one called ``name``."""
    if name is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM {ns}_schedules ORDER BY name").fetchall()
    else:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM {ns}_schedules WHERE name=?",
                            (name,)).fetchall()
    return [_state(row) for row in rows]


def publish(conn: sqlite3.Connection, ns: str,
            schedules: Sequence[Schedule]) -> list[ScheduleState]:
    """Upsert the definitions with ``seen_at`` now; return their stored states."""
    now = time.time()
    conn.executemany(
        f"INSERT INTO {ns}_schedules (name, record, seen_at) VALUES (?,?,?) "
        f"ON CONFLICT (name) DO UPDATE SET record=excluded.record, seen_at=excluded.seen_at",
        [(s.name, dumps(s.definition()), now) for s in schedules])
    wanted = {s.name for s in schedules}
    return [state for state in read(conn, ns) if state.name in wanted]


def advance(conn: sqlite3.Connection, ns: str, name: str, last: float,
            next_tick: float | None, last_job: str | None) -> None:
    """Move ``last_tick`` (with ``next_tick``) and ``last_job`` forward only."""
    conn.execute(f"UPDATE {ns}_schedules SET last_tick=?, next_tick=? "
                 f"WHERE name=? AND (last_tick IS NULL OR last_tick < ?)",
                 (last, next_tick, name, last))
    if last_job is not None:
        row = conn.execute(f"SELECT last_job FROM {ns}_schedules WHERE name=?",
                           (name,)).fetchone()
        if row is not None and (tick_of(row[0]) or -1) < (tick_of(last_job) or 0):
            conn.execute(f"UPDATE {ns}_schedules SET last_job=? WHERE name=?",
                         (last_job, name))


def set_paused(conn: sqlite3.Connection, ns: str, name: str,
               paused: bool) -> ScheduleState | None:
    """Set the paused flag; the schedule after the change, or None if there is none."""
    conn.execute(f"UPDATE {ns}_schedules SET paused=? WHERE name=?", (int(paused), name))
    found = read(conn, ns, name)
    return found[0] if found else None
