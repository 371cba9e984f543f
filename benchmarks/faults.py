#!/usr/bin/env python3
"""The fault-injection scenarios of tests/faults at a larger size; prints one table.

``.venv/bin/python benchmarks/faults.py [--scale 2] [--only kill_loop,poison] [--json]``

The scenarios are the very functions the tests run (``tests/faults/scenarios.py``), with
bigger sizes: workers SIGKILLed in a loop, Redis killed with ``kill -9`` (AOF ``always``), a
Redis outage longer than the lease, a poison job among innocent ones, SIGTERM during a store
outage, and ``conveyor serve`` SIGKILLed during uploads. For each: the jobs acknowledged,
the faults injected, the jobs lost, the duplicate attempts (and their bound: faults x
slots), the recovery times p50/p99/max and the longest graceful stop, then every guarantee
the run broke.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from faults import scenarios as S  # noqa: E402  (tests/ is on the path only from here)
from faults.checks import broken  # noqa: E402

#: a scenario with its sizes, to be called with ``workdir=``
Scenario = Callable[..., S.Report]


def plan(scale: float) -> dict[str, list[tuple[str, Scenario]]]:
    """Every scenario by name, each a list of (label, run) at ``scale`` times the base size
    (which is several times the tests' size)."""

    def n(base: int) -> int:
        return max(1, round(base * scale))

    return {
        "kill_loop": [(kind, partial(S.kill_loop, kind, jobs=n(400), kills=n(12)))
                      for kind in ("sqlite", "redis")],
        "redis_kill": [("redis", partial(S.redis_kill, jobs=n(600), kills=n(10)))],
        "long_outage": [("redis", partial(S.long_outage, jobs=n(8), job_seconds=30.0,
                                          down=3.0))],
        "poison": [(variant, partial(S.poison, variant=variant, innocents=n(100)))
                   for variant in ("async", "thread")],
        "sigterm_outage": [(kind, partial(S.sigterm_outage, kind, rounds=n(40),
                                          keep_going=True)) for kind in ("sqlite", "redis")],
        "serve_kill": [("sqlite", partial(S.serve_kill, uploads=n(400), kills=n(10)))],
    }


def seconds(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN: no figure


def row(report: S.Report) -> list[str]:
    rec = report.recoveries
    recovery = "-" if not rec else (f"{seconds(report.recovery(0.5))} / "
                                    f"{seconds(report.recovery(0.99))} / {max(rec):.2f}")
    stop = max((s.seconds for s in report.stops), default=float("nan"))
    return [report.scenario, report.store, f"{report.jobs:,}", str(report.faults),
            str(len(report.lost)), f"{report.duplicates} / {report.duplicate_bound}",
            recovery, seconds(stop)]


HEAD = ["scenario", "store", "jobs", "faults", "lost", "duplicates / bound",
        "recovery p50 / p99 / max s", "longest stop s"]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEAD, *rows]) for i in range(len(HEAD))]
    lines = []
    for line in [HEAD, ["-" * w for w in widths], *rows]:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1]),
                 *(c.rjust(w) for c, w in zip(line[2:], widths[2:], strict=True))]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every size (jobs, kills, rounds) by this")
    parser.add_argument("--only", help="comma-separated scenarios (default: all): "
                        "kill_loop, redis_kill, long_outage, poison, sigterm_outage, serve_kill")
    parser.add_argument("--keep", action="store_true",
                        help="keep every run's directory (ledger, logs, store)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args()
    chosen = plan(args.scale)
    if args.only:
        names = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in names if x not in chosen]
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(unknown)}")
        chosen = {name: chosen[name] for name in names}
    if shutil.which("redis-server") is None:
        parser.error("redis-server is not on the PATH (the Redis scenarios need it)")

    began = time.monotonic()
    reports: list[S.Report] = []
    problems: list[tuple[S.Report, list[str], Path]] = []
    for name, runs in chosen.items():
        for label, run in runs:
            workdir = Path(tempfile.mkdtemp(prefix=f"conveyor-faults-{name}-{label}-"))
            print(f"{name} ({label}) ...", file=sys.stderr, flush=True)
            report = run(workdir=workdir)
            reports.append(report)
            found = broken(report)
            if found:
                problems.append((report, found, workdir))
            elif not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
            print(f"  {report.seconds:.0f}s; {len(found)} guarantees broken", file=sys.stderr,
                  flush=True)

    if args.json:
        print(json.dumps([_as_json(r) for r in reports], indent=2))
    else:
        print(f"lease {S.LEASE:.0f}s, grace {S.GRACE:.0f}s; recovery: from a worker's death to "
              "the next start of each job it ran (store faults: from the store's return to "
              "the first start of a job enqueued meanwhile); "
              f"{time.monotonic() - began:.0f}s in all.\n")
        print(table([row(r) for r in reports]))
        for report, found, workdir in problems:
            print(f"\n{report.scenario} on {report.store} broke (run kept in {workdir}):")
            for line in found:
                print(f"  - {line}")
    return 1 if problems else 0


def _as_json(report: S.Report) -> dict[str, Any]:
    return {
        "scenario": report.scenario, "store": report.store, "jobs": report.jobs,
        "faults": report.faults, "lost": len(report.lost),
        "dead_innocents": len(report.dead_innocents), "duplicates": report.duplicates,
        "duplicate_bound": report.duplicate_bound, "rerun_after_ok": report.rerun_after_ok,
        "thrown_away": len(report.thrown_away),
        "recovery_p50": report.recovery(0.5) if report.recoveries else None,
        "recovery_p99": report.recovery(0.99) if report.recoveries else None,
        "recovery_max": max(report.recoveries, default=None),
        "recovery_bound": report.recovery_bound,
        "stops": [{"what": s.what, "seconds": s.seconds, "code": s.code, "store": s.store}
                  for s in report.stops],
        "strays": report.strays, "seconds": report.seconds,
        "broken": broken(report),
        "extra": {k: v for k, v in report.extra.items() if _jsonable(v)},
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
