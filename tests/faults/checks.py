"""The guarantees every fault scenario must keep, checked on its :class:`Report`.

:func:`broken` lists every guarantee a report breaks (all of them, not just the first), so a
failing test says at once everything that went wrong; the benchmark prints the same list.
"""

from __future__ import annotations

from collections.abc import Callable

from faults.scenarios import Report


def broken(report: Report) -> list[str]:
    """What ``report`` shows broken: the guarantees common to every scenario (see
    :func:`common`), then those of its own scenario."""
    found = common(report)
    particular = PARTICULAR.get(report.key)
    if particular is not None:
        found += particular(report)
    return found


def common(report: Report) -> list[str]:
    """Nothing acknowledged lost, no innocent job dead, no result thrown away, duplicates
    within their bound (faults x slots), every interrupted job started again within the
    recovery bound (lease + slack), every stop within grace + a few seconds with exit 0, no
    stray files or processes."""
    found = []
    if report.lost:
        found.append(f"{len(report.lost)} of {report.jobs} acknowledged jobs lost "
                     f"(not succeeded): {report.lost_detail}")
    if report.dead_innocents:
        found.append(f"{len(report.dead_innocents)} innocent jobs dead: "
                     f"{report.dead_innocents[:5]}")
    if report.thrown_away:
        found.append(f"{len(report.thrown_away)} finished results thrown away: "
                     f"{report.thrown_away[:5]}")
    if report.duplicates > report.duplicate_bound:
        found.append(f"{report.duplicates} duplicate attempts, over the bound of "
                     f"{report.duplicate_bound} (faults x slots); {report.rerun_after_ok} of "
                     "them re-ran a job whose earlier attempt had ended ok, its outcome never "
                     "recorded (its process died first, or the store refused it)")
    if report.recoveries and max(report.recoveries) > report.recovery_bound:
        slow = sorted(r for r in report.recoveries if r > report.recovery_bound)
        found.append(f"{len(slow)} recoveries over {report.recovery_bound:.1f}s "
                     f"(lease + slack): {[round(s, 2) for s in slow[-5:]]}")
    if report.unrecovered:
        found.append(f"{len(report.unrecovered)} interrupted jobs never started again: "
                     f"{report.unrecovered[:5]}")
    for stop in report.slow_stops():
        found.append(f"stop over {report.stop_bound:.1f}s or not exit 0: {stop}")
    if report.strays:
        found.append(f"left behind: {report.strays[:10]}")
    return found


def kill_loop(report: Report) -> list[str]:
    asked = report.extra["kills asked"]
    if report.faults < asked:
        return [f"only {report.faults} of {asked} kills landed on a running job"]
    return []


def redis_kill(report: Report) -> list[str]:
    found = []
    if report.extra["worker processes replaced"]:
        found.append(f"worker processes died with Redis: "
                     f"{report.extra['worker processes replaced']}")
    if len(report.recoveries) < report.faults:
        found.append(f"work resumed after only {len(report.recoveries)} of {report.faults} "
                     "restarts of Redis")
    return found


def long_outage(report: Report) -> list[str]:
    """The worker stayed alive; every job ran exactly once, was never recovered, and kept
    its first attempt's result; no attempt was stopped as lost; work flowed after."""
    found = []
    extra = report.extra
    if not extra["worker alive throughout"]:
        found.append("the worker process died")
    attempts = extra["ledger attempts per job"]
    if any(n != 1 for n in attempts.values()):
        found.append(f"ledger: not exactly one attempt per job: {attempts}")
    stored = extra["stored attempts/recoveries"]
    if any(v != (1, 0) for v in stored.values()):
        found.append(f"store: (attempts, recoveries) not (1, 0): {stored}")
    kept = extra["results kept"]
    if any(v != (1, extra["worker pid"]) for v in kept.values()):
        found.append(f"results not those of the first attempt in the worker "
                     f"(pid {extra['worker pid']}): {kept}")
    if report.superseded:
        found.append(f"results superseded by a later attempt: {report.superseded}")
    if extra["lost log lines"]:
        found.append(f"the worker logged {extra['lost log lines']} attempts as lost")
    if not report.recoveries:
        found.append("a job enqueued after the outage never started")
    return found


def poison(report: Report) -> list[str]:
    """Dead after exactly max_recoveries runs (each killed a worker process), alone in its
    process after the first, and innocent jobs cost at most the first death's other slots."""
    found = []
    extra = report.extra
    limit, slots = extra["max_recoveries"], extra["slots"]
    if extra["poison state"] != "dead":
        found.append(f"the poison job is not dead: {extra['poison']}")
    # each charged run counts; one more run is possible: started from a worker's buffer, it
    # may kill the process before a heartbeat marks it started (uncharged, it comes back a
    # suspect and is charged from then on)
    if not limit <= extra["poison runs (ledger)"] <= limit + 1:
        found.append(f"the poison ran {extra['poison runs (ledger)']} times (each killed a "
                     f"worker process), not max_recoveries = {limit} (or one more): "
                     f"{extra['poison']}")
    if extra["innocents beside the suspect"]:
        found.append(f"the suspect poison did not run alone: "
                     f"{extra['innocents beside the suspect']}")
    # a slot stays taken until its outcome is stored, so only the first death's other slots
    # may cost innocent jobs a run
    if report.duplicates > slots - 1:
        found.append(f"innocent jobs ran {report.duplicates} extra times "
                     f"({report.rerun_after_ok} of them after ending ok, their outcome not "
                     f"yet written when the poison killed the process); only the poison's first "
                     f"death may cost innocent jobs an interrupted run, at most {slots - 1}")
    return found


def sigterm_outage(report: Report) -> list[str]:
    asked = report.extra["rounds asked"]
    if report.faults < asked:
        return [f"stopped after round {report.faults} of {asked} (the rounds end after the "
                "first batch with a stop out of bounds)"]
    return []


def serve_kill(report: Report) -> list[str]:
    wrong = report.extra["pushed files missing or different"]
    return [f"acknowledged uploads not pushed as sent: {wrong[:5]}"] if wrong else []


PARTICULAR: dict[str, Callable[[Report], list[str]]] = {
    "kill_loop": kill_loop, "redis_kill": redis_kill, "long_outage": long_outage,
    "poison": poison, "sigterm_outage": sigterm_outage, "serve_kill": serve_kill,
}
