"""``conveyor schedules``: list the stored schedules; pause, resume, run now or delete one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from conveyor import schedule_admin
from conveyor.app import Conveyor
from conveyor.cli.loading import CLIError
from conveyor.cli.output import Col, print_table

ACTIONS = ("list", "pause", "resume", "run", "delete")
#: said when no schedule is stored (on stderr; stdout stays empty for scripts)
NONE_YET = ("no schedule is stored yet (workers store their app's schedules when they "
            "start: conveyor worker APP)")
COLUMNS = (Col("name", fit=10), Col("timing", fit=12), Col("job", fit=10),
           Col("next run"), Col("last run", drop=2), Col("last job", drop=1),
           Col("paused"), Col("orphaned", drop=3))


def add_schedules_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> \
        argparse.ArgumentParser:
    """Add ``schedules`` to the subcommands; the caller adds the store options."""
    p = sub.add_parser(
        "schedules", help="list schedules; pause, resume, run now or delete one",
        description="Without an action: list the schedules workers stored (name, timing, "
        "job, next and last run, the last job's state, paused, orphaned: no live worker "
        "registered it for 5 minutes; '?' marks a stored value that cannot be read). 'run "
        "NAME' enqueues the schedule's job now under a new id; 'delete NAME' forgets an "
        "orphaned schedule (one a live worker registers is refused).")
    p.add_argument("action", nargs="?", choices=ACTIONS, default="list")
    p.add_argument("name", nargs="?", help="the schedule (for every action but list)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _cell(data: dict[str, Any], key: str, text: str) -> str:
    return schedule_admin.unreadable_text(data, key, text)


def _when(text: Any) -> str:
    return str(text)[:19].replace("T", " ") if text else "-"


async def schedules(app: Conveyor, args: argparse.Namespace) -> int:
    """Run one ``conveyor schedules`` action."""
    if args.action == "list":
        if args.name:
            raise CLIError("conveyor schedules lists all schedules; give an action to name one")
        found = await schedule_admin.list_schedules(app)
        if args.json:
            print(json.dumps(found, indent=2, ensure_ascii=False))
        elif not found:
            print(NONE_YET, file=sys.stderr)
        else:
            print_table(COLUMNS, ([s["name"], _cell(s, "timing", s["timing"]),
                                   _cell(s, "job", s["job"]),
                                   _cell(s, "next_run", _when(s["next_run"])),
                                   _cell(s, "last_run", _when(s["last_run"])),
                                   _cell(s, "last_job", f"{s['last_job'] or '-'} "
                                                        f"({s['last_job_state'] or '-'})"),
                                   "yes" if s["paused"] else "no",
                                   "yes" if s["orphaned"] else "no"] for s in found))
        return 0
    if not args.name:
        raise CLIError(f"conveyor schedules {args.action} needs a schedule NAME")
    if args.action == "run":
        job_id = await schedule_admin.run_now(app, args.name)
        if args.json:
            print(json.dumps({"id": job_id}))
        else:
            print(f"schedule {args.name}: enqueued job {job_id}")
        return 0
    if args.action == "delete":
        await schedule_admin.delete(app, args.name)
        print(f"schedule {args.name} deleted")
        return 0
    state = await schedule_admin.set_paused(app, args.name, args.action == "pause")
    if args.json:
        print(json.dumps(state, indent=2, ensure_ascii=False))
    else:
        print(f"schedule {args.name} {'paused' if state['paused'] else 'resumed'}")
    return 0
