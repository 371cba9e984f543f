"""Support for testing code that uses Conveyor: eager mode, ``app.testing()`` and the pytest
plugin (run on examples/test_hello.py through ``pytester``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from conveyor import Conveyor, JobContext, JobFailed, JobState, PermanentError
from conveyor.errors import JobNotFound
from conveyor.ids import new_id

pytest_plugins = ["pytester"]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def eager_app(request: pytest.FixtureRequest, db_url: str) -> Iterator[Conveyor]:
    """An app in eager mode on each kind of store."""
    if request.param == "memory":
        url, namespace = "memory://", "conveyor"
    elif request.param == "sqlite":
        url, namespace = db_url, "conveyor"
    else:
        from redis_server import shared_redis_url

        url, namespace = shared_redis_url(), f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace, lease=5.0, eager=True)
    yield app
    app.close()


# -- eager mode ---------------------------------------------------------------------------------


def test_retries_run_at_once_without_sleeping_the_backoff(eager_app: Conveyor) -> None:
    calls: list[int] = []

    @eager_app.job(retries=2, backoff=3600)  # an hour: a sleeping retry would hang the test
    def flaky(n: int) -> int:
        calls.append(n)
        if len(calls) < 3:
            raise ValueError(f"failure {len(calls)}")
        return n * 2

    handle = flaky.enqueue(21)
    info = handle.info()  # final as soon as enqueue returns
    assert (info.state, info.attempts, info.result) == (JobState.SUCCEEDED, 3, 42)
    assert calls == [21, 21, 21]
    assert handle.result() == 42


def test_a_job_out_of_retries_is_dead(eager_app: Conveyor) -> None:
    @eager_app.job(retries=1, backoff=3600)
    async def broken() -> None:
        raise RuntimeError("always")

    handle = broken.enqueue()
    info = handle.info()
    assert (info.state, info.attempts) == (JobState.DEAD, 2)
    assert info.error is not None and "RuntimeError: always" in info.error
    assert "gave up after 2 attempts" in info.error
    with pytest.raises(JobFailed, match="always"):
        handle.result()


def test_permanent_errors_are_not_retried(eager_app: Conveyor) -> None:
    @eager_app.job(retries=5)
    async def refuse() -> None:
        raise PermanentError("no way")

    @eager_app.job(retries=5, permanent_errors=[KeyError])
    def lookup() -> None:
        raise KeyError("missing")

    for handle in (refuse.enqueue(), lookup.enqueue()):
        info = handle.info()
        assert (info.state, info.attempts) == (JobState.DEAD, 1)
        with pytest.raises(JobFailed):
            handle.result()
    assert "no way" in (refuse.enqueue().info().error or "")


def test_timeouts_apply(eager_app: Conveyor) -> None:
    @eager_app.job(timeout=0.05, retries=0)
    async def sleepy() -> None:
        await asyncio.sleep(30)

    seen: list[bool] = []

    @eager_app.job(timeout=0.05, retries=1)
    def blocking(ctx: JobContext) -> None:
        deadline = time.monotonic() + 5
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(ctx.cancelled)

    info = sleepy.enqueue().info()
    assert (info.state, info.attempts) == (JobState.DEAD, 1)
    assert info.error is not None and info.error.startswith("JobTimeout")
    info = blocking.enqueue().info()
    assert (info.state, info.attempts) == (JobState.DEAD, 2)
    assert "timed out" in (info.error or "")


def test_middleware_context_and_progress(eager_app: Conveyor) -> None:
    order: list[str] = []

    @eager_app.middleware
    async def outer(job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        order.append(f"outer {job.name} {job.attempt}")
        return {"outer": await call_next()}

    @eager_app.job
    async def report(x: int, ctx: JobContext) -> dict[str, Any]:
        order.append("job")
        ctx.progress(0.5, "half way")
        return {"x": x, "id": ctx.id, "attempt": ctx.attempt, "queue": ctx.queue}

    handle = report.enqueue(7)
    assert handle.result() == {"outer": {"x": 7, "id": handle.id, "attempt": 1,
                                         "queue": "default"}}
    info = handle.info()
    assert (info.progress, info.progress_message) == (0.5, "half way")
    assert order == ["outer report 1", "job"]

    @eager_app.middleware  # registered after the first eager run: used from now on
    async def inner(job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        order.append("inner")
        return await call_next()

    order.clear()
    report.enqueue(8)
    assert order == ["outer report 1", "inner", "job"]


def test_async_enqueue_and_nested_jobs(eager_app: Conveyor) -> None:
    @eager_app.job
    async def leaf(n: int) -> int:
        return n + 1

    @eager_app.job
    async def parent_async(n: int) -> int:
        child = await leaf.enqueue_async(n)
        return int(await child.result_async()) * 10

    @eager_app.job
    def parent_thread(n: int) -> int:
        return int(leaf.enqueue(n).result()) * 100

    @eager_app.job
    async def parent_blocking_call(n: int) -> int:
        # the blocking enqueue from a coroutine that runs on the app's own loop
        return int(leaf.enqueue(n).result()) * 1000

    async def main() -> list[Any]:
        handles = [await parent_async.enqueue_async(1),
                   await parent_thread.enqueue_async(2),
                   await parent_blocking_call.enqueue_async(3)]
        handles += await leaf.enqueue_many_async([(10,), (20,)])
        return [await h.result_async() for h in handles]

    assert asyncio.run(main()) == [20, 300, 4000, 11, 21]
    assert parent_blocking_call.enqueue(4).result() == 5000
    assert [h.result() for h in leaf.enqueue_many([(1,), (2,)])] == [2, 3]


def test_delays_are_not_waited_for(eager_app: Conveyor) -> None:
    @eager_app.job
    async def later() -> str:
        return "done"

    assert later.enqueue_with(delay=3600).info().state is JobState.SUCCEEDED


def pid() -> int:
    return os.getpid()


def test_process_jobs_run_in_this_process() -> None:
    app = Conveyor(eager=True, url="memory://")
    try:
        job = app.job(executor="process")(pid)
        assert job.enqueue().result() == os.getpid()
    finally:
        app.close()


def test_jobs_waiting_from_before_are_left_alone(app: Conveyor) -> None:
    @app.job
    async def echo(x: int) -> int:
        return x

    waiting = echo.enqueue(1)  # not eager: stays queued for a worker
    with app.testing(url=None):  # same store, eager
        assert echo.enqueue(2).result() == 2
        unknown = app.enqueue_call("not_registered_here", [3], {}, force=True)
    info = waiting.info()
    assert (info.state, info.attempts) == (JobState.QUEUED, 0)
    assert unknown.info().state is JobState.QUEUED
    assert app.eager is False


def test_testing_uses_a_fresh_store_and_restores_the_app(app: Conveyor) -> None:
    @app.job
    async def echo(x: int) -> int:
        return x

    before = echo.enqueue(0)
    broker = app.broker
    url = app.url
    with app.testing() as same:
        assert same is app and app.eager and app.url == "memory://"
        inside = echo.enqueue(1)
        assert inside.result() == 1
        with pytest.raises(JobNotFound):
            before.info()
    with app.testing(), pytest.raises(JobNotFound):
        inside.info()
    assert (app.url, app.broker, app.eager) == (url, broker, False)
    assert before.info().state is JobState.QUEUED
    with pytest.raises(JobNotFound):
        inside.info()


def test_cli_reads_an_eager_job(db_url: str, cli: Any) -> None:
    app = Conveyor(url=db_url, eager=True)
    try:

        @app.job
        async def add(a: int, b: int) -> int:
            return a + b

        handle = add.enqueue(2, 3)
        status = cli.json("status", handle.id)
        assert (status["state"], status["result"], status["attempts"]) == ("succeeded", 5, 1)
    finally:
        app.close()


# -- the pytest plugin --------------------------------------------------------------------------


def _copy_examples(pytester: pytest.Pytester) -> None:
    package = pytester.mkpydir("examples")
    for name in ("hello.py", "test_hello.py"):
        shutil.copy(ROOT / "examples" / name, package / name)


def test_example_runs_with_the_ini_setting(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_examples(pytester)
    pytester.makeini("[pytest]\nconveyor_app = examples.hello:app\n")
    monkeypatch.setenv("CONVEYOR_URL", "sqlite:///not-touched.db")  # the fixtures override it
    result = pytester.runpytest_subprocess("examples/test_hello.py", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    assert not (pytester.path / "not-touched.db").exists()
    assert not (pytester.path / "conveyor.db").exists()


def test_example_runs_with_the_command_line_option(pytester: pytest.Pytester) -> None:
    _copy_examples(pytester)
    result = pytester.runpytest_subprocess(
        "examples/test_hello.py", "--conveyor-app", "examples.hello:app",
        "-k", "test_add or worker", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, deselected=4)


def test_overriding_the_app_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest
        from conveyor import Conveyor

        app = Conveyor()

        @app.job(queue="q")
        async def triple(x: int) -> int:
            return 3 * x

        @pytest.fixture
        def conveyor_app():
            with app.testing(eager=False):
                yield app

        @pytest.fixture
        def conveyor_worker_options():
            return {"queues": ["q"], "max_workers": 2}
    """)
    pytester.makepyfile("""
        from conftest import triple

        def test_worker(conveyor_app, conveyor_worker):
            assert conveyor_app.url == "memory://"
            handles = triple.enqueue_many([(i,) for i in range(5)])
            conveyor_worker.drain(timeout=30)
            assert [h.result() for h in handles] == [0, 3, 6, 9, 12]
            assert conveyor_worker.worker.queues == ["q"]

        def test_eager(conveyor_eager):
            assert triple.enqueue(2).info().result == 6
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_plugin_is_inert_for_suites_that_do_not_use_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import sys

        def test_plain():
            assert "conveyor.testing" in sys.modules  # loaded by its entry point...
            assert "conveyor.worker.pool" not in sys.modules  # ...and nothing more
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fixtures_without_an_app_fail_with_a_clear_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_needs_app(conveyor_app):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the conveyor_app fixture needs your app*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           "--conveyor-app", "no_such_module:app")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*conveyor_app: cannot import 'no_such_module'*"])


def test_drain_times_out_on_a_job_that_does_not_end(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import asyncio
        import pytest
        from conveyor import Conveyor

        app = Conveyor()

        @app.job
        async def forever() -> None:
            await asyncio.sleep(3600)

        @pytest.fixture
        def conveyor_app():
            with app.testing(eager=False):
                yield app

        @pytest.fixture
        def conveyor_worker_options():
            return {"grace": 0.1}
    """)
    pytester.makepyfile("""
        import pytest
        from conftest import forever

        def test_drain(conveyor_worker):
            forever.enqueue()
            with pytest.raises(TimeoutError, match="1 job of queues default still pending"):
                conveyor_worker.drain(timeout=0.5)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_examples_are_not_collected_by_this_suite() -> None:
    """examples/test_*.py run only through pytester, with the app named for them."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert Path(ROOT / "examples" / "test_hello.py").exists()
