"""Every read path tolerates what any write path accepts: the oddest values the bounds allow
(the horizon's delay, the deepest nesting, the longest names of odd characters, big numbers,
unicode, empty containers), written through every way in on both stores, then read through
every way out; and records written straight into the store, past the bounds, read too."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from clijobs import CLI
from conveyor import Conveyor
from conveyor.bounds import DEFAULT_MAX_DELAY, TOO_DEEP
from conveyor.dashboard.data import job_summary
from conveyor.ids import new_id
from conveyor.job import LATEST, JobRecord, JobState
from conveyor.testing import WorkerThread
from http_server import Server
from oddjobs import ODD_ARGS, ODD_KWARGS, ODD_NAME, ODD_QUEUE, ODD_VALUE, nested, register
from polling import wait_until


@pytest.fixture
def store(url: str) -> tuple[str, str]:
    """The store's URL and a namespace of this test's own (Redis is shared)."""
    return url, f"t{new_id().lower()}"


@pytest.fixture
def odd_app(store: tuple[str, str]) -> Iterator[Conveyor]:
    app = register(Conveyor(url=store[0], namespace=store[1], lease=5.0))
    yield app
    app.close()


@pytest.fixture
def served(store: tuple[str, str], tmp_path: Path) -> Iterator[Server]:
    url, namespace = store
    server = Server(tmp_path / "serve", "--no-worker", "--url", url, "--namespace", namespace,
                    app="oddjobs:app")
    server.root.mkdir()
    server.start()
    yield server
    assert server.stop() == 0, server.output()


def cli_of(store: tuple[str, str], tmp_path: Path) -> tuple[CLI, tuple[str, ...]]:
    """The CLI on the test's store, and the ``--namespace`` options to give it."""
    return CLI(store[0], tmp_path), ("--namespace", store[1])


def enqueue_everywhere(app: Conveyor, server: Server, cli: CLI,
                       ns: tuple[str, ...]) -> dict[str, str]:
    """The odd call stored through every enqueue path, at the horizon; ids by path."""
    keep = app.get_job(ODD_NAME)
    horizon = DEFAULT_MAX_DELAY
    ids = {
        "sync": keep.enqueue_with(ODD_ARGS, ODD_KWARGS, delay=horizon).id,
        "async": app.run_sync(keep.enqueue_with_async(ODD_ARGS, ODD_KWARGS,
                                                      delay=horizon)).id,
        "by name": app.enqueue_call(ODD_NAME, ODD_ARGS, ODD_KWARGS, queue=ODD_QUEUE,
                                    at=datetime.fromtimestamp(time.time() + horizon - 5,
                                                              UTC)).id,
    }
    bulk = keep.enqueue_many([ODD_ARGS, ODD_KWARGS], delay=horizon)
    ids["bulk positional"], ids["bulk keywords"] = bulk[0].id, bulk[1].id
    bulk = app.run_sync(keep.enqueue_many_async([ODD_ARGS], delay=horizon))
    ids["bulk async"] = bulk[0].id
    response = server.client.post(f"/jobs/{quote(ODD_NAME, safe='')}", json={
        "args": ODD_ARGS, "kwargs": ODD_KWARGS, "delay": horizon, "queue": ODD_QUEUE})
    assert response.status_code == 202, response.text
    ids["http"] = response.json()["id"]
    ids["cli"] = cli.ok("enqueue", ODD_NAME, "--args", json.dumps(ODD_ARGS), "--kwargs",
                        json.dumps(ODD_KWARGS), "--delay", str(horizon), "--queue",
                        ODD_QUEUE, "--app", "oddjobs:app", *ns).strip()
    # a schedule's tick, run by a worker: its job succeeds with the oddest result
    app.schedule("odd", keep, every=1, args=ODD_ARGS, kwargs=ODD_KWARGS, queue=ODD_QUEUE)
    worker = WorkerThread(app, queues=[ODD_QUEUE], max_workers=2).start()
    try:
        def ran() -> str | None:
            done = app.run_sync(app.broker.list_jobs(state=JobState.SUCCEEDED, limit=1))
            return done[0].id if done else None

        ids["schedule"] = wait_until(ran, timeout=30, what="a tick of the schedule to run")
    finally:
        worker.stop()
    return ids


def read_everywhere(app: Conveyor, server: Server, cli: CLI, ns: tuple[str, ...],
                    ids: dict[str, str], shown_by_cli: list[str]) -> dict[str, dict[str, Any]]:
    """Every read path over the jobs: each answer whole, none an error; the jobs by id as
    ``GET /jobs/ID`` shows them. ``conveyor status`` is asked about ``shown_by_cli`` (a
    process per job is slow; the listings hold every job)."""
    shown: dict[str, dict[str, Any]] = {}
    for path in ("/jobs", f"/jobs?queue={quote(ODD_QUEUE, safe='')}&limit=200",
                 f"/jobs?name={quote(ODD_NAME, safe='')}", "/jobs?state=scheduled",
                 "/queues", "/ui/api/jobs", "/ui/api/overview", "/ui/api/counts",
                 "/ui/jobs", "/", f"/ui/jobs?queue={quote(ODD_QUEUE, safe='')}"):
        response = server.client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    listed = {job["id"] for job in server.client.get("/jobs?limit=200").json()["jobs"]}
    assert set(ids.values()) <= listed
    for job_id in ids.values():
        for path in (f"/jobs/{job_id}", f"/ui/api/jobs/{job_id}", f"/ui/jobs/{job_id}"):
            response = server.client.get(path)
            assert response.status_code == 200, (path, response.text[:500])
        shown[job_id] = server.client.get(f"/jobs/{job_id}").json()
    # the CLI: tables (piped), JSON, one job's summary and JSON
    table = cli.ok("jobs", "--limit", "200", *ns)
    assert all(job_id in table for job_id in ids.values())
    assert {job["id"] for job in json.loads(cli.ok("jobs", "--limit", "200", "--json",
                                                   *ns))} >= set(ids.values())
    cli.ok("stats", *ns)
    for job_id in shown_by_cli:
        summary = cli.ok("status", job_id, *ns)
        assert job_id in summary
        assert json.loads(cli.ok("status", job_id, "--json", *ns))["id"] == job_id
    # Python: handles, the store's listing, the dashboard's rows
    for job_id in ids.values():
        record = app.handle(job_id).info()
        json.dumps(record.to_dict(), allow_nan=False)
    records = app.run_sync(app.broker.list_jobs(limit=1000))
    assert {r.id for r in records} >= set(ids.values())
    summaries = app.run_sync(app.broker.list_summaries(limit=200))
    assert {s.record.id for s in summaries} >= set(ids.values())
    for summary in summaries:
        json.dumps(job_summary(summary), allow_nan=False)
    return shown


def test_the_oddest_allowed_values_through_every_path_read_back_whole(
        odd_app: Conveyor, served: Server, store: tuple[str, str], tmp_path: Path) -> None:
    cli, ns = cli_of(store, tmp_path)
    ids = enqueue_everywhere(odd_app, served, cli, ns)
    shown = read_everywhere(odd_app, served, cli, ns, ids,
                            [ids["http"], ids["cli"], ids["schedule"], ids["by name"]])
    for path, job_id in ids.items():
        job = shown[job_id]
        assert job["name"] == ODD_NAME and job["queue"] == ODD_QUEUE, path
        if path == "bulk keywords":
            assert (job["args"], job["kwargs"]) == ([], ODD_KWARGS)
        elif path in ("bulk positional", "bulk async"):
            assert (job["args"], job["kwargs"]) == (ODD_ARGS, {})
        else:
            assert (job["args"], job["kwargs"]) == (ODD_ARGS, ODD_KWARGS), path
    assert shown[ids["schedule"]]["result"] == ODD_VALUE
    assert shown[ids["schedule"]]["state"] == "succeeded"
    a_year = datetime.fromisoformat(shown[ids["http"]]["run_at"]).timestamp() - time.time()
    assert DEFAULT_MAX_DELAY - 120 < a_year <= DEFAULT_MAX_DELAY
    # cancelling a job at the horizon answers its record, then every read still works
    for job_id in (ids["http"], ids["cli"]):
        response = served.client.delete(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "cancelled"
    read_everywhere(odd_app, served, cli, ns, ids, [ids["http"]])


def test_records_stored_past_the_bounds_do_not_break_any_read(
        odd_app: Conveyor, served: Server, store: tuple[str, str], tmp_path: Path) -> None:
    """As an older version (or a hand in the store) may have written them: a run time no
    datetime holds, arguments nested far past the bound, a NaN progress."""
    cli, ns = cli_of(store, tmp_path)
    now = time.time()
    far = JobRecord(new_id(), "legacy", "legacy", JobState.SCHEDULED, [1], {}, now, 1e300)
    deep = JobRecord(new_id(), "legacy", "legacy", JobState.SCHEDULED, [], {}, now, 2.6e11)
    deep_args = [nested(400, 1)]
    deep.payload = (json.dumps(deep_args), "{}")
    odd_app.run_sync(odd_app.broker.enqueue([far, deep], {}))
    ids = {"far": far.id, "deep": deep.id}
    shown = read_everywhere(odd_app, served, cli, ns, ids, list(ids.values()))
    assert shown[far.id]["run_at"] == LATEST
    assert shown[deep.id]["run_at"] == LATEST
    assert shown[deep.id]["args"] == TOO_DEEP
    summary = cli.ok("status", far.id, *ns)
    assert "run at" in summary
    for job_id in ids.values():
        response = served.client.delete(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        assert response.json()["run_at"] == LATEST
    read_everywhere(odd_app, served, cli, ns, ids, [far.id])


def test_text_that_is_not_utf8_in_the_store_does_not_break_any_read(
        odd_app: Conveyor, served: Server, store: tuple[str, str], tmp_path: Path) -> None:
    """Bytes no writer of Conveyor stores (each checks its text) but a hand in the store
    might: every read shows them escaped."""
    cli, ns = cli_of(store, tmp_path)
    url, namespace = store
    record = JobRecord(new_id(), "legacy", "legacy", JobState.SCHEDULED, [1], {}, time.time(),
                       time.time() + 3600)
    odd_app.run_sync(odd_app.broker.enqueue([record], {}))
    if url.startswith("redis"):
        import redis

        with redis.Redis.from_url(url) as raw:
            raw.hset(f"{{{namespace}}}:f:progress", record.id, b"0.5 raw \xff bytes")
            raw.hset(f"{{{namespace}}}:f:error", record.id, b"err \xfe")
    else:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:
            raw.execute(f"UPDATE {namespace}_jobs SET progress = 0.5, progress_message = ?, "
                        "error = ? WHERE id = ?", (b"raw \xff bytes", b"err \xfe", record.id))
    shown = read_everywhere(odd_app, served, cli, ns, {"raw": record.id}, [record.id])
    assert shown[record.id]["progress_message"] == "raw \\xff bytes"
    assert shown[record.id]["error"] == "err \\xfe"
    response = served.client.delete(f"/jobs/{record.id}")
    assert response.status_code == 200, response.text


def _hand_records(app: Conveyor, store: tuple[str, str]) -> dict[str, str]:
    """Jobs whose records a hand then left odd in the store, past anything a writer of
    Conveyor stores (text where a number or JSON belongs, a state no version knows, NaN,
    bytes that are not UTF-8), and a worker record alike; ids by what was done."""
    url, namespace = store
    now = time.time()
    ids: dict[str, str] = {}
    for what in ("args", "result", "state", "numbers", "created", "bytes"):
        record = JobRecord(new_id(), "legacy", "legacy", JobState.SCHEDULED, [1], {"k": 2},
                           now, now + 3600)
        app.run_sync(app.broker.enqueue([record], {}))
        ids[what] = record.id
    if url.startswith("redis"):
        import redis

        with redis.Redis.from_url(url) as raw:
            p = f"{{{namespace}}}"
            raw.hset(f"{p}:jobs", ids["args"], "not json")
            raw.hset(f"{p}:f:result", ids["result"], "NaN")
            raw.hset(f"{p}:f:state", ids["state"], "bogus")
            raw.hset(f"{p}:f:attempts", ids["numbers"], "x")
            raw.hset(f"{p}:f:priority", ids["numbers"], "hi 0")
            raw.hset(f"{p}:f:progress", ids["numbers"], "abc msg")
            spec = json.loads(raw.hget(f"{p}:jobs", ids["created"]) or "{}")
            spec["created_at"] = "abc"
            raw.hset(f"{p}:jobs", ids["created"], json.dumps(spec))
            raw.hset(f"{p}:jobs", ids["bytes"], b'{"id":"\xff"}')
            raw.hset(f"{p}:winfo", "odd-worker", "junk")
            raw.zadd(f"{p}:workers", {"odd-worker": time.time() + 3600})
            minute = int(now // 60 * 60)
            raw.zadd(f"{p}:stats", {str(minute): minute})
            raw.hset(f"{p}:stats:{minute}", mapping={"odd\x00succeeded": "x",
                                                    "odd\x00wait_total": "nan"})
    else:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:
            t = f"{namespace}_jobs"
            raw.execute(f"UPDATE {t} SET args='not json', kwargs='{{' WHERE id=?", (ids["args"],))
            raw.execute(f"UPDATE {t} SET result='NaN' WHERE id=?", (ids["result"],))
            raw.execute(f"UPDATE {t} SET state='bogus' WHERE id=?", (ids["state"],))
            raw.execute(f"UPDATE {t} SET attempts='x', priority='hi', progress='abc' "
                        "WHERE id=?", (ids["numbers"],))
            raw.execute(f"UPDATE {t} SET created_at='abc' WHERE id=?", (ids["created"],))
            raw.execute(f"UPDATE {t} SET name=?, args=? WHERE id=?",
                        (b"a\xff", b"[\xff]", ids["bytes"]))
            raw.execute(f"INSERT INTO {namespace}_workers VALUES ('odd-worker','h',1,"
                        "'notjson',1,1,1,0,0,0,1,1,1e18)")
            raw.execute(f"INSERT INTO {namespace}_stats VALUES (?,'odd',-5,'x',0,0,0,'y')",
                        (int(now // 60 * 60),))
    return ids


def test_records_a_hand_left_odd_do_not_break_any_read(
        odd_app: Conveyor, served: Server, store: tuple[str, str], tmp_path: Path) -> None:
    """Every read path over records no writer of Conveyor stores: each field reads as the
    nearest value of its type, what is not JSON as its text, a state no version knows as
    its text."""
    cli, ns = cli_of(store, tmp_path)
    ids = _hand_records(odd_app, store)
    shown = read_everywhere(odd_app, served, cli, ns, ids, [ids["args"], ids["state"]])
    for path in ("/ui/api/workers", "/ui/api/overview"):
        response = served.client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
    cli.ok("top", "--once", *ns)
    assert shown[ids["state"]]["state"] == "bogus"
    assert shown[ids["result"]]["result"] == "NaN"
    assert shown[ids["numbers"]]["attempts"] == 0
    if store[0].startswith("redis"):
        assert shown[ids["args"]]["args"] == "not json"
    else:
        assert (shown[ids["args"]]["args"], shown[ids["args"]]["kwargs"]) == ("not json", "{")
        assert shown[ids["bytes"]]["name"] == "a\\xff"


def test_a_worker_ends_a_job_whose_stored_arguments_are_not_json_and_runs_the_rest(
        odd_app: Conveyor, store: tuple[str, str]) -> None:
    """Queued jobs a hand left odd (arguments that are not JSON; a creation time that is
    text; nothing readable; a JSON cut short) and a plain one: the worker runs on, the
    plain job and the one with an odd time succeed, those whose arguments cannot be passed
    end dead saying why."""
    url, namespace = store
    keep = odd_app.get_job(ODD_NAME)
    plain, odd_time, odd_args, junk, cut = (keep.enqueue_with([1], {}) for _ in range(5))
    if url.startswith("redis"):
        import redis

        with redis.Redis.from_url(url) as raw:
            p = f"{{{namespace}}}"
            for handle, change in ((odd_time, {"created_at": "abc"}), (odd_args, {"args": {}})):
                spec = json.loads(raw.hget(f"{p}:jobs", handle.id) or "{}")
                spec.update(change)
                raw.hset(f"{p}:jobs", handle.id, json.dumps(spec))
            raw.hset(f"{p}:jobs", junk.id, "junk")  # not even its name is left
            spec = (raw.hget(f"{p}:jobs", cut.id) or b"").decode()
            raw.hset(f"{p}:jobs", cut.id, spec[:spec.index('"args"') + 3])  # cut short
    else:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:
            t = f"{namespace}_jobs"
            raw.execute(f"UPDATE {t} SET created_at='abc' WHERE id=?", (odd_time.id,))
            raw.execute(f"UPDATE {t} SET args='not json' WHERE id=?", (odd_args.id,))
            raw.execute(f"UPDATE {t} SET name='', args=?, kwargs='' WHERE id=?",
                        (b"\xff", junk.id))
            raw.execute(f"UPDATE {t} SET args='[1' WHERE id=?", (cut.id,))
    worker = WorkerThread(odd_app, queues=[keep.options.queue], max_workers=2).start()
    try:
        infos = [wait_until(lambda h=h: (r := h.info()).is_final and r, 30, "the job to end")
                 for h in (plain, odd_time, odd_args, junk, cut)]
    finally:
        worker.stop()
    assert [i.state for i in infos] == [JobState.SUCCEEDED, JobState.SUCCEEDED,
                                         JobState.DEAD, JobState.DEAD, JobState.DEAD], infos
    for info in infos[2:]:
        assert "the stored arguments are not a JSON array and object" in (info.error or "")
        assert info.attempts == 1


def test_a_lapsed_lease_of_a_job_whose_counts_were_left_odd_is_recovered(
        odd_app: Conveyor, store: tuple[str, str]) -> None:
    """A running job whose lease lapsed (its worker gone), its attempts and recoveries left
    as text by hand: the recovery pass takes it (it failed on every pass), as it takes the
    plain one beside it."""
    url, namespace = store
    broker = odd_app.broker
    keep = odd_app.get_job(ODD_NAME)
    handles = [keep.enqueue_with([1], {}) for _ in range(2)]
    claimed = odd_app.run_sync(broker.claim("gone", [keep.options.queue], 2, 0.2))
    assert {c.id for c in claimed} == {h.id for h in handles}
    odd = handles[0].id
    if url.startswith("redis"):
        import redis

        with redis.Redis.from_url(url) as raw:
            raw.hset(f"{{{namespace}}}:f:attempts", odd, "x")
            raw.hset(f"{{{namespace}}}:f:recoveries", odd, "1.5")
    else:
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:
            raw.execute(f"UPDATE {namespace}_jobs SET attempts='x', recoveries='y' WHERE id=?",
                        (odd,))
    time.sleep(0.4)  # the leases lapse
    recovery = odd_app.run_sync(broker.recover_expired(3))
    assert {job_id for job_id, _, _ in recovery.jobs} == {h.id for h in handles}, recovery
    assert [h.info().state for h in handles] == [JobState.QUEUED, JobState.QUEUED]


def test_a_queue_name_or_a_run_time_a_hand_left_odd_breaks_no_read_and_the_jobs_run(
        odd_app: Conveyor, served: Server, store: tuple[str, str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """SQLite, where a hand's UPDATE can store any type in any column: a queue name as
    bytes that are not UTF-8 (the counts of queues read it as escaped text), and run times
    that are no number (a date as text, bytes), which sort after every number and were
    never due: on queued jobs of two queues claimed together, on a laned job, on a
    scheduled one and on a job of a queue claimed alone, each runs, logged. (Redis keeps
    run times as sorted-set scores, always numbers.)"""
    url, namespace = store
    if url.startswith("redis"):
        pytest.skip("Redis keeps run times as scores, which are numbers; its queue names "
                    "are set members, read as text (the other tests cover them)")
    import sqlite3

    def tenanted(tenant: str) -> str:
        return tenant

    laned = odd_app.job(name="tenanted", queue=ODD_QUEUE, group_by="tenant",
                        group_concurrency=1)(tenanted)
    cli, ns = cli_of(store, tmp_path)
    keep = odd_app.get_job(ODD_NAME)
    odd_queue, queued_text, plain = (keep.enqueue_with([1], {}) for _ in range(3))
    queued_bytes, second_plain = (keep.enqueue_with([1], {}, queue="second") for _ in range(2))
    alone = keep.enqueue_with([1], {}, queue="alone")
    # more than a claim takes, in both queues: text that reads as no number, and bytes
    many_text = [keep.enqueue_with([1], {}) for _ in range(3)]
    many_bytes = [keep.enqueue_with([1], {}, queue="second") for _ in range(3)]
    laned_text = laned.enqueue("acme")
    scheduled = keep.enqueue_with([1], {}, delay=3600)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:
        t = f"{namespace}_jobs"
        raw.execute(f"UPDATE {t} SET queue=? WHERE id=?", (b"q\xff", odd_queue.id))
        for handle in (queued_text, laned_text, alone):
            raw.execute(f"UPDATE {t} SET run_at='2026-11-28 10:00' WHERE id=?", (handle.id,))
        raw.execute(f"UPDATE {t} SET run_at=? WHERE id=?", (b"\x01", queued_bytes.id))
        for handle in many_text:
            raw.execute(f"UPDATE {t} SET run_at='soon' WHERE id=?", (handle.id,))
        for handle in many_bytes:
            raw.execute(f"UPDATE {t} SET run_at=? WHERE id=?", (b"\x02", handle.id))
        raw.execute(f"UPDATE {t} SET run_at='tomorrow' WHERE id=?", (scheduled.id,))
    ids = {"queue": odd_queue.id, "text": queued_text.id, "bytes": queued_bytes.id,
           "scheduled": scheduled.id, "laned": laned_text.id}
    shown = read_everywhere(odd_app, served, cli, ns, ids, [odd_queue.id])
    assert shown[odd_queue.id]["queue"] == "q\\xff"
    queues = served.client.get("/queues").json()["queues"]
    assert "q\\xff" in queues, queues
    metrics = served.client.get("/metrics")
    assert metrics.status_code == 200 and 'queue="q\\\\xff"' in metrics.text, metrics.text[:300]
    assert "q\\xff" in cli.ok("stats", *ns)
    assert odd_app.run_sync(odd_app.broker.ready_count([ODD_QUEUE], 10)) == 6
    with caplog.at_level("WARNING", logger="conveyor.store"):
        for queues_of_worker, handles in (
                ([ODD_QUEUE, "second"], (queued_text, plain, queued_bytes, second_plain,
                                         laned_text, scheduled, *many_text, *many_bytes)),
                (["alone"], (alone,))):
            worker = WorkerThread(odd_app, queues=queues_of_worker, max_workers=2).start()
            try:
                infos = [wait_until(lambda h=h: (r := h.info()).is_final and r, 30,
                                    "the job to end") for h in handles]
            finally:
                worker.stop()
            assert [i.state for i in infos] == [JobState.SUCCEEDED] * len(handles), infos
    warned = {job_id for job_id in ids.values() if any(
        job_id in r.getMessage() and "no number" in r.getMessage() for r in caplog.records)}
    assert warned == {queued_text.id, queued_bytes.id, scheduled.id, laned_text.id}, caplog.text
    assert all(any(h.id in r.getMessage() for r in caplog.records)
               for h in (*many_text, *many_bytes)), caplog.text
    assert any(alone.id in r.getMessage() for r in caplog.records), caplog.text


def test_a_redis_key_a_hand_left_of_another_type(
        odd_app: Conveyor, served: Server, store: tuple[str, str], tmp_path: Path) -> None:
    """Redis: a job field's hash replaced by a string reads as that field missing, on every
    read path; the set of queues replaced (the catalogue every listing starts from) gives a
    clear error, HTTP 500 with a JSON message, one CLI line and a non-zero exit, and
    nothing is lost: the key put back, every job reads again."""
    url, namespace = store
    if not url.startswith("redis"):
        pytest.skip("keys of a type are Redis's; SQLite's columns are covered above")
    import redis

    cli, ns = cli_of(store, tmp_path)
    keep = odd_app.get_job(ODD_NAME)
    handle = keep.enqueue_with([1], {})
    p = f"{{{namespace}}}"
    with redis.Redis.from_url(url) as raw:
        for field in ("progress", "state", "attempts"):
            raw.delete(f"{p}:f:{field}")
            raw.set(f"{p}:f:{field}", "not a hash")
        raw.delete(f"{p}:expiry")
        raw.set(f"{p}:expiry", "not a sorted set")
        shown = read_everywhere(odd_app, served, cli, ns, {"job": handle.id}, [handle.id])
        assert shown[handle.id]["name"] == ODD_NAME
        members = raw.smembers(f"{p}:queues")
        raw.delete(f"{p}:queues")
        raw.set(f"{p}:queues", "not a set")
        for path in ("/jobs", "/queues"):
            response = served.client.get(path)
            assert response.status_code == 500, (path, response.text)
            assert "changed outside Conveyor" in response.json()["error"], response.text
        line = cli.fail("jobs", *ns, code=1)
        assert "changed outside Conveyor" in line and len(line.strip().splitlines()) == 1, line
        raw.delete(f"{p}:queues")
        raw.sadd(f"{p}:queues", *members)
    listed = {job["id"] for job in served.client.get("/jobs").json()["jobs"]}
    assert handle.id in listed


def test_a_lane_field_a_hand_left_odd_fails_no_script(
        odd_app: Conveyor, store: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """Redis: jobs whose lane field a hand left odd (not "LEN:NAME" then a group) read as
    unlaned in every script: a worker claims, runs and records them with the plain ones in
    one batch (the script that records outcomes failed part way on them); a change of
    priority of a queued one works; a laned job spoilt so and then cancelled is not run
    (a claim still meets it in its lane)."""
    url, namespace = store
    if not url.startswith("redis"):
        pytest.skip("lane fields are Redis's")
    import redis

    def tenanted(tenant: str) -> str:
        return tenant

    laned = odd_app.job(name="tenanted", queue=ODD_QUEUE, group_by="tenant",
                        group_concurrency=1)(tenanted)
    keep = odd_app.get_job(ODD_NAME)
    handles = [keep.enqueue_with([n], {}) for n in range(4)]
    waiting = keep.enqueue_with([9], {}, delay=3600)
    spoilt, tenant_b = laned.enqueue("acme"), laned.enqueue("bravo")
    with redis.Redis.from_url(url) as raw:
        for handle, odd in zip((handles[1], handles[2], waiting, handles[3], spoilt),
                               ("junk", "99:x", "7:", "", "5:ab"), strict=True):
            raw.hset(f"{{{namespace}}}:f:lane", handle.id, odd)
    assert odd_app.run_sync(odd_app.broker.set_priority(handles[3].id, 5)) is not None
    assert odd_app.run_sync(odd_app.broker.set_priority(waiting.id, 5)) is not None
    assert spoilt.cancel().state == JobState.CANCELLED
    with caplog.at_level("WARNING", logger="conveyor"):
        worker = WorkerThread(odd_app, queues=[ODD_QUEUE], max_workers=4).start()
        try:
            infos = [wait_until(lambda h=h: (r := h.info()).is_final and r, 30, "the job to end")
                     for h in (*handles, tenant_b)]
        finally:
            worker.stop()
    assert [i.state for i in infos] == [JobState.SUCCEEDED] * 5, infos
    assert [i.attempts for i in infos] == [1] * 5, infos
    assert not [r for r in caplog.records if "could not record" in r.getMessage()], caplog.text
    done = spoilt.info()
    assert (done.state, done.attempts) == (JobState.CANCELLED, 0), done
    assert waiting.cancel().state == JobState.CANCELLED
