"""Limits that keep slow or hostile clients from exhausting ``conveyor serve``.

One place for their defaults; :class:`ServerLimits` is what ``conveyor serve`` builds from its
options and hands to :func:`conveyor.http.protocol.protocol_class` (the HTTP layer imports it;
the command line reads its defaults without loading that layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: seconds a client has to send the request line and headers of a request, counted from
#: the connection's opening or, on a kept-alive connection, from its first byte
HEADER_TIMEOUT = 10.0
#: the most bytes the request line and headers of one request may take
MAX_HEADER_BYTES = 64 * 1024
#: bytes held while headers are incomplete, beyond :data:`MAX_HEADER_BYTES` (the request
#: line's framing, or bytes the parser has not yet told apart)
HEADER_MARGIN = 4 * 1024
#: seconds a request body may go without a byte before the request is aborted
BODY_TIMEOUT = 30.0
#: seconds a kept-alive connection may wait for its next request
KEEPALIVE_TIMEOUT = 5.0
#: the default cap on open connections, when the open-file limit allows it
MAX_CONNECTIONS = 1000
#: file descriptors left for the store, staged files, logs and the worker
FD_RESERVE = 128


def open_file_limit() -> int | None:
    """The soft limit on open files of this process (None where it cannot be read)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    """:data:`MAX_CONNECTIONS`, or less when the open-file limit leaves less room (the limit
    minus :data:`FD_RESERVE`, at least 1)."""
    soft = open_file_limit()
    if soft is None:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


@dataclass(frozen=True)
class ServerLimits:
    """The limits of one server (see the module constants for what each means)."""

    header_timeout: float = HEADER_TIMEOUT
    max_header_bytes: int = MAX_HEADER_BYTES
    body_timeout: float = BODY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    max_connections: int = field(default_factory=default_max_connections)

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keepalive_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        for name in ("max_header_bytes", "max_connections"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")

    @property
    def max_unfinished(self) -> int:
        """The most bytes held for one request whose headers, or whose chunked body's
        trailers, are incomplete."""
        return self.max_header_bytes + HEADER_MARGIN
