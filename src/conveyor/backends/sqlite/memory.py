"""``memory://``: the SQLite backend on a throwaway file in RAM, for tests in one process.

The store is an ordinary SQLite database (WAL, a writer thread, reader connections: the very
code of :class:`SQLiteBroker`) kept in ``/dev/shm`` (a RAM-backed directory; a private
temporary directory when there is none) with ``synchronous=OFF``: nothing is fsynced, so
nothing survives a crash, which is the point. SQLite's own ``:memory:`` and shared-cache URIs
are not used: the broker reads and writes through several connections at once, and a
shared-cache database locks whole tables between them.

* ``memory://`` is private: a new store for each broker (so for each app object), removed
  when that broker is closed (``app.close()``).
* ``memory://NAME`` is shared by every app of the process that names it, and kept until the
  process exits (closing an app does not remove it).

Every store of the process is removed at exit. Other processes never see these stores.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from conveyor.backends.outage import outage_of, sqlite_key
from conveyor.backends.sqlite.broker import SQLiteBroker
from conveyor.errors import ConfigurationError
from conveyor.ids import new_id
from conveyor.urls import redact_url

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_lock = threading.Lock()
_directory: Path | None = None
_owner_pid = 0


def _remove_all() -> None:
    """At exit: remove the directory of this process's stores (not a forked child's)."""
    if _directory is not None and os.getpid() == _owner_pid:
        shutil.rmtree(_directory, ignore_errors=True)


def store_directory() -> Path:
    """The directory holding this process's in-memory stores, made on first use."""
    global _directory, _owner_pid
    with _lock:
        if _directory is None or _owner_pid != os.getpid():
            shm = Path("/dev/shm")
            base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None
            _directory = Path(tempfile.mkdtemp(prefix="conveyor-memory-", dir=base))
            if _owner_pid == 0:
                atexit.register(_remove_all)
            _owner_pid = os.getpid()
        return _directory


def parse_name(url: str) -> str | None:
    """The store name of ``memory://NAME`` (None for the private ``memory://``)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "memory" or not _:
        raise ConfigurationError(f"expected memory:// or memory://NAME, got {redact_url(url)!r}")
    name = rest.rstrip("/")
    if not name:
        return None
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"memory store name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return name


class MemoryBroker(SQLiteBroker):
    """A :class:`SQLiteBroker` on a RAM file: private (``memory://``) or named and shared
    within the process (``memory://NAME``)."""

    def __init__(self, url: str, namespace: str = "conveyor", retention: float = 7 * 86400):
        name = parse_name(url)
        self.shared_name = name
        stem = f"named-{name}" if name is not None else f"private-{new_id().lower()}"
        path = store_directory() / f"{stem}.db"
        super().__init__(f"sqlite:///{quote(str(path))}", namespace, retention)
        self.settings = replace(self.settings, synchronous="OFF")
        self.url = url
        # one outage record with the file's, under which the SQLite code reports trouble
        self.outage = outage_of(sqlite_key(path))

    def _closed(self) -> None:
        """A private store's files go with its close (before any use can open it again:
        what that use stores goes to a new file, not one about to be removed)."""
        if self.shared_name is None:
            path = self.settings.path
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
