"""The store's health as the HTTP API sees it: ``GET /healthz`` answers 503 while the store
cannot be used, and the routes that need the store answer 503 at once while it is known to
be down, instead of each waiting for it.

One bounded probe (a ``PING`` on Redis; on SQLite a read, or while the store is known to be
down a write, since a locked or full database still reads) is shared by the requests
that come while it runs; a request waits :data:`PROBE_WAIT` seconds for it at most.

A read of the store (``GET`` or ``HEAD`` on those routes) that has not answered after the
app's ``store_timeout`` probes the store: when it cannot be used, the read answers 503 at
once (the store's client may take longer to give up: a host that does not answer, a name
that does not resolve); when it can, the read goes on. A read that fails with an error of
the store's connection answers 503 too, not 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.backends.outage import opened, outage_for, waits_out
from conveyor.errors import ConfigurationError, StoreUnavailable
from conveyor.http.paths import route_path

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.http")

#: seconds a request waits for the probe of the store at most
PROBE_WAIT = 1.0
#: seconds a client is told to wait before trying again
RETRY_AFTER = 5
#: paths of routes that need the store (below the point the API is mounted at)
STORE_PATHS = ("/jobs", "/uploads", "/queues", "/schedules", "/ui/api/")
#: the methods that only read (their routes are bounded in time, see StoreGate)
READS = ("GET", "HEAD")
#: the worker id and queue the probe uses (no worker or queue has them: nothing changes)
PROBE_ID = "conveyor-health-probe"


class StoreHealth:
    """Checks that the store of ``app`` can be used, one probe at a time."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._probe: asyncio.Task[None] | None = None

    def read_wait(self) -> float:
        """Seconds a read of the store runs before the store is probed: the app's
        ``store_timeout`` (what one store call retries for)."""
        return self.app.store_timeout

    def known_down(self) -> bool:
        """True while this process knows the store to be down (no round trip)."""
        return outage_for(self.app.broker).down

    async def trouble(self, writes: bool = True) -> str | None:
        """Why the store cannot be used now, in a few words; None when it can. ``writes``:
        for writes too (a store that only reads, such as a Redis master demoted to a
        replica, cannot be used then; ``False``: for reads)."""
        task = self._probe
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._probe = loop.create_task(self._run(), name="conveyor-health-probe")
            task.add_done_callback(_retrieve)  # a probe no request waited for to its end
        done, _ = await asyncio.wait({task}, timeout=PROBE_WAIT)
        outage = outage_for(self.app.broker)
        if not done:
            return outage.reason or "the store does not answer"
        error = task.exception()
        if error is None:
            return outage.reason if writes and outage.down and outage.reads_work else None
        if not writes and outage.reads_work and getattr(self.app.broker, "ping", None) is None:
            return None  # its probe was a write (SQLite), which says nothing of reads
        if isinstance(error, StoreUnavailable):
            return error.reason
        if self.app.broker.is_transient(error) or isinstance(error, ConfigurationError):
            return outage.reason or "the store cannot be used now"
        return "the store failed; see the server's log"

    async def _run(self) -> None:
        broker = self.app.broker
        outage = outage_for(broker)
        sent = time.monotonic()
        wrote = False
        try:
            await opened(broker)
            ping = getattr(broker, "ping", None)
            if ping is not None:
                await ping()
            elif outage.down:  # a write: a database that is locked or full still reads
                await self._write_probe()
                wrote = True
            else:
                await broker.ready_count([PROBE_ID], 1)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                outage.note(exc)
            elif not waits_out(broker, exc):  # noted (logged once per outage) if it does
                log.error("checking the store failed: %s: %s", type(exc).__name__, exc)
            raise
        outage.recovered(sent, wrote)  # a read that began before an outage does not end it

    async def _write_probe(self) -> None:
        """Write a row and take it away again: what a worker's heartbeat does (its lease
        lapses at once, so no listing of workers shows it)."""
        import os

        from conveyor.job import WorkerInfo

        broker = self.app.broker
        info = WorkerInfo(id=PROBE_ID, host="health-probe", pid=os.getpid(), queues=[],
                          concurrency=0, min_concurrency=0, max_concurrency=0)
        try:
            await broker.heartbeat(info, {}, 0.001)
        finally:
            await broker.unregister_worker(PROBE_ID)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class StoreGate:
    """ASGI middleware: ``GET /healthz`` answers 503 with the reason while the store cannot
    be used; the routes of :data:`STORE_PATHS` answer 503 at once while it is known to be
    down (after one bounded probe); their reads are bounded in time (see the module
    docstring). Other routes pass as they are."""

    def __init__(self, app: ASGIApp, health: StoreHealth) -> None:
        self.app = app
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            check = path == "/healthz" or (  # (OPTIONS reads nothing of the store)
                path.startswith(STORE_PATHS) and scope.get("method") != "OPTIONS"
                and self.health.known_down())
            reason = await self.health.trouble(  # (/healthz: whether writes work too)
                path == "/healthz" or scope.get("method") not in READS) if check else None
            if reason is not None:
                await _unavailable(scope, receive, send, reason, path == "/healthz")
                return
            if path.startswith(STORE_PATHS) and scope.get("method") in READS:
                await self._bounded_read(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _bounded_read(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run a read; answer 503 when it has not started its answer after
        :meth:`StoreHealth.read_wait` and the store cannot be used, or when it fails with
        trouble of the store (the read is cancelled; nothing it sends later goes out)."""
        started = answered = False

        async def guarded(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.health.read_wait())
                if done:
                    break
                if started:
                    continue  # answering: let it finish
                reason = await self.health.trouble(writes=False)
                if reason is not None and not started:
                    answered = True
                    task.cancel()
                    task.add_done_callback(_retrieve)
                    log.warning("%s %s: store unavailable: %s", scope.get("method"),
                                scope.get("path"), reason)
                    await _unavailable(scope, receive, send, reason)
                    return
        except asyncio.CancelledError:  # the server gave up on this request
            task.cancel()
            task.add_done_callback(_retrieve)
            raise
        error = None if task.cancelled() else task.exception()
        if error is None:
            task.result()  # re-raises a cancellation of the task itself
            return
        broker = self.health.app.broker
        # waits_out notes the trouble (a refusal too: a store that refuses this process
        # once open is unavailable, not the caller's fault)
        if started or not (isinstance(error, StoreUnavailable) or waits_out(broker, error)):
            raise error
        # a StoreUnavailable's reason names no host; a driver's error may: not shown
        reason = error.reason if isinstance(error, StoreUnavailable) else \
            outage_for(broker).reason or "the store cannot be used now"
        log.warning("%s %s: store unavailable: %s (%s)", scope.get("method"),
                    scope.get("path"), reason, error)
        answered = True
        await _unavailable(scope, receive, send, reason)


async def _unavailable(scope: Scope, receive: Receive, send: Send, reason: str,
                       health: bool = False) -> None:
    """Answer 503 with ``Retry-After`` and the reason (``/healthz`` adds its status)."""
    message = f"store unavailable: {reason}"
    body = {"status": "unavailable", "error": message} if health else {"error": message}
    response = JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER)})
    await response(scope, receive, send)
