"""Storage backends, chosen by URL: ``sqlite:///path.db`` (default) or ``redis://host:port/db``."""

from __future__ import annotations

from conveyor.backends.base import Broker
from conveyor.errors import ConfigurationError


def open_broker(url: str, namespace: str, retention: float) -> Broker:
    """Build the backend for ``url``; it connects on :meth:`Broker.open`."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBroker

        return SQLiteBroker(url, namespace, retention)
    if scheme in ("redis", "rediss"):
        from conveyor.backends.redis import RedisBroker

        return RedisBroker(url, namespace, retention)
    raise ConfigurationError(
        f"unsupported URL scheme {scheme!r} in {url!r}; use sqlite:///PATH or redis://HOST"
    )


__all__ = ["Broker", "open_broker"]
