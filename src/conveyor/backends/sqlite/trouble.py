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

FULL = "the disk is full"
LOCKED = "the database is locked"
IO = "disk I/O error"

#: primary SQLite result codes (the low byte of an extended code) of trouble that may pass
_CODES = {
    sqlite3.SQLITE_BUSY: LOCKED,
    sqlite3.SQLITE_LOCKED: LOCKED,
    sqlite3.SQLITE_PROTOCOL: LOCKED,
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_IOERR: IO,
    sqlite3.SQLITE_FULL: FULL,
    sqlite3.SQLITE_CANTOPEN: "cannot open the database file",
}
#: the same, by message, for errors that carry no code
_MESSAGES = {
    "database is locked": LOCKED,
    "database table is locked": LOCKED,
    "readonly database": "the database is read-only",
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


def unavailable_reason(error: BaseException, path: Path) -> str | None:
    """What makes the store at ``path`` unusable, in a few words, if ``error`` is trouble
    that may pass; None for any other error."""
    reason: str | None = None
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            reason = _CODES.get(code & 0xFF)
        else:
            text = str(error).lower()
            reason = next((r for m, r in _MESSAGES.items() if m in text), None)
    elif isinstance(error, OSError) and error.errno is not None:
        reason = _ERRNOS.get(error.errno)
    if reason == IO and _disk_full(path):  # e.g. no room to grow the shared-memory file
        reason = FULL
    if reason is not None:
        outage_of(sqlite_key(path)).trouble(reason, str(error))
    return reason


def _disk_full(path: Path) -> bool:
    """True when the file system holding ``path`` (or its nearest existing parent) has no
    block left."""
    for place in (path, *path.absolute().parents):
        try:
            return os.statvfs(place).f_bavail == 0
        except OSError:
            continue
    return False
