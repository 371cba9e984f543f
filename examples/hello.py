"""A small Conveyor app: run ``conveyor worker examples.hello:app`` and enqueue its jobs.

    conveyor enqueue add --args '[2, 3]'
    conveyor enqueue count_words --kwargs '{"text": "to be or not to be"}'
    conveyor status ID --wait
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from conveyor import Conveyor, JobContext, PermanentError, Retry

app = Conveyor()  # sqlite:///conveyor.db unless CONVEYOR_URL or --url says otherwise


@app.job
async def add(a: float, b: float) -> float:
    """The smallest job there is."""
    return a + b


@app.job(timeout=60)
async def count_words(ctx: JobContext, text: str) -> dict[str, int]:
    """Count words, reporting progress as it goes."""
    words = text.split()
    counts: Counter[str] = Counter()
    for i, word in enumerate(words, 1):
        counts[word.lower()] += 1
        if i % 1000 == 0 or i == len(words):
            ctx.progress(i / len(words), f"{i} of {len(words)} words")
            await asyncio.sleep(0)
    return dict(counts.most_common(10))


@app.job(retries=5, backoff=0.5)
async def flaky_fetch(url: str) -> str:
    """Fails now and then, like a real network call: retried with backoff."""
    if not url.startswith(("http://", "https://")):
        raise PermanentError(f"not a web address: {url}")
    if random.random() < 0.5:
        raise Retry(delay=0.2, reason="the server said 503")
    return f"fetched {url}"


@app.job(executor="process", timeout=30)
def crunch(n: int) -> int:
    """CPU-bound work in a child process, with a hard timeout."""
    return sum(i * i for i in range(n))


@app.job(queue="slow", retries=1)
def slow_report(ctx: JobContext, seconds: float) -> str:
    """Blocking work in a thread; checks ``ctx.cancelled`` so cancellation can stop it."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if ctx.cancelled:
            return "stopped early"
        ctx.progress(min(1.0, (time.monotonic() - start) / seconds))
        time.sleep(0.1)
    return "report ready"
