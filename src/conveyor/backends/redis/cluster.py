"""Redis Cluster URLs (see :mod:`.deploy`):
``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...][/0][?OPTIONS]`` and
``rediss+cluster://`` (TLS).

The nodes given are seeds: the client reads the slot map from the first that answers and
finds the rest. Every key of a namespace carries the hash tag ``{namespace}``, so a
namespace lives in one slot: each script and pipeline runs whole on the master that owns
it. redis-py's cluster clients follow MOVED and ASK replies, retry TRYAGAIN, and read the
slot map again after a failover or a slot moves. They do not retry a call whose connection
failed or timed out: the broker does (see ``broker._reason``), within the operation's
deadline, and knows which calls are safe to send again (an enqueue carries its token).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import redis as syncredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import ClusterPipeline, PipelineCommand, TransactionStrategy
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.backends.redis.client import (
    LOST,
    TEXT_ERRORS,
    BlockingScripts,
    _sha,
    connection_class,
)
from conveyor.backends.redis.scripts import NAMES, source
from conveyor.errors import ConfigurationError, redact_url

if TYPE_CHECKING:
    from conveyor.backends.redis.deploy import Scripts


def _parts(url: str) -> tuple[str, str, list[str], str]:
    """``url`` taken apart: ``redis`` or ``rediss``, the user-info with its ``@`` (or
    nothing), the seeds (``HOST:PORT``) and what follows them (``/0``, ``?options``)."""
    from conveyor.backends.redis.deploy import malformed

    scheme, sep, rest = url.partition("://")
    if not sep:
        raise malformed(url)
    base = "rediss" if scheme.lower().startswith("rediss") else "redis"
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    return base, userinfo + at, hosts.split(","), tail


def _options(url: str) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The connection options of ``url`` (as redis-py reads a ``redis://`` URL) and its
    seed nodes; :class:`ConfigurationError` when it cannot be taken apart."""
    from redis.connection import parse_url as parse_redis_url

    from conveyor.backends.redis.deploy import malformed

    parse_url: Any = parse_redis_url
    base, userinfo, hosts, tail = _parts(url)
    options: dict[str, Any] = {}
    seeds: list[tuple[str, int]] = []
    for seed in hosts:
        try:
            parsed = parse_url(f"{base}://{userinfo}{seed}{tail}")
        except ValueError:  # its message may quote a piece of the password: not shown
            raise malformed(url) from None
        if not parsed.get("host") or "path" in parsed:
            raise malformed(url)
        seeds.append((str(parsed.pop("host")), int(parsed.pop("port", 6379))))
        options = parsed
    path = tail.split("?", 1)[0].split("#", 1)[0].strip("/")
    db = options.pop("db", 0)
    if db not in (0, None) or path not in ("", "0"):
        raise ConfigurationError(
            f"{redact_url(url)}: a Redis Cluster has only database 0; drop /{path or db} "
            "from the URL")
    if options.pop("connection_class", None) is not None:  # rediss: SSLConnection
        options["ssl"] = True
    return options, seeds


def check_url(url: str) -> None:
    """Raise :class:`ConfigurationError` (without the password) for a URL that cannot be
    used: one that cannot be taken apart, a database other than 0."""
    _options(url)


def async_client(url: str) -> Any:
    """A redis-py asyncio cluster client for ``url`` (decoding replies as text); its
    pipelines load a script a node does not know and run that command again.

    redis-py would send a call again after a connection error or a timeout (3 times by
    default, each waiting out ``socket_timeout``): that re-sends an enqueue whose reply was
    lost, and stretches one call on a hung master far past the broker's deadline. No call
    is retried here; the broker retries, within its deadline."""
    options, seeds = _options(url)
    client = _AsyncCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in seeds],
        decode_responses=True, encoding_errors=TEXT_ERRORS, health_check_interval=10,
        socket_keepalive=True, retry=Retry(NoBackoff(), 0), **options,
    )
    client.seeds = ",".join(_parts(url)[2])
    # the nodes of the slot map are made from connection_kwargs
    chosen = connection_class(client.connection_kwargs["connection_class"])
    client.connection_kwargs["connection_class"] = chosen
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = chosen
    return client


def blocking_scripts(url: str) -> Scripts:
    """A thread-safe runner of scripts on blocking connections to ``url``."""
    return ClusterScripts(url)


#: redirections one blocking call follows before it gives up (the broker then retries)
REDIRECTIONS = 5
#: marks a queued command without a key that runs where the pipeline's keys are
_HOME = "conveyor_home"


@cache
def _script_by_sha() -> dict[str, str]:
    return {_sha(source(name)): source(name) for name in NAMES}


class _Pipeline(ClusterPipeline):
    """redis-py's asyncio cluster pipeline, made to run what the broker sends it (all the
    keys of one pipeline in one slot):

    * EVALSHA can be queued (``Script(..., client=pipeline)``) and survives a node
      without the script: unlike a single server's pipeline, redis-py's cluster pipeline
      does not load the scripts it runs. Only the commands that failed with NOSCRIPT (so
      did not run) are sent again, once the script is loaded on every master.
    * TIME can be queued: it runs on the node of the pipeline's keys.
    * In a transaction, a command is queued as it is (redis-py runs each in a thread of
      its own to find its slot, and hands its ``keys`` option to reply parsers that take
      none).
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> _Pipeline:
        strategy: Any = self._execution_strategy
        if not isinstance(strategy, TransactionStrategy) or args[0] in ("WATCH", "UNWATCH"):
            super().execute_command(*args, **kwargs)
            return self
        kwargs.pop("keys", None)
        strategy._pipeline_slots.add(self.cluster_client.keyslot(args[1]))
        queue = strategy._command_queue
        queue.append(PipelineCommand(len(queue), *args, **kwargs))
        return self

    def time(self, **kwargs: Any) -> Any:
        return self.execute_command("TIME", **kwargs, **{_HOME: True})

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> _Pipeline:
        """Queue an EVALSHA, as ``Script(..., client=pipeline)`` does (redis-py blocks it
        in cluster pipelines; it runs on the node of its keys, which share a slot, as all
        keys of a namespace do). Awaited, it does not empty the pipeline as awaiting the
        pipeline itself would."""
        self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
        return self

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        await self._aim_keyless()
        strategy: Any = self._execution_strategy
        commands = [cmd.args for cmd in strategy._command_queue]
        results = list(await super().execute(False, allow_redirections))
        client = self.cluster_client
        loaded: set[str] = set()
        for index, (args, result) in enumerate(zip(commands, results, strict=True)):
            if isinstance(result, NoScriptError) and str(args[0]).upper() == "EVALSHA":
                sha = str(args[1])
                if sha not in loaded:
                    await client.script_load(_script_by_sha()[sha])
                    loaded.add(sha)
                try:
                    results[index] = await client.execute_command(*args)
                except Exception as exc:  # kept in its place, as the pipeline does
                    results[index] = exc
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


    async def _aim_keyless(self) -> None:
        """Send the TIME commands queued to the node of the first command with a key."""
        strategy: Any = self._execution_strategy
        queue = strategy._command_queue
        if not any(cmd.kwargs.get(_HOME) for cmd in queue):
            return
        client = self.cluster_client
        if client._initialize:
            await client.initialize()
        keyed = next((cmd for cmd in queue if not cmd.kwargs.get(_HOME)), None)
        node = None if keyed is None else client.nodes_manager.get_node_from_slot(
            client.keyslot(keyed.args[1]))
        for cmd in queue:
            if cmd.kwargs.pop(_HOME, False) and node is not None:
                cmd.kwargs["target_nodes"] = node


def not_a_cluster(seeds: str) -> ConfigurationError:
    """What callers see when the node(s) ``seeds`` of a cluster URL are not in a cluster."""
    return ConfigurationError(f"{seeds} is not a Redis Cluster node: use redis://")


class _AsyncCluster(AsyncRedisCluster):
    """redis-py's asyncio cluster client, its pipelines made by :class:`_Pipeline`."""

    #: the seeds of the URL, as ``HOST:PORT[,HOST:PORT...]`` (for error messages)
    seeds = ""

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            if "Cluster mode is not enabled" in str(exc):
                raise not_a_cluster(self.seeds) from exc
            raise _cause(exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)
        pipeline: Any = _Pipeline  # its abstract attribute is set by ClusterPipeline
        return pipeline(self, transaction)


def _cause(error: RedisClusterException) -> Exception:
    """What made the client give up reading the slot map: the last node's connection error
    (unreachable, refused credentials) when there is one, for the broker to judge."""
    cause = error.__cause__
    return cause if isinstance(cause, RedisError) else error


class ClusterScripts:
    """Runs scripts on the master that owns their first key's slot, each master through a
    :class:`~conveyor.backends.redis.client.BlockingScripts` of its own (redis-py's
    blocking cluster client costs several times more per call); safe to use from several
    threads at once.

    The slot map is read (CLUSTER SLOTS) from a seed or a known node on first use. A MOVED
    reply re-aims its slot and the call goes on; an ASK reply sends that one call, after
    ASKING, to the node importing the slot. Connection trouble and CLUSTERDOWN drop the
    map (read again by the next call) and raise, for the broker to retry, as TRYAGAIN
    does.
    """

    def __init__(self, url: str) -> None:
        base, userinfo, _, tail = _parts(url)
        self._node_url = f"{base}://{userinfo}{{host}}:{{port}}{tail}".format
        _, self._seeds = _options(url)
        self._slots: dict[int, tuple[str, int]] | None = None
        self._nodes: dict[tuple[str, int], BlockingScripts] = {}
        self._lock = threading.Lock()

    def _node(self, address: tuple[str, int]) -> BlockingScripts:
        with self._lock:
            node = self._nodes.get(address)
            if node is None:
                host, port = address
                node = self._nodes[address] = BlockingScripts(
                    self._node_url(host=f"[{host}]" if ":" in host else host, port=port))
            return node

    def _owner(self, slot: int) -> tuple[str, int]:
        slots = self._slots
        if slots is None:
            slots = self._slots = self._read_slots()
        try:
            return slots[slot]
        except KeyError:
            self._slots = None
            raise SlotNotCoveredError(f"slot {slot} is not served by the cluster") from None

    def _read_slots(self) -> dict[int, tuple[str, int]]:
        """Slot -> its master, from the first node (known, then seed) that answers."""
        with self._lock:
            known = list(self._nodes)
        error: Exception | None = None
        for host, port in dict.fromkeys([*known, *self._seeds]):
            client: Any = syncredis.Redis.from_url(
                self._node_url(host=f"[{host}]" if ":" in host else host, port=port),
                decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
            try:
                spans = client.execute_command("CLUSTER", "SLOTS")
            except ResponseError as exc:
                if "cluster support disabled" in str(exc):
                    raise not_a_cluster(f"{host}:{port}") from exc
                error = exc
                continue
            except RedisError as exc:
                error = exc
                continue
            finally:
                client.close()
            slots: dict[int, tuple[str, int]] = {}
            for low, high, master, *_ in spans:
                address = (str(master[0]) or host, int(master[1]))
                slots.update(dict.fromkeys(range(int(low), int(high) + 1), address))
            return slots
        raise error or RedisConnectionError("no node of the Redis Cluster answers")

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run script ``name`` and return its reply (errors raise as redis-py raises them)."""
        if not keys:
            raise ValueError(f"script {name} needs a key to be routed on a Redis Cluster")
        slot = key_slot(keys[0].encode())
        address, asking = self._owner(slot), False
        for _ in range(REDIRECTIONS):
            try:
                return self._node(address).call(name, keys, args, asking=asking)
            except MovedError as exc:  # the slot moved for good: so does the map
                address, asking = exc.node_addr, False
                slots = self._slots  # another thread may drop the map meanwhile
                if slots is not None:
                    slots[exc.slot_id] = address
            except AskError as exc:  # the slot is moving: this call only
                address, asking = exc.node_addr, True
            except (*LOST, ClusterDownError):
                self._slots = None  # a failover, most likely: read the map again
                raise
        raise ClusterError(f"script {name}: more than {REDIRECTIONS} redirections")

    def close(self) -> None:
        """Close the idle connections (the object stays usable)."""
        with self._lock:
            nodes = list(self._nodes.values())
        for node in nodes:
            node.close()


__all__ = ["ClusterScripts", "async_client", "blocking_scripts", "check_url"]
