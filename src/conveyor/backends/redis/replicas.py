"""Writes that wait for replicas: ``?replicas=N&replicas_timeout=SECONDS`` on a Redis URL.

Redis replicates asynchronously: a write is acknowledged once the master has it, and a
failover (Sentinel promoting a replica after the master died) loses the writes the replica
had not received yet. With ``replicas=N``, every script that changes what a caller is told
of (an enqueue, a settle, a cancel, a retry, ...) is followed on the same connection, in
the same round trip, by ``WAIT N timeout`` (after a replicated no-op, so that it covers all
the master holds, also what an earlier unconfirmed attempt stored): the call returns only
once N replicas confirmed they have it.

When fewer than N confirm within ``replicas_timeout`` (default 1 s), the call raises
:class:`ReplicasUnconfirmed`, a :class:`~conveyor.errors.StoreUnavailable`: the write *is*
on the master, but may be lost in a failover. The caller cannot tell which, and retrying
is safe: an enqueue retried with the same ``job_id`` raises
:class:`~conveyor.errors.DuplicateJob` once N replicas confirm (and
:class:`ReplicasUnconfirmed` until then); over HTTP, a retry with the same idempotency key
answers with the same job. Claims, heartbeats, progress and housekeeping do not wait:
losing one only makes a job run again, as a worker crash would.

Unconfirmed writes are logged once, as trouble of their own (the store answers: it is no
outage), and their end once, by the next write whose wait is confirmed (see
:class:`~conveyor.backends.outage.Outage`).

The two parameters are Conveyor's own: they are taken out of the URL before redis-py sees
it, and are valid on ``redis://`` and ``redis+sentinel://`` alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.backends.outage import Outage, WritesUnconfirmed, outage
from conveyor.errors import ConfigurationError, redact_url
from conveyor.urls import take_parameters

#: the URL query parameters read here
REPLICAS = "replicas"
TIMEOUT = "replicas_timeout"
#: seconds WAIT waits by default, and at most (below redis-py's 5 s socket timeout)
DEFAULT_TIMEOUT = 1.0
MOST_TIMEOUT = 4.0
#: the channel of the PUBLISH before each WAIT
CHANNEL = "conveyor:replicated"
#: scripts followed by WAIT: those whose effect a caller is told of
WAITED = frozenset({
    "enqueue", "enqueue_one", "settle", "cancel", "retry", "delete", "set_priority",
    "forget_idempotency", "queue_setting", "forget_queue", "schedules_publish",
    "schedule_pause",
})
#: plain commands followed by WAIT (idempotency records, queue caps, revoked sessions)
WAITED_COMMANDS = frozenset({"set", "hdel"})


class ReplicasUnconfirmed(WritesUnconfirmed):
    """A write reached the Redis master, but fewer replicas than asked confirmed it in
    time: it may be lost in a failover. Retrying an enqueue with the same job id (or
    idempotency key) is safe: it is deduplicated."""

    def __init__(self, url: str, confirmed: int, wanted: int, timeout: float) -> None:
        self.confirmed = confirmed
        super().__init__(url, f"{confirmed} of {wanted} replicas confirmed the write within "
                              f"{timeout:g} s; it is on the master but may be lost in a failover",
                         wanted)


@dataclass(frozen=True)
class Wait:
    """``WAIT replicas timeout`` after each waited write to the store at ``url`` (kept
    without credentials)."""

    url: str
    replicas: int
    timeout: float
    #: the store's :class:`Outage`, told of every unconfirmed and confirmed wait
    outage: Outage = field(compare=False, repr=False)

    @property
    def commands(self) -> list[tuple[Any, ...]]:
        """What follows a waited write: a PUBLISH to a channel nobody need listen to (it
        is replicated, so the WAIT after it covers everything the master had by then, also
        a job an earlier, unconfirmed attempt stored), then the WAIT."""
        return [("PUBLISH", CHANNEL, ""),
                ("WAIT", self.replicas, max(1, round(self.timeout * 1000)))]

    def queue(self, pipe: Any) -> None:
        """Add the commands of a wait to a redis-py pipeline (its last reply: WAIT's)."""
        for command in self.commands:
            pipe.execute_command(*command)

    def covers(self, script: str) -> bool:
        return script in WAITED

    def check(self, confirmed: Any) -> None:
        """Raise :class:`ReplicasUnconfirmed` when WAIT answered fewer than asked (logged
        once until a wait is confirmed again)."""
        if int(confirmed) < self.replicas:
            error = ReplicasUnconfirmed(self.url, int(confirmed), self.replicas, self.timeout)
            self.outage.note(error)
            raise error
        self.outage.confirmed()


def split(url: str) -> tuple[str, Wait | None]:
    """``url`` without Conveyor's replica parameters, and the wait they ask for (None
    without ``replicas``, or with ``replicas=0``). Bad values raise
    :class:`ConfigurationError` (the URL shown without credentials)."""
    stripped, ours = take_parameters(url, (REPLICAS, TIMEOUT))
    if not ours:
        return url, None
    return stripped, _wait(url, ours)


def _wait(url: str, given: dict[str, str]) -> Wait | None:
    try:
        replicas = int(given.get(REPLICAS, "0"))
        timeout = float(given.get(TIMEOUT, DEFAULT_TIMEOUT))
    except ValueError:
        replicas, timeout = -1, -1.0
    if replicas < 0 or not 0 < timeout <= MOST_TIMEOUT:
        raise ConfigurationError(
            f"{redact_url(url)}: {REPLICAS} must be a whole number >= 0 and {TIMEOUT} "
            f"seconds > 0 and <= {MOST_TIMEOUT:g}")
    if TIMEOUT in given and REPLICAS not in given:
        raise ConfigurationError(f"{redact_url(url)}: {TIMEOUT} needs {REPLICAS}=N")
    return Wait(redact_url(url), replicas, timeout, outage(url)) if replicas else None


class WaitingScript:
    """A script run as EVALSHA then WAIT in one round trip on one connection (redis-py's
    ``Script`` interface: ``await script(keys=..., args=...)``)."""

    def __init__(self, client: Any, script: Any, wait: Wait) -> None:
        self.client = client
        self.script = script
        self.wait = wait

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                       client: Any = None) -> Any:
        """Run the script and wait; on a pipeline (``client``), only queue the script: the
        pipeline's owner adds one WAIT after its commands."""
        from redis.exceptions import NoScriptError

        if client is not None:
            return await self.script(keys=keys, args=args, client=client)

        reply, confirmed = await self._run(keys, args)
        if isinstance(reply, NoScriptError):  # Redis restarted or its scripts were flushed
            await self.client.script_load(self.script.script)
            reply, confirmed = await self._run(keys, args)
        if isinstance(reply, BaseException):
            raise reply
        self.wait.check(confirmed)
        return reply

    async def _run(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, Any]:
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(self.script.sha, len(keys), *keys, *args)
        self.wait.queue(pipe)
        reply, *rest = await pipe.execute(raise_on_error=False)
        for error in rest:
            if isinstance(error, BaseException):
                raise error
        return reply, rest[-1]


def waiting_scripts(client: Any, scripts: dict[str, Any], wait: Wait | None) -> dict[str, Any]:
    """``scripts`` (``{name: Script}`` of ``client``) with the waited ones followed by
    WAIT; unchanged when ``wait`` is None."""
    if wait is None:
        return scripts
    return {name: WaitingScript(client, script, wait) if wait.covers(name) else script
            for name, script in scripts.items()}


async def command(client: Any, wait: Wait, name: str, *args: Any, **kwargs: Any) -> Any:
    """Plain command ``name`` (a client method) then WAIT, in one round trip."""
    pipe = client.pipeline(transaction=False)
    getattr(pipe, name)(*args, **kwargs)
    wait.queue(pipe)
    replies = await pipe.execute()
    wait.check(replies[-1])
    return replies[0]


__all__ = [
    "DEFAULT_TIMEOUT",
    "WAITED",
    "WAITED_COMMANDS",
    "ReplicasUnconfirmed",
    "Wait",
    "WaitingScript",
    "command",
    "split",
    "waiting_scripts",
]
