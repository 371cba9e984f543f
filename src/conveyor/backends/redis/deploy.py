"""Where a Redis URL points, and the clients that reach it.

* ``redis://`` / ``rediss://``: one server (or a proxy in front of several).
* ``redis+cluster://HOST:PORT[,HOST:PORT...]`` / ``rediss+cluster://``: a Redis Cluster,
  any node given (the rest are discovered): see :mod:`.cluster`.
* ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` / ``rediss+sentinel://``: the
  master of SERVICE, found through Sentinel and followed through a failover: see
  :mod:`.sentinel`.

Any of them takes ``?replicas=N&replicas_timeout=SECONDS`` (writes wait for N replicas: see
:mod:`.replicas`), except Redis Cluster.

The broker asks this module for two things: an asyncio client (:func:`async_client`, one
per event loop) and a runner of scripts on blocking connections (:func:`blocking_scripts`,
for ``enqueue`` called outside an event loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from conveyor.errors import ConfigurationError, redact_url

SINGLE = "single"
CLUSTER = "cluster"
SENTINEL = "sentinel"

#: URL scheme -> the deployment it names
SCHEMES = {
    "redis": SINGLE, "rediss": SINGLE,
    "redis+cluster": CLUSTER, "rediss+cluster": CLUSTER,
    "redis+sentinel": SENTINEL, "rediss+sentinel": SENTINEL,
}


class Scripts(Protocol):
    """Runs Lua scripts by name on blocking connections (see ``client.BlockingScripts``)."""

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...

    def close(self) -> None: ...


def kind(url: str) -> str:
    """The deployment ``url`` names: :data:`SINGLE`, :data:`CLUSTER` or :data:`SENTINEL`."""
    scheme = url.split(":", 1)[0].lower()
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ConfigurationError(
            f"unsupported Redis URL scheme {scheme!r} in {redact_url(url)!r}") from None


def check_url(url: str) -> None:
    """Raise :class:`ConfigurationError` (without the password) for a URL that cannot be
    taken apart: a bad port, an unclosed ``[``, a Sentinel URL without a service, bad
    ``replicas``/``replicas_timeout`` parameters (see :mod:`.replicas`)."""
    deployment = kind(url)
    from conveyor.backends.redis import replicas

    if deployment == CLUSTER and replicas.split(url)[1] is not None:
        raise ConfigurationError(f"{redact_url(url)}: {replicas.REPLICAS}= is not supported "
                                 "with Redis Cluster")
    url = replicas.split(url)[0] if deployment != SENTINEL else url
    if deployment == CLUSTER:
        from conveyor.backends.redis import cluster

        cluster.check_url(url)
    elif deployment == SENTINEL:
        from conveyor.backends.redis import sentinel

        sentinel.check_url(url)
    else:
        from redis.asyncio.connection import parse_url

        try:
            parse_url(url)
        except ValueError:  # its message may quote a piece of the password: not shown
            raise malformed(url) from None


def malformed(url: str) -> ConfigurationError:
    """The error for a URL that cannot be taken apart (its password never shown)."""
    return ConfigurationError(
        f"malformed Redis URL {redact_url(url)}: check the host and port; a password "
        "with / ? # or @ in it must be percent-encoded")


def async_client(url: str) -> Any:
    """A redis-py asyncio client for ``url`` (decoding replies as text)."""
    deployment = kind(url)
    if deployment == CLUSTER:
        from conveyor.backends.redis import cluster

        return cluster.async_client(url)
    if deployment == SENTINEL:
        from conveyor.backends.redis import sentinel

        return sentinel.async_client(url)
    import redis.asyncio as aioredis

    from conveyor.backends.redis import replicas
    from conveyor.backends.redis.client import TEXT_ERRORS, pack_with_hiredis

    client = aioredis.Redis.from_url(
        replicas.split(url)[0], decode_responses=True, encoding_errors=TEXT_ERRORS,
        health_check_interval=10, socket_keepalive=True,
    )
    pack_with_hiredis(client)
    return client


def blocking_scripts(url: str) -> Scripts:
    """A thread-safe runner of scripts on blocking connections to ``url``."""
    deployment = kind(url)
    if deployment == CLUSTER:
        from conveyor.backends.redis import cluster

        return cluster.blocking_scripts(url)
    if deployment == SENTINEL:
        from conveyor.backends.redis import sentinel

        return sentinel.blocking_scripts(url)
    from conveyor.backends.redis import replicas
    from conveyor.backends.redis.client import BlockingScripts

    base, wait = replicas.split(url)
    return BlockingScripts(base, wait=wait)


__all__ = ["CLUSTER", "SCHEMES", "SENTINEL", "SINGLE", "Scripts", "async_client",
           "blocking_scripts", "check_url", "kind", "malformed"]
