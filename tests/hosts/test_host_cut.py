"""A worker host cut off from the network mid-run, then healed.

Three hosts (one ``conveyor worker`` each, on the queue ``default`` and a queue of its own)
run long jobs; the host running the most of them is cut off (its switch port down). Its
jobs must start again on the other hosts within the lease plus :data:`RECOVERY_SLACK`; the
cut host finishes its attempts while cut off, and once healed its late outcomes are refused
(the stored result is the rerun's, the attempt that owns the lease), its worker process
carries on (same pid) and claims again, nothing acknowledged is lost, no finished result is
thrown away, and the duplicates are at most the jobs the cut host was running.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from conveyor.job import JobState
from faults import ledger as L
from faults.scenarios import GRACE, LEASE, RECOVERY_SLACK, STOP_SLACK
from hosts.harness import Site
from polling import wait_until

HOSTS = 3
SLOTS = 3
JOBS = 6
#: the line a process logs when an outage begins (once per outage)
OUTAGE = "cannot reach the store"


def test_cut_host_jobs_rerun_elsewhere_and_late_outcomes_refused(
        make_site: Callable[..., Site]) -> None:
    site = make_site(HOSTS, LEASE)
    app, ledger = site.app, site.ledger
    assert app is not None
    workers = [site.worker(h, slots=SLOTS, queues=["default", h.name]) for h in site.hosts]
    site.wait_registered(workers)
    marker = site.workdir / "release"
    ids = [h.id for h in app.enqueue_many("hold", [(str(marker), 120.0)] * JOBS)]
    wait_until(lambda: all(ledger.read().attempts(i) for i in ids), 60,
               f"the {JOBS} jobs to start\n{site.logs()}", 0.05)

    # the host running the most jobs is cut off; its running attempts end meanwhile
    victim = max(workers, key=lambda w: len(ledger.read().open_in(w.pid)))
    running = ledger.open_in(victim.pid)
    assert running, f"no host runs a job\n{site.logs()}"
    cut_at = time.time()
    site.network.cut(victim.node)
    marker.touch()
    mine = [a.job_id for a in running]

    def reruns() -> list[float] | None:
        ledger.read()
        later = [[a.started - cut_at for a in ledger.attempts(j)
                  if a.pid != victim.pid and a.started > cut_at] for j in mine]
        return [min(t) for t in later] if all(later) else None

    bound = LEASE + RECOVERY_SLACK
    delays: list[float] = wait_until(
        reruns, bound + 60, f"the cut host's jobs {mine} to start elsewhere\n{site.logs()}",
        0.02)
    print(f"\ncut host {victim.node.name} (pid {victim.pid}) was running {len(mine)} jobs; "
          f"they started elsewhere {', '.join(f'{d:.2f}s' for d in delays)} after the cut "
          f"(lease {LEASE:.1f}s, bound {bound:.1f}s)")
    assert max(delays) <= bound, f"reruns after {delays}, over lease + slack = {bound}s"

    # the cut host's attempts ended (ok) while it was cut off: their outcomes are late
    wait_until(lambda: not ledger.read().open_in(victim.pid), 30,
               f"the cut host's attempts to end\n{site.logs()}", 0.05)
    late = [a for j in mine for a in ledger.attempts(j) if a.pid == victim.pid]
    assert all(a.status == "ok" for a in late), late
    wait_until(lambda: all(r is not None and r.state is JobState.SUCCEEDED
                           for r in L.records(app, ids).values()), 60,
               f"every job to succeed\n{site.logs()}", 0.1)
    # healed only once the cut host knows it is cut off (its outcomes wait for the store)
    wait_until(lambda: OUTAGE in victim.log(), 60,
               f"the cut host to log the outage\n{victim.tail()}", 0.05)

    site.network.heal(victim.node)
    healed_at = time.time()
    # the same process claims again: a job on its own queue runs in it
    probe = app.enqueue_call("work", [0.01], {}, queue=victim.node.name).id
    wait_until(lambda: any(a.pid == victim.pid and a.started > healed_at
                           for a in ledger.read().attempts(probe)), 60,
               f"the healed host to run a job\n{site.logs()}", 0.05)
    resumed = min(a.started for a in ledger.attempts(probe)) - healed_at
    print(f"healed after {healed_at - cut_at:.1f}s: pid {victim.pid} ran a job of its queue "
          f"{resumed:.2f}s after the heal")
    assert victim.alive(), victim.tail()
    assert victim.log().count(OUTAGE) == 1, victim.tail()

    # a graceful stop sends whatever outcome is still pending: after it, nothing can land
    stops = [w.stop(GRACE + STOP_SLACK) for w in workers]
    assert all(s.code == 0 for s in stops), f"{[str(s) for s in stops]}\n{site.logs()}"

    acknowledged = [*ids, probe]
    found = L.records(app, acknowledged)
    ledger.read()
    lost = L.not_succeeded(found)
    assert not lost, f"acknowledged jobs lost: {L.describe(found, lost)}\n{site.logs()}"
    assert not L.thrown_away(ledger, found), L.thrown_away(ledger, found)
    duplicates = L.duplicates(ledger, acknowledged)
    assert duplicates <= len(mine), (
        f"{duplicates} duplicate attempts, over the {len(mine)} jobs the cut host ran")
    # fencing: the stored result is the one of the attempt that owns the lease (the rerun);
    # the cut host's late outcomes were refused
    for job_id in mine:
        record = found[job_id]
        assert record is not None
        owner = max(ledger.attempts(job_id), key=lambda a: a.attempt)
        assert owner.pid != victim.pid
        assert L.result_attempt(record) == (owner.attempt, owner.pid), (
            f"{job_id}: stored {record.result}, attempts {ledger.attempts(job_id)}")
        assert record.attempts == owner.attempt, record
    assert set(L.superseded(ledger, found)) <= set(mine)
    print(f"late outcomes of {len(late)} attempts refused; {duplicates} duplicates "
          f"(bound {len(mine)}); none lost of {len(acknowledged)}")
