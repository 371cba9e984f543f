"""``conveyor``: run workers, enqueue and inspect jobs, benchmark. ``conveyor --help``."""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

from conveyor.app import Conveyor
from conveyor.cli import commands, known, queues
from conveyor.cli import schedules as cli_schedules
from conveyor.cli.loading import (
    CLIError,
    add_store_location,
    positive_int,
    priority_arg,
    queue_spec,
    resolve_app,
    worker_queues,
)
from conveyor.cli.output import errors
from conveyor.errors import ConveyorError
from conveyor.job import ALL_STATES
from conveyor.logs import FORMATS, LEVELS, log_level, quiet_for_commands, setup_logging
from conveyor.serialization import is_utf8
from conveyor.summary import MAX_PAGE

Command = Callable[[Conveyor, argparse.Namespace], Awaitable[int]]


def _store_options(parser: argparse.ArgumentParser, with_app: bool = True) -> None:
    """``--url`` and ``--namespace``; ``--app`` too unless the command names its APP itself."""
    add_store_location(parser)
    if with_app:
        parser.add_argument("--app", help="module:attribute of your app: its URL and "
                            "namespace, its jobs' parameters to check arguments against")


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", type=queue_spec, metavar="QUEUE[:WEIGHT],...",
                        help="comma-separated queues (default: the app's queues); with "
                        "weights (critical:6,default:3,low:1) claims are shared in those "
                        "proportions among the queues with ready jobs")
    parser.add_argument("--strict", action="store_true",
                        help="drain the --queues in the order given, each before the next")
    parser.add_argument("--min-workers", type=positive_int, default=1,
                        help="least concurrent jobs per process (default 1)")
    parser.add_argument("--max-workers", type=positive_int, default=10,
                        help="most concurrent jobs per process (default 10)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds running jobs get to finish on shutdown (default 30)")


def logging_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``--log-level`` and ``--log-format``: on the top parser with their defaults, and on
    each command's parser without any (a value given before the command is kept)."""
    group = parser.add_argument_group("logging (before or after the command)")
    group.add_argument("--log-level", type=log_level, metavar="LEVEL",
                       default="INFO" if top else argparse.SUPPRESS,
                       help=f"least level logged to stderr: {', '.join(LEVELS)} "
                       "(default INFO)")
    group.add_argument("--log-format", choices=FORMATS,
                       default="text" if top else argparse.SUPPRESS,
                       help="text lines, or one JSON object per line with time, level, logger, "
                       "message and job fields (default text)")


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line (the command, the error, where help is)
    instead of the command's usage first; ``conveyor`` alone still shows its usage."""

    def error(self, message: str) -> NoReturn:
        if self.prog == "conveyor" and "COMMAND" in message:
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line grammar."""
    from conveyor import __version__

    parser: argparse.ArgumentParser = _Parser(
        prog="conveyor", description="Durable background jobs: run workers and the HTTP API, "
        "enqueue and inspect jobs, measure.")
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    logging_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run workers for an app")
    p.add_argument("app_spec", metavar="APP", help="module:attribute, e.g. myproject.jobs:app")
    _store_options(p, with_app=False)
    _worker_options(p)
    p.add_argument("--processes", type=positive_int, default=1,
                   help="worker processes on this machine (default 1)")
    from conveyor.cli.serve import _port

    p.add_argument("--metrics-port", type=_port,
                   help="serve Prometheus metrics on this port (one process only)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address of the metrics server (default 127.0.0.1)")

    p = sub.add_parser("enqueue", help="enqueue a job by name")
    p.add_argument("name", help="the job's name (see conveyor jobs-known)")
    p.add_argument("--args", default="[]", help="JSON array of positional arguments")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p.add_argument("--queue", help="queue (default: the job's own, or 'default')")
    p.add_argument("--delay", type=float, help="seconds to wait before it may run")
    p.add_argument("--id", dest="job_id", help="the job's id, instead of a new one "
                   "(an id that exists is refused)")
    p.add_argument("--unique-key", metavar="KEY", help="store nothing while a job holding "
                   "KEY is not final: print that job's id instead (and say so on stderr)")
    p.add_argument("--unique-for", metavar="SECONDS", type=float,
                   help="hold the unique key at most this long (default: until final)")
    p.add_argument("--priority", type=priority_arg, metavar="-10..10",
                   help="higher runs sooner (default: the job's own, else 0)")
    p.add_argument("--json", action="store_true", help="print the job's info as JSON")
    p.add_argument("--force", action="store_true", help="store it even if no worker has "
                   "published a job of that name (arguments unchecked)")
    _store_options(p)

    p = sub.add_parser("status", help="show one job")
    p.add_argument("id", help="the job's id")
    p.add_argument("--json", action="store_true", help="print the job's info as JSON")
    p.add_argument("--wait", action="store_true", help="wait until the job is final")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    _store_options(p)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--state", choices=[str(s) for s in ALL_STATES], help="only jobs in this state")
    p.add_argument("--queue", help="only jobs of this queue")
    p.add_argument("--name", help="only jobs of this name")
    p.add_argument("--limit", type=positive_int, default=50,
                   help=f"jobs in the page (default 50, at most {MAX_PAGE})")
    p.add_argument("--cursor", help="last id of the previous page")
    p.add_argument("--json", action="store_true", help="print the page as JSON")
    _store_options(p)

    p = sub.add_parser("retry", help="re-enqueue a dead (or cancelled) job, or all dead jobs")
    p.add_argument("id", nargs="?", help="the job's id (or --all-dead)")
    p.add_argument("--all-dead", action="store_true", help="every dead job (of --queue)")
    p.add_argument("--queue", help="with --all-dead: only this queue")
    _store_options(p)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("id", help="the job's id")
    _store_options(p)

    p = sub.add_parser("priority", help="change the priority of a waiting job")
    p.add_argument("id", help="the job's id")
    p.add_argument("priority", type=priority_arg, metavar="-10..10")
    p.add_argument("--json", action="store_true", help="print the job's info as JSON")
    _store_options(p)  # --app: its aging gives the boost

    p = sub.add_parser("stats", help="jobs per queue and state, live workers")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _store_options(p)

    _store_options(known.add_known_parser(sub))
    _store_options(cli_schedules.add_schedules_parser(sub))
    for queue_parser in queues.add_queue_parsers(sub):
        _store_options(queue_parser)

    from conveyor.cli.bench import add_bench_parser
    from conveyor.cli.serve import add_serve_parser
    from conveyor.cli.top import add_top_parser

    add_bench_parser(sub)
    add_serve_parser(sub)
    add_top_parser(sub)
    for command in {id(p): p for p in sub.choices.values()}.values():  # aliases: once
        logging_options(command)
    return parser


COMMANDS: dict[str, Command] = {
    "enqueue": commands.enqueue,
    "status": commands.status,
    "jobs": commands.jobs,
    "retry": commands.retry,
    "cancel": commands.cancel,
    "priority": commands.priority,
    "stats": commands.stats,
    "jobs-known": known.jobs_known,
    "schedules": cli_schedules.schedules,
    "pause": queues.pause,
    "resume": queues.resume,
    "cap": queues.cap,
}


def _run_worker(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from conveyor.worker.heap import freeze_startup_heap
    from conveyor.worker.supervisor import Supervisor, run_worker, worker_command

    app = resolve_app(args.app_spec, args.url, args.namespace)
    queues, weights = worker_queues(args)
    if args.min_workers > args.max_workers:
        raise CLIError("--min-workers must not exceed --max-workers")
    if args.processes > 1 and args.metrics_port is not None:
        raise CLIError("--metrics-port needs --processes 1 (each process has its own metrics)")
    if args.processes > 1:
        _ = app.broker  # a bad store URL (a missing directory) fails here, not in each child
        return Supervisor(worker_command(argv), args.processes, args.grace).run()
    freeze_startup_heap()  # this process only runs the worker from now on
    return run_worker(app, queues=queues, weights=weights, min_workers=args.min_workers,
                      max_workers=args.max_workers, grace=args.grace,
                      metrics_port=args.metrics_port, metrics_host=args.metrics_host)


#: an admin command facing an unreachable store gives up after this many seconds
ADMIN_RETRY_FOR = 5.0


async def _run_command(command: Command, app: Conveyor, args: argparse.Namespace) -> int:
    app.broker.retry_for = min(app.store_timeout, ADMIN_RETRY_FOR)
    quiet_for_commands()
    try:
        return await command(app, args)
    finally:
        await app.broker.close()


def _store_error(exc: BaseException) -> bool:
    """An error of the store's driver (not a database, no server, ...): one line, no trace."""
    if isinstance(exc, sqlite3.Error):
        return True
    redis_errors = sys.modules.get("redis.exceptions")  # only loaded if a redis URL was used
    return redis_errors is not None and isinstance(exc, redis_errors.RedisError)


def _store_url(args: argparse.Namespace) -> str:
    """The store URL the command used: ``--url``, ``CONVEYOR_URL``, the APP's, the default."""
    import os

    from conveyor.app import DEFAULT_URL
    from conveyor.cli.loading import load_app

    url = getattr(args, "url", None) or os.environ.get("CONVEYOR_URL")
    spec = getattr(args, "app", None) or getattr(args, "app_spec", None)
    if not url and spec:
        try:  # already imported by the command: no new side effects
            url = load_app(spec).url
        except (CLIError, ConveyorError):
            url = None
    return url or DEFAULT_URL


def _error_line(message: str, args: argparse.Namespace) -> str:
    """``error: MESSAGE`` on one line, without the store's password."""
    from conveyor.urls import redact

    line = "error: " + " ".join(part.strip() for part in message.splitlines() if part.strip())
    return redact(line, _store_url(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``conveyor`` command; returns the exit code. A reader that stops
    reading the output (``conveyor stats | head -3``) ends the command quietly, exit 1."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # (what is left in the buffer meets a closed pipe here)
        return code
    except BrokenPipeError:
        if not _output_unread():
            raise  # another pipe than the output's
        # say nothing more to it (the flush at exit would fail again)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _output_unread() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll says POLLERR, or on
    some systems POLLHUP)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = select.POLLERR | select.POLLHUP
        return any(events & gone for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or no such file
        return False


def _main(argv: Sequence[str] | None) -> int:
    """:func:`main`, its output's pipe left to it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for position, arg in enumerate(argv, 1):
        if not is_utf8(arg):  # bytes the locale could not decode: no name or id holds them
            shown = arg.encode("utf-8", "backslashreplace").decode()
            print(f"error: argument {position} is not valid UTF-8: {shown}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "worker":
            return _run_worker(args, argv)
        if args.command == "serve":
            from conveyor.cli.serve import run_serve

            return run_serve(args)
        if args.command == "bench":
            from conveyor.cli.bench import run_bench

            return run_bench(args)
        if args.command == "top":
            from conveyor.cli.top import run_top

            return run_top(args)
        app = resolve_app(getattr(args, "app", None), args.url, args.namespace)
        if args.command in commands.READ_ONLY:  # they never create a store
            commands.read_only(app, reads=args.command in commands.READS)
        return asyncio.run(_run_command(COMMANDS[args.command], app, args))
    except CLIError as exc:
        errors.print(_error_line(str(exc), args), soft_wrap=True)
        return exc.code
    except ConveyorError as exc:
        from conveyor.backends import MissingStore

        hint = " (check --url or CONVEYOR_URL)" if isinstance(exc, MissingStore) else ""
        errors.print(_error_line(f"{exc}{hint}", args), soft_wrap=True)
        return 1
    except Exception as exc:
        if not _store_error(exc):
            raise
        from conveyor.errors import redact_url

        store = redact_url(_store_url(args))
        errors.print(_error_line(f"cannot use the store {store}: {exc}", args), soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        return 130
