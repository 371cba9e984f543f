"""``create_app``: the Starlette application of the HTTP API, mountable in any ASGI app.

Routes come from the table in :mod:`conveyor.http.routes`; every error becomes a JSON body
``{"error": "..."}`` with its status code; a bearer token, when set, guards every route but
``/healthz``. Every request is counted for ``GET /metrics`` by route template and status.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route, request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.errors import StoreDamaged, StoreUnavailable
from conveyor.http.docs import is_docs_path
from conveyor.http.errors import ApiError, error_response
from conveyor.http.health import StoreGate, StoreHealth
from conveyor.http.openapi import Operation
from conveyor.http.origin import Origins, SameSiteOnly
from conveyor.http.paths import route_path
from conveyor.http.routes import JOB_PATH, Routes
from conveyor.http.services import DEFAULT_MAX_UPLOAD, Services, store_unavailable
from conveyor.http.throttle import Throttle, client_address

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.containers import ContainerTarget
    from conveyor.metrics import Metrics

log = logging.getLogger("conveyor.http")
PUBLIC_PATHS = frozenset({"/healthz"})


def bearer_verdict(scope: Scope, token: bytes) -> bool | None:
    """Whether the request's ``Authorization: Bearer`` carries ``token`` (compared in
    constant time): True if it does, False if a wrong one came, None if none came."""
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, given = value.partition(b" ")
            if scheme.lower() != b"bearer":
                return False
            return hmac.compare_digest(given.strip(), token)
    return None


class BearerAuth:
    """ASGI middleware: a request needs ``Authorization: Bearer TOKEN`` (compared in
    constant time), except for the public paths; otherwise 401 with ``WWW-Authenticate``.
    Wrong tokens are counted per client address by ``throttle``: a penalized address gets
    429 with ``Retry-After`` for any token it sends (see :mod:`conveyor.http.throttle`)."""

    def __init__(self, app: ASGIApp, token: str,
                 exempt: Callable[[str], bool] | None = None,
                 throttle: Throttle | None = None,
                 session: Callable[[Scope], Awaitable[bool]] | None = None) -> None:
        self.app = app
        self.token = token.encode()
        #: paths that check access themselves (the dashboard's, with its login)
        self.exempt = exempt
        self.throttle = throttle if throttle is not None else Throttle()
        #: whether a request carries a valid dashboard session, which opens the
        #: documentation (read only) to a browser that logged in
        self.session = session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        if scope["type"] != "http" or path in PUBLIC_PATHS or \
                (self.exempt is not None and self.exempt(path)):
            await self.app(scope, receive, send)
            return
        verdict = bearer_verdict(scope, self.token)
        if verdict is None and self.session is not None and is_docs_path(path) \
                and scope.get("method") in ("GET", "HEAD"):
            try:  # a session's logout is kept in the store
                opened = await self.session(scope)
            except StoreUnavailable as exc:
                log.warning("GET %s: %s", path, exc)
                refused = store_unavailable(exc)
                await error_response(refused.status, refused.message,
                                     refused.headers)(scope, receive, send)
                return
            if opened:
                await self.app(scope, receive, send)
                return
        if verdict is not None:
            address = client_address(scope)
            refusal = self.throttle.refusal(address)
            if refusal is not None:  # whatever the token: no verdict while penalized
                response = error_response(429, *refusal)
                await response(scope, receive, send)
                return
            if verdict:
                await self.app(scope, receive, send)
                return
            self.throttle.failed(address, "bearer token")
        challenge = 'Bearer realm="conveyor"'
        if verdict is False:
            challenge += ', error="invalid_token"'
        message = "a bearer token is required" if verdict is None else "wrong bearer token"
        response = error_response(401, message, {"WWW-Authenticate": challenge})
        await response(scope, receive, send)


class BodyStalled(Exception):
    """The request body sent nothing for the app's ``body_timeout``: answered 408. Not an
    :class:`ApiError`, so what was begun for the request is undone as for a disconnect."""


class BodyTimeout:
    """ASGI middleware: a request body that sends nothing for ``seconds`` ends its request
    with 408 and ``Connection: close`` (an upload being staged removes its partial file)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        more_body = True

        async def receiving() -> Message:
            nonlocal more_body
            if not more_body:  # the body is complete: waiting for a disconnect is not a stall
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except TimeoutError:
                raise BodyStalled("no byte of the request body arrived for "
                                  f"{self.seconds:g} seconds") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                more_body = False
            return message

        await self.app(scope, receiving, send)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """ASGI middleware: count requests by route template (not the raw path, to bound the
    labels), method and status, for ``conveyor_http_requests_total``."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[Route]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # to name requests refused before routing (401)
        self._own = frozenset(id(route) for route in routes)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")  # an app this one is mounted in sets its own Mount here
        if route is not None and id(route) in self._own:
            return str(route.path)
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                return str(candidate.path)
        return "<unmatched>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope.get("method", "GET")
            self.metrics.http_request(self._route(scope),
                                      method if method in METHODS else "OTHER",
                                      status, time.perf_counter() - began)


class _Dispatch:
    """The ASGI app of one path: each method's handler (HEAD is answered like GET), a
    Request handler wrapped as Starlette wraps an endpoint, an ASGI one as it is."""

    def __init__(self, operations: list[Operation]) -> None:
        self.apps: dict[str, ASGIApp] = {
            op.method: op.handler if op.raw else request_response(op.handler)
            for op in operations}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        await self.apps["GET" if method == "HEAD" else method](scope, receive, send)


def build_routes(operations: list[Operation]) -> list[Route]:
    """Starlette routes from the table: one per path, dispatching on the method; the path
    of enqueues and status reads (:data:`JOB_PATH`, which no other path's pattern matches)
    is tried first."""
    by_path: dict[str, list[Operation]] = {}
    for op in operations:
        by_path.setdefault(op.path, []).append(op)
    return [Route(path, _Dispatch(ops), methods=[op.method for op in ops])
            for path, ops in sorted(by_path.items(), key=lambda item: item[0] != JOB_PATH)]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no such endpoint: {route_path(request.scope)}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed here (allowed: {headers.get('Allow')})"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreUnavailable)
    log.warning("%s %s: %s", request.method, route_path(request.scope), exc)
    return await _api_error(request, store_unavailable(exc))


async def _store_damaged(request: Request, exc: Exception) -> Response:
    log.error("%s %s: %s", request.method, route_path(request.scope), exc)
    return error_response(500, "the store holds data of a kind Conveyor does not write there "
                               "(changed outside Conveyor); the server's log has the error")


async def _disconnected(request: Request, exc: Exception) -> Response:
    log.info("client went away during %s %s", request.method, route_path(request.scope))
    return error_response(400, "the client disconnected before the body was complete")


async def _body_stalled(request: Request, exc: Exception) -> Response:
    log.info("%s %s: %s", request.method, route_path(request.scope), exc)
    return error_response(408, str(exc), {"Connection": "close"})


async def _internal(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal server error")


def create_app(
    conveyor_app: Conveyor,
    *,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    target: ContainerTarget | None = None,
    metrics: Metrics | None = None,
    dashboard: bool = True,
    origins: Sequence[str] = (),
    hosts: Sequence[str] = (),
    throttle: Throttle | None = None,
    body_timeout: float | None = None,
) -> Starlette:
    """The HTTP API of ``conveyor_app`` as an ASGI app (see the README's "HTTP API").

    ``token`` guards every route but ``/healthz`` with ``Authorization: Bearer``;
    ``max_upload_bytes`` caps request bodies; with ``target`` (a container target from
    :func:`conveyor.containers.open_target`) the built-in jobs are installed into the app
    (those it lacks: see :func:`conveyor.builtin.install`), and ``POST /uploads`` answers 404
    for a container the target can tell is missing. Mount it in your own app with
    ``Mount("/conveyor", create_app(app))``.

    ``metrics`` (default: ``conveyor_app.metrics``, else a new :class:`Metrics`, which then
    becomes ``conveyor_app.metrics`` so enqueues are counted) is served on ``GET /metrics``;
    give the same one to the app's workers to count their jobs too.

    ``dashboard`` adds the web dashboard (:mod:`conveyor.dashboard`) at ``/`` and under
    ``/ui/``; with a token it has a login form of its own.

    ``origins`` (``https://jobs.example.com``) are sites besides the request's own ``Host``
    whose browser requests may change things, for a proxy that rewrites ``Host``. Without a
    token the app answers only to loopback host names and those of ``origins`` and ``hosts``
    (``["*"]``: any), and refuses changes sent from other sites (:mod:`conveyor.http.origin`).

    ``throttle`` counts wrong tokens (bearer headers, the dashboard's login) per client
    address and answers 429 past its limit (default: a :class:`Throttle` with its defaults;
    ``Throttle(limit=0)``: none; see :mod:`conveyor.http.throttle`).

    ``body_timeout`` (seconds) ends a request whose body sends nothing for that long with
    408, for a server without such a limit of its own; ``conveyor serve`` has one (see
    :mod:`conveyor.serverlimits`) and leaves this None.
    """
    if body_timeout is not None and not body_timeout > 0:
        raise ValueError(f"body_timeout must be a positive number of seconds, not {body_timeout}")
    if target is not None:
        from conveyor import builtin

        builtin.install(conveyor_app, target)
    if metrics is None:
        from conveyor.metrics import Metrics

        metrics = conveyor_app.metrics or Metrics()
    if conveyor_app.metrics is None:
        conveyor_app.metrics = metrics
    metrics.watch_limits(conveyor_app.limited_jobs())
    routes = Routes(Services(conveyor_app, max_upload_bytes, target), token or None, metrics)
    table = build_routes(routes.operations())
    allowed = Origins(origins, hosts)
    exempt = None
    if throttle is None:  # wrong tokens per address, for the API and the dashboard alike
        throttle = Throttle()
    session = None
    if dashboard:
        from conveyor.dashboard import Dashboard, is_dashboard_path

        board = Dashboard(routes.services, token or None, allowed, throttle)
        table += board.routes()
        exempt, session = is_dashboard_path, board.has_session
    middleware = [Middleware(RequestMetrics, metrics=metrics, routes=table)]
    if body_timeout is not None:
        middleware.append(Middleware(BodyTimeout, seconds=body_timeout))
    if token:
        middleware.append(Middleware(BearerAuth, token=token, exempt=exempt,
                                     throttle=throttle, session=session))
    else:
        middleware.append(Middleware(SameSiteOnly, origins=allowed))
    # after the access checks: 503 while the store is down (/healthz says why)
    middleware.append(Middleware(StoreGate, health=StoreHealth(conveyor_app)))
    api = Starlette(
        routes=table,
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            StoreUnavailable: _store_unavailable,
            StoreDamaged: _store_damaged,
            HTTPException: _http_error,
            ClientDisconnect: _disconnected,
            BodyStalled: _body_stalled,
            Exception: _internal,
        },
    )
    api.state.conveyor = conveyor_app
    api.state.services = routes.services
    api.state.metrics = metrics
    return api
