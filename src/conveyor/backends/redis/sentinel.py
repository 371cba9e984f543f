"""Redis Sentinel URLs (see :mod:`.deploy`): the master of a service, followed through
failovers.

``redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]`` (or
``rediss+sentinel://`` for TLS to the sentinels and the master). The hosts are sentinels
(port 26379 when not given); the user-info is the master's credentials. Query parameters:
``sentinel_username`` and ``sentinel_password`` (the sentinels' own, when they ask for one;
never shown), and Conveyor's ``replicas``/``replicas_timeout`` (see :mod:`.replicas`).

Every new connection asks the sentinels where the master is. After a failover, the old
master's connections fail (closed, or ``READONLY`` once it comes back as a replica, which
redis-py turns into a connection error); the broker retries them within its retry window
and the new connections reach the new master. When no master is found, the reason says
why (see :mod:`.sentinel_master`): no sentinel answers, the sentinels know no such service,
or its master is down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, unquote

from conveyor.backends.redis import replicas
from conveyor.errors import ConfigurationError, redact_url

if TYPE_CHECKING:
    from conveyor.backends.redis.deploy import Scripts

#: the sentinels' port when a host has none
DEFAULT_PORT = 26379
#: query parameters of a Sentinel URL (besides Conveyor's replica parameters)
PARAMETERS = ("sentinel_username", "sentinel_password")
#: the hint of an address that cannot be read: often a password that was not encoded
ENCODE = "a password with / ? # or @ in it must be percent-encoded"


@dataclass(frozen=True)
class Target:
    """What a Sentinel URL names."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: connection arguments for the sentinels themselves (their password among them)
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)


def _malformed(url: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"malformed Redis Sentinel URL {redact_url(url)}: {why}")


def parse(url: str) -> Target:
    """Take a Sentinel URL apart (without Conveyor's replica parameters); raise
    :class:`ConfigurationError` (the URL shown without credentials) when it cannot be."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise _malformed(url, "expected redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE")
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = [_address(url, part) for part in hosts.split(",")]
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts:
        raise _malformed(url, "no service name: add /SERVICE (the name the sentinels "
                              "monitor) after the hosts")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise _malformed(url, "expected /SERVICE or /SERVICE/DB (DB a number)")
    tls = scheme.lower().startswith("rediss")
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    if tls:
        sentinel_kwargs["ssl"] = True
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in PARAMETERS:
            raise _malformed(url, f"unknown parameter {name!r} (known: "
                                  f"{', '.join(PARAMETERS)}, {replicas.REPLICAS}, "
                                  f"{replicas.TIMEOUT})")
        sentinel_kwargs[name.removeprefix("sentinel_")] = value
    return Target(sentinels, parts[0], int(parts[1]) if len(parts) == 2 else 0, tls,
                  username, password, sentinel_kwargs)


def _address(url: str, text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[IPV6][:PORT]`` as (host, port)."""
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise _malformed(url, f"bad sentinel address; {ENCODE}")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _malformed(url, f"a sentinel host is missing; {ENCODE}")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise _malformed(url, f"bad port; a sentinel is HOST:PORT; {ENCODE}")
    return host, port


def check_url(url: str) -> None:
    """Raise :class:`ConfigurationError` for a URL that cannot be used."""
    parse(replicas.split(url)[0])


def _master_kwargs(target: Target) -> dict[str, Any]:
    from conveyor.backends.redis.client import TEXT_ERRORS

    kwargs: dict[str, Any] = {
        "db": target.db, "decode_responses": True, "encoding_errors": TEXT_ERRORS,
        "health_check_interval": 10, "socket_keepalive": True, "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
    }
    if target.password is not None:
        kwargs["password"] = target.password
    if target.username is not None:
        kwargs["username"] = target.username
    if target.tls:
        kwargs["ssl"] = True
    return kwargs


def async_client(url: str) -> Any:
    """A redis-py asyncio client of the master (decoding replies as text); closing it
    closes its connections to the sentinels too."""
    from redis.asyncio import Redis

    from conveyor.backends.redis.client import pack_with_hiredis
    from conveyor.backends.redis.sentinel_master import AsyncFindingSentinel

    target = parse(replicas.split(url)[0])
    manager = cast(Any, AsyncFindingSentinel)(target.sentinels,
                                              sentinel_kwargs=target.sentinel_kwargs)

    class SentinelRedis(Redis):
        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            try:
                await super().aclose(close_connection_pool)
            finally:
                await manager.aclose()

    client = manager.master_for(target.service, redis_class=SentinelRedis,
                                **_master_kwargs(target))
    pack_with_hiredis(client)
    return client


class _SentinelScripts:
    """:class:`~conveyor.backends.redis.client.BlockingScripts` on connections that find
    the master through the sentinels; closing it closes those to the sentinels too."""

    def __init__(self, url: str) -> None:
        from conveyor.backends.redis.client import BlockingScripts
        from conveyor.backends.redis.sentinel_master import FindingSentinel

        base, wait = replicas.split(url)
        target = parse(base)
        self._manager = cast(Any, FindingSentinel)(target.sentinels,
                                                   sentinel_kwargs=target.sentinel_kwargs)
        self._master = self._manager.master_for(target.service, **_master_kwargs(target))
        self._scripts = BlockingScripts(url, pool=self._master.connection_pool, wait=wait)

    def call(self, name: str, keys: Any, args: Any) -> Any:
        return self._scripts.call(name, keys, args)

    def close(self) -> None:
        self._scripts.close()
        self._master.connection_pool.disconnect()
        self._manager.close()


def blocking_client(url: str) -> Any:
    """A plain blocking redis-py client of the master (decoding replies as text)."""
    from conveyor.backends.redis.sentinel_master import FindingSentinel

    target = parse(replicas.split(url)[0])
    manager = cast(Any, FindingSentinel)(target.sentinels,
                                         sentinel_kwargs=target.sentinel_kwargs)
    return manager.master_for(target.service, **_master_kwargs(target))


def blocking_scripts(url: str) -> Scripts:
    """A thread-safe runner of scripts on blocking connections to the master."""
    return _SentinelScripts(url)


__all__ = ["DEFAULT_PORT", "PARAMETERS", "Target", "async_client", "blocking_client",
           "blocking_scripts", "check_url", "parse"]
