"""Prometheus metrics: counters match the jobs run, histograms, queue gauges, HTTP, worker port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clijobs import CLI, stop
from conveyor import Conveyor
from conveyor.metrics import Metrics
from http_server import Server, free_port
from polling import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by sample name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, sample: str, /, **labels: str) -> float | None:
    return samples.get((sample, frozenset(labels.items())))


def job(samples: Samples, metric: str, name: str, queue: str = "default") -> float | None:
    return value(samples, metric, name=name, queue=queue)


def test_worker_counts_what_it_runs(app: Conveyor, start_worker: Callable[..., Any]) -> None:
    @app.job
    async def ok(n: int) -> int:
        return n

    @app.job(retries=1, backoff=0)
    async def bad() -> None:
        raise ValueError("nope")

    metrics = Metrics(queue_refresh=0.2)
    app.metrics = metrics
    ok_ids = [app.enqueue("ok", i).id for i in range(5)]
    bad_ids = [h.id for h in app.enqueue_many("bad", [(), ()])]
    thread = start_worker(app, max_workers=4, metrics=metrics)

    def finished() -> bool:
        return all(app.handle(i).info().is_final for i in ok_ids + bad_ids)

    wait_until(finished, timeout=30, what="all jobs to end")
    counts = app.run_sync(app.broker.counts())

    def settled() -> Samples | None:  # outcomes are recorded before they are written
        s = parse(metrics.render().decode())
        gauges = {(q, st): value(s, "conveyor_queue_jobs", queue=q, state=st)
                  for q, states in counts.items() for st in states}
        want = {(q, st): float(n) for q, states in counts.items() for st, n in states.items()}
        return s if gauges == want else None

    s = wait_until(settled, timeout=10, what="the queue gauge to catch up")
    assert counts["default"]["succeeded"] == 5 and counts["default"]["dead"] == 2

    assert job(s, "conveyor_jobs_enqueued_total", "ok") == 5
    assert job(s, "conveyor_jobs_enqueued_total", "bad") == 2
    # ok: 5 attempts, all succeed; bad: 2 jobs x (1 try + 1 retry), all fail, both die
    assert job(s, "conveyor_jobs_started_total", "ok") == 5
    assert job(s, "conveyor_jobs_started_total", "bad") == 4
    assert job(s, "conveyor_jobs_succeeded_total", "ok") == 5
    assert job(s, "conveyor_jobs_succeeded_total", "bad") == 0
    assert job(s, "conveyor_jobs_failed_total", "bad") == 4
    assert job(s, "conveyor_jobs_retried_total", "bad") == 2
    assert job(s, "conveyor_jobs_dead_total", "bad") == 2
    assert job(s, "conveyor_jobs_failed_total", "ok") == 0
    assert job(s, "conveyor_jobs_cancelled_total", "ok") == 0
    # one duration per attempt; one start latency per job (its first attempt)
    assert job(s, "conveyor_job_duration_seconds_count", "ok") == 5
    assert job(s, "conveyor_job_duration_seconds_count", "bad") == 4
    assert job(s, "conveyor_job_start_latency_seconds_count", "ok") == 5
    assert job(s, "conveyor_job_start_latency_seconds_count", "bad") == 2
    assert value(s, "conveyor_job_duration_seconds_bucket", name="ok", queue="default",
                 le="+Inf") == 5
    assert (job(s, "conveyor_job_start_latency_seconds_sum", "ok") or 0) >= 0

    worker_id = thread.worker.id
    assert (value(s, "conveyor_worker_concurrency", worker=worker_id) or 0) >= 1
    assert value(s, "conveyor_worker_busy", worker=worker_id) == 0
    thread.stop()
    after = parse(metrics.render().decode())
    assert value(after, "conveyor_worker_busy", worker=worker_id) is None


def test_cancelled_before_start_is_counted_without_a_duration(app: Conveyor) -> None:
    from conveyor.worker.pool import Worker

    @app.job
    async def idle() -> None:
        return None

    metrics = Metrics()
    worker = Worker(app, metrics=metrics)
    record = app.build("idle", (), {})
    worker.buffered.append(record)
    worker.cancel_job(record.id, "cancel")
    worker.buffered.append(record)
    worker.cancel_job(record.id, "shutdown")  # requeued: not an end, not counted
    s = parse(metrics.render().decode())
    assert job(s, "conveyor_jobs_cancelled_total", "idle") == 1
    assert job(s, "conveyor_job_duration_seconds_count", "idle") == 0


def test_a_job_handed_back_unrun_is_counted_apart(app: Conveyor) -> None:
    from conveyor.worker import outcomes

    metrics = Metrics()
    record = app.build("elsewhere", (), {})  # registered by no app here
    metrics.job_ended(record, outcomes.unknown(record, "w1"), None)
    s = parse(metrics.render().decode())
    assert value(s, "conveyor_jobs_throttled_total", name="elsewhere",
                 reason="unregistered") == 1
    assert not job(s, "conveyor_jobs_failed_total", "elsewhere")
    assert value(s, "conveyor_jobs_throttled_total", name="elsewhere", reason="upstream") is None


def test_a_process_job_ended_as_its_worker_froze_is_counted_apart(app: Conveyor) -> None:
    from conveyor.worker.pool import Worker
    from conveyor.worker.process_pool import WorkerFroze

    @app.job(executor="process", retries=0)
    def crunch() -> None:
        return None

    metrics = Metrics()
    record = app.build("crunch", (), {})
    froze = WorkerFroze("WorkerFroze", "worker process 1 ended the job", "", False, None,
                        False)
    outcome = Worker(app, metrics=metrics)._failure(record, crunch, froze)
    assert (outcome.kind, outcome.deferred) == ("retry", True)  # uncharged, though retries=0
    metrics.job_ended(record, outcome, 1.0)
    s = parse(metrics.render().decode())
    assert value(s, "conveyor_jobs_throttled_total", name="crunch", reason="frozen") == 1
    assert value(s, "conveyor_jobs_throttled_total", name="crunch", reason="upstream") is None
    assert not job(s, "conveyor_jobs_failed_total", "crunch")


def test_serve_exposes_metrics(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    try:
        ids = [server.client.post("/jobs/add", json={"args": [i, 1]}).json()["id"]
               for i in range(2)]
        for job_id in ids:
            assert server.wait_job(job_id)["state"] == "succeeded"
        assert server.client.get("/jobs/nope-not-an-id").status_code == 404
        assert httpx.get(f"{server.url}/metrics").status_code == 401  # token, as elsewhere

        def scraped() -> Samples | None:
            response = server.client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            s = parse(response.text)
            return s if job(s, "conveyor_jobs_succeeded_total", "add") == 2 else None

        s = wait_until(scraped, timeout=10, what="the succeeded counter")
        requests = "conveyor_http_requests_total"
        assert value(s, requests, route="/jobs/{job}", method="POST", status="202") == 2
        assert value(s, requests, route="/jobs/{job}", method="GET", status="404") == 1
        assert value(s, requests, route="/metrics", method="GET", status="401") == 1
        assert (value(s, requests, route="/jobs/{job}", method="GET", status="200") or 0) >= 2
        assert not [k for k in s if k[0] == requests and ("route", f"/jobs/{ids[0]}") in k[1]]
        assert job(s, "conveyor_jobs_enqueued_total", "add") == 2
        assert job(s, "conveyor_jobs_started_total", "add") == 2
        assert job(s, "conveyor_job_duration_seconds_count", "add") == 2
        assert value(s, "conveyor_queue_jobs", queue="default", state="succeeded") == 2

        doc = server.client.get("/openapi.json").json()
        answer = doc["paths"]["/metrics"]["get"]["responses"]["200"]
        assert list(answer["content"]) == ["text/plain"]
    finally:
        assert server.stop() == 0


def test_worker_metrics_port(db_url: str, tmp_path: Path) -> None:
    import clijobs

    port = free_port()
    cli = CLI(db_url, tmp_path)
    proc = cli.start_worker("--metrics-port", str(port))
    enqueuer = clijobs.register(Conveyor(url=db_url))
    try:
        ids = [enqueuer.enqueue("add", i, 1).id for i in range(3)]

        def scraped() -> Samples | None:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited: {proc.communicate()[1]}")
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except httpx.TransportError:
                return None
            s = parse(response.text)
            return s if job(s, "conveyor_jobs_succeeded_total", "add") == 3 else None

        s = wait_until(scraped, timeout=30, what="the worker's metrics")
        assert job(s, "conveyor_jobs_started_total", "add") == 3
        assert job(s, "conveyor_job_start_latency_seconds_count", "add") == 3
        assert all(enqueuer.handle(i).info().state == "succeeded" for i in ids)
    finally:
        enqueuer.close()
        code, err = stop(proc)
    assert code == 0, err


def test_metrics_port_needs_one_process(db_url: str, tmp_path: Path) -> None:
    result = CLI(db_url, tmp_path)("worker", "clijobs:app", "--processes", "2",
                                   "--metrics-port", "9999")
    assert result.returncode == 2
    assert "--metrics-port needs --processes 1" in result.stderr



def test_label_sets_stay_bounded_whatever_queue_names_come_in() -> None:
    """Queue names come from HTTP clients too: thousands of them must not grow the registry."""
    import time

    from conveyor.job import JobRecord, JobState

    metrics = Metrics()
    now = time.time()
    records = [JobRecord(id=f"{i:026d}", name="n", queue=f"q{i}", state=JobState.QUEUED,
                         args=[], kwargs={}, created_at=now, run_at=now) for i in range(1000)]
    metrics.jobs_enqueued(records)
    assert len(metrics._jobs) <= Metrics.MAX_JOB_LABELS + 1
    total = sum(c.enqueued._value.get() for c in metrics._jobs.values())
    assert total == 1000  # nothing is lost: the overflow is counted under queue="other"
    with pytest.raises(ValueError):
        Metrics(queue_refresh=0)


def test_deduplicated_enqueues_keep_the_label_sets_bounded_too() -> None:
    """A deduplicated enqueue stores nothing (its queue counts toward no store limit): its
    queue name, one per call or in bulk, is bounded like the others'."""
    import time

    from conveyor.job import JobRecord, JobState

    metrics = Metrics()
    now = time.time()
    records = [JobRecord(id=f"{i:026d}", name="n", queue=f"q{i}", state=JobState.QUEUED,
                         args=[], kwargs={}, created_at=now, run_at=now) for i in range(600)]
    for record in records[:300]:
        metrics.jobs_enqueued([record], held=["holder"])
    metrics.jobs_enqueued(records[300:], held=["holder"] * 300)
    samples = [s for family in metrics.deduplicated.collect() for s in family.samples
               if s.name.endswith("_total")]
    assert len(samples) <= Metrics.MAX_JOB_LABELS + 1
    assert sum(s.value for s in samples) == 600
    assert {s.labels["queue"] for s in samples} >= {"q0", "other"}


def test_a_mounted_api_names_routes_by_its_own_templates(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from conveyor.http import create_app

    app = Conveyor(url=f"sqlite:///{tmp_path / 'db'}")
    metrics = Metrics()
    api = create_app(app, token="tok", metrics=metrics)
    outer = Starlette(routes=[Mount("/conveyor", app=api)])

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/conveyor/jobs")).status_code == 401
            missing = await client.get("/conveyor/jobs/06H0HQQS1DPDNNKJ7KG6WTC19R",
                                       headers={"Authorization": "Bearer tok"})
            assert missing.status_code == 404
            nowhere = await client.get("/conveyor/nowhere",
                                       headers={"Authorization": "Bearer tok"})
            assert nowhere.status_code == 404
        await app.broker.close()

    asyncio.run(scenario())
    s = parse(metrics.render().decode())
    requests = "conveyor_http_requests_total"
    assert value(s, requests, route="/jobs", method="GET", status="401") == 1
    assert value(s, requests, route="/jobs/{job}", method="GET", status="404") == 1
    assert value(s, requests, route="<unmatched>", method="GET", status="404") == 1
    assert not [k for k in s if k[0] == requests and ("route", "/conveyor") in k[1]]


def test_queue_settings_are_gauges(app: Conveyor) -> None:
    """``conveyor_queue_paused`` for every listed queue (0 or 1) and
    ``conveyor_queue_max_queued`` for the capped ones, from the store's settings."""
    app.enqueue_call("anything", [], {}, queue="open", force=True)
    app.pause("held")
    app.set_max_queued("held", 4)
    app.set_max_queued("capped", 9)
    metrics = Metrics()
    app.run_sync(metrics.refresh_queues(app.broker, force=True))
    s = parse(metrics.render().decode())
    assert value(s, "conveyor_queue_paused", queue="held") == 1
    assert value(s, "conveyor_queue_paused", queue="open") == 0
    assert value(s, "conveyor_queue_paused", queue="capped") == 0
    assert value(s, "conveyor_queue_max_queued", queue="held") == 4
    assert value(s, "conveyor_queue_max_queued", queue="capped") == 9
    assert value(s, "conveyor_queue_max_queued", queue="open") is None
    app.resume("held")
    app.run_sync(metrics.refresh_queues(app.broker, force=True))
    s = parse(metrics.render().decode())
    assert value(s, "conveyor_queue_paused", queue="held") == 0


def test_a_capped_job_without_groups_has_one_running_sample(app: Conveyor) -> None:
    """Its jobs are kept in one group named "": its row would repeat the total's label set
    (``group=""``), which an exposition must not hold twice."""
    @app.job(concurrency=2)
    def capped_alone(n: int) -> None: ...

    for n in range(3):
        capped_alone.enqueue(n)
    metrics = Metrics()
    metrics.watch_limits(["capped_alone"])
    app.run_sync(metrics.refresh_queues(app.broker, force=True))
    text = metrics.render().decode()
    lines = [line for line in text.splitlines()
             if line.startswith("conveyor_limit_running{") and "capped_alone" in line]
    assert lines == ['conveyor_limit_running{group="",name="capped_alone"} 0.0'], text
