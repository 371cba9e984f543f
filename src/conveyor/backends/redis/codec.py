"""Jobs and workers to and from the JSON the scripts keep in Redis; statistics to and from
the fields of the per-minute hashes."""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _quote
from typing import Any

from conveyor.job import JobRecord, JobState, WorkerInfo
from conveyor.serialization import loads
from conveyor.stats import SUMS, MinuteStats

_NEW_JOB_TAIL = (
    '"attempts":0,"recoveries":0,"started_at":null,"finished_at":null,"result":null,'
    '"error":null,"traceback":null,"progress":null,"progress_message":null,'
    '"worker_id":null,"lease_expires_at":null,"cancel_requested":false,"expires_at":null'
)


def job_fields(job: JobRecord) -> str:
    """The job as JSON without its closing brace: the enqueue script appends the state,
    created_at and run_at, all from the server's clock. (Built from a template: this runs
    once per enqueued job.)"""
    args, kwargs = job.encoded()
    return (
        f'{{"id":{_quote(job.id)},"name":{_quote(job.name)},"queue":{_quote(job.queue)},'
        f'"args":{_quote(args)},"kwargs":{_quote(kwargs)},{_NEW_JOB_TAIL}'
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def job_from_json(raw: str | bytes) -> JobRecord:
    """A job as the scripts stored it."""
    data = json.loads(raw)
    return JobRecord(
        id=data["id"],
        name=data["name"],
        queue=data["queue"],
        state=JobState(data["state"]),
        args=loads(data["args"]),
        kwargs=loads(data["kwargs"]),
        created_at=float(data["created_at"]),
        run_at=float(data["run_at"]),
        attempts=int(data["attempts"]),
        recoveries=int(data["recoveries"]),
        started_at=_number(data.get("started_at")),
        finished_at=_number(data.get("finished_at")),
        result=loads(data.get("result")),
        error=data.get("error"),
        traceback=data.get("traceback"),
        progress=_number(data.get("progress")),
        progress_message=data.get("progress_message"),
        worker_id=data.get("worker_id"),
        lease_expires_at=_number(data.get("lease_expires_at")),
        cancel_requested=bool(data.get("cancel_requested")),
        expires_at=_number(data.get("expires_at")),
    )


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
    data = json.loads(raw)
    return WorkerInfo(
        id=data["id"], host=data["host"], pid=int(data["pid"]), queues=list(data["queues"]),
        concurrency=int(data["concurrency"]), min_concurrency=int(data["min_concurrency"]),
        max_concurrency=int(data["max_concurrency"]), busy=int(data["busy"]),
        processed=int(data["processed"]), failed=int(data["failed"]),
        started_at=float(data["started_at"]), heartbeat_at=float(data["heartbeat_at"]),
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
        setattr(row, name, float(value) if name == "wait_total" else int(value))
    return [rows[queue] for queue in sorted(rows)]
