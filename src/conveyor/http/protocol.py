"""uvicorn's httptools protocol with JSON errors and a limit on the size of the headers.

A request the HTTP parser refuses (a NUL byte in a header, a malformed request line) never
reaches the app; uvicorn answers it with a plain-text 400. This protocol answers
``{"error": ...}`` instead, like every other error of the API, and refuses headers larger
than :data:`MAX_HEADER_BYTES` with 431 rather than buffering them without bound. After such an
answer the connection is half-closed and drained for a moment, so the client reads the
answer even while it is still sending.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

#: the most bytes the request line and headers of one request may take
MAX_HEADER_BYTES = 64 * 1024
#: the most bytes read while headers are incomplete (a read may also hold body bytes)
MAX_UNFINISHED = 1024 * 1024
#: how long a refused connection is read (and dropped) before it is closed
LINGER_SECONDS = 2.0


class HeadersTooLarge(Exception):
    """The request line and headers are past :data:`MAX_HEADER_BYTES`."""


class JsonHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. Use as ``uvicorn.Config(http=JsonHttpToolsProtocol)``."""

    _header_bytes = 0  # exact: request line and complete headers of this request
    _unfinished = 0  # coarse: bytes fed while this request's headers stayed incomplete
    _in_headers = True
    _too_large = False
    _discarding = False

    def data_received(self, data: bytes) -> None:
        if self._discarding:  # answered already: what the client still sends is dropped
            return
        was_in_headers = self._in_headers
        super().data_received(data)
        if was_in_headers and self._in_headers and not self.transport.is_closing():
            # a header line that never ends is buffered by the parser: bound it too
            self._unfinished += len(data)
            if self._unfinished > MAX_UNFINISHED:
                self._too_large = True
                self.send_400_response("headers too large")

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._unfinished = 0
        self._in_headers = True
        super().on_message_begin()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise HeadersTooLarge  # the parser stops and reports an error

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """Answer a request that cannot be parsed with a JSON error and close."""
        if self._too_large:
            status = 431
            message = f"the request line and headers exceed {MAX_HEADER_BYTES} bytes"
        else:
            status = 400
            message = "malformed HTTP request (bad request line, header or framing)"
        body = json.dumps({"error": message}).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ])
        self.transport.write(b"".join(content))
        # Closing with unread data would send a reset, and the client could lose the answer
        # while it is still sending: end our side, drop what comes, close a little later.
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()
