"""Reading and controlling stored schedules, for the CLI, the HTTP API and the dashboard:
list them with the state of their last job, pause, resume, run one now, delete.

These work from what the store keeps (the definitions workers published), so they need no
app with the schedules registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.cron import SCHEDULE_NAME
from conveyor.errors import ConveyorError
from conveyor.schedules import ORPHAN_AFTER, ScheduleState, definition_problem

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class ScheduleNotFound(ConveyorError, LookupError):
    """No schedule of that name is stored."""


class ScheduleConflict(ConveyorError):
    """The schedule cannot take the action in its present state: its stored definition
    cannot be read (run now), or a live worker still registers it (delete)."""


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
    return [await _shown(app, state, now) for state in states]


async def _shown(app: Conveyor, state: ScheduleState, now: float) -> dict[str, Any]:
    """``state`` as JSON-ready data, with the state of its last job (None when there is
    none or it is gone)."""
    record = await app.broker.get(state.last_job) if state.last_job else None
    return state.to_dict(now, None if record is None else str(record.state))


def unreadable_text(data: dict[str, Any], key: str, text: str) -> str:
    """``text`` for field ``key`` of a listed schedule, or ``?`` if it could not be read."""
    stored = {"next_run": "next_tick", "last_run": "last_job", "last_job": "last_job",
              "timing": "definition", "job": "definition", "seen_at": "seen_at",
              "last_tick": "last_tick"}.get(key, key)
    return "?" if stored in data.get("unreadable", ()) else text


async def get_schedule(app: Conveyor, name: str) -> ScheduleState:
    """The stored schedule ``name``; :class:`ScheduleNotFound` otherwise."""
    await app.broker.open()
    found = await app.broker.schedules([name]) if SCHEDULE_NAME.fullmatch(name) else []
    if not found:
        raise _missing(app, name)
    return found[0]


async def set_paused(app: Conveyor, name: str, paused: bool) -> dict[str, Any]:
    """Pause or resume ``name``; its data after the change."""
    await app.broker.open()
    state = await app.broker.set_schedule_paused(name, paused) \
        if SCHEDULE_NAME.fullmatch(name) else None
    if state is None:
        raise _missing(app, name)
    return await _shown(app, state, await app.broker.schedule_clock())


async def run_now(app: Conveyor, name: str) -> str:
    """Enqueue the job of schedule ``name`` now, under a new id (not a tick's); its id.
    The schedule's ticks go on as before."""
    state = await get_schedule(app, name)
    d = state.definition
    problem = definition_problem(d)
    if problem is not None:
        raise ScheduleConflict(f"schedule {name!r} cannot run now: its stored definition "
                               f"cannot be read ({problem}); a worker that registers it "
                               "stores it again within a minute")
    args, kwargs, queue = d.get("args", []), d.get("kwargs", {}), d.get("queue")
    handle = await app.enqueue_call_async(state.job, args, kwargs, queue=queue, force=True)
    return handle.id


async def delete(app: Conveyor, name: str) -> None:
    """Forget the orphaned schedule ``name`` (see :meth:`ScheduleState.orphaned`); one a
    live worker still registers is refused (:class:`ScheduleConflict`): remove it from the
    app and deploy, or pause it."""
    state = await get_schedule(app, name)
    if not state.orphaned(await app.broker.schedule_clock()):
        raise ScheduleConflict(
            f"schedule {name!r} is not orphaned: a live worker registered it in the last "
            f"{ORPHAN_AFTER:.0f} s and would store it again; remove it from the app (or "
            "pause it) instead")
    if not await app.broker.delete_schedule(name):
        raise _missing(app, name)
