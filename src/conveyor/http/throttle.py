"""Throttling of wrong tokens per client address (bearer headers and the dashboard's login).

Past :data:`LIMIT` wrong tokens within :data:`WINDOW` seconds from one address, that address
is penalized: for :data:`PENALTY` seconds, doubling with each further penalty up to
:data:`MAX_PENALTY`, every token it sends is answered 429 with ``Retry-After`` *without being
checked* (so the right token gets 429 too: answering it otherwise would tell a guesser which
guess was right). One WARNING line names the address when a penalty starts; the token sent is
never logged. A right token neither ends a penalty nor forgets earlier failures: an address
whose tokens are right fails no more, and its failures age out of the window by themselves.
An address that has had no failure for :data:`MAX_PENALTY` seconds after its last penalty
starts over.

The address is the request's client (``scope["client"]``): the connection's peer, unless the
peer is a proxy the server trusts (``conveyor serve --forwarded-allow-ips``), whose
``X-Forwarded-For`` then names the client. Behind a proxy that is not trusted, every client
counts as the proxy, which is penalized for all of them.
IPv6 addresses count per ``/64`` (one host usually holds a whole one). The table of
addresses is bounded (:data:`MAX_ADDRESSES`, least recently failed dropped first, sparing
penalized ones). A limit
of 0 turns throttling off (for a proxy in front that throttles, say).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import Scope

log = logging.getLogger("conveyor.http")

#: wrong tokens from one address within :data:`WINDOW` that start a penalty
LIMIT = 10
#: seconds over which wrong tokens are counted
WINDOW = 60.0
#: seconds of an address's first penalty (each further one doubles)
PENALTY = 60.0
#: the longest penalty, in seconds
MAX_PENALTY = 3600.0
#: addresses remembered at most
MAX_ADDRESSES = 10_000
#: records looked at for one that is not penalized when the table is full
EVICTION_SCAN = 64


def client_address(scope: Scope) -> str:
    """The address a request is counted under: its client as the server gave it (the
    peer, or what a trusted proxy forwarded; an IPv4-mapped IPv6 address as IPv4, other IPv6
    ones as their /64); ``unknown`` when the server gave none. Headers are not read here."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host = str(client[0])
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a unix socket's path, say
        return host[:200]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Record:
    """What is known of one address."""

    #: times of its wrong tokens since its last penalty (the latest :data:`LIMIT` of them)
    failures: collections.deque[float] = field(default_factory=collections.deque)
    #: penalties it earned (the next one lasts PENALTY * 2 ** strikes)
    strikes: int = 0
    #: when its current penalty ends (0.0: none yet)
    blocked_until: float = 0.0


class Throttle:
    """Wrong tokens per address, and the penalties they earn (see the module docstring);
    ``limit=0``: none are counted.

    ``clock`` (default ``time.monotonic``) is the time source, replaceable for tests. Safe
    to share between threads and between the API and the dashboard of one app."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW, penalty: float = PENALTY,
                 max_penalty: float = MAX_PENALTY, max_addresses: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 0 or window <= 0 or penalty <= 0 or max_penalty < penalty \
                or max_addresses < 1:
            raise ValueError("the throttle needs limit >= 0, window > 0, "
                             "0 < penalty <= max_penalty and max_addresses >= 1")
        self.limit = limit
        self.window = window
        self.penalty = penalty
        self.max_penalty = max_penalty
        self.max_addresses = max_addresses
        self.clock = clock
        self._records: collections.OrderedDict[str, _Record] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def retry_after(self, address: str) -> float:
        """Seconds left of ``address``'s penalty; 0.0 when it may try a token."""
        with self._lock:
            record = self._records.get(address)
            if record is None:
                return 0.0
            return max(0.0, record.blocked_until - self.clock())

    def failed(self, address: str, what: str = "token") -> float:
        """Note a wrong ``what`` (a bearer token, a login) from ``address``; return the
        seconds of the penalty this starts, else 0.0."""
        if not self.limit:
            return 0.0
        now = self.clock()
        with self._lock:
            record = self._records.pop(address, None)
            if record is None or self._forgotten(record, now):
                record = _Record()
            self._records[address] = record  # the most recent last
            self._shrink(now)
            failures = record.failures
            failures.append(now)
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) < self.limit:
                return 0.0
            penalty = min(self.penalty * 2.0 ** record.strikes, self.max_penalty)
            record.strikes += 1
            record.blocked_until = now + penalty
            failures.clear()
        log.warning("%d wrong %ss from %s within %g s: its tokens are refused for %g s",
                    self.limit, what, address, self.window, penalty)
        return penalty

    def _shrink(self, now: float) -> None:
        """Drop records past :attr:`max_addresses`, the least recently failed first but
        sparing a penalized address (looking at :data:`EVICTION_SCAN` at most), so that
        failing from many other addresses does not clear a penalty."""
        records = self._records
        while len(records) > self.max_addresses:
            for _ in range(min(EVICTION_SCAN, len(records) - 1)):
                address, oldest = next(iter(records.items()))
                if oldest.blocked_until <= now:
                    break
                records.move_to_end(address)  # penalized: spared, looked at again later
            records.popitem(last=False)

    def _forgotten(self, record: _Record, now: float) -> bool:
        """True when a record's past no longer counts: its last penalty ended and its last
        failure came :attr:`max_penalty` seconds ago or more."""
        latest = record.failures[-1] if record.failures else 0.0
        return now - max(record.blocked_until, latest) >= self.max_penalty

    def refusal(self, address: str) -> tuple[str, dict[str, str]] | None:
        """The message and headers of a 429 for ``address`` while it is penalized, else
        ``None``."""
        wait = self.retry_after(address)
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        return (f"too many wrong tokens from this address; try again in {seconds} s",
                {"Retry-After": str(seconds)})
