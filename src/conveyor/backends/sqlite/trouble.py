"""Which SQLite failures mean the store cannot be used for now: a full disk, a locked
database, an I/O error, a file that cannot be opened or written. Callers see those as
:class:`~conveyor.errors.StoreUnavailable`; any other error (a bad statement, a constraint,
a setting) stays what it is. Such trouble is logged once per outage (see
:mod:`conveyor.backends.outage`): the first time it is met, not at every failed call.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from conveyor.backends.outage import outage_of, sqlite_key

#: seconds of waiting for the write lock past which the wait is trouble, even though it
#: ended with the lock: every process's writes, heartbeats included, were held that long
#: (see :func:`lock_trouble`)
LOCK_TROUBLE = 1.0

FULL = "the disk is full"
LOCKED = "the database is locked"
IO = "disk I/O error"
READ_ONLY = "the database is read-only"

#: primary SQLite result codes (the low byte of an extended code) of trouble that may pass
_CODES = {
    sqlite3.SQLITE_BUSY: LOCKED,
    sqlite3.SQLITE_LOCKED: LOCKED,
    sqlite3.SQLITE_PROTOCOL: LOCKED,
    sqlite3.SQLITE_READONLY: READ_ONLY,
    sqlite3.SQLITE_IOERR: IO,
    sqlite3.SQLITE_FULL: FULL,
    sqlite3.SQLITE_CANTOPEN: "cannot open the database file",
}
#: the same, by message, for errors that carry no code
_MESSAGES = {
    "database is locked": LOCKED,
    "database table is locked": LOCKED,
    "readonly database": READ_ONLY,
    "disk i/o error": IO,
    "database or disk is full": FULL,
    "unable to open database": "cannot open the database file",
}
#: errors of the file system around the database (opening its file)
_ERRNOS = {
    errno.ENOSPC: FULL,
    errno.EDQUOT: FULL,
    errno.EIO: IO,
    errno.EROFS: "the file system is read-only",
    errno.EISDIR: "the database path is a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
#: extended codes of a read-only database that passes by itself (another connection
#: recovering the log, a lock it cannot take yet, a shared-memory file being set up, a hot
#: journal): a plain read-only file, one moved away or a directory that refuses the journal
#: takes an operator
_PASSING_READ_ONLY = {sqlite3.SQLITE_READONLY_RECOVERY, sqlite3.SQLITE_READONLY_CANTLOCK,
                      sqlite3.SQLITE_READONLY_ROLLBACK,
                      sqlite3.SQLITE_READONLY_CANTINIT}
#: reasons that take an operator (permissions, a read-only mount, a path that is a
#: directory): logged as an ERROR, not a WARNING, though they are waited out the same way
_LASTING = {READ_ONLY, "the file system is read-only", "the database path is a directory",
            "permission denied"}
#: the lasting reasons during which the file still reads: only a write ends such an outage
#: (see :class:`~conveyor.backends.outage.Outage`), and reads are served meanwhile
_READS_WORK = {READ_ONLY, "the file system is read-only"}


def unavailable_reason(error: BaseException, path: Path) -> str | None:
    """What makes the store at ``path`` unusable, in a few words, if ``error`` is trouble
    that may pass; None for any other error."""
    reason: str | None = None
    lasting = False
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            reason = _CODES.get(code & 0xFF)
            lasting = reason in _LASTING and code not in _PASSING_READ_ONLY
        else:
            text = str(error).lower()
            reason = next((r for m, r in _MESSAGES.items() if m in text), None)
    elif isinstance(error, OSError) and error.errno is not None:
        reason = _ERRNOS.get(error.errno)
        lasting = reason in _LASTING
    if reason == IO and _disk_full(path):  # e.g. no room to grow the shared-memory file
        reason = FULL
    if reason is not None:
        outage_of(sqlite_key(path)).trouble(reason, str(error), refused=lasting,
                                            reads_work=lasting and reason in _READS_WORK)
    return reason


def needs_new_connection(error: BaseException) -> bool:
    """Whether a connection that met ``error`` can never write again, whatever is mended:
    SQLite opens a file it cannot write then as read-only and keeps it so, and keeps a file
    moved away or replaced; a new connection writes once the file can be written."""
    return isinstance(error, sqlite3.OperationalError) and getattr(
        error, "sqlite_errorcode", None) in (sqlite3.SQLITE_READONLY,
                                             sqlite3.SQLITE_READONLY_DBMOVED)


def _disk_full(path: Path) -> bool:
    """True when the file system holding ``path`` (or its nearest existing parent) has no
    block left."""
    for place in (path, *path.absolute().parents):
        try:
            return os.statvfs(place).f_bavail == 0
        except OSError:
            continue
    return False


def lock_trouble(lease: float | None) -> float:
    """Seconds of waiting for the write lock that count as trouble for a worker whose leases
    last ``lease`` seconds (None: no worker here yet): :data:`LOCK_TROUBLE`, or a quarter of
    the lease if shorter. A lease lapses once the lock is held a lease less a heartbeat's
    interval (a third of the lease, at most a second); each process's own heartbeat, sent
    during such a hold, then waits at least a third of the lease, so it notes the trouble
    before that process recovers anything."""
    return LOCK_TROUBLE if lease is None else min(LOCK_TROUBLE, lease / 4)
