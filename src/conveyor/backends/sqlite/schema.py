"""Tables, indexes, connection settings and row mapping of the SQLite backend."""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from conveyor import stored
from conveyor.backends.sqlite.clock import lease_now
from conveyor.errors import ConfigurationError
from conveyor.job import JobRecord, WorkerInfo
from conveyor.stats import SUMS
from conveyor.stored import STATES, strict_loads
from conveyor.urls import redact_url

log = logging.getLogger("conveyor.store")

T = TypeVar("T")

_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

JOB_COLUMNS = (
    "id, name, queue, state, args, kwargs, created_at, run_at, attempts, recoveries, "
    "started_at, finished_at, result, error, traceback, progress, progress_message, "
    "worker_id, lease_expires_at, cancel_requested, expires_at, unique_key, priority, grp, "
    "deferrals"
)

WORKER_COLUMNS = (
    "id, host, pid, queues, concurrency, min_concurrency, max_concurrency, busy, processed, "
    "failed, started_at, heartbeat_at"
)


@dataclass(frozen=True)
class Settings:
    """What a ``sqlite:///PATH?synchronous=FULL&busy_timeout=5000`` URL asks for."""

    path: Path
    synchronous: str = "FULL"
    busy_timeout_ms: int = 10_000

    @classmethod
    def from_url(cls, url: str) -> Settings:
        """Parse a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc:
            raise ConfigurationError(f"expected sqlite:///PATH, got {redact_url(url)!r}")
        raw = unquote(parts.path)
        if raw.startswith("/"):
            raw = raw[1:]
        if not raw or raw == ":memory:":
            raise ConfigurationError(
                "the SQLite backend needs a file (workers and producers share it): "
                "sqlite:///conveyor.db"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        synchronous = query.pop("synchronous", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigurationError("synchronous must be FULL, NORMAL or EXTRA")
        try:
            busy = int(query.pop("busy_timeout", "10000"))
        except ValueError:
            raise ConfigurationError("busy_timeout must be whole milliseconds") from None
        if query:
            raise ConfigurationError(f"unknown SQLite URL options: {', '.join(sorted(query))}")
        return cls(Path(raw), synchronous, busy)


def check_namespace(namespace: str) -> str:
    """The namespace prefixes table names, so it must be a plain identifier."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace {namespace!r} must be letters, digits and underscores (at most 63)"
        )
    return namespace


#: bytes the write-ahead log file is cut back to once it starts over, after a long read had
#: let it grow (it is about 4 MB otherwise: SQLite copies it into the database every 1,000
#: pages)
WAL_SIZE_LIMIT = 8 * 1024 * 1024


def connect(settings: Settings, create: bool = True) -> sqlite3.Connection:
    """Open a connection with WAL, the busy timeout and the chosen durability.

    The file's directory is never made (a mistyped path fails); without ``create`` the file
    must exist too. Failures to open name the path: :class:`ConfigurationError` for a path
    that cannot be right, an :class:`OSError` (a directory in the way, no permission) that
    the broker reports as unavailable, or SQLite's error when nothing better is known.
    """
    where = settings.path.absolute()
    if create:
        _create_private(where)
    target = f"file:{quote(str(where))}?mode={'rwc' if create else 'rw'}"
    try:
        conn = sqlite3.connect(
            target,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=settings.busy_timeout_ms / 1000,
            cached_statements=256,
        )
    except sqlite3.DatabaseError as exc:
        better = _open_error(where, create, exc)
        if better is exc:
            raise
        raise better from exc
    try:
        conn.execute(f"PRAGMA busy_timeout={settings.busy_timeout_ms}")
        mode = _switch_to_wal(conn, settings.busy_timeout_ms / 1000)
        if str(mode).lower() != "wal":
            raise ConfigurationError(f"could not switch {settings.path} to WAL (got {mode})")
        conn.execute(f"PRAGMA synchronous={settings.synchronous}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        better = _open_error(where, create, exc)
        if better is exc:
            raise
        raise better from exc
    except BaseException:  # a full disk, a lock: no half-open connection left behind
        conn.close()
        raise
    return conn


def _create_private(where: Path) -> None:
    """Create the database file empty and readable by its owner only (0600), unless it
    exists; SQLite gives its -wal and -shm files the mode of the database file."""
    try:
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:  # there already, or it cannot be: SQLite's own open says why
        return
    os.close(fd)


def _switch_to_wal(conn: sqlite3.Connection, patience: float) -> str:
    """Put the database in WAL mode; return the mode it is in. SQLite answers "locked" at
    once, without its busy timeout, while another connection makes a new file WAL: that is
    waited out here, for up to ``patience`` seconds."""
    return retry_locked(lambda: str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]),
                        patience, 0.001, 0.05)


def is_locked(exc: sqlite3.Error) -> bool:
    """True when ``exc`` is SQLite's "database is locked": another connection holds a lock
    this one needs."""
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_BUSY


#: the random cuts of :func:`retry_locked`'s pauses, from the OS: unlike the ``random``
#: module's, alike in no two processes even when an app seeds that module in each of them
_JITTER = random.SystemRandom()


def retry_locked(attempt: Callable[[], T], patience: float, pause: float, longest: float,
                 given_up: Callable[[], bool] = lambda: False) -> T:
    """``attempt()``, tried again while SQLite answers "locked" for up to ``patience``
    seconds (or until ``given_up()``), then what it raised. The pauses between tries double
    from ``pause`` up to ``longest``, each cut short at random by up to half, so that
    processes waiting for one lock do not try in step."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or time.monotonic() + pause / 2 > deadline or given_up():
                raise
            time.sleep(pause * (1 - _JITTER.random() / 2))
            pause = min(pause * 2, longest)


def _no_directory(where: Path) -> ConfigurationError:
    from conveyor.backends import MissingStore

    parent = where.parent
    if parent.exists():
        return ConfigurationError(
            f"cannot create the SQLite database {where}: {parent} is not a directory")
    return MissingStore(str(where), f"no directory {parent} for the SQLite database {where}")


def check_directory(path: Path) -> None:
    """Raise :class:`ConfigurationError` naming the directory of ``path`` if it is missing
    (a mistyped path is found when the broker is made, not at its first use)."""
    where = path.absolute()
    if not where.parent.is_dir():
        raise _no_directory(where)


def _open_error(where: Path, create: bool, error: sqlite3.DatabaseError) -> BaseException:
    """Why SQLite could not open the database file at ``where``, as a typed error naming
    the path; ``error`` itself when that is all there is to say (a lock, a full disk)."""
    from conveyor.backends import MissingStore

    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return ConfigurationError(f"cannot use the store at {where}: file is not a database")
    if code != sqlite3.SQLITE_CANTOPEN:
        return error
    parent = where.parent
    if not parent.is_dir():
        return _no_directory(where)
    if where.is_dir():
        return IsADirectoryError(errno.EISDIR, "the database path is a directory", str(where))
    if not where.exists():
        if not create:
            return MissingStore(str(where))
        if not os.access(parent, os.W_OK | os.X_OK):
            return PermissionError(errno.EACCES, "permission denied", str(where))
    elif not os.access(where, os.R_OK | os.W_OK) or not os.access(parent, os.W_OK | os.X_OK):
        return PermissionError(errno.EACCES, "permission denied", str(where))
    return error


def due_now(conn: sqlite3.Connection, ns: str, queue: str, now: float) -> None:
    """Give ``now`` as their run time to the queued and running jobs of ``queue`` whose run
    time is no number (text or bytes a hand left there, which SQLite sorts after every
    number and reads as 0 in a rank), in the caller's write transaction: a claim that meets
    one so makes it due, as if enqueued now (and one it took, started now), and reads on
    with numbers only. Each is logged."""
    fixed = conn.execute(f"UPDATE {ns}_jobs SET run_at=? WHERE state IN ('queued', 'running') "
                         f"AND queue=? AND run_at >= '' RETURNING id", (now, queue)).fetchall()
    for (job_id,) in fixed:
        log.warning("job %s: its run time is no number (left so by hand); it is due now",
                    stored.text(job_id))


def ddl(ns: str) -> list[str]:
    """The statements that create the namespace's tables and indexes of layout 1 (later
    layouts add to them: see :mod:`.migrations`)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {ns}_jobs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            queue TEXT NOT NULL,
            state TEXT NOT NULL,
            args TEXT NOT NULL,
            kwargs TEXT NOT NULL,
            created_at REAL NOT NULL,
            run_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            recoveries INTEGER NOT NULL DEFAULT 0,
            started_at REAL,
            finished_at REAL,
            result TEXT,
            error TEXT,
            traceback TEXT,
            progress REAL,
            progress_message TEXT,
            worker_id TEXT,
            lease_expires_at REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            expires_at REAL,
            unstarted INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        # layout 3 replaces it with one index of queued jobs and one of scheduled jobs
        f"""CREATE INDEX IF NOT EXISTS {ns}_jobs_ready ON {ns}_jobs (queue, run_at)
            WHERE state IN ('queued', 'scheduled')""",
        f"""CREATE INDEX IF NOT EXISTS {ns}_jobs_leases ON {ns}_jobs (lease_expires_at)
            WHERE state = 'running'""",
        f"CREATE INDEX IF NOT EXISTS {ns}_jobs_state ON {ns}_jobs (state, queue, id)",
        f"""CREATE TABLE IF NOT EXISTS {ns}_workers (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            queues TEXT NOT NULL,
            concurrency INTEGER NOT NULL,
            min_concurrency INTEGER NOT NULL,
            max_concurrency INTEGER NOT NULL,
            busy INTEGER NOT NULL,
            processed INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            lease_expires_at REAL NOT NULL
        )""",
        # per-minute statistics summed over workers (see conveyor.stats); a database made
        # before they existed gains the table here, when it is next opened
        f"""CREATE TABLE IF NOT EXISTS {ns}_stats (
            minute INTEGER NOT NULL,
            queue TEXT NOT NULL,
            succeeded INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            dead INTEGER NOT NULL,
            cancelled INTEGER NOT NULL,
            started INTEGER NOT NULL,
            wait_total REAL NOT NULL,
            PRIMARY KEY (minute, queue)
        ) WITHOUT ROWID""",
        f"""CREATE TABLE IF NOT EXISTS {ns}_meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        # the jobs workers run, as they publish them (see conveyor.known): name -> JSON
        f"""CREATE TABLE IF NOT EXISTS {ns}_known (
            name TEXT PRIMARY KEY,
            record TEXT NOT NULL,
            seen_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ]


def check_boot(conn: sqlite3.Connection, ns: str, boot: str, now: float) -> None:
    """Inside the caller's write transaction: leases follow the boot clock (:mod:`.clock`);
    when the database last saw another boot, or leases of the wall clock (made before),
    running jobs' leases expire now and the workers table is emptied, so the jobs are
    recovered at once."""
    row = conn.execute(f"SELECT value FROM {ns}_meta WHERE key='boot'").fetchone()
    if row is None or row[0] != boot:
        conn.execute(f"UPDATE {ns}_jobs SET lease_expires_at=? WHERE state='running'", (now,))
        conn.execute(f"DELETE FROM {ns}_workers")
        conn.execute(f"INSERT OR REPLACE INTO {ns}_meta (key, value) VALUES ('boot', ?)",
                     (boot,))


STATS_COLUMNS = "minute, queue, " + ", ".join(SUMS)


def job_from_row(row: tuple[Any, ...]) -> JobRecord:
    """Build a record from a row selected with :data:`JOB_COLUMNS`; a row a hand or a bug
    left odd (see :mod:`conveyor.stored`) reads too."""
    try:
        record = JobRecord(
            id=row[0],
            name=row[1],
            queue=row[2],
            state=STATES[row[3]],
            args=strict_loads(row[4]),
            kwargs=strict_loads(row[5]),
            created_at=row[6],
            run_at=row[7],
            attempts=row[8],
            recoveries=row[9],
            started_at=row[10],
            finished_at=row[11],
            result=strict_loads(row[12]),
            error=as_text(row[13]),
            traceback=as_text(row[14]),
            progress=row[15],
            progress_message=as_text(row[16]),
            worker_id=row[17],
            lease_expires_at=None if row[18] is None else wall_time(row[18]),
            cancel_requested=bool(row[19]),
            expires_at=row[20],
            unique_key=as_text(row[21]),
            priority=row[22],
            group=row[23],
            deferrals=row[24],
        )
    except Exception:  # (text where a number or JSON belongs, a state no version knows)
        return _odd_job(row)
    return record if stored.plain(record) else _odd_job(row)


def _odd_job(row: tuple[Any, ...]) -> JobRecord:
    """:func:`job_from_row` of a row that did not read plainly: each column as the nearest
    value of its field's type (see :mod:`conveyor.stored`)."""
    created = stored.number(row[6])
    lease = stored.optional_number(row[18])
    return JobRecord(
        id=stored.text(row[0]),
        name=stored.text(row[1]),
        queue=stored.text(row[2]),
        state=stored.state(row[3]),
        args=stored.json_value(row[4]),
        kwargs=stored.json_value(row[5]),
        created_at=created,
        run_at=stored.number(row[7], created),
        attempts=stored.integer(row[8]),
        recoveries=stored.integer(row[9]),
        started_at=stored.optional_number(row[10]),
        finished_at=stored.optional_number(row[11]),
        result=stored.json_value(row[12]),
        error=stored.optional_text(row[13]),
        traceback=stored.optional_text(row[14]),
        progress=stored.optional_number(row[15]),
        progress_message=stored.optional_text(row[16]),
        worker_id=stored.optional_text(row[17]),
        lease_expires_at=None if lease is None else wall_time(lease),
        cancel_requested=bool(stored.integer(row[19])),
        expires_at=stored.optional_number(row[20]),
        unique_key=stored.optional_text(row[21]),
        priority=stored.integer(row[22]),
        group=stored.optional_text(row[23]),
        deferrals=stored.integer(row[24]),
    )


def as_text(value: Any) -> Any:
    """A text column as text even when a hand stored bytes in it (escaped, never raised)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def wall_time(lease_clock: float) -> float:
    """A time of the lease clock as seconds since the epoch, for display."""
    return lease_clock - lease_now() + time.time()


def worker_from_row(row: tuple[Any, ...]) -> WorkerInfo:
    """Build a worker from a row selected with :data:`WORKER_COLUMNS` (each column read as
    its field's type, however odd: see :mod:`conveyor.stored`)."""
    queues = stored.json_value(row[3])
    return WorkerInfo(
        id=stored.text(row[0]),
        host=stored.text(row[1]),
        pid=stored.integer(row[2]),
        queues=[stored.text(q) for q in queues] if type(queues) is list else [],
        concurrency=stored.integer(row[4]),
        min_concurrency=stored.integer(row[5]),
        max_concurrency=stored.integer(row[6]),
        busy=stored.integer(row[7]),
        processed=stored.integer(row[8]),
        failed=stored.integer(row[9]),
        started_at=stored.number(row[10]),
        heartbeat_at=stored.number(row[11]),
    )
