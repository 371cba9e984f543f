"""The ledger: one line per attempt start and end, appended and fsynced by the job process.

``start JOBID ATTEMPT PID TIME`` is written (``O_APPEND``, then ``fsync``) before the job's
code runs, ``end JOBID ATTEMPT PID TIME STATUS`` after it returns (``ok``), raises
(``error``) or is cancelled (``cancelled``). A process killed mid-attempt leaves a start
without an end. ``TIME`` is ``time.time()``, comparable with the times the tests take when
they inject a fault. Job ids and attempt numbers come from the attempt's ``JobContext``.

:class:`Ledger` reads the file back; the functions below compute what the tests assert.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.job import JobRecord, JobState


def append(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to the ledger and fsync it (a line is one ``write``: O_APPEND keeps
    lines whole even with many processes writing)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_start(path: str | os.PathLike[str], job_id: str, attempt: int) -> None:
    append(path, f"start {job_id} {attempt} {os.getpid()} {time.time():.6f}")


def write_end(path: str | os.PathLike[str], job_id: str, attempt: int, status: str) -> None:
    append(path, f"end {job_id} {attempt} {os.getpid()} {time.time():.6f} {status}")


@dataclass
class Attempt:
    """One attempt as the ledger saw it."""

    job_id: str
    attempt: int
    pid: int
    started: float
    ended: float | None = None
    status: str | None = None  # ok, error, cancelled; None: never ended (its process died)

    def open_at(self, moment: float) -> bool:
        """True if the attempt had started and not ended at ``moment``."""
        return self.started <= moment and (self.ended is None or self.ended > moment)


class Ledger:
    """The attempts of a ledger file, by job, in the order they started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jobs: dict[str, list[Attempt]] = {}

    def read(self) -> Ledger:
        """(Re-)read the whole file; a torn last line (a writer killed mid-write) is skipped."""
        jobs: dict[str, list[Attempt]] = {}
        text = self.path.read_text() if self.path.exists() else ""
        for line in text.splitlines():
            words = line.split()
            try:
                if words[0] == "start" and len(words) == 5:
                    jobs.setdefault(words[1], []).append(
                        Attempt(words[1], int(words[2]), int(words[3]), float(words[4])))
                elif words[0] == "end" and len(words) == 6:
                    job_id, attempt, pid = words[1], int(words[2]), int(words[3])
                    for found in reversed(jobs.get(job_id, [])):
                        if (found.attempt, found.pid, found.ended) == (attempt, pid, None):
                            found.ended, found.status = float(words[4]), words[5]
                            break
            except (IndexError, ValueError):
                continue
        self.jobs = jobs
        return self

    def attempts(self, job_id: str) -> list[Attempt]:
        return self.jobs.get(job_id, [])

    def all(self) -> list[Attempt]:
        return [a for attempts in self.jobs.values() for a in attempts]

    def open_in(self, pid: int, moment: float | None = None) -> list[Attempt]:
        """Attempts of process ``pid`` started and not ended (at ``moment``, or ever)."""
        return [a for a in self.all() if a.pid == pid
                and (a.ended is None if moment is None else a.open_at(moment))]

    def started_between(self, after: float, before: float = float("inf")) -> list[Attempt]:
        return [a for a in self.all() if after < a.started <= before]


# -- what the tests assert ----------------------------------------------------------------------
def records(app: Any, ids: Iterable[str]) -> dict[str, JobRecord | None]:
    """The stored record of every id (``None`` when the store has none)."""
    wanted = list(ids)

    async def read() -> dict[str, JobRecord | None]:
        await app.broker.open()
        return {job_id: await app.broker.get(job_id) for job_id in wanted}

    found: dict[str, JobRecord | None] = app.run_sync(read())
    return found


def not_succeeded(found: Mapping[str, JobRecord | None]) -> list[str]:
    """Ids whose job is missing from the store or did not end succeeded."""
    return sorted(i for i, r in found.items() if r is None or r.state is not JobState.SUCCEEDED)


def describe(found: Mapping[str, JobRecord | None], ids: Iterable[str], limit: int = 5) -> str:
    """A few of ``ids`` with their stored state, for failure messages."""
    out = []
    for job_id in list(ids)[:limit]:
        r = found.get(job_id)
        out.append(f"{job_id}: missing" if r is None else
                   f"{job_id}: {r.state} attempts={r.attempts} recoveries={r.recoveries} "
                   f"error={r.error!r}")
    return "; ".join(out)


def duplicates(ledger: Ledger, ids: Iterable[str]) -> int:
    """Attempts started beyond one per job."""
    return sum(max(0, len(ledger.attempts(i)) - 1) for i in ids)


def thrown_away(ledger: Ledger, found: Mapping[str, JobRecord | None]) -> list[str]:
    """Jobs an attempt finished ('end ok') that do not show a finished result: not
    succeeded in the store, or succeeded with a result no attempt of the ledger ended with."""
    bad = []
    for job_id, record in found.items():
        ok = [a for a in ledger.attempts(job_id) if a.status == "ok"]
        if not ok:
            continue
        if record is None or record.state is not JobState.SUCCEEDED:
            bad.append(job_id)
            continue
        made_by = result_attempt(record)
        if made_by is not None and made_by not in {(a.attempt, a.pid) for a in ok}:
            bad.append(job_id)
    return sorted(bad)


def superseded(ledger: Ledger, found: Mapping[str, JobRecord | None]) -> list[str]:
    """Jobs with an attempt that ended ok whose result is not the one stored (a later attempt
    ran and its result replaced it): legitimate after a kill between the end of an attempt
    and its settle, never when no process died."""
    bad = []
    for job_id, record in found.items():
        kept = result_attempt(record)
        if kept is None:  # not a job that says which attempt made its result
            continue
        if any(a.status == "ok" and (a.attempt, a.pid) != kept for a in ledger.attempts(job_id)):
            bad.append(job_id)
    return sorted(bad)


def result_attempt(record: JobRecord | None) -> tuple[int, int] | None:
    """``(attempt, pid)`` of the attempt whose result is stored (the fault jobs return them)."""
    result = record.result if record is not None else None
    if isinstance(result, dict) and isinstance(result.get("attempt"), int) \
            and isinstance(result.get("pid"), int):
        return result["attempt"], result["pid"]
    return None


@dataclass
class Kill:
    """A process killed (SIGKILL, or ``os._exit`` by a poison job) at ``at`` (time.time())."""

    pid: int
    at: float
    #: attempts open in the process when it died
    interrupted: list[Attempt]


def interrupted(ledger: Ledger, pid: int, at: float) -> list[Attempt]:
    """The attempts process ``pid`` was running when it died at ``at`` (read once it is
    dead): never ended, and started by then (give or take the moment between taking ``at``
    and the signal landing, or a poison job's last line and its exit)."""
    return [a for a in ledger.all()
            if a.pid == pid and a.ended is None and a.started <= at + KILL_SLOP]


#: seconds between the time taken for a kill and the process's last possible start line
KILL_SLOP = 0.5


def recovery_times(ledger: Ledger, kills: Iterable[Kill]) -> tuple[list[float], list[str]]:
    """For every attempt a kill interrupted: seconds from the kill to the next start of that
    job. Returns the times and the jobs never started again."""
    times: list[float] = []
    never: list[str] = []
    for kill in kills:
        for hit in kill.interrupted:
            later = [a.started for a in ledger.attempts(hit.job_id) if a.started > kill.at]
            if later:
                times.append(min(later) - kill.at)
            else:
                never.append(hit.job_id)
    return times, never


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]
