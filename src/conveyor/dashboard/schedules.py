"""The dashboard's schedules page: its data and its actions (pause, resume, run now,
delete), over :mod:`conveyor.schedule_admin`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor import schedule_admin
from conveyor.http.errors import ApiError
from conveyor.http.headers import SECURITY_HEADERS

if TYPE_CHECKING:
    from conveyor.dashboard.routes import Dashboard

Handler = Callable[[Request], Awaitable[Response]]


def _json(content: object) -> JSONResponse:
    return JSONResponse(content, headers=SECURITY_HEADERS)


def schedule_routes(dashboard: Dashboard) -> list[Route]:
    """The page, its data (``GET /ui/api/schedules``) and the actions
    (``POST /ui/api/schedules/{name}/pause|resume|run|delete``)."""
    app = dashboard.services.app

    async def listing(request: Request) -> Response:
        await dashboard.services.broker_ready()
        return _json({"now": time.time(), "schedules": await schedule_admin.list_schedules(app)})

    def action(verb: str) -> Handler:
        async def handler(request: Request) -> Response:
            name = request.path_params["name"]
            try:
                if verb == "run":
                    return _json({"name": name, "id": await schedule_admin.run_now(app, name)})
                if verb == "delete":
                    await schedule_admin.delete(app, name)
                    return _json({"deleted": name})
                return _json(await schedule_admin.set_paused(app, name, verb == "pause"))
            except schedule_admin.ScheduleNotFound as exc:
                raise ApiError(404, str(exc)) from None
            except schedule_admin.ScheduleConflict as exc:
                raise ApiError(409, str(exc)) from None

        return handler

    one = "/ui/api/schedules/{name}"
    return [
        Route("/ui/schedules", dashboard.page("schedules"), methods=["GET"]),
        Route("/ui/api/schedules", dashboard.data(listing), methods=["GET"]),
        *(Route(f"{one}/{verb}", dashboard.action(action(verb)), methods=["POST"])
          for verb in ("pause", "resume", "run", "delete")),
    ]
