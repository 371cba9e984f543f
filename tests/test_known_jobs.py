"""Known jobs end to end: workers publish their jobs, and an enqueue by name of a job the
producer does not register is checked against them (Python, CLI, HTTP), on SQLite and Redis.
Odd records in the store are skipped by every reader."""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import WorkerThread, cli_env
from conveyor import Conveyor, JobContext, Upload
from conveyor.errors import InvalidArguments, UnknownJob
from conveyor.ids import new_id
from conveyor.known import KnownJob, KnownParameter, read_known
from conveyor.worker import maintenance
from http_server import Server
from polling import wait_until


def register(app: Conveyor) -> Conveyor:
    """The jobs of the "worker side" app."""

    @app.job(queue="mail")
    async def send(to: str, subject: str = "", *, cc: list[str] | None = None) -> str:
        return f"{to}:{subject}:{cc}"

    @app.job
    async def add(a: int, b: int, ctx: JobContext) -> int:
        return a + b

    @app.job(executor="thread")
    def measure(upload: Upload, label: str = "") -> int:
        return 0

    return app


@pytest.fixture
def namespace() -> str:
    return f"k{new_id().lower()}"  # a fresh namespace: nothing published there yet


@pytest.fixture
def apps(url: str, namespace: str) -> Iterator[Callable[..., Conveyor]]:
    """``apps(**options)`` makes an app on the test's store (closed at the end)."""
    made: list[Conveyor] = []

    def make(**options: Any) -> Conveyor:
        app = Conveyor(url=url, namespace=namespace, lease=2.0, **options)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


@pytest.fixture
def producer(apps: Callable[..., Conveyor]) -> Conveyor:
    """An app that registers no job: it enqueues by name only."""
    return apps()


def published(apps: Callable[..., Conveyor],
              start_worker: Callable[..., WorkerThread]) -> Conveyor:
    """Start a worker of the registered jobs and wait until it published them."""
    worker_app = register(apps())
    start_worker(worker_app, queues=["default", "mail"])
    wait_until(lambda: len(worker_app.known_jobs()) == 3, what="the worker to publish")
    return worker_app


def stored(app: Conveyor) -> list[str]:
    return [record.name for record in app.run_sync(app.broker.list_jobs())]


# -- describing jobs ----------------------------------------------------------------------------
def test_a_job_is_described_without_its_context_and_with_its_upload(app: Conveyor) -> None:
    register(app)
    add, measure, send = (KnownJob.of(app.registry[n]) for n in ("add", "measure", "send"))
    assert [p.name for p in add.parameters] == ["a", "b"]
    assert (measure.upload_parameter, measure.executor) == ("upload", "thread")
    assert send.queue == "mail"
    assert send.signature_text == "send(to, subject=…, *, cc=…)"
    data = json.loads(json.dumps(send.to_dict()))
    assert KnownJob.from_dict(data) == send


def test_the_published_signature_checks_calls() -> None:
    job = KnownJob("f", parameters=(
        KnownParameter("a", "POSITIONAL_ONLY"), KnownParameter("b", default=True),
        KnownParameter("rest", "VAR_POSITIONAL"), KnownParameter("k", "KEYWORD_ONLY"),
        KnownParameter("more", "VAR_KEYWORD")))
    assert job.signature_text == "f(a, /, b=…, *rest, k, **more)"
    assert job.signature == inspect.Signature(job.signature.parameters.values())
    job.check([1, 2, 3, 4], {"k": 1, "z": 2})
    for args, kwargs, message in (([], {"k": 1}, "missing a required argument: 'a'"),
                                  ([1], {}, "missing a required argument: 'k'"),
                                  ([], {"a": 1, "k": 1}, "'a' parameter is positional only")):
        with pytest.raises(InvalidArguments, match=message) as caught:
            job.check(args, kwargs)
        assert "published signature: f(a, /, b=…, *rest, k, **more)" in str(caught.value)


@pytest.mark.parametrize("raw", [
    "not json", "[]", '"text"', "null", '{"queue": "q"}', '{"name": ""}', '{"name": 3}',
    '{"name": "x", "parameters": {}}', '{"name": "x", "parameters": [{"name": "a b"}]}',
    '{"name": "x", "parameters": [{"name": "a", "kind": "SOMETIMES"}]}',
    '{"name": "x", "parameters": [{"name": "a", "default": "yes"}]}',
    '{"name": "x", "parameters": [{"name": "a", "default": true}, {"name": "b"}]}',
    '{"name": "x", "parameters": [{"name": "a"}, {"name": "a"}]}',
    '{"name": "x", "seen_at": "yesterday"}', '{"name": "x", "seen_at": 1e300}',
    '{"name": "x", "seen_at": -1}', '{"name": "x", "worker_id": 7}',
    b"\xff\xfe", "x" * 10,
])
def test_odd_records_read_as_nothing(raw: str | bytes) -> None:
    assert read_known(raw) is None


# -- the app ------------------------------------------------------------------------------------
def test_nothing_published_refuses_a_name_the_app_does_not_register(producer: Conveyor) -> None:
    with pytest.raises(UnknownJob) as caught:
        producer.enqueue("send", "ann")
    message = str(caught.value)
    assert "no job named 'send'" in message
    assert "no worker has published its jobs to this store yet" in message
    assert "start a worker" in message and "--app" in message and "force" in message
    with pytest.raises(UnknownJob):
        producer.enqueue_many("send", [("ann",)])
    assert stored(producer) == []


def test_force_stores_any_name(producer: Conveyor) -> None:
    one = producer.enqueue_call("elsewhere", [1], {"x": None}, force=True)
    many = producer.enqueue_many("elsewhere", [(1,), {"y": 2}], force=True)
    later = producer.run_sync(producer.enqueue_call_async("elsewhere", [], {}, force=True))
    more = producer.run_sync(producer.enqueue_many_async("elsewhere", [()], force=True))
    assert len({one.id, later.id, *(h.id for h in many + more)}) == 5
    assert stored(producer) == ["elsewhere"] * 5
    assert one.info().queue == "default"


def test_a_name_the_app_registers_needs_nothing_published(apps: Callable[..., Conveyor]) -> None:
    app = register(apps())
    handle = app.enqueue("add", 1, 2)
    assert handle.info().name == "add"
    with pytest.raises(InvalidArguments):
        app.enqueue("add", 1)


def test_published_jobs_are_accepted_checked_and_go_to_their_queue(
        apps: Callable[..., Conveyor], producer: Conveyor,
        start_worker: Callable[..., WorkerThread]) -> None:
    published(apps, start_worker)
    handle = producer.enqueue("send", "ann", subject="hi")
    assert handle.info().queue == "mail"
    assert handle.result(timeout=20) == "ann:hi:None"
    assert producer.enqueue_call("send", ["bo"], {}, queue="urgent").info().queue == "urgent"
    assert producer.enqueue("add", 1, 2).result(timeout=20) == 3  # ctx is not an argument
    bulk = producer.enqueue_many("send", [("a",), {"to": "b", "cc": ["c"]}])
    assert [h.info().queue for h in bulk] == ["mail", "mail"]
    with pytest.raises(InvalidArguments, match="no parameter named 'bcc'") as caught:
        producer.enqueue("send", "ann", bcc=["x"])
    assert "send(to, subject=…, *, cc=…)" in str(caught.value)
    with pytest.raises(InvalidArguments, match="missing a required argument: 'b'"):
        producer.run_sync(producer.enqueue_call_async("add", [1], {}))
    with pytest.raises(InvalidArguments):  # all or none
        producer.enqueue_many("send", [("ok",), ("too", "many", "args")])
    before = len(stored(producer))
    with pytest.raises(UnknownJob) as unknown:
        producer.enqueue("sned", "ann")
    assert "known jobs: add, measure, send" in str(unknown.value)
    assert "in the last 7 days" in str(unknown.value)
    assert len(stored(producer)) == before
    # forcing skips the argument check too
    producer.enqueue_call("send", [], {"bcc": 1}, force=True)
    assert len(stored(producer)) == before + 1


def test_a_job_published_after_the_last_read_is_found_at_once(
        apps: Callable[..., Conveyor], producer: Conveyor,
        start_worker: Callable[..., WorkerThread]) -> None:
    published(apps, start_worker)
    producer.enqueue("send", "ann")  # reads and caches the known jobs

    late_app = apps()

    @late_app.job(queue="late")
    async def late(x: int) -> int:
        return x

    start_worker(late_app, queues=["late"])
    wait_until(lambda: "late" in {j.name for j in late_app.known_jobs()}, what="late published")
    assert producer.enqueue("late", 5).result(timeout=20) == 5


def test_what_one_store_published_is_not_taken_for_another(
        apps: Callable[..., Conveyor], producer: Conveyor) -> None:
    worker_side = register(apps())
    jobs = [KnownJob.of(fn) for fn in worker_side.registry.values()]
    worker_side.run_sync(worker_side.broker.publish_jobs("w1", jobs))
    producer.enqueue("send", "ann")  # reads and caches the known jobs of this store
    # a fresh store, where no worker published
    with producer.testing(eager=False), pytest.raises(UnknownJob, match="no worker has"):
        producer.enqueue("send", "bo")
    assert producer.enqueue("send", "cy").info().name == "send"


def test_a_job_not_published_within_the_retention_is_refused(
        apps: Callable[..., Conveyor]) -> None:
    worker_side = register(apps())
    jobs = [KnownJob.of(fn) for fn in worker_side.registry.values()]
    worker_side.run_sync(worker_side.broker.publish_jobs("w-old", jobs))
    short = apps(retention=0.3)
    assert {j.name for j in short.known_jobs()} == {"add", "measure", "send"}
    wait_until(lambda: not short.known_jobs(), what="the entries to age", timeout=10)
    with pytest.raises(UnknownJob, match="no worker has published"):
        short.enqueue("send", "ann")
    # the long-retention app still sees them
    assert len(worker_side.known_jobs()) == 3


def test_workers_publish_again_periodically(
        apps: Callable[..., Conveyor], start_worker: Callable[..., WorkerThread],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "KNOWN_INTERVAL", 0.2)
    worker_app = register(apps())
    thread = start_worker(worker_app)
    first = wait_until(lambda: worker_app.known_jobs(), what="the first publication")
    assert {j.worker_id for j in first} == {thread.worker.id}
    seen = first[0].seen_at
    wait_until(lambda: worker_app.known_jobs()[0].seen_at > seen, what="a later publication")


# -- odd records --------------------------------------------------------------------------------
ODD = [b"not json", b"[1, 2]", b'{"name": 7}', b"\xff\xfe\x00",
       b'{"name": "bad", "parameters": [{"name": "a", "kind": "NEVER"}]}']


def plant(url: str, namespace: str, good: KnownJob) -> None:
    """Store odd records next to a good one, as a buggy or future writer might."""
    good_json = json.dumps({**good.to_dict(), "seen_at": None})
    if url.startswith("redis"):
        client = redis.Redis.from_url(url)
        key = f"{{{namespace}}}:known"
        client.hset(key, mapping={f"odd{i}".encode(): raw for i, raw in enumerate(ODD)})
        done = json.loads(good_json)
        done["seen_at"] = float(client.time()[0])
        client.hset(key, good.name, json.dumps(done))
        client.close()
        return
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        table = f"{namespace}_known"
        for i, raw in enumerate(ODD):
            conn.execute(f"INSERT INTO {table} VALUES (?, ?, strftime('%s','now'))",
                         (f"odd{i}", raw))
        conn.execute(f"INSERT INTO {table} VALUES ('texttime', ?, 'soon')",
                     (json.dumps({"name": "texttime"}),))
        conn.execute(f"INSERT INTO {table} VALUES (?, ?, strftime('%s','now'))",
                     (good.name, good_json))
    conn.close()


def test_odd_stored_records_are_skipped_by_every_reader(
        apps: Callable[..., Conveyor], producer: Conveyor, url: str, namespace: str,
        tmp_path: Path) -> None:
    producer.known_jobs()  # opens the store (creates the SQLite table)
    good = KnownJob("good", parameters=(KnownParameter("x"),))
    plant(url, namespace, good)
    assert [j.name for j in producer.known_jobs()] == ["good"]
    assert producer.enqueue("good", 1).info().name == "good"
    with pytest.raises(UnknownJob, match=r"\(known jobs: good\)"):
        producer.enqueue("odd0")
    out = run_cli("jobs-known", "--json", "--url", url, "--namespace", namespace, cwd=tmp_path)
    assert [j["name"] for j in json.loads(out.stdout)] == ["good"]


# -- the CLI ------------------------------------------------------------------------------------
def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *argv], capture_output=True,
                          text=True, cwd=cwd, env=cli_env(), timeout=60, check=False)


def test_cli_enqueue_and_jobs_known(apps: Callable[..., Conveyor], producer: Conveyor,
                                    start_worker: Callable[..., WorkerThread], url: str,
                                    namespace: str, tmp_path: Path) -> None:
    store = ("--url", url, "--namespace", namespace)
    # nothing published yet: refused in one line, the hint included; empty listing
    refused = run_cli("enqueue", "send", "--args", '["ann"]', *store, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "no worker has published its jobs to this store yet" in refused.stderr
    if url.startswith("sqlite:"):  # a refused enqueue made no store
        assert "no SQLite database at" in refused.stderr
        assert not list(Path(url.removeprefix("sqlite:///")).parent.glob("*.db"))
    producer.known_jobs()  # the store made, as a first worker would
    listing = run_cli("jobs-known", *store, cwd=tmp_path)
    assert listing.returncode == 0 and listing.stdout == ""
    assert "no worker has published" in listing.stderr
    assert json.loads(run_cli("jobs-known", "--json", *store, cwd=tmp_path).stdout) == []

    published(apps, start_worker)
    done = run_cli("enqueue", "send", "--args", '["ann"]', "--kwargs", '{"cc": ["x"]}',
                   "--json", *store, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queue"] == "mail"
    bad = run_cli("enqueue", "send", "--kwargs", '{"bcc": 1}', *store, cwd=tmp_path)
    assert bad.returncode == 2 and "no parameter named 'bcc'" in bad.stderr
    missing = run_cli("enqueue", "send", "--kwargs", '{"cc": []}', *store, cwd=tmp_path)
    assert missing.returncode == 2 and "missing a required argument: 'to'" in missing.stderr
    typo = run_cli("enqueue", "sned", *store, cwd=tmp_path)
    assert typo.returncode == 2 and "known jobs: add, measure, send" in typo.stderr
    forced = run_cli("enqueue", "sned", "--force", *store, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert sorted(stored(producer)) == ["send", "sned"]

    known = json.loads(run_cli("jobs-known", "--json", *store, cwd=tmp_path).stdout)
    assert [j["name"] for j in known] == ["add", "measure", "send"]
    send = known[2]
    assert send["queue"] == "mail" and send["signature"] == "send(to, subject=…, *, cc=…)"
    assert send["seen_at"].endswith("Z") and send["worker_id"]
    assert [p["name"] for p in known[0]["parameters"]] == ["a", "b"]
    assert known[1]["parameters"][0] == {"name": "upload", "kind": "POSITIONAL_OR_KEYWORD",
                                         "default": False, "upload": True}
    # a pipe gets a header, then one tab-separated line per job
    lines = run_cli("jobs-known", *store, cwd=tmp_path).stdout.splitlines()
    assert [line.split("\t")[:3] for line in lines] == [
        ["name", "queue", "signature"], ["add", "default", "add(a, b)"],
        ["measure", "default", "measure(upload, label=…)"],
        ["send", "mail", "send(to, subject=…, *, cc=…)"]]


# -- HTTP: conveyor serve without an app --------------------------------------------------------
@pytest.fixture
def bare_server(tmp_path: Path) -> Iterator[Server]:
    """``conveyor serve`` with no APP (only the built-in jobs) on a SQLite store."""
    srv = Server(tmp_path, app=None).start()
    yield srv
    srv.stop()


def test_serve_without_an_app_takes_published_jobs(
        bare_server: Server, start_worker: Callable[..., WorkerThread]) -> None:
    client = bare_server.client
    before = client.post("/jobs/send", json={"args": ["ann"]})
    assert before.status_code == 404
    assert "no job named 'send'" in before.json()["error"]

    worker_app = register(Conveyor(url=f"sqlite:///{bare_server.db}", lease=2.0))
    try:
        start_worker(worker_app, queues=["default", "mail"])
        wait_until(lambda: "send" in {j["name"] for j in client.get("/jobs-known").json()
                                      ["jobs"]}, what="the worker's jobs to be listed")
        accepted = client.post("/jobs/send", json={"args": ["ann"], "kwargs": {"cc": ["c"]}})
        assert accepted.status_code == 202, accepted.text
        job = bare_server.wait_job(accepted.json()["id"])
        assert (job["state"], job["queue"], job["result"]) == ("succeeded", "mail",
                                                               "ann::['c']")
        bad = client.post("/jobs/send", json={"kwargs": {"bcc": 1}})
        assert bad.status_code == 400 and "published signature" in bad.json()["error"]
        typo = client.post("/jobs/sned", json={})
        assert typo.status_code == 404
        assert "known jobs:" in typo.json()["error"] and "send" in typo.json()["error"]
        known = client.get("/jobs-known").json()["jobs"]
        names = [j["name"] for j in known]
        assert {"add", "measure", "send"} <= set(names) and names == sorted(names)
        # the server's own worker publishes the built-in jobs too
        assert "conveyor.push" in names
        doc = client.get("/openapi.json").json()
        assert "get" in doc["paths"]["/jobs-known"]
    finally:
        worker_app.close()


def test_http_odd_records_do_not_break_the_listing(bare_server: Server) -> None:
    wait_until(lambda: bare_server.client.get("/jobs-known").json()["jobs"],
               what="the server's own worker to publish")
    plant(f"sqlite:///{bare_server.db}", "conveyor", KnownJob("good"))
    response = bare_server.client.get("/jobs-known")
    assert response.status_code == 200
    assert "good" in [j["name"] for j in response.json()["jobs"]]
    assert not any(j["name"].startswith("odd") for j in response.json()["jobs"])


def test_async_enqueue_checks_too(producer: Conveyor) -> None:
    async def main() -> None:
        with pytest.raises(UnknownJob):
            await producer.enqueue_async("nowhere")
        with pytest.raises(UnknownJob):
            await producer.enqueue_many_async("nowhere", [()])

    producer.run_sync(main())
    assert stored(producer) == []
    assert asyncio.iscoroutinefunction(producer.known_jobs_async)
