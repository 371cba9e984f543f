"""The admin commands: enqueue, status, jobs, retry, cancel, stats."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from typing import Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from conveyor.app import Conveyor
from conveyor.backends import missing_store, require_existing
from conveyor.cli.loading import CLIError
from conveyor.cli.output import (
    console,
    job_summary,
    print_counts,
    print_jobs,
    print_json,
    print_limits,
    print_workers,
)
from conveyor.errors import (
    DuplicateJob,
    InvalidArguments,
    JobNotWaiting,
    QueueFull,
    UnknownJob,
    redact_url,
)
from conveyor.job import ALL_STATES, FINAL_STATES, JobRecord, JobState
from conveyor.logs import plural
from conveyor.options import EnqueueOptions
from conveyor.queues import with_settings
from conveyor.summary import MAX_PAGE, JobSummary


def _json_arg(text: str, expected: type, option: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{option} is not valid JSON: {exc}") from None
    except RecursionError:
        raise CLIError(f"{option} nests arrays and objects too deep") from None
    if not isinstance(value, expected):
        kind = "an array" if expected is list else "an object"
        raise CLIError(f"{option} must be {kind}, got {type(value).__name__}")
    return value


def store_name(app: Conveyor) -> str:
    """The app's store for messages: its URL without password, and its namespace."""
    return f"{redact_url(app.url)} (namespace {app.namespace})"


#: the commands that never create a store: they read it, or change what is already in it
#: (jobs, and queues' settings: a pause or a cap given in the wrong directory must not be
#: applied to a new, empty store while the real one runs on)
READ_ONLY = frozenset({"status", "jobs", "retry", "cancel", "stats", "jobs-known", "top",
                       "schedules", "priority", "pause", "resume", "cap"})


#: those of them that only read: they read a Redis replica as they read its master
READS = frozenset({"status", "jobs", "stats", "jobs-known"})


def read_only(app: Conveyor, reads: bool = False) -> Conveyor:
    """For commands that only read (``reads``) or change existing jobs: never create the
    store; a missing SQLite file is an error (see
    :func:`conveyor.backends.require_existing`)."""
    require_existing(app.broker, reads)
    return app


def state_phrase(state: JobState) -> str:
    """``is queued``, ``has already succeeded``, ``is already dead``: a state in a sentence."""
    if state is JobState.SUCCEEDED:
        return "has already succeeded"
    return f"is already {state}" if state in FINAL_STATES else f"is {state}"


async def _get(app: Conveyor, job_id: str) -> JobRecord:
    await app.broker.open()
    record = await app.broker.get(job_id)
    if record is None:
        raise CLIError(f"no job with id {job_id} in {store_name(app)}", code=1)
    return record


async def enqueue(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor enqueue NAME --args JSON --kwargs JSON [--force] [--unique-key KEY
    [--unique-for SECONDS]]``: a name the app (or, without ``--app``, any worker of the
    store) does not know is refused unless forced. A call deduplicated by its unique key
    prints the holding job (its id, or its info with ``--json``), says so on stderr and
    exits 0."""
    call_args = _json_arg(args.args, list, "--args")
    call_kwargs = _json_arg(args.kwargs, dict, "--kwargs")
    force = bool(getattr(args, "force", False))
    if args.app and args.name not in app.registry and not force:
        known = ", ".join(sorted(app.registry)) or "none"
        raise CLIError(f"{args.app} has no job named {args.name!r} (its jobs: {known}); "
                       "--force stores it anyway")
    missing = None if force or args.name in app.registry else missing_store(app.broker)
    if missing is not None:  # no worker published anything there: refused, creating nothing
        raise CLIError(f"{app.unknown_job(args.name)} (no SQLite database at {missing} yet)")
    try:
        options = EnqueueOptions(delay=args.delay, queue=args.queue, job_id=args.job_id,
                                 force=force, unique_key=getattr(args, "unique_key", None),
                                 unique_for=getattr(args, "unique_for", None),
                                 priority=getattr(args, "priority", None)).checked()
        handle = await app.enqueue_call_async(args.name, call_args, call_kwargs, options)
    except (InvalidArguments, UnknownJob) as exc:
        raise CLIError(str(exc)) from None
    except DuplicateJob as exc:
        raise CLIError(str(exc), code=1) from None
    except QueueFull as exc:
        raise CLIError(str(exc), code=3) from None
    if handle.deduplicated:
        key = f"unique key {options.unique_key}" if options.unique_key else "the same unique key"
        print(f"deduplicated: job {handle.id} holds {key} and is not final; nothing was "
              "stored", file=sys.stderr)
    if args.json:
        print_json((await _get(app, handle.id)).to_dict())
    else:
        print(handle.id)
    return 0


async def _wait(app: Conveyor, job_id: str, timeout: float | None) -> JobRecord:
    deadline = None if timeout is None else time.monotonic() + timeout
    record = await _get(app, job_id)
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # a pipe gets no empty line
        task = bar.add_task(f"{record.name} {record.state}", total=1.0)
        while record.state not in FINAL_STATES:
            if deadline is not None and time.monotonic() >= deadline:
                raise CLIError(f"job {job_id} is still {record.state} after {timeout}s", code=4)
            await asyncio.sleep(0.1)
            record = await _get(app, job_id)
            label = f"{record.name} {record.state} {record.progress_message or ''}".strip()
            bar.update(task, completed=record.progress or 0.0, description=label)
    return record


async def status(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor status ID [--json] [--wait]``: exit 0, or 1 when a waited job failed."""
    if args.wait:
        record = await _wait(app, args.id, args.timeout)
    else:
        record = await _get(app, args.id)
    if args.json:
        print_json(record.to_dict())
    else:
        job_summary(record)
    failed = record.state in (JobState.DEAD, JobState.CANCELLED)
    return 1 if args.wait and failed else 0


async def jobs(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor jobs [--state S] [--queue Q] [--name N] [--limit N] [--json]``: summaries,
    their long fields cut (``conveyor status ID`` shows a whole job)."""
    if args.limit > MAX_PAGE:
        raise CLIError(f"--limit must be at most {MAX_PAGE} (page on with --cursor)")
    await app.broker.open()
    state = JobState(args.state) if args.state else None
    summaries = await app.broker.list_summaries(state=state, queue=args.queue, name=args.name,
                                                limit=args.limit, cursor=args.cursor)
    if args.json:
        print_json([s.to_dict() for s in summaries])
    else:
        print_jobs(_marked(s) for s in summaries)
    return 0


def _marked(summary: JobSummary) -> JobRecord:
    """A summary's record for a table: a cut error ends with an ellipsis."""
    record = summary.record
    if "error" in summary.truncated and record.error is not None:
        return dataclasses.replace(record, error=record.error + "…")
    return record


async def retry(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor retry ID`` or ``conveyor retry --all-dead [--queue Q]``."""
    if args.all_dead and args.id:
        raise CLIError("give a job ID or --all-dead, not both")
    if args.queue and not args.all_dead:
        raise CLIError("--queue goes with --all-dead")
    await app.broker.open()
    if args.all_dead:
        with console.status("re-enqueueing dead jobs..."):
            count = await app.broker.retry_dead(args.queue)
        print(f"re-enqueued {plural(count, 'dead job')}")
        return 0
    if not args.id:
        raise CLIError("give a job ID or --all-dead")
    before = await _get(app, args.id)
    if before.state not in (JobState.DEAD, JobState.CANCELLED):
        raise CLIError(f"job {args.id} {state_phrase(before.state)}; only dead or cancelled "
                       "jobs can be retried", code=1)
    after = await app.broker.retry(args.id)
    print(f"{args.id} {after.state if after else 'gone'}")
    return 0


async def cancel(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor cancel ID``: waiting jobs end at once, running ones are asked to stop."""
    before = await _get(app, args.id)
    if before.state in FINAL_STATES:
        raise CLIError(f"job {args.id} {state_phrase(before.state)}", code=1)
    after = await app.cancel_async(args.id)
    note = " (cancellation requested; its worker stops it)" if after.cancel_requested and \
        after.state is JobState.RUNNING else ""
    print(f"{args.id} {after.state}{note}")
    return 0


async def priority(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor priority ID N [--json]``: only a waiting (queued or scheduled) job's
    priority changes; exit 1 for a job in another state."""
    before = await _get(app, args.id)
    if before.state not in (JobState.QUEUED, JobState.SCHEDULED):
        raise CLIError(f"job {args.id} {state_phrase(before.state)}; only a waiting job's "
                       "priority can change", code=1)
    try:
        after = await app.set_priority_async(args.id, args.priority)
    except JobNotWaiting as exc:  # it started in between
        raise CLIError(str(exc), code=1) from None
    if args.json:
        print_json(after.to_dict())
    else:
        print(f"{args.id} priority {after.priority} ({after.state})")
    return 0


async def stats(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor stats [--json]``: jobs per queue and state (with each queue's paused and
    max_queued), and the live workers."""
    await app.broker.open()
    counts = await app.broker.counts()
    queues = with_settings(counts, await app.broker.queue_settings(),
                           tuple(str(s) for s in ALL_STATES))
    workers = await app.broker.workers()
    limits = await app.limit_usage_async()
    if args.json:
        print_json({"queues": queues, "workers": [w.to_dict() for w in workers],
                    "limits": limits})
        return 0
    print_counts(queues)
    console.print()
    print_workers(workers)
    if limits:
        console.print()
        print_limits(limits)
    return 0
