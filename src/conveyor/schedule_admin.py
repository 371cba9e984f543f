"""Reading and controlling stored schedules, for the CLI, the HTTP API and the dashboard:
list them with the state of their last job, pause, resume, run one now, delete.

These work from what the store keeps (the definitions workers published), so they need no
app with the schedules registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.cron import SCHEDULE_NAME
from conveyor.errors import ConveyorError
from conveyor.schedules import ScheduleState

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class ScheduleNotFound(ConveyorError, LookupError):
    """No schedule of that name is stored."""


def _missing(app: Conveyor, name: str) -> ScheduleNotFound:
    return ScheduleNotFound(f"no schedule named {name!r} in the store (namespace "
                            f"{app.namespace}); workers store their app's schedules when "
                            "they start")


async def list_schedules(app: Conveyor) -> list[dict[str, Any]]:
    """Every stored schedule as JSON-ready data (see :meth:`ScheduleState.to_dict`), with
    the state of its last job (None when there is none or it is gone)."""
    broker = app.broker
    await broker.open()
    states = await broker.schedules()
    now = await broker.schedule_clock()
    found = []
    for state in states:
        record = await broker.get(state.last_job) if state.last_job else None
        found.append(state.to_dict(now, None if record is None else str(record.state)))
    return found


async def get_schedule(app: Conveyor, name: str) -> ScheduleState:
    """The stored schedule ``name``; :class:`ScheduleNotFound` otherwise."""
    await app.broker.open()
    for state in await app.broker.schedules():
        if state.name == name:
            return state
    raise _missing(app, name)


async def set_paused(app: Conveyor, name: str, paused: bool) -> dict[str, Any]:
    """Pause or resume ``name``; its data after the change."""
    await app.broker.open()
    state = await app.broker.set_schedule_paused(name, paused) \
        if SCHEDULE_NAME.fullmatch(name) else None
    if state is None:
        raise _missing(app, name)
    return state.to_dict(await app.broker.schedule_clock())


async def run_now(app: Conveyor, name: str) -> str:
    """Enqueue the job of schedule ``name`` now, under a new id (not a tick's); its id.
    The schedule's ticks go on as before."""
    state = await get_schedule(app, name) if SCHEDULE_NAME.fullmatch(name) else None
    if state is None:
        raise _missing(app, name)
    d = state.definition
    args, kwargs, queue = d.get("args", []), d.get("kwargs", {}), d.get("queue")
    if not isinstance(args, list) or not isinstance(kwargs, dict) or \
            not (queue is None or isinstance(queue, str)):
        raise ConveyorError(f"the stored definition of schedule {name!r} cannot be read")
    handle = await app.enqueue_call_async(state.job, args, kwargs, queue=queue, force=True)
    return handle.id


async def delete(app: Conveyor, name: str) -> None:
    """Forget schedule ``name`` (a worker that still registers it stores it again)."""
    await app.broker.open()
    if not SCHEDULE_NAME.fullmatch(name) or not await app.broker.delete_schedule(name):
        raise _missing(app, name)
