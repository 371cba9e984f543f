"""The storage layout of a Redis namespace, numbered so that it can grow.

``{ns}:layout`` holds the layout a namespace was last opened with. Layout 1 is the keys of
:mod:`.keys` as they were before layouts were numbered (a namespace with jobs and no layout
key); layout 2 adds the keys of job control (queue settings, unique and idempotency keys,
schedules), which are made as they are first written, so no data moves. Layout 3 adds
priorities: ``{ns}:f:priority`` (absent: priority 0, boost 0, so jobs stored before have
them), and ``{ns}:q:Q:waiting`` holds only the queued jobs, ranked by run_at less their
boost, while the scheduled ones are only in ``{ns}:q:Q:sched``: its step removes the
scheduled jobs from every queue's waiting set (the queued ones keep their score, run_at,
their rank at boost 0). Layout 4 adds limits: ``{ns}:f:deferrals`` and ``{ns}:f:lane``
(absent: no deferrals, not laned, as every job stored before), the lanes of laned jobs,
their running zsets, the claims' cursors and the token buckets, all made as they are first
written, so no data moves (the queue group grows by its lanes key, which is absent for an
old queue: a queue without laned jobs). Layout 5 adds the fencing of attempts by claim:
``{ns}:f:claim`` (each job's latest claim number, absent: 0) and ``{ns}:claim:counter``,
made as they are first written, so no data moves; the number is raised so that processes
of an older version, whose claims take no number, refuse the namespace. A later layout
that must move data adds a step here: a script run before the layout key is raised,
guarded by the layout it starts from so that processes opening the namespace at once apply
it once. A namespace of a newer layout is refused (:class:`~conveyor.errors.NewerStore`).
"""

from __future__ import annotations

from conveyor.errors import ConfigurationError, NewerStore, redact_url

#: the layout this version writes
LAYOUT = 5
#: what the layout script answers for a namespace sharded by queue: its layout key holds
#: ``sharded N`` (N its layout), refused by a broker opened without ``?shard=queue``
SHARDED = -2
#: what the layout script answers a client that follows no cluster redirections when the
#: server is a Redis Cluster node
CLUSTER_NODE = -3
#: what it answers a client of the one server its URL names when that server is a replica
REPLICA = -4


def plain_client(url: str, refuse_replica: bool = True) -> str:
    """The layout scripts' flag for a client of ``url``: ``0`` for a Redis Cluster client,
    ``1`` for a Sentinel client (it follows no cluster redirections, so the scripts refuse
    a cluster node), ``2`` for a client of the one server its URL names (a replica there
    is refused too: it would refuse every write until an operator promotes it), unless
    ``refuse_replica`` is False (a tool that reads: ``1``)."""
    from conveyor.backends.redis import deploy

    kind = deploy.kind(url)
    if kind == deploy.CLUSTER:
        return "0"
    return "2" if refuse_replica and kind != deploy.SENTINEL else "1"


def cluster_node(url: str) -> ConfigurationError:
    """The error of a plain client whose server is a Redis Cluster node: it works until the
    slot it uses moves, so it is refused at once."""
    return ConfigurationError(f"{redact_url(url)}: this Redis is a Redis Cluster node (a "
                              "plain client fails once a slot it uses moves): use "
                              "redis+cluster://")


def replica(url: str) -> ConfigurationError:
    """The error of a URL naming a replica when its store is first opened (a master
    demoted later is waited out as an outage)."""
    return ConfigurationError(f"{redact_url(url)}: this Redis is a read-only replica: name "
                              "its master (or use redis+sentinel://)")


def check(found: int, namespace: str, url: str) -> None:
    """Raise :class:`NewerStore` when the layout ``found`` is newer than :data:`LAYOUT`, and
    :class:`ConfigurationError` when the layout key holds no number (``found`` -1), marks
    a namespace sharded by queue (``found`` -2, see :mod:`.sharded`), the server is a
    cluster node for a plain client (-3) or a replica (-4)."""
    where = f"Redis namespace {namespace!r} at {redact_url(url)}"
    if found == CLUSTER_NODE:
        raise cluster_node(url)
    if found == REPLICA:
        raise replica(url)
    if found == SHARDED:
        raise ConfigurationError(f"{where} is sharded by queue: open it with ?shard=queue in "
                                 "the URL")
    if found < 0:
        raise ConfigurationError(f"{where}: its layout key holds no layout number; it was "
                                 "not written by Conveyor")
    if found > LAYOUT:
        raise NewerStore(where, found, LAYOUT)
