"""One log line per outage of a store, not one per retry.

Every part of a process that uses a store (its broker's retries, a worker waiting for it, a
health check) reports trouble and success to the store's :class:`Outage`: the first trouble
logs a WARNING naming the store and the cause; the first success after it logs an INFO
saying how long the store was unavailable. What comes in between is not logged. An
outage during which reads still work (a Redis master demoted to a read-only replica) is
ended by a write only, whatever other trouble comes meanwhile: a read that succeeds says
nothing of writes.

A store that refuses a running process (a :class:`ConfigurationError` after it was open:
Redis restarted with fewer databases, a node joined to a cluster) is an outage too, logged
once as an ERROR: an operator may mend it while the process waits (see :func:`waits_out`).

A store that answers but whose replicas do not confirm writes (``?replicas=N`` on a Redis
URL) is trouble of its own, not an outage: a WARNING when a write first goes unconfirmed,
an INFO when a write that waited is confirmed again; reads, claims and heartbeats, which
do not wait, neither start nor end it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING

from conveyor.errors import ConfigurationError, StoreUnavailable, redact_url

if TYPE_CHECKING:
    from conveyor.backends.base import Broker

log = logging.getLogger("conveyor.store")


class WritesUnconfirmed(StoreUnavailable):
    """A write reached the store, which answers, but was not confirmed as kept as asked
    (by ``wanted`` replicas): logged as trouble of its own, not as an outage."""

    def __init__(self, url: str, reason: str, wanted: int, sent: float | None = None) -> None:
        self.wanted = wanted
        super().__init__(url, reason, sent)


class Outage:
    """The state of one store as this process sees it: available, or down since when and
    why. Safe to use from any thread."""

    def __init__(self, name: str) -> None:
        #: the store's URL, without credentials
        self.name = name
        self._lock = threading.Lock()
        self._since: float | None = None
        #: why the store is unavailable, in a few words (None while it is available)
        self.reason: str | None = None
        #: the store refused this process during the outage under way (logged once)
        self._refused = False
        #: reads still work during the outage under way: only a write ends it
        self.reads_work = False
        #: the store was opened by this process once (its layout and settings accepted): a
        #: refusal since is an outage to wait out (see :func:`waits_out`), not an error in
        #: its URL; set by :func:`opened`
        self.accepted = False
        #: time.monotonic() when the store last answered after an outage
        self._back_at = float("-inf")
        #: since when writes are not confirmed by the replicas they wait for (or None)
        self._unconfirmed_since: float | None = None
        #: why they are not, in a few words (None while they are)
        self.unconfirmed_reason: str | None = None

    @property
    def down(self) -> bool:
        """True from the first trouble until the next success."""
        return self._since is not None

    def trouble(self, reason: str, detail: str = "", sent: float | None = None,
                refused: bool = False, reads_work: bool = False) -> None:
        """Note that the store could not be used (``reason`` in a few words, ``detail`` the
        driver's message); log it if it starts an outage. ``sent`` (``time.monotonic()``)
        is when the failed call began: one that began before the store answered again (a
        connection left hanging by the outage, timing out after it) is not a new outage.
        ``refused``: the store answered but refuses this process (an ERROR, not a WARNING:
        it takes an operator to mend: a SQLite file that cannot be written too), logged once
        per outage even when the outage began as the store being out of reach (a restart
        that came back with other settings).
        ``reads_work``: reads still work meanwhile, so only a write ends the outage (see
        :meth:`recovered`); kept until it ends, whatever other trouble comes meanwhile (a
        demoted server loading its new master's data answers as unreachable, then reads
        again while it is still a replica)."""
        with self._lock:
            if self._since is None and sent is not None and sent < self._back_at:
                return
            if reads_work:
                self.reads_work = True
            self.reason = reason
            first_refusal = refused and not self._refused
            self._refused = self._refused or refused
            if self._since is not None and not first_refusal:
                return
            if self._since is None:
                self._since = time.monotonic()
        if refused:
            log.error("the store %s refuses this process: %s%s; trying again until it "
                      "accepts", self.name, reason,
                      f" ({detail})" if detail and detail != reason else "")
            return
        log.warning("cannot reach the store %s: %s%s", self.name, reason,
                    f" ({detail})" if detail and detail != reason else "")

    def note(self, error: BaseException) -> None:
        """:meth:`trouble` for an error the store raised (its ``reason`` and ``sent``, when
        it has them); :meth:`unconfirmed` for a write its replicas did not confirm."""
        if isinstance(error, WritesUnconfirmed):
            self.unconfirmed(error.reason, error.wanted)
            return
        if isinstance(error, ConfigurationError):
            self.trouble(self._without_url(str(error)), refused=True)
            return
        reason = getattr(error, "reason", "")
        # a StoreUnavailable's own text repeats its reason: the driver's is the detail
        detail = str(error.__cause__ if reason and error.__cause__ is not None else error)
        self.trouble(reason or str(error), detail, getattr(error, "sent", None))

    def _without_url(self, text: str) -> str:
        """``text`` (an error's message) without this store's URL, options and all: the
        reason of an outage is shown to clients (``/healthz``), which are not told where
        the store is; a message that begins with the URL loses it, elsewhere it is "the
        store"."""
        url = re.escape(self.name) + r"(?:\?[^\s:]*)?"
        return re.sub(url, "the store", re.sub(f"^{url}: ", "", text))

    def recovered(self, sent: float | None = None, wrote: bool = False) -> None:
        """Note that the store answered; log the end of an outage, if one was under way.
        ``sent`` (``time.monotonic()``): when the call that was answered began; an outage
        that began after it is not ended by its answer (a read in flight as a write met a
        locked database, say: SQLite's readers are not stopped by a writer's lock).
        ``wrote``: the call wrote, which also ends an outage during which reads work."""
        if self._since is None:  # the common case: no lock
            return
        with self._lock:
            since: float | None = self._since
            if since is not None and ((sent is not None and since > sent)
                                      or (self.reads_work and not wrote)):
                since = None  # began while the call was under way, or reads do not end it
            if since is not None:
                self._since, self.reason, self._refused = None, None, False
                self.reads_work = False
                self._back_at = time.monotonic()
        if since is not None:
            log.info("store %s is reachable again (unavailable for %.1fs)", self.name,
                     time.monotonic() - since)

    @property
    def unconfirming(self) -> bool:
        """True from a write its replicas did not confirm until one they confirmed."""
        return self._unconfirmed_since is not None

    def unconfirmed(self, reason: str, wanted: int) -> None:
        """Note that a write was not confirmed by the ``wanted`` replicas it waited for;
        log it if it is the first since writes were last confirmed."""
        with self._lock:
            self.unconfirmed_reason = reason
            if self._unconfirmed_since is not None:
                return
            self._unconfirmed_since = time.monotonic()
        log.warning("writes to the store %s are not confirmed by %d %s: %s", self.name,
                    wanted, "replica" if wanted == 1 else "replicas", reason)

    def confirmed(self) -> None:
        """Note that a write was confirmed by the replicas it waited for; log the end of
        a spell of unconfirmed writes, if one was under way."""
        if self._unconfirmed_since is None:  # the common case: no lock
            return
        with self._lock:
            since, self._unconfirmed_since = self._unconfirmed_since, None
            self.unconfirmed_reason = None
        if since is not None:
            log.info("writes to the store %s are confirmed by its replicas again "
                     "(unconfirmed for %.1fs)", self.name, time.monotonic() - since)


_outages: dict[str, Outage] = {}
_lock = threading.Lock()


def store_key(url: str) -> str:
    """What identifies the store of ``url`` in this process: the URL without credentials
    and options, or for SQLite the database's absolute path."""
    if url.split(":", 1)[0].lower() == "sqlite":
        from conveyor.backends.sqlite.schema import Settings

        return sqlite_key(Settings.from_url(url).path)
    return redact_url(url.split("?", 1)[0])


def sqlite_key(path: object) -> str:
    """The key of the SQLite database at ``path`` (a :class:`pathlib.Path`)."""
    from pathlib import Path

    return f"sqlite:///{Path(str(path)).absolute()}"


def outage_of(key: str) -> Outage:
    """The one :class:`Outage` of the store ``key`` (see :func:`store_key`) in this process."""
    found = _outages.get(key)
    if found is None:
        with _lock:
            found = _outages.setdefault(key, Outage(key))
    return found


def outage(url: str) -> Outage:
    """The one :class:`Outage` of the store of ``url`` in this process."""
    return outage_of(store_key(url))


async def opened(broker: Broker) -> None:
    """Open ``broker`` (see :meth:`Broker.open`) and note that its store accepted this
    process: a refusal from now on is waited out (:func:`waits_out`)."""
    await broker.open()
    outage_for(broker).accepted = True


def waits_out(broker: Broker, error: BaseException) -> bool:
    """True when a running process waits ``error`` out rather than failing or logging it
    at each try: trouble that passes (see :meth:`Broker.is_transient`), or the store
    refusing it (:class:`ConfigurationError`) once it was opened by this process (see
    :func:`opened`), which an operator may mend (before, the URL is more likely wrong: an
    error). It is noted on the store's :class:`Outage` (logged once)."""
    outage = outage_for(broker)
    if broker.is_transient(error) or (isinstance(error, ConfigurationError)
                                      and outage.accepted):
        outage.note(error)
        return True
    return False


def outage_for(broker: Broker) -> Outage:
    """The :class:`Outage` of ``broker``'s store (kept on the broker after the first call)."""
    found = broker.outage
    if found is None:
        try:
            found = outage(broker.url)
        except ConfigurationError:  # a URL only its backend understands: key it as it is
            found = outage_of(redact_url(broker.url))
        broker.outage = found
    return found
