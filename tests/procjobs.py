"""Jobs for tests/test_process_pool.py; they run in child processes, so they live here."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

from conveyor import Conveyor, JobContext, PermanentError, Retry

app = Conveyor(url="sqlite:///unused.db")


class Unlucky(Exception):
    """Listed in a job's permanent_errors."""


@app.job(executor="process")
def add(a: int, b: int) -> int:
    return a + b


@app.job(executor="process")
def pid() -> int:
    return os.getpid()


@app.job(executor="process")
def nap_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.job(executor="process")
def boom(message: str) -> None:
    raise ValueError(message)


@app.job(executor="process")
def give_up() -> None:
    raise PermanentError("no point retrying")


@app.job(executor="process", permanent_errors=(Unlucky,))
def unlucky() -> None:
    raise Unlucky("listed as permanent")


@app.job(executor="process")
def again() -> None:
    raise Retry(delay=2)


@app.job(executor="process")
def sleep_forever() -> None:
    time.sleep(1000)


@app.job(executor="process")
def busy_c_loop() -> int:
    return sum(itertools.repeat(0))  # never returns, never leaves C


@app.job(executor="process")
def busy_py_loop() -> None:
    while True:
        pass


@app.job(executor="process")
def die(code: int) -> None:
    os._exit(code)


@app.job(executor="process")
def not_json() -> object:
    return object()


@app.job(executor="process")
def with_progress(steps: int, ctx: JobContext) -> str:
    for i in range(1, steps + 1):
        ctx.progress(i / steps, f"step {i}")
    return f"{ctx.name}:{ctx.id}:{ctx.attempt}"


@app.job(executor="process")
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * 2


def plain_multiply(a: int, b: int) -> int:
    """Not a registered job: a plain function works too."""
    return a * b


class Nested:
    @staticmethod
    def hello(name: str) -> str:
        return f"hello {name}"
