"""``conveyor pause``, ``resume`` and ``cap``: queue settings kept in the store."""

from __future__ import annotations

import argparse

from conveyor.app import Conveyor
from conveyor.cli.loading import CLIError
from conveyor.cli.output import print_json
from conveyor.errors import ConfigurationError
from conveyor.queues import QueueSettings, existing_queue_name, parse_limit

#: the commands of this module (they write the store, creating it if it is missing)
NAMES = ("pause", "resume", "cap")


def add_queue_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> \
        list[argparse.ArgumentParser]:
    """Add ``pause``, ``resume`` and ``cap``; the caller adds the store options."""
    parsers = []
    p = sub.add_parser("pause", help="stop workers claiming from a queue (enqueues are still "
                       "accepted; running jobs finish)")
    p.add_argument("queue", help="the queue's name")
    p.add_argument("--json", action="store_true", help="print the queue's settings as JSON")
    parsers.append(p)
    p = sub.add_parser("resume", help="let workers claim from a paused queue again")
    p.add_argument("queue", help="the queue's name")
    p.add_argument("--json", action="store_true", help="print the queue's settings as JSON")
    parsers.append(p)
    p = sub.add_parser("cap", help="set the most jobs that may wait in a queue, for every "
                       "producer ('none' removes the cap)")
    p.add_argument("queue", help="the queue's name")
    p.add_argument("limit", metavar="N|none", help="a whole number of at least 1, or none")
    p.add_argument("--json", action="store_true", help="print the queue's settings as JSON")
    parsers.append(p)
    return parsers


def _queue(args: argparse.Namespace) -> str:
    try:
        return existing_queue_name(args.queue)
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None


async def _report(app: Conveyor, queue: str, args: argparse.Namespace, line: str) -> int:
    if args.json:
        settings = (await app.queue_settings_async()).get(queue) or QueueSettings(queue)
        print_json({"queue": queue, **settings.to_dict()})
    else:
        print(line)
    return 0


async def pause(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor pause QUEUE [--json]``."""
    queue = _queue(args)
    await app.pause_async(queue)
    return await _report(app, queue, args, f"{queue} paused")


async def resume(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor resume QUEUE [--json]``."""
    queue = _queue(args)
    await app.resume_async(queue)
    return await _report(app, queue, args, f"{queue} resumed")


async def cap(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor cap QUEUE N|none [--json]``."""
    queue = _queue(args)
    try:
        limit = parse_limit(args.limit)
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None
    await app.set_max_queued_async(queue, limit)
    line = f"{queue} uncapped" if limit is None else f"{queue} capped at {limit} waiting"
    return await _report(app, queue, args, line)
