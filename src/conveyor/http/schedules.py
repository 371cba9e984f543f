"""The schedule routes of the HTTP API: list the stored schedules; pause, resume, run now
or delete one (see :mod:`conveyor.schedule_admin`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from conveyor import schedule_admin
from conveyor.http.errors import ApiError
from conveyor.http.openapi import COMPONENTS, Operation, Param, error, ref
from conveyor.http.services import Services

NAME = Param("name", "path", "the schedule's name")
_TIME = {"type": "string", "format": "date-time", "nullable": True}
SCHEMAS: dict[str, Any] = {
    "Schedule": {
        "type": "object", "required": ["name", "job", "timing", "paused", "orphaned"],
        "properties": {
            "name": {"type": "string"},
            "job": {"type": "string", "description": "the job it enqueues"},
            "timing": {"type": "string", "example": "cron */5 * * * * (UTC)"},
            "cron": {"type": "string", "nullable": True},
            "every": {"type": "integer", "nullable": True},
            "tz": {"type": "string"},
            "args": {"type": "array", "items": {}},
            "kwargs": {"type": "object"},
            "queue": {"type": "string", "nullable": True},
            "overlap": {"type": "string", "enum": ["allow", "skip"]},
            "paused": {"type": "boolean"},
            "next_run": {**_TIME, "description": "its next tick"},
            "last_run": {**_TIME, "description": "the tick of its last job"},
            "last_job": {"type": "string", "nullable": True},
            "last_job_state": {"type": "string", "nullable": True,
                               "description": "null when there is no last job or it is gone"},
            "last_tick": {**_TIME, "description": "the instant its ticks were dealt with up to"},
            "seen_at": {**_TIME, "description": "when a worker last registered it"},
            "orphaned": {"type": "boolean",
                         "description": "no live worker registered it for 5 minutes"},
            "unreadable": {"type": "array", "items": {"type": "string"},
                           "description": "the stored fields that cannot be read (shown as "
                           "null, or as '?' in timing and job)"},
        }},
    "Schedules": {"type": "object", "required": ["schedules"],
                  "properties": {"schedules": {"type": "array", "items": ref("Schedule")}}},
}
COMPONENTS.update(SCHEMAS)


def _not_found(exc: schedule_admin.ScheduleNotFound) -> ApiError:
    return ApiError(404, str(exc))


def _conflict(exc: schedule_admin.ScheduleConflict) -> ApiError:
    return ApiError(409, str(exc))


class ScheduleRoutes:
    """The schedule handlers, bound to one :class:`Services`."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def list_schedules(self, request: Request) -> Response:
        """GET /schedules."""
        return JSONResponse({"schedules": await schedule_admin.list_schedules(
            self.services.app)})

    async def _paused(self, request: Request, paused: bool) -> Response:
        try:
            state = await schedule_admin.set_paused(self.services.app,
                                                    request.path_params["name"], paused)
        except schedule_admin.ScheduleNotFound as exc:
            raise _not_found(exc) from None
        return JSONResponse(state)

    async def pause_schedule(self, request: Request) -> Response:
        """POST /schedules/{name}/pause."""
        return await self._paused(request, True)

    async def resume_schedule(self, request: Request) -> Response:
        """POST /schedules/{name}/resume."""
        return await self._paused(request, False)

    async def run_schedule(self, request: Request) -> Response:
        """POST /schedules/{name}/run."""
        from conveyor.http.routes import Accepted

        try:
            job_id = await schedule_admin.run_now(self.services.app,
                                                  request.path_params["name"])
        except schedule_admin.ScheduleNotFound as exc:
            raise _not_found(exc) from None
        except schedule_admin.ScheduleConflict as exc:
            raise _conflict(exc) from None
        return Accepted(request.scope, job_id, "the schedule's job is enqueued")

    async def delete_schedule(self, request: Request) -> Response:
        """DELETE /schedules/{name}."""
        try:
            await schedule_admin.delete(self.services.app, request.path_params["name"])
        except schedule_admin.ScheduleNotFound as exc:
            raise _not_found(exc) from None
        except schedule_admin.ScheduleConflict as exc:
            raise _conflict(exc) from None
        return JSONResponse({"deleted": request.path_params["name"]})

    def operations(self) -> list[Operation]:
        """The schedule routes, for the route table."""
        one = (200, ("the schedule after the change", ref("Schedule")))
        missing = error(404, "no schedule of that name is stored")
        return [
            Operation("GET", "/schedules", self.list_schedules, "List schedules",
                      {200: ("every stored schedule, by name", ref("Schedules"))},
                      tag="schedules",
                      description="Workers store their app's schedules when they start and "
                      "every minute; one no live worker registered for 5 minutes is "
                      "orphaned (shown, never fired)."),
            Operation("POST", "/schedules/{name}/pause", self.pause_schedule,
                      "Pause a schedule", dict([one, missing]), params=(NAME,),
                      tag="schedules", description="A paused schedule fires nothing; its "
                      "ticks pass as skipped. Its last tick moves up to now."),
            Operation("POST", "/schedules/{name}/resume", self.resume_schedule,
                      "Resume a schedule", dict([one, missing]), params=(NAME,),
                      tag="schedules", description="The ticks that passed while it was "
                      "paused do not fire (its last tick moves up to now); the next one "
                      "does."),
            Operation("POST", "/schedules/{name}/run", self.run_schedule,
                      "Run a schedule's job now",
                      dict([(202, ("the job is stored (under a new id, not a tick's)",
                                   ref("Accepted"))), missing,
                            error(409, "its stored definition cannot be read"), error(503)]),
                      params=(NAME,), tag="schedules"),
            Operation("DELETE", "/schedules/{name}", self.delete_schedule,
                      "Delete a schedule",
                      dict([(200, ("the schedule is forgotten", {
                          "type": "object", "properties": {"deleted": {"type": "string"}}})),
                          missing, error(409, "a live worker still registers it")]),
                      params=(NAME,), tag="schedules",
                      description="For orphans only (no live worker registered it for 5 "
                      "minutes): one a live worker registers is refused with 409."),
        ]
