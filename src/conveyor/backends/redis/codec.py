"""Jobs and workers to and from what the scripts keep in Redis.

A job is its immutable JSON (see :mod:`conveyor.backends.redis.keys`) plus one plain value
per field that changes; these functions put them together again.
Statistics go to and from the fields of the per-minute hashes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring as _quote
from typing import Any, cast

from conveyor import stored
from conveyor.backends.redis.keys import FIELDS, group_of_lane
from conveyor.job import JobRecord, JobState, WorkerInfo
from conveyor.stats import SUMS, MinuteStats, read_sum
from conveyor.summary import JobSummary, summarize, summary_of

_loads = json.JSONDecoder().decode
#: decodes one JSON value at an index, without the whitespace checks of ``decode``
_scan_once: Callable[[str, int], tuple[Any, int]] = \
    json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_RUNNING = JobState.RUNNING
#: where the result is among a job's fields (see keys.FIELDS)
_RESULT = FIELDS.index("result")


def job_spec(job: JobRecord) -> str:
    """The job's immutable JSON without created_at, run_at and the closing brace: the
    enqueue script adds those from the server's clock. Arguments are embedded as JSON
    values, so reading a job back decodes one document. (Built from a template: this
    runs once per enqueued job.)"""
    args, kwargs = job.encoded()
    spec = (
        f'{{"id":{_quote(job.id)},"name":{_quote(job.name)},"queue":{_quote(job.queue)},'
        f'"args":{args},"kwargs":{kwargs}'
    )
    return spec if job.unique_key is None else f'{spec},"unique_key":{_quote(job.unique_key)}'



def queue_of(spec: str) -> str:
    """The queue named in a job's JSON (``""`` in one a hand left odd)."""
    try:
        return str(_loads(spec)["queue"])
    except Exception:
        read = stored.json_value(spec)
        return stored.text(read.get("queue")) if type(read) is dict else ""


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def priority_of(field: str | None) -> int:
    """The priority in a job's priority field (``"PRIORITY BOOST"``; None: 0)."""
    return int(field.partition(" ")[0]) if field else 0


def priority_field(priority: int, boost: float) -> str:
    """A job's priority field as the scripts write it: ``"PRIORITY BOOST"``."""
    return f"{priority} {boost!r}"


def claimed_credits(reply: Sequence[Any]) -> list[int] | None:
    """The weighted queues' new credits in a claim script's reply (None: unchanged)."""
    text = reply[2] if len(reply) > 2 else ""
    return [int(float(word)) for word in text.split()] if text else None


def claimed_throttles(reply: Sequence[Any]) -> list[tuple[str, str]]:
    """The (job name, reason) pairs a claim held ready jobs back for, from its reply."""
    notes = reply[3] if len(reply) > 3 else []
    return list(zip(notes[::2], notes[1::2], strict=True))


def claimed_jobs(reply: Sequence[Any], worker_id: str) -> list[JobRecord]:
    """The jobs of a claim script's reply: ``[started_at, lease expiry, credits, throttles
    (name, reason, ...), then per job its JSON, run_at ('' for the one it was enqueued
    with), attempts, recoveries, suspect (1 or 0), priority field ('' for none), deferrals,
    lane field ('' for none), claim number]``.

    This runs once per claimed job: the JSON (the scripts' own, without whitespace) is
    scanned without the whitespace checks of ``decode``, and the record is built with
    positional arguments in :class:`JobRecord`'s field order (a test compares the result
    with a record built by keyword for every combination of the optional fields)."""
    if len(reply) < 5:
        return []
    started, lease = float(reply[0]), float(reply[1])
    scan = _scan_once
    record = JobRecord
    running = _RUNNING
    jobs = []
    for i in range(4, len(reply), 9):
        (run_at, attempts, recoveries, suspect, priority, deferrals,
         lane, claim) = reply[i + 1:i + 9]
        try:
            spec = scan(reply[i], 0)[0]
            job = record(
                spec["id"], spec["name"], spec["queue"], running, spec["args"],
                spec["kwargs"], spec["created_at"],
                float(run_at) if run_at else spec["run_at"],
                int(attempts), int(recoveries), started,
                None, None, None, None, None, None,  # finished_at .. progress_message
                worker_id, lease, False, None,  # worker_id, lease_expires_at, cancel, expiry
                int(priority.partition(" ")[0]) if priority else 0,
                group_of_lane(lane) if lane else None,
                int(deferrals) if deferrals else 0,
                int(suspect) == 1,
                int(claim),
            )
            if not stored.plain(job):
                raise ValueError("odd")
        except Exception:  # a record a hand left odd: claimed all the same (see stored)
            job = _odd_job(reply[i], [None, "running", run_at, attempts, recoveries,
                                      worker_id, started, None, None, None, None, None,
                                      priority, deferrals, lane], None, False, lease)
            job.suspect = stored.integer(suspect) == 1
            job.claim = stored.integer(claim)
        jobs.append(job)
    return jobs


def job_from_fields(
    values: Sequence[str | None], expires_at: float | None, cancel_requested: bool,
    lease_expires_at: float | None, job_id: str | None = None,
) -> JobRecord:
    """A job from its JSON and its fields, as read from the jobs hash and the field hashes
    in :data:`~conveyor.backends.redis.keys.FIELDS` order (None where a field is absent);
    ``job_id``, when given, is the id it was read by."""
    try:
        record = _job(values, expires_at, cancel_requested, lease_expires_at)
        if stored.plain(record):
            return record
    except Exception:  # (text where a number or JSON belongs, a state no version knows)
        pass
    odd = _odd_job(values[0], values, expires_at, cancel_requested, lease_expires_at)
    if job_id is not None:
        odd.id = job_id  # (the JSON that names it may be what is odd)
    return odd


def _job(values: Sequence[str | None], expires_at: float | None, cancel_requested: bool,
         lease_expires_at: float | None) -> JobRecord:
    (spec, state, run_at, attempts, recoveries, worker, started, finished, result, error,
     traceback, progress, priority, deferrals, lane) = values
    assert spec is not None
    data = _loads(spec)
    value = message = None
    if progress is not None:
        number, _, text = progress.partition(" ")
        value, message = float(number), text or None
    return JobRecord(
        id=data["id"],
        name=data["name"],
        queue=data["queue"],
        state=stored.STATES[state] if state is not None else JobState.QUEUED,
        args=data["args"],
        kwargs=data["kwargs"],
        created_at=float(data["created_at"]),
        run_at=float(run_at) if run_at is not None else float(data["run_at"]),
        attempts=int(attempts or 0),
        recoveries=int(recoveries or 0),
        started_at=_number(started),
        finished_at=_number(finished),
        result=stored.strict_loads(result),
        error=error,
        traceback=traceback,
        progress=value,
        progress_message=message,
        worker_id=worker,
        lease_expires_at=lease_expires_at,
        cancel_requested=cancel_requested,
        expires_at=expires_at,
        unique_key=_text(data.get("unique_key")),
        priority=priority_of(priority),
        group=group_of_lane(lane),
        deferrals=int(deferrals or 0),
    )


def _odd_job(spec: object, values: Sequence[Any], expires_at: float | None,
             cancel_requested: bool, lease_expires_at: float | None) -> JobRecord:
    """A job whose JSON or fields did not read plainly (a hand left them odd): each as the
    nearest value of its field's type (see :mod:`conveyor.stored`)."""
    (_, state, run_at, attempts, recoveries, worker, started, finished, result, error,
     traceback, progress, priority, deferrals, lane) = values
    read = stored.json_value(spec)
    data: dict[str, Any] = read if type(read) is dict else _named(stored.text(spec))
    created = stored.number(data.get("created_at"))
    value, message = None, None
    if progress is not None:
        number, _, text = stored.text(progress).partition(" ")
        value, message = stored.optional_number(number), text or None
    return JobRecord(
        id=stored.text(data.get("id")),
        name=stored.text(data.get("name")),
        queue=stored.text(data.get("queue")),
        state=JobState.QUEUED if state is None else stored.state(state),
        args=data.get("args", stored.text(data.get("stored", spec))),
        kwargs=cast(Any, data.get("kwargs")),  # (not a dict: the worker ends the job dead)
        created_at=created,
        run_at=stored.number(run_at if run_at else data.get("run_at"), created),
        attempts=stored.integer(attempts),
        recoveries=stored.integer(recoveries),
        started_at=stored.optional_number(started),
        finished_at=stored.optional_number(finished),
        result=stored.json_value(result),
        error=stored.optional_text(error),
        traceback=stored.optional_text(traceback),
        progress=value,
        progress_message=message,
        worker_id=stored.optional_text(worker),
        lease_expires_at=lease_expires_at,
        cancel_requested=cancel_requested,
        expires_at=expires_at,
        unique_key=stored.optional_text(data.get("unique_key")),
        priority=stored.integer(stored.text(priority).partition(" ")[0]),
        group=_odd_group(lane),
        deferrals=stored.integer(deferrals),
    )


#: the start of a job's JSON as enqueue writes it (see :func:`job_spec`)
_NAMED = re.compile(r'\{"id":("(?:[^"\\]|\\.)*"),"name":("(?:[^"\\]|\\.)*"),'
                    r'"queue":("(?:[^"\\]|\\.)*")')


def _named(text: str) -> dict[str, Any]:
    """The id, name and queue at the start of a job's JSON cut short (what is left of it
    when the rest does not parse); {} when they are not there whole."""
    found = _NAMED.match(text)
    if found is None:
        return {}
    try:
        return {key: _loads(value) for key, value in
                zip(("id", "name", "queue"), found.groups(), strict=True)}
    except ValueError:
        return {}


def _odd_group(lane: object) -> str | None:
    try:
        return group_of_lane(stored.optional_text(lane))
    except Exception:
        return stored.optional_text(lane)


def summary_from_preview(row: Sequence[Any], preview: int,
                         job_id: str | None = None) -> JobSummary:
    """A job's summary from a ``list_preview`` script's reply for it: its JSON without the
    arguments (or whole, with None for both texts, when not of the usual shape), the texts
    of its arguments and keyword arguments, its fields (long ones cut), its expiry, and
    whether its cancellation was asked for."""
    spec, args, kwargs, *fields, expiry, cancel = row
    if args is None or kwargs is None:
        whole = job_from_fields([spec, *fields], _number(expiry), bool(cancel), None, job_id)
        return summarize(whole, preview)
    spec = '{"args":[],"kwargs":{},' + spec[1:]
    result = fields[_RESULT]
    values = list(fields)
    values[_RESULT] = None
    record = job_from_fields([spec, *values], _number(expiry), bool(cancel), None, job_id)
    texts = {"args": args, "kwargs": kwargs, "result": result, "error": record.error,
             "traceback": record.traceback, "progress_message": record.progress_message}
    return summary_of(record, texts, preview)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def worker_to_json(worker: WorkerInfo) -> str:
    """A worker's heartbeat record (the script sets heartbeat_at from the server clock)."""
    return json.dumps({
        "id": worker.id, "host": worker.host, "pid": worker.pid, "queues": worker.queues,
        "concurrency": worker.concurrency, "min_concurrency": worker.min_concurrency,
        "max_concurrency": worker.max_concurrency, "busy": worker.busy,
        "processed": worker.processed, "failed": worker.failed,
        "started_at": worker.started_at,
    })


def worker_from_json(raw: str | bytes) -> WorkerInfo:
    """A worker as its last heartbeat stored it."""
    data = stored.json_value(raw)
    if type(data) is not dict:  # (a hand left it odd: each field as near as it reads)
        data = {}
    queues = data.get("queues")
    return WorkerInfo(
        id=stored.text(data.get("id")), host=stored.text(data.get("host")),
        pid=stored.integer(data.get("pid")),
        queues=[stored.text(q) for q in queues] if type(queues) is list else [],
        concurrency=stored.integer(data.get("concurrency")),
        min_concurrency=stored.integer(data.get("min_concurrency")),
        max_concurrency=stored.integer(data.get("max_concurrency")),
        busy=stored.integer(data.get("busy")), processed=stored.integer(data.get("processed")),
        failed=stored.integer(data.get("failed")),
        started_at=stored.number(data.get("started_at")),
        heartbeat_at=stored.number(data.get("heartbeat_at")),
    )


def stats_field(queue: str, name: str) -> str:
    """A field of a minute's statistics hash: the queue, NUL, then the sum's name.

    The names never contain NUL, so splitting at the last NUL gives back any queue name.
    """
    return f"{queue}\x00{name}"


def stats_increments(row: MinuteStats) -> list[tuple[str, str]]:
    """``(field, increment)`` of the row's non-zero sums. Counts are whole numbers; the
    wait total always has a decimal point (the script adds it with HINCRBYFLOAT)."""
    increments = []
    for name in SUMS:
        value = getattr(row, name)
        if value:
            text = f"{value:.6f}" if name == "wait_total" else str(int(value))
            increments.append((stats_field(row.queue, name), text))
    return increments


def stats_rows(minute: int, fields: dict[str, str]) -> list[MinuteStats]:
    """The rows of one minute's statistics hash, by queue name."""
    rows: dict[str, MinuteStats] = {}
    for field, value in fields.items():
        queue, _, name = field.rpartition("\x00")
        if name not in SUMS:
            continue
        row = rows.get(queue)
        if row is None:
            row = rows[queue] = MinuteStats(minute, queue)
        setattr(row, name, read_sum(name, value))
    return [rows[queue] for queue in sorted(rows)]
