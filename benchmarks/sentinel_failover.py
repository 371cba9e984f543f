#!/usr/bin/env python3
"""What a Redis Sentinel failover does to acknowledged enqueues, per replication setting;
prints a table.

``PYTHONPATH=src:tests .venv/bin/python benchmarks/sentinel_failover.py [--runs 3]
[--settings async,min-replicas-lag10,min-replicas-lag1,wait] [--partitions 0,2]``

Each run (tests/sentinel_run.py) starts a master, one replica and three sentinels on free
ports of 127.0.0.1, two ``conveyor worker`` processes and two producers (blocking
``enqueue`` and ``enqueue_async``, each retrying a job id until acknowledged and noting it in
an fsynced ledger); 1.5 s in, it SIGKILLs the master. With a partition of P seconds, the
replica's link is cut P seconds before the kill (the replica falls behind). Once the
sentinels promote the replica, the old master is started again as its replica; the
producers go on 2 s and the workers finish what is stored.

Columns: acknowledged enqueues, those lost (and of these, started by a worker before they
were lost), jobs run twice or more, refusals for unconfirmed replicas (retried), and the
seconds from the kill until both producers had an acknowledgement again and until a worker
finished a job enqueued after the kill; each a mean over the runs, lost also min-max.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests")]

from sentinel_run import SETTINGS, Figures, failover_run  # noqa: E402


def _mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    text = f"{statistics.mean(known):.1f}"
    return text if len(known) == len(values) else text + f" ({len(values) - len(known)} none)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--partitions", default="0,2",
                        help="seconds the replica is cut off before the kill, per scenario")
    args = parser.parse_args()
    settings = args.settings.split(",")
    partitions = [float(p) for p in args.partitions.split(",")]
    rows: list[tuple[float, str, list[Figures]]] = []
    for partition in partitions:
        for setting in settings:
            runs = []
            for n in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="conveyor-failover-") as directory:
                    figures = failover_run(setting, Path(directory), partition=partition)
                runs.append(figures)
                print(f"partition {partition:g} s, {setting}, run {n + 1}: {figures}",
                      file=sys.stderr, flush=True)
            rows.append((partition, setting, runs))
    header = ("partition", "setting", "acked", "lost (min-max)", "lost, had run",
              "run twice+", "unconfirmed", "producers back s", "workers back s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for partition, setting, runs in rows:
        lost = [f.lost for f in runs]
        print("| " + " | ".join([
            f"{partition:g} s", setting,
            f"{statistics.mean(f.acked for f in runs):.0f}",
            f"{statistics.mean(lost):.1f} ({min(lost)}-{max(lost)})",
            f"{statistics.mean(f.lost_ran for f in runs):.1f}",
            f"{statistics.mean(f.duplicates for f in runs):.1f}",
            f"{statistics.mean(f.unconfirmed for f in runs):.1f}",
            _mean([f.producers_resumed for f in runs]),
            _mean([f.workers_resumed for f in runs]),
        ]) + " |")
    bad = [f for _, _, runs in rows for f in runs
           if f.errors or f.results_lost or f.unfinished]
    for figures in bad:
        print(f"odd run: {figures}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
