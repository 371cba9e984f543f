"""Prometheus metrics: job counters, durations, queue depths, workers and HTTP requests.

A :class:`Metrics` owns its own ``CollectorRegistry`` (never the global one), so several apps
or tests in one process do not share counters. Give it to a :class:`~conveyor.worker.pool.Worker`
(``metrics=``) to count what the worker runs, and set it as ``app.metrics`` to count enqueues;
``create_app`` does the latter and serves ``GET /metrics``.

The per-job cost is a dict look-up and a few increments: the label children of each
``(name, queue)`` pair are bound once and cached.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from conveyor.job import JobRecord, Outcome, OutcomeKind
from conveyor.limits import LimitUsage
from conveyor.queues import QueueSettings

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase

    from conveyor.backends import Broker

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

JOB_LABELS = ("name", "queue")
#: job durations: from a millisecond to an hour
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0, 900.0, 3600.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _JobChildren:
    """The label children of one ``(name, queue)`` pair, bound once."""

    __slots__ = ("cancelled", "dead", "deduplicated", "duration", "enqueued", "failed",
                 "latency", "retried", "started", "succeeded")

    def __init__(self, metrics: Metrics, name: str, queue: str) -> None:
        self.enqueued = metrics.enqueued.labels(name, queue)
        self.started = metrics.started.labels(name, queue)
        self.succeeded = metrics.succeeded.labels(name, queue)
        self.failed = metrics.failed.labels(name, queue)
        self.retried = metrics.retried.labels(name, queue)
        self.dead = metrics.dead.labels(name, queue)
        self.cancelled = metrics.cancelled.labels(name, queue)
        self.deduplicated = metrics.deduplicated.labels(name, queue)
        self.duration = metrics.duration.labels(name, queue)
        self.latency = metrics.start_latency.labels(name, queue)


class _QueueCollector(Collector):
    """``conveyor_queue_jobs{queue,state}`` from the last snapshot of ``broker.counts()``;
    ``conveyor_queue_paused{queue}`` and ``conveyor_queue_max_queued{queue}`` from the
    queue settings read with it."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.settings: dict[str, QueueSettings] = {}
        self.usage: list[LimitUsage] = []
        self.taken_at = 0.0  # monotonic; 0: never

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("conveyor_queue_jobs", "Jobs per queue and state "
                                   "(refreshed every few seconds)", labels=("queue", "state"))
        for queue, states in sorted(self.counts.items()):
            for state, count in states.items():
                family.add_metric((queue, state), count)
        yield family
        paused = GaugeMetricFamily("conveyor_queue_paused", "1 when workers claim nothing "
                                   "from the queue (refreshed with the queue depths)",
                                   labels=("queue",))
        caps = GaugeMetricFamily("conveyor_queue_max_queued", "The cap on waiting jobs "
                                 "kept in the store (capped queues only)", labels=("queue",))
        for queue in sorted(set(self.counts) | set(self.settings)):
            settings = self.settings.get(queue)
            paused.add_metric((queue,), 1 if settings is not None and settings.paused else 0)
            if settings is not None and settings.max_queued is not None:
                caps.add_metric((queue,), settings.max_queued)
        yield paused
        yield caps
        running = GaugeMetricFamily("conveyor_limit_running", "Running attempts of a job "
                                    "with limits, in all (group=\"\") and per group (the "
                                    "busiest groups only; refreshed with the queue depths)",
                                    labels=("name", "group"))
        for usage in self.usage:
            if usage.group == "":  # the total's label set (a job without groups keeps its
                continue  # jobs in one group, named ""): one sample per label set
            running.add_metric((usage.name, usage.group or ""), usage.running)
        yield running


class Metrics:
    """The metrics of one Conveyor process, in a registry of their own.

    ``queue_refresh`` is how old (in seconds) the queue-depth snapshot may get before a
    worker or a scrape of ``/metrics`` takes a new one.
    """

    #: distinct (name, queue) label pairs at most; later ones share the label queue="other"
    MAX_JOB_LABELS = 200
    #: (route, method, status) triples whose label children are kept bound
    MAX_HTTP_LABELS = 1024

    def __init__(self, *, queue_refresh: float = 5.0) -> None:
        if queue_refresh <= 0:
            raise ValueError("queue_refresh must be a positive number of seconds")
        self.registry = CollectorRegistry()
        self.queue_refresh = queue_refresh
        r = self.registry
        self.enqueued = Counter("conveyor_jobs_enqueued_total", "Jobs enqueued", JOB_LABELS,
                                registry=r)
        self.deduplicated = Counter("conveyor_jobs_deduplicated_total", "Enqueues that stored "
                                    "nothing because a job held their unique key",
                                    JOB_LABELS, registry=r)
        self.started = Counter("conveyor_jobs_started_total", "Attempts started", JOB_LABELS,
                               registry=r)
        self.succeeded = Counter("conveyor_jobs_succeeded_total", "Attempts that succeeded",
                                 JOB_LABELS, registry=r)
        self.failed = Counter("conveyor_jobs_failed_total", "Attempts that failed (the job "
                              "is retried or dead)", JOB_LABELS, registry=r)
        self.retried = Counter("conveyor_jobs_retried_total", "Failed attempts scheduled for "
                               "a retry", JOB_LABELS, registry=r)
        self.dead = Counter("conveyor_jobs_dead_total", "Jobs sent to the dead set by a worker",
                            JOB_LABELS, registry=r)
        self.cancelled = Counter("conveyor_jobs_cancelled_total", "Jobs a worker stopped on "
                                 "cancellation", JOB_LABELS, registry=r)
        self.duration = Histogram("conveyor_job_duration_seconds", "Run time of an attempt",
                                  JOB_LABELS, registry=r, buckets=DURATION_BUCKETS)
        self.start_latency = Histogram("conveyor_job_start_latency_seconds", "From enqueue to "
                                       "the start of the first attempt", JOB_LABELS,
                                       registry=r, buckets=DURATION_BUCKETS)
        self.worker_concurrency = Gauge("conveyor_worker_concurrency", "Current concurrency "
                                        "of a worker", ("worker",), registry=r)
        self.worker_busy = Gauge("conveyor_worker_busy", "Jobs a worker is running",
                                 ("worker",), registry=r)
        self.http_requests = Counter("conveyor_http_requests_total", "HTTP requests by route "
                                     "template", ("route", "method", "status"), registry=r)
        self.http_duration = Histogram("conveyor_http_request_duration_seconds", "HTTP request "
                                       "duration by route template", ("route", "method"),
                                       registry=r, buckets=HTTP_BUCKETS)
        self.throttled = Counter("conveyor_jobs_throttled_total", "Claims that held ready "
                                 "jobs of a name back for a limit (concurrency, "
                                 "group_concurrency, rate, group_rate), and attempts put back "
                                 "uncharged because the job raised RateLimited (upstream), its "
                                 "worker did not know it (unregistered) or froze (frozen)",
                                 ("name", "reason"), registry=r)
        #: the job names with limits whose running attempts refresh_queues reads
        self.limited_names: list[str] = []
        self.schedule_ticks = Counter("conveyor_schedule_ticks_total", "Schedule ticks this "
                                      "process fired (stored the job of) or skipped (missed, "
                                      "paused, overlapping)", ("schedule", "outcome"),
                                      registry=r)
        self._queues = _QueueCollector()
        r.register(self._queues)
        self._jobs: dict[tuple[str, str], _JobChildren] = {}
        self._http: dict[tuple[str, str, int],
                         tuple[Callable[[], None], Callable[[float], None]]] = {}

    # -- jobs -----------------------------------------------------------------------------------
    def _children(self, name: str, queue: str) -> _JobChildren:
        children = self._jobs.get((name, queue))
        if children is None:
            # Queue names come from callers (HTTP clients too): bound the label sets so
            # random names cannot grow the registry without end.
            if len(self._jobs) >= self.MAX_JOB_LABELS:
                queue = "other"
                children = self._jobs.get((name, queue))
            if children is None:
                children = self._jobs[name, queue] = _JobChildren(self, name, queue)
        return children

    def jobs_enqueued(self, records: Sequence[JobRecord],
                      held: Sequence[str | None] | None = None) -> None:
        """Count an enqueue of ``records`` (one increment per ``(name, queue)``): with
        ``held`` (the store's answer, see ``Broker.enqueue``), a record whose unique key was
        held counts as deduplicated, not enqueued."""
        if len(records) == 1:  # the usual enqueue: one look-up, no tally
            record = records[0]
            name, queue = record.name, record.queue
            if held is None or held[0] is None:
                children = self._jobs.get((name, queue)) or self._children(name, queue)
                children.enqueued.inc()
            else:
                self._children(name, queue).deduplicated.inc()
            return
        stored = collections.Counter[tuple[str, str]]()
        deduplicated = collections.Counter[tuple[str, str]]()
        for n, record in enumerate(records):
            kept = held is None or held[n] is None
            (stored if kept else deduplicated)[(record.name, record.queue)] += 1
        for (name, queue), count in stored.items():
            self._children(name, queue).enqueued.inc(count)
        for (name, queue), count in deduplicated.items():
            self._children(name, queue).deduplicated.inc(count)

    def job_started(self, record: JobRecord) -> None:
        """An attempt starts; the first one also measures the wait since the enqueue."""
        children = self._children(record.name, record.queue)
        children.started.inc()
        if record.attempts - record.recoveries <= 1:
            # from when the job could first run (a delayed job waits by design) to now
            ready = max(record.created_at, record.run_at)
            children.latency.observe(max(0.0, time.time() - ready))

    def job_ended(self, record: JobRecord, outcome: Outcome, seconds: float | None) -> None:
        """An attempt ended with ``outcome`` after ``seconds`` (None: it never ran)."""
        children = self._children(record.name, record.queue)
        kind = outcome.kind
        if kind is OutcomeKind.REQUEUE:  # shutdown: not an end, not charged
            return
        if kind is OutcomeKind.SUCCEEDED:
            children.succeeded.inc()
        elif outcome.deferred:  # put back uncharged, not a failure
            self.throttled.labels(record.name, _deferred_reason(outcome)).inc()
        elif kind is OutcomeKind.RETRY:
            children.failed.inc()
            children.retried.inc()
        elif kind is OutcomeKind.DEAD:
            children.failed.inc()
            children.dead.inc()
        elif kind is OutcomeKind.CANCELLED:
            children.cancelled.inc()
        if seconds is not None:
            children.duration.observe(seconds)

    def watch_limits(self, names: Iterable[str]) -> None:
        """Report the running attempts of these job names (names with limits)."""
        self.limited_names = sorted({*self.limited_names, *names})

    def jobs_throttled(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Count claims that held jobs back, per (job name, reason)."""
        for (name, reason), count in counts.items():
            self.throttled.labels(name, reason).inc(count)

    # -- workers and queues ---------------------------------------------------------------------
    def watch_worker(self, worker_id: str, concurrency: Callable[[], float],
                     busy: Callable[[], float]) -> None:
        """Report a worker's size and busy slots, read at scrape time."""
        self.worker_concurrency.labels(worker_id).set_function(concurrency)
        self.worker_busy.labels(worker_id).set_function(busy)

    def forget_worker(self, worker_id: str) -> None:
        """Stop reporting a worker (it stopped)."""
        for gauge in (self.worker_concurrency, self.worker_busy):
            _remove(gauge, worker_id)

    def set_queue_counts(self, counts: dict[str, dict[str, int]],
                         settings: dict[str, QueueSettings] | None = None) -> None:
        """Replace the queue-depth snapshot (and the queue settings, when given)."""
        self._queues.counts = counts
        if settings is not None:
            self._queues.settings = settings
        self._queues.taken_at = time.monotonic()

    def queue_counts_stale(self) -> bool:
        """True when the snapshot is older than ``queue_refresh``."""
        taken = self._queues.taken_at
        return taken == 0.0 or time.monotonic() - taken >= self.queue_refresh

    async def refresh_queues(self, broker: Broker, *, force: bool = False) -> None:
        """Take a new snapshot of ``broker.counts()`` if the last one is stale."""
        if force or self.queue_counts_stale():
            self.set_queue_counts(await broker.counts(), await broker.queue_settings())
            if self.limited_names:
                self._queues.usage = await broker.limit_usage(self.limited_names)

    # -- HTTP -----------------------------------------------------------------------------------
    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (route, method, status)
        count_and_time = self._http.get(key)
        if count_and_time is None:
            count_and_time = (self.http_requests.labels(route, method, str(status)).inc,
                              self.http_duration.labels(route, method).observe)
            # routes and methods come from a fixed table, but keep the cache bounded
            # whatever the callers pass: past the bound, label look-ups are not cached
            if len(self._http) < self.MAX_HTTP_LABELS:
                self._http[key] = count_and_time
        count, observe = count_and_time
        count()
        observe(seconds)

    # -- schedules ------------------------------------------------------------------------------
    def schedule_counted(self, schedule: str, fired: int, skipped: int) -> None:
        """Count the ticks of ``schedule`` one round fired and skipped."""
        if fired:
            self.schedule_ticks.labels(schedule, "fired").inc(fired)
        if skipped:
            self.schedule_ticks.labels(schedule, "skipped").inc(skipped)

    # -- exposition -----------------------------------------------------------------------------
    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def _remove(metric: MetricWrapperBase, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def start_server(metrics: Metrics, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve ``metrics`` over HTTP on ``host:port`` from a daemon thread; return a stop."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, host, registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def _deferred_reason(outcome: Outcome) -> str:
    """Why an attempt was put back uncharged: ``unregistered`` (its worker does not know the
    name), ``frozen`` (its process was ended as its worker froze), ``upstream``
    (RateLimited)."""
    if outcome.unrun:
        return "unregistered"
    return "frozen" if outcome.froze else "upstream"
