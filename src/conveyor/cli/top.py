"""``conveyor top``: a live view of the queues, rates, workers and recent failures.

Everything shown that comes from jobs or workers (names, queues, errors, hosts) is user data:
it is rendered as plain :class:`~rich.text.Text`, never parsed as markup, and control
characters are replaced so a job's error cannot move the cursor or change the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text

from conveyor.app import Conveyor
from conveyor.backends import require_existing
from conveyor.cli.loading import add_store_location, resolve_app
from conveyor.cli.output import Col, fitted_table, printable
from conveyor.job import ALL_STATES, FINAL_STATES, JobRecord, JobState, WorkerInfo
from conveyor.logs import quiet_for_commands
from conveyor.urls import redact_url

#: samples kept for the sparklines
HISTORY = 60
#: dead jobs listed under "recent failures"
RECENT_FAILURES = 5
#: longest error shown for a failure
ERROR_WIDTH = 80
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
#: seconds an admin query keeps retrying an unreachable store
RETRY_FOR = 5.0


def add_top_parser(sub: Any) -> None:
    """Register ``conveyor top`` and its options."""
    p = sub.add_parser("top", help="live view of queues, rates, workers and recent failures")
    p.add_argument("--interval", type=_positive_float, default=1.0,
                   help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true",
                   help="print one frame and exit (implied when stdout is not a terminal)")
    add_store_location(p)
    p.add_argument("--app", help="module:attribute of your app, to take its URL")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


# -- plain text from user data ----------------------------------------------------------------
def clean(value: object, width: int | None = None) -> str:
    """``value`` as one line of printable text: control characters become ``?``, runs of
    whitespace one space, and it is cut to ``width`` characters with an ellipsis."""
    text = " ".join(printable(str(value)).split())
    if width is not None and len(text) > width:
        text = text[: max(width - 1, 0)] + "…"
    return text


def plain(value: object, width: int | None = None, style: str = "") -> Text:
    """User data as a Text that is never parsed as markup."""
    return Text(clean(value, width), style=style)


def sparkline(values: Sequence[float]) -> str:
    """One block character per value, scaled to the largest; empty for no values."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARK_BLOCKS[0] * len(values)
    last = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[min(last, round(max(v, 0.0) / top * last))] for v in values)


def _age(ts: float, now: float) -> str:
    if not ts:
        return "-"
    delta = max(now - ts, 0.0)
    return f"{delta:.1f}s" if delta < 120 else f"{delta / 60:.0f}m"


# -- what one refresh reads, and the rates between refreshes -----------------------------------
@dataclass
class Snapshot:
    """The store as one refresh saw it."""

    at: float
    counts: dict[str, dict[str, int]]
    workers: list[WorkerInfo]
    failures: list[JobRecord]

    def total(self, states: Sequence[JobState] | None = None) -> int:
        """Jobs in ``states`` (all states by default) over every queue."""
        names = [str(s) for s in (ALL_STATES if states is None else states)]
        return sum(per.get(name, 0) for per in self.counts.values() for name in names)


async def take_snapshot(app: Conveyor) -> Snapshot:
    """Read counts, live workers and the last dead jobs."""
    broker = app.broker
    counts = await broker.counts()
    workers = await broker.workers()
    # listed newest-created first; a page of them re-sorted by when they died
    # summaries: a dead job's arguments or traceback may be large, and only its error shows
    dead = [summary.record for summary in await broker.list_summaries(
        state=JobState.DEAD, limit=RECENT_FAILURES * 20)]
    dead.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
    failures = dead[:RECENT_FAILURES]
    return Snapshot(time.monotonic(), counts, workers, failures)


@dataclass
class Rates:
    """Jobs per second between consecutive snapshots, with their recent history."""

    finished: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    failed: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    enqueued: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    previous: Snapshot | None = None

    def add(self, snap: Snapshot) -> None:
        """Record ``snap``; from the second one on, append a rate to every series.

        Counts can also fall (retention purges, retried dead jobs); a fall counts as 0.
        """
        before = self.previous
        self.previous = snap
        if before is None or snap.at <= before.at:
            return
        span = snap.at - before.at

        def rate(states: Sequence[JobState] | None) -> float:
            return max(snap.total(states) - before.total(states), 0) / span

        self.finished.append(rate(FINAL_STATES))
        self.failed.append(rate((JobState.DEAD,)))
        self.enqueued.append(rate(None))


# -- the frame --------------------------------------------------------------------------------
class Fitted:
    """A bordered table whose columns fit the width it is drawn in, as the admin commands'
    tables do (:func:`conveyor.cli.output.fitted`): names, queues and errors are cut with an
    ellipsis, optional columns left out, ids and numbers kept whole."""

    def __init__(self, cols: Sequence[Col], title: str, empty: str) -> None:
        self.cols = cols
        self.title = title
        self.empty = empty
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: str | Text) -> None:
        self.rows.append([c if isinstance(c, Text) else plain(c) for c in cells])

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # a bordered table takes 3 cells between columns and 4 at its edges
        table, total = fitted_table(self.cols, self.rows, options.max_width - 4, 3,
                                    title=self.title, title_justify="left",
                                    caption=None if self.rows else self.empty)
        yield from console.render(table, options.update(width=max(total + 4,
                                                                  options.max_width)))


def queues_table(counts: Mapping[str, Mapping[str, int]]) -> Fitted:
    """Jobs per queue and state, with a total row when there are several queues."""
    table = Fitted([Col("queue", fit=8), *(Col(str(s), right=True) for s in ALL_STATES)],
                   "queues", "(no jobs)")
    for queue in sorted(counts):
        table.add_row(queue, *(str(counts[queue].get(str(s), 0)) for s in ALL_STATES))
    if len(counts) > 1:
        table.add_row(Text("all", style="bold"),
                      *(Text(str(sum(per.get(str(s), 0) for per in counts.values())),
                             style="bold") for s in ALL_STATES))
    return table


def rates_table(rates: Rates) -> Table:
    """Finished, failed and enqueued jobs per second, now and as a sparkline."""
    table = Table(Column("rate", no_wrap=True), Column("now", justify="right"),
                  Column(f"last {HISTORY} samples", no_wrap=True),
                  title="rates (jobs/s)", title_justify="left")
    series = (("finished", rates.finished, "green"), ("failed", rates.failed, "red"),
              ("enqueued", rates.enqueued, "cyan"))
    for label, values, style in series:
        now = f"{values[-1]:.1f}" if values else "-"
        table.add_row(label, now, Text(sparkline(list(values)), style=style))
    return table


WORKER_COLUMNS = (Col("host", fit=8, drop=3), Col("pid", right=True, drop=2),
                  Col("queues", fit=8),
                  *(Col(h, right=True) for h in ("cur", "min", "max", "busy", "done", "failed")),
                  Col("heartbeat", right=True, drop=1))


def workers_table(workers: Sequence[WorkerInfo], now: float) -> Fitted:
    """Live worker processes."""
    table = Fitted(WORKER_COLUMNS, f"workers ({len(workers)})", "(no live workers)")
    for w in sorted(workers, key=lambda w: (w.host, w.pid)):
        table.add_row(w.host, str(w.pid), ",".join(w.queues),
                      str(w.concurrency), str(w.min_concurrency), str(w.max_concurrency),
                      str(w.busy), str(w.processed), str(w.failed), _age(w.heartbeat_at, now))
    return table


FAILURE_COLUMNS = (Col("id"), Col("name", fit=8), Col("error", fit=12))


def failures_table(failures: Sequence[JobRecord]) -> Fitted:
    """The last dead jobs, newest first: one line each at any width."""
    table = Fitted(FAILURE_COLUMNS, "recent failures", "(none)")
    for r in failures:
        table.add_row(r.id, r.name, plain(r.error or "", ERROR_WIDTH))
    return table


def render(snap: Snapshot, rates: Rates, source: str, live: bool = True) -> RenderableType:
    """One frame of ``conveyor top`` (``live``: on the live screen, which ``q`` quits)."""
    header = Text.assemble(("conveyor top", "bold"), "  ", Text(clean(source)), "  ",
                           time.strftime("%H:%M:%S"), ("   q: quit" if live else "", "dim"))
    now = time.time()
    return Group(header, queues_table(snap.counts), rates_table(rates),
                 workers_table(snap.workers, now), failures_table(snap.failures))


# -- the terminal -----------------------------------------------------------------------------
@contextlib.contextmanager
def cbreak(fd: int | None) -> Iterator[bool]:
    """Put the terminal on ``fd`` in cbreak mode (keys arrive one by one, unechoed; Ctrl-C
    still interrupts) and restore it on exit. Yields whether keys can be read."""
    if fd is None or not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_keys(fd: int) -> str:
    """The keys typed so far, without blocking."""
    keys = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 64)
        if not chunk:  # end of input: treat as quit
            return "q"
        keys += chunk
    return keys.decode(errors="replace")


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None


async def _wait_for_quit(fd: int | None, seconds: float) -> bool:
    """Sleep ``seconds``, watching for ``q``; return True when it was pressed."""
    deadline = time.monotonic() + seconds
    while True:
        if fd is not None and "q" in read_keys(fd).lower():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, 0.05))


async def top(app: Conveyor, interval: float, once: bool, console: Console) -> int:
    """Run the view until ``q`` (or print one frame with ``once``)."""
    source = f"{redact_url(app.url)} ({app.namespace})"
    await app.broker.open()
    rates = Rates()
    if once:
        rates.add(await take_snapshot(app))
        assert rates.previous is not None
        console.print(render(rates.previous, rates, source, live=False))
        return 0
    with cbreak(_stdin_fd()) as keys:
        fd = _stdin_fd() if keys else None
        with Live(console=console, screen=True, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                snap = await take_snapshot(app)
                rates.add(snap)
                live.update(render(snap, rates, source), refresh=True)
                if await _wait_for_quit(fd, interval):
                    return 0


def run_top(args: argparse.Namespace) -> int:
    """``conveyor top``; Ctrl-C quits like ``q``."""
    app = resolve_app(args.app, args.url, args.namespace)
    require_existing(app.broker, reads=True)  # a view: it never creates a store
    app.broker.retry_for = min(app.store_timeout, RETRY_FOR)
    quiet_for_commands()
    console = Console(highlight=False, markup=False, emoji=False)
    once = args.once or not console.is_terminal

    async def body() -> int:
        try:
            return await top(app, args.interval, once, console)
        finally:
            await app.broker.close()

    try:
        return asyncio.run(body())
    except KeyboardInterrupt:
        return 0
