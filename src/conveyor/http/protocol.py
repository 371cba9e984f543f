"""uvicorn's httptools protocol with JSON errors and limits against slow or hostile clients.

A request the HTTP parser refuses (a NUL byte in a header, a malformed request line) never
reaches the app; uvicorn answers it with a plain-text 400. This protocol answers
``{"error": ...}`` instead, like every other error of the API, and enforces the
:class:`~conveyor.serverlimits.ServerLimits` of its server:

- headers larger than ``max_header_bytes`` get 431, and no more than ``max_unfinished``
  bytes are held for a request whose headers are incomplete;
- headers not complete within ``header_timeout`` (from the connection's opening, or from the
  first byte of the next request on a kept-alive connection, a blank line included) get 408;
- no more than ``max_unfinished`` bytes that are not body data are held while a body is
  read (a chunked body's trailer line that never ends gets 431);
- a body that sends no byte for ``body_timeout`` gets 408, and the app sees the client
  disconnect (an upload removes its partial file);
- a kept-alive connection idle for ``keepalive_timeout`` is closed, and so is one whose
  request was answered (401, 413) while the rest of its body takes more than
  :data:`LINGER_SECONDS` to come;
- past ``max_connections`` open connections, a new one gets 503 at once;
- at most :data:`MAX_PIPELINED` requests may wait behind the one being answered.

A response's head (status line and headers) goes out in one write with the first piece of its
body (:class:`HeadWithBody`): a small answer is one segment and one wake-up of the client,
not two.

An error found while earlier requests of the connection are still being answered (garbage
sent after a complete request, say) is answered after them, so each request gets its own
answer. After an error the connection is half-closed and drained for a moment, so the client
reads the answer even while it is still sending.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from conveyor.serverlimits import ServerLimits

#: how long a refused connection is read (and dropped) before it is closed
LINGER_SECONDS = 2.0
#: refused connections past the cap that are drained rather than closed at once
DRAINED_REFUSALS = 64
#: the most requests parsed ahead of their answers on one connection
MAX_PIPELINED = 32
#: bytes of framing a request may take beyond what the parser reports (request line
#: keywords, the blank line, a chunked body's last chunk), and each piece of body
MESSAGE_FRAMING = 64
BODY_FRAMING = 16

IDLE, HEADERS, BODY = range(3)  # where the parser is in the current request


class HeadersTooLarge(Exception):
    """The request line and headers are past the server's ``max_header_bytes``."""


class TooManyPipelined(Exception):
    """More than :data:`MAX_PIPELINED` requests were sent ahead of their answers."""


class ConnectionCount:
    """The connections of one server, shared by its protocols."""

    def __init__(self) -> None:
        self.open = 0  # accepted, not yet closed
        self.refused = 0  # refused for the cap, still being drained


HEAD_UNSEEN, HEAD_HELD, HEAD_SENT = range(3)  # where a response's head is
#: the interim answer uvicorn writes before reading a body the client holds back
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HeadWithBody:
    """The transport one response is written through: its head is held until the first
    piece of its body and written with it. A head whose body has not come when the event
    loop next runs its callbacks (a streamed body that takes its time, an answer to
    ``HEAD``) is written by itself then, or when the response completes or the connection
    is closed, whichever comes first."""

    __slots__ = ("_completed", "_head", "_state", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        """Write ``cycle``'s response through this, to ``transport``."""
        self._transport = transport
        self._head = b""
        self._state = HEAD_UNSEEN
        self._completed = cycle.on_response
        cycle.transport = self  # type: ignore[assignment]
        cycle.on_response = self._on_response

    def _on_response(self) -> None:
        self.flush()  # before the answer of a request pipelined behind this one
        self._completed()

    def write(self, data: bytes) -> None:
        state = self._state
        if state == HEAD_SENT:
            self._transport.write(data)
        elif state == HEAD_HELD:
            self._state = HEAD_SENT
            self._transport.write(self._head + data)
            self._head = b""
        elif data != CONTINUE:  # the head (an interim "100 Continue" may come before it)
            self._state = HEAD_HELD
            self._head = data
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write a held head now."""
        if self._state == HEAD_HELD:
            self._state = HEAD_SENT
            if not self._transport.is_closing():
                self._transport.write(self._head)
            self._head = b""

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class JsonHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. Use :func:`protocol_class` for a server's own limits and
    count; the class itself has the default limits and one count for every server."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    count: ClassVar[ConnectionCount] = ConnectionCount()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._state = IDLE
        self._header_bytes = 0  # exact: request line and complete headers of this request
        self._unfinished = 0  # bytes fed while this request's headers stayed incomplete
        self._began_here = False  # this request began in the chunk being parsed
        self._chunk_done = 0  # bytes of that chunk taken by requests complete in it
        self._chunk_this = 0  # bytes of that chunk the parser reported for this request
        self._body_here = False  # body data came in the chunk being parsed
        self._loose = 0  # bytes since the last body data that are neither body nor headers
        self._too_large = False
        self._too_deep = False
        self._discarding = False
        self._deferred: tuple[int, str] | None = None
        self._counted = False
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0

    # -- connections --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        count = self.count
        if count.open >= self.limits.max_connections:
            self._refused = True
            count.refused += 1
            self._answer(503, f"the server has its maximum of {self.limits.max_connections} "
                         "connections open; try again shortly", b"retry-after: 1\r\n",
                         drain=count.refused <= DRAINED_REFUSALS)
            return
        count.open += 1
        self._counted = True
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self.count.open -= 1
            self._counted = False
        elif self._refused:
            self.count.refused -= 1
            self._refused = False
        self._cancel_timers()
        super().connection_lost(exc)

    def _unsupported_upgrade_warning(self) -> None:
        """An Upgrade request is answered as plain HTTP; no warning per request."""

    def _idle(self) -> bool:
        """No request of this connection is being answered or waiting to be."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    # -- input --------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._discarding:  # answered already: what the client still sends is dropped
            return
        self._began_here = self._body_here = False
        self._chunk_done = self._chunk_this = 0
        super().data_received(data)
        if self._discarding or self.transport.is_closing():
            return
        if self._state == BODY:
            self._bound_loose(len(data))
            # the body timer is armed here: most requests end in their first read
            if self._body_timer is None and not self._discarding:
                self._body_timer = self.loop.call_later(self.limits.body_timeout,
                                                        self._body_check)
            return
        if self._state == IDLE:
            # the parser skips blank lines between requests without beginning one, and the
            # keep-alive timer is off once bytes come: the header timer bounds them instead
            if self._header_timer is None and self._idle():
                self._arm_header_timer()
            return
        # a header line that never ends is buffered by the parser: bound it too
        fresh = len(data) - self._chunk_done if self._began_here else len(data)
        self._unfinished += max(0, fresh)
        if self._unfinished > self.limits.max_unfinished:
            self._too_large = True
            self._refuse(431, self._too_large_message())
        elif self._header_timer is None and self._idle():
            self._arm_header_timer()  # the first byte of a request on a kept-alive connection

    def _bound_loose(self, size: int) -> None:
        """Bound what the parser may hold while a body is read: the bytes of ``size`` just
        fed that it did not report (a chunked body's trailer line that never ends is
        buffered, like a header line), counted from the last body data."""
        loose = size - self._chunk_done - self._chunk_this
        if self._began_here:
            loose -= MESSAGE_FRAMING
        loose = max(0, loose)
        self._loose = loose if self._body_here else self._loose + loose
        if self._loose > self.limits.max_unfinished:
            self._refuse(431, "the trailer fields or chunk framing of the request body "
                         f"exceed {self.limits.max_unfinished} bytes")

    def on_message_begin(self) -> None:
        self._state = HEADERS
        self._header_bytes = 0
        self._unfinished = 0
        self._began_here = True
        self._chunk_this = 0
        self._loose = 0
        super().on_message_begin()

    def _count(self, size: int) -> None:
        self._chunk_this += size
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._too_large = True
            raise HeadersTooLarge  # the parser stops and reports an error

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            self._too_deep = True
            raise TooManyPipelined  # the parser stops and reports an error
        self._state = BODY
        self._cancel_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's cycle
            HeadWithBody(self.transport, cycle)
        self._body_seen = self.loop.time()

    def on_body(self, body: bytes) -> None:
        self._chunk_this += len(body) + BODY_FRAMING
        self._body_here = True
        self._body_seen = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._state = IDLE
        self._chunk_done += self._chunk_this + MESSAGE_FRAMING
        self._chunk_this = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()
        if self._idle() and self.timeout_keep_alive_task is None \
                and not self.transport.is_closing():  # its body ended after its answer
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or not self._idle():
            return
        if self._deferred is not None:  # an error found while earlier requests were answered
            status, message = self._deferred
            self._answer(status, message)
        elif self._state == BODY:  # answered before its body ended (401, 413)
            if self._body_timer is not None:
                self._body_timer.cancel()
            self._body_timer = self.loop.call_later(LINGER_SECONDS, self._body_overdue)
        elif self._state == HEADERS and self._header_timer is None:
            self._arm_header_timer()  # the next request began while this one was answered

    # -- timers -------------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                  self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._unset_keepalive_if_required()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._discarding or self.transport.is_closing() or not self._idle():
            return
        self._answer(408, "the request line and headers did not arrive within "
                     f"{self.limits.header_timeout:g} seconds")

    def _body_check(self) -> None:
        self._body_timer = None
        if self._discarding or self.transport.is_closing() or self._state != BODY:
            return
        now = self.loop.time()
        if self.pipeline or self.flow.read_paused or self.cycle.waiting_for_100_continue:
            self._body_seen = now  # waiting on this side, not the client
        left = self._body_seen + self.limits.body_timeout - now
        if left > 0:
            self._body_timer = self.loop.call_later(left, self._body_check)
            return
        self._refuse(408, f"no byte of the request body arrived for "
                     f"{self.limits.body_timeout:g} seconds")

    def _body_overdue(self) -> None:
        """The rest of the body of an answered request is not awaited for long."""
        self._body_timer = None
        if self._state == BODY and not self.transport.is_closing():
            self._end()

    # -- refusals -----------------------------------------------------------------------------
    def _too_large_message(self) -> str:
        return f"the request line and headers exceed {self.limits.max_header_bytes} bytes"

    def send_400_response(self, msg: str) -> None:
        """Answer a request that cannot be parsed with a JSON error and close."""
        if self._too_large:
            self._refuse(431, self._too_large_message())
        elif self._too_deep:
            self._refuse(400, f"more than {MAX_PIPELINED} requests were sent ahead of "
                         "their answers")
        else:
            self._refuse(400, "malformed HTTP request (bad request line, header or framing)")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and end the connection, after the answers owed before it."""
        self._discarding = True  # the parser is done with this connection
        cycle = self.cycle
        if self._state == BODY and cycle is not None:  # the current request cannot complete
            if cycle.response_complete:  # answered already (without reading its body)
                self._end()
            elif self.pipeline or cycle.response_started:  # no clean answer is possible
                self.transport.close()
            else:
                cycle.disconnected = True  # the app reads a disconnect and gives up
                cycle.message_event.set()
                self._answer(status, message)
        elif self._idle():
            self._answer(status, message)
        else:
            self._deferred = (status, message)

    def _answer(self, status: int, message: str, extra: bytes = b"",
                drain: bool = True) -> None:
        """Write a JSON error and end the connection."""
        body = json.dumps({"error": message}).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            extra,
            b"\r\n",
            body,
        ])
        self.transport.write(b"".join(content))
        self._end(drain)

    def _end(self, drain: bool = True) -> None:
        # Closing with unread data would send a reset, and the client could lose the answer
        # while it is still sending: end our side, drop what comes, close a little later.
        self._discarding = True
        self._cancel_timers()
        if drain and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def protocol_class(limits: ServerLimits) -> type[JsonHttpToolsProtocol]:
    """The protocol class of one server: its ``limits`` and a count of its connections.
    Use as ``uvicorn.Config(http=protocol_class(limits))``."""

    class LimitedHttpToolsProtocol(JsonHttpToolsProtocol):
        pass

    LimitedHttpToolsProtocol.limits = limits
    LimitedHttpToolsProtocol.count = ConnectionCount()
    return LimitedHttpToolsProtocol
