"""Input bounds at the door: the horizon of ``delay`` and ``at`` (``Conveyor(max_delay=)``),
the nesting depth of arguments and results, lone surrogates, and the length and characters
of job and queue names; each refused with InvalidArguments in Python, 400 over HTTP and one
line with exit 2 from the CLI, storing nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from clijobs import CLI, publish
from conveyor import Conveyor, JobContext, RateLimited, Retry
from conveyor.bounds import DEFAULT_MAX_DELAY, MAX_DEPTH, MAX_HORIZON, MAX_NAME
from conveyor.errors import ConfigurationError, InvalidArguments
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from conveyor.options import EnqueueOptions
from conveyor.testing import WorkerThread
from http_server import Server
from oddjobs import nested
from polling import wait_until

BAD_NAMES = ["", "x" * (MAX_NAME + 1), "two words", "tab\there", "line\nbreak", "nul\x00",
             "zero\u200bwidth", "lone\ud800", "\u2028"]
BAD_QUEUES = [*BAD_NAMES, "a,b", "a/b"]
BAD_DELAYS: list[Any] = [float("nan"), float("inf"), -1, DEFAULT_MAX_DELAY + 1, 2.6e11,
                         1e300, 10 ** 400]


@pytest.fixture
def plain(db_url: str) -> Iterator[Conveyor]:
    app = Conveyor(url=db_url)

    @app.job
    def take(*args: Any, **kwargs: Any) -> None:
        return None

    yield app
    app.close()


def stored(app: Conveyor) -> int:
    return len(app.run_sync(app.broker.list_jobs(limit=100)))


# -- Python ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay", BAD_DELAYS)
def test_a_delay_past_the_horizon_or_not_finite_is_refused(plain: Conveyor, delay: Any) -> None:
    take = plain.get_job("take")
    with pytest.raises(InvalidArguments, match="delay must"):
        take.enqueue_with((), delay=delay)
    with pytest.raises(InvalidArguments, match="delay must"):
        plain.run_sync(take.enqueue_with_async((), delay=delay))
    with pytest.raises(InvalidArguments, match="delay must"):
        take.enqueue_many([(1,), (2,)], delay=delay)
    with pytest.raises(InvalidArguments, match="delay must"):
        plain.enqueue("take", 1, delay=delay)
    assert stored(plain) == 0


def test_the_horizon_itself_is_accepted_and_at_has_the_same_bound(plain: Conveyor) -> None:
    take = plain.get_job("take")
    handle = take.enqueue_with((), delay=DEFAULT_MAX_DELAY)
    assert handle.info().run_at - handle.info().created_at == pytest.approx(DEFAULT_MAX_DELAY)
    later = datetime.now(UTC) + timedelta(seconds=DEFAULT_MAX_DELAY + 60)
    with pytest.raises(InvalidArguments, match="at must be at most 31536000 seconds"):
        take.enqueue_with((), at=later)
    with pytest.raises(InvalidArguments, match="at must be"):
        take.enqueue_with((), at=datetime(9999, 12, 31, tzinfo=UTC))
    assert take.enqueue_with((), at=later - timedelta(seconds=120)).info().state == "scheduled"
    assert stored(plain) == 2


def test_max_delay_sets_the_horizon(db_url: str) -> None:
    app = Conveyor(url=db_url, max_delay=60)
    try:
        with pytest.raises(InvalidArguments, match=r"at most 60 seconds \(1 minute\)"):
            app.enqueue("anything", delay=61)
        assert app.enqueue_call("anything", (), {}, delay=60, force=True).info().state == \
            JobState.SCHEDULED
    finally:
        app.close()
    assert Conveyor(url=db_url, max_delay=MAX_HORIZON).max_delay == MAX_HORIZON
    for bad in (0, -1, float("nan"), float("inf"), MAX_HORIZON * 2, True, "60"):
        with pytest.raises(ConfigurationError, match="max_delay must be"):
            Conveyor(url=db_url, max_delay=bad)  # type: ignore[arg-type]


def test_other_options_must_be_finite_too() -> None:
    for unique_for in (float("nan"), float("inf"), 0, -1):
        with pytest.raises(InvalidArguments, match="unique_for"):
            EnqueueOptions(unique_key="k", unique_for=unique_for).checked()
    with pytest.raises(InvalidArguments, match="at must be a timezone-aware"):
        EnqueueOptions(at=datetime(2030, 1, 1)).checked()


def test_arguments_nest_at_most_max_depth_levels(plain: Conveyor) -> None:
    take = plain.get_job("take")
    take.enqueue(nested(MAX_DEPTH))
    take.enqueue(deep=nested(MAX_DEPTH))
    for call in (((nested(MAX_DEPTH + 1),), {}), ((), {"deep": nested(MAX_DEPTH + 1)}),
                 ((nested(5000),), {})):
        with pytest.raises(InvalidArguments, match=f"deeper than {MAX_DEPTH} levels"):
            take.enqueue_with(*call)
    with pytest.raises(InvalidArguments, match="deeper than"):
        take.enqueue_many([(1,), (nested(MAX_DEPTH + 1),)])
    with pytest.raises(InvalidArguments, match="deeper than"):
        plain.enqueue_call("published-elsewhere", (nested(MAX_DEPTH + 1),), {}, force=True)
    assert stored(plain) == 2


def test_a_lone_surrogate_cannot_be_stored(plain: Conveyor) -> None:
    take = plain.get_job("take")
    for args, kwargs in ((("\ud800",), {}), ((), {"x": ["ok", "\udfff"]}), ((), {"\ud800": 1}),
                         (({"\ud800": 1},), {})):
        with pytest.raises(InvalidArguments, match="lone surrogate"):
            take.enqueue_with(args, kwargs)
    take.enqueue("\U0001d11e \u200b \ufeff")  # paired surrogates and format characters: text
    assert stored(plain) == 1


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_job_names_are_refused_at_registration_and_enqueue(plain: Conveyor,
                                                               name: str) -> None:
    if name:  # an empty name is the function's own
        with pytest.raises(ConfigurationError, match="a job name is a non-empty string"):
            plain.job(name=name)(lambda: None)
    with pytest.raises(InvalidArguments, match="a job name is a non-empty string"):
        plain.enqueue_call(name, (), {}, force=True)
    assert stored(plain) == 0


@pytest.mark.parametrize("queue", BAD_QUEUES)
def test_bad_queue_names_are_refused_everywhere_a_job_gets_one(plain: Conveyor,
                                                               queue: str) -> None:
    take = plain.get_job("take")
    with pytest.raises(ConfigurationError, match="a queue name is a non-empty string"):
        plain.job(name="other", queue=queue)(lambda: None)
    with pytest.raises(InvalidArguments, match="a queue name is a non-empty string"):
        take.enqueue_with((), queue=queue)
    with pytest.raises(ConfigurationError, match="a queue name"):
        plain.schedule("tick", take, every=60, queue=queue)
    with pytest.raises(ConfigurationError, match="a queue name"):
        Conveyor(url="memory://", max_queued={queue: 1})
    assert stored(plain) == 0


def test_the_longest_and_oddest_allowed_names(plain: Conveyor) -> None:
    name = ("名前:[/x]<b>🚀" + "n" * MAX_NAME)[:MAX_NAME]
    queue = ("队列:[x]<i>😀;?#%" + "q" * MAX_NAME)[:MAX_NAME]
    job = plain.job(name=name, queue=queue)(lambda: None)
    record = job.enqueue().info()
    assert (record.name, record.queue) == (name, queue)


def test_a_queue_stored_before_the_charset_held_can_still_be_paused(plain: Conveyor) -> None:
    odd = "old queue/with, separators"
    with pytest.raises(ConfigurationError):  # a name no job may take, unknown to the store
        plain.pause(odd)
    now = time.time()
    stored = JobRecord(new_id(), "take", odd, JobState.QUEUED, [], {}, now, now)
    plain.run_sync(plain.broker.enqueue([stored], {}))  # (as an older version stored it)
    plain.pause(odd)
    assert plain.queue_settings()[odd].paused


# -- what a job asks for -----------------------------------------------------------------------
def test_retry_and_rate_limited_delays_are_cut_to_the_horizon(url: str) -> None:
    app = Conveyor(url=url, namespace=f"t{new_id().lower()}", max_delay=600)
    asked = {"retry": 1e300, "limited": float("inf"), "nan": float("nan")}

    @app.job(retries=5)
    def retry(kind: str) -> None:
        if kind == "limited":
            raise RateLimited(retry_after=asked[kind])
        raise Retry(delay=asked[kind])

    ids = {kind: retry.enqueue(kind).id for kind in asked}
    worker = WorkerThread(app, max_workers=2).start()
    try:
        def retried() -> dict[str, Any] | None:
            records = {k: app.handle(i).info() for k, i in ids.items()}
            waiting = all(r.state is JobState.SCHEDULED and r.error for k, r in records.items()
                          if k != "nan")
            return records if waiting and records["nan"].attempts >= 2 else None

        records = wait_until(retried, timeout=30, what="the jobs to be retried")
    finally:
        worker.stop()
        app.close()
    for kind in ("retry", "limited"):
        wait = records[kind].run_at - time.time()
        assert 500 <= wait <= 600, (kind, wait)
        assert records[kind].to_dict()["run_at"].startswith(str(datetime.now(UTC).year)[:2])


def test_a_result_too_deep_or_with_a_lone_surrogate_fails_the_attempt(url: str) -> None:
    app = Conveyor(url=url, namespace=f"t{new_id().lower()}")

    @app.job(retries=0)
    def answer(kind: str) -> Any:
        return {"deep": nested(MAX_DEPTH + 1), "surrogate": "\ud800", "fine": nested(MAX_DEPTH)
                }[kind]

    ids = {kind: answer.enqueue(kind).id for kind in ("deep", "surrogate", "fine")}
    worker = WorkerThread(app, max_workers=2).start()
    try:
        records = {k: wait_until(lambda i=i: (r := app.handle(i).info()).is_final and r,
                                 timeout=30, what=f"job {k}") for k, i in ids.items()}
    finally:
        worker.stop()
        app.close()
    assert records["deep"].state is JobState.DEAD
    assert f"deeper than {MAX_DEPTH} levels" in (records["deep"].error or "")
    assert records["surrogate"].state is JobState.DEAD
    assert "lone surrogate" in (records["surrogate"].error or "")
    assert records["fine"].state is JobState.SUCCEEDED
    assert records["fine"].result == nested(MAX_DEPTH)


# -- HTTP -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("http-bounds"), "--no-worker")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.output()


def check_400(response: Any, *words: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert "retry-after" not in response.headers
    body = response.json()
    assert list(body) == ["error"]
    for word in words:
        assert word in body["error"], body


def raw_post(server: Server, path: str, body: bytes) -> Any:
    return server.client.post(path, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("delay", ["2.6e11", "1e300", "1e400", "31536001", "1" + "0" * 400,
                                   "-1"])
def test_http_refuses_delays_past_the_horizon(server: Server, delay: str) -> None:
    before = server.job_ids()
    response = raw_post(server, "/jobs/add", b'{"args": [1, 2], "delay": %s}' % delay.encode())
    check_400(response, "delay must be")
    assert server.job_ids() == before


def test_http_takes_the_horizon_itself(server: Server) -> None:
    response = server.client.post("/jobs/add", json={"args": [1, 2],
                                                     "delay": DEFAULT_MAX_DELAY})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert server.client.get("/jobs").status_code == 200
    assert server.client.delete(f"/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 970, 5000, 100_000])
def test_http_refuses_arguments_nested_too_deep(server: Server, levels: int) -> None:
    before = server.job_ids()
    body = b'{"args": [' + b"[" * levels + b"]" * levels + b"]}"
    check_400(raw_post(server, "/jobs/add", body))
    body = b'{"kwargs": {"a": ' + b'{"k":' * levels + b"1" + b"}" * levels + b"}}"
    check_400(raw_post(server, "/jobs/add", body))
    assert server.job_ids() == before


def test_http_takes_arguments_at_the_depth_bound(server: Server) -> None:
    response = server.client.post("/jobs/add", json={"args": [nested(MAX_DEPTH, 1)]})
    assert response.status_code == 202, response.text
    assert server.client.get(f"/jobs/{response.json()['id']}").json()["args"] == \
        [nested(MAX_DEPTH, 1)]
    assert server.client.get("/jobs").status_code == 200


@pytest.mark.parametrize("body", [b'{"args": ["\\ud800"]}', b'{"kwargs": {"a": "\\udfff"}}',
                                  b'{"kwargs": {"\\ud800": 1}}', b'{"queue": "\\ud800"}'])
def test_http_refuses_lone_surrogates(server: Server, body: bytes) -> None:
    before = server.job_ids()
    check_400(raw_post(server, "/jobs/add", body))
    assert server.job_ids() == before


@pytest.mark.parametrize("queue", BAD_QUEUES)
def test_http_refuses_bad_queue_names(server: Server, queue: str) -> None:
    before = server.job_ids()
    body = json.dumps({"args": [1, 2], "queue": queue}).encode()
    check_400(raw_post(server, "/jobs/add", body), "a queue name is a non-empty string")
    assert server.job_ids() == before


def test_http_answers_a_bad_job_name_with_a_clear_error(server: Server) -> None:
    response = server.client.post(f"/jobs/{quote('two words')}", json={})
    assert response.status_code == 404
    assert "no job named 'two words'" in response.json()["error"]


# -- CLI ------------------------------------------------------------------------------------------
@pytest.fixture
def published_cli(db_url: str, tmp_path: Path) -> CLI:
    publish(db_url)
    return CLI(db_url, tmp_path)


@pytest.mark.parametrize("delay", ["nan", "inf", "-1", "31536001", "2.6e11", "1e300"])
def test_cli_refuses_delays_past_the_horizon(published_cli: CLI, delay: str) -> None:
    err = published_cli.fail("enqueue", "add", "--args", "[1, 2]", f"--delay={delay}", code=2)
    assert "delay must" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "words"), [
    (("add", "--args", "[" + "[" * 65 + "]" * 65 + ", 1]"), "deeper than 64 levels"),
    (("add", "--args", "[" * 5000 + "]" * 5000), "too deep"),
    (("add", "--kwargs", json.dumps({"a": "\ud800"})), "lone surrogate"),
    (("add", "--args", "[1, 2]", "--queue", "two words"), "a queue name"),
    (("add", "--args", "[1, 2]", "--queue", "a,b"), "a queue name"),
    (("two words", "--force"), "a job name"),
    (("x" * 201, "--force"), "a job name"),
])
def test_cli_refuses_what_the_bounds_refuse(published_cli: CLI, argv: tuple[str, ...],
                                             words: str) -> None:
    err = published_cli.fail("enqueue", *argv, code=2)
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_cli_shows_the_horizon_job(published_cli: CLI) -> None:
    job_id = published_cli.enqueue("add", [1, 2], "--delay", str(DEFAULT_MAX_DELAY))
    assert job_id in published_cli.ok("jobs")
    summary = published_cli.ok("status", job_id)
    assert "run at" in summary and "in 3153" in summary
    before = time.time()
    run_at = published_cli.json("status", job_id)["run_at"]
    assert datetime.fromisoformat(run_at).timestamp() == pytest.approx(
        before + DEFAULT_MAX_DELAY, abs=120)


def test_jobs_of_the_context_still_work_at_the_bound(db_url: str) -> None:
    """The JobContext parameter is not an argument: the bound counts the caller's values."""
    app = Conveyor(url=db_url)

    @app.job
    def echo(ctx: JobContext, value: Any) -> Any:
        return value

    try:
        assert echo.enqueue(nested(MAX_DEPTH)).info().args == [nested(MAX_DEPTH)]
    finally:
        app.close()


@pytest.mark.parametrize("argv", [
    ("status", "x\udcff"), ("cancel", "x\udcff"), ("pause", "q\udcff"),
    ("jobs", "--cursor", "x\udcff"), ("enqueue", "add", "--unique-key", "\udcff"),
])
def test_cli_refuses_arguments_that_are_not_utf8(published_cli: CLI,
                                                  argv: tuple[str, ...]) -> None:
    # the child gets the raw byte 0xff in its argv, which the locale cannot decode
    err = published_cli.fail(*argv, code=2)
    assert "is not valid UTF-8" in err and len(err.strip().splitlines()) == 1, err


def test_cli_refuses_a_cap_past_the_largest(published_cli: CLI) -> None:
    err = published_cli.fail("cap", "q", str(10**26), code=2)
    assert "max_queued must be a whole number from 1 to" in err, err
    published_cli.ok("cap", "q", str(10**15))


# -- more bounds ----------------------------------------------------------------------------------
def test_a_unique_key_must_be_utf8(plain: Conveyor) -> None:
    with pytest.raises(InvalidArguments, match="unique_key"):
        plain.get_job("take").enqueue_with((), {}, unique_key="\ud800")
    assert stored(plain) == 0


def test_a_cap_past_the_largest_is_refused(plain: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="from 1 to"):
        plain.set_max_queued("q", 10**26)
    plain.set_max_queued("q", 10**15)


def test_progress_messages_are_text_and_one_odd_report_loses_no_other(url: str) -> None:
    app = Conveyor(url=url, namespace=f"t{new_id().lower()}")
    go = threading.Event()

    @app.job(retries=0)
    def report(ctx: JobContext, message: str) -> None:
        odd = {"long": "x" * 5000, "odd": "\ud800 odd"}  # a job's own text may hold anything
        ctx.progress(0.5, odd.get(message, message))
        go.wait(10)

    @app.job(retries=0)
    def raw(ctx: JobContext) -> None:
        ctx.progress(0.5, b"raw \xff")  # type: ignore[arg-type]

    ids = {m: report.enqueue(m).id for m in ("fine", "odd", "long")}
    raw_id = raw.enqueue().id
    worker = WorkerThread(app, max_workers=4).start()
    try:
        shown = {m: wait_until(lambda i=i: (r := app.handle(i).info()).progress_message
                               and r, timeout=30, what=f"progress of {m!r}")
                 for m, i in ids.items()}
        dead = wait_until(lambda: (r := app.handle(raw_id).info()).is_final and r, timeout=30,
                          what="the raw job")
        go.set()
    finally:
        go.set()
        worker.stop()
        app.close()
    assert shown["fine"].progress_message == "fine"
    assert shown["odd"].progress_message == "\\ud800 odd"  # escaped, not lost
    assert shown["long"].progress_message == "x" * 1000
    assert dead.state is JobState.DEAD and "progress message is a str" in (dead.error or "")
