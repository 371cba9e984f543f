"""Logged-out dashboard sessions in the SQLite backend: ``{ns}_revoked``.

The table is made by the first logout (``CREATE TABLE IF NOT EXISTS``), not by a layout step:
a file without it simply has no logged-out session, and versions that do not know it open the
file as before. Each row is kept until its session would have expired anyway; every logout
drops the rows past that.
"""

from __future__ import annotations

import sqlite3


def _table(ns: str) -> str:
    return f"{ns}_revoked"


def revoke(conn: sqlite3.Connection, ns: str, nonce: str, until: float, now: float) -> None:
    """Record session ``nonce`` as logged out until ``until``; forget the rows past theirs
    (run in the writer's transaction)."""
    table = _table(ns)
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {table} (
        nonce TEXT PRIMARY KEY,
        until REAL NOT NULL
    ) WITHOUT ROWID""")
    conn.execute(f"DELETE FROM {table} WHERE until <= ?", (now,))
    conn.execute(f"INSERT OR REPLACE INTO {table} (nonce, until) VALUES (?, ?)", (nonce, until))


def is_revoked(conn: sqlite3.Connection, ns: str, nonce: str, now: float) -> bool:
    """True when session ``nonce`` is recorded as logged out (and its record current)."""
    try:
        row = conn.execute(f"SELECT 1 FROM {_table(ns)} WHERE nonce = ? AND until > ?",
                           (nonce, now)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # no session of this namespace was ever logged out
            return False
        raise
    return row is not None
