"""Where a Redis URL points, and the clients that reach it.

* ``redis://`` / ``rediss://``: one server (or a proxy in front of several).
* ``redis+cluster://HOST:PORT[,HOST:PORT...]`` / ``rediss+cluster://``: a Redis Cluster,
  any node given (the rest are discovered): see :mod:`.cluster`.
* ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` / ``rediss+sentinel://``: the
  master of SERVICE, found through Sentinel and followed through a failover: see
  :mod:`.sentinel`.

Conveyor's own URL parameters are taken out of the URL before redis-py sees it:
``shard=queue`` (see :mod:`.sharded`) spreads a namespace over the slots of a cluster, one
hash tag per queue; ``replicas=N&replicas_timeout=SECONDS`` (see :mod:`.replicas`) makes
writes wait for N replicas, on any deployment but a cluster.

The broker asks this module for two things: an asyncio client (:func:`async_client`, one
per event loop) and a runner of scripts on blocking connections (:func:`blocking_scripts`,
for ``enqueue`` called outside an event loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from conveyor.errors import ConfigurationError, redact_url
from conveyor.urls import take_parameters

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


#: Conveyor's URL parameter that shards a namespace, and the values it takes
SHARD_PARAM = "shard"
SHARD_MODES = ("queue",)


def shard_option(url: str) -> tuple[str, str | None]:
    """``url`` without its ``shard`` parameter, and that parameter's value (None: not given);
    a value other than those of :data:`SHARD_MODES` raises :class:`ConfigurationError`."""
    base, taken = take_parameters(url, (SHARD_PARAM,))
    mode = taken.get(SHARD_PARAM)
    if mode is not None and mode not in SHARD_MODES:
        raise ConfigurationError(
            f"{redact_url(base)}: the URL parameter shard= takes "
            + " or ".join(SHARD_MODES) + f", not {mode!r}")
    return base, mode


def check_url(url: str) -> None:
    """Raise :class:`ConfigurationError` (without the password) for a URL that cannot be
    taken apart: a bad port, an unclosed ``[``, a Sentinel URL without a service, bad
    ``replicas``/``replicas_timeout`` parameters (see :mod:`.replicas`), or one that names
    ``shard=`` (read by :func:`conveyor.backends.open_broker`, not by a plain broker)."""
    if shard_option(url)[1] is not None:
        raise ConfigurationError(f"{redact_url(url)}: ?shard= is for open_broker (or "
                                 "ShardedRedisBroker), not a plain RedisBroker")
    from conveyor.backends.redis import replicas

    special = _special(url)
    if special is None:
        from redis.asyncio.connection import parse_url

        plain = replicas.split(url)[0]  # a bad replicas= raises its own error
        try:
            parse_url(plain)
        except ValueError:  # its message may quote a piece of the password: not shown
            raise malformed(url) from None
        return
    if kind(url) == CLUSTER and replicas.split(url)[1] is not None:
        raise ConfigurationError(f"{redact_url(url)}: {replicas.REPLICAS}= is not supported "
                                 "with Redis Cluster")
    special.check_url(url)


def _special(url: str) -> Any:
    """The module that makes the clients of a cluster or Sentinel URL (they hold the
    deployment-specific parts); None for one server."""
    deployment = kind(url)
    if deployment == CLUSTER:
        from conveyor.backends.redis import cluster

        return cluster
    if deployment == SENTINEL:
        from conveyor.backends.redis import sentinel

        return sentinel
    return None


def malformed(url: str) -> ConfigurationError:
    """The error for a URL that cannot be taken apart (its password never shown)."""
    return ConfigurationError(
        f"malformed Redis URL {redact_url(url)}: check the host and port; a password "
        "with / ? # or @ in it must be percent-encoded")


def async_client(url: str) -> Any:
    """A redis-py asyncio client for ``url`` (decoding replies as text)."""
    special = _special(url)
    if special is not None:
        return special.async_client(url)
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
    special = _special(url)
    if special is not None:
        return special.blocking_scripts(url)  # type: ignore[no-any-return]
    from conveyor.backends.redis import replicas
    from conveyor.backends.redis.client import BlockingScripts

    base, wait = replicas.split(url)
    return BlockingScripts(base, wait=wait)


__all__ = ["CLUSTER", "SCHEMES", "SENTINEL", "SHARD_MODES", "SHARD_PARAM", "SINGLE", "Scripts",
           "async_client", "blocking_scripts", "check_url", "kind", "malformed",
           "shard_option"]
