"""The dashboard's routes: pages, their JSON data, the actions, login and static files.

Everything lives under ``/ui/`` except the overview, which is the root page ``/``. Pages
need a login when a token is set (see :mod:`conveyor.dashboard.auth`); a page asked for
without one redirects to the login form, a data or action request gets 401.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from conveyor.dashboard import data, pages
from conveyor.dashboard.auth import SESSION_AGE, SESSION_COOKIE, DashboardAuth
from conveyor.dashboard.schedules import schedule_routes
from conveyor.dashboard.sessions import Revocations
from conveyor.errors import InvalidArguments
from conveyor.http.errors import ApiError
from conveyor.http.headers import SECURITY_HEADERS
from conveyor.http.origin import Origins
from conveyor.http.routes import limited_body, prefix
from conveyor.http.services import Services
from conveyor.http.throttle import Throttle
from conveyor.ids import is_acceptable_id, is_valid_id
from conveyor.priority import parse_priority
from conveyor.summary import summarize

Handler = Callable[[Request], Awaitable[Response]]
#: the static files of the dashboard and their media types
STATIC = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
#: the largest login form read
MAX_LOGIN_BODY = 4096
#: seconds the login form has to arrive whole
LOGIN_BODY_TIMEOUT = 10.0


def is_dashboard_path(path: str) -> bool:
    """True for the paths the dashboard serves (it checks their access itself)."""
    return path == "/" or path.startswith("/ui/")


@cache
def static_file(name: str) -> bytes:
    """The bytes of one of the dashboard's static files."""
    return resources.files("conveyor.dashboard").joinpath("static", name).read_bytes()


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=SECURITY_HEADERS)


def _refused_login(request: Request, refused: ApiError) -> Response:
    """The login form telling a penalized address to wait (429 with ``Retry-After``)."""
    wait = refused.headers.get("Retry-After", "60")
    response = pages.login(prefix(request.scope), f"Too many wrong tokens from this address; "
                           f"try again in {wait} s.", status=refused.status)
    response.headers.update(refused.headers)
    return response


class Dashboard:
    """The handlers of one dashboard over one :class:`Services`."""

    def __init__(self, services: Services, token: str | None,
                 origins: Origins | None = None, throttle: Throttle | None = None) -> None:
        self.services = services
        self.auth = DashboardAuth(token, origins, throttle, Revocations(self._broker))

    # -- guards -------------------------------------------------------------------------------
    def _page(self, name: str) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                allowed = await self.auth.logged_in(request)
            except ApiError as exc:  # a penalized address: the login form says so
                return _refused_login(request, exc)
            if not allowed:
                return RedirectResponse(f"{prefix(request.scope)}/ui/login", status_code=303)
            job = request.path_params.get("job", "")
            return pages.shell(prefix(request.scope), name, await self.auth.csrf_token(request),
                               job=job, secured=self.auth.required)

        return handler

    def _data(self, read: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            if not await self.auth.logged_in(request):
                raise ApiError(401, "log in to the dashboard first")
            return await read(request)

        return handler

    def _action(self, act: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            if not await self.auth.logged_in(request):
                raise ApiError(401, "log in to the dashboard first")
            if not await self.auth.csrf_ok(request):
                raise ApiError(403, "missing or wrong CSRF token; reload the page")
            return await act(request)

        return handler

    # -- login ------------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        """GET /ui/login."""
        try:
            if not self.auth.required or await self.auth.logged_in(request):
                return RedirectResponse(f"{prefix(request.scope)}/", status_code=303)
            refused = self.auth.refusal(request)
        except ApiError as exc:
            refused = exc
        if refused is not None:  # a penalized address: the form says how long to wait
            return _refused_login(request, refused)
        return pages.login(prefix(request.scope))

    async def login(self, request: Request) -> Response:
        """POST /ui/login: check the token, set the session cookie, go to the overview."""
        if not self.auth.origins.same_site(request.scope):
            raise ApiError(403, "the login form was sent from another site")
        try:  # read before any check: its time is bounded as a whole, not byte by byte
            async with asyncio.timeout(LOGIN_BODY_TIMEOUT):
                body = await limited_body(request.receive, MAX_LOGIN_BODY)
        except TimeoutError:
            raise ApiError(408, "the login form did not arrive within "
                           f"{LOGIN_BODY_TIMEOUT:g} seconds") from None
        fields = parse_qs(body.decode("utf-8", "replace"))
        given = (fields.get("token") or [""])[0]
        if self.auth.required:
            refused = self.auth.refusal(request)
            if refused is not None:  # the token is not even looked at
                return _refused_login(request, refused)
        if not self.auth.check_token(request, given):
            return pages.login(prefix(request.scope), "Wrong token.", status=401)
        response = RedirectResponse(f"{prefix(request.scope)}/", status_code=303)
        if self.auth.required:
            response.set_cookie(SESSION_COOKIE, self.auth.new_session(),
                                max_age=SESSION_AGE, path=f"{prefix(request.scope)}/",
                                httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        """POST /ui/logout: revoke the session (in the store) and forget its cookie."""
        await self.auth.revoke(request)
        response = _json({"logged_out": True})
        response.delete_cookie(SESSION_COOKIE, path=f"{prefix(request.scope)}/", httponly=True,
                               samesite="strict")
        return response

    # -- data ---------------------------------------------------------------------------------
    async def _broker(self) -> Any:
        await self.services.broker_ready()
        return self.services.app.broker

    async def overview(self, request: Request) -> Response:
        """GET /ui/api/overview[?queue=]."""
        queue = request.query_params.get("queue") or None
        return _json({**await data.overview(await self._broker(), queue),
                      "limits": await self.services.limits()})

    async def counts(self, request: Request) -> Response:
        """GET /ui/api/counts: jobs per queue and state (the jobs page's tabs)."""
        return _json(await data.counts(await self._broker()))

    async def workers(self, request: Request) -> Response:
        """GET /ui/api/workers."""
        return _json(await data.workers(await self._broker()))

    async def known(self, request: Request) -> Response:
        """GET /ui/api/known: the jobs workers published (the workers page lists them)."""
        await self.services.broker_ready()
        return _json(await data.known_jobs(self.services.app))

    async def jobs(self, request: Request) -> Response:
        """GET /ui/api/jobs?state=&queue=&q=&cursor=&limit=: a page of job summaries.

        ``q`` is a job id (that job alone) or else a job name (jobs of that name)."""
        params = dict(request.query_params)
        search = (params.pop("q", "") or "").strip()
        for job_id in ((search, search.upper()) if search else ()):
            if is_acceptable_id(job_id):  # an id (typed in any case when generated)
                try:
                    record = await self.services.get(job_id)
                except ApiError:
                    continue
                return _json({"jobs": [data.job_summary(summarize(record))],
                              "next_cursor": None})
        if search and is_valid_id(search.upper()):  # a generated id that is not there
            return _json({"jobs": [], "next_cursor": None})
        if search:
            params["name"] = search
        page = await self.services.list_jobs(params, shape=data.job_summary)
        return _json(page)

    async def job(self, request: Request) -> Response:
        """GET /ui/api/jobs/{job}: everything about one job."""
        record = await self.services.get(request.path_params["job"])
        return _json(record.to_dict())

    # -- actions ------------------------------------------------------------------------------
    async def retry(self, request: Request) -> Response:
        """POST /ui/api/jobs/{job}/retry."""
        record = await self.services.retry(request.path_params["job"])
        return _json(record.to_dict())

    async def cancel(self, request: Request) -> Response:
        """POST /ui/api/jobs/{job}/cancel."""
        record = await self.services.cancel(request.path_params["job"])
        return _json(record.to_dict())

    async def set_priority(self, request: Request) -> Response:
        """POST /ui/api/jobs/{job}/priority?priority=N."""
        try:
            priority = parse_priority(request.query_params.get("priority", ""))
        except InvalidArguments as exc:
            raise ApiError(400, str(exc)) from None
        record = await self.services.set_priority(request.path_params["job"], priority)
        return _json(record.to_dict())

    async def delete(self, request: Request) -> Response:
        """POST /ui/api/jobs/{job}/delete."""
        await self.services.delete(request.path_params["job"])
        return _json({"deleted": request.path_params["job"]})

    async def retry_dead(self, request: Request) -> Response:
        """POST /ui/api/retry-dead?queue=: every dead job of the queue back in it."""
        queue = request.query_params.get("queue")
        if not queue:
            raise ApiError(400, "name the queue whose dead jobs to retry (?queue=)")
        retried, skipped = await self.services.retry_dead(queue)
        return _json({"queue": queue, "retried": retried, "skipped": skipped})

    async def pause_queue(self, request: Request) -> Response:
        """POST /ui/api/queues/{queue}/pause."""
        return _json(await self.services.set_paused(request.path_params["queue"], True))

    async def resume_queue(self, request: Request) -> Response:
        """POST /ui/api/queues/{queue}/resume."""
        return _json(await self.services.set_paused(request.path_params["queue"], False))

    async def cap_queue(self, request: Request) -> Response:
        """POST /ui/api/queues/{queue}/cap?max_queued=N|none."""
        return _json(await self.services.set_max_queued(
            request.path_params["queue"], request.query_params.get("max_queued")))

    # -- static ---------------------------------------------------------------------------
    async def static(self, request: Request) -> Response:
        """GET /ui/static/{file}."""
        name = request.path_params["file"]
        media_type = STATIC.get(name)
        if media_type is None:
            raise ApiError(404, f"no such file: {quote(name)}")
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return Response(static_file(name), media_type=media_type, headers=headers)

    async def has_session(self, scope: Scope) -> bool:
        """Whether the request carries a valid session cookie (logged in, not out)."""
        return await self.auth.session_nonce(Request(scope)) is not None

    def routes(self) -> list[Route]:
        """The dashboard's Starlette routes."""
        job = "/ui/api/jobs/{job}"
        queue = "/ui/api/queues/{queue}"
        return [
            Route("/", self._page("overview"), methods=["GET"]),
            Route("/ui/workers", self._page("workers"), methods=["GET"]),
            Route("/ui/jobs", self._page("jobs"), methods=["GET"]),
            Route("/ui/jobs/{job}", self._page("job"), methods=["GET"]),
            Route("/ui/login", self.login_form, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self._action(self.logout), methods=["POST"]),
            Route("/ui/static/{file}", self.static, methods=["GET"]),
            Route("/ui/api/overview", self._data(self.overview), methods=["GET"]),
            Route("/ui/api/counts", self._data(self.counts), methods=["GET"]),
            Route("/ui/api/workers", self._data(self.workers), methods=["GET"]),
            Route("/ui/api/known", self._data(self.known), methods=["GET"]),
            Route("/ui/api/jobs", self._data(self.jobs), methods=["GET"]),
            Route(job, self._data(self.job), methods=["GET"]),
            Route(f"{job}/retry", self._action(self.retry), methods=["POST"]),
            Route(f"{job}/cancel", self._action(self.cancel), methods=["POST"]),
            Route(f"{job}/delete", self._action(self.delete), methods=["POST"]),
            Route(f"{job}/priority", self._action(self.set_priority), methods=["POST"]),
            Route("/ui/api/retry-dead", self._action(self.retry_dead), methods=["POST"]),
            *schedule_routes(self),
            Route(f"{queue}/pause", self._action(self.pause_queue), methods=["POST"]),
            Route(f"{queue}/resume", self._action(self.resume_queue), methods=["POST"]),
            Route(f"{queue}/cap", self._action(self.cap_queue), methods=["POST"]),
        ]

    # the guards, for the routes of other modules (see :mod:`conveyor.dashboard.schedules`)
    page = _page
    data = _data
    action = _action
