"""Printing for the CLI: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from conveyor.job import ALL_STATES, JobRecord, WorkerInfo

# No markup: job names, queues, errors and messages are user data ("[/x]" must print as is).
console = Console(highlight=False, markup=False)
errors = Console(stderr=True, highlight=False, markup=False)


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = time.time() - ts
    if delta < 0:
        return f"in {-delta:.1f}s"
    return f"{delta:.1f}s ago" if delta < 120 else time.strftime("%Y-%m-%d %H:%M:%S",
                                                                 time.localtime(ts))


def job_summary(record: JobRecord) -> None:
    """A job's info as aligned lines."""
    rows = [
        ("id", record.id), ("name", record.name), ("queue", record.queue),
        ("state", str(record.state)), ("attempts", str(record.attempts)),
        ("args", json.dumps(record.args)), ("kwargs", json.dumps(record.kwargs)),
        ("created", _ago(record.created_at)), ("run at", _ago(record.run_at)),
        ("started", _ago(record.started_at)), ("finished", _ago(record.finished_at)),
    ]
    if record.progress is not None:
        rows.append(("progress", f"{record.progress:.0%} {record.progress_message or ''}"))
    if record.result is not None:
        rows.append(("result", json.dumps(record.result)))
    if record.error:
        rows.append(("error", record.error))
    for key, value in rows:
        console.print(Text.assemble((f"{key:>9}", "bold"), "  ", value), soft_wrap=True)


def jobs_table(records: Iterable[JobRecord]) -> Table:
    """Jobs one per row."""
    # ids and states are never shortened, even on a narrow or piped (80 columns) output
    table = Table(Column("id", no_wrap=True, min_width=26), "name", "queue",
                  Column("state", no_wrap=True, min_width=9), "attempts", "created", "error")
    for r in records:
        table.add_row(r.id, r.name, r.queue, str(r.state), str(r.attempts),
                      _ago(r.created_at), (r.error or "")[:60])
    return table


def counts_table(counts: Mapping[str, Mapping[str, int]]) -> Table:
    """Jobs per queue and state."""
    table = Table("queue", *(str(s) for s in ALL_STATES))
    for queue in sorted(counts):
        table.add_row(queue, *(str(counts[queue].get(str(s), 0)) for s in ALL_STATES))
    return table


def workers_table(workers: Iterable[WorkerInfo]) -> Table:
    """Live worker processes with their current size."""
    table = Table("worker", "host", "pid", "queues", "concurrency", "min..max", "busy",
                  "done", "failed", "heartbeat")
    for w in workers:
        table.add_row(w.id, w.host, str(w.pid), ",".join(w.queues), str(w.concurrency),
                      f"{w.min_concurrency}..{w.max_concurrency}", str(w.busy),
                      str(w.processed), str(w.failed), _ago(w.heartbeat_at))
    return table
