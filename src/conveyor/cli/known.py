"""``conveyor jobs-known``: the jobs workers published to the store, with their parameters."""

from __future__ import annotations

import argparse
import json
import sys

from conveyor.app import Conveyor
from conveyor.cli.output import Col, Stamp, print_table

#: said when no worker published anything (on stderr; stdout stays empty for scripts)
NONE_YET = ("no worker has published its jobs to this store yet (workers publish them when "
            "they start and every minute: conveyor worker APP)")


KNOWN_COLUMNS = (Col("name", fit=12), Col("queue", fit=8), Col("signature", fit=16),
                 Col("executor", drop=2), Col("last seen"), Col("worker", fit=8, drop=1))


def add_known_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> \
        argparse.ArgumentParser:
    """Add ``jobs-known`` to the subcommands; the caller adds the store options."""
    p = sub.add_parser("jobs-known", help="list the jobs workers run (their names, queues and "
                       "parameters, as the workers published them)")
    p.add_argument("--json", action="store_true", help="print them as a JSON array")
    return p


async def jobs_known(app: Conveyor, args: argparse.Namespace) -> int:
    """``conveyor jobs-known [--json]``: a table on a terminal, else one tab-separated line
    per job (name, queue, signature, last seen as ISO 8601, worker)."""
    jobs = await app.known_jobs_async()
    if args.json:
        print(json.dumps([job.to_display() for job in jobs], indent=2, ensure_ascii=False))
        return 0
    if not jobs:
        print(NONE_YET, file=sys.stderr)
        return 0
    print_table(KNOWN_COLUMNS, ([job.name, job.queue, job.signature_text,
                                 job.executor, Stamp(job.seen_at), job.worker_id or "-"]
                                for job in jobs))
    return 0
