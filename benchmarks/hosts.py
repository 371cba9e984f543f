#!/usr/bin/env python3
"""Drain rate of 1, 2 and 3 worker hosts against one Redis; prints one line per drain.

``sudo .venv/bin/python benchmarks/hosts.py [--jobs 100000] [--processes 1,2] [--slots 10]``

Each host is a Linux network namespace on a private bridge, Redis (AOF, ``appendfsync
always``) in a namespace of its own (``tests/hosts/harness.py``); the drain is the tests'
own (``tests/hosts/throughput.py``): a backlog of no-op jobs enqueued in bulk into a paused
queue, then resumed once every worker process is registered, timed until the store counts
every job succeeded. Besides jobs/s it prints Redis's time per job: in the scripts
(``INFO commandstats``) and the CPU of its main thread (``INFO cpu``), whose inverse is the
ceiling one Redis puts on the drain. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hosts.harness import Site, unavailable  # noqa: E402  (tests/ is on the path only here)
from hosts.throughput import check, drain  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per drain")
    parser.add_argument("--hosts", default="1,2,3", help="host counts to run, e.g. 1,2,3")
    parser.add_argument("--processes", default="1",
                        help="worker processes per host (--processes), e.g. 1,2")
    parser.add_argument("--slots", type=int, default=10, help="slots per worker process")
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    hosts = [int(h) for h in args.hosts.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-hosts-bench-"))
    failed = False
    try:
        for processes in (int(p) for p in args.processes.split(",")):
            site = Site(workdir / f"p{processes}", max(hosts), lease=30.0)
            try:
                for n in hosts:
                    found = drain(site, n, args.jobs, processes=processes, slots=args.slots)
                    wrong = check(found)
                    failed = failed or bool(wrong)
                    print(found.line() + (f"  BROKEN: {wrong}" if wrong else ""), flush=True)
            finally:
                site.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
