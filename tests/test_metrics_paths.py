"""The one-record enqueue path counts as the general one, and the label caches stay
bounded whatever comes in."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from conveyor.job import JobRecord, JobState
from conveyor.metrics import Metrics


def record(name: str, queue: str) -> JobRecord:
    now = time.time()
    return JobRecord(id="0" * 26, name=name, queue=queue, state=JobState.QUEUED, args=[],
                     kwargs={}, created_at=now, run_at=now)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.endswith("_created")}


def test_one_record_at_a_time_counts_as_a_batch_does() -> None:
    one, batch = Metrics(), Metrics()
    records = [record("a", "q1"), record("a", "q1"), record("b", "q1"), record("a", "q2")]
    held: list[str | None] = [None, "KEPT", None, "KEPT"]
    for n, r in enumerate(records):
        one.jobs_enqueued([r])
        one.jobs_enqueued([r], [held[n]])
    batch.jobs_enqueued(records)
    batch.jobs_enqueued(records, held)
    assert samples(one) == samples(batch)
    got = samples(one)
    assert got["conveyor_jobs_enqueued_total", frozenset({("name", "a"), ("queue", "q1")})] == 3
    assert got["conveyor_jobs_deduplicated_total",
               frozenset({("name", "a"), ("queue", "q2")})] == 1


def test_single_enqueues_of_many_queue_names_stay_bounded() -> None:
    metrics = Metrics()
    for i in range(1000):
        metrics.jobs_enqueued([record("n", f"q{i}")])
    assert len(metrics._jobs) <= Metrics.MAX_JOB_LABELS + 1
    assert sum(c.enqueued._value.get() for c in metrics._jobs.values()) == 1000


def test_the_http_cache_is_bounded_and_counts_past_its_bound() -> None:
    metrics = Metrics()
    for i in range(Metrics.MAX_HTTP_LABELS + 50):
        metrics.http_request(f"/r{i}", "GET", 200, 0.01)
    for _ in range(3):
        metrics.http_request(f"/r{Metrics.MAX_HTTP_LABELS + 1}", "GET", 200, 0.01)
        metrics.http_request("/r0", "GET", 200, 0.01)
    assert len(metrics._http) == Metrics.MAX_HTTP_LABELS
    got = samples(metrics)
    for route in ("/r0", f"/r{Metrics.MAX_HTTP_LABELS + 1}"):
        labels = frozenset({("route", route), ("method", "GET"), ("status", "200")})
        assert got["conveyor_http_requests_total", labels] == 4
        timed = frozenset({("route", route), ("method", "GET")})
        assert got["conveyor_http_request_duration_seconds_count", timed] == 4
