"""Storage backends, chosen by URL: ``sqlite:///path.db`` (default), ``redis://host:port/db``,
``redis+cluster://host:port`` or ``redis+sentinel://host:port/service``; a Redis URL with
``?shard=queue`` spreads the namespace by queue (see ``backends/redis/sharded.py``)."""

from __future__ import annotations

from conveyor.backends.base import Broker
from conveyor.errors import ConfigurationError, redact_url

#: the URL schemes of the Redis backend (see conveyor.backends.redis.deploy)
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel",
                 "rediss+sentinel")


def open_broker(url: str, namespace: str, retention: float) -> Broker:
    """Build the backend for ``url``; it connects on :meth:`Broker.open`."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBroker

        return SQLiteBroker(url, namespace, retention)
    if scheme in REDIS_SCHEMES:
        try:
            from conveyor.backends.redis import RedisBroker
        except ImportError as exc:  # the plain install has no redis-py
            raise ConfigurationError(
                f"{scheme}:// needs the Redis extra: pip install 'conveyor[redis]' "
                f"({exc})") from None

        from conveyor.backends.redis.deploy import shard_option

        if shard_option(url)[1] is not None:  # ?shard=queue: see redis/sharded.py
            from conveyor.backends.redis.sharded import ShardedRedisBroker

            return ShardedRedisBroker(url, namespace, retention)
        return RedisBroker(url, namespace, retention)
    if scheme == "memory":  # tests in one process: see conveyor.backends.sqlite.memory
        from conveyor.backends.sqlite.memory import MemoryBroker

        return MemoryBroker(url, namespace, retention)
    raise ConfigurationError(
        f"unsupported URL scheme {scheme!r} in {redact_url(url)!r}; "
        "use sqlite:///PATH, redis://HOST or memory://"
    )


class MissingStore(ConfigurationError):
    """The store's file (or its directory) does not exist, and was not to be created: see
    :func:`require_existing`; directories are never created."""

    def __init__(self, path: str, message: str = "") -> None:
        super().__init__(message or f"no SQLite database at {path}")
        self.path = path


def require_existing(broker: Broker, reads: bool = False) -> Broker:
    """Make ``broker`` (before it opens) use only a store that exists already: for read-only
    tools. An SQLite file is then never created; a missing one raises :class:`MissingStore`.
    A Redis database always exists; with ``reads`` (a tool that only reads) a replica is
    read as it is (see :meth:`Broker.only_existing`)."""
    broker.only_existing(reads)
    return broker


def missing_store(broker: Broker) -> str | None:
    """The path of ``broker``'s SQLite database when the file does not exist yet, else None
    (a store that exists, or one that is not a file)."""
    from conveyor.backends.sqlite import SQLiteBroker

    if isinstance(broker, SQLiteBroker) and not broker.settings.path.exists():
        return str(broker.settings.path.absolute())
    return None


__all__ = ["Broker", "MissingStore", "missing_store", "open_broker", "require_existing"]
