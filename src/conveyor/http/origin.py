"""Where a request says it comes from and which server it says it is for.

Two checks guard a server (and its dashboard) against other web sites a browser visits:

* **Host.** Without a token, a server on loopback answers only requests whose ``Host`` is a
  loopback name (``localhost``, ``127.0.0.1``, ``[::1]``) or one given in ``hosts``. A page
  of another site that makes its own name resolve to 127.0.0.1 (DNS rebinding) sends its own
  name as ``Host`` and is refused.
* **Origin.** A ``POST``, ``PUT``, ``PATCH`` or ``DELETE`` whose ``Origin`` (or, lacking one,
  ``Referer``) names another host than the request's ``Host`` or one given in ``origins`` is
  refused: browsers send ``Origin`` on every cross-site request that can change something.

Where a request comes from is the connection's peer, and its scheme the connection's own:
``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from the proxies a server is
told to trust (``conveyor serve --forwarded-allow-ips``, applied by uvicorn before the app
sees the request). A server that trusts none logs the first request carrying them
(:class:`ForwardingIgnored`), for a proxy in front that was not named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.http.errors import error_response

log = logging.getLogger("conveyor.http")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORWARDED_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})


def header(scope: Scope, name: bytes) -> str | None:
    """One request header as text (latin-1, as sent), or ``None``."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def host_name(netloc: str) -> str:
    """The host of ``host[:port]`` (brackets of an IPv6 address removed), lower case."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0]
    return netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc


def origin_netloc(origin: str) -> str:
    """``host[:port]`` of an origin or URL, lower case; ``""`` when it names none."""
    return urlsplit(origin.strip()).netloc.lower() if "://" in origin else ""


class Origins:
    """The hosts and origins a server accepts besides its own ``Host``."""

    def __init__(self, origins: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        self.netlocs = frozenset(n for n in (origin_netloc(o) for o in origins) if n)
        self.any_host = "*" in hosts
        self.hosts = LOOPBACK_NAMES | {host_name(h) for h in hosts if h != "*"} | \
            {host_name(n) for n in self.netlocs}

    def host_ok(self, scope: Scope) -> bool:
        """True when the request's ``Host`` is one this server answers to without a token."""
        if self.any_host:
            return True
        host = header(scope, b"host")
        return host is not None and host_name(host) in self.hosts

    def same_site(self, scope: Scope) -> bool:
        """False when the request names an ``Origin`` (or ``Referer``) of another site."""
        source = header(scope, b"origin") or header(scope, b"referer")
        if source is None:
            return True  # not sent by a browser on another site's behalf
        netloc = origin_netloc(source)
        if not netloc:
            return False  # "null": a sandboxed or privacy-sensitive context
        return netloc == (header(scope, b"host") or "").lower() or netloc in self.netlocs


class SameSiteOnly:
    """ASGI middleware for a server without a token: refuse requests for a ``Host`` it does
    not answer to, and changes sent from another site (see the module docstring)."""

    def __init__(self, app: ASGIApp, origins: Origins) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            message = None
            if not self.origins.host_ok(scope):
                message = ("this server answers only to loopback host names without a token; "
                           "name others with --allow-host, or set a token")
            elif scope.get("method") in UNSAFE_METHODS and not self.origins.same_site(scope):
                message = "a change sent from another site is refused"
            if message is not None:
                await error_response(403, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ForwardingIgnored:
    """ASGI middleware for a server that trusts no proxy: the first request that carries
    ``X-Forwarded-For`` or ``X-Forwarded-Proto`` (ignored, as every such header is) is logged
    once, as a WARNING naming its peer, since a proxy in front that is not named costs its
    clients their own throttle count and the session cookie its ``Secure`` flag."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.warned and scope["type"] == "http":
            for name, _ in scope["headers"]:
                if name in FORWARDED_HEADERS:
                    self.warned = True
                    client = scope.get("client")
                    log.warning("a request from %s carries X-Forwarded-For or "
                                "X-Forwarded-Proto, which are ignored: if a proxy in front "
                                "sends them, name it with --forwarded-allow-ips",
                                client[0] if client else "an unknown peer")
                    break
        await self.app(scope, receive, send)
